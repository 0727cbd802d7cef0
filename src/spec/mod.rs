//! Spec: load an environment (following `extends`), its modules, and its secret
//! references; validate everything before any host is contacted.
//!
//! # Merge rules for `extends`
//! The child is laid over its parent key by key: tables merge recursively (a child's
//! `[hosts.web]` changes only the keys it sets), while scalars and arrays are replaced
//! whole (a child's `roles = [...]` is the new list, not an addition). A secret
//! (`[secrets.NAME]`) is replaced whole too: it has one source, and a child that names
//! another (`generate` over its parent's `age`) chooses it. Provenance — which
//! file and line set each value — is kept for errors and `kiln explain`.

pub mod age;
pub mod anonymize;
pub mod clone;
pub mod ec2;
pub mod env;
pub mod error;
pub mod module;
pub mod module_path;
pub mod secret;
pub mod source;
pub mod validate;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use indexmap::IndexMap;

use crate::spec::error::{SpecError, SpecErrors};
pub use env::{AptSpec, EnvSpec, HostSpec, Provider, RoleSpec, SecretRef, SshSpec};
pub use module::{Module, ModuleSpec, ParamSpec, ParamType};
pub use module_path::{ModulePath, ModuleRoot, RootKind};
pub use secret::{Redactor, SecretValue};
pub use source::{Location, SourceFile};

/// A loaded, merged and validated environment.
#[derive(Debug, Clone)]
pub struct Environment {
    pub name: String,
    /// The environment file named on the command line.
    pub file: PathBuf,
    /// The environment's repository: the directory above its `environments/` (or the
    /// file's own directory). Secrets must stay outside it; its `modules/` are on the
    /// module path.
    pub root: PathBuf,
    /// Where modules and their templates are looked up (`spec::module_path`).
    pub module_path: ModulePath,
    pub spec: EnvSpec,
    /// The `extends` chain, base first, the named file last.
    pub sources: Vec<SourceFile>,
    /// Key path → index in `sources` of the file that set it.
    pub provenance: IndexMap<String, usize>,
    /// Modules used by any role, by name.
    pub modules: IndexMap<String, Module>,
    pub secrets: BTreeMap<String, SecretValue>,
    /// Secrets that could not be read and stand in as `<secret NAME>` (offline only; see
    /// [`Environment::resolve_secrets_or_placeholders`]).
    pub placeholders: Vec<String>,
}

/// An environment's `[seed]`, checked (see [`Environment::seed`]).
#[derive(Debug, Clone)]
pub struct Seed {
    pub from_env: String,
    /// None: copied without anonymisation (`no_anonymize = true`).
    pub rules: Option<anonymize::Rules>,
    pub key_secret: String,
}

/// Finds the environment file for a command-line argument: a path to a `.toml` file, or a
/// name under `environments/` of the current directory (or of `KILN_ROOT`).
pub fn resolve_env_path(arg: &str) -> PathBuf {
    let p = Path::new(arg);
    if arg.ends_with(".toml") || p.components().count() > 1 {
        return p.to_path_buf();
    }
    let root = std::env::var_os("KILN_ROOT")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("."));
    root.join("environments").join(format!("{arg}.toml"))
}

/// The repository root of an environment file: the parent of its `environments/` folder,
/// or the file's own folder when it is not in one.
pub fn root_of(env_file: &Path) -> PathBuf {
    let dir = env_file.parent().map(Path::to_path_buf).unwrap_or_default();
    let dir = if dir.as_os_str().is_empty() {
        PathBuf::from(".")
    } else {
        dir
    };
    if dir
        .file_name()
        .map(|n| n == "environments")
        .unwrap_or(false)
    {
        dir.parent()
            .map(|p| {
                if p.as_os_str().is_empty() {
                    PathBuf::from(".")
                } else {
                    p.to_path_buf()
                }
            })
            .unwrap_or(dir)
    } else {
        dir
    }
}

