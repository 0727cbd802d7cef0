//! Markdown for pull requests and CI pages: `kiln plan --format markdown` (a summary table
//! per host, the cluster steps in order, a collapsible diff per change) and the pieces the
//! drift report (`verify::drift`) shares with it. Pure.
//!
//! Robust against what a spec can put in a name or a file: table cells escape `|` and line
//! breaks, text inside HTML (`<summary>`) escapes `<`, `>` and `&`, inline code and diff fences
//! are longer than any backtick run they hold. Sensitive values render exactly as in the
//! human plan, `(sensitive value changed)`; a sensitive change never shows a diff.

use std::fmt::Write;

use super::step::galera::steps_of;
use super::{Action, AttrChange, Change, Plan, Shown, Step};

/// Text for one table cell: `|` escaped (GitHub's table parser honours `\|` even inside a
/// code span), line breaks as spaces.
pub fn cell(s: &str) -> String {
    s.replace('\r', "").replace('\n', " ").replace('|', "\\|")
}

/// Text inside HTML (`<summary>`, `<code>`): no tag can be opened by a file name.
pub fn html(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// Kiln's own text (a reason, an attribute) as Markdown: code spans it holds stay code
/// (where `<` is literal and an entity would show as typed); outside them `<`, `>`, `&` are
/// escaped as HTML and `*`, `_` (a glob, a path) with a backslash. With unbalanced backticks,
/// every backtick is escaped too.
pub fn text(s: &str) -> String {
    let plain = |p: &str| html(p).replace('*', "\\*").replace('_', "\\_");
    let line = s.replace(['\r', '\n'], " ");
    let parts: Vec<&str> = line.split('`').collect();
    if parts.len().is_multiple_of(2) {
        return plain(&line).replace('`', "\\`");
    }
    parts
        .iter()
        .enumerate()
        .map(|(i, p)| if i % 2 == 1 { p.to_string() } else { plain(p) })
        .collect::<Vec<_>>()
        .join("`")
}

/// The longest run of backticks in `s`.
fn longest_backticks(s: &str) -> usize {
    s.split(|c| c != '`').map(str::len).max().unwrap_or(0)
}

/// A code fence longer than any backtick run inside `body` (at least three).
pub fn fence(body: &str) -> String {
    "`".repeat((longest_backticks(body) + 1).max(3))
}

/// `s` as inline code, with a delimiter no backtick run inside it equals.
pub fn code(s: &str) -> String {
    let tick = "`".repeat(longest_backticks(s) + 1);
    if s.starts_with('`') || s.ends_with('`') {
        format!("{tick} {s} {tick}")
    } else {
        format!("{tick}{s}{tick}")
    }
}

/// One attribute line, as the human plan words it.
pub fn attribute(a: &AttrChange) -> String {
    if a.old == Shown::Sensitive || a.new == Shown::Sensitive {
        format!("{}: (sensitive value changed)", a.name)
    } else {
        format!("{}: {} → {}", a.name, a.old, a.new)
    }
}

/// What one change shows in a collapsible block, whatever report it belongs to.
pub struct Detail<'a> {
    pub action: Action,
    pub resource: &'a str,
    pub summary: &'a str,
    /// Where the change is, e.g. `lab/web1` (plain text; empty under the host's heading).
    pub place: &'a str,
    pub reason: Option<&'a str>,
    pub attributes: &'a [AttrChange],
    pub diff: Option<&'a str>,
    pub sensitive: bool,
}

