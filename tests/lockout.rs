//! The lockout check on what debian-base really renders (its sshd drop-in, its firewall,
//! its admins' authorized_keys and sudoers), on the shipped prod environment, and through
//! `kiln plan --offline`: refused with the reason, exit 1; a warning with
//! `--i-know-this-locks-me-out`; what an offline plan cannot judge said as such. No host
//! is contacted. The live path (the source address the host sees) is in the lab suite
//! (tests/lab_e2e/lockout.rs).

use std::path::{Path, PathBuf};

use kiln::desired::{self, Desired};
use kiln::facts::{HostFacts, SshEndpoints, SshSessionFact};
use kiln::plan::lockout::{self, KilnKey, PublicKey};
use kiln::spec::Environment;

/// An ed25519 test key (its private half encrypted with a passphrase written nowhere: the
/// check never needs it).
const PUB: &str =
    "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAILOhVM30+/vztyQe/ztHlAnuSbHO0VTVgM212r2YLzo8 enc@test";
const PRIVATE: &str = "-----BEGIN OPENSSH PRIVATE KEY-----
b3BlbnNzaC1rZXktdjEAAAAACmFlczI1Ni1jdHIAAAAGYmNyeXB0AAAAGAAAABBWA9ppfO
Qn7+OF2nfZhJ0tAAAAEAAAAAEAAAAzAAAAC3NzaC1lZDI1NTE5AAAAILOhVM30+/vztyQe
/ztHlAnuSbHO0VTVgM212r2YLzo8AAAAkGBkbnGKMsTUV4lENjqzajeXB3eDgVP13TMg3p
H/dPio2VQH5sArmFxonUaok97p2VkE02EJQk9L4YW1Blyu/y0bfm2Ilg78gMmC7xyLb/4h
qBsoUnopHpM4pwua3bnoLqo1KYMbkqRD8oUoleYT/Cewz3+Wh8Rj15nbBPSHnxUhXxa9J1
5oKtI8A9tQvNJjDw==
-----END OPENSSH PRIVATE KEY-----
";
const OTHER: &str =
    "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIDd2OyK9h039sxEXCnX4ao1kdfgECkT7sNAFm3cUyerI other@test";

/// A scratch repository with the shipped modules and templates, and `environments/t.toml`.
struct Repo {
    dir: tempfile::TempDir,
}

fn repo(env: &str) -> Repo {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let dir = tempfile::tempdir().unwrap();
    for d in ["modules", "templates"] {
        std::os::unix::fs::symlink(root.join(d), dir.path().join(d)).unwrap();
    }
    std::fs::create_dir_all(dir.path().join("environments")).unwrap();
    std::fs::write(dir.path().join("environments/t.toml"), env).unwrap();
    Repo { dir }
}

impl Repo {
    fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    fn desired(&self) -> Desired {
        expand(&self.path("environments/t.toml"))
    }

    fn kiln(&self, args: &[&str]) -> (i32, String, String) {
        let state = self.path("state");
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_kiln"))
            .current_dir(self.dir.path())
            .env("NO_COLOR", "1")
            .env("XDG_STATE_HOME", &state)
            .env_remove("KILN_SSH_KEY")
            .env_remove("KILN_SSH_USER")
            .args(args)
            .output()
            .unwrap();
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into(),
            String::from_utf8_lossy(&out.stderr).into(),
        )
    }
}

fn expand(file: &Path) -> Desired {
    // The CI overrides of user and key would change who kiln logs in as.
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        std::env::remove_var("KILN_SSH_USER");
        std::env::remove_var("KILN_SSH_KEY");
    });
    let mut env = Environment::load(file).unwrap_or_else(|e| panic!("{e}"));
    env.resolve_secrets_or_placeholders()
        .unwrap_or_else(|e| panic!("{e}"));
    let hosts = env.select_hosts(None).unwrap();
    desired::expand(&env, &hosts, None).unwrap_or_else(|e| panic!("{e}"))
}

/// The facts of a live plan whose SSH session came from `client`.
fn seen_from(client: &str) -> HostFacts {
    HostFacts {
        ssh_session: Some(SshSessionFact {
            seen: Some(SshEndpoints {
                client: client.into(),
                client_port: 40000,
                server: "203.0.113.10".into(),
                server_port: 22,
            }),
        }),
        ..HostFacts::default()
    }
}

fn key() -> KilnKey {
    KilnKey::Known {
        key: PublicKey::parse_line(PUB).unwrap(),
        from: "/home/ci/.ssh/id_ed25519".into(),
    }
}

const WEB: &str = "[hosts.web]\naddress = \"203.0.113.10\"\nroles = [\"web\"]\n\n[roles.web]\nmodules = [\"debian-base\"]\n";

