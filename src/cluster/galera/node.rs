//! How each node stands, from its facts alone: the classes the decision works with.

use super::{NodeInput, Refusal, NIL_UUID};

#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Class {
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

pub(super) fn classify(n: &NodeInput) -> Result<Class, Refusal> {
    let f = &n.fact;
    if !n.installed {
        return Ok(Class::Fresh);
    }
    match f.active_state.as_str() {
        "active" | "reloading" => {
            if f.sql_error {
                return Err(Refusal::Unreadable {
                    host: n.host.clone(),
                });
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
pub(super) fn has_history(n: &NodeInput) -> bool {
    n.fact
        .grastate
        .as_ref()
        .map(|g| !g.uuid.is_empty() && g.uuid != NIL_UUID)
        .unwrap_or(false)
}

pub(super) fn stop_summary(c: &Class) -> String {
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
