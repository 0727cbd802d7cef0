//! Ports derived, not listed: the repository's modules declare what they serve
//! (`[[listen]]`), and debian-base's firewall opens exactly that to the hosts the
//! environment says use it — expanded offline (no host contacted) for a production-like
//! topology with no `ports` anywhere. A host added appears in its peers' rules, one
//! removed disappears; a name that is no host, role or network is refused at the
//! environment key that wrote it.

use std::path::Path;

use kiln::desired;
use kiln::resource::Kind;
use kiln::spec::Environment;

const TOPOLOGY: &str = r#"
[hosts.web]
address = "10.1.0.10"
roles = ["web"]
[hosts.db1]
address = "10.1.0.21"
roles = ["db", "backup"]
[hosts.db2]
address = "10.1.0.22"
roles = ["db", "backup"]
[hosts.db3]
address = "10.1.0.23"
roles = ["db", "backup"]
[hosts.storage]
address = "10.1.0.30"
roles = ["storage"]

[roles.web]
modules = ["debian-base", "galera-endpoint", "nginx"]
[roles.db]
modules = ["debian-base", "mariadb-galera"]
[roles.backup]
modules = ["backup"]
[roles.storage]
modules = ["debian-base", "minio"]

[secrets.db_app]
env = "KILN_TEST_FIREWALL_PW"
[secrets.minio_root_user]
env = "KILN_TEST_FIREWALL_PW"
[secrets.minio_root_password]
env = "KILN_TEST_FIREWALL_PW"

[modules.debian-base]
admins = [{ name = "alice", keys = ["ssh-ed25519 AAAA alice"] }]

[modules.galera-endpoint]
nodes = ["db1", "db2", "db3"]

[modules.mariadb-galera]
nodes = ["db1", "db2", "db3"]
databases = ["app"]

[modules.minio]
artifact_url = "https://example.com/minio"
artifact_sha256 = "0000000000000000000000000000000000000000000000000000000000000000"
buckets = ["backups"]

[modules.backup]
endpoint = "http://10.1.0.30:9000"
peers = ["db1", "db2", "db3"]
"#;

/// The environment `text` (in a repository of its own beside kiln's modules), secrets
/// resolved.
fn load(text: &str) -> (tempfile::TempDir, Environment) {
    std::env::set_var("KILN_TEST_FIREWALL_PW", "pw-not-in-any-output-0123456789");
    let repo = Path::new(env!("CARGO_MANIFEST_DIR"));
    let dir = tempfile::tempdir().expect("tempdir");
    std::os::unix::fs::symlink(repo.join("modules"), dir.path().join("modules")).unwrap();
    std::os::unix::fs::symlink(repo.join("templates"), dir.path().join("templates")).unwrap();
    std::fs::create_dir_all(dir.path().join("environments")).unwrap();
    let p = dir.path().join("environments/t.toml");
    std::fs::write(&p, text).unwrap();
    let mut env = Environment::load(&p).unwrap_or_else(|e| panic!("{e}"));
    env.resolve_secrets().unwrap_or_else(|e| panic!("{e}"));
    (dir, env)
}

/// `/etc/nftables.conf` as rendered for `host` of the environment `text`.
fn nftables(text: &str, host: &str) -> String {
    let (_dir, env) = load(text);
    let d = desired::expand(&env, &[host.to_string()], None).unwrap_or_else(|e| panic!("{e}"));
    d.host(host)
        .unwrap()
        .resources
        .iter()
        .find_map(|r| match &r.kind {
            Kind::File(f) if f.path == "/etc/nftables.conf" => f.content.clone(),
            _ => None,
        })
        .expect("debian-base writes /etc/nftables.conf")
}

/// The rules on `host` that open a port (SSH's excepted), for TOPOLOGY with `extra`.
fn rules(extra: &str, host: &str) -> Vec<String> {
    nftables(&format!("{TOPOLOGY}\n{extra}\n"), host)
        .lines()
        .map(str::trim)
        .filter(|l| l.contains("dport") && !l.contains("dport 22 "))
        .map(String::from)
        .collect()
}

#[test]
fn each_port_opens_to_exactly_the_hosts_that_use_it() {
    let db1 = rules("", "db1");
    assert_eq!(
        db1,
        [
            // MariaDB: the other nodes, the app host (galera-endpoint), the backup hosts.
            "ip saddr { 10.1.0.22, 10.1.0.23, 10.1.0.10 } tcp dport 3306 accept comment \"module mariadb-galera\"",
            // The health check: for HAProxy on the app host, and the nodes.
            "ip saddr { 10.1.0.22, 10.1.0.23, 10.1.0.10 } tcp dport 9200 accept comment \"module mariadb-galera\"",
            "ip saddr { 10.1.0.22, 10.1.0.23 } tcp dport 4567 accept comment \"module mariadb-galera\"",
            "ip saddr { 10.1.0.22, 10.1.0.23 } udp dport 4567 accept comment \"module mariadb-galera\"",
            "ip saddr { 10.1.0.22, 10.1.0.23 } tcp dport 4568 accept comment \"module mariadb-galera\"",
            "ip saddr { 10.1.0.22, 10.1.0.23 } tcp dport 4444 accept comment \"module mariadb-galera\"",
        ],
        "{db1:#?}"
    );
    // The object store: the backup hosts only — not the web host.
    assert_eq!(
        rules("", "storage"),
        ["ip saddr { 10.1.0.21, 10.1.0.22, 10.1.0.23 } tcp dport 9000 accept comment \"module minio\""]
    );
    // The web host serves HTTP(S) to everyone and nothing else.
    assert_eq!(
        rules("", "web"),
        [
            "tcp dport 80 accept comment \"module nginx\"",
            "tcp dport 443 accept comment \"module nginx\""
        ]
    );
}