/// Parses one file as `T`, turning serde's errors (unknown key, wrong type) into errors
/// with the position and the key they are about.
pub fn parse_typed<T: serde::de::DeserializeOwned>(file: &SourceFile) -> Result<T, SpecError> {
    toml::from_str::<T>(&file.text).map_err(|e| {
        let span = e.span().unwrap_or(0..0);
        let mut key = file.path_at(span.start).unwrap_or_default();
        let message = e.message().trim().to_string();
        // serde names the unknown field but the span covers its whole table; point at the key.
        if let Some(field) = message
            .strip_prefix("unknown field `")
            .and_then(|m| m.split('`').next())
        {
            let candidate = source::join_key(&key, field);
            if let Some(s) = file.key_span(&candidate) {
                return SpecError::at(file, s, candidate, message);
            }
            // The span is the table itself; find the child key under it.
            if let Some(found) = find_child_key(file, &key, field) {
                key = found;
                return SpecError::at(file, file.nearest_span(&key), key, message);
            }
        }
        SpecError::at(file, span, key, message)
    })
}

fn find_child_key(file: &SourceFile, parent: &str, field: &str) -> Option<String> {
    // serde reported an unknown `field` somewhere inside the table at `parent`.
    let suffix = format!(".{field}");
    file.keys()
        .find(|k| {
            (k.ends_with(&suffix) && k.starts_with(parent))
                || (parent.is_empty() && k.as_str() == field)
        })
        .cloned()
}

impl Environment {
    /// Loads the environment file at `path` with its `extends` chain and modules.
    pub fn load(path: &Path) -> Result<Environment, SpecErrors> {
        let root = root_of(path);
        let mut sources: Vec<SourceFile> = vec![];
        let mut current = path.to_path_buf();
        loop {
            if sources.iter().any(|s| s.path == current) {
                let last = sources.last().expect("chain has the file that extends");
                return Err(
                    SpecError::at_key(last, "extends", "`extends` forms a cycle")
                        .note(format!(
                            "chain: {}",
                            sources
                                .iter()
                                .map(|s| s.path.display().to_string())
                                .collect::<Vec<_>>()
                                .join(" → ")
                        ))
                        .into(),
                );
            }
            let file = SourceFile::read(&current)?;
            let typed: EnvSpec = parse_typed(&file)?;
            sources.push(file);
            match typed.extends {
                Some(parent) => {
                    let dir = current.parent().unwrap_or(Path::new("."));
                    let next = dir.join(format!("{parent}.toml"));
                    if !next.exists() {
                        let f = sources.last().expect("just pushed");
                        return Err(SpecError::at(
                            f,
                            f.value_span("extends").unwrap_or(0..0),
                            "extends",
                            format!(
                                "no environment `{parent}` ({} does not exist)",
                                next.display()
                            ),
                        )
                        .into());
                    }
                    current = next;
                }
                None => break,
            }
        }
        sources.reverse();

        // Merge base → child, keeping which file set each key.
        let mut merged = toml::Value::Table(toml::Table::new());
        let mut provenance: IndexMap<String, usize> = IndexMap::new();
        for (i, file) in sources.iter().enumerate() {
            let value: toml::Value =
                toml::Value::Table(file.text.parse::<toml::Table>().map_err(|e| {
                    SpecError::at(file, e.span().unwrap_or(0..0), "", e.message().to_string())
                })?);
            merge(&mut merged, value, "", i, &mut provenance);
        }
        if let toml::Value::Table(t) = &mut merged {
            t.remove("extends");
            // `[hosts.X] omit = true`: an environment that extends another without one of its
            // hosts (a QA copy with one database node instead of three).
            if let Some(toml::Value::Table(hosts)) = t.get_mut("hosts") {
                hosts.retain(|_, h| h.get("omit").and_then(|v| v.as_bool()) != Some(true));
                for (_, h) in hosts.iter_mut() {
                    if let toml::Value::Table(h) = h {
                        h.remove("omit");
                    }
                }
            }
        }
        let spec: EnvSpec = merged.try_into().map_err(|e: toml::de::Error| {
            let last = sources.last().expect("at least one file");
            SpecErrors::from(SpecError::at(last, 0..0, "", e.message().to_string()))
        })?;
        let name = path
            .file_stem()
            .map(|s| s.to_string_lossy().to_string())
            .unwrap_or_default();
        let mut env = Environment {
            name,
            file: path.to_path_buf(),
            root,
            spec,
            sources,
            provenance,
            module_path: ModulePath::default(),
            modules: IndexMap::new(),
            secrets: BTreeMap::new(),
            placeholders: vec![],
        };
        env.validate()?;
        Ok(env)
    }

