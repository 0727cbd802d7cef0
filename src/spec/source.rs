//! Source files of the spec and the positions of every key in them.
//!
//! Every error kiln reports about the spec names a file, a line, a column and a key.
//! `serde` only gives us spans for errors it finds itself (syntax, unknown keys, wrong
//! types), so each file is also parsed once with `toml_edit`, which keeps spans, and
//! every dotted key path (`hosts.web.roles[1]`) is indexed to where it was written.
//! Semantic checks later ask this index where a value came from.

use std::ops::Range;
use std::path::{Path, PathBuf};

use indexmap::IndexMap;

pub use crate::spec::error::Location;
use crate::spec::error::SpecError;

impl SpecError {
    /// An error at a byte span of a source file.
    pub fn at(
        file: &SourceFile,
        span: Range<usize>,
        key: impl Into<String>,
        message: impl Into<String>,
    ) -> SpecError {
        let location = file.location(span.start);
        let snippet = file.line_text(location.line).map(str::to_string);
        SpecError {
            location,
            key: key.into(),
            message: message.into(),
            snippet,
            notes: vec![],
            raised: None,
        }
    }

    /// An error at the key `path` of a source file (or its nearest written ancestor).
    pub fn at_key(file: &SourceFile, path: &str, message: impl Into<String>) -> SpecError {
        SpecError::at(file, file.nearest_span(path), path, message)
    }
}

/// One TOML file with its text and the span of every key path in it.
#[derive(Debug, Clone)]
pub struct SourceFile {
    pub path: PathBuf,
    pub text: String,
    /// key path → (span of the key, span of the value)
    index: IndexMap<String, (Range<usize>, Range<usize>)>,
}

impl SourceFile {
    /// Reads and indexes a file. A syntax error is reported with its position.
    pub fn read(path: &Path) -> Result<SourceFile, SpecError> {
        let text = std::fs::read_to_string(path).map_err(|e| {
            SpecError::new(
                Location {
                    file: path.to_path_buf(),
                    line: 0,
                    column: 0,
                },
                "",
                format!("cannot read file: {e}"),
            )
        })?;
        SourceFile::parse(path, text)
    }

    pub fn parse(path: &Path, text: String) -> Result<SourceFile, SpecError> {
        let mut file = SourceFile {
            path: path.to_path_buf(),
            text,
            index: IndexMap::new(),
        };
        let doc = match toml_edit::ImDocument::parse(file.text.clone()) {
            Ok(doc) => doc,
            Err(e) => {
                let span = e.span().unwrap_or(0..0);
                let message = e.message().trim().to_string();
                return Err(SpecError::at(
                    &file,
                    span,
                    "",
                    format!("TOML syntax error: {message}"),
                ));
            }
        };
        let mut index = IndexMap::new();
        index_table(doc.as_table(), "", &mut index);
        file.index = index;
        Ok(file)
    }

    pub fn location(&self, offset: usize) -> Location {
        let offset = offset.min(self.text.len());
        let before = &self.text[..offset];
        let line = before.matches('\n').count() + 1;
        let column = before.rfind('\n').map(|i| offset - i).unwrap_or(offset + 1);
        Location {
            file: self.path.clone(),
            line,
            column,
        }
    }

    /// Where the key at `path` was written (its key span), if it was.
    pub fn key_span(&self, path: &str) -> Option<Range<usize>> {
        self.index.get(path).map(|(k, _)| k.clone())
    }

    /// Where the value at `path` was written, if it was.
    pub fn value_span(&self, path: &str) -> Option<Range<usize>> {
        self.index.get(path).map(|(_, v)| v.clone())
    }

    /// The span for `path`, or the nearest written ancestor's (a missing key is
    /// reported at the table that should have held it).
    pub fn nearest_span(&self, path: &str) -> Range<usize> {
        let mut p = path.to_string();
        loop {
            if let Some(span) = self.key_span(&p) {
                return span;
            }
            match p.rfind(['.', '[']) {
                Some(i) => p.truncate(i),
                None => return 0..0,
            }
        }
    }

    /// Every key path written in the file, in file order.
    pub fn keys(&self) -> impl Iterator<Item = &String> {
        self.index.keys()
    }

    pub fn has(&self, path: &str) -> bool {
        self.index.contains_key(path)
    }

