//! The spec's error type: the errors a caller branches on (everything else is `anyhow` with
//! context at the I/O edge).

use std::fmt;
use std::path::PathBuf;

/// A position in a source file, 1-based as editors show it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Location {
    pub file: PathBuf,
    pub line: usize,
    pub column: usize,
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}:{}", self.file.display(), self.line, self.column)
    }
}

/// A mistake in the spec (environment, module or template): always names the file, line,
/// column and key, and is found before any host is contacted. Built at a key or span of a
/// [`SourceFile`](super::source::SourceFile) with `SpecError::at_key` / `SpecError::at`
/// (defined in `source.rs`, which knows the positions).
#[derive(Debug, Clone)]
pub struct SpecError {
    pub location: Location,
    /// Dotted key path (`hosts.web.roles[1]`), or a template variable; may be empty for
    /// whole-file problems such as a syntax error.
    pub key: String,
    pub message: String,
    /// The offending source line, shown under the message.
    pub snippet: Option<String>,
    /// Further lines (e.g. the members of a dependency cycle).
    pub notes: Vec<String>,
    /// Set when a module's own `fail("…")` raised the error: where, and what the failing
    /// template code reads, so that the error can be moved to the environment key that
    /// set the value (`spec::validate::relocate`).
    pub raised: Option<Box<Raised>>,
}

/// Where a module template's `fail("…")` was raised and what it depends on.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Raised {
    /// `templates/m/x.j2:12`, or `modules/m.toml:4:1` for a template string of the module
    /// file itself.
    pub at: String,
    /// What the failing expression and the blocks around it read, nearest first:
    /// `params.NAME`, `vars.NAME`, or `item` (the element of the resource's `for_each`).
    pub reads: Vec<String>,
}

impl SpecError {
    pub fn new(
        location: Location,
        key: impl Into<String>,
        message: impl Into<String>,
    ) -> SpecError {
        SpecError {
            location,
            key: key.into(),
            message: message.into(),
            snippet: None,
            notes: vec![],
            raised: None,
        }
    }

    pub fn note(mut self, note: impl Into<String>) -> SpecError {
        self.notes.push(note.into());
        self
    }
}

impl fmt::Display for SpecError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.key.is_empty() {
            write!(f, "{}: {}", self.location, self.message)?;
        } else {
            write!(f, "{}: `{}`: {}", self.location, self.key, self.message)?;
        }
        if let Some(line) = &self.snippet {
            let n = self.location.line.to_string();
            let pad = " ".repeat(n.len());
            write!(
                f,
                "\n{pad} |\n{n} | {line}\n{pad} | {}^",
                " ".repeat(self.location.column.saturating_sub(1))
            )?;
        }
        for note in &self.notes {
            write!(f, "\n  = {note}")?;
        }
        Ok(())
    }
}

impl std::error::Error for SpecError {}

/// Several spec errors found in one pass (all are shown, not only the first).
#[derive(Debug, Clone)]
pub struct SpecErrors(pub Vec<SpecError>);

impl fmt::Display for SpecErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                write!(f, "\nerror: ")?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

impl std::error::Error for SpecErrors {}

impl From<SpecError> for SpecErrors {
    fn from(e: SpecError) -> Self {
        SpecErrors(vec![e])
    }
}
