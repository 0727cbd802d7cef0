//! How kiln reaches the hosts, on the lab suite's converged hosts `web` and `db1`: a
//! non-root admin through `sudo -n`, the `KILN_SSH_USER`/`KILN_SSH_KEY` overrides, `[ssh]
//! accept_new`, `apply --parallel N` and the forms of `--limit`.
//!
//! Each scenario starts from the converged lab and leaves it so: the environment file, the
//! `modules` link and the lab's known_hosts are put back, whatever happened, and an apply
//! converges the hosts again if the scenario changed them.
//!
//! The overrides and `accept_new` are for hosts that are not lab containers (lab hosts use
//! the lab's key and have their host keys recorded by `kiln lab up`), so those scenarios
//! plan a *static twin*: the same environment file with `provider = "lab"` taken out, under
//! a second repository root (`access-static/environments/ENV.toml`, same name: it renders
//! exactly as the lab environment, so a working connection plans nothing).

use std::path::{Path, PathBuf};
use std::time::Instant;

use crate::common::{self, expect, Lab, Run};

/// The hosts of the lab suite's environment.
const HOSTS: [&str; 2] = ["web", "db1"];

// ---------------------------------------------------------------------------------------
// Helpers

/// A host's address, from the environment file.
fn address(lab: &Lab, host: &str) -> Result<String, String> {
    let text = std::fs::read_to_string(lab.env_file()).map_err(|e| e.to_string())?;
    let doc: toml::Value = toml::from_str(&text).map_err(|e| e.to_string())?;
    doc["hosts"][host]["address"]
        .as_str()
        .map(str::to_string)
        .ok_or_else(|| format!("no address for host {host} in {}", lab.env_file().display()))
}

/// The lab's SSH key (authorized for root on every lab host).
fn lab_key(lab: &Lab) -> PathBuf {
    let dir = lab
        .envs
        .iter()
        .find(|(k, _)| k == "KILN_LAB_DIR")
        .map(|(_, v)| PathBuf::from(v))
        .unwrap_or_else(kiln::state::lab_state_dir);
    dir.join("ssh/id_ed25519")
}

fn lab_known_hosts(lab: &Lab) -> PathBuf {
    lab.path(&format!("environments/{}.known_hosts", lab.env))
}

/// A fresh ed25519 key pair at `path` (and `path.pub`); returns the public line.
fn keygen(path: &Path, comment: &str) -> Result<String, String> {
    let _ = std::fs::remove_file(path);
    let _ = std::fs::remove_file(path.with_extension("pub"));
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(|e| e.to_string())?;
    }
    let p = path.to_str().unwrap_or_default();
    let r = common::local(
        "ssh-keygen",
        &["-q", "-t", "ed25519", "-N", "", "-C", comment, "-f", p],
    );
    expect(r.code == 0, "ssh-keygen", &r)?;
    std::fs::read_to_string(format!("{p}.pub"))
        .map(|s| s.trim().to_string())
        .map_err(|e| e.to_string())
}

/// Edits the environment file as a TOML document.
fn edit_env(lab: &Lab, f: impl FnOnce(&mut toml_edit::DocumentMut)) -> Result<(), String> {
    let text = std::fs::read_to_string(lab.env_file()).map_err(|e| e.to_string())?;
    let mut doc: toml_edit::DocumentMut = text.parse().map_err(|e| format!("{e}"))?;
    f(&mut doc);
    lab.write_env(&doc.to_string());
    Ok(())
}

/// Adds `module` to every role of the environment.
fn add_module_to_roles(doc: &mut toml_edit::DocumentMut, module: &str) {
    if let Some(roles) = doc["roles"].as_table_like_mut() {
        for (_, role) in roles.iter_mut() {
            if let Some(m) = role.get_mut("modules").and_then(|m| m.as_array_mut()) {
                m.push(module);
            }
        }
    }
}

/// The scratch repository's `modules` becomes a directory: a link to each of the
/// repository's modules plus `extra` (name, text). [`Saved::restore`] links it back.
fn own_modules(lab: &Lab, extra: &[(&str, &str)]) -> Result<(), String> {
    let dir = lab.path("modules");
    if std::fs::symlink_metadata(&dir)
        .map(|m| m.file_type().is_symlink())
        .unwrap_or(false)
    {
        std::fs::remove_file(&dir).map_err(|e| e.to_string())?;
        std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
        for e in std::fs::read_dir(common::repo().join("modules")).map_err(|e| e.to_string())? {
            let e = e.map_err(|e| e.to_string())?;
            std::os::unix::fs::symlink(e.path(), dir.join(e.file_name()))
                .map_err(|e| e.to_string())?;
        }
    }
    for (name, text) in extra {
        std::fs::write(dir.join(format!("{name}.toml")), text).map_err(|e| e.to_string())?;
    }
    Ok(())
}

