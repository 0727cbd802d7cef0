//! The `mariadb-galera` module from the repository, expanded for a 3-node fixture
//! environment (no host contacted): rendered configuration, firewall, the galera_node
//! resource, and the cluster steps `plan_clusters` places into the host plans for bare,
//! healthy and reconfigured clusters.

use std::path::Path;

use kiln::cluster::galera::{plan_clusters, render_overview, steps_of, GaleraOp};
use kiln::desired::{self, Desired};
use kiln::facts::galera::GaleraFact;
use kiln::facts::{HostFacts, PackageFact, PathFact, PathKind};
use kiln::plan::build::host_plan;
use kiln::plan::graph::ResourceGraph;
use kiln::plan::{HostPlan, Plan, PLAN_FORMAT};
use kiln::resource::file::sha256_hex;
use kiln::resource::Kind;
use kiln::spec::Environment;

const SEAL_KEY: &[u8] = b"0123456789abcdef0123456789abcdef";
const UUID: &str = "5f0b2b6e-1111-11ef-9a00-0123456789ab";

const ENV: &str = r#"
[hosts.db1]
address = "10.0.0.1"
roles = ["db"]
[hosts.db2]
address = "10.0.0.2"
roles = ["db"]
[hosts.db3]
address = "10.0.0.3"
roles = ["db"]
[hosts.web]
address = "10.0.0.9"
roles = []

[roles.db]
modules = ["mariadb-galera"]

[modules.mariadb-galera]
cluster_name = "prod"
nodes = ["db1", "db2", "db3"]
gcache_size = "256M"
databases = ["app"]
users = [{ name = "app", host = "10.0.0.%", password_secret = "db_app", grants = ["ALL PRIVILEGES ON `app`.*"] }]
allow_from = ["web", "192.0.2.7"]

[secrets.db_app]
env = "KILN_TEST_GALERA_MODULE_PW"
"#;

struct Fixture {
    _dir: tempfile::TempDir,
    env: Environment,
    desired: Desired,
    graph: ResourceGraph,
}

fn fixture(env_text: &str) -> Fixture {
    std::env::set_var("KILN_TEST_GALERA_MODULE_PW", "pw-not-in-any-output");
    let repo = Path::new(env!("CARGO_MANIFEST_DIR"));
    let dir = tempfile::tempdir().expect("tempdir");
    std::os::unix::fs::symlink(repo.join("modules"), dir.path().join("modules")).unwrap();
    std::os::unix::fs::symlink(repo.join("templates"), dir.path().join("templates")).unwrap();
    std::fs::create_dir_all(dir.path().join("environments")).unwrap();
    let p = dir.path().join("environments/prod.toml");
    std::fs::write(&p, env_text).unwrap();
    let mut env = Environment::load(&p).unwrap_or_else(|e| panic!("{e}"));
    env.resolve_secrets().unwrap_or_else(|e| panic!("{e}"));
    let hosts = env.select_hosts(None).unwrap();
    let desired = desired::expand(&env, &hosts, None).unwrap_or_else(|e| panic!("{e}"));
    let graph = ResourceGraph::build(&env, &desired).unwrap_or_else(|e| panic!("{e}"));
    Fixture {
        _dir: dir,
        env,
        desired,
        graph,
    }
}

fn file_content(f: &Fixture, host: &str, path: &str) -> String {
    f.desired
        .host(host)
        .unwrap()
        .resources
        .iter()
        .find_map(|r| match &r.kind {
            Kind::File(x) if x.path == path => x.content.clone(),
            _ => None,
        })
        .unwrap_or_else(|| panic!("{host}: no file {path}"))
}

