//! MariaDB Galera: the cluster plan.
//!
//! [`decide`] looks at every node's [`GaleraFact`] and returns the ordered steps that bring
//! the cluster to "all N nodes Synced in one Primary component":
//!
//! * nothing, when that is already so (and no restart is owed);
//! * **first formation** — no node has ever been in a cluster: stop the standalone servers
//!   Debian's package started, bootstrap exactly one node (the first in `nodes`), join the
//!   others one at a time;
//! * **join** — a Primary component runs: stopped, new or standalone nodes join it one at a
//!   time;
//! * **recovery** — no node runs: the node with `safe_to_bootstrap: 1` bootstraps; without
//!   one, the highest `seqno` in `grastate.dat`; after a crash (`seqno: -1`) every node's
//!   position is read with `galera_recovery` at apply time (a second probe) and the highest
//!   bootstraps; then the others join;
//! * **rolling restart** — nodes whose configuration changed restart one at a time, each
//!   waiting until it is Synced and the cluster is back to full size; refused when taking a
//!   node down would leave less than a majority of the expected size;
//! * **refusal** — states a tool must not guess about: two Primary components with
//!   different UUIDs, a node running in a non-Primary component beside a Primary one, a
//!   running server whose state cannot be read, bootstrap candidates with different UUIDs.
//!
//! Then, when the databases and users kiln last ensured (a keyed digest recorded on the
//! nodes) differ from the spec, or a Synced node lacks one of them, one step ensures them.
//!
//! The executor (`ops::galera`) re-checks the live state before every bootstrap: a node
//! that is already in a Primary component is never bootstrapped again.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write;

use serde::{Deserialize, Serialize};

use crate::desired::Desired;
use crate::facts::galera::GaleraFact;
use crate::facts::{FactQuery, HostFacts};
use crate::plan::{Action, Change, HostPlan, Plan, Step};
use crate::resource::galera::{GaleraNode, GaleraUser};
use crate::resource::Kind;
use crate::ui::Paint;

/// The UUID of a node that never joined a cluster.
pub const NIL_UUID: &str = "00000000-0000-0000-0000-000000000000";

/// One step of a cluster plan, carried by a change of the host it runs on.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GaleraStep {
    pub cluster: String,
    /// 1-based position in the cluster's plan; the executor runs steps in this order.
    pub seq: u32,
    pub total: u32,
    pub host: String,
    /// Every node (host names), in the spec's order; the expected size is its length.
    pub nodes: Vec<String>,
    /// (`Step` is tagged by `op` already, hence another name in JSON.)
    #[serde(rename = "cluster_op")]
    pub op: GaleraOp,
}

impl GaleraStep {
    /// The host(s) the step is about, for output: a recovery start names its candidates.
    pub fn who(&self) -> String {
        match &self.op {
            GaleraOp::StartRecovered { candidates } => candidates.join(", "),
            _ => self.host.clone(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "action", rename_all = "snake_case")]
pub enum GaleraOp {
    /// `systemctl stop mariadb`.
    Stop,
    /// `galera_new_cluster` here, after re-checking that no node is in a Primary component.
    /// `set_safe`: mark `safe_to_bootstrap: 1` first (chosen by seqno, not by Galera).
    Bootstrap { set_safe: bool },
    /// Read the node's last committed position with `galera_recovery` (server stopped).
    Recover,
    /// After the `Recover` steps: bootstrap the candidate with the highest recovered seqno
    /// (ties: the first in `nodes`), then join the other candidates one at a time.
    StartRecovered { candidates: Vec<String> },
    /// Start the server so that it joins the Primary component; wait until Synced.
    Join,
    /// Restart one node of a running cluster; refused unless all others are Synced and
    /// the cluster is at full size. A single-node cluster is stopped and bootstrapped.
    Restart,
    /// Create databases and users (passwords from the named secrets, at apply time) on a
    /// Synced node, then record `digest` on every node.
    Schema {
        databases: Vec<String>,
        users: Vec<GaleraUser>,
        digest: String,
    },
}

/// What the decision needs about one node.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct NodeInput {
    pub host: String,
    pub fact: GaleraFact,
    /// `mariadb-server` is installed now (when not, the plan installs it and the package
    /// starts a standalone server).
    pub installed: bool,
    /// A `restart_on` file changes in this plan.
    pub config_changing: bool,
}

/// What the cluster should look like.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ClusterSpec {
    pub name: String,
    pub databases: Vec<String>,
    pub users: Vec<GaleraUser>,
    /// Keyed digest of databases and users (passwords included); see [`schema_digest`].
    pub schema_digest: String,
}

