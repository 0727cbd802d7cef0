//! known_hosts as OpenSSH reads it, pure: which recorded keys name a host, hashed entries
//! (`|1|salt|hash`, HMAC-SHA1), `[host]:port` for a port other than 22, patterns with `*`,
//! `?` and negation, `@revoked` and `@cert-authority` markers. The verdict for a key is
//! what `StrictHostKeyChecking=yes` / `accept-new` decides with it.

use base64::Engine;
use hmac::{Hmac, Mac};

/// What known_hosts says of a host's key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// A recorded key of the host equals this one.
    Known,
    /// Nothing is recorded for the host (under any key type).
    Unknown,
    /// The host is recorded with other keys only: the key changed (line of the first one).
    Changed { line: usize },
    /// The key is marked `@revoked`.
    Revoked { line: usize },
    /// The host is trusted through a certificate authority: russh does not check host
    /// certificates, so OpenSSH must connect.
    CertAuthority { line: usize },
}

/// The name a host is recorded under: `host`, or `[host]:port` when the port is not 22.
pub fn host_name(host: &str, port: u16) -> String {
    if port == 22 {
        host.to_string()
    } else {
        format!("[{host}]:{port}")
    }
}

/// Judges `key` (an OpenSSH public key line's `type base64` part) for `host`:`port`
/// against the text of known_hosts files, read in order (the first decides a tie).
pub fn verdict(files: &[&str], host: &str, port: u16, key_type: &str, key_b64: &str) -> Verdict {
    let name = host_name(host, port);
    let mut changed = None;
    let mut ca = None;
    let mut known = false;
    for text in files {
        for (i, raw) in text.lines().enumerate() {
            let line = i + 1;
            let Some(entry) = parse_line(raw) else {
                continue;
            };
            if !entry.matches(&name) {
                continue;
            }
            let same = entry.key_type == key_type && entry.key_b64 == key_b64;
            match entry.marker {
                Marker::Revoked if same => return Verdict::Revoked { line },
                Marker::Revoked => {}
                Marker::CertAuthority => {
                    ca.get_or_insert(line);
                }
                Marker::None if same => known = true,
                Marker::None => {
                    changed.get_or_insert(line);
                }
            }
        }
    }
    if known {
        return Verdict::Known;
    }
    if let Some(line) = ca {
        return Verdict::CertAuthority { line };
    }
    match changed {
        Some(line) => Verdict::Changed { line },
        None => Verdict::Unknown,
    }
}

/// The key types recorded for the host (plain entries), in file order: OpenSSH prefers
/// these host key algorithms when it negotiates, so a host recorded with its ECDSA key is
/// asked for that one, not refused for offering Ed25519.
pub fn known_types(files: &[&str], host: &str, port: u16) -> Vec<String> {
    let name = host_name(host, port);
    let mut out: Vec<String> = vec![];
    for text in files {
        for e in text.lines().filter_map(parse_line) {
            if e.marker == Marker::None && e.matches(&name) && !out.iter().any(|t| t == e.key_type)
            {
                out.push(e.key_type.to_string());
            }
        }
    }
    out
}

/// The line `accept_new` appends for a new host (plain, as `ssh -o HashKnownHosts=no`).
pub fn new_line(host: &str, port: u16, key_type: &str, key_b64: &str) -> String {
    format!("{} {key_type} {key_b64}\n", host_name(host, port))
}

#[derive(Debug, PartialEq, Eq)]
enum Marker {
    None,
    Revoked,
    CertAuthority,
}

#[derive(Debug)]
struct Entry<'a> {
    marker: Marker,
    hosts: &'a str,
    key_type: &'a str,
    key_b64: &'a str,
}