#[test]
fn config_names_every_node_and_binds_to_its_own_address() {
    let f = fixture(ENV);
    let cnf = file_content(&f, "db2", "/etc/mysql/mariadb.conf.d/60-galera.cnf");
    for line in [
        "bind-address = 10.0.0.2",
        "wsrep_on = ON",
        "wsrep_provider = /usr/lib/galera/libgalera_smm.so",
        "wsrep_cluster_name = prod",
        "wsrep_cluster_address = gcomm://10.0.0.1,10.0.0.2,10.0.0.3",
        "wsrep_node_address = 10.0.0.2",
        "wsrep_node_name = db2",
        "wsrep_sst_method = mariabackup",
        "binlog_format = row",
        "innodb_autoinc_lock_mode = 2",
        "wsrep_provider_options = \"gcache.size=256M\"",
    ] {
        assert!(
            cnf.lines().any(|l| l == line),
            "missing {line:?} in:\n{cnf}"
        );
    }
    let nft = file_content(&f, "db1", "/etc/kiln/galera-firewall.nft");
    assert!(
        nft.contains("127.0.0.0/8, 10.0.0.1, 10.0.0.2, 10.0.0.3 }"),
        "{nft}"
    );
    assert!(
        nft.contains("127.0.0.0/8, 10.0.0.2, 10.0.0.3, 10.0.0.9, 192.0.2.7 }"),
        "{nft}"
    );
    assert!(nft.contains("tcp dport { 3306, 4444, 4567, 4568 } drop"));
    // No secret in any rendered file, and the config notifies no service.
    let db1 = f.desired.host("db1").unwrap();
    for r in &db1.resources {
        if r.id.contains("60-galera.cnf") {
            assert!(r.notify.is_empty(), "restarts are the orchestrator's job");
        }
    }
    let g = db1
        .resources
        .iter()
        .find_map(|r| match &r.kind {
            Kind::GaleraNode(g) => Some(g.clone()),
            _ => None,
        })
        .expect("galera_node");
    assert_eq!(g.cluster, "prod");
    assert_eq!(g.nodes, ["db1", "db2", "db3"]);
    assert_eq!(g.users[0].password_secret, "db_app");
    assert_eq!(g.restart_on, ["/etc/mysql/mariadb.conf.d/60-galera.cnf"]);
}

#[test]
fn firewall_can_be_turned_off() {
    let f = fixture(&ENV.replace("allow_from = [", "firewall = false\nallow_from = ["));
    let db1 = f.desired.host("db1").unwrap();
    assert!(!db1.resources.iter().any(|r| r.id.contains("firewall")));
    assert!(!db1.resources.iter().any(|r| r.id == "package:nftables"));
}

fn synced_facts(f: &Fixture, host: &str, digest: Option<&str>) -> HostFacts {
    let mut facts = HostFacts::default();
    facts.packages.insert(
        "mariadb-server".into(),
        PackageFact {
            version: Some("1:10.11.11-0+deb12u1".into()),
            status: "ii".into(),
        },
    );
    // The configuration is on disk as rendered.
    if let Some(d) = f.desired.host(host) {
        for r in &d.resources {
            if let Kind::File(x) = &r.kind {
                facts.paths.insert(
                    x.path.clone(),
                    PathFact {
                        kind: PathKind::File,
                        owner: Some(x.owner.clone()),
                        group: Some(x.group.clone()),
                        mode: Some(x.mode.clone()),
                        size: None,
                        sha256: Some(sha256_hex(x.content.as_deref().unwrap_or("").as_bytes())),
                        matches: None,
                        content: None,
                        link_target: None,
                        ctime: None,
                    },
                );
            }
        }
    }
    facts.galera.insert(
        "prod".into(),
        GaleraFact {
            active_state: "active".into(),
            wsrep_on: Some(true),
            cluster_name: Some("prod".into()),
            cluster_status: Some("Primary".into()),
            local_state: Some("Synced".into()),
            cluster_size: Some(3),
            cluster_state_uuid: Some(UUID.into()),
            databases: vec!["app".into(), "mysql".into()],
            // The module also makes the mysqld exporter's socket-only account.
            users: vec!["app@10.0.0.%".into(), "prometheus@localhost".into()],
            schema_digest: digest.map(String::from),
            ..Default::default()
        },
    );
    facts
}

fn cluster_ops(plan: &Plan) -> Vec<(String, GaleraOp)> {
    steps_of(plan)
        .get("prod")
        .map(|s| s.iter().map(|x| (x.host.clone(), x.op.clone())).collect())
        .unwrap_or_default()
}

fn plans(f: &Fixture, facts: &[HostFacts]) -> Plan {
    let mut hosts: Vec<HostPlan> = (0..f.desired.hosts.len())
        .map(|h| host_plan(&f.desired, &f.graph, h, &facts[h], SEAL_KEY))
        .collect();
    let refs: Vec<Option<&HostFacts>> = facts.iter().map(Some).collect();
    let notes = plan_clusters(&f.desired, &refs, &mut hosts, &f.env.secrets, SEAL_KEY);
    assert!(notes.is_empty(), "{notes:?}");
    Plan {
        format: PLAN_FORMAT,
        kiln_version: "test".into(),
        environment: "prod".into(),
        env_file: "prod.toml".into(),
        created_at: "now".into(),
        hosts,
        targets: None,
    }
}

