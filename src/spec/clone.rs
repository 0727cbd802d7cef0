//! The environment `kiln clone SRC DST` writes: one that `extends` SRC and overrides only
//! what must differ — its hosts (new addresses; hosts left out are omitted and every
//! reference to them dropped, so a 3-node cluster becomes a 1-node one), its domains
//! (`--domain-map FROM=TO`, applied to every site, certificate and alias), the ACME directory
//! (Let's Encrypt staging), and its secrets (DST's own files and variables). Derived from the
//! loaded spec; the only I/O is reading the repository's other environments for addresses
//! already in use.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};

use super::{source::join_key, Environment, Provider};

pub const LE_PRODUCTION: &str = "https://acme-v02.api.letsencrypt.org/directory";
pub const LE_STAGING: &str = "https://acme-staging-v02.api.letsencrypt.org/directory";

/// First address `--hosts lab` hands out when no start is given.
const LAB_FIRST: Ipv4Addr = Ipv4Addr::new(10, 233, 0, 60);

pub struct CloneArgs {
    pub src: String,
    pub dst: String,
    pub domain_map: Vec<String>,
    /// `lab`, `lab@10.233.0.50`, or a TOML file `[hosts] web = "10.0.0.5"`.
    pub hosts: String,
    pub drop: Vec<String>,
    pub force: bool,
    /// `--with-data`: the copy is seeded with SRC's latest point (`[seed]`).
    pub with_data: bool,
    /// `--anonymize RULES`: the rules file, as written into `[seed] anonymize` (relative to
    /// the environments folder when inside it).
    pub anonymize: Option<String>,
    /// `--no-anonymize`: the data copied as it is.
    pub no_anonymize: bool,
    /// `--set MODULE.KEY=VALUE`: a module parameter of the copy's own (VALUE is TOML; a bare
    /// word is a string).
    pub set: Vec<String>,
}

/// `--set MODULE.KEY=VALUE` read against SRC's modules: (module, key, value).
fn parse_sets(env: &Environment, sets: &[String]) -> Result<Vec<(String, String, toml::Value)>> {
    let mut out: Vec<(String, String, toml::Value)> = Vec::new();
    for s in sets {
        let Some((path, raw)) = s.split_once('=') else {
            bail!("--set wants MODULE.KEY=VALUE, got `{s}`");
        };
        let Some((m, k)) = path.trim().split_once('.') else {
            bail!("--set wants MODULE.KEY=VALUE, got `{s}`");
        };
        let Some(module) = env.modules.get(m) else {
            bail!(
                "--set {path}: `{m}` is no module of {} (its modules: {})",
                env.name,
                env.modules.keys().cloned().collect::<Vec<_>>().join(", ")
            );
        };
        if !module.spec.params.contains_key(k) {
            bail!(
                "--set {path}: module {m} has no parameter `{k}` (its parameters: {})",
                module.param_names()
            );
        }
        if out.iter().any(|(om, ok, _)| om == m && ok == k) {
            bail!("--set {path} is given twice");
        }
        let raw = raw.trim();
        let value = match toml::from_str::<toml::Table>(&format!("v = {raw}")) {
            Ok(mut t) => t.remove("v").expect("parsed one key"),
            Err(_) => toml::Value::String(raw.to_string()),
        };
        out.push((m.to_string(), k.to_string(), value));
    }
    Ok(out)
}

/// Rewrites of values: addresses of kept hosts, references to dropped hosts, domains.
struct Rewrite {
    addresses: BTreeMap<String, String>,
    dropped: BTreeSet<String>,
    domains: Vec<(String, String)>,
}

fn is_host_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '-'
}

