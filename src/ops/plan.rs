//! `kiln plan`: read the hosts, print what apply would do.

use std::path::PathBuf;

use anyhow::Result;

use super::{make_plan, Connections};
use crate::plan::render::render_plan;
use crate::ui::Paint;

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    Human,
    Json,
}

pub struct PlanArgs {
    pub env: String,
    pub limit: Option<String>,
    pub out: Option<PathBuf>,
    pub format: Format,
    pub detailed_exitcode: bool,
    pub offline: bool,
}

/// The plan against bare hosts, built with no connection: checks the whole spec (templates
/// rendered, graph acyclic, resources valid) and shows everything a fresh host would get.
fn offline_plan(loaded: &super::Loaded) -> Result<crate::plan::Plan> {
    let seal_key = crate::plan::seal::load_key()?;
    let bare = crate::facts::HostFacts::default();
    let hosts = (0..loaded.desired.hosts.len())
        .map(|h| crate::plan::build::host_plan(&loaded.desired, &loaded.graph, h, &bare, &seal_key))
        .collect();
    Ok(crate::plan::Plan {
        format: crate::plan::PLAN_FORMAT,
        kiln_version: env!("CARGO_PKG_VERSION").to_string(),
        environment: loaded.env.name.clone(),
        env_file: std::fs::canonicalize(&loaded.env.file).unwrap_or(loaded.env.file.clone()),
        created_at: super::now_rfc3339(),
        hosts,
    })
}

/// Exit code: 0 no changes, 2 changes (with `detailed_exitcode`), 1 when a host failed.
pub async fn run(args: PlanArgs) -> Result<i32> {
    if args.offline && args.out.is_some() {
        anyhow::bail!("an --offline plan describes bare hosts and cannot be saved for apply");
    }
    let loaded = super::load_with(&args.env, args.limit.as_deref(), args.offline)?;
    let plan = if args.offline {
        offline_plan(&loaded)?
    } else {
        let mut conns = Connections::ssh(&loaded.env);
        make_plan(&loaded, &mut conns).await?
    };
    if args.offline && args.format == Format::Human {
        println!(
            "Offline: no host was contacted; this is the plan for bare hosts. \
             The spec is valid."
        );
    }
    match args.format {
        Format::Human => print!("{}", render_plan(&plan, &Paint::detect())),
        Format::Json => println!("{}", serde_json::to_string_pretty(&plan)?),
    }
    if let Some(out) = &args.out {
        super::write_atomic(out, serde_json::to_string_pretty(&plan)?.as_bytes())?;
        if args.format == Format::Human {
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
