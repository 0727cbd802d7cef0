//! Turns a host's changes into one shell script: steps in plan order, package installs of
//! consecutive changes coalesced into a single apt transaction, every file written
//! atomically with its previous version kept, a lock naming its holder, and progress
//! markers on stdout (`@@kiln:begin N`, `@@kiln:ok N`, `@@kiln:fail N RC`, `@@kiln:log N …`).
//! Pure: the script is data until a transport runs it.

use std::collections::BTreeMap;
use std::fmt::Write;

use base64::Engine;

use crate::plan::{Change, Content, HandlerAction, Step, SystemctlVerb};
use crate::shell::quote as sh_quote;
use crate::shell::Cmd;

/// Where kiln keeps its state on a host.
pub const STATE_DIR: &str = "/var/lib/kiln";

/// Exit status of the script when another run holds the host's lock.
pub const EXIT_LOCKED: i32 = 75;

use crate::shell::APPLY_PRELUDE as PRELUDE;

/// Builds the apply script for `changes` (indices are the change positions reported in
/// the markers). `holder` names this run in the lock. `sensitive` maps resource ids to
/// content re-rendered from the spec for `Content::Sensitive` steps.
pub fn apply_script(
    changes: &[(usize, &Change)],
    holder: &str,
    sensitive: &BTreeMap<String, String>,
) -> Result<String, String> {
    apply_script_waiting(changes, holder, sensitive, 0)
}

/// [`apply_script`] that waits up to `lock_wait_secs` for a host lock another run holds.
///
/// The whole script is one function, called once it has been read: the shell parses all
/// of it before running any of it, so a script cut short in transit runs nothing (not a
/// half-read heredoc), and every command's stdin is /dev/null. When the controller goes
/// away mid-run (a lost connection), the next progress marker the script prints hits a
/// closed pipe and the shell dies there: the orphan stops at a step boundary and its lock
/// is released by the kernel.
pub fn apply_script_waiting(
    changes: &[(usize, &Change)],
    holder: &str,
    sensitive: &BTreeMap<String, String>,
    lock_wait_secs: u64,
) -> Result<String, String> {
    // SIGHUP is ignored (and so by every step, which inherit it): when the connection
    // drops, sshd's hangup must not kill a step halfway (an apt transaction, a restart);
    // the script ends at its next marker instead, which fails with SIGPIPE.
    let mut s = format!(
        "{}kiln_apply() {{\ntrap '' HUP\nkiln_lock_wait={lock_wait_secs}\nkiln_holder={}\n{PRELUDE}",
        crate::shell::LOCK,
        sh_quote(holder)
    );
    let mut i = 0;
    while i < changes.len() {
        // Coalesce a run of package-only changes into one apt transaction.
        if is_packages(changes[i].1) {
            let mut j = i;
            let (mut update, mut remove) = (false, vec![]);
            // Packages without and with Recommends: [apt] recommends is per environment,
            // so a run normally has only one of the two.
            let (mut install, mut install_rec) = (vec![], vec![]);
            while j < changes.len() && is_packages(changes[j].1) {
                for st in &changes[j].1.steps {
                    match st {
                        Step::AptUpdate => update = true,
                        Step::AptInstall {
                            packages,
                            recommends,
                        } => if *recommends {
                            &mut install_rec
                        } else {
                            &mut install
                        }
                        .extend(packages.iter().cloned()),
                        Step::AptRemove { packages } => remove.extend(packages.iter().cloned()),
                        _ => {}
                    }
                }
                j += 1;
            }
            let ids: Vec<String> = changes[i..j].iter().map(|(n, _)| n.to_string()).collect();
            for id in &ids {
                let _ = writeln!(s, "printf '@@kiln:begin %s\\n' {id}");
            }
            let _ = writeln!(s, "(");
            if update {
                let _ = writeln!(s, "  kiln_apt_update || exit $?");
            }
            for (pkgs, recommends) in [(&install, false), (&install_rec, true)] {
                if pkgs.is_empty() {
                    continue;
                }
                let pkgs = pkgs
                    .iter()
                    .map(|p| sh_quote(p))
                    .collect::<Vec<_>>()
                    .join(" ");
                let opt = install_option(recommends);
                // A list that does not know a package yet is refreshed once, then retried.
                let _ = writeln!(s, "  kiln_apt install {opt} {pkgs} || {{ kiln_apt_update && kiln_apt install {opt} {pkgs}; }} || exit $?");
            }
            if !remove.is_empty() {
                let pkgs = remove
                    .iter()
                    .map(|p| sh_quote(p))
                    .collect::<Vec<_>>()
                    .join(" ");
                let _ = writeln!(s, "  kiln_apt remove {pkgs} || exit $?");
            }
            let _ = writeln!(s, ") >\"$L\" 2>&1\nkiln_step_end $? {}", ids.join(" "));
            i = j;
            continue;
        }
        let (n, change) = changes[i];
        let _ = writeln!(
            s,
            "# {}\nprintf '@@kiln:begin %s\\n' {n}\n(",
            change.resource
        );
        for st in &change.steps {
            step_shell(&mut s, st, sensitive)?;
        }
        let _ = writeln!(s, ") >\"$L\" 2>&1\nkiln_step_end $? {n}");
        i += 1;
    }
    let _ = writeln!(s, "rm -f \"$K/lock.holder\"\nprintf '@@kiln:done\\n'");
    s.push_str("}\nkiln_apply </dev/null\n");
    Ok(s)
}