/// One decided step, before it is placed into host plans.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decided {
    pub host: String,
    pub op: GaleraOp,
    pub summary: String,
    pub reason: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Class {
    /// Not installed yet: the package starts a standalone server in this apply.
    Fresh,
    /// Running without wsrep.
    Standalone,
    /// Running with wsrep.
    Member {
        uuid: String,
        primary: bool,
    },
    /// `activating`/`deactivating`: typically hung trying to join without a Primary.
    Transitional,
    Stopped,
}

fn classify(n: &NodeInput) -> Result<Class, String> {
    let f = &n.fact;
    if !n.installed {
        return Ok(Class::Fresh);
    }
    match f.active_state.as_str() {
        "active" | "reloading" => {
            if f.sql_error {
                return Err(format!(
                    "{}: mariadb is active but its wsrep status cannot be read over the unix socket as root; refusing to guess",
                    n.host
                ));
            }
            if f.wsrep_on == Some(true)
                && f.cluster_status.as_deref() != Some("Disconnected")
                && f.cluster_status.is_some()
            {
                Ok(Class::Member {
                    uuid: f.cluster_state_uuid.clone().unwrap_or_default(),
                    primary: f.cluster_status.as_deref() == Some("Primary"),
                })
            } else {
                Ok(Class::Standalone)
            }
        }
        "activating" | "deactivating" => Ok(Class::Transitional),
        _ => Ok(Class::Stopped),
    }
}

