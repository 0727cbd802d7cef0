//! Running a plan on hosts: each host's changes as one script through its transport (in
//! dependency order across hosts, bounded parallelism, progress from the script's markers),
//! and the re-check of a saved plan's facts before it is applied (`refuse_stale`).

use std::collections::{BTreeMap, HashMap};
use std::io::IsTerminal;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use tokio::sync::{watch, Semaphore};

use crate::apply::script::{apply_script_waiting, parse_marker, Marker, EXIT_LOCKED};
use crate::engine::{gather, Connections, Loaded};
use crate::facts::FactQuery;
use crate::plan::build::{fact_rules, fingerprint};
use crate::plan::{Content, Plan, Step};
use crate::resource::Kind;
use crate::transport::Transport;
use crate::ui::Paint;

/// How long one host's apply may run.
pub const APPLY_TIMEOUT: Duration = Duration::from_secs(3600);

#[derive(Debug, Clone)]
pub struct HostOutcome {
    pub host: String,
    pub applied: usize,
    pub total: usize,
    pub error: Option<String>,
    pub secs: f64,
}

/// Re-reads only the facts behind the plan's changes and drops every change whose facts
/// moved since the plan was made. Returns how many were refused.
pub async fn refuse_stale(
    loaded: &Loaded,
    conns: &mut Connections,
    plan: &mut Plan,
    paint: &Paint,
) -> Result<usize> {
    // Sensitive paths were stored without their expected hash, sensitive guards without
    // their text; the full query comes from the re-rendered desired state (whose seals are
    // checked before apply), both for reading the host and for the fingerprint.
    let full: Vec<Vec<FactQuery>> = loaded
        .desired
        .hosts
        .iter()
        .map(crate::plan::build::host_queries)
        .collect();
    let restore = |h: usize, q: &FactQuery| -> FactQuery {
        match q {
            FactQuery::Path {
                sensitive: true, ..
            }
            | FactQuery::Guard {
                sensitive_of: Some(_),
                ..
            } => full[h]
                .iter()
                .find(|f| f.key() == q.key())
                .cloned()
                .unwrap_or_else(|| q.clone()),
            _ => q.clone(),
        }
    };
    let queries: Vec<Vec<FactQuery>> = loaded
        .desired
        .hosts
        .iter()
        .enumerate()
        .map(|(i, h)| {
            let mut q: Vec<FactQuery> = plan
                .hosts
                .iter()
                .filter(|p| p.host == h.name)
                .flat_map(|p| p.changes.iter().flat_map(|c| c.facts.iter()))
                .map(|q| restore(i, q))
                .collect();
            q.sort();
            q.dedup();
            q
        })
        .collect();
    let gathered = gather(loaded, conns, |h| queries[h].clone()).await;
    // Judged by the environment's rules, as at plan time.
    let rules = fact_rules(&loaded.desired);
    let mut refused = 0;
    for (h, g) in gathered.into_iter().enumerate() {
        let name = &loaded.desired.hosts[h].name;
        let Some(hp) = plan.hosts.iter_mut().find(|p| &p.host == name) else {
            continue;
        };
        match g.facts {
            Err(e) => {
                hp.error = Some(e);
                hp.changes.clear();
            }
            Ok(facts) => {
                hp.changes.retain(|c| {
                    let behind: Vec<FactQuery> = c.facts.iter().map(|q| restore(h, q)).collect();
                    let fresh = fingerprint(&facts, &behind, &rules) == c.fingerprint;
                    if !fresh {
                        refused += 1;
                        eprintln!(
                            "{} {name}: {} — the host changed since the plan was made (its facts moved); this change is refused. Run `kiln plan` again.",
                            paint.red("refused stale change"),
                            c.resource
                        );
                    }
                    fresh
                });
            }
        }
    }
    Ok(refused)
}

