//! Each rule of the lockout check on fixture desired files (what debian-base renders, and
//! the forms beside it), with and without the host's facts.

use super::keys::tests::{OTHER, PRIVATE, PUB};
use super::*;
use crate::desired::Connection;
use crate::facts::{PathFact, SshSessionFact};
use crate::resource::{File, Origin, Resource, User};
use crate::spec::Provider;

const KILN_CONF: &str = "/etc/ssh/sshd_config.d/10-kiln.conf";
const DEPLOY_KEYS: &str = "/home/deploy/.ssh/authorized_keys";
const ADMINS: &str = "/etc/sudoers.d/kiln-admins";

/// debian-base's sshd drop-in (hardening off).
const SSHD: &str = "# Managed by kiln (debian-base): keys only, root by key only.\nPort 22\nPasswordAuthentication no\nKbdInteractiveAuthentication no\nPermitRootLogin prohibit-password\nPermitEmptyPasswords no\nX11Forwarding no\nMaxAuthTries 4\nClientAliveInterval 300\n";

/// debian-base's firewall with `ssh_from = [FROM]`, or open SSH when `from` is empty.
fn nft(from: &str) -> String {
    let ssh = if from.is_empty() {
        "tcp dport 22 accept".to_string()
    } else {
        format!("ip saddr {{ {from} }} tcp dport 22 accept")
    };
    format!(
        "#!/usr/sbin/nft -f\ntable inet kiln\ndelete table inet kiln\ntable inet kiln {{\n\tchain input {{\n\t\ttype filter hook input priority filter; policy drop;\n\t\tct state established,related accept\n\t\tct state invalid drop\n\t\tiif \"lo\" accept\n\t\tip protocol icmp accept\n\t\tip6 nexthdr icmpv6 accept\n\t\t{ssh}\n\t\ttcp dport 80 accept comment \"role web\"\n\t}}\n\tchain forward {{\n\t\ttype filter hook forward priority filter; policy drop;\n\t}}\n}}\n"
    )
}

struct H(DesiredHost);

fn host(user: &str) -> H {
    H(DesiredHost {
        name: "web".into(),
        connection: Connection {
            address: "203.0.113.10".into(),
            port: 22,
            user: user.into(),
            key: None,
            provider: Provider::Static,
        },
        roles: vec!["web".into()],
        resources: vec![],
        checks: vec![],
    })
}

impl H {
    fn push(mut self, kind: Kind) -> H {
        self.0.resources.push(Resource {
            id: format!("{}:{}", kind.type_name(), self.0.resources.len()),
            module: "debian-base".into(),
            origin: Origin {
                file: "modules/debian-base.toml".into(),
                key: "resource[0]".into(),
            },
            after: vec![],
            notify: vec![],
            kind,
        });
        self
    }
    fn file(self, path: &str, content: &str) -> H {
        self.push(Kind::File(File::text(path, content, "0644")))
    }
    fn absent(self, path: &str) -> H {
        let mut f = File::text(path, "", "0644");
        f.state = FileState::Absent;
        f.content = None;
        self.push(Kind::File(f))
    }
    fn user(self, name: &str, groups: &[&str], f: impl Fn(&mut User)) -> H {
        let mut u = User {
            name: name.into(),
            uid: None,
            home: None,
            shell: "/bin/bash".into(),
            groups: groups.iter().map(|g| g.to_string()).collect(),
            system: false,
            create_home: true,
            present: true,
        };
        f(&mut u);
        self.push(Kind::User(u))
    }
    fn port(mut self, port: u16) -> H {
        self.0.connection.port = port;
        self
    }
}

fn kiln_key() -> KilnKey {
    KilnKey::Known {
        key: keys::from_openssh_private(PRIVATE).unwrap(),
        from: "/home/ci/.ssh/id_ed25519".into(),
    }
}

fn no_key() -> KilnKey {
    KilnKey::Unknown("kiln's key is not named".into())
}

/// Facts of a live plan: kiln came from `client` to `server:port`.
fn live(client: &str, server: &str, port: u16) -> HostFacts {
    HostFacts {
        ssh_session: Some(SshSessionFact {
            seen: Some(SshEndpoints {
                client: client.into(),
                client_port: 50000,
                server: server.into(),
                server_port: port,
            }),
        }),
        ..HostFacts::default()
    }
}

fn from_bridge() -> HostFacts {
    live("10.233.0.1", "10.233.0.75", 22)
}

