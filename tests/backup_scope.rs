//! Which hosts `kiln backup`, `kiln restore` and `kiln rebuild` drive and touch, from the
//! repository's `backup` and `mariadb-galera` modules expanded for fixture environments (no
//! host contacted): with two Galera clusters in one environment, each cluster's backup
//! hosts serve that cluster alone, a restore stops only the nodes of its target's cluster,
//! and naming no cluster is an error that names them.

use std::path::Path;

use kiln::desired::{self, Desired, DesiredHost};
use kiln::ops::backup::{backup_hosts, clusters, galera_cluster, restore_peers};
use kiln::spec::Environment;

/// Two clusters: `orders` (o1-o3, each running the backup module, o2 leading) and
/// `billing` (b1-b2, b2 running it alone), and a web host in neither.
const TWO: &str = r#"
[hosts.o1]
address = "10.0.0.1"
roles = ["orders"]
[hosts.o2]
address = "10.0.0.2"
roles = ["orders"]
[hosts.o3]
address = "10.0.0.3"
roles = ["orders"]
[hosts.b1]
address = "10.0.0.11"
roles = ["billing"]
[hosts.b2]
address = "10.0.0.12"
roles = ["billing", "billing-backup"]
[hosts.web]
address = "10.0.0.20"
roles = []

[roles.orders]
modules = ["mariadb-galera", "backup"]
[roles.billing]
modules = ["mariadb-galera"]
[roles.billing-backup]
modules = ["backup"]

[hosts.o1.modules.mariadb-galera]
cluster_name = "orders"
nodes = ["o1", "o2", "o3"]
[hosts.o2.modules.mariadb-galera]
cluster_name = "orders"
nodes = ["o1", "o2", "o3"]
[hosts.o3.modules.mariadb-galera]
cluster_name = "orders"
nodes = ["o1", "o2", "o3"]
[hosts.b1.modules.mariadb-galera]
cluster_name = "billing"
nodes = ["b1", "b2"]
gtid_domain_id = 2
[hosts.b2.modules.mariadb-galera]
cluster_name = "billing"
nodes = ["b1", "b2"]
gtid_domain_id = 2

[hosts.o1.modules.backup]
peers = ["o2", "o1", "o3"]
[hosts.o2.modules.backup]
peers = ["o2", "o1", "o3"]
[hosts.o3.modules.backup]
peers = ["o2", "o1", "o3"]

[modules.backup]
endpoint = "http://10.0.0.30:9000"
"#;

/// One cluster, as the lab has it.
const ONE: &str = r#"
[hosts.db1]
address = "10.0.0.1"
roles = ["db"]
[hosts.db2]
address = "10.0.0.2"
roles = ["db"]

[roles.db]
modules = ["mariadb-galera", "backup"]

[modules.mariadb-galera]
cluster_name = "prod"
nodes = ["db1", "db2"]

[modules.backup]
endpoint = "http://10.0.0.30:9000"
peers = ["db2", "db1"]
"#;

const SECRETS: &str = r#"
[secrets.minio_root_user]
env = "KILN_TEST_BACKUP_SCOPE_S3"
[secrets.minio_root_password]
env = "KILN_TEST_BACKUP_SCOPE_S3"
"#;

struct Fixture {
    _dir: tempfile::TempDir,
    desired: Desired,
}

fn fixture(env_text: &str) -> Fixture {
    std::env::set_var("KILN_TEST_BACKUP_SCOPE_S3", "not-a-real-key-0123456789");
    let repo = Path::new(env!("CARGO_MANIFEST_DIR"));
    let dir = tempfile::tempdir().expect("tempdir");
    std::os::unix::fs::symlink(repo.join("modules"), dir.path().join("modules")).unwrap();
    std::os::unix::fs::symlink(repo.join("templates"), dir.path().join("templates")).unwrap();
    std::fs::create_dir_all(dir.path().join("environments")).unwrap();
    let p = dir.path().join("environments/scope.toml");
    std::fs::write(&p, format!("{env_text}{SECRETS}")).unwrap();
    let mut env = Environment::load(&p).unwrap_or_else(|e| panic!("{e}"));
    env.resolve_secrets().unwrap_or_else(|e| panic!("{e}"));
    let hosts = env.select_hosts(None).unwrap();
    let desired = desired::expand(&env, &hosts, None).unwrap_or_else(|e| panic!("{e}"));
    Fixture { _dir: dir, desired }
}

