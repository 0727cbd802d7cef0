//! `kiln lab up|down|status ENV`: the environment's `lab` hosts as local containers.

use anyhow::{bail, Result};

use super::lab_state_dir;
use crate::provider::lab::{self, HostState, LabConfig, LabHost};
use crate::spec::{self, Environment, Provider};

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LabAction {
    Up,
    Down,
    Status,
}

/// The lab configuration of an environment (its hosts with `provider = "lab"`).
pub fn lab_config(env_arg: &str) -> Result<LabConfig> {
    let path = spec::resolve_env_path(env_arg);
    if !path.exists() {
        bail!(
            "no environment `{env_arg}` ({} does not exist)",
            path.display()
        );
    }
    let env = Environment::load(&path).map_err(anyhow::Error::new)?;
    let hosts: Vec<LabHost> = env
        .spec
        .hosts
        .iter()
        .filter(|(_, h)| h.provider == Provider::Lab)
        .filter_map(|(n, h)| {
            h.address
                .as_ref()
                .and_then(|a| a.parse().ok())
                .map(|address| LabHost {
                    name: n.clone(),
                    address,
                })
        })
        .collect();
    if hosts.is_empty() {
        bail!("{} has no hosts with provider = \"lab\"", path.display());
    }
    Ok(LabConfig {
        env: env.name.clone(),
        hosts,
        state_dir: lab_state_dir(),
        known_hosts: env.known_hosts(),
    })
}

pub async fn run(action: LabAction, env_arg: &str) -> Result<i32> {
    let cfg = lab_config(env_arg)?;
    tokio::task::spawn_blocking(move || -> Result<i32> {
        let mut log = |m: &str| eprintln!("lab: {m}");
        match action {
            LabAction::Up => {
                lab::up(&cfg, &mut log)?;
                println!(
                    "lab `{}` is up: {}",
                    cfg.env,
                    cfg.hosts
                        .iter()
                        .map(|h| format!("{} ({})", h.name, h.address))
                        .collect::<Vec<_>>()
                        .join(", ")
                );
                Ok(0)
            }
            LabAction::Down => {
                lab::down(&cfg, &mut log)?;
                println!("lab `{}` is down", cfg.env);
                Ok(0)
            }
            LabAction::Status => {
                let mut all_running = true;
                for s in lab::status(&cfg)? {
                    let state = match s.state {
                        HostState::Running => "running",
                        HostState::Stopped => {
                            all_running = false;
                            "stopped"
                        }
                        HostState::Missing => {
                            all_running = false;
                            "missing"
                        }
                    };
                    println!(
                        "{:<16} {:<15} {}{}",
                        s.name,
                        s.address,
                        state,
                        s.pid.map(|p| format!(" (pid {p})")).unwrap_or_default()
                    );
                }
                Ok(if all_running { 0 } else { 2 })
            }
        }
    })
    .await?
}