#[test]
fn a_host_added_or_removed_changes_its_peers_rules() {
    // A second app host: MariaDB and the health check let it in, Galera's ports do not.
    let more = "[hosts.web2]\naddress = \"10.1.0.11\"\nroles = [\"web\"]\n";
    let db2 = rules(more, "db2");
    assert!(
        db2[0]
            .starts_with("ip saddr { 10.1.0.21, 10.1.0.23, 10.1.0.10, 10.1.0.11 } tcp dport 3306 "),
        "{db2:#?}"
    );
    assert!(
        db2[2].starts_with("ip saddr { 10.1.0.21, 10.1.0.23 } tcp dport 4567 "),
        "{db2:#?}"
    );
    // db3 removed from the environment and from the cluster: gone from every rule.
    let fewer = TOPOLOGY
        .replace(
            "[hosts.db3]\naddress = \"10.1.0.23\"\nroles = [\"db\", \"backup\"]\n",
            "",
        )
        .replace(
            "nodes = [\"db1\", \"db2\", \"db3\"]",
            "nodes = [\"db1\", \"db2\"]",
        )
        .replace(
            "peers = [\"db1\", \"db2\", \"db3\"]",
            "peers = [\"db1\", \"db2\"]",
        );
    let nft = nftables(&fewer, "db1");
    assert!(!nft.contains("10.1.0.23"), "{nft}");
    assert!(
        nft.contains("ip saddr { 10.1.0.22, 10.1.0.10 } tcp dport 3306 "),
        "{nft}"
    );
    let storage = nftables(&fewer, "storage");
    assert!(
        storage.contains("ip saddr { 10.1.0.21, 10.1.0.22 } tcp dport 9000 "),
        "{storage}"
    );
}

#[test]
fn allow_from_takes_roles_hosts_modules_and_both_address_families() {
    // nginx behind a load balancer: its v4 and v6 ranges only; the object store for the
    // web role as well as the backup hosts.
    let extra = "[modules.nginx]\nallow_from = [\"192.0.2.0/24\", \"2001:db8::/32\"]\n";
    let web = rules(extra, "web");
    assert_eq!(
        web,
        [
            "ip saddr { 192.0.2.0/24 } tcp dport 80 accept comment \"module nginx\"",
            "ip6 saddr { 2001:db8::/32 } tcp dport 80 accept comment \"module nginx\"",
            "ip saddr { 192.0.2.0/24 } tcp dport 443 accept comment \"module nginx\"",
            "ip6 saddr { 2001:db8::/32 } tcp dport 443 accept comment \"module nginx\"",
        ]
    );
    let text = TOPOLOGY.replace(
        "buckets = [\"backups\"]",
        "buckets = [\"backups\"]\nallow_from = [\"role:web\"]",
    );
    let nft = nftables(&text, "storage");
    assert!(
        nft.contains(
            "ip saddr { 10.1.0.10, 10.1.0.21, 10.1.0.22, 10.1.0.23 } tcp dport 9000 accept"
        ),
        "{nft}"
    );
}

#[test]
fn ssh_from_of_both_families_gets_a_rule_each() {
    let extra = "[modules.debian-base]\nadmins = [{ name = \"alice\", keys = [\"ssh-ed25519 AAAA alice\"] }]\nssh_from = [\"198.51.100.0/24\", \"2001:db8:1::/48\"]\n";
    // The topology already has [modules.debian-base]; replace it.
    let text = TOPOLOGY.replace(
        "[modules.debian-base]\nadmins = [{ name = \"alice\", keys = [\"ssh-ed25519 AAAA alice\"] }]\n",
        extra,
    );
    let nft = nftables(&text, "web");
    assert!(
        nft.contains("\t\tip saddr { 198.51.100.0/24 } tcp dport 22 accept\n"),
        "{nft}"
    );
    assert!(
        nft.contains("\t\tip6 saddr { 2001:db8:1::/48 } tcp dport 22 accept\n"),
        "{nft}"
    );
    assert!(!nft.contains("ip saddr { 198.51.100.0/24, 2001"), "{nft}");
}

#[test]
fn a_name_that_is_nothing_is_refused_at_the_environment_key() {
    let (_dir, env) = load(&format!(
        "{TOPOLOGY}\n[modules.nginx]\nallow_from = [\"loadbalancer\"]\n"
    ));
    let hosts = env.select_hosts(None).unwrap();
    let err = desired::expand(&env, &hosts, None)
        .err()
        .expect("refused")
        .to_string();
    assert!(err.contains("t.toml:"), "{err}");
    assert!(err.contains("modules.nginx.allow_from[0]"), "{err}");
    assert!(
        err.contains("`loadbalancer` is no host, role, `module:NAME`, address or network"),
        "{err}"
    );
}
