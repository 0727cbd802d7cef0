//! The schema of list entries and nested tables of a module parameter (`entry` in
//! `modules/<name>.toml`): every key of an entry is declared, with its type, so a misspelled
//! key (`body_szie`, `max_childern`) is refused instead of silently leaving a default.

use indexmap::IndexMap;

use crate::spec::module::ParamType;
use crate::spec::source::join_key;

/// Checks every entry of a parameter value against its `entry` schema: the elements of a
/// list, the values of a table, and the tables inside their lists (`{ db = [{ port = 3306
/// }] }`). Scalars among them are left to the parameter's `format`. Returns (key path,
/// message) for every unknown key or value of the wrong type.
pub fn check_entries(
    v: &toml::Value,
    entry: &IndexMap<String, ParamType>,
    path: &str,
) -> Vec<(String, String)> {
    let mut out = vec![];
    if entry.is_empty() {
        return out;
    }
    match v {
        toml::Value::Array(a) => {
            for (i, x) in a.iter().enumerate() {
                element(x, entry, &format!("{path}[{i}]"), &mut out);
            }
        }
        toml::Value::Table(t) => {
            for (k, x) in t {
                element(x, entry, &join_key(path, k), &mut out);
            }
        }
        _ => {}
    }
    out
}

fn element(
    v: &toml::Value,
    entry: &IndexMap<String, ParamType>,
    path: &str,
    out: &mut Vec<(String, String)>,
) {
    match v {
        toml::Value::Table(t) => {
            for (k, x) in t {
                let key = join_key(path, k);
                match entry.get(k) {
                    None => out.push((
                        key,
                        format!(
                            "unknown key `{k}` (keys: {})",
                            entry.keys().cloned().collect::<Vec<_>>().join(", ")
                        ),
                    )),
                    Some(ty) if !ty.accepts(x) => out.push((
                        key,
                        format!("`{k}` must be {}, found {}", ty.name(), x.type_str()),
                    )),
                    Some(_) => {}
                }
            }
        }
        toml::Value::Array(a) => {
            for (i, x) in a.iter().enumerate() {
                element(x, entry, &format!("{path}[{i}]"), out);
            }
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn value(s: &str) -> toml::Value {
        toml::from_str::<toml::Table>(s).unwrap()["x"].clone()
    }

    #[test]
    fn unknown_keys_and_types_of_entries() {
        let mut entry = IndexMap::new();
        entry.insert("name".to_string(), ParamType::String);
        entry.insert("port".to_string(), ParamType::Int);
        let bad = check_entries(
            &value(
                "x = [{ name = \"a\", port = 1 }, { name = \"b\", prot = 2 }, { port = \"3\" }]",
            ),
            &entry,
            "p",
        );
        let paths: Vec<&str> = bad.iter().map(|(p, _)| p.as_str()).collect();
        assert_eq!(paths, ["p[1].prot", "p[2].port"]);
        assert!(bad[0].1.contains("keys: name, port"), "{}", bad[0].1);
        // A table of lists of entries (or plain scalars).
        let bad = check_entries(
            &value("x = { web = [80, { port = 1, form = 2 }] }"),
            &entry,
            "p",
        );
        assert_eq!(bad.len(), 1);
        assert_eq!(bad[0].0, "p.web[1].form");
        assert!(check_entries(&value("x = [{ anything = 1 }]"), &IndexMap::new(), "p").is_empty());
    }
}
