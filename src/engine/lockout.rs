//! What the lockout check (`plan::lockout`, pure) needs from this machine: the public key
//! of the key file kiln connects with. Read from the private key itself when it is in
//! OpenSSH's format (its public key is stored unencrypted, so a passphrase is never
//! needed), else from the `.pub` file beside it; never guessed (no key named means ssh
//! picks one from the agent or ~/.ssh, and the check says it could not tell which).

use std::path::Path;

use crate::desired::{Connection, DesiredHost};
use crate::facts::HostFacts;
use crate::plan::lockout::{self, keys, KilnKey};
use crate::plan::Lockout;
use crate::spec::Redactor;

/// The key kiln authenticates with on `conn`.
pub fn kiln_key(conn: &Connection) -> KilnKey {
    let Some(path) = &conn.key else {
        return KilnKey::Unknown(
            "kiln's key is not named (no host `key`, `[ssh] key` or KILN_SSH_KEY: ssh offers the agent's or ~/.ssh's keys)"
                .into(),
        );
    };
    key_of_file(path)
}

fn key_of_file(path: &Path) -> KilnKey {
    // The private key's text is wiped from memory once its public part is read.
    let private = std::fs::read_to_string(path).map(zeroize::Zeroizing::new);
    if let Some(key) = private
        .as_ref()
        .ok()
        .and_then(|p| keys::from_openssh_private(p))
    {
        return KilnKey::Known {
            key,
            from: path.display().to_string(),
        };
    }
    let mut public = path.as_os_str().to_owned();
    public.push(".pub");
    let public = Path::new(&public);
    let line = std::fs::read_to_string(public).ok();
    match line.as_deref().and_then(|l| {
        l.lines()
            .find(|l| !l.trim().is_empty())
            .and_then(lockout::PublicKey::parse_line)
    }) {
        Some(key) => KilnKey::Known {
            key,
            from: public.display().to_string(),
        },
        None => KilnKey::Unknown(match private {
            Err(e) => format!("kiln's key {} cannot be read ({e})", path.display()),
            Ok(_) => format!(
                "the public key of kiln's key {} is not known (not in OpenSSH's format, and no readable {})",
                path.display(),
                public.display()
            ),
        }),
    }
}

/// The check for one host, its texts redacted (they quote the files kiln writes).
pub fn check(
    host: &DesiredHost,
    key: &KilnKey,
    facts: Option<&HostFacts>,
    redactor: &Redactor,
) -> Lockout {
    let mut l = lockout::check(host, key, facts);
    for t in l.reasons.iter_mut().chain(l.not_checked.iter_mut()) {
        *t = redactor.redact(t);
    }
    l
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_key_comes_from_the_private_file_or_the_pub_beside_it() {
        let dir = tempfile::tempdir().unwrap();
        // An OpenSSH private key (encrypted: no passphrase is needed).
        let k = dir.path().join("id_ed25519");
        std::fs::write(&k, keys::tests::PRIVATE).unwrap();
        let KilnKey::Known { key, from } = key_of_file(&k) else {
            panic!("known")
        };
        assert_eq!(key.fingerprint(), keys::tests::PUB_FINGERPRINT);
        assert_eq!(from, k.display().to_string());
        // Another format: the .pub beside it.
        let pem = dir.path().join("legacy");
        std::fs::write(&pem, "-----BEGIN RSA PRIVATE KEY-----\nMIIE\n").unwrap();
        std::fs::write(
            dir.path().join("legacy.pub"),
            format!("{}\n", keys::tests::PUB),
        )
        .unwrap();
        let KilnKey::Known { from, .. } = key_of_file(&pem) else {
            panic!("known from .pub")
        };
        assert!(from.ends_with("legacy.pub"), "{from}");
        // Neither: said, not guessed.
        let bare = dir.path().join("bare");
        std::fs::write(&bare, "-----BEGIN RSA PRIVATE KEY-----\nMIIE\n").unwrap();
        let KilnKey::Unknown(why) = key_of_file(&bare) else {
            panic!("unknown")
        };
        assert!(
            why.contains("not in OpenSSH's format") && why.contains("bare.pub"),
            "{why}"
        );
        let KilnKey::Unknown(why) = key_of_file(&dir.path().join("missing")) else {
            panic!("unknown")
        };
        assert!(why.contains("cannot be read"), "{why}");
    }
}