/// Replaces `from` with `to` where it stands as a whole domain or as the parent domain of a
/// name: with `lab.test=qa.lab.test`, `api.lab.test` becomes `api.qa.lab.test`, while
/// `mylab.test` and `lab.testing` stay.
pub fn map_domain(s: &str, from: &str, to: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(i) = rest.find(from) {
        let before = rest[..i].chars().last();
        let after = rest[i + from.len()..].chars().next();
        let boundary_before = before.map(|c| !is_host_char(c)).unwrap_or(true);
        let boundary_after = after
            .map(|c| !(is_host_char(c) || c == '.'))
            .unwrap_or(true)
            || (after == Some('.')
                && !rest[i + from.len() + 1..]
                    .chars()
                    .next()
                    .map(is_host_char)
                    .unwrap_or(false));
        out.push_str(&rest[..i]);
        if boundary_before && boundary_after {
            out.push_str(to);
        } else {
            out.push_str(from);
        }
        rest = &rest[i + from.len()..];
    }
    out.push_str(rest);
    out
}

impl Rewrite {
    fn string(&self, s: &str) -> String {
        if let Some(a) = self.addresses.get(s) {
            return a.clone();
        }
        // Public keys keep their comments (`deploy@example.com` is not a site).
        if ["ssh-", "ecdsa-", "sk-"].iter().any(|p| s.starts_with(p)) {
            return s.to_string();
        }
        let mut v = s.to_string();
        for (from, to) in &self.domains {
            v = map_domain(&v, from, to);
        }
        v
    }

    fn value(&self, v: &toml::Value) -> toml::Value {
        match v {
            toml::Value::String(s) => toml::Value::String(self.string(s)),
            toml::Value::Array(a) => toml::Value::Array(
                a.iter()
                    .filter(|x| !matches!(x, toml::Value::String(s) if self.dropped.contains(s)))
                    .map(|x| self.value(x))
                    .collect(),
            ),
            // Keys too: a table keyed by domain or address (`probe_paths`) follows the copy.
            toml::Value::Table(t) => toml::Value::Table(
                t.iter()
                    .map(|(k, x)| (self.string(k), self.value(x)))
                    .collect(),
            ),
            other => other.clone(),
        }
    }
}

/// A TOML value for a `key = value` line: arrays of tables one element per line.
fn inline(v: &toml::Value) -> String {
    match v {
        toml::Value::Array(a) if a.iter().any(|x| x.is_table() || x.is_array()) => {
            let mut s = String::from("[\n");
            for x in a {
                let _ = writeln!(s, "  {},", inline(x));
            }
            s.push(']');
            s
        }
        toml::Value::Table(t) => {
            let parts: Vec<String> = t
                .iter()
                .map(|(k, x)| format!("{} = {}", join_key("", k), inline(x)))
                .collect();
            format!("{{ {} }}", parts.join(", "))
        }
        other => other.to_string(),
    }
}

/// Every address used by any environment of the repository (so a lab clone never collides).
fn used_addresses(root: &Path, except: &str) -> BTreeSet<String> {
    let mut used = BTreeSet::new();
    if let Ok(rd) = std::fs::read_dir(root.join("environments")) {
        for e in rd.flatten() {
            if e.path().extension().and_then(|x| x.to_str()) != Some("toml")
                || e.path().file_stem().and_then(|x| x.to_str()) == Some(except)
            {
                continue;
            }
            let Ok(text) = std::fs::read_to_string(e.path()) else {
                continue;
            };
            let Ok(t) = text.parse::<toml::Table>() else {
                continue;
            };
            if let Some(toml::Value::Table(hosts)) = t.get("hosts") {
                for h in hosts.values() {
                    if let Some(a) = h.get("address").and_then(|a| a.as_str()) {
                        used.insert(a.to_string());
                    }
                }
            }
        }
    }
    used
}

