//! One section of the fact script's output as found ([`RawSection`]), the error type of
//! fact parsing, and the helpers every kind's parser uses on a section body. Used by
//! `parse.rs` (splitting and dispatch) and by each kind in `kinds/`.

use base64::Engine as _;

/// Every marker line starts with this prefix.
pub const MARKER_PREFIX: &str = "@@kiln:";

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

/// One section of the output as found: its marker and the lines up to the next marker.
#[derive(Debug)]
pub(crate) struct RawSection<'a> {
    /// 1-based line number of the marker.
    pub line: usize,
    /// The marker without its prefix, e.g. `path 3 /etc/hosts`.
    pub marker: &'a str,
    /// The section name, e.g. `path`.
    pub kind: &'a str,
    /// Everything after the section name, e.g. `3 /etc/hosts`.
    pub arg: &'a str,
    /// Numbered body lines.
    pub body: Vec<(usize, &'a str)>,
}

impl RawSection<'_> {
    /// The body's text lines, for parsers that work on plain lines.
    pub fn lines(&self) -> Vec<&str> {
        self.body.iter().map(|(_, t)| *t).collect()
    }
}

pub(crate) fn expect_empty(section: &RawSection<'_>) -> Result<(), FactParseError> {
    match section.body.iter().find(|(_, t)| !t.trim().is_empty()) {
        Some(&(line, text)) => Err(malformed(section, line, "unexpected line", text)),
        None => Ok(()),
    }
}

pub(crate) fn malformed(
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

pub(crate) fn truncated(raw: &[RawSection<'_>]) -> FactParseError {
    FactParseError::Truncated {
        last_section: raw
            .last()
            .map(|s| format!("{MARKER_PREFIX}{}", s.marker))
            .unwrap_or_default(),
    }
}

pub(crate) fn missing_line(section: &RawSection<'_>, key: &'static str) -> FactParseError {
    FactParseError::MissingLine {
        line: section.line,
        section: section.marker.to_string(),
        key,
    }
}

/// Splits a `key value` body line; a line that is only a key has an empty value.
pub(crate) fn key_value(text: &str) -> (&str, &str) {
    text.split_once(' ').unwrap_or((text, ""))
}

pub(crate) fn parse_num<T: std::str::FromStr>(
    section: &RawSection<'_>,
    line: usize,
    text: &str,
    value: &str,
) -> Result<T, FactParseError> {
    value
        .parse()
        .map_err(|_| malformed(section, line, "not a number", text))
}

pub(crate) fn decode_base64(
    section: &RawSection<'_>,
    line: usize,
    text: &str,
    value: &str,
) -> Result<Vec<u8>, FactParseError> {
    base64::engine::general_purpose::STANDARD
        .decode(value.trim())
        .map_err(|_| malformed(section, line, "invalid base64", text))
}
