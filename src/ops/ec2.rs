//! `kiln ec2 up|status ENV` and `kiln destroy ENV --host H | --instance ID`: the
//! environment's `provider = "ec2"` hosts as EC2 instances (see `provider::ec2`).

use std::io::{BufRead, IsTerminal, Write};

use anyhow::{bail, Result};

use crate::provider::ec2::{self, Ec2, Instance, Timeouts};
use crate::spec::ec2::{TAG_ENV, TAG_HOST};
use crate::spec::{self, Environment, Provider};

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Ec2Action {
    /// Find or create each ec2 host's instance, wait until it runs, record its host keys
    /// from the console output and wait for SSH.
    Up,
    /// List the environment's ec2 hosts and every instance tagged with the environment.
    Status,
}

fn load(env_arg: &str) -> Result<Environment> {
    let path = spec::resolve_env_path(env_arg);
    if !path.exists() {
        bail!(
            "no environment `{env_arg}` ({} does not exist)",
            path.display()
        );
    }
    Environment::load(&path).map_err(anyhow::Error::new)
}

pub async fn run(
    action: Ec2Action,
    env_arg: &str,
    hosts: &[String],
    no_ssh: bool,
    timeout: Option<u64>,
) -> Result<i32> {
    let env = load(env_arg)?;
    let selected = (!hosts.is_empty()).then_some(hosts);
    if ec2::ec2_hosts(&env, selected)?.is_empty() {
        bail!(
            "{} has no hosts with provider = \"ec2\"",
            env.file.display()
        );
    }
    let log = |m: &str| eprintln!("ec2: {m}");
    match action {
        Ec2Action::Up => {
            let t = timeout.map(Timeouts::all).unwrap_or_default();
            let ensured = if no_ssh {
                let ec2 = Ec2::from_env().await;
                let e = ec2::ensure_instances(&ec2, &env, selected, t.running, &log).await?;
                ec2::record_host_keys(&ec2, &env, &e, t.host_keys, &log).await?;
                e
            } else {
                // The one place SSH transports are made (see transport::Connector).
                let connector = crate::transport::ssh::SshConnector::for_env(&env);
                ec2::ensure(&env, selected, t, &connector, &log).await?
            };
            for e in &ensured {
                println!(
                    "{:<16} {:<20} {:<15} {}",
                    e.host,
                    e.instance_id,
                    e.address,
                    if e.created { "created" } else { "found" }
                );
            }
            Ok(0)
        }
        Ec2Action::Status => status(&env, selected).await,
    }
}

async fn status(env: &Environment, selected: Option<&[String]>) -> Result<i32> {
    let ec2 = Ec2::from_env().await;
    let hosts = ec2::ec2_hosts(env, selected)?;
    let mut regions: Vec<String> = vec![];
    for h in &hosts {
        let r = ec2.region(h.spec.region.as_deref())?;
        if !regions.contains(&r) {
            regions.push(r);
        }
    }
    let mut tagged: Vec<Instance> = vec![];
    for r in &regions {
        tagged.extend(ec2.find_env(r, &env.name).await?);
    }
    let mut all_running = true;
    println!(
        "{:<16} {:<20} {:<9} {:<15} {:<15} {:<10} AMI",
        "HOST", "INSTANCE", "STATE", "PRIVATE", "PUBLIC", "TYPE"
    );
    for h in &hosts {
        let mine: Vec<&Instance> = tagged
            .iter()
            .filter(|i| i.tag(TAG_HOST) == Some(h.name.as_str()))
            .collect();
        if mine.is_empty() {
            all_running = false;
            println!("{:<16} {:<20} missing", h.name, "-");
        }
        for i in mine {
            all_running &= i.state == "running";
            println!(
                "{:<16} {:<20} {:<9} {:<15} {:<15} {:<10} {}",
                h.name,
                i.id,
                i.state,
                i.private_ip.as_deref().unwrap_or("-"),
                i.public_ip.as_deref().unwrap_or("-"),
                i.instance_type,
                i.ami
            );
        }
    }
    // Instances tagged with this environment whose host is not (or no longer) an ec2 host
    // of the spec: shown so they are not forgotten, never touched.
    if selected.is_none() {
        for i in &tagged {
            let host = i.tag(TAG_HOST).unwrap_or("");
            let known = env
                .spec
                .hosts
                .get(host)
                .map(|h| h.provider == Provider::Ec2)
                .unwrap_or(false);
            if !known {
                println!(
                    "note: {} is tagged {TAG_ENV}={} but `{host}` is not an ec2 host of {}",
                    i.describe(),
                    env.name,
                    env.file.display()
                );
            }
        }
    }
    Ok(if all_running { 0 } else { 2 })
}

