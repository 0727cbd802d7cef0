//! `kiln rebuild ENV [--host H...]`: disaster recovery as one command. Hosts that are gone
//! are created through their provider (lab: new containers; ec2: new instances — each with
//! its new host key recorded in known_hosts by kiln, never accepted blindly), then the full plan is applied (a Galera node
//! rejoins its cluster, or a cluster with no survivor is recovered), then — when every
//! database host was lost — the latest backup is restored, then verify runs. The timeline of
//! the phases is the measured recovery time (RTO).

use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use anyhow::{bail, Result};
use serde::Serialize;

use crate::provider::{self, Progress};
use crate::spec::{self, Provider};
use crate::transport::ssh::SshConnector;

#[derive(Debug, Serialize)]
pub struct Phase {
    pub name: String,
    pub seconds: f64,
    pub ok: bool,
    pub detail: String,
}

#[derive(Debug, Serialize)]
pub struct Timeline {
    pub environment: String,
    pub rebuilt: Vec<String>,
    pub phases: Vec<Phase>,
    pub total_seconds: f64,
    pub ok: bool,
}

impl Timeline {
    fn render(&self) -> String {
        let mut s = format!(
            "\nRebuild of {} — timeline (RTO {:.1} s{})\n",
            self.environment,
            self.total_seconds,
            if self.ok { "" } else { ", FAILED" }
        );
        let mut at = 0.0;
        for p in &self.phases {
            s.push_str(&format!(
                "  {:>7.1} s  {:>7.1} s  {} {:<10} {}\n",
                at,
                p.seconds,
                if p.ok { "✓" } else { "✗" },
                p.name,
                p.detail
            ));
            at += p.seconds;
        }
        s
    }
}

