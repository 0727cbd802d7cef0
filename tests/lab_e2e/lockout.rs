//! kiln never locks itself out, on the lab suite's converged hosts (included by
//! tests/lab_e2e.rs). `db1` gets debian-base's own sshd drop-in and nftables firewall —
//! its templates, linked, in a module of only those items (`lockout-e2e`), so nothing
//! else of debian-base is applied to the suite's hosts:
//!
//! * a firewall whose SSH range leaves out the address the host sees kiln come from
//!   (`$SSH_CONNECTION`, the bridge's 10.233.0.1) is refused by `kiln plan` and by `kiln
//!   apply` (fresh and saved plans), naming the range and the address, exit 1, and db1 is
//!   left exactly as it was; moving sshd to another port is refused the same way;
//!   `--i-know-this-locks-me-out` turns the refusal into a warning (plan only: nothing is
//!   applied);
//! * the range that holds kiln's address is applied: the firewall is then in force (a
//!   closed port drops instead of refusing), and kiln still reaches db1: the plan is empty;
//! * logged in as a non-root admin (through `sudo -n`, whose env_reset drops
//!   `$SSH_CONNECTION`), the host still reports where kiln comes from, and the admin's own
//!   authorized_keys without the key kiln logs in with is refused, naming the key.
//!
//! The environment, the `modules` link and the templates are put back whatever happens,
//! and db1's firewall and drop-in are removed, so the lab is left converged with the
//! suite's own environment.

use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::time::{Duration, Instant};

use super::common::{self, expect, Lab, Run};
use super::faults::{with_module, Overlay};

const HOST: &str = "db1";
const MODULE_NAME: &str = "lockout-e2e";
/// The db role's modules in the suite's environment.
const DB_MODULES: &str = "modules = [\"base\"]";

/// debian-base's sshd and firewall items, with the parameters their templates read
/// (`templates/lockout-e2e` is a link to `templates/debian-base`).
const MODULE: &str = r#"description = "e2e: debian-base's sshd drop-in and nftables firewall, alone"

[params.ssh_port]
type = "int"
format = "port"
default = 22

[params.ssh_from]
type = "list"
format = "network"
default = []

[params.ports]
type = "map"
format = "port"
fields = { from = "network" }
entry = { port = "int", proto = "string", from = "list" }
default = {}

[params.hardening_ssh]
type = "bool"
default = true

[params.ssh_tcp_forwarding]
type = "bool"
default = false

[params.hardening_banner]
type = "bool"
default = false

[[resource]]
type = "file"
path = "/etc/ssh/sshd_config.d/10-kiln.conf"
template = "sshd.conf.j2"
notify = ["ssh"]

[[resource]]
type = "service"
name = "ssh"
enabled = true
running = true
check = "sshd -t"
on_change = "reload"

[[resource]]
type = "package"
name = "nftables"

[[resource]]
type = "file"
path = "/etc/nftables.conf"
template = "nftables.conf.j2"
mode = "0755"
notify = ["nftables"]

[[resource]]
type = "service"
name = "nftables"
enabled = true
running = true
check = "nft -c -f /etc/nftables.conf"
on_change = "reload"
"#;

/// What of db1 the module would change: the two files, the drop-in directory, the
/// package's state and the kernel's ruleset.
const STATE: &str = "for f in /etc/nftables.conf /etc/ssh/sshd_config.d/10-kiln.conf; do \
     printf '%s ' \"$f\"; sha256sum <\"$f\" 2>/dev/null || echo absent; done; \
     ls -A /etc/ssh/sshd_config.d; dpkg-query -W -f='${Status}\\n' nftables 2>/dev/null || echo not-installed; \
     command -v nft >/dev/null && nft list ruleset | sha256sum || echo no-nft";

