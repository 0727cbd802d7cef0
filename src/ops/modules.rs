//! `kiln modules` and `kiln module show NAME`: the modules (modules/*.toml under
//! `KILN_ROOT`, default `.`) and their parameters, from the module files themselves — like
//! `ansible-doc`.

use std::path::PathBuf;

use anyhow::{bail, Result};

use crate::spec::module::{Module, ModuleSpec};
use crate::spec::parse_typed;
use crate::spec::source::SourceFile;
use crate::ui::Paint;

fn modules_dir() -> PathBuf {
    std::env::var_os("KILN_ROOT")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("."))
        .join("modules")
}

/// Every module, sorted by name.
pub fn all() -> Result<Vec<Module>> {
    let dir = modules_dir();
    let entries = std::fs::read_dir(&dir).map_err(|e| {
        anyhow::anyhow!(
            "no modules directory {} ({e}); run kiln from the repository or set KILN_ROOT",
            dir.display()
        )
    })?;
    let mut paths: Vec<PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "toml"))
        .collect();
    paths.sort();
    paths.iter().map(|p| read(p)).collect()
}

fn read(path: &std::path::Path) -> Result<Module> {
    let source = SourceFile::read(path)?;
    let spec: ModuleSpec = parse_typed(&source)?;
    let name = path
        .file_stem()
        .map(|s| s.to_string_lossy().to_string())
        .unwrap_or_default();
    Ok(Module { name, source, spec })
}

/// The first sentence (or line) of a description.
fn summary(description: Option<&str>) -> String {
    let d = description.unwrap_or("").trim().replace('\n', " ");
    match d.find(". ") {
        Some(i) => d[..=i].to_string(),
        None => d,
    }
}

pub fn list() -> Result<i32> {
    let paint = Paint::detect();
    for m in all()? {
        println!(
            "{}  {}",
            paint.bold(&format!("{:<20}", m.name)),
            summary(m.spec.description.as_deref())
        );
    }
    Ok(0)
}

pub fn show(name: &str) -> Result<i32> {
    let paint = Paint::detect();
    let path = modules_dir().join(format!("{name}.toml"));
    if !path.is_file() {
        let known: Vec<String> = all()
            .unwrap_or_default()
            .into_iter()
            .map(|m| m.name)
            .collect();
        bail!("unknown module `{name}` (modules: {})", known.join(", "));
    }
    let m = read(&path)?;
    println!("{} ({})", paint.bold(&m.name), path.display());
    if let Some(d) = &m.spec.description {
        println!("\n{}", d.trim());
    }
    println!("\n{}", paint.bold("Parameters:"));
    if m.spec.params.is_empty() {
        println!("  (none)");
    }
    for (p, spec) in &m.spec.params {
        let mut line = format!("  {}  {}", paint.cyan(p), spec.ty.name());
        if let Some(f) = &spec.format {
            line.push_str(&format!(", format `{f}`"));
        }
        match &spec.default {
            Some(d) => line.push_str(&format!(", default {d}")),
            None => line.push_str(", required"),
        }
        println!("{line}");
        if !spec.fields.is_empty() {
            let fields: Vec<String> = spec
                .fields
                .iter()
                .map(|(k, f)| format!("{k} ({f})"))
                .collect();
            println!("      fields: {}", fields.join(", "));
        }
        if let Some(d) = &spec.description {
            for l in d.trim().lines() {
                println!("      {l}");
            }
        }
    }
    if !m.spec.check.is_empty() {
        println!("\n{}", paint.bold("Health checks (kiln verify):"));
        for c in &m.spec.check {
            println!("  {}", c.name);
        }
    }
    Ok(0)
}
