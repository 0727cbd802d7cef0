//! Building the plan: for each host, resources in graph order through their pure plan
//! functions, with predictions recorded as changes are planned; then the handlers owed
//! (notified now, or journalled by an interrupted run). Pure: facts in, plan out.

use std::collections::{BTreeMap, BTreeSet};

use sha2::{Digest, Sha256};

use crate::desired::{Desired, DesiredHost};
use crate::facts::{FactQuery, FactRules, HostFacts};
use crate::resource::{Kind, Notify, Predicted};

use super::graph::ResourceGraph;
use super::select::Selection;
use super::{Action, Change, Content, HandlerAction, HostPlan, OnChange, Step, SystemctlVerb};

/// Every fact a host's plan needs: its resources' facts and the handler journal.
pub fn host_queries(host: &DesiredHost) -> Vec<FactQuery> {
    let mut q: BTreeSet<FactQuery> = host.resources.iter().flat_map(|r| r.kind.facts()).collect();
    q.insert(FactQuery::Pending);
    q.into_iter().collect()
}

/// The rules facts are judged by in `desired`'s environment: the same for planning (the
/// resources read them from `Predicted::apt`) and for every fingerprint, at plan time and
/// when `kiln apply plan.json` checks a saved plan for staleness.
pub fn fact_rules(desired: &Desired) -> FactRules {
    FactRules {
        lists_max_age_secs: desired.apt.lists_max_age_secs,
    }
}

/// sha256 over the facts behind a change, in a canonical form, judged by `rules` (see
/// [`fact_rules`]).
pub fn fingerprint(facts: &HostFacts, queries: &[FactQuery], rules: &FactRules) -> String {
    let mut h = Sha256::new();
    for q in queries {
        h.update(q.key().as_bytes());
        h.update([0]);
        h.update(facts.fact_json(q, rules).to_string().as_bytes());
        h.update([0]);
    }
    hex::encode(h.finalize())
}

/// The plan for one host whose facts were read.
pub fn host_plan(
    desired: &Desired,
    graph: &ResourceGraph,
    h: usize,
    facts: &HostFacts,
    seal_key: &[u8],
) -> HostPlan {
    host_plan_selected(desired, graph, h, facts, seal_key, None)
}

