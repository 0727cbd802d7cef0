//! CLI conventions (issue 17): `--color`, completions, the man page, `rebuild` asking
//! unless `--yes`, `explain --format json`, `kiln modules` / `module show`, a saved plan
//! recognised by content, help text on every flag and the `KILN_*` variables in the help.
//! None of these contacts a host.

use std::path::PathBuf;

use assert_cmd::Command;
use clap::CommandFactory;

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn kiln() -> Command {
    let mut c = Command::cargo_bin("kiln").expect("kiln binary");
    c.current_dir(repo())
        .env_remove("NO_COLOR")
        .env_remove("KILN_ROOT")
        .env_remove("KILN_PATH");
    c
}

fn run(c: &mut Command) -> (i32, String, String) {
    let o = c.write_stdin("").output().expect("run kiln");
    (
        o.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&o.stdout).to_string(),
        String::from_utf8_lossy(&o.stderr).to_string(),
    )
}

#[test]
fn color_always_colours_through_a_pipe_never_and_no_color_do_not() {
    let (code, out, _) = run(kiln().args(["--color", "always", "modules"]));
    assert_eq!(code, 0);
    assert!(out.contains("\u{1b}["), "--color always: {out}");
    let (_, out, _) = run(kiln().args(["modules", "--color", "never"]));
    assert!(!out.contains("\u{1b}["), "--color never: {out}");
    let (_, out, _) = run(kiln().args(["modules"]).env("NO_COLOR", "1"));
    assert!(
        !out.contains("\u{1b}["),
        "auto with NO_COLOR through a pipe: {out}"
    );
    let (code, _, err) = run(kiln().args(["--color", "sometimes", "modules"]));
    assert_eq!(code, 1, "a usage error exits 1: {err}");
}

#[test]
fn completions_generate_for_each_shell_with_the_subcommands() {
    let (code, out, _) = run(kiln().args(["completions", "bash"]));
    assert_eq!(code, 0);
    for sub in [
        "plan",
        "apply",
        "rebuild",
        "verify",
        "explain",
        "modules",
        "completions",
    ] {
        assert!(out.contains(sub), "bash completion lacks {sub}");
    }
    assert!(out.contains("--color"), "bash completion lacks --color");
    for shell in ["zsh", "fish", "elvish", "powershell"] {
        let (code, out, err) = run(kiln().args(["completions", shell]));
        assert_eq!(code, 0, "{shell}: {err}");
        assert!(out.contains("rebuild"), "{shell}: {out}");
    }
}

#[test]
fn the_man_page_renders() {
    let (code, page, _) = run(kiln().arg("man"));
    assert_eq!(code, 0);
    assert!(page.contains(".TH"), "{page}");
    assert!(page.contains("rebuild"), "{page}");
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("kiln.1");
    std::fs::write(&file, &page).unwrap();
    let man = std::process::Command::new("man")
        .arg("-l")
        .arg(&file)
        .env("MANPAGER", "cat")
        .env("PAGER", "cat")
        .env("MANWIDTH", "100")
        .output();
    match man {
        Ok(o) if o.status.success() => {
            let text = String::from_utf8_lossy(&o.stdout);
            assert!(text.contains("NAME") && text.contains("kiln"), "{text}");
        }
        // No man(1) on this machine: the roff source above is what can be checked.
        _ => eprintln!("man -l not available; checked the roff source only"),
    }
    // The pages the top page refers to (kiln-plan(1), …) with --dir.
    let pages = dir.path().join("pages");
    let (code, _, err) = run(kiln().arg("man").arg("--dir").arg(&pages));
    assert_eq!(code, 0, "{err}");
    for p in [
        "kiln.1",
        "kiln-plan.1",
        "kiln-rebuild.1",
        "kiln-module-show.1",
    ] {
        let text = std::fs::read_to_string(pages.join(p)).unwrap_or_default();
        assert!(text.contains(".TH"), "{p} missing or empty");
    }
}

#[test]
fn rebuild_refuses_without_yes_and_without_a_terminal() {
    let (code, out, err) = run(kiln().args(["rebuild", "lab"]));
    assert_eq!(code, 1, "{out}{err}");
    assert!(
        err.contains("refusing to rebuild without --yes"),
        "stderr: {err}"
    );
    // Refused before anything: no provider, no plan, no timeline.
    assert!(
        !out.contains("timeline") && !err.contains("lab:"),
        "{out}{err}"
    );
    let (_, help, _) = run(kiln().args(["rebuild", "--help"]));
    assert!(help.contains("--yes"), "{help}");
}

