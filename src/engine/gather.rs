//! Gathering: every host's fact script, one remote execution per host, in parallel.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::Semaphore;

use super::{Connections, Loaded};
use crate::facts::timings::{parse_ticks, HostTimings};
use crate::facts::{self, HostFacts};
use crate::transport::Transport;

/// How long fact gathering may take on one host.
pub const FACTS_TIMEOUT: Duration = Duration::from_secs(120);

/// Result of reading one host.
pub struct Gathered {
    pub facts: Result<HostFacts, String>,
    pub ms: u64,
    /// With `Connections::timings`: connect, script and each section.
    pub timings: Option<HostTimings>,
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
    let timed = conns.timings;
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
            let mut timings = timed.then(HostTimings::default);
            let transport: Arc<dyn Transport> = match existing {
                Some(t) => t,
                None => match connector.connect(&name, &conn).await {
                    Ok(t) => t,
                    Err(e) => return (None, Err(format!("{e:#}")), start.elapsed(), timings),
                },
            };
            if let Some(t) = &mut timings {
                t.connect_ms = start.elapsed().as_millis() as u64;
            }
            let script = if timed {
                facts::script::fact_script_timed(&queries)
            } else {
                facts::script::fact_script(&queries)
            };
            let res = match transport.run(&script, FACTS_TIMEOUT, None).await {
                Ok(out) => {
                    if let (Some(t), Some((script_us, sections))) =
                        (&mut timings, parse_ticks(&queries, &out.stderr))
                    {
                        t.script_us = Some(script_us);
                        t.sections = sections;
                    }
                    if out.status == Some(0) {
                        facts::parse::parse_facts(&queries, &out.stdout)
                            .map_err(|e| format!("reading facts: {e}"))
                    } else {
                        Err(format!(
                            "fact script exited with {:?}: {}",
                            out.status,
                            strip_ticks(&out.stderr).trim()
                        ))
                    }
                }
                Err(e) => Err(format!("{e:#}")),
            };
            (Some(transport), res, start.elapsed(), timings)
        }));
    }
    let mut out = vec![];
    for (task, host) in tasks.into_iter().zip(&loaded.desired.hosts) {
        match task.await {
            Ok((t, res, elapsed, mut timings)) => {
                if let Some(t) = t {
                    conns.by_host.insert(host.name.clone(), t);
                }
                if let Some(t) = &mut timings {
                    t.total_ms = elapsed.as_millis() as u64;
                }
                if conns.progress_lines {
                    let how = if res.is_ok() { "read" } else { "not read" };
                    eprintln!(
                        "[{:>7.1} s] {}: facts {how}",
                        elapsed.as_secs_f64(),
                        host.name
                    );
                }
                out.push(Gathered {
                    facts: res.map_err(|e| redactor.redact(&e)),
                    ms: elapsed.as_millis() as u64,
                    timings,
                });
            }
            Err(e) => out.push(Gathered {
                facts: Err(format!("internal error: {e}")),
                ms: 0,
                timings: None,
            }),
        }
    }
    out
}

/// Standard error without the timed script's tick lines.
fn strip_ticks(stderr: &str) -> String {
    stderr
        .lines()
        .filter(|l| !l.starts_with(facts::timings::TICK_PREFIX))
        .map(|l| format!("{l}\n"))
        .collect()
}