/// Content for sensitive steps, rendered again from the spec and checked against the seal
/// the plan recorded (so the applied secret is the one that was planned).
fn sensitive_contents(
    loaded: &Loaded,
    host: &str,
    plan: &crate::plan::HostPlan,
    key: &[u8],
) -> Result<BTreeMap<String, String>> {
    let mut out = BTreeMap::new();
    let desired = loaded.desired.host(host).context("host not in the spec")?;
    for c in &plan.changes {
        for s in &c.steps {
            let (resource, seal) = match s {
                Step::WriteFile {
                    content: Content::Sensitive { resource, seal },
                    ..
                }
                | Step::SensitiveShell { resource, seal, .. } => (resource, seal),
                _ => continue,
            };
            {
                let text = desired
                    .resources
                    .iter()
                    .find(|r| &r.id == resource)
                    .and_then(|r| match &r.kind {
                        Kind::File(f) => f.content.clone(),
                        Kind::Unit(u) => u.content.clone(),
                        Kind::Command(c) => Some(c.run.clone()),
                        _ => None,
                    });
                match text {
                    Some(t) if &crate::plan::seal::seal(key, t.as_bytes()) == seal => {
                        out.insert(resource.clone(), t);
                    }
                    _ => bail!("{host}: {resource}: its sensitive content is no longer what was planned (a secret or template changed); make the plan again"),
                }
            }
        }
    }
    Ok(out)
}

