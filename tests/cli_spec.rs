//! Bad input: every spec error names file, line, column and key, exits 1, and no host is
//! contacted: the hosts here point at a closed port, and `ssh`, `scp` and `sftp` first on
//! kiln's PATH are stubs that record every call (as in tests/bad_input.rs), so a connection
//! attempt shows both as a recorded call and as kiln's "ssh to …" error.

use std::path::{Path, PathBuf};

use assert_cmd::Command;

struct Repo {
    dir: tempfile::TempDir,
    /// `ssh`, `scp` and `sftp` stubs, first on PATH of every [`Repo::run`]: each call
    /// appends `TOOL ARGS` to `calls` and fails as an unreachable host would (255).
    _stubs: tempfile::TempDir,
    calls: PathBuf,
    path: String,
}

impl Repo {
    fn new() -> Repo {
        let stubs = tempfile::tempdir().expect("tempdir");
        let calls = stubs.path().join("calls");
        for tool in ["ssh", "scp", "sftp"] {
            let p = stubs.path().join(tool);
            std::fs::write(
                &p,
                format!(
                    "#!/bin/sh\necho \"{tool} $*\" >> '{}'\nexit 255\n",
                    calls.display()
                ),
            )
            .expect("write stub");
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        }
        let path = format!(
            "{}:{}",
            stubs.path().display(),
            std::env::var("PATH").unwrap_or_default()
        );
        let r = Repo {
            dir: tempfile::tempdir().expect("tempdir"),
            _stubs: stubs,
            calls,
            path,
        };
        r.write(
            "modules/m.toml",
            r#"description = "test module"
[params.greeting]
type = "string"
default = "hello"

[[resource]]
type = "file"
path = "/etc/kiln-test"
template = "t.j2"
"#,
        );
        r.write(
            "templates/m/t.j2",
            "{{ params.greeting }} from {{ host.name }}\n",
        );
        r
    }
    fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }
    fn write(&self, rel: &str, text: &str) -> &Repo {
        let p = self.path(rel);
        std::fs::create_dir_all(p.parent().expect("parent")).expect("mkdir");
        std::fs::write(p, text).expect("write");
        self
    }
    /// Runs kiln in the repository, with the stubs first on PATH.
    fn run(&self, args: &[&str]) -> std::process::Output {
        self.run_in("", &[], args)
    }
    /// Runs kiln in `cwd` (relative to the temporary directory) with `vars` set, the stubs
    /// first on PATH, and neither `KILN_ROOT` nor `KILN_PATH` of whoever runs the tests.
    fn run_in(&self, cwd: &str, vars: &[(&str, String)], args: &[&str]) -> std::process::Output {
        let mut c = Command::cargo_bin("kiln").expect("binary");
        c.current_dir(self.path(cwd))
            .env("NO_COLOR", "1")
            .env("PATH", &self.path)
            // Through the system's ssh, which is the stub: russh (the default) would connect
            // in process, where no stub could see it.
            .env("KILN_TRANSPORT", "openssh")
            .env_remove("KILN_ROOT")
            .env_remove("KILN_PATH");
        for (k, v) in vars {
            c.env(k, v);
        }
        c.args(args).output().expect("run")
    }
    /// The stubs' record: every `ssh`, `scp` or `sftp` kiln ran so far, one line each.
    fn stub_calls(&self) -> String {
        std::fs::read_to_string(&self.calls).unwrap_or_default()
    }
    /// Runs kiln in the repository; its standard output, after asserting exit 0.
    #[track_caller]
    fn succeeds(&self, args: &[&str]) -> String {
        let out = self.run(args);
        let stdout = String::from_utf8_lossy(&out.stdout).to_string();
        assert_eq!(
            out.status.code(),
            Some(0),
            "exit code for {args:?}; stdout:\n{stdout}\nstderr:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        stdout
    }
    /// Runs kiln in the repository, asserts exit 1, that stderr holds each of `expect`, and
    /// that no host was contacted: no stub was called, and neither stream has kiln's
    /// "ssh to …" connection error. Returns stderr.
    #[track_caller]
    fn fails(&self, args: &[&str], expect: &[&str]) -> String {
        self.fails_in("", &[], args, expect)
    }
    /// [`Repo::fails`] in `cwd` with `vars` (see [`Repo::run_in`]).
    #[track_caller]
    fn fails_in(
        &self,
        cwd: &str,
        vars: &[(&str, String)],
        args: &[&str],
        expect: &[&str],
    ) -> String {
        let before = self.stub_calls();
        let out = self.run_in(cwd, vars, args);
        let stdout = String::from_utf8_lossy(&out.stdout).to_string();
        let stderr = String::from_utf8_lossy(&out.stderr).to_string();
        let calls = self.stub_calls()[before.len()..].to_string();
        assert!(
            calls.is_empty() && !stdout.contains("ssh to") && !stderr.contains("ssh to"),
            "{args:?}: a host was contacted; stub calls:\n{calls}\nstdout:\n{stdout}\nstderr:\n{stderr}"
        );
        assert_eq!(
            out.status.code(),
            Some(1),
            "exit code for {args:?}; stderr:\n{stderr}"
        );
        for e in expect {
            assert!(stderr.contains(e), "stderr should contain {e:?}:\n{stderr}");
        }
        stderr
    }
}