    /// The source file and key path that set `path` (or its nearest set ancestor).
    pub fn source_of(&self, path: &str) -> (&SourceFile, String) {
        let mut p = path.to_string();
        loop {
            if let Some(&i) = self.provenance.get(&p) {
                if self.sources[i].has(&p) {
                    return (&self.sources[i], p);
                }
            }
            match p.rfind(['.', '[']) {
                Some(i) => p.truncate(i),
                None => {
                    return (
                        self.sources.last().expect("at least one file"),
                        path.to_string(),
                    )
                }
            }
        }
    }

    /// An error about the value at `path`, located in the file that set it.
    pub fn error(&self, path: &str, message: impl Into<String>) -> SpecError {
        let (file, found) = self.source_of(path);
        let mut e = SpecError::at_key(file, &found, message);
        e.key = path.to_string();
        e
    }

    /// `[seed]`, checked: the source's name, its anonymisation rules (read and checked,
    /// the path relative to the file that names it) and the secret keying the fakes.
    pub fn seed(&self) -> Result<Option<Seed>, SpecError> {
        let Some(s) = &self.spec.seed else {
            return Ok(None);
        };
        let named = !s.from_env.is_empty()
            && s.from_env
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
        if !named {
            return Err(self.error(
                "seed.from_env",
                format!(
                    "`{}`: an environment's name (letters, digits, `-`, `_`)",
                    s.from_env
                ),
            ));
        }
        if s.from_env == self.name {
            return Err(self.error("seed.from_env", "an environment cannot seed itself"));
        }
        let rules = match (&s.anonymize, s.no_anonymize) {
            (Some(_), true) | (None, false) => {
                return Err(self.error(
                    "seed",
                    "a seed needs exactly one of `anonymize = \"RULES.toml\"` or `no_anonymize = true` (the source's data as it is)",
                ))
            }
            (None, true) => None,
            (Some(f), false) => {
                let (file, _) = self.source_of("seed.anonymize");
                let dir = file.path.parent().unwrap_or(Path::new("."));
                Some(anonymize::load(&dir.join(f))?)
            }
        };
        let key = s
            .key_secret
            .clone()
            .unwrap_or_else(|| "anonymize_key".into());
        if rules.as_ref().is_some_and(|r| r.tables > 0) && !self.spec.secrets.contains_key(&key) {
            return Err(self.error(
                if s.key_secret.is_some() { "seed.key_secret" } else { "seed" },
                format!("the anonymisation is keyed by the secret `{key}`: declare it (`[secrets.{key}] generate = 32`)"),
            ));
        }
        Ok(Some(Seed {
            from_env: s.from_env.clone(),
            rules,
            key_secret: key,
        }))
    }

