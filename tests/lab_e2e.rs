//! End-to-end on real Debian 12 hosts: the lab (systemd-nspawn containers) made by
//! `kiln lab up`, converged by `kiln apply`, checked with plain ssh.
//!
//! The suite works in a scratch copy of the repository with its own small environment on
//! its own addresses (10.233.0.21/.22), so it never touches a lab you brought up yourself. It needs
//! root; without root it prints NOT RUN and runs no scenario (and fails under KILN_E2E=require,
//! as in .ci/run).

#[path = "lab_e2e/access.rs"]
mod access;
mod common;
#[path = "lab_e2e/faults.rs"]
mod faults;
#[path = "lab_e2e/lockout.rs"]
mod lockout;

use std::path::Path;
use std::process::Command;
use std::time::Instant;

use common::{expect, Lab};

const ENV: &str = "labtest";
/// The secret scenario's value, and the one it changes to.
const DEMO_SECRET: &str = "s3cr3t-Value-9f2e";
const DEMO_SECRET_2: &str = "another-Secret-77";

/// The core scenarios run on the smallest stack (modules `base` and `web-hello`); the web
/// stack of environments/lab.toml has its own suite (tests/web_e2e.rs).
const LABTEST_ENV: &str = r#"# The local lab: Debian 12 containers on this machine. `kiln lab up lab` creates them,
# `kiln apply lab --yes` converges them. Everything here runs without servers of your own.
description = "Local lab (systemd-nspawn containers on 10.233.0.0/24)"

[ssh]
user = "root"

[hosts.web]
address = "10.233.0.21"
provider = "lab"
roles = ["web"]

[hosts.db1]
address = "10.233.0.22"
provider = "lab"
roles = ["db"]

[roles.web]
modules = ["base", "web-hello"]

[roles.db]
modules = ["base"]

[vars]
company = "Example SaaS"

[modules.base]
admins = [
  { name = "admin", keys = ["ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIGxhYi1hZG1pbi1rZXktZm9yLWRlbW9uc3RyYXRpb24 admin@lab"] },
]

[modules.web-hello]
title = "kiln lab"
"#;

fn up(lab: &Lab) -> Result<(), String> {
    // Fresh hosts: remove leftovers of an earlier run of this suite first.
    let r = lab.kiln(&["lab", "down", ENV]);
    expect(r.code == 0, "kiln lab down (cleanup before start)", &r)?;
    let r = lab.kiln(&["lab", "up", ENV]);
    expect(r.code == 0, "kiln lab up failed", &r)?;
    let r = lab.kiln(&["lab", "status", ENV]);
    expect(
        r.code == 0 && r.stdout.matches("running").count() == 2,
        "both hosts running",
        &r,
    )
}

/// The lab's hosts are like a cloud image's: lists debootstrap fetched for `bookworm`
/// only, no update-success stamp. The plan must refresh the lists before the first
/// install and say why; the packages apply then installs must be the candidates of the
/// full sources (security and point-release updates included).
fn fresh_host_refreshes_lists_first(lab: &Lab) -> Result<(), String> {
    let r = lab.kiln(&["plan", ENV, "--format", "json", "--detailed-exitcode"]);
    expect(r.code == 2, "plan of fresh hosts exits 2 (changes)", &r)?;
    let plan: serde_json::Value =
        serde_json::from_str(&r.stdout).map_err(|e| format!("plan json: {e}\n{}", r.all()))?;
    let hosts = plan["hosts"].as_array().cloned().unwrap_or_default();
    expect(hosts.len() == 2, "two hosts planned", &r)?;
    for host in &hosts {
        let changes = host["changes"].as_array().cloned().unwrap_or_default();
        let first = changes.iter().find(|c| {
            c["steps"]
                .as_array()
                .is_some_and(|s| s.iter().any(|s| s["op"] == "apt_install"))
        });
        let Some(first) = first else {
            return Err(format!(
                "{}: no install planned\n{}",
                host["host"], r.stdout
            ));
        };
        let ops: Vec<&str> = first["steps"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|s| s["op"].as_str())
            .collect();
        let reason = first["reason"].as_str().unwrap_or("");
        if ops.first() != Some(&"apt_update")
            || reason
                != "apt lists: bookworm-updates, bookworm-security never fetched: refreshed first"
        {
            return Err(format!(
                "{}: first install must refresh the lists and say why; steps {ops:?}, reason {reason:?}",
                host["host"]
            ));
        }
    }
    let human = lab.kiln(&["plan", ENV]);
    expect(
        human.stdout.contains(
            "(apt lists: bookworm-updates, bookworm-security never fetched: refreshed first)",
        ),
        "the human plan says why the lists are refreshed",
        &human,
    )?;
    for host in ["web", "db1"] {
        let r = lab.sh(
            host,
            "test ! -e /var/lib/apt/periodic/update-success-stamp && \
             dpkg-query -W -f='${binary:Package} ${Version}\\n' | sort >/var/tmp/kiln-e2e-dpkg-before",
        );
        expect(
            r.code == 0,
            "fresh host has no stamp; package list saved",
            &r,
        )?;
    }
    Ok(())
}

