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
//! * [`ensure`] is the three in a row: what `kiln ec2 up` and `kiln rebuild` call.
//! * [`terminate`] re-reads the instance and refuses unless its tags name this
//!   environment and host.
//!
//! Region, endpoint (`AWS_ENDPOINT_URL`, `AWS_ENDPOINT_URL_EC2`) and credentials come from
//! the usual AWS environment variables and profiles (aws-config); a host's `ec2.region`
//! overrides the region.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use aws_sdk_ec2::error::DisplayErrorContext;
use aws_sdk_ec2::types::{Filter, InstanceType, ResourceType, Tag, TagSpecification};
use aws_sdk_ec2::Client;
use base64::Engine;

use crate::spec::ec2::{Connect, Ec2Spec, TAG_ENV, TAG_HOST};
use crate::spec::{Environment, Provider};

/// The instance states that count as "the host exists".
pub const LIVE_STATES: &[&str] = &["pending", "running", "stopping", "stopped"];

/// How long [`ensure`] waits for each phase by default.
#[derive(Debug, Clone, Copy)]
pub struct Timeouts {
    pub running: Duration,
    pub host_keys: Duration,
    pub ssh: Duration,
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

/// What kiln knows about one instance (from DescribeInstances).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Instance {
    pub id: String,
    pub state: String,
    pub region: String,
    pub ami: String,
    pub instance_type: String,
    pub subnet: Option<String>,
    pub security_groups: Vec<String>,
    pub private_ip: Option<String>,
    pub public_ip: Option<String>,
    pub tags: BTreeMap<String, String>,
}

impl Instance {
    pub fn tag(&self, key: &str) -> Option<&str> {
        self.tags.get(key).map(String::as_str)
    }

    /// Tagged as kiln's own instance of `host` in `env`.
    pub fn is_kilns(&self, env: &str, host: &str) -> bool {
        self.tag(TAG_ENV) == Some(env) && self.tag(TAG_HOST) == Some(host)
    }

    pub fn address(&self, connect: Connect) -> Option<&str> {
        match connect {
            Connect::Private => self.private_ip.as_deref(),
            Connect::Public => self.public_ip.as_deref(),
        }
    }

    /// `i-0abc (running; kiln:env=prod, kiln:host=web1, Name=prod-web1)`
    pub fn describe(&self) -> String {
        let tags = self
            .tags
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join(", ");
        format!(
            "{} ({}; {})",
            self.id,
            self.state,
            if tags.is_empty() {
                "no tags".to_string()
            } else {
                tags
            }
        )
    }

