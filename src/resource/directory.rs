//! `directory`: a directory with owner, group and mode (parents created as needed).

use serde::{Deserialize, Serialize};

use crate::facts::{FactQuery, HostFacts, PathKind};
use crate::plan::{Action, AttrChange, Step};

use super::{attr_changes, default_root, Conflict, Planned, Predicted};

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
    /// Remove every entry of the directory that no resource of this host declares (what
    /// makes "a site removed from the spec" remove its config).
    #[serde(default)]
    pub purge: bool,
}

fn default_mode() -> String {
    "0755".into()
}

impl Directory {
    pub fn facts(&self) -> Vec<FactQuery> {
        let mut q = vec![FactQuery::Path {
            path: self.path.clone(),
            expect_sha256: None,
            sensitive: false,
        }];
        if self.purge {
            q.push(FactQuery::DirList {
                path: self.path.clone(),
            });
        }
        q
    }

    /// Entries to remove: present on the host, declared by no resource of the host.
    fn unmanaged(&self, facts: &HostFacts, predicted: &Predicted) -> Vec<String> {
        if !self.purge {
            return vec![];
        }
        let base = self.path.trim_end_matches('/');
        let Some(Some(entries)) = facts.dirs.get(&self.path) else {
            return vec![];
        };
        entries
            .iter()
            .filter(|name| !predicted.managed_paths.contains(&format!("{base}/{name}")))
            .cloned()
            .collect()
    }

    pub fn plan(
        &self,
        facts: &HostFacts,
        predicted: &Predicted,
    ) -> Result<Option<Planned>, Conflict> {
        let planned = self.plan_dir(facts)?;
        // Packages installed in this run (by this module) may put files here that no fact
        // can show yet (nginx's `default` site): then the purge is decided on the host,
        // after the installs, against the declared names.
        // So is a purge of a name kiln cannot carry exactly (not UTF-8, or with a newline):
        // the host's own glob removes it byte for byte.
        let dynamic = self.purge
            && (predicted.modules_installing.contains(&predicted.module)
                || !matches!(facts.dirs.get(&self.path), Some(Some(_)))
                || self
                    .unmanaged(facts, predicted)
                    .iter()
                    .any(|n| n.contains(crate::facts::parse::UNNAMEABLE)));
        if dynamic {
            let base = self.path.trim_end_matches('/');
            let prefix = format!("{base}/");
            let keep: Vec<String> = predicted
                .managed_paths
                .iter()
                .filter_map(|p| p.strip_prefix(&prefix))
                .filter(|n| !n.contains('/'))
                .map(str::to_string)
                .collect();
            let step = Step::PurgeDir {
                path: self.path.clone(),
                keep,
            };
            let what = "purge entries not in the spec (decided after this run's package installs)";
            return Ok(Some(match planned {
                Some(mut p) => {
                    p.summary = format!("{}; {what}", p.summary);
                    p.steps.push(step);
                    p
                }
                None => Planned::new(Action::Update, what, vec![step]),
            }));
        }
        let purge = self.unmanaged(facts, predicted);
        if purge.is_empty() {
            return Ok(planned);
        }
        let base = self.path.trim_end_matches('/');
        let removes: Vec<Step> = purge
            .iter()
            .map(|name| Step::RemovePath {
                path: format!("{base}/{name}"),
            })
            .collect();
        let what = format!(
            "purge {} not in the spec: {}",
            purge.len(),
            purge.join(", ")
        );
        let mut p = match planned {
            Some(mut p) => {
                p.summary = format!("{}; {what}", p.summary);
                p.steps.extend(removes);
                p
            }
            None => Planned::new(Action::Update, what, removes),
        };
        p.attributes.push(AttrChange::values(
            "entries",
            Some(&purge.join(", ")),
            "(removed)",
        ));
        Ok(Some(p))
    }

    fn plan_dir(&self, facts: &HostFacts) -> Result<Option<Planned>, Conflict> {
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
