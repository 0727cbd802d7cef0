//! The engine: the pipeline every command shares — load (spec, expansion, graph: every spec
//! error before any connection), connect (one `Connector`, a seam for recorded hosts),
//! gather (one fact script per host) and plan (pure, then cluster decisions). Commands in
//! `ops/` are thin layers over it.

mod connections;
mod gather;
mod load;
mod lockout;
mod plan;

pub use connections::{connector, Connections};
pub use gather::{gather, Gathered, FACTS_TIMEOUT};
pub use load::{load, load_env, load_with, Loaded};
pub use lockout::kiln_key;
pub use plan::{make_plan, now_rfc3339, offline_plan};

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