/// Runs each host's changes. Hosts wait for the hosts they depend on.
pub async fn execute(
    loaded: &Loaded,
    plan: &Plan,
    conns: &mut Connections,
    parallel: Option<usize>,
    lock_timeout: u64,
) -> Result<Vec<HostOutcome>> {
    let key = crate::plan::seal::load_key()?;
    let parallel = parallel
        .or(loaded.env.spec.ssh.parallel)
        .unwrap_or(16)
        .max(1);
    let sem = Arc::new(Semaphore::new(parallel));
    let multi = MultiProgress::with_draw_target(if std::io::stderr().is_terminal() {
        ProgressDrawTarget::stderr()
    } else {
        ProgressDrawTarget::hidden()
    });
    // Without a terminal (CI) the bars are hidden: one line per host per phase instead.
    let lines = !std::io::stderr().is_terminal();
    let style =
        ProgressStyle::with_template("{spinner} {prefix:.bold} [{pos}/{len}] {wide_msg} {elapsed}")
            .unwrap_or_else(|_| ProgressStyle::default_spinner());
    let mut done_tx: HashMap<String, watch::Sender<Option<bool>>> = HashMap::new();
    let mut done_rx: HashMap<String, watch::Receiver<Option<bool>>> = HashMap::new();
    for hp in &plan.hosts {
        let (tx, rx) = watch::channel(None);
        done_tx.insert(hp.host.clone(), tx);
        done_rx.insert(hp.host.clone(), rx);
    }
    let redactor = loaded.env.redactor();
    let holder = crate::engine::holder();
    let mut tasks = vec![];
    for hp in plan.hosts.iter().cloned() {
        let tx = done_tx.remove(&hp.host).expect("one sender per host");
        if hp.changes.is_empty() {
            let _ = tx.send(Some(hp.error.is_none()));
            continue;
        }
        let waits: Vec<(String, watch::Receiver<Option<bool>>)> = hp
            .after_hosts
            .iter()
            .filter_map(|h| done_rx.get(h).map(|r| (h.clone(), r.clone())))
            .collect();
        let sensitive = match sensitive_contents(loaded, &hp.host, &hp, &key) {
            Ok(s) => s,
            Err(e) => {
                let _ = tx.send(Some(false));
                tasks.push(tokio::spawn(async move {
                    HostOutcome {
                        host: hp.host.clone(),
                        applied: 0,
                        total: hp.changes.len(),
                        error: Some(format!("{e:#}")),
                        secs: 0.0,
                    }
                }));
                continue;
            }
        };
        let conn = loaded
            .desired
            .host(&hp.host)
            .map(|d| d.connection.clone())
            .context("host not in the spec")?;
        let connector = conns.connector();
        let existing = conns.by_host.get(&hp.host).cloned();
        let sem = sem.clone();
        let bar = multi.add(ProgressBar::new(hp.changes.len() as u64));
        bar.set_style(style.clone());
        bar.set_prefix(hp.host.clone());
        bar.enable_steady_tick(Duration::from_millis(120));
        let redactor = redactor.clone();
        let holder = holder.clone();
        tasks.push(tokio::spawn(async move {
            let start = Instant::now();
            let total = hp.changes.len();
            let fail = |msg: String, applied: usize| HostOutcome { host: hp.host.clone(), applied, total, error: Some(msg), secs: start.elapsed().as_secs_f64() };
            for (dep, mut rx) in waits {
                bar.set_message(format!("waiting for {dep}"));
                let ok = loop {
                    if let Some(v) = *rx.borrow() {
                        break v;
                    }
                    if rx.changed().await.is_err() {
                        break false;
                    }
                };
                if !ok {
                    let _ = tx.send(Some(false));
                    bar.finish_with_message("skipped");
                    return fail(format!("skipped: host {dep}, which it depends on, did not apply"), 0);
                }
            }
            let _permit = sem.acquire_owned().await.expect("semaphore open");
            let transport: Arc<dyn Transport> = match existing {
                Some(t) => t,
                None => match connector.connect(&hp.host, &conn).await {
                    Ok(t) => t,
                    Err(e) => {
                        let _ = tx.send(Some(false));
                        bar.finish_with_message("unreachable");
                        return fail(format!("{e:#}"), 0);
                    }
                },
            };
            let indexed: Vec<(usize, &crate::plan::Change)> = hp.changes.iter().enumerate().collect();
            let script = match apply_script_waiting(&indexed, &holder, &sensitive, lock_timeout) {
                Ok(s) => s,
                Err(e) => return fail(e, 0),
            };
            let resources: Vec<String> = hp.changes.iter().map(|c| c.resource.clone()).collect();
            let progress = Mutex::new(0usize);
            let phases = Mutex::new(PhaseLog::new(&hp.host, start));
            let on_line = |line: &str| match parse_marker(line) {
                Some(Marker::Begin(n)) => {
                    let resource = resources.get(n).cloned().unwrap_or_default();
                    if lines {
                        phases.lock().expect("phase lock").begin(&resource);
                    }
                    bar.set_message(resource)
                }
                Some(Marker::Waiting(h)) => {
                    let msg = format!("waiting up to {lock_timeout} s for the lock held by {}", h.trim());
                    bar.suspend(|| eprintln!("{}: {msg}", hp.host));
                    bar.set_message(msg);
                }
                Some(Marker::Ok(_)) => {
                    let mut p = progress.lock().expect("progress lock");
                    *p += 1;
                    bar.set_position(*p as u64);
                    phases.lock().expect("phase lock").done += 1;
                }
                _ => {}
            };
            let result = transport.run(&script, APPLY_TIMEOUT, Some(&on_line)).await;
            let outcome = match result {
                Err(e) => fail(redactor.redact(&format!("{e:#}")), *progress.lock().expect("lock")),
                Ok(out) => {
                    let mut ok = 0;
                    let mut failed: Option<(usize, i32)> = None;
                    let mut log = vec![];
                    let mut locked = None;
                    let mut done = false;
                    for m in out.stdout.lines().filter_map(parse_marker) {
                        match m {
                            Marker::Ok(_) => ok += 1,
                            Marker::Fail(n, rc) => failed = Some((n, rc)),
                            Marker::Log(_, l) => log.push(l),
                            Marker::Locked(h) => locked = Some(h),
                            Marker::Done => done = true,
                            Marker::Begin(_) | Marker::Waiting(_) => {}
                        }
                    }
                    let secs = start.elapsed().as_secs_f64();
                    if let Some(h) = locked.filter(|_| out.status == Some(EXIT_LOCKED)) {
                        fail(format!("another run held this host's lock for all of --lock-timeout {lock_timeout} s: {}", h.trim()), 0)
                    } else if let Some((n, rc)) = failed {
                        let what = resources.get(n).cloned().unwrap_or_default();
                        let detail = redactor.redact(&log.join("\n"));
                        fail(format!("{what} failed (exit {rc}); {ok} of {total} changes applied; later changes not run\n{detail}"), ok)
                    } else if !done || out.status != Some(0) {
                        let err = redactor.redact(out.stderr.trim());
                        fail(format!("the apply script stopped early (exit {:?}) after {ok} of {total} changes: {err}", out.status), ok)
                    } else {
                        HostOutcome { host: hp.host.clone(), applied: ok, total, error: None, secs }
                    }
                }
            };
            if lines {
                let mut phases = phases.lock().expect("phase lock");
                phases.end();
                match &outcome.error {
                    None => eprintln!("{} {}: applied {} changes", stamp(start), hp.host, outcome.applied),
                    Some(_) => eprintln!("{} {}: failed after {} of {} changes", stamp(start), hp.host, outcome.applied, total),
                }
            }
            bar.finish_with_message(if outcome.error.is_some() { "failed" } else { "done" });
            let _ = tx.send(Some(outcome.error.is_none()));
            outcome
        }));
    }
    let mut outcomes = vec![];
    for t in tasks {
        outcomes.push(t.await.context("apply task")?);
    }
    let _ = multi.clear();
    Ok(outcomes)
}

