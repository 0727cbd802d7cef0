//! SSH public keys for the lockout check: the key kiln authenticates with (from its
//! private key file, or the `.pub` beside it) and the lines of an authorized_keys file.

use base64::Engine as _;
use sha2::{Digest, Sha256};

/// A public key: its algorithm and its wire-format blob (what sshd compares).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PublicKey {
    pub algo: String,
    pub blob: Vec<u8>,
}

impl PublicKey {
    /// `SHA256:...`, as `ssh-keygen -l` prints it.
    pub fn fingerprint(&self) -> String {
        let digest = Sha256::digest(&self.blob);
        format!(
            "SHA256:{}",
            base64::engine::general_purpose::STANDARD_NO_PAD.encode(digest)
        )
    }

    /// `ssh-ed25519 SHA256:...`, for messages.
    pub fn describe(&self) -> String {
        format!("{} {}", self.algo, self.fingerprint())
    }

    /// From a blob: its algorithm is its first string.
    fn from_blob(blob: Vec<u8>) -> Option<PublicKey> {
        let mut r = Reader(&blob);
        let algo = String::from_utf8(r.string()?.to_vec()).ok()?;
        (!algo.is_empty()).then_some(PublicKey { algo, blob })
    }

    /// `TYPE BASE64 [comment]` (a `.pub` file's line). The type must be the blob's own.
    pub fn parse_line(line: &str) -> Option<PublicKey> {
        let mut words = line.split_whitespace();
        let algo = words.next()?;
        let blob = base64::engine::general_purpose::STANDARD
            .decode(words.next()?)
            .ok()?;
        let key = PublicKey::from_blob(blob)?;
        (key.algo == algo).then_some(key)
    }

    /// A certificate (`*-cert-v01@openssh.com`): sshd admits it through its CA, not
    /// through authorized_keys.
    pub fn is_certificate(&self) -> bool {
        self.algo.contains("-cert-")
    }
}

/// The public key inside an OpenSSH private key file (`-----BEGIN OPENSSH PRIVATE
/// KEY-----`). The format keeps it unencrypted beside the (possibly encrypted) private
/// part, so no passphrase is needed. `None` for other formats (PEM: read the `.pub`).
pub fn from_openssh_private(text: &str) -> Option<PublicKey> {
    // The private part (encrypted or not) is wiped once the public key is copied out.
    let body: zeroize::Zeroizing<String> = text
        .lines()
        .skip_while(|l| l.trim() != "-----BEGIN OPENSSH PRIVATE KEY-----")
        .skip(1)
        .take_while(|l| l.trim() != "-----END OPENSSH PRIVATE KEY-----")
        .map(str::trim)
        .collect::<String>()
        .into();
    let data = zeroize::Zeroizing::new(
        base64::engine::general_purpose::STANDARD
            .decode(body.as_bytes())
            .ok()?,
    );
    let rest = data.strip_prefix(b"openssh-key-v1\0")?;
    let mut r = Reader(rest);
    r.string()?; // cipher
    r.string()?; // kdf
    r.string()?; // kdf options
    if r.u32()? < 1 {
        return None;
    }
    PublicKey::from_blob(r.string()?.to_vec())
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn u32(&mut self) -> Option<u32> {
        let (n, rest) = self.0.split_first_chunk::<4>()?;
        self.0 = rest;
        Some(u32::from_be_bytes(*n))
    }
    fn string(&mut self) -> Option<&'a [u8]> {
        let n = self.u32()? as usize;
        if self.0.len() < n {
            return None;
        }
        let (s, rest) = self.0.split_at(n);
        self.0 = rest;
        Some(s)
    }
}

/// One line of an authorized_keys file: its options (`from="..."`, `command="..."`,
/// `restrict`) and its key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Authorized {
    pub options: Vec<(String, Option<String>)>,
    pub key: PublicKey,
}

impl Authorized {
    pub fn option(&self, name: &str) -> Option<Option<&str>> {
        self.options
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_deref())
    }
}

/// The keys of an authorized_keys file (comments, blank and unreadable lines skipped, as
/// sshd skips them).
pub fn authorized_keys(text: &str) -> Vec<Authorized> {
    text.lines().filter_map(authorized_line).collect()
}

fn authorized_line(line: &str) -> Option<Authorized> {
    let line = line.trim();
    if line.is_empty() || line.starts_with('#') {
        return None;
    }
    // A line is `[options] TYPE BASE64 [comment]`; options contain no unquoted space.
    if let Some(k) = PublicKey::parse_line(line) {
        return Some(Authorized {
            options: vec![],
            key: k,
        });
    }
    let (opts, rest) = split_options(line)?;
    Some(Authorized {
        options: parse_options(opts),
        key: PublicKey::parse_line(rest.trim_start())?,
    })
}

