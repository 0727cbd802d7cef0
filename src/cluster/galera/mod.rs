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
//! The executor (`apply::cluster`) re-checks the live state before every bootstrap: a node
//! that is already in a Primary component is never bootstrapped again.
//!
//! Layout: `node.rs` classifies each node from its facts; `decide.rs` decides by situation
//! (join, rolling restart, first formation, recovery, schema); `refusal.rs` names the
//! states refused ([`Refusal`]); this file places the decided steps into host plans. The
//! step types themselves belong to the plan (`plan::step::galera`).

mod decide;
mod node;
mod refusal;

use std::collections::BTreeMap;

use crate::desired::Desired;
use crate::facts::galera::GaleraFact;
use crate::facts::{FactQuery, HostFacts};
use crate::plan::{Action, Change, HostPlan, Step};
use crate::resource::galera::{GaleraNode, GaleraUser};
use crate::resource::Kind;

/// The step types belong to the plan (`plan/` never imports `cluster/`); re-exported here
/// for the executor and the tests that know them by this path.
pub use crate::plan::render::render_overview;
pub use crate::plan::step::galera::{steps_of, GaleraOp, GaleraStep};
pub use decide::{decide, keeps_quorum};
pub use refusal::{Refusal, RestartCause};

/// The UUID of a node that never joined a cluster.
pub const NIL_UUID: &str = "00000000-0000-0000-0000-000000000000";

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
        if u.password_secret.is_empty() {
            users_json.push(serde_json::json!({
                "name": u.name, "host": u.host, "grants": u.grants, "auth": "unix_socket",
            }));
            continue;
        }
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
                fail(plans, e.to_string());
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

#[cfg(test)]
mod tests;