/// Plans until converged: an apply when the plan has changes, then the plan must be empty.
fn converge(lab: &Lab) -> Result<(), String> {
    let r = lab.kiln(&["plan", &lab.env, "--detailed-exitcode"]);
    if r.code == 2 {
        let a = lab.kiln(&["apply", &lab.env, "--yes"]);
        expect(a.code == 0, "the apply putting the lab back", &a)?;
    } else {
        expect(r.code == 0, "the plan checking the lab is back", &r)?;
    }
    let r = lab.kiln(&["plan", &lab.env, "--detailed-exitcode"]);
    expect(
        r.code == 0,
        "the lab converged again after the scenario",
        &r,
    )
}

/// What a scenario may change in the scratch repository, taken before it runs.
struct Saved {
    env_text: String,
    known_hosts: Option<Vec<u8>>,
}

impl Saved {
    fn take(lab: &Lab) -> Result<Saved, String> {
        Ok(Saved {
            env_text: std::fs::read_to_string(lab.env_file()).map_err(|e| e.to_string())?,
            known_hosts: std::fs::read(lab_known_hosts(lab)).ok(),
        })
    }

    /// The environment file, the `modules` link and the lab's known_hosts as they were.
    fn restore_files(&self, lab: &Lab) -> Result<(), String> {
        lab.write_env(&self.env_text);
        let modules = lab.path("modules");
        let is_link = std::fs::symlink_metadata(&modules)
            .map(|m| m.file_type().is_symlink())
            .unwrap_or(false);
        if !is_link {
            let _ = std::fs::remove_dir_all(&modules).or_else(|_| std::fs::remove_file(&modules));
            std::os::unix::fs::symlink(common::repo().join("modules"), &modules)
                .map_err(|e| e.to_string())?;
        }
        if let Some(k) = &self.known_hosts {
            if std::fs::read(lab_known_hosts(lab)).ok().as_ref() != Some(k) {
                std::fs::write(lab_known_hosts(lab), k).map_err(|e| e.to_string())?;
                return Err("the lab's known_hosts was changed by the scenario".into());
            }
        }
        Ok(())
    }
}

/// Runs `body`, then `cleanup` (with the files restored, so `lab.sh` is root again), then
/// converges the lab. The body's error comes first; a failed restore fails the scenario.
fn guarded(
    lab: &Lab,
    body: impl FnOnce(&Lab) -> Result<(), String>,
    cleanup: impl FnOnce(&Lab),
) -> Result<(), String> {
    let saved = Saved::take(lab)?;
    let result = body(lab);
    let restored = saved.restore_files(lab);
    cleanup(lab);
    let _ = std::fs::remove_dir_all(lab.path("access"));
    let _ = std::fs::remove_dir_all(lab.path("access-static"));
    let converged = converge(lab);
    result.and(restored).and(converged)
}

