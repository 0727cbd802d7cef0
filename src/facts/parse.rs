//! Parses the fact script's output (format: see [`crate::facts::script`]) into
//! [`HostFacts`]: splits it at the marker lines, checks the sections against the ones the
//! script for the same queries prints, and hands each section to its kind
//! ([`crate::facts::kinds`]), which parses the body.
//!
//! The parser is strict about structure: the sections must be exactly the ones the script
//! for the same queries prints, in the same order, from `@@kiln:begin` to `@@kiln:end`.
//! A missing end marker means the output was cut short, and any other deviation means the
//! output does not belong to these queries; both are errors rather than guesses, because
//! a plan built on a half-read host would be wrong. Inside a section, every line must be
//! one the script can print.

use crate::facts::script::{normalize_queries, plan_sections, Section, MARKER_PREFIX};
use crate::facts::section::{expect_empty, malformed, truncated, RawSection};
use crate::facts::{FactQuery, HostFacts};

pub use crate::facts::kinds::dir_list::UNNAMEABLE;
pub use crate::facts::section::FactParseError;

/// Turns the output of [`crate::facts::script::fact_script`]`(queries)` into facts. Every
/// query gets its entry: a package, path or service that the host knows nothing about is
/// recorded as such (not installed, missing, empty states), a missing user or group as
/// `None`.
pub fn parse_facts(queries: &[FactQuery], output: &str) -> Result<HostFacts, FactParseError> {
    let normalized = normalize_queries(queries);
    let plan = plan_sections(&normalized);
    let raw = split_sections(output);

    if raw.first().map(|s| s.kind) != Some("begin") {
        return Err(FactParseError::MissingBegin);
    }
    if !raw.iter().any(|s| s.kind == "end") {
        return Err(truncated(&raw));
    }
    // The begin section carries nothing; a line there is output the script never prints.
    expect_empty(&raw[0])?;

    let mut facts = HostFacts::default();
    for (i, section) in plan.iter().enumerate() {
        let found = raw.get(i + 1).ok_or_else(|| truncated(&raw))?;
        check_marker(found, section)?;
        section.kind.parse(&section.queries, found, &mut facts)?;
    }

    let end_pos = plan.len() + 1;
    match raw.get(end_pos) {
        Some(end) if end.kind == "end" => {
            if let Some(&(line, text)) = end.body.iter().find(|(_, t)| !t.trim().is_empty()) {
                return Err(malformed(end, line, "output after the end marker", text));
            }
        }
        Some(other) => {
            return Err(FactParseError::UnexpectedSection {
                line: other.line,
                expected: format!("{MARKER_PREFIX}end"),
                found: format!("{MARKER_PREFIX}{}", other.marker),
            })
        }
        None => return Err(truncated(&raw)),
    }
    if let Some(extra) = raw.get(end_pos + 1) {
        return Err(FactParseError::UnexpectedSection {
            line: extra.line,
            expected: "end of output".into(),
            found: format!("{MARKER_PREFIX}{}", extra.marker),
        });
    }
    Ok(facts)
}

/// Splits the output at marker lines. Lines before the first marker are dropped: they
/// can only be noise from the remote login (the begin marker check catches a script that
/// printed nothing at all).
fn split_sections(output: &str) -> Vec<RawSection<'_>> {
    let mut sections: Vec<RawSection<'_>> = Vec::new();
    for (i, text) in output.lines().enumerate() {
        let line = i + 1;
        if let Some(marker) = text.strip_prefix(MARKER_PREFIX) {
            let (kind, arg) = marker.split_once(' ').unwrap_or((marker, ""));
            sections.push(RawSection {
                line,
                marker,
                kind,
                arg,
                body: Vec::new(),
            });
        } else if let Some(current) = sections.last_mut() {
            current.body.push((line, text));
        }
    }
    sections
}

