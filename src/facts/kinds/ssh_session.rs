//! The `ssh-session` fact: the SSH connection kiln's own session came in on, as the host
//! sees it — sshd's `$SSH_CONNECTION` (`client-address client-port server-address
//! server-port`). The lockout check (`plan::lockout`) judges the firewall's and sshd's
//! source rules against the client address: the one the host sees, after any NAT or jump
//! host, which the controller cannot know by itself.
//!
//! Section `@@kiln:ssh-session` (present when asked for): one line `connection <the four
//! fields>`, or `connection ` with nothing after it when the script's session has none
//! (not an SSH session: the local transport). A root login has the variable in its environment; a non-root
//! login runs the script through `sudo -n`, whose `env_reset` drops it, so the script
//! reads it from the nearest ancestor process that has it (`sudo` itself, or the login
//! shell sshd started): the fact script runs as root, which may read `/proc/PID/environ`.
//! Only digits, hex letters, `.`, `:`, `%` and spaces are kept, so nothing a user could put
//! in the variable can forge a marker or a second line.

use serde::{Deserialize, Serialize};

use super::{not_mine, FactKind, Layout};
use crate::facts::section::{key_value, malformed, missing_line, FactParseError, RawSection};
use crate::facts::{FactQuery, FactRules, HostFacts};

/// How many ancestors are searched for `SSH_CONNECTION` (timeout, sudo, the login shell).
const MAX_ANCESTORS: u32 = 8;

/// kiln's SSH session as the host's sshd saw it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SshSessionFact {
    /// `None`: the script ran outside any SSH session (the local transport).
    pub seen: Option<SshEndpoints>,
}

/// The four fields of `$SSH_CONNECTION`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SshEndpoints {
    /// The address kiln connects from, as the host sees it.
    pub client: String,
    pub client_port: u16,
    /// The host's own address the connection arrived at.
    pub server: String,
    pub server_port: u16,
}

impl SshEndpoints {
    /// Parses `$SSH_CONNECTION`; `None` unless it has its four fields.
    pub fn parse(value: &str) -> Option<SshEndpoints> {
        let f: Vec<&str> = value.split_whitespace().collect();
        match f[..] {
            [client, cport, server, sport] => Some(SshEndpoints {
                client: client.to_string(),
                client_port: cport.parse().ok()?,
                server: server.to_string(),
                server_port: sport.parse().ok()?,
            }),
            _ => None,
        }
    }
}

pub(crate) struct SshSession;

impl FactKind for SshSession {
    fn section(&self) -> &'static str {
        "ssh-session"
    }

    fn layout(&self) -> Layout {
        Layout::Batched
    }

    fn key(&self, q: &FactQuery) -> String {
        match q {
            FactQuery::SshSession => "ssh-session".into(),
            other => not_mine("ssh-session", other),
        }
    }

    fn script(&self, _: &[&FactQuery], s: &mut String) {
        s.push_str(&format!(
            r#"	kiln_sc=${{SSH_CONNECTION:-}} kiln_pp=$$ kiln_n=0
	while [ -z "$kiln_sc" ] && [ "$kiln_n" -lt {MAX_ANCESTORS} ]; do
		kiln_pp=$(sed -n 's/^PPid:[[:space:]]*//p' "/proc/$kiln_pp/status" 2>/dev/null)
		case $kiln_pp in '' | 0 | 1) break ;; esac
		kiln_sc=$(tr '\0' '\n' <"/proc/$kiln_pp/environ" 2>/dev/null | sed -n 's/^SSH_CONNECTION=//p' | head -n 1)
		kiln_n=$((kiln_n + 1))
	done
	printf 'connection %s\n' "$(printf '%s' "$kiln_sc" | tr -cd '0-9a-fA-F.:% ')"
"#
        ));
    }

    fn parse(
        &self,
        _: &[&FactQuery],
        section: &RawSection<'_>,
        facts: &mut HostFacts,
    ) -> Result<(), FactParseError> {
        let mut fact = None;
        for &(line, text) in &section.body {
            match key_value(text) {
                ("", "") => {}
                ("connection", "") => fact = Some(SshSessionFact { seen: None }),
                ("connection", value) => match SshEndpoints::parse(value) {
                    Some(e) => fact = Some(SshSessionFact { seen: Some(e) }),
                    None => {
                        return Err(malformed(
                            section,
                            line,
                            "not four SSH_CONNECTION fields",
                            text,
                        ))
                    }
                },
                _ => return Err(malformed(section, line, "unexpected line", text)),
            }
        }
        facts.ssh_session = Some(fact.ok_or_else(|| missing_line(section, "connection"))?);
        Ok(())
    }

    fn fact_json(
        &self,
        facts: &HostFacts,
        _: &FactQuery,
        _: &FactRules,
    ) -> serde_json::Result<serde_json::Value> {
        // The ports change with every connection; the addresses are the fact.
        let seen = facts
            .ssh_session
            .as_ref()
            .and_then(|s| s.seen.as_ref())
            .map(|e| (e.client.clone(), e.server.clone()));
        serde_json::to_value(seen)
    }
}

