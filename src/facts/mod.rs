//! Facts: what the live host looks like, read in ONE remote execution per host.
//!
//! Resources say which facts they need as [`FactQuery`] values. [`script::fact_script`]
//! turns a host's queries into a single POSIX `sh` script (sent on stdin), and
//! [`parse::parse_facts`] turns its output into [`HostFacts`]. Both are pure; the only I/O
//! is running the script (see `ops::gather`). Each query's output section starts with a
//! marker line `@@kiln:<kind> <arg>` so the parser never has to guess where one fact ends.
//!
//! Each kind of fact lives in its own file under `kinds/`: its script part, its parser,
//! its fingerprint JSON, its fact struct and its tests. This file holds the vocabulary the
//! rest of kiln uses: [`FactQuery`] (stored in saved plans), [`HostFacts`], [`FactRules`].
//!
//! Architecture invariant: no fact reader changes anything on the host.

pub mod kinds;
pub mod parse;
pub mod script;
pub mod section;
pub mod timings;

pub use kinds::apt_lists::{self, AptListsFact};
pub use kinds::certs::{CertDecl, CertsCheck, CertsFact, CertsRules};
pub use kinds::galera;
pub use kinds::group::GroupFact;
pub use kinds::package::PackageFact;
pub use kinds::path::{PathFact, PathKind};
pub use kinds::service::ServiceFact;
pub use kinds::ssh_session::{SshEndpoints, SshSessionFact};
pub use kinds::user::UserFact;

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// One fact a resource needs. Queries are deduplicated per host and batched where the
/// underlying command takes many arguments (dpkg-query, systemctl show).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum FactQuery {
    /// dpkg status and version of a package.
    Package { name: String },
    /// Freshness of apt's package lists (only needed when something will be installed).
    AptLists,
    /// stat of a path; for regular files also the sha256, and the content (base64) when it
    /// differs from `expect_sha256` and the file is small and not sensitive. For sensitive
    /// files only "matches / differs" leaves the host, never a hash of the content.
    Path {
        path: String,
        expect_sha256: Option<String>,
        sensitive: bool,
    },
    /// passwd entry and supplementary groups.
    User { name: String },
    /// group entry.
    Group { name: String },
    /// systemd LoadState / ActiveState / UnitFileState.
    Service { name: String },
    /// Exit status of a read-only guard command (`unless` of a command resource).
    Guard {
        command: String,
        /// The resource whose guard this is, when the command depends on a secret: the
        /// query is then keyed by that resource, and stored in plans without its text.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        sensitive_of: Option<String>,
    },
    /// Names of the entries of a directory (for `directory` with `purge = true`).
    DirList { path: String },
    /// Handlers owed by an earlier, interrupted run (journalled on the host).
    Pending,
    /// A MariaDB Galera node's live state (see [`galera`]); `config` lists the files whose
    /// modification after the server started means a restart is owed.
    Galera {
        cluster: String,
        config: Vec<String>,
    },
    /// kiln's own SSH session as the host sees it (`$SSH_CONNECTION`), for the lockout
    /// check: asked only when a rule kiln renders admits SSH by source address.
    SshSession,
    /// The public certificates of a live directory (`live/NAME/fullchain.pem`; of the key
    /// only whether it is there) and the names of a renewal directory's `NAME.conf`, for
    /// a command that is due by the certificates' rules (see [`kinds::certs`]).
    Certs {
        live: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        renewal: Option<String>,
    },
}

impl FactQuery {
    /// The key under which this fact is stored in [`HostFacts`] and fingerprinted.
    pub fn key(&self) -> String {
        kinds::kind_of(self).key(self)
    }
}

/// The environment's settings that turn a fact into a decision. Planning and the
/// fingerprints of a saved plan (made at plan time, recomputed by `kiln apply plan.json`)
/// must judge with the same values, or a saved plan is falsely stale.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FactRules {
    /// `[apt] lists_max_age`: lists older than this are refreshed before an install.
    pub lists_max_age_secs: u64,
}

/// Everything read from one host. Missing entries mean "not asked", not "absent".
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostFacts {
    pub packages: BTreeMap<String, PackageFact>,
    pub apt_lists: Option<AptListsFact>,
    pub paths: BTreeMap<String, PathFact>,
    pub users: BTreeMap<String, Option<UserFact>>,
    pub groups: BTreeMap<String, Option<GroupFact>>,
    pub services: BTreeMap<String, ServiceFact>,
    /// guard command → exited 0
    pub guards: BTreeMap<String, bool>,
    /// directory → sorted entry names (None: not a directory / missing)
    #[serde(default)]
    pub dirs: BTreeMap<String, Option<Vec<String>>>,
    /// Pending handlers, by journal file name, e.g. `reload@nginx.service`.
    pub pending: Vec<String>,
    /// Galera node state, by cluster name.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub galera: BTreeMap<String, galera::GaleraFact>,
    /// kiln's SSH session (when asked for).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ssh_session: Option<SshSessionFact>,
    /// Certificates of live directories, by the query's key.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub certs: BTreeMap<String, CertsFact>,
}

impl HostFacts {
    /// The JSON of the facts behind `query`, for fingerprints (stable: BTreeMaps and
    /// plain structs serialise deterministically). A fact that planning judges rather
    /// than reads (apt lists: fresh or not) is judged here by the same `rules`.
    pub fn fact_json(&self, query: &FactQuery, rules: &FactRules) -> serde_json::Value {
        kinds::kind_of(query)
            .fact_json(self, query, rules)
            .unwrap_or(serde_json::Value::Null)
    }

    pub fn path(&self, path: &str) -> PathFact {
        self.paths
            .get(path)
            .cloned()
            .unwrap_or_else(PathFact::missing)
    }
}

/// Normalises a systemd unit name: `nginx` → `nginx.service`.
pub fn unit_name(name: &str) -> String {
    const SUFFIXES: &[&str] = &[
        ".service",
        ".socket",
        ".timer",
        ".target",
        ".path",
        ".mount",
        ".automount",
        ".swap",
        ".slice",
        ".scope",
        ".device",
    ];
    if SUFFIXES.iter().any(|s| name.ends_with(s)) {
        name.to_string()
    } else {
        format!("{name}.service")
    }
}
