//! Resource types. One type per file; each has its desired-state struct (deserialised from
//! a module's `[[resource]]` table after templating), the facts it needs, and a pure plan
//! function from (desired, facts, predictions) to an optional change.
//!
//! Architecture invariant: nothing here performs I/O; `plan` functions are pure and tested
//! from fixtures (`tests/resources.rs`), including the no-op case.

pub mod apt_repo;
pub mod command;
pub mod directory;
pub mod file;
pub mod galera;
pub mod group;
pub mod package;
pub mod service;
pub mod symlink;
pub mod unit;
pub mod user;

use std::collections::BTreeSet;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::facts::{FactQuery, HostFacts};
pub use crate::plan::OnChange;
use crate::plan::{Action, AttrChange, Step};

pub use apt_repo::AptRepo;
pub use command::{Command, Due};
pub use directory::Directory;
pub use file::File;
pub use galera::GaleraNode;
pub use group::Group;
pub use package::Package;
pub use service::Service;
pub use symlink::Symlink;
pub use unit::Unit;
pub use user::User;

/// Where a resource was declared (for errors and `kiln graph`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Origin {
    pub file: PathBuf,
    /// Key path in that file, e.g. `resource[2]`.
    pub key: String,
}

/// A handler a resource triggers when it changes: `reload` or `restart` of a unit.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Notify {
    pub unit: String,
    pub action: OnChange,
}

impl Notify {
    /// The journal name of this handler on the host: `reload@nginx.service`.
    pub fn handler(&self) -> String {
        format!("{}@{}", self.action, self.unit)
    }
    pub fn parse_handler(s: &str) -> Option<Notify> {
        let (action, unit) = s.split_once('@')?;
        Some(Notify {
            unit: unit.to_string(),
            action: OnChange::parse(action)?,
        })
    }
}

/// Declares the resource types: each line is a variant of [`Kind`], its struct and the
/// `type = "…"` a module writes. [`Kind::TYPES`] and [`Kind::type_name`] are derived from
/// it, so a new type is one line here plus its file (and the `match`es below).
macro_rules! kinds {
    ($($(#[$doc:meta])* $variant:ident($ty:ident) = $name:literal,)*) => {
        /// The typed desired state of one resource.
        #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
        #[serde(tag = "type")]
        pub enum Kind {
            $($(#[$doc])* #[serde(rename = $name)] $variant($ty),)*
        }

        impl Kind {
            /// Every resource type a module may declare (`type = "…"`), in declaration order.
            pub const TYPES: &'static [&'static str] = &[$($name),*];

            /// The `type` of this resource, as a module writes it.
            pub fn type_name(&self) -> &'static str {
                match self {
                    $(Kind::$variant(_) => $name,)*
                }
            }
        }
    };
}

kinds! {
    AptRepo(AptRepo) = "apt_repo",
    Package(Package) = "package",
    Group(Group) = "group",
    User(User) = "user",
    Directory(Directory) = "directory",
    File(File) = "file",
    Symlink(Symlink) = "symlink",
    Unit(Unit) = "unit",
    Command(Command) = "command",
    Service(Service) = "service",
    GaleraNode(GaleraNode) = "galera_node",
}

/// One resource on one host, fully rendered.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Resource {
    /// `type:name`, unique per host.
    pub id: String,
    pub module: String,
    pub origin: Origin,
    /// Explicit ordering: ids on the same host, or `HOST:id` on another host.
    pub after: Vec<String>,
    pub notify: Vec<Notify>,
    pub kind: Kind,
}

/// Predicted effects of changes planned earlier in the same host's plan. Recorded
/// explicitly (not by editing the facts) so that a later resource's plan can be honest on
/// a bare host: a service whose package is being installed in this run is not "missing".
#[derive(Debug, Clone, Default)]
pub struct Predicted {
    pub packages_installed: BTreeSet<String>,
    pub users_created: BTreeSet<String>,
    pub groups_created: BTreeSet<String>,
    /// Units whose unit file is created or changed in this run.
    pub units_changed: BTreeSet<String>,
    pub apt_sources_changed: bool,
    /// Modules whose packages are installed in this run (set as changes are planned).
    pub modules_installing: BTreeSet<String>,
    /// The module of the resource being planned now (set by the plan builder).
    pub module: String,
    /// Every path a resource of this host declares (present or absent): what a purging
    /// directory keeps.
    pub managed_paths: BTreeSet<String>,
    /// Not a prediction: the environment's `[apt]` settings, which package plans need.
    pub apt: AptSettings,
}

/// How packages are installed (`[apt]` in the environment file).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct AptSettings {
    pub lists_max_age_secs: u64,
    pub recommends: bool,
}