/// After the first apply: every package apply installed or upgraded is at the candidate
/// apt-cache policy gives with the host's full sources (nothing older than what -security
/// or -updates offers), and the security suite's lists are on the host.
fn installed_packages_are_the_candidates(lab: &Lab) -> Result<(), String> {
    for host in ["web", "db1"] {
        let r = lab.sh(
            host,
            "set -e; cd /var/tmp; \
             dpkg-query -W -f='${binary:Package} ${Version}\\n' | sort >kiln-e2e-dpkg-after; \
             comm -13 kiln-e2e-dpkg-before kiln-e2e-dpkg-after >kiln-e2e-dpkg-new; \
             echo \"new $(wc -l <kiln-e2e-dpkg-new)\"; \
             while read -r p v; do \
               c=$(apt-cache policy \"$p\" | sed -n 's/^ *Candidate: //p'); \
               [ \"$c\" = \"$v\" ] || echo \"OLD $p $v candidate $c\"; \
             done <kiln-e2e-dpkg-new; \
             ls /var/lib/apt/lists/ | grep -c 'bookworm-security_InRelease'; \
             rm -f kiln-e2e-dpkg-before kiln-e2e-dpkg-after kiln-e2e-dpkg-new",
        );
        let new: usize = r
            .stdout
            .lines()
            .find_map(|l| l.strip_prefix("new "))
            .and_then(|n| n.trim().parse().ok())
            .unwrap_or(0);
        expect(
            r.code == 0
                && new > 0
                && !r.stdout.contains("OLD ")
                && r.stdout.trim_end().ends_with('1'),
            &format!(
                "{host}: every installed package is apt's candidate ({new} installed or upgraded)"
            ),
            &r,
        )?;
    }
    Ok(())
}

fn first_apply_converges(lab: &Lab) -> Result<(), String> {
    let r = lab.kiln(&["apply", ENV, "--yes"]);
    expect(r.code == 0, "first apply", &r)?;
    expect(
        r.stdout.contains("install nginx") && r.stdout.contains("no failures"),
        "plan and summary printed",
        &r,
    )?;
    let page = lab.sh("web", "curl -fsS http://127.0.0.1/");
    expect(
        page.code == 0 && page.stdout.contains("kiln lab"),
        "nginx serves the page",
        &page,
    )?;
    let motd = lab.sh("db1", "cat /etc/motd");
    expect(
        motd.stdout
            .contains("db1 (10.233.0.22), environment labtest"),
        "motd names env and host",
        &motd,
    )?;
    let default = lab.sh("web", "test ! -e /etc/nginx/sites-enabled/default");
    expect(default.code == 0, "Debian's default site removed", &default)
}

fn second_apply_changes_nothing(lab: &Lab) -> Result<(), String> {
    let r = lab.kiln(&["plan", ENV, "--detailed-exitcode"]);
    expect(r.code == 0, "plan after apply exits 0", &r)?;
    expect(
        r.stdout
            .contains("0 to create, 0 to update, 0 to remove, 0 to run"),
        "empty plan",
        &r,
    )?;
    let before = lab.sh(
        "web",
        "ls /var/lib/kiln/backup -R | wc -l; stat -c %Y /etc/motd",
    );
    let r = lab.kiln(&["apply", ENV, "--yes"]);
    expect(
        r.code == 0 && r.stdout.contains("No changes to apply"),
        "second apply reports no changes",
        &r,
    )?;
    let after = lab.sh(
        "web",
        "ls /var/lib/kiln/backup -R | wc -l; stat -c %Y /etc/motd",
    );
    expect(
        before.stdout == after.stdout,
        "second apply touched nothing on the host",
        &after,
    )
}

