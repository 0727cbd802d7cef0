//! The `ec2` table of a host with `provider = "ec2"`: what kiln needs to create its
//! instance. Checked here (pure, no AWS call) so a typo is a file:line:key error before
//! anything is contacted.
//!
//! ```toml
//! [hosts.web1]
//! provider = "ec2"
//! roles = ["web"]
//!
//! [hosts.web1.ec2]
//! ami = "ami-0123456789abcdef0"
//! instance_type = "t3.small"
//! subnet = "subnet-0123456789abcdef0"
//! security_groups = ["sg-0123456789abcdef0"]
//! key_name = "ops"
//! tags = { team = "platform" }
//! region = "eu-west-1"        # optional: AWS_REGION / the profile's region otherwise
//! connect = "private"         # or "public": which address of the instance kiln uses
//! ```

use indexmap::IndexMap;
use serde::{Deserialize, Serialize};

use super::{source, Environment, Provider};
use crate::spec::error::SpecError;

/// Tag keys kiln sets on its own instances; user tags may not use the `kiln:` prefix.
pub const TAG_ENV: &str = "kiln:env";
pub const TAG_HOST: &str = "kiln:host";

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Ec2Spec {
    /// The image (`ami-...`).
    #[serde(default)]
    pub ami: String,
    /// `t3.small`, `m7i.large`, ...
    #[serde(default)]
    pub instance_type: String,
    /// The subnet the instance is launched in (`subnet-...`).
    #[serde(default)]
    pub subnet: String,
    /// Security group ids (`sg-...`) of the instance's network interface.
    #[serde(default)]
    pub security_groups: Vec<String>,
    /// The EC2 key pair whose public key cloud-init authorizes.
    #[serde(default)]
    pub key_name: String,
    /// More tags for the instance (and its volumes). `Name` defaults to `ENV-HOST`.
    #[serde(default)]
    pub tags: IndexMap<String, String>,
    /// The region; otherwise AWS_REGION / AWS_DEFAULT_REGION / the profile's.
    #[serde(default)]
    pub region: Option<String>,
    /// Which address of the instance kiln connects to.
    #[serde(default)]
    pub connect: Connect,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Connect {
    #[default]
    Private,
    Public,
}

/// Checks every `provider = "ec2"` host's `ec2` table.
pub fn validate(env: &Environment) -> Vec<SpecError> {
    let mut errors = vec![];
    for (name, host) in &env.spec.hosts {
        let base = format!("hosts.{}", source::join_key("", name));
        let key = |k: &str| format!("{base}.ec2.{k}");
        match (host.provider, &host.ec2) {
            (Provider::Ec2, None) => errors.push(env.error(
                &base,
                "a host with provider = \"ec2\" needs an `ec2` table (ami, instance_type, subnet, security_groups, key_name)",
            )),
            (Provider::Ec2, Some(_)) if host.address.is_some() => errors.push(env.error(
                &format!("{base}.address"),
                "an ec2 host's address is its instance's: remove `address` (`ec2.connect = \"public\"` picks the public one)",
            )),
            // An `ec2` table on another provider's host is ignored: a QA or lab copy that
            // `extends` an EC2 environment sets `provider` and `address` and cannot remove
            // the parent's table.
            _ => {}
        }
        let Some(ec2) = host.ec2.as_ref().filter(|_| host.provider == Provider::Ec2) else {
            continue;
        };
        let mut id = |k: &str, v: &str, prefix: &str, what: &str| {
            if v.is_empty() {
                errors.push(env.error(&key(k), format!("`ec2.{k}` is required ({what})")));
            } else if !is_id(v, prefix) {
                errors.push(env.error(
                    &key(k),
                    format!("`{v}` is not {what} (`{prefix}` followed by hex digits)"),
                ));
            }
        };
        id("ami", &ec2.ami, "ami-", "an AMI id");
        id("subnet", &ec2.subnet, "subnet-", "a subnet id");
        if ec2.instance_type.is_empty() {
            errors.push(env.error(
                &key("instance_type"),
                "`ec2.instance_type` is required (e.g. \"t3.small\")",
            ));
        } else if !is_instance_type(&ec2.instance_type) {
            errors.push(env.error(
                &key("instance_type"),
                format!(
                    "`{}` is not an instance type (family.size, e.g. \"t3.small\")",
                    ec2.instance_type
                ),
            ));
        }
        if ec2.security_groups.is_empty() {
            errors.push(env.error(
                &key("security_groups"),
                "`ec2.security_groups` needs at least one security group id (\"sg-...\")",
            ));
        }
        for (i, sg) in ec2.security_groups.iter().enumerate() {
            if !is_id(sg, "sg-") {
                errors.push(env.error(
                    &format!("{}[{i}]", key("security_groups")),
                    format!("`{sg}` is not a security group id (`sg-` followed by hex digits)"),
                ));
            }
        }
        if ec2.key_name.trim().is_empty() {
            errors.push(env.error(
                &key("key_name"),
                "`ec2.key_name` is required: the EC2 key pair kiln's SSH key belongs to",
            ));
        }
        for (k, v) in &ec2.tags {
            let tk = source::join_key(&key("tags"), k);
            let lower = k.to_ascii_lowercase();
            if lower.starts_with("kiln:") || lower.starts_with("aws:") {
                errors.push(env.error(
                    &tk,
                    format!("tag `{k}`: the `kiln:` and `aws:` prefixes are reserved (kiln sets {TAG_ENV} and {TAG_HOST} itself)"),
                ));
            } else if k.is_empty() || k.chars().count() > 128 || v.chars().count() > 256 {
                errors.push(env.error(&tk, "tag keys are 1–128 characters and values at most 256"));
            }
        }
        if ec2.tags.len() > 45 {
            errors.push(env.error(
                &key("tags"),
                "at most 45 tags (EC2 allows 50, kiln sets its own)",
            ));
        }
        if let Some(r) = &ec2.region {
            let ok = r.split('-').count() >= 3
                && r.chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
            if !ok {
                errors.push(env.error(
                    &key("region"),
                    format!("`{r}` is not a region name (e.g. \"eu-west-1\")"),
                ));
            }
        }
    }
    errors
}

fn is_id(v: &str, prefix: &str) -> bool {
    v.strip_prefix(prefix)
        .map(|rest| !rest.is_empty() && rest.chars().all(|c| c.is_ascii_hexdigit()))
        .unwrap_or(false)
}

fn is_instance_type(v: &str) -> bool {
    let mut parts = v.split('.');
    matches!((parts.next(), parts.next(), parts.next()), (Some(f), Some(s), None)
        if !f.is_empty() && !s.is_empty()
            && v.chars().all(|c| c.is_ascii_alphanumeric() || c == '.' || c == '-'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_and_types() {
        assert!(is_id("ami-0123abcd", "ami-"));
        assert!(!is_id("ami-", "ami-"));
        assert!(!is_id("ami-xyz", "ami-"));
        assert!(!is_id("subnet-12", "ami-"));
        assert!(is_instance_type("t3.small"));
        assert!(is_instance_type("m7i-flex.large"));
        assert!(!is_instance_type("t3"));
        assert!(!is_instance_type("t3.small.x"));
    }
}
