//! The drift report (`kiln drift`, schema `kiln.drift/1`, documented in ARCHITECTURE.md): a
//! plan over one or more environments as a document for CI, in JSON, Markdown or text.
//! Pure: built from plans.

use serde::Serialize;

use crate::plan::markdown::{cell, code, details, html, Detail};
use crate::plan::{Action, AttrChange, Plan};
use crate::ui::Paint;

#[derive(Debug, Serialize)]
pub struct DriftReport {
    pub schema: &'static str,
    pub generated_at: String,
    pub status: Status,
    pub environments: Vec<EnvDrift>,
}

impl DriftReport {
    pub fn new(generated_at: String, environments: Vec<EnvDrift>) -> DriftReport {
        DriftReport {
            schema: "kiln.drift/1",
            generated_at,
            status: worst(environments.iter().map(|e| e.status)),
            environments,
        }
    }

    /// 0 clean, 2 drift, 1 error: the exit code CI scripts read.
    pub fn exit_code(&self) -> i32 {
        match self.status {
            Status::Clean => 0,
            Status::Drift => 2,
            Status::Error => 1,
        }
    }
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

pub fn from_plan(name: &str, plan: &Plan) -> EnvDrift {
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

pub fn worst(it: impl Iterator<Item = Status>) -> Status {
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

fn icon(s: Status) -> &'static str {
    match s {
        Status::Clean => "✅ clean",
        Status::Drift => "⚠️ drift",
        Status::Error => "❌ error",
    }
}

pub fn markdown(r: &DriftReport) -> String {
    let mut s = format!("## kiln drift report — {}\n\n", icon(r.status));
    s.push_str("| environment | host | status | changes |\n|---|---|---|---|\n");
    for e in &r.environments {
        if e.hosts.is_empty() {
            s.push_str(&format!(
                "| {} | — | {} | {} |\n",
                cell(&html(&e.name)),
                icon(e.status),
                cell(&html(e.error.as_deref().unwrap_or("")))
            ));
        }
        for h in &e.hosts {
            let what = match &h.error {
                Some(err) => html(err),
                None => h
                    .changes
                    .iter()
                    .map(|c| code(&format!("{} {}", c.action.symbol(), c.resource)))
                    .collect::<Vec<_>>()
                    .join(", "),
            };
            s.push_str(&format!(
                "| {} | {} | {} | {} |\n",
                cell(&html(&e.name)),
                cell(&html(&h.host)),
                icon(h.status),
                cell(&what)
            ));
        }
    }
    for e in &r.environments {
        for h in &e.hosts {
            for c in &h.changes {
                details(
                    &mut s,
                    &Detail {
                        action: c.action,
                        resource: &c.resource,
                        summary: &c.summary,
                        place: &format!("{}/{}", e.name, h.host),
                        reason: c.reason.as_deref(),
                        attributes: &c.attributes,
                        diff: c.diff.as_deref(),
                        sensitive: c.sensitive,
                    },
                );
            }
        }
    }
    s
}

pub fn human(r: &DriftReport, paint: &Paint) -> String {
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
