//! `kiln plan --timings`: what each section of the fact script cost on the host.
//!
//! The timed script ([`crate::facts::script::fact_script_timed`]) is the same script with a
//! tick before its begin marker, before each section and after its end marker: one line
//! `@@kiln-time <tick> <nanoseconds since the epoch>` on standard error (`date +%s%N`, so
//! each tick costs the host one `date`), where `<tick>` is `begin`, the section's ordinal in
//! [`crate::facts::script::plan_sections`]'s list, or `end`. Standard output, which the
//! fact parser reads, is the untimed script's. A section's cost is the time from its tick
//! to the next one; the labels are made here from the queries, so nothing on the host
//! names them (a sensitive guard is named by its resource, as in plans).

use serde::{Deserialize, Serialize};

use super::kinds::Layout;
use super::script::{normalize_queries, plan_sections};
use super::FactQuery;

/// The prefix of a tick line on the timed script's standard error.
pub const TICK_PREFIX: &str = "@@kiln-time ";

/// One host's fact gathering, timed.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostTimings {
    /// Opening the connection (0 when it was already open), on this machine's clock.
    pub connect_ms: u64,
    /// Connect, script and parse: the whole gathering, on this machine's clock.
    pub total_ms: u64,
    /// The fact script from its begin tick to its end tick, on the host (absent when the
    /// host printed no ticks: a recorded tape, a script cut short).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub script_us: Option<u64>,
    /// Each section, in script order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub sections: Vec<SectionTime>,
}

/// One section of the fact script and its wall time on the host.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SectionTime {
    /// The fact's key (`guard:COMMAND`, `path:/etc/x`, `guard@command:NAME` for a
    /// sensitive guard), or for a batched kind its section name and query count
    /// (`packages (42)`).
    pub section: String,
    /// Microseconds.
    pub us: u64,
}

/// The label of each section of the script for `queries`, in script order.
pub fn section_labels(queries: &[FactQuery]) -> Vec<String> {
    let normalized = normalize_queries(queries);
    plan_sections(&normalized)
        .iter()
        .map(|s| match s.kind.layout() {
            Layout::Batched if s.queries.len() > 1 => {
                format!("{} ({})", s.kind.section(), s.queries.len())
            }
            Layout::Batched => s.kind.section().to_string(),
            Layout::PerQuery => s.queries[0].key(),
        })
        .collect()
}

/// The section times from the timed script's standard error; `None` when its ticks are
/// not all there. Lines that are not ticks (a login banner, sudo) are ignored.
pub fn parse_ticks(queries: &[FactQuery], stderr: &str) -> Option<(u64, Vec<SectionTime>)> {
    let labels = section_labels(queries);
    let mut ticks: Vec<(String, u128)> = Vec::new();
    for line in stderr.lines() {
        let Some(rest) = line.strip_prefix(TICK_PREFIX) else {
            continue;
        };
        let (tick, ns) = rest.split_once(' ')?;
        ticks.push((tick.to_string(), ns.trim().parse().ok()?));
    }
    // begin, one per section, end.
    if ticks.len() != labels.len() + 2 || ticks.first()?.0 != "begin" || ticks.last()?.0 != "end" {
        return None;
    }
    let us = |a: u128, b: u128| (b.saturating_sub(a) / 1000) as u64;
    let mut sections = Vec::with_capacity(labels.len());
    for (i, label) in labels.into_iter().enumerate() {
        let (tick, at) = &ticks[i + 1];
        if *tick != i.to_string() {
            return None;
        }
        sections.push(SectionTime {
            section: label,
            us: us(*at, ticks[i + 2].1),
        });
    }
    Some((us(ticks[0].1, ticks.last()?.1), sections))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::facts::parse::parse_facts;
    use crate::facts::script::{fact_script, fact_script_timed};

    fn queries() -> Vec<FactQuery> {
        vec![
            FactQuery::Package {
                name: "dpkg".into(),
            },
            FactQuery::Package { name: "sed".into() },
            FactQuery::Guard {
                command: "sleep 0.2".into(),
                sensitive_of: None,
            },
            FactQuery::Guard {
                command: "true".into(),
                sensitive_of: Some("command:secret".into()),
            },
            FactQuery::Pending,
        ]
    }

    /// Runs a script with `sh -s`, returning stdout and stderr.
    fn run(script: &str) -> (String, String) {
        let mut sh = std::process::Command::new("sh");
        sh.arg("-s");
        crate::facts::kinds::fixture::run_piped_both(sh, script)
    }

    #[test]
    fn the_timed_script_says_what_each_section_cost_and_reads_the_same_facts() {
        let q = queries();
        let (out, err) = run(&fact_script_timed(&q));
        let (plain, _) = run(&fact_script(&q));
        assert_eq!(parse_facts(&q, &out), parse_facts(&q, &plain));
        let (script_us, sections) = parse_ticks(&q, &err).expect(&err);
        let labels: Vec<&str> = sections.iter().map(|s| s.section.as_str()).collect();
        assert_eq!(
            labels,
            [
                "packages (2)",
                "guard:sleep 0.2",
                "guard@command:secret",
                "pending"
            ]
        );
        let sleep = sections[1].us;
        assert!((190_000..2_000_000).contains(&sleep), "{sections:?}");
        assert!(script_us >= sections.iter().map(|s| s.us).sum::<u64>());
        // The sensitive guard's text is nowhere.
        assert!(!err.contains("true"), "{err}");
    }

    #[test]
    fn ticks_missing_or_out_of_order_give_nothing() {
        let q = queries();
        assert_eq!(parse_ticks(&q, ""), None);
        let full = "@@kiln-time begin 1000000\n@@kiln-time 0 2000000\nbanner\n\
                    @@kiln-time 1 3000000\n@@kiln-time 2 3500000\n@@kiln-time 3 4000000\n\
                    @@kiln-time end 9000000\n";
        let (total, s) = parse_ticks(&q, full).unwrap();
        assert_eq!(total, 8000);
        assert_eq!(
            s.iter().map(|s| s.us).collect::<Vec<_>>(),
            [1000, 500, 500, 5000]
        );
        let swapped = full.replace("@@kiln-time 1 ", "@@kiln-time 9 ");
        assert_eq!(parse_ticks(&q, &swapped), None);
        let cut = full.replace("@@kiln-time end 9000000\n", "");
        assert_eq!(parse_ticks(&q, &cut), None);
    }
}