/// Splits at the first space outside double quotes.
fn split_options(line: &str) -> Option<(&str, &str)> {
    let mut quoted = false;
    let mut prev = ' ';
    for (i, c) in line.char_indices() {
        match c {
            '"' if prev != '\\' => quoted = !quoted,
            ' ' | '\t' if !quoted => return Some((&line[..i], &line[i..])),
            _ => {}
        }
        prev = c;
    }
    None
}

fn parse_options(text: &str) -> Vec<(String, Option<String>)> {
    let mut out = vec![];
    let mut cur = String::new();
    let mut quoted = false;
    let mut prev = ' ';
    let push = |cur: &mut String, out: &mut Vec<(String, Option<String>)>| {
        let item = std::mem::take(cur);
        match item.split_once('=') {
            Some((n, v)) => out.push((
                n.to_string(),
                Some(v.trim_matches('"').replace("\\\"", "\"")),
            )),
            None if !item.is_empty() => out.push((item, None)),
            None => {}
        }
    };
    for c in text.chars() {
        match c {
            '"' if prev != '\\' => {
                quoted = !quoted;
                cur.push(c);
            }
            ',' if !quoted => push(&mut cur, &mut out),
            _ => cur.push(c),
        }
        prev = c;
    }
    push(&mut cur, &mut out);
    out
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// An ed25519 key pair made for these tests (`ssh-keygen -t ed25519`, with a passphrase
    /// that is not written anywhere): its public line and its encrypted OpenSSH private key.
    pub(crate) const PUB: &str =
        "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAILOhVM30+/vztyQe/ztHlAnuSbHO0VTVgM212r2YLzo8 enc@test";
    pub(crate) const PRIVATE: &str = "-----BEGIN OPENSSH PRIVATE KEY-----
b3BlbnNzaC1rZXktdjEAAAAACmFlczI1Ni1jdHIAAAAGYmNyeXB0AAAAGAAAABBWA9ppfO
Qn7+OF2nfZhJ0tAAAAEAAAAAEAAAAzAAAAC3NzaC1lZDI1NTE5AAAAILOhVM30+/vztyQe
/ztHlAnuSbHO0VTVgM212r2YLzo8AAAAkGBkbnGKMsTUV4lENjqzajeXB3eDgVP13TMg3p
H/dPio2VQH5sArmFxonUaok97p2VkE02EJQk9L4YW1Blyu/y0bfm2Ilg78gMmC7xyLb/4h
qBsoUnopHpM4pwua3bnoLqo1KYMbkqRD8oUoleYT/Cewz3+Wh8Rj15nbBPSHnxUhXxa9J1
5oKtI8A9tQvNJjDw==
-----END OPENSSH PRIVATE KEY-----
";
    /// What `ssh-keygen -l` says of [`PUB`].
    pub(crate) const PUB_FINGERPRINT: &str = "SHA256:EU5S9UaG1rMzYAkciOCdEJ5BgRvqAe9XbnSlO0o01e0";
    /// Another key (only its public line).
    pub(crate) const OTHER: &str = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIDd2OyK9h039sxEXCnX4ao1kdfgECkT7sNAFm3cUyerI other@test";

    #[test]
    fn the_private_key_file_names_its_public_key_without_its_passphrase() {
        let from_private = from_openssh_private(PRIVATE).expect("an OpenSSH key");
        assert_eq!(Some(from_private.clone()), PublicKey::parse_line(PUB));
        assert_eq!(from_private.algo, "ssh-ed25519");
        assert_eq!(from_private.fingerprint(), PUB_FINGERPRINT);
        assert!(from_openssh_private("-----BEGIN RSA PRIVATE KEY-----\nMIIE\n").is_none());
    }

    #[test]
    fn authorized_lines_with_options_comments_and_junk() {
        let text = format!(
            "# admins\n\n{OTHER}\nfrom=\"10.0.0.0/8,!10.0.0.5\",no-pty,command=\"echo hi there\" {PUB}\nnot a key\n"
        );
        let keys = authorized_keys(&text);
        assert_eq!(keys.len(), 2);
        assert_eq!(keys[1].key, PublicKey::parse_line(PUB).unwrap());
        assert_eq!(keys[1].option("from"), Some(Some("10.0.0.0/8,!10.0.0.5")));
        assert_eq!(keys[1].option("command"), Some(Some("echo hi there")));
        assert_eq!(keys[1].option("no-pty"), Some(None));
        assert_eq!(keys[0].option("from"), None);
    }

    #[test]
    fn a_line_whose_type_is_not_its_blobs_is_no_key() {
        let forged = PUB.replace("ssh-ed25519 AAAA", "ssh-rsa AAAA");
        assert!(PublicKey::parse_line(&forged).is_none());
    }
}
