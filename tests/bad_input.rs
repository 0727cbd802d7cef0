//! The bad-input corpus: `tests/bad_input/<case>/` holds a small repository (an
//! `environments/t.toml`, and the modules and templates the case needs beside the shipped
//! ones) and an `expected.toml`:
//!
//! ```toml
//! exit = 1                      # 0: a valid spec that `plan --offline` must accept (0 or 2)
//! file = "environments/t.toml"  # where the error points, relative to the repository
//! line = 3
//! col = 11
//! key = "hosts.h1.address"      # "" for whole-file errors (a TOML syntax error)
//! ```
//!
//! Every broken or hostile case is run as `kiln plan t` (online) and `kiln plan t
//! --offline`: both must exit 1 naming file:line:col and the key, without a panic, and
//! without contacting a host — `ssh`, `scp` and `sftp` first on PATH are stubs that leave a
//! marker file when called. Cases about a host's address, user or key, or `[ssh]`, also
//! run `kiln ssh-config t`, which must refuse them the same way. Addresses in the corpus are in 192.0.2.0/24 (TEST-NET-1).

use std::path::{Path, PathBuf};
use std::process::Command;

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn copy_tree(from: &Path, to: &Path, skip: &[&str]) {
    std::fs::create_dir_all(to).expect("mkdir");
    for entry in std::fs::read_dir(from).expect("read_dir") {
        let entry = entry.expect("entry");
        let name = entry.file_name();
        if skip.iter().any(|s| name == *s) {
            continue;
        }
        let (src, dst) = (entry.path(), to.join(&name));
        if entry.file_type().expect("file type").is_dir() {
            copy_tree(&src, &dst, &[]);
        } else {
            std::fs::copy(&src, &dst).expect("copy");
        }
    }
}

/// A scratch repository and a PATH whose `ssh`, `scp` and `sftp` leave a marker.
struct Scratch {
    dir: tempfile::TempDir,
    marker: PathBuf,
    path: String,
}

impl Scratch {
    fn new() -> Scratch {
        let dir = tempfile::tempdir().expect("tempdir");
        let marker = dir.path().join("host-contacted");
        let stubs = dir.path().join("stub-bin");
        std::fs::create_dir_all(&stubs).expect("mkdir");
        for tool in ["ssh", "scp", "sftp"] {
            let p = stubs.join(tool);
            std::fs::write(
                &p,
                format!(
                    "#!/bin/sh\necho \"{tool} $*\" >> '{}'\nexit 255\n",
                    marker.display()
                ),
            )
            .expect("write stub");
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        }
        let path = format!(
            "{}:{}",
            stubs.display(),
            std::env::var("PATH").unwrap_or_default()
        );
        Scratch { dir, marker, path }
    }

    fn root(&self) -> &Path {
        self.dir.path()
    }

    fn kiln(&self, cwd: &Path, args: &[&str]) -> std::process::Output {
        Command::new(env!("CARGO_BIN_EXE_kiln"))
            .current_dir(cwd)
            .args(args)
            .env("PATH", &self.path)
            // Through the system's ssh, which is the stub: russh (the default) would connect
            // in process, where no stub could see it.
            .env("KILN_TRANSPORT", "openssh")
            .env("KILN_ROOT", self.root())
            .env_remove("KILN_PATH")
            .env("HOME", self.root().join("home"))
            .env("XDG_STATE_HOME", self.root().join("state"))
            .env("KILN_LAB_DIR", self.root().join("lab"))
            .env("NO_COLOR", "1")
            .env_remove("KILN_SSH_USER")
            .env_remove("KILN_SSH_KEY")
            .env_remove("SSH_AUTH_SOCK")
            .output()
            .expect("run kiln")
    }

    fn contacted(&self) -> Option<String> {
        std::fs::read_to_string(&self.marker).ok()
    }
}

struct Expected {
    exit: i64,
    file: String,
    line: i64,
    col: Option<i64>,
    key: String,
}

fn expected(case: &Path) -> Expected {
    let text = std::fs::read_to_string(case.join("expected.toml")).expect("expected.toml");
    let t: toml::Table = text.parse().expect("expected.toml parses");
    let s = |k: &str| t.get(k).and_then(|v| v.as_str()).unwrap_or("").to_string();
    let i = |k: &str| t.get(k).and_then(|v| v.as_integer());
    Expected {
        exit: i("exit").expect("expected.toml: exit"),
        file: s("file"),
        line: i("line").unwrap_or(0),
        col: i("col"),
        key: s("key"),
    }
}

fn cases() -> Vec<PathBuf> {
    let mut out: Vec<PathBuf> = std::fs::read_dir(repo().join("tests/bad_input"))
        .expect("tests/bad_input")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.join("expected.toml").exists())
        .collect();
    out.sort();
    out
}

