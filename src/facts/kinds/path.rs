//! The `path` fact: `lstat` of a path; for regular files also the sha256, and the content
//! when it differs from the expectation and may be shown.
//!
//! Section `@@kiln:path <index> <path>`, printed by the prelude's `kiln_path`
//! (`src/shell/facts_prelude.sh`): either `missing` (nothing at the path, not even a
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

use super::{not_mine, FactKind};
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

    fn script(&self, queries: &[&FactQuery], s: &mut String) {
        let (path, expect, sensitive) = parts(queries[0]);
        let expect = expect.map(|e| e.trim().to_ascii_lowercase());
        s.push_str("\tkiln_path ");
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
    use crate::facts::kinds::fixture::captured;

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
