//! The `service` fact: a systemd unit's LoadState, ActiveState and UnitFileState.
//!
//! Section `@@kiln:services` (batched, present when any service is asked for): the raw
//! output of ONE `systemctl show -p Id,LoadState,ActiveState,UnitFileState --no-pager --
//! u1 u2 ...`, `Key=Value` lines in one blank-line-separated block per unit in argument
//! order. Empty when systemctl is missing or fails (no systemd as PID 1).

use serde::{Deserialize, Serialize};

use super::{not_mine, push_words, FactKind, Layout};
use crate::facts::section::{malformed, FactParseError, RawSection};
use crate::facts::{FactQuery, FactRules, HostFacts};

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceFact {
    /// `loaded`, `not-found`, `masked` ...
    pub load_state: String,
    /// `active`, `inactive`, `failed`, `activating` ...
    pub active_state: String,
    /// `enabled`, `disabled`, `static`, `masked`, or empty.
    pub unit_file_state: String,
}

impl ServiceFact {
    pub fn exists(&self) -> bool {
        self.load_state == "loaded" || self.load_state == "masked"
    }
    pub fn running(&self) -> bool {
        self.active_state == "active"
            || self.active_state == "reloading"
            || self.active_state == "activating"
    }
    pub fn enabled(&self) -> bool {
        matches!(
            self.unit_file_state.as_str(),
            "enabled" | "enabled-runtime" | "static" | "alias" | "indirect"
        )
    }
}

pub(crate) struct Service;

fn name(q: &FactQuery) -> &str {
    match q {
        FactQuery::Service { name } => name,
        other => not_mine("service", other),
    }
}

impl FactKind for Service {
    fn section(&self) -> &'static str {
        "services"
    }

    fn layout(&self) -> Layout {
        Layout::Batched
    }

    fn key(&self, q: &FactQuery) -> String {
        format!("service:{}", name(q))
    }

    fn script(&self, queries: &[&FactQuery], s: &mut String) {
        s.push_str("\tsystemctl show -p Id,LoadState,ActiveState,UnitFileState --no-pager --");
        push_words(s, queries.iter().map(|q| name(q)));
        s.push_str(" 2>/dev/null\n");
    }

    fn parse(
        &self,
        queries: &[&FactQuery],
        section: &RawSection<'_>,
        facts: &mut HostFacts,
    ) -> Result<(), FactParseError> {
        let names: Vec<&str> = queries.iter().map(|q| name(q)).collect();
        parse_services(section, &names, facts)
    }

    fn fact_json(
        &self,
        facts: &HostFacts,
        q: &FactQuery,
        _: &FactRules,
    ) -> serde_json::Result<serde_json::Value> {
        serde_json::to_value(facts.services.get(name(q)))
    }
}

/// `systemctl show` prints one block of `Key=Value` lines per unit, in argument order,
/// separated by blank lines. When the block count does not match (systemctl failed part
/// way, or printed nothing because systemd is not running) blocks are matched by `Id`
/// instead, and units without a block get empty states.
fn parse_services(
    section: &RawSection<'_>,
    names: &[&str],
    facts: &mut HostFacts,
) -> Result<(), FactParseError> {
    let mut blocks: Vec<Vec<(&str, &str)>> = Vec::new();
    let mut current: Vec<(&str, &str)> = Vec::new();
    for &(line, text) in &section.body {
        if text.trim().is_empty() {
            if !current.is_empty() {
                blocks.push(std::mem::take(&mut current));
            }
            continue;
        }
        match text.split_once('=') {
            Some(pair) => current.push(pair),
            None => return Err(malformed(section, line, "expected Key=Value", text)),
        }
    }
    if !current.is_empty() {
        blocks.push(current);
    }
    let get = |block: &[(&str, &str)], key: &str| -> String {
        block
            .iter()
            .find(|(k, _)| *k == key)
            .map(|(_, v)| v.trim().to_string())
            .unwrap_or_default()
    };
    for (i, name) in names.iter().enumerate() {
        let block = if blocks.len() == names.len() {
            Some(&blocks[i])
        } else {
            blocks.iter().find(|b| get(b, "Id") == *name)
        };
        let fact = match block {
            Some(block) => ServiceFact {
                load_state: get(block, "LoadState"),
                active_state: get(block, "ActiveState"),
                unit_file_state: get(block, "UnitFileState"),
            },
            None => ServiceFact::default(),
        };
        facts.services.insert(name.to_string(), fact);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::facts::parse::parse_facts;

    fn services() -> Vec<FactQuery> {
        ["nginx.service", "nope.service"]
            .map(|name| FactQuery::Service { name: name.into() })
            .to_vec()
    }

    #[test]
    fn services_loaded_and_not_found() {
        // `systemctl show` output as systemd 252 (Debian 12) prints it; PID 1 on the
        // capture machine was not systemd, so this block is written by hand.
        let output = "@@kiln:begin\n@@kiln:services\n\
            Id=nginx.service\nLoadState=loaded\nActiveState=active\nUnitFileState=enabled\n\n\
            Id=nope.service\nLoadState=not-found\nActiveState=inactive\nUnitFileState=\n\
            @@kiln:end\n";
        let facts = parse_facts(&services(), output).unwrap();
        let nginx = &facts.services["nginx.service"];
        assert!(nginx.exists() && nginx.running() && nginx.enabled());
        assert_eq!(
            facts.services["nope.service"],
            ServiceFact {
                load_state: "not-found".into(),
                active_state: "inactive".into(),
                unit_file_state: String::new(),
            }
        );
        assert!(!facts.services["nope.service"].exists());
    }

    #[test]
    fn services_without_systemd_have_empty_states() {
        let output = "@@kiln:begin\n@@kiln:services\n@@kiln:end\n";
        let facts = parse_facts(&services(), output).unwrap();
        assert_eq!(facts.services.len(), 2);
        assert!(facts
            .services
            .values()
            .all(|s| *s == ServiceFact::default()));
    }

    #[test]
    fn services_are_matched_by_id_when_blocks_are_missing() {
        let output = "@@kiln:begin\n@@kiln:services\n\
            Id=nope.service\nLoadState=masked\nActiveState=inactive\nUnitFileState=masked\n\
            @@kiln:end\n";
        let facts = parse_facts(&services(), output).unwrap();
        assert_eq!(facts.services["nginx.service"], ServiceFact::default());
        assert_eq!(facts.services["nope.service"].load_state, "masked");
    }
}