/// The plan for one host, of only the resources `selection` keeps (a targeted run). The
/// others are not planned; what every resource declares still counts (a purged directory
/// keeps the files of unselected resources), handlers come only from planned changes, and
/// handlers owed by an earlier run wait for a run that is not targeted.
pub fn host_plan_selected(
    desired: &Desired,
    graph: &ResourceGraph,
    h: usize,
    facts: &HostFacts,
    seal_key: &[u8],
    selection: Option<&Selection>,
) -> HostPlan {
    let host = &desired.hosts[h];
    let rules = fact_rules(desired);
    let mut plan = HostPlan {
        host: host.name.clone(),
        address: host.connection.address.clone(),
        changes: vec![],
        after_hosts: graph.host_dependencies(desired, h),
        error: None,
        facts_ms: 0,
        lockout: Default::default(),
        timings: None,
    };
    let mut predicted = Predicted {
        managed_paths: host
            .resources
            .iter()
            .filter_map(|r| r.kind.path())
            .map(|p| p.trim_end_matches('/').to_string())
            .collect(),
        apt: desired.apt,
        ..Predicted::default()
    };
    let mut conflicts = vec![];
    // handler (`reload@unit`) → resources that notified it
    let mut owed: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let mut starting: BTreeSet<String> = BTreeSet::new();
    for r in graph.host_order(desired, h) {
        if selection.is_some_and(|s| !s.keeps(h, r)) {
            continue;
        }
        let res = &host.resources[r];
        predicted.module = res.module.clone();
        let planned = match res.kind.plan(facts, &predicted) {
            Ok(Some(p)) => p,
            Ok(None) => continue,
            Err(c) => {
                conflicts.push(c.to_string());
                continue;
            }
        };
        res.kind.predict(&mut predicted);
        let queries = res.kind.facts();
        let mut steps = vec![];
        for n in &res.notify {
            owed.entry(n.handler()).or_default().push(res.id.clone());
            steps.push(Step::JournalHandler {
                handler: n.handler(),
            });
        }
        for s in planned.steps {
            if let Step::Systemctl {
                verb: SystemctlVerb::Start,
                unit,
            }
            | Step::Handler {
                action: HandlerAction::Start,
                unit,
                ..
            } = &s
            {
                // Starting a stopped service loads its new configuration, so a reload is
                // not needed. When the unit does not exist yet (a package installs it in
                // this run) it may already be running by the time we get there, so the
                // notified handler still runs.
                let existed = facts
                    .services
                    .get(unit)
                    .map(|f| f.exists())
                    .unwrap_or(false);
                if existed {
                    starting.insert(unit.clone());
                }
            }
            steps.push(seal_step(s, &res.id, planned.sensitive, seal_key));
        }
        plan.changes.push(Change {
            resource: res.id.clone(),
            action: planned.action,
            summary: planned.summary,
            attributes: planned.attributes,
            diff: planned.diff,
            sensitive: planned.sensitive,
            reason: planned.reason,
            fingerprint: fingerprint(facts, &queries, &rules),
            facts: queries.into_iter().map(scrub).collect(),
            steps,
        });
    }
    if !conflicts.is_empty() {
        plan.error = Some(format!("cannot plan: {}", conflicts.join("; ")));
        plan.changes.clear();
        return plan;
    }
    // Handlers journalled by an earlier run that did not get to run them.
    let mut from_journal = BTreeSet::new();
    for p in facts.pending.iter().filter(|_| selection.is_none()) {
        if Notify::parse_handler(p).is_some() && !owed.contains_key(p) {
            owed.insert(p.clone(), vec![]);
            from_journal.insert(p.clone());
        }
    }
    // A restart covers a reload of the same unit.
    let restarts: BTreeSet<String> = owed
        .keys()
        .filter_map(|k| Notify::parse_handler(k))
        .filter(|n| n.action == OnChange::Restart)
        .map(|n| n.unit)
        .collect();
    for (handler, by) in &owed {
        let Some(n) = Notify::parse_handler(handler) else {
            continue;
        };
        let check = host.resources.iter().find_map(|r| match &r.kind {
            Kind::Service(s) if s.unit() == n.unit => s.check.clone(),
            _ => None,
        });
        let mut steps = vec![];
        let reason;
        if starting.contains(&n.unit)
            || (n.action == OnChange::Reload && restarts.contains(&n.unit))
        {
            // Covered by a start or restart in this plan; only the journal entry goes.
            if !from_journal.contains(handler) {
                continue;
            }
            reason =
                "owed by an earlier run (another change in this plan also covers it)".to_string();
        } else if from_journal.contains(handler) {
            reason = "owed by an earlier run that did not finish".to_string();
        } else {
            reason = format!("notified by {}", by.join(", "));
        }
        steps.push(Step::Handler {
            unit: n.unit.clone(),
            action: n.action.into(),
            check,
        });
        let queries = vec![
            FactQuery::Service {
                name: n.unit.clone(),
            },
            FactQuery::Pending,
        ];
        plan.changes.push(Change {
            resource: format!("handler:{handler}"),
            action: Action::Run,
            summary: format!("{} {}", n.action, n.unit),
            attributes: vec![],
            diff: None,
            sensitive: false,
            reason: Some(reason),
            fingerprint: fingerprint(facts, &queries, &rules),
            facts: queries,
            steps,
        });
    }
    plan
}

/// The query as stored in a plan: a sensitive file's expected hash is dropped (a plain
/// sha256 of a short secret is brute-forced in seconds), and a sensitive guard's text. Apply re-derives it from the
/// re-rendered content when it checks for staleness.
pub fn scrub(q: FactQuery) -> FactQuery {
    match q {
        FactQuery::Path {
            path,
            sensitive: true,
            ..
        } => FactQuery::Path {
            path,
            expect_sha256: None,
            sensitive: true,
        },
        // A sensitive guard is stored by the resource it belongs to, without its text.
        FactQuery::Guard {
            sensitive_of: Some(id),
            ..
        } => FactQuery::Guard {
            command: String::new(),
            sensitive_of: Some(id),
        },
        other => other,
    }
}

/// Replaces sensitive text with a seal (see `seal`).
fn seal_step(step: Step, resource: &str, sensitive: bool, key: &[u8]) -> Step {
    match step {
        Step::WriteFile {
            path,
            content: Content::Text { text },
            owner,
            group,
            mode,
        } if sensitive => Step::WriteFile {
            path,
            content: Content::Sensitive {
                resource: resource.to_string(),
                seal: super::seal::seal(key, text.as_bytes()),
            },
            owner,
            group,
            mode,
        },
        Step::Shell { command, creates } if sensitive => Step::SensitiveShell {
            resource: resource.to_string(),
            seal: super::seal::seal(key, command.as_bytes()),
            creates,
        },
        other => other,
    }
}
