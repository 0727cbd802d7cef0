//! `kiln apply`: execute exactly a plan — one made now, or a saved one whose changes are
//! checked for staleness first. Hosts run in parallel (bounded), each as one script; a
//! failing host does not stop the others.

use std::io::{BufRead, IsTerminal, Write};
use std::path::Path;

use anyhow::{bail, Context, Result};

use crate::apply::run::{execute, refuse_stale, HostOutcome};
use crate::engine::{load, make_plan, Connections};
use crate::plan::render::render_plan;
use crate::plan::{Plan, PLAN_FORMAT};
use crate::ui::Paint;

#[derive(Debug, clap::Args)]
pub struct ApplyArgs {
    /// Environment name/path, or a plan saved with `kiln plan -o`.
    pub target: String,
    /// Do not ask for confirmation.
    #[arg(long, short = 'y')]
    pub yes: bool,
    /// Only these hosts or roles (comma-separated; not with a saved plan).
    #[arg(long)]
    pub limit: Option<String>,
    /// Hosts applied at once.
    #[arg(long)]
    pub parallel: Option<usize>,
    /// Seconds to wait for a host's lock that another run holds (an orphan of a lost
    /// connection gives it up at its next step), before failing that host.
    #[arg(long, default_value_t = 10, value_name = "SECONDS")]
    pub lock_timeout: u64,
}

/// A plan saved with `kiln plan -o FILE`, recognised by its content (a JSON document with
/// kiln's plan fields), whatever the file is called; `None` for anything else (an
/// environment name or file).
fn saved_plan(target: &str) -> Result<Option<Plan>> {
    let path = Path::new(target);
    if !path.is_file() {
        return Ok(None);
    }
    let text = std::fs::read_to_string(path).with_context(|| format!("reading {target}"))?;
    let Ok(serde_json::Value::Object(doc)) = serde_json::from_str::<serde_json::Value>(&text)
    else {
        return Ok(None);
    };
    if !(doc.contains_key("kiln_version") && doc.contains_key("format")) {
        bail!("{target} is a JSON document but not a kiln plan (no `kiln_version`/`format`)");
    }
    let format = doc.get("format").and_then(|f| f.as_u64()).unwrap_or(0);
    if format != u64::from(PLAN_FORMAT) {
        bail!(
            "{target} has plan format {format}, this kiln reads format {PLAN_FORMAT}; make the plan again"
        );
    }
    let plan: Plan =
        serde_json::from_str(&text).with_context(|| format!("{target} is not a kiln plan"))?;
    Ok(Some(plan))
}

pub async fn run(args: ApplyArgs) -> Result<i32> {
    let paint = Paint::detect();
    let mut refused = 0;
    let (loaded, plan, mut conns) = if let Some(mut plan) = saved_plan(&args.target)? {
        if args.limit.is_some() {
            bail!("--limit cannot narrow a saved plan; make a new plan with --limit");
        }
        let hosts: Vec<String> = plan.hosts.iter().map(|h| h.host.clone()).collect();
        let env_file = plan.env_file.to_string_lossy().to_string();
        let loaded = load(&env_file, Some(&hosts.join(",")))?;
        let mut conns = Connections::ssh(&loaded.env);
        refused = refuse_stale(&loaded, &mut conns, &mut plan, &paint).await?;
        print!("{}", render_plan(&plan, &paint));
        (loaded, plan, conns)
    } else {
        let loaded = load(&args.target, args.limit.as_deref())?;
        let mut conns = Connections::ssh(&loaded.env);
        let plan = make_plan(&loaded, &mut conns).await?;
        print!("{}", render_plan(&plan, &paint));
        (loaded, plan, conns)
    };
    if plan.change_count() == 0 {
        println!("\nNo changes to apply.");
        return Ok(if plan.has_errors() || refused > 0 {
            1
        } else {
            0
        });
    }
    if !args.yes && !confirm()? {
        println!("Apply cancelled; nothing was changed.");
        return Ok(1);
    }
    // Hosts' own changes first (packages, configuration), then cluster steps in order.
    let host_plan = crate::apply::cluster::host_changes_only(&plan);
    let outcomes = execute(
        &loaded,
        &host_plan,
        &mut conns,
        args.parallel,
        args.lock_timeout,
    )
    .await?;
    print_summary(&outcomes, &paint);
    let failed_hosts = outcomes
        .iter()
        .filter(|o| o.error.is_some())
        .map(|o| o.host.clone())
        .collect();
    let clusters_ok =
        crate::apply::cluster::execute(&loaded, &plan, &mut conns, &failed_hosts, &paint).await;
    let failed = outcomes.iter().any(|o| o.error.is_some()) || !clusters_ok;
    Ok(if failed || plan.has_errors() || refused > 0 {
        1
    } else {
        0
    })
}

fn confirm() -> Result<bool> {
    ask(
        "refusing to apply without --yes: standard input is not a terminal",
        "\nApply these changes?",
    )
}

/// Asks `question` on the terminal; only `yes` is accepted. Without a terminal, fails with
/// `refusal` (the caller's `--yes` is the way to run unattended).
pub fn ask(refusal: &str, question: &str) -> Result<bool> {
    if !std::io::stdin().is_terminal() {
        bail!("{refusal}");
    }
    print!("{question} Only 'yes' is accepted: ");
    std::io::stdout().flush()?;
    let mut line = String::new();
    std::io::stdin().lock().read_line(&mut line)?;
    Ok(line.trim() == "yes")
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_saved_plan_is_known_by_content_and_an_environment_is_not_a_plan() {
        let dir = tempfile::tempdir().unwrap();
        let plan = Plan {
            format: PLAN_FORMAT,
            kiln_version: "test".into(),
            environment: "lab".into(),
            env_file: "environments/lab.toml".into(),
            created_at: "2026-01-01T00:00:00Z".into(),
            hosts: vec![],
        };
        let saved = dir.path().join("x.plan");
        std::fs::write(&saved, serde_json::to_string_pretty(&plan).unwrap()).unwrap();
        let read = saved_plan(saved.to_str().unwrap())
            .unwrap()
            .expect("a plan");
        assert_eq!(read.environment, "lab");

        let env = dir.path().join("prod.toml");
        std::fs::write(&env, "[hosts.web]\naddress = \"10.0.0.5\"\n").unwrap();
        assert!(saved_plan(env.to_str().unwrap()).unwrap().is_none());
        // A name, not a file: an environment under environments/.
        assert!(saved_plan("no-such-environment").unwrap().is_none());
    }
}
