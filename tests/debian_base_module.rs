//! The `debian-base` module's hardening, expanded offline (no host contacted): every
//! `hardening_*` switch on by default, each switch off removing exactly its own items, and
//! the settings that must never break kiln itself (sshd's MaxSessions above kiln's channels
//! per host, needrestart list-only, fail2ban's ignore list, container guards on sysctl and
//! auditd). lynis' judgement of the result is in tests/web_e2e.rs, against the lab.

use std::path::Path;

use kiln::desired::{self, Desired};
use kiln::resource::Kind;
use kiln::spec::Environment;

const BASE: &str = r#"
[hosts.h]
address = "10.0.1.1"
roles = ["base"]

[roles.base]
modules = ["debian-base"]
"#;

struct Fixture {
    _dir: tempfile::TempDir,
    desired: Desired,
}

fn expand(params: &str) -> Fixture {
    let repo = Path::new(env!("CARGO_MANIFEST_DIR"));
    let dir = tempfile::tempdir().expect("tempdir");
    std::os::unix::fs::symlink(repo.join("modules"), dir.path().join("modules")).unwrap();
    std::os::unix::fs::symlink(repo.join("templates"), dir.path().join("templates")).unwrap();
    std::fs::create_dir_all(dir.path().join("environments")).unwrap();
    let p = dir.path().join("environments/t.toml");
    let text = format!(
        "{BASE}\n[modules.debian-base]\nadmins = [{{ name = \"alice\", keys = [\"ssh-ed25519 AAAA alice\"] }}]\n{params}\n"
    );
    std::fs::write(&p, text).unwrap();
    let env = Environment::load(&p).unwrap_or_else(|e| panic!("{e}"));
    let hosts = env.select_hosts(None).unwrap();
    let desired = desired::expand(&env, &hosts, None).unwrap_or_else(|e| panic!("{e}"));
    Fixture { _dir: dir, desired }
}

impl Fixture {
    fn ids(&self) -> Vec<String> {
        self.desired
            .host("h")
            .unwrap()
            .resources
            .iter()
            .map(|r| r.id.clone())
            .collect()
    }

    fn has(&self, id: &str) -> bool {
        self.ids().iter().any(|i| i == id)
    }

    fn file(&self, path: &str) -> String {
        self.desired
            .host("h")
            .unwrap()
            .resources
            .iter()
            .find_map(|r| match &r.kind {
                Kind::File(x) if x.path == path => x.content.clone(),
                _ => None,
            })
            .unwrap_or_else(|| panic!("no file {path} with content"))
    }

    fn command(&self, name: &str) -> kiln::resource::command::Command {
        self.desired
            .host("h")
            .unwrap()
            .resources
            .iter()
            .find_map(|r| match &r.kind {
                Kind::Command(c) if c.name == name => Some(c.clone()),
                _ => None,
            })
            .unwrap_or_else(|| panic!("no command {name:?}; have {:?}", self.ids()))
    }
}

/// The directive lines of a config (trimmed, comments and blank lines left out).
fn lines(conf: &str) -> Vec<&str> {
    conf.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .collect()
}