    fn from_sdk(i: &aws_sdk_ec2::types::Instance, region: &str) -> Instance {
        Instance {
            id: i.instance_id().unwrap_or_default().to_string(),
            state: i
                .state()
                .and_then(|s| s.name())
                .map(|n| n.as_str().to_string())
                .unwrap_or_else(|| "unknown".into()),
            region: region.to_string(),
            ami: i.image_id().unwrap_or_default().to_string(),
            instance_type: i
                .instance_type()
                .map(|t| t.as_str().to_string())
                .unwrap_or_default(),
            subnet: i.subnet_id().map(str::to_string),
            security_groups: i
                .security_groups()
                .iter()
                .filter_map(|g| g.group_id().map(str::to_string))
                .collect(),
            private_ip: i.private_ip_address().map(str::to_string),
            public_ip: i.public_ip_address().map(str::to_string),
            tags: i
                .tags()
                .iter()
                .filter_map(|t| Some((t.key()?.to_string(), t.value()?.to_string())))
                .collect(),
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

/// EC2 clients, one per region, from the usual AWS configuration.
pub struct Ec2 {
    sdk: aws_config::SdkConfig,
    clients: std::sync::Mutex<HashMap<String, Client>>,
}

fn sdk_err<E: std::error::Error>(what: &str, e: E) -> anyhow::Error {
    anyhow!("{what}: {}", DisplayErrorContext(e))
}

impl Ec2 {
    /// Reads region, endpoint and credentials from the environment and profiles.
    pub async fn from_env() -> Ec2 {
        let sdk = aws_config::defaults(aws_config::BehaviorVersion::latest())
            .load()
            .await;
        Ec2 {
            sdk,
            clients: Default::default(),
        }
    }

    /// The region a host's instance lives in: its `ec2.region`, else the configured one.
    pub fn region(&self, spec_region: Option<&str>) -> Result<String> {
        spec_region
            .map(str::to_string)
            .or_else(|| self.sdk.region().map(|r| r.to_string()))
            .ok_or_else(|| {
                anyhow!("no AWS region: set `ec2.region` on the host, or AWS_REGION (or a profile's region)")
            })
    }

    pub fn client(&self, region: &str) -> Client {
        let mut clients = self.clients.lock().expect("not poisoned");
        clients
            .entry(region.to_string())
            .or_insert_with(|| {
                let conf = aws_sdk_ec2::config::Builder::from(&self.sdk)
                    .region(aws_sdk_ec2::config::Region::new(region.to_string()))
                    .build();
                Client::from_conf(conf)
            })
            .clone()
    }

    /// Instances matching `filters` (all pages).
    pub async fn describe(&self, region: &str, filters: Vec<Filter>) -> Result<Vec<Instance>> {
        let client = self.client(region);
        let mut out = vec![];
        let mut token: Option<String> = None;
        loop {
            let resp = client
                .describe_instances()
                .set_filters(Some(filters.clone()))
                .set_next_token(token.clone())
                .send()
                .await
                .map_err(|e| sdk_err(&format!("DescribeInstances in {region}"), e))?;
            for r in resp.reservations() {
                for i in r.instances() {
                    out.push(Instance::from_sdk(i, region));
                }
            }
            token = resp.next_token().map(str::to_string);
            if token.as_deref().map(str::is_empty).unwrap_or(true) {
                break;
            }
        }
        out.sort_by(|a, b| a.id.cmp(&b.id));
        Ok(out)
    }

    /// The live instances tagged as `host` of `env`.
    pub async fn find(&self, region: &str, env: &str, host: &str) -> Result<Vec<Instance>> {
        self.describe(
            region,
            vec![
                filter(&format!("tag:{TAG_ENV}"), &[env]),
                filter(&format!("tag:{TAG_HOST}"), &[host]),
                filter("instance-state-name", LIVE_STATES),
            ],
        )
        .await
    }

    /// Every live instance tagged with `kiln:env = env`.
    pub async fn find_env(&self, region: &str, env: &str) -> Result<Vec<Instance>> {
        self.describe(
            region,
            vec![
                filter(&format!("tag:{TAG_ENV}"), &[env]),
                filter("instance-state-name", LIVE_STATES),
            ],
        )
        .await
    }

    /// One instance by id (any state); `None` when EC2 does not know it.
    pub async fn get(&self, region: &str, id: &str) -> Result<Option<Instance>> {
        let resp = self
            .client(region)
            .describe_instances()
            .instance_ids(id)
            .send()
            .await;
        match resp {
            Ok(r) => Ok(r
                .reservations()
                .iter()
                .flat_map(|r| r.instances())
                .map(|i| Instance::from_sdk(i, region))
                .find(|i| i.id == id)),
            Err(e) => {
                let code = e.as_service_error().and_then(|s| {
                    aws_sdk_ec2::error::ProvideErrorMetadata::code(s).map(str::to_string)
                });
                if code.as_deref() == Some("InvalidInstanceID.NotFound")
                    || code.as_deref() == Some("InvalidInstanceID.Malformed")
                {
                    Ok(None)
                } else {
                    Err(sdk_err(&format!("DescribeInstances {id} in {region}"), e))
                }
            }
        }
    }

    /// Launches one instance for `host` of `env`, tagged as kiln's.
    pub async fn create(&self, region: &str, env: &str, host: &Ec2Host) -> Result<Instance> {
        let spec = &host.spec;
        let mut tags: Vec<(String, String)> = vec![];
        if !spec.tags.keys().any(|k| k == "Name") {
            tags.push(("Name".into(), format!("{env}-{}", host.name)));
        }
        tags.extend(spec.tags.iter().map(|(k, v)| (k.clone(), v.clone())));
        tags.push((TAG_ENV.into(), env.into()));
        tags.push((TAG_HOST.into(), host.name.clone()));
        let tag_spec = |rt: ResourceType| {
            let mut b = TagSpecification::builder().resource_type(rt);
            for (k, v) in &tags {
                b = b.tags(Tag::builder().key(k).value(v).build());
            }
            b.build()
        };
        let resp = self
            .client(region)
            .run_instances()
            .image_id(&spec.ami)
            .instance_type(InstanceType::from(spec.instance_type.as_str()))
            .subnet_id(&spec.subnet)
            .set_security_group_ids(Some(spec.security_groups.clone()))
            .key_name(&spec.key_name)
            .min_count(1)
            .max_count(1)
            .tag_specifications(tag_spec(ResourceType::Instance))
            .tag_specifications(tag_spec(ResourceType::Volume))
            .send()
            .await
            .map_err(|e| {
                sdk_err(
                    &format!("RunInstances for {env}/{} in {region}", host.name),
                    e,
                )
            })?;
        let i = resp
            .instances()
            .first()
            .ok_or_else(|| anyhow!("RunInstances returned no instance"))?;
        Ok(Instance::from_sdk(i, region))
    }

    /// Polls until every instance runs: a stopped one is started (once), a stopping one
    /// waited for and then started; one that is shutting down or terminated is an error.
    pub async fn wait_running(
        &self,
        region: &str,
        ids: &[String],
        timeout: Duration,
    ) -> Result<Vec<Instance>> {
        let start = Instant::now();
        let mut delay = Duration::from_millis(500);
        let mut started: Vec<String> = vec![];
        loop {
            let mut out = vec![];
            let mut waiting = vec![];
            for id in ids {
                match self.get(region, id).await? {
                    Some(i) if i.state == "running" => out.push(i),
                    Some(i) if i.state == "pending" || i.state == "stopping" => {
                        waiting.push(i.describe())
                    }
                    Some(i) if i.state == "stopped" && !started.contains(&i.id) => {
                        self.client(region)
                            .start_instances()
                            .instance_ids(&i.id)
                            .send()
                            .await
                            .map_err(|e| sdk_err(&format!("StartInstances {id} in {region}"), e))?;
                        started.push(i.id.clone());
                        waiting.push(format!("{} (starting)", i.id));
                    }
                    Some(i) if i.state == "stopped" => waiting.push(i.describe()),
                    // Just launched: eventual consistency may not show it yet.
                    None => waiting.push(format!("{id} (not visible yet)")),
                    Some(i) => bail!("instance {} will not run: {}", i.id, i.describe()),
                }
            }
            if waiting.is_empty() {
                return Ok(out);
            }
            if start.elapsed() > timeout {
                bail!(
                    "not running after {} s: {}",
                    timeout.as_secs(),
                    waiting.join(", ")
                );
            }
            tokio::time::sleep(delay).await;
            delay = (delay * 2).min(Duration::from_secs(5));
        }
    }

    /// The instance's console output, decoded (empty when EC2 has none yet).
    pub async fn console_output(&self, region: &str, id: &str) -> Result<String> {
        let resp = self
            .client(region)
            .get_console_output()
            .instance_id(id)
            .send()
            .await
            .map_err(|e| sdk_err(&format!("GetConsoleOutput {id} in {region}"), e))?;
        let Some(b64) = resp.output().filter(|s| !s.is_empty()) else {
            return Ok(String::new());
        };
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(b64.trim())
            .context("console output is not base64")?;
        Ok(String::from_utf8_lossy(&bytes).into_owned())
    }

    /// Terminates `id` only if EC2 says it is tagged `kiln:env = env` and
    /// `kiln:host = host` (read again here, right before the call).
    pub async fn terminate(&self, region: &str, id: &str, env: &str, host: &str) -> Result<()> {
        let Some(i) = self.get(region, id).await? else {
            bail!("no instance {id} in {region}");
        };
        if !i.is_kilns(env, host) {
            bail!(
                "refusing to terminate {}: it is not tagged {TAG_ENV}={env}, {TAG_HOST}={host}",
                i.describe()
            );
        }
        self.client(region)
            .terminate_instances()
            .instance_ids(id)
            .send()
            .await
            .map_err(|e| sdk_err(&format!("TerminateInstances {id} in {region}"), e))?;
        Ok(())
    }
}

fn filter(name: &str, values: &[&str]) -> Filter {
    Filter::builder()
        .name(name)
        .set_values(Some(values.iter().map(|v| v.to_string()).collect()))
        .build()
}

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

/// The SSH host public keys cloud-init printed on the console (`TYPE BASE64` each),
/// from the last `BEGIN SSH HOST KEY KEYS` block.
pub fn parse_console_host_keys(console: &str) -> Vec<String> {
    let mut keys = vec![];
    let mut inside = false;
    let mut current = vec![];
    for line in console.lines() {
        let l = line.trim();
        if l.contains("-----BEGIN SSH HOST KEY KEYS-----") {
            inside = true;
            current.clear();
        } else if l.contains("-----END SSH HOST KEY KEYS-----") {
            if inside {
                keys = std::mem::take(&mut current);
            }
            inside = false;
        } else if inside {
            // A key line may carry a logger prefix: find the key type, then its key.
            let tokens: Vec<&str> = l.split_whitespace().collect();
            let at = tokens
                .iter()
                .position(|t| t.starts_with("ssh-") || t.starts_with("ecdsa-sha2-"));
            if let Some((t, k)) = at.and_then(|p| Some((tokens[p], *tokens.get(p + 1)?))) {
                if base64::engine::general_purpose::STANDARD.decode(k).is_ok() {
                    current.push(format!("{t} {k}"));
                }
            }
        }
    }
    keys
}

/// The known_hosts name of an address and port.
fn known_hosts_name(address: &str, port: u16) -> String {
    if port == 22 {
        address.to_string()
    } else {
        format!("[{address}]:{port}")
    }
}

/// Replaces the lines for `name` in the known_hosts file at `path` with `keys`.
pub fn replace_known_hosts(path: &Path, name: &str, keys: &[String]) -> Result<()> {
    let current = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
        Err(e) => return Err(e).with_context(|| format!("cannot read {}", path.display())),
    };
    let mut text = String::new();
    for line in current.lines() {
        let names = line.split_whitespace().next().unwrap_or("");
        if !names.split(',').any(|n| n == name) {
            text.push_str(line);
            text.push('\n');
        }
    }
    for k in keys {
        text.push_str(&format!("{name} {k}\n"));
    }
    if text == current {
        return Ok(());
    }
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    }
    crate::state::write_private(path, text.as_bytes())
}

fn known_hosts_has(path: &Path, name: &str) -> bool {
    std::fs::read_to_string(path)
        .map(|t| {
            t.lines().any(|l| {
                l.split_whitespace()
                    .next()
                    .map(|n| n.split(',').any(|n| n == name))
                    .unwrap_or(false)
            })
        })
        .unwrap_or(false)
}

/// Records each instance's SSH host keys in the environment's known_hosts, from its
/// console output (read over the authenticated EC2 API). Instances created by this run
/// always get their keys (re)recorded; found ones only when their address has no line
/// yet. Polls until cloud-init has printed the keys or `timeout` passes.
pub async fn record_host_keys(
    ec2: &Ec2,
    env: &Environment,
    ensured: &[Ensured],
    timeout: Duration,
    log: &(dyn Fn(&str) + Sync),
) -> Result<()> {
    let known_hosts = env.known_hosts();
    for e in ensured {
        let conn = crate::desired::connection(env, &e.host, None);
        let name = known_hosts_name(&e.address, conn.port);
        if !e.created && known_hosts_has(&known_hosts, &name) {
            continue;
        }
        let start = Instant::now();
        let keys = loop {
            let console = ec2.console_output(&e.region, &e.instance_id).await?;
            let keys = parse_console_host_keys(&console);
            if !keys.is_empty() {
                break keys;
            }
            if start.elapsed() > timeout {
                bail!(
                    "host {}: instance {} printed no SSH host keys on its console within {} s \
                     (cloud-init prints them between `-----BEGIN SSH HOST KEY KEYS-----` and \
                     `-----END SSH HOST KEY KEYS-----`; an image without cloud-init needs its key \
                     added to {} by hand, or `ssh.accept_new = true`)",
                    e.host,
                    e.instance_id,
                    timeout.as_secs(),
                    known_hosts.display()
                );
            }
            tokio::time::sleep(Duration::from_secs(5).min(timeout)).await;
        };
        replace_known_hosts(&known_hosts, &name, &keys)?;
        log(&format!(
            "{}: recorded {} host key(s) of {} for {name} in {}",
            e.host,
            keys.len(),
            e.instance_id,
            known_hosts.display()
        ));
    }
    Ok(())
}

/// Connects to each instance with strict host key checking (the keys recorded by
/// [`record_host_keys`]) until `true` runs, or `timeout` passes.
pub async fn wait_for_ssh(
    env: &Environment,
    connector: &dyn crate::transport::Connector,
    ensured: &[Ensured],
    timeout: Duration,
    log: &(dyn Fn(&str) + Sync),
) -> Result<()> {
    for e in ensured {
        let mut conn = crate::desired::connection(env, &e.host, None);
        conn.address = e.address.clone();
        let start = Instant::now();
        loop {
            let res = async {
                // Dropping the transport closes its session.
                let t = connector.connect(&e.host, &conn).await?;
                let out = t.run("true", Duration::from_secs(30), None).await?;
                if out.status != Some(0) {
                    bail!("`true` exited with {:?}: {}", out.status, out.stderr.trim());
                }
                Ok(())
            }
            .await;
            match res {
                Ok(()) => {
                    log(&format!(
                        "{}: SSH answers at {} after {:.0} s",
                        e.host,
                        e.address,
                        start.elapsed().as_secs_f64()
                    ));
                    break;
                }
                Err(err) if start.elapsed() > timeout => {
                    bail!(
                        "host {}: SSH to {} did not answer within {} s: {err:#}",
                        e.host,
                        e.address,
                        timeout.as_secs()
                    )
                }
                Err(_) => tokio::time::sleep(Duration::from_secs(5)).await,
            }
        }
    }
    Ok(())
}

/// For `kiln rebuild` and `kiln ec2 up`: every ec2 host in `hosts` (all when `None`) has
/// a running instance (found by tags or created), its host keys recorded in known_hosts
/// and SSH answering. Returns each host's instance and address.
pub async fn ensure(
    env: &Environment,
    hosts: Option<&[String]>,
    timeouts: Timeouts,
    log: &(dyn Fn(&str) + Sync),
) -> Result<Vec<Ensured>> {
    let ec2 = Ec2::from_env().await;
    let ensured = ensure_instances(&ec2, env, hosts, timeouts.running, log).await?;
    record_host_keys(&ec2, env, &ensured, timeouts.host_keys, log).await?;
    let connector = crate::transport::ssh::SshConnector::for_env(env);
    wait_for_ssh(env, &connector, &ensured, timeouts.ssh, log).await?;
    Ok(ensured)
}

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
                let mut out = vec![];
                for h in &wanted {
                    let region = ec2.region(h.spec.region.as_deref())?;
                    let live = ec2.find(&region, &env_name, &h.name).await?;
                    let r = match live.as_slice() {
                        [] => {
                            eprintln!(
                                "note: ec2 host {}: no instance tagged {TAG_ENV}={env_name}, {TAG_HOST}={} in {region} (`kiln ec2 up {env_name}` creates it)",
                                h.name, h.name
                            );
                            Ok(missing_address(&h.name))
                        }
                        [i] => i.address(h.spec.connect).map(str::to_string).ok_or_else(|| {
                            anyhow!("ec2 host {}: instance {} has no address yet", h.name, i.describe())
                        }),
                        many => Err(anyhow!(
                            "ec2 host {}: {} instances carry its tags: {}",
                            h.name,
                            many.len(),
                            many.iter().map(|i| i.id.as_str()).collect::<Vec<_>>().join(", ")
                        )),
                    };
                    out.push((h.name.clone(), r));
                }
                Ok(out)
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

#[cfg(test)]
mod tests {
    use super::*;

