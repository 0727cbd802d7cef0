//! Verbs as closed sets, not strings: what a `systemctl` step does, what a handler does,
//! and how a service takes a notified change. Their serialized forms are the lowercase
//! words plans have always carried (`"verb": "enable"`, `"action": "reload"`), so saved
//! plans read back unchanged.

use std::fmt;

use serde::{Deserialize, Serialize};

/// `systemctl VERB UNIT` as an explicit state change of a service.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SystemctlVerb {
    Enable,
    Disable,
    Start,
    Stop,
    Restart,
}

impl SystemctlVerb {
    pub fn as_str(self) -> &'static str {
        match self {
            SystemctlVerb::Enable => "enable",
            SystemctlVerb::Disable => "disable",
            SystemctlVerb::Start => "start",
            SystemctlVerb::Stop => "stop",
            SystemctlVerb::Restart => "restart",
        }
    }
}

/// What a handler step does after its check: `start` (a service that must run and has a
/// `check`), or `reload`/`restart` (a notification, see [`OnChange`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum HandlerAction {
    Start,
    Reload,
    Restart,
}

impl HandlerAction {
    pub fn as_str(self) -> &'static str {
        match self {
            HandlerAction::Start => "start",
            HandlerAction::Reload => "reload",
            HandlerAction::Restart => "restart",
        }
    }
}

/// How a service takes a change notified by a file or unit (`on_change`), and so the
/// action of a notification: `reload` or `restart`.
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum OnChange {
    Reload,
    #[default]
    Restart,
}

impl OnChange {
    pub fn as_str(self) -> &'static str {
        match self {
            OnChange::Reload => "reload",
            OnChange::Restart => "restart",
        }
    }
    /// `reload` or `restart`; anything else is not a notification's action.
    pub fn parse(s: &str) -> Option<OnChange> {
        match s {
            "reload" => Some(OnChange::Reload),
            "restart" => Some(OnChange::Restart),
            _ => None,
        }
    }
}

impl From<OnChange> for HandlerAction {
    fn from(a: OnChange) -> HandlerAction {
        match a {
            OnChange::Reload => HandlerAction::Reload,
            OnChange::Restart => HandlerAction::Restart,
        }
    }
}

impl fmt::Display for SystemctlVerb {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl fmt::Display for HandlerAction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl fmt::Display for OnChange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::{Action, Change, Step};

    /// A change as plans carried it when verbs were strings: it must read back and be
    /// written again byte for byte.
    const SAVED: &str = r#"{"resource":"service:nginx.service","action":"update","summary":"enabled=true, running=true","sensitive":false,"fingerprint":"f","facts":[],"steps":[{"op":"systemctl","verb":"enable","unit":"nginx.service"},{"op":"systemctl","verb":"disable","unit":"a.service"},{"op":"systemctl","verb":"start","unit":"b.service"},{"op":"systemctl","verb":"stop","unit":"c.service"},{"op":"systemctl","verb":"restart","unit":"d.service"},{"op":"handler","unit":"nginx.service","action":"start","check":"nginx -t -q"},{"op":"handler","unit":"nginx.service","action":"reload","check":null},{"op":"handler","unit":"php.service","action":"restart","check":"php -t"},{"op":"journal_handler","handler":"reload@nginx.service"}]}"#;

    #[test]
    fn saved_plan_json_round_trips_byte_for_byte() {
        let c: Change = serde_json::from_str(SAVED).expect("today's JSON reads");
        assert_eq!(c.action, Action::Update);
        assert_eq!(
            c.steps[0],
            Step::Systemctl {
                verb: SystemctlVerb::Enable,
                unit: "nginx.service".into()
            }
        );
        assert_eq!(
            c.steps[6],
            Step::Handler {
                unit: "nginx.service".into(),
                action: HandlerAction::Reload,
                check: None
            }
        );
        assert_eq!(serde_json::to_string(&c).unwrap(), SAVED);
    }

    #[test]
    fn words_are_the_serialized_forms() {
        for v in [
            SystemctlVerb::Enable,
            SystemctlVerb::Disable,
            SystemctlVerb::Start,
            SystemctlVerb::Stop,
            SystemctlVerb::Restart,
        ] {
            assert_eq!(serde_json::to_string(&v).unwrap(), format!("\"{v}\""));
        }
        for a in [
            HandlerAction::Start,
            HandlerAction::Reload,
            HandlerAction::Restart,
        ] {
            assert_eq!(serde_json::to_string(&a).unwrap(), format!("\"{a}\""));
        }
        for o in [OnChange::Reload, OnChange::Restart] {
            assert_eq!(serde_json::to_string(&o).unwrap(), format!("\"{o}\""));
            assert_eq!(OnChange::parse(o.as_str()), Some(o));
        }
        assert_eq!(OnChange::default(), OnChange::Restart);
        assert_eq!(OnChange::parse("start"), None);
        assert_eq!(HandlerAction::from(OnChange::Reload), HandlerAction::Reload);
    }

    #[test]
    fn a_verb_outside_the_set_is_refused_on_read() {
        let bad = r#"{"op":"systemctl","verb":"mask","unit":"x.service"}"#;
        assert!(serde_json::from_str::<Step>(bad).is_err());
        let bad = r#"{"op":"handler","unit":"x.service","action":"stop","check":null}"#;
        assert!(serde_json::from_str::<Step>(bad).is_err());
    }
}
