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
//! Sections, in order (per-query sections follow the sorted query order):
//!
//! * `@@kiln:begin` — always first.
//! * `@@kiln:packages` — present when any package is asked for. The raw output of ONE
//!   `dpkg-query -W -f='${Package}\t${Architecture}\t${Version}\t${db:Status-Abbrev}\n'`
//!   call naming every package; names unknown to dpkg print nothing. The architecture
//!   column is there so that a query such as `libc6:i386` can be told apart from
//!   `libc6:amd64`.
//! * `@@kiln:apt-lists` — raw lists, Release headers and sources for the controller to
//!   compare; see [`crate::facts::apt_lists`].
//! * `@@kiln:path <index> <path>` — either `missing` (nothing at the path, not even a
//!   dangling symlink), or the lines of one `stat` call (`lstat`, symlinks are not
//!   followed):
//!   `size <bytes>`, `mode <st_mode in hex>` (type and permission bits; the parser turns
//!   them into the kind and four octal digits), `uid <n>`, `gid <n>`,
//!   `owner <name or UNKNOWN>`, `group <name or UNKNOWN>`, `ctime <seconds>.<nanoseconds>`
//!   (`stat %.9Z`, stable and timezone-free). Then for a symlink `target <base64>` (of the
//!   `readlink` result); for a regular file `sha256 <hex>` unless the query is sensitive,
//!   `matches yes|no` when an expected sha256 was sent (compared on the host), and
//!   `content <base64, one line>` when it does not match, the file is not sensitive and is
//!   at most 262144 bytes. A sensitive file's hash never leaves the host. `unreadable`
//!   anywhere in the section means the path exists but could not be stat'ed or read.
//! * `@@kiln:user <index> <name>` — nothing when `getent passwd` finds no such user, else
//!   `passwd <getent passwd line>` and `groups <id -nG output>` (primary group first).
//! * `@@kiln:group <index> <name>` — nothing when missing, else `group <getent group line>`.
//! * `@@kiln:services` — present when any service is asked for. The raw output of ONE
//!   `systemctl show -p Id,LoadState,ActiveState,UnitFileState --no-pager -- u1 u2 ...`,
//!   `Key=Value` lines in one blank-line-separated block per unit in argument order. Empty
//!   when systemctl is missing or fails (no systemd as PID 1).
//! * `@@kiln:guard <index>` — `status <exit status>` of the guard command, run as a user
//!   unit ([`crate::shell::user_unit`]: its own `sh`, the text in no process argument)
//!   with `</dev/null >/dev/null 2>&1`. A separate `sh` rather than a subshell means a
//!   guard with a syntax error fails alone instead of aborting the whole fact script, and
//!   it does not inherit this script's `set -u` or variables. The command is not echoed
//!   in the marker because it may carry secrets.
//! * `@@kiln:pending` — present when asked for: one `handler <file name>` line per
//!   regular file in `/var/lib/kiln/pending/` (dot-files and names with a newline are
//!   skipped; a missing directory means none).
//! * `@@kiln:end` — always last; its absence means the output was truncated.

use crate::facts::FactQuery;
use crate::shell::quote as sh_quote;

/// Largest file (bytes) whose differing content is sent back for a diff.
pub const MAX_CONTENT_BYTES: u64 = 262_144;

/// The directory where interrupted runs journal the handlers they still owe.
pub const PENDING_DIR: &str = "/var/lib/kiln/pending";

/// Every marker line starts with this prefix.
pub const MARKER_PREFIX: &str = "@@kiln:";

/// Sorts and deduplicates `queries` into the order of the script's sections. Both the
/// script and the parser use this list, and the marker indexes refer to it.
///
/// Several queries for the same path are merged into one, because the facts hold one
/// entry per path: the merged query is sensitive when any of them is (so a secret is
/// never exposed by a second, careless query), and expects the first expected sha256 in
/// sorted order.
pub fn normalize_queries(queries: &[FactQuery]) -> Vec<FactQuery> {
    let mut sorted: Vec<FactQuery> = queries.to_vec();
    sorted.sort();
    sorted.dedup();
    let mut out: Vec<FactQuery> = Vec::with_capacity(sorted.len());
    for query in sorted {
        if let (
            Some(FactQuery::Path {
                path: prev_path,
                expect_sha256: prev_expect,
                sensitive: prev_sensitive,
            }),
            FactQuery::Path {
                path,
                expect_sha256,
                sensitive,
            },
        ) = (out.last_mut(), &query)
        {
            if prev_path == path {
                *prev_sensitive |= *sensitive;
                if prev_expect.is_none() {
                    prev_expect.clone_from(expect_sha256);
                }
                continue;
            }
        }
        out.push(query);
    }
    out
}

