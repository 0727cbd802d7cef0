//! sshd's settings as the files kiln writes give them: `/etc/ssh/sshd_config` (when kiln
//! manages it) and the drop-ins of `/etc/ssh/sshd_config.d/*.conf` it manages, read in
//! sshd's order — the main file's lines with its `Include` of the drop-in directory
//! expanded in place (Debian's main file includes them on its first line, so without a
//! managed main file the drop-ins come first, in name order). For most keywords sshd keeps
//! the first value it reads; `Port`, `ListenAddress` and the Allow/Deny lists add up.
//! `Match` blocks apply to some connections only: they are not evaluated, and a judged
//! keyword inside one is reported as not checked.

use super::net::wildcard;

/// The drop-in directory sshd's Debian configuration includes.
pub const DROPIN_DIR: &str = "/etc/ssh/sshd_config.d/";
pub const MAIN: &str = "/etc/ssh/sshd_config";

/// One value and the file it was read from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Setting {
    pub value: String,
    pub file: String,
}

/// The settings the lockout check judges; `None`/empty: no file kiln writes sets them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Sshd {
    pub ports: Vec<Setting>,
    pub listen: Vec<Setting>,
    pub permit_root_login: Option<Setting>,
    pub pubkey_authentication: Option<Setting>,
    pub authentication_methods: Option<Setting>,
    /// One entry per pattern.
    pub allow_users: Vec<Setting>,
    pub deny_users: Vec<Setting>,
    pub allow_groups: Vec<Setting>,
    pub deny_groups: Vec<Setting>,
    /// The file names, space-separated as written.
    pub authorized_keys_file: Option<Setting>,
    pub authorized_keys_command: Option<Setting>,
    /// `KEYWORD in a Match block of FILE`: judged keywords set conditionally.
    pub conditional: Vec<String>,
}

const JUDGED: &[&str] = &[
    "port",
    "listenaddress",
    "permitrootlogin",
    "pubkeyauthentication",
    "authenticationmethods",
    "allowusers",
    "denyusers",
    "allowgroups",
    "denygroups",
    "authorizedkeysfile",
    "authorizedkeyscommand",
];

/// Is `path` a drop-in sshd reads (`*.conf` directly in the directory)?
pub fn is_dropin(path: &str) -> bool {
    path.strip_prefix(DROPIN_DIR)
        .is_some_and(|n| n.ends_with(".conf") && !n.contains('/') && n.len() > 5)
}

/// The effective settings of the managed files: `main` (when kiln manages
/// `/etc/ssh/sshd_config`) and the managed drop-ins (any order; sorted here by name).
pub fn effective<'a>(main: Option<&'a str>, dropins: &[(&'a str, &'a str)]) -> Sshd {
    let mut dropins: Vec<(&'a str, &'a str)> = dropins.to_vec();
    dropins.sort();
    // (file, line), and (file, None) where a file ends.
    let mut lines: Vec<(&'a str, Option<&'a str>)> = vec![];
    let add_dropins = |lines: &mut Vec<(&'a str, Option<&'a str>)>| {
        for &(f, t) in &dropins {
            lines.extend(t.lines().map(|l| (f, Some(l))));
            lines.push((f, None));
        }
    };
    match main {
        None => add_dropins(&mut lines),
        Some(text) => {
            for l in text.lines() {
                let (k, args) = split(l);
                if k.eq_ignore_ascii_case("include") && args.iter().any(|a| includes_dropins(a)) {
                    add_dropins(&mut lines);
                } else {
                    lines.push((MAIN, Some(l)));
                }
            }
        }
    }
    let mut s = Sshd::default();
    let mut in_match: Option<&str> = None;
    for (file, line) in lines {
        let Some(line) = line else {
            // A Match block in an included file ends with the file.
            if in_match == Some(file) {
                in_match = None;
            }
            continue;
        };
        let (k, args) = split(line);
        if k.is_empty() {
            continue;
        }
        let key = k.to_ascii_lowercase();
        if key == "match" {
            in_match = Some(file);
            continue;
        }
        if let Some(m) = in_match {
            if JUDGED.contains(&key.as_str()) {
                s.conditional.push(format!("{k} in a Match block of {m}"));
            }
            continue;
        }
        let set = |v: String| Setting {
            value: v,
            file: file.to_string(),
        };
        let first = |slot: &mut Option<Setting>, v: String| {
            if slot.is_none() {
                *slot = Some(set(v));
            }
        };
        match key.as_str() {
            "port" => s.ports.extend(args.iter().take(1).map(|a| set(a.clone()))),
            "listenaddress" => s.listen.extend(args.iter().take(1).map(|a| set(a.clone()))),
            "permitrootlogin" => first(&mut s.permit_root_login, args.join(" ")),
            "pubkeyauthentication" => first(&mut s.pubkey_authentication, args.join(" ")),
            "authenticationmethods" => first(&mut s.authentication_methods, args.join(" ")),
            "authorizedkeysfile" => first(&mut s.authorized_keys_file, args.join(" ")),
            "authorizedkeyscommand" => first(&mut s.authorized_keys_command, args.join(" ")),
            "allowusers" => s.allow_users.extend(args.iter().map(|a| set(a.clone()))),
            "denyusers" => s.deny_users.extend(args.iter().map(|a| set(a.clone()))),
            "allowgroups" => s.allow_groups.extend(args.iter().map(|a| set(a.clone()))),
            "denygroups" => s.deny_groups.extend(args.iter().map(|a| set(a.clone()))),
            _ => {}
        }
    }
    s
}

