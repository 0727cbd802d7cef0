//! Planning: gather every host, build each host's plan (pure), then the cluster decisions
//! that need every node's facts at once.

use anyhow::Result;

use super::{gather, Connections, Loaded};
use crate::facts::HostFacts;
use crate::plan::lockout::{self, KilnKey};
use crate::plan::{build, HostPlan, Plan, PLAN_FORMAT};

/// Reads every host and builds the plan, each host's with its lockout check (judged here,
/// refused or not by the command: `Plan::refuse_lockouts`).
pub async fn make_plan(loaded: &Loaded, conns: &mut Connections) -> Result<Plan> {
    let seal_key = crate::plan::seal::load_key()?;
    let keys: Vec<KilnKey> = loaded
        .desired
        .hosts
        .iter()
        .map(|h| super::lockout::kiln_key(&h.connection))
        .collect();
    let redactor = loaded.env.redactor();
    // The host's own facts, and what the lockout check needs (the SSH session, when a rule
    // kiln writes admits SSH by address): still one script per host.
    let gathered = gather(loaded, conns, |h| {
        let host = &loaded.desired.hosts[h];
        let mut q = build::host_queries(host);
        q.extend(lockout::queries(host, &keys[h]));
        q
    })
    .await;
    let mut hosts = vec![];
    let mut all_facts = vec![];
    for (h, g) in gathered.into_iter().enumerate() {
        let host = &loaded.desired.hosts[h];
        let mut hp = match &g.facts {
            Ok(f) => build::host_plan_selected(
                &loaded.desired,
                &loaded.graph,
                h,
                f,
                &seal_key,
                loaded.selection.as_ref(),
            ),
            Err(e) => HostPlan {
                host: host.name.clone(),
                address: host.connection.address.clone(),
                changes: vec![],
                after_hosts: vec![],
                error: Some(e.clone()),
                facts_ms: 0,
                lockout: Default::default(),
                timings: None,
            },
        };
        hp.facts_ms = g.ms;
        hp.timings = g.timings.clone();
        if let Ok(f) = &g.facts {
            hp.lockout = super::lockout::check(host, &keys[h], Some(f), &redactor);
        }
        hosts.push(hp);
        all_facts.push(g.facts.ok());
    }
    // Cluster decisions need every node's facts at once (Galera bootstrap, joins, rolls).
    // A targeted run without any `galera_node` decides nothing (nor refuses anything) there.
    let facts_refs: Vec<Option<&HostFacts>> = all_facts.iter().map(|f| f.as_ref()).collect();
    let clusters = loaded
        .selection
        .as_ref()
        .is_none_or(|s| s.keeps_type(&loaded.desired, "galera_node"));
    if clusters {
        for note in crate::cluster::galera::plan_clusters(
            &loaded.desired,
            &facts_refs,
            &mut hosts,
            &loaded.env.secrets,
            &seal_key,
        ) {
            eprintln!("note: {note}");
        }
    }
    if let Some(sel) = &loaded.selection {
        sel.retain_clusters(&loaded.desired, &mut hosts);
    }
    Ok(Plan {
        format: PLAN_FORMAT,
        kiln_version: env!("CARGO_PKG_VERSION").to_string(),
        environment: loaded.env.name.clone(),
        env_file: std::fs::canonicalize(&loaded.env.file).unwrap_or(loaded.env.file.clone()),
        created_at: now_rfc3339(),
        hosts,
        targets: loaded.selection.as_ref().map(|s| s.targeting.clone()),
    })
}

/// The plan against bare hosts, built with no connection: checks the whole spec (templates
/// rendered, graph acyclic, resources valid) and shows everything a fresh host would get,
/// and the lockout check of what it can judge without a host.
pub fn offline_plan(loaded: &Loaded) -> Result<Plan> {
    let seal_key = crate::plan::seal::load_key()?;
    let bare = HostFacts::default();
    let redactor = loaded.env.redactor();
    let mut hosts: Vec<_> = (0..loaded.desired.hosts.len())
        .map(|h| {
            let host = &loaded.desired.hosts[h];
            let mut hp = build::host_plan_selected(
                &loaded.desired,
                &loaded.graph,
                h,
                &bare,
                &seal_key,
                loaded.selection.as_ref(),
            );
            // No host read: no source address, nothing of the host's current files.
            let key = super::lockout::kiln_key(&host.connection);
            hp.lockout = super::lockout::check(host, &key, None, &redactor);
            hp
        })
        .collect();
    // The cluster steps for bare nodes (first formation, databases and users), as a first
    // apply would run them.
    let clusters = loaded
        .selection
        .as_ref()
        .is_none_or(|s| s.keeps_type(&loaded.desired, "galera_node"));
    if clusters {
        let facts: Vec<Option<&HostFacts>> = vec![Some(&bare); loaded.desired.hosts.len()];
        for note in crate::cluster::galera::plan_clusters(
            &loaded.desired,
            &facts,
            &mut hosts,
            &loaded.env.secrets,
            &seal_key,
        ) {
            eprintln!("note: {note}");
        }
    }
    Ok(Plan {
        format: PLAN_FORMAT,
        kiln_version: env!("CARGO_PKG_VERSION").to_string(),
        environment: loaded.env.name.clone(),
        env_file: std::fs::canonicalize(&loaded.env.file).unwrap_or(loaded.env.file.clone()),
        created_at: now_rfc3339(),
        hosts,
        targets: loaded.selection.as_ref().map(|s| s.targeting.clone()),
    })
}

pub fn now_rfc3339() -> String {
    time::OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}
