//! Steps: the closed set of operations apply can perform. A change carries its steps as
//! data; `apply::script` turns them into shell. Keeping them typed lets the plan be saved,
//! reviewed and tested without a host.

pub mod galera;
pub mod verb;

use serde::{Deserialize, Serialize};

pub use galera::{GaleraOp, GaleraStep};
pub use verb::{HandlerAction, OnChange, SystemctlVerb};

/// Content of a file to write. Sensitive content never lives in a plan: it is re-rendered
/// from the spec at apply time and checked against a keyed digest (see `plan::seal`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Content {
    Text { text: String },
    Sensitive { resource: String, seal: String },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Step {
    /// `apt-get update` (only emitted when lists are missing or stale, or a repository changed).
    AptUpdate,
    /// One apt transaction for every package of the host; `name` or `name=version`.
    AptInstall {
        packages: Vec<String>,
        /// Install Recommends too (`[apt] recommends = true`); default `--no-install-recommends`.
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        recommends: bool,
    },
    AptRemove {
        packages: Vec<String>,
    },
    /// Atomic write: temp file in the same directory, fsync, rename; the previous version is
    /// kept under /var/lib/kiln/backup.
    WriteFile {
        path: String,
        content: Content,
        owner: String,
        group: String,
        mode: String,
    },
    SetAttrs {
        path: String,
        owner: Option<String>,
        group: Option<String>,
        mode: Option<String>,
    },
    MakeDir {
        path: String,
        owner: String,
        group: String,
        mode: String,
    },
    Symlink {
        path: String,
        target: String,
    },
    RemovePath {
        path: String,
    },
    /// Remove, at apply time, every entry of `path` not named in `keep`: a purging
    /// directory whose content packages installed in the same run may add to.
    PurgeDir {
        path: String,
        keep: Vec<String>,
    },
    GroupAdd {
        name: String,
        gid: Option<u32>,
        system: bool,
    },
    GroupDel {
        name: String,
    },
    UserAdd {
        name: String,
        uid: Option<u32>,
        home: String,
        shell: String,
        system: bool,
        groups: Vec<String>,
        create_home: bool,
    },
    UserMod {
        name: String,
        home: Option<String>,
        shell: Option<String>,
        groups: Option<Vec<String>>,
    },
    UserDel {
        name: String,
    },
    DaemonReload,
    /// `systemctl VERB UNIT` for enable/disable/start/stop/restart.
    Systemctl {
        verb: SystemctlVerb,
        unit: String,
    },
    /// A handler: validate (when `check` is set), then reload or restart. Journalled on the
    /// host before the change that owes it, cleared after it ran.
    Handler {
        unit: String,
        action: HandlerAction,
        check: Option<String>,
    },
    /// A guarded command; `creates` is re-checked on the host just before running.
    Shell {
        command: String,
        creates: Option<String>,
    },
    /// A guarded command whose text depends on a secret: never in a plan. Apply renders
    /// it again from the spec and runs it only if it carries the same seal (see
    /// `plan::seal`).
    SensitiveShell {
        resource: String,
        seal: String,
        creates: Option<String>,
    },
    /// Record that `handler` (`reload@unit`) is owed, before the change that causes it.
    JournalHandler {
        handler: String,
    },
    /// One step of a cluster's plan (Galera bootstrap, join, restart ...). Never part of a
    /// host's apply script: the Galera executor runs these, in `seq` order across hosts,
    /// after the hosts' scripts. `cluster::galera` decides them.
    Galera(GaleraStep),
}