fn names(hs: &[&DesiredHost]) -> Vec<String> {
    hs.iter().map(|h| h.name.clone()).collect()
}

fn host<'a>(f: &'a Fixture, name: &str) -> &'a DesiredHost {
    f.desired.host(name).unwrap()
}

#[test]
fn each_host_knows_its_cluster() {
    let f = fixture(TWO);
    let got: Vec<(String, Vec<String>)> = clusters(&f.desired.hosts)
        .into_iter()
        .map(|(c, nodes)| (c.to_string(), names(&nodes)))
        .collect();
    assert_eq!(
        got,
        vec![
            (
                "orders".to_string(),
                vec!["o1".into(), "o2".into(), "o3".into()]
            ),
            ("billing".to_string(), vec!["b1".into(), "b2".into()]),
        ]
    );
    assert_eq!(galera_cluster(host(&f, "b1")), Some("billing"));
    assert_eq!(galera_cluster(host(&f, "web")), None);
}

#[test]
fn two_clusters_need_a_name_and_each_name_its_own_backup_hosts() {
    let f = fixture(TWO);
    let e = backup_hosts(&f.desired.hosts, None)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("2 Galera clusters")
            && e.contains("`orders`: o1, o2, o3")
            && e.contains("`billing`: b2")
            && e.contains("--cluster NAME"),
        "{e}"
    );
    // Ordered by the cluster's own peers (o2 leads); the other cluster's host never in it.
    let orders = backup_hosts(&f.desired.hosts, Some("orders")).unwrap();
    assert_eq!(names(&orders), ["o2", "o1", "o3"]);
    let billing = backup_hosts(&f.desired.hosts, Some("billing")).unwrap();
    assert_eq!(names(&billing), ["b2"]);
    let e = backup_hosts(&f.desired.hosts, Some("payroll"))
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("--cluster payroll: no such Galera cluster")
            && e.contains("`orders`, `billing`"),
        "{e}"
    );
}

#[test]
fn a_restore_stops_only_its_own_clusters_nodes() {
    let f = fixture(TWO);
    let all = &f.desired.hosts;
    assert_eq!(names(&restore_peers(all, host(&f, "o2"))), ["o1", "o3"]);
    assert_eq!(names(&restore_peers(all, host(&f, "b2"))), ["b1"]);
    // A host that is no node (a scratch host for `--into`) stops nobody.
    assert!(restore_peers(all, host(&f, "web")).is_empty());
}

#[test]
fn one_cluster_keeps_working_without_a_name() {
    let f = fixture(ONE);
    let hs = backup_hosts(&f.desired.hosts, None).unwrap();
    assert_eq!(names(&hs), ["db2", "db1"]);
    let named = backup_hosts(&f.desired.hosts, Some("prod")).unwrap();
    assert_eq!(names(&named), ["db2", "db1"]);
    let e = backup_hosts(&f.desired.hosts, Some("qa"))
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("no such Galera cluster here (clusters: `prod`)"),
        "{e}"
    );
    assert_eq!(
        names(&restore_peers(&f.desired.hosts, host(&f, "db1"))),
        ["db2"]
    );
}

/// The commands themselves: with two clusters and none named, `kiln backup` and `kiln
/// restore` exit 1 naming both before any host is contacted (the fixture's addresses do
/// not exist; a connection attempt would print another error).
#[test]
fn commands_refuse_an_unnamed_cluster_before_contacting_a_host() {
    let f = fixture(TWO);
    let env = f._dir.path().join("environments/scope.toml");
    for args in [
        vec!["backup", env.to_str().unwrap()],
        vec!["restore", env.to_str().unwrap(), "--yes"],
        vec![
            "restore",
            env.to_str().unwrap(),
            "--yes",
            "--cluster",
            "payroll",
        ],
    ] {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_kiln"))
            .args(&args)
            .env("KILN_TEST_BACKUP_SCOPE_S3", "not-a-real-key-0123456789")
            .output()
            .unwrap();
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(out.status.code(), Some(1), "{args:?}: {text}");
        assert!(
            text.contains("--cluster") && !text.contains("does not answer"),
            "{args:?}: {text}"
        );
    }
}
