//! Files kiln keeps on this machine (the controller): its private state directory, the
//! lab's state directory, generated secrets, and the one way kiln writes a file here
//! (atomic, 0600). The lowest layer: it imports nothing of kiln.

use std::io::Write;
use std::path::PathBuf;

use anyhow::{Context, Result};

/// `$XDG_STATE_HOME/kiln` (default `~/.local/state/kiln`): this machine's private state.
pub fn state_dir() -> PathBuf {
    let base = std::env::var_os("XDG_STATE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".local/state")))
        .unwrap_or_else(|| PathBuf::from("/tmp"));
    base.join("kiln")
}

/// The lab's state directory (images, containers, its SSH key, its artifacts):
/// `$KILN_LAB_DIR`, default `/var/lib/kiln/lab`.
pub fn lab_state_dir() -> PathBuf {
    std::env::var_os("KILN_LAB_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/var/lib/kiln/lab"))
}

/// Where `kiln lab up` puts the files it serves to lab hosts (`minio`, `minio.sha256`).
pub fn lab_artifacts_dir() -> PathBuf {
    lab_state_dir().join("artifacts")
}

/// Writes `data` to `path` atomically with mode 0600 (parents created): a temporary
/// file created exclusively under an unpredictable name in the same directory (no other
/// user can plant or pre-open it), fsynced, then renamed over `path`.
pub fn write_private(path: &std::path::Path, data: &[u8]) -> Result<()> {
    write_atomic(path, data, 0o600)
}

/// [`write_private`] with another mode, for files meant to be shared (an age-encrypted
/// secret committed to the repository is ciphertext: 0644).
pub fn write_atomic(path: &std::path::Path, data: &[u8], mode: u32) -> Result<()> {
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
    if mode != 0o600 {
        use std::os::unix::fs::PermissionsExt;
        tmp.as_file()
            .set_permissions(std::fs::Permissions::from_mode(mode))?;
    }
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
