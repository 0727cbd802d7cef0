//! Decisions by situation, refusals, and the schema digest.

use super::*;
use crate::facts::galera::Grastate;

const U: &str = "5f0b2b6e-1111-11ef-9a00-0123456789ab";
const V: &str = "7a7a7a7a-2222-11ef-9a00-0123456789ab";

fn spec() -> ClusterSpec {
    ClusterSpec {
        name: "lab".into(),
        ..Default::default()
    }
}

fn node(host: &str) -> NodeInput {
    NodeInput {
        host: host.into(),
        fact: GaleraFact {
            active_state: "inactive".into(),
            ..Default::default()
        },
        installed: true,
        config_changing: false,
    }
}
fn fresh(host: &str) -> NodeInput {
    NodeInput {
        installed: false,
        ..node(host)
    }
}
fn standalone(host: &str) -> NodeInput {
    let mut n = node(host);
    n.fact.active_state = "active".into();
    n.fact.wsrep_on = Some(false);
    n.fact.cluster_status = Some("Disconnected".into());
    n
}
fn synced(host: &str, uuid: &str, size: u32) -> NodeInput {
    let mut n = node(host);
    n.fact.active_state = "active".into();
    n.fact.wsrep_on = Some(true);
    n.fact.cluster_status = Some("Primary".into());
    n.fact.local_state = Some("Synced".into());
    n.fact.cluster_size = Some(size);
    n.fact.cluster_state_uuid = Some(uuid.into());
    n.fact.grastate = Some(Grastate {
        uuid: uuid.into(),
        seqno: -1,
        safe_to_bootstrap: false,
    });
    n
}
fn non_primary(host: &str, uuid: &str) -> NodeInput {
    let mut n = synced(host, uuid, 1);
    n.fact.cluster_status = Some("non-Primary".into());
    n.fact.local_state = Some("Initialized".into());
    n
}
fn stopped(host: &str, uuid: &str, seqno: i64, safe: bool) -> NodeInput {
    let mut n = node(host);
    n.fact.grastate = Some(Grastate {
        uuid: uuid.into(),
        seqno,
        safe_to_bootstrap: safe,
    });
    n
}

/// `host op` per step, for compact assertions.
fn ops(d: &[Decided]) -> Vec<String> {
    d.iter()
        .map(|s| {
            let op = match &s.op {
                GaleraOp::Stop => "stop".to_string(),
                GaleraOp::Bootstrap { set_safe } => {
                    if *set_safe {
                        "bootstrap+safe".into()
                    } else {
                        "bootstrap".into()
                    }
                }
                GaleraOp::Recover => "recover".into(),
                GaleraOp::StartRecovered { candidates } => {
                    format!("start-recovered({})", candidates.join(","))
                }
                GaleraOp::Join => "join".into(),
                GaleraOp::Restart => "restart".into(),
                GaleraOp::Schema { .. } => "schema".into(),
            };
            format!("{} {op}", s.host)
        })
        .collect()
}

fn ok(nodes: &[NodeInput]) -> Vec<String> {
    ops(&decide(&spec(), nodes).unwrap())
}

#[test]
fn healthy_cluster_needs_nothing() {
    let n = [
        synced("db1", U, 3),
        synced("db2", U, 3),
        synced("db3", U, 3),
    ];
    assert!(ok(&n).is_empty());
}

#[test]
fn first_formation_on_bare_hosts() {
    let n = [fresh("db1"), fresh("db2"), fresh("db3")];
    assert_eq!(
        ok(&n),
        [
            "db1 stop",
            "db2 stop",
            "db3 stop",
            "db1 bootstrap",
            "db2 join",
            "db3 join"
        ]
    );
    let d = decide(&spec(), &n).unwrap();
    assert!(d[3].summary.contains("bootstrap new cluster"));
    assert_eq!(d[5].summary, "join (waits for db1, db2)");
}

#[test]
fn first_formation_from_standalone_servers() {
    let n = [standalone("db1"), standalone("db2"), node("db3")];
    assert_eq!(
        ok(&n),
        [
            "db1 stop",
            "db2 stop",
            "db1 bootstrap",
            "db2 join",
            "db3 join"
        ]
    );
}