const HOST: &str = "[hosts.h1]\naddress = \"127.0.0.1\"\nport = 1\nroles = [\"r\"]\n\n[roles.r]\nmodules = [\"m\"]\n";

fn env(extra: &str) -> String {
    format!("{HOST}{extra}")
}

#[test]
fn toml_syntax_error() {
    let r = Repo::new();
    r.write("environments/e.toml", "[hosts.h1]\naddress = \n");
    r.fails(&["plan", "e"], &["environments/e.toml:2:", "syntax"]);
}

#[test]
fn unknown_key_is_named_with_its_line() {
    let r = Repo::new();
    r.write(
        "environments/e.toml",
        "[hosts.h1]\naddress = \"127.0.0.1\"\nadress = \"x\"\nroles = []\n",
    );
    r.fails(
        &["plan", "e"],
        &[
            "environments/e.toml:3:1",
            "hosts.h1.adress",
            "unknown field `adress`",
        ],
    );
}

#[test]
fn wrong_type() {
    let r = Repo::new();
    r.write(
        "environments/e.toml",
        "[hosts.h1]\naddress = \"127.0.0.1\"\nport = \"twenty-two\"\n",
    );
    r.fails(
        &["plan", "e"],
        &["environments/e.toml:3:", "hosts.h1.port", "invalid type"],
    );
}

#[test]
fn apt_settings_are_checked() {
    let r = Repo::new();
    r.write(
        "environments/e.toml",
        "[apt]\nlists_max_age = \"1h\"\n\n[hosts.h1]\naddress = \"127.0.0.1\"\n",
    );
    r.fails(
        &["plan", "e"],
        &[
            "environments/e.toml:2:",
            "apt.lists_max_age",
            "invalid type",
        ],
    );
    r.write(
        "environments/e.toml",
        "[apt]\nrecomends = true\n\n[hosts.h1]\naddress = \"127.0.0.1\"\n",
    );
    r.fails(
        &["plan", "e"],
        &["environments/e.toml:2:1", "unknown field `recomends`"],
    );
}

#[test]
fn unknown_role_and_module() {
    let r = Repo::new();
    r.write("environments/e.toml", "[hosts.h1]\naddress = \"127.0.0.1\"\nroles = [\"r\", \"nope\"]\n\n[roles.r]\nmodules = [\"m\", \"missing\"]\n");
    let err = r.fails(
        &["plan", "e"],
        &[
            "environments/e.toml:3:15",
            "hosts.h1.roles[1]",
            "unknown role `nope`",
        ],
    );
    assert!(
        err.contains("environments/e.toml:6:17") && err.contains("unknown module `missing`"),
        "{err}"
    );
}

#[test]
fn unknown_module_parameter_and_wrong_type() {
    let r = Repo::new();
    r.write(
        "environments/e.toml",
        &env("\n[modules.m]\ngreting = \"hi\"\n"),
    );
    r.fails(
        &["plan", "e"],
        &[
            "environments/e.toml:10:1",
            "modules.m.greting",
            "has no parameter `greting`",
        ],
    );
    r.write("environments/e.toml", &env("\n[modules.m]\ngreeting = 3\n"));
    r.fails(
        &["plan", "e"],
        &["environments/e.toml:10:", "must be a string"],
    );
}

#[test]
fn undefined_template_variable_names_template_line() {
    let r = Repo::new();
    r.write(
        "templates/m/t.j2",
        "line one\n{{ vars.nonexistent }} here\n",
    );
    r.write("environments/e.toml", &env(""));
    r.fails(
        &["plan", "e"],
        &[
            "templates/m/t.j2:2:",
            "vars.nonexistent",
            "undefined variable",
        ],
    );
}

#[test]
fn dependency_cycle_is_printed() {
    let r = Repo::new();
    r.write(
        "modules/m.toml",
        r#"[[resource]]
type = "directory"
path = "/srv/a"
after = ["directory:/srv/b"]

[[resource]]
type = "directory"
path = "/srv/b"
after = ["directory:/srv/a"]
"#,
    );
    r.write("environments/e.toml", &env(""));
    r.fails(
        &["plan", "e"],
        &[
            "modules/m.toml:",
            "dependency cycle",
            "directory:/srv/a →",
            "→ h1:directory:/srv/",
        ],
    );
}

#[test]
fn unknown_host_in_limit() {
    let r = Repo::new();
    r.write("environments/e.toml", &env(""));
    r.fails(
        &["plan", "e", "--limit", "nosuch"],
        &["--limit", "no host or role named `nosuch`", "hosts: h1"],
    );
}

