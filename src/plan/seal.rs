//! Seals for sensitive content. A saved plan must not contain a secret, nor a plain hash
//! of one (a short password is brute-forced from its sha256 in seconds). Instead it holds
//! an HMAC-SHA256 keyed with a random key that never leaves this machine
//! (`$XDG_STATE_HOME/kiln/seal.key`, mode 0600). At apply time the content is rendered again
//! from the spec and must carry the same seal, so a plan is applied exactly as reviewed.

use std::path::PathBuf;

use anyhow::{Context, Result};
use sha2::{Digest, Sha256};

fn key_path() -> PathBuf {
    crate::state::state_dir().join("seal.key")
}

/// Loads (or creates once) this machine's seal key.
pub fn load_key() -> Result<Vec<u8>> {
    let path = key_path();
    if let Ok(k) = std::fs::read(&path) {
        if k.len() == 32 {
            return Ok(k);
        }
    }
    let mut key = vec![0u8; 32];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut key))
        .context("reading /dev/urandom")?;
    crate::state::write_private(&path, &key)?;
    Ok(key)
}

/// HMAC-SHA256 (RFC 2104) of `data` under `key`, hex.
pub fn seal(key: &[u8], data: &[u8]) -> String {
    let mut k = [0u8; 64];
    if key.len() > 64 {
        k[..32].copy_from_slice(&Sha256::digest(key));
    } else {
        k[..key.len()].copy_from_slice(key);
    }
    let ipad: Vec<u8> = k.iter().map(|b| b ^ 0x36).collect();
    let opad: Vec<u8> = k.iter().map(|b| b ^ 0x5c).collect();
    let inner = Sha256::new()
        .chain_update(&ipad)
        .chain_update(data)
        .finalize();
    hex::encode(
        Sha256::new()
            .chain_update(&opad)
            .chain_update(inner)
            .finalize(),
    )
}

#[cfg(test)]
mod tests {
    #[test]
    fn hmac_matches_rfc4231_case_2() {
        let mac = super::seal(b"Jefe", b"what do ya want for nothing?");
        assert_eq!(
            mac,
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }
}
