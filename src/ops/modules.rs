//! `kiln modules` and `kiln module show NAME`: the modules along the module path
//! (`spec::module_path`: `KILN_PATH`, then — with `--env` — the environment's
//! `modules_path` and repository, then `KILN_ROOT` or `.`) and their parameters, from the
//! module files themselves — like `ansible-doc`.

use anyhow::{bail, Result};

use crate::spec::module::{Module, ModuleSpec};
use crate::spec::module_path::ModulePath;
use crate::spec::parse_typed;
use crate::spec::source::SourceFile;
use crate::ui::Paint;

/// The module path: an environment's (`--env`), else `KILN_PATH` then `KILN_ROOT` or `.`.
fn module_path(env: Option<&str>) -> Result<ModulePath> {
    match env {
        Some(e) => Ok(crate::engine::load_env(e)?.module_path),
        None => Ok(ModulePath::without_env()),
    }
}

/// Every module used along the path (the first of each name), sorted by name.
pub fn all(env: Option<&str>) -> Result<Vec<Module>> {
    let path = module_path(env)?;
    let mut out: Vec<Module> = vec![];
    for (i, name, file) in path.list() {
        if out.iter().any(|m| m.name == name) {
            continue;
        }
        out.push(read(&file, &path.roots[i].dir)?);
    }
    out.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(out)
}

fn read(path: &std::path::Path, root: &std::path::Path) -> Result<Module> {
    let source = SourceFile::read(path)?;
    let spec: ModuleSpec = parse_typed(&source)?;
    let name = path
        .file_stem()
        .map(|s| s.to_string_lossy().to_string())
        .unwrap_or_default();
    Ok(Module {
        name,
        source,
        spec,
        root: root.to_path_buf(),
    })
}

/// The first sentence (or line) of a description.
fn summary(description: Option<&str>) -> String {
    let d = description.unwrap_or("").trim().replace('\n', " ");
    match d.find(". ") {
        Some(i) => d[..=i].to_string(),
        None => d,
    }
}

pub fn list(env: Option<&str>) -> Result<i32> {
    let paint = Paint::detect();
    let path = module_path(env)?;
    let found = path.list();
    if found.is_empty() {
        bail!(
            "no modules along the module path (looked in: {}); run kiln from the repository, or set KILN_ROOT or KILN_PATH",
            path.looked_in()
        );
    }
    let line = |m: &Module| {
        format!(
            "{}  {}",
            paint.bold(&format!("{:<20}", m.name)),
            summary(m.spec.description.as_deref())
        )
    };
    let mut roots: Vec<usize> = found.iter().map(|(i, _, _)| *i).collect();
    roots.dedup();
    if roots.len() == 1 {
        for (i, _, file) in &found {
            println!("{}", line(&read(file, &path.roots[*i].dir)?));
        }
        return Ok(0);
    }
    // Several roots: each under its directory, in path order; a name met again further
    // down the path is shadowed by the first.
    let mut first: Vec<(String, std::path::PathBuf)> = vec![];
    let mut current = None;
    for (i, name, file) in &found {
        if current != Some(*i) {
            if current.is_some() {
                println!();
            }
            let r = &path.roots[*i];
            println!(
                "{}",
                paint.bold(&format!(
                    "{} ({}):",
                    r.modules_dir().display(),
                    r.kind.describe()
                ))
            );
            current = Some(*i);
        }
        match first.iter().find(|(n, _)| n == name) {
            Some((_, used)) => println!("{:<20}  (shadowed: {} is used)", name, used.display()),
            None => {
                println!("{}", line(&read(file, &path.roots[*i].dir)?));
                first.push((name.clone(), file.clone()));
            }
        }
    }
    Ok(0)
}

pub fn show(name: &str, env: Option<&str>) -> Result<i32> {
    let paint = Paint::detect();
    let mpath = module_path(env)?;
    let Some((root, path)) = mpath.find(name) else {
        let known: Vec<String> = all(env)
            .unwrap_or_default()
            .into_iter()
            .map(|m| m.name)
            .collect();
        bail!("{} (modules: {})", mpath.unknown(name), known.join(", "));
    };
    let m = read(&path, &root.dir)?;
    println!(
        "{} ({}, from {})",
        paint.bold(&m.name),
        path.display(),
        root.kind.describe()
    );
    for other in mpath.find_all(name).iter().skip(1) {
        println!("  shadows {}", other.display());
    }
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
        if spec.per_environment {
            line.push_str(", per environment (not inherited by `kiln clone`)");
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
    if !m.spec.listen.is_empty() {
        println!(
            "\n{}",
            paint.bold("Listens (debian-base's firewall opens each to `from`):")
        );
        for l in &m.spec.listen {
            let port = match &l.port {
                toml::Value::String(s) => s.clone(),
                other => other.to_string(),
            };
            let mut line = format!(
                "  {}/{}  from {}",
                port,
                l.proto.as_deref().unwrap_or("tcp"),
                l.from
            );
            if let Some(w) = &l.when {
                line.push_str(&format!(", when {w}"));
            }
            println!("{line}");
            if let Some(d) = &l.description {
                println!("      {d}");
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