#[test]
fn secret_in_repo_is_refused_and_missing_env_is_named() {
    let r = Repo::new();
    r.write(
        "environments/e.toml",
        &env("\n[secrets.pw]\nenv = \"KILN_TEST_UNSET_VAR_91\"\n"),
    );
    r.fails(
        &["plan", "e"],
        &[
            "environments/e.toml:10:",
            "secrets.pw.env",
            "`KILN_TEST_UNSET_VAR_91` is not set",
        ],
    );
    let inside = r.path("secret.txt");
    std::fs::write(&inside, "x").expect("write");
    r.write(
        "environments/e.toml",
        &env(&format!(
            "\n[secrets.pw]\nfile = {:?}\n",
            inside.display().to_string()
        )),
    );
    r.fails(
        &["plan", "e"],
        &["secrets.pw.file", "outside the repository"],
    );
}

#[test]
fn extends_merges_and_errors_point_into_the_right_file() {
    let r = Repo::new();
    r.write("environments/base.toml", &env(""));
    // The child's typo is reported in the child file, not the base.
    r.write(
        "environments/child.toml",
        "extends = \"base\"\n[hosts.h1]\nrols = []\n",
    );
    r.fails(
        &["plan", "child"],
        &["environments/child.toml:3:1", "hosts.h1.rols"],
    );
    // A bad role set in the base is reported in the base even when loading the child.
    r.write(
        "environments/base.toml",
        "[hosts.h1]\naddress = \"127.0.0.1\"\nroles = [\"zz\"]\n",
    );
    r.write("environments/child.toml", "extends = \"base\"\n");
    r.fails(
        &["plan", "child"],
        &["environments/base.toml:3:10", "unknown role `zz`"],
    );
    r.write("environments/child.toml", "extends = \"nowhere\"\n");
    r.fails(
        &["plan", "child"],
        &["environments/child.toml:1:11", "no environment `nowhere`"],
    );
}

#[test]
fn graph_and_ssh_config_need_no_hosts() {
    let r = Repo::new();
    r.write("environments/e.toml", &env(""));
    let out = Command::cargo_bin("kiln")
        .expect("bin")
        .current_dir(r.dir.path())
        .args(["graph", "e"])
        .output()
        .expect("run");
    assert!(out.status.success());
    let dot = String::from_utf8_lossy(&out.stdout);
    assert!(
        dot.starts_with("digraph kiln") && dot.contains("file:/etc/kiln-test"),
        "{dot}"
    );
    let out = Command::cargo_bin("kiln")
        .expect("bin")
        .current_dir(r.dir.path())
        .args(["ssh-config", "e"])
        .output()
        .expect("run");
    let cfg = String::from_utf8_lossy(&out.stdout);
    assert!(
        cfg.contains("Host e-h1")
            && cfg.contains("Port 1")
            && cfg.contains("StrictHostKeyChecking yes"),
        "{cfg}"
    );
}

#[test]
fn unreachable_host_is_an_error_with_exit_1() {
    let r = Repo::new();
    r.write("environments/e.toml", &env("[ssh]\nconnect_timeout = 2\n"));
    let out = Command::cargo_bin("kiln")
        .expect("bin")
        .current_dir(r.dir.path())
        .env("NO_COLOR", "1")
        .args(["plan", "e", "--detailed-exitcode"])
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(1));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("h1") && stdout.contains("error"),
        "{stdout}"
    );
}

#[allow(dead_code)]
fn exists(p: &Path) -> bool {
    p.exists()
}

/// The shipped environments validate with no host and no secret: every module, template,
/// parameter and graph edge of prod, dr and the lab is checked offline — and prod and dr
/// are the whole production (web, a 3-node cluster whose first formation is planned, object
/// storage, backups), with no hand-written `ports`.
#[test]
fn shipped_environments_plan_offline() {
    let repo = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let state = tempfile::tempdir().expect("tempdir");
    for env in ["prod", "dr", "lab"] {
        let text = std::fs::read_to_string(repo.join(format!("environments/{env}.toml"))).unwrap();
        assert!(
            !text.lines().any(|l| l.trim_start().starts_with("ports")),
            "{env}.toml lists ports by hand"
        );
        let out = Command::cargo_bin("kiln")
            .expect("binary")
            .current_dir(&repo)
            .env("NO_COLOR", "1")
            .env("XDG_STATE_HOME", state.path())
            .args(["plan", env, "--offline"])
            .output()
            .expect("run");
        let stdout = String::from_utf8_lossy(&out.stdout);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(0), "{env}: {stdout}\n{stderr}");
        assert!(stdout.contains("no host was contacted"), "{stdout}");
        assert!(
            stdout.contains("file:/etc/nginx/sites-enabled/api.conf"),
            "{stdout}"
        );
        // Secrets that cannot be read stand in as placeholders, and are redacted anyway.
        assert!(!stdout.contains("<secret "), "{stdout}");
        if env == "lab" {
            continue;
        }
        assert!(
            stdout.contains("Secrets not read, placeholders used: "),
            "{stdout}"
        );
        for host in ["web1", "db1", "db2", "db3", "storage"] {
            assert!(stdout.contains(&format!("\n{host} (")), "{env}: no {host}");
        }
        for step in [
            "db1 galera_node[prod]: bootstrap new cluster",
            "db2 galera_node[prod]: join (waits for db1)",
            "db3 galera_node[prod]: join (waits for db1, db2)",
        ] {
            assert!(stdout.contains(step), "{env}: no cluster step {step:?}");
        }
        // The firewall of db1 lets the web host reach MariaDB, derived from the modules.
        let web1 = if env == "prod" {
            "203.0.113.10"
        } else {
            "192.0.2.110"
        };
        assert!(
            stdout.lines().any(|l| l.contains("tcp dport 3306 accept")
                && l.contains(web1)
                && l.contains("module mariadb-galera")),
            "{env}: web1 not let in on 3306"
        );
    }
}