#[test]
fn explain_json_names_the_file_and_line_or_the_module_default() {
    let (code, out, err) = run(kiln().args(["explain", "lab", "ssh.user", "--format", "json"]));
    assert_eq!(code, 0, "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).expect("one JSON document");
    assert_eq!(v["key"], "ssh.user");
    assert!(v["value"].is_string());
    assert!(v["set_by"]["file"].as_str().unwrap().ends_with("lab.toml"));
    assert!(v["set_by"]["line"].as_u64().unwrap() >= 1);
    assert!(v["overrides"].is_array());

    let (code, out, err) = run(kiln().args([
        "explain",
        "lab",
        "modules.nginx.body_size",
        "--format",
        "json",
    ]));
    assert_eq!(code, 0, "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).expect("one JSON document");
    assert_eq!(v["default_of"]["module"], "nginx");
    assert!(v.get("set_by").is_none(), "{v}");
}

#[test]
fn modules_lists_every_module_and_module_show_its_parameters() {
    let (code, out, _) = run(kiln().arg("modules"));
    assert_eq!(code, 0);
    for e in std::fs::read_dir(repo().join("modules")).unwrap() {
        let p = e.unwrap().path();
        if p.extension().is_some_and(|x| x == "toml") {
            let name = p.file_stem().unwrap().to_string_lossy().to_string();
            assert!(
                out.lines().any(|l| l.starts_with(&format!("{name} "))),
                "{name} missing from:\n{out}"
            );
        }
    }
    let (code, out, _) = run(kiln().args(["module", "show", "nginx"]));
    assert_eq!(code, 0);
    assert!(out.contains("Parameters:"), "{out}");
    assert!(
        out.contains("body_size  a string, format `size`, default \"20m\""),
        "{out}"
    );
    assert!(out.contains("sites  a list"), "{out}");
    let (code, _, err) = run(kiln().args(["module", "show", "nope"]));
    assert_eq!(code, 1);
    assert!(
        err.contains("unknown module `nope`") && err.contains("nginx"),
        "{err}"
    );
}

/// `kiln modules` along the module path: each directory with why it is there, a module
/// met again further down shown as shadowed.
#[test]
fn modules_lists_along_the_module_path() {
    let extra = tempfile::tempdir().unwrap();
    std::fs::create_dir(extra.path().join("modules")).unwrap();
    std::fs::write(
        extra.path().join("modules/team-app.toml"),
        "description = \"The team's own app.\"\n",
    )
    .unwrap();
    std::fs::write(
        extra.path().join("modules/nginx.toml"),
        "description = \"The team's nginx.\"\n",
    )
    .unwrap();
    let (code, out, err) = run(kiln().arg("modules").env("KILN_PATH", extra.path()));
    assert_eq!(code, 0, "{err}");
    let first = format!("{} (KILN_PATH):", extra.path().join("modules").display());
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines[0], first, "{out}");
    assert!(lines[1].starts_with("nginx ") && lines[1].contains("The team's nginx."));
    assert!(lines[2].starts_with("team-app ") && lines[2].contains("The team's own app."));
    assert!(
        out.contains("\n./modules (the current directory):\n"),
        "{out}"
    );
    let shadowed = format!(
        "(shadowed: {} is used)",
        extra.path().join("modules/nginx.toml").display()
    );
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with("nginx ") && l.ends_with(&shadowed)),
        "{out}"
    );
    assert!(lines.iter().any(|l| l.starts_with("php ")), "{out}");
    // `module show` takes the first along the path and names the one it shadows.
    let (code, out, _) = run(kiln()
        .args(["module", "show", "nginx"])
        .env("KILN_PATH", extra.path()));
    assert_eq!(code, 0);
    assert!(
        out.contains("from KILN_PATH") && out.contains("shadows ./modules/nginx.toml"),
        "{out}"
    );
}

#[test]
fn a_saved_plan_is_recognised_by_content_not_extension() {
    let dir = tempfile::tempdir().unwrap();
    // A plan document of another format, under a name without `.json`: read as a plan
    // (and refused for its format), not as an environment's TOML.
    let old = dir.path().join("x.plan");
    std::fs::write(
        &old,
        r#"{"format": 99, "kiln_version": "0.0.1", "hosts": []}"#,
    )
    .unwrap();
    let (code, _, err) = run(kiln().arg("apply").arg(&old).arg("--yes"));
    assert_eq!(code, 1);
    assert!(err.contains("plan format 99"), "{err}");
    // JSON that is not a plan says so.
    let other = dir.path().join("other.json");
    std::fs::write(&other, r#"{"hello": 1}"#).unwrap();
    let (code, _, err) = run(kiln().arg("apply").arg(&other).arg("--yes"));
    assert_eq!(code, 1);
    assert!(err.contains("not a kiln plan"), "{err}");
}

#[test]
fn every_flag_and_argument_has_help_text() {
    fn walk(cmd: &clap::Command, path: &str, missing: &mut Vec<String>) {
        for a in cmd.get_arguments() {
            let id = a.get_id().as_str();
            if id == "help" || id == "version" {
                continue;
            }
            if a.get_help().is_none() && a.get_long_help().is_none() {
                missing.push(format!("{path} {id}"));
            }
        }
        for s in cmd.get_subcommands() {
            if s.get_about().is_none() && s.get_name() != "help" {
                missing.push(format!("{path} {} (no about)", s.get_name()));
            }
            walk(s, &format!("{path} {}", s.get_name()), missing);
        }
    }
    let mut missing = vec![];
    walk(&kiln::cli::Cli::command(), "kiln", &mut missing);
    assert!(missing.is_empty(), "without help text: {missing:#?}");
}

#[test]
fn the_help_lists_every_kiln_variable_the_code_reads() {
    let (code, help, _) = run(kiln().arg("--help"));
    assert_eq!(code, 0);
    // Every `var("KILN_…")` / `var_os("KILN_…")` under src/ (and desired/'s `ci(…)`).
    let mut read = std::collections::BTreeSet::new();
    let mut stack = vec![repo().join("src")];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else if p.extension().is_some_and(|x| x == "rs") {
                let text = std::fs::read_to_string(&p).unwrap();
                // `ci("KILN_SSH_KEY")`: desired/ reads the CI overrides through a helper.
                for pat in ["env::var_os(\"", "env::var(\"", " ci(\""] {
                    for part in text.split(pat).skip(1) {
                        let name = part.split('"').next().unwrap_or_default();
                        if name.starts_with("KILN_") {
                            read.insert(name.to_string());
                        }
                    }
                }
            }
        }
    }
    for v in [
        "KILN_ROOT",
        "KILN_SSH_USER",
        "KILN_LAB_DIR",
        "KILN_RECORD_DIR",
    ] {
        assert!(read.contains(v) || help.contains(v), "{v}");
    }
    for v in &read {
        assert!(
            help.contains(v.as_str()),
            "{v} is read but not in --help:\n{help}"
        );
    }
}

