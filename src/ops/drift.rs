//! `kiln drift`: the CI form of plan over several environments. Never changes anything.
//! Exit 0 clean, 2 drift, 1 error (an unreachable host is an error; the others are still
//! checked). The JSON report's schema is `kiln.drift/1`, documented in ARCHITECTURE.md.

use anyhow::Result;
use serde::Serialize;

use crate::engine::{load, make_plan, Connections};
use crate::plan::{Action, AttrChange, Plan, Shown};
use crate::ui::Paint;

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum DriftFormat {
    Human,
    Json,
    Markdown,
}

#[derive(Debug, Serialize)]
pub struct DriftReport {
    pub schema: &'static str,
    pub generated_at: String,
    pub status: Status,
    pub environments: Vec<EnvDrift>,
}

#[derive(Debug, Clone, Copy, Serialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    Clean,
    Drift,
    Error,
}

#[derive(Debug, Serialize)]
pub struct EnvDrift {
    pub name: String,
    pub status: Status,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    pub hosts: Vec<HostDrift>,
}

#[derive(Debug, Serialize)]
pub struct HostDrift {
    pub host: String,
    pub address: String,
    pub status: Status,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    pub changes: Vec<DriftItem>,
}

#[derive(Debug, Serialize)]
pub struct DriftItem {
    pub resource: String,
    pub action: Action,
    pub summary: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    pub attributes: Vec<AttrChange>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub diff: Option<String>,
    pub sensitive: bool,
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

fn from_plan(name: &str, plan: &Plan) -> EnvDrift {
    let hosts: Vec<HostDrift> = plan
        .hosts
        .iter()
        .map(|h| HostDrift {
            host: h.host.clone(),
            address: h.address.clone(),
            status: if h.error.is_some() {
                Status::Error
            } else if h.changes.is_empty() {
                Status::Clean
            } else {
                Status::Drift
            },
            error: h.error.clone(),
            changes: h
                .changes
                .iter()
                .map(|c| DriftItem {
                    resource: c.resource.clone(),
                    action: c.action,
                    summary: c.summary.clone(),
                    reason: c.reason.clone().or_else(|| drift_reason(c)),
                    attributes: c.attributes.clone(),
                    diff: c.diff.clone(),
                    sensitive: c.sensitive,
                })
                .collect(),
        })
        .collect();
    let status = worst(hosts.iter().map(|h| h.status));
    EnvDrift {
        name: name.to_string(),
        status,
        error: None,
        hosts,
    }
}

fn worst(it: impl Iterator<Item = Status>) -> Status {
    it.fold(Status::Clean, |a, b| match (a, b) {
        (Status::Error, _) | (_, Status::Error) => Status::Error,
        (Status::Drift, _) | (_, Status::Drift) => Status::Drift,
        _ => Status::Clean,
    })
}

/// In a drift report every change says in words what was found; plans leave the obvious
/// ones implicit (a bare host's plan would repeat "not installed" for every package).
fn drift_reason(c: &crate::plan::Change) -> Option<String> {
    let kind = c.resource.split(':').next().unwrap_or("");
    match (kind, c.action) {
        ("package", Action::Create) => Some("not installed on the host".into()),
        ("package", Action::Remove) => Some("installed on the host, the spec says absent".into()),
        ("file" | "unit", Action::Update) if c.diff.is_some() || c.sensitive => {
            Some("the content on the host differs from the spec".into())
        }
        ("file" | "unit" | "directory" | "symlink", Action::Create) => {
            Some("missing on the host".into())
        }
        ("user" | "group", Action::Create) => Some("missing on the host".into()),
        _ => None,
    }
}

pub async fn run(envs: Vec<String>, format: DriftFormat) -> Result<i32> {
    let envs = if envs.is_empty() { env_names()? } else { envs };
    let mut out = vec![];
    for e in &envs {
        let name = std::path::Path::new(e)
            .file_stem()
            .map(|s| s.to_string_lossy().to_string())
            .unwrap_or(e.clone());
        let entry = match load(e, None) {
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
    let report = DriftReport {
        schema: "kiln.drift/1",
        generated_at: crate::engine::now_rfc3339(),
        status: worst(out.iter().map(|e| e.status)),
        environments: out,
    };
    match format {
        DriftFormat::Json => println!("{}", serde_json::to_string_pretty(&report)?),
        DriftFormat::Markdown => print!("{}", markdown(&report)),
        DriftFormat::Human => print!("{}", human(&report, &Paint::detect())),
    }
    Ok(match report.status {
        Status::Clean => 0,
        Status::Drift => 2,
        Status::Error => 1,
    })
}

fn icon(s: Status) -> &'static str {
    match s {
        Status::Clean => "✅ clean",
        Status::Drift => "⚠️ drift",
        Status::Error => "❌ error",
    }
}

fn shown(s: &Shown) -> String {
    s.to_string()
}

pub fn markdown(r: &DriftReport) -> String {
    let mut s = format!("## kiln drift report — {}\n\n", icon(r.status));
    s.push_str("| environment | host | status | changes |\n|---|---|---|---|\n");
    for e in &r.environments {
        if e.hosts.is_empty() {
            s.push_str(&format!(
                "| {} | — | {} | {} |\n",
                e.name,
                icon(e.status),
                e.error
                    .as_deref()
                    .unwrap_or("")
                    .replace('\n', " ")
                    .replace('|', "\\|")
            ));
        }
        for h in &e.hosts {
            let what = match &h.error {
                Some(err) => err.replace('\n', " ").replace('|', "\\|"),
                None => h
                    .changes
                    .iter()
                    .map(|c| format!("`{} {}`", c.action.symbol(), c.resource))
                    .collect::<Vec<_>>()
                    .join(", "),
            };
            s.push_str(&format!(
                "| {} | {} | {} | {} |\n",
                e.name,
                h.host,
                icon(h.status),
                what
            ));
        }
    }
    for e in &r.environments {
        for h in &e.hosts {
            for c in &h.changes {
                s.push_str(&format!(
                    "\n<details><summary><code>{} {}</code> on {}/{}: {}</summary>\n\n",
                    c.action.symbol(),
                    c.resource,
                    e.name,
                    h.host,
                    c.summary
                ));
                if let Some(reason) = &c.reason {
                    s.push_str(&format!("_{reason}_\n\n"));
                }
                for a in &c.attributes {
                    if a.old == Shown::Sensitive || a.new == Shown::Sensitive {
                        s.push_str(&format!("- {}: (sensitive value changed)\n", a.name));
                    } else {
                        s.push_str(&format!(
                            "- {}: {} → {}\n",
                            a.name,
                            shown(&a.old),
                            shown(&a.new)
                        ));
                    }
                }
                if let Some(d) = &c.diff {
                    s.push_str(&format!("\n```diff\n{}```\n", d));
                }
                s.push_str("\n</details>\n");
            }
        }
    }
    s
}

fn human(r: &DriftReport, paint: &Paint) -> String {
    let mut s = String::new();
    for e in &r.environments {
        let status = match e.status {
            Status::Clean => paint.green("clean"),
            Status::Drift => paint.yellow("drift"),
            Status::Error => paint.red("error"),
        };
        s.push_str(&format!("{} {}\n", paint.bold(&e.name), status));
        if let Some(err) = &e.error {
            s.push_str(&format!("  {}\n", paint.red(err)));
        }
        for h in &e.hosts {
            match (&h.error, h.changes.len()) {
                (Some(err), _) => s.push_str(&format!(
                    "  {:<16} {}\n",
                    h.host,
                    paint.red(&format!("error: {err}"))
                )),
                (None, 0) => s.push_str(&format!("  {:<16} clean\n", h.host)),
                (None, n) => {
                    s.push_str(&format!("  {:<16} {n} drifted\n", h.host));
                    for c in &h.changes {
                        s.push_str(&format!(
                            "    {} {}  {}\n",
                            c.action.symbol(),
                            c.resource,
                            c.summary
                        ));
                    }
                }
            }
        }
    }
    s
}