/// The address db1 sees kiln's SSH sessions come from, and db1's own (`$SSH_CONNECTION`).
fn session(lab: &Lab) -> Result<(String, String), String> {
    let r = lab.sh(HOST, "echo \"$SSH_CONNECTION\"");
    let f: Vec<&str> = r.stdout.split_whitespace().collect();
    match f[..] {
        [client, _, server, _] if r.code == 0 => Ok((client.to_string(), server.to_string())),
        _ => Err(format!("no SSH_CONNECTION on {HOST}\n{}", r.all())),
    }
}

/// The suite's environment with the module on the db role and `params` for it.
fn variant(env: &str, params: &str) -> String {
    format!(
        "{}\n[modules.{MODULE_NAME}]\n{params}\n",
        with_module(env, DB_MODULES, MODULE_NAME)
    )
}

/// The module's templates: debian-base's, linked. Removed when dropped.
struct Templates(std::path::PathBuf);

impl Templates {
    fn link(lab: &Lab) -> Result<Templates, String> {
        let dst = lab.path(&format!("templates/{MODULE_NAME}"));
        let _ = std::fs::remove_file(&dst);
        let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("templates/debian-base");
        std::os::unix::fs::symlink(src, &dst).map_err(|e| e.to_string())?;
        Ok(Templates(dst))
    }
}

impl Drop for Templates {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// How a TCP connection from here to `addr` ends within 3 s: "refused" (nothing listens,
/// nothing filters), "dropped" (a firewall drops it), or "open".
fn probe(addr: &str, port: u16) -> Result<&'static str, String> {
    let sock: SocketAddr = format!("{addr}:{port}")
        .parse()
        .map_err(|e| format!("{addr}: {e}"))?;
    Ok(
        match TcpStream::connect_timeout(&sock, Duration::from_secs(3)) {
            Ok(_) => "open",
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => "refused",
            Err(e) if e.kind() == std::io::ErrorKind::TimedOut => "dropped",
            Err(e) => return Err(format!("connecting to {addr}:{port}: {e}")),
        },
    )
}

/// db1's firewall and drop-in removed (stopping nftables flushes the ruleset), sshd back
/// on Debian's configuration.
fn clean_host(lab: &Lab) -> Run {
    lab.sh(
        HOST,
        "systemctl disable --now nftables 2>/dev/null; nft delete table inet kiln 2>/dev/null; \
         rm -f /etc/ssh/sshd_config.d/10-kiln.conf; systemctl reload ssh; \
         test ! -e /etc/ssh/sshd_config.d/10-kiln.conf",
    )
}

fn converged(lab: &Lab, what: &str) -> Result<(), String> {
    let r = lab.kiln(&["plan", &lab.env, "--detailed-exitcode"]);
    expect(r.code == 0, &format!("{what}: the plan is empty"), &r)
}