#[test]
fn apply_json_needs_yes_and_prints_one_document() {
    let (code, out, err) = run(kiln().args(["apply", "lab", "--format", "json"]));
    assert_eq!(code, 1, "{out}");
    assert!(err.contains("--format json needs --yes"), "{err}");
    // A saved plan with nothing to do, under a `.plan` name: applied (no host contacted),
    // and standard output is exactly one JSON document.
    // Its environment is a file of its own: the repository's lab.toml reads the lab's
    // artifacts, which a machine without a lab (yet) does not have.
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("environments")).unwrap();
    let env_file = dir.path().join("environments/lab.toml");
    std::fs::write(&env_file, "[hosts.one]\naddress = \"192.0.2.10\"\n").unwrap();
    let saved = dir.path().join("empty.plan");
    let plan = serde_json::json!({"format": kiln::plan::PLAN_FORMAT, "kiln_version": "test", "environment": "lab",
        "env_file": env_file, "created_at": "2026-01-01T00:00:00Z", "hosts": []});
    std::fs::write(&saved, plan.to_string()).unwrap();
    let (code, out, err) = run(kiln()
        .arg("apply")
        .arg(&saved)
        .args(["--yes", "--format", "json"]));
    assert_eq!(code, 0, "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).expect("one JSON document");
    assert_eq!(v["status"], "ok");
    assert_eq!(v["plan"]["environment"], "lab");
    assert!(v["hosts"].as_array().unwrap().is_empty());
}

#[test]
fn explain_follows_two_extends_levels_to_each_file_and_line() {
    // base ← mid ← top: each sets ssh.user on a known line; explain names top's line and the
    // two values it overrides, nearest parent first, and a key only base sets by base's line.
    let dir = tempfile::tempdir().unwrap();
    let envs = dir.path().join("environments");
    std::fs::create_dir(&envs).unwrap();
    std::fs::write(
        envs.join("base.toml"),
        "description = \"base\"\n\n[ssh]\nuser = \"from-base\"\nport = 2222\n\n[hosts.one]\naddress = \"192.0.2.10\"\n",
    )
    .unwrap();
    std::fs::write(
        envs.join("mid.toml"),
        "extends = \"base\"\n[ssh]\nuser = \"from-mid\"\n",
    )
    .unwrap();
    std::fs::write(
        envs.join("top.toml"),
        "extends = \"mid\"\n\n\n[ssh]\nuser = \"from-top\"\n",
    )
    .unwrap();
    let explain = |key: &str| {
        let (code, out, err) = run(kiln()
            .current_dir(dir.path())
            .env("KILN_ROOT", dir.path())
            .args(["explain", "top", key, "--format", "json"]));
        assert_eq!(code, 0, "{err}");
        serde_json::from_str::<serde_json::Value>(&out).expect("one JSON document")
    };
    let at = |v: &serde_json::Value| {
        format!(
            "{}:{}",
            std::path::Path::new(v["file"].as_str().unwrap_or_default())
                .file_name()
                .unwrap_or_default()
                .to_string_lossy(),
            v["line"]
        )
    };
    let v = explain("ssh.user");
    assert_eq!(v["value"], "from-top", "{v}");
    assert_eq!(at(&v["set_by"]), "top.toml:5", "{v}");
    let overrides: Vec<String> = v["overrides"].as_array().unwrap().iter().map(at).collect();
    assert_eq!(overrides, ["mid.toml:3", "base.toml:4"], "{v}");
    let v = explain("ssh.port");
    assert_eq!(v["value"], 2222, "{v}");
    assert_eq!(at(&v["set_by"]), "base.toml:5", "{v}");
    assert!(v["overrides"].as_array().unwrap().is_empty(), "{v}");
}