/// `<details>` with the change in its summary line; inside, the reason, the attributes and
/// the diff in a ```` ```diff ```` fence. A change with nothing more to show is one list line.
pub fn details(out: &mut String, d: &Detail) {
    let place = if d.place.is_empty() {
        String::new()
    } else {
        format!(" on {}", html(d.place))
    };
    let head = format!(
        "<code>{} {}</code>{place}: {}",
        d.action.symbol(),
        html(d.resource),
        html(d.summary)
    );
    let mut body = String::new();
    if let Some(r) = d.reason {
        let _ = writeln!(body, "> {}\n", text(r));
    }
    for a in d.attributes {
        let _ = writeln!(body, "- {}", text(&attribute(a)));
    }
    if d.sensitive && !d.attributes.iter().any(|a| a.new == Shown::Sensitive) {
        body.push_str("- (sensitive value changed)\n");
    }
    match d.diff {
        Some(diff) if !d.sensitive => {
            let f = fence(diff);
            let _ = write!(body, "\n{f}diff\n{diff}");
            if !diff.ends_with('\n') {
                body.push('\n');
            }
            let _ = writeln!(body, "{f}");
        }
        _ => {}
    }
    if body.is_empty() {
        let _ = writeln!(out, "\n- {head}");
    } else {
        let _ = write!(
            out,
            "\n<details><summary>{head}</summary>\n\n{}\n\n</details>\n",
            body.trim_matches('\n')
        );
    }
}

/// How many changes of each kind a host has, for the summary table.
#[derive(Default)]
struct Counts {
    create: usize,
    update: usize,
    remove: usize,
    run: usize,
    cluster: usize,
}

fn is_cluster_step(c: &Change) -> bool {
    c.steps.iter().any(|s| matches!(s, Step::Galera(_)))
}

fn counts(changes: &[Change]) -> Counts {
    let mut n = Counts::default();
    for c in changes {
        match c.action {
            _ if is_cluster_step(c) => n.cluster += 1,
            Action::Create => n.create += 1,
            Action::Update => n.update += 1,
            Action::Remove => n.remove += 1,
            Action::Run => n.run += 1,
        }
    }
    n
}

/// Lines said above the table: an offline plan's placeholders, a targeted run's selection.
pub struct Notes<'a> {
    /// The plan was made without contacting hosts (bare hosts assumed).
    pub offline: bool,
    /// Secrets that could not be read and stand in as placeholders (offline plans).
    pub placeholders: &'a [String],
}

/// The plan as Markdown for a pull request comment.
pub fn render_markdown(plan: &Plan, notes: &Notes) -> String {
    let mut out = String::new();
    let (c, u, r, x) = plan.counts();
    let errors = plan.hosts.iter().filter(|h| h.error.is_some()).count();
    let status = if errors > 0 {
        "❌"
    } else if plan.change_count() == 0 {
        "✅"
    } else {
        "📝"
    };
    let _ = write!(
        out,
        "### {status} kiln plan {}: {c} to create, {u} to update, {r} to remove, {x} to run",
        code(&plan.environment)
    );
    if errors > 0 {
        let _ = write!(
            out,
            "; {errors} host{} failed",
            if errors == 1 { "" } else { "s" }
        );
    }
    out.push_str("\n\n");
    if notes.offline {
        out.push_str(
            "> **Offline**: no host was contacted; this is the plan for bare hosts. \
             The spec is valid.\n",
        );
        if !notes.placeholders.is_empty() {
            let names: Vec<String> = notes.placeholders.iter().map(|p| code(p)).collect();
            let _ = writeln!(
                out,
                "> Secrets not read, placeholders used: {}.",
                names.join(", ")
            );
        }
        out.push('\n');
    }
    if let Some(t) = &plan.targets {
        for line in t.describe() {
            let _ = writeln!(out, "> {}", text(&line));
        }
        out.push('\n');
    }
    out.push_str(
        "| host | address | create | update | remove | run | cluster steps | status |\n\
         |---|---|--:|--:|--:|--:|--:|---|\n",
    );
    for h in &plan.hosts {
        let n = counts(&h.changes);
        let mut status = match &h.error {
            Some(e) => format!("❌ {}", html(e)),
            None if h.changes.is_empty() => "✅ no changes".to_string(),
            None => "changes".to_string(),
        };
        if h.error.is_none() && !h.lockout.reasons.is_empty() {
            let w = if h.lockout.overridden {
                h.lockout.warning()
            } else {
                format!("would lock kiln out: {}", h.lockout.reasons.join("; "))
            };
            status.push_str(&format!("<br>⚠️ {}", html(&w)));
        }
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} | {} | {} | {} | {} |",
            cell(&html(&h.host)),
            cell(&html(&h.address)),
            n.create,
            n.update,
            n.remove,
            n.run,
            n.cluster,
            cell(&status)
        );
    }
    let notes: Vec<String> = plan
        .hosts
        .iter()
        .flat_map(|h| {
            h.lockout
                .not_checked
                .iter()
                .map(move |n| format!("> {}: lockout check: {}", code(&h.host), text(n)))
        })
        .collect();
    if !notes.is_empty() {
        out.push('\n');
        for n in notes {
            let _ = writeln!(out, "{n}");
        }
    }
    out.push_str(&cluster_overview(plan));
    for h in &plan.hosts {
        if h.changes.is_empty() {
            continue;
        }
        let _ = writeln!(out, "\n#### {}", code(&h.host));
        for c in &h.changes {
            details(
                &mut out,
                &Detail {
                    action: c.action,
                    resource: &c.resource,
                    summary: &c.summary,
                    place: "",
                    reason: c.reason.as_deref(),
                    attributes: &c.attributes,
                    diff: c.diff.as_deref(),
                    sensitive: c.sensitive,
                },
            );
        }
    }
    out
}

