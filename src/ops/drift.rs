//! `kiln drift`: the CI form of plan over several environments. Never changes anything.
//! Exit 0 clean, 2 drift, 1 error (an unreachable host is an error; the others are still
//! checked). The report itself is `verify::drift`.

use anyhow::Result;

use crate::engine::{load, make_plan, Connections};
use crate::ops::plan::TargetArgs;
use crate::ui::Paint;
use crate::verify::drift::{from_plan, human, markdown, DriftReport, EnvDrift, Status};

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum DriftFormat {
    /// Text for a terminal.
    Human,
    /// The drift report as JSON (schema `kiln.drift/…`).
    Json,
    /// A Markdown summary (for a CI issue or job summary).
    Markdown,
}

fn env_names() -> Result<Vec<String>> {
    let root = std::env::var_os("KILN_ROOT")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| ".".into());
    let mut names = vec![];
    for e in std::fs::read_dir(root.join("environments"))? {
        let p = e?.path();
        if p.extension().map(|x| x == "toml").unwrap_or(false) {
            names.push(p.to_string_lossy().to_string());
        }
    }
    names.sort();
    Ok(names)
}

pub async fn run(envs: Vec<String>, format: DriftFormat, select: TargetArgs) -> Result<i32> {
    let envs = if envs.is_empty() { env_names()? } else { envs };
    let mut out = vec![];
    for e in &envs {
        let name = std::path::Path::new(e)
            .file_stem()
            .map(|s| s.to_string_lossy().to_string())
            .unwrap_or(e.clone());
        let loaded = load(e, None).and_then(|mut l| {
            l.select(&select.targets, &select.exclude)?;
            Ok(l)
        });
        let entry = match loaded {
            Err(err) => EnvDrift {
                name,
                status: Status::Error,
                error: Some(format!("{err:#}")),
                hosts: vec![],
            },
            Ok(loaded) => {
                let mut conns = Connections::ssh(&loaded.env);
                match make_plan(&loaded, &mut conns).await {
                    Ok(plan) => from_plan(&loaded.env.name, &plan),
                    Err(err) => EnvDrift {
                        name,
                        status: Status::Error,
                        error: Some(format!("{err:#}")),
                        hosts: vec![],
                    },
                }
            }
        };
        out.push(entry);
    }
    let report = DriftReport::new(crate::engine::now_rfc3339(), out);
    match format {
        DriftFormat::Json => println!("{}", serde_json::to_string_pretty(&report)?),
        DriftFormat::Markdown => print!("{}", markdown(&report)),
        DriftFormat::Human => print!("{}", human(&report, &Paint::detect())),
    }
    Ok(report.exit_code())
}
