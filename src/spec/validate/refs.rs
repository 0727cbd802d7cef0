//! Cross-references between module parameters, per host (the parameters a host gets: its
//! own `[hosts.H.modules.M]` keys over the environment's `[modules.M]`, as the desired
//! stage merges them): an nginx site's `certificate` must be a `tls` certificate of the
//! same host, and a `php` site's `pool` a php pool of the same host. Reported at the
//! environment key that wrote the reference.

use crate::spec::error::SpecError;
use crate::spec::source::join_key;
use crate::spec::Environment;

/// The value of a module parameter on a host as the environment wrote it (host level
/// first), with the key path that set it; `None` when the host does not use the module or
/// the environment leaves the parameter to the module's default.
fn param<'a>(
    env: &'a Environment,
    host: &str,
    module: &str,
    key: &str,
) -> Option<(String, &'a toml::Value)> {
    let h = &env.spec.hosts[host];
    let used = h.roles.iter().any(|r| {
        env.spec
            .roles
            .get(r)
            .is_some_and(|r| r.modules.iter().any(|m| m == module))
    });
    if !used {
        return None;
    }
    if let Some(v) = h.modules.get(module).and_then(|t| t.get(key)) {
        let base = format!(
            "hosts.{}.modules.{}",
            join_key("", host),
            join_key("", module)
        );
        return Some((join_key(&base, key), v));
    }
    let v = env.spec.modules.get(module).and_then(|t| t.get(key))?;
    let base = format!("modules.{}", join_key("", module));
    Some((join_key(&base, key), v))
}

/// The `name`s of the entries of a list parameter on a host (empty when unset).
fn names(env: &Environment, host: &str, module: &str, key: &str) -> Vec<String> {
    param(env, host, module, key)
        .and_then(|(_, v)| v.as_array())
        .map(|a| {
            a.iter()
                .filter_map(|e| e.get("name").and_then(|n| n.as_str()).map(String::from))
                .collect()
        })
        .unwrap_or_default()
}

pub fn references(env: &Environment) -> Vec<SpecError> {
    let mut bad: Vec<(String, String)> = vec![];
    for host in env.spec.hosts.keys() {
        let Some((sites_key, sites)) = param(env, host, "nginx", "sites") else {
            continue;
        };
        let Some(sites) = sites.as_array() else {
            continue;
        };
        let certificates = names(env, host, "tls", "certificates");
        let pools = names(env, host, "php", "pools");
        for (i, site) in sites.iter().enumerate() {
            let name = site.get("name").and_then(|n| n.as_str()).unwrap_or("?");
            let field = |f: &str| {
                site.get(f)
                    .and_then(|v| v.as_str())
                    .filter(|s| !s.is_empty())
                    .map(|s| (join_key(&format!("{sites_key}[{i}]"), f), s.to_string()))
            };
            if let Some((key, cert)) = field("certificate") {
                if !certificates.contains(&cert) {
                    bad.push((
                        key,
                        format!(
                            "site `{name}` uses the certificate `{cert}`, which no `tls` certificate of host `{host}` declares (certificates: {})",
                            listed(&certificates)
                        ),
                    ));
                }
            }
            let is_php = site.get("type").and_then(|t| t.as_str()) == Some("php");
            if let (true, Some((key, pool))) = (is_php, field("pool")) {
                if !pools.contains(&pool) {
                    bad.push((
                        key,
                        format!(
                            "site `{name}` uses the php pool `{pool}`, which no `php` pool of host `{host}` declares (pools: {})",
                            listed(&pools)
                        ),
                    ));
                }
            }
        }
    }
    // An environment-wide site is checked on each host: report each key once.
    let mut seen = std::collections::HashSet::new();
    bad.into_iter()
        .filter(|(key, _)| seen.insert(key.clone()))
        .map(|(key, msg)| env.error(&key, msg))
        .collect()
}

fn listed(names: &[String]) -> String {
    if names.is_empty() {
        "none".into()
    } else {
        names.join(", ")
    }
}