#[test]
fn single_node_formation() {
    assert_eq!(ok(&[fresh("db1")]), ["db1 stop", "db1 bootstrap"]);
}

#[test]
fn stopped_and_new_nodes_join_a_running_primary() {
    let n = [
        synced("db1", U, 1),
        stopped("db2", U, 10, false),
        fresh("db3"),
    ];
    assert_eq!(ok(&n), ["db3 stop", "db2 join", "db3 join"]);
    let d = decide(&spec(), &n).unwrap();
    assert_eq!(
        d[2].summary,
        "join the running cluster (waits for db1, db2)"
    );
}

#[test]
fn a_node_stuck_starting_beside_a_primary_joins() {
    let mut s = node("db3");
    s.fact.active_state = "activating".into();
    let n = [synced("db1", U, 2), synced("db2", U, 2), s];
    assert_eq!(ok(&n), ["db3 join"]);
}

#[test]
fn never_bootstraps_when_a_primary_runs_even_if_others_are_safe() {
    let n = [
        stopped("db1", U, 50, true),
        synced("db2", U, 1),
        stopped("db3", U, 40, false),
    ];
    let steps = ok(&n);
    assert!(!steps.iter().any(|s| s.contains("bootstrap")), "{steps:?}");
    assert_eq!(steps, ["db1 join", "db3 join"]);
}

#[test]
fn clean_stop_of_all_bootstraps_the_safe_node() {
    let n = [
        stopped("db1", U, 40, false),
        stopped("db2", U, 41, false),
        stopped("db3", U, 42, true),
    ];
    assert_eq!(ok(&n), ["db3 bootstrap", "db1 join", "db2 join"]);
    let d = decide(&spec(), &n).unwrap();
    assert!(
        d[0].summary.contains("safe_to_bootstrap: 1"),
        "{}",
        d[0].summary
    );
}

#[test]
fn without_safe_flag_the_highest_known_seqno_bootstraps() {
    let n = [
        stopped("db1", U, 40, false),
        stopped("db2", U, 44, false),
        stopped("db3", U, 44, false),
    ];
    assert_eq!(ok(&n), ["db2 bootstrap+safe", "db1 join", "db3 join"]);
    assert!(decide(&spec(), &n).unwrap()[0]
        .summary
        .contains("highest seqno 44"));
}

#[test]
fn crash_needs_a_recovery_probe() {
    let n = [
        stopped("db1", U, -1, false),
        stopped("db2", U, -1, false),
        stopped("db3", U, 12, false),
    ];
    assert_eq!(
        ok(&n),
        [
            "db1 recover",
            "db2 recover",
            "db3 recover",
            "db1 start-recovered(db1,db2,db3)"
        ]
    );
}

#[test]
fn lost_quorum_stops_then_probes() {
    // db1 was killed; db2 and db3 remain running but non-Primary.
    let n = [
        stopped("db1", U, -1, false),
        non_primary("db2", U),
        non_primary("db3", U),
    ];
    assert_eq!(
        ok(&n),
        [
            "db2 stop",
            "db3 stop",
            "db1 recover",
            "db2 recover",
            "db3 recover",
            "db1 start-recovered(db1,db2,db3)"
        ]
    );
}

#[test]
fn nodes_stuck_activating_after_a_full_outage_are_stopped_and_probed() {
    let mut a = stopped("db1", U, -1, false);
    a.fact.active_state = "activating".into();
    let mut b = stopped("db2", U, -1, false);
    b.fact.active_state = "activating".into();
    let n = [a, b, stopped("db3", U, 7, true)];
    let steps = ok(&n);
    assert_eq!(steps[..2], ["db1 stop", "db2 stop"]);
    assert!(steps.last().unwrap().contains("start-recovered"));
}

#[test]
fn recovery_with_a_new_node_joins_it_last() {
    let n = [
        stopped("db1", U, 5, true),
        fresh("db2"),
        stopped("db3", U, 5, false),
    ];
    assert_eq!(
        ok(&n),
        ["db2 stop", "db1 bootstrap", "db3 join", "db2 join"]
    );
}

