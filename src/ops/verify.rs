//! `kiln verify`: a converged environment re-plans to nothing, and every health check its
//! modules declare passes. Exit 0 healthy, 2 drift, 1 a failed check or host.

use std::fmt::Write;
use std::time::Duration;

use anyhow::Result;

use crate::engine::{load, make_plan, Connections};
use crate::plan::render::render_plan;
use crate::ui::Paint;

/// The checks of one host as one script: each check runs with its timeout and retries and
/// reports `@@kiln:check N RC`, followed by the tail of its output when it failed.
pub fn checks_script(checks: &[crate::desired::Check]) -> String {
    let mut s = String::from("set -u\nexport LC_ALL=C\n");
    for (i, c) in checks.iter().enumerate() {
        let _ = writeln!(
            s,
            "tries={tries}\nwhile :; do out=$({unit} 2>&1 </dev/null); rc=$?; [ \"$rc\" -eq 0 ] && break; tries=$((tries-1)); [ \"$tries\" -le 0 ] && break; sleep 1; done\nprintf '@@kiln:check {i} %s\\n' \"$rc\"\n[ \"$rc\" -ne 0 ] && printf '%s\\n' \"$out\" | tail -n 8 | sed 's/^/@@kiln:log {i} /'",
            tries = c.retries + 1,
            // `timeout` runs the unit's own `sh`; the check's text is in no argument.
            unit = crate::shell::user_unit(&c.run).replacen(" sh -c ", &format!(" timeout {} sh -c ", c.timeout_secs), 1),
        );
    }
    s.push_str("exit 0\n");
    s
}

pub async fn run(env: &str, limit: Option<&str>) -> Result<i32> {
    let paint = Paint::detect();
    let loaded = load(env, limit)?;
    let mut conns = Connections::ssh(&loaded.env);
    let plan = make_plan(&loaded, &mut conns).await?;
    let drift = plan.change_count() > 0;
    if drift || plan.has_errors() {
        print!("{}", render_plan(&plan, &paint));
    } else {
        println!(
            "{} every host matches the spec (re-plan is empty)",
            paint.green("✓")
        );
    }
    let redactor = loaded.env.redactor();
    let mut failed = plan.has_errors();
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
        let out = t
            .run(
                &checks_script(&host.checks),
                Duration::from_secs(total + 30),
                None,
            )
            .await;
        let out = match out {
            Ok(o) => o.stdout,
            Err(e) => {
                println!(
                    "{} {}: checks could not run: {}",
                    paint.red("✗"),
                    host.name,
                    redactor.redact(&format!("{e:#}"))
                );
                failed = true;
                continue;
            }
        };
        let mut logs: std::collections::BTreeMap<usize, Vec<String>> = Default::default();
        let mut rcs = std::collections::BTreeMap::new();
        for line in out.lines() {
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
        for (i, c) in host.checks.iter().enumerate() {
            match rcs.get(&i) {
                Some(0) => println!(
                    "{} {}: {} ({})",
                    paint.green("✓"),
                    host.name,
                    c.name,
                    c.module
                ),
                other => {
                    failed = true;
                    let why = other
                        .map(|rc| format!("exit {rc}"))
                        .unwrap_or_else(|| "did not run".into());
                    println!(
                        "{} {}: {} ({}) — {why}",
                        paint.red("✗"),
                        host.name,
                        c.name,
                        c.module
                    );
                    if c.sensitive {
                        // Its output may carry what the secret became (not only the value
                        // the redactor knows).
                        println!(
                            "      {}",
                            paint.dim("(output not shown: the check depends on a secret)")
                        );
                    } else {
                        for l in logs.get(&i).into_iter().flatten() {
                            println!("      {}", paint.dim(&redactor.redact(l)));
                        }
                    }
                }
            }
        }
    }
    Ok(if failed {
        1
    } else if drift {
        2
    } else {
        0
    })
}