/// Each switch and the resources only it brings.
const SWITCHES: &[(&str, &[&str])] = &[
    (
        "hardening_fail2ban",
        &[
            "package:fail2ban",
            "package:python3-systemd",
            "file:/etc/fail2ban/jail.local",
            "service:fail2ban.service",
        ],
    ),
    (
        "hardening_login_defs",
        &[
            "file:/etc/login.defs",
            "command:no password age for admin alice",
        ],
    ),
    (
        "hardening_core_dumps",
        &[
            "file:/etc/security/limits.d/10-kiln-core.conf",
            "file:/etc/profile.d/kiln-core.sh",
            "directory:/etc/systemd/coredump.conf.d",
            "file:/etc/systemd/coredump.conf.d/10-kiln.conf",
        ],
    ),
    (
        "hardening_banner",
        &["file:/etc/issue", "file:/etc/issue.net"],
    ),
    (
        "hardening_packages",
        &[
            "package:apt-listchanges",
            "package:needrestart",
            "package:debsums",
            "package:apt-show-versions",
            "package:libpam-tmpdir",
            "package:libpam-pwquality",
            "file:/etc/needrestart/conf.d/kiln.conf",
        ],
    ),
    (
        "hardening_blacklist",
        &[
            "directory:/etc/modprobe.d",
            "file:/etc/modprobe.d/kiln-blacklist.conf",
        ],
    ),
    (
        "hardening_sysctl",
        &[
            "file:/etc/sysctl.d/90-kiln-hardening.conf",
            "command:apply kiln's sysctl hardening",
        ],
    ),
    ("hardening_auditd", &["command:auditd on a VM"]),
    (
        "hardening_aide",
        &[
            "package:aide",
            "package:aide-common",
            "unit:kiln-aide-init.service",
            "command:aide database",
        ],
    ),
];

#[test]
fn every_hardening_item_is_on_by_default() {
    let f = expand("");
    let ids = f.ids();
    for (switch, items) in SWITCHES {
        for id in *items {
            assert!(
                ids.contains(&id.to_string()),
                "{switch} is on by default, so {id} is declared; have {ids:?}"
            );
        }
    }
}

#[test]
fn each_switch_off_removes_its_items_and_only_those() {
    let all = expand("").ids();
    for (switch, items) in SWITCHES {
        let f = expand(&format!("{switch} = false"));
        let ids = f.ids();
        for id in *items {
            assert!(
                !ids.contains(&id.to_string()),
                "{switch} = false: {id} is still declared"
            );
        }
        // Everything else stays: the switch is about its own items only.
        let gone: Vec<&String> = all
            .iter()
            .filter(|i| !ids.contains(i) && !items.contains(&i.as_str()))
            .collect();
        assert!(gone.is_empty(), "{switch} = false also removed {gone:?}");
    }
}

#[test]
fn sshd_hardening_keeps_what_kiln_needs() {
    let f = expand("");
    let conf = f.file("/etc/ssh/sshd_config.d/10-kiln.conf");
    let l = lines(&conf);
    for want in [
        "LogLevel VERBOSE",
        "MaxAuthTries 3",
        "X11Forwarding no",
        "AllowAgentForwarding no",
        "AllowTcpForwarding no",
        "Compression no",
        "TCPKeepAlive no",
        "ClientAliveInterval 300",
        "ClientAliveCountMax 2",
        "Banner /etc/issue.net",
        "PasswordAuthentication no",
    ] {
        assert!(l.contains(&want), "sshd lacks {want:?}:\n{conf}");
    }
    // kiln multiplexes up to MAX_CHANNELS sessions over one connection per host: sshd must
    // allow more (lynis' MaxSessions 2 would make kiln's parallel channels fail).
    let max: usize = l
        .iter()
        .find_map(|x| x.strip_prefix("MaxSessions "))
        .expect("MaxSessions set")
        .parse()
        .unwrap();
    assert!(
        max > kiln::transport::ssh::MAX_CHANNELS,
        "MaxSessions {max} must exceed kiln's {} channels",
        kiln::transport::ssh::MAX_CHANNELS
    );

    // A bastion keeps forwarding; hardening off is the module's previous config.
    let f = expand("ssh_tcp_forwarding = true");
    assert!(
        lines(&f.file("/etc/ssh/sshd_config.d/10-kiln.conf")).contains(&"AllowTcpForwarding yes")
    );
    let f = expand("hardening_ssh = false\nhardening_banner = false");
    let conf = f.file("/etc/ssh/sshd_config.d/10-kiln.conf");
    let l = lines(&conf);
    for gone in [
        "LogLevel VERBOSE",
        "TCPKeepAlive no",
        "Banner /etc/issue.net",
        "MaxAuthTries 3",
    ] {
        assert!(!l.contains(&gone), "{gone:?} with hardening off:\n{conf}");
    }
    assert!(l.contains(&"MaxAuthTries 4") && l.contains(&"X11Forwarding no"));
}

