//! Parses the fact script's output (format: see [`crate::facts::script`]) into
//! [`HostFacts`].
//!
//! The parser is strict about structure: the sections must be exactly the ones the script
//! for the same queries prints, in the same order, from `@@kiln:begin` to `@@kiln:end`.
//! A missing end marker means the output was cut short, and any other deviation means the
//! output does not belong to these queries; both are errors rather than guesses, because
//! a plan built on a half-read host would be wrong. Inside a section, every line must be
//! one the script can print.

use base64::Engine as _;

use crate::facts::script::{normalize_queries, plan_sections, Section, MARKER_PREFIX};
use crate::facts::{
    AptListsFact, FactQuery, GroupFact, HostFacts, PackageFact, PathFact, PathKind, ServiceFact,
    UserFact,
};

/// Why the fact output could not be turned into facts.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FactParseError {
    #[error("fact output has no `@@kiln:begin` marker; the fact script did not run")]
    MissingBegin,
    #[error(
        "fact output is truncated: the `@@kiln:end` marker is missing (last section seen: `{last_section}`)"
    )]
    Truncated { last_section: String },
    #[error("fact output line {line}: expected section `{expected}`, found `{found}`")]
    UnexpectedSection {
        line: usize,
        expected: String,
        found: String,
    },
    #[error("fact output line {line} in section `{section}`: {problem}: {text:?}")]
    Malformed {
        line: usize,
        section: String,
        problem: &'static str,
        text: String,
    },
    #[error("fact output section `{section}` (line {line}) lacks its `{key}` line")]
    MissingLine {
        line: usize,
        section: String,
        key: &'static str,
    },
    #[error("path {path:?} exists but the host could not stat or read it")]
    PathUnreadable { path: String },
}

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
        match section {
            Section::Packages(names) => parse_packages(found, names, &mut facts)?,
            Section::AptLists => facts.apt_lists = Some(parse_apt_lists(found)?),
            Section::Path {
                path, sensitive, ..
            } => {
                let fact = parse_path(found, path, *sensitive)?;
                facts.paths.insert(path.to_string(), fact);
            }
            Section::User { name, .. } => {
                let fact = parse_user(found, name)?;
                facts.users.insert(name.to_string(), fact);
            }
            Section::Group { name, .. } => {
                let fact = parse_group(found, name)?;
                facts.groups.insert(name.to_string(), fact);
            }
            Section::Services(names) => parse_services(found, names, &mut facts)?,
            Section::Guard { command, .. } => {
                facts
                    .guards
                    .insert(command.to_string(), parse_guard(found)?);
            }
            Section::DirList { path, .. } => {
                facts.dirs.insert(path.to_string(), parse_dir(found)?);
            }
            Section::Pending => facts.pending = parse_pending(found)?,
            Section::Galera { cluster, .. } => {
                let lines: Vec<&str> = found.body.iter().map(|(_, t)| *t).collect();
                let fact = crate::facts::galera::parse(&lines)
                    .map_err(|e| malformed(found, found.line, "galera section", &e))?;
                facts.galera.insert(cluster.to_string(), fact);
            }
        }
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

/// One section of the output as found: its marker and the lines up to the next marker.
#[derive(Debug)]
struct RawSection<'a> {
    /// 1-based line number of the marker.
    line: usize,
    /// The marker without its prefix, e.g. `path 3 /etc/hosts`.
    marker: &'a str,
    /// The section name, e.g. `path`.
    kind: &'a str,
    /// Everything after the section name, e.g. `3 /etc/hosts`.
    arg: &'a str,
    /// Numbered body lines.
    body: Vec<(usize, &'a str)>,
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
    let index_ok = match expected.index() {
        Some(index) => found.arg.split(' ').next() == Some(index.to_string().as_str()),
        None => true,
    };
    if found.kind == expected.kind() && index_ok {
        Ok(())
    } else {
        Err(FactParseError::UnexpectedSection {
            line: found.line,
            expected: expected.marker(),
            found: format!("{MARKER_PREFIX}{}", found.marker),
        })
    }
}

