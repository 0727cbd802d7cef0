//! Firewall openings derived from the modules, so that nobody lists a peer's address by
//! hand. A module declares what it serves to other hosts (`[[listen]]`: a port, a protocol
//! and who may connect, as host names, roles, `module:NAME` or networks); for each host
//! this works out the addresses from the environment — the Galera nodes, the hosts that run
//! the app endpoint or the backups — and hands them to every template of the host as
//! `host.inbound`. debian-base's firewall opens exactly those; a host added to the
//! environment is let in on the next apply, one removed is shut out.

use std::net::IpAddr;

use minijinja::Value;
use serde::Serialize;

use crate::spec::error::SpecError;
use crate::spec::source::join_key;
use crate::spec::{Environment, Module};

use super::Renderer;

/// One opening: `port`/`proto` of `module`, for the addresses in `from4`/`from6` (or for
/// everyone when `any`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Inbound {
    pub module: String,
    pub port: u16,
    pub proto: String,
    pub description: String,
    pub any: bool,
    /// IPv4 addresses and networks — and host addresses given as names, which nft
    /// resolves when it loads the ruleset.
    pub from4: Vec<String>,
    pub from6: Vec<String>,
    /// Both, in order.
    pub from: Vec<String>,
}

/// The modules a host runs: its roles' modules in order, each once, those loaded.
pub fn host_modules<'e>(env: &'e Environment, host: &str) -> Vec<&'e Module> {
    let mut out: Vec<&Module> = vec![];
    let Some(h) = env.spec.hosts.get(host) else {
        return out;
    };
    for role in &h.roles {
        let Some(r) = env.spec.roles.get(role) else {
            continue;
        };
        for m in &r.modules {
            if let Some(module) = env.modules.get(m) {
                if !out.iter().any(|o| o.name == module.name) {
                    out.push(module);
                }
            }
        }
    }
    out
}

/// The address other hosts' firewalls admit for `host`: its `address`, else its name.
fn address_of(env: &Environment, host: &str) -> String {
    env.spec.hosts[host]
        .address
        .clone()
        .unwrap_or_else(|| host.to_string())
}

/// The addresses one `from` entry stands for; `None` for `any`.
fn resolve(env: &Environment, entry: &str) -> Result<Option<Vec<String>>, String> {
    let hosts_where = |keep: &dyn Fn(&str) -> bool| -> Vec<String> {
        env.spec
            .hosts
            .keys()
            .filter(|h| keep(h))
            .map(|h| address_of(env, h))
            .collect()
    };
    if entry == "any" {
        return Ok(None);
    }
    if let Some(m) = entry.strip_prefix("module:") {
        return Ok(Some(hosts_where(&|h| {
            host_modules(env, h).iter().any(|x| x.name == m)
        })));
    }
    if env.spec.hosts.contains_key(entry) {
        return Ok(Some(vec![address_of(env, entry)]));
    }
    let role = entry.strip_prefix("role:").unwrap_or(entry);
    if env.spec.roles.contains_key(role) {
        return Ok(Some(hosts_where(&|h| {
            env.spec.hosts[h].roles.iter().any(|r| r == role)
        })));
    }
    if is_network(entry) {
        return Ok(Some(vec![entry.to_string()]));
    }
    Err(format!(
        "`{entry}` is no host, role, `module:NAME`, address or network of this environment"
    ))
}

/// An IP address or an `ADDRESS/PREFIX` network.
pub fn is_network(s: &str) -> bool {
    let (addr, prefix) = match s.split_once('/') {
        Some((a, p)) => (a, Some(p)),
        None => (s, None),
    };
    let Ok(ip) = addr.parse::<IpAddr>() else {
        return false;
    };
    let max = if ip.is_ipv4() { 32 } else { 128 };
    prefix.is_none_or(|p| p.parse::<u8>().is_ok_and(|p| p <= max))
}

/// Whether an address or network is IPv6 (`ip6 saddr` in nftables).
pub fn is_ipv6(s: &str) -> bool {
    s.split('/')
        .next()
        .and_then(|a| a.parse::<IpAddr>().ok())
        .is_some_and(|ip| ip.is_ipv6())
}

