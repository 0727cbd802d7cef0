//! The addresses of ec2 hosts, for commands that only connect to them.

use anyhow::{anyhow, bail, Result};

use crate::spec::ec2::{TAG_ENV, TAG_HOST};
use crate::spec::{Environment, Provider};

use super::{client::*, ec2_hosts, Ec2Host};

/// The address of an ec2 host that has no instance: a name that never resolves (RFC 2606).
pub fn missing_address(host: &str) -> String {
    format!("no-instance.{host}.ec2.kiln.invalid")
}

/// For `plan --offline`: ec2 hosts get `<ec2 HOST>` as their address (no AWS call).
pub fn placeholder_addresses(env: &mut Environment) {
    for (name, h) in env.spec.hosts.iter_mut() {
        if h.provider == Provider::Ec2 && h.address.is_none() {
            h.address = Some(format!("<ec2 {name}>"));
        }
    }
}

/// Looks up the address of every ec2 host of `env` (those in `hosts`, or all) and sets it
/// as the host's `address`, so plan/apply/ssh reach the instance. Runs on its own thread
/// and runtime, so it can be called from sync code inside or outside a runtime.
///
/// A host without a live instance gets the address `no-instance.HOST.ec2.kiln.invalid`
/// (a name that never resolves: its connection fails alone, the other hosts are still
/// read, as for any unreachable host) and a note on stderr; `kiln rebuild` and
/// `kiln ec2 up` create it. Failing AWS calls (no credentials, no region) are errors.
pub fn fill_addresses_blocking(env: &mut Environment, hosts: Option<&[String]>) -> Result<()> {
    let wanted: Vec<Ec2Host> = ec2_hosts(env, None)?
        .into_iter()
        .filter(|h| hosts.map(|s| s.contains(&h.name)).unwrap_or(true))
        .collect();
    if wanted.is_empty() {
        return Ok(());
    }
    let env_name = env.name.clone();
    let found: Vec<(String, Result<String>)> = std::thread::scope(|s| {
        s.spawn(|| -> Result<Vec<(String, Result<String>)>> {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            rt.block_on(async {
                let ec2 = Ec2::from_env().await;
                lookup(&ec2, &env_name, &wanted).await
            })
        })
        .join()
        .map_err(|_| anyhow!("EC2 address lookup panicked"))?
    })?;
    let mut errors = vec![];
    for (name, r) in found {
        match r {
            Ok(addr) => {
                if let Some(h) = env.spec.hosts.get_mut(&name) {
                    h.address = Some(addr);
                }
            }
            Err(e) => errors.push(format!("{e:#}")),
        }
    }
    if !errors.is_empty() {
        bail!("{}", errors.join("\n"));
    }
    Ok(())
}

/// Each host's address (see [`fill_addresses_blocking`]), by host name: per host, its
/// address or why it has none; an error when AWS cannot be asked at all.
pub(super) async fn lookup(
    ec2: &Ec2,
    env_name: &str,
    wanted: &[Ec2Host],
) -> Result<Vec<(String, Result<String>)>> {
    let mut out = vec![];
    for h in wanted {
        let region = ec2.region(h.spec.region.as_deref())?;
        let live = ec2.find(&region, env_name, &h.name).await?;
        let r = match live.as_slice() {
            [] => {
                eprintln!(
                    "note: ec2 host {}: no instance tagged {TAG_ENV}={env_name}, {TAG_HOST}={} in {region} (`kiln ec2 up {env_name}` creates it)",
                    h.name, h.name
                );
                Ok(missing_address(&h.name))
            }
            [i] => i
                .address(h.spec.connect)
                .map(str::to_string)
                .ok_or_else(|| {
                    anyhow!(
                        "ec2 host {}: instance {} has no address yet",
                        h.name,
                        i.describe()
                    )
                }),
            many => Err(anyhow!(
                "ec2 host {}: {} instances carry its tags: {}",
                h.name,
                many.len(),
                many.iter()
                    .map(|i| i.id.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            )),
        };
        out.push((h.name.clone(), r));
    }
    Ok(out)
}