fn expect_empty(section: &RawSection<'_>) -> Result<(), FactParseError> {
    match section.body.iter().find(|(_, t)| !t.trim().is_empty()) {
        Some(&(line, text)) => Err(malformed(section, line, "unexpected line", text)),
        None => Ok(()),
    }
}

fn malformed(
    section: &RawSection<'_>,
    line: usize,
    problem: &'static str,
    text: &str,
) -> FactParseError {
    // Content lines can be long; the start is enough to see what went wrong.
    const MAX_CHARS: usize = 120;
    let mut short: String = text.chars().take(MAX_CHARS).collect();
    if short.len() < text.len() {
        short.push_str("...");
    }
    FactParseError::Malformed {
        line,
        section: section.marker.to_string(),
        problem,
        text: short,
    }
}

fn truncated(raw: &[RawSection<'_>]) -> FactParseError {
    FactParseError::Truncated {
        last_section: raw
            .last()
            .map(|s| format!("{MARKER_PREFIX}{}", s.marker))
            .unwrap_or_default(),
    }
}

fn missing_line(section: &RawSection<'_>, key: &'static str) -> FactParseError {
    FactParseError::MissingLine {
        line: section.line,
        section: section.marker.to_string(),
        key,
    }
}

/// Splits a `key value` body line; a line that is only a key has an empty value.
fn key_value(text: &str) -> (&str, &str) {
    text.split_once(' ').unwrap_or((text, ""))
}

fn parse_num<T: std::str::FromStr>(
    section: &RawSection<'_>,
    line: usize,
    text: &str,
    value: &str,
) -> Result<T, FactParseError> {
    value
        .parse()
        .map_err(|_| malformed(section, line, "not a number", text))
}

/// dpkg-query prints `package \t architecture \t version \t status-abbrev` for each known
/// package, in its database order rather than argument order, so lines are matched to
/// queries by name. A query `name:arch` only matches that architecture; a bare name
/// matches any, preferring an installed one.
fn parse_packages(
    section: &RawSection<'_>,
    names: &[&str],
    facts: &mut HostFacts,
) -> Result<(), FactParseError> {
    let mut rows: Vec<[&str; 4]> = Vec::new();
    for &(line, text) in &section.body {
        if text.trim().is_empty() {
            continue;
        }
        let fields: Vec<&str> = text.split('\t').collect();
        match <[&str; 4]>::try_from(fields) {
            Ok(row) => rows.push(row),
            Err(_) => {
                return Err(malformed(
                    section,
                    line,
                    "expected 4 tab-separated fields",
                    text,
                ))
            }
        }
    }
    for name in names {
        let (base, arch) = match name.split_once(':') {
            Some((base, arch)) => (base, Some(arch)),
            None => (*name, None),
        };
        let candidates: Vec<&[&str; 4]> = rows
            .iter()
            .filter(|row| row[0] == base && arch.iter().all(|a| row[1] == *a))
            .collect();
        let row = candidates
            .iter()
            .find(|row| dpkg_installed(row[3]))
            .or_else(|| candidates.first());
        let fact = match row {
            Some(row) => {
                let status = row[3].trim().to_string();
                let version =
                    (dpkg_installed(&status) && !row[2].is_empty()).then(|| row[2].to_string());
                PackageFact { version, status }
            }
            None => PackageFact::default(),
        };
        facts.packages.insert(name.to_string(), fact);
    }
    Ok(())
}

/// A package counts as installed when dpkg has it fully installed and wants it kept
/// (`ii`) or held (`hi`).
fn dpkg_installed(status: &str) -> bool {
    let status = status.trim();
    status.starts_with("ii") || status.starts_with("hi")
}

fn parse_apt_lists(section: &RawSection<'_>) -> Result<AptListsFact, FactParseError> {
    let lines: Vec<&str> = section.body.iter().map(|(_, t)| *t).collect();
    crate::facts::apt_lists::parse(&lines)
        .map_err(|e| malformed(section, section.line, "apt-lists section", &e))
}

fn parse_path(
    section: &RawSection<'_>,
    path: &str,
    sensitive: bool,
) -> Result<PathFact, FactParseError> {
    let mut missing = false;
    let mut raw_mode: Option<u32> = None;
    let mut uid: Option<u32> = None;
    let mut gid: Option<u32> = None;
    let mut owner: Option<String> = None;
    let mut group: Option<String> = None;
    let mut fact = PathFact::missing();
    for &(line, text) in &section.body {
        let (key, value) = key_value(text);
        match key {
            "" if value.is_empty() => {}
            "missing" => missing = true,
            "unreadable" => {
                return Err(FactParseError::PathUnreadable {
                    path: path.to_string(),
                })
            }
            "size" => fact.size = Some(parse_num(section, line, text, value)?),
            "mode" => {
                raw_mode = Some(
                    u32::from_str_radix(value, 16)
                        .map_err(|_| malformed(section, line, "mode is not hex", text))?,
                )
            }
            "uid" => uid = Some(parse_num(section, line, text, value)?),
            "gid" => gid = Some(parse_num(section, line, text, value)?),
            "owner" => owner = Some(value.to_string()),
            "group" => group = Some(value.to_string()),
            "ctime" => fact.ctime = Some(value.to_string()),
            "target" => {
                let bytes = decode_base64(section, line, text, value)?;
                fact.link_target = Some(String::from_utf8_lossy(&bytes).into_owned());
            }
            "matches" => {
                fact.matches = Some(match value {
                    "yes" => true,
                    "no" => false,
                    _ => return Err(malformed(section, line, "expected yes or no", text)),
                })
            }
            // The script never prints a sensitive file's hash or content; should a
            // broken script do so anyway, the parser still keeps them out of the facts,
            // which end up in fingerprints, state and logs.
            "sha256" | "content" if sensitive => {}
            "sha256" => {
                if value.len() != 64 || !value.bytes().all(|b| b.is_ascii_hexdigit()) {
                    return Err(malformed(section, line, "not a sha256", text));
                }
                fact.sha256 = Some(value.to_ascii_lowercase());
            }
            "content" => {
                let bytes = decode_base64(section, line, text, value)?;
                // Content that is not UTF-8 cannot be diffed as text; the caller still
                // knows that it differs from `matches`.
                fact.content = String::from_utf8(bytes).ok();
            }
            _ => return Err(malformed(section, line, "unexpected line", text)),
        }
    }
    if missing {
        return Ok(PathFact::missing());
    }
    let raw_mode = raw_mode.ok_or_else(|| missing_line(section, "mode"))?;
    fact.kind = match raw_mode & 0o170000 {
        0o100000 => PathKind::File,
        0o040000 => PathKind::Directory,
        0o120000 => PathKind::Symlink,
        _ => PathKind::Other,
    };
    fact.mode = Some(format!("{:04o}", raw_mode & 0o7777));
    // stat prints UNKNOWN for an id without a name; the number is the most useful name
    // then, since chown accepts it too.
    fact.owner = name_or_id(owner, uid);
    fact.group = name_or_id(group, gid);
    Ok(fact)
}

fn name_or_id(name: Option<String>, id: Option<u32>) -> Option<String> {
    match name {
        Some(name) if name != "UNKNOWN" && !name.is_empty() => Some(name),
        _ => id.map(|id| id.to_string()),
    }
}

fn decode_base64(
    section: &RawSection<'_>,
    line: usize,
    text: &str,
    value: &str,
) -> Result<Vec<u8>, FactParseError> {
    base64::engine::general_purpose::STANDARD
        .decode(value.trim())
        .map_err(|_| malformed(section, line, "invalid base64", text))
}

/// `passwd <getent passwd line>` and `groups <id -nG>`; no passwd line means no user.
fn parse_user(section: &RawSection<'_>, name: &str) -> Result<Option<UserFact>, FactParseError> {
    let mut passwd: Option<(usize, &str)> = None;
    let mut groups: Vec<String> = Vec::new();
    for &(line, text) in &section.body {
        match key_value(text) {
            ("", "") => {}
            ("passwd", value) => passwd = Some((line, value)),
            ("groups", value) => {
                // id lists the primary group first; only the others are supplementary.
                let mut names = value.split_whitespace();
                let primary = names.next().unwrap_or_default();
                groups = names
                    .filter(|g| *g != primary)
                    .map(str::to_string)
                    .collect();
                groups.sort();
                groups.dedup();
            }
            _ => return Err(malformed(section, line, "unexpected line", text)),
        }
    }
    let Some((line, entry)) = passwd else {
        return Ok(None);
    };
    let fields: Vec<&str> = entry.split(':').collect();
    let [user, _, uid, gid, _, home, shell] = fields[..] else {
        return Err(malformed(section, line, "expected 7 passwd fields", entry));
    };
    // getent looks an all-digit name up as a uid; that finds some other user, not this one.
    if user != name {
        return Ok(None);
    }
    Ok(Some(UserFact {
        uid: parse_num(section, line, entry, uid)?,
        gid: parse_num(section, line, entry, gid)?,
        home: home.to_string(),
        shell: shell.to_string(),
        groups,
    }))
}

/// `group <getent group line>`; no line means no group.
fn parse_group(section: &RawSection<'_>, name: &str) -> Result<Option<GroupFact>, FactParseError> {
    let mut entry: Option<(usize, &str)> = None;
    for &(line, text) in &section.body {
        match key_value(text) {
            ("", "") => {}
            ("group", value) => entry = Some((line, value)),
            _ => return Err(malformed(section, line, "unexpected line", text)),
        }
    }
    let Some((line, entry)) = entry else {
        return Ok(None);
    };
    let fields: Vec<&str> = entry.split(':').collect();
    let [group, _, gid, members] = fields[..] else {
        return Err(malformed(section, line, "expected 4 group fields", entry));
    };
    // As for users, an all-digit name is looked up as a gid.
    if group != name {
        return Ok(None);
    }
    let mut members: Vec<String> = members
        .split(',')
        .filter(|m| !m.is_empty())
        .map(str::to_string)
        .collect();
    members.sort();
    members.dedup();
    Ok(Some(GroupFact {
        gid: parse_num(section, line, entry, gid)?,
        members,
    }))
}

/// `systemctl show` prints one block of `Key=Value` lines per unit, in argument order,
/// separated by blank lines. When the block count does not match (systemctl failed part
/// way, or printed nothing because systemd is not running) blocks are matched by `Id`
/// instead, and units without a block get empty states.
fn parse_services(
    section: &RawSection<'_>,
    names: &[&str],
    facts: &mut HostFacts,
) -> Result<(), FactParseError> {
    let mut blocks: Vec<Vec<(&str, &str)>> = Vec::new();
    let mut current: Vec<(&str, &str)> = Vec::new();
    for &(line, text) in &section.body {
        if text.trim().is_empty() {
            if !current.is_empty() {
                blocks.push(std::mem::take(&mut current));
            }
            continue;
        }
        match text.split_once('=') {
            Some(pair) => current.push(pair),
            None => return Err(malformed(section, line, "expected Key=Value", text)),
        }
    }
    if !current.is_empty() {
        blocks.push(current);
    }
    let get = |block: &[(&str, &str)], key: &str| -> String {
        block
            .iter()
            .find(|(k, _)| *k == key)
            .map(|(_, v)| v.trim().to_string())
            .unwrap_or_default()
    };
    for (i, name) in names.iter().enumerate() {
        let block = if blocks.len() == names.len() {
            Some(&blocks[i])
        } else {
            blocks.iter().find(|b| get(b, "Id") == *name)
        };
        let fact = match block {
            Some(block) => ServiceFact {
                load_state: get(block, "LoadState"),
                active_state: get(block, "ActiveState"),
                unit_file_state: get(block, "UnitFileState"),
            },
            None => ServiceFact::default(),
        };
        facts.services.insert(name.to_string(), fact);
    }
    Ok(())
}

fn parse_guard(section: &RawSection<'_>) -> Result<bool, FactParseError> {
    let mut status: Option<i32> = None;
    for &(line, text) in &section.body {
        match key_value(text) {
            ("", "") => {}
            ("status", value) => status = Some(parse_num(section, line, text, value)?),
            _ => return Err(malformed(section, line, "unexpected line", text)),
        }
    }
    status
        .map(|s| s == 0)
        .ok_or_else(|| missing_line(section, "status"))
}

/// Stands for a directory entry whose name cannot travel exactly as text (it holds a
/// newline, or bytes that are not UTF-8 and were decoded as U+FFFD).
pub const UNNAMEABLE: &str = "\u{FFFD}";

fn parse_dir(section: &RawSection<'_>) -> Result<Option<Vec<String>>, FactParseError> {
    let mut state: Option<bool> = None;
    let mut entries = Vec::new();
    for &(line, text) in &section.body {
        match key_value(text) {
            ("", "") => {}
            // A name with a newline: kept as one kiln cannot name exactly (U+FFFD, like a
            // name that is not UTF-8), so that a purge is decided on the host.
            ("odd", _) => entries.push(UNNAMEABLE.to_string()),
            ("state", "dir") => state = Some(true),
            ("state", "none") => state = Some(false),
            ("entry", name) if !name.is_empty() => entries.push(name.to_string()),
            _ => return Err(malformed(section, line, "unexpected line", text)),
        }
    }
    match state {
        Some(true) => {
            entries.sort();
            Ok(Some(entries))
        }
        Some(false) => Ok(None),
        None => Err(missing_line(section, "state")),
    }
}

fn parse_pending(section: &RawSection<'_>) -> Result<Vec<String>, FactParseError> {
    let mut handlers = Vec::new();
    for &(line, text) in &section.body {
        match key_value(text) {
            ("", "") => {}
            ("handler", value) if !value.is_empty() => handlers.push(value.to_string()),
            _ => return Err(malformed(section, line, "unexpected line", text)),
        }
    }
    // The shell's glob order depends on its locale; byte order does not.
    handlers.sort();
    Ok(handlers)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::facts::script::fact_script;
    use std::io::Write;
    use std::process::{Command, Stdio};

    const OTHER_SHA: &str = "0000000000000000000000000000000000000000000000000000000000000000";
    const HELLO_SHA: &str = "5891b5b522d5df086d0ff0b110fbd9d21bb4fc7163af34d08286a2e846f6be03";

    fn path(p: &str, expect: Option<&str>, sensitive: bool) -> FactQuery {
        FactQuery::Path {
            path: p.into(),
            expect_sha256: expect.map(String::from),
            sensitive,
        }
    }

    fn package(name: &str) -> FactQuery {
        FactQuery::Package { name: name.into() }
    }

    /// The queries whose script produced [`CAPTURE`], in a shuffled order on purpose:
    /// the parser must sort them the way the script did.
    fn capture_queries() -> Vec<FactQuery> {
        let f = |name: &str| format!("/tmp/kiln-fixture/{name}");
        vec![
            FactQuery::Pending,
            package("dpkg"),
            package("kiln-no-such-package"),
            package("kiln-fixture-rc"),
            package("kiln-fixture-held"),
            FactQuery::AptLists,
            path(&f("plain.conf"), Some(HELLO_SHA), false),
            path(&f("differs.conf"), Some(OTHER_SHA), false),
            path(&f("secret.key"), Some(OTHER_SHA), true),
            path(&f("blob.bin"), Some(OTHER_SHA), false),
            path(&f("absent"), Some(OTHER_SHA), false),
            path(&f("dir"), None, false),
            path(&f("link"), None, false),
            path(&f("suid"), None, false),
            FactQuery::User {
                name: "postgres".into(),
            },
            FactQuery::User {
                name: "root".into(),
            },
            FactQuery::User {
                name: "kiln-nobody".into(),
            },
            FactQuery::Group {
                name: "ssl-cert".into(),
            },
            FactQuery::Group {
                name: "kiln-nogroup".into(),
            },
            FactQuery::Guard {
                command: "test -d /tmp/kiln-fixture/dir".into(),
                sensitive_of: None,
            },
            FactQuery::Guard {
                command: "grep -q nomatch /tmp/kiln-fixture/plain.conf".into(),
                sensitive_of: None,
            },
        ]
    }

    /// Output of the fact script for [`capture_queries`], captured on a Debian 12 machine
    /// with two throw-away packages built for it (one removed to `rc`, one held).
    const CAPTURE: &str = "\
        @@kiln:begin\n\
        @@kiln:packages\n\
        dpkg\tamd64\t1.21.22\tii\x20\n\
        kiln-fixture-held\tall\t1.2-3\thi\x20\n\
        kiln-fixture-rc\tall\t1.2-3\trc\x20\n\
        @@kiln:apt-lists\n\
        now 1795355498\n\
        arch amd64\n\
        list 1795355062.0000000000 deb.debian.org_debian_dists_bookworm_InRelease\n\
        list 1795355062.0000000000 deb.debian.org_debian_dists_bookworm_main_binary-amd64_Packages.lz4\n\
        list 1754661485.0000000000 deb.debian.org_debian_dists_bookworm-updates_InRelease\n\
        list 1754661485.0000000000 deb.debian.org_debian_dists_bookworm-updates_main_binary-amd64_Packages.lz4\n\
        release deb.debian.org_debian_dists_bookworm_InRelease:Architectures: all amd64 arm64\n\
        release deb.debian.org_debian_dists_bookworm_InRelease:Components: main contrib non-free-firmware non-free\n\
        source list L2V0Yy9hcHQvc291cmNlcy5saXN0 \n\
        source sources L2V0Yy9hcHQvc291cmNlcy5saXN0LmQvZGViaWFuLnNvdXJjZXM= VHlwZXM6IGRlYgpVUklzOiBodHRwOi8vZGViLmRlYmlhbi5vcmcvZGViaWFuClN1aXRlczogYm9va3dvcm0gYm9va3dvcm0tdXBkYXRlcwpDb21wb25lbnRzOiBtYWluCg==\n\
        @@kiln:path 5 /tmp/kiln-fixture/absent\n\
        missing\n\
        @@kiln:path 6 /tmp/kiln-fixture/blob.bin\n\
        size 9\n\
        mode 81a4\n\
        uid 0\n\
        gid 0\n\
        owner root\n\
        group root\n\
        ctime 1795355491.351509126\n\
        sha256 d84a72bd7042f6281ce2fae7560880dde4b3ec138d5aa40a08815d463b39c183\n\
        matches no\n\
        content //5iaW5hcnkK\n\
        @@kiln:path 7 /tmp/kiln-fixture/differs.conf\n\
        size 11\n\
        mode 81a0\n\
        uid 0\n\
        gid 103\n\
        owner root\n\
        group ssl-cert\n\
        ctime 1795355491.349908112\n\
        sha256 ae7ea37f433fb97005c5025e69e5fcefe0ea3c808e5d3a1dd0c3499958dfe539\n\
        matches no\n\
        content bGlzdGVuIDgwOwo=\n\
        @@kiln:path 8 /tmp/kiln-fixture/dir\n\
        size 4096\n\
        mode 41e8\n\
        uid 0\n\
        gid 0\n\
        owner root\n\
        group root\n\
        ctime 1795355491.351509126\n\
        @@kiln:path 9 /tmp/kiln-fixture/link\n\
        size 10\n\
        mode a1ff\n\
        uid 0\n\
        gid 0\n\
        owner root\n\
        group root\n\
        ctime 1795355491.351509126\n\
        target cGxhaW4uY29uZg==\n\
        @@kiln:path 10 /tmp/kiln-fixture/plain.conf\n\
        size 6\n\
        mode 81a4\n\
        uid 0\n\
        gid 0\n\
        owner root\n\
        group root\n\
        ctime 1795355491.346525914\n\
        sha256 5891b5b522d5df086d0ff0b110fbd9d21bb4fc7163af34d08286a2e846f6be03\n\
        matches yes\n\
        @@kiln:path 11 /tmp/kiln-fixture/secret.key\n\
        size 7\n\
        mode 8180\n\
        uid 0\n\
        gid 0\n\
        owner root\n\
        group root\n\
        ctime 1795355491.351509126\n\
        matches no\n\
        @@kiln:path 12 /tmp/kiln-fixture/suid\n\
        size 10\n\
        mode 89ed\n\
        uid 0\n\
        gid 0\n\
        owner root\n\
        group root\n\
        ctime 1795355491.357167161\n\
        sha256 a8076d3d28d21e02012b20eaf7dbf75409a6277134439025f282e368e3305abf\n\
        @@kiln:user 13 kiln-nobody\n\
        @@kiln:user 14 postgres\n\
        passwd postgres:x:101:104:PostgreSQL administrator,,,:/var/lib/postgresql:/bin/bash\n\
        groups postgres ssl-cert\n\
        @@kiln:user 15 root\n\
        passwd root:x:0:0:root:/root:/bin/bash\n\
        groups root\n\
        @@kiln:group 16 kiln-nogroup\n\
        @@kiln:group 17 ssl-cert\n\
        group ssl-cert:x:103:postgres\n\
        @@kiln:guard 18\n\
        status 1\n\
        @@kiln:guard 19\n\
        status 0\n\
        @@kiln:pending\n\
        handler reload@nginx.service\n\
        handler restart@getty@tty1.service\n\
        @@kiln:end\n\
";
    fn captured() -> HostFacts {
        parse_facts(&capture_queries(), CAPTURE).expect("capture parses")
    }

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
    fn packages_installed_held_removed_and_unknown() {
        let facts = captured();
        let pkg = |name: &str| facts.packages[name].clone();
        assert_eq!(
            pkg("dpkg"),
            PackageFact {
                version: Some("1.21.22".into()),
                status: "ii".into()
            }
        );
        assert_eq!(
            pkg("kiln-fixture-held"),
            PackageFact {
                version: Some("1.2-3".into()),
                status: "hi".into()
            }
        );
        let rc = pkg("kiln-fixture-rc");
        assert_eq!(rc.status, "rc");
        assert_eq!(rc.version, None);
        assert!(!rc.installed());
        assert_eq!(pkg("kiln-no-such-package"), PackageFact::default());
        assert_eq!(facts.packages.len(), 4);
    }

    #[test]
    fn arch_qualified_package_names_match_their_architecture() {
        let queries = [
            package("libc6:i386"),
            package("libc6:amd64"),
            package("libc6"),
        ];
        let output = "@@kiln:begin\n@@kiln:packages\n\
            libc6\tamd64\t2.36-9\tii \nlibc6\ti386\t2.36-9\trc \n@@kiln:end\n";
        let facts = parse_facts(&queries, output).unwrap();
        assert_eq!(facts.packages["libc6:i386"].status, "rc");
        assert_eq!(facts.packages["libc6:amd64"].status, "ii");
        assert_eq!(facts.packages["libc6"].version.as_deref(), Some("2.36-9"));
    }

    #[test]
    fn apt_lists_section_is_read_raw() {
        // The decision (refresh or not, and why) is tested in facts::apt_lists; here the
        // section is found and handed over whole.
        let lists = captured().apt_lists.unwrap();
        assert_eq!(lists.now, 1795355498);
        assert_eq!(lists.stamp, None);
        assert_eq!(lists.lists.len(), 4);
        let suites: Vec<&str> = lists.sources.iter().map(|s| s.suite.as_str()).collect();
        assert_eq!(suites, ["bookworm", "bookworm-updates"]);
        assert!(lists
            .refresh_reason(u64::MAX)
            .unwrap()
            .contains("no update-success stamp"));
        let bad = parse_facts(
            &[FactQuery::AptLists],
            "@@kiln:begin\n@@kiln:apt-lists\nnow 5\nmissing-list\n@@kiln:end\n",
        );
        assert!(
            matches!(bad, Err(FactParseError::Malformed { .. })),
            "{bad:?}"
        );
    }

    #[test]
    fn guards() {
        let facts = captured();
        assert!(facts.guards["test -d /tmp/kiln-fixture/dir"]);
        assert!(!facts.guards["grep -q nomatch /tmp/kiln-fixture/plain.conf"]);
    }

    #[test]
    fn pending_handlers() {
        assert_eq!(
            captured().pending,
            ["reload@nginx.service", "restart@getty@tty1.service"]
        );
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
            };
            assert!(present, "no entry for {query:?}");
        }
    }

    fn services() -> Vec<FactQuery> {
        ["nginx.service", "nope.service"]
            .map(|name| FactQuery::Service { name: name.into() })
            .to_vec()
    }

    #[test]
    fn services_loaded_and_not_found() {
        // `systemctl show` output as systemd 252 (Debian 12) prints it; PID 1 on the
        // capture machine was not systemd, so this block is written by hand.
        let output = "@@kiln:begin\n@@kiln:services\n\
            Id=nginx.service\nLoadState=loaded\nActiveState=active\nUnitFileState=enabled\n\n\
            Id=nope.service\nLoadState=not-found\nActiveState=inactive\nUnitFileState=\n\
            @@kiln:end\n";
        let facts = parse_facts(&services(), output).unwrap();
        let nginx = &facts.services["nginx.service"];
        assert!(nginx.exists() && nginx.running() && nginx.enabled());
        assert_eq!(
            facts.services["nope.service"],
            ServiceFact {
                load_state: "not-found".into(),
                active_state: "inactive".into(),
                unit_file_state: String::new(),
            }
        );
        assert!(!facts.services["nope.service"].exists());
    }

    #[test]
    fn services_without_systemd_have_empty_states() {
        let output = "@@kiln:begin\n@@kiln:services\n@@kiln:end\n";
        let facts = parse_facts(&services(), output).unwrap();
        assert_eq!(facts.services.len(), 2);
        assert!(facts
            .services
            .values()
            .all(|s| *s == ServiceFact::default()));
    }

    #[test]
    fn services_are_matched_by_id_when_blocks_are_missing() {
        let output = "@@kiln:begin\n@@kiln:services\n\
            Id=nope.service\nLoadState=masked\nActiveState=inactive\nUnitFileState=masked\n\
            @@kiln:end\n";
        let facts = parse_facts(&services(), output).unwrap();
        assert_eq!(facts.services["nginx.service"], ServiceFact::default());
        assert_eq!(facts.services["nope.service"].load_state, "masked");
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

    /// Runs `script` with `sh -s`, the way kiln runs it on a host.
    fn run_sh(script: &str) -> String {
        let mut child = Command::new("sh")
            .arg("-s")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("spawn sh");
        child
            .stdin
            .take()
            .unwrap()
            .write_all(script.as_bytes())
            .unwrap();
        let out = child.wait_with_output().unwrap();
        assert!(out.status.success());
        String::from_utf8(out.stdout).expect("utf-8 output")
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