    /// The module path of this environment: `KILN_PATH`, `modules_path` (directories that
    /// exist; the others are reported by `validate`), its repository, then `KILN_ROOT` or
    /// the current directory.
    fn build_module_path(&self) -> (ModulePath, Vec<SpecError>) {
        let mut middle = vec![];
        let mut errors = vec![];
        if !self.spec.modules_path.is_empty() {
            let (file, _) = self.source_of("modules_path");
            let dir = file.path.parent().unwrap_or(Path::new("."));
            let dir = if dir.as_os_str().is_empty() {
                Path::new(".")
            } else {
                dir
            };
            for (i, p) in self.spec.modules_path.iter().enumerate() {
                let key = format!("modules_path[{i}]");
                let d = if dir == Path::new(".") {
                    PathBuf::from(expand_home(p))
                } else {
                    dir.join(expand_home(p))
                };
                if p.is_empty() {
                    errors.push(self.error(&key, "an empty directory name"));
                } else if !d.is_dir() {
                    errors.push(self.error(
                        &key,
                        format!(
                            "no directory {} (`modules_path` is relative to {})",
                            d.display(),
                            file.path.display()
                        ),
                    ));
                } else if !d.join("modules").is_dir() {
                    errors.push(self.error(
                        &key,
                        format!(
                            "{} has no `modules/` directory (a `modules_path` entry holds modules/ and templates/)",
                            d.display()
                        ),
                    ));
                } else {
                    // `environments/../../kiln` named as what it is, in every message.
                    let d = std::fs::canonicalize(&d).unwrap_or(d);
                    middle.push(ModuleRoot::new(d, RootKind::ModulesPath));
                }
            }
        }
        middle.push(ModuleRoot::new(self.root.clone(), RootKind::EnvRepo));
        (ModulePath::build(middle), errors)
    }

    /// The known_hosts file for this environment (beside the environment file by default).
    pub fn known_hosts(&self) -> PathBuf {
        let dir = self.file.parent().unwrap_or(Path::new("."));
        match &self.spec.ssh.known_hosts {
            Some(p) => dir.join(expand_home(p)),
            None => dir.join(format!("{}.known_hosts", self.name)),
        }
    }

    pub fn redactor(&self) -> Redactor {
        Redactor::new(self.secrets.values().cloned())
    }

    /// Hosts selected by `--limit` (a host name or a role name); all when `None`.
    pub fn select_hosts(&self, limit: Option<&str>) -> Result<Vec<String>, SpecError> {
        let all: Vec<String> = self.spec.hosts.keys().cloned().collect();
        let Some(limit) = limit else { return Ok(all) };
        let mut out = vec![];
        for part in limit.split(',').map(str::trim).filter(|s| !s.is_empty()) {
            if self.spec.hosts.contains_key(part) {
                out.push(part.to_string());
            } else if self.spec.roles.contains_key(part) {
                out.extend(
                    self.spec
                        .hosts
                        .iter()
                        .filter(|(_, h)| h.roles.iter().any(|r| r == part))
                        .map(|(n, _)| n.clone()),
                );
            } else {
                return Err(SpecError::new(
                    Location {
                        file: PathBuf::from("--limit"),
                        line: 1,
                        column: 1,
                    },
                    part,
                    format!(
                        "no host or role named `{part}` in {} (hosts: {}; roles: {})",
                        self.file.display(),
                        all.join(", "),
                        self.spec
                            .roles
                            .keys()
                            .cloned()
                            .collect::<Vec<_>>()
                            .join(", ")
                    ),
                ));
            }
        }
        // A host named twice (`web,db1,web`, or by its name and its role) is worked on
        // once, where it was first named: twice would plan and apply it twice at once.
        let mut seen = std::collections::HashSet::new();
        out.retain(|h| seen.insert(h.clone()));
        Ok(out)
    }

    /// Reads every secret's value (environment variable, file, generated, lab artifact,
    /// age file). Called by the commands that render templates; `lab`, `ssh` and
    /// `ssh-config` never need secrets.
    /// For offline checks: every secret that cannot be resolved gets a placeholder value
    /// (still redacted like a real one); their names are kept in `placeholders`. An `age`
    /// secret without an identity is a placeholder too, but its file must be there and be
    /// an age file, and a wrong identity is still an error: both are the repository's
    /// mistakes, which an offline check is for.
    pub fn resolve_secrets_or_placeholders(&mut self) -> Result<(), SpecErrors> {
        self.resolve(true)?;
        self.placeholders.clear();
        let names: Vec<String> = self.spec.secrets.keys().cloned().collect();
        for name in names {
            if !self.secrets.contains_key(&name) {
                self.secrets
                    .insert(name.clone(), SecretValue::new(&format!("<secret {name}>")));
                self.placeholders.push(name);
            }
        }
        Ok(())
    }

