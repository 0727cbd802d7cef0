//! `unit`: a systemd unit file under /etc/systemd/system. A change reloads systemd's
//! configuration; the matching `service` resource restarts through its notification.

use serde::{Deserialize, Serialize};

use crate::facts::{FactQuery, HostFacts};
use crate::plan::Step;

use super::{file::File, Conflict, Planned};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Unit {
    /// Unit name; `.service` is implied when there is no suffix.
    pub name: String,
    #[serde(default)]
    pub content: Option<String>,
    #[serde(default)]
    pub template: Option<String>,
    #[serde(default)]
    pub sensitive: bool,
}

impl Unit {
    pub fn path(&self) -> String {
        format!(
            "/etc/systemd/system/{}",
            crate::facts::unit_name(&self.name)
        )
    }

    fn file(&self) -> File {
        let mut f = File::text(&self.path(), self.content.as_deref().unwrap_or(""), "0644");
        f.sensitive = self.sensitive;
        f
    }

    pub fn facts(&self) -> Vec<FactQuery> {
        self.file().facts()
    }

    pub fn plan(&self, facts: &HostFacts) -> Result<Option<Planned>, Conflict> {
        let planned = self
            .file()
            .plan(facts, &super::Predicted::default())
            .map_err(|c| Conflict {
                resource: format!("unit:{}", crate::facts::unit_name(&self.name)),
                ..c
            })?;
        Ok(planned.map(|mut p| {
            p.steps.push(Step::DaemonReload);
            p
        }))
    }
}
