//! Human rendering of a plan, Terraform-style: one block per host, one line per change
//! with its symbol, attribute changes, and unified diffs for files. Sensitive values are
//! typed (`Shown::Sensitive`) and render only as `(sensitive value changed)`.

use std::fmt::Write;

use super::step::galera::steps_of;
use super::{Action, Change, HostPlan, Plan, Shown};
use crate::ui::Paint;

pub fn render_plan(plan: &Plan, paint: &Paint) -> String {
    let mut out = String::new();
    if let Some(t) = &plan.targets {
        for line in t.describe() {
            let _ = writeln!(out, "{}", paint.cyan(&line));
        }
    }
    for host in &plan.hosts {
        let _ = write!(
            out,
            "{} {}",
            paint.bold(&host.host),
            paint.dim(&format!("({})", host.address))
        );
        if let Some(e) = &host.error {
            let _ = writeln!(out, "  {}", paint.red(&format!("error: {e}")));
        } else if host.changes.is_empty() {
            let _ = writeln!(out, "  {}", paint.dim("no changes"));
        } else {
            let _ = writeln!(
                out,
                "  {} change{}",
                host.changes.len(),
                if host.changes.len() == 1 { "" } else { "s" }
            );
        }
        render_lockout(&mut out, host, paint);
        if host.error.is_none() {
            for c in &host.changes {
                render_change(&mut out, c, paint);
            }
        }
    }
    out.push_str(&render_overview(plan, paint));
    let (c, u, r, x) = plan.counts();
    let errors = plan.hosts.iter().filter(|h| h.error.is_some()).count();
    let _ = write!(
        out,
        "\n{} {c} to create, {u} to update, {r} to remove, {x} to run",
        paint.bold("Plan:")
    );
    if errors > 0 {
        let _ = write!(
            out,
            "; {}",
            paint.red(&format!(
                "{errors} host{} failed",
                if errors == 1 { "" } else { "s" }
            ))
        );
    }
    out.push_str(".\n");
    out
}

/// The lockout check's lines under a host's header: a warning when the host would lock
/// kiln out and is not refused (overridden, or a command that does not refuse), then what
/// it could not check.
fn render_lockout(out: &mut String, host: &HostPlan, paint: &Paint) {
    let l = &host.lockout;
    if !l.reasons.is_empty() && host.error.is_none() {
        let text = if l.overridden {
            l.warning()
        } else {
            format!("would lock kiln out: {}", l.reasons.join("; "))
        };
        let _ = writeln!(out, "  {}", paint.yellow(&format!("warning: {text}")));
    }
    for n in &l.not_checked {
        let _ = writeln!(out, "  {}", paint.dim(&format!("lockout check: {n}")));
    }
}

fn symbol(a: Action, paint: &Paint) -> String {
    let s = a.symbol().to_string();
    match a {
        Action::Create => paint.green(&s),
        Action::Update => paint.yellow(&s),
        Action::Remove => paint.red(&s),
        Action::Run => paint.cyan(&s),
    }
}

fn render_change(out: &mut String, c: &Change, paint: &Paint) {
    let _ = writeln!(
        out,
        "  {} {}  {}",
        symbol(c.action, paint),
        paint.bold(&c.resource),
        c.summary
    );
    if let Some(r) = &c.reason {
        let _ = writeln!(out, "      {}", paint.dim(&format!("({r})")));
    }
    for a in &c.attributes {
        let line = if a.old == Shown::Sensitive || a.new == Shown::Sensitive {
            format!("{}: (sensitive value changed)", a.name)
        } else {
            format!("{}: {} → {}", a.name, a.old, a.new)
        };
        let _ = writeln!(out, "      {line}");
    }
    if let Some(d) = &c.diff {
        for line in d.lines() {
            let styled = if line.starts_with("+++") || line.starts_with("---") {
                paint.bold(line)
            } else if line.starts_with('+') {
                paint.green(line)
            } else if line.starts_with('-') {
                paint.red(line)
            } else if line.starts_with("@@") {
                paint.cyan(line)
            } else {
                line.to_string()
            };
            let _ = writeln!(out, "      {styled}");
        }
    }
}

/// The cluster steps in their cross-host order, for the human plan.
pub fn render_overview(plan: &Plan, paint: &Paint) -> String {
    let mut out = String::new();
    let summaries = plan.cluster_step_summaries();
    for (cluster, steps) in steps_of(plan) {
        let _ = writeln!(
            out,
            "\n{} (one step at a time, after the hosts' own changes):",
            paint.bold(&format!("Galera cluster {cluster}"))
        );
        for g in steps {
            let s = summaries
                .get(&(cluster.clone(), g.seq))
                .copied()
                .unwrap_or_default();
            let _ = writeln!(
                out,
                "  {:>2}. {} galera_node[{cluster}]: {s}",
                g.seq,
                paint.bold(&g.who())
            );
        }
    }
    out
}

/// How many sections `render_timings` lists per host before summing up the rest.
const TIMINGS_SHOWN: usize = 12;

/// `kiln plan --timings`: per host, connect, the fact script on the host and its slowest
/// sections (all sections are in `--format json`).
pub fn render_timings(plan: &Plan) -> String {
    let mut out = String::from("Fact timings (ms):\n");
    let ms = |us: u64| format!("{:.1}", us as f64 / 1000.0);
    for h in &plan.hosts {
        let Some(t) = &h.timings else {
            let _ = writeln!(out, "  {}: not gathered", h.host);
            continue;
        };
        let script = t
            .script_us
            .map(|us| format!("fact script {} on the host", ms(us)))
            .unwrap_or_else(|| "the host sent no section times".into());
        let _ = writeln!(
            out,
            "  {}: total {}, connect {}, {script}",
            h.host, t.total_ms, t.connect_ms
        );
        let mut sections: Vec<_> = t.sections.iter().collect();
        sections.sort_by(|a, b| b.us.cmp(&a.us).then(a.section.cmp(&b.section)));
        for s in sections.iter().take(TIMINGS_SHOWN) {
            let _ = writeln!(out, "    {:>9}  {}", ms(s.us), s.section);
        }
        if sections.len() > TIMINGS_SHOWN {
            let rest = &sections[TIMINGS_SHOWN..];
            let _ = writeln!(
                out,
                "    {:>9}  {} more sections",
                ms(rest.iter().map(|s| s.us).sum()),
                rest.len()
            );
        }
    }
    out
}
