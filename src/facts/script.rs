//! The fact script: one POSIX `sh` script (dash on Debian 12, run as `sh -s` with the
//! script on stdin) that reads every fact a host's resources asked for.
//!
//! The script only reads. Every command's stdin is `/dev/null` (the whole body runs as one
//! function called with `</dev/null`), because the shell itself reads the script from
//! stdin and a command that read stdin would swallow the rest of the script. Wrapping the
//! body in a function has a second benefit: dash parses the whole function before it runs
//! any of it, so a script cut short in transit runs nothing at all.
//!
//! # Output format
//!
//! The output is a sequence of sections. Each starts with a marker line
//! `@@kiln:<section>` or `@@kiln:<section> <argument>`; the parser relies only on these
//! markers and on their order. The argument of a per-query section is the index of the
//! query in [`normalize_queries`]'s list, followed (for paths, users and groups) by the
//! name with control characters replaced by `?` for people reading the output. The
//! parser checks the section name and index, never the informational name. No line that a
//! fact command prints can start with `@@kiln:`: contents and link targets are
//! base64-encoded, every other value is printed after a fixed key, and all other command
//! output goes to `/dev/null`.
//!
//! Sections, in order (per-query sections follow the sorted query order; a batched kind's
//! one section sits at the place of its first query):
//!
//! * `@@kiln:begin` — always first.
//! * one section per query, or per batched kind; what each prints is documented with its
//!   kind in [`crate::facts::kinds`] (`packages`, `apt-lists`, `path`, `user`, `group`,
//!   `services`, `guard`, `dir`, `pending`, `galera`, `ssh-session`, `certs`).
//! * `@@kiln:end` — always last; its absence means the output was truncated.
//!
//! This file only batches: it orders the queries, plans the sections, and puts each
//! kind's part into the one function. The kinds write the parts.

use super::kinds::{kind_of, FactKind, Layout};
use crate::facts::FactQuery;
use crate::shell::quote as sh_quote;

pub use super::kinds::path::MAX_CONTENT_BYTES;
pub use super::kinds::pending::PENDING_DIR;

pub use super::section::MARKER_PREFIX;

/// Sorts and deduplicates `queries` into the order of the script's sections. Both the
/// script and the parser use this list, and the marker indexes refer to it. Queries a
/// kind says ask for the same fact are merged (see `path`'s merge).
pub fn normalize_queries(queries: &[FactQuery]) -> Vec<FactQuery> {
    let mut sorted: Vec<FactQuery> = queries.to_vec();
    sorted.sort();
    sorted.dedup();
    let mut out: Vec<FactQuery> = Vec::with_capacity(sorted.len());
    for query in sorted {
        if let Some(prev) = out.last_mut() {
            if std::mem::discriminant(prev) == std::mem::discriminant(&query)
                && kind_of(&query).merge(prev, &query)
            {
                continue;
            }
        }
        out.push(query);
    }
    out
}

/// One section of the script's output, as planned from the normalised queries.
pub(crate) struct Section<'a> {
    pub kind: &'static dyn FactKind,
    /// The query index carried in the marker (per-query sections).
    pub index: Option<usize>,
    /// The section's one query, or every query of a batched kind.
    pub queries: Vec<&'a FactQuery>,
}

impl Section<'_> {
    /// The whole marker line, without the newline.
    pub(crate) fn marker(&self) -> String {
        let mut line = format!("{MARKER_PREFIX}{}", self.kind.section());
        if let Some(index) = self.index {
            line.push_str(&format!(" {index}"));
            if let Some(name) = self.kind.label(self.queries[0]) {
                line.push(' ');
                line.push_str(&printable(name));
            }
        }
        line
    }
}

/// Plans the output sections for an already normalised query list. Batched kinds
/// (packages, services) get one section at the place of their first query.
pub(crate) fn plan_sections(normalized: &[FactQuery]) -> Vec<Section<'_>> {
    let mut sections: Vec<Section<'_>> = Vec::new();
    let mut batched: Vec<&'static str> = Vec::new();
    for (index, query) in normalized.iter().enumerate() {
        let kind = kind_of(query);
        match kind.layout() {
            Layout::Batched => {
                if batched.contains(&kind.section()) {
                    continue;
                }
                batched.push(kind.section());
                sections.push(Section {
                    kind,
                    index: None,
                    queries: normalized
                        .iter()
                        .filter(|q| kind_of(q).section() == kind.section())
                        .collect(),
                });
            }
            Layout::PerQuery => sections.push(Section {
                kind,
                index: Some(index),
                queries: vec![query],
            }),
        }
    }
    sections
}

