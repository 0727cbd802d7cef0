//! The architecture as a test: the imports between `src/` modules (every `crate::` path and
//! `super::` path in code, not only `use` lines) must follow the pipeline order stated in
//! ARCHITECTURE.md, and no two files may depend on each other in a cycle.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Layers, lowest first: a module may use only modules of a lower rank (or of its own
/// top-level folder). A path names a folder or a file; the longest one that matches a file
/// is its layer. The vocabulary is lowest — fact queries, the plan as a value (`plan`,
/// `plan::step`, `plan::seal`, `plan::render`) and the resource types — then the spec,
/// which validates against that vocabulary, then expansion (`desired`), planning
/// (`plan::build`, `plan::graph`, `plan::select`, and `plan::lockout`, which judges the
/// desired state against the facts as build does) and cross-host decisions (`cluster`); above them the I/O
/// layers (`transport`, `provider`, `engine`), apply and verify, which run through the
/// engine, the commands (`ops`) and the argument parser (`cli`).
const RANKS: &[(&str, u32)] = &[
    ("state", 0),
    ("ui", 0),
    ("shell", 1),
    ("facts", 2),
    ("plan", 3),
    ("resource", 4),
    ("spec", 5),
    ("desired", 6),
    ("plan::build", 7),
    ("plan::graph", 7),
    ("plan::select", 7),
    ("plan::lockout", 7),
    ("cluster", 8),
    ("transport", 9),
    ("provider", 10),
    ("engine", 11),
    ("apply", 12),
    ("verify", 12),
    ("ops", 13),
    ("cli", 14),
];

/// Files that perform no I/O on hosts: they may not reach the layers that do.
const PURE: &[&str] = &[
    "spec/",
    "desired/",
    "resource/",
    "facts/",
    "plan/",
    "cluster/",
    "shell/",
    "apply/script.rs",
    "verify/drift.rs",
];
const IO: &[&str] = &[
    "transport",
    "provider",
    "engine",
    "ops",
    "apply::run",
    "apply::cluster",
];

