//! What `kiln apply` prints after the run: the summary, or with `--format json` one
//! document:
//! `{"environment", "status": "ok"|"failed", "exit_code", "plan": <as kiln plan --format
//! json>, "refused_stale": N, "hosts": [{"host", "applied", "total", "error", "seconds"}],
//! "clusters_ok": bool}` — no secret: the plan carries none, errors are redacted.

use anyhow::Result;
use serde_json::json;

use crate::apply::run::HostOutcome;
use crate::plan::Plan;
use crate::ui::Paint;

pub(super) fn print_json(
    plan: &Plan,
    refused: usize,
    outcomes: &[HostOutcome],
    clusters_ok: bool,
    code: i32,
) -> Result<()> {
    let doc = json_doc(plan, refused, outcomes, clusters_ok, code);
    println!("{}", serde_json::to_string_pretty(&doc)?);
    Ok(())
}

/// The `--format json` document (shape in the module's doc).
pub fn json_doc(
    plan: &Plan,
    refused: usize,
    outcomes: &[HostOutcome],
    clusters_ok: bool,
    code: i32,
) -> serde_json::Value {
    let hosts: Vec<_> = outcomes
        .iter()
        .map(|o| {
            json!({"host": o.host, "applied": o.applied, "total": o.total,
                   "error": o.error, "seconds": o.secs})
        })
        .collect();
    json!({
        "environment": plan.environment,
        "status": if code == 0 { "ok" } else { "failed" },
        "exit_code": code,
        "plan": plan,
        "refused_stale": refused,
        "hosts": hosts,
        "clusters_ok": clusters_ok,
    })
}

pub fn print_summary(outcomes: &[HostOutcome], paint: &Paint) {
    let failed = outcomes.iter().filter(|o| o.error.is_some()).count();
    let applied: usize = outcomes.iter().map(|o| o.applied).sum();
    println!(
        "\n{} {applied} change{} applied on {} host{}; {}.",
        paint.bold("Apply:"),
        if applied == 1 { "" } else { "s" },
        outcomes.len() - failed,
        if outcomes.len() - failed == 1 {
            ""
        } else {
            "s"
        },
        if failed == 0 {
            paint.green("no failures")
        } else {
            paint.red(&format!(
                "{failed} host{} failed",
                if failed == 1 { "" } else { "s" }
            ))
        }
    );
    for o in outcomes {
        match &o.error {
            None => println!(
                "  {:<16} {}  {}/{} changes  {:.1} s",
                o.host,
                paint.green("ok    "),
                o.applied,
                o.total,
                o.secs
            ),
            Some(e) => {
                let mut lines = e.lines();
                println!(
                    "  {:<16} {}  {}",
                    o.host,
                    paint.red("FAILED"),
                    lines.next().unwrap_or_default()
                );
                for l in lines {
                    println!("  {:<16}         {}", "", paint.dim(l));
                }
            }
        }
    }
}