#[test]
fn a_module_can_fail_its_own_validation() {
    let r = Repo::new();
    r.write(
        "modules/m.toml",
        r#"description = "test module"
[[resource]]
type = "file"
path = "/etc/kiln-test"
content = "{{ fail('this module needs a greeting') }}"
"#,
    );
    r.write(
        "environments/e.toml",
        "[hosts.a]\naddress = \"127.0.0.1\"\nport = 1\nroles = [\"r\"]\n[roles.r]\nmodules = [\"m\"]\n",
    );
    // It reads nothing the environment sets, and the environment has no `[modules.m]`: at
    // the role entry that brings the module, the module's place as a note.
    r.fails(
        &["plan", "e"],
        &[
            "environments/e.toml:6:12: `roles.r.modules[0]`: this module needs a greeting\n",
            "= raised at ./modules/m.toml:5:1 (`resource[0].content`) by module `m`, on host `a`",
        ],
    );
}

/// A template's `fail()` about a parameter's value is reported at the environment key that
/// set it, the template position as a note; hosts failing on the same key, once.
#[test]
fn a_template_fail_points_at_the_environment_key_that_set_the_value() {
    let r = Repo::new();
    r.write(
        "templates/m/t.j2",
        "# kiln-test\n{% if params.greeting == \"hi\" %}\n{{ fail(\"say hello, not hi\") }}\n{% endif %}\n",
    );
    let two_hosts = "[hosts.h1]\naddress = \"127.0.0.1\"\nport = 1\nroles = [\"r\"]\n[hosts.h2]\naddress = \"127.0.0.2\"\nport = 1\nroles = [\"r\"]\n\n[roles.r]\nmodules = [\"m\"]\n\n[modules.m]\ngreeting = \"hi\"\n";
    r.write("environments/e.toml", two_hosts);
    let err = r.fails(
        &["plan", "e", "--offline"],
        &[
            "environments/e.toml:14:1: `modules.m.greeting`: say hello, not hi\n",
            "14 | greeting = \"hi\"\n",
            "= raised at ./templates/m/t.j2:3 by module `m`, on host `h1`",
        ],
    );
    assert_eq!(err.matches("say hello, not hi").count(), 1, "{err}");
    // Set for one host only: at that host's key.
    r.write(
        "environments/e.toml",
        &two_hosts.replace("[modules.m]\n", "[hosts.h2.modules.m]\n"),
    );
    r.fails(
        &["plan", "e", "--offline"],
        &[
            "environments/e.toml:14:1: `hosts.h2.modules.m.greeting`: say hello, not hi",
            "on host `h2`",
        ],
    );
    // A failure about nothing the environment sets: at the module's table, not in the
    // template.
    r.write(
        "templates/m/t.j2",
        "{{ params.greeting }}\n{{ fail(\"m is retired\") }}\n",
    );
    r.write("environments/e.toml", two_hosts);
    r.fails(
        &["plan", "e", "--offline"],
        &[
            "environments/e.toml:13:10: `modules.m`: m is retired",
            "= raised at ./templates/m/t.j2:2 by module `m`",
        ],
    );
}

#[test]
fn clone_of_a_source_that_does_not_render_writes_nothing() {
    let r = Repo::new();
    r.write(
        "templates/m/t.j2",
        "line one\n{{ vars.nonexistent }} here\n",
    );
    r.write("environments/e.toml", &env(""));
    r.fails(
        &["clone", "e", "qa", "--hosts", "lab"],
        &["templates/m/t.j2:2:", "vars.nonexistent"],
    );
    assert!(!r.path("environments/qa.toml").exists());
}