fn hand_edit_is_drift_and_is_undone(lab: &Lab) -> Result<(), String> {
    lab.sh("web", "echo 'edited by hand' >> /etc/motd");
    let r = lab.kiln(&["plan", ENV, "--detailed-exitcode"]);
    expect(r.code == 2, "plan exits 2 on drift", &r)?;
    expect(
        r.stdout.contains("~ file:/etc/motd") && r.stdout.contains("-edited by hand"),
        "plan shows the diff",
        &r,
    )?;
    let r = lab.kiln(&["drift", ENV, "--format", "json"]);
    expect(
        r.code == 2
            && r.stdout.contains("\"schema\": \"kiln.drift/1\"")
            && r.stdout.contains("file:/etc/motd"),
        "drift json",
        &r,
    )?;
    let r = lab.kiln(&["drift", ENV, "--format", "markdown"]);
    expect(
        r.code == 2 && r.stdout.contains("```diff") && r.stdout.contains("-edited by hand"),
        "drift markdown",
        &r,
    )?;
    let r = lab.kiln(&["apply", ENV, "--yes"]);
    expect(r.code == 0, "apply restores", &r)?;
    let motd = lab.sh("web", "cat /etc/motd; ls /var/lib/kiln/backup/etc/motd");
    expect(
        !motd.stdout.contains("edited by hand") && motd.code == 0,
        "motd restored, previous version kept",
        &motd,
    )?;
    let r = lab.kiln(&["plan", ENV, "--detailed-exitcode"]);
    expect(r.code == 0, "plan clean again", &r)
}

/// `kiln apply --target`: only the targeted file (and the reload it notifies) changes; a
/// second hand edit on the same host waits for an untargeted apply; `kiln plan --format
/// markdown` shows it for a pull request. (The web stack's `--target
/// file:/etc/nginx/nginx.conf` is in web_e2e.) Written with the targeted runs; NOT RUN by
/// its author, who has no lab.
fn targeted_apply_changes_only_its_target(lab: &Lab) -> Result<(), String> {
    let site = "/etc/nginx/sites-available/kiln";
    let r = lab.sh(
        "web",
        &format!("echo '# edited by hand' >> {site} && echo 'edited by hand' >> /etc/motd"),
    );
    expect(r.code == 0, "hand edits", &r)?;
    let target = format!("file:{site}");
    let r = lab.kiln(&["plan", ENV, "--format", "markdown", "--target", &target]);
    expect(
        r.code == 0
            && r.stdout.contains(&format!("<code>~ file:{site}</code>"))
            && r.stdout.contains("handler:reload@nginx.service")
            && !r.stdout.contains("file:/etc/motd</code>")
            && r.stdout
                .contains("> pulled in as dependencies: web:package:nginx"),
        "the targeted Markdown plan: the site, its reload, what it pulled in",
        &r,
    )?;
    let r = lab.kiln(&["apply", ENV, "--yes", "--target", &target]);
    expect(r.code == 0, "targeted apply", &r)?;
    let c = lab.sh("web", &format!("grep -c 'edited by hand' {site} /etc/motd"));
    expect(
        c.stdout.contains(&format!("{site}:0")) && c.stdout.contains("/etc/motd:1"),
        "the site restored, motd still as edited",
        &c,
    )?;
    let r = lab.kiln(&["plan", ENV, "--detailed-exitcode"]);
    expect(
        r.code == 2 && r.stdout.contains("~ file:/etc/motd") && !r.stdout.contains(site),
        "only the untargeted edit is left",
        &r,
    )?;
    let r = lab.kiln(&["plan", ENV, "--target", "file:/etc/nope*"]);
    expect(
        r.code == 1
            && r.stderr
                .contains("--target `file:/etc/nope*` matches no resource"),
        "a pattern matching nothing is an error naming it",
        &r,
    )?;
    let r = lab.kiln(&["apply", ENV, "--yes"]);
    expect(r.code == 0, "an untargeted apply takes the rest", &r)?;
    let r = lab.kiln(&["plan", ENV, "--detailed-exitcode"]);
    expect(r.code == 0, "plan clean again", &r)
}

