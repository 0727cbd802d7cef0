//! Verify: is an environment what its spec says? A converged environment re-plans to
//! nothing (`engine::make_plan`), and every health check its modules declare passes on its
//! host ([`run_checks`], one script per host through the host's transport). The drift report
//! ([`drift`]) is the same re-plan as a document for CI.

pub mod drift;

use std::collections::BTreeMap;
use std::fmt::Write;
use std::time::Duration;

use crate::engine::{Connections, Loaded};

/// The checks of one host as one script: each check runs with its timeout and retries and
/// reports `@@kiln:check N RC`, followed by the tail of its output when it failed (or, for
/// a check with `report`, always).
pub fn checks_script(checks: &[crate::desired::Check]) -> String {
    let mut s = String::from("set -u\nexport LC_ALL=C\n");
    for (i, c) in checks.iter().enumerate() {
        let _ = writeln!(
            s,
            "tries={tries}\nwhile :; do out=$({unit} 2>&1 </dev/null); rc=$?; [ \"$rc\" -eq 0 ] && break; tries=$((tries-1)); [ \"$tries\" -le 0 ] && break; sleep 1; done\nprintf '@@kiln:check {i} %s\\n' \"$rc\"\n[ \"$rc\" -ne 0 ]{report} && printf '%s\\n' \"$out\" | tail -n 8 | sed 's/^/@@kiln:log {i} /'",
            tries = c.retries + 1,
            report = if c.report { " || [ -n \"$out\" ]" } else { "" },
            // `timeout` runs the unit's own `sh`; the check's text is in no argument.
            unit = crate::shell::user_unit(&c.run).replacen(" sh -c ", &format!(" timeout {} sh -c ", c.timeout_secs), 1),
        );
    }
    s.push_str("exit 0\n");
    s
}

/// The result of one health check.
#[derive(Debug, Clone)]
pub struct CheckResult {
    pub name: String,
    pub module: String,
    /// Exit code; `None` when it did not run.
    pub rc: Option<i32>,
    /// The tail of a failed (or `report`) check's output, redacted; empty when the check depends on a
    /// secret (its output may carry what the secret became, not only the value).
    pub log: Vec<String>,
    pub sensitive: bool,
}

impl CheckResult {
    pub fn passed(&self) -> bool {
        self.rc == Some(0)
    }
}

/// A host's checks: their results, or why they could not run.
pub struct HostChecks {
    pub host: String,
    pub result: Result<Vec<CheckResult>, String>,
}

/// Runs every host's checks on the connections the plan opened (hosts that could not be
/// read are skipped: the plan already failed them).
pub async fn run_checks(loaded: &Loaded, conns: &Connections) -> Vec<HostChecks> {
    let redactor = loaded.env.redactor();
    let mut out = vec![];
    for host in &loaded.desired.hosts {
        if host.checks.is_empty() {
            continue;
        }
        let Some(t) = conns.by_host.get(&host.name) else {
            continue;
        };
        let total: u64 = host
            .checks
            .iter()
            .map(|c| c.timeout_secs * (c.retries as u64 + 1) + c.retries as u64)
            .sum();
        let run = t
            .run(
                &checks_script(&host.checks),
                Duration::from_secs(total + 30),
                None,
            )
            .await;
        let stdout = match run {
            Ok(o) => o.stdout,
            Err(e) => {
                out.push(HostChecks {
                    host: host.name.clone(),
                    result: Err(redactor.redact(&format!("{e:#}"))),
                });
                continue;
            }
        };
        let (rcs, logs) = parse_check_output(&stdout);
        let results = host
            .checks
            .iter()
            .enumerate()
            .map(|(i, c)| CheckResult {
                name: c.name.clone(),
                module: c.module.clone(),
                rc: rcs.get(&i).copied(),
                log: if c.sensitive {
                    vec![]
                } else {
                    logs.get(&i)
                        .into_iter()
                        .flatten()
                        .map(|l| redactor.redact(l))
                        .collect()
                },
                sensitive: c.sensitive,
            })
            .collect();
        out.push(HostChecks {
            host: host.name.clone(),
            result: Ok(results),
        });
    }
    out
}

type Rcs = BTreeMap<usize, i32>;
type Logs = BTreeMap<usize, Vec<String>>;

/// `@@kiln:check N RC` and `@@kiln:log N TEXT` lines.
fn parse_check_output(stdout: &str) -> (Rcs, Logs) {
    let mut logs: Logs = BTreeMap::new();
    let mut rcs: Rcs = BTreeMap::new();
    for line in stdout.lines() {
        if let Some(rest) = line.strip_prefix("@@kiln:check ") {
            let mut it = rest.split_whitespace();
            if let (Some(i), Some(rc)) = (
                it.next().and_then(|x| x.parse::<usize>().ok()),
                it.next().and_then(|x| x.parse::<i32>().ok()),
            ) {
                rcs.insert(i, rc);
            }
        } else if let Some(rest) = line.strip_prefix("@@kiln:log ") {
            let (i, text) = rest.split_once(' ').unwrap_or((rest, ""));
            if let Ok(i) = i.parse::<usize>() {
                logs.entry(i).or_default().push(text.to_string());
            }
        }
    }
    (rcs, logs)
}

#[cfg(test)]
mod tests {
    #[test]
    fn check_output_is_read_by_index_and_garbage_ignored() {
        let (rcs, logs) = super::parse_check_output(
            "noise\n@@kiln:check 0 0\n@@kiln:check 1 3\n@@kiln:log 1 line one\n@@kiln:log 1 line two\n@@kiln:check x 1\n",
        );
        assert_eq!(rcs.get(&0), Some(&0));
        assert_eq!(rcs.get(&1), Some(&3));
        assert_eq!(rcs.len(), 2);
        assert_eq!(logs[&1], vec!["line one", "line two"]);
    }
}