/// One section of the script's output, as planned from the normalised queries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Section<'a> {
    Packages(Vec<&'a str>),
    AptLists,
    Path {
        index: usize,
        path: &'a str,
        expect: Option<&'a str>,
        sensitive: bool,
    },
    User {
        index: usize,
        name: &'a str,
    },
    Group {
        index: usize,
        name: &'a str,
    },
    Services(Vec<&'a str>),
    Guard {
        index: usize,
        command: &'a str,
    },
    DirList {
        index: usize,
        path: &'a str,
    },
    Pending,
    Galera {
        index: usize,
        cluster: &'a str,
        config: &'a [String],
    },
}

impl Section<'_> {
    /// The section name written after `@@kiln:`.
    pub(crate) fn kind(&self) -> &'static str {
        match self {
            Section::Packages(_) => "packages",
            Section::AptLists => "apt-lists",
            Section::Path { .. } => "path",
            Section::User { .. } => "user",
            Section::Group { .. } => "group",
            Section::Services(_) => "services",
            Section::Guard { .. } => "guard",
            Section::DirList { .. } => "dir",
            Section::Pending => "pending",
            Section::Galera { .. } => "galera",
        }
    }

    /// The query index carried in the marker, for per-query sections.
    pub(crate) fn index(&self) -> Option<usize> {
        match self {
            Section::Path { index, .. }
            | Section::User { index, .. }
            | Section::Group { index, .. }
            | Section::Guard { index, .. }
            | Section::DirList { index, .. }
            | Section::Galera { index, .. } => Some(*index),
            _ => None,
        }
    }

    /// The whole marker line, without the newline.
    pub(crate) fn marker(&self) -> String {
        let mut line = format!("{MARKER_PREFIX}{}", self.kind());
        if let Some(index) = self.index() {
            line.push_str(&format!(" {index}"));
        }
        let name = match self {
            Section::Path { path, .. } | Section::DirList { path, .. } => Some(*path),
            Section::User { name, .. } | Section::Group { name, .. } => Some(*name),
            _ => None,
        };
        if let Some(name) = name {
            line.push(' ');
            line.push_str(&printable(name));
        }
        line
    }
}

