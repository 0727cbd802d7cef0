//! What `ssh_config` (the user's ~/.ssh/config, then /etc/ssh/ssh_config) says for a host,
//! and whether the russh transport can do exactly that. It can: `User` and `Port` (kiln
//! names both on ssh's command line, so they never come from here), `IdentityFile`,
//! `IdentitiesOnly`, and settings that change nothing kiln relies on (listed in
//! `HARMLESS`). Anything else that applies to the host — `ProxyJump`, `ProxyCommand`,
//! `HostName`, `CertificateFile`, `Match`, a token such as `%h`, an option we do not
//! know — is a reason to connect through OpenSSH instead, named to the user.

/// Options russh follows or that make no difference to what kiln does over SSH. The first
/// group kiln sets on ssh's command line, which wins over the config file.
const HARMLESS: &[&str] = &[
    "user",
    "port",
    "userknownhostsfile",
    "stricthostkeychecking",
    "connecttimeout",
    "serveraliveinterval",
    "controlmaster",
    "controlpath",
    "controlpersist",
    "batchmode",
    // Only affect how a new key would be recorded, or what is printed.
    "hashknownhosts",
    "visualhostkey",
    "loglevel",
    "checkhostip",
    "updatehostkeys",
    // Locale variables offered to the host: kiln's scripts set their own locale.
    "sendenv",
    // Methods russh does not try; kiln authenticates with keys only.
    "gssapiauthentication",
    "gssapidelegatecredentials",
    "passwordauthentication",
    "kbdinteractiveauthentication",
    "challengeresponseauthentication",
    "addkeystoagent",
    "forwardx11",
    "forwardx11trusted",
    "forwardagent",
];

/// The settings russh takes from the config for a host.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Applied {
    /// `IdentityFile`s in order, `~/` expanded against `home`.
    pub identity_files: Vec<String>,
    pub identities_only: bool,
}

/// Reads the files a config names in `Include` (path with `~` expanded) → (name, text).
pub type IncludeReader<'a> = &'a dyn Fn(&str) -> Vec<(String, String)>;

/// Walks `files` ((name, text), in ssh's order) for `host` (as kiln passes it to ssh).
/// `Err` is the reason OpenSSH must connect, naming the file, line and option.
pub fn decide(
    files: &[(String, String)],
    host: &str,
    home: &str,
    include: IncludeReader<'_>,
) -> Result<Applied, String> {
    let mut out = Applied::default();
    let mut seen_only = false;
    for (name, text) in files {
        walk(name, text, host, home, include, &mut out, &mut seen_only, 0)?;
    }
    Ok(out)
}

#[allow(clippy::too_many_arguments)]
fn walk(
    name: &str,
    text: &str,
    host: &str,
    home: &str,
    include: IncludeReader<'_>,
    out: &mut Applied,
    seen_only: &mut bool,
    depth: usize,
) -> Result<(), String> {
    if depth > 8 {
        return Err(format!("{name}: Include nested too deep"));
    }
    let mut active = true;
    for (i, raw) in text.lines().enumerate() {
        let at = format!("{name}:{}", i + 1);
        let line = raw.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let (key, value) = split(line);
        let key = key.to_ascii_lowercase();
        match key.as_str() {
            "host" => {
                active = host_matches(value, host);
                continue;
            }
            "match" => {
                return Err(format!(
                    "{at}: `Match` blocks are not evaluated by the russh transport"
                ))
            }
            _ => {}
        }
        if !active {
            continue;
        }
        match key.as_str() {
            "include" => {
                for pat in value.split_whitespace() {
                    let path = expand_home(pat, home);
                    let path = if path.starts_with('/') {
                        path
                    } else {
                        format!("{home}/.ssh/{path}")
                    };
                    for (n, t) in include(&path) {
                        walk(&n, &t, host, home, include, out, seen_only, depth + 1)?;
                    }
                }
            }
            "identityfile" => {
                let v = unquote(value);
                if v.contains('%') || v.contains('$') {
                    return Err(format!(
                        "{at}: IdentityFile {v} uses tokens the russh transport does not expand"
                    ));
                }
                if !v.eq_ignore_ascii_case("none") {
                    out.identity_files.push(expand_home(v, home));
                }
            }
            "identitiesonly" => {
                if !*seen_only {
                    *seen_only = true;
                    out.identities_only = value.eq_ignore_ascii_case("yes");
                }
            }
            k if HARMLESS.contains(&k) => {}
            other => {
                return Err(format!(
                    "{at}: `{other}` applies to this host and the russh transport does not \
                     implement it"
                ))
            }
        }
    }
    Ok(())
}

