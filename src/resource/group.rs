//! `group`: a local group.

use serde::{Deserialize, Serialize};

use crate::facts::{FactQuery, HostFacts};
use crate::plan::{Action, AttrChange, Shown, Step};

use super::{default_true, Planned};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Group {
    pub name: String,
    #[serde(default)]
    pub gid: Option<u32>,
    #[serde(default)]
    pub system: bool,
    #[serde(default = "default_true")]
    pub present: bool,
}

impl Group {
    pub fn facts(&self) -> Vec<FactQuery> {
        vec![FactQuery::Group {
            name: self.name.clone(),
        }]
    }

    pub fn plan(&self, facts: &HostFacts) -> Option<Planned> {
        let fact = facts.groups.get(&self.name).cloned().flatten();
        match (self.present, fact) {
            (true, None) => {
                let mut p = Planned::new(
                    Action::Create,
                    format!("create group {}", self.name),
                    vec![Step::GroupAdd {
                        name: self.name.clone(),
                        gid: self.gid,
                        system: self.system,
                    }],
                );
                p.attributes.push(AttrChange::new(
                    "gid",
                    Shown::Absent,
                    self.gid
                        .map(|g| Shown::Value(g.to_string()))
                        .unwrap_or(Shown::KnownAfterApply),
                ));
                Some(p)
            }
            (false, Some(_)) => Some(Planned::new(
                Action::Remove,
                format!("delete group {}", self.name),
                vec![Step::GroupDel {
                    name: self.name.clone(),
                }],
            )),
            _ => None,
        }
    }
}
