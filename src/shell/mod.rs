//! Shell text that kiln sends to hosts: quoting of operands ([`quote`]), the shared
//! preludes (plain `.sh` files beside this one, loaded with `include_str!`, so that
//! shellcheck reads them as they are), and how a user's own shell (`run`, `unless`, a
//! module's `check`) becomes one isolated unit ([`user_unit`]).
//!
//! Architecture Invariant: a user's command text never appears in a generated script as
//! shell syntax nor in any process argument. It travels base64-encoded inside the script
//! (which reaches the host on stdin), is decoded into an environment variable of one
//! `sh -c` with a constant argument, and runs there with `eval`. So nothing it contains —
//! a `#`, an unbalanced quote, a line that looks like a heredoc delimiter — can change
//! the script around it, a syntax error fails that unit alone, and `ps` on the host shows
//! only the constant wrapper, never the text (which may carry a secret).

use base64::Engine as _;

/// `kiln_lock WAIT HOLDER`: the host's lock, for the apply script and the Galera executor.
pub const LOCK: &str = include_str!("lock.sh");

/// The apply script's prelude: atomic write, attributes, apt (see `apply::script`); it
/// takes the lock with [`LOCK`]'s function, which must come before it.
pub const APPLY_PRELUDE: &str = include_str!("apply_prelude.sh");

/// The fact script's helpers (see `facts::script`).
pub const FACTS_PRELUDE: &str = include_str!("facts_prelude.sh");

/// Quotes `s` as one shell word with single quotes, so that `sh` passes it through
/// byte for byte: quotes, spaces, newlines, `$()` and backslashes included. A single quote
/// cannot appear inside single quotes, so each one closes the quoted string, adds an
/// escaped quote and reopens it.
///
/// NUL bytes cannot be passed to any command through a shell; callers must reject such
/// strings before they get here.
pub fn quote(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('\'');
    for c in s.chars() {
        if c == '\'' {
            out.push_str("'\\''");
        } else {
            out.push(c);
        }
    }
    out.push('\'');
    out
}

/// The constant program of every user unit's `sh -c`: take the text from the
/// environment, drop the variable (so the command's own children do not inherit it), run
/// it from `/`.
const UNIT_PROGRAM: &str = "'kiln_c=${KILN_UNIT%.}; unset KILN_UNIT; cd / && eval \"$kiln_c\"'";

/// One simple command, built by type: the program is a `&'static str` and so are kiln's
/// own options — text from a spec can never become either — while every operand and
/// option value is quoted as one word. For programs (not kiln's shell functions) `--` ends
/// the options before the first operand, so a value that starts with `-` stays a value.
///
/// This is the only way the apply script names programs with operands; raw shell kiln
/// writes itself is in the `.sh` preludes, and users' shell goes through [`user_unit`].
#[derive(Debug, Clone)]
pub struct Cmd {
    words: Vec<String>,
    dashdash: bool,
}

impl Cmd {
    /// A program: operands are preceded by `--`.
    pub fn program(name: &'static str) -> Cmd {
        Cmd {
            words: vec![name.to_string()],
            dashdash: true,
        }
    }

    /// One of kiln's own shell functions (`kiln_write`, `kiln_attrs` …): positional
    /// arguments, no option parsing, so no `--`.
    pub fn function(name: &'static str) -> Cmd {
        Cmd {
            words: vec![name.to_string()],
            dashdash: false,
        }
    }

    /// An option of kiln's own (`-r`, `--no-pager`).
    pub fn opt(mut self, flag: &'static str) -> Cmd {
        self.words.push(flag.to_string());
        self
    }

    /// An option with a value (`-d HOME`): the value is quoted.
    pub fn opt_value(mut self, flag: &'static str, value: &str) -> Cmd {
        self.words.push(flag.to_string());
        self.words.push(quote(value));
        self
    }

    /// An operand, quoted; the first one of a program is preceded by `--`.
    pub fn arg(mut self, value: &str) -> Cmd {
        if self.dashdash {
            self.words.push("--".into());
            self.dashdash = false;
        }
        self.words.push(quote(value));
        self
    }

    /// The command as one line of shell.
    pub fn line(&self) -> String {
        self.words.join(" ")
    }
}

/// `command <<'DELIM' after` followed by `body` and the delimiter: a quoted here-document
/// (no expansion inside) whose delimiter is chosen so that no line of `body` equals it —
/// a line of a password or a grant can never end it early and run the rest as shell.
/// `after` continues the command's line (` || exit 1`).
pub fn heredoc(command: &str, after: &str, body: &str, base: &str) -> String {
    let mut d = base.to_string();
    while body.lines().any(|l| l == d) {
        d.push('_');
    }
    let nl = if body.is_empty() || body.ends_with('\n') {
        ""
    } else {
        "\n"
    };
    format!("{command} <<'{d}'{after}\n{body}{nl}{d}\n")
}

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
    fn commands_quote_operands_and_end_options() {
        let c = Cmd::program("useradd")
            .opt("-U")
            .opt_value("-d", "/home/it's")
            .arg("-x");
        assert_eq!(c.line(), "useradd -U -d '/home/it'\\''s' -- '-x'");
        let f = Cmd::function("kiln_attrs").arg("/p").arg("");
        assert_eq!(f.line(), "kiln_attrs '/p' ''");
        // A program without operands has no `--`.
        assert_eq!(
            Cmd::program("systemctl").opt("daemon-reload").line(),
            "systemctl daemon-reload"
        );
    }

    #[test]
    fn a_heredoc_body_cannot_end_it_early() {
        let body = "SELECT 1;\nKILN_SQL_END\ntouch /tmp/kiln-pwned\n";
        let h = heredoc("cat", " || exit 1", body, "KILN_SQL_END");
        assert!(h.starts_with("cat <<'KILN_SQL_END_' || exit 1\n"), "{h}");
        let (rc, out) = run(&h);
        assert_eq!((rc, out.as_str()), (0, body));
        // Without a trailing newline the body still ends before the delimiter.
        let (_, out) = run(&heredoc("cat", "", "x", "E"));
        assert_eq!(out, "x\n");
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
