//! The decision, by situation: a Primary component runs (join, then rolling restarts),
//! no node has ever been in a cluster (first formation), or nodes with history are all
//! down (recovery); then the databases and users. Each situation appends its steps to
//! `out` or returns a [`Refusal`].

use std::collections::{BTreeMap, BTreeSet};

use super::node::{classify, has_history, stop_summary, Class};
use super::refusal::{Refusal, RestartCause};
use super::{ClusterSpec, Decided, GaleraOp, NodeInput};
use crate::facts::galera::Grastate;

/// The strict majority rule: `up` nodes of an expected `size` keep quorum.
pub fn keeps_quorum(up: usize, size: usize) -> bool {
    up * 2 > size
}

fn list(hosts: &[&str]) -> String {
    hosts.join(", ")
}

fn step(host: &str, op: GaleraOp, summary: String, reason: Option<String>) -> Decided {
    Decided {
        host: host.to_string(),
        op,
        summary,
        reason,
    }
}

/// Decides the cluster's steps. `nodes` are in the spec's order.
pub fn decide(spec: &ClusterSpec, nodes: &[NodeInput]) -> Result<Vec<Decided>, Refusal> {
    let classes: Vec<Class> = nodes.iter().map(classify).collect::<Result<_, _>>()?;
    let mut out = vec![];
    match primary_component(nodes, &classes)? {
        Some((uuid, members)) => {
            let up = join_primary(nodes, &classes, &uuid, &members, &mut out)?;
            rolling_restart(nodes, &members, up, &mut out)?;
        }
        None => {
            let history: Vec<usize> = (0..nodes.len())
                .filter(|&i| has_history(&nodes[i]) && classes[i] != Class::Fresh)
                .collect();
            if history.is_empty() {
                first_formation(nodes, &classes, &mut out);
            } else {
                recovery(nodes, &classes, &history, &mut out)?;
            }
        }
    }
    schema(spec, nodes, &mut out);
    Ok(out)
}

/// The Primary component, if one runs: its state UUID and hosts. More than one is a
/// split brain.
fn primary_component<'a>(
    nodes: &'a [NodeInput],
    classes: &[Class],
) -> Result<Option<(String, Vec<&'a str>)>, Refusal> {
    let mut primaries: BTreeMap<String, Vec<&str>> = BTreeMap::new();
    for (n, c) in nodes.iter().zip(classes) {
        if let Class::Member {
            uuid,
            primary: true,
        } = c
        {
            primaries.entry(uuid.clone()).or_default().push(&n.host);
        }
    }
    if primaries.len() > 1 {
        return Err(Refusal::SplitBrain {
            components: primaries
                .into_iter()
                .map(|(u, h)| (u, h.into_iter().map(str::to_string).collect()))
                .collect(),
        });
    }
    Ok(primaries.into_iter().next())
}

/// Join: every node outside the running Primary component joins it, one at a time.
/// Returns the nodes up afterwards (members, then joiners).
fn join_primary<'a>(
    nodes: &'a [NodeInput],
    classes: &[Class],
    uuid: &str,
    members: &[&'a str],
    out: &mut Vec<Decided>,
) -> Result<Vec<&'a str>, Refusal> {
    let mut joiners = vec![];
    for (n, c) in nodes.iter().zip(classes) {
        if members.contains(&n.host.as_str()) {
            continue;
        }
        match c {
            Class::Member { uuid: u, .. } => {
                return Err(Refusal::NonPrimaryBesidePrimary {
                    host: n.host.clone(),
                    uuid: u.clone(),
                    primary_hosts: members.iter().map(|h| h.to_string()).collect(),
                    primary_uuid: uuid.to_string(),
                });
            }
            Class::Fresh | Class::Standalone => {
                out.push(step(&n.host, GaleraOp::Stop, stop_summary(c), None));
                joiners.push(n.host.as_str());
            }
            Class::Transitional => joiners.push(n.host.as_str()),
            Class::Stopped => joiners.push(n.host.as_str()),
        }
    }
    let mut up: Vec<&str> = members.to_vec();
    for j in &joiners {
        out.push(step(
            j,
            GaleraOp::Join,
            format!("join the running cluster (waits for {})", list(&up)),
            Some("state transfer from a Synced donor; waits until this node is Synced".into()),
        ));
        up.push(j);
    }
    Ok(up)
}