    pub fn resolve_secrets(&mut self) -> Result<(), SpecErrors> {
        self.resolve(false)
    }

    /// `offline`: only the errors of `age` secrets that an offline check can see are kept.
    fn resolve(&mut self, offline: bool) -> Result<(), SpecErrors> {
        let mut errors = vec![];
        let mut offline_errors = vec![];
        // The identity is read once, only when an age secret needs it.
        let mut identity: Option<Result<Option<age::AgeIdentity>, String>> = None;
        for (name, r) in &self.spec.secrets {
            let base = format!("secrets.{}", source::join_key("", name));
            if r.age.is_some() {
                let key = format!("{base}.age");
                let id = identity.get_or_insert_with(|| self.age_identity());
                let id = match id {
                    Ok(id) => id.as_ref(),
                    // Offline (CI), an identity file that is not there is no identity.
                    Err(_) if offline => None,
                    Err(e) => {
                        let e = self.error(&key, format!("secret `{name}`: {e}"));
                        offline_errors.push(e);
                        continue;
                    }
                };
                match self.read_age_secret(name, id) {
                    Ok(Some(v)) => {
                        self.secrets.insert(name.clone(), SecretValue::new(&v));
                    }
                    Ok(None) => errors.push(
                        self.error(
                            &key,
                            format!(
                                "secret `{name}` is encrypted with age ({}) and no identity is given",
                                self.age_file(name)
                                    .and_then(Result::ok)
                                    .map(|p| p.display().to_string())
                                    .unwrap_or_default()
                            ),
                        )
                        .note(age::IDENTITY_HELP),
                    ),
                    Err(e) => offline_errors.push(self.error(&key, e)),
                }
                continue;
            }
            if let Some(a) = &r.lab_artifact {
                let p = crate::state::lab_artifacts_dir().join(a);
                match std::fs::read_to_string(&p) {
                    Ok(v) => {
                        self.secrets
                            .insert(name.clone(), SecretValue::new(v.trim_end_matches('\n')));
                    }
                    Err(e) => errors.push(self.error(
                        &format!("{base}.lab_artifact"),
                        format!("cannot read {} (is the lab up?): {e}", p.display()),
                    )),
                }
                continue;
            }
            match (&r.env, &r.file) {
                (None, None) if r.generate.is_some() => {
                    let len = r.generate.unwrap_or(32) as usize;
                    if !(8..=256).contains(&len) {
                        errors.push(self.error(
                            &format!("{base}.generate"),
                            "`generate` is a length between 8 and 256",
                        ));
                        continue;
                    }
                    match crate::state::generated_secret(&self.name, name, len) {
                        Ok(v) => {
                            self.secrets.insert(name.clone(), SecretValue::new(&v));
                        }
                        Err(e) => {
                            errors.push(self.error(&format!("{base}.generate"), format!("{e:#}")))
                        }
                    }
                }
                (Some(var), None) if r.generate.is_none() => match std::env::var(var) {
                    Ok(v) => {
                        self.secrets.insert(name.clone(), SecretValue::new(&v));
                    }
                    Err(_) => errors.push(self.error(
                        &format!("{base}.env"),
                        format!("environment variable `{var}` is not set"),
                    )),
                },
                (None, Some(file)) if r.generate.is_none() => {
                    let p = PathBuf::from(expand_home(file));
                    match std::fs::read_to_string(&p) {
                        Ok(v) => {
                            self.secrets
                                .insert(name.clone(), SecretValue::new(v.trim_end_matches('\n')));
                        }
                        Err(e) => errors.push(self.error(
                            &format!("{base}.file"),
                            format!("cannot read {}: {e}", p.display()),
                        )),
                    }
                }
                _ => {}
            }
        }
        if offline {
            errors = offline_errors;
        } else {
            errors.extend(offline_errors);
        }
        if errors.is_empty() {
            Ok(())
        } else {
            Err(SpecErrors(errors))
        }
    }