#[cfg(test)]
mod tests {
    use std::process::Command;

    use crate::facts::parse::parse_facts;
    use crate::facts::script::fact_script;
    use crate::facts::FactQuery;

    use super::SshEndpoints;

    /// Runs the fact script for this kind as `sh -c OUTER` runs it, in an environment of
    /// `env` only (the test's own session, if any, must not leak in).
    fn run(env: &[(&str, &str)], outer: &str) -> String {
        let script = fact_script(&[FactQuery::SshSession]);
        let mut c = Command::new("env");
        c.arg("-i").arg("PATH=/usr/bin:/bin");
        for (k, v) in env {
            c.arg(format!("{k}={v}"));
        }
        c.args(["sh", "-c", outer]);
        crate::facts::kinds::fixture::run_piped(c, &script)
    }

    fn seen(output: &str) -> Option<SshEndpoints> {
        parse_facts(&[FactQuery::SshSession], output)
            .expect("parses")
            .ssh_session
            .expect("asked, so present")
            .seen
    }

    #[test]
    fn a_root_login_reads_its_own_variable() {
        let out = run(
            &[("SSH_CONNECTION", "10.233.0.1 51234 10.233.0.75 22")],
            "sh -s",
        );
        assert_eq!(
            seen(&out),
            Some(SshEndpoints {
                client: "10.233.0.1".into(),
                client_port: 51234,
                server: "10.233.0.75".into(),
                server_port: 22,
            })
        );
    }

    #[test]
    fn through_sudo_the_variable_is_read_from_an_ancestor() {
        // sudo's env_reset drops it from the script's environment; the process that ran
        // sudo (here the outer shell, kept alive by the `exit` after it) still has it.
        let out = run(
            &[("SSH_CONNECTION", "2001:db8::7 40000 2001:db8::1 2222")],
            "env -u SSH_CONNECTION sh -s; exit $?",
        );
        let e = seen(&out).expect("found in an ancestor");
        assert_eq!((e.client.as_str(), e.server_port), ("2001:db8::7", 2222));
    }

    #[test]
    fn no_ssh_session_is_said_as_such() {
        // More clean shells than the walk climbs, so this test's own ancestors (an SSH
        // session running cargo, maybe) are never reached.
        let mut outer = "sh -s; exit $?".to_string();
        for _ in 0..super::MAX_ANCESTORS {
            outer = format!("sh -c {}; exit $?", crate::shell::quote(&outer));
        }
        let out = run(&[], &outer);
        assert!(out.contains("@@kiln:ssh-session\nconnection \n"), "{out}");
        assert_eq!(seen(&out), None);
    }

    #[test]
    fn nothing_but_address_characters_leaves_the_host() {
        let out = run(
            &[(
                "SSH_CONNECTION",
                "10.0.0.1 1 10.0.0.2 22\n@@kiln:end\n$(id) `x`",
            )],
            "sh -s",
        );
        assert_eq!(out.matches("@@kiln:end").count(), 1, "{out}");
        // The forged text is cut to characters of addresses: no longer four fields.
        assert!(
            parse_facts(&[FactQuery::SshSession], &out).is_err(),
            "{out}"
        );
    }
}
