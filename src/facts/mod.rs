//! Facts: what the live host looks like, read in ONE remote execution per host.
//!
//! Resources say which facts they need as [`FactQuery`] values. [`script::fact_script`]
//! turns a host's queries into a single POSIX `sh` script (sent on stdin), and
//! [`parse::parse_facts`] turns its output into [`HostFacts`]. Both are pure; the only I/O
//! is running the script (see `ops::gather`). Each query's output section starts with a
//! marker line `@@kiln:<kind> <arg>` so the parser never has to guess where one fact ends.
//!
//! Architecture invariant: no fact reader changes anything on the host.

pub mod apt_lists;
pub mod galera;
pub mod parse;
pub mod script;

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
}

impl FactQuery {
    /// The key under which this fact is stored in [`HostFacts`] and fingerprinted.
    pub fn key(&self) -> String {
        match self {
            FactQuery::Package { name } => format!("package:{name}"),
            FactQuery::AptLists => "apt-lists".into(),
            FactQuery::Path { path, .. } => format!("path:{path}"),
            FactQuery::User { name } => format!("user:{name}"),
            FactQuery::Group { name } => format!("group:{name}"),
            FactQuery::Service { name } => format!("service:{name}"),
            FactQuery::Guard {
                sensitive_of: Some(id),
                ..
            } => format!("guard@{id}"),
            FactQuery::Guard { command, .. } => format!("guard:{command}"),
            FactQuery::DirList { path } => format!("dir:{path}"),
            FactQuery::Pending => "pending".into(),
            FactQuery::Galera { cluster, .. } => format!("galera:{cluster}"),
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PackageFact {
    /// Installed version, when the package is fully installed (`ii`).
    pub version: Option<String>,
    /// dpkg's status abbreviation (`ii`, `rc`, `hi` ...) or empty when unknown to dpkg.
    pub status: String,
}

impl PackageFact {
    pub fn installed(&self) -> bool {
        self.version.is_some()
    }
}

pub use apt_lists::AptListsFact;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PathKind {
    Missing,
    File,
    Directory,
    Symlink,
    Other,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PathFact {
    pub kind: PathKind,
    pub owner: Option<String>,
    pub group: Option<String>,
    /// Permission bits as four octal digits, e.g. "0644".
    pub mode: Option<String>,
    pub size: Option<u64>,
    /// sha256 of a regular file's content; never collected for sensitive files.
    pub sha256: Option<String>,
    /// Whether the content equals the expected one (when an expectation was sent).
    pub matches: Option<bool>,
    /// Current content when it differs from the expectation (small, non-sensitive files).
    pub content: Option<String>,
    /// Target of a symlink.
    pub link_target: Option<String>,
    /// Change time (seconds.nanoseconds) — lets a sensitive file's fingerprint move when it
    /// is rewritten without revealing anything about its content.
    pub ctime: Option<String>,
}

impl PathFact {
    pub fn missing() -> PathFact {
        PathFact {
            kind: PathKind::Missing,
            owner: None,
            group: None,
            mode: None,
            size: None,
            sha256: None,
            matches: None,
            content: None,
            link_target: None,
            ctime: None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UserFact {
    pub uid: u32,
    pub gid: u32,
    pub home: String,
    pub shell: String,
    /// Supplementary group names, sorted, without the primary group.
    pub groups: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupFact {
    pub gid: u32,
    pub members: Vec<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceFact {
    /// `loaded`, `not-found`, `masked` ...
    pub load_state: String,
    /// `active`, `inactive`, `failed`, `activating` ...
    pub active_state: String,
    /// `enabled`, `disabled`, `static`, `masked`, or empty.
    pub unit_file_state: String,
}

impl ServiceFact {
    pub fn exists(&self) -> bool {
        self.load_state == "loaded" || self.load_state == "masked"
    }
    pub fn running(&self) -> bool {
        self.active_state == "active"
            || self.active_state == "reloading"
            || self.active_state == "activating"
    }
    pub fn enabled(&self) -> bool {
        matches!(
            self.unit_file_state.as_str(),
            "enabled" | "enabled-runtime" | "static" | "alias" | "indirect"
        )
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
}

impl HostFacts {
    /// The JSON of the facts behind `query`, for fingerprints (stable: BTreeMaps and
    /// plain structs serialise deterministically). A fact that planning judges rather
    /// than reads (apt lists: fresh or not) is judged here by the same `rules`.
    pub fn fact_json(&self, query: &FactQuery, rules: &FactRules) -> serde_json::Value {
        use serde_json::to_value;
        let v = match query {
            FactQuery::Package { name } => to_value(self.packages.get(name)),
            // Lists age every second; what a plan depends on is only whether they need a
            // refresh.
            FactQuery::AptLists => Ok(match &self.apt_lists {
                Some(l) => serde_json::json!({
                    "refresh": l.refresh_reason(rules.lists_max_age_secs).is_some(),
                }),
                None => serde_json::Value::Null,
            }),
            FactQuery::Path { path, .. } => to_value(self.paths.get(path)),
            FactQuery::User { name } => to_value(self.users.get(name)),
            FactQuery::Group { name } => to_value(self.groups.get(name)),
            FactQuery::Service { name } => to_value(self.services.get(name)),
            FactQuery::Guard { command, .. } => to_value(self.guards.get(command)),
            FactQuery::DirList { path } => to_value(self.dirs.get(path)),
            FactQuery::Pending => to_value(&self.pending),
            FactQuery::Galera { cluster, .. } => to_value(self.galera.get(cluster)),
        };
        v.unwrap_or(serde_json::Value::Null)
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
