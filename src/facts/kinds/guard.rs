//! The `guard` fact: the exit status of a read-only guard command (`unless` of a command
//! resource).
//!
//! Section `@@kiln:guard <index>`: `status <exit status>` of the guard command, run as a
//! user unit ([`crate::shell::user_unit`]: its own `sh`, the text in no process argument)
//! with `</dev/null >/dev/null 2>&1`. A separate `sh` rather than a subshell means a guard
//! with a syntax error fails alone instead of aborting the whole fact script, and it does
//! not inherit this script's `set -u` or variables. The command is not echoed in the
//! marker because it may carry secrets.

use super::{not_mine, FactKind};
use crate::facts::section::{
    key_value, malformed, missing_line, parse_num, FactParseError, RawSection,
};
use crate::facts::{FactQuery, FactRules, HostFacts};

pub(crate) struct Guard;

fn command(q: &FactQuery) -> &str {
    match q {
        FactQuery::Guard { command, .. } => command,
        other => not_mine("guard", other),
    }
}

impl FactKind for Guard {
    fn section(&self) -> &'static str {
        "guard"
    }

    fn key(&self, q: &FactQuery) -> String {
        match q {
            FactQuery::Guard {
                sensitive_of: Some(id),
                ..
            } => format!("guard@{id}"),
            q => format!("guard:{}", command(q)),
        }
    }

    fn script(&self, queries: &[&FactQuery], s: &mut String) {
        s.push('\t');
        s.push_str(&crate::shell::user_unit(command(queries[0])));
        s.push_str(" </dev/null >/dev/null 2>&1\n");
        s.push_str("\tprintf 'status %s\\n' \"$?\"\n");
    }

    fn parse(
        &self,
        queries: &[&FactQuery],
        section: &RawSection<'_>,
        facts: &mut HostFacts,
    ) -> Result<(), FactParseError> {
        let ok = parse_guard(section)?;
        facts.guards.insert(command(queries[0]).to_string(), ok);
        Ok(())
    }

    fn fact_json(
        &self,
        facts: &HostFacts,
        q: &FactQuery,
        _: &FactRules,
    ) -> serde_json::Result<serde_json::Value> {
        serde_json::to_value(facts.guards.get(command(q)))
    }
}

fn parse_guard(section: &RawSection<'_>) -> Result<bool, FactParseError> {
    let mut status: Option<i32> = None;
    for &(line, text) in &section.body {
        match key_value(text) {
            ("", "") => {}
            ("status", value) => status = Some(parse_num(section, line, text, value)?),
            _ => return Err(malformed(section, line, "unexpected line", text)),
        }
    }
    status
        .map(|s| s == 0)
        .ok_or_else(|| missing_line(section, "status"))
}

#[cfg(test)]
mod tests {
    use crate::facts::kinds::fixture::{captured, run_sh};
    use crate::facts::script::fact_script;
    use crate::facts::FactQuery;

    #[test]
    fn guards() {
        let facts = captured();
        assert!(facts.guards["test -d /tmp/kiln-fixture/dir"]);
        assert!(!facts.guards["grep -q nomatch /tmp/kiln-fixture/plain.conf"]);
    }

    #[test]
    fn a_broken_guard_fails_alone() {
        let out = run_sh(&fact_script(&[
            FactQuery::Guard {
                command: "if then (".into(),
                sensitive_of: None,
            },
            FactQuery::Guard {
                command: "true".into(),
                sensitive_of: None,
            },
            FactQuery::Guard {
                command: "cat; exit 3".into(),
                sensitive_of: None,
            },
        ]));
        assert_eq!(
            out,
            "@@kiln:begin\n@@kiln:guard 0\nstatus 3\n@@kiln:guard 1\nstatus 2\n\
             @@kiln:guard 2\nstatus 0\n@@kiln:end\n"
        );
    }
}