/// Usage errors exit 1: exit 2 means "changes" or "drift" to CI scripts. Help exits 0.
#[test]
fn usage_errors_exit_1_and_help_exits_0() {
    let run = |args: &[&str]| {
        Command::cargo_bin("kiln")
            .expect("binary")
            .args(args)
            .output()
            .expect("run")
    };
    for args in [
        &["drift", "--format", "yaml"][..],
        &["no-such-command"],
        &["plan"],
        &["apply", "x", "--lock-timeout", "soon"],
    ] {
        let out = run(args);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {out:?}");
        assert!(
            String::from_utf8_lossy(&out.stderr).contains("error"),
            "{args:?}: {out:?}"
        );
    }
    let help = run(&["--help"]);
    assert_eq!(help.status.code(), Some(0));
    assert!(String::from_utf8_lossy(&help.stdout).contains("Usage"));
}

/// `kiln … | head`: a reader that goes away ends kiln quietly (SIGPIPE, as Unix tools do),
/// never with a panic.
#[test]
fn a_closed_pipe_ends_quietly() {
    let bin = assert_cmd::cargo::cargo_bin("kiln");
    let repo = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let state = tempfile::tempdir().expect("tempdir");
    // The offline plan of the lab is long; `head -n 1` closes the pipe after one line.
    // (175 kB, well over a pipe's buffer, so kiln writes into the closed pipe.)
    let script = format!(
        "XDG_STATE_HOME={} NO_COLOR=1 {} plan lab --offline | head -n 1 >/dev/null",
        state.path().display(),
        bin.display()
    );
    let out = std::process::Command::new("sh")
        .arg("-c")
        .arg(&script)
        .current_dir(&repo)
        .output()
        .expect("bash");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert!(!stderr.contains("Broken pipe"), "{stderr}");
}

/// An EC2 environment's template error is reported before any AWS call: the endpoint here
/// is a closed local port, so reaching it first would end in a connection error instead.
#[test]
fn ec2_spec_and_template_errors_come_before_any_aws_call() {
    let r = Repo::new();
    r.write(
        "templates/m/t.j2",
        "line one\n{{ vars.nonexistent }} here\n",
    );
    r.write(
        "environments/e.toml",
        r#"[hosts.web1]
provider = "ec2"
roles = ["r"]

[hosts.web1.ec2]
ami = "ami-0123456789abcdef0"
instance_type = "t3.small"
subnet = "subnet-0123456789abcdef0"
security_groups = ["sg-0123456789abcdef0"]
key_name = "ops"
region = "eu-west-1"

[roles.r]
modules = ["m"]
"#,
    );
    let out = Command::cargo_bin("kiln")
        .expect("binary")
        .current_dir(r.dir.path())
        .env("NO_COLOR", "1")
        .env("AWS_ENDPOINT_URL", "http://127.0.0.1:1")
        .env("AWS_ACCESS_KEY_ID", "testing")
        .env("AWS_SECRET_ACCESS_KEY", "testing")
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .args(["plan", "e"])
        .output()
        .expect("run");
    let all = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(out.status.code(), Some(1), "{all}");
    assert!(
        all.contains("templates/m/t.j2:2:") && all.contains("vars.nonexistent"),
        "the template error first:\n{all}"
    );
    for aws in [
        "127.0.0.1:1",
        "dispatch failure",
        "Connection refused",
        "DescribeInstances",
    ] {
        assert!(!all.contains(aws), "AWS was called ({aws}):\n{all}");
    }
}

#[test]
fn offline_plan_lists_the_secrets_that_became_placeholders() {
    let r = Repo::new();
    r.write(
        "environments/e.toml",
        &env(
            "\n[secrets.db_password]\nenv = \"KILN_TEST_UNSET_DB_PASSWORD\"\n\n[secrets.api_token]\nenv = \"KILN_TEST_UNSET_API_TOKEN\"\n\n[secrets.session]\ngenerate = 32\n",
        ),
    );
    let out = Command::cargo_bin("kiln")
        .expect("binary")
        .current_dir(r.dir.path())
        .env("NO_COLOR", "1")
        .env_remove("KILN_TEST_UNSET_DB_PASSWORD")
        .env_remove("KILN_TEST_UNSET_API_TOKEN")
        .args(["plan", "e", "--offline"])
        .output()
        .expect("run");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{stdout}");
    assert!(stdout.contains("The spec is valid."), "{stdout}");
    // Unreadable secrets are named (a generated one is no placeholder), values never.
    assert!(
        stdout.contains("Secrets not read, placeholders used: db_password, api_token."),
        "{stdout}"
    );
    assert!(!stdout.contains("session"), "{stdout}");
    // With every secret readable, nothing is listed.
    r.write(
        "environments/e.toml",
        &env("\n[secrets.session]\ngenerate = 32\n"),
    );
    let out = Command::cargo_bin("kiln")
        .expect("binary")
        .current_dir(r.dir.path())
        .env("NO_COLOR", "1")
        .args(["plan", "e", "--offline"])
        .output()
        .expect("run");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{stdout}");
    assert!(!stdout.contains("placeholders used"), "{stdout}");
}

