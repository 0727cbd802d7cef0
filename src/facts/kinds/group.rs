//! The `group` fact: a group entry.
//!
//! Section `@@kiln:group <index> <name>`: nothing when the group is missing, else
//! `group <getent group line>`, printed by the prelude's `kiln_group`
//! (`src/shell/facts_prelude.sh`).

use serde::{Deserialize, Serialize};

use super::{not_mine, FactKind};
use crate::facts::section::{key_value, malformed, parse_num, FactParseError, RawSection};
use crate::facts::{FactQuery, FactRules, HostFacts};
use crate::shell::quote as sh_quote;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupFact {
    pub gid: u32,
    pub members: Vec<String>,
}

pub(crate) struct Group;

fn name(q: &FactQuery) -> &str {
    match q {
        FactQuery::Group { name } => name,
        other => not_mine("group", other),
    }
}

impl FactKind for Group {
    fn section(&self) -> &'static str {
        "group"
    }

    fn key(&self, q: &FactQuery) -> String {
        format!("group:{}", name(q))
    }

    fn label<'a>(&self, q: &'a FactQuery) -> Option<&'a str> {
        Some(name(q))
    }

    fn script(&self, queries: &[&FactQuery], s: &mut String) {
        s.push_str("\tkiln_group ");
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
        let fact = parse_group(section, name)?;
        facts.groups.insert(name.to_string(), fact);
        Ok(())
    }

    fn fact_json(
        &self,
        facts: &HostFacts,
        q: &FactQuery,
        _: &FactRules,
    ) -> serde_json::Result<serde_json::Value> {
        serde_json::to_value(facts.groups.get(name(q)))
    }
}

/// `group <getent group line>`; no line means no group.
fn parse_group(section: &RawSection<'_>, name: &str) -> Result<Option<GroupFact>, FactParseError> {
    let mut entry: Option<(usize, &str)> = None;
    for &(line, text) in &section.body {
        match key_value(text) {
            ("", "") => {}
            ("group", value) => entry = Some((line, value)),
            _ => return Err(malformed(section, line, "unexpected line", text)),
        }
    }
    let Some((line, entry)) = entry else {
        return Ok(None);
    };
    let fields: Vec<&str> = entry.split(':').collect();
    let [group, _, gid, members] = fields[..] else {
        return Err(malformed(section, line, "expected 4 group fields", entry));
    };
    // As for users, an all-digit name is looked up as a gid.
    if group != name {
        return Ok(None);
    }
    let mut members: Vec<String> = members
        .split(',')
        .filter(|m| !m.is_empty())
        .map(str::to_string)
        .collect();
    members.sort();
    members.dedup();
    Ok(Some(GroupFact {
        gid: parse_num(section, line, entry, gid)?,
        members,
    }))
}