/// The CI drift run: every kind of drift with a readable reason, and an unreachable host of
/// another environment reported as an error while this one is still checked.
fn drift_reports_each_kind_and_unreachable_hosts(lab: &Lab) -> Result<(), String> {
    let r = lab.sh(
        "web",
        "apt-get remove -y -q less >/dev/null 2>&1; systemctl stop nginx; systemctl disable -q nginx",
    );
    expect(r.code == 0, "break the host", &r)?;
    std::fs::write(
        lab.path("environments/gone.toml"),
        "[vars]\ncompany = \"x\"\n[hosts.ghost]\naddress = \"127.0.0.1\"\nport = 1\nroles = [\"r\"]\n[roles.r]\nmodules = [\"base\"]\n",
    )
    .map_err(|e| e.to_string())?;
    let r = lab.kiln(&["drift", ENV, "gone", "--format", "json"]);
    let report: serde_json::Value =
        serde_json::from_str(&r.stdout).map_err(|e| format!("json: {e}\n{}", r.all()))?;
    let text = r.stdout.clone();
    expect(
        r.code == 1
            && report["schema"] == "kiln.drift/1"
            && text.contains("not installed on the host")
            && text.contains("not running on the host")
            && text.contains("not enabled on the host")
            && text.contains("package:less")
            && text.contains("ghost"),
        "drift: exit 1 for the unreachable host, every kind of drift with its reason",
        &r,
    )?;
    let md = lab.kiln(&["drift", ENV, "gone", "--format", "markdown"]);
    expect(
        md.code == 1
            && md.stdout.contains("| gone | ghost |")
            && md.stdout.contains("not running on the host"),
        "drift markdown shows both environments",
        &md,
    )?;
    let _ = std::fs::remove_file(lab.path("environments/gone.toml"));
    let r = lab.kiln(&["drift", ENV]);
    expect(r.code == 2, "this environment alone: exit 2 (drift)", &r)?;
    let r = lab.kiln(&["apply", ENV, "--yes"]);
    expect(r.code == 0, "apply repairs it", &r)?;
    let r = lab.kiln(&["drift", ENV]);
    expect(r.code == 0, "clean again: exit 0", &r)
}

fn stale_saved_plan_is_refused(lab: &Lab) -> Result<(), String> {
    lab.sh("web", "echo 'first edit' >> /etc/motd");
    let plan = lab.path("p.json");
    let r = lab.kiln(&["plan", ENV, "-o", plan.to_str().unwrap_or_default()]);
    expect(r.code == 0 && plan.exists(), "plan saved", &r)?;
    lab.sh("web", "echo 'second edit' >> /etc/motd");
    let r = lab.kiln(&["apply", plan.to_str().unwrap_or_default(), "--yes"]);
    expect(
        r.code == 1
            && r.stderr.contains("refused stale change")
            && r.stderr.contains("file:/etc/motd"),
        "stale change refused",
        &r,
    )?;
    let motd = lab.sh("web", "cat /etc/motd");
    expect(
        motd.stdout.contains("second edit"),
        "refused change was not applied",
        &motd,
    )?;
    // A fresh saved plan applies exactly.
    let r = lab.kiln(&["plan", ENV, "-o", plan.to_str().unwrap_or_default()]);
    expect(r.code == 0, "new plan", &r)?;
    let r = lab.kiln(&["apply", plan.to_str().unwrap_or_default(), "--yes"]);
    expect(r.code == 0, "fresh saved plan applies", &r)?;
    let r = lab.kiln(&["plan", ENV, "--detailed-exitcode"]);
    expect(r.code == 0, "clean after saved plan", &r)
}

fn secrets_never_printed(lab: &Lab) -> Result<(), String> {
    let env_file = lab.path(&format!("environments/{ENV}.toml"));
    let original = std::fs::read_to_string(&env_file).map_err(|e| e.to_string())?;
    let result = secrets_scenario(lab, &env_file, &original);
    // Back to the repository's modules and environment, whatever happened.
    let repo = Path::new(env!("CARGO_MANIFEST_DIR"));
    std::fs::write(&env_file, original).map_err(|e| e.to_string())?;
    let _ = std::fs::remove_dir_all(lab.path("modules"))
        .or_else(|_| std::fs::remove_file(lab.path("modules")));
    std::os::unix::fs::symlink(repo.join("modules"), lab.path("modules"))
        .map_err(|e| e.to_string())?;
    result
}

