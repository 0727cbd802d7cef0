//! The `user` fact: a passwd entry and the user's supplementary groups.
//!
//! Section `@@kiln:user <index> <name>`: nothing when `getent passwd` finds no such user,
//! else `passwd <getent passwd line>` and `groups <id -nG output>` (primary group first),
//! printed by the prelude's `kiln_user` (`src/shell/facts_prelude.sh`).

use serde::{Deserialize, Serialize};

use super::{not_mine, FactKind};
use crate::facts::section::{key_value, malformed, parse_num, FactParseError, RawSection};
use crate::facts::{FactQuery, FactRules, HostFacts};
use crate::shell::quote as sh_quote;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UserFact {
    pub uid: u32,
    pub gid: u32,
    pub home: String,
    pub shell: String,
    /// Supplementary group names, sorted, without the primary group.
    pub groups: Vec<String>,
}

pub(crate) struct User;

fn name(q: &FactQuery) -> &str {
    match q {
        FactQuery::User { name } => name,
        other => not_mine("user", other),
    }
}

impl FactKind for User {
    fn section(&self) -> &'static str {
        "user"
    }

    fn key(&self, q: &FactQuery) -> String {
        format!("user:{}", name(q))
    }

    fn label<'a>(&self, q: &'a FactQuery) -> Option<&'a str> {
        Some(name(q))
    }

    fn script(&self, queries: &[&FactQuery], s: &mut String) {
        s.push_str("\tkiln_user ");
        s.push_str(&sh_quote(name(queries[0])));
        s.push('\n');
    }

    fn parse(
        &self,
        queries: &[&FactQuery],
        section: &RawSection<'_>,
        facts: &mut HostFacts,
    ) -> Result<(), FactParseError> {
        let name = name(queries[0]);
        let fact = parse_user(section, name)?;
        facts.users.insert(name.to_string(), fact);
        Ok(())
    }

    fn fact_json(
        &self,
        facts: &HostFacts,
        q: &FactQuery,
        _: &FactRules,
    ) -> serde_json::Result<serde_json::Value> {
        serde_json::to_value(facts.users.get(name(q)))
    }
}

/// `passwd <getent passwd line>` and `groups <id -nG>`; no passwd line means no user.
fn parse_user(section: &RawSection<'_>, name: &str) -> Result<Option<UserFact>, FactParseError> {
    let mut passwd: Option<(usize, &str)> = None;
    let mut groups: Vec<String> = Vec::new();
    for &(line, text) in &section.body {
        match key_value(text) {
            ("", "") => {}
            ("passwd", value) => passwd = Some((line, value)),
            ("groups", value) => {
                // id lists the primary group first; only the others are supplementary.
                let mut names = value.split_whitespace();
                let primary = names.next().unwrap_or_default();
                groups = names
                    .filter(|g| *g != primary)
                    .map(str::to_string)
                    .collect();
                groups.sort();
                groups.dedup();
            }
            _ => return Err(malformed(section, line, "unexpected line", text)),
        }
    }
    let Some((line, entry)) = passwd else {
        return Ok(None);
    };
    let fields: Vec<&str> = entry.split(':').collect();
    let [user, _, uid, gid, _, home, shell] = fields[..] else {
        return Err(malformed(section, line, "expected 7 passwd fields", entry));
    };
    // getent looks an all-digit name up as a uid; that finds some other user, not this one.
    if user != name {
        return Ok(None);
    }
    Ok(Some(UserFact {
        uid: parse_num(section, line, entry, uid)?,
        gid: parse_num(section, line, entry, gid)?,
        home: home.to_string(),
        shell: shell.to_string(),
        groups,
    }))
}
