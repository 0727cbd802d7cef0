//! Loading: spec → secrets → hosts → expansion → graph, all before any connection.

use anyhow::Result;

use crate::desired::{self, Desired};
use crate::plan::graph::ResourceGraph;
use crate::spec::error::SpecErrors;
use crate::spec::{self, Environment};

/// Everything known about an environment before any host is contacted.
pub struct Loaded {
    pub env: Environment,
    pub desired: Desired,
    pub graph: ResourceGraph,
    /// A targeted run's selection (`--target`, `--exclude`); `None` plans everything.
    pub selection: Option<crate::plan::select::Selection>,
}

impl Loaded {
    /// Narrows the run to `target` patterns (with what they require) minus `exclude`
    /// patterns. A pattern that matches nothing is an error naming it; no host is contacted.
    pub fn select(&mut self, target: &[String], exclude: &[String]) -> Result<()> {
        self.selection = crate::plan::select::select(&self.desired, &self.graph, target, exclude)
            .map_err(anyhow::Error::msg)?;
        Ok(())
    }
}

/// Loads and validates the spec and expands the selected hosts. Every spec error surfaces
/// here, before any connection is made.
pub fn load(env_arg: &str, limit: Option<&str>) -> Result<Loaded> {
    load_with(env_arg, limit, false)
}

/// `offline`: secrets that cannot be read (CI without production credentials) stand in as
/// `<secret NAME>`, so the spec, templates and graph are checked with no host and no secret.
pub fn load_with(env_arg: &str, limit: Option<&str>, offline: bool) -> Result<Loaded> {
    let mut env = load_env(env_arg)?;
    if offline {
        env.resolve_secrets_or_placeholders()
            .map_err(anyhow::Error::new)?;
    } else {
        env.resolve_secrets().map_err(anyhow::Error::new)?;
    }
    let hosts = env
        .select_hosts(limit)
        .map_err(|e| anyhow::Error::new(SpecErrors::from(e)))?;
    // EC2 hosts' addresses are their instances' (looked up by tags). The whole spec is
    // expanded and its graph built with placeholder addresses first, so a template or graph
    // error is reported before any call to AWS; then the real addresses are filled in.
    let lab_key = crate::provider::lab::key_path(&crate::state::lab_state_dir());
    let expand = |env: &Environment| -> Result<(Desired, ResourceGraph)> {
        let desired =
            desired::expand(env, &hosts, Some(lab_key.clone())).map_err(anyhow::Error::new)?;
        let graph = ResourceGraph::build(env, &desired)
            .map_err(|e| anyhow::Error::new(SpecErrors::from(e)))?;
        Ok((desired, graph))
    };
    crate::provider::ec2::placeholder_addresses(&mut env);
    let (mut desired, mut graph) = expand(&env)?;
    if !offline && has_ec2_hosts(&env, &hosts) {
        crate::provider::ec2::fill_addresses_blocking(&mut env, Some(&hosts))?;
        (desired, graph) = expand(&env)?;
    }
    Ok(Loaded {
        env,
        desired,
        graph,
        selection: None,
    })
}

fn has_ec2_hosts(env: &Environment, hosts: &[String]) -> bool {
    hosts.iter().any(|h| {
        env.spec
            .hosts
            .get(h)
            .is_some_and(|s| s.provider == crate::spec::Provider::Ec2)
    })
}

/// Reads and validates an environment file named on the command line (`prod`, or a path):
/// the one check every command makes before anything else.
pub fn load_env(env_arg: &str) -> Result<Environment> {
    let path = spec::resolve_env_path(env_arg);
    if !path.exists() {
        anyhow::bail!(
            "no environment `{env_arg}` ({} does not exist)",
            path.display()
        );
    }
    Environment::load(&path).map_err(anyhow::Error::new)
}
