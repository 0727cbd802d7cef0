//! Where a module's error comes from: a value rendered from a module parameter or a
//! variable is reported at the environment key the user wrote; so is a module's own
//! `fail("…")`, or, when what it is about cannot be told, at the module's table.

use crate::spec::error::{Raised, SpecError};
use crate::spec::source::join_key;
use crate::spec::{Environment, Module};

/// Re-points an error found in a module's resource at the environment key whose value
/// caused it: a backticked value of the message that a parameter (host's, then the
/// environment's) or a variable holds, exactly or as the longest part. The module place
/// stays as a note. Errors with no such value are returned unchanged — except a
/// module's own `fail()` ([`SpecError::raised`]), which is always moved into the
/// environment (see [`relocate_fail`]).
pub fn relocate(env: &Environment, module: &Module, host: &str, e: SpecError) -> SpecError {
    if let Some(raised) = e.raised.clone() {
        return relocate_fail(env, module, host, e, &raised);
    }
    if e.location.file != module.source.path {
        return e;
    }
    let quoted = backticked(&e.message);
    if quoted.is_empty() {
        return e;
    }
    let leaves = leaves(env, module, host);
    let Some(path) = by_quoted_value(&quoted, &leaves) else {
        return e;
    };
    let mut out = env.error(&path, e.message.clone());
    out.notes = e.notes.clone();
    out.notes.push(format!(
        "used by module `{}` at {} (`{}`), on host `{host}`",
        module.name, e.location, e.key
    ));
    out
}

/// A module's `fail("…")` at the environment key that set the value it is about, the
/// first that applies of:
/// 1. a backticked value of the message that a parameter or variable holds (as above);
/// 2. a backticked parameter name (`` `nodes` ``) the environment sets;
/// 3. a value the environment set under what the failing code reads, named in the
///    message (`site shop: …` → `modules.nginx.sites[0].name`), nearest read first;
/// 4. the first parameter or variable the failing code reads that the environment sets;
///
/// else the module's table (the host's `[hosts.H.modules.M]`, else `[modules.M]`), else
/// the role entry that brings the module to the host. The template position is a note.
pub fn relocate_fail(
    env: &Environment,
    module: &Module,
    host: &str,
    e: SpecError,
    raised: &Raised,
) -> SpecError {
    let quoted = backticked(&e.message);
    let leaves = leaves(env, module, host);
    let reads: Vec<String> = raised
        .reads
        .iter()
        .filter_map(|r| key_of_read(env, module, host, r))
        .collect();
    let path = by_quoted_value(&quoted, &leaves)
        .or_else(|| {
            quoted
                .iter()
                .find_map(|q| key_of_read(env, module, host, &format!("params.{q}")))
        })
        .or_else(|| {
            reads.iter().find_map(|k| {
                leaves
                    .iter()
                    .filter(|(p, _)| {
                        p == k || p.starts_with(&format!("{k}[")) || p.starts_with(&format!("{k}."))
                    })
                    .filter(|(_, v)| v.chars().count() >= 3 && names(&e.message, v))
                    .max_by_key(|(_, v)| v.len())
                    .map(|(p, _)| p.clone())
            })
        })
        .or_else(|| reads.first().cloned())
        .unwrap_or_else(|| module_table(env, module, host));
    let mut out = env.error(&path, e.message.clone());
    out.notes = e.notes.clone();
    out.notes.push(format!(
        "raised at {} by module `{}`, on host `{host}`",
        raised.at, module.name
    ));
    out
}

/// The backticked parts of a message.
fn backticked(message: &str) -> Vec<&str> {
    message
        .split('`')
        .skip(1)
        .step_by(2)
        .filter(|q| !q.is_empty())
        .collect()
}

/// Every scalar the environment gives this module on this host (the host's parameters,
/// the environment's, the host's variables, the environment's), with its key.
fn leaves(env: &Environment, module: &Module, host: &str) -> Vec<(String, String)> {
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
    leaves
}

/// The key of a leaf whose value is a backticked part, exactly or as its longest part.
fn by_quoted_value(quoted: &[&str], leaves: &[(String, String)]) -> Option<String> {
    quoted
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
        })
        .map(|(p, _)| p.clone())
}

/// The environment key that sets `params.NAME` (the host's, else the environment's) or
/// `vars.NAME` for this host; `None` when the environment does not set it (a default).
fn key_of_read(env: &Environment, module: &Module, host: &str, read: &str) -> Option<String> {
    let h = join_key("", host);
    let m = join_key("", &module.name);
    let hs = env.spec.hosts.get(host)?;
    if let Some(p) = read.strip_prefix("params.") {
        if hs
            .modules
            .get(&module.name)
            .is_some_and(|t| t.contains_key(p))
        {
            return Some(join_key(&format!("hosts.{h}.modules.{m}"), p));
        }
        if env
            .spec
            .modules
            .get(&module.name)
            .is_some_and(|t| t.contains_key(p))
        {
            return Some(join_key(&format!("modules.{m}"), p));
        }
    } else if let Some(v) = read.strip_prefix("vars.") {
        if hs.vars.contains_key(v) {
            return Some(join_key(&format!("hosts.{h}.vars"), v));
        }
        if env.spec.vars.contains_key(v) {
            return Some(join_key("vars", v));
        }
    }
    None
}

/// Where the environment gives this host the module: its `[hosts.H.modules.M]`, else
/// `[modules.M]`, else the role entry that names the module.
fn module_table(env: &Environment, module: &Module, host: &str) -> String {
    let h = join_key("", host);
    let m = join_key("", &module.name);
    let hs = env.spec.hosts.get(host);
    if hs.is_some_and(|hs| hs.modules.contains_key(&module.name)) {
        return format!("hosts.{h}.modules.{m}");
    }
    if env.spec.modules.contains_key(&module.name) {
        return format!("modules.{m}");
    }
    for r in hs.map(|hs| hs.roles.as_slice()).unwrap_or_default() {
        if let Some(i) = env
            .spec
            .roles
            .get(r)
            .and_then(|role| role.modules.iter().position(|x| *x == module.name))
        {
            return format!("roles.{}.modules[{i}]", join_key("", r));
        }
    }
    format!("hosts.{h}")
}

/// Whether `message` names `value` as a word of its own (not inside a longer word).
fn names(message: &str, value: &str) -> bool {
    let word = |c: char| c.is_alphanumeric() || c == '_' || c == '-';
    message.match_indices(value).any(|(i, _)| {
        let before = message[..i].chars().next_back();
        let after = message[i + value.len()..].chars().next();
        !before.is_some_and(word) && !after.is_some_and(word)
    })
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
