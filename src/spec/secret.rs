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

/// A stand-in for a secret value, for finding what a secret flows into (see
/// `desired::taint`): the same length and character classes, every letter and digit
/// different (a→b, z→a, 9→0 …), other characters kept. Templates that check a secret's
/// form (length, a PEM header's dashes) accept the canary as they accept the value; any
/// output that depends on the value's characters — through `upper`, `b64encode`, a
/// concatenation, a loop — comes out different.
pub fn canary(value: &str) -> String {
    value
        .chars()
        .map(|c| match c {
            'a'..='y' | 'A'..='Y' | '0'..='8' => (c as u8 + 1) as char,
            'z' => 'a',
            'Z' => 'A',
            '9' => '0',
            other => other,
        })
        .collect()
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
    fn canary_differs_in_every_letter_and_digit_and_keeps_the_form() {
        let v = "Hunter2-zZ9_$";
        let c = canary(v);
        assert_eq!(c, "Ivoufs3-aA0_$");
        assert_eq!(c.len(), v.len());
        for (a, b) in v.chars().zip(c.chars()) {
            assert_eq!(a.is_ascii_alphanumeric(), a != b);
        }
    }

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