fn run(h: &H, key: &KilnKey, facts: Option<&HostFacts>) -> Lockout {
    check(&h.0, key, facts)
}

fn one_reason(l: &Lockout) -> &str {
    assert_eq!(l.reasons.len(), 1, "{l:#?}");
    &l.reasons[0]
}

fn clean(l: &Lockout) {
    assert!(l.reasons.is_empty() && l.not_checked.is_empty(), "{l:#?}");
}

// -------------------------------------------------------------------------------------
// The firewall

#[test]
fn a_firewall_range_without_kiln_s_address_is_a_lockout() {
    let h = host("root").file(nft::PATH, &nft("198.51.100.0/24"));
    let l = run(&h, &no_key(), Some(&from_bridge()));
    assert_eq!(
        one_reason(&l),
        "the firewall (/etc/nftables.conf) admits SSH (port 22) only from 198.51.100.0/24, and kiln connects from 10.233.0.1"
    );
    // The range that holds it, or SSH open to all: nothing to say.
    clean(&run(
        &host("root").file(nft::PATH, &nft("10.233.0.0/24, 198.51.100.0/24")),
        &no_key(),
        Some(&from_bridge()),
    ));
    clean(&run(
        &host("root").file(nft::PATH, &nft("")),
        &no_key(),
        Some(&from_bridge()),
    ));
}

#[test]
fn the_source_address_is_asked_for_only_when_a_rule_needs_it_and_said_when_missing() {
    let restricted = host("root").file(nft::PATH, &nft("198.51.100.0/24"));
    assert_eq!(
        queries(&restricted.0, &no_key()),
        vec![FactQuery::SshSession]
    );
    let open = host("root").file(nft::PATH, &nft(""));
    assert_eq!(queries(&open.0, &no_key()), vec![]);
    assert_eq!(queries(&host("root").0, &no_key()), vec![]);
    // Offline: not checked, and why.
    let l = run(&restricted, &no_key(), None);
    assert!(l.reasons.is_empty(), "{l:#?}");
    assert_eq!(
        l.not_checked,
        ["the firewall (/etc/nftables.conf) admits SSH (port 22) only from 198.51.100.0/24: kiln's source address is not known offline, so whether kiln is admitted was not checked"]
    );
    // A host reached without SSH (the local transport).
    let local = HostFacts {
        ssh_session: Some(SshSessionFact { seen: None }),
        ..HostFacts::default()
    };
    let l = run(&restricted, &no_key(), Some(&local));
    assert!(
        l.not_checked[0].contains("the host saw no SSH session"),
        "{l:#?}"
    );
}

#[test]
fn the_port_the_host_sees_is_judged_and_one_the_firewall_never_opens_is_a_lockout() {
    // kiln connects to 2222 (a NAT maps it to 22 on the host): the host's port counts.
    let h = host("root").port(2222).file(nft::PATH, &nft(""));
    clean(&run(
        &h,
        &no_key(),
        Some(&live("10.233.0.1", "10.0.0.5", 22)),
    ));
    // Offline the spec's port is all there is.
    assert_eq!(
        one_reason(&run(&h, &no_key(), None)),
        "the firewall (/etc/nftables.conf) would admit no new SSH connection on port 2222, the port kiln connects to"
    );
}

#[test]
fn a_firewall_rule_beyond_the_parser_is_not_guessed_at() {
    let t = nft("").replace(
        "tcp dport 22 accept",
        "ip saddr @admins tcp dport 22 accept",
    );
    let l = run(
        &host("root").file(nft::PATH, &t),
        &no_key(),
        Some(&from_bridge()),
    );
    assert!(l.reasons.is_empty(), "{l:#?}");
    assert!(
        l.not_checked[0]
            .contains("`ip saddr @admins tcp dport 22 accept` is beyond what kiln judges"),
        "{l:#?}"
    );
}

// -------------------------------------------------------------------------------------
// sshd