/// `kiln destroy ENV --host H` / `--instance ID`: terminates the host's instance(s) after
/// showing them and asking (unless `yes`). Anything not tagged `kiln:env = ENV` and
/// `kiln:host = <an ec2 host of ENV>` is refused.
pub async fn destroy(
    env_arg: &str,
    host: Option<&str>,
    instance: Option<&str>,
    yes: bool,
) -> Result<i32> {
    let env = load(env_arg)?;
    let ec2 = Ec2::from_env().await;
    let targets: Vec<(String, Instance)> = match (host, instance) {
        (None, None) => bail!("name what to destroy: --host HOST or --instance ID"),
        (Some(h), None) => {
            let spec = host_spec(&env, h)?;
            let region = ec2.region(spec.region.as_deref())?;
            let live = ec2.find(&region, &env.name, h).await?;
            if live.is_empty() {
                println!(
                    "host {h}: no live instance tagged {TAG_ENV}={}, {TAG_HOST}={h} in {region}; nothing to destroy",
                    env.name
                );
                return Ok(0);
            }
            live.into_iter().map(|i| (h.to_string(), i)).collect()
        }
        (host, Some(id)) => {
            // The region of the named host, else the configured one.
            let region = match host {
                Some(h) => ec2.region(host_spec(&env, h)?.region.as_deref())?,
                None => ec2.region(None)?,
            };
            let Some(i) = ec2.get(&region, id).await? else {
                bail!("no instance {id} in {region}");
            };
            let tagged_host = i.tag(TAG_HOST).map(str::to_string);
            let owner_ok = i.tag(TAG_ENV) == Some(env.name.as_str())
                && tagged_host
                    .as_deref()
                    .map(|t| host_spec(&env, t).is_ok() && host.map(|h| h == t).unwrap_or(true))
                    .unwrap_or(false);
            if !owner_ok {
                eprintln!(
                    "refusing to terminate {}: kiln terminates only instances tagged {TAG_ENV}={} and {TAG_HOST}={}",
                    i.describe(),
                    env.name,
                    host.unwrap_or("<an ec2 host of the environment>")
                );
                return Ok(1);
            }
            vec![(tagged_host.unwrap_or_default(), i)]
        }
    };
    for (h, i) in &targets {
        println!("will terminate host {h}: {} in {}", i.describe(), i.region);
    }
    if !yes && !confirm(targets.len())? {
        println!("nothing terminated");
        return Ok(1);
    }
    let known_hosts = env.known_hosts();
    for (h, i) in &targets {
        ec2.terminate(&i.region, &i.id, &env.name, h).await?;
        println!("host {h}: terminating {}", i.id);
        // Its addresses may come back with another machine's key: forget this one's.
        let port = crate::desired::connection(&env, h, None).port;
        for a in [&i.private_ip, &i.public_ip].into_iter().flatten() {
            let name = crate::provider::known_hosts::host_name(a, port);
            crate::provider::known_hosts::edit(&known_hosts, &[name], &[])?;
        }
    }
    Ok(0)
}

fn host_spec<'a>(env: &'a Environment, host: &str) -> Result<&'a crate::spec::ec2::Ec2Spec> {
    match env.spec.hosts.get(host) {
        Some(h) if h.provider == Provider::Ec2 => Ok(h.ec2.as_ref().expect("validated")),
        Some(_) => bail!(
            "host `{host}` of {} is not an ec2 host: `kiln destroy` terminates EC2 instances only",
            env.file.display()
        ),
        None => bail!("no host `{host}` in {}", env.file.display()),
    }
}

fn confirm(n: usize) -> Result<bool> {
    if !std::io::stdin().is_terminal() {
        bail!("refusing to terminate without --yes: standard input is not a terminal");
    }
    print!(
        "\nTerminate {n} instance{}? Only 'yes' is accepted: ",
        if n == 1 { "" } else { "s" }
    );
    std::io::stdout().flush()?;
    let mut line = String::new();
    std::io::stdin().lock().read_line(&mut line)?;
    Ok(line.trim() == "yes")
}