fn src() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            rust_files(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

/// `src/plan/step/mod.rs` → ["plan", "step"]; `src/plan/seal.rs` → ["plan", "seal"].
fn module_path(file: &Path) -> Vec<String> {
    let rel = file.strip_prefix(src()).unwrap();
    let mut parts: Vec<String> = rel
        .iter()
        .map(|c| c.to_string_lossy().trim_end_matches(".rs").to_string())
        .collect();
    if parts
        .last()
        .is_some_and(|l| l == "mod" || l == "lib" || l == "main")
    {
        parts.pop();
    }
    parts
}

/// Code without comments and string literals (a doc comment naming `ops::apply` is no
/// dependency), line by line.
fn code_lines(text: &str) -> Vec<String> {
    let mut out = vec![];
    let mut in_test = false;
    for line in text.lines() {
        let t = line.trim_start();
        if t.starts_with("#[cfg(test)]") {
            // Tests may reach anything they test through; they are not the architecture.
            in_test = true;
        }
        if in_test {
            continue;
        }
        if t.starts_with("//") {
            continue;
        }
        let mut s = String::new();
        let mut in_str = false;
        let mut prev = ' ';
        for c in line.chars() {
            if c == '"' && prev != '\\' {
                in_str = !in_str;
                prev = c;
                continue;
            }
            if !in_str {
                s.push(c);
            }
            prev = if prev == '\\' && c == '\\' { ' ' } else { c };
        }
        if let Some(i) = s.find("//") {
            s.truncate(i);
        }
        out.push(s);
    }
    out
}

/// The module paths a file refers to: `crate::a::b` and `super::...` resolved against the
/// file's own module, including `use crate::a::{b, c}` groups (first segment after the
/// group is enough to name the file).
fn references(file: &Path, text: &str) -> BTreeSet<Vec<String>> {
    let me = module_path(file);
    let mut out = BTreeSet::new();
    for line in code_lines(text) {
        let bytes = line.as_bytes();
        let mut i = 0;
        while i < line.len() {
            let rest = &line[i..];
            let boundary = i == 0
                || !(bytes[i - 1].is_ascii_alphanumeric()
                    || bytes[i - 1] == b'_'
                    || bytes[i - 1] == b':');
            let (base, after) = if boundary && rest.starts_with("crate::") {
                (vec![], &rest[7..])
            } else if boundary && rest.starts_with("super::") {
                // `super` is the parent of the file's module (for a mod.rs, of its folder).
                let mut base = me.clone();
                base.pop();
                let mut after = &rest[7..];
                while let Some(r) = after.strip_prefix("super::") {
                    base.pop();
                    after = r;
                }
                (base, after)
            } else {
                i += rest.chars().next().map(|c| c.len_utf8()).unwrap_or(1);
                continue;
            };
            let mut path = base;
            let mut segs = after.split("::");
            for seg in segs.by_ref() {
                let name: String = seg
                    .chars()
                    .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                    .collect();
                if name.is_empty() || name.chars().next().is_some_and(|c| c.is_uppercase()) {
                    break;
                }
                path.push(name.clone());
                if name.len() != seg.len() {
                    break;
                }
            }
            if !path.is_empty() {
                out.insert(path);
            }
            i += 7;
        }
    }
    out
}

struct Graph {
    /// file module path → the files it depends on (resolved to existing files).
    edges: BTreeMap<Vec<String>, BTreeSet<Vec<String>>>,
}

fn graph() -> Graph {
    let mut files = vec![];
    rust_files(&src(), &mut files);
    let modules: BTreeSet<Vec<String>> = files.iter().map(|f| module_path(f)).collect();
    let mut edges = BTreeMap::new();
    for f in &files {
        let me = module_path(f);
        let text = std::fs::read_to_string(f).unwrap();
        let mut deps = BTreeSet::new();
        for mut r in references(f, &text) {
            // The longest prefix that is a file is the file depended on.
            while !r.is_empty() && !modules.contains(&r) {
                r.pop();
            }
            if !r.is_empty() && r != me {
                deps.insert(r);
            }
        }
        edges.insert(me, deps);
    }
    Graph { edges }
}

/// The layer of a module path: the longest entry of RANKS that is a prefix of it.
fn layer(path: &[String]) -> Option<(&'static str, u32)> {
    let joined = path.join("::");
    RANKS
        .iter()
        .filter(|(m, _)| joined == *m || joined.starts_with(&format!("{m}::")))
        .max_by_key(|(m, _)| m.len())
        .copied()
}

fn rank(top: &str) -> Option<u32> {
    layer(&[top.to_string()]).map(|(_, r)| r)
}

/// May `from` (of layer `fl`/`fr`) use `to`? Within one layer (or downwards within one
/// top-level folder) anything goes, but cycles; across layers only downwards.
fn allowed((fl, fr): (&str, u32), from: &[String], to: &[String]) -> bool {
    let Some((tl, tr)) = layer(to) else {
        return false;
    };
    fl == tl || (from[0] == to[0] && tr <= fr) || tr < fr
}

#[test]
fn modules_depend_only_on_lower_layers() {
    let g = graph();
    let mut bad = vec![];
    for (from, deps) in &g.edges {
        let Some((fl, fr)) = layer(from) else {
            continue;
        };
        for to in deps {
            if !allowed((fl, fr), from, to) {
                bad.push(format!("{} uses {}", from.join("::"), to.join("::")));
            }
        }
    }
    assert!(
        bad.is_empty(),
        "imports against the layer order of ARCHITECTURE.md:\n  {}",
        bad.join("\n  ")
    );
}

#[test]
fn every_top_level_module_has_a_layer() {
    let g = graph();
    let tops: BTreeSet<&String> = g.edges.keys().filter_map(|k| k.first()).collect();
    let missing: Vec<&&String> = tops.iter().filter(|t| rank(t).is_none()).collect();
    assert!(
        missing.is_empty(),
        "modules without a layer in tests/layering.rs (and ARCHITECTURE.md): {missing:?}"
    );
}

#[test]
fn pure_files_reach_no_host() {
    let g = graph();
    let mut bad = vec![];
    for (from, deps) in &g.edges {
        let file = from.join("/");
        let pure = PURE.iter().any(|p| {
            if let Some(dir) = p.strip_suffix('/') {
                from.first().is_some_and(|t| t == dir)
            } else {
                format!("{file}.rs") == *p
            }
        });
        if !pure {
            continue;
        }
        for to in deps {
            let t = to.join("::");
            if IO
                .iter()
                .any(|io| t == *io || t.starts_with(&format!("{io}::")))
            {
                bad.push(format!("{} uses {t}", from.join("::")));
            }
        }
    }
    assert!(
        bad.is_empty(),
        "pure files reaching I/O:\n  {}",
        bad.join("\n  ")
    );
}

/// No cycle among files, except between a module file (`mod.rs`) and the files below it
/// (a parent re-exports its children; children use the parent's types).
#[test]
fn no_import_cycles_between_files() {
    let g = graph();
    let below = |a: &Vec<String>, b: &Vec<String>| b.len() > a.len() && b.starts_with(a);
    let mut cycles = BTreeSet::new();
    for (a, deps) in &g.edges {
        for b in deps {
            if below(a, b) || below(b, a) {
                continue;
            }
            // Is there a path b → … → a (not through parent/child edges)?
            let mut seen = BTreeSet::new();
            let mut stack = vec![b.clone()];
            while let Some(n) = stack.pop() {
                if !seen.insert(n.clone()) {
                    continue;
                }
                for m in g.edges.get(&n).into_iter().flatten() {
                    if below(&n, m) || below(m, &n) {
                        continue;
                    }
                    if m == a {
                        let mut pair = [a.join("::"), b.join("::")];
                        pair.sort();
                        cycles.insert(format!("{} ↔ {}", pair[0], pair[1]));
                    } else {
                        stack.push(m.clone());
                    }
                }
            }
        }
    }
    assert!(
        cycles.is_empty(),
        "import cycles (a uses b, and b reaches a):\n  {}",
        cycles.into_iter().collect::<Vec<_>>().join("\n  ")
    );
}

#[test]
fn the_scanner_sees_what_it_must() {
    let f = src().join("plan/build.rs");
    let refs = references(
        &f,
        "use crate::facts::{self, X};\nuse super::graph::G;\n// crate::ops::x\nlet s = \"crate::provider\";\nlet t = crate::state::lab_state_dir();\n",
    );
    let refs: Vec<String> = refs.into_iter().map(|r| r.join("::")).collect();
    assert!(refs.contains(&"facts".to_string()), "{refs:?}");
    assert!(refs.contains(&"plan::graph".to_string()), "{refs:?}");
    assert!(
        refs.contains(&"state::lab_state_dir".to_string()),
        "{refs:?}"
    );
    assert!(
        !refs
            .iter()
            .any(|r| r.starts_with("ops") || r.starts_with("provider")),
        "{refs:?}"
    );
}

#[test]
fn the_rules_of_the_issue_are_violations() {
    let p = |s: &str| s.split("::").map(String::from).collect::<Vec<_>>();
    for (from, to) in [
        ("spec", "desired"),
        ("resource", "desired"),
        ("facts", "resource"),
        ("plan::render", "cluster::galera"),
        ("plan", "plan::build"),
        ("provider::lab", "ops::lab"),
        ("engine::load", "ops"),
        ("cluster::galera", "transport"),
    ] {
        let (f, t) = (p(from), p(to));
        let l = layer(&f).expect("has a layer");
        assert!(!allowed(l, &f, &t), "{from} → {to} must be refused");
    }
    for (from, to) in [
        ("ops::plan", "engine"),
        ("plan::build", "resource"),
        ("cluster::galera", "plan::step"),
    ] {
        let (f, t) = (p(from), p(to));
        assert!(
            allowed(layer(&f).unwrap(), &f, &t),
            "{from} → {to} is the pipeline's direction"
        );
    }
}

/// A test file with its own `fn main` (the lab suites' harness) must be declared with
/// `harness = false` in Cargo.toml: under libtest's harness its `main` never runs and the
/// suite "passes" with 0 tests, proving nothing.
#[test]
fn suites_with_their_own_main_have_no_libtest_harness() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let manifest = std::fs::read_to_string(root.join("Cargo.toml")).expect("Cargo.toml");
    let mut missing = vec![];
    let mut seen = 0;
    for e in std::fs::read_dir(root.join("tests")).expect("tests/") {
        let p = e.expect("entry").path();
        if p.extension().and_then(|x| x.to_str()) != Some("rs") {
            continue;
        }
        let text = std::fs::read_to_string(&p).expect("read");
        if !text.lines().any(|l| l.starts_with("fn main()")) {
            continue;
        }
        seen += 1;
        let name = p.file_stem().unwrap().to_string_lossy().to_string();
        let entry = format!("[[test]]\nname = \"{name}\"\nharness = false");
        if !manifest.contains(&entry) {
            missing.push(name);
        }
    }
    assert!(
        seen >= 5,
        "the lab suites have their own main ({seen} found)"
    );
    assert!(
        missing.is_empty(),
        "declare these in Cargo.toml with `harness = false`: {missing:?}"
    );
}
