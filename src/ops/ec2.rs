//! `kiln ec2 up|status ENV` and `kiln destroy ENV --host H | --instance ID`: the
//! environment's `provider = "ec2"` hosts as EC2 instances (see `provider::ec2`).

use std::io::{BufRead, IsTerminal, Write};

use anyhow::{bail, Result};

use serde::Serialize;

use crate::ops::plan::Format;
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
    format: Format,
) -> Result<i32> {
    if format == Format::Json && action != Ec2Action::Status {
        bail!("--format json is for `kiln ec2 status`");
    }
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
        Ec2Action::Status => status(&env, selected, format).await,
    }
}

/// `kiln ec2 status ENV --format json`: one document.
#[derive(Debug, Serialize)]
pub struct Ec2Status {
    pub environment: String,
    pub env_file: String,
    /// Every selected ec2 host has its instance, running (exit 0; else 2).
    pub all_running: bool,
    /// The environment's ec2 hosts (those of `--host`), in the file's order.
    pub hosts: Vec<HostStatus>,
    /// Live instances tagged `kiln:env = ENV` whose `kiln:host` is no ec2 host of the
    /// environment (made by hand, or left from a host since removed): listed, never
    /// touched. Only without `--host`.
    pub untracked: Vec<InstanceStatus>,
}

/// One ec2 host: its instance, or `state = "missing"` (and no instance fields) with a
/// note.
#[derive(Debug, Serialize)]
pub struct HostStatus {
    pub name: String,
    pub region: String,
    /// The instance's state (`pending`, `running`, `stopped`, …) or `missing`.
    pub state: String,
    pub instance_id: Option<String>,
    /// The address kiln connects to (the host's `connect`: private or public).
    pub address: Option<String>,
    pub private_ip: Option<String>,
    pub public_ip: Option<String>,
    pub ami: Option<String>,
    pub instance_type: Option<String>,
    /// Every tag of the instance: kiln's (`kiln:env`, `kiln:host`, `Name`) and the
    /// environment's `tags`.
    pub tags: std::collections::BTreeMap<String, String>,
    /// More live instances tagged as this host (`kiln ec2 up` refuses them; terminate the
    /// extra ones).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub duplicates: Vec<InstanceStatus>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
}

#[derive(Debug, Serialize)]
pub struct InstanceStatus {
    pub instance_id: String,
    pub state: String,
    pub private_ip: Option<String>,
    pub public_ip: Option<String>,
    pub ami: String,
    pub instance_type: String,
    /// Every tag of the instance: kiln's (`kiln:env`, `kiln:host`, `Name`) and the
    /// environment's `tags`.
    pub tags: std::collections::BTreeMap<String, String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
}

impl InstanceStatus {
    fn of(i: &Instance) -> InstanceStatus {
        InstanceStatus {
            instance_id: i.id.clone(),
            state: i.state.clone(),
            private_ip: i.private_ip.clone(),
            public_ip: i.public_ip.clone(),
            ami: i.ami.clone(),
            instance_type: i.instance_type.clone(),
            tags: i.tags.clone(),
            note: None,
        }
    }
}