#[test]
fn sshd_moved_to_another_port_or_address() {
    let h = host("root").file(KILN_CONF, &SSHD.replace("Port 22", "Port 2222"));
    assert_eq!(
        one_reason(&run(&h, &no_key(), None)),
        "sshd would listen only on port 2222 (Port in /etc/ssh/sshd_config.d/10-kiln.conf), and kiln connects to port 22"
    );
    clean(&run(
        &host("root").file(KILN_CONF, &format!("{SSHD}Port 2222\n")),
        &no_key(),
        None,
    ));
    // ListenAddress: the host's own address kiln arrives at must be one of them.
    let h = host("root").file(KILN_CONF, &format!("{SSHD}ListenAddress 10.0.0.5\n"));
    assert_eq!(
        one_reason(&run(&h, &no_key(), Some(&from_bridge()))),
        "sshd would listen only on 10.0.0.5:22 (ListenAddress in /etc/ssh/sshd_config.d/10-kiln.conf), and kiln connects to 10.233.0.75:22"
    );
    clean(&run(
        &h,
        &no_key(),
        Some(&live("10.233.0.1", "10.0.0.5", 22)),
    ));
    assert_eq!(queries(&h.0, &no_key()), vec![FactQuery::SshSession]);
    let l = run(&h, &no_key(), None);
    assert!(
        l.reasons.is_empty() && l.not_checked[0].contains("not known offline"),
        "{l:#?}"
    );
    let h = host("root").file(KILN_CONF, &format!("{SSHD}ListenAddress 0.0.0.0:2200\n"));
    assert!(one_reason(&run(&h, &no_key(), None)).contains("only on 0.0.0.0:2200"));
}

#[test]
fn root_logins_refused_while_kiln_is_root() {
    let conf = SSHD.replace("PermitRootLogin prohibit-password", "PermitRootLogin no");
    let h = host("root").file(KILN_CONF, &conf);
    assert_eq!(
        one_reason(&run(&h, &no_key(), None)),
        "sshd would refuse root logins (PermitRootLogin no in /etc/ssh/sshd_config.d/10-kiln.conf), and kiln logs in as root"
    );
    // A non-root login does not care.
    clean(&run(
        &host("deploy").file(KILN_CONF, &conf),
        &no_key(),
        None,
    ));
    // debian-base's prohibit-password admits kiln's key.
    clean(&run(&host("root").file(KILN_CONF, SSHD), &no_key(), None));
}

#[test]
fn public_keys_refused_or_more_than_a_key_required() {
    let h = host("deploy").file(KILN_CONF, &format!("PubkeyAuthentication no\n{SSHD}"));
    assert_eq!(
        one_reason(&run(&h, &no_key(), None)),
        "sshd would refuse public keys (PubkeyAuthentication no in /etc/ssh/sshd_config.d/10-kiln.conf), and kiln logs in with a key"
    );
    let h = host("deploy").file(
        KILN_CONF,
        &format!("{SSHD}AuthenticationMethods publickey,password\n"),
    );
    assert!(one_reason(&run(&h, &no_key(), None))
        .starts_with("sshd would require AuthenticationMethods publickey,password"));
    let h = host("deploy").file(
        KILN_CONF,
        &format!("{SSHD}AuthenticationMethods publickey,password publickey\n"),
    );
    clean(&run(&h, &no_key(), None));
}

#[test]
fn allow_and_deny_users_and_groups() {
    let with = |extra: &str| host("deploy").file(KILN_CONF, &format!("{SSHD}{extra}\n"));
    assert_eq!(
        one_reason(&run(&with("AllowUsers alice bob"), &no_key(), None)),
        "sshd would admit only AllowUsers alice bob (in /etc/ssh/sshd_config.d/10-kiln.conf), and kiln logs in as deploy"
    );
    clean(&run(&with("AllowUsers alice dep*"), &no_key(), None));
    // A host part: judged against where the host sees kiln come from.
    let h = with("AllowUsers deploy@198.51.100.0/24");
    assert_eq!(
        one_reason(&run(&h, &no_key(), Some(&from_bridge()))),
        "sshd would admit only AllowUsers deploy@198.51.100.0/24 (in /etc/ssh/sshd_config.d/10-kiln.conf), and kiln logs in as deploy from 10.233.0.1"
    );
    clean(&run(
        &with("AllowUsers deploy@10.233.0.0/24"),
        &no_key(),
        Some(&from_bridge()),
    ));
    assert_eq!(queries(&h.0, &no_key()), vec![FactQuery::SshSession]);
    let l = run(&h, &no_key(), None);
    assert!(l.reasons.is_empty() && l.not_checked.len() == 1, "{l:#?}");
    assert!(
        one_reason(&run(&with("DenyUsers root deploy"), &no_key(), None))
            .starts_with("sshd would deny deploy (DenyUsers deploy in ")
    );
    // Groups: the managed account's.
    let h = with("AllowGroups admins").user("deploy", &["sudo"], |_| {});
    assert_eq!(
        one_reason(&run(&h, &no_key(), None)),
        "sshd would admit only the members of AllowGroups admins (in /etc/ssh/sshd_config.d/10-kiln.conf), and kiln logs in as deploy, in deploy, sudo"
    );
    clean(&run(
        &with("AllowGroups sudo").user("deploy", &["sudo"], |_| {}),
        &no_key(),
        None,
    ));
    assert!(one_reason(&run(
        &with("DenyGroups sud?").user("deploy", &["sudo"], |_| {}),
        &no_key(),
        None
    ))
    .starts_with("sshd would deny the members of sud? (DenyGroups"));
    // An account kiln does not manage: its groups are not known offline.
    let l = run(&with("AllowGroups admins"), &no_key(), None);
    assert!(
        l.reasons.is_empty() && l.not_checked[0].contains("are not known"),
        "{l:#?}"
    );
}

