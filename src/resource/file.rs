//! `file`: a regular file with content (inline, or rendered from a template by the desired
//! stage), owner, group and mode. Written atomically, previous version kept.

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::facts::{FactQuery, HostFacts, PathKind};
use crate::plan::{Action, AttrChange, Content, Shown, Step};

use super::{attr_changes, default_root, Conflict, Planned, Predicted};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FileState {
    #[default]
    Present,
    Absent,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct File {
    pub path: String,
    /// Final content. In a module this comes from `content = "..."` or `template = "x.j2"`;
    /// the desired stage renders the template and stores the result here.
    #[serde(default)]
    pub content: Option<String>,
    #[serde(default)]
    pub template: Option<String>,
    #[serde(default = "default_root")]
    pub owner: String,
    #[serde(default = "default_root")]
    pub group: String,
    #[serde(default = "default_mode")]
    pub mode: String,
    #[serde(default)]
    pub state: FileState,
    /// Content contains a secret (set by the desired stage when a secret was rendered into
    /// it, or declared by the module): never shown, never hashed into the plan.
    #[serde(default)]
    pub sensitive: bool,
}

fn default_mode() -> String {
    "0644".into()
}

pub fn sha256_hex(data: &[u8]) -> String {
    hex::encode(Sha256::digest(data))
}

impl File {
    pub fn text(path: &str, content: &str, mode: &str) -> File {
        File {
            path: path.to_string(),
            content: Some(content.to_string()),
            template: None,
            owner: "root".into(),
            group: "root".into(),
            mode: mode.to_string(),
            state: FileState::Present,
            sensitive: false,
        }
    }

    fn content(&self) -> &str {
        self.content.as_deref().unwrap_or("")
    }

    pub fn facts(&self) -> Vec<FactQuery> {
        let expect =
            (self.state == FileState::Present).then(|| sha256_hex(self.content().as_bytes()));
        vec![FactQuery::Path {
            path: self.path.clone(),
            expect_sha256: expect,
            sensitive: self.sensitive,
        }]
    }

    /// The content step: sensitive content is sealed later by the plan builder, which
    /// replaces the text with a `Content::Sensitive` reference.
    fn write_step(&self) -> Step {
        Step::WriteFile {
            path: self.path.clone(),
            content: Content::Text {
                text: self.content().to_string(),
            },
            owner: self.owner.clone(),
            group: self.group.clone(),
            mode: self.mode.clone(),
        }
    }

    pub fn plan(
        &self,
        facts: &HostFacts,
        predicted: &Predicted,
    ) -> Result<Option<Planned>, Conflict> {
        let fact = facts.path(&self.path);
        let id = format!("file:{}", self.path);
        match (self.state, fact.kind) {
            (FileState::Absent, PathKind::Missing) if predicted.modules_installing.contains(&predicted.module) => {
                // Postcondition: a package of the same module installed earlier in this plan
                // may ship this file (nginx ships sites-enabled/default). Removal is
                // idempotent, so plan it and say why.
                let mut p = Planned::new(Action::Remove, "remove if installed packages create it", vec![Step::RemovePath { path: self.path.clone() }]);
                p.reason = Some("may be created by packages installed in this plan; known after apply".into());
                Ok(Some(p))
            }
            (FileState::Absent, PathKind::Missing) => Ok(None),
            (FileState::Absent, PathKind::Directory) => {
                Err(Conflict { resource: id, message: "declared absent as a file, but it is a directory".into() })
            }
            (FileState::Absent, _) => {
                let mut p = Planned::new(Action::Remove, "remove", vec![Step::RemovePath { path: self.path.clone() }]);
                if !self.sensitive {
                    if let Some(old) = &fact.content {
                        p.diff = Some(unified_diff(&self.path, old, ""));
                    }
                }
                Ok(Some(p))
            }
            (FileState::Present, PathKind::Directory | PathKind::Other) => Err(Conflict {
                resource: id,
                message: format!("{} exists and is not a regular file; remove it by hand or declare it absent first", self.path),
            }),
            (FileState::Present, PathKind::Missing | PathKind::Symlink) => {
                let mut p = Planned::new(Action::Create, "create", vec![self.write_step()]);
                p.attributes = vec![
                    AttrChange::values("owner", None, &self.owner),
                    AttrChange::values("group", None, &self.group),
                    AttrChange::values("mode", None, &self.mode),
                ];
                if fact.kind == PathKind::Symlink {
                    p.action = Action::Update;
                    p.summary = "replace symlink with a file".into();
                }
                self.content_change(&mut p, None);
                Ok(Some(p))
            }
            (FileState::Present, PathKind::File) => {
                let want_sha = sha256_hex(self.content().as_bytes());
                let same = match fact.matches {
                    Some(m) => m,
                    None => fact.sha256.as_deref() == Some(want_sha.as_str()),
                };
                let attrs = attr_changes(&fact, &self.owner, &self.group, &self.mode);
                if same && attrs.is_empty() {
                    return Ok(None);
                }
                if same {
                    let names: Vec<_> = attrs.iter().map(|a| a.name.clone()).collect();
                    let mut p = Planned::new(Action::Update, names.join(", "), vec![Step::SetAttrs {
                        path: self.path.clone(),
                        owner: Some(self.owner.clone()),
                        group: Some(self.group.clone()),
                        mode: Some(self.mode.clone()),
                    }]);
                    p.attributes = attrs;
                    return Ok(Some(p));
                }
                let summary = if attrs.is_empty() { "content".to_string() } else { format!("content, {}", attrs.iter().map(|a| a.name.as_str()).collect::<Vec<_>>().join(", ")) };
                let mut p = Planned::new(Action::Update, summary, vec![self.write_step()]);
                p.attributes = attrs;
                match &fact.content {
                    Some(old) => self.content_change(&mut p, Some(old)),
                    None if self.sensitive => self.content_change(&mut p, None),
                    None => {
                        // Too large or not text: show the hashes, which are of non-secret content.
                        p.attributes.push(AttrChange::new(
                            "sha256",
                            fact.sha256.clone().map(Shown::Value).unwrap_or(Shown::Absent),
                            Shown::Value(want_sha),
                        ));
                    }
                }
                Ok(Some(p))
            }
        }
    }

    fn content_change(&self, p: &mut Planned, old: Option<&str>) {
        if self.sensitive {
            p.sensitive = true;
            p.attributes.push(AttrChange::new(
                "content",
                Shown::Sensitive,
                Shown::Sensitive,
            ));
        } else {
            p.diff = Some(unified_diff(&self.path, old.unwrap_or(""), self.content()));
        }
    }
}

/// A unified diff with three lines of context, headed by the path.
pub fn unified_diff(path: &str, old: &str, new: &str) -> String {
    let diff = similar::TextDiff::from_lines(old, new);
    let mut out = diff
        .unified_diff()
        .context_radius(3)
        .header(&format!("{path} (on host)"), &format!("{path} (planned)"))
        .to_string();
    if !out.ends_with('\n') {
        out.push('\n');
    }
    out
}
