//! EC2 hosts: instances found by their tags, created when missing, terminated only when
//! they carry kiln's own tags for the environment and host.
//!
//! There is no state file. An instance belongs to host `H` of environment `E` when it is
//! tagged `kiln:env = E` and `kiln:host = H` and is pending, running, stopping or stopped
//! (terminated and shutting-down instances are gone for kiln). So:
//!
//! * [`ensure_instances`] finds each host's instance by those tags and creates the missing
//!   ones (with the tags, the user's tags and `Name = E-H`), then waits until they run.
//!   A second run creates nothing and returns the same instance ids.
//! * [`record_host_keys`] reads the instance's console output (cloud-init prints the SSH
//!   host public keys between `-----BEGIN SSH HOST KEY KEYS-----` and `-----END SSH HOST
//!   KEY KEYS-----`) through the authenticated EC2 API and writes them into the
//!   environment's known_hosts for the address kiln connects to: a new instance's key is
//!   recorded without trusting the network and without a prompt.
//! * [`wait_for_ssh`] connects with strict host key checking until sshd answers.
//! * [`ensure`] is the three in a row: what `kiln ec2 up` and, through [`Ec2Provider`]
//!   (the [`super::HostProvider`] of EC2), `kiln rebuild` call.
//! * [`Ec2::terminate`] re-reads the instance and refuses unless its tags name this
//!   environment and host.
//!
//! Region, endpoint (`AWS_ENDPOINT_URL`, `AWS_ENDPOINT_URL_EC2`) and credentials come from
//! the usual AWS environment variables and profiles (aws-config); a host's `ec2.region`
//! overrides the region.

mod addresses;
mod client;
mod host_keys;
mod instances;
mod provider;
mod ssh;

use std::time::Duration;

use anyhow::{bail, Result};

use crate::spec::ec2::Ec2Spec;
use crate::spec::{Environment, Provider};

pub use addresses::{fill_addresses_blocking, missing_address, placeholder_addresses};
pub use client::{Ec2, Instance, LIVE_STATES};
pub use host_keys::{parse_console_host_keys, record_host_keys};
pub use instances::{ensure_instances, Ensured};
pub use provider::Ec2Provider;
pub use ssh::wait_for_ssh;

/// How long [`ensure`] waits for each phase by default.
#[derive(Debug, Clone, Copy)]
pub struct Timeouts {
    pub running: Duration,
    pub host_keys: Duration,
    pub ssh: Duration,
}

impl Timeouts {
    /// The same limit for every phase (`--timeout SECS`).
    pub fn all(secs: u64) -> Timeouts {
        let d = Duration::from_secs(secs);
        Timeouts {
            running: d,
            host_keys: d,
            ssh: d,
        }
    }
}

impl Default for Timeouts {
    fn default() -> Self {
        Timeouts {
            running: Duration::from_secs(300),
            host_keys: Duration::from_secs(600),
            ssh: Duration::from_secs(300),
        }
    }
}

/// One ec2 host of an environment with its spec.
#[derive(Debug, Clone)]
pub struct Ec2Host {
    pub name: String,
    pub spec: Ec2Spec,
}

/// The environment's `provider = "ec2"` hosts among `hosts` (all of them when `None`).
pub fn ec2_hosts(env: &Environment, hosts: Option<&[String]>) -> Result<Vec<Ec2Host>> {
    let mut out = vec![];
    let names: Vec<String> = match hosts {
        Some(h) => h.to_vec(),
        None => env.spec.hosts.keys().cloned().collect(),
    };
    for name in names {
        let Some(h) = env.spec.hosts.get(&name) else {
            bail!(
                "no host `{name}` in {} (hosts: {})",
                env.file.display(),
                env.spec
                    .hosts
                    .keys()
                    .cloned()
                    .collect::<Vec<_>>()
                    .join(", ")
            );
        };
        match (&h.provider, &h.ec2) {
            (Provider::Ec2, Some(spec)) => out.push(Ec2Host {
                name: name.clone(),
                spec: spec.clone(),
            }),
            _ if hosts.is_some() => bail!(
                "host `{name}` of {} is not an ec2 host (provider = \"{}\")",
                env.file.display(),
                serde_json::to_value(h.provider)
                    .ok()
                    .and_then(|v| v.as_str().map(str::to_string))
                    .unwrap_or_default()
            ),
            _ => {}
        }
    }
    Ok(out)
}

/// For `kiln rebuild` and `kiln ec2 up`: every ec2 host in `hosts` (all when `None`) has
/// a running instance (found by tags or created), its host keys recorded in known_hosts
/// and SSH answering (reached through `connector`). Returns each host's instance and
/// address.
pub async fn ensure(
    env: &Environment,
    hosts: Option<&[String]>,
    timeouts: Timeouts,
    connector: &dyn crate::transport::Connector,
    log: &(dyn Fn(&str) + Sync),
) -> Result<Vec<Ensured>> {
    let ec2 = Ec2::from_env().await;
    let ensured = ensure_instances(&ec2, env, hosts, timeouts.running, log).await?;
    record_host_keys(&ec2, env, &ensured, timeouts.host_keys, log).await?;
    wait_for_ssh(env, connector, &ensured, timeouts.ssh, log).await?;
    Ok(ensured)
}
