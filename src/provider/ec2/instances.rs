//! Finding or creating each host's instance and waiting until it runs.

use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};

use crate::spec::ec2::{Connect, TAG_ENV, TAG_HOST};
use crate::spec::Environment;

use super::{client::*, ec2_hosts, Ec2Host};

/// A host's instance after [`ensure_instances`].
#[derive(Debug, Clone, serde::Serialize)]
pub struct Ensured {
    pub host: String,
    pub instance_id: String,
    pub region: String,
    /// The address kiln connects to (`ec2.connect`: private or public).
    pub address: String,
    /// Launched by this call (false: found by its tags).
    pub created: bool,
    pub instance: Instance,
}

/// Finds or creates the instance of each ec2 host in `hosts` (all the environment's ec2
/// hosts when `None`) and waits until they run. Never contacts the instances themselves.
pub async fn ensure_instances(
    ec2: &Ec2,
    env: &Environment,
    hosts: Option<&[String]>,
    running_timeout: Duration,
    log: &(dyn Fn(&str) + Sync),
) -> Result<Vec<Ensured>> {
    let hosts = ec2_hosts(env, hosts)?;
    let mut found: Vec<(Ec2Host, String, Instance, bool)> = vec![];
    for h in &hosts {
        let region = ec2.region(h.spec.region.as_deref())?;
        let mut live = ec2.find(&region, &env.name, &h.name).await?;
        match live.len() {
            0 => {
                let i = ec2.create(&region, &env.name, h).await?;
                log(&format!(
                    "{}: launched {} ({}, {}) in {region}",
                    h.name, i.id, h.spec.instance_type, h.spec.ami
                ));
                found.push((h.clone(), region, i, true));
            }
            1 => {
                let i = live.remove(0);
                log(&format!("{}: found {}", h.name, i.describe()));
                found.push((h.clone(), region, i, false));
            }
            _ => bail!(
                "{} instances are tagged {TAG_ENV}={}, {TAG_HOST}={}: {}; terminate the extra ones (`kiln destroy {} --instance ID`)",
                live.len(),
                env.name,
                h.name,
                live.iter().map(Instance::describe).collect::<Vec<_>>().join("; "),
                env.name
            ),
        }
    }
    let mut out = vec![];
    for (h, region, i, created) in found {
        let running = ec2
            .wait_running(&region, std::slice::from_ref(&i.id), running_timeout)
            .await
            .with_context(|| format!("host {}", h.name))?
            .remove(0);
        let address = running
            .address(h.spec.connect)
            .ok_or_else(|| {
                anyhow!(
                    "host {}: instance {} has no {} address",
                    h.name,
                    running.id,
                    match h.spec.connect {
                        Connect::Private => "private",
                        Connect::Public => "public (does its subnet map public IPs?)",
                    }
                )
            })?
            .to_string();
        out.push(Ensured {
            host: h.name.clone(),
            instance_id: running.id.clone(),
            region,
            address,
            created,
            instance: running,
        });
    }
    Ok(out)
}