/// Runs one case in both modes; returns what went wrong (empty when it passed).
fn run_case(case: &Path) -> Vec<String> {
    let name = case.file_name().unwrap_or_default().to_string_lossy();
    let exp = expected(case);
    let s = Scratch::new();
    copy_tree(&repo().join("modules"), &s.root().join("modules"), &[]);
    copy_tree(&repo().join("templates"), &s.root().join("templates"), &[]);
    copy_tree(case, s.root(), &["expected.toml"]);
    let mut problems = vec![];
    // How ssh reaches a host is printed by `ssh-config` without planning: a bad address,
    // user or key must stop it too (else it prints a `ProxyCommand` line).
    let reach = exp.exit != 0
        && exp.file.starts_with("environments/")
        && (exp.key.starts_with("hosts.") || exp.key.starts_with("ssh."))
        && !exp.key.contains(".modules.")
        && !exp.key.contains(".vars.");
    let modes: &[&[&str]] = if exp.exit == 0 {
        // A valid spec would be read from its hosts online; only the offline plan runs.
        &[&["plan", "t", "--offline"]]
    } else if reach {
        &[
            &["plan", "t"],
            &["plan", "t", "--offline"],
            &["ssh-config", "t"],
        ]
    } else {
        &[&["plan", "t"], &["plan", "t", "--offline"]]
    };
    for args in modes {
        let out = s.kiln(s.root(), args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        let stdout = String::from_utf8_lossy(&out.stdout);
        let code = out.status.code();
        let mut fail = |what: String| {
            problems.push(format!(
                "{name} `kiln {}`: {what}\n--- stderr:\n{stderr}--- stdout (end):\n{}",
                args.join(" "),
                stdout
                    .chars()
                    .rev()
                    .take(400)
                    .collect::<String>()
                    .chars()
                    .rev()
                    .collect::<String>()
            ))
        };
        if stderr.contains("panicked") || code == Some(101) {
            fail("panicked".into());
        }
        if exp.exit == 0 {
            if !matches!(code, Some(0) | Some(2)) {
                fail(format!("a valid spec exited {code:?}, expected 0 or 2"));
            }
        } else {
            if code != Some(exp.exit as i32) {
                fail(format!("exit {code:?}, expected {}", exp.exit));
            }
            let file = s.root().join(&exp.file);
            let at = match exp.col {
                Some(col) => format!("{}:{}:{col}", file.display(), exp.line),
                None => format!("{}:{}:", file.display(), exp.line),
            };
            if !stderr.contains(&at) {
                fail(format!("the message does not name {at}"));
            }
            if !exp.key.is_empty() && !stderr.contains(&format!("`{}`", exp.key)) {
                fail(format!("the message does not name the key `{}`", exp.key));
            }
        }
        if let Some(calls) = s.contacted() {
            fail(format!("a host was contacted: {calls}"));
        }
    }
    problems
}

#[test]
fn every_case_of_the_corpus() {
    let all = cases();
    let bad = all.iter().filter(|c| expected(c).exit != 0).count();
    let good = all.len() - bad;
    assert!(
        bad >= 100,
        "the corpus has {bad} bad cases, at least 100 wanted"
    );
    assert!(
        good >= 5,
        "the corpus has {good} good cases, at least 5 wanted"
    );
    let problems: Vec<String> = all.iter().flat_map(|c| run_case(c)).collect();
    assert!(
        problems.is_empty(),
        "{} problem(s) in the bad-input corpus:\n\n{}",
        problems.len(),
        problems.join("\n\n")
    );
}

/// The validation is not over-strict: every shipped environment still plans offline.
#[test]
fn shipped_environments_still_plan_offline() {
    let s = Scratch::new();
    let mut names: Vec<String> = std::fs::read_dir(repo().join("environments"))
        .expect("environments/")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.extension().map(|x| x == "toml").unwrap_or(false))
        .map(|p| {
            p.file_stem()
                .unwrap_or_default()
                .to_string_lossy()
                .to_string()
        })
        .collect();
    names.sort();
    assert!(names.len() >= 2, "{names:?}");
    for name in names {
        let env_file = repo().join("environments").join(format!("{name}.toml"));
        let out = s.kiln(&repo(), &["plan", &env_file.to_string_lossy(), "--offline"]);
        assert!(
            matches!(out.status.code(), Some(0) | Some(2)),
            "{name}: exit {:?}\n{}",
            out.status.code(),
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(s.contacted(), None, "{name}: a host was contacted");
    }
}

/// The harness itself: a valid spec planned online does reach for `ssh`, and the stub
/// records it — so "no host contacted" above is a real observation, not a silent pass.
#[test]
fn the_ssh_stub_sees_a_connection_attempt() {
    let s = Scratch::new();
    copy_tree(&repo().join("modules"), &s.root().join("modules"), &[]);
    copy_tree(&repo().join("templates"), &s.root().join("templates"), &[]);
    copy_tree(
        &repo().join("tests/bad_input/good-minimal"),
        s.root(),
        &["expected.toml"],
    );
    let out = s.kiln(s.root(), &["plan", "t"]);
    assert_eq!(
        out.status.code(),
        Some(1),
        "the stub ssh fails, so the host is unreachable: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    let calls = s.contacted().expect("the stub ssh was not called");
    assert!(calls.starts_with("ssh "), "{calls}");
}
