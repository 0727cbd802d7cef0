//! The plan is a value: what will change, on which host, why, and the exact steps apply
//! will run. It serialises to JSON (documented in ARCHITECTURE.md) and can be saved and
//! applied later; apply never re-decides.
//!
//! Architecture invariant: nothing in `plan/` touches a transport.

pub mod build;
pub mod graph;
pub mod lockout;
pub mod markdown;
pub mod render;
pub mod seal;
pub mod select;
pub mod step;

use serde::{Deserialize, Serialize};

pub use step::{Content, HandlerAction, OnChange, Step, SystemctlVerb};

/// Version of the saved-plan format; a plan with another version is refused. 2: host plans
/// carry the lockout check's result (a plan of format 1 was never checked).
pub const PLAN_FORMAT: u32 = 2;

/// The flag that applies a plan the lockout check refuses.
pub const LOCKOUT_FLAG: &str = "--i-know-this-locks-me-out";

/// Closed set of actions, with the symbols the human output shows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Action {
    Create,
    Update,
    Remove,
    Run,
}

impl Action {
    pub fn symbol(self) -> char {
        match self {
            Action::Create => '+',
            Action::Update => '~',
            Action::Remove => '-',
            Action::Run => '!',
        }
    }
    pub fn verb(self) -> &'static str {
        match self {
            Action::Create => "create",
            Action::Update => "update",
            Action::Remove => "remove",
            Action::Run => "run",
        }
    }
}

/// A value shown in the plan. Values that cannot be known before apply, and sensitive
/// values, are typed so that no renderer can print them by accident.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", content = "value", rename_all = "snake_case")]
pub enum Shown {
    Value(String),
    Absent,
    KnownAfterApply,
    Sensitive,
}

impl std::fmt::Display for Shown {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Shown::Value(v) => write!(f, "{v:?}"),
            Shown::Absent => write!(f, "(none)"),
            Shown::KnownAfterApply => write!(f, "(known after apply)"),
            Shown::Sensitive => write!(f, "(sensitive value)"),
        }
    }
}

/// One attribute that differs: `mode "0600" → "0644"`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AttrChange {
    pub name: String,
    pub old: Shown,
    pub new: Shown,
}

impl AttrChange {
    pub fn new(name: &str, old: Shown, new: Shown) -> AttrChange {
        AttrChange {
            name: name.to_string(),
            old,
            new,
        }
    }
    pub fn values(name: &str, old: Option<&str>, new: &str) -> AttrChange {
        AttrChange {
            name: name.to_string(),
            old: old
                .map(|o| Shown::Value(o.to_string()))
                .unwrap_or(Shown::Absent),
            new: Shown::Value(new.to_string()),
        }
    }
}

/// One change to one resource on one host.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Change {
    /// Resource id, `type:name` (e.g. `file:/etc/motd`).
    pub resource: String,
    pub action: Action,
    /// One line for humans, e.g. `install nginx` or `content and mode`.
    pub summary: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub attributes: Vec<AttrChange>,
    /// Unified diff of a file's content (never for sensitive files).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub diff: Option<String>,
    /// Content is sensitive: shown only as `(sensitive value changed)`.
    #[serde(default)]
    pub sensitive: bool,
    /// Why the change exists beyond a difference in state (a notification, a pending
    /// handler from an interrupted run, a postcondition of an earlier change).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// sha256 of the facts this change was computed from; apply refuses the change when
    /// re-read facts give another fingerprint.
    pub fingerprint: String,
    /// Fact keys behind the fingerprint.
    pub facts: Vec<crate::facts::FactQuery>,
    /// What apply runs, in order.
    pub steps: Vec<Step>,
}

/// The changes for one host, in the order apply will run them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostPlan {
    pub host: String,
    pub address: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub changes: Vec<Change>,
    /// Hosts whose apply must finish first (cross-host `after`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub after_hosts: Vec<String>,
    /// Facts could not be read (unreachable host ...): the host has no plan.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Wall time of the fact gathering, for reports.
    #[serde(default)]
    pub facts_ms: u64,
    /// Would applying this plan lock kiln out of the host (see `plan::lockout`)?
    #[serde(default, skip_serializing_if = "Lockout::is_empty")]
    pub lockout: Lockout,
    /// `kiln plan --timings`: connect, the fact script on the host and each of its
    /// sections.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timings: Option<crate::facts::timings::HostTimings>,
}

/// What the lockout check (`plan::lockout`) found for a host: each way applying the plan
/// would take kiln's own SSH access away (its source range, its key, its user, sudo, the
/// port), and what it could not judge and why.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Lockout {
    /// Each way kiln would be locked out; empty: none found.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub reasons: Vec<String>,
    /// What was not checked, and why (no source address offline, no key named, ...).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub not_checked: Vec<String>,
    /// The plan was made with `--i-know-this-locks-me-out`: the reasons were warnings.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub overridden: bool,
}

impl Lockout {
    pub fn is_empty(&self) -> bool {
        self.reasons.is_empty() && self.not_checked.is_empty() && !self.overridden
    }

