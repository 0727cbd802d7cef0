//! The `dir` fact: the names of a directory's entries (for `directory` with
//! `purge = true`).
//!
//! Section `@@kiln:dir <index> <path>`: `state dir` and one `entry <name>` line per entry
//! (dot-files included), or `state none` when the path is not a directory (a symlink to
//! one is not). A name with a newline is reported as `odd`: kiln cannot name it exactly,
//! so it is kept as [`UNNAMEABLE`] and a purge of it is decided on the host.

use super::{not_mine, FactKind};
use crate::facts::section::{key_value, malformed, missing_line, FactParseError, RawSection};
use crate::facts::{FactQuery, FactRules, HostFacts};
use crate::shell::quote as sh_quote;

/// Stands for a directory entry whose name cannot travel exactly as text (it holds a
/// newline, or bytes that are not UTF-8 and were decoded as U+FFFD).
pub const UNNAMEABLE: &str = "\u{FFFD}";

pub(crate) struct DirList;

fn path(q: &FactQuery) -> &str {
    match q {
        FactQuery::DirList { path } => path,
        other => not_mine("dir", other),
    }
}

impl FactKind for DirList {
    fn section(&self) -> &'static str {
        "dir"
    }

    fn key(&self, q: &FactQuery) -> String {
        format!("dir:{}", path(q))
    }

    fn label<'a>(&self, q: &'a FactQuery) -> Option<&'a str> {
        Some(path(q))
    }

    fn script(&self, queries: &[&FactQuery], s: &mut String) {
        // One `entry NAME` line per entry; names with a newline are reported as `odd`
        // (they cannot be managed by kiln and are left alone).
        s.push_str("\tkiln_d=");
        s.push_str(&sh_quote(path(queries[0])));
        s.push('\n');
        s.push_str("\tif [ -d \"$kiln_d\" ] && [ ! -L \"$kiln_d\" ]; then\n");
        s.push_str("\t\tprintf 'state dir\\n'\n");
        s.push_str("\t\tfor kiln_f in \"$kiln_d\"/* \"$kiln_d\"/.[!.]* \"$kiln_d\"/..?*; do\n");
        s.push_str("\t\t\t[ -e \"$kiln_f\" ] || [ -L \"$kiln_f\" ] || continue\n");
        s.push_str("\t\t\tkiln_f=${kiln_f##*/}\n");
        s.push_str("\t\t\tcase $kiln_f in *\"$kiln_nl\"*) printf 'odd\\n'; continue ;; esac\n");
        s.push_str("\t\t\tprintf 'entry %s\\n' \"$kiln_f\"\n");
        s.push_str("\t\tdone\n");
        s.push_str("\telse\n\t\tprintf 'state none\\n'\n\tfi\n");
    }

    fn parse(
        &self,
        queries: &[&FactQuery],
        section: &RawSection<'_>,
        facts: &mut HostFacts,
    ) -> Result<(), FactParseError> {
        let entries = parse_dir(section)?;
        facts.dirs.insert(path(queries[0]).to_string(), entries);
        Ok(())
    }

    fn fact_json(
        &self,
        facts: &HostFacts,
        q: &FactQuery,
        _: &FactRules,
    ) -> serde_json::Result<serde_json::Value> {
        serde_json::to_value(facts.dirs.get(path(q)))
    }
}

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

#[cfg(test)]
mod tests {
    use super::UNNAMEABLE;
    use crate::facts::kinds::fixture::run_sh;
    use crate::facts::script::fact_script;
    use crate::facts::FactQuery;

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
            ["..dots", ".hidden", "a.conf", "dangling", "sub", UNNAMEABLE]
        );
        assert_eq!(facts.dirs[&format!("{p}/a.conf")], None);
    }
}
