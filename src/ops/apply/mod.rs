//! `kiln apply`: execute exactly a plan — one made now, or a saved one whose changes are
//! checked for staleness first. Hosts run in parallel (bounded), each as one script; a
//! failing host does not stop the others.

pub mod output;
mod saved;

use std::io::{BufRead, IsTerminal, Write};

use anyhow::{bail, Result};

use crate::apply::run::{execute, refuse_stale};
use crate::engine::{load, make_plan, Connections};
use crate::ops::plan::{Format, TargetArgs};
use crate::plan::render::render_plan;
use crate::ui::Paint;

pub use output::print_summary;
use saved::saved_plan;

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
    /// Output: human, or json (one document after the run: the plan, each host's outcome;
    /// never a secret; needs --yes). Progress goes to standard error.
    #[arg(long, value_enum, default_value = "human")]
    pub format: Format,
    /// Not with a saved plan: it records its own selection.
    #[command(flatten)]
    pub select: TargetArgs,
    /// Apply a host even though it would lock kiln out of it (its SSH source range, key,
    /// user, sudo or port); without it such a host is refused before it is touched. A
    /// saved plan needs it again here, even when it was made with it.
    #[arg(long = "i-know-this-locks-me-out")]
    pub i_know_this_locks_me_out: bool,
}

pub async fn run(args: ApplyArgs) -> Result<i32> {
    let json = args.format == Format::Json;
    if json && !args.yes {
        bail!("--format json needs --yes: there is no prompt in JSON output");
    }
    // In JSON mode the human rendering is not printed; what the cluster steps print goes
    // to standard error, so standard output holds only the document.
    let paint = if json {
        Paint::plain()
    } else {
        Paint::detect()
    };
    let show = |plan: &crate::plan::Plan, env: &crate::spec::Environment| {
        if !json {
            print!("{}", render_plan(plan, &paint));
            if let Some(line) = crate::ops::plan::seed_note(env) {
                println!("{line}");
            }
        }
    };
    let mut refused = 0;
    let (loaded, plan, mut conns) = if let Some(mut plan) = saved_plan(&args.target)? {
        if args.limit.is_some() {
            bail!("--limit cannot narrow a saved plan; make a new plan with --limit");
        }
        if !args.select.is_empty() {
            bail!(
                "--target/--exclude cannot narrow a saved plan (it records its own selection); \
                 make a new plan with them"
            );
        }
        let hosts: Vec<String> = plan.hosts.iter().map(|h| h.host.clone()).collect();
        let env_file = plan.env_file.to_string_lossy().to_string();
        let loaded = load(&env_file, Some(&hosts.join(",")))?;
        let mut conns = Connections::ssh(&loaded.env);
        conns.progress_lines = !std::io::stderr().is_terminal();
        refused = refuse_stale(&loaded, &mut conns, &mut plan, &paint).await?;
        lockouts(&mut plan, args.i_know_this_locks_me_out);
        show(&plan, &loaded.env);
        (loaded, plan, conns)
    } else {
        let mut loaded = load(&args.target, args.limit.as_deref())?;
        loaded.select(&args.select.targets, &args.select.exclude)?;
        let mut conns = Connections::ssh(&loaded.env);
        // Without a terminal (CI), where no progress bar shows: a line per host.
        conns.progress_lines = !std::io::stderr().is_terminal();
        let mut plan = make_plan(&loaded, &mut conns).await?;
        lockouts(&mut plan, args.i_know_this_locks_me_out);
        show(&plan, &loaded.env);
        (loaded, plan, conns)
    };
    if plan.change_count() == 0 {
        let code = if plan.has_errors() || refused > 0 {
            1
        } else {
            0
        };
        if json {
            output::print_json(&plan, refused, &[], true, code)?;
        } else {
            println!("\nNo changes to apply.");
        }
        return seed_after(&loaded, &args, code).await;
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
    if !json {
        print_summary(&outcomes, &paint);
    }
    let failed_hosts = outcomes
        .iter()
        .filter(|o| o.error.is_some())
        .map(|o| o.host.clone())
        .collect();
    // In JSON mode standard output carries only the document.
    let progress = if json {
        crate::apply::cluster::Progress::Stderr
    } else {
        crate::apply::cluster::Progress::Stdout
    };
    let clusters_ok =
        crate::apply::cluster::execute(&loaded, &plan, &mut conns, &failed_hosts, &paint, progress)
            .await;
    let failed = outcomes.iter().any(|o| o.error.is_some()) || !clusters_ok;
    let code = if failed || plan.has_errors() || refused > 0 {
        1
    } else {
        0
    };
    if json {
        output::print_json(&plan, refused, &outcomes, clusters_ok, code)?;
    }
    seed_after(&loaded, &args, code).await
}

/// The lockout check's verdict (recorded in the plan, a saved one too): a host that would
/// lock kiln out is refused before anything runs on it (its error says why), unless
/// `allow` — then it is a warning on standard error.
fn lockouts(plan: &mut crate::plan::Plan, allow: bool) {
    for w in plan.refuse_lockouts(allow) {
        eprintln!("warning: {w}");
    }
}

/// An environment with `[seed]` gets its databases from the source once, after an apply
/// that converged every host (the backup module and the database must be in place). Not
/// after a partial (`--limit`, `--target`) or failed apply, nor in JSON mode, whose output
/// is one document: there it only says so on standard error.
async fn seed_after(loaded: &crate::engine::Loaded, args: &ApplyArgs, code: i32) -> Result<i32> {
    let Some(seed) = loaded.env.seed()? else {
        return Ok(code);
    };
    let whole = args.limit.is_none() && args.select.is_empty();
    if code != 0 || !whole || args.format == Format::Json {
        eprintln!(
            "seed from {}: not checked by this apply ({}); `kiln apply {}` or `kiln restore {} --from-env {}` does it",
            seed.from_env,
            if code != 0 { "it failed" } else if !whole { "a partial apply" } else { "JSON output" },
            loaded.env.name,
            loaded.env.name,
            seed.from_env
        );
        return Ok(code);
    }
    println!();
    crate::ops::backup::seed_if_new(loaded).await
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
