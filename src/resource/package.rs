//! `package`: a Debian package, present (any version), pinned to a version, or absent.
//! All of a host's package changes run as one apt transaction (apply coalesces them), and
//! the lists are refreshed only when they are missing, stale, or a repository changed.

use serde::{Deserialize, Serialize};

use crate::facts::{FactQuery, HostFacts};
use crate::plan::{Action, AttrChange, Shown, Step};

use super::{Planned, Predicted};

/// Lists older than this are refreshed before an install, unless the environment's
/// `[apt] lists_max_age` says otherwise.
pub const APT_LISTS_MAX_AGE_SECS: u64 = 24 * 3600;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PackageState {
    #[default]
    Present,
    Absent,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Package {
    pub name: String,
    #[serde(default)]
    pub state: PackageState,
    /// Exact version to hold the package at (`apt-get install name=version`).
    #[serde(default)]
    pub version: Option<String>,
}

impl Package {
    pub fn facts(&self) -> Vec<FactQuery> {
        let mut q = vec![FactQuery::Package {
            name: self.name.clone(),
        }];
        if self.state == PackageState::Present {
            q.push(FactQuery::AptLists);
        }
        q
    }

    /// Why apt's lists must be refreshed before installing, or `None` when they are
    /// fresh and complete (decided from raw facts in [`crate::facts::apt_lists`]).
    fn refresh_reason(facts: &HostFacts, predicted: &Predicted) -> Option<String> {
        if predicted.apt_sources_changed {
            return Some("apt lists: a repository changed in this run".into());
        }
        match &facts.apt_lists {
            Some(l) => l.refresh_reason(predicted.apt.lists_max_age_secs),
            None => Some("apt lists: not read from the host".into()),
        }
    }

    pub fn plan(&self, facts: &HostFacts, predicted: &Predicted) -> Option<Planned> {
        let fact = facts.packages.get(&self.name).cloned().unwrap_or_default();
        let install = |summary: String, attrs: Vec<AttrChange>, action: Action| {
            let spec = match &self.version {
                Some(v) => format!("{}={}", self.name, v),
                None => self.name.clone(),
            };
            let mut steps = vec![];
            let refresh = Self::refresh_reason(facts, predicted);
            if refresh.is_some() {
                // Every install carries the step (apply runs one update for all of them,
                // and a saved plan applied in part still refreshes first); the reason is
                // told once, on the host's first install.
                steps.push(Step::AptUpdate);
            }
            steps.push(Step::AptInstall {
                packages: vec![spec],
                recommends: predicted.apt.recommends,
            });
            let mut p = Planned::new(action, summary, steps);
            p.attributes = attrs;
            if predicted.packages_installed.is_empty() {
                p.reason = refresh.map(|r| format!("{r}: refreshed first"));
            }
            Some(p)
        };
        match (self.state, &fact.version, &self.version) {
            (PackageState::Absent, Some(v), _) => {
                let mut p = Planned::new(
                    Action::Remove,
                    format!("remove {}", self.name),
                    vec![Step::AptRemove {
                        packages: vec![self.name.clone()],
                    }],
                );
                p.attributes.push(AttrChange::new(
                    "version",
                    Shown::Value(v.clone()),
                    Shown::Absent,
                ));
                Some(p)
            }
            (PackageState::Absent, None, _) => None,
            (PackageState::Present, None, want) => install(
                format!("install {}", self.name),
                vec![AttrChange::new(
                    "version",
                    Shown::Absent,
                    want.clone()
                        .map(Shown::Value)
                        .unwrap_or(Shown::KnownAfterApply),
                )],
                Action::Create,
            )
            .map(|mut p| {
                // `rc`: removed on the host, its configuration files left behind.
                if fact.status == "rc" {
                    p.reason = Some(join_reasons(
                        "removed on the host (its configuration files remain)",
                        p.reason.take(),
                    ));
                }
                p
            }),
            (PackageState::Present, Some(have), Some(want)) if have != want => install(
                format!("{} {} → {}", self.name, have, want),
                vec![AttrChange::values("version", Some(have), want)],
                Action::Update,
            )
            .map(|mut p| {
                let mut why = format!("version {have} is installed, the spec pins {want}");
                if fact.status.starts_with('h') {
                    why.push_str("; the package is held on the host (apt-mark hold)");
                }
                p.reason = Some(join_reasons(&why, p.reason.take()));
                p
            }),
            (PackageState::Present, Some(_), _) => None,
        }
    }
}

/// A package's own reason first, then the lists' refresh when this change carries it.
fn join_reasons(own: &str, refresh: Option<String>) -> String {
    match refresh {
        Some(r) => format!("{own}; {r}"),
        None => own.to_string(),
    }
}