/// New addresses for the kept hosts, and the hosts to leave out.
fn plan_hosts(
    env: &Environment,
    args: &CloneArgs,
) -> Result<(Vec<(String, String, Provider)>, Vec<String>)> {
    let names: Vec<String> = env.spec.hosts.keys().cloned().collect();
    for d in &args.drop {
        if !names.contains(d) {
            bail!("--drop {d}: {} has no host `{d}`", env.file.display());
        }
    }
    let mut kept = vec![];
    let mut dropped: Vec<String> = args.drop.clone();
    if args.hosts == "lab" || args.hosts.starts_with("lab@") {
        let mut next: Ipv4Addr = match args.hosts.strip_prefix("lab@") {
            Some(a) => a
                .parse()
                .with_context(|| format!("--hosts lab@ADDR: `{a}` is not an IPv4 address"))?,
            None => LAB_FIRST,
        };
        let used = used_addresses(&env.root, &args.dst);
        for n in names.iter().filter(|n| !args.drop.contains(n)) {
            while used.contains(&next.to_string()) {
                next = Ipv4Addr::from(u32::from(next) + 1);
            }
            let o = next.octets();
            if o[0..3] != [10, 233, 0] || !(2..=254).contains(&o[3]) {
                bail!("no free lab address left in 10.233.0.2–254 for host `{n}`");
            }
            kept.push((n.clone(), next.to_string(), Provider::Lab));
            next = Ipv4Addr::from(u32::from(next) + 1);
        }
    } else {
        let path = PathBuf::from(&args.hosts);
        let text = std::fs::read_to_string(&path)
            .with_context(|| format!("--hosts: cannot read {}", path.display()))?;
        let t: toml::Table = text
            .parse()
            .with_context(|| format!("--hosts: {} is not TOML", path.display()))?;
        let Some(toml::Value::Table(hosts)) = t.get("hosts") else {
            bail!(
                "--hosts: {} needs a [hosts] table: `web = \"10.0.0.5\"` per host",
                path.display()
            );
        };
        for (n, a) in hosts {
            if !names.contains(n) {
                bail!(
                    "--hosts: {} names `{n}`, which {} does not have",
                    path.display(),
                    env.file.display()
                );
            }
            let Some(a) = a.as_str() else {
                bail!(
                    "--hosts: `{n}` must be an address string in {}",
                    path.display()
                );
            };
            kept.push((n.clone(), a.to_string(), Provider::Static));
        }
        for n in &names {
            if !hosts.contains_key(n) && !dropped.contains(n) {
                dropped.push(n.clone());
            }
        }
    }
    if kept.is_empty() {
        bail!("the clone would have no hosts");
    }
    Ok((kept, dropped))
}

fn secret_path(file: &str, src: &str, dst: &str) -> String {
    let seg = format!("/{src}/");
    if file.contains(&seg) {
        return file.replacen(&seg, &format!("/{dst}/"), 1);
    }
    let p = Path::new(file);
    match (p.parent(), p.file_name()) {
        (Some(dir), Some(name)) => dir.join(dst).join(name).display().to_string(),
        _ => format!("{file}.{dst}"),
    }
}

fn env_var(var: &str, src: &str, dst: &str) -> String {
    let up = |s: &str| s.to_uppercase().replace('-', "_");
    if var.contains(&up(src)) {
        var.replacen(&up(src), &up(dst), 1)
    } else {
        format!("{var}_{}", up(dst))
    }
}

