//! `command`: a guarded shell command for what no resource type covers. It must say when
//! it is done (`creates`: a path it makes; `unless`: a read-only check that succeeds once
//! it is done; `due`: a fact kiln reads and judges itself, on the controller), so that a
//! converged host plans nothing.

use serde::{Deserialize, Serialize};

use crate::facts::{CertDecl, CertsCheck, CertsRules, FactQuery, HostFacts, PathKind};
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
    /// Due when a fact says so, judged by kiln in the plan: no command runs on the host
    /// to decide (unlike `unless`).
    #[serde(default)]
    pub due: Option<Due>,
    /// `run` or `unless` depends on a secret (set by kiln when it does; may be set by
    /// hand): neither is shown in plans or reports, nor stored in saved plans.
    #[serde(default)]
    pub sensitive: bool,
}

/// A fact that says when a command is due: one key naming the fact kind, whose table
/// holds what kiln reads and the rules it judges by.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum Due {
    /// Certificates (the `tls` module's `kiln-certs`): due when `check` of the host-side
    /// script would fail — something to issue, renew or delete (`sync`), or an ACME
    /// certificate without its files (`placeholders`).
    Certs(CertsDue),
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CertsDue {
    /// `sync` or `placeholders`.
    pub check: CertsCheck,
    /// The live directory: `NAME/fullchain.pem` and `NAME/privkey.pem`.
    pub live: String,
    /// certbot's renewal directory (`NAME.conf`), whose undeclared names are stale.
    #[serde(default)]
    pub renewal: Option<String>,
    /// Renew when at most this many whole days are left.
    #[serde(default = "thirty")]
    pub renew_days: i64,
    /// The declared certificates (`name`, `domains`, `source`; other keys not read).
    pub certificates: Vec<CertDecl>,
}

fn thirty() -> i64 {
    30
}

impl Due {
    fn query(&self) -> FactQuery {
        match self {
            Due::Certs(c) => FactQuery::Certs {
                live: c.live.clone(),
                renewal: c.renewal.clone(),
            },
        }
    }

    /// Why the command is due (empty: it is not). A fact not read (an offline plan) is a
    /// bare host's: no certificates.
    fn why(&self, facts: &HostFacts) -> Vec<String> {
        match self {
            Due::Certs(c) => {
                let bare = Default::default();
                let fact = facts.certs.get(&self.query().key()).unwrap_or(&bare);
                fact.due(
                    &c.certificates,
                    CertsRules {
                        check: c.check,
                        renew_days: c.renew_days,
                    },
                )
            }
        }
    }
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
        if let Some(d) = &self.due {
            q.push(d.query());
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
        let due = match &self.due {
            Some(d) => match d.why(facts) {
                why if why.is_empty() => return None,
                why => Some(format!("due: {}", why.join("; "))),
            },
            None => None,
        };
        let why = due.unwrap_or_else(|| match (&self.creates, &self.unless) {
            (Some(p), _) => format!("{p} does not exist"),
            (None, Some(_)) if self.sensitive => "its `unless` guard failed (sensitive)".into(),
            (None, Some(c)) => format!("`{c}` failed"),
            (None, None) => "no guard".into(),
        });
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