impl Default for AptSettings {
    fn default() -> Self {
        AptSettings {
            lists_max_age_secs: package::APT_LISTS_MAX_AGE_SECS,
            recommends: false,
        }
    }
}

/// What a resource's plan function returns when state differs.
#[derive(Debug, Clone, PartialEq)]
pub struct Planned {
    pub action: Action,
    pub summary: String,
    pub attributes: Vec<AttrChange>,
    pub diff: Option<String>,
    pub sensitive: bool,
    pub reason: Option<String>,
    pub steps: Vec<Step>,
}

impl Planned {
    pub fn new(action: Action, summary: impl Into<String>, steps: Vec<Step>) -> Planned {
        Planned {
            action,
            summary: summary.into(),
            attributes: vec![],
            diff: None,
            sensitive: false,
            reason: None,
            steps,
        }
    }
}

/// A state the plan cannot reconcile without a human (e.g. a directory where a file is
/// declared). Reported per host; the host gets no plan.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{resource}: {message}")]
pub struct Conflict {
    pub resource: String,
    pub message: String,
}

impl Kind {
    /// The name part of the resource id.
    pub fn name(&self) -> String {
        match self {
            Kind::AptRepo(r) => r.name.clone(),
            Kind::Package(r) => r.name.clone(),
            Kind::Group(r) => r.name.clone(),
            Kind::User(r) => r.name.clone(),
            Kind::Directory(r) => r.path.clone(),
            Kind::File(r) => r.path.clone(),
            Kind::Symlink(r) => r.path.clone(),
            Kind::Unit(r) => crate::facts::unit_name(&r.name),
            Kind::Command(r) => r.name.clone(),
            Kind::Service(r) => crate::facts::unit_name(&r.name),
            Kind::GaleraNode(r) => r.cluster.clone(),
        }
    }

    pub fn id(&self) -> String {
        format!("{}:{}", self.type_name(), self.name())
    }

    /// Apply order among resources with no edge between them: repositories, packages,
    /// groups, users, directories, files, commands, services.
    pub fn rank(&self) -> u8 {
        match self {
            Kind::AptRepo(_) => 0,
            Kind::Package(_) => 1,
            Kind::Group(_) => 2,
            Kind::User(_) => 3,
            Kind::Directory(_) => 4,
            Kind::File(_) | Kind::Symlink(_) | Kind::Unit(_) => 5,
            Kind::Command(_) => 6,
            Kind::Service(_) => 7,
            Kind::GaleraNode(_) => 8,
        }
    }

    pub fn facts(&self) -> Vec<FactQuery> {
        match self {
            Kind::AptRepo(r) => r.facts(),
            Kind::Package(r) => r.facts(),
            Kind::Group(r) => r.facts(),
            Kind::User(r) => r.facts(),
            Kind::Directory(r) => r.facts(),
            Kind::File(r) => r.facts(),
            Kind::Symlink(r) => r.facts(),
            Kind::Unit(r) => r.facts(),
            Kind::Command(r) => r.facts(),
            Kind::Service(r) => r.facts(),
            Kind::GaleraNode(r) => r.facts(),
        }
    }