fn parse_line(raw: &str) -> Option<Entry<'_>> {
    let line = raw.trim();
    if line.is_empty() || line.starts_with('#') {
        return None;
    }
    let mut words = line.split_whitespace();
    let mut first = words.next()?;
    let marker = match first {
        "@revoked" => Marker::Revoked,
        "@cert-authority" => Marker::CertAuthority,
        m if m.starts_with('@') => return None,
        _ => Marker::None,
    };
    if marker != Marker::None {
        first = words.next()?;
    }
    Some(Entry {
        marker,
        hosts: first,
        key_type: words.next()?,
        key_b64: words.next()?,
    })
}

impl Entry<'_> {
    fn matches(&self, name: &str) -> bool {
        if let Some(hashed) = self.hosts.strip_prefix("|1|") {
            return hashed_matches(hashed, name);
        }
        let mut yes = false;
        for pat in self.hosts.split(',') {
            if let Some(neg) = pat.strip_prefix('!') {
                if glob(neg, name) {
                    return false;
                }
            } else if glob(pat, name) {
                yes = true;
            }
        }
        yes
    }
}

/// `|1|base64(salt)|base64(HMAC-SHA1(salt, name))`.
fn hashed_matches(hashed: &str, name: &str) -> bool {
    let b64 = base64::engine::general_purpose::STANDARD;
    let Some((salt, hash)) = hashed.split_once('|') else {
        return false;
    };
    let (Ok(salt), Ok(hash)) = (b64.decode(salt), b64.decode(hash)) else {
        return false;
    };
    let Ok(mut mac) = Hmac::<sha1::Sha1>::new_from_slice(&salt) else {
        return false;
    };
    mac.update(name.as_bytes());
    mac.verify_slice(&hash).is_ok()
}

