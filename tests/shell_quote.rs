//! Property tests of kiln's shell layer (src/shell/): any text survives quoting through
//! dash byte for byte, and a user unit runs exactly the text it was given.

use std::process::Command;

use proptest::prelude::*;

/// Runs a script with dash (Debian's /bin/sh, what hosts run) and returns its stdout.
fn dash(script: &str) -> Vec<u8> {
    let out = Command::new("sh")
        .arg("-c")
        .arg(script)
        .output()
        .expect("sh runs");
    assert!(out.status.success(), "{script:?}: {:?}", out);
    out.stdout
}

/// Any text without NUL (which no shell word can hold): quotes, backslashes, `$()`,
/// backticks, newlines, control characters, non-ASCII.
fn text() -> impl Strategy<Value = String> {
    prop::collection::vec(
        prop_oneof![
            4 => prop::char::range('\u{1}', '\u{7f}'),
            1 => prop::sample::select(vec!['\'', '"', '\\', '$', '`', '\n', '#', '*', '\u{e9}', '\u{1F600}']),
            1 => any::<char>().prop_filter("no NUL", |c| *c != '\0'),
        ],
        0..64,
    )
    .prop_map(|cs| cs.into_iter().collect())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 96, ..ProptestConfig::default() })]

    #[test]
    fn quoted_text_round_trips_through_dash(s in text()) {
        let out = dash(&format!("printf '%s' {}", kiln::shell::quote(&s)));
        prop_assert_eq!(out, s.as_bytes());
    }

    #[test]
    fn a_user_unit_runs_exactly_its_text(s in text()) {
        let unit = kiln::shell::user_unit(&format!("printf '%s' {}", kiln::shell::quote(&s)));
        let out = dash(&unit);
        prop_assert_eq!(out, s.as_bytes());
    }
}