#[test]
fn debian_base_s_own_firewall_and_ssh_range_are_judged() {
    // Hardening on (its sshd options), roles' ports with sources of their own.
    let r = repo(&format!(
        "{WEB}\n[modules.debian-base]\nports = {{ web = [80, {{ port = 3306, from = [\"10.0.0.0/8\"] }}] }}\nssh_from = [\"198.51.100.0/24\", \"192.0.2.7\"]\n"
    ));
    let d = r.desired();
    let web = d.host("web").unwrap();
    assert_eq!(
        lockout::queries(web, &key()),
        vec![kiln::facts::FactQuery::SshSession],
        "a range needs the source address"
    );
    let l = lockout::check(web, &key(), Some(&seen_from("10.233.0.1")));
    assert_eq!(
        l.reasons,
        ["the firewall (/etc/nftables.conf) admits SSH (port 22) only from 198.51.100.0/24, 192.0.2.7, and kiln connects from 10.233.0.1"]
    );
    assert!(l.not_checked.is_empty(), "{l:#?}");
    for inside in ["198.51.100.20", "192.0.2.7", "::ffff:192.0.2.7"] {
        let l = lockout::check(web, &key(), Some(&seen_from(inside)));
        assert!(
            l.reasons.is_empty() && l.not_checked.is_empty(),
            "{inside}: {l:#?}"
        );
    }
    // The rule is `ip saddr`: an IPv6 connection is not admitted by it.
    let l = lockout::check(web, &key(), Some(&seen_from("2001:db8::5")));
    assert_eq!(l.reasons.len(), 1, "{l:#?}");
    // debian-base's defaults (SSH open, root by key) lock nobody out, and need no address.
    let r = repo(&format!(
        "{WEB}\n[modules.debian-base]\nports = {{ web = [80] }}\n"
    ));
    let d = r.desired();
    let web = d.host("web").unwrap();
    assert!(lockout::queries(web, &key()).is_empty());
    let l = lockout::check(web, &key(), Some(&seen_from("10.233.0.1")));
    assert!(l.reasons.is_empty() && l.not_checked.is_empty(), "{l:#?}");
}

#[test]
fn debian_base_moving_sshd_must_move_kiln_too() {
    let spec = |ssh: &str| format!("{ssh}{WEB}\n[modules.debian-base]\nssh_port = 2222\n");
    let d = repo(&spec("")).desired();
    let l = lockout::check(d.host("web").unwrap(), &key(), None);
    assert_eq!(
        l.reasons,
        [
            "sshd would listen only on port 2222 (Port in /etc/ssh/sshd_config.d/10-kiln.conf), and kiln connects to port 22",
            "the firewall (/etc/nftables.conf) would admit no new SSH connection on port 22, the port kiln connects to",
        ]
    );
    let d = repo(&spec("[ssh]\nport = 2222\n\n")).desired();
    let l = lockout::check(d.host("web").unwrap(), &key(), None);
    assert!(l.reasons.is_empty(), "{l:#?}");
}

#[test]
fn debian_base_s_admins_must_keep_kiln_s_key_and_sudo() {
    let spec = |keys: &str, admins_extra: &str| {
        format!(
            "[ssh]\nuser = \"deploy\"\n\n{WEB}\n[modules.debian-base]\nadmins = [{{ name = \"deploy\", keys = [{keys}] }}{admins_extra}]\n"
        )
    };
    let d = repo(&spec(&format!("\"{OTHER}\""), "")).desired();
    let l = lockout::check(d.host("web").unwrap(), &key(), None);
    assert_eq!(l.reasons.len(), 1, "{l:#?}");
    assert!(l.reasons[0].starts_with("/home/deploy/.ssh/authorized_keys (deploy's authorized_keys) would not hold kiln's key, and kiln logs in with ssh-ed25519 SHA256:EU5S9UaG1rMzYAkciOCdEJ5BgRvqAe9XbnSlO0o01e0"), "{l:#?}");
    // With kiln's key among them: fine, and debian-base's sudoers grants deploy NOPASSWD.
    let d = repo(&spec(&format!("\"{OTHER}\", \"{PUB}\""), "")).desired();
    let l = lockout::check(d.host("web").unwrap(), &key(), None);
    assert!(l.reasons.is_empty() && l.not_checked.is_empty(), "{l:#?}");
    // deploy no longer an admin, alice is: no authorized_keys of deploy is written, and the
    // sudoers file kiln writes does not grant deploy: offline that cannot be judged.
    let r = repo(&format!(
        "[ssh]\nuser = \"deploy\"\n\n{WEB}\n[modules.debian-base]\nadmins = [{{ name = \"alice\", keys = [\"{OTHER}\"] }}]\n"
    ));
    let l = lockout::check(r.desired().host("web").unwrap(), &key(), None);
    assert!(l.reasons.is_empty(), "{l:#?}");
    assert!(l.not_checked[0].starts_with("the sudoers files kiln writes do not let deploy run commands as root without a password; whether another rule does is not known offline"), "{l:#?}");
}