fn secrets_scenario(lab: &Lab, env_file: &Path, original: &str) -> Result<(), String> {
    // A module that renders a secret into a file, in the scratch repo only.
    let secret = DEMO_SECRET;
    std::fs::remove_file(lab.path("modules")).map_err(|e| e.to_string())?;
    std::fs::create_dir_all(lab.path("modules")).map_err(|e| e.to_string())?;
    let repo = Path::new(env!("CARGO_MANIFEST_DIR"));
    for m in ["base.toml", "web-hello.toml"] {
        std::fs::copy(repo.join("modules").join(m), lab.path("modules").join(m))
            .map_err(|e| e.to_string())?;
    }
    // The secret verbatim, through a filter into a file, and into a command's `run` and
    // `unless` (the command sleeps so that `ps` on the host can be sampled while it runs).
    std::fs::write(
        lab.path("modules/secret-demo.toml"),
        r#"[[resource]]
type = "file"
path = "/etc/kiln-secret-demo.conf"
content = "password = {{ secrets.demo }}\n"
mode = "0600"

[[resource]]
type = "file"
path = "/etc/kiln-secret-upper.conf"
content = "PASSWORD={{ secrets.demo | upper }}\n"
mode = "0600"

[[resource]]
type = "command"
name = "secret-demo"
run = "umask 077 && printf '%s\n' '{{ secrets.demo | upper }}' > /etc/kiln-secret-cmd && sleep 3"
unless = "grep -qx '{{ secrets.demo | upper }}' /etc/kiln-secret-cmd"
"#,
    )
    .map_err(|e| e.to_string())?;
    let mut text = original.to_string();
    text = text.replace(
        "modules = [\"base\"]",
        "modules = [\"base\", \"secret-demo\"]",
    );
    text.push_str("\n[secrets.demo]\nenv = \"KILN_E2E_SECRET\"\n");
    std::fs::write(env_file, text).map_err(|e| e.to_string())?;
    let envs = [("KILN_E2E_SECRET", secret)];
    let plan = lab.path("secret-plan.json");
    let mut outputs = vec![];
    let r = lab.kiln_env(
        &["plan", ENV, "-o", plan.to_str().unwrap_or_default()],
        &envs,
    );
    expect(
        r.code == 0 && r.stdout.contains("file:/etc/kiln-secret-demo.conf"),
        "plan with secret",
        &r,
    )?;
    outputs.push(r.all());
    outputs.push(std::fs::read_to_string(&plan).map_err(|e| e.to_string())?);
    let mode = std::fs::metadata(&plan)
        .map(|m| std::os::unix::fs::PermissionsExt::mode(&m.permissions()) & 0o777)
        .map_err(|e| e.to_string())?;
    if mode != 0o600 {
        return Err(format!("saved plan has mode {mode:o}, not 600"));
    }
    let r = lab.kiln_env(&["plan", ENV, "--format", "json"], &envs);
    expect(r.code == 0, "json plan with secret exits 0", &r)?;
    outputs.push(r.all());
    for format in ["json", "human", "markdown"] {
        let r = lab.kiln_env(&["drift", ENV, "--format", format], &envs);
        expect(r.code == 2, &format!("drift --format {format} exits 2"), &r)?;
        outputs.push(r.all());
    }
    // Sample every process's arguments on the host while the plan is applied.
    let sampler = lab.sh(
        "db1",
        "rm -f /var/tmp/kiln-ps; nohup sh -c 'i=0; while [ $i -lt 100 ]; do ps -eo args >>/var/tmp/kiln-ps; i=$((i+1)); sleep 0.1; done' >/dev/null 2>&1 </dev/null &",
    );
    expect(sampler.code == 0, "ps sampler started", &sampler)?;
    let r = lab.kiln_env(
        &["apply", plan.to_str().unwrap_or_default(), "--yes"],
        &envs,
    );
    expect(r.code == 0, "apply with secret", &r)?;
    outputs.push(r.all());
    std::thread::sleep(std::time::Duration::from_secs(6));
    let ps = lab.sh("db1", "cat /var/tmp/kiln-ps; rm -f /var/tmp/kiln-ps");
    expect(
        ps.stdout.contains("sleep 3") && ps.stdout.contains("KILN_UNIT"),
        "ps sampled while the command ran",
        &ps,
    )?;
    outputs.push(ps.stdout.clone());
    let ran = lab.sh(
        "db1",
        "cat /etc/kiln-secret-cmd /etc/kiln-secret-upper.conf",
    );
    expect(
        ran.stdout.matches(&secret.to_uppercase()).count() == 2,
        "the command and the filtered file got the real value",
        &ran,
    )?;
    let again = lab.kiln_env(&["plan", ENV, "--detailed-exitcode"], &envs);
    expect(
        again.code == 0,
        "converged: the sensitive guard holds on the next plan",
        &again,
    )?;
    outputs.push(again.all());
    let on_host = lab.sh(
        "db1",
        "cat /etc/kiln-secret-demo.conf; stat -c %a /etc/kiln-secret-demo.conf",
    );
    expect(
        on_host.stdout.contains(secret) && on_host.stdout.contains("600"),
        "secret written with mode 0600",
        &on_host,
    )?;
    // Change the secret: the plan says so without showing either value.
    let r = lab.kiln_env(
        &["plan", ENV, "--detailed-exitcode"],
        &[("KILN_E2E_SECRET", DEMO_SECRET_2)],
    );
    expect(
        r.code == 2 && r.stdout.contains("(sensitive value changed)"),
        "changed secret shown as sensitive",
        &r,
    )?;
    outputs.push(r.all());
    let r = lab.kiln_env(
        &["drift", ENV, "--format", "markdown"],
        &[("KILN_E2E_SECRET", DEMO_SECRET_2)],
    );
    outputs.push(r.all());
    // Saved plans holding a sensitive file: one planned with the new value is refused when
    // apply is given another value, and refused as stale when the file changed on the host.
    let new_secret = [("KILN_E2E_SECRET", DEMO_SECRET_2)];
    let plan2 = lab.path("secret-plan-2.json");
    let plan2 = plan2.to_str().unwrap_or_default();
    let r = lab.kiln_env(&["plan", ENV, "-o", plan2], &new_secret);
    expect(r.code == 0, "a saved plan for the new value", &r)?;
    outputs.push(r.all());
    outputs.push(std::fs::read_to_string(plan2).map_err(|e| e.to_string())?);
    let r = lab.kiln_env(&["apply", plan2, "--yes"], &envs);
    expect(
        r.code == 1 && r.all().contains("file:/etc/kiln-secret-demo.conf"),
        "a saved plan applied with another secret value is refused",
        &r,
    )?;
    outputs.push(r.all());
    lab.sh(
        "db1",
        "echo 'edited = by hand' >> /etc/kiln-secret-demo.conf",
    );
    let r = lab.kiln_env(&["apply", plan2, "--yes"], &new_secret);
    expect(
        r.code == 1
            && r.stderr.contains("refused stale change")
            && r.stderr.contains("file:/etc/kiln-secret-demo.conf"),
        "a saved plan whose sensitive file changed on the host is refused as stale",
        &r,
    )?;
    outputs.push(r.all());
    let kept = lab.sh("db1", "grep -c 'by hand' /etc/kiln-secret-demo.conf");
    expect(
        kept.stdout.trim() == "1",
        "the refused plans wrote nothing",
        &kept,
    )?;
    let r = lab.kiln_env(&["apply", ENV, "--yes"], &envs);
    expect(r.code == 0, "a fresh apply with the first value", &r)?;
    outputs.push(r.all());
    let forms = |v: &str| {
        use base64::Engine as _;
        let sha = |t: &str| kiln::resource::file::sha256_hex(t.as_bytes());
        vec![
            v.to_string(),
            v.to_uppercase(),
            v.to_lowercase(),
            base64::engine::general_purpose::STANDARD.encode(v),
            base64::engine::general_purpose::STANDARD.encode(v.to_uppercase()),
            sha(v),
            sha(&v.to_uppercase()),
        ]
    };
    for o in &outputs {
        for form in forms(secret).into_iter().chain(forms(DEMO_SECRET_2)) {
            if o.contains(&form) {
                return Err(format!(
                    "{form:?} (a secret or a form of it) appeared in output:\n{o}"
                ));
            }
        }
    }
    Ok(())
}