/// OpenSSH's pattern: `*` any run, `?` one character, case-insensitive.
pub fn glob(pat: &str, s: &str) -> bool {
    fn go(p: &[u8], s: &[u8]) -> bool {
        match p.split_first() {
            None => s.is_empty(),
            Some((b'*', rest)) => (0..=s.len()).any(|i| go(rest, &s[i..])),
            Some((b'?', rest)) => !s.is_empty() && go(rest, &s[1..]),
            Some((c, rest)) => {
                s.first().is_some_and(|x| x.eq_ignore_ascii_case(c)) && go(rest, &s[1..])
            }
        }
    }
    go(pat.as_bytes(), s.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    const K1: &str = "AAAAC3NzaC1lZDI1NTE5AAAAIKeyOne";
    const K2: &str = "AAAAC3NzaC1lZDI1NTE5AAAAIKeyTwo";

    fn hashed(name: &str, salt: &[u8]) -> String {
        let b64 = base64::engine::general_purpose::STANDARD;
        let mut mac = Hmac::<sha1::Sha1>::new_from_slice(salt).unwrap();
        mac.update(name.as_bytes());
        format!(
            "|1|{}|{}",
            b64.encode(salt),
            b64.encode(mac.finalize().into_bytes())
        )
    }

    #[test]
    fn plain_entries_known_unknown_and_changed() {
        let f = format!("# comment\n\nweb,10.0.0.5 ssh-ed25519 {K1} me@x\n");
        let v = |h: &str, k: &str| verdict(&[&f], h, 22, "ssh-ed25519", k);
        assert_eq!(v("10.0.0.5", K1), Verdict::Known);
        assert_eq!(v("web", K1), Verdict::Known);
        assert_eq!(v("10.0.0.6", K1), Verdict::Unknown);
        assert_eq!(v("10.0.0.5", K2), Verdict::Changed { line: 3 });
        // Another key type recorded for the host is a changed key too (OpenSSH refuses).
        assert_eq!(
            verdict(&[&f], "10.0.0.5", 22, "ecdsa-sha2-nistp256", K2),
            Verdict::Changed { line: 3 }
        );
    }

    #[test]
    fn a_port_other_than_22_is_recorded_as_bracketed_host_port() {
        let f = format!("[10.0.0.5]:2222 ssh-ed25519 {K1}\n10.0.0.5 ssh-ed25519 {K2}\n");
        let v = |p: u16, k: &str| verdict(&[&f], "10.0.0.5", p, "ssh-ed25519", k);
        assert_eq!(v(2222, K1), Verdict::Known);
        assert_eq!(v(2222, K2), Verdict::Changed { line: 1 });
        assert_eq!(v(22, K2), Verdict::Known);
        assert_eq!(v(22, K1), Verdict::Changed { line: 2 });
        assert_eq!(v(2200, K1), Verdict::Unknown);
        assert_eq!(host_name("h", 22), "h");
        assert_eq!(host_name("h", 2222), "[h]:2222");
        assert_eq!(
            new_line("10.0.0.5", 2222, "ssh-ed25519", K1),
            format!("[10.0.0.5]:2222 ssh-ed25519 {K1}\n")
        );
    }

    #[test]
    fn hashed_entries_match_only_their_own_name() {
        let f = format!(
            "{} ssh-ed25519 {K1}\n{} ssh-ed25519 {K1}\n",
            hashed("10.0.0.5", b"saltsaltsaltsaltsalt"),
            hashed("[10.0.0.7]:2222", b"another salt 20 byte")
        );
        let v = |h: &str, p: u16, k: &str| verdict(&[&f], h, p, "ssh-ed25519", k);
        assert_eq!(v("10.0.0.5", 22, K1), Verdict::Known);
        assert_eq!(v("10.0.0.5", 22, K2), Verdict::Changed { line: 1 });
        assert_eq!(v("10.0.0.50", 22, K1), Verdict::Unknown);
        assert_eq!(v("10.0.0.7", 2222, K1), Verdict::Known);
        assert_eq!(v("10.0.0.7", 22, K1), Verdict::Unknown);
        // A broken hashed entry matches nothing rather than everything.
        assert_eq!(
            verdict(
                &[&format!("|1|@@@|### ssh-ed25519 {K1}\n")],
                "x",
                22,
                "ssh-ed25519",
                K1
            ),
            Verdict::Unknown
        );
    }

    #[test]
    fn patterns_negation_and_markers() {
        let f = format!(
            "10.0.0.* ssh-ed25519 {K1}\n\
             !10.0.0.9,10.0.0.? ssh-ed25519 {K2}\n\
             @revoked * ssh-ed25519 {K2}\n\
             @cert-authority *.example.org ssh-ed25519 {K1}\n"
        );
        let v = |h: &str, k: &str| verdict(&[&f], h, 22, "ssh-ed25519", k);
        assert_eq!(v("10.0.0.42", K1), Verdict::Known);
        assert_eq!(v("10.0.0.9", K1), Verdict::Known);
        // Revoked wins over a matching plain entry.
        assert_eq!(v("10.0.0.8", K2), Verdict::Revoked { line: 3 });
        assert_eq!(v("db.example.org", K1), Verdict::CertAuthority { line: 4 });
        assert!(glob("WEB*", "web1") && glob("h?", "h1") && !glob("h?", "h10"));
    }

    #[test]
    fn known_types_are_the_hosts_recorded_key_types_in_order() {
        let f = format!(
            "h ecdsa-sha2-nistp256 {K1}\nother ssh-rsa {K1}\n{} ssh-ed25519 {K2}\n\
             @revoked h ssh-rsa {K1}\n",
            hashed("h", b"0123456789abcdefghij")
        );
        assert_eq!(
            known_types(&[&f], "h", 22),
            ["ecdsa-sha2-nistp256", "ssh-ed25519"]
        );
        assert!(known_types(&[&f], "h", 2222).is_empty());
    }

    #[test]
    fn a_later_file_counts_too_and_a_match_anywhere_is_known() {
        let a = format!("h ssh-ed25519 {K2}\n");
        let b = format!("h ssh-ed25519 {K1}\n");
        assert_eq!(
            verdict(&[&a, &b], "h", 22, "ssh-ed25519", K1),
            Verdict::Known
        );
        assert_eq!(
            verdict(&[&a, &b], "h", 22, "ssh-rsa", K1),
            Verdict::Changed { line: 1 }
        );
    }
}
