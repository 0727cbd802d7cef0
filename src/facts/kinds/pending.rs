//! The `pending` fact: handlers owed by an earlier, interrupted run (journalled on the
//! host).
//!
//! Section `@@kiln:pending` (present when asked for): one `handler <file name>` line per
//! regular file in [`PENDING_DIR`] (dot-files and names with a newline are skipped; a
//! missing directory means none).

use super::{FactKind, Layout};
use crate::facts::section::{key_value, malformed, FactParseError, RawSection};
use crate::facts::{FactQuery, FactRules, HostFacts};

/// The directory where interrupted runs journal the handlers they still owe.
pub const PENDING_DIR: &str = "/var/lib/kiln/pending";

pub(crate) struct Pending;

impl FactKind for Pending {
    fn section(&self) -> &'static str {
        "pending"
    }

    fn layout(&self) -> Layout {
        Layout::Batched
    }

    fn key(&self, _: &FactQuery) -> String {
        "pending".into()
    }

    fn script(&self, _: &[&FactQuery], s: &mut String) {
        s.push_str(&format!("\tfor kiln_f in {PENDING_DIR}/*; do\n"));
        s.push_str("\t\t[ -f \"$kiln_f\" ] || continue\n");
        s.push_str("\t\tkiln_f=${kiln_f##*/}\n");
        s.push_str("\t\tcase $kiln_f in *\"$kiln_nl\"*) continue ;; esac\n");
        s.push_str("\t\tprintf 'handler %s\\n' \"$kiln_f\"\n");
        s.push_str("\tdone\n");
    }

    fn parse(
        &self,
        _: &[&FactQuery],
        section: &RawSection<'_>,
        facts: &mut HostFacts,
    ) -> Result<(), FactParseError> {
        let mut handlers = Vec::new();
        for &(line, text) in &section.body {
            match key_value(text) {
                ("", "") => {}
                ("handler", value) if !value.is_empty() => handlers.push(value.to_string()),
                _ => return Err(malformed(section, line, "unexpected line", text)),
            }
        }
        // The shell's glob order depends on its locale; byte order does not.
        handlers.sort();
        facts.pending = handlers;
        Ok(())
    }

    fn fact_json(
        &self,
        facts: &HostFacts,
        _: &FactQuery,
        _: &FactRules,
    ) -> serde_json::Result<serde_json::Value> {
        serde_json::to_value(&facts.pending)
    }
}

#[cfg(test)]
mod tests {
    use crate::facts::kinds::fixture::captured;

    #[test]
    fn pending_handlers() {
        assert_eq!(
            captured().pending,
            ["reload@nginx.service", "restart@getty@tty1.service"]
        );
    }
}
