//! `kiln plan`: read the hosts, print what apply would do.

use std::path::PathBuf;

use anyhow::Result;

use super::{load, make_plan, Connections};
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
}

/// Exit code: 0 no changes, 2 changes (with `detailed_exitcode`), 1 when a host failed.
pub async fn run(args: PlanArgs) -> Result<i32> {
    let loaded = load(&args.env, args.limit.as_deref())?;
    let mut conns = Connections::default();
    let plan = make_plan(&loaded, &mut conns).await?;
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
