//! `apt_repo`: an apt repository in deb822 form with its signing key, both under apt's
//! own directories. A changed repository makes the next install refresh the lists.

use serde::{Deserialize, Serialize};

use crate::facts::{FactQuery, HostFacts};
use crate::plan::{Action, Step};

use super::{file::File, Planned};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AptRepo {
    pub name: String,
    /// e.g. `http://deb.debian.org/debian`
    pub uri: String,
    pub suites: Vec<String>,
    #[serde(default = "default_components")]
    pub components: Vec<String>,
    /// ASCII-armoured signing key; when absent the repository uses the system keyring.
    #[serde(default)]
    pub key: Option<String>,
    /// A keyring already on the host (e.g. `/usr/share/keyrings/debian-archive-keyring.gpg`)
    /// to pin the repository to, instead of a `key` kiln writes.
    #[serde(default)]
    pub keyring: Option<String>,
}

fn default_components() -> Vec<String> {
    vec!["main".into()]
}

impl AptRepo {
    pub fn key_path(&self) -> String {
        format!("/etc/apt/keyrings/kiln-{}.asc", self.name)
    }
    pub fn sources_path(&self) -> String {
        format!("/etc/apt/sources.list.d/kiln-{}.sources", self.name)
    }

    pub fn sources_content(&self) -> String {
        let mut s = format!(
            "# Managed by kiln (apt_repo {}).\nTypes: deb\nURIs: {}\nSuites: {}\nComponents: {}\n",
            self.name,
            self.uri,
            self.suites.join(" "),
            self.components.join(" ")
        );
        if self.key.is_some() {
            s.push_str(&format!("Signed-By: {}\n", self.key_path()));
        } else if let Some(k) = &self.keyring {
            s.push_str(&format!("Signed-By: {k}\n"));
        }
        s
    }

    fn files(&self) -> Vec<File> {
        let mut files = vec![];
        if let Some(key) = &self.key {
            files.push(File::text(&self.key_path(), key, "0644"));
        }
        files.push(File::text(
            &self.sources_path(),
            &self.sources_content(),
            "0644",
        ));
        files
    }

    pub fn facts(&self) -> Vec<FactQuery> {
        self.files().iter().flat_map(|f| f.facts()).collect()
    }

    pub fn plan(&self, facts: &HostFacts) -> Result<Option<Planned>, super::Conflict> {
        let mut steps = vec![];
        let mut diffs = vec![];
        let mut created = true;
        for f in self.files() {
            let planned =
                f.plan(facts, &super::Predicted::default())
                    .map_err(|c| super::Conflict {
                        resource: format!("apt_repo:{}", self.name),
                        ..c
                    })?;
            if let Some(p) = planned {
                created &= p.action == Action::Create;
                steps.extend(p.steps);
                diffs.extend(p.diff);
            }
        }
        if steps.is_empty() {
            return Ok(None);
        }
        steps.push(Step::AptUpdate);
        let action = if created {
            Action::Create
        } else {
            Action::Update
        };
        let mut p = Planned::new(
            action,
            format!("apt repository {} ({})", self.name, self.uri),
            steps,
        );
        p.diff = (!diffs.is_empty()).then(|| diffs.join(""));
        Ok(Some(p))
    }
}