/// A firewall range without kiln's address, or sshd on another port: refused by plan and
/// apply (fresh and saved), with the reason; nothing on db1 changes; the flag makes the
/// plan's refusal a warning.
pub fn a_spec_that_would_lock_kiln_out_is_refused_and_changes_nothing(
    lab: &Lab,
) -> Result<(), String> {
    let env = lab.env.clone();
    let (client, _) = session(lab)?;
    let before = lab.sh(HOST, STATE);
    expect(before.code == 0, "db1's state before", &before)?;
    let saved = lab.path("lockout.plan");
    let suite_env = std::fs::read_to_string(lab.env_file()).map_err(|e| e.to_string())?;
    let result = (|| {
        let _t = Templates::link(lab)?;
        let _o = Overlay::new(lab, &[(MODULE_NAME, MODULE)], |e| {
            variant(e, "ssh_from = [\"192.0.2.0/24\"]")
        })?;
        let refusal = format!(
            "error: applying this would lock kiln out: the firewall (/etc/nftables.conf) admits SSH (port 22) only from 192.0.2.0/24, and kiln connects from {client} (pass --i-know-this-locks-me-out to plan and apply if this is intended)"
        );
        let r = lab.kiln(&["plan", &env]);
        expect(
            r.code == 1
                && r.stdout.contains(&refusal)
                && r.stdout.contains("web (")
                && r.stdout.contains("1 host failed")
                && !r.all().contains("ssh to"),
            &format!("plan refuses db1 naming the range and {client}; web plans"),
            &r,
        )?;
        let r = lab.kiln(&["plan", &env, "--format", "json"]);
        let doc: serde_json::Value =
            serde_json::from_str(&r.stdout).map_err(|e| format!("plan json: {e}\n{}", r.all()))?;
        let db1 = doc["hosts"]
            .as_array()
            .and_then(|h| h.iter().find(|h| h["host"] == HOST))
            .cloned()
            .unwrap_or_default();
        expect(
            r.code == 1
                && db1["lockout"]["reasons"].as_array().map(Vec::len) == Some(1)
                && db1["changes"].is_null()
                && db1["error"]
                    .as_str()
                    .is_some_and(|e| e.contains("would lock kiln out")),
            "the JSON plan records the reason, the error, and no changes for db1",
            &r,
        )?;

        let r = lab.kiln(&["apply", &env, "--yes"]);
        expect(
            r.code == 1 && r.stdout.contains(&refusal) && !r.stdout.contains("Apply:"),
            "apply refuses db1 before touching it (nothing else to apply)",
            &r,
        )?;
        let saved_s = saved.to_str().unwrap_or_default();
        let r = lab.kiln(&["plan", &env, "-o", saved_s]);
        expect(
            r.code == 1 && saved.exists(),
            "a saved plan records the refusal",
            &r,
        )?;
        let r = lab.kiln(&["apply", saved_s, "--yes"]);
        expect(
            r.code == 1 && r.stdout.contains(&refusal),
            "applying the saved plan refuses db1 too",
            &r,
        )?;

        // The flag: a warning, the changes planned (and not applied here).
        let r = lab.kiln(&[
            "plan",
            &env,
            "--i-know-this-locks-me-out",
            "--detailed-exitcode",
        ]);
        expect(
            r.code == 2
                && r.stderr.contains(&format!(
                    "warning: {HOST}: applying this locks kiln out (--i-know-this-locks-me-out): the firewall"
                ))
                && r.stdout.contains("+ file:/etc/nftables.conf"),
            "with --i-know-this-locks-me-out the plan warns and plans db1's changes",
            &r,
        )?;
        // A saved plan made with the flag still needs it at apply.
        let r = lab.kiln(&["plan", &env, "--i-know-this-locks-me-out", "-o", saved_s]);
        expect(r.code == 0, "a saved plan made with the flag", &r)?;
        let r = lab.kiln(&["apply", saved_s, "--yes"]);
        expect(
            r.code == 1 && r.stdout.contains(&refusal),
            "applied without the flag, the saved plan is refused",
            &r,
        )?;

        // sshd moved off kiln's port: refused for both sshd and the firewall.
        lab.write_env(&variant(&suite_env, "ssh_port = 2222"));
        let r = lab.kiln(&["plan", &env]);
        expect(
            r.code == 1
                && r.stdout.contains("error: applying this would lock kiln out: sshd would listen only on port 2222 (Port in /etc/ssh/sshd_config.d/10-kiln.conf), and kiln connects to port 22; the firewall (/etc/nftables.conf) would admit no new SSH connection on port 22, the port kiln connects to"),
            "moving sshd to 2222 while kiln connects to 22 is refused",
            &r,
        )?;
        let after = lab.sh(HOST, STATE);
        expect(
            after.code == 0 && after.stdout == before.stdout,
            &format!(
                "db1 unchanged by the refused runs (before:\n{})",
                before.stdout
            ),
            &after,
        )
    })();
    let _ = std::fs::remove_file(&saved);
    let back = converged(lab, "the suite's environment again");
    result.and(back)
}

