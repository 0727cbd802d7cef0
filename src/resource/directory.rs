//! `directory`: a directory with owner, group and mode (parents created as needed).

use serde::{Deserialize, Serialize};

use crate::facts::{FactQuery, HostFacts, PathKind};
use crate::plan::{Action, AttrChange, Step};

use super::{attr_changes, default_root, Conflict, Planned};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Directory {
    pub path: String,
    #[serde(default = "default_root")]
    pub owner: String,
    #[serde(default = "default_root")]
    pub group: String,
    #[serde(default = "default_mode")]
    pub mode: String,
}

fn default_mode() -> String {
    "0755".into()
}

impl Directory {
    pub fn facts(&self) -> Vec<FactQuery> {
        vec![FactQuery::Path {
            path: self.path.clone(),
            expect_sha256: None,
            sensitive: false,
        }]
    }

    pub fn plan(&self, facts: &HostFacts) -> Result<Option<Planned>, Conflict> {
        let fact = facts.path(&self.path);
        let step = || Step::MakeDir {
            path: self.path.clone(),
            owner: self.owner.clone(),
            group: self.group.clone(),
            mode: self.mode.clone(),
        };
        match fact.kind {
            PathKind::Missing => {
                let mut p = Planned::new(Action::Create, "create", vec![step()]);
                p.attributes = vec![
                    AttrChange::values("owner", None, &self.owner),
                    AttrChange::values("group", None, &self.group),
                    AttrChange::values("mode", None, &self.mode),
                ];
                Ok(Some(p))
            }
            PathKind::Directory => {
                let attrs = attr_changes(&fact, &self.owner, &self.group, &self.mode);
                if attrs.is_empty() {
                    return Ok(None);
                }
                let names: Vec<_> = attrs.iter().map(|a| a.name.clone()).collect();
                let mut p = Planned::new(Action::Update, names.join(", "), vec![step()]);
                p.attributes = attrs;
                Ok(Some(p))
            }
            _ => Err(Conflict {
                resource: format!("directory:{}", self.path),
                message: format!("{} exists and is not a directory", self.path),
            }),
        }
    }
}
