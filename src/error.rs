//! Errors a caller branches on. Everything else is `anyhow` with context at the I/O edge.

use std::fmt;
use std::ops::Range;

use crate::spec::source::{Location, SourceFile};

/// A mistake in the spec (environment, module or template): always names the file, line,
/// column and key, and is found before any host is contacted.
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
        }
    }

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
        }
    }

    /// An error at the key `path` of a source file (or its nearest written ancestor).
    pub fn at_key(file: &SourceFile, path: &str, message: impl Into<String>) -> SpecError {
        SpecError::at(file, file.nearest_span(path), path, message)
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
