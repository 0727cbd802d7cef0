//! `kiln rebuild ENV [--host H...]`: disaster recovery as one command. Hosts that are gone
//! are created through their provider (lab: new containers; ec2: new instances — each with
//! its new host key recorded in known_hosts by kiln, never accepted blindly), then the full plan is applied (a Galera node
//! rejoins its cluster, or a cluster with no survivor is recovered), then — when every
//! database host was lost — the latest backup is restored, then verify runs. The timeline of
//! the phases is the measured recovery time (RTO).

use std::path::Path;
use std::time::Instant;

use anyhow::{bail, Result};
use serde::Serialize;

use crate::provider::lab::{self, HostState};
use crate::spec::{self, Provider};

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

pub async fn run(env_arg: &str, only: &[String], json: Option<&Path>) -> Result<i32> {
    let start = Instant::now();
    let path = spec::resolve_env_path(env_arg);
    if !path.exists() {
        bail!(
            "no environment `{env_arg}` ({} does not exist)",
            path.display()
        );
    }
    // The spec is checked (and its secrets read) before anything is created.
    let t = Instant::now();
    let env = crate::engine::load(env_arg, None)?.env;
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

    // Provision: create what is gone.
    let t = Instant::now();
    let lab_hosts: Vec<&String> = env
        .spec
        .hosts
        .iter()
        .filter(|(_, h)| h.provider == Provider::Lab)
        .map(|(n, _)| n)
        .collect();
    let mut provision = Phase {
        name: "provision".into(),
        seconds: 0.0,
        ok: true,
        detail: String::new(),
    };
    if !lab_hosts.is_empty() {
        let cfg = super::lab::lab_config(env_arg)?;
        let status = lab::status(&cfg)?;
        let gone: Vec<String> = status
            .iter()
            .filter(|s| s.state != HostState::Running)
            .filter(|s| only.is_empty() || only.contains(&s.name))
            .map(|s| s.name.clone())
            .collect();
        let unexpected: Vec<String> = status
            .iter()
            .filter(|s| {
                s.state != HostState::Running && !only.is_empty() && !only.contains(&s.name)
            })
            .map(|s| s.name.clone())
            .collect();
        if !unexpected.is_empty() {
            bail!(
                "hosts {} are down too but not named with --host; name them or run without --host",
                unexpected.join(", ")
            );
        }
        if gone.is_empty() {
            provision.detail = "every lab host exists and runs".into();
        } else {
            let cfg2 = cfg.clone();
            tokio::task::spawn_blocking(move || {
                let mut log = |m: &str| eprintln!("lab: {m}");
                lab::up(&cfg2, &mut log)
            })
            .await??;
            provision.detail = format!(
                "lab: created {} (new host keys recorded in {})",
                gone.join(", "),
                cfg.known_hosts.display()
            );
            timeline.rebuilt = gone;
        }
    }
    let ec2_hosts: Vec<String> = env
        .spec
        .hosts
        .iter()
        .filter(|(n, h)| h.provider == Provider::Ec2 && (only.is_empty() || only.contains(n)))
        .map(|(n, _)| n.clone())
        .collect();
    if !ec2_hosts.is_empty() {
        let log = |m: &str| eprintln!("ec2: {m}");
        let ensured = crate::provider::ec2::ensure(
            &env,
            Some(&ec2_hosts),
            crate::provider::ec2::Timeouts::default(),
            &log,
        )
        .await?;
        let created: Vec<String> = ensured
            .iter()
            .filter(|e| e.created)
            .map(|e| format!("{} ({})", e.host, e.instance_id))
            .collect();
        if !provision.detail.is_empty() {
            provision.detail.push_str("; ");
        }
        provision.detail.push_str(&if created.is_empty() {
            "ec2: every instance exists and runs".to_string()
        } else {
            format!(
                "ec2: created {} (host keys from the console output)",
                created.join(", ")
            )
        });
        timeline
            .rebuilt
            .extend(ensured.iter().filter(|e| e.created).map(|e| e.host.clone()));
    }
    if lab_hosts.is_empty() && ec2_hosts.is_empty() {
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

    // Data: when every database host was rebuilt, the cluster formed empty: restore the
    // latest backup. Surviving nodes keep the data (a rebuilt node rejoined by state transfer).
    if code == 0 {
        let t = Instant::now();
        let with_module = |m: &str| -> Vec<String> {
            env.spec
                .hosts
                .iter()
                .filter(|(_, h)| {
                    h.roles.iter().any(|r| {
                        env.spec
                            .roles
                            .get(r)
                            .map(|r| r.modules.iter().any(|x| x == m))
                            .unwrap_or(false)
                    })
                })
                .map(|(n, _)| n.clone())
                .collect()
        };
        let db = with_module("mariadb-galera");
        let has_backup = !with_module("backup").is_empty();
        let all_db_rebuilt = !db.is_empty() && db.iter().all(|h| timeline.rebuilt.contains(h));
        let (ok, detail) = if db.is_empty() {
            (true, "skipped: no database hosts".to_string())
        } else if !all_db_rebuilt {
            (
                true,
                "skipped: surviving database nodes kept the data (rebuilt nodes rejoined by state transfer)"
                    .to_string(),
            )
        } else if !has_backup {
            (
                false,
                "every database host was rebuilt and this environment has no backup module: the data is gone"
                    .to_string(),
            )
        } else {
            let r = super::backup::restore(super::backup::RestoreArgs {
                env: env_arg.to_string(),
                from: "latest".into(),
                into: None,
                no_media: false,
                yes: true,
            })
            .await?;
            (
                r == 0,
                if r == 0 {
                    "latest backup restored (databases and media)".to_string()
                } else {
                    "restore failed (see above)".to_string()
                },
            )
        };
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
        let v = super::verify::run(env_arg, None).await?;
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
