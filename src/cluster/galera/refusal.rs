//! States of a cluster a tool must not guess about. [`decide`](super::decide) returns
//! one of these instead of steps; callers can match on it, and its `Display` is the text
//! the plan shows (`cluster NAME: …` on every node host).

use std::fmt;

/// Why a node needs a restart.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RestartCause {
    /// A `restart_on` file changes in this plan.
    ConfigChanging,
    /// The configuration is newer than the running server (an earlier run did not restart it).
    ConfigNewer,
}

impl RestartCause {
    pub fn text(self) -> &'static str {
        match self {
            RestartCause::ConfigChanging => "its configuration changes in this plan",
            RestartCause::ConfigNewer => {
                "its configuration changed after the server started (an earlier run did not restart it)"
            }
        }
    }
}

impl fmt::Display for RestartCause {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.text())
    }
}

/// A cluster state kiln refuses to act on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// A running server whose wsrep status cannot be read.
    Unreadable { host: String },
    /// Two or more Primary components: `(state UUID, its hosts)`, by UUID.
    SplitBrain {
        components: Vec<(String, Vec<String>)>,
    },
    /// A node runs in a non-Primary component beside the Primary one.
    NonPrimaryBesidePrimary {
        host: String,
        uuid: String,
        primary_hosts: Vec<String>,
        primary_uuid: String,
    },
    /// Restarting `host` would leave `left` of `size` nodes: no majority.
    RestartLosesQuorum {
        host: String,
        cause: RestartCause,
        left: usize,
        size: usize,
    },
    /// Several nodes have `safe_to_bootstrap: 1` but different state UUIDs.
    SafeNodesDisagree {
        hosts: Vec<String>,
        uuids: Vec<String>,
    },
    /// The nodes with the highest seqno have different state UUIDs.
    TopSeqnoDisagree { seqno: i64, uuids: Vec<String> },
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Refusal::Unreadable { host } => write!(
                f,
                "{host}: mariadb is active but its wsrep status cannot be read over the unix socket as root; refusing to guess"
            ),
            Refusal::SplitBrain { components } => {
                let parts: Vec<String> = components
                    .iter()
                    .map(|(u, h)| format!("{} on {u}", h.join(", ")))
                    .collect();
                write!(
                    f,
                    "split brain: {} Primary components with different state UUIDs ({}); refusing to touch the cluster — decide by hand which side keeps its data",
                    components.len(),
                    parts.join("; ")
                )
            }
            Refusal::NonPrimaryBesidePrimary {
                host,
                uuid,
                primary_hosts,
                primary_uuid,
            } => write!(
                f,
                "{host} runs in a non-Primary component (state UUID {uuid}) while {} form the Primary one ({primary_uuid}): a network partition? refusing; check connectivity, or stop {host} by hand",
                primary_hosts.join(", ")
            ),
            Refusal::RestartLosesQuorum {
                host,
                cause,
                left,
                size,
            } => write!(
                f,
                "{host} needs a restart ({cause}), but taking it down would leave {left} of {size} nodes: no majority, the cluster would lose quorum; refusing (bring the missing nodes back first{})",
                if *size == 2 {
                    ", or run 3 nodes: a 2-node cluster cannot roll a restart"
                } else {
                    ""
                }
            ),
            Refusal::SafeNodesDisagree { hosts, uuids } => write!(
                f,
                "{} each have safe_to_bootstrap: 1 but different state UUIDs ({}); refusing to pick one",
                hosts.join(", "),
                uuids.join(", ")
            ),
            Refusal::TopSeqnoDisagree { seqno, uuids } => write!(
                f,
                "the nodes with the highest seqno {seqno} have different state UUIDs ({}); refusing to pick one",
                uuids.join(", ")
            ),
        }
    }
}

impl std::error::Error for Refusal {}