pub async fn run(
    env_arg: &str,
    only: &[String],
    json: Option<&Path>,
    timeout: Option<u64>,
    yes: bool,
) -> Result<i32> {
    let start = Instant::now();
    let path = spec::resolve_env_path(env_arg);
    if !path.exists() {
        bail!(
            "no environment `{env_arg}` ({} does not exist)",
            path.display()
        );
    }
    if !yes {
        let what = if only.is_empty() {
            "any missing host".to_string()
        } else {
            only.join(", ")
        };
        if !super::apply::ask(
            "refusing to rebuild without --yes: standard input is not a terminal",
            &format!(
                "Rebuild {}: create {what} through its provider (lab containers, EC2 instances), \
                 apply the full plan, restore the latest backup if every database host is new, verify?",
                path.display()
            ),
        )? {
            println!("Rebuild cancelled; nothing was changed.");
            return Ok(1);
        }
    }
    // The spec is checked (and its secrets read) before anything is created.
    let t = Instant::now();
    let crate::engine::Loaded { env, desired, .. } = crate::engine::load(env_arg, None)?;
    for h in only {
        if !env.spec.hosts.contains_key(h) {
            bail!("{} has no host `{h}`", path.display());
        }
    }
    let mut phases = vec![Phase {
        name: "spec".into(),
        seconds: t.elapsed().as_secs_f64(),
        ok: true,
        detail: format!("{} hosts, spec valid", env.spec.hosts.len()),
    }];
    let mut timeline = Timeline {
        environment: env.name.clone(),
        rebuilt: vec![],
        phases: vec![],
        total_seconds: 0.0,
        ok: false,
    };

    // Provision: each provider creates what is gone (lab: new containers; ec2: new
    // instances, their host keys recorded from the console output).
    let t = Instant::now();
    let connector = Arc::new(SshConnector::for_env(&env));
    let mut details = vec![];
    let ec2_timeouts = timeout
        .map(provider::ec2::Timeouts::all)
        .unwrap_or_default();
    for p in provider::for_env(&env, connector, ec2_timeouts) {
        let kind = match p.kind() {
            Provider::Lab => "lab",
            Provider::Ec2 => "ec2",
            Provider::Static => "static",
        };
        let progress: Progress = Arc::new(move |m: &str| eprintln!("{kind}: {m}"));
        let done = p.ensure(only, progress).await?;
        if !done.detail.is_empty() {
            details.push(done.detail);
        }
        timeline.rebuilt.extend(done.created);
    }
    let mut provision = Phase {
        name: "provision".into(),
        seconds: 0.0,
        ok: true,
        detail: details.join("; "),
    };
    if details.is_empty() {
        provision.detail = "static hosts: nothing to create (they must be reachable)".into();
    }
    provision.seconds = t.elapsed().as_secs_f64();
    phases.push(provision);

    // Apply the full plan (converged hosts are no-ops; cluster steps rejoin or recover).
    let t = Instant::now();
    let code = super::apply::run(super::apply::ApplyArgs {
        target: env_arg.to_string(),
        yes: true,
        limit: None,
        parallel: None,
        lock_timeout: 10,
        format: super::plan::Format::Human,
        select: Default::default(),
        // A rebuilt host that would lock kiln out is refused like any other apply.
        i_know_this_locks_me_out: false,
    })
    .await?;
    phases.push(Phase {
        name: "apply".into(),
        seconds: t.elapsed().as_secs_f64(),
        ok: code == 0,
        detail: if code == 0 {
            "full plan applied".into()
        } else {
            "apply failed (see above)".into()
        },
    });

    // Data: a Galera cluster whose every node was rebuilt formed empty: restore its latest
    // point. Surviving nodes keep the data (a rebuilt node rejoined by state transfer).
    // Each cluster of the environment on its own: another cluster is never touched.
    if code == 0 {
        let t = Instant::now();
        let clusters = super::backup::clusters(&desired.hosts);
        let several = clusters.len() > 1;
        let mut ok = true;
        let mut details = vec![];
        for (name, nodes) in &clusters {
            let label = |d: &str| {
                if several {
                    format!("cluster {name}: {d}")
                } else {
                    d.to_string()
                }
            };
            if !nodes.iter().all(|h| timeline.rebuilt.contains(&h.name)) {
                details.push(label(
                    "skipped: surviving database nodes kept the data (rebuilt nodes rejoined by state transfer)",
                ));
                continue;
            }
            if super::backup::backup_hosts(&desired.hosts, Some(name)).is_err() {
                ok = false;
                details.push(label(
                    "every node was rebuilt and no node of it runs the backup module: the data is gone",
                ));
                continue;
            }
            let r = super::backup::restore(super::backup::RestoreArgs {
                env: env_arg.to_string(),
                from: "latest".into(),
                to_time: None,
                into: None,
                cluster: Some(name.to_string()),
                no_media: false,
                physical: false,
                from_env: None,
                anonymize: None,
                no_anonymize: false,
                yes: true,
            })
            .await?;
            if r != 0 {
                ok = false;
                details.push(label("restore failed (see above)"));
                continue;
            }
            // The rebuilt cluster is a new history: its binary logs continue no earlier
            // backup, so a base backup of the restored data starts its point-in-time
            // recovery at once (not at the next scheduled run).
            let b = super::backup::backup(env_arg, Some(name)).await?;
            ok &= b == 0;
            details.push(label(if b == 0 {
                "restored to the latest archived point (backup + binary logs, media); a new base backup taken"
            } else {
                "restored, but the new base backup failed (see above)"
            }));
        }
        if clusters.is_empty() {
            details.push("skipped: no database hosts".to_string());
        }
        let detail = details.join("; ");
        phases.push(Phase {
            name: "restore".into(),
            seconds: t.elapsed().as_secs_f64(),
            ok,
            detail,
        });
    }

    // Verify: the re-plan is empty and every health check passes.
    if phases.iter().all(|p| p.ok) {
        let t = Instant::now();
        let v = super::verify::run(env_arg, None, super::plan::Format::Human).await?;
        phases.push(Phase {
            name: "verify".into(),
            seconds: t.elapsed().as_secs_f64(),
            ok: v == 0,
            detail: if v == 0 {
                "converged, every health check passes".into()
            } else {
                "verify failed (see above)".into()
            },
        });
    }
    timeline.ok = phases.iter().all(|p| p.ok);
    timeline.total_seconds = start.elapsed().as_secs_f64();
    timeline.phases = phases;
    print!("{}", timeline.render());
    if let Some(j) = json {
        crate::state::write_private(j, serde_json::to_string_pretty(&timeline)?.as_bytes())?;
        println!("Timeline written to {}", j.display());
    }
    Ok(if timeline.ok { 0 } else { 1 })
}