/// What EC2 says of the environment's ec2 hosts (`selected`: only those).
async fn read_status(env: &Environment, selected: Option<&[String]>) -> Result<Ec2Status> {
    let ec2 = Ec2::from_env().await;
    let hosts = ec2::ec2_hosts(env, selected)?;
    let mut regions: Vec<String> = vec![];
    let mut host_regions = vec![];
    for h in &hosts {
        let r = ec2.region(h.spec.region.as_deref())?;
        if !regions.contains(&r) {
            regions.push(r.clone());
        }
        host_regions.push(r);
    }
    let mut tagged: Vec<Instance> = vec![];
    for r in &regions {
        tagged.extend(ec2.find_env(r, &env.name).await?);
    }
    let mut all_running = true;
    let mut out = vec![];
    for (h, region) in hosts.iter().zip(host_regions) {
        let mut mine: Vec<&Instance> = tagged
            .iter()
            .filter(|i| i.tag(TAG_HOST) == Some(h.name.as_str()))
            .collect();
        // The running one first, when there are several.
        mine.sort_by_key(|i| i.state != "running");
        all_running &= !mine.is_empty() && mine.iter().all(|i| i.state == "running");
        let first = mine.first();
        out.push(HostStatus {
            name: h.name.clone(),
            region: region.clone(),
            state: first
                .map(|i| i.state.clone())
                .unwrap_or_else(|| "missing".into()),
            instance_id: first.map(|i| i.id.clone()),
            address: first.and_then(|i| i.address(h.spec.connect).map(str::to_string)),
            private_ip: first.and_then(|i| i.private_ip.clone()),
            public_ip: first.and_then(|i| i.public_ip.clone()),
            ami: first.map(|i| i.ami.clone()),
            instance_type: first.map(|i| i.instance_type.clone()),
            tags: first.map(|i| i.tags.clone()).unwrap_or_default(),
            duplicates: mine
                .iter()
                .skip(1)
                .map(|i| InstanceStatus::of(i))
                .collect(),
            note: first.is_none().then(|| {
                format!(
                    "no live instance tagged {TAG_ENV}={}, {TAG_HOST}={} in {region} (`kiln ec2 up {}` creates it)",
                    env.name, h.name, env.name
                )
            }),
        });
    }
    // Instances tagged with this environment whose host is not (or no longer) an ec2 host
    // of the spec: shown so they are not forgotten, never touched.
    let mut untracked = vec![];
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
                let mut u = InstanceStatus::of(i);
                u.note = Some(format!(
                    "tagged {TAG_ENV}={} but `{host}` is not an ec2 host of {}",
                    env.name,
                    env.file.display()
                ));
                untracked.push(u);
            }
        }
    }
    Ok(Ec2Status {
        environment: env.name.clone(),
        env_file: env.file.display().to_string(),
        all_running,
        hosts: out,
        untracked,
    })
}

async fn status(env: &Environment, selected: Option<&[String]>, format: Format) -> Result<i32> {
    let st = read_status(env, selected).await?;
    let code = if st.all_running { 0 } else { 2 };
    if format == Format::Json {
        println!("{}", serde_json::to_string_pretty(&st)?);
        return Ok(code);
    }
    println!(
        "{:<16} {:<20} {:<9} {:<15} {:<15} {:<10} AMI",
        "HOST", "INSTANCE", "STATE", "PRIVATE", "PUBLIC", "TYPE"
    );
    let row = |host: &str,
               id: &str,
               state: &str,
               private: &Option<String>,
               public: &Option<String>,
               kind: &str,
               ami: &str| {
        println!(
            "{:<16} {:<20} {:<9} {:<15} {:<15} {:<10} {}",
            host,
            id,
            state,
            private.as_deref().unwrap_or("-"),
            public.as_deref().unwrap_or("-"),
            kind,
            ami
        );
    };
    for h in &st.hosts {
        match &h.instance_id {
            None => println!("{:<16} {:<20} missing", h.name, "-"),
            Some(id) => row(
                &h.name,
                id,
                &h.state,
                &h.private_ip,
                &h.public_ip,
                h.instance_type.as_deref().unwrap_or("-"),
                h.ami.as_deref().unwrap_or("-"),
            ),
        }
        for d in &h.duplicates {
            row(
                &h.name,
                &d.instance_id,
                &d.state,
                &d.private_ip,
                &d.public_ip,
                &d.instance_type,
                &d.ami,
            );
        }
    }
    for u in &st.untracked {
        let tags = u
            .tags
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join(", ");
        println!(
            "note: {} ({}; {}) is {}",
            u.instance_id,
            u.state,
            if tags.is_empty() { "no tags" } else { &tags },
            u.note.as_deref().unwrap_or_default()
        );
    }
    Ok(code)
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