    /// As a Debian 12 cloud image's cloud-init prints it (keys shortened).
    const CONSOLE: &str = "\
[   12.345678] cloud-init[512]: Cloud-init v. 22.4.2 running 'modules:final'
<14>Jan  1 00:00:00 cloud-init: #############################################################
<14>Jan  1 00:00:00 cloud-init: -----BEGIN SSH HOST KEY FINGERPRINTS-----
<14>Jan  1 00:00:00 cloud-init: 256 SHA256:Qe2H3Ykq0Jq9yJ0l8o8e3JcY4p1S1Xq6o3l1m3Y8k0c root@ip-10-0-1-5 (ECDSA)
<14>Jan  1 00:00:00 cloud-init: 256 SHA256:3aT0g2Jm8q2l6o0p3S1q1n8m2k4o3p2l1m0n9b8v7c6 root@ip-10-0-1-5 (ED25519)
<14>Jan  1 00:00:00 cloud-init: -----END SSH HOST KEY FINGERPRINTS-----
<14>Jan  1 00:00:00 cloud-init: #############################################################
-----BEGIN SSH HOST KEY KEYS-----
ecdsa-sha2-nistp256 AAAAE2VjZHNhLXNoYTItbmlzdHAyNTYAAAAIbmlzdHAyNTY= root@ip-10-0-1-5
<14>Jan  1 00:00:00 ec2: ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIGx1bW9zIGtleQ== root@ip-10-0-1-5
-----END SSH HOST KEY KEYS-----
[   13.000000] cloud-init[512]: Cloud-init v. 22.4.2 finished
";

