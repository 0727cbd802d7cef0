//! `kiln graph`: the resource graph as Graphviz DOT (no host is contacted).

use anyhow::Result;

pub fn run(env: &str, limit: Option<&str>) -> Result<i32> {
    let loaded = crate::engine::load(env, limit)?;
    print!("{}", loaded.graph.to_dot(&loaded.desired));
    Ok(0)
}