#[test]
fn list_entries_and_references_are_checked_offline() {
    let r = Repo::new();
    r.write(
        "modules/m.toml",
        r#"description = "test module"
[params.items]
type = "list"
entry = { name = "string", size = "int" }
default = []

[params.greeting]
type = "string"
default = "hello"

[[resource]]
type = "file"
path = "/etc/kiln-test"
template = "t.j2"
"#,
    );
    r.write(
        "environments/e.toml",
        &env("\n[modules.m]\nitems = [{ name = \"a\", size = 1 }, { name = \"b\", szie = 2 }]\n"),
    );
    r.fails(
        &["plan", "e", "--offline"],
        &[
            "environments/e.toml:10:",
            "modules.m.items[1].szie",
            "unknown key `szie` (keys: name, size)",
        ],
    );
    r.write(
        "environments/e.toml",
        &env("\n[modules.m]\nitems = [{ name = \"a\", size = \"1\" }]\n"),
    );
    r.fails(
        &["plan", "e", "--offline"],
        &[
            "modules.m.items[0].size",
            "`size` must be an integer, found string",
        ],
    );
}

/// `[seed]` and anonymisation rules are checked before anything happens: the error names
/// the file (the environment's or the rules'), the line and the key.
#[test]
fn seed_and_anonymisation_rules_are_checked_with_file_line_and_key() {
    let r = Repo::new();
    r.write(
        "environments/e.toml",
        &env("\n[seed]\nfrom_env = \"prod\"\n"),
    );
    r.fails(
        &["plan", "e", "--offline"],
        &["environments/e.toml:", "seed", "exactly one of `anonymize"],
    );
    r.write(
        "environments/e.toml",
        &env("\n[seed]\nfrom_env = \"prod\"\nanonymize = \"rules.toml\"\n"),
    );
    r.write(
        "environments/rules.toml",
        "[tables.\"app.customers\"]\ncolumns = { email = \"email\", name = \"scramble\" }\n",
    );
    r.fails(
        &["plan", "e", "--offline"],
        &[
            "environments/rules.toml:2:",
            "tables.\"app.customers\".columns.name",
            "`scramble`: expected one of keep, name, email, phone, hash, null",
        ],
    );
    r.write(
        "environments/rules.toml",
        "[tables.\"app.customers\"]\ncolumns = { email = \"email\" }\n",
    );
    r.fails(
        &["plan", "e", "--offline"],
        &[
            "environments/e.toml:",
            "declare it (`[secrets.anonymize_key] generate = 32`)",
        ],
    );
    r.write(
        "environments/e.toml",
        &env("\n[seed]\nfrom_env = \"e\"\nno_anonymize = true\n"),
    );
    r.fails(
        &["plan", "e", "--offline"],
        &["seed.from_env", "cannot seed itself"],
    );
    r.write(
        "environments/e.toml",
        &env("\n[seed]\nfrom_env = \"prod; rm -rf /\"\nno_anonymize = true\n"),
    );
    r.fails(
        &["plan", "e", "--offline"],
        &["seed.from_env", "an environment's name"],
    );
    // A valid seed: the offline plan says what the next full apply does.
    r.write(
        "environments/e.toml",
        &env("\n[seed]\nfrom_env = \"prod\"\nanonymize = \"rules.toml\"\n\n[secrets.anonymize_key]\ngenerate = 32\n"),
    );
    let stdout = r.succeeds(&["plan", "e", "--offline"]);
    assert!(
        stdout.contains("Seed: after a full apply")
            && stdout.contains("1 table rule(s), media: copy"),
        "{stdout}"
    );
}

/// A parameter that belongs to one environment (`per_environment`, e.g. where alerts go) is
/// not inherited by a copy: it gets the module's default, or its own with `--set`. The
/// source's value appears nowhere in the copy. Bad `--set` values write nothing.
#[test]
fn clone_does_not_inherit_per_environment_params() {
    let r = Repo::new();
    r.write(
        "modules/m.toml",
        r#"description = "test module"
[params.greeting]
type = "string"
default = "hello"
[params.receivers]
type = "list"
format = "url"
default = []
per_environment = true

[[resource]]
type = "file"
path = "/etc/kiln-test"
template = "t.j2"
"#,
    );
    r.write(
        "templates/m/t.j2",
        "{{ params.greeting }} to {{ params.receivers | join(',') or 'nobody' }}\n",
    );
    r.write(
        "environments/e.toml",
        &env("\n[modules.m]\ngreeting = \"hi\"\nreceivers = [\"http://pager.prod.example:9099/hook\"]\n"),
    );
    r.succeeds(&["clone", "e", "qa", "--hosts", "lab"]);
    let qa = std::fs::read_to_string(r.path("environments/qa.toml")).expect("qa.toml");
    assert!(
        qa.contains("[modules.m]\nreceivers = []  # e's own, not inherited")
            && qa.contains("--set m.receivers=")
            && !qa.contains("pager.prod"),
        "{qa}"
    );
    let plan = r.succeeds(&["plan", "qa", "--offline"]);
    assert!(
        plan.contains("hi to nobody") && !plan.contains("pager.prod"),
        "{plan}"
    );

    r.succeeds(&[
        "clone",
        "e",
        "qa",
        "--hosts",
        "lab",
        "--force",
        "--set",
        "m.receivers=[\"http://alerts.qa.example:9099/hook\"]",
        "--set",
        "m.greeting=hey",
    ]);
    let qa = std::fs::read_to_string(r.path("environments/qa.toml")).expect("qa.toml");
    assert!(
        qa.contains("receivers = [\"http://alerts.qa.example:9099/hook\"]  # --set")
            && qa.contains("greeting = \"hey\"  # --set")
            && !qa.contains("pager.prod"),
        "{qa}"
    );
    let plan = r.succeeds(&["plan", "qa", "--offline"]);
    assert!(
        plan.contains("hey to http://alerts.qa.example:9099/hook"),
        "{plan}"
    );

    std::fs::remove_file(r.path("environments/qa.toml")).expect("rm qa.toml");
    r.fails(
        &["clone", "e", "qa", "--set", "nope.x=1"],
        &["--set nope.x: `nope` is no module of e"],
    );
    r.fails(
        &["clone", "e", "qa", "--set", "m.colour=red"],
        &["module m has no parameter `colour`", "greeting, receivers"],
    );
    r.fails(
        &["clone", "e", "qa", "--set", "m.receivers"],
        &["MODULE.KEY=VALUE"],
    );
    r.fails(
        &["clone", "e", "qa", "--set", "m.receivers=[\"not a url\"]"],
        &["--set", "receivers"],
    );
    assert!(!r.path("environments/qa.toml").exists());
}

