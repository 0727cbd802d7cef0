//! The `path` fact: `lstat` of a path; for regular files also the sha256, and the content
//! when it differs from the expectation and may be shown.
//!
//! Section `@@kiln:path <index> <path>`, printed by the prelude's `kiln_path_next`
//! (`src/shell/facts_prelude.sh`) from what `kiln_paths_read` read for every path before
//! the first path section (one `stat`, one `sha256sum`; when either fails, each path is
//! read on its own by `kiln_path`, with the same output): either `missing` (nothing at the path, not even a
//! dangling symlink), or the lines of one `stat` call (symlinks are not followed):
//! `size <bytes>`, `mode <st_mode in hex>` (type and permission bits; the parser turns
//! them into the kind and four octal digits), `uid <n>`, `gid <n>`,
//! `owner <name or UNKNOWN>`, `group <name or UNKNOWN>`, `ctime <seconds>.<nanoseconds>`
//! (`stat %.9Z`, stable and timezone-free). Then for a symlink `target <base64>` (of the
//! `readlink` result); for a regular file `sha256 <hex>` unless the query is sensitive,
//! `matches yes|no` when an expected sha256 was sent (compared on the host), and
//! `content <base64, one line>` when it does not match, the file is not sensitive and is
//! at most [`MAX_CONTENT_BYTES`]. A sensitive file's hash never leaves the host.
//! `unreadable` anywhere in the section means the path exists but could not be stat'ed or
//! read.

use serde::{Deserialize, Serialize};

use super::{not_mine, push_words, FactKind};
use crate::facts::section::{
    decode_base64, key_value, malformed, missing_line, parse_num, FactParseError, RawSection,
};
use crate::facts::{FactQuery, FactRules, HostFacts};
use crate::shell::quote as sh_quote;

