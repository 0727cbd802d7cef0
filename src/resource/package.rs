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

    /// Whether apt's lists must be refreshed before installing.
    fn needs_update(facts: &HostFacts, predicted: &Predicted) -> bool {
        if predicted.apt_sources_changed {
            return true;
        }
        match &facts.apt_lists {
            Some(l) => {
                !l.present
                    || l.missing > 0
                    || l.age_secs
                        .map(|a| a > predicted.apt.lists_max_age_secs)
                        .unwrap_or(true)
            }
            None => true,
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
            if Self::needs_update(facts, predicted) {
                steps.push(Step::AptUpdate);
            }
            steps.push(Step::AptInstall {
                packages: vec![spec],
                recommends: predicted.apt.recommends,
            });
            let mut p = Planned::new(action, summary, steps);
            p.attributes = attrs;
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
                    p.reason = Some("removed on the host (its configuration files remain)".into());
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
                p.reason = Some(why);
                p
            }),
            (PackageState::Present, Some(_), _) => None,
        }
    }
}
