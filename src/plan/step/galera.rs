//! Galera steps as the plan carries them: one [`GaleraStep`] per change of a node host
//! (`galera_node:<cluster>`), decided by `cluster::galera` and executed, in `seq` order
//! across hosts, by the Galera executor after the hosts' own scripts.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::plan::{Plan, Step};

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

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GaleraUser {
    pub name: String,
    /// Host pattern, e.g. `10.233.0.%` or `localhost`.
    #[serde(default = "default_user_host")]
    pub host: String,
    /// Name of an environment secret holding the password (never the value). Empty: the
    /// account has no password at all and logs in over the server's socket as the system
    /// user of the same name (`IDENTIFIED VIA unix_socket`; `host` must be `localhost`).
    #[serde(default)]
    pub password_secret: String,
    /// Privileges, each as `PRIVS ON db.*`, e.g. "ALL PRIVILEGES ON `app`.*".
    #[serde(default)]
    pub grants: Vec<String>,
}

fn default_user_host() -> String {
    "%".into()
}
