//! Shell text that kiln sends to hosts. This is the start of the typed layer issue 11
//! asks for: today it holds how a user's own shell (`run`, `unless`, a module's `check`)
//! becomes one isolated unit. Quoting of operands still lives in `facts::script::sh_quote`.
//!
//! Architecture Invariant: a user's command text never appears in a generated script as
//! shell syntax nor in any process argument. It travels base64-encoded inside the script
//! (which reaches the host on stdin), is decoded into an environment variable of one
//! `sh -c` with a constant argument, and runs there with `eval`. So nothing it contains —
//! a `#`, an unbalanced quote, a line that looks like a heredoc delimiter — can change
//! the script around it, a syntax error fails that unit alone, and `ps` on the host shows
//! only the constant wrapper, never the text (which may carry a secret).

use base64::Engine as _;

/// The constant program of every user unit's `sh -c`: take the text from the
/// environment, drop the variable (so the command's own children do not inherit it), run
/// it from `/`.
const UNIT_PROGRAM: &str = "'kiln_c=${KILN_UNIT%.}; unset KILN_UNIT; cd / && eval \"$kiln_c\"'";

/// A simple command that runs `text` as its own unit (see the module documentation).
/// Callers add redirections (`</dev/null`, `9>&-` …) after it.
pub fn user_unit(text: &str) -> String {
    let b64 = base64::engine::general_purpose::STANDARD.encode(text.as_bytes());
    // The `.` keeps trailing newlines through the command substitution (a heredoc at the
    // very end of the text needs its last newline); the program strips it again.
    format!("KILN_UNIT=$(printf '%s' '{b64}' | base64 -d && echo .) sh -c {UNIT_PROGRAM}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::Command;

    fn run(script: &str) -> (i32, String) {
        let out = Command::new("sh").arg("-c").arg(script).output().unwrap();
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into_owned(),
        )
    }

    #[test]
    fn the_text_reaches_the_unit_byte_for_byte_and_never_as_syntax() {
        let texts = [
            "printf '%s\\n' \"it's # not a comment\"",
            "echo unbalanced 'quote",
            "cat <<'EOF'\nline\nEOF\n",
            "echo $(printf '%s' \"$HOME\") && exit 3",
        ];
        let (rc, out) = run(&format!("{}; echo after $?", user_unit(texts[0])));
        assert_eq!((rc, out.as_str()), (0, "it's # not a comment\nafter 0\n"));
        // A syntax error fails the unit alone; the script goes on.
        let (rc, out) = run(&format!(
            "{} 2>/dev/null; echo after $?",
            user_unit(texts[1])
        ));
        assert_eq!((rc, out.as_str()), (0, "after 2\n"));
        let (_, out) = run(&user_unit(texts[2]));
        assert_eq!(out, "line\n");
        let (_, out) = run(&format!("{}; echo rc $?", user_unit(texts[3])));
        let home = std::env::var("HOME").unwrap_or_default();
        assert_eq!(out, format!("{home}\nrc 3\n"));
    }

    #[test]
    fn the_text_is_in_no_argument_and_not_inherited() {
        let secret = "hunter2-in-a-command";
        let unit = user_unit(&format!("echo {secret} >/dev/null; cat /proc/$$/cmdline | tr '\\0' ' '; echo; env | grep -c KILN_UNIT"));
        assert!(!unit.contains(secret));
        let (_, out) = run(&unit);
        assert!(!out.contains(secret), "{out}");
        assert!(
            out.ends_with("0\n"),
            "KILN_UNIT left in the environment: {out}"
        );
    }
}
