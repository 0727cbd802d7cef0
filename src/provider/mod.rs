//! Sources of hosts. `static` hosts need nothing; `lab` hosts are local containers made by
//! [`lab`]; `ec2` hosts are EC2 instances found by their tags or created ([`ec2`]). Both
//! make hosts behind one interface, [`HostProvider`], which `kiln rebuild` uses without
//! knowing which is which. [`known_hosts`] is the one way providers record host keys.
//!
//! Providers sit below the commands: nothing here imports `ops`. They reach hosts only
//! through a [`crate::transport::Connector`] given by the caller (EC2's wait for SSH).

pub mod ec2;
pub mod known_hosts;
pub mod lab;

use std::sync::Arc;

use anyhow::Result;

use crate::spec::{Environment, Provider};
use crate::transport::{BoxFuture, Connector};

/// Where a provider reports progress: one human line per step. Shared and thread-safe, so
/// a provider can hand it to the worker threads or tasks that do the work.
pub type Progress = Arc<dyn Fn(&str) + Send + Sync>;

/// Whether a provider's host exists.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HostState {
    /// It runs (a lab container whose process is alive, an EC2 instance that is
    /// `running`); it may still be booting.
    Running,
    /// It exists but does not run (a lab root filesystem without a container, an EC2
    /// instance that is pending, stopping or stopped).
    Stopped,
    /// It does not exist: [`HostProvider::ensure`] would create it.
    Missing,
}

/// One host as its provider sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostReport {
    pub name: String,
    pub state: HostState,
    /// What the provider knows: a lab container's pid, an EC2 instance's id and state.
    pub detail: String,
}

/// What [`HostProvider::ensure`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Provisioned {
    /// The hosts it created (they were gone).
    pub created: Vec<String>,
    /// One human line for a timeline, empty when the provider had nothing to look at.
    pub detail: String,
}

/// A source of hosts for one environment. Every method is async and reports progress
/// through a [`Progress`]; a provider that works synchronously (the lab) does its work on
/// a blocking thread.
pub trait HostProvider: Send + Sync {
    /// The kind of hosts it makes (`provider = "lab"`, `"ec2"`).
    fn kind(&self) -> Provider;

    /// Each of the environment's hosts of this provider: running, stopped or missing.
    fn status(&self) -> BoxFuture<'_, Result<Vec<HostReport>>>;

    /// Makes the hosts named in `only` (all of this provider's when empty) exist, run, have
    /// their host keys recorded in the environment's known_hosts, and answer SSH. Creates
    /// only what is gone; a second call creates nothing.
    fn ensure<'a>(
        &'a self,
        only: &'a [String],
        progress: Progress,
    ) -> BoxFuture<'a, Result<Provisioned>>;

    /// Deletes the host `name` (and forgets its host keys): the state a lost server is in.
    fn delete<'a>(&'a self, name: &'a str, progress: Progress) -> BoxFuture<'a, Result<()>>;

    /// The address each host is reached at, by host name.
    fn addresses(&self) -> BoxFuture<'_, Result<Vec<(String, String)>>>;
}

/// The providers an environment's hosts need: the lab when it has `lab` hosts, EC2 when it
/// has `ec2` hosts (none for static hosts). `connector` is how EC2 waits for SSH, and
/// `ec2_timeouts` how long it waits for each phase of a new instance.
pub fn for_env(
    env: &Environment,
    connector: Arc<dyn Connector>,
    ec2_timeouts: ec2::Timeouts,
) -> Vec<Box<dyn HostProvider>> {
    let has = |p: Provider| env.spec.hosts.values().any(|h| h.provider == p);
    let mut out: Vec<Box<dyn HostProvider>> = vec![];
    if has(Provider::Lab) {
        out.push(Box::new(lab::LabProvider::new(lab::LabConfig::for_env(
            env,
        ))));
    }
    if has(Provider::Ec2) {
        out.push(Box::new(ec2::Ec2Provider::new(
            env.clone(),
            ec2_timeouts,
            connector,
        )));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const ENV: &str = r#"description = "a lab host and an ec2 host"

[hosts.a]
address = "10.233.0.5"
provider = "lab"
aliases = ["a.lab.test"]

[hosts.web1]
provider = "ec2"

[hosts.web1.ec2]
ami = "ami-0123456789abcdef0"
instance_type = "t3.small"
subnet = "subnet-1"
security_groups = ["sg-1"]
key_name = "ops"
region = "eu-west-1"
"#;

    fn env() -> (tempfile::TempDir, Environment) {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("environments/mixed.toml");
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(&p, ENV).unwrap();
        let env = Environment::load(&p).unwrap_or_else(|e| panic!("{e}"));
        (dir, env)
    }

    #[tokio::test]
    async fn one_provider_per_kind_behind_the_same_interface() {
        let (_dir, env) = env();
        let connector = Arc::new(crate::transport::ssh::SshConnector::for_env(&env));
        let providers = for_env(&env, connector, ec2::Timeouts::default());
        let kinds: Vec<Provider> = providers.iter().map(|p| p.kind()).collect();
        assert_eq!(kinds, vec![Provider::Lab, Provider::Ec2]);
        // The lab's addresses come from the spec, with no container and no root.
        assert_eq!(
            providers[0].addresses().await.unwrap(),
            vec![("a".to_string(), "10.233.0.5".to_string())]
        );
        // Naming only a lab host leaves EC2 with nothing to do: no AWS call is made.
        let progress: Progress = Arc::new(|m: &str| panic!("no progress expected: {m}"));
        let done = providers[1]
            .ensure(&["a".to_string()], progress)
            .await
            .unwrap();
        assert_eq!(done, Provisioned::default());
    }

    #[test]
    fn static_hosts_need_no_provider() {
        let (_dir, mut env) = env();
        env.spec.hosts.retain(|_, h| h.provider == Provider::Static);
        let connector = Arc::new(crate::transport::ssh::SshConnector::for_env(&env));
        assert!(for_env(&env, connector, ec2::Timeouts::default()).is_empty());
    }
}