    fn validate(&mut self) -> Result<(), SpecErrors> {
        let mut errors = vec![];
        // Hosts: addresses and roles.
        for (name, host) in &self.spec.hosts {
            let base = format!("hosts.{}", source::join_key("", name));
            // An ec2 host's address is its instance's (`provider::ec2`).
            if host.provider != Provider::Ec2
                && host.address.as_deref().map(str::is_empty).unwrap_or(true)
            {
                errors.push(self.error(&base, "host has no `address`"));
            }
            if host.provider == Provider::Lab {
                if let Some(addr) = &host.address {
                    let ok = addr
                        .parse::<std::net::Ipv4Addr>()
                        .map(|a| a.octets()[..3] == [10, 233, 0] && a.octets()[3] > 1)
                        .unwrap_or(false);
                    if !ok {
                        errors.push(self.error(&format!("{base}.address"), format!("lab host address `{addr}` must be in 10.233.0.2–10.233.0.254 (the lab bridge's /24)")));
                    }
                }
            }
            for (i, role) in host.roles.iter().enumerate() {
                if !self.spec.roles.contains_key(role) {
                    errors.push(self.error(
                        &format!("{base}.roles[{i}]"),
                        format!(
                                "unknown role `{role}` (roles: {})",
                                self.spec
                                    .roles
                                    .keys()
                                    .cloned()
                                    .collect::<Vec<_>>()
                                    .join(", ")
                            ),
                    ));
                }
            }
        }
        // The module path, then roles → modules: load each module once, from the first
        // root of the path that has it.
        let (module_path, path_errors) = self.build_module_path();
        errors.extend(path_errors);
        self.module_path = module_path;
        let mut modules = IndexMap::new();
        for (rname, role) in &self.spec.roles {
            for (i, m) in role.modules.iter().enumerate() {
                if modules.contains_key(m) {
                    continue;
                }
                let Some((root, path)) = self.module_path.find(m) else {
                    errors.push(self.error(
                        &format!("roles.{}.modules[{i}]", source::join_key("", rname)),
                        self.module_path.unknown(m),
                    ));
                    continue;
                };
                let root = root.dir.clone();
                match SourceFile::read(&path)
                    .and_then(|src| parse_typed::<ModuleSpec>(&src).map(|spec| (src, spec)))
                {
                    Ok((source, spec)) => {
                        errors.extend(validate_module(&source, &spec));
                        modules.insert(
                            m.clone(),
                            Module {
                                name: m.clone(),
                                source,
                                spec,
                                root,
                            },
                        );
                    }
                    Err(e) => errors.push(e),
                }
            }
        }
        // Module parameters, environment-wide and per host.
        let mut param_tables: Vec<(String, &String, &toml::Table)> = vec![];
        for (m, t) in &self.spec.modules {
            param_tables.push((format!("modules.{}", source::join_key("", m)), m, t));
        }
        for (h, host) in &self.spec.hosts {
            for (m, t) in &host.modules {
                param_tables.push((
                    format!(
                        "hosts.{}.modules.{}",
                        source::join_key("", h),
                        source::join_key("", m)
                    ),
                    m,
                    t,
                ));
            }
        }
        for (base, m, table) in param_tables {
            let Some(module) = modules.get(m) else {
                if self.module_path.find(m).is_some() {
                    errors.push(self.error(
                        &base,
                        format!(
                            "module `{m}` is not used by any role, so these parameters do nothing"
                        ),
                    ));
                } else {
                    errors.push(self.error(&base, self.module_path.unknown(m)));
                }
                continue;
            };
            for (k, v) in table {
                let key = source::join_key(&base, k);
                match module.spec.params.get(k) {
                    None => errors.push(self.error(
                        &key,
                        format!(
                            "module `{m}` has no parameter `{k}` (parameters: {})",
                            module.param_names()
                        ),
                    )),
                    Some(p) if !p.ty.accepts(v) => errors.push(self.error(
                        &key,
                        format!(
                            "parameter `{k}` of module `{m}` must be {}, found {}",
                            p.ty.name(),
                            v.type_str()
                        ),
                    )),
                    Some(p) => {
                        for (path, msg) in validate::check_entries(v, &p.entry, &key) {
                            errors.push(
                                self.error(
                                    &path,
                                    format!("parameter `{k}` of module `{m}`: {msg}"),
                                ),
                            );
                        }
                    }
                }
            }
        }
        // Secrets: exactly one source, and files outside the repository. Their values are
        // read only by `resolve_secrets`, for the commands that render templates.
        for (name, r) in &self.spec.secrets {
            let base = format!("secrets.{}", source::join_key("", name));
            match (&r.env, &r.file, r.generate, &r.lab_artifact, &r.age) {
                (Some(_), None, None, None, None) | (None, None, Some(_), None, None) => {}
                (None, None, None, None, Some(_)) => {
                    if let Some(Err(e)) = self.age_file(name) {
                        errors.push(self.error(&format!("{base}.age"), e));
                    }
                }
                (None, None, None, Some(a), None) => {
                    if a.is_empty() || a.contains('/') || a.starts_with('.') {
                        errors.push(self.error(
                            &format!("{base}.lab_artifact"),
                            "`lab_artifact` is a plain file name in the lab's artifacts directory (no `/`, not starting with `.`)",
                        ));
                    }
                }
                (None, Some(file), None, None, None) => {
                    let p = PathBuf::from(expand_home(file));
                    if !p.is_absolute() || self.inside_repo(&p) {
                        errors.push(self.error(&format!("{base}.file"), "secret files must be absolute paths outside the repository (secrets are never stored in the repo)"));
                    }
                }
                _ => errors.push(self.error(
                    &base,
                    "a secret needs exactly one of `env`, `file`, `generate`, `lab_artifact` or `age`",
                )),
            }
        }
        // age: the identity file outside the repository, recipients that parse.
        if let Some(p) = &self.spec.age_identity {
            let path = PathBuf::from(expand_home(p));
            if self.inside_repo(&path) {
                errors.push(self.error("age_identity", "the age identity must be outside the repository (a private key is never committed)"));
            }
        }
        for (i, r) in self.spec.age_recipients.iter().enumerate() {
            if let Err(e) = age::parse_recipient(r) {
                errors.push(self.error(&format!("age_recipients[{i}]"), e));
            }
        }
        if let Err(e) = self.seed() {
            errors.push(e);
        }
        errors.extend(ec2::validate(self));
        errors.extend(validate::environment(self, &modules));
        self.modules = modules;
        if errors.is_empty() {
            Ok(())
        } else {
            Err(SpecErrors(errors))
        }
    }
}