fn is_packages(c: &Change) -> bool {
    !c.steps.is_empty()
        && c.steps.iter().all(|s| {
            matches!(
                s,
                Step::AptUpdate | Step::AptInstall { .. } | Step::AptRemove { .. }
            )
        })
}

fn install_option(recommends: bool) -> &'static str {
    if recommends {
        "--install-recommends"
    } else {
        "--no-install-recommends"
    }
}

fn step_shell(
    s: &mut String,
    step: &Step,
    sensitive: &BTreeMap<String, String>,
) -> Result<(), String> {
    let q = |x: &str| sh_quote(x);
    match step {
        Step::AptUpdate => s.push_str("  kiln_apt_update || exit $?\n"),
        Step::AptInstall {
            packages,
            recommends,
        } => {
            let _ = writeln!(
                s,
                "  kiln_apt install {} {} || exit $?",
                install_option(*recommends),
                packages.iter().map(|p| q(p)).collect::<Vec<_>>().join(" ")
            );
        }
        Step::AptRemove { packages } => {
            let _ = writeln!(
                s,
                "  kiln_apt remove {} || exit $?",
                packages.iter().map(|p| q(p)).collect::<Vec<_>>().join(" ")
            );
        }
        Step::WriteFile {
            path,
            content,
            owner,
            group,
            mode,
        } => {
            let text = match content {
                Content::Text { text } => text.clone(),
                Content::Sensitive { resource, .. } => sensitive
                    .get(resource)
                    .cloned()
                    .ok_or_else(|| format!("no content for sensitive {resource}"))?,
            };
            let b64 = base64::engine::general_purpose::STANDARD.encode(text.as_bytes());
            let _ = writeln!(
                s,
                "  {} <<'KILN_EOF' || exit $?",
                Cmd::function("kiln_write")
                    .arg(path)
                    .arg(owner)
                    .arg(group)
                    .arg(mode)
                    .line()
            );
            for chunk in b64.as_bytes().chunks(76) {
                s.push_str(std::str::from_utf8(chunk).unwrap_or_default());
                s.push('\n');
            }
            s.push_str("KILN_EOF\n");
        }
        Step::SetAttrs {
            path,
            owner,
            group,
            mode,
        } => {
            let (o, g) = match (owner, group) {
                (Some(o), Some(g)) => (o.as_str(), g.as_str()),
                _ => ("", ""),
            };
            if !o.is_empty() || mode.is_some() {
                let attrs = Cmd::function("kiln_attrs")
                    .arg(path)
                    .arg(o)
                    .arg(g)
                    .arg(mode.as_deref().unwrap_or(""));
                let _ = writeln!(s, "  {} || exit $?", attrs.line());
            }
        }
        Step::MakeDir {
            path,
            owner,
            group,
            mode,
        } => {
            let _ = writeln!(
                s,
                "  {} && {} || exit $?",
                Cmd::program("mkdir").opt("-p").arg(path).line(),
                Cmd::function("kiln_attrs")
                    .arg(path)
                    .arg(owner)
                    .arg(group)
                    .arg(mode)
                    .line()
            );
        }
        Step::Symlink { path, target } => {
            let _ = writeln!(
                s,
                "  mkdir -p -- \"$(dirname -- {p})\" && {} || exit $?",
                Cmd::program("ln").opt("-sfn").arg(target).arg(path).line(),
                p = q(path)
            );
        }
        Step::RemovePath { path } => {
            let _ = writeln!(
                s,
                "  {} || exit $?",
                Cmd::function("kiln_remove").arg(path).line()
            );
        }
        Step::PurgeDir { path, keep } => {
            let base = path.trim_end_matches('/');
            let _ = writeln!(
                s,
                "  for f in {d}/* {d}/.[!.]* {d}/..?*; do\n    [ -e \"$f\" ] || [ -L \"$f\" ] || continue",
                d = q(base)
            );
            if keep.is_empty() {
                let _ = writeln!(s, "    kiln_remove \"$f\" || exit $?");
            } else {
                let names: Vec<String> = keep.iter().map(|k| q(k)).collect();
                let _ = writeln!(
                    s,
                    "    case \"${{f##*/}}\" in {}) ;; *) kiln_remove \"$f\" || exit $? ;; esac",
                    names.join("|")
                );
            }
            let _ = writeln!(s, "  done");
        }
        Step::GroupAdd { name, gid, system } => {
            let mut cmd = Cmd::program("groupadd");
            if let Some(g) = gid {
                cmd = cmd.opt_value("-g", &g.to_string());
            }
            if *system {
                cmd = cmd.opt("-r");
            }
            let _ = writeln!(s, "  {} || exit $?", cmd.arg(name).line());
        }
        Step::GroupDel { name } => {
            let _ = writeln!(
                s,
                "  {} || exit $?",
                Cmd::program("groupdel").arg(name).line()
            );
        }
        Step::UserAdd {
            name,
            uid,
            home,
            shell,
            system,
            groups,
            create_home,
        } => {
            let mut cmd = Cmd::program("useradd").opt("-U");
            if let Some(u) = uid {
                cmd = cmd.opt_value("-u", &u.to_string());
            }
            if *system {
                cmd = cmd.opt("-r");
            }
            cmd = cmd
                .opt(if *create_home { "-m" } else { "-M" })
                .opt_value("-d", home)
                .opt_value("-s", shell);
            if !groups.is_empty() {
                cmd = cmd.opt_value("-G", &groups.join(","));
            }
            let _ = writeln!(s, "  {} || exit $?", cmd.arg(name).line());
        }
        Step::UserMod {
            name,
            home,
            shell,
            groups,
        } => {
            let mut cmd = Cmd::program("usermod");
            if let Some(h) = home {
                cmd = cmd.opt_value("-d", h);
            }
            if let Some(sh) = shell {
                cmd = cmd.opt_value("-s", sh);
            }
            if let Some(g) = groups {
                cmd = cmd.opt_value("-G", &g.join(","));
            }
            let _ = writeln!(s, "  {} || exit $?", cmd.arg(name).line());
        }
        Step::UserDel { name } => {
            let _ = writeln!(
                s,
                "  {} || exit $?",
                Cmd::program("userdel").arg(name).line()
            );
        }
        Step::DaemonReload => s.push_str("  systemctl daemon-reload || exit $?\n"),
        Step::Systemctl { verb, unit } => {
            let systemctl = Cmd::program("systemctl").opt(verb.as_str()).arg(unit);
            let _ = writeln!(s, "  {} || exit $?", systemctl.line());
            if *verb == SystemctlVerb::Start {
                let _ = writeln!(
                    s,
                    "  rm -f \"$K/pending/reload@\"{u} \"$K/pending/restart@\"{u}",
                    u = q(unit)
                );
            }
        }
        Step::Handler {
            unit,
            action,
            check,
        } => {
            if let Some(c) = check {
                // A configuration that fails its check is never loaded: the running service
                // keeps its old configuration and the handler stays journalled. The check
                // is the user's shell: its own unit, so a `#` or a stray quote in it fails
                // this check alone.
                let _ = writeln!(
                    s,
                    "  {} </dev/null 9>&- || {{ printf '%s\\n' {}; exit 3; }}",
                    crate::shell::user_unit(c),
                    q(&format!("configuration check failed: {c}"))
                );
            }
            // A notification does not start a stopped service: reload or restart only a
            // running one (`try-…`); `start` is an explicit state change.
            let verb = match action {
                HandlerAction::Reload => "try-reload-or-restart",
                HandlerAction::Restart => "try-restart",
                HandlerAction::Start => "start",
            };
            let systemctl = Cmd::program("systemctl").opt(verb).arg(unit);
            let _ = writeln!(s, "  {} || exit $?", systemctl.line());
            let _ = writeln!(
                s,
                "  rm -f \"$K/pending/\"{}",
                q(&format!("{action}@{unit}"))
            );
            if matches!(action, HandlerAction::Restart | HandlerAction::Start) {
                let _ = writeln!(
                    s,
                    "  rm -f \"$K/pending/reload@\"{u} \"$K/pending/restart@\"{u}",
                    u = q(unit)
                );
            }
        }
        Step::Shell { command, creates } => shell_unit(s, command, creates.as_deref()),
        Step::SensitiveShell {
            resource, creates, ..
        } => {
            let command = sensitive
                .get(resource)
                .ok_or_else(|| format!("no command for sensitive {resource}"))?;
            shell_unit(s, command, creates.as_deref())
        }
        Step::JournalHandler { handler } => {
            let _ = writeln!(s, "  : > \"$K/pending/\"{} || exit $?", q(handler));
        }
        Step::Galera(g) => {
            return Err(format!(
            "galera step {} of cluster {} belongs to the cluster orchestrator, not a host script",
            g.seq, g.cluster
        ))
        }
    }
    Ok(())
}

