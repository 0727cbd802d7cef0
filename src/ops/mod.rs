//! Operations: what each command does. Commands in `cli` parse arguments and call one
//! function here; tests call these functions directly too.

pub mod apply;
pub mod backup;
pub mod clone;
pub mod drift;
pub mod ec2;
pub mod explain;
pub mod galera;
pub mod graph;
pub mod lab;
pub mod plan;
pub mod rebuild;
pub mod ssh;
pub mod verify;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Result;
use tokio::sync::Semaphore;

use crate::desired::{self, Connection, Desired};
use crate::facts::{self, HostFacts};
use crate::plan::graph::ResourceGraph;
use crate::plan::{build, HostPlan, Plan, PLAN_FORMAT};
use crate::spec::error::SpecErrors;
use crate::spec::{self, Environment};
use crate::transport::ssh::SshConnector;
use crate::transport::{Connector, Transport};

/// How long fact gathering may take on one host.
pub const FACTS_TIMEOUT: Duration = Duration::from_secs(120);

/// Everything known about an environment before any host is contacted.
pub struct Loaded {
    pub env: Environment,
    pub desired: Desired,
    pub graph: ResourceGraph,
}

/// Loads and validates the spec and expands the selected hosts. Every spec error surfaces
/// here, before any connection is made.
pub fn load(env_arg: &str, limit: Option<&str>) -> Result<Loaded> {
    load_with(env_arg, limit, false)
}

/// `offline`: secrets that cannot be read (CI without production credentials) stand in as
/// `<secret NAME>`, so the spec, templates and graph are checked with no host and no secret.
pub fn load_with(env_arg: &str, limit: Option<&str>, offline: bool) -> Result<Loaded> {
    let path = spec::resolve_env_path(env_arg);
    if !path.exists() {
        anyhow::bail!(
            "no environment `{env_arg}` ({} does not exist)",
            path.display()
        );
    }
    let mut env = Environment::load(&path).map_err(anyhow::Error::new)?;
    if offline {
        env.resolve_secrets_or_placeholders();
    } else {
        env.resolve_secrets().map_err(anyhow::Error::new)?;
    }
    let hosts = env
        .select_hosts(limit)
        .map_err(|e| anyhow::Error::new(SpecErrors::from(e)))?;
    // EC2 hosts' addresses are their instances' (looked up by tags; offline: a placeholder).
    if offline {
        crate::provider::ec2::placeholder_addresses(&mut env);
    } else {
        crate::provider::ec2::fill_addresses_blocking(&mut env, Some(&hosts))?;
    }
    let lab_key = crate::provider::lab::key_path(&crate::state::lab_state_dir());
    let desired = desired::expand(&env, &hosts, Some(lab_key)).map_err(anyhow::Error::new)?;
    let graph = ResourceGraph::build(&env, &desired)
        .map_err(|e| anyhow::Error::new(SpecErrors::from(e)))?;
    Ok(Loaded {
        env,
        desired,
        graph,
    })
}

/// Open connections, by host name, and the `Connector` that opens new ones.
#[derive(Clone)]
pub struct Connections {
    connector: Arc<dyn Connector>,
    pub by_host: HashMap<String, Arc<dyn Transport>>,
}

impl Connections {
    pub fn new(connector: Arc<dyn Connector>) -> Connections {
        Connections {
            connector,
            by_host: HashMap::new(),
        }
    }

    /// Real SSH connections with the environment's `[ssh]` settings.
    pub fn ssh(env: &Environment) -> Connections {
        Connections::new(Arc::new(connector(env)))
    }

    pub fn connector(&self) -> Arc<dyn Connector> {
        self.connector.clone()
    }

    /// The open transport to `name`, or a new one through `conn`.
    pub async fn get(&mut self, name: &str, conn: &Connection) -> Result<Arc<dyn Transport>> {
        if let Some(t) = self.by_host.get(name) {
            return Ok(t.clone());
        }
        let t = self.connector.connect(name, conn).await?;
        self.by_host.insert(name.to_string(), t.clone());
        Ok(t)
    }
}

/// The SSH connector for an environment: its known_hosts, `[ssh] accept_new` (never for lab
/// hosts: their keys are recorded when they are created) and connect timeout.
pub fn connector(env: &Environment) -> SshConnector {
    SshConnector::for_env(env)
}

/// Result of reading one host.
pub struct Gathered {
    pub facts: Result<HostFacts, String>,
    pub ms: u64,
}