/// Largest file (bytes) whose differing content is sent back for a diff.
pub const MAX_CONTENT_BYTES: u64 = 262_144;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PathKind {
    Missing,
    File,
    Directory,
    Symlink,
    Other,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PathFact {
    pub kind: PathKind,
    pub owner: Option<String>,
    pub group: Option<String>,
    /// Permission bits as four octal digits, e.g. "0644".
    pub mode: Option<String>,
    pub size: Option<u64>,
    /// sha256 of a regular file's content; never collected for sensitive files.
    pub sha256: Option<String>,
    /// Whether the content equals the expected one (when an expectation was sent).
    pub matches: Option<bool>,
    /// Current content when it differs from the expectation (small, non-sensitive files).
    pub content: Option<String>,
    /// Target of a symlink.
    pub link_target: Option<String>,
    /// Change time (seconds.nanoseconds) — lets a sensitive file's fingerprint move when it
    /// is rewritten without revealing anything about its content.
    pub ctime: Option<String>,
}

impl PathFact {
    pub fn missing() -> PathFact {
        PathFact {
            kind: PathKind::Missing,
            owner: None,
            group: None,
            mode: None,
            size: None,
            sha256: None,
            matches: None,
            content: None,
            link_target: None,
            ctime: None,
        }
    }
}

pub(crate) struct Path;

/// `(path, expected sha256, sensitive)` of a path query.
fn parts(q: &FactQuery) -> (&str, Option<&str>, bool) {
    match q {
        FactQuery::Path {
            path,
            expect_sha256,
            sensitive,
        } => (path, expect_sha256.as_deref(), *sensitive),
        other => not_mine("path", other),
    }
}

impl FactKind for Path {
    fn section(&self) -> &'static str {
        "path"
    }

    fn key(&self, q: &FactQuery) -> String {
        format!("path:{}", parts(q).0)
    }

    fn label<'a>(&self, q: &'a FactQuery) -> Option<&'a str> {
        Some(parts(q).0)
    }

    /// Several queries for the same path are merged into one, because the facts hold one
    /// entry per path: the merged query is sensitive when any of them is (so a secret is
    /// never exposed by a second, careless query), and expects the first expected sha256
    /// in sorted order.
    fn merge(&self, prev: &mut FactQuery, next: &FactQuery) -> bool {
        if let (
            FactQuery::Path {
                path: prev_path,
                expect_sha256: prev_expect,
                sensitive: prev_sensitive,
            },
            FactQuery::Path {
                path,
                expect_sha256,
                sensitive,
            },
        ) = (prev, next)
        {
            if prev_path == path {
                *prev_sensitive |= *sensitive;
                if prev_expect.is_none() {
                    prev_expect.clone_from(expect_sha256);
                }
                return true;
            }
        }
        false
    }

    /// One `stat` for every path and one `sha256sum` for every regular, non-sensitive
    /// file (`kiln_paths_read`), instead of two processes per path: on a web host with
    /// ninety managed files that was most of a no-op plan's time on the host.
    fn read_ahead(&self, queries: &[&FactQuery], s: &mut String) {
        s.push_str("\tkiln_paths_read ");
        let flags: String = queries
            .iter()
            .map(|q| if parts(q).2 { '1' } else { '0' })
            .collect();
        s.push_str(&sh_quote(&flags));
        push_words(s, queries.iter().map(|q| parts(q).0));
        s.push('\n');
    }

    fn script(&self, queries: &[&FactQuery], s: &mut String) {
        let (path, expect, sensitive) = parts(queries[0]);
        let expect = expect.map(|e| e.trim().to_ascii_lowercase());
        s.push_str("\tkiln_path_next ");
        s.push_str(&sh_quote(path));
        s.push(' ');
        s.push_str(&sh_quote(expect.as_deref().unwrap_or("")));
        s.push_str(if sensitive { " 1\n" } else { " 0\n" });
    }

    fn parse(
        &self,
        queries: &[&FactQuery],
        section: &RawSection<'_>,
        facts: &mut HostFacts,
    ) -> Result<(), FactParseError> {
        let (path, _, sensitive) = parts(queries[0]);
        let fact = parse_path(section, path, sensitive)?;
        facts.paths.insert(path.to_string(), fact);
        Ok(())
    }

    fn fact_json(
        &self,
        facts: &HostFacts,
        q: &FactQuery,
        _: &FactRules,
    ) -> serde_json::Result<serde_json::Value> {
        serde_json::to_value(facts.paths.get(parts(q).0))
    }
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::facts::kinds::fixture::{captured, path as query, run_piped_both, run_sh};
    use crate::facts::parse::parse_facts;
    use crate::facts::script::fact_script;
    use std::collections::BTreeMap;

    fn sha(bytes: &[u8]) -> String {
        use sha2::{Digest, Sha256};
        hex::encode(Sha256::digest(bytes))
    }

    /// A directory with one of everything the path fact tells apart, and the queries for it.
    fn tree() -> (tempfile::TempDir, Vec<FactQuery>, String) {
        let dir = tempfile::tempdir().unwrap();
        let at = |name: &str| dir.path().join(name).to_str().unwrap().to_string();
        std::fs::write(at("same"), "same\n").unwrap();
        std::fs::write(at("changed"), "new\n").unwrap();
        std::fs::write(at("secret"), "hunter2\n").unwrap();
        std::fs::write(at("-n"), "dash\n").unwrap();
        std::fs::write(at("new\nline \\ back"), "odd name\n").unwrap();
        std::fs::write(at("empty"), "").unwrap();
        std::fs::create_dir(at("sub dir")).unwrap();
        std::os::unix::fs::symlink("sub dir", at("link")).unwrap();
        std::os::unix::fs::symlink("nowhere", at("dangling")).unwrap();
        let fifo = std::process::Command::new("mkfifo")
            .arg(at("fifo"))
            .status()
            .unwrap();
        assert!(fifo.success());
        let queries = vec![
            query(&at("same"), Some(&sha(b"same\n")), false),
            query(&at("changed"), Some(&sha(b"old\n")), false),
            query(&at("secret"), Some(&sha(b"old\n")), true),
            query(&at("-n"), None, false),
            query(&at("new\nline \\ back"), Some(&sha(b"other")), false),
            query(&at("empty"), None, false),
            query(&at("sub dir"), None, false),
            query(&at("link"), None, false),
            query(&at("dangling"), None, false),
            query(&at("fifo"), None, false),
            query(&at("absent"), None, false),
        ];
        let secret = at("secret");
        (dir, queries, secret)
    }

    fn read(queries: &[FactQuery], script: &str) -> BTreeMap<String, PathFact> {
        let out = run_sh(script);
        assert!(!out.contains(&sha(b"hunter2\n")), "sensitive hash leaked");
        parse_facts(queries, &out).expect(&out).paths
    }

    /// The script with `extra` run right after the read-ahead of every path.
    fn after_read_ahead(queries: &[FactQuery], extra: &str) -> String {
        let script = fact_script(queries);
        // Right before the first path marker (the read-ahead's own line may hold a
        // newline inside a quoted path).
        let at = script
            .find("\tprintf '%s\\n' '@@kiln:path 0 ")
            .expect("a path section");
        assert!(script[..at].contains("\tkiln_paths_read "));
        format!("{}{extra}{}", &script[..at], &script[at..])
    }

    #[test]
    fn one_stat_and_one_sha256sum_for_every_path() {
        let (_dir, queries, _) = tree();
        let script = fact_script(&queries);
        assert_eq!(script.matches("\tkiln_paths_read ").count(), 1);
        assert_eq!(script.matches("\tkiln_path_next ").count(), queries.len());
        // The read-ahead comes before the first path section's marker.
        let ahead = script.find("\tkiln_paths_read ").unwrap();
        assert!(ahead < script.find("@@kiln:path 0 ").unwrap());
        // The sensitive flags follow the sections' (sorted) order.
        let sorted = crate::facts::script::normalize_queries(&queries);
        let flags: String = sorted
            .iter()
            .map(|q| if parts(q).2 { '1' } else { '0' })
            .collect();
        assert!(script[ahead..].starts_with(&format!("\tkiln_paths_read '{flags}' ")));

        let facts = read(&queries, &script);
        let p = |q: &FactQuery| facts[parts(q).0].clone();
        assert_eq!(p(&queries[0]).matches, Some(true));
        assert_eq!(p(&queries[0]).sha256, Some(sha(b"same\n")));
        assert_eq!(p(&queries[1]).content.as_deref(), Some("new\n"));
        assert_eq!(
            (p(&queries[2]).sha256, p(&queries[2]).matches),
            (None, Some(false))
        );
        assert_eq!(p(&queries[3]).sha256, Some(sha(b"dash\n")));
        // sha256sum escapes a name with a newline or backslash; the hash is still read.
        assert_eq!(p(&queries[4]).sha256, Some(sha(b"odd name\n")));
        assert_eq!(p(&queries[4]).content.as_deref(), Some("odd name\n"));
        assert_eq!(p(&queries[5]).sha256, Some(sha(b"")));
        assert_eq!(p(&queries[6]).kind, PathKind::Directory);
        assert_eq!(p(&queries[7]).link_target.as_deref(), Some("sub dir"));
        assert_eq!(p(&queries[8]).link_target.as_deref(), Some("nowhere"));
        assert_eq!(
            (p(&queries[9]).kind, p(&queries[9]).sha256),
            (PathKind::Other, None)
        );
        assert_eq!(p(&queries[10]), PathFact::missing());
    }

    #[test]
    fn each_path_on_its_own_reads_the_same_facts() {
        let (_dir, queries, _) = tree();
        let batched = read(&queries, &fact_script(&queries));
        // The batched stat failed (a path removed between the test and the stat):
        // every section reads its path with kiln_path.
        let one_by_one = read(&queries, &after_read_ahead(&queries, "\tkiln_pst_ok=0\n"));
        assert_eq!(batched, one_by_one);
        // The batched sha256sum failed (a file unreadable): each file hashed on its own.
        let hashed_apart = read(&queries, &after_read_ahead(&queries, "\tkiln_psum_ok=0\n"));
        assert_eq!(batched, hashed_apart);
    }

    #[test]
    fn a_sensitive_files_hash_is_never_kept() {
        let (_dir, queries, secret) = tree();
        let script = after_read_ahead(&queries, "\tprintf '%s' \"$kiln_psum\" >&2\n");
        let mut sh = std::process::Command::new("sh");
        sh.arg("-s");
        let (_, kept) = run_piped_both(sh, &script);
        assert!(kept.contains(&sha(b"same\n")), "{kept}");
        assert!(!kept.contains(&sha(b"hunter2\n")), "{kept}");
        assert!(!kept.contains(&secret), "{kept}");
    }

    #[test]
    fn captured_paths() {
        let facts = captured();
        let p = |name: &str| facts.path(&format!("/tmp/kiln-fixture/{name}"));
        assert_eq!(p("absent"), PathFact::missing());
        let plain = p("plain.conf");
        assert_eq!((plain.kind, plain.matches), (PathKind::File, Some(true)));
        assert_eq!(plain.mode.as_deref(), Some("0644"));
        assert_eq!(plain.content, None);
        let differs = p("differs.conf");
        assert_eq!(differs.matches, Some(false));
        assert_eq!(differs.content.as_deref(), Some("listen 80;\n"));
        assert_eq!(differs.group.as_deref(), Some("ssl-cert"));
        // Content that is not UTF-8 is not kept as text; the mismatch still is.
        let blob = p("blob.bin");
        assert_eq!((blob.matches, blob.content), (Some(false), None));
        let secret = p("secret.key");
        assert_eq!(secret.matches, Some(false));
        assert_eq!((secret.sha256, secret.content), (None, None));
        assert_eq!(p("dir").kind, PathKind::Directory);
        let link = p("link");
        assert_eq!(link.kind, PathKind::Symlink);
        assert_eq!(link.link_target.as_deref(), Some("plain.conf"));
        assert_eq!(p("suid").mode.as_deref(), Some("4755"));
    }
}