fn validate_module(source: &SourceFile, spec: &ModuleSpec) -> Vec<SpecError> {
    let mut errors = vec![];
    for (k, p) in &spec.params {
        if let Some(d) = &p.default {
            if !p.ty.accepts(d) {
                errors.push(SpecError::at_key(
                    source,
                    &format!("params.{k}.default"),
                    format!("default must be {}, found {}", p.ty.name(), d.type_str()),
                ));
            }
            let base = format!("params.{k}.default");
            for (path, msg) in validate::check_entries(d, &p.entry, &base) {
                errors.push(SpecError::at_key(source, &path, format!("default: {msg}")));
            }
        }
        if !p.entry.is_empty() {
            for field in p.fields.keys().filter(|f| !p.entry.contains_key(*f)) {
                errors.push(SpecError::at_key(
                    source,
                    &format!("params.{k}.fields.{field}"),
                    format!("`{field}` has a format but is not a key of `entry`"),
                ));
            }
        }
    }
    for (i, r) in spec.resource.iter().enumerate() {
        match r.get("type").and_then(|t| t.as_str()) {
            None => errors.push(SpecError::at_key(
                source,
                &format!("resource[{i}]"),
                "resource has no `type`",
            )),
            Some(t) if !crate::resource::Kind::TYPES.contains(&t) => {
                errors.push(SpecError::at_key(
                    source,
                    &format!("resource[{i}].type"),
                    format!(
                        "unknown resource type `{t}` (types: {})",
                        crate::resource::Kind::TYPES.join(", ")
                    ),
                ))
            }
            Some(_) => {}
        }
    }
    errors
}