#[test]
fn split_brain_is_refused() {
    let n = [
        synced("db1", U, 1),
        synced("db2", V, 2),
        synced("db3", V, 2),
    ];
    let r = decide(&spec(), &n).unwrap_err();
    assert!(matches!(&r, Refusal::SplitBrain { components } if components.len() == 2));
    let e = r.to_string();
    assert!(e.contains("split brain"), "{e}");
    assert!(e.contains("db1") && e.contains("db2, db3"), "{e}");
    assert_eq!(
        e,
        format!("split brain: 2 Primary components with different state UUIDs (db1 on {U}; db2, db3 on {V}); refusing to touch the cluster — decide by hand which side keeps its data")
    );
}

#[test]
fn non_primary_beside_primary_is_refused() {
    let n = [
        synced("db1", U, 2),
        synced("db2", U, 2),
        non_primary("db3", V),
    ];
    let r = decide(&spec(), &n).unwrap_err();
    assert!(matches!(&r, Refusal::NonPrimaryBesidePrimary { host, .. } if host == "db3"));
    let e = r.to_string();
    assert!(e.contains("non-Primary") && e.contains("db3"), "{e}");
    assert_eq!(
        e,
        format!("db3 runs in a non-Primary component (state UUID {V}) while db1, db2 form the Primary one ({U}): a network partition? refusing; check connectivity, or stop db3 by hand")
    );
}

#[test]
fn unreadable_running_server_is_refused() {
    let mut n = synced("db1", U, 1);
    n.fact.sql_error = true;
    n.fact.wsrep_on = None;
    let r = decide(&spec(), &[n]).unwrap_err();
    assert_eq!(r, Refusal::Unreadable { host: "db1".into() });
    assert!(r.to_string().contains("cannot be read"));
    assert_eq!(
        r.to_string(),
        "db1: mariadb is active but its wsrep status cannot be read over the unix socket as root; refusing to guess"
    );
}

#[test]
fn safe_nodes_of_different_clusters_are_refused() {
    let n = [stopped("db1", U, 5, true), stopped("db2", V, 9, true)];
    let r = decide(&spec(), &n).unwrap_err();
    assert!(matches!(r, Refusal::SafeNodesDisagree { .. }));
    assert!(r.to_string().contains("different state UUIDs"));
    assert_eq!(
        r.to_string(),
        format!("db1, db2 each have safe_to_bootstrap: 1 but different state UUIDs ({U}, {V}); refusing to pick one")
    );
    let n = [stopped("db1", U, 9, false), stopped("db2", V, 9, false)];
    let r = decide(&spec(), &n).unwrap_err();
    assert!(matches!(r, Refusal::TopSeqnoDisagree { seqno: 9, .. }));
    assert!(r.to_string().contains("different state UUIDs"));
    assert_eq!(
        r.to_string(),
        format!("the nodes with the highest seqno 9 have different state UUIDs ({U}, {V}); refusing to pick one")
    );
}

#[test]
fn config_change_rolls_one_node_at_a_time() {
    let mut n = [
        synced("db1", U, 3),
        synced("db2", U, 3),
        synced("db3", U, 3),
    ];
    for x in n.iter_mut() {
        x.config_changing = true;
    }
    assert_eq!(ok(&n), ["db1 restart", "db2 restart", "db3 restart"]);
    let d = decide(&spec(), &n).unwrap();
    assert!(
        d[1].summary.contains("db1, db3 keep quorum"),
        "{}",
        d[1].summary
    );
}

#[test]
fn config_newer_than_server_is_a_restart_owed() {
    let mut n = [
        synced("db1", U, 3),
        synced("db2", U, 3),
        synced("db3", U, 3),
    ];
    n[2].fact.config_newer = true;
    assert_eq!(ok(&n), ["db3 restart"]);
    assert!(decide(&spec(), &n).unwrap()[0]
        .reason
        .as_deref()
        .unwrap()
        .contains("earlier run"));
}

