//! Seals for sensitive content. A saved plan must not contain a secret, nor a plain hash
//! of one (a short password is brute-forced from its sha256 in seconds). Instead it holds
//! an HMAC-SHA256 keyed with a random key that never leaves this machine
//! (`$XDG_STATE_HOME/kiln/seal.key`, mode 0600). At apply time the content is rendered again
//! from the spec and must carry the same seal, so a plan is applied exactly as reviewed.

use std::io::Write;
use std::path::PathBuf;

use anyhow::{Context, Result};
use sha2::{Digest, Sha256};

/// `$XDG_STATE_HOME/kiln` (default `~/.local/state/kiln`): this machine's private state.
pub fn state_dir() -> PathBuf {
    let base = std::env::var_os("XDG_STATE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".local/state")))
        .unwrap_or_else(|| PathBuf::from("/tmp"));
    base.join("kiln")
}

fn key_path() -> PathBuf {
    state_dir().join("seal.key")
}

/// Writes `data` to `path` atomically with mode 0600 (parents created): a temporary
/// file created exclusively under an unpredictable name in the same directory (no other
/// user can plant or pre-open it), fsynced, then renamed over `path`.
pub fn write_private(path: &std::path::Path, data: &[u8]) -> Result<()> {
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(std::path::Path::new("."));
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let mut tmp = tempfile::Builder::new()
        .prefix(".kiln-")
        .suffix(".tmp")
        .tempfile_in(dir)
        .with_context(|| format!("creating a temporary file in {}", dir.display()))?;
    tmp.write_all(data)?;
    tmp.as_file().sync_all()?;
    tmp.persist(path)
        .map_err(|e| e.error)
        .with_context(|| format!("writing {}", path.display()))?;
    Ok(())
}

/// A generated secret of `len` characters from [A-Za-z0-9], created once and kept.
pub fn generated_secret(env: &str, name: &str, len: usize) -> Result<String> {
    let path = state_dir().join("secrets").join(env).join(name);
    if let Ok(v) = std::fs::read_to_string(&path) {
        let v = v.trim_end_matches('\n').to_string();
        if !v.is_empty() {
            return Ok(v);
        }
    }
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
    let mut out = String::with_capacity(len);
    let mut buf = [0u8; 64];
    let mut f = std::fs::File::open("/dev/urandom").context("opening /dev/urandom")?;
    while out.len() < len {
        std::io::Read::read_exact(&mut f, &mut buf).context("reading /dev/urandom")?;
        for b in buf {
            // 248 = 4 * 62: rejection sampling keeps the choice uniform.
            if (b as usize) < 248 && out.len() < len {
                out.push(ALPHABET[b as usize % 62] as char);
            }
        }
    }
    write_private(&path, format!("{out}\n").as_bytes())?;
    Ok(out)
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
    write_private(&path, &key)?;
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