/// Builds the text of the new environment file.
pub fn render(env: &Environment, args: &CloneArgs, command: &str) -> Result<String> {
    let domains: Vec<(String, String)> = args
        .domain_map
        .iter()
        .map(|m| match m.split_once('=') {
            Some((f, t)) if !f.is_empty() && !t.is_empty() => Ok((f.to_string(), t.to_string())),
            _ => bail!("--domain-map wants FROM=TO, got `{m}`"),
        })
        .collect::<Result<_>>()?;
    let (kept, dropped) = plan_hosts(env, args)?;
    let mut rewrite = Rewrite {
        addresses: BTreeMap::new(),
        dropped: BTreeSet::new(),
        domains,
    };
    for (n, a, _) in &kept {
        if let Some(old) = &env.spec.hosts[n].address {
            rewrite.addresses.insert(old.clone(), a.clone());
        }
    }
    for n in &dropped {
        rewrite.dropped.insert(n.clone());
        if let Some(a) = &env.spec.hosts[n].address {
            rewrite.dropped.insert(a.clone());
        }
    }

    let src = &env.name;
    let dst = &args.dst;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "# environments/{dst}.toml — a copy of `{src}`, written by:"
    );
    let _ = writeln!(out, "#   {command}");
    let _ = writeln!(
        out,
        "# It extends {src} and overrides only what must differ; everything else follows {src}."
    );
    let _ = writeln!(out, "extends = \"{src}\"");
    let _ = writeln!(out, "description = \"Copy of {src}\"");

    let to_lab = kept.iter().any(|(_, _, p)| *p == Provider::Lab);
    if to_lab && env.spec.ssh.user.as_deref().unwrap_or("root") != "root" {
        let _ = writeln!(
            out,
            "\n[ssh]\nuser = \"root\"  # lab hosts take the lab's key for root; {src}: {}",
            env.spec.ssh.user.as_deref().unwrap_or_default()
        );
    }
    let _ = writeln!(out, "\n# Hosts: this copy's own.");
    for (n, a, provider) in &kept {
        let h = &env.spec.hosts[n];
        let _ = writeln!(out, "[hosts.{}]", join_key("", n));
        let _ = writeln!(
            out,
            "address = \"{a}\"{}",
            h.address
                .as_ref()
                .map(|o| format!("  # {src}: {o}"))
                .unwrap_or_default()
        );
        if *provider != h.provider {
            let p = match provider {
                Provider::Lab => "lab",
                Provider::Static => "static",
                Provider::Ec2 => "ec2",
            };
            let _ = writeln!(out, "provider = \"{p}\"");
        }
        if !h.aliases.is_empty() {
            let mapped: Vec<String> = h.aliases.iter().map(|x| rewrite.string(x)).collect();
            if mapped != h.aliases {
                let _ = writeln!(
                    out,
                    "aliases = {}",
                    inline(&toml::Value::try_from(&mapped)?)
                );
            }
        }
    }
    for n in &dropped {
        let _ = writeln!(
            out,
            "[hosts.{}]\nomit = true  # not in this copy",
            join_key("", n)
        );
    }

    // Module parameters that mention a changed address, a dropped host or a mapped domain;
    // the source's own values of `per_environment` parameters (not inherited); `--set`.
    let sets = parse_sets(env, &args.set)?;
    let mut modules = String::new();
    let none = toml::Table::new();
    let names: Vec<&String> = env
        .spec
        .modules
        .keys()
        .chain(
            env.modules
                .keys()
                .filter(|m| !env.spec.modules.contains_key(*m)),
        )
        .collect();
    for m in names {
        let params = env.spec.modules.get(m).unwrap_or(&none);
        let def = env.modules.get(m);
        let per_env = |k: &str| {
            def.and_then(|d| d.spec.params.get(k))
                .is_some_and(|p| p.per_environment)
        };
        let is_set = |k: &str| sets.iter().any(|(sm, sk, _)| sm == m && sk == k);
        let mut lines = String::new();
        for (k, v) in params {
            if is_set(k) {
                continue;
            }
            if per_env(k) {
                let default = def.and_then(|d| d.spec.params[k].default.clone());
                if default.as_ref() != Some(v) {
                    // The source's value is not repeated here: it may name its receivers.
                    let d = default.map(|d| inline(&d)).unwrap_or_else(|| "\"\"".into());
                    let _ = writeln!(
                        lines,
                        "{} = {d}  # {src}'s own, not inherited: give this copy its own with `kiln clone --set {m}.{k}=...`",
                        join_key("", k)
                    );
                }
                continue;
            }
            let nv = rewrite.value(v);
            if &nv != v {
                let _ = writeln!(lines, "{} = {}", join_key("", k), inline(&nv));
            }
        }
        for (_, k, v) in sets.iter().filter(|(sm, _, _)| sm == m) {
            let _ = writeln!(lines, "{} = {}  # --set", join_key("", k), inline(v));
        }
        // A copy never asks Let's Encrypt production for certificates.
        if m == "tls" {
            let current = params.get("acme_server").and_then(|v| v.as_str());
            if !is_set("acme_server") && (current.is_none() || current == Some(LE_PRODUCTION)) {
                let _ = writeln!(
                    lines,
                    "acme_server = \"{LE_STAGING}\"  # {src}: Let's Encrypt production"
                );
            }
        }
        if !lines.is_empty() {
            let _ = write!(modules, "\n[modules.{}]\n{lines}", join_key("", m));
        }
    }
    if !modules.is_empty() {
        let _ = write!(
            out,
            "\n# Module parameters with this copy's hosts, domains and ACME directory.{}",
            modules.trim_end_matches('\n')
        );
        out.push('\n');
    }

    // Secrets: this copy's own.
    let mut secrets = String::new();
    // `lab_artifact` secrets (a pin `kiln lab up` writes) are no credential: shared.
    for (name, r) in &env.spec.secrets {
        if let Some(f) = &r.file {
            let _ = writeln!(
                secrets,
                "[secrets.{}]\nfile = \"{}\"  # {src}: {f}",
                join_key("", name),
                secret_path(f, src, dst)
            );
        } else if let Some(a) = &r.age {
            // The copy must not read the source's encrypted value (its identity may not
            // even be there): it gets a fresh one, as a QA copy needs its own credentials
            // and must converge with no one at hand. A value that cannot be random (an
            // API token) is set with `kiln secret set` after making it `age = ...` here.
            let _ = writeln!(
                secrets,
                "[secrets.{}]\ngenerate = 32  # {src}: age {a} (a fresh value for this copy)",
                join_key("", name)
            );
        } else if let Some(v) = &r.env {
            let _ = writeln!(
                secrets,
                "[secrets.{}]\nenv = \"{}\"  # {src}: {v}",
                join_key("", name),
                env_var(v, src, dst)
            );
        }
    }
    if args.with_data {
        let how = match (&args.anonymize, args.no_anonymize) {
            (Some(f), false) => format!("anonymize = \"{}\"", f.replace('\\', "\\\\").replace('"', "\\\"")),
            (None, true) => "no_anonymize = true  # the source's data as it is".to_string(),
            _ => bail!("--with-data: say how the data is anonymised: --anonymize RULES.toml, or --no-anonymize to copy it as it is"),
        };
        let _ = write!(
            out,
            "\n# Data: the first full `kiln apply {dst}` replaces its databases by {src}'s latest point\n# (backup + binlog archive), anonymised on {src}'s backup host before {dst} can read it.\n[seed]\nfrom_env = \"{src}\"\n{how}\n"
        );
        if args.anonymize.is_some() && !env.spec.secrets.contains_key("anonymize_key") {
            let _ = writeln!(
                secrets,
                "[secrets.anonymize_key]\ngenerate = 32  # keys the anonymised values: the same data gives the same fakes"
            );
        }
    } else if args.anonymize.is_some() || args.no_anonymize {
        bail!("--anonymize and --no-anonymize go with --with-data");
    }
    if !secrets.is_empty() {
        let _ = write!(
            out,
            "\n# Secrets: this copy's own (generated ones are per environment already).\n{secrets}"
        );
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn domains_map_at_label_boundaries() {
        assert_eq!(
            map_domain("api.lab.test", "lab.test", "qa.lab.test"),
            "api.qa.lab.test"
        );
        assert_eq!(
            map_domain("lab.test", "lab.test", "qa.lab.test"),
            "qa.lab.test"
        );
        assert_eq!(
            map_domain("mylab.test", "lab.test", "qa.lab.test"),
            "mylab.test"
        );
        assert_eq!(
            map_domain("lab.testing", "lab.test", "qa.lab.test"),
            "lab.testing"
        );
        assert_eq!(
            map_domain(
                "https://api.example.com/x",
                "api.example.com",
                "api.qa.example.com"
            ),
            "https://api.qa.example.com/x"
        );
        assert_eq!(
            map_domain("a.lab.test b.lab.test", "lab.test", "qa"),
            "a.qa b.qa"
        );
    }

    #[test]
    fn secrets_get_the_copy_s_own_names() {
        assert_eq!(
            secret_path("/etc/kiln/secrets/prod/db", "prod", "qa"),
            "/etc/kiln/secrets/qa/db"
        );
        assert_eq!(secret_path("/etc/kiln/db", "prod", "qa"), "/etc/kiln/qa/db");
        assert_eq!(env_var("KILN_PROD_DB", "prod", "qa"), "KILN_QA_DB");
        assert_eq!(
            env_var("DB_PASSWORD", "prod", "lab-qa"),
            "DB_PASSWORD_LAB_QA"
        );
    }
}