/// The range that holds kiln's address: applied, the firewall in force, kiln still in:
/// the plan is empty afterwards. Then db1's firewall and drop-in are removed again.
pub fn the_allowed_variant_applies_and_kiln_still_reaches_the_host(
    lab: &Lab,
) -> Result<(), String> {
    let env = lab.env.clone();
    let (client, server) = session(lab)?;
    let range = match client.rsplit_once('.') {
        Some((net, _)) => format!("{net}.0/24"),
        None => return Err(format!("not an IPv4 address: {client}")),
    };
    // Nothing listens on port 81: refused now, dropped once the firewall is in force.
    let closed = probe(&server, 81)?;
    if closed != "refused" {
        return Err(format!(
            "{server}:81 should refuse before the scenario, it is {closed}"
        ));
    }
    let result = (|| {
        let _t = Templates::link(lab)?;
        let _o = Overlay::new(lab, &[(MODULE_NAME, MODULE)], |e| {
            variant(e, &format!("ssh_from = [\"{range}\", \"192.0.2.0/24\"]"))
        })?;
        let r = lab.kiln(&["plan", &env, "--detailed-exitcode"]);
        expect(
            r.code == 2
                && !r.all().contains("lock kiln out")
                && !r.stdout.contains("lockout check"),
            &format!("the range {range} holds {client}: planned, nothing to say"),
            &r,
        )?;
        let t = Instant::now();
        let r = lab.kiln(&["apply", &env, "--yes"]);
        expect(
            r.code == 0 && r.stdout.contains("no failures"),
            "the allowed variant applies",
            &r,
        )?;
        let applied = t.elapsed().as_secs_f64();
        let rules = lab.sh(
            HOST,
            "nft list table inet kiln; sshd -T | grep -x 'port 22'",
        );
        expect(
            rules.code == 0
                && rules.stdout.contains("policy drop;")
                && rules.stdout.contains(&format!(
                    "ip saddr {{ {range}, 192.0.2.0/24 }} tcp dport 22 accept"
                )),
            "db1's firewall is loaded with the range, sshd on port 22",
            &rules,
        )?;
        let closed = probe(&server, 81)?;
        if closed != "dropped" {
            return Err(format!(
                "the firewall is not in force: {server}:81 is {closed}, not dropped"
            ));
        }
        // kiln still reaches db1 through it: a fresh connection (another run) plans nothing.
        let r = lab.kiln(&["plan", &env, "--detailed-exitcode"]);
        expect(
            r.code == 0 && r.stdout.contains(&format!("{HOST} (")),
            &format!("after the apply ({applied:.1} s) kiln still reaches db1: the plan is empty"),
            &r,
        )
    })();
    let cleaned = clean_host(lab);
    let cleaned = expect(
        cleaned.code == 0,
        "db1's firewall and drop-in removed",
        &cleaned,
    );
    let open = match probe(&server, 81) {
        Ok("refused") => Ok(()),
        Ok(other) => Err(format!(
            "{server}:81 is {other} after the cleanup, not refused"
        )),
        Err(e) => Err(e),
    };
    let back = converged(lab, "the suite's environment again");
    result.and(cleaned).and(open).and(back)
}

/// A fresh ed25519 key pair at `path` (and `path.pub`): its public line and fingerprint.
fn keygen(path: &Path, comment: &str) -> Result<(String, String), String> {
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
    let public = std::fs::read_to_string(format!("{p}.pub"))
        .map(|s| s.trim().to_string())
        .map_err(|e| e.to_string())?;
    let fp = common::local("ssh-keygen", &["-l", "-f", &format!("{p}.pub")]);
    let fingerprint = fp
        .stdout
        .split_whitespace()
        .nth(1)
        .map(str::to_string)
        .ok_or_else(|| format!("ssh-keygen -l\n{}", fp.all()))?;
    Ok((public, fingerprint))
}

const ADMIN: &str = "kilnlock";

/// The suite's environment with one more admin in base's `admins`, with `keys`.
fn with_admin(env: &str, keys: &str) -> Result<String, String> {
    let at = "admins = [\n";
    if !env.contains(at) {
        return Err(format!("no `{at}` in the environment"));
    }
    Ok(env.replacen(
        at,
        &format!("{at}  {{ name = \"{ADMIN}\", keys = [\"{keys}\"] }},\n"),
        1,
    ))
}

