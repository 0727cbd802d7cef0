//! `kiln explain ENV KEY`: a value of the merged environment and where it comes from —
//! the file and line that set it, the values it overrides through the `extends` chain, or
//! the module default it falls back to. `--format json` prints [`Explained`].

use anyhow::{bail, Result};
use serde::Serialize;

mod keys;

use crate::ops::plan::Format;
use crate::spec::{source::join_key, Environment};
use keys::{canonical, lookup, segments};

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

/// Where a value comes from: `kiln explain --format json` prints this document.
#[derive(Debug, Serialize)]
pub struct Explained {
    pub key: String,
    /// The merged value (as JSON).
    pub value: serde_json::Value,
    /// The file and line that set it (`part_of`: the enclosing key that set it whole).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub set_by: Option<At>,
    /// The values it overrides through `extends`, nearest parent first.
    pub overrides: Vec<At>,
    /// Not set by the environment: the module whose default it is.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub default_of: Option<At>,
}

#[derive(Debug, Serialize)]
pub struct At {
    pub file: String,
    pub line: usize,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub part_of: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub text: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub module: Option<String>,
}

impl At {
    fn new(file: &std::path::Path, line: usize) -> At {
        At {
            file: file.display().to_string(),
            line,
            part_of: None,
            text: None,
            module: None,
        }
    }
}

pub fn run(env_arg: &str, key: &str, format: Format) -> Result<i32> {
    let env = crate::engine::load_env(env_arg)?;
    let (e, shown) = explain(&env, key)?;
    match format {
        Format::Json => println!("{}", serde_json::to_string_pretty(&e)?),
        Format::Human => {
            println!("{} = {shown}", e.key);
            if let Some(at) = &e.set_by {
                match &at.part_of {
                    None => println!("  set by {}:{}", at.file, at.line),
                    Some(p) => println!("  set by {}:{} (as part of `{p}`)", at.file, at.line),
                }
            }
            for o in &e.overrides {
                println!(
                    "  overrides {}:{} = {}",
                    o.file,
                    o.line,
                    o.text.as_deref().unwrap_or_default()
                );
            }
            if let Some(d) = &e.default_of {
                println!(
                    "  not set by the environment: the default of module `{}` ({}:{})",
                    d.module.as_deref().unwrap_or_default(),
                    d.file,
                    d.line
                );
            }
        }
    }
    Ok(0)
}

/// The explanation of `key` and its value as the human output shows it.
pub fn explain(env: &Environment, key: &str) -> Result<(Explained, String)> {
    let segs = segments(key);
    if segs.is_empty() {
        bail!("give a key such as `hosts.web.address` or `modules.nginx.sites`");
    }
    let key = canonical(&segs);
    let merged = toml::Value::try_from(&env.spec)?;
    match lookup(&merged, &segs) {
        Some(v) if env.provenance.contains_key(&key) || ancestor_set(env, &key) => {
            let (file, found) = env.source_of(&key);
            let at = file
                .key_span(&found)
                .map(|s| file.location(s.start).line)
                .unwrap_or(1);
            let mut set_by = At::new(&file.path, at);
            if found != key {
                set_by.part_of = Some(found.clone());
            }
            // The values it overrides, nearest parent first.
            let mut overrides = vec![];
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
                let mut o = At::new(&src.path, line);
                o.text = Some(text);
                overrides.push(o);
            }
            Ok((
                Explained {
                    key,
                    value: serde_json::to_value(v)?,
                    set_by: Some(set_by),
                    overrides,
                    default_of: None,
                },
                show(v),
            ))
        }
        _ => explain_default(env, &segs, &key),
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
fn explain_default(env: &Environment, segs: &[String], key: &str) -> Result<(Explained, String)> {
    if segs.len() >= 3 && segs[0] == "modules" {
        if let Some(m) = env.modules.get(&segs[1]) {
            if let Some(p) = m.spec.params.get(&segs[2]) {
                let pkey = format!("params.{}", join_key("", &segs[2]));
                let line = m
                    .source
                    .key_span(&pkey)
                    .map(|s| m.source.location(s.start).line)
                    .unwrap_or(1);
                let Some(d) = &p.default else {
                    bail!(
                        "`{key}` is not set, and module `{}` has no default for it ({}:{line})",
                        m.name,
                        m.source.path.display()
                    );
                };
                let Some(v) = lookup(d, &segs[3..]) else {
                    bail!("`{key}` is not set (module default has no such part)");
                };
                let mut at = At::new(&m.source.path, line);
                at.module = Some(m.name.clone());
                return Ok((
                    Explained {
                        key: key.to_string(),
                        value: serde_json::to_value(v)?,
                        set_by: None,
                        overrides: vec![],
                        default_of: Some(at),
                    },
                    show(v),
                ));
            }
        }
    }
    bail!(
        "`{key}` is not set in {} or the environments it extends",
        env.file.display()
    )
}