fn split(line: &str) -> (&str, &str) {
    let end = line
        .find(|c: char| c.is_whitespace() || c == '=')
        .unwrap_or(line.len());
    let key = &line[..end];
    let rest = line[end..].trim_start();
    let rest = rest.strip_prefix('=').unwrap_or(rest).trim();
    (key, rest)
}

fn unquote(v: &str) -> &str {
    v.strip_prefix('"')
        .and_then(|v| v.strip_suffix('"'))
        .unwrap_or(v)
}

fn expand_home(v: &str, home: &str) -> String {
    match v.strip_prefix("~/") {
        Some(rest) => format!("{home}/{rest}"),
        None => v.to_string(),
    }
}

/// A `Host` line's patterns: any positive match and no negated one.
fn host_matches(patterns: &str, host: &str) -> bool {
    let mut yes = false;
    for p in patterns.split_whitespace() {
        let p = unquote(p);
        if let Some(neg) = p.strip_prefix('!') {
            if super::known_hosts::glob(neg, host) {
                return false;
            }
        } else if super::known_hosts::glob(p, host) {
            yes = true;
        }
    }
    yes
}

#[cfg(test)]
mod tests {
    use super::*;

    fn none(_: &str) -> Vec<(String, String)> {
        vec![]
    }

    fn d(text: &str, host: &str) -> Result<Applied, String> {
        decide(
            &[("~/.ssh/config".into(), text.into())],
            host,
            "/home/u",
            &none,
        )
    }

    #[test]
    fn user_port_and_identity_files_are_followed() {
        let a = d(
            "Host 10.0.0.*\n  User admin\n  Port 2222\n  IdentityFile ~/.ssh/kiln\n\
             IdentityFile=/keys/other\nIdentitiesOnly yes\n",
            "10.0.0.5",
        )
        .unwrap();
        assert_eq!(a.identity_files, ["/home/u/.ssh/kiln", "/keys/other"]);
        assert!(a.identities_only);
    }

    #[test]
    fn what_russh_lacks_falls_back_naming_file_line_and_option() {
        let text = "Host bastion\n  HostName 1.2.3.4\nHost 10.0.0.*\n  ProxyJump bastion\n";
        let e = d(text, "10.0.0.5").unwrap_err();
        assert!(
            e.contains("~/.ssh/config:4") && e.contains("proxyjump"),
            "{e}"
        );
        // Another host's block does not count.
        assert_eq!(d(text, "192.168.1.1").unwrap(), Applied::default());
        let e = d("Host *\n  CertificateFile ~/.ssh/c\n", "h").unwrap_err();
        assert!(e.contains("certificatefile"), "{e}");
        let e = d("Match host h\n  User x\n", "h").unwrap_err();
        assert!(e.contains("Match"), "{e}");
        let e = d("IdentityFile ~/.ssh/%h\n", "h").unwrap_err();
        assert!(e.contains("tokens"), "{e}");
        // Negation keeps the block away from that host.
        assert!(d("Host * !10.0.0.5\n  ProxyCommand nc %h %p\n", "10.0.0.5").is_ok());
        assert!(d("Host * !10.0.0.5\n  ProxyCommand nc %h %p\n", "10.0.0.6").is_err());
    }

    #[test]
    fn debians_default_config_and_its_include_keep_russh() {
        let etc = "Include /etc/ssh/ssh_config.d/*.conf\nHost *\n    SendEnv LANG LC_*\n    \
                   HashKnownHosts yes\n    GSSAPIAuthentication yes\n";
        let inc = |p: &str| {
            assert_eq!(p, "/etc/ssh/ssh_config.d/*.conf");
            vec![(
                "/etc/ssh/ssh_config.d/x.conf".to_string(),
                "Host db*\n  ProxyJump b\n".to_string(),
            )]
        };
        let files = [("/etc/ssh/ssh_config".to_string(), etc.to_string())];
        assert!(decide(&files, "10.0.0.5", "/root", &inc).is_ok());
        let e = decide(&files, "db1", "/root", &inc).unwrap_err();
        assert!(e.starts_with("/etc/ssh/ssh_config.d/x.conf:2"), "{e}");
    }
}