/// Every opening `host` needs for the modules it runs.
pub fn for_host(
    env: &Environment,
    renderer: &Renderer,
    host: &str,
) -> Result<Vec<Inbound>, Vec<SpecError>> {
    let mut out = vec![];
    let mut errors = vec![];
    let me = address_of(env, host);
    for module in host_modules(env, host) {
        if module.spec.listen.is_empty() {
            continue;
        }
        let params = match super::module_params(env, module, host) {
            Ok(p) => p,
            // Reported by the host's own expansion.
            Err(_) => continue,
        };
        let ctx = renderer.context(host, &module.name, params);
        for i in 0..module.spec.listen.len() {
            match opening(env, renderer, module, i, &ctx, &me) {
                Ok(Some(o)) => out.push(o),
                Ok(None) => {}
                Err(e) => errors.push(crate::spec::validate::relocate(env, module, host, e)),
            }
        }
    }
    if errors.is_empty() {
        Ok(out)
    } else {
        Err(errors)
    }
}

fn opening(
    env: &Environment,
    renderer: &Renderer,
    module: &Module,
    i: usize,
    ctx: &Value,
    me: &str,
) -> Result<Option<Inbound>, SpecError> {
    let l = &module.spec.listen[i];
    let src = &module.source;
    let key = |k: &str| join_key(&format!("listen[{i}]"), k);
    if let Some(when) = &l.when {
        if !renderer.eval(src, &key("when"), when, ctx)?.is_true() {
            return Ok(None);
        }
    }
    let port = match renderer.render_value(src, &key("port"), &l.port, ctx)? {
        toml::Value::Integer(n) => u16::try_from(n).ok().filter(|p| *p > 0),
        toml::Value::String(s) => s.trim().parse::<u16>().ok().filter(|p| *p > 0),
        _ => None,
    }
    .ok_or_else(|| SpecError::at_key(src, &key("port"), "the port must be 1 to 65535"))?;
    let proto = l.proto.clone().unwrap_or_else(|| "tcp".into());
    if proto != "tcp" && proto != "udp" {
        return Err(SpecError::at_key(
            src,
            &key("proto"),
            format!("proto `{proto}` must be tcp or udp"),
        ));
    }
    let from = renderer.eval(src, &key("from"), &l.from, ctx)?;
    let entries: Vec<String> = match from.as_str() {
        Some(s) => vec![s.to_string()],
        None => from
            .try_iter()
            .map_err(|_| SpecError::at_key(src, &key("from"), "`from` must give a list of names"))?
            .map(|v| match v.as_str() {
                Some(s) => Ok(s.to_string()),
                None => Err(SpecError::at_key(
                    src,
                    &key("from"),
                    format!("`from` gives `{v}`, which is not a name"),
                )),
            })
            .collect::<Result<_, _>>()?,
    };
    let mut any = false;
    let mut addrs: Vec<String> = vec![];
    for e in &entries {
        match resolve(env, e).map_err(|m| {
            SpecError::at_key(
                src,
                &key("from"),
                format!("port {port} of module {}: {m}", module.name),
            )
        })? {
            None => any = true,
            Some(list) => {
                for a in list {
                    if a != me && !addrs.contains(&a) {
                        addrs.push(a);
                    }
                }
            }
        }
    }
    if any {
        addrs.clear();
    }
    let (from6, from4): (Vec<String>, Vec<String>) =
        addrs.iter().cloned().partition(|a| is_ipv6(a));
    Ok(Some(Inbound {
        module: module.name.clone(),
        port,
        proto,
        description: l.description.clone().unwrap_or_else(|| module.name.clone()),
        any,
        from4,
        from6,
        from: addrs,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn networks_and_families() {
        for ok in [
            "10.0.0.1",
            "10.0.0.0/8",
            "2001:db8::1",
            "2001:db8::/32",
            "0.0.0.0/0",
        ] {
            assert!(is_network(ok), "{ok}");
        }
        for bad in [
            "10.0.0.0/33",
            "web",
            "10.0.0",
            "2001:db8::/129",
            "1.2.3.4/x",
            "",
        ] {
            assert!(!is_network(bad), "{bad}");
        }
        assert!(is_ipv6("2001:db8::/32"));
        assert!(!is_ipv6("10.0.0.0/8"));
        assert!(!is_ipv6("db1.example.com"));
    }
}