/// Checks that `found` is the section the plan expects at this place, index included.
fn check_marker(found: &RawSection<'_>, expected: &Section<'_>) -> Result<(), FactParseError> {
    let index_ok = match expected.index {
        Some(index) => found.arg.split(' ').next() == Some(index.to_string().as_str()),
        None => true,
    };
    if found.kind == expected.kind.section() && index_ok {
        Ok(())
    } else {
        Err(FactParseError::UnexpectedSection {
            line: found.line,
            expected: expected.marker(),
            found: format!("{MARKER_PREFIX}{}", found.marker),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::facts::kinds::fixture::{capture_queries, captured, package, path, run_sh, CAPTURE};
    use crate::facts::script::fact_script;
    use crate::facts::{PackageFact, PathFact, PathKind};

    #[test]
    fn capture_matches_the_script_markers() {
        // The fixture must stay in step with the script: its markers are exactly the
        // ones the current script prints for these queries.
        let script = fact_script(&capture_queries());
        for marker in CAPTURE.lines().filter(|l| l.starts_with(MARKER_PREFIX)) {
            let printed = format!("printf '%s\\n' '{marker}'");
            assert!(script.contains(&printed), "{marker} not in script");
        }
    }

    #[test]
    fn every_query_has_an_entry() {
        let facts = captured();
        for query in capture_queries() {
            let present = match &query {
                FactQuery::Package { name } => facts.packages.contains_key(name),
                FactQuery::AptLists => facts.apt_lists.is_some(),
                FactQuery::Path { path, .. } => facts.paths.contains_key(path),
                FactQuery::User { name } => facts.users.contains_key(name),
                FactQuery::Group { name } => facts.groups.contains_key(name),
                FactQuery::Service { name } => facts.services.contains_key(name),
                FactQuery::Guard { command, .. } => facts.guards.contains_key(command),
                FactQuery::DirList { path } => facts.dirs.contains_key(path),
                FactQuery::Pending => true,
                FactQuery::Galera { cluster, .. } => facts.galera.contains_key(cluster),
                FactQuery::SshSession => facts.ssh_session.is_some(),
                FactQuery::Certs { .. } => facts.certs.contains_key(&query.key()),
            };
            assert!(present, "no entry for {query:?}");
        }
    }

    #[test]
    fn truncated_output_is_an_error() {
        let cut = CAPTURE.strip_suffix("@@kiln:end\n").unwrap();
        assert_eq!(
            parse_facts(&capture_queries(), cut),
            Err(FactParseError::Truncated {
                last_section: "@@kiln:pending".into()
            })
        );
        let mid = &CAPTURE[..CAPTURE.find("@@kiln:user").unwrap() + 5];
        assert!(matches!(
            parse_facts(&capture_queries(), mid),
            Err(FactParseError::Truncated { .. })
        ));
        assert_eq!(
            parse_facts(&capture_queries(), ""),
            Err(FactParseError::MissingBegin)
        );
    }

    #[test]
    fn output_of_other_queries_is_rejected() {
        let mut queries = capture_queries();
        queries.push(FactQuery::User {
            name: "www-data".into(),
        });
        assert!(matches!(
            parse_facts(&queries, CAPTURE),
            Err(FactParseError::UnexpectedSection { .. })
        ));
        assert!(matches!(
            parse_facts(&capture_queries()[1..], CAPTURE),
            Err(FactParseError::UnexpectedSection { .. })
        ));
    }

    #[test]
    fn stray_lines_are_errors() {
        let after_end = format!("{CAPTURE}oops\n");
        assert!(matches!(
            parse_facts(&capture_queries(), &after_end),
            Err(FactParseError::Malformed { .. })
        ));
        let queries = [FactQuery::Guard {
            command: "true".into(),
            sensitive_of: None,
        }];
        let output = "@@kiln:begin\n@@kiln:guard 0\nhello\nstatus 0\n@@kiln:end\n";
        let err = parse_facts(&queries, output).unwrap_err();
        assert_eq!(
            err,
            FactParseError::Malformed {
                line: 3,
                section: "guard 0".into(),
                problem: "unexpected line",
                text: "hello".into()
            }
        );
        let output = "@@kiln:begin\n@@kiln:guard 0\n@@kiln:end\n";
        assert!(matches!(
            parse_facts(&queries, output),
            Err(FactParseError::MissingLine { key: "status", .. })
        ));
    }

    /// The real thing: the generated script runs on this machine (Debian 12, with dpkg)
    /// and its output parses into the facts of the files it looked at.
    #[test]
    fn end_to_end_on_local_files() {
        use sha2::{Digest, Sha256};
        use std::os::unix::fs::PermissionsExt;

        let dir = tempfile::tempdir().unwrap();
        let at = |name: &str| dir.path().join(name).to_str().unwrap().to_string();
        let sha = |data: &[u8]| hex::encode(Sha256::digest(data));
        std::fs::write(at("same"), "same\n").unwrap();
        std::fs::write(at("changed"), "new 'content'\n").unwrap();
        std::fs::set_permissions(at("changed"), std::fs::Permissions::from_mode(0o640)).unwrap();
        std::fs::write(at("secret"), "hunter2\n").unwrap();
        std::fs::create_dir(at("sub dir")).unwrap();
        std::os::unix::fs::symlink("sub dir", at("it's a link")).unwrap();

        let service = "kiln-no-such-unit.service";
        let queries = vec![
            package("dpkg"),
            package("kiln-no-such-package"),
            FactQuery::AptLists,
            path(&at("same"), Some(&sha(b"same\n")), false),
            path(&at("changed"), Some(&sha(b"old\n")), false),
            path(&at("secret"), Some(&sha(b"old\n")), true),
            path(&at("sub dir"), None, false),
            path(&at("it's a link"), None, false),
            path(&at("absent"), None, false),
            FactQuery::User {
                name: "root".into(),
            },
            FactQuery::User {
                name: "kiln-no-such-user".into(),
            },
            FactQuery::Group {
                name: "root".into(),
            },
            FactQuery::Service {
                name: service.into(),
            },
            FactQuery::Guard {
                command: format!("test -d {}", crate::shell::quote(&at("sub dir"))),
                sensitive_of: None,
            },
            FactQuery::Guard {
                command: "exit 1".into(),
                sensitive_of: None,
            },
            FactQuery::Pending,
        ];
        let output = run_sh(&fact_script(&queries));
        assert!(
            !output.contains(&sha(b"hunter2\n")),
            "sensitive hash leaked"
        );
        let facts = parse_facts(&queries, &output).expect(&output);

        assert!(facts.packages["dpkg"].installed());
        assert_eq!(
            facts.packages["kiln-no-such-package"],
            PackageFact::default()
        );
        // The real script on this Debian machine: its architecture, and its sources read.
        let lists = facts.apt_lists.as_ref().unwrap();
        let arch = std::process::Command::new("dpkg")
            .arg("--print-architecture")
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
            .unwrap_or_default();
        assert_eq!(lists.arch, arch);
        assert!(lists.unreadable.is_empty(), "{:?}", lists.unreadable);

        let same = facts.path(&at("same"));
        assert_eq!((same.kind, same.matches), (PathKind::File, Some(true)));
        assert_eq!(same.sha256, Some(sha(b"same\n")));
        assert_eq!(same.content, None);
        assert_eq!(same.size, Some(5));
        assert!(same.owner.is_some() && same.ctime.is_some());

        let changed = facts.path(&at("changed"));
        assert_eq!(changed.matches, Some(false));
        assert_eq!(changed.content.as_deref(), Some("new 'content'\n"));
        assert_eq!(changed.mode.as_deref(), Some("0640"));

        let secret = facts.path(&at("secret"));
        assert_eq!(secret.matches, Some(false));
        assert_eq!((secret.sha256, secret.content), (None, None));

        assert_eq!(facts.path(&at("sub dir")).kind, PathKind::Directory);
        let link = facts.path(&at("it's a link"));
        assert_eq!(link.kind, PathKind::Symlink);
        assert_eq!(link.link_target.as_deref(), Some("sub dir"));
        assert_eq!(facts.paths[&at("absent")], PathFact::missing());

        let root = facts.users["root"].clone().expect("root exists");
        assert_eq!((root.uid, root.home.as_str()), (0, "/root"));
        assert_eq!(facts.users["kiln-no-such-user"], None);
        assert_eq!(facts.groups["root"].as_ref().map(|g| g.gid), Some(0));

        // Without systemd as PID 1 systemctl prints nothing; with it, the unit is unknown.
        assert!(["", "not-found"].contains(&facts.services[service].load_state.as_str()));
        assert!(!facts.services[service].exists());

        assert_eq!(facts.guards.len(), 2);
        assert!(facts.guards.values().filter(|ok| **ok).count() == 1);
        assert!(!facts.guards["exit 1"]);
    }
}
