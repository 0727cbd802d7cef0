//! `user`: a local account. Supplementary groups are ensured (added when missing); groups
//! the account has beyond the declared ones are left alone, as `usermod -a` would.

use serde::{Deserialize, Serialize};

use crate::facts::{FactQuery, HostFacts};
use crate::plan::{Action, AttrChange, Shown, Step};

use super::{default_true, Planned};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct User {
    pub name: String,
    #[serde(default)]
    pub uid: Option<u32>,
    #[serde(default)]
    pub home: Option<String>,
    #[serde(default = "default_shell")]
    pub shell: String,
    #[serde(default)]
    pub groups: Vec<String>,
    #[serde(default)]
    pub system: bool,
    #[serde(default = "default_true")]
    pub create_home: bool,
    #[serde(default = "default_true")]
    pub present: bool,
}

fn default_shell() -> String {
    "/bin/bash".into()
}

impl User {
    pub fn home(&self) -> String {
        self.home
            .clone()
            .unwrap_or_else(|| format!("/home/{}", self.name))
    }

    pub fn facts(&self) -> Vec<FactQuery> {
        vec![FactQuery::User {
            name: self.name.clone(),
        }]
    }

    pub fn plan(&self, facts: &HostFacts) -> Option<Planned> {
        let fact = facts.users.get(&self.name).cloned().flatten();
        match (self.present, fact) {
            (false, None) => None,
            (false, Some(_)) => Some(Planned::new(
                Action::Remove,
                format!("delete user {}", self.name),
                vec![Step::UserDel {
                    name: self.name.clone(),
                }],
            )),
            (true, None) => {
                let mut p = Planned::new(
                    Action::Create,
                    format!("create user {}", self.name),
                    vec![Step::UserAdd {
                        name: self.name.clone(),
                        uid: self.uid,
                        home: self.home(),
                        shell: self.shell.clone(),
                        system: self.system,
                        groups: self.groups.clone(),
                        create_home: self.create_home,
                    }],
                );
                p.attributes = vec![
                    AttrChange::new(
                        "uid",
                        Shown::Absent,
                        self.uid
                            .map(|u| Shown::Value(u.to_string()))
                            .unwrap_or(Shown::KnownAfterApply),
                    ),
                    AttrChange::values("home", None, &self.home()),
                    AttrChange::values("shell", None, &self.shell),
                ];
                if !self.groups.is_empty() {
                    p.attributes
                        .push(AttrChange::values("groups", None, &self.groups.join(",")));
                }
                Some(p)
            }
            (true, Some(have)) => {
                let mut attrs = vec![];
                let home = self.home();
                let new_home = (have.home != home).then(|| {
                    attrs.push(AttrChange::values("home", Some(&have.home), &home));
                    home.clone()
                });
                let new_shell = (have.shell != self.shell).then(|| {
                    attrs.push(AttrChange::values("shell", Some(&have.shell), &self.shell));
                    self.shell.clone()
                });
                let missing: Vec<_> = self
                    .groups
                    .iter()
                    .filter(|g| !have.groups.contains(g))
                    .cloned()
                    .collect();
                let new_groups = (!missing.is_empty()).then(|| {
                    let mut all = have.groups.clone();
                    all.extend(missing.iter().cloned());
                    all.sort();
                    attrs.push(AttrChange::values(
                        "groups",
                        Some(&have.groups.join(",")),
                        &all.join(","),
                    ));
                    all
                });
                if attrs.is_empty() {
                    return None;
                }
                if let Some(uid) = self.uid {
                    if uid != have.uid {
                        // Changing a uid re-owns files all over the system; kiln reports it but does not do it.
                        attrs.push(AttrChange::values(
                            "uid (not changed by kiln)",
                            Some(&have.uid.to_string()),
                            &uid.to_string(),
                        ));
                    }
                }
                let summary = attrs
                    .iter()
                    .map(|a| a.name.clone())
                    .collect::<Vec<_>>()
                    .join(", ");
                let mut p = Planned::new(
                    Action::Update,
                    summary,
                    vec![Step::UserMod {
                        name: self.name.clone(),
                        home: new_home,
                        shell: new_shell,
                        groups: new_groups,
                    }],
                );
                p.attributes = attrs;
                Some(p)
            }
        }
    }
}