/// Logs in as the admin with `key` instead of root.
fn as_admin(env: &str, key: &Path) -> Result<String, String> {
    let at = "[ssh]\nuser = \"root\"\n";
    if !env.contains(at) {
        return Err(format!("no `{at}` in the environment"));
    }
    Ok(env.replacen(
        at,
        &format!("[ssh]\nuser = \"{ADMIN}\"\nkey = \"{}\"\n", key.display()),
        1,
    ))
}

/// As a non-root admin through `sudo -n`: the source address is still read (the fact
/// script finds `$SSH_CONNECTION` above sudo), and the admin's own keys must keep kiln's.
pub fn through_sudo_the_source_and_the_admin_s_own_key_are_judged(lab: &Lab) -> Result<(), String> {
    let env = lab.env.clone();
    let suite_env = std::fs::read_to_string(lab.env_file()).map_err(|e| e.to_string())?;
    let (client, _) = session(lab)?;
    let key = lab.path("lockout/kilnlock_ed25519");
    let (public, fingerprint) = keygen(&key, "kilnlock@kiln-e2e")?;
    let (other, _) = keygen(&lab.path("lockout/other_ed25519"), "other@kiln-e2e")?;
    let result = (|| {
        let _t = Templates::link(lab)?;
        let _o = Overlay::new(lab, &[(MODULE_NAME, MODULE)], |e| e.to_string())?;
        // As root: the admin, with the key kiln will log in with (NOPASSWD sudo).
        let admin_env = with_admin(&suite_env, &public)?;
        lab.write_env(&admin_env);
        let r = lab.kiln(&["apply", &env, "--yes"]);
        expect(
            r.code == 0 && r.stdout.contains(&format!("user:{ADMIN}")),
            "a root apply creates the admin",
            &r,
        )?;
        // As the admin, db1's firewall leaving kiln out: refused, naming the address the
        // host saw, read through sudo -n.
        lab.write_env(&as_admin(
            &variant(&admin_env, "ssh_from = [\"192.0.2.0/24\"]"),
            &key,
        )?);
        let r = lab.kiln(&["plan", &env]);
        expect(
            r.code == 1
                && r.stdout.contains(&format!(
                    "error: applying this would lock kiln out: the firewall (/etc/nftables.conf) admits SSH (port 22) only from 192.0.2.0/24, and kiln connects from {client}"
                ))
                && !r.stdout.contains("lockout check:"),
            &format!("as {ADMIN} (sudo -n) the plan still knows kiln comes from {client}"),
            &r,
        )?;
        // The admin's keys without the one kiln logs in with: refused on both hosts.
        lab.write_env(&as_admin(&with_admin(&suite_env, &other)?, &key)?);
        let r = lab.kiln(&["plan", &env]);
        let reason = format!(
            "error: applying this would lock kiln out: /home/{ADMIN}/.ssh/authorized_keys ({ADMIN}'s authorized_keys) would not hold kiln's key, and kiln logs in with ssh-ed25519 {fingerprint} (read from {})",
            key.display()
        );
        expect(
            r.code == 1 && r.stdout.matches(&reason).count() == 2,
            &format!("replacing {ADMIN}'s keys without kiln's is refused on both hosts"),
            &r,
        )
    })();
    let mut cleaned = Ok(());
    for host in ["web", HOST] {
        let c = lab.sh(
            host,
            &format!("userdel -r -f {ADMIN} 2>/dev/null; ! id {ADMIN} 2>/dev/null"),
        );
        cleaned = cleaned.and(expect(c.code == 0, &format!("{host}: {ADMIN} removed"), &c));
    }
    let _ = std::fs::remove_dir_all(lab.path("lockout"));
    // The suite's sudoers file again (without the admin).
    let r = lab.kiln(&["apply", &env, "--yes"]);
    let applied = expect(r.code == 0, "the apply putting the suite's admins back", &r);
    let back = converged(lab, "the suite's environment again");
    result.and(cleaned).and(applied).and(back)
}