/// `kiln clone --with-data` must say how the data is anonymised; bad rules write nothing.
#[test]
fn clone_with_data_needs_a_choice_and_valid_rules() {
    let r = Repo::new();
    r.write("environments/e.toml", &env(""));
    r.fails(
        &["clone", "e", "qa", "--hosts", "lab", "--with-data"],
        &["--anonymize RULES.toml, or --no-anonymize"],
    );
    r.write("rules.toml", "[tables.\"app\"]\ntruncate = true\n");
    r.fails(
        &[
            "clone",
            "e",
            "qa",
            "--hosts",
            "lab",
            "--with-data",
            "--anonymize",
            "rules.toml",
        ],
        &["rules.toml:1:", "database.table"],
    );
    assert!(!r.path("environments/qa.toml").exists());
    r.write(
        "environments/rules.toml",
        "media = \"none\"\n[tables.\"app.s\"]\ntruncate = true\n",
    );
    r.succeeds(&[
        "clone",
        "e",
        "qa",
        "--hosts",
        "lab",
        "--with-data",
        "--anonymize",
        "environments/rules.toml",
    ]);
    let qa = std::fs::read_to_string(r.path("environments/qa.toml")).expect("qa.toml");
    assert!(
        qa.contains("[seed]\nfrom_env = \"e\"\nanonymize = \"rules.toml\""),
        "{qa}"
    );
    assert!(
        qa.contains("[secrets.anonymize_key]\ngenerate = 32"),
        "{qa}"
    );
}

/// Environments anywhere: a team keeps its environments in its own repository and finds
/// kiln's modules along the module path (`KILN_PATH`, `modules_path`, the environment's
/// repository, then `KILN_ROOT` or the current directory).
mod module_path {
    use super::*;

    /// `kiln/` (modules m and only_kiln, with templates) and `team/` (an environment that
    /// uses both, outside kiln's repository) side by side.
    fn layout(modules_path: &str) -> Repo {
        let r = Repo::new();
        r.write(
            "kiln/modules/m.toml",
            "description = \"kiln's m\"\n[[resource]]\ntype = \"file\"\npath = \"/etc/m\"\ntemplate = \"t.j2\"\n",
        );
        r.write("kiln/templates/m/t.j2", "from kiln's templates\n");
        r.write(
            "kiln/modules/only_kiln.toml",
            "description = \"only in kiln\"\n[[resource]]\ntype = \"package\"\nname = \"tree\"\n",
        );
        r.write(
            "team/environments/prod.toml",
            &format!("{modules_path}[hosts.h1]\naddress = \"192.0.2.10\"\nroles = [\"r\"]\n\n[roles.r]\nmodules = [\"m\", \"only_kiln\"]\n"),
        );
        r
    }