#[test]
fn restart_that_would_lose_quorum_is_refused() {
    // Two-node cluster: taking one down leaves 1 of 2.
    let mut n = [synced("db1", U, 2), synced("db2", U, 2)];
    n[0].config_changing = true;
    let r = decide(&spec(), &n).unwrap_err();
    assert_eq!(
        r,
        Refusal::RestartLosesQuorum {
            host: "db1".into(),
            cause: RestartCause::ConfigChanging,
            left: 1,
            size: 2
        }
    );
    let e = r.to_string();
    assert!(e.contains("lose quorum"), "{e}");
    assert_eq!(
        e,
        "db1 needs a restart (its configuration changes in this plan), but taking it down would leave 1 of 2 nodes: no majority, the cluster would lose quorum; refusing (bring the missing nodes back first, or run 3 nodes: a 2-node cluster cannot roll a restart)"
    );
    // Five nodes with two down and not coming back in this plan cannot happen (they
    // join first), so check the arithmetic directly.
    assert!(keeps_quorum(2, 3));
    assert!(!keeps_quorum(1, 3));
    assert!(!keeps_quorum(2, 4));
    assert!(keeps_quorum(3, 5));
}

#[test]
fn joins_come_before_restarts_so_quorum_counts_them() {
    let mut n = [
        synced("db1", U, 2),
        synced("db2", U, 2),
        stopped("db3", U, 3, false),
    ];
    n[0].config_changing = true;
    n[1].config_changing = true;
    assert_eq!(ok(&n), ["db3 join", "db1 restart", "db2 restart"]);
}

#[test]
fn single_node_restart_is_stop_and_bootstrap() {
    let mut n = synced("db1", U, 1);
    n.config_changing = true;
    let d = decide(&spec(), &[n]).unwrap();
    assert_eq!(ops(&d), ["db1 restart"]);
    assert!(d[0].summary.contains("single node"));
}

fn schema_spec(digest: &str) -> ClusterSpec {
    ClusterSpec {
        name: "lab".into(),
        databases: vec!["app".into()],
        users: vec![GaleraUser {
            name: "app".into(),
            host: "10.%".into(),
            password_secret: "db_app".into(),
            grants: vec!["ALL PRIVILEGES ON `app`.*".into()],
        }],
        schema_digest: digest.into(),
    }
}

#[test]
fn schema_after_formation_and_not_again() {
    let n = [fresh("db1"), fresh("db2")];
    let d = decide(&schema_spec("d1"), &n).unwrap();
    assert_eq!(ops(&d).last().unwrap(), "db1 schema");
    let mut done = [synced("db1", U, 2), synced("db2", U, 2)];
    for x in done.iter_mut() {
        x.fact.databases = vec!["app".into(), "mysql".into()];
        x.fact.users = vec!["app@10.%".into(), "root@localhost".into()];
        x.fact.schema_digest = Some("d1".into());
    }
    assert!(decide(&schema_spec("d1"), &done).unwrap().is_empty());
    // A changed password (another digest) or a dropped database plans it again.
    assert_eq!(
        ops(&decide(&schema_spec("d2"), &done).unwrap()),
        ["db1 schema"]
    );
    done[0].fact.databases = vec!["mysql".into()];
    let d = decide(&schema_spec("d1"), &done).unwrap();
    assert!(d[0].reason.as_deref().unwrap().contains("database app"));
}

#[test]
fn schema_digest_is_keyed_and_needs_the_secret() {
    let mut secrets = BTreeMap::new();
    secrets.insert("db_app".to_string(), crate::spec::SecretValue::new("pw-1"));
    let s = schema_spec("");
    let a = schema_digest(b"k1", &s.databases, &s.users, &secrets).unwrap();
    let b = schema_digest(b"k2", &s.databases, &s.users, &secrets).unwrap();
    assert_ne!(a, b);
    assert!(!a.contains("pw-1"));
    secrets.insert("db_app".to_string(), crate::spec::SecretValue::new("pw-2"));
    assert_ne!(
        a,
        schema_digest(b"k1", &s.databases, &s.users, &secrets).unwrap()
    );
    assert!(
        schema_digest(b"k1", &s.databases, &s.users, &BTreeMap::new())
            .unwrap_err()
            .contains("db_app")
    );
}