    /// The innermost key path whose value contains `offset` (to name the key of a serde error).
    pub fn path_at(&self, offset: usize) -> Option<String> {
        let mut best: Option<(&String, usize)> = None;
        for (path, (key, value)) in &self.index {
            let hit = (key.start <= offset && offset < key.end.max(key.start + 1))
                || (value.start <= offset && offset < value.end);
            if hit {
                let len = value.end.saturating_sub(key.start.min(value.start));
                if best.map(|(_, l)| len <= l).unwrap_or(true) {
                    best = Some((path, len));
                }
            }
        }
        best.map(|(p, _)| p.clone())
    }

    /// The source line containing `offset` (for the snippet under an error).
    pub fn line_text(&self, line: usize) -> Option<&str> {
        self.text.lines().nth(line.checked_sub(1)?)
    }
}

/// Joins a key path the way errors print it: `a.b`, `a."odd key"`, `a[2]`.
pub fn join_key(parent: &str, key: &str) -> String {
    let simple = !key.is_empty()
        && key
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
    let key = if simple {
        key.to_string()
    } else {
        format!("{key:?}")
    };
    if parent.is_empty() {
        key
    } else {
        format!("{parent}.{key}")
    }
}

fn index_table(
    table: &toml_edit::Table,
    prefix: &str,
    out: &mut IndexMap<String, (Range<usize>, Range<usize>)>,
) {
    for (key, item) in table.iter() {
        let path = join_key(prefix, key);
        let key_span = table
            .key(key)
            .and_then(|k| k.span())
            .or_else(|| item.span())
            .unwrap_or(0..0);
        let value_span = item.span().unwrap_or(key_span.clone());
        out.insert(path.clone(), (key_span, value_span));
        index_item(item, &path, out);
    }
}

fn index_item(
    item: &toml_edit::Item,
    path: &str,
    out: &mut IndexMap<String, (Range<usize>, Range<usize>)>,
) {
    match item {
        toml_edit::Item::Table(t) => index_table(t, path, out),
        toml_edit::Item::ArrayOfTables(a) => {
            for (i, t) in a.iter().enumerate() {
                let p = format!("{path}[{i}]");
                let span = t.span().unwrap_or(0..0);
                out.insert(p.clone(), (span.clone(), span));
                index_table(t, &p, out);
            }
        }
        toml_edit::Item::Value(v) => index_value(v, path, out),
        toml_edit::Item::None => {}
    }
}

fn index_value(
    value: &toml_edit::Value,
    path: &str,
    out: &mut IndexMap<String, (Range<usize>, Range<usize>)>,
) {
    match value {
        toml_edit::Value::Array(a) => {
            for (i, v) in a.iter().enumerate() {
                let p = format!("{path}[{i}]");
                let span = v.span().unwrap_or(0..0);
                out.insert(p.clone(), (span.clone(), span));
                index_value(v, &p, out);
            }
        }
        toml_edit::Value::InlineTable(t) => {
            for (key, v) in t.iter() {
                let p = join_key(path, key);
                let key_span = t
                    .key(key)
                    .and_then(|k| k.span())
                    .or_else(|| v.span())
                    .unwrap_or(0..0);
                out.insert(p.clone(), (key_span, v.span().unwrap_or(0..0)));
                index_value(v, &p, out);
            }
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn indexes_nested_keys_with_lines() {
        let text = "name = \"x\"\n[hosts.web]\naddress = \"10.0.0.1\"\nroles = [\"a\", \"b\"]\n[[resource]]\ntype = \"file\"\n".to_string();
        let f = SourceFile::parse(Path::new("e.toml"), text).unwrap();
        let loc = f.location(f.key_span("hosts.web.address").unwrap().start);
        assert_eq!((loc.line, loc.column), (3, 1));
        let loc = f.location(f.value_span("hosts.web.roles[1]").unwrap().start);
        assert_eq!((loc.line, loc.column), (4, 15));
        assert!(f.has("resource[0].type"));
        assert_eq!(
            f.location(f.key_span("resource[0].type").unwrap().start)
                .line,
            6
        );
    }

    #[test]
    fn syntax_error_has_position() {
        let err = SourceFile::parse(Path::new("bad.toml"), "a = 1\nb = \n".into()).unwrap_err();
        assert_eq!(err.location.line, 2);
        assert!(err.message.contains("syntax"), "{}", err.message);
    }
}