/// `[  12.3 s]`: the time since `start`, the prefix of a progress line.
pub fn stamp(start: Instant) -> String {
    format!("[{:>7.1} s]", start.elapsed().as_secs_f64())
}

/// The phase a change belongs to, for progress lines without a terminal.
pub fn phase_of(resource: &str) -> &'static str {
    match resource.split(':').next().unwrap_or("") {
        "apt_repo" | "package" => "packages",
        "file" | "directory" | "symlink" | "unit" => "files",
        "user" | "group" => "users",
        "service" => "services",
        "command" => "commands",
        "handler" => "handlers",
        "galera_node" => "cluster steps",
        _ => "other changes",
    }
}

/// One host's phases as its apply script runs them: a line when a phase ends (the next
/// begins, or the script ends) with its changes and duration.
struct PhaseLog {
    host: String,
    host_start: Instant,
    current: Option<(&'static str, Instant)>,
    /// Changes of the current phase that finished.
    done: usize,
}

impl PhaseLog {
    fn new(host: &str, host_start: Instant) -> PhaseLog {
        PhaseLog {
            host: host.to_string(),
            host_start,
            current: None,
            done: 0,
        }
    }

    fn begin(&mut self, resource: &str) {
        let phase = phase_of(resource);
        if self.current.map(|(p, _)| p) != Some(phase) {
            self.end();
            self.current = Some((phase, Instant::now()));
        }
    }

    fn end(&mut self) {
        if let Some((phase, at)) = self.current.take() {
            eprintln!(
                "{} {}: {phase}: {} change{} in {:.1} s",
                stamp(self.host_start),
                self.host,
                self.done,
                if self.done == 1 { "" } else { "s" },
                at.elapsed().as_secs_f64()
            );
        }
        self.done = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::phase_of;

    #[test]
    fn changes_fall_into_the_phases_progress_lines_name() {
        let cases = [
            ("package:nginx", "packages"),
            ("apt_repo:debian", "packages"),
            ("file:/etc/x", "files"),
            ("unit:x.service", "files"),
            ("user:www", "users"),
            ("service:nginx.service", "services"),
            ("command:kiln-certs sync", "commands"),
            ("handler:reload@nginx.service", "handlers"),
            ("galera_node:c", "cluster steps"),
        ];
        for (resource, phase) in cases {
            assert_eq!(phase_of(resource), phase, "{resource}");
        }
    }
}