/// Plans the output sections for an already normalised query list. Batched kinds
/// (packages, services) get one section at the place of their first query.
pub(crate) fn plan_sections(normalized: &[FactQuery]) -> Vec<Section<'_>> {
    let packages: Vec<&str> = normalized
        .iter()
        .filter_map(|q| match q {
            FactQuery::Package { name } => Some(name.as_str()),
            _ => None,
        })
        .collect();
    let services: Vec<&str> = normalized
        .iter()
        .filter_map(|q| match q {
            FactQuery::Service { name } => Some(name.as_str()),
            _ => None,
        })
        .collect();
    let mut sections = Vec::new();
    let mut packages = Some(packages);
    let mut services = Some(services);
    for (index, query) in normalized.iter().enumerate() {
        match query {
            FactQuery::Package { .. } => {
                if let Some(names) = packages.take() {
                    sections.push(Section::Packages(names));
                }
            }
            FactQuery::AptLists => sections.push(Section::AptLists),
            FactQuery::Path {
                path,
                expect_sha256,
                sensitive,
            } => sections.push(Section::Path {
                index,
                path,
                expect: expect_sha256.as_deref(),
                sensitive: *sensitive,
            }),
            FactQuery::User { name } => sections.push(Section::User { index, name }),
            FactQuery::Group { name } => sections.push(Section::Group { index, name }),
            FactQuery::Service { .. } => {
                if let Some(names) = services.take() {
                    sections.push(Section::Services(names));
                }
            }
            FactQuery::Guard { command, .. } => sections.push(Section::Guard { index, command }),
            FactQuery::DirList { path } => sections.push(Section::DirList { index, path }),
            FactQuery::Pending => sections.push(Section::Pending),
            FactQuery::Galera { cluster, config } => sections.push(Section::Galera {
                index,
                cluster,
                config,
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

/// Shell helpers shared by all sections. `kiln_path` prints one path's section body; it
/// keeps the sha256 of a sensitive file in a shell variable and only ever prints whether
/// it matched.
use crate::shell::FACTS_PRELUDE as PRELUDE;

/// Builds the one script that reads every fact in `queries`; see the module
/// documentation for the output format. The queries are sorted and deduplicated first
/// ([`normalize_queries`]), so the same set of queries always gives the same script.
pub fn fact_script(queries: &[FactQuery]) -> String {
    let normalized = normalize_queries(queries);
    let mut s = PRELUDE.replace("__MAX_CONTENT__", &MAX_CONTENT_BYTES.to_string());
    if normalized
        .iter()
        .any(|q| matches!(q, FactQuery::Galera { .. }))
    {
        // Defined before kiln_facts (functions may be defined in any order in sh, but
        // keeping the body of kiln_facts one function still means a cut script runs nothing).
        s = s.replacen(
            "kiln_facts() {\n",
            &format!("{}kiln_facts() {{\n", super::galera::shell_fn()),
            1,
        );
    }
    let marker = |s: &mut String, line: &str| {
        s.push_str("\tprintf '%s\\n' ");
        s.push_str(&sh_quote(line));
        s.push('\n');
    };
    marker(&mut s, &format!("{MARKER_PREFIX}begin"));
    for section in plan_sections(&normalized) {
        marker(&mut s, &section.marker());
        match &section {
            Section::Packages(names) => {
                // dpkg-query with no names would list every package, but a packages
                // section is only planned when there is at least one name.
                s.push_str("\tdpkg-query -W -f=");
                s.push_str(&sh_quote(
                    r"${Package}\t${Architecture}\t${Version}\t${db:Status-Abbrev}\n",
                ));
                s.push_str(" --");
                push_words(&mut s, names);
                s.push_str(" 2>/dev/null\n");
            }
            Section::AptLists => s.push_str(super::apt_lists::SCRIPT),
            Section::Path {
                path,
                expect,
                sensitive,
                ..
            } => {
                let expect = expect.map(|e| e.trim().to_ascii_lowercase());
                s.push_str("\tkiln_path ");
                s.push_str(&sh_quote(path));
                s.push(' ');
                s.push_str(&sh_quote(expect.as_deref().unwrap_or("")));
                s.push_str(if *sensitive { " 1\n" } else { " 0\n" });
            }
            Section::User { name, .. } => {
                s.push_str("\tkiln_user ");
                s.push_str(&sh_quote(name));
                s.push('\n');
            }
            Section::Group { name, .. } => {
                s.push_str("\tkiln_group ");
                s.push_str(&sh_quote(name));
                s.push('\n');
            }
            Section::Services(names) => {
                s.push_str(
                    "\tsystemctl show -p Id,LoadState,ActiveState,UnitFileState --no-pager --",
                );
                push_words(&mut s, names);
                s.push_str(" 2>/dev/null\n");
            }
            Section::Guard { command, .. } => {
                s.push('\t');
                s.push_str(&crate::shell::user_unit(command));
                s.push_str(" </dev/null >/dev/null 2>&1\n");
                s.push_str("\tprintf 'status %s\\n' \"$?\"\n");
            }
            Section::DirList { path, .. } => {
                // One `entry NAME` line per entry; names with a newline are reported as
                // `odd` (they cannot be managed by kiln and are left alone).
                s.push_str("\tkiln_d=");
                s.push_str(&sh_quote(path));
                s.push('\n');
                s.push_str("\tif [ -d \"$kiln_d\" ] && [ ! -L \"$kiln_d\" ]; then\n");
                s.push_str("\t\tprintf 'state dir\\n'\n");
                s.push_str(
                    "\t\tfor kiln_f in \"$kiln_d\"/* \"$kiln_d\"/.[!.]* \"$kiln_d\"/..?*; do\n",
                );
                s.push_str("\t\t\t[ -e \"$kiln_f\" ] || [ -L \"$kiln_f\" ] || continue\n");
                s.push_str("\t\t\tkiln_f=${kiln_f##*/}\n");
                s.push_str(
                    "\t\t\tcase $kiln_f in *\"$kiln_nl\"*) printf 'odd\\n'; continue ;; esac\n",
                );
                s.push_str("\t\t\tprintf 'entry %s\\n' \"$kiln_f\"\n");
                s.push_str("\t\tdone\n");
                s.push_str("\telse\n\t\tprintf 'state none\\n'\n\tfi\n");
            }
            Section::Pending => {
                s.push_str(&format!("\tfor kiln_f in {PENDING_DIR}/*; do\n"));
                s.push_str("\t\t[ -f \"$kiln_f\" ] || continue\n");
                s.push_str("\t\tkiln_f=${kiln_f##*/}\n");
                s.push_str("\t\tcase $kiln_f in *\"$kiln_nl\"*) continue ;; esac\n");
                s.push_str("\t\tprintf 'handler %s\\n' \"$kiln_f\"\n");
                s.push_str("\tdone\n");
            }
            Section::Galera {
                cluster, config, ..
            } => {
                s.push('\t');
                s.push_str(&super::galera::shell_call(cluster, config));
                s.push('\n');
            }
        }
    }
    marker(&mut s, &format!("{MARKER_PREFIX}end"));
    s.push_str("}\nkiln_facts </dev/null\n");
    s
}

/// Appends each name as a separately quoted word.
fn push_words(s: &mut String, names: &[&str]) {
    for name in names {
        s.push(' ');
        s.push_str(&sh_quote(name));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::process::{Command, Stdio};

    /// Runs `script` with `sh -s`, the way kiln runs it on a host.
    fn run_sh(script: &str) -> String {
        let mut child = Command::new("sh")
            .arg("-s")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn sh");
        child
            .stdin
            .take()
            .unwrap()
            .write_all(script.as_bytes())
            .unwrap();
        let out = child.wait_with_output().unwrap();
        String::from_utf8(out.stdout).expect("utf-8 output")
    }

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

    #[test]
    fn a_broken_guard_fails_alone() {
        let out = run_sh(&fact_script(&[
            FactQuery::Guard {
                command: "if then (".into(),
                sensitive_of: None,
            },
            FactQuery::Guard {
                command: "true".into(),
                sensitive_of: None,
            },
            FactQuery::Guard {
                command: "cat; exit 3".into(),
                sensitive_of: None,
            },
        ]));
        assert_eq!(
            out,
            "@@kiln:begin\n@@kiln:guard 0\nstatus 3\n@@kiln:guard 1\nstatus 2\n\
             @@kiln:guard 2\nstatus 0\n@@kiln:end\n"
        );
    }

    #[test]
    fn dir_list_names_every_entry_and_marks_odd_names() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        std::fs::write(d.join("a.conf"), "x").unwrap();
        std::fs::write(d.join(".hidden"), "x").unwrap();
        std::fs::write(d.join("..dots"), "x").unwrap();
        std::fs::create_dir(d.join("sub")).unwrap();
        std::os::unix::fs::symlink("/nonexistent", d.join("dangling")).unwrap();
        std::fs::write(d.join("evil\n@@kiln:end"), "x").unwrap();
        let p = d.to_str().unwrap().to_string();
        let queries = [
            FactQuery::DirList { path: p.clone() },
            FactQuery::DirList {
                path: format!("{p}/a.conf"),
            },
        ];
        let out = run_sh(&fact_script(&queries));
        let facts = crate::facts::parse::parse_facts(&queries, &out).unwrap();
        // The name with a newline cannot forge a marker; it is kept as one kiln cannot
        // name exactly, so that a purge of it is decided on the host.
        assert_eq!(
            facts.dirs[&p].as_deref().unwrap(),
            [
                "..dots",
                ".hidden",
                "a.conf",
                "dangling",
                "sub",
                crate::facts::parse::UNNAMEABLE
            ]
        );
        assert_eq!(facts.dirs[&format!("{p}/a.conf")], None);
    }
}