#[test]
fn bare_hosts_plan_a_first_formation_in_order() {
    let f = fixture(ENV);
    let facts = vec![HostFacts::default(); 4];
    let plan = plans(&f, &facts);
    let steps = &steps_of(&plan)["prod"];
    let ops: Vec<String> = steps
        .iter()
        .map(|s| {
            format!("{} {:?}", s.host, s.op)
                .split(' ')
                .take(2)
                .collect::<Vec<_>>()
                .join(" ")
        })
        .collect();
    assert_eq!(
        ops,
        [
            "db1 Stop",
            "db2 Stop",
            "db3 Stop",
            "db1 Bootstrap",
            "db2 Join",
            "db3 Join",
            "db1 Schema"
        ]
    );
    let text = render_overview(&plan, &kiln::ui::Paint::plain());
    assert!(
        text.contains("4. db1 galera_node[prod]: bootstrap new cluster"),
        "{text}"
    );
    assert!(
        text.contains("6. db3 galera_node[prod]: join (waits for db1, db2)"),
        "{text}"
    );
    let json = serde_json::to_string(&plan).unwrap();
    assert!(!json.contains("pw-not-in-any-output"));
    // A saved plan reads back exactly (`kiln apply plan.json`).
    let back: Plan = serde_json::from_str(&json).expect("saved plan reads back");
    assert_eq!(back, plan);
    // The web host has no cluster step; the db hosts' cluster changes come after their own.
    assert!(plan.hosts[3].changes.is_empty());
    let db1 = &plan.hosts[0];
    let last_own = db1
        .changes
        .iter()
        .rposition(|c| !c.resource.starts_with("galera_node:"))
        .unwrap();
    assert!(db1.changes[last_own + 1..]
        .iter()
        .all(|c| c.resource == "galera_node:prod"));
}

#[test]
fn healthy_cluster_plans_nothing_and_config_change_rolls() {
    let f = fixture(ENV);
    let hosts = ["db1", "db2", "db3", "web"];
    // The digest the spec has: from a plan that needs the schema step.
    let facts: Vec<HostFacts> = hosts.iter().map(|h| synced_facts(&f, h, None)).collect();
    let digest = cluster_ops(&plans(&f, &facts))
        .into_iter()
        .find_map(|(_, op)| match op {
            GaleraOp::Schema { digest, .. } => Some(digest),
            _ => None,
        })
        .expect("schema step without a recorded digest");
    // Converged: files as rendered, cluster Synced, digest recorded → no cluster steps.
    let facts: Vec<HostFacts> = hosts
        .iter()
        .map(|h| synced_facts(&f, h, Some(&digest)))
        .collect();
    assert!(cluster_ops(&plans(&f, &facts)).is_empty());
    // A file written by a run that died before restarting: restarts owed, one at a time.
    let mut owed = facts.clone();
    owed[1].galera.get_mut("prod").unwrap().config_newer = true;
    assert_eq!(
        cluster_ops(&plans(&f, &owed)),
        [("db2".to_string(), GaleraOp::Restart)]
    );
    // A configuration change in the spec rolls through every node, in order.
    let f2 = fixture(&ENV.replace("gcache_size = \"256M\"", "gcache_size = \"512M\""));
    let plan = plans(&f2, &facts);
    assert_eq!(
        cluster_ops(&plan),
        [
            ("db1".to_string(), GaleraOp::Restart),
            ("db2".to_string(), GaleraOp::Restart),
            ("db3".to_string(), GaleraOp::Restart)
        ]
    );
    let text = kiln::plan::render::render_plan(&plan, &kiln::ui::Paint::plain());
    assert!(
        text.contains("2. db2 galera_node[prod]: rolling restart (waits until Synced and the cluster is back to 3; db1, db3 keep quorum)"),
        "{text}"
    );
}