/// An `Include` argument that names the drop-in directory's `*.conf`.
fn includes_dropins(arg: &str) -> bool {
    let full = if arg.starts_with('/') {
        arg.to_string()
    } else {
        format!("/etc/ssh/{arg}")
    };
    full.strip_prefix(DROPIN_DIR)
        .is_some_and(|g| wildcard(g, "x.conf"))
}

/// `Keyword args...` / `Keyword=args`; comments and blank lines give an empty keyword.
/// Double-quoted arguments keep their spaces.
fn split(line: &str) -> (&str, Vec<String>) {
    let t = line.trim();
    if t.is_empty() || t.starts_with('#') {
        return ("", vec![]);
    }
    let end = t
        .find(|c: char| c.is_whitespace() || c == '=')
        .unwrap_or(t.len());
    let (k, rest) = t.split_at(end);
    let rest = rest.trim_start();
    let rest = rest.strip_prefix('=').unwrap_or(rest);
    let mut args = vec![];
    let mut cur = String::new();
    let mut quoted = false;
    let mut any = false;
    for c in rest.chars() {
        match c {
            '"' => {
                quoted = !quoted;
                any = true;
            }
            c if c.is_whitespace() && !quoted => {
                if any {
                    args.push(std::mem::take(&mut cur));
                    any = false;
                }
            }
            '#' if !quoted && !any => break,
            c => {
                cur.push(c);
                any = true;
            }
        }
    }
    if any {
        args.push(cur);
    }
    (k, args)
}

/// A `ListenAddress` value: its address and its own port, if it has one (`addr:port`,
/// `[addr]:port`; an `rdomain` word after it is not the address's).
pub fn listen_parts(value: &str) -> (String, Option<u16>) {
    let v = value.split_whitespace().next().unwrap_or("");
    if let Some(rest) = v.strip_prefix('[') {
        if let Some((a, p)) = rest.split_once("]:") {
            return (a.to_string(), p.parse().ok());
        }
        return (rest.trim_end_matches(']').to_string(), None);
    }
    match v.split_once(':') {
        // One colon: IPv4 or a name with a port; more: a bare IPv6 address.
        Some((a, p)) if !p.contains(':') => (a.to_string(), p.parse().ok()),
        _ => (v.to_string(), None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const KILN: &str = "/etc/ssh/sshd_config.d/10-kiln.conf";

    #[test]
    fn first_value_wins_and_lists_add_up() {
        let s = effective(
            None,
            &[
                (
                    "/etc/ssh/sshd_config.d/20-later.conf",
                    "PermitRootLogin yes\nPort 2222\nAllowUsers carol\n",
                ),
                (
                    KILN,
                    "# kiln\nPort 22\nPermitRootLogin=no\nAllowUsers alice bob@10.0.0.0/8\n",
                ),
            ],
        );
        // 10-kiln.conf is read before 20-later.conf.
        let p = s.permit_root_login.unwrap();
        assert_eq!((p.value.as_str(), p.file.as_str()), ("no", KILN));
        let ports: Vec<&str> = s.ports.iter().map(|p| p.value.as_str()).collect();
        assert_eq!(ports, ["22", "2222"]);
        let users: Vec<&str> = s.allow_users.iter().map(|p| p.value.as_str()).collect();
        assert_eq!(users, ["alice", "bob@10.0.0.0/8", "carol"]);
    }

    #[test]
    fn a_managed_main_file_reads_the_dropins_where_it_includes_them() {
        let main =
            "PermitRootLogin no\nInclude /etc/ssh/sshd_config.d/*.conf\nPubkeyAuthentication no\n";
        let s = effective(
            Some(main),
            &[(
                KILN,
                "PermitRootLogin prohibit-password\nPubkeyAuthentication yes\n",
            )],
        );
        assert_eq!(s.permit_root_login.unwrap().file, MAIN);
        assert_eq!(s.pubkey_authentication.unwrap().file, KILN);
        // Without the Include, sshd never reads the drop-ins.
        let s = effective(Some("Port 22\n"), &[(KILN, "Port 2222\n")]);
        assert_eq!(s.ports.len(), 1);
    }

    #[test]
    fn match_blocks_are_not_evaluated_but_said() {
        let s = effective(
            None,
            &[(
                KILN,
                "PasswordAuthentication no\nMatch User deploy\n  PubkeyAuthentication no\n",
            )],
        );
        assert!(s.pubkey_authentication.is_none());
        assert_eq!(
            s.conditional,
            ["PubkeyAuthentication in a Match block of /etc/ssh/sshd_config.d/10-kiln.conf"]
        );
    }

    #[test]
    fn listen_addresses_with_and_without_ports() {
        assert_eq!(
            listen_parts("10.0.0.5:2222"),
            ("10.0.0.5".into(), Some(2222))
        );
        assert_eq!(listen_parts("10.0.0.5"), ("10.0.0.5".into(), None));
        assert_eq!(listen_parts("[::1]:22"), ("::1".into(), Some(22)));
        assert_eq!(listen_parts("2001:db8::1"), ("2001:db8::1".into(), None));
        assert_eq!(listen_parts("0.0.0.0 rdomain x"), ("0.0.0.0".into(), None));
    }

    #[test]
    fn dropins_are_conf_files_directly_in_the_directory() {
        assert!(is_dropin(KILN));
        assert!(!is_dropin("/etc/ssh/sshd_config.d/10-kiln.conf.bak"));
        assert!(!is_dropin("/etc/ssh/sshd_config.d/sub/x.conf"));
        assert!(!is_dropin("/etc/ssh/sshd_config"));
    }
}