/// A user's command as its own unit ([`crate::shell::user_unit`]): a syntax error fails
/// this step alone, and its text is in no process argument. It gets neither stdin nor the
/// lock's descriptor: a daemon the command leaves behind does not hold the host's lock.
fn shell_unit(s: &mut String, command: &str, creates: Option<&str>) {
    let guard = match creates {
        Some(c) => format!("[ -e {} ] || ", sh_quote(c)),
        None => String::new(),
    };
    let _ = writeln!(
        s,
        "  {guard}{} </dev/null 9>&- || exit $?",
        crate::shell::user_unit(command)
    );
}

/// Progress events parsed from the script's stdout markers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Marker {
    Begin(usize),
    Ok(usize),
    Fail(usize, i32),
    Log(usize, String),
    Locked(String),
    /// The lock is held (by the named run); the script waits for it.
    Waiting(String),
    Done,
}

pub fn parse_marker(line: &str) -> Option<Marker> {
    let rest = line.strip_prefix("@@kiln:")?;
    let (word, arg) = rest.split_once(' ').unwrap_or((rest, ""));
    match word {
        "begin" => arg.trim().parse().ok().map(Marker::Begin),
        "ok" => arg.trim().parse().ok().map(Marker::Ok),
        "fail" => {
            let mut it = arg.split_whitespace();
            Some(Marker::Fail(
                it.next()?.parse().ok()?,
                it.next()?.parse().ok()?,
            ))
        }
        "log" => {
            let (n, text) = arg.split_once(' ').unwrap_or((arg, ""));
            Some(Marker::Log(n.parse().ok()?, text.to_string()))
        }
        "locked" => Some(Marker::Locked(arg.to_string())),
        "waiting" => Some(Marker::Waiting(arg.to_string())),
        "done" => Some(Marker::Done),
        _ => None,
    }
}