    #[test]
    fn host_keys_from_console() {
        assert_eq!(
            parse_console_host_keys(CONSOLE),
            vec![
                "ecdsa-sha2-nistp256 AAAAE2VjZHNhLXNoYTItbmlzdHAyNTYAAAAIbmlzdHAyNTY=",
                "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIGx1bW9zIGtleQ==",
            ]
        );
        // No block, an unterminated block, or garbage: no keys.
        assert!(parse_console_host_keys("Linux version 6.1\nlogin:").is_empty());
        assert!(parse_console_host_keys(
            "-----BEGIN SSH HOST KEY KEYS-----\nssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIGx1bW9zIGtleQ==\n"
        )
        .is_empty());
        assert!(parse_console_host_keys(
            "-----BEGIN SSH HOST KEY KEYS-----\nrm -rf / now\n-----END SSH HOST KEY KEYS-----\n"
        )
        .is_empty());
        // A second boot prints again: the last block wins.
        let twice = format!(
            "{CONSOLE}-----BEGIN SSH HOST KEY KEYS-----\nssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIG5ldyBrZXk= root@x\n-----END SSH HOST KEY KEYS-----\n"
        );
        assert_eq!(
            parse_console_host_keys(&twice),
            vec!["ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIG5ldyBrZXk="]
        );
    }

    #[test]
    fn known_hosts_lines_are_replaced_for_one_name_only() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("prod.known_hosts");
        std::fs::write(
            &p,
            "10.0.1.5 ssh-ed25519 OLD\n10.0.1.6 ssh-ed25519 OTHER\n[10.0.1.5]:2222 ssh-ed25519 PORT\n",
        )
        .unwrap();
        replace_known_hosts(&p, "10.0.1.5", &["ssh-ed25519 NEW".into()]).unwrap();
        assert_eq!(
            std::fs::read_to_string(&p).unwrap(),
            "10.0.1.6 ssh-ed25519 OTHER\n[10.0.1.5]:2222 ssh-ed25519 PORT\n10.0.1.5 ssh-ed25519 NEW\n"
        );
        assert!(known_hosts_has(&p, "10.0.1.5"));
        assert!(!known_hosts_has(&p, "10.0.1.7"));
        assert_eq!(known_hosts_name("10.0.1.5", 2222), "[10.0.1.5]:2222");
    }
}
