//! `command`: a guarded shell command for what no resource type covers. It must say when
//! it is done (`creates`: a path it makes; `unless`: a read-only check that succeeds once
//! it is done), so that a converged host plans nothing.

use serde::{Deserialize, Serialize};

use crate::facts::{FactQuery, HostFacts, PathKind};
use crate::plan::{Action, Step};

use super::Planned;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Command {
    pub name: String,
    pub run: String,
    #[serde(default)]
    pub creates: Option<String>,
    #[serde(default)]
    pub unless: Option<String>,
    /// `run` or `unless` depends on a secret (set by kiln when it does; may be set by
    /// hand): neither is shown in plans or reports, nor stored in saved plans.
    #[serde(default)]
    pub sensitive: bool,
}

impl Command {
    pub fn id(&self) -> String {
        format!("command:{}", self.name)
    }

    pub fn facts(&self) -> Vec<FactQuery> {
        let mut q = vec![];
        if let Some(p) = &self.creates {
            q.push(FactQuery::Path {
                path: p.clone(),
                expect_sha256: None,
                sensitive: false,
            });
        }
        if let Some(c) = &self.unless {
            q.push(FactQuery::Guard {
                command: c.clone(),
                sensitive_of: self.sensitive.then(|| self.id()),
            });
        }
        q
    }

    pub fn plan(&self, facts: &HostFacts) -> Option<Planned> {
        if let Some(p) = &self.creates {
            if facts.path(p).kind != PathKind::Missing {
                return None;
            }
        }
        if let Some(c) = &self.unless {
            if facts.guards.get(c).copied().unwrap_or(false) {
                return None;
            }
        }
        let why = match (&self.creates, &self.unless) {
            (Some(p), _) => format!("{p} does not exist"),
            (None, Some(_)) if self.sensitive => "its `unless` guard failed (sensitive)".into(),
            (None, Some(c)) => format!("`{c}` failed"),
            (None, None) => "no guard".into(),
        };
        let mut p = Planned::new(
            Action::Run,
            self.name.clone(),
            vec![Step::Shell {
                command: self.run.clone(),
                creates: self.creates.clone(),
            }],
        );
        p.reason = Some(why);
        // The plan builder seals the step's text (Step::SensitiveShell).
        p.sensitive = self.sensitive;
        Some(p)
    }
}
