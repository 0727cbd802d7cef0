//! `service`: a systemd service's enablement and run state, and how it takes a changed
//! configuration (`reload` or `restart`, validated by `check` first).

use serde::{Deserialize, Serialize};

use crate::facts::{unit_name, FactQuery, HostFacts};
use crate::plan::{Action, AttrChange, HandlerAction, OnChange, Step, SystemctlVerb};

use super::{Conflict, Planned, Predicted};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Service {
    pub name: String,
    #[serde(default)]
    pub enabled: Option<bool>,
    /// `true` running, `false` stopped, absent: left as it is.
    #[serde(default)]
    pub running: Option<bool>,
    /// Command that validates the configuration before any reload or restart
    /// (`nginx -t`, `php-fpm8.2 -t`). A failing check leaves the running service alone.
    #[serde(default)]
    pub check: Option<String>,
    /// How the service takes a change notified by a file or unit: `reload` or `restart`.
    #[serde(default)]
    pub on_change: OnChange,
}

impl Service {
    pub fn unit(&self) -> String {
        unit_name(&self.name)
    }

    pub fn facts(&self) -> Vec<FactQuery> {
        vec![FactQuery::Service { name: self.unit() }]
    }

    pub fn plan(
        &self,
        facts: &HostFacts,
        predicted: &Predicted,
    ) -> Result<Option<Planned>, Conflict> {
        let unit = self.unit();
        let fact = facts.services.get(&unit).cloned().unwrap_or_default();
        let mut steps = vec![];
        let mut attrs = vec![];
        let mut reason = None;
        let (is_enabled, is_running) = if fact.exists() {
            (fact.enabled(), fact.running())
        } else if !predicted.packages_installed.is_empty()
            || predicted.units_changed.contains(&unit)
        {
            // Postcondition: a package or unit file installed earlier in this plan provides
            // the unit. Packages usually enable and start their services on install, but we
            // cannot know which, so the plan says what kiln will ensure.
            reason = Some(
                "unit provided by changes earlier in this plan; its state is known after apply"
                    .to_string(),
            );
            (false, false)
        } else {
            return Err(Conflict {
                resource: format!("service:{unit}"),
                message: format!(
                    "{unit} does not exist on the host and nothing in this plan installs it"
                ),
            });
        };
        // A static unit has no [Install] section: it cannot be enabled or disabled.
        // (Unless this plan rewrites the unit file: it may gain an [Install] section.)
        let is_static =
            fact.unit_file_state == "static" && !predicted.units_changed.contains(&unit);
        // A unit a package installs in this run may come enabled and started: ensure the
        // wanted state either way.
        let unknown = !fact.exists();
        let was = |v: bool| {
            if unknown {
                "unknown".to_string()
            } else {
                v.to_string()
            }
        };
        if let Some(want) = self.enabled.filter(|_| !is_static) {
            if want != is_enabled || unknown {
                steps.push(Step::Systemctl {
                    verb: if want {
                        SystemctlVerb::Enable
                    } else {
                        SystemctlVerb::Disable
                    },
                    unit: unit.clone(),
                });
                attrs.push(AttrChange::values(
                    "enabled",
                    Some(&was(is_enabled)),
                    &want.to_string(),
                ));
            }
        }
        if let Some(want) = self.running {
            if want != is_running || (unknown && !want) {
                if want {
                    if let Some(check) = &self.check {
                        steps.push(Step::Handler {
                            unit: unit.clone(),
                            action: HandlerAction::Start,
                            check: Some(check.clone()),
                        });
                    } else {
                        steps.push(Step::Systemctl {
                            verb: SystemctlVerb::Start,
                            unit: unit.clone(),
                        });
                    }
                } else {
                    steps.push(Step::Systemctl {
                        verb: SystemctlVerb::Stop,
                        unit: unit.clone(),
                    });
                }
                attrs.push(AttrChange::values(
                    "running",
                    Some(&was(is_running)),
                    &want.to_string(),
                ));
            }
        }
        if steps.is_empty() {
            return Ok(None);
        }
        let summary = attrs
            .iter()
            .map(|a| format!("{}={}", a.name, a.new))
            .collect::<Vec<_>>()
            .join(", ");
        let action = if fact.exists() {
            Action::Update
        } else {
            Action::Create
        };
        if fact.exists() && reason.is_none() {
            // Drift reports say what was found, in words.
            let mut why = vec![];
            if self.running == Some(true) && !is_running {
                why.push(format!(
                    "not running on the host (state: {})",
                    fact.active_state
                ));
            }
            if self.running == Some(false) && is_running {
                why.push("running on the host".to_string());
            }
            if self.enabled == Some(true) && !is_enabled && !is_static {
                why.push(format!(
                    "not enabled on the host (unit file state: {})",
                    if fact.unit_file_state.is_empty() {
                        "unknown"
                    } else {
                        &fact.unit_file_state
                    }
                ));
            }
            if self.enabled == Some(false) && is_enabled && !is_static {
                why.push("enabled on the host".to_string());
            }
            if !why.is_empty() {
                reason = Some(why.join("; "));
            }
        }
        let mut p = Planned::new(action, summary.replace('"', ""), steps);
        p.attributes = attrs;
        p.reason = reason;
        Ok(Some(p))
    }
}