/// A one-line, control-character-free rendering of a name for a marker line, so that a
/// name with a newline cannot split or forge a marker.
fn printable(name: &str) -> String {
    const MAX_CHARS: usize = 120;
    let mut out: String = name
        .chars()
        .take(MAX_CHARS)
        .map(|c| if c.is_control() { '?' } else { c })
        .collect();
    if name.chars().count() > MAX_CHARS {
        out.push_str("...");
    }
    out
}

/// Shell helpers shared by all sections. `kiln_path_next` prints one path's section body; it
/// keeps the sha256 of a sensitive file in a shell variable and only ever prints whether
/// it matched.
use crate::shell::FACTS_PRELUDE as PRELUDE;

/// Builds the one script that reads every fact in `queries`; see the module
/// documentation for the output format. The queries are sorted and deduplicated first
/// ([`normalize_queries`]), so the same set of queries always gives the same script.
pub fn fact_script(queries: &[FactQuery]) -> String {
    script_with(queries, false)
}

/// The same script, with a tick on standard error before each section (see
/// [`crate::facts::timings`]): for `kiln plan --timings`. Its standard output is the
/// untimed script's.
pub fn fact_script_timed(queries: &[FactQuery]) -> String {
    script_with(queries, true)
}

/// Defines `kiln_tick`, which prints one tick line on standard error.
const TICK_FUNCTION: &str =
    "kiln_tick() {\n\tprintf '@@kiln-time %s %s\\n' \"$1\" \"$(date +%s%N)\" >&2\n}\n";