#[test]
fn a_match_block_is_not_evaluated_but_said() {
    let h = host("root").file(
        KILN_CONF,
        &format!("{SSHD}Match Address 192.0.2.0/24\n  PermitRootLogin no\n"),
    );
    let l = run(&h, &no_key(), None);
    assert!(l.reasons.is_empty(), "{l:#?}");
    assert_eq!(
        l.not_checked,
        ["sshd's PermitRootLogin in a Match block of /etc/ssh/sshd_config.d/10-kiln.conf applies to some connections only: not checked"]
    );
}

// -------------------------------------------------------------------------------------
// authorized_keys

#[test]
fn the_login_user_s_keys_without_kiln_s_key_are_a_lockout() {
    let h = host("deploy").file(DEPLOY_KEYS, &format!("{OTHER}\n"));
    let l = run(&h, &kiln_key(), None);
    assert_eq!(
        one_reason(&l),
        format!(
            "/home/deploy/.ssh/authorized_keys (deploy's authorized_keys) would not hold kiln's key, and kiln logs in with ssh-ed25519 {} (read from /home/ci/.ssh/id_ed25519)",
            keys::tests::PUB_FINGERPRINT
        )
    );
    clean(&run(
        &host("deploy").file(DEPLOY_KEYS, &format!("{OTHER}\n{PUB}\n")),
        &kiln_key(),
        None,
    ));
    // Another user's keys are not kiln's business; nor is an unmanaged file.
    clean(&run(
        &host("root").file(DEPLOY_KEYS, OTHER),
        &kiln_key(),
        None,
    ));
    clean(&run(&host("deploy"), &kiln_key(), None));
    // Removed.
    assert!(
        one_reason(&run(&host("deploy").absent(DEPLOY_KEYS), &kiln_key(), None))
            .contains("authorized_keys) would be removed")
    );
}

#[test]
fn without_kiln_s_key_the_keys_are_not_checked_and_say_why() {
    let h = host("deploy").file(DEPLOY_KEYS, OTHER);
    let l = run(&h, &no_key(), None);
    assert!(l.reasons.is_empty());
    assert_eq!(
        l.not_checked,
        ["/home/deploy/.ssh/authorized_keys (deploy's authorized_keys) is written by kiln, and kiln's key is not named: whether it keeps kiln's key was not checked"]
    );
}

#[test]
fn a_forced_command_or_a_from_that_excludes_kiln() {
    let h = host("deploy").file(
        DEPLOY_KEYS,
        &format!("command=\"/usr/bin/backup\",no-pty {PUB}\n"),
    );
    assert!(one_reason(&run(&h, &kiln_key(), None))
        .contains("would carry command=\"/usr/bin/backup\": sshd would run that instead"));
    let h = host("deploy").file(DEPLOY_KEYS, &format!("from=\"198.51.100.0/24\" {PUB}\n"));
    assert_eq!(
        one_reason(&run(&h, &kiln_key(), Some(&from_bridge()))),
        "kiln's key in /home/deploy/.ssh/authorized_keys would be admitted only from=\"198.51.100.0/24\", and kiln connects from 10.233.0.1"
    );
    assert_eq!(queries(&h.0, &kiln_key()), vec![FactQuery::SshSession]);
    let h = host("deploy").file(DEPLOY_KEYS, &format!("from=\"10.233.0.*\" {PUB}\n"));
    clean(&run(&h, &kiln_key(), Some(&from_bridge())));
}