/// Rolling restart: members whose configuration changed restart one at a time, after the
/// joins (so that quorum counts the joined nodes); refused when it would lose quorum.
fn rolling_restart(
    nodes: &[NodeInput],
    members: &[&str],
    up: Vec<&str>,
    out: &mut Vec<Decided>,
) -> Result<(), Refusal> {
    let size = nodes.len();
    let restarts = nodes.iter().filter(|n| {
        members.contains(&n.host.as_str()) && (n.config_changing || n.fact.config_newer)
    });
    for n in restarts {
        let cause = if n.config_changing {
            RestartCause::ConfigChanging
        } else {
            RestartCause::ConfigNewer
        };
        if size == 1 {
            out.push(step(
                &n.host,
                GaleraOp::Restart,
                "restart the single node (stop, then bootstrap again: the database is down meanwhile)".into(),
                Some(cause.text().into()),
            ));
            continue;
        }
        if !keeps_quorum(up.len() - 1, size) {
            return Err(Refusal::RestartLosesQuorum {
                host: n.host.clone(),
                cause,
                left: up.len() - 1,
                size,
            });
        }
        let others: Vec<&str> = up.iter().copied().filter(|h| *h != n.host).collect();
        out.push(step(
            &n.host,
            GaleraOp::Restart,
            format!(
                "rolling restart (waits until Synced and the cluster is back to {size}; {} keep quorum)",
                list(&others)
            ),
            Some(cause.text().into()),
        ));
    }
    Ok(())
}

/// First formation: no node has been in a cluster. Stop whatever runs, bootstrap the
/// first node of the spec, join the others one at a time.
fn first_formation(nodes: &[NodeInput], classes: &[Class], out: &mut Vec<Decided>) {
    for (n, c) in nodes.iter().zip(classes) {
        if matches!(
            c,
            Class::Fresh | Class::Standalone | Class::Transitional | Class::Member { .. }
        ) {
            out.push(step(&n.host, GaleraOp::Stop, stop_summary(c), None));
        }
    }
    let first = &nodes[0].host;
    out.push(step(
        first,
        GaleraOp::Bootstrap { set_safe: false },
        "bootstrap new cluster (first formation: no node has been in a cluster)".into(),
        None,
    ));
    let mut up = vec![first.as_str()];
    for n in &nodes[1..] {
        out.push(step(
            &n.host,
            GaleraOp::Join,
            format!("join (waits for {})", list(&up)),
            Some("state transfer from a Synced donor; one node at a time".into()),
        ));
        up.push(&n.host);
    }
}

fn grastate(n: &NodeInput) -> Grastate {
    n.fact.grastate.clone().unwrap_or_else(|| Grastate {
        uuid: String::new(),
        seqno: -1,
        safe_to_bootstrap: false,
    })
}

/// Recovery: no node runs a Primary component and some (`history`) have been in the
/// cluster. Nodes without history join at the end like new nodes.
fn recovery(
    nodes: &[NodeInput],
    classes: &[Class],
    history: &[usize],
    out: &mut Vec<Decided>,
) -> Result<(), Refusal> {
    let mut needs_probe = false;
    for &i in history {
        if matches!(classes[i], Class::Transitional | Class::Member { .. }) {
            out.push(step(
                &nodes[i].host,
                GaleraOp::Stop,
                stop_summary(&classes[i]),
                None,
            ));
            needs_probe = true;
        }
    }
    let newcomers: Vec<usize> = (0..nodes.len()).filter(|i| !history.contains(i)).collect();
    for &i in &newcomers {
        if classes[i] != Class::Stopped {
            out.push(step(
                &nodes[i].host,
                GaleraOp::Stop,
                stop_summary(&classes[i]),
                None,
            ));
        }
    }
    let chosen = if needs_probe {
        None
    } else {
        bootstrap_candidate(nodes, history)?
    };
    match chosen {
        Some((best, why, set_safe)) => {
            bootstrap_known(nodes, history, &newcomers, best, why, set_safe, out)
        }
        None => bootstrap_after_probe(nodes, history, &newcomers, needs_probe, out),
    }
    Ok(())
}

/// The node to bootstrap from grastate.dat alone: `(index, why, set_safe)`, or None when
/// a crash left no known position (a probe at apply time decides).
fn bootstrap_candidate(
    nodes: &[NodeInput],
    history: &[usize],
) -> Result<Option<(usize, String, bool)>, Refusal> {
    let gs = |i: usize| grastate(&nodes[i]);
    let safe: Vec<usize> = history
        .iter()
        .copied()
        .filter(|&i| gs(i).safe_to_bootstrap)
        .collect();
    let all_known = history.iter().all(|&i| gs(i).seqno >= 0);
    if !safe.is_empty() {
        let uuids: BTreeSet<String> = safe.iter().map(|&i| gs(i).uuid).collect();
        if uuids.len() > 1 {
            return Err(Refusal::SafeNodesDisagree {
                hosts: safe.iter().map(|&i| nodes[i].host.clone()).collect(),
                uuids: uuids.into_iter().collect(),
            });
        }
        let best = *safe
            .iter()
            .max_by_key(|&&i| (gs(i).seqno, std::cmp::Reverse(i)))
            .expect("non-empty");
        Ok(Some((best, "safe_to_bootstrap: 1".into(), false)))
    } else if all_known {
        let best = *history
            .iter()
            .max_by_key(|&&i| (gs(i).seqno, std::cmp::Reverse(i)))
            .expect("non-empty");
        let top = gs(best).seqno;
        let uuids: BTreeSet<String> = history
            .iter()
            .filter(|&&i| gs(i).seqno == top)
            .map(|&i| gs(i).uuid)
            .collect();
        if uuids.len() > 1 {
            return Err(Refusal::TopSeqnoDisagree {
                seqno: top,
                uuids: uuids.into_iter().collect(),
            });
        }
        Ok(Some((
            best,
            format!(
                "highest seqno {top} in grastate.dat, no node has safe_to_bootstrap: 1; sets it"
            ),
            true,
        )))
    } else {
        Ok(None)
    }
}