fn merge(
    into: &mut toml::Value,
    from: toml::Value,
    path: &str,
    file: usize,
    prov: &mut IndexMap<String, usize>,
) {
    match (into, from) {
        (toml::Value::Table(a), toml::Value::Table(b)) => {
            for (k, v) in b {
                let p = source::join_key(path, &k);
                prov.insert(p.clone(), file);
                match a.get_mut(&k) {
                    // A secret has one source: a child's `[secrets.X]` replaces the parent's.
                    Some(existing) if existing.is_table() && v.is_table() && path != "secrets" => {
                        merge(existing, v, &p, file, prov)
                    }
                    _ => {
                        // Replaced whole: forget the provenance of the old value's children.
                        prov.retain(|key, _| {
                            !(key.starts_with(&format!("{p}."))
                                || key.starts_with(&format!("{p}[")))
                        });
                        record(&v, &p, file, prov);
                        a.insert(k, v);
                    }
                }
            }
        }
        (slot, v) => *slot = v,
    }
}

fn record(v: &toml::Value, path: &str, file: usize, prov: &mut IndexMap<String, usize>) {
    prov.insert(path.to_string(), file);
    match v {
        toml::Value::Table(t) => t
            .iter()
            .for_each(|(k, v)| record(v, &source::join_key(path, k), file, prov)),
        toml::Value::Array(a) => a
            .iter()
            .enumerate()
            .for_each(|(i, v)| record(v, &format!("{path}[{i}]"), file, prov)),
        _ => {}
    }
}

pub fn expand_home(p: &str) -> String {
    match (p.strip_prefix("~/"), std::env::var("HOME")) {
        (Some(rest), Ok(home)) => format!("{home}/{rest}"),
        _ => p.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limit_names_each_host_once_in_the_order_first_named() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::create_dir_all(dir.path().join("environments")).expect("mkdir");
        let file = dir.path().join("environments/e.toml");
        std::fs::write(
            &file,
            "[hosts.web]\naddress = \"10.0.0.1\"\nroles = [\"web\"]\n\
             [hosts.db1]\naddress = \"10.0.0.2\"\nroles = [\"db\"]\n\
             [hosts.db2]\naddress = \"10.0.0.3\"\nroles = [\"db\"]\n\
             [roles.web]\nmodules = []\n[roles.db]\nmodules = []\n",
        )
        .expect("write");
        let env = Environment::load(&file).expect("load");
        let sel = |l: &str| env.select_hosts(Some(l)).expect("select");
        assert_eq!(sel("db"), ["db1", "db2"]);
        assert_eq!(sel("db2,web"), ["db2", "web"]);
        // Named again, not next to its first mention: still once.
        assert_eq!(sel("db1,web,db"), ["db1", "web", "db2"]);
        assert_eq!(sel("web,db1,web"), ["web", "db1"]);
        assert_eq!(sel("db,db1, db2 ,"), ["db1", "db2"]);
        assert_eq!(env.select_hosts(None).expect("all"), ["web", "db1", "db2"]);
        assert!(env.select_hosts(Some("web,nope")).is_err());
    }
}