    fn plan_offline(r: &Repo, cwd: &str, vars: &[(&str, String)]) -> String {
        let env = r.path("team/environments/prod.toml");
        let out = r.run_in(cwd, vars, &["plan", &env.to_string_lossy(), "--offline"]);
        let stdout = String::from_utf8_lossy(&out.stdout).to_string();
        assert!(
            matches!(out.status.code(), Some(0) | Some(2)),
            "exit {:?}\n{stdout}\n{}",
            out.status.code(),
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(r.stub_calls(), "", "no host contacted");
        stdout
    }

    #[test]
    fn an_environment_outside_the_repository_finds_modules_through_kiln_path() {
        let r = layout("");
        let env = r.path("team/environments/prod.toml");
        let env = env.to_string_lossy();
        // Run from the team's environments: kiln's modules are nowhere on the path.
        let err = r.fails_in(
            "team/environments",
            &[],
            &["plan", &env, "--offline"],
            &["environments/prod.toml:6:12", "`roles.r.modules[0]`"],
        );
        let team_modules = r.path("team/modules");
        assert!(
            err.contains(&format!(
                "unknown module `m` (looked in: {} (the environment's repository), ./modules (the current directory))",
                team_modules.display()
            )),
            "{err}"
        );
        let kiln = r.path("kiln").to_string_lossy().to_string();
        let stdout = plan_offline(&r, "team", &[("KILN_PATH", format!("/nonexistent:{kiln}"))]);
        assert!(
            stdout.contains("+from kiln's templates") && stdout.contains("package:tree"),
            "{stdout}"
        );
        // KILN_ROOT (the repository kiln runs from) is on the path too, last.
        let stdout = plan_offline(&r, "team", &[("KILN_ROOT", kiln.clone())]);
        assert!(stdout.contains("+from kiln's templates"), "{stdout}");
        let stdout = plan_offline(&r, "kiln", &[]);
        assert!(stdout.contains("+from kiln's templates"), "{stdout}");
    }

    #[test]
    fn modules_path_is_relative_to_the_environment_file() {
        let r = layout("modules_path = [\"../../kiln\"]\n\n");
        let stdout = plan_offline(&r, "team", &[]);
        assert!(
            stdout.contains("+from kiln's templates") && stdout.contains("package:tree"),
            "{stdout}"
        );
        // `kiln explain` says which file a module default comes from.
        r.write(
            "kiln/modules/m.toml",
            "[params.greeting]\ntype = \"string\"\ndefault = \"hi\"\n[[resource]]\ntype = \"file\"\npath = \"/etc/m\"\ncontent = \"{{ params.greeting }}\"\n",
        );
        let env = r.path("team/environments/prod.toml");
        let out = r.run_in(
            "team",
            &[],
            &["explain", &env.to_string_lossy(), "modules.m.greeting"],
        );
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            stdout.contains(&format!(
                "{}:1",
                std::fs::canonicalize(r.path("kiln/modules/m.toml"))
                    .expect("canonical")
                    .display()
            )),
            "{stdout}"
        );
    }

    #[test]
    fn a_modules_path_entry_that_is_not_there_is_refused_at_its_key() {
        let r = layout("modules_path = [\"../../kiln\", \"../../kiln-modules\"]\n\n");
        let env = r.path("team/environments/prod.toml");
        let err = r.fails_in(
            "team",
            &[],
            &["plan", &env.to_string_lossy(), "--offline"],
            &[
                "environments/prod.toml:1:31",
                "`modules_path[1]`",
                "no directory",
                "kiln-modules",
            ],
        );
        assert!(!err.contains("modules_path[0]"), "{err}");
        // A directory without modules/ is no module root either.
        r.write("kiln-modules/README", "not a module root\n");
        r.fails_in(
            "team",
            &[],
            &["plan", &env.to_string_lossy(), "--offline"],
            &["`modules_path[1]`", "has no `modules/` directory"],
        );
    }

    #[test]
    fn a_local_module_shadows_a_shipped_one_and_module_show_says_so() {
        let r = layout("");
        r.write(
            "team/modules/m.toml",
            "description = \"the team's m\"\n[[resource]]\ntype = \"file\"\npath = \"/etc/m\"\ntemplate = \"t.j2\"\n",
        );
        r.write("team/templates/m/t.j2", "from the team's templates\n");
        // kiln's repository is the current directory: its `m` comes after the team's.
        let stdout = plan_offline(&r, "kiln", &[]);
        assert!(
            stdout.contains("+from the team's templates")
                && !stdout.contains("kiln's templates")
                && stdout.contains("package:tree"),
            "{stdout}"
        );
        let env = r.path("team/environments/prod.toml");
        let out = r.run_in(
            "kiln",
            &[],
            &["module", "show", "m", "--env", &env.to_string_lossy()],
        );
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert_eq!(out.status.code(), Some(0), "{stdout}");
        assert!(
            stdout.contains(&format!(
                "m ({}, from the environment's repository)",
                r.path("team/modules/m.toml").display()
            )) && stdout.contains("shadows ./modules/m.toml"),
            "{stdout}"
        );
        // Without the environment, only kiln's own.
        let out = r.run_in("kiln", &[], &["module", "show", "m"]);
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            stdout.contains("m (./modules/m.toml, from the current directory)"),
            "{stdout}"
        );
        let out = r.run_in("kiln", &[], &["module", "show", "nope"]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1));
        assert!(
            stderr.contains("unknown module `nope` (looked in: ./modules (the current directory))")
                && stderr.contains("(modules: m, only_kiln)"),
            "{stderr}"
        );
    }
}
