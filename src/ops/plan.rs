//! `kiln plan`: read the hosts, print what apply would do.

use std::path::PathBuf;

use anyhow::Result;

use crate::engine::{make_plan, Connections};
use crate::plan::markdown::{render_markdown, Notes};
use crate::plan::render::render_plan;
use crate::ui::Paint;

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// Text for a terminal.
    Human,
    /// One JSON document on standard output (never a secret).
    Json,
}

/// Output of `kiln plan`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum PlanFormat {
    /// Text for a terminal.
    Human,
    /// One JSON document on standard output (never a secret).
    Json,
    /// Markdown for a pull request comment: a table per host, a collapsible diff per change.
    Markdown,
}

/// `--target`/`--exclude`, shared by plan, apply and drift.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct TargetArgs {
    /// Only resources matching TYPE:NAME (`*`/`?` globs: `file:/etc/nginx/*`,
    /// `galera_node:*`), with what they require; repeatable.
    #[arg(long = "target", value_name = "TYPE:NAME")]
    pub targets: Vec<String>,
    /// Leave out resources matching TYPE:NAME, and what requires them; repeatable.
    #[arg(long = "exclude", value_name = "TYPE:NAME")]
    pub exclude: Vec<String>,
}

impl TargetArgs {
    pub fn is_empty(&self) -> bool {
        self.targets.is_empty() && self.exclude.is_empty()
    }
}

#[derive(Debug, clap::Args)]
pub struct PlanArgs {
    /// Environment name under environments/, or a path to a .toml file.
    pub env: String,
    /// Only these hosts or roles (comma-separated).
    #[arg(long)]
    pub limit: Option<String>,
    /// Save the plan (JSON, any file name) for `kiln apply FILE`.
    #[arg(short = 'o', long = "out")]
    pub out: Option<PathBuf>,
    /// Output: human, json (the plan document `-o` saves), or markdown (for a pull request).
    #[arg(long, value_enum, default_value = "human")]
    pub format: PlanFormat,
    /// Exit 2 when there are changes (0 none, 1 error).
    #[arg(long)]
    pub detailed_exitcode: bool,
    /// Contact no host: validate the spec and show the plan for bare hosts (secrets
    /// that cannot be read are replaced by placeholders).
    #[arg(long)]
    pub offline: bool,
    #[command(flatten)]
    pub select: TargetArgs,
    /// Plan a host even though applying it would lock kiln out of it (its SSH source
    /// range, key, user, sudo or port): the refusal becomes a warning, recorded in a saved
    /// plan. `kiln apply` needs it too.
    #[arg(long = "i-know-this-locks-me-out")]
    pub i_know_this_locks_me_out: bool,
    /// Show what reading each host cost: connect, the fact script on the host, and each of
    /// its sections (a package batch, a path, a guard ...) timed on the host, slowest
    /// first, so that a slow `unless` guard is visible. With `--format json` every
    /// section is in each host's `timings`. Each section's tick runs one `date` on the
    /// host, which the script's own time includes.
    #[arg(long)]
    pub timings: bool,
}

/// Exit code: 0 no changes, 2 changes (with `detailed_exitcode`), 1 when a host failed —
/// or would lock kiln out (`--i-know-this-locks-me-out` makes that a warning).
pub async fn run(args: PlanArgs) -> Result<i32> {
    if args.offline && args.timings {
        anyhow::bail!("--timings measures the hosts, which an --offline plan does not contact");
    }
    if args.offline && args.out.is_some() {
        anyhow::bail!("an --offline plan describes bare hosts and cannot be saved for apply");
    }
    let mut loaded = crate::engine::load_with(&args.env, args.limit.as_deref(), args.offline)?;
    loaded.select(&args.select.targets, &args.select.exclude)?;
    let plan = if args.offline {
        crate::engine::offline_plan(&loaded)?
    } else {
        let mut conns = Connections::ssh(&loaded.env);
        conns.timings = args.timings;
        make_plan(&loaded, &mut conns).await?
    };
    let mut plan = plan;
    for w in plan.refuse_lockouts(args.i_know_this_locks_me_out) {
        eprintln!("warning: {w}");
    }
    if args.offline && args.format == PlanFormat::Human {
        println!(
            "Offline: no host was contacted; this is the plan for bare hosts. \
             The spec is valid."
        );
        if !loaded.env.placeholders.is_empty() {
            println!(
                "Secrets not read, placeholders used: {}.",
                loaded.env.placeholders.join(", ")
            );
        }
    }
    match args.format {
        PlanFormat::Human => {
            print!("{}", render_plan(&plan, &Paint::detect()));
            if args.timings {
                print!("{}", crate::plan::render::render_timings(&plan));
            }
            if let Some(line) = seed_note(&loaded.env) {
                println!("{line}");
            }
        }
        PlanFormat::Json => println!("{}", serde_json::to_string_pretty(&plan)?),
        PlanFormat::Markdown => print!(
            "{}",
            render_markdown(
                &plan,
                &Notes {
                    offline: args.offline,
                    placeholders: &loaded.env.placeholders,
                }
            )
        ),
    }
    if let Some(out) = &args.out {
        crate::state::write_private(out, serde_json::to_string_pretty(&plan)?.as_bytes())?;
        if args.format == PlanFormat::Human {
            println!(
                "Saved the plan to {}; apply it exactly with `kiln apply {}`.",
                out.display(),
                out.display()
            );
        }
    }
    if plan.has_errors() {
        return Ok(1);
    }
    Ok(if args.detailed_exitcode && plan.change_count() > 0 {
        2
    } else {
        0
    })
}

/// The line a plan of an environment with `[seed]` ends with: what the next full apply
/// does to its databases when they were never seeded.
pub fn seed_note(env: &crate::spec::Environment) -> Option<String> {
    let seed = env.seed().ok()??;
    let how = match &seed.rules {
        Some(r) => format!(
            "anonymised by {} ({} table rule(s), media: {})",
            r.file.display(),
            r.tables,
            r.media
        ),
        None => "not anonymised (no_anonymize = true)".into(),
    };
    Some(format!(
        "Seed: after a full apply, if {}'s bucket records no seed yet, every database but the system ones is replaced by {}'s latest point, {how}.",
        env.name, seed.from_env
    ))
}
