//! Anonymisation rules: what `kiln restore DST --from-env SRC` (and `kiln clone --with-data`)
//! does to SRC's data before DST can read it. A TOML file:
//!
//! ```toml
//! media = "placeholder"            # copy (default) | placeholder | none
//!
//! [tables."app.customers"]
//! columns = { email = "email", name = "name", phone = "phone", token = "hash", notes = "null" }
//! drop = [{ column = "status", equals = "deleted" }, { column = "email", like = "%@internal.example" }]
//!
//! [tables."app.sessions"]
//! truncate = true
//! ```
//!
//! Checked here (file, line and key on every error) before any host is contacted; the
//! backup tool checks the names again against the restored tables. Names are plain SQL
//! identifiers only: a rule can never become SQL of its own.

use std::path::{Path, PathBuf};

use indexmap::IndexMap;
use serde::Deserialize;

use super::source::join_key;
use super::{parse_typed, SourceFile, SpecError};

/// What a column becomes. Fakes are a function of HMAC-SHA256(key, value): deterministic
/// for one key, not reversible without it.
pub const ACTIONS: [&str; 6] = ["keep", "name", "email", "phone", "hash", "null"];
pub const MEDIA: [&str; 3] = ["copy", "placeholder", "none"];

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RulesSpec {
    #[serde(default)]
    media: Option<String>,
    #[serde(default)]
    tables: IndexMap<String, TableSpec>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TableSpec {
    #[serde(default)]
    columns: IndexMap<String, String>,
    #[serde(default)]
    truncate: bool,
    #[serde(default)]
    drop: Vec<DropSpec>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct DropSpec {
    column: String,
    #[serde(default)]
    equals: Option<toml::Value>,
    #[serde(default)]
    like: Option<String>,
}

/// Checked rules, as the backup tool takes them (`json`).
#[derive(Debug, Clone)]
pub struct Rules {
    pub file: PathBuf,
    pub json: serde_json::Value,
    /// Tables with a rule.
    pub tables: usize,
    pub media: String,
}

/// A plain SQL identifier as MariaDB writes one unquoted (and at most 64 characters).
fn ident(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '$')
}

pub fn load(path: &Path) -> Result<Rules, SpecError> {
    let file = SourceFile::read(path)?;
    let spec: RulesSpec = parse_typed(&file)?;
    let media = spec.media.clone().unwrap_or_else(|| "copy".into());
    if !MEDIA.contains(&media.as_str()) {
        return Err(SpecError::at_key(
            &file,
            "media",
            format!("`{media}`: expected one of {}", MEDIA.join(", ")),
        ));
    }
    let mut tables = vec![];
    for (name, t) in &spec.tables {
        let key = join_key("tables", name);
        let (db, table) = match name.split_once('.') {
            Some((d, t)) if ident(d) && ident(t) => (d, t),
            _ => {
                return Err(SpecError::at_key(
                    &file,
                    &key,
                    format!("`{name}`: a table is named `database.table`, each a plain SQL name (letters, digits, `_`, `$`)"),
                ))
            }
        };
        if t.truncate && (!t.columns.is_empty() || !t.drop.is_empty()) {
            return Err(SpecError::at_key(
                &file,
                &join_key(&key, "truncate"),
                "a truncated table has no rows left for `columns` or `drop`",
            ));
        }
        let mut columns = serde_json::Map::new();
        for (c, action) in &t.columns {
            let ck = join_key(&join_key(&key, "columns"), c);
            if !ident(c) {
                return Err(SpecError::at_key(
                    &file,
                    &ck,
                    format!("`{c}`: not a plain SQL column name"),
                ));
            }
            if !ACTIONS.contains(&action.as_str()) {
                return Err(SpecError::at_key(
                    &file,
                    &ck,
                    format!("`{action}`: expected one of {}", ACTIONS.join(", ")),
                ));
            }
            columns.insert(c.clone(), serde_json::Value::String(action.clone()));
        }
        let mut drops = vec![];
        for (i, d) in t.drop.iter().enumerate() {
            let dk = format!("{}[{i}]", join_key(&key, "drop"));
            if !ident(&d.column) {
                return Err(SpecError::at_key(
                    &file,
                    &join_key(&dk, "column"),
                    format!("`{}`: not a plain SQL column name", d.column),
                ));
            }
            let cond = match (&d.equals, &d.like) {
                (Some(toml::Value::String(s)), None) => serde_json::json!({"equals": s}),
                (Some(toml::Value::Integer(n)), None) => serde_json::json!({"equals": n}),
                (Some(_), None) => {
                    return Err(SpecError::at_key(
                        &file,
                        &join_key(&dk, "equals"),
                        "`equals` takes a string or an integer",
                    ))
                }
                (None, Some(l)) => serde_json::json!({"like": l}),
                _ => {
                    return Err(SpecError::at_key(
                        &file,
                        &dk,
                        "a drop rule has exactly one of `equals` or `like`",
                    ))
                }
            };
            let mut cond = cond;
            cond["column"] = serde_json::Value::String(d.column.clone());
            drops.push(cond);
        }
        tables.push(serde_json::json!({
            "db": db, "table": table, "columns": columns,
            "truncate": t.truncate, "drop": drops,
        }));
    }
    Ok(Rules {
        file: path.to_path_buf(),
        tables: tables.len(),
        json: serde_json::json!({"media": media, "tables": tables}),
        media,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(text: &str) -> (tempfile::TempDir, PathBuf) {
        let d = tempfile::tempdir().expect("tempdir");
        let p = d.path().join("rules.toml");
        std::fs::write(&p, text).expect("write");
        (d, p)
    }

    #[test]
    fn rules_become_the_tool_s_json() {
        let (_d, p) = write(
            "media = \"placeholder\"\n[tables.\"app.customers\"]\ncolumns = { email = \"email\", id = \"keep\" }\ndrop = [{ column = \"status\", equals = \"deleted\" }, { column = \"n\", equals = 3 }]\n[tables.\"app.sessions\"]\ntruncate = true\n",
        );
        let r = load(&p).expect("valid");
        assert_eq!(r.tables, 2);
        assert_eq!(r.media, "placeholder");
        let t = &r.json["tables"][0];
        assert_eq!(t["db"], "app");
        assert_eq!(t["table"], "customers");
        assert_eq!(t["columns"]["email"], "email");
        assert_eq!(t["drop"][0]["equals"], "deleted");
        assert_eq!(t["drop"][1]["equals"], 3);
        assert_eq!(r.json["tables"][1]["truncate"], true);
    }

    #[test]
    fn bad_rules_name_line_and_key() {
        let cases = [
            (
                "[tables.\"app.c\"]\ncolumns = { email = \"shuffle\" }\n",
                2,
                "tables.\"app.c\".columns.email",
                "expected one of",
            ),
            (
                "[tables.\"app\"]\ntruncate = true\n",
                1,
                "tables.app",
                "database.table",
            ),
            (
                "[tables.\"app.c; DROP TABLE x\"]\ntruncate = true\n",
                1,
                "tables",
                "plain SQL name",
            ),
            (
                "[tables.\"app.c\"]\ncolumns = { \"e`mail\" = \"email\" }\n",
                2,
                "columns",
                "not a plain SQL column",
            ),
            ("media = \"all\"\n", 1, "media", "copy, placeholder, none"),
            (
                "[tables.\"app.c\"]\ncolunms = { email = \"email\" }\n",
                2,
                "colunms",
                "unknown field",
            ),
            (
                "[tables.\"app.c\"]\ndrop = [{ column = \"s\" }]\n",
                2,
                "drop[0]",
                "exactly one of",
            ),
            (
                "[tables.\"app.c\"]\ntruncate = true\ncolumns = { a = \"null\" }\n",
                2,
                "truncate",
                "no rows left",
            ),
        ];
        for (text, line, key, msg) in cases {
            let (_d, p) = write(text);
            let e = load(&p).expect_err(text);
            let shown = e.to_string();
            assert!(shown.contains(msg), "{text}: {shown}");
            assert!(
                shown.contains(&format!("rules.toml:{line}")),
                "{text}: {shown}"
            );
            assert!(e.key.contains(key), "{text}: key {} in {shown}", e.key);
        }
    }
}