/// The cluster steps in their cross-host order (as the human plan's overview).
fn cluster_overview(plan: &Plan) -> String {
    let mut out = String::new();
    let summaries = plan.cluster_step_summaries();
    for (cluster, steps) in steps_of(plan) {
        let _ = writeln!(
            out,
            "\n**Galera cluster {}** (one step at a time, after the hosts' own changes):\n",
            code(&cluster)
        );
        for g in steps {
            let s = summaries
                .get(&(cluster.clone(), g.seq))
                .copied()
                .unwrap_or_default();
            let _ = writeln!(
                out,
                "{}. **{}** {}: {}",
                g.seq,
                html(&g.who()),
                code(&format!("galera_node[{cluster}]")),
                html(s)
            );
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_fence_is_longer_than_any_backtick_run_inside() {
        assert_eq!(fence("plain"), "```");
        assert_eq!(fence("a ``` b"), "````");
        assert_eq!(fence("`````"), "``````");
        assert_eq!(code("a`b"), "``a`b``");
        assert_eq!(code("`x"), "`` `x ``");
    }

    #[test]
    fn cells_escape_pipes_and_line_breaks() {
        assert_eq!(cell("a|b\nc"), "a\\|b c");
        assert_eq!(html("<b>&"), "&lt;b&gt;&amp;");
        assert_eq!(
            text("`a && b <x>` failed <here> file:/etc/*_x"),
            "`a && b <x>` failed &lt;here&gt; file:/etc/\\*\\_x"
        );
        assert_eq!(text("odd ` <b>"), "odd \\` &lt;b&gt;");
    }

    #[test]
    fn a_sensitive_change_shows_no_value_and_no_diff() {
        let mut out = String::new();
        let attrs = [AttrChange::new(
            "content",
            Shown::Sensitive,
            Shown::Sensitive,
        )];
        details(
            &mut out,
            &Detail {
                action: Action::Update,
                resource: "file:/etc/app/env",
                summary: "content",
                place: "web1",
                reason: None,
                attributes: &attrs,
                // A diff on a sensitive change would be a bug upstream; it is still not shown.
                diff: Some("-old-secret\n+new-secret\n"),
                sensitive: true,
            },
        );
        assert!(out.contains("content: (sensitive value changed)"), "{out}");
        assert!(!out.contains("secret\n"), "{out}");
        assert!(!out.contains("```"), "{out}");
    }
}