/// Recovery with a known candidate: bootstrap it, then the others with history, then the
/// newcomers, one at a time.
fn bootstrap_known(
    nodes: &[NodeInput],
    history: &[usize],
    newcomers: &[usize],
    best: usize,
    why: String,
    set_safe: bool,
    out: &mut Vec<Decided>,
) {
    out.push(step(
        &nodes[best].host,
        GaleraOp::Bootstrap { set_safe },
        format!("bootstrap the cluster again ({why})"),
        Some("no node is running; the executor re-checks that no Primary component exists right before".into()),
    ));
    let mut up = vec![nodes[best].host.as_str()];
    for &i in history.iter().filter(|&&i| i != best) {
        out.push(step(
            &nodes[i].host,
            GaleraOp::Join,
            format!("join (waits for {})", list(&up)),
            Some("incremental or full state transfer from a Synced donor".into()),
        ));
        up.push(&nodes[i].host);
    }
    for &i in newcomers {
        out.push(step(
            &nodes[i].host,
            GaleraOp::Join,
            format!("join as a new node (waits for {})", list(&up)),
            Some("full state transfer from a Synced donor".into()),
        ));
        up.push(&nodes[i].host);
    }
}

/// Recovery without a known candidate: read every position with `galera_recovery` at
/// apply time, bootstrap the highest, join the rest; newcomers last.
fn bootstrap_after_probe(
    nodes: &[NodeInput],
    history: &[usize],
    newcomers: &[usize],
    needs_probe: bool,
    out: &mut Vec<Decided>,
) {
    let why = if needs_probe {
        "nodes had to be stopped, so their final positions are known only then"
    } else {
        "a crash left seqno: -1 and no safe_to_bootstrap"
    };
    for &i in history {
        out.push(step(
            &nodes[i].host,
            GaleraOp::Recover,
            format!(
                "read the last committed position with galera_recovery (grastate seqno {})",
                grastate(&nodes[i]).seqno
            ),
            Some(format!("recovery after an outage: {why}")),
        ));
    }
    let candidates: Vec<String> = history.iter().map(|&i| nodes[i].host.clone()).collect();
    let first = nodes[history[0]].host.clone();
    out.push(step(
        &first,
        GaleraOp::StartRecovered {
            candidates: candidates.clone(),
        },
        format!(
            "bootstrap the node with the highest recovered seqno among {} (decided by the probe at apply time; ties: the first listed), then join the others one at a time",
            candidates.join(", ")
        ),
        Some("sets safe_to_bootstrap: 1 on that node only; the executor re-checks that no Primary component exists right before".into()),
    ));
    let mut waits = candidates.join(", ");
    for &i in newcomers {
        out.push(step(
            &nodes[i].host,
            GaleraOp::Join,
            format!("join as a new node (waits for {waits})"),
            Some("full state transfer from a Synced donor".into()),
        ));
        waits.push_str(&format!(", {}", nodes[i].host));
    }
}

/// Databases and users: one step when what kiln last ensured (the recorded digest)
/// differs from the spec, or a Synced node lacks one of them.
fn schema(spec: &ClusterSpec, nodes: &[NodeInput], out: &mut Vec<Decided>) {
    if spec.databases.is_empty() && spec.users.is_empty() {
        return;
    }
    let recorded = nodes
        .iter()
        .any(|n| n.fact.schema_digest.as_deref() == Some(spec.schema_digest.as_str()));
    let missing: Vec<String> = nodes
        .iter()
        .find(|n| n.fact.synced() && n.installed)
        .map(|n| {
            let mut m: Vec<String> = spec
                .databases
                .iter()
                .filter(|d| !n.fact.databases.contains(d))
                .map(|d| format!("database {d}"))
                .collect();
            m.extend(
                spec.users
                    .iter()
                    .filter(|u| !n.fact.users.contains(&format!("{}@{}", u.name, u.host)))
                    .map(|u| format!("user {}@{}", u.name, u.host)),
            );
            m
        })
        .unwrap_or_default();
    if recorded && missing.is_empty() {
        return;
    }
    let what = if !missing.is_empty() {
        format!("missing: {}", missing.join(", "))
    } else {
        "databases, users, grants or passwords differ from what kiln last ensured".into()
    };
    let mut names: Vec<String> = spec.databases.clone();
    names.extend(spec.users.iter().map(|u| format!("{}@{}", u.name, u.host)));
    out.push(step(
        &nodes[0].host,
        GaleraOp::Schema {
            databases: spec.databases.clone(),
            users: spec.users.clone(),
            digest: spec.schema_digest.clone(),
        },
        format!(
            "ensure databases and users: {} (passwords from secrets, on a Synced node)",
            names.join(", ")
        ),
        Some(what),
    ));
}
