//! Where a module's error comes from: a value rendered from a module parameter or a
//! variable is reported at the environment key the user wrote.

use crate::spec::error::SpecError;
use crate::spec::source::join_key;
use crate::spec::{Environment, Module};

/// Re-points an error found in a module's resource at the environment key whose value
/// caused it: a backticked value of the message that a parameter (host's, then the
/// environment's) or a variable holds, exactly or as the longest part. The module place
/// stays as a note. Errors with no such value are returned unchanged.
pub fn relocate(env: &Environment, module: &Module, host: &str, e: SpecError) -> SpecError {
    if e.location.file != module.source.path {
        return e;
    }
    let quoted: Vec<&str> = e
        .message
        .split('`')
        .skip(1)
        .step_by(2)
        .filter(|q| !q.is_empty())
        .collect();
    if quoted.is_empty() {
        return e;
    }
    let h = join_key("", host);
    let m = join_key("", &module.name);
    let mut leaves: Vec<(String, String)> = vec![];
    if let Some(hs) = env.spec.hosts.get(host) {
        if let Some(t) = hs.modules.get(&module.name) {
            collect(t, &format!("hosts.{h}.modules.{m}"), &mut leaves);
        }
    }
    if let Some(t) = env.spec.modules.get(&module.name) {
        collect(t, &format!("modules.{m}"), &mut leaves);
    }
    if let Some(hs) = env.spec.hosts.get(host) {
        collect(&hs.vars, &format!("hosts.{h}.vars"), &mut leaves);
    }
    collect(&env.spec.vars, "vars", &mut leaves);
    let found = quoted
        .iter()
        .find_map(|q| leaves.iter().find(|(_, v)| v == q))
        .or_else(|| {
            quoted
                .iter()
                .filter_map(|q| {
                    leaves
                        .iter()
                        .filter(|(_, v)| v.chars().count() >= 3 && q.contains(v.as_str()))
                        .max_by_key(|(_, v)| v.len())
                })
                .max_by_key(|(_, v)| v.len())
        });
    let Some((path, _)) = found else {
        return e;
    };
    let mut out = env.error(path, e.message.clone());
    out.notes = e.notes.clone();
    out.notes.push(format!(
        "used by module `{}` at {} (`{}`), on host `{host}`",
        module.name, e.location, e.key
    ));
    out
}

fn collect(t: &toml::Table, base: &str, out: &mut Vec<(String, String)>) {
    fn value(v: &toml::Value, path: String, out: &mut Vec<(String, String)>) {
        match v {
            toml::Value::String(s) => out.push((path, s.clone())),
            toml::Value::Integer(i) => out.push((path, i.to_string())),
            toml::Value::Array(a) => a
                .iter()
                .enumerate()
                .for_each(|(i, x)| value(x, format!("{path}[{i}]"), out)),
            toml::Value::Table(t) => t
                .iter()
                .for_each(|(k, x)| value(x, join_key(&path, k), out)),
            _ => {}
        }
    }
    for (k, v) in t {
        value(v, join_key(base, k), out);
    }
}