    /// Pure: desired state + facts + predictions → change (or none when converged).
    pub fn plan(
        &self,
        facts: &HostFacts,
        predicted: &Predicted,
    ) -> Result<Option<Planned>, Conflict> {
        match self {
            Kind::AptRepo(r) => r.plan(facts),
            Kind::Package(r) => Ok(r.plan(facts, predicted)),
            Kind::Group(r) => Ok(r.plan(facts)),
            Kind::User(r) => Ok(r.plan(facts)),
            Kind::Directory(r) => r.plan(facts, predicted),
            Kind::File(r) => r.plan(facts, predicted),
            Kind::Symlink(r) => r.plan(facts),
            Kind::Unit(r) => r.plan(facts),
            Kind::Command(r) => Ok(r.plan(facts)),
            Kind::Service(r) => r.plan(facts, predicted),
            Kind::GaleraNode(r) => Ok(r.plan(facts)),
        }
    }

    /// Records what a planned change of this resource will make true.
    pub fn predict(&self, predicted: &mut Predicted) {
        match self {
            Kind::AptRepo(_) => predicted.apt_sources_changed = true,
            Kind::Package(r) if r.state != package::PackageState::Absent => {
                predicted.packages_installed.insert(r.name.clone());
                predicted
                    .modules_installing
                    .insert(predicted.module.clone());
            }
            Kind::User(r) => {
                predicted.users_created.insert(r.name.clone());
            }
            Kind::Group(r) => {
                predicted.groups_created.insert(r.name.clone());
            }
            Kind::Unit(r) => {
                predicted
                    .units_changed
                    .insert(crate::facts::unit_name(&r.name));
            }
            _ => {}
        }
    }

    /// Marks the resource sensitive because it depends on a secret (see `desired::taint`);
    /// false for kinds whose every setting is shown in plans, where a secret is refused.
    pub fn mark_sensitive(&mut self) -> bool {
        match self {
            Kind::File(f) => f.sensitive = true,
            Kind::Unit(u) => u.sensitive = true,
            Kind::Command(c) => c.sensitive = true,
            _ => return false,
        }
        true
    }

    /// Paths this resource manages (for implicit directory → content edges).
    pub fn path(&self) -> Option<&str> {
        match self {
            Kind::Directory(r) => Some(&r.path),
            Kind::File(r) => Some(&r.path),
            Kind::Symlink(r) => Some(&r.path),
            _ => None,
        }
    }

    /// Owners and groups this resource refers to (for implicit user/group → path edges).
    pub fn owners(&self) -> Vec<&str> {
        match self {
            Kind::Directory(r) => vec![r.owner.as_str(), r.group.as_str()],
            Kind::File(r) => vec![r.owner.as_str(), r.group.as_str()],
            _ => vec![],
        }
    }
}

/// Normalises a mode to four octal digits ("644" → "0644"); None when it is not octal.
pub fn normalize_mode(mode: &str) -> Option<String> {
    let m = mode.trim().trim_start_matches("0o");
    if m.is_empty() || m.len() > 4 || !m.chars().all(|c| ('0'..='7').contains(&c)) {
        return None;
    }
    Some(format!("{:0>4}", m))
}

/// Attribute differences of owner/group/mode between a path fact and the desired values.
pub fn attr_changes(
    fact: &crate::facts::PathFact,
    owner: &str,
    group: &str,
    mode: &str,
) -> Vec<AttrChange> {
    let mut out = vec![];
    if fact.owner.as_deref() != Some(owner) {
        out.push(AttrChange::values("owner", fact.owner.as_deref(), owner));
    }
    if fact.group.as_deref() != Some(group) {
        out.push(AttrChange::values("group", fact.group.as_deref(), group));
    }
    if fact.mode.as_deref() != Some(mode) {
        out.push(AttrChange::values("mode", fact.mode.as_deref(), mode));
    }
    out
}

fn default_root() -> String {
    "root".to_string()
}
fn default_true() -> bool {
    true
}
