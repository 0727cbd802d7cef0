//! `kiln verify`: a converged environment re-plans to nothing, and every health check its
//! modules declare passes. Exit 0 healthy, 2 drift, 1 a failed check or host.
//!
//! `--format json` prints one document: `{"environment", "status": "ok"|"drift"|"failed",
//! "plan": <the plan, as `kiln plan --format json`>, "checks": [{"host", "module", "name",
//! "passed", "rc", "log", "sensitive"}], "unchecked": [{"host", "error"}]}` — the log of a
//! check that depends on a secret is empty, as in the human output.

use anyhow::Result;
use serde_json::json;

use crate::engine::{load, make_plan, Connections, Loaded};
use crate::ops::plan::Format;
use crate::plan::render::render_plan;
use crate::ui::Paint;
use crate::verify::run_checks;

pub async fn run(env: &str, limit: Option<&str>, format: Format) -> Result<i32> {
    let paint = Paint::detect();
    let loaded = load(env, limit)?;
    let mut conns = Connections::ssh(&loaded.env);
    let plan = make_plan(&loaded, &mut conns).await?;
    let drift = plan.change_count() > 0;
    if format == Format::Json {
        let (doc, code) = json_report(&loaded, &conns, plan).await;
        println!("{}", serde_json::to_string_pretty(&doc)?);
        return Ok(code);
    }
    if drift || plan.has_errors() {
        print!("{}", render_plan(&plan, &paint));
    } else {
        println!(
            "{} every host matches the spec (re-plan is empty)",
            paint.green("✓")
        );
    }
    let mut failed = plan.has_errors();
    for host in run_checks(&loaded, &conns).await {
        let results = match host.result {
            Ok(r) => r,
            Err(e) => {
                println!(
                    "{} {}: checks could not run: {e}",
                    paint.red("✗"),
                    host.host
                );
                failed = true;
                continue;
            }
        };
        for c in results {
            if c.passed() {
                println!(
                    "{} {}: {} ({})",
                    paint.green("✓"),
                    host.host,
                    c.name,
                    c.module
                );
                for l in &c.log {
                    println!("      {}", paint.dim(l));
                }
                continue;
            }
            failed = true;
            let why =
                c.rc.map(|rc| format!("exit {rc}"))
                    .unwrap_or_else(|| "did not run".into());
            println!(
                "{} {}: {} ({}) — {why}",
                paint.red("✗"),
                host.host,
                c.name,
                c.module
            );
            if c.sensitive {
                println!(
                    "      {}",
                    paint.dim("(output not shown: the check depends on a secret)")
                );
            }
            for l in &c.log {
                println!("      {}", paint.dim(l));
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

/// The `--format json` document (shape in the module's doc) and the exit code, from a
/// plan made through `conns`, whose checks run through the same connections.
pub async fn json_report(
    loaded: &Loaded,
    conns: &Connections,
    plan: crate::plan::Plan,
) -> (serde_json::Value, i32) {
    let drift = plan.change_count() > 0;
    let mut failed = plan.has_errors();
    let (mut checks, mut unchecked) = (vec![], vec![]);
    for host in run_checks(loaded, conns).await {
        match host.result {
            Ok(results) => {
                for c in results {
                    failed |= !c.passed();
                    checks.push(json!({
                        "host": host.host, "module": c.module, "name": c.name,
                        "passed": c.passed(), "rc": c.rc, "log": c.log,
                        "sensitive": c.sensitive,
                    }));
                }
            }
            Err(e) => {
                failed = true;
                unchecked.push(json!({"host": host.host, "error": e}));
            }
        }
    }
    let (status, code) = if failed {
        ("failed", 1)
    } else if drift {
        ("drift", 2)
    } else {
        ("ok", 0)
    };
    let doc = json!({
        "environment": loaded.env.name, "status": status, "plan": plan,
        "checks": checks, "unchecked": unchecked,
    });
    (doc, code)
}