fn script_with(queries: &[FactQuery], timed: bool) -> String {
    let normalized = normalize_queries(queries);
    let sections = plan_sections(&normalized);
    let mut s = PRELUDE.replace("__MAX_CONTENT__", &MAX_CONTENT_BYTES.to_string());
    // Functions the kinds' parts call, each once, defined before kiln_facts (functions may
    // be defined in any order in sh, but keeping the body of kiln_facts one function still
    // means a cut script runs nothing).
    let mut functions: Vec<String> = Vec::new();
    for section in &sections {
        if let Some(f) = section.kind.shell_functions() {
            if !functions.contains(&f) {
                functions.push(f);
            }
        }
    }
    if timed {
        functions.push(TICK_FUNCTION.to_string());
    }
    if !functions.is_empty() {
        s = s.replacen(
            "kiln_facts() {\n",
            &format!("{}kiln_facts() {{\n", functions.concat()),
            1,
        );
    }
    let marker = |s: &mut String, line: &str| {
        s.push_str("\tprintf '%s\\n' ");
        s.push_str(&sh_quote(line));
        s.push('\n');
    };
    let tick = |s: &mut String, name: &str| {
        if timed {
            s.push_str(&format!("\tkiln_tick {name}\n"));
        }
    };
    tick(&mut s, "begin");
    marker(&mut s, &format!("{MARKER_PREFIX}begin"));
    let mut read: Vec<&'static str> = Vec::new();
    for (i, section) in sections.iter().enumerate() {
        tick(&mut s, &i.to_string());
        let name = section.kind.section();
        if !read.contains(&name) {
            read.push(name);
            let all: Vec<&FactQuery> = normalized
                .iter()
                .filter(|q| kind_of(q).section() == name)
                .collect();
            section.kind.read_ahead(&all, &mut s);
        }
        marker(&mut s, &section.marker());
        section.kind.script(&section.queries, &mut s);
    }
    marker(&mut s, &format!("{MARKER_PREFIX}end"));
    tick(&mut s, "end");
    s.push_str("}\nkiln_facts </dev/null\n");
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::facts::kinds::fixture::run_sh;
    use std::io::Write;
    use std::process::{Command, Stdio};

    fn path(p: &str, expect: Option<&str>, sensitive: bool) -> FactQuery {
        FactQuery::Path {
            path: p.into(),
            expect_sha256: expect.map(String::from),
            sensitive,
        }
    }

    #[test]
    fn sh_quote_round_trips_through_sh() {
        let nasty = [
            "",
            "plain",
            "two words",
            "it's",
            "'",
            "''",
            "\"double\"",
            "line\nbreak\n",
            "\n\n",
            "$(echo pwned)",
            "`echo pwned`",
            "$HOME ${x:-y}",
            "back\\slash\\",
            "tab\there",
            "-n",
            "%s%d\\n",
            "glob * ? [a]",
            "semi; rm -rf /tmp/nothing &",
            "ünïcødé ✓",
            "'\"'\"'\\'",
        ];
        for s in nasty {
            let out = Command::new("sh")
                .arg("-c")
                .arg(format!("printf %s {}", sh_quote(s)))
                .output()
                .unwrap();
            assert!(out.status.success(), "sh failed for {s:?}");
            assert_eq!(String::from_utf8(out.stdout).unwrap(), s, "for {s:?}");
        }
    }

    #[test]
    fn sh_quote_shapes() {
        assert_eq!(sh_quote(""), "''");
        assert_eq!(sh_quote("a b"), "'a b'");
        assert_eq!(sh_quote("it's"), "'it'\\''s'");
    }

    #[test]
    fn normalize_sorts_dedups_and_merges_paths() {
        let queries = vec![
            FactQuery::Pending,
            FactQuery::Service {
                name: "nginx.service".into(),
            },
            FactQuery::Package {
                name: "nginx".into(),
            },
            path("/etc/b", None, false),
            FactQuery::Package {
                name: "curl".into(),
            },
            path("/etc/a", Some("ff"), false),
            path("/etc/a", None, true),
            FactQuery::Package {
                name: "nginx".into(),
            },
            FactQuery::Pending,
        ];
        let normalized = normalize_queries(&queries);
        assert_eq!(
            normalized,
            vec![
                FactQuery::Package {
                    name: "curl".into()
                },
                FactQuery::Package {
                    name: "nginx".into()
                },
                path("/etc/a", Some("ff"), true),
                path("/etc/b", None, false),
                FactQuery::Service {
                    name: "nginx.service".into()
                },
                FactQuery::Pending,
            ]
        );
    }

    #[test]
    fn batches_packages_and_services_into_one_call_each() {
        let queries = vec![
            FactQuery::Package {
                name: "nginx".into(),
            },
            FactQuery::Package {
                name: "curl".into(),
            },
            FactQuery::Service {
                name: "nginx.service".into(),
            },
            FactQuery::Service {
                name: "ssh.service".into(),
            },
        ];
        let script = fact_script(&queries);
        assert_eq!(script.matches("dpkg-query").count(), 1);
        assert!(script.contains(" -- 'curl' 'nginx' 2>/dev/null\n"));
        assert_eq!(script.matches("systemctl show").count(), 1);
        assert!(script.contains(" -- 'nginx.service' 'ssh.service' 2>/dev/null\n"));
        assert!(script.ends_with("printf '%s\\n' '@@kiln:end'\n}\nkiln_facts </dev/null\n"));
    }

    #[test]
    fn no_package_or_service_call_without_queries() {
        let script = fact_script(&[FactQuery::Pending]);
        assert!(!script.contains("dpkg-query"));
        assert!(!script.contains("systemctl"));
    }

    #[test]
    fn same_queries_in_any_order_give_the_same_script() {
        let a = vec![FactQuery::User { name: "bob".into() }, FactQuery::AptLists];
        let b = vec![
            FactQuery::AptLists,
            FactQuery::User { name: "bob".into() },
            FactQuery::AptLists,
        ];
        assert_eq!(fact_script(&a), fact_script(&b));
    }

    #[test]
    fn script_is_valid_sh() {
        let script = fact_script(&[
            FactQuery::Package {
                name: "dpkg".into(),
            },
            FactQuery::AptLists,
            path("/etc/it's\nweird", Some("00"), true),
            FactQuery::User {
                name: "root".into(),
            },
            FactQuery::Group {
                name: "root".into(),
            },
            FactQuery::Service {
                name: "x.service".into(),
            },
            FactQuery::Guard {
                command: "test -e '/x' && echo \"$(id)\"".into(),
                sensitive_of: None,
            },
            FactQuery::Pending,
        ]);
        let mut child = Command::new("sh")
            .arg("-n")
            .stdin(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        child
            .stdin
            .take()
            .unwrap()
            .write_all(script.as_bytes())
            .unwrap();
        let out = child.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    #[test]
    fn names_with_newlines_cannot_forge_markers() {
        let dir = tempfile::tempdir().unwrap();
        let evil = dir.path().join("a\n@@kiln:end\nb");
        std::fs::write(&evil, "x").unwrap();
        let evil = evil.to_str().unwrap().to_string();
        let out = run_sh(&fact_script(&[
            path(&evil, None, false),
            FactQuery::User {
                name: "no\n@@kiln:end".into(),
            },
        ]));
        let markers: Vec<&str> = out
            .lines()
            .filter(|l| l.starts_with(MARKER_PREFIX))
            .collect();
        assert_eq!(markers.len(), 4, "{out}");
        assert_eq!(markers[3], "@@kiln:end");
        assert!(markers[1].starts_with("@@kiln:path 0 "));
        assert!(out.contains(
            "\nsha256 2d711642b726b04401627ca9fbac32f5c8530fb1903cc4db02258717921a4881\n"
        ));
    }
}