#[test]
fn a_changed_password_plans_the_schema_again_without_showing_it() {
    let f = fixture(ENV);
    let facts: Vec<HostFacts> = ["db1", "db2", "db3", "web"]
        .iter()
        .map(|h| synced_facts(&f, h, Some("an-old-digest")))
        .collect();
    let plan = plans(&f, &facts);
    let steps = &steps_of(&plan)["prod"];
    assert_eq!(steps.len(), 1);
    assert!(matches!(steps[0].op, GaleraOp::Schema { .. }));
    let text = kiln::plan::render::render_plan(&plan, &kiln::ui::Paint::plain());
    assert!(!text.contains("pw-not-in-any-output"));
    assert!(
        text.contains("ensure databases and users: app, app@10.0.0.%"),
        "{text}"
    );
}

#[test]
fn split_brain_refuses_every_node() {
    let f = fixture(ENV);
    let mut facts: Vec<HostFacts> = ["db1", "db2", "db3", "web"]
        .iter()
        .map(|h| synced_facts(&f, h, None))
        .collect();
    facts[2].galera.get_mut("prod").unwrap().cluster_state_uuid = Some("other".into());
    let plan = plans(&f, &facts);
    for h in &plan.hosts[..3] {
        let e = h.error.as_deref().unwrap_or_default();
        assert!(e.starts_with("cluster prod: split brain"), "{e}");
        assert!(h.changes.is_empty());
    }
    assert!(plan.hosts[3].error.is_none());
}

/// Targeted runs and the cluster: `--target 'galera_node:*'` keeps the cluster's steps (and
/// pulls in what the node resource requires); a target elsewhere on the nodes drops them,
/// all of them, never a part of the sequence.
#[test]
fn a_targeted_run_keeps_or_drops_a_clusters_steps_whole() {
    use kiln::plan::build::host_plan_selected;
    use kiln::plan::select::select;
    let f = fixture(ENV);
    let facts = vec![HostFacts::default(); f.desired.hosts.len()];
    let plan_with = |target: &[&str]| {
        let target: Vec<String> = target.iter().map(|s| s.to_string()).collect();
        let sel = select(&f.desired, &f.graph, &target, &[])
            .expect("a valid selection")
            .expect("a selection");
        let mut hosts: Vec<HostPlan> = (0..f.desired.hosts.len())
            .map(|h| host_plan_selected(&f.desired, &f.graph, h, &facts[h], SEAL_KEY, Some(&sel)))
            .collect();
        let refs: Vec<Option<&HostFacts>> = facts.iter().map(Some).collect();
        if sel.keeps_type(&f.desired, "galera_node") {
            plan_clusters(&f.desired, &refs, &mut hosts, &f.env.secrets, SEAL_KEY);
        }
        sel.retain_clusters(&f.desired, &mut hosts);
        (sel, hosts)
    };
    let (sel, hosts) = plan_with(&["galera_node:*"]);
    let steps: usize = hosts
        .iter()
        .flat_map(|h| &h.changes)
        .filter(|c| c.resource.starts_with("galera_node:"))
        .count();
    assert!(steps >= 3, "a first formation of the nodes: {steps} steps");
    assert!(
        sel.targeting
            .pulled_in
            .iter()
            .any(|r| r.ends_with(":package:mariadb-server")),
        "{:?}",
        sel.targeting
    );
    // One node's targeted resource brings the whole cluster.
    let (sel, _) = plan_with(&["galera_node:prod"]);
    assert_eq!(sel.targeting.targeted.len(), 3, "{:?}", sel.targeting);
    // A file the nodes restart on fires the cluster's steps, as a notify fires its handler.
    let (sel, hosts) = plan_with(&["file:/etc/mysql/mariadb.conf.d/60-galera.cnf"]);
    assert!(
        sel.targeting
            .pulled_in
            .iter()
            .any(|r| r.ends_with(":galera_node:prod")),
        "{:?}",
        sel.targeting
    );
    assert!(hosts
        .iter()
        .flat_map(|h| &h.changes)
        .any(|c| c.resource.starts_with("galera_node:")));
    // A target elsewhere on the nodes plans no cluster step.
    let (_, hosts) = plan_with(&["package:mariadb-server"]);
    assert!(hosts
        .iter()
        .flat_map(|h| &h.changes)
        .all(|c| !c.resource.starts_with("galera_node:")));
    assert!(hosts
        .iter()
        .flat_map(|h| &h.changes)
        .any(|c| c.resource == "package:mariadb-server"));
}