/// The plan's host names, from `kiln plan --format json`.
fn planned_hosts(r: &Run) -> Result<Vec<String>, String> {
    let plan: serde_json::Value =
        serde_json::from_str(&r.stdout).map_err(|e| format!("plan json: {e}\n{}", r.all()))?;
    Ok(plan["hosts"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .iter()
        .filter_map(|h| h["host"].as_str().map(str::to_string))
        .collect())
}

/// The host block header of the human plan: `web (10.233.0.21)`.
fn header(lab: &Lab, host: &str) -> Result<String, String> {
    Ok(format!("{host} ({})", address(lab, host)?))
}

/// A static twin of the lab environment (see the module comment): the same file without
/// `provider = "lab"`, with `[ssh]` set by `ssh`, at `access-static/environments/ENV.toml`
/// (its own repository root, `modules` and `templates` linked to the scratch repository's).
/// Returns the path to give kiln.
fn static_twin(lab: &Lab, ssh: &[(&str, toml_edit::Item)]) -> Result<PathBuf, String> {
    let root = lab.path("access-static");
    std::fs::create_dir_all(root.join("environments")).map_err(|e| e.to_string())?;
    for d in ["modules", "templates"] {
        if std::fs::symlink_metadata(root.join(d)).is_err() {
            std::os::unix::fs::symlink(lab.path(d), root.join(d)).map_err(|e| e.to_string())?;
        }
    }
    let text = std::fs::read_to_string(lab.env_file()).map_err(|e| e.to_string())?;
    let mut doc: toml_edit::DocumentMut = text.parse().map_err(|e| format!("{e}"))?;
    if let Some(hosts) = doc["hosts"].as_table_like_mut() {
        for (_, h) in hosts.iter_mut() {
            if let Some(h) = h.as_table_like_mut() {
                h.remove("provider");
            }
        }
    }
    if doc.get("ssh").is_none() {
        doc["ssh"] = toml_edit::table();
    }
    for (k, v) in ssh {
        doc["ssh"][k] = v.clone();
    }
    let file = root.join(format!("environments/{}.toml", lab.env));
    std::fs::write(&file, doc.to_string()).map_err(|e| e.to_string())?;
    Ok(file)
}

fn s(v: &str) -> toml_edit::Item {
    toml_edit::value(v)
}

fn path_str(p: &Path) -> &str {
    p.to_str().unwrap_or_default()
}

/// `[start, end]` pairs (seconds) a host's stamp command wrote.
fn stamps(lab: &Lab, host: &str) -> Result<(f64, f64), String> {
    let r = lab.sh(host, "cat /var/tmp/kiln-e2e-stamps");
    let v: Vec<f64> = r
        .stdout
        .split_whitespace()
        .filter_map(|x| x.parse().ok())
        .collect();
    match v[..] {
        [a, b] if b >= a => Ok((a, b)),
        _ => Err(format!(
            "{host}: expected one start and one end stamp\n{}",
            r.all()
        )),
    }
}

// ---------------------------------------------------------------------------------------
// a. A non-root admin through `sudo -n`

/// An admin created by a root apply (base's `admins`: key, NOPASSWD sudo) becomes the
/// environment's `[ssh] user`: plan and apply log in as that user and run as root through
/// `sudo -n` — the sshd and sudo lines in each host's journal name the admin, a command
/// resource sees uid 0 with `SUDO_USER` the admin, the file apply rewrote is root's — and
/// the plan is then empty. Without NOPASSWD, `sudo -n` fails at once and says why.
pub fn non_root_admin_plans_and_applies_through_sudo(lab: &Lab) -> Result<(), String> {
    guarded(lab, admin_scenario, |lab| {
        for host in HOSTS {
            let _ = lab.sh(
                host,
                "userdel -r -f kilnops 2>/dev/null; rm -f /var/tmp/kiln-e2e-sudo-who; true",
            );
        }
    })
}

const WHOAMI_MODULE: &str = r#"description = "e2e: who runs the apply script"

[[resource]]
type = "command"
name = "kiln-e2e-whoami"
run = "printf '%s %s\n' \"$(id -u)\" \"${SUDO_USER:-none}\" > /var/tmp/kiln-e2e-sudo-who"
creates = "/var/tmp/kiln-e2e-sudo-who"
"#;

fn admin_scenario(lab: &Lab) -> Result<(), String> {
    let env = lab.env.clone();
    let key = lab.path("access/kilnops_ed25519");
    let public = keygen(&key, "kilnops@kiln-e2e")?;
    // 1. As root: base's admins gets `kilnops` with this key.
    edit_env(lab, |doc| {
        let mut admin = toml_edit::InlineTable::new();
        admin.insert("name", "kilnops".into());
        let mut keys = toml_edit::Array::new();
        keys.push(public.as_str());
        admin.insert("keys", toml_edit::Value::Array(keys));
        if doc["modules"]["base"].get("admins").is_none() {
            doc["modules"]["base"]["admins"] = toml_edit::value(toml_edit::Array::new());
        }
        if let Some(a) = doc["modules"]["base"]["admins"].as_array_mut() {
            a.push(admin);
        }
    })?;
    let r = lab.kiln(&["apply", &env, "--yes"]);
    expect(
        r.code == 0 && r.stdout.contains("user:kilnops"),
        "a root apply creates the admin",
        &r,
    )?;
    for host in HOSTS {
        let c = lab.sh(
            host,
            "id -nG kilnops && grep -x 'kilnops ALL=(ALL:ALL) NOPASSWD: ALL' /etc/sudoers.d/kiln-admins",
        );
        expect(
            c.code == 0 && c.stdout.contains("sudo"),
            &format!("{host}: kilnops exists, in group sudo, NOPASSWD"),
            &c,
        )?;
    }
    // Everything logged from the next second on is the admin's run (the hosts' clock is
    // this machine's; the root login reading it is logged within this second).
    let now = lab.sh("web", "date +%s");
    let since = now
        .stdout
        .trim()
        .parse::<u64>()
        .map_err(|e| format!("date: {e}"))?
        + 1;
    std::thread::sleep(std::time::Duration::from_millis(1100));

    // 2. The environment logs in as kilnops; a change to apply (motd) and a command that
    //    reports who runs it.
    own_modules(lab, &[("kiln-e2e-whoami", WHOAMI_MODULE)])?;
    let key_s = path_str(&key).to_string();
    edit_env(lab, |doc| {
        doc["ssh"]["user"] = s("kilnops");
        doc["ssh"]["key"] = s(&key_s);
        doc["modules"]["base"]["motd_note"] = s("applied by kilnops through sudo");
        add_module_to_roles(doc, "kiln-e2e-whoami");
    })?;
    let r = lab.kiln(&["plan", &env, "--detailed-exitcode"]);
    expect(
        r.code == 2
            && r.stdout.matches("~ file:/etc/motd").count() == 2
            && r.stdout.matches("command:kiln-e2e-whoami").count() >= 2
            && !r.stdout.contains("error"),
        "plan as kilnops (through sudo -n): motd and the command on both hosts",
        &r,
    )?;
    let r = lab.kiln(&["apply", &env, "--yes"]);
    expect(
        r.code == 0 && r.stdout.contains("no failures"),
        "apply as kilnops",
        &r,
    )?;
    for host in HOSTS {
        // `kiln ssh` logs in as kilnops too; reading the journal needs its sudo.
        let c = lab.sh(
            host,
            &format!(
                "id -un; cat /var/tmp/kiln-e2e-sudo-who; stat -c 'motd %U:%G' /etc/motd; \
                 grep -c 'applied by kilnops through sudo' /etc/motd; \
                 sudo -n journalctl --no-pager -o cat --since @{since} -t sshd -t sudo"
            ),
        );
        let out = &c.stdout;
        let sudo_lines: Vec<&str> = out
            .lines()
            .filter(|l| l.contains("COMMAND=/usr/bin/timeout -k 5 "))
            .collect();
        expect(
            c.code == 0
                && out.starts_with("kilnops\n0 kilnops\nmotd root:root\n1\n")
                && out.contains("Accepted publickey for kilnops from")
                && !out.contains("Accepted publickey for root")
                && sudo_lines.len() >= 2
                && sudo_lines
                    .iter()
                    .all(|l| l.trim_start().starts_with("kilnops : ") && l.contains("USER=root ;")),
            &format!(
                "{host}: kilnops logged in (never root), ran kiln's scripts through sudo as root; \
                 the command saw uid 0 and SUDO_USER=kilnops; motd is root's, with the note"
            ),
            &c,
        )?;
    }
    let r = lab.kiln(&["plan", &env, "--detailed-exitcode"]);
    expect(
        r.code == 0
            && r.stdout
                .contains("0 to create, 0 to update, 0 to remove, 0 to run"),
        "the plan as kilnops is then empty",
        &r,
    )?;

    // 3. Without NOPASSWD, `sudo -n` cannot ask: db1 fails at once with sudo's reason.
    let c = lab.sh(
        "db1",
        "sudo -n sed -i 's/NOPASSWD: //' /etc/sudoers.d/kiln-admins",
    );
    expect(c.code == 0, "db1: kilnops's sudo now wants a password", &c)?;
    let t = Instant::now();
    let r = lab.kiln(&["plan", &env]);
    let secs = t.elapsed().as_secs_f64();
    let db1 = header(lab, "db1")?;
    let web = header(lab, "web")?;
    expect(
        r.code == 1
            && secs < 60.0
            && r.all().contains("a password is required")
            && r.stdout.contains(&format!("{web}  no changes"))
            && r.stdout.contains(&format!("{db1}  error")),
        &format!(
            "plan fails on db1 alone, saying sudo wants a password, without waiting for one \
             ({secs:.1} s)"
        ),
        &r,
    )?;
    Ok(())
}

// ---------------------------------------------------------------------------------------
// b. KILN_SSH_USER and KILN_SSH_KEY

/// `KILN_SSH_USER` and `KILN_SSH_KEY` replace the spec's user and key for hosts that are not
/// lab containers: with the right ones a twin whose spec has a wrong user and an
/// unauthorized key plans (nothing to do); a key that is not authorized, or a user that
/// does not exist, fails every host with ssh's `Permission denied (publickey)` naming the
/// user it tried; a key file that is not there is named as such; lab hosts ignore both.
pub fn ssh_overrides_replace_the_spec_user_and_key(lab: &Lab) -> Result<(), String> {
    guarded(lab, overrides_scenario, |_| {})
}

fn overrides_scenario(lab: &Lab) -> Result<(), String> {
    let stranger = lab.path("access/stranger_ed25519");
    keygen(&stranger, "stranger@kiln-e2e")?;
    let good = lab_key(lab);
    let known = lab_known_hosts(lab);
    let (good_s, stranger_s) = (path_str(&good), path_str(&stranger));
    let headers: Vec<String> = HOSTS
        .iter()
        .map(|h| header(lab, h))
        .collect::<Result<_, _>>()?;
    let addrs: Vec<String> = HOSTS
        .iter()
        .map(|h| address(lab, h))
        .collect::<Result<_, _>>()?;

    // A twin with the right user and key: it plans nothing (as the lab environment).
    let twin = static_twin(
        lab,
        &[
            ("user", s("root")),
            ("key", s(good_s)),
            ("known_hosts", s(path_str(&known))),
        ],
    )?;
    let twin_s = path_str(&twin).to_string();
    let r = lab.kiln(&["plan", &twin_s, "--detailed-exitcode"]);
    expect(
        r.code == 0
            && headers
                .iter()
                .all(|h| r.stdout.contains(&format!("{h}  no changes"))),
        "the static twin with the spec's own user and key plans nothing",
        &r,
    )?;
    let denied = |r: &Run, user: &str| {
        r.code == 1
            && addrs
                .iter()
                .all(|a| r.all().contains(&format!("ssh to {user}@{a}:22 failed")))
            && r.all().matches("Permission denied (publickey").count() >= 2
            && !r.all().contains("Host key verification failed")
    };
    // A key that is not authorized: every host refused for that reason.
    let r = lab.kiln_env(&["plan", &twin_s], &[("KILN_SSH_KEY", stranger_s)]);
    expect(
        denied(&r, "root"),
        "KILN_SSH_KEY with a key no host authorizes: each host fails with Permission denied (publickey)",
        &r,
    )?;
    // A key file that is not there: named, not hidden behind "Permission denied".
    let missing = lab.path("access/no-such-key");
    let r = lab.kiln_env(&["plan", &twin_s], &[("KILN_SSH_KEY", path_str(&missing))]);
    expect(
        r.code == 1
            && r.all()
                .matches(&format!("the SSH key {} cannot be read", missing.display()))
                .count()
                >= 2
            && !r.all().contains("Permission denied"),
        "KILN_SSH_KEY naming a missing file: each host fails saying so",
        &r,
    )?;
    // A user that does not exist: the same, naming that user.
    let r = lab.kiln_env(&["plan", &twin_s], &[("KILN_SSH_USER", "kiln-nosuchuser")]);
    expect(
        denied(&r, "kiln-nosuchuser"),
        "KILN_SSH_USER with a user that is not there: each host refused, the user named",
        &r,
    )?;

    // A twin whose spec is wrong twice: the overrides alone make it work.
    static_twin(
        lab,
        &[
            ("user", s("kiln-nosuchuser")),
            ("key", s(stranger_s)),
            ("known_hosts", s(path_str(&known))),
        ],
    )?;
    let r = lab.kiln(&["plan", &twin_s]);
    expect(
        denied(&r, "kiln-nosuchuser"),
        "the twin's own (wrong) user and key are refused",
        &r,
    )?;
    let r = lab.kiln_env(&["plan", &twin_s], &[("KILN_SSH_USER", "root")]);
    expect(
        denied(&r, "root"),
        "KILN_SSH_USER alone: the user is replaced, the spec's unauthorized key still used",
        &r,
    )?;
    let both = [("KILN_SSH_USER", "root"), ("KILN_SSH_KEY", good_s)];
    let r = lab.kiln_env(&["plan", &twin_s, "--detailed-exitcode"], &both);
    expect(
        r.code == 0
            && headers
                .iter()
                .all(|h| r.stdout.contains(&format!("{h}  no changes"))),
        "KILN_SSH_USER and KILN_SSH_KEY replace the spec's: every host planned, nothing to do",
        &r,
    )?;
    let r = lab.kiln_env(&["ssh", &twin_s, "web", "--", "id", "-un"], &both);
    expect(
        r.code == 0 && r.stdout.trim() == "root",
        "`kiln ssh` takes the overrides too",
        &r,
    )?;

    // Lab hosts keep the lab's key and the spec's user.
    let r = lab.kiln_env(
        &["plan", &lab.env, "--detailed-exitcode"],
        &[
            ("KILN_SSH_USER", "kiln-nosuchuser"),
            ("KILN_SSH_KEY", stranger_s),
        ],
    );
    expect(
        r.code == 0,
        "lab hosts ignore KILN_SSH_USER and KILN_SSH_KEY",
        &r,
    )?;
    Ok(())
}

// ---------------------------------------------------------------------------------------
// c. accept_new

/// A static twin with its own, empty known_hosts: without `accept_new` the unknown hosts
/// are refused and nothing is recorded; with it they are planned and their keys (the
/// hosts' own, checked against /etc/ssh on each) recorded, then used strictly; a *changed*
/// key is refused even with `accept_new`, the other host still planned and the file left
/// as it was.
pub fn accept_new_records_unknown_host_keys_never_changed_ones(lab: &Lab) -> Result<(), String> {
    guarded(lab, accept_new_scenario, |_| {})
}

fn accept_new_scenario(lab: &Lab) -> Result<(), String> {
    let good = lab_key(lab);
    let headers: Vec<String> = HOSTS
        .iter()
        .map(|h| header(lab, h))
        .collect::<Result<_, _>>()?;
    let addrs: Vec<String> = HOSTS
        .iter()
        .map(|h| address(lab, h))
        .collect::<Result<_, _>>()?;
    let lab_known_before = std::fs::read(lab_known_hosts(lab)).map_err(|e| e.to_string())?;
    let base = [("user", s("root")), ("key", s(path_str(&good)))];
    let with = |accept: Option<bool>| -> Vec<(&str, toml_edit::Item)> {
        let mut v = base.to_vec();
        if let Some(a) = accept {
            v.push(("accept_new", toml_edit::value(a)));
        }
        v
    };
    // The twin's known_hosts is its own: access-static/environments/ENV.known_hosts.
    let twin = static_twin(lab, &with(None))?;
    let twin_s = path_str(&twin).to_string();
    let known = lab.path(&format!(
        "access-static/environments/{}.known_hosts",
        lab.env
    ));
    let _ = std::fs::remove_file(&known);

    // 1. Unknown hosts, no accept_new: refused, nothing recorded.
    let r = lab.kiln(&["plan", &twin_s]);
    expect(
        r.code == 1
            && r.all().matches("Host key verification failed").count() >= 2
            && r.all()
                .contains("record a new host deliberately with `accept_new`")
            && std::fs::read_to_string(&known)
                .unwrap_or_default()
                .trim()
                .is_empty(),
        "without accept_new unknown host keys are refused and not recorded",
        &r,
    )?;

    // 2. accept_new: both hosts planned (nothing to do), their keys recorded.
    static_twin(lab, &with(Some(true)))?;
    let r = lab.kiln(&["plan", &twin_s, "--detailed-exitcode"]);
    expect(
        r.code == 0
            && headers
                .iter()
                .all(|h| r.stdout.contains(&format!("{h}  no changes"))),
        "with accept_new the unknown hosts are planned",
        &r,
    )?;
    let known_s = path_str(&known).to_string();
    for (host, addr) in HOSTS.iter().zip(&addrs) {
        let found = common::local("ssh-keygen", &["-F", addr, "-f", &known_s]);
        let recorded: Vec<String> = found
            .stdout
            .lines()
            .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
            .filter_map(|l| {
                let f: Vec<&str> = l.split_whitespace().collect();
                (f.len() >= 3).then(|| format!("{} {}", f[1], f[2]))
            })
            .collect();
        let own = lab.sh(host, "cat /etc/ssh/ssh_host_*_key.pub");
        expect(
            !recorded.is_empty() && recorded.iter().all(|k| own.stdout.contains(k.as_str())),
            &format!(
                "{host}: accept_new recorded {addr} with one of the host's own keys ({recorded:?})"
            ),
            &found,
        )?;
    }

    // 3. Recorded keys are used strictly: accept_new off, still planned.
    static_twin(lab, &with(None))?;
    let r = lab.kiln(&["plan", &twin_s, "--detailed-exitcode"]);
    expect(
        r.code == 0,
        "the recorded keys work with strict checking",
        &r,
    )?;

    // 4. web's key changed (a key web does not have, of the same type): refused even
    //    with accept_new; db1 still planned; the file not rewritten.
    let fake = keygen(&lab.path("access/fake_host_ed25519"), "fake")?;
    let fake_key: Vec<&str> = fake.split_whitespace().take(2).collect();
    let r = common::local("ssh-keygen", &["-R", &addrs[0], "-f", &known_s]);
    expect(r.code == 0, "web's recorded key removed", &r)?;
    let mut text = std::fs::read_to_string(&known).map_err(|e| e.to_string())?;
    text.push_str(&format!("{} {}\n", addrs[0], fake_key.join(" ")));
    std::fs::write(&known, &text).map_err(|e| e.to_string())?;
    static_twin(lab, &with(Some(true)))?;
    let r = lab.kiln(&["plan", &twin_s]);
    let after = std::fs::read_to_string(&known).unwrap_or_default();
    expect(
        r.code == 1
            && r.all().contains(&format!("ssh to root@{}:22 failed", addrs[0]))
            && r.all().contains("REMOTE HOST IDENTIFICATION HAS CHANGED")
            && r.all()
                .contains(&format!("Host key for {} has changed", addrs[0]))
            && r.all().contains("never for a changed key")
            && r.stdout.contains(&format!("{}  no changes", headers[1]))
            && !r.all().contains(&format!("ssh to root@{}:22 failed", addrs[1]))
            && after == text,
        "a changed host key is refused even with accept_new (the other host planned, known_hosts untouched)",
        &r,
    )?;

    let lab_known_after = std::fs::read(lab_known_hosts(lab)).map_err(|e| e.to_string())?;
    if lab_known_after != lab_known_before {
        return Err("the lab's own known_hosts changed".into());
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------
// d. --parallel

const STAMP_MODULE: &str = r#"description = "e2e: when each host's apply runs"

[[resource]]
type = "command"
name = "kiln-e2e-stamp"
run = "date +%s.%N >> /var/tmp/kiln-e2e-stamps && sleep 1 && date +%s.%N >> /var/tmp/kiln-e2e-stamps && touch /var/tmp/kiln-e2e-stamp-done"
creates = "/var/tmp/kiln-e2e-stamp-done"
"#;

/// With `--parallel 1` the hosts' apply scripts run one after another: a command on each
/// host writes the time it starts and ends (one clock: the containers share this
/// machine's), and the two intervals do not overlap. The default run of the same changes
/// overlaps them (so the measure can tell), and both runs end the same: the same summary
/// per host, the same files, an empty plan.
pub fn parallel_one_applies_hosts_one_after_another(lab: &Lab) -> Result<(), String> {
    guarded(lab, parallel_scenario, |lab| {
        for host in HOSTS {
            let _ = lab.sh(
                host,
                "rm -f /var/tmp/kiln-e2e-stamps /var/tmp/kiln-e2e-stamp-done",
            );
        }
    })
}

/// One apply of the stamp and a motd hand edit on both hosts; returns each host's interval,
/// the summary without timings, and the hosts' motd checksums.
type ParallelRun = (Vec<(f64, f64)>, Vec<String>, String);

fn stamped_apply(lab: &Lab, extra: &[&str]) -> Result<ParallelRun, String> {
    for host in HOSTS {
        let r = lab.sh(
            host,
            "rm -f /var/tmp/kiln-e2e-stamps /var/tmp/kiln-e2e-stamp-done; echo 'edited by hand' >> /etc/motd",
        );
        expect(r.code == 0, "reset the stamp, edit motd", &r)?;
    }
    let mut args = vec!["apply", lab.env.as_str(), "--yes"];
    args.extend_from_slice(extra);
    let r = lab.kiln(&args);
    expect(
        r.code == 0
            && r.stdout
                .contains("4 changes applied on 2 hosts; no failures"),
        &format!("apply {extra:?}: motd and the stamp on both hosts"),
        &r,
    )?;
    // "  web              ok      2/2 changes  3.1 s" without the time.
    let mut summary: Vec<String> = r
        .stdout
        .lines()
        .filter(|l| l.contains(" changes  "))
        .map(|l| l.rsplit_once("  ").map(|(a, _)| a).unwrap_or(l).to_string())
        .collect();
    summary.sort();
    let mut intervals = vec![];
    let mut sums = String::new();
    for host in HOSTS {
        intervals.push(stamps(lab, host)?);
        sums.push_str(&lab.sh(host, "sha256sum /etc/motd").stdout);
    }
    let p = lab.kiln(&["plan", &lab.env, "--detailed-exitcode"]);
    expect(p.code == 0, &format!("converged after apply {extra:?}"), &p)?;
    Ok((intervals, summary, sums))
}

fn parallel_scenario(lab: &Lab) -> Result<(), String> {
    own_modules(lab, &[("kiln-e2e-stamp", STAMP_MODULE)])?;
    edit_env(lab, |doc| add_module_to_roles(doc, "kiln-e2e-stamp"))?;

    let (serial, serial_summary, serial_sums) = stamped_apply(lab, &["--parallel", "1"])?;
    let (first, second) = if serial[0].0 <= serial[1].0 {
        (serial[0], serial[1])
    } else {
        (serial[1], serial[0])
    };
    if second.0 < first.1 {
        return Err(format!(
            "--parallel 1: the second host started at {:.3}, before the first ended at {:.3} \
             (web {:?}, db1 {:?})",
            second.0, first.1, serial[0], serial[1]
        ));
    }
    println!(
        "      --parallel 1: one host {:.3}–{:.3}, the other {:.3}–{:.3}",
        first.0, first.1, second.0, second.1
    );

    let (default, default_summary, default_sums) = stamped_apply(lab, &[])?;
    let start = default[0].0.max(default[1].0);
    let end = default[0].1.min(default[1].1);
    if start >= end {
        return Err(format!(
            "the default apply did not run the hosts at once (web {:?}, db1 {:?}): the \
             measure cannot tell serial from parallel",
            default[0], default[1]
        ));
    }
    println!("      default: both hosts at once for {:.3} s", end - start);
    if serial_summary != default_summary || serial_sums != default_sums {
        return Err(format!(
            "--parallel 1 and the default ended differently:\n{serial_summary:?}\n{serial_sums}\nvs\n{default_summary:?}\n{default_sums}"
        ));
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------
// e. --limit

/// `--limit` takes a host, a role, or a comma-separated list of both: each plans exactly
/// the hosts selected — each once, also when named twice — and an apply with a limit
/// changes only those hosts.
pub fn limit_plans_and_applies_exactly_the_selected_hosts(lab: &Lab) -> Result<(), String> {
    guarded(lab, limit_scenario, |_| {})
}

fn limit_scenario(lab: &Lab) -> Result<(), String> {
    let env = lab.env.clone();
    for host in HOSTS {
        let r = lab.sh(host, "echo 'edited for --limit' >> /etc/motd");
        expect(r.code == 0, "edit motd", &r)?;
    }
    let web = header(lab, "web")?;
    let db1 = header(lab, "db1")?;
    // (limit, the hosts it selects)
    let forms: [(&str, &[&str]); 7] = [
        ("db1", &["db1"]),
        ("web", &["web"]),
        ("db", &["db1"]),
        ("db1,web", &["db1", "web"]),
        ("web,db", &["web", "db1"]),
        ("db1,web,db", &["db1", "web"]),
        ("web,db1,web", &["web", "db1"]),
    ];
    for (limit, want) in forms {
        let r = lab.kiln(&["plan", &env, "--limit", limit, "--format", "json"]);
        let got = planned_hosts(&r)?;
        expect(
            r.code == 0 && got == want,
            &format!("--limit {limit}: the JSON plan has exactly {want:?} (got {got:?})"),
            &r,
        )?;
        let r = lab.kiln(&["plan", &env, "--limit", limit, "--detailed-exitcode"]);
        let count = |h: &str| r.stdout.matches(&format!("{h}  1 change")).count();
        let (w, d) = (count(&web), count(&db1));
        let want_w = usize::from(want.contains(&"web"));
        let want_d = usize::from(want.contains(&"db1"));
        expect(
            r.code == 2
                && w == want_w
                && d == want_d
                && r.stdout.matches("~ file:/etc/motd").count() == want.len(),
            &format!(
                "--limit {limit}: the human plan names web {want_w}× (got {w}) and db1 {want_d}× (got {d})"
            ),
            &r,
        )?;
    }
    // An apply limited to a role changes only its hosts.
    let r = lab.kiln(&["apply", &env, "--yes", "--limit", "db"]);
    expect(
        r.code == 0
            && r.stdout.contains("1 change applied on 1 host")
            && r.stdout.contains(&db1)
            && !r.stdout.contains(&web),
        "apply --limit db: db1 only",
        &r,
    )?;
    for (host, left) in [("web", "1"), ("db1", "0")] {
        let c = lab.sh(host, "grep -c 'edited for --limit' /etc/motd");
        expect(
            c.stdout.trim() == left,
            &format!(
                "{host}: the edit is {}",
                if left == "1" { "still there" } else { "undone" }
            ),
            &c,
        )?;
    }
    // Named twice, applied once.
    let r = lab.kiln(&["apply", &env, "--yes", "--limit", "web,db1,web"]);
    expect(
        r.code == 0
            && r.stdout.contains("1 change applied on 1 host")
            && r.stdout.matches(&web).count() == 1,
        "apply --limit web,db1,web: web once",
        &r,
    )?;
    let r = lab.kiln(&["plan", &env, "--detailed-exitcode"]);
    expect(r.code == 0, "converged", &r)
}