    /// The host's error when the plan is refused.
    pub fn refusal(&self) -> String {
        format!(
            "applying this would lock kiln out: {} (pass {LOCKOUT_FLAG} to plan and apply if this is intended)",
            self.reasons.join("; ")
        )
    }

    /// The warning when it is not (`--i-know-this-locks-me-out`).
    pub fn warning(&self) -> String {
        format!(
            "applying this locks kiln out ({LOCKOUT_FLAG}): {}",
            self.reasons.join("; ")
        )
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Plan {
    pub format: u32,
    pub kiln_version: String,
    pub environment: String,
    /// The environment file the plan was made from (apply re-renders sensitive content from it).
    pub env_file: std::path::PathBuf,
    pub created_at: String,
    pub hosts: Vec<HostPlan>,
    /// A targeted run (`--target`, `--exclude`): what was asked and what it selected. A
    /// saved plan carries it, so `kiln apply FILE` needs no flags and says what it applies.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub targets: Option<Targeting>,
}

/// What `--target`/`--exclude` selected, by `host:type:name`, for the plan to say.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Targeting {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub target: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub exclude: Vec<String>,
    /// Resources a `--target` pattern matched (every resource of the run without one).
    pub targeted: Vec<String>,
    /// Resources the targeted ones require, planned with them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub pulled_in: Vec<String>,
    /// Resources an `--exclude` pattern matched.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub excluded: Vec<String>,
    /// Resources left out because they require an excluded one.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub left_out: Vec<String>,
}

impl Targeting {
    /// The lines a plan shows about the selection (human and Markdown alike).
    pub fn describe(&self) -> Vec<String> {
        let n = |v: &[String]| {
            format!(
                "{} resource{}",
                v.len(),
                if v.len() == 1 { "" } else { "s" }
            )
        };
        let list = |v: &[String]| {
            if v.is_empty() {
                "none".to_string()
            } else {
                v.join(", ")
            }
        };
        let mut out = vec![];
        if self.target.is_empty() {
            out.push(format!(
                "targeted: every resource but the excluded ({})",
                n(&self.targeted)
            ));
        } else {
            out.push(format!(
                "targeted ({}): {}: {}",
                self.target
                    .iter()
                    .map(|t| format!("--target {t}"))
                    .collect::<Vec<_>>()
                    .join(" "),
                n(&self.targeted),
                list(&self.targeted)
            ));
            out.push(format!(
                "pulled in as dependencies: {}",
                list(&self.pulled_in)
            ));
        }
        if !self.exclude.is_empty() {
            out.push(format!(
                "excluded ({}): {}",
                self.exclude
                    .iter()
                    .map(|t| format!("--exclude {t}"))
                    .collect::<Vec<_>>()
                    .join(" "),
                list(&self.excluded)
            ));
            if !self.left_out.is_empty() {
                out.push(format!(
                    "left out because they require an excluded resource: {}",
                    list(&self.left_out)
                ));
            }
        }
        out
    }
}

impl Plan {
    /// Each cluster step's summary (without its `galera_node[...] ` prefix), by cluster and
    /// `seq`: the text the human plan, the Markdown plan and the executor's progress show.
    pub fn cluster_step_summaries(&self) -> std::collections::BTreeMap<(String, u32), &str> {
        let mut out = std::collections::BTreeMap::new();
        for c in self.hosts.iter().flat_map(|h| &h.changes) {
            for s in &c.steps {
                if let Step::Galera(g) = s {
                    let text = c
                        .summary
                        .split_once("] ")
                        .map(|x| x.1)
                        .unwrap_or(&c.summary);
                    out.insert((g.cluster.clone(), g.seq), text);
                }
            }
        }
        out
    }

    /// The lockout check's verdict, before anything is applied: a host whose plan would
    /// lock kiln out is refused — its error says why and its changes are dropped, so none of
    /// them runs and the hosts after it wait in vain — unless `allow`
    /// (`--i-know-this-locks-me-out`), which keeps it and records the override. Returns
    /// the warnings of the hosts kept that way, `host: warning`.
    pub fn refuse_lockouts(&mut self, allow: bool) -> Vec<String> {
        let mut warnings = vec![];
        for h in &mut self.hosts {
            if h.lockout.reasons.is_empty() || h.error.is_some() {
                continue;
            }
            if allow {
                h.lockout.overridden = true;
                warnings.push(format!("{}: {}", h.host, h.lockout.warning()));
            } else {
                h.lockout.overridden = false;
                h.error = Some(h.lockout.refusal());
                h.changes.clear();
            }
        }
        warnings
    }

    pub fn change_count(&self) -> usize {
        self.hosts.iter().map(|h| h.changes.len()).sum()
    }
    pub fn has_errors(&self) -> bool {
        self.hosts.iter().any(|h| h.error.is_some())
    }
    pub fn counts(&self) -> (usize, usize, usize, usize) {
        let mut c = (0, 0, 0, 0);
        for ch in self.hosts.iter().flat_map(|h| &h.changes) {
            match ch.action {
                Action::Create => c.0 += 1,
                Action::Update => c.1 += 1,
                Action::Remove => c.2 += 1,
                Action::Run => c.3 += 1,
            }
        }
        c
    }
}