/// A connection lost mid-apply (the SSH master killed while a step runs): the orphaned
/// script on the host stops at its next step boundary, the re-run waits for its lock
/// (naming the holder) instead of failing, and converges.
fn lost_connection_mid_apply_then_rerun_converges(lab: &Lab) -> Result<(), String> {
    let result = lost_connection_scenario(lab);
    let _ = lab.sh(
        "db1",
        "rm -f /var/tmp/kiln-slow-done /var/tmp/kiln-after-slow",
    );
    result
}

fn lost_connection_scenario(lab: &Lab) -> Result<(), String> {
    let _overlay = faults::Overlay::new(
        lab,
        &[(
            "slow",
            r#"[[resource]]
type = "command"
name = "slow"
run = "sleep 8 && touch /var/tmp/kiln-slow-done"
creates = "/var/tmp/kiln-slow-done"

[[resource]]
type = "command"
name = "after-slow"
run = "touch /var/tmp/kiln-after-slow"
creates = "/var/tmp/kiln-after-slow"
after = ["command:slow"]
"#,
        )],
        |e| faults::with_module(e, "modules = [\"base\"]", "slow"),
    )?;

    let mut first = Command::new(env!("CARGO_BIN_EXE_kiln"))
        .current_dir(lab.path(""))
        .env("NO_COLOR", "1")
        .env("KILN_ROOT", lab.path(""))
        .args(["apply", ENV, "--yes", "--limit", "db1"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .map_err(|e| e.to_string())?;
    // Wait until the slow step runs on the host, then cut the connection on the host's
    // side, whatever the transport (OpenSSH's master or russh): find the sshd session
    // process above the step's `sleep` and end it, by pid. That closes the TCP connection,
    // as a network loss or a rebooted router would.
    let t = Instant::now();
    let mut session = None;
    while t.elapsed().as_secs() < 60 {
        // `^sleep 8$`: the step's own process, not this polling shell (whose command
        // line holds the pattern too).
        let r = lab.sh(
            "db1",
            "p=$(pgrep -f \"^sleep 8$\" | head -n 1); while [ -n \"$p\" ] && [ \"$p\" -gt 1 ]; do case $(cat /proc/$p/comm) in sshd*) echo \"session $p\"; exit 0;; esac; p=$(ps -o ppid= -p \"$p\" | tr -d ' '); done",
        );
        if let Some(pid) = r.stdout.trim().strip_prefix("session ") {
            session = Some(pid.to_string());
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    let Some(pid) = session else {
        let _ = first.kill();
        return Err("the slow step never started on db1 under an sshd session".into());
    };
    // This command may travel over the very connection it cuts: its own result is not
    // looked at; the cut apply's is.
    let _ = lab.sh("db1", &format!("kill {pid}"));
    let out = first.wait_with_output().map_err(|e| e.to_string())?;
    let first_out = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    if out.status.success() {
        return Err(format!("the cut apply reported success:\n{first_out}"));
    }
    // The re-run starts while the orphan still sleeps: it waits for the lock, then finds
    // `slow` done (its `creates` is re-checked on the host) and runs the rest.
    let r = lab.kiln(&["apply", ENV, "--yes", "--limit", "db1"]);
    expect(
        r.code == 0
            && r.stderr
                .contains("waiting up to 10 s for the lock held by kiln by"),
        "the re-run waited for the orphan's lock, naming its holder, and applied",
        &r,
    )?;
    let done = lab.sh(
        "db1",
        "test -e /var/tmp/kiln-slow-done && test -e /var/tmp/kiln-after-slow && echo both",
    );
    expect(done.stdout.contains("both"), "both commands done", &done)?;
    let again = lab.kiln(&["plan", ENV, "--detailed-exitcode", "--limit", "db1"]);
    expect(again.code == 0, "converged after the re-run", &again)
}

fn verify_passes(lab: &Lab) -> Result<(), String> {
    let r = lab.kiln(&["verify", ENV]);
    expect(
        r.code == 0
            && r.stdout.contains("nginx serves the kiln page")
            && r.stdout.contains("motd names the environment"),
        "verify runs the checks",
        &r,
    )?;
    lab.sh("web", "systemctl stop nginx");
    let r = lab.kiln(&["verify", ENV, "--format", "json"]);
    let doc: serde_json::Value = serde_json::from_str(&r.stdout).unwrap_or_default();
    let page_check = doc["checks"].as_array().and_then(|cs| {
        cs.iter()
            .find(|c| c["host"] == "web" && c["name"] == "nginx serves the kiln page")
    });
    let nginx_change = doc["plan"]["hosts"].as_array().is_some_and(|hs| {
        hs.iter().any(|h| {
            h["host"] == "web"
                && h["changes"]
                    .as_array()
                    .is_some_and(|cs| cs.iter().any(|c| c["resource"] == "service:nginx.service"))
        })
    });
    expect(
        r.code == 1
            && doc["status"] == "failed"
            && page_check.is_some_and(|c| c["passed"] == false)
            && nginx_change,
        "verify notices the stopped service: its check fails and the plan starts it",
        &r,
    )?;
    let r = lab.kiln(&["apply", ENV, "--yes"]);
    expect(r.code == 0, "apply starts nginx again", &r)?;
    let r = lab.kiln(&["verify", ENV]);
    expect(r.code == 0, "verify healthy again", &r)
}

fn down(lab: &Lab) -> Result<(), String> {
    let r = lab.kiln(&["lab", "down", ENV]);
    expect(r.code == 0, "lab down", &r)?;
    let ns = Command::new("ip")
        .args(["netns", "list"])
        .output()
        .map_err(|e| e.to_string())?;
    let left = String::from_utf8_lossy(&ns.stdout).to_string();
    let status = lab.kiln(&["lab", "status", ENV]);
    expect(
        !status.stdout.contains("running"),
        &format!("no host left running (netns: {left})"),
        &status,
    )
}

fn main() {
    // The secret scenario's two values: every output of the suite is scanned for both.
    let mut lab = Lab::new(ENV, LABTEST_ENV).with_secret("KILN_E2E_SECRET", DEMO_SECRET);
    lab.secrets.push(DEMO_SECRET_2.to_string());
    let scenarios: &[(&str, fn(&Lab) -> Result<(), String>)] = &[
        ("lab_up", up),
        (
            "fresh_host_refreshes_lists_first",
            fresh_host_refreshes_lists_first,
        ),
        ("first_apply_converges", first_apply_converges),
        (
            "installed_packages_are_the_candidates",
            installed_packages_are_the_candidates,
        ),
        ("second_apply_changes_nothing", second_apply_changes_nothing),
        (
            "hand_edit_is_drift_and_is_undone",
            hand_edit_is_drift_and_is_undone,
        ),
        (
            "targeted_apply_changes_only_its_target",
            targeted_apply_changes_only_its_target,
        ),
        (
            "drift_reports_each_kind_and_unreachable_hosts",
            drift_reports_each_kind_and_unreachable_hosts,
        ),
        ("stale_saved_plan_is_refused", stale_saved_plan_is_refused),
        ("secrets_never_printed", secrets_never_printed),
        (
            "lost_connection_mid_apply_then_rerun_converges",
            lost_connection_mid_apply_then_rerun_converges,
        ),
        ("verify_passes", verify_passes),
        (
            "non_root_admin_plans_and_applies_through_sudo",
            access::non_root_admin_plans_and_applies_through_sudo,
        ),
        (
            "ssh_overrides_replace_the_spec_user_and_key",
            access::ssh_overrides_replace_the_spec_user_and_key,
        ),
        (
            "accept_new_records_unknown_host_keys_never_changed_ones",
            access::accept_new_records_unknown_host_keys_never_changed_ones,
        ),
        (
            "parallel_one_applies_hosts_one_after_another",
            access::parallel_one_applies_hosts_one_after_another,
        ),
        (
            "limit_plans_and_applies_exactly_the_selected_hosts",
            access::limit_plans_and_applies_exactly_the_selected_hosts,
        ),
        (
            "killed_between_write_and_reload",
            faults::killed_between_write_and_reload,
        ),
        ("two_applies_at_once", faults::two_applies_at_once),
        (
            "unreachable_host_mid_run_fails_alone",
            faults::unreachable_host_mid_run_fails_alone,
        ),
        (
            "full_disk_keeps_the_old_file",
            faults::full_disk_keeps_the_old_file,
        ),
        (
            "apt_lock_held_by_another_process",
            faults::apt_lock_held_by_another_process,
        ),
        (
            "failing_config_check_keeps_the_reload_owed",
            faults::failing_config_check_keeps_the_reload_owed,
        ),
        (
            "a_spec_that_would_lock_kiln_out_is_refused_and_changes_nothing",
            lockout::a_spec_that_would_lock_kiln_out_is_refused_and_changes_nothing,
        ),
        (
            "the_allowed_variant_applies_and_kiln_still_reaches_the_host",
            lockout::the_allowed_variant_applies_and_kiln_still_reaches_the_host,
        ),
        (
            "through_sudo_the_source_and_the_admin_s_own_key_are_judged",
            lockout::through_sudo_the_source_and_the_admin_s_own_key_are_judged,
        ),
        ("no_secret_in_any_output", |l: &Lab| {
            l.no_secret_in_any_output()
        }),
    ];
    let scenarios: Vec<common::Scenario<'_, Lab>> = scenarios
        .iter()
        .map(|(n, f)| (*n, f as &dyn Fn(&Lab) -> Result<(), String>))
        .collect();
    // Each scenario here checks one behaviour on the converged lab: one failing does not
    // stop the others (lab up failing does).
    common::run_suite(
        "lab_e2e",
        lab,
        &scenarios,
        &down,
        common::Policy {
            stop_at_failure: false,
            always: &[],
        },
    );
}
