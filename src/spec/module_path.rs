//! The module path: the directories a module (`modules/NAME.toml`) and its templates
//! (`templates/NAME/`) are looked up in, first match per module name winning, so that a
//! team keeps its environments (and its own modules) in its own repository and kiln's
//! modules in kiln's:
//!
//! 1. `KILN_PATH`: colon-separated directories, each holding `modules/` and `templates/`;
//! 2. the environment's `modules_path = ["../kiln-modules", …]` (relative to the file that
//!    sets it; a directory that is not there is a spec error at its key);
//! 3. the environment's repository (the directory above `environments/`, or the
//!    environment file's own directory);
//! 4. `KILN_ROOT`, else the current directory (the repository kiln runs in).
//!
//! A directory named twice (the environment's repository is the current directory) is
//! looked in once, at its first place. A module's templates always come from the root
//! its module file was found in.

use std::path::{Path, PathBuf};

/// Why a directory is on the module path (said in `kiln modules` and in errors).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RootKind {
    /// `KILN_PATH`.
    KilnPath,
    /// The environment's `modules_path`.
    ModulesPath,
    /// The repository the environment file is in.
    EnvRepo,
    /// `KILN_ROOT`.
    KilnRoot,
    /// The current directory (no `KILN_ROOT`).
    CurrentDir,
}

impl RootKind {
    pub fn describe(self) -> &'static str {
        match self {
            RootKind::KilnPath => "KILN_PATH",
            RootKind::ModulesPath => "modules_path",
            RootKind::EnvRepo => "the environment's repository",
            RootKind::KilnRoot => "KILN_ROOT",
            RootKind::CurrentDir => "the current directory",
        }
    }
}

/// One directory of the module path: it holds `modules/` and `templates/`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModuleRoot {
    pub dir: PathBuf,
    pub kind: RootKind,
}

impl ModuleRoot {
    pub fn new(dir: impl Into<PathBuf>, kind: RootKind) -> ModuleRoot {
        ModuleRoot {
            dir: dir.into(),
            kind,
        }
    }
    pub fn modules_dir(&self) -> PathBuf {
        self.dir.join("modules")
    }
    pub fn templates_dir(&self) -> PathBuf {
        self.dir.join("templates")
    }
    /// `modules/NAME.toml` under this root.
    pub fn module_file(&self, name: &str) -> PathBuf {
        self.modules_dir().join(format!("{name}.toml"))
    }
}

/// The directories modules are looked up in, in order (see the module documentation).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ModulePath {
    pub roots: Vec<ModuleRoot>,
}