#[test]
fn authorized_keys_file_home_and_root() {
    // A managed account's own home.
    let h = host("deploy")
        .user("deploy", &[], |u| u.home = Some("/srv/deploy".into()))
        .file("/srv/deploy/.ssh/authorized_keys", OTHER);
    assert!(one_reason(&run(&h, &kiln_key(), None)).starts_with("/srv/deploy/.ssh/authorized_keys"));
    // sshd's AuthorizedKeysFile, tokens expanded.
    let h = host("root")
        .file(
            KILN_CONF,
            &format!("{SSHD}AuthorizedKeysFile /etc/ssh/keys/%u\n"),
        )
        .file("/etc/ssh/keys/root", OTHER)
        .file("/root/.ssh/authorized_keys", PUB);
    assert!(one_reason(&run(&h, &kiln_key(), None))
        .starts_with("/etc/ssh/keys/root (root's authorized_keys)"));
    // Keys also from a command: not judged.
    let h = host("root")
        .file(
            KILN_CONF,
            &format!("{SSHD}AuthorizedKeysCommand /usr/bin/keys %u\n"),
        )
        .file("/root/.ssh/authorized_keys", OTHER);
    let l = run(&h, &kiln_key(), None);
    assert!(
        l.reasons.is_empty() && l.not_checked[0].contains("AuthorizedKeysCommand"),
        "{l:#?}"
    );
}

// -------------------------------------------------------------------------------------
// sudo

const GRANTS: &str =
    "# Managed by kiln\ndeploy ALL=(ALL:ALL) NOPASSWD: ALL\nalice ALL=(ALL:ALL) NOPASSWD: ALL\n";
const WITHOUT: &str = "# Managed by kiln\nalice ALL=(ALL:ALL) NOPASSWD: ALL\n";

fn with_sudoers_today(content: &str) -> HostFacts {
    let mut f = from_bridge();
    f.paths.insert(
        ADMINS.into(),
        PathFact {
            kind: PathKind::File,
            matches: Some(false),
            content: Some(content.into()),
            ..PathFact::missing()
        },
    );
    f
}

#[test]
fn sudo_taken_away_from_a_non_root_login() {
    let h = host("deploy").file(ADMINS, WITHOUT);
    let l = run(&h, &no_key(), Some(&with_sudoers_today(GRANTS)));
    assert_eq!(
        one_reason(&l),
        "sudoers would no longer let deploy run commands as root without a password (/etc/sudoers.d/kiln-admins grants it today: `deploy ALL=(ALL:ALL) NOPASSWD: ALL`), and kiln runs sudo -n"
    );
    // Granted by the file kiln writes: fine; root needs no sudo.
    clean(&run(
        &host("deploy").file(ADMINS, GRANTS),
        &no_key(),
        Some(&with_sudoers_today(WITHOUT)),
    ));
    clean(&run(
        &host("root").file(ADMINS, WITHOUT),
        &no_key(),
        Some(&with_sudoers_today(GRANTS)),
    ));
    // kiln's sudo -n works today through another rule (the file is new, or never
    // granted it): nothing kiln writes takes it away.
    clean(&run(&h, &no_key(), Some(&from_bridge())));
    clean(&run(&h, &no_key(), Some(&with_sudoers_today(WITHOUT))));
    let mut same = from_bridge();
    same.paths.insert(
        ADMINS.into(),
        PathFact {
            kind: PathKind::File,
            matches: Some(true),
            ..PathFact::missing()
        },
    );
    clean(&run(&h, &no_key(), Some(&same)));
    // Offline: not known.
    let l = run(&h, &no_key(), None);
    assert!(
        l.reasons.is_empty() && l.not_checked[0].contains("not known offline"),
        "{l:#?}"
    );
}

#[test]
fn sudo_that_asks_for_a_password_is_a_lockout() {
    let h = host("deploy").file(ADMINS, "deploy ALL=(ALL:ALL) ALL\n");
    assert_eq!(
        one_reason(&run(&h, &no_key(), None)),
        "sudo would ask deploy for a password or refuse (/etc/sudoers.d/kiln-admins: `deploy ALL=(ALL:ALL) ALL`), and kiln runs sudo -n"
    );
    // A group rule counts with the managed account's groups.
    let h = host("deploy")
        .user("deploy", &["sudo"], |_| {})
        .file(ADMINS, "%sudo ALL=(ALL:ALL) NOPASSWD: ALL\n");
    clean(&run(&h, &no_key(), None));
}