#[test]
fn fail2ban_reads_the_journal_and_ignores_the_listed_addresses() {
    let f = expand("");
    let jail = f.file("/etc/fail2ban/jail.local");
    let l = lines(&jail);
    assert!(l.contains(&"[sshd]") && l.contains(&"enabled = true"));
    assert!(l.contains(&"backend = systemd"), "{jail}");
    assert!(l.contains(&"port = 22"));
    assert!(l.contains(&"ignoreip = 127.0.0.1/8 ::1"), "{jail}");

    let f = expand("ssh_port = 2222\nfail2ban_ignoreip = [\"10.233.0.1\", \"192.0.2.0/24\"]\nfail2ban_maxretry = 7");
    let jail = f.file("/etc/fail2ban/jail.local");
    let l = lines(&jail);
    assert!(l.contains(&"port = 2222"));
    assert!(l.contains(&"maxretry = 7"));
    assert!(
        l.contains(&"ignoreip = 127.0.0.1/8 ::1 10.233.0.1 192.0.2.0/24"),
        "{jail}"
    );
}

#[test]
fn fail2ban_ignoreip_is_checked_as_networks() {
    let repo = Path::new(env!("CARGO_MANIFEST_DIR"));
    let dir = tempfile::tempdir().expect("tempdir");
    std::os::unix::fs::symlink(repo.join("modules"), dir.path().join("modules")).unwrap();
    std::os::unix::fs::symlink(repo.join("templates"), dir.path().join("templates")).unwrap();
    std::fs::create_dir_all(dir.path().join("environments")).unwrap();
    let p = dir.path().join("environments/t.toml");
    std::fs::write(
        &p,
        format!("{BASE}\n[modules.debian-base]\nfail2ban_ignoreip = [\"10.0.0.1; rm -rf /\"]\n"),
    )
    .unwrap();
    let err = match Environment::load(&p) {
        Ok(_) => panic!("a bad address is refused"),
        Err(e) => e.to_string(),
    };
    assert!(err.contains("fail2ban_ignoreip"), "{err}");
}

#[test]
fn login_defs_umask_rounds_and_ages_and_admins_without_age() {
    let f = expand("password_max_days = 90");
    let defs = f.file("/etc/login.defs");
    let l: Vec<Vec<&str>> = lines(&defs)
        .iter()
        .map(|x| x.split_whitespace().collect())
        .collect();
    let get = |k: &str| {
        l.iter()
            .find(|x| x[0] == k)
            .map(|x| x[1])
            .unwrap_or_else(|| panic!("no {k} in login.defs"))
    };
    assert_eq!(get("UMASK"), "027");
    assert_eq!(get("PASS_MAX_DAYS"), "90");
    assert_eq!(get("PASS_MIN_DAYS"), "1");
    assert_eq!(get("ENCRYPT_METHOD"), "SHA512");
    assert!(get("SHA_CRYPT_MIN_ROUNDS").parse::<u32>().unwrap() >= 5000);
    // Debian's own keys are all still there.
    for k in [
        "MAIL_DIR",
        "ENV_SUPATH",
        "ENV_PATH",
        "UID_MIN",
        "USERGROUPS_ENAB",
    ] {
        get(k);
    }
    // Key-only admins never expire into a forced password change.
    let c = f.command("no password age for admin alice");
    assert_eq!(c.run, "chage -M -1 -- 'alice'");
    assert!(c.unless.unwrap().contains("getent shadow 'alice'"));
}