/// A module name is one path component: letters, digits, `-`, `_`, `.`, not starting
/// with `.` (so `modules = ["../x"]` cannot reach outside `modules/`).
pub fn is_module_name(name: &str) -> bool {
    !name.is_empty()
        && !name.starts_with('.')
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

/// `KILN_PATH`'s directories (empty entries skipped).
pub fn kiln_path() -> Vec<ModuleRoot> {
    std::env::var_os("KILN_PATH")
        .map(|v| {
            std::env::split_paths(&v)
                .filter(|p| !p.as_os_str().is_empty())
                .map(|p| ModuleRoot::new(p, RootKind::KilnPath))
                .collect()
        })
        .unwrap_or_default()
}

/// `KILN_ROOT`, else the current directory.
pub fn repository() -> ModuleRoot {
    match std::env::var_os("KILN_ROOT").filter(|v| !v.is_empty()) {
        Some(r) => ModuleRoot::new(r, RootKind::KilnRoot),
        None => ModuleRoot::new(".", RootKind::CurrentDir),
    }
}

impl ModulePath {
    /// `KILN_PATH`, then `middle` (an environment's `modules_path` and repository), then
    /// `KILN_ROOT` or the current directory; a directory already on the path is skipped.
    pub fn build(middle: Vec<ModuleRoot>) -> ModulePath {
        let mut path = ModulePath::default();
        for r in kiln_path()
            .into_iter()
            .chain(middle)
            .chain(std::iter::once(repository()))
        {
            path.push(r);
        }
        path
    }

    /// The path without an environment: `KILN_PATH`, then `KILN_ROOT` or `.`.
    pub fn without_env() -> ModulePath {
        ModulePath::build(vec![])
    }

    fn push(&mut self, r: ModuleRoot) {
        let key = canonical(&r.dir);
        if !self.roots.iter().any(|x| canonical(&x.dir) == key) {
            self.roots.push(r);
        }
    }

    /// The first root holding `modules/NAME.toml`, and that file.
    pub fn find(&self, name: &str) -> Option<(&ModuleRoot, PathBuf)> {
        if !is_module_name(name) {
            return None;
        }
        self.roots.iter().find_map(|r| {
            let f = r.module_file(name);
            f.is_file().then_some((r, f))
        })
    }

    /// Every `modules/NAME.toml` along the path, first (the one used) first.
    pub fn find_all(&self, name: &str) -> Vec<PathBuf> {
        if !is_module_name(name) {
            return vec![];
        }
        self.roots
            .iter()
            .map(|r| r.module_file(name))
            .filter(|f| f.is_file())
            .collect()
    }

    /// The `modules/` directories looked in, for messages: `A/modules, B/modules`.
    pub fn looked_in(&self) -> String {
        self.roots
            .iter()
            .map(|r| format!("{} ({})", r.modules_dir().display(), r.kind.describe()))
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// The message for a module found nowhere on the path.
    pub fn unknown(&self, name: &str) -> String {
        if !is_module_name(name) {
            return format!(
                "`{name}` is not a module name (letters, digits, `-`, `_`, `.`; no `/`, not starting with `.`)"
            );
        }
        format!("unknown module `{name}` (looked in: {})", self.looked_in())
    }

    /// Every module file along the path, by root in path order, names sorted within a
    /// root: `(root index, name, file)`. Unreadable or missing `modules/` are skipped.
    pub fn list(&self) -> Vec<(usize, String, PathBuf)> {
        let mut out = vec![];
        for (i, r) in self.roots.iter().enumerate() {
            let Ok(entries) = std::fs::read_dir(r.modules_dir()) else {
                continue;
            };
            let mut found: Vec<(String, PathBuf)> = entries
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.is_file() && p.extension().is_some_and(|x| x == "toml"))
                .filter_map(|p| {
                    let name = p.file_stem()?.to_string_lossy().to_string();
                    is_module_name(&name).then_some((name, p))
                })
                .collect();
            found.sort();
            out.extend(found.into_iter().map(|(n, p)| (i, n, p)));
        }
        out
    }
}

fn canonical(p: &Path) -> PathBuf {
    std::fs::canonicalize(p).unwrap_or_else(|_| p.to_path_buf())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn module_names_are_one_component() {
        for ok in ["nginx", "mariadb-galera", "web_hello", "a.b"] {
            assert!(is_module_name(ok), "{ok}");
        }
        for bad in ["", "../x", ".hidden", "a/b", "a b", "x\n"] {
            assert!(!is_module_name(bad), "{bad:?}");
        }
    }

    #[test]
    fn first_match_wins_and_a_directory_is_looked_in_once() {
        let a = tempfile::tempdir().expect("tempdir");
        let b = tempfile::tempdir().expect("tempdir");
        for (d, text) in [(&a, "description = \"a\"\n"), (&b, "description = \"b\"\n")] {
            std::fs::create_dir_all(d.path().join("modules")).expect("mkdir");
            std::fs::write(d.path().join("modules/m.toml"), text).expect("write");
        }
        std::fs::write(b.path().join("modules/only_b.toml"), "").expect("write");
        let mut path = ModulePath::default();
        path.push(ModuleRoot::new(a.path(), RootKind::ModulesPath));
        path.push(ModuleRoot::new(b.path(), RootKind::EnvRepo));
        path.push(ModuleRoot::new(a.path().join("."), RootKind::KilnRoot));
        assert_eq!(path.roots.len(), 2, "{path:?}");
        let (root, file) = path.find("m").expect("found");
        assert_eq!(root.kind, RootKind::ModulesPath);
        assert_eq!(file, a.path().join("modules/m.toml"));
        assert_eq!(path.find_all("m").len(), 2);
        assert_eq!(
            path.find("only_b").expect("found").0.kind,
            RootKind::EnvRepo
        );
        assert!(path.find("../modules/m").is_none());
        let msg = path.unknown("nope");
        assert!(
            msg.starts_with("unknown module `nope` (looked in: ")
                && msg.contains(&a.path().join("modules").display().to_string())
                && msg.contains(&b.path().join("modules").display().to_string()),
            "{msg}"
        );
        let listed: Vec<(usize, String)> =
            path.list().into_iter().map(|(i, n, _)| (i, n)).collect();
        assert_eq!(
            listed,
            [(0, "m".into()), (1, "m".into()), (1, "only_b".into())]
        );
    }
}