// -------------------------------------------------------------------------------------
// The account, and what is not kiln's

#[test]
fn the_login_user_removed_or_without_a_shell() {
    let h = host("deploy").user("deploy", &["sudo"], |u| u.present = false);
    assert_eq!(
        one_reason(&run(&h, &no_key(), None)),
        "the user deploy kiln logs in as would be removed (user:deploy)"
    );
    let h = host("deploy").user("deploy", &[], |u| u.shell = "/usr/sbin/nologin".into());
    assert!(one_reason(&run(&h, &no_key(), None)).contains("would be /usr/sbin/nologin"));
}

#[test]
fn a_host_whose_spec_touches_no_access_file_has_nothing_to_say() {
    let h = host("root")
        .file("/etc/motd", "hello\n")
        .user("alice", &["sudo"], |_| {});
    clean(&run(&h, &kiln_key(), Some(&from_bridge())));
    clean(&run(&h, &no_key(), None));
}

#[test]
fn several_reasons_are_all_named() {
    let h = host("root")
        .file(KILN_CONF, &SSHD.replace("Port 22", "Port 2222"))
        .file(nft::PATH, &nft("198.51.100.0/24"));
    let l = run(&h, &no_key(), Some(&from_bridge()));
    assert_eq!(l.reasons.len(), 2, "{l:#?}");
    assert!(l.reasons[0].starts_with("sshd would listen only on port 2222"));
    assert!(l.reasons[1].starts_with("the firewall"));
}

// -------------------------------------------------------------------------------------
// The verdict in the plan

fn plan_with(lockout: Lockout) -> crate::plan::Plan {
    crate::plan::Plan {
        format: crate::plan::PLAN_FORMAT,
        kiln_version: "test".into(),
        environment: "prod".into(),
        env_file: "environments/prod.toml".into(),
        created_at: "2026-01-01T00:00:00Z".into(),
        hosts: vec![crate::plan::HostPlan {
            host: "web".into(),
            address: "203.0.113.10".into(),
            changes: vec![crate::plan::Change {
                resource: "file:/etc/nftables.conf".into(),
                action: crate::plan::Action::Create,
                summary: "create".into(),
                attributes: vec![],
                diff: None,
                sensitive: false,
                reason: None,
                fingerprint: String::new(),
                facts: vec![],
                steps: vec![],
            }],
            after_hosts: vec![],
            error: None,
            facts_ms: 0,
            lockout,
            timings: None,
        }],
        targets: None,
    }
}

#[test]
fn a_lockout_is_refused_unless_overridden_and_a_saved_plan_keeps_it() {
    let l = Lockout {
        reasons: vec!["the firewall (/etc/nftables.conf) admits SSH (port 22) only from 198.51.100.0/24, and kiln connects from 10.233.0.1".into()],
        not_checked: vec![],
        overridden: false,
    };
    let mut refused = plan_with(l.clone());
    assert!(refused.refuse_lockouts(false).is_empty());
    let h = &refused.hosts[0];
    assert_eq!(
        h.error.as_deref(),
        Some("applying this would lock kiln out: the firewall (/etc/nftables.conf) admits SSH (port 22) only from 198.51.100.0/24, and kiln connects from 10.233.0.1 (pass --i-know-this-locks-me-out to plan and apply if this is intended)")
    );
    assert!(h.changes.is_empty() && refused.has_errors());

    let mut kept = plan_with(l);
    let w = kept.refuse_lockouts(true);
    assert_eq!(w.len(), 1);
    assert!(w[0].starts_with(
        "web: applying this locks kiln out (--i-know-this-locks-me-out): the firewall"
    ));
    assert!(kept.hosts[0].error.is_none() && kept.change_count() == 1);
    // Saved, read back, applied without the flag: refused then.
    let json = serde_json::to_string(&kept).unwrap();
    assert!(json.contains("\"overridden\":true"), "{json}");
    let mut read: crate::plan::Plan = serde_json::from_str(&json).unwrap();
    assert_eq!(read, kept);
    read.refuse_lockouts(false);
    assert!(read.hosts[0].error.is_some() && read.change_count() == 0);
    // A host without findings serialises without the field.
    let json = serde_json::to_string(&plan_with(Lockout::default())).unwrap();
    assert!(!json.contains("lockout"), "{json}");
}
