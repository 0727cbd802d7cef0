//! Secrets are referenced from the spec (an environment variable or a file outside the
//! repository) and never stored in it. A [`SecretValue`] does not print its content; the
//! [`Redactor`] scrubs known secret values from any text kiln prints (remote stderr, errors).

use std::fmt;
use std::sync::Arc;

#[derive(Clone, PartialEq, Eq)]
pub struct SecretValue(Arc<str>);

impl SecretValue {
    pub fn new(s: &str) -> SecretValue {
        SecretValue(Arc::from(s))
    }
    /// The only way to the value: named so that every use is easy to find.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for SecretValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SecretValue(…)")
    }
}

/// Replaces every known secret value in a text with `(sensitive)`.
#[derive(Clone, Default, Debug)]
pub struct Redactor {
    values: Vec<SecretValue>,
}

impl Redactor {
    pub fn new(values: impl IntoIterator<Item = SecretValue>) -> Redactor {
        let mut values: Vec<_> = values
            .into_iter()
            .filter(|v| !v.expose().is_empty())
            .collect();
        // Longest first, so a secret containing another is replaced whole.
        values.sort_by_key(|v| std::cmp::Reverse(v.expose().len()));
        Redactor { values }
    }

    pub fn redact(&self, text: &str) -> String {
        let mut out = text.to_string();
        for v in &self.values {
            if out.contains(v.expose()) {
                out = out.replace(v.expose(), "(sensitive)");
            }
        }
        out
    }

    /// Whether a text contains any secret (content rendered from one is sensitive).
    pub fn contains_secret(&self, text: &str) -> bool {
        self.values.iter().any(|v| text.contains(v.expose()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redacts_and_hides_debug() {
        let r = Redactor::new([
            SecretValue::new("hunter2"),
            SecretValue::new("hunter2-long"),
        ]);
        assert_eq!(
            r.redact("pw=hunter2-long x=hunter2"),
            "pw=(sensitive) x=(sensitive)"
        );
        assert!(r.contains_secret("a hunter2 b"));
        assert_eq!(
            format!("{:?}", SecretValue::new("hunter2")),
            "SecretValue(…)"
        );
    }
}