/// Connects to every host of `desired` (bounded parallelism) and runs each host's fact
/// script: one remote execution per host.
pub async fn gather(
    loaded: &Loaded,
    conns: &mut Connections,
    queries_for: impl Fn(usize) -> Vec<facts::FactQuery>,
) -> Vec<Gathered> {
    let parallel = loaded.env.spec.ssh.parallel.unwrap_or(16).max(1);
    let sem = Arc::new(Semaphore::new(parallel));
    let redactor = loaded.env.redactor();
    let mut tasks = vec![];
    for (h, host) in loaded.desired.hosts.iter().enumerate() {
        let sem = sem.clone();
        let conn = host.connection.clone();
        let name = host.name.clone();
        let connector = conns.connector();
        let existing = conns.by_host.get(&host.name).cloned();
        let queries = queries_for(h);
        tasks.push(tokio::spawn(async move {
            let _permit = sem.acquire_owned().await.expect("semaphore open");
            let start = Instant::now();
            let transport: Arc<dyn Transport> = match existing {
                Some(t) => t,
                None => match connector.connect(&name, &conn).await {
                    Ok(t) => t,
                    Err(e) => return (None, Err(format!("{e:#}")), start.elapsed()),
                },
            };
            let script = facts::script::fact_script(&queries);
            let res = match transport.run(&script, FACTS_TIMEOUT, None).await {
                Ok(out) if out.status == Some(0) => {
                    facts::parse::parse_facts(&queries, &out.stdout)
                        .map_err(|e| format!("reading facts: {e}"))
                }
                Ok(out) => Err(format!(
                    "fact script exited with {:?}: {}",
                    out.status,
                    out.stderr.trim()
                )),
                Err(e) => Err(format!("{e:#}")),
            };
            (Some(transport), res, start.elapsed())
        }));
    }
    let mut out = vec![];
    for (task, host) in tasks.into_iter().zip(&loaded.desired.hosts) {
        match task.await {
            Ok((t, res, elapsed)) => {
                if let Some(t) = t {
                    conns.by_host.insert(host.name.clone(), t);
                }
                out.push(Gathered {
                    facts: res.map_err(|e| redactor.redact(&e)),
                    ms: elapsed.as_millis() as u64,
                });
            }
            Err(e) => out.push(Gathered {
                facts: Err(format!("internal error: {e}")),
                ms: 0,
            }),
        }
    }
    out
}

/// Reads every host and builds the plan.
pub async fn make_plan(loaded: &Loaded, conns: &mut Connections) -> Result<Plan> {
    let seal_key = crate::plan::seal::load_key()?;
    let gathered = gather(loaded, conns, |h| {
        build::host_queries(&loaded.desired.hosts[h])
    })
    .await;
    let mut hosts = vec![];
    let mut all_facts = vec![];
    for (h, g) in gathered.into_iter().enumerate() {
        let host = &loaded.desired.hosts[h];
        let mut hp = match &g.facts {
            Ok(f) => build::host_plan(&loaded.desired, &loaded.graph, h, f, &seal_key),
            Err(e) => HostPlan {
                host: host.name.clone(),
                address: host.connection.address.clone(),
                changes: vec![],
                after_hosts: vec![],
                error: Some(e.clone()),
                facts_ms: 0,
            },
        };
        hp.facts_ms = g.ms;
        hosts.push(hp);
        all_facts.push(g.facts.ok());
    }
    // Cluster decisions need every node's facts at once (Galera bootstrap, joins, rolls).
    let facts_refs: Vec<Option<&HostFacts>> = all_facts.iter().map(|f| f.as_ref()).collect();
    for note in crate::cluster::galera::plan_clusters(
        &loaded.desired,
        &facts_refs,
        &mut hosts,
        &loaded.env.secrets,
        &seal_key,
    ) {
        eprintln!("note: {note}");
    }
    Ok(Plan {
        format: PLAN_FORMAT,
        kiln_version: env!("CARGO_PKG_VERSION").to_string(),
        environment: loaded.env.name.clone(),
        env_file: std::fs::canonicalize(&loaded.env.file).unwrap_or(loaded.env.file.clone()),
        created_at: now_rfc3339(),
        hosts,
    })
}

pub fn now_rfc3339() -> String {
    time::OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}

/// A name for this run in host locks: user@machine pid time.
pub fn holder() -> String {
    let user = std::env::var("USER")
        .or_else(|_| std::env::var("LOGNAME"))
        .unwrap_or_else(|_| "root".into());
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .unwrap_or_default();
    format!(
        "kiln by {user}@{host} pid {} since {}",
        std::process::id(),
        now_rfc3339()
    )
}

/// Writes a file kiln makes on this machine (a saved plan, a timeline) atomically and
/// readable by its owner only: saved plans name hosts, paths and seals, and nothing kiln
/// writes here is meant for other users.
pub fn write_atomic(path: &std::path::Path, data: &[u8]) -> Result<()> {
    crate::state::write_private(path, data)
}
