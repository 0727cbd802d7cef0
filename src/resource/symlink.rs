//! `symlink`: a symbolic link pointing at `target`.

use serde::{Deserialize, Serialize};

use crate::facts::{FactQuery, HostFacts, PathKind};
use crate::plan::{Action, AttrChange, Step};

use super::{Conflict, Planned};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Symlink {
    pub path: String,
    pub target: String,
    /// Replace a regular file at `path` (never a directory).
    #[serde(default)]
    pub force: bool,
}

impl Symlink {
    pub fn facts(&self) -> Vec<FactQuery> {
        vec![FactQuery::Path {
            path: self.path.clone(),
            expect_sha256: None,
            sensitive: false,
        }]
    }

    pub fn plan(&self, facts: &HostFacts) -> Result<Option<Planned>, Conflict> {
        let fact = facts.path(&self.path);
        let step = vec![Step::Symlink {
            path: self.path.clone(),
            target: self.target.clone(),
        }];
        match fact.kind {
            PathKind::Symlink if fact.link_target.as_deref() == Some(self.target.as_str()) => {
                Ok(None)
            }
            PathKind::Symlink => {
                let mut p = Planned::new(Action::Update, "target", step);
                p.attributes.push(AttrChange::values(
                    "target",
                    fact.link_target.as_deref(),
                    &self.target,
                ));
                Ok(Some(p))
            }
            PathKind::Missing => {
                let mut p = Planned::new(Action::Create, format!("→ {}", self.target), step);
                p.attributes
                    .push(AttrChange::values("target", None, &self.target));
                Ok(Some(p))
            }
            PathKind::File if self.force => {
                let mut p = Planned::new(Action::Update, "replace file with symlink", step);
                p.attributes
                    .push(AttrChange::values("target", None, &self.target));
                Ok(Some(p))
            }
            _ => Err(Conflict {
                resource: format!("symlink:{}", self.path),
                message: format!(
                    "{} exists and is not a symlink (set force = true to replace a file)",
                    self.path
                ),
            }),
        }
    }
}