/// The SSH range and the monitoring host (`offsite`, its banner probe) are admitted.
#[test]
fn the_shipped_prod_environment_from_outside_its_ssh_range_with_another_key() {
    let prod = Path::new(env!("CARGO_MANIFEST_DIR")).join("environments/prod.toml");
    let d = expand(&prod);
    let web1 = d.host("web1").unwrap();
    let l = lockout::check(web1, &key(), Some(&seen_from("10.233.0.1")));
    assert_eq!(l.reasons.len(), 2, "{l:#?}");
    assert!(l.reasons[0].starts_with("/home/deploy/.ssh/authorized_keys (deploy's authorized_keys) would not hold kiln's key"), "{l:#?}");
    assert_eq!(
        l.reasons[1],
        "the firewall (/etc/nftables.conf) admits SSH (port 22) only from 198.51.100.0/24, 192.0.2.40, and kiln connects from 10.233.0.1"
    );
}

#[test]
fn plan_offline_refuses_with_the_reason_and_the_flag_makes_it_a_warning() {
    let r = repo(&format!("{WEB}\n[modules.debian-base]\nssh_port = 2222\n"));
    let (code, out, err) = r.kiln(&["plan", "t", "--offline"]);
    assert_eq!(code, 1, "{out}\n{err}");
    assert!(
        out.contains("web (203.0.113.10)  error: applying this would lock kiln out: sshd would listen only on port 2222 (Port in /etc/ssh/sshd_config.d/10-kiln.conf), and kiln connects to port 22; the firewall (/etc/nftables.conf) would admit no new SSH connection on port 22, the port kiln connects to (pass --i-know-this-locks-me-out to plan and apply if this is intended)"),
        "{out}"
    );
    assert!(out.contains("1 host failed"), "{out}");

    let (code, out, err) = r.kiln(&["plan", "t", "--offline", "--i-know-this-locks-me-out"]);
    assert_eq!(code, 0, "{out}\n{err}");
    assert!(
        err.contains("warning: web: applying this locks kiln out (--i-know-this-locks-me-out): sshd would listen only on port 2222"),
        "{err}"
    );
    assert!(out.contains("  warning: applying this locks kiln out (--i-know-this-locks-me-out): sshd would listen"), "{out}");
    assert!(
        out.contains("+ file:/etc/nftables.conf"),
        "the changes are planned: {out}"
    );

    let (code, out, _) = r.kiln(&[
        "plan",
        "t",
        "--offline",
        "--i-know-this-locks-me-out",
        "--format",
        "json",
    ]);
    assert_eq!(code, 0);
    let plan: serde_json::Value = serde_json::from_str(&out).unwrap();
    let l = &plan["hosts"][0]["lockout"];
    assert_eq!(l["overridden"], true, "{l}");
    assert_eq!(l["reasons"].as_array().unwrap().len(), 2, "{l}");
}

#[test]
fn plan_offline_reads_kiln_s_key_from_its_file_and_says_what_it_cannot_judge() {
    let r = repo(&format!(
        "[ssh]\nuser = \"deploy\"\nkey = \"KEY\"\n\n{WEB}\n[modules.debian-base]\nadmins = [{{ name = \"deploy\", keys = [\"{OTHER}\"] }}]\nssh_from = [\"198.51.100.0/24\"]\n"
    ));
    let key = r.path("id_ed25519");
    std::fs::write(&key, PRIVATE).unwrap();
    let text = std::fs::read_to_string(r.path("environments/t.toml")).unwrap();
    std::fs::write(
        r.path("environments/t.toml"),
        text.replace("KEY", key.to_str().unwrap()),
    )
    .unwrap();
    let (code, out, err) = r.kiln(&["plan", "t", "--offline"]);
    assert_eq!(code, 1, "{out}\n{err}");
    assert!(
        out.contains(&format!("error: applying this would lock kiln out: /home/deploy/.ssh/authorized_keys (deploy's authorized_keys) would not hold kiln's key, and kiln logs in with ssh-ed25519 SHA256:EU5S9UaG1rMzYAkciOCdEJ5BgRvqAe9XbnSlO0o01e0 (read from {})", key.display())),
        "{out}"
    );
    assert!(
        out.contains("  lockout check: the firewall (/etc/nftables.conf) admits SSH (port 22) only from 198.51.100.0/24: kiln's source address is not known offline, so whether kiln is admitted was not checked"),
        "{out}"
    );
    // With kiln's key among deploy's: planned, the source range still said unchecked.
    let text = std::fs::read_to_string(r.path("environments/t.toml")).unwrap();
    std::fs::write(
        r.path("environments/t.toml"),
        text.replace(&format!("\"{OTHER}\""), &format!("\"{OTHER}\", \"{PUB}\"")),
    )
    .unwrap();
    let (code, out, err) = r.kiln(&["plan", "t", "--offline"]);
    assert_eq!(code, 0, "{out}\n{err}");
    assert!(out.contains("lockout check: the firewall"), "{out}");
    assert!(!out.contains("error:"), "{out}");
}
