//! `kiln lab up|down|status ENV`: the environment's `lab` hosts as local containers.

use anyhow::{bail, Result};

use crate::provider::lab::{self, HostState, LabConfig};
use crate::spec::{self, Environment};

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LabAction {
    /// Create and start the environment's lab hosts (containers).
    Up,
    /// Stop and remove the environment's lab hosts.
    Down,
    /// Show the lab hosts and whether they run.
    Status,
    /// Print the root certificate of the lab's ACME server (the `pebble` module's host):
    /// what the lab's served certificate chains verify against.
    Ca,
    /// Delete hosts (`--host`), as if the servers were lost: `kiln rebuild` brings them back.
    Destroy,
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
    let cfg = LabConfig::for_env(&env);
    if cfg.hosts.is_empty() {
        bail!("{} has no hosts with provider = \"lab\"", path.display());
    }
    Ok(cfg)
}

/// The lab CA: pebble issues from a root it makes at start; `/roots/0` on its management
/// port serves it. Read on the pebble host itself, so no port has to be open for it.
fn print_ca(env_arg: &str) -> Result<i32> {
    let path = spec::resolve_env_path(env_arg);
    let env = Environment::load(&path).map_err(anyhow::Error::new)?;
    let host = env
        .spec
        .hosts
        .iter()
        .find(|(_, h)| {
            h.roles.iter().any(|r| {
                env.spec
                    .roles
                    .get(r)
                    .map(|r| r.modules.iter().any(|m| m == "pebble"))
                    .unwrap_or(false)
            })
        })
        .map(|(n, _)| n.clone());
    let Some(host) = host else {
        bail!(
            "{}: no host runs the `pebble` module, so the lab has no ACME CA",
            path.display()
        );
    };
    let port = env
        .spec
        .modules
        .get("pebble")
        .and_then(|m| m.get("management_port"))
        .and_then(|v| v.as_integer())
        .unwrap_or(15000);
    super::ssh::ssh(
        env_arg,
        &host,
        &[format!(
            "curl -fsS --cacert /etc/pebble/listener-ca.pem https://localhost:{port}/roots/0"
        )],
    )
}

pub async fn run(action: LabAction, env_arg: &str, hosts: &[String]) -> Result<i32> {
    if action == LabAction::Ca {
        return print_ca(env_arg);
    }
    let cfg = lab_config(env_arg)?;
    if action == LabAction::Destroy {
        if hosts.is_empty() {
            bail!("name the hosts to delete: kiln lab destroy {env_arg} --host web");
        }
        for h in hosts {
            if !cfg.hosts.iter().any(|x| &x.name == h) {
                bail!("{env_arg} has no lab host `{h}`");
            }
        }
        let hosts = hosts.to_vec();
        return tokio::task::spawn_blocking(move || -> Result<i32> {
            let mut log = |m: &str| eprintln!("lab: {m}");
            for h in &hosts {
                lab::delete_host(&cfg, h, &mut log)?;
                println!("deleted lab host {h}");
            }
            Ok(0)
        })
        .await?;
    }
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
            LabAction::Ca | LabAction::Destroy => unreachable!("handled above"),
        }
    })
    .await?
}
