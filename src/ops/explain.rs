//! `kiln explain ENV KEY`: a value of the merged environment and where it comes from —
//! the file and line that set it, the values it overrides through the `extends` chain, or
//! the module default it falls back to.

use anyhow::{bail, Result};

use crate::spec::{source::join_key, Environment};

/// Splits `a.b[2]."c.d"` into segments (`a`, `b`, `[2]`, `c.d`).
fn segments(key: &str) -> Vec<String> {
    let mut out = vec![];
    let mut cur = String::new();
    let mut chars = key.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '"' => {
                for c in chars.by_ref() {
                    if c == '"' {
                        break;
                    }
                    cur.push(c);
                }
            }
            '.' => {
                if !cur.is_empty() {
                    out.push(std::mem::take(&mut cur));
                }
            }
            '[' => {
                if !cur.is_empty() {
                    out.push(std::mem::take(&mut cur));
                }
                let mut idx = String::from("[");
                for c in chars.by_ref() {
                    idx.push(c);
                    if c == ']' {
                        break;
                    }
                }
                out.push(idx);
            }
            c => cur.push(c),
        }
    }
    if !cur.is_empty() {
        out.push(cur);
    }
    out
}

/// The canonical key path (as provenance and errors spell it).
fn canonical(segs: &[String]) -> String {
    let mut p = String::new();
    for s in segs {
        if s.starts_with('[') {
            p.push_str(s);
        } else {
            p = join_key(&p, s);
        }
    }
    p
}

fn lookup<'a>(v: &'a toml::Value, segs: &[String]) -> Option<&'a toml::Value> {
    let mut cur = v;
    for s in segs {
        cur = if let Some(i) = s.strip_prefix('[').and_then(|s| s.strip_suffix(']')) {
            cur.as_array()?.get(i.parse::<usize>().ok()?)?
        } else {
            cur.as_table()?.get(s)?
        };
    }
    Some(cur)
}

fn show(v: &toml::Value) -> String {
    match v {
        toml::Value::Table(t) => {
            let text = toml::to_string_pretty(t).unwrap_or_default();
            if text.trim().is_empty() {
                "{}".into()
            } else {
                format!("\n{}", text.trim_end())
            }
        }
        other => other.to_string(),
    }
}

pub fn run(env_arg: &str, key: &str) -> Result<i32> {
    let env = crate::engine::load_env(env_arg)?;
    let segs = segments(key);
    if segs.is_empty() {
        bail!("give a key such as `hosts.web.address` or `modules.nginx.sites`");
    }
    let key = canonical(&segs);
    let merged = toml::Value::try_from(&env.spec)?;
    match lookup(&merged, &segs) {
        Some(v) if env.provenance.contains_key(&key) || ancestor_set(&env, &key) => {
            println!("{key} = {}", show(v));
            let (file, found) = env.source_of(&key);
            let at = file
                .key_span(&found)
                .map(|s| file.location(s.start).line)
                .unwrap_or(1);
            if found == key {
                println!("  set by {}:{at}", file.path.display());
            } else {
                println!(
                    "  set by {}:{at} (as part of `{found}`)",
                    file.path.display()
                );
            }
            // The values it overrides, nearest parent first.
            for src in env.sources.iter().rev() {
                if std::ptr::eq(src, file) || !src.has(&key) {
                    continue;
                }
                let span = src.value_span(&key).unwrap_or(0..0);
                let line = src.location(span.start).line;
                let text = src.text[span].trim();
                let text: String = if text.len() > 120 {
                    format!(
                        "{}…",
                        &text[..text.char_indices().nth(117).map(|(i, _)| i).unwrap_or(117)]
                    )
                } else {
                    text.to_string()
                };
                println!("  overrides {}:{line} = {text}", src.path.display());
            }
            Ok(0)
        }
        _ => explain_default(&env, &segs, &key),
    }
}

fn ancestor_set(env: &Environment, key: &str) -> bool {
    let mut p = key.to_string();
    while let Some(i) = p.rfind(['.', '[']) {
        p.truncate(i);
        if env.provenance.contains_key(&p) {
            return true;
        }
    }
    false
}

/// `modules.M.P` not set by the environment: the module's default.
fn explain_default(env: &Environment, segs: &[String], key: &str) -> Result<i32> {
    if segs.len() >= 3 && segs[0] == "modules" {
        if let Some(m) = env.modules.get(&segs[1]) {
            if let Some(p) = m.spec.params.get(&segs[2]) {
                let pkey = format!("params.{}", join_key("", &segs[2]));
                let line = m
                    .source
                    .key_span(&pkey)
                    .map(|s| m.source.location(s.start).line)
                    .unwrap_or(1);
                match &p.default {
                    Some(d) => {
                        let v = lookup(d, &segs[3..]);
                        match v {
                            Some(v) => println!("{key} = {}", show(v)),
                            None => bail!("`{key}` is not set (module default has no such part)"),
                        }
                        println!(
                            "  not set by the environment: the default of module `{}` ({}:{line})",
                            m.name,
                            m.source.path.display()
                        );
                    }
                    None => bail!(
                        "`{key}` is not set, and module `{}` has no default for it ({}:{line})",
                        m.name,
                        m.source.path.display()
                    ),
                }
                return Ok(0);
            }
        }
    }
    bail!(
        "`{key}` is not set in {} or the environments it extends",
        env.file.display()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_split_like_errors_print_them() {
        assert_eq!(
            segments("modules.nginx.sites[1].domains"),
            ["modules", "nginx", "sites", "[1]", "domains"]
        );
        assert_eq!(
            segments("hosts.\"odd.name\".address"),
            ["hosts", "odd.name", "address"]
        );
        assert_eq!(
            canonical(&segments("hosts.\"odd.name\".address")),
            "hosts.\"odd.name\".address"
        );
        assert_eq!(canonical(&segments("a.b[2]")), "a.b[2]");
    }
}