/// A node that has been part of a cluster (its grastate names a real cluster UUID).
fn has_history(n: &NodeInput) -> bool {
    n.fact
        .grastate
        .as_ref()
        .map(|g| !g.uuid.is_empty() && g.uuid != NIL_UUID)
        .unwrap_or(false)
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

fn stop_summary(c: &Class) -> String {
    match c {
        Class::Fresh => "stop the standalone server the package starts when it installs".into(),
        Class::Standalone => {
            "stop the standalone server (started without wsrep; a state transfer replaces its data when it joins)"
                .into()
        }
        Class::Transitional => {
            "stop mariadb (stuck starting: it cannot join without a Primary component)".into()
        }
        Class::Member { .. } => "stop mariadb (running in a non-Primary component)".into(),
        Class::Stopped => "stop mariadb".into(),
    }
}

/// The strict majority rule: `up` nodes of an expected `size` keep quorum.
pub fn keeps_quorum(up: usize, size: usize) -> bool {
    up * 2 > size
}

/// Decides the cluster's steps. `nodes` are in the spec's order.
pub fn decide(spec: &ClusterSpec, nodes: &[NodeInput]) -> Result<Vec<Decided>, String> {
    let size = nodes.len();
    let classes: Vec<Class> = nodes.iter().map(classify).collect::<Result<_, _>>()?;
    let mut out = vec![];

    // Primary components by UUID.
    let mut primaries: BTreeMap<String, Vec<&str>> = BTreeMap::new();
    for (n, c) in nodes.iter().zip(&classes) {
        if let Class::Member {
            uuid,
            primary: true,
        } = c
        {
            primaries.entry(uuid.clone()).or_default().push(&n.host);
        }
    }
    if primaries.len() > 1 {
        let parts: Vec<String> = primaries
            .iter()
            .map(|(u, h)| format!("{} on {u}", list(h)))
            .collect();
        return Err(format!(
            "split brain: {} Primary components with different state UUIDs ({}); refusing to touch the cluster — decide by hand which side keeps its data",
            primaries.len(),
            parts.join("; ")
        ));
    }

    if let Some((uuid, members)) = primaries.into_iter().next() {
        // A Primary component runs: everyone else joins it, then owed restarts roll.
        let mut joiners = vec![];
        for (n, c) in nodes.iter().zip(&classes) {
            if members.contains(&n.host.as_str()) {
                continue;
            }
            match c {
                Class::Member { uuid: u, .. } => {
                    return Err(format!(
                        "{} runs in a non-Primary component (state UUID {u}) while {} form the Primary one ({uuid}): a network partition? refusing; check connectivity, or stop {} by hand",
                        n.host,
                        list(&members),
                        n.host
                    ));
                }
                Class::Fresh | Class::Standalone => {
                    out.push(step(&n.host, GaleraOp::Stop, stop_summary(c), None));
                    joiners.push(n.host.as_str());
                }
                Class::Transitional => joiners.push(n.host.as_str()),
                Class::Stopped => joiners.push(n.host.as_str()),
            }
        }
        let mut up: Vec<&str> = members.clone();
        for j in &joiners {
            out.push(step(
                j,
                GaleraOp::Join,
                format!("join the running cluster (waits for {})", list(&up)),
                Some("state transfer from a Synced donor; waits until this node is Synced".into()),
            ));
            up.push(j);
        }
        let restarts: Vec<&NodeInput> = nodes
            .iter()
            .filter(|n| {
                members.contains(&n.host.as_str()) && (n.config_changing || n.fact.config_newer)
            })
            .collect();
        for n in restarts {
            let why = if n.config_changing {
                "its configuration changes in this plan"
            } else {
                "its configuration changed after the server started (an earlier run did not restart it)"
            };
            if size == 1 {
                out.push(step(
                    &n.host,
                    GaleraOp::Restart,
                    "restart the single node (stop, then bootstrap again: the database is down meanwhile)".into(),
                    Some(why.into()),
                ));
                continue;
            }
            if !keeps_quorum(up.len() - 1, size) {
                return Err(format!(
                    "{} needs a restart ({why}), but taking it down would leave {} of {size} nodes: no majority, the cluster would lose quorum; refusing (bring the missing nodes back first{})",
                    n.host,
                    up.len() - 1,
                    if size == 2 { ", or run 3 nodes: a 2-node cluster cannot roll a restart" } else { "" }
                ));
            }
            let others: Vec<&str> = up.iter().copied().filter(|h| *h != n.host).collect();
            out.push(step(
                &n.host,
                GaleraOp::Restart,
                format!(
                    "rolling restart (waits until Synced and the cluster is back to {size}; {} keep quorum)",
                    list(&others)
                ),
                Some(why.into()),
            ));
        }
    } else {
        // No Primary component anywhere.
        let history: Vec<usize> = (0..size)
            .filter(|&i| has_history(&nodes[i]) && classes[i] != Class::Fresh)
            .collect();
        if history.is_empty() {
            // First formation.
            for (n, c) in nodes.iter().zip(&classes) {
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
        } else {
            // Recovery. Nodes without history join at the end like new nodes.
            let mut needs_probe = false;
            for &i in &history {
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
            let newcomers: Vec<usize> = (0..size).filter(|i| !history.contains(i)).collect();
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
            let gs =
                |i: usize| {
                    nodes[i].fact.grastate.clone().unwrap_or_else(|| {
                        crate::facts::galera::Grastate {
                            uuid: String::new(),
                            seqno: -1,
                            safe_to_bootstrap: false,
                        }
                    })
                };
            let safe: Vec<usize> = history
                .iter()
                .copied()
                .filter(|&i| gs(i).safe_to_bootstrap)
                .collect();
            let all_known = history.iter().all(|&i| gs(i).seqno >= 0);
            let chosen: Option<(usize, String, bool)> = if needs_probe {
                None
            } else if !safe.is_empty() {
                let uuids: BTreeSet<String> = safe.iter().map(|&i| gs(i).uuid).collect();
                if uuids.len() > 1 {
                    return Err(format!(
                        "{} each have safe_to_bootstrap: 1 but different state UUIDs ({}); refusing to pick one",
                        list(&safe.iter().map(|&i| nodes[i].host.as_str()).collect::<Vec<_>>()),
                        uuids.into_iter().collect::<Vec<_>>().join(", ")
                    ));
                }
                let best = *safe
                    .iter()
                    .max_by_key(|&&i| (gs(i).seqno, std::cmp::Reverse(i)))
                    .expect("non-empty");
                Some((best, "safe_to_bootstrap: 1".into(), false))
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
                    return Err(format!(
                        "the nodes with the highest seqno {top} have different state UUIDs ({}); refusing to pick one",
                        uuids.into_iter().collect::<Vec<_>>().join(", ")
                    ));
                }
                Some((
                    best,
                    format!(
                        "highest seqno {top} in grastate.dat, no node has safe_to_bootstrap: 1; sets it"
                    ),
                    true,
                ))
            } else {
                None
            };
            match chosen {
                Some((best, why, set_safe)) => {
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
                    for &i in &newcomers {
                        out.push(step(
                            &nodes[i].host,
                            GaleraOp::Join,
                            format!("join as a new node (waits for {})", list(&up)),
                            Some("full state transfer from a Synced donor".into()),
                        ));
                        up.push(&nodes[i].host);
                    }
                }
                None => {
                    let why = if needs_probe {
                        "nodes had to be stopped, so their final positions are known only then"
                    } else {
                        "a crash left seqno: -1 and no safe_to_bootstrap"
                    };
                    for &i in &history {
                        out.push(step(
                            &nodes[i].host,
                            GaleraOp::Recover,
                            format!(
                                "read the last committed position with galera_recovery (grastate seqno {})",
                                gs(i).seqno
                            ),
                            Some(format!("recovery after an outage: {why}")),
                        ));
                    }
                    let candidates: Vec<String> =
                        history.iter().map(|&i| nodes[i].host.clone()).collect();
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
                    for &i in &newcomers {
                        out.push(step(
                            &nodes[i].host,
                            GaleraOp::Join,
                            format!("join as a new node (waits for {waits})"),
                            Some("full state transfer from a Synced donor".into()),
                        ));
                        waits.push_str(&format!(", {}", nodes[i].host));
                    }
                }
            }
        }
    }

    // Databases and users.
    if !spec.databases.is_empty() || !spec.users.is_empty() {
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
        if !recorded || !missing.is_empty() {
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
    }
    Ok(out)
}

/// Keyed digest of the databases and users (passwords included), so that a changed
/// password is noticed without any hash of it that could be brute-forced.
pub fn schema_digest(
    key: &[u8],
    databases: &[String],
    users: &[GaleraUser],
    secrets: &BTreeMap<String, crate::spec::SecretValue>,
) -> Result<String, String> {
    let mut users_json = vec![];
    for u in users {
        let pw = secrets.get(&u.password_secret).ok_or_else(|| {
            format!(
                "user {}@{}: secret `{}` is not defined in the environment's [secrets]",
                u.name, u.host, u.password_secret
            )
        })?;
        users_json.push(serde_json::json!({
            "name": u.name, "host": u.host, "grants": u.grants, "password": pw.expose(),
        }));
    }
    let doc = serde_json::json!({ "databases": databases, "users": users_json });
    Ok(crate::plan::seal::seal(key, doc.to_string().as_bytes()))
}

/// Appends each cluster's steps to its node hosts' plans. `facts[h]` are host `h`'s facts
/// (None when they could not be read). Returns notes for the user (clusters skipped).
pub fn plan_clusters(
    desired: &Desired,
    facts: &[Option<&HostFacts>],
    plans: &mut [HostPlan],
    secrets: &BTreeMap<String, crate::spec::SecretValue>,
    seal_key: &[u8],
) -> Vec<String> {
    let mut notes = vec![];
    // cluster name → (spec resource, host indexes declaring it)
    let mut clusters: BTreeMap<String, (GaleraNode, Vec<usize>)> = BTreeMap::new();
    for (h, host) in desired.hosts.iter().enumerate() {
        for r in &host.resources {
            if let Kind::GaleraNode(g) = &r.kind {
                clusters
                    .entry(g.cluster.clone())
                    .or_insert_with(|| (g.clone(), vec![]))
                    .1
                    .push(h);
            }
        }
    }
    for (name, (spec, declared)) in clusters {
        let mut idx = vec![];
        let mut missing = vec![];
        for n in &spec.nodes {
            match desired
                .hosts
                .iter()
                .position(|h| &h.name == n || &h.connection.address == n)
            {
                Some(h) if declared.contains(&h) => idx.push(h),
                _ => missing.push(n.clone()),
            }
        }
        if !missing.is_empty() || idx.is_empty() {
            notes.push(format!(
                "cluster {name}: node(s) {} not in this run (or without its galera_node resource); no cluster actions planned",
                missing.join(", ")
            ));
            continue;
        }
        let unread: Vec<&str> = idx
            .iter()
            .filter(|&&h| facts[h].is_none() || plans[h].error.is_some())
            .map(|&h| desired.hosts[h].name.as_str())
            .collect();
        if !unread.is_empty() {
            notes.push(format!(
                "cluster {name}: {} could not be read or planned; no cluster actions planned",
                unread.join(", ")
            ));
            continue;
        }
        let fail = |plans: &mut [HostPlan], msg: String| {
            for &h in &idx {
                plans[h].error = Some(format!("cluster {name}: {msg}"));
                plans[h].changes.clear();
            }
        };
        let digest = match schema_digest(seal_key, &spec.databases, &spec.users, secrets) {
            Ok(d) => d,
            Err(e) => {
                fail(plans, e);
                continue;
            }
        };
        let cspec = ClusterSpec {
            name: name.clone(),
            databases: spec.databases.clone(),
            users: spec.users.clone(),
            schema_digest: digest,
        };
        let inputs: Vec<NodeInput> = idx
            .iter()
            .map(|&h| {
                let f = facts[h].expect("checked above");
                NodeInput {
                    host: desired.hosts[h].name.clone(),
                    fact: f.galera.get(&name).cloned().unwrap_or_default(),
                    installed: f
                        .packages
                        .get("mariadb-server")
                        .map(|p| p.installed())
                        .unwrap_or(false),
                    config_changing: plans[h].changes.iter().any(|c| {
                        spec.restart_on
                            .iter()
                            .any(|p| c.resource == format!("file:{p}"))
                    }),
                }
            })
            .collect();
        let decided = match decide(&cspec, &inputs) {
            Ok(d) => d,
            Err(e) => {
                fail(plans, e);
                continue;
            }
        };
        let nodes: Vec<String> = inputs.iter().map(|n| n.host.clone()).collect();
        let total = decided.len() as u32;
        for (i, d) in decided.into_iter().enumerate() {
            let h = idx[nodes.iter().position(|n| n == &d.host).expect("a node")];
            let queries = vec![FactQuery::Galera {
                cluster: name.clone(),
                config: spec.restart_on.clone(),
            }];
            let f = facts[h].expect("checked above");
            plans[h].changes.push(Change {
                resource: format!("galera_node:{name}"),
                action: Action::Run,
                summary: format!("[{}/{total}] {}", i + 1, d.summary),
                attributes: vec![],
                diff: None,
                sensitive: false,
                reason: d.reason,
                fingerprint: crate::plan::build::fingerprint(
                    f,
                    &queries,
                    &crate::plan::build::fact_rules(desired),
                ),
                facts: queries,
                steps: vec![Step::Galera(GaleraStep {
                    cluster: name.clone(),
                    seq: i as u32 + 1,
                    total,
                    host: d.host.clone(),
                    nodes: nodes.clone(),
                    op: d.op,
                })],
            });
        }
    }
    notes
}

/// Every Galera step of a plan, by cluster, in execution order.
pub fn steps_of(plan: &Plan) -> BTreeMap<String, Vec<GaleraStep>> {
    let mut out: BTreeMap<String, Vec<GaleraStep>> = BTreeMap::new();
    for h in &plan.hosts {
        for c in &h.changes {
            for s in &c.steps {
                if let Step::Galera(g) = s {
                    out.entry(g.cluster.clone()).or_default().push(g.clone());
                }
            }
        }
    }
    for v in out.values_mut() {
        v.sort_by_key(|g| g.seq);
    }
    out
}

/// The cluster steps in their cross-host order, for the human plan.
pub fn render_overview(plan: &Plan, paint: &Paint) -> String {
    let mut out = String::new();
    let summaries: BTreeMap<(String, u32), String> = plan
        .hosts
        .iter()
        .flat_map(|h| &h.changes)
        .flat_map(|c| {
            c.steps.iter().filter_map(move |s| match s {
                Step::Galera(g) => Some((
                    (g.cluster.clone(), g.seq),
                    c.summary
                        .split_once("] ")
                        .map(|x| x.1)
                        .unwrap_or(&c.summary)
                        .to_string(),
                )),
                _ => None,
            })
        })
        .collect();
    for (cluster, steps) in steps_of(plan) {
        let _ = writeln!(
            out,
            "\n{} (one step at a time, after the hosts' own changes):",
            paint.bold(&format!("Galera cluster {cluster}"))
        );
        for g in steps {
            let s = summaries
                .get(&(cluster.clone(), g.seq))
                .cloned()
                .unwrap_or_default();
            let _ = writeln!(
                out,
                "  {:>2}. {} galera_node[{cluster}]: {s}",
                g.seq,
                paint.bold(&g.who())
            );
        }
    }
    out
}

#[cfg(test)]
mod tests {
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
        let e = decide(&spec(), &n).unwrap_err();
        assert!(e.contains("split brain"), "{e}");
        assert!(e.contains("db1") && e.contains("db2, db3"), "{e}");
    }

    #[test]
    fn non_primary_beside_primary_is_refused() {
        let n = [
            synced("db1", U, 2),
            synced("db2", U, 2),
            non_primary("db3", V),
        ];
        let e = decide(&spec(), &n).unwrap_err();
        assert!(e.contains("non-Primary") && e.contains("db3"), "{e}");
    }

    #[test]
    fn unreadable_running_server_is_refused() {
        let mut n = synced("db1", U, 1);
        n.fact.sql_error = true;
        n.fact.wsrep_on = None;
        assert!(decide(&spec(), &[n])
            .unwrap_err()
            .contains("cannot be read"));
    }

    #[test]
    fn safe_nodes_of_different_clusters_are_refused() {
        let n = [stopped("db1", U, 5, true), stopped("db2", V, 9, true)];
        assert!(decide(&spec(), &n)
            .unwrap_err()
            .contains("different state UUIDs"));
        let n = [stopped("db1", U, 9, false), stopped("db2", V, 9, false)];
        assert!(decide(&spec(), &n)
            .unwrap_err()
            .contains("different state UUIDs"));
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
        let e = decide(&spec(), &n).unwrap_err();
        assert!(e.contains("lose quorum"), "{e}");
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
}