#[test]
fn core_dumps_are_off_three_ways() {
    let f = expand("");
    let limits = f.file("/etc/security/limits.d/10-kiln-core.conf");
    assert!(lines(&limits).contains(&"* hard core 0") && lines(&limits).contains(&"* soft core 0"));
    assert!(lines(&f.file("/etc/profile.d/kiln-core.sh")).contains(&"ulimit -c 0"));
    let cd = f.file("/etc/systemd/coredump.conf.d/10-kiln.conf");
    assert!(lines(&cd).contains(&"Storage=none") && lines(&cd).contains(&"ProcessSizeMax=0"));
    assert!(
        lines(&f.file("/etc/sysctl.d/90-kiln-hardening.conf")).contains(&"fs.suid_dumpable = 0")
    );
    let f = expand("hardening_core_dumps = false");
    assert!(!f
        .file("/etc/sysctl.d/90-kiln-hardening.conf")
        .contains("suid_dumpable"));
}

#[test]
fn banner_text_is_a_parameter() {
    let f = expand("banner = \"Authorized use only; activity is monitored and logged.\\n\"");
    for p in ["/etc/issue", "/etc/issue.net"] {
        assert_eq!(
            f.file(p),
            "Authorized use only; activity is monitored and logged.\n"
        );
    }
    // The default has the words lynis counts (5 or more) to call it a legal banner.
    let f = expand("");
    let text = f.file("/etc/issue").to_lowercase();
    let words = [
        "access", "authori", "monitor", "log", "evidence", "criminal", "law", "consent", "private",
        "terms",
    ];
    assert!(
        words.iter().filter(|w| text.contains(*w)).count() >= 5,
        "{text}"
    );
}

#[test]
fn needrestart_lists_and_never_restarts() {
    let f = expand("");
    let conf = f.file("/etc/needrestart/conf.d/kiln.conf");
    assert!(lines(&conf).contains(&"$nrconf{restart} = 'l';"), "{conf}");
}

#[test]
fn blacklist_covers_protocols_and_storage_drivers() {
    let f = expand("");
    let conf = f.file("/etc/modprobe.d/kiln-blacklist.conf");
    let l = lines(&conf);
    for m in [
        "dccp",
        "sctp",
        "rds",
        "tipc",
        "usb-storage",
        "firewire-core",
    ] {
        assert!(
            l.contains(&format!("blacklist {m}").as_str()),
            "{m}:\n{conf}"
        );
        assert!(
            l.contains(&format!("install {m} /bin/false").as_str()),
            "{m}:\n{conf}"
        );
    }
}

#[test]
fn container_guards_skip_sysctl_apply_and_auditd() {
    let f = expand("");
    // A container (systemd-detect-virt -c succeeds) counts as converged: nothing is applied.
    let s = f.command("apply kiln's sysctl hardening");
    assert!(s
        .unless
        .as_deref()
        .unwrap()
        .starts_with("systemd-detect-virt -cq || "));
    assert!(s.run.contains("-p /etc/sysctl.d/90-kiln-hardening.conf"));
    let a = f.command("auditd on a VM");
    assert!(a
        .unless
        .as_deref()
        .unwrap()
        .starts_with("systemd-detect-virt -cq || "));
    assert!(a.run.contains("apt-get install") && a.run.contains("auditd"));
    // The file itself is written everywhere (a container's image may boot as a VM later).
    assert!(f.has("file:/etc/sysctl.d/90-kiln-hardening.conf"));
}

#[test]
fn shell_timeout_zero_removes_the_file() {
    let f = expand("");
    let t = f.file("/etc/profile.d/kiln-tmout.sh");
    assert!(lines(&t).contains(&"TMOUT=900") && lines(&t).contains(&"readonly TMOUT"));
    let f = expand("shell_timeout = 0");
    let absent = f
        .desired
        .host("h")
        .unwrap()
        .resources
        .iter()
        .any(|r| matches!(&r.kind, Kind::File(x) if x.path == "/etc/profile.d/kiln-tmout.sh" && x.state == kiln::resource::file::FileState::Absent));
    assert!(absent, "shell_timeout = 0 declares the file absent");
}
