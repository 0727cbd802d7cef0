//! The known_hosts files providers write: the lab records each container's host key,
//! EC2 the keys an instance printed on its console. One way to edit them (drop the
//! lines of some names, append new lines), written atomically through
//! [`crate::state::write_private`].

use std::path::Path;

use anyhow::{Context, Result};

/// The known_hosts name of an address and port: `ADDR` on port 22, else `[ADDR]:PORT`.
pub fn host_name(address: &str, port: u16) -> String {
    if port == 22 {
        address.to_string()
    } else {
        format!("[{address}]:{port}")
    }
}

/// Rewrites the known_hosts file at `path`: every line naming one of `remove` goes,
/// then the lines `add` are appended. Unchanged text is not rewritten, and a missing
/// file with nothing to add stays missing. Returns whether the file was written.
pub fn edit(path: &Path, remove: &[String], add: &[String]) -> Result<bool> {
    let current = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
        Err(e) => return Err(e).with_context(|| format!("cannot read {}", path.display())),
    };
    let mut text = String::new();
    for line in current.lines() {
        let names = line.split_whitespace().next().unwrap_or("");
        if !names.split(',').any(|n| remove.iter().any(|r| r == n)) {
            text.push_str(line);
            text.push('\n');
        }
    }
    for line in add {
        text.push_str(line);
        text.push('\n');
    }
    if text == current {
        return Ok(false);
    }
    crate::state::write_private(path, text.as_bytes())?;
    Ok(true)
}

/// Replaces the lines for `name` in the known_hosts file at `path` with `keys`
/// (`TYPE BASE64` each).
pub fn replace(path: &Path, name: &str, keys: &[String]) -> Result<()> {
    let lines: Vec<String> = keys.iter().map(|k| format!("{name} {k}")).collect();
    edit(path, &[name.to_string()], &lines).map(|_| ())
}

/// True when the known_hosts file at `path` has a line for `name`.
pub fn has(path: &Path, name: &str) -> bool {
    std::fs::read_to_string(path)
        .map(|t| {
            t.lines().any(|l| {
                l.split_whitespace()
                    .next()
                    .map(|n| n.split(',').any(|n| n == name))
                    .unwrap_or(false)
            })
        })
        .unwrap_or(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_are_replaced_for_one_name_only() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("prod.known_hosts");
        std::fs::write(
            &p,
            "10.0.1.5 ssh-ed25519 OLD\n10.0.1.6 ssh-ed25519 OTHER\n[10.0.1.5]:2222 ssh-ed25519 PORT\n",
        )
        .unwrap();
        replace(&p, "10.0.1.5", &["ssh-ed25519 NEW".into()]).unwrap();
        assert_eq!(
            std::fs::read_to_string(&p).unwrap(),
            "10.0.1.6 ssh-ed25519 OTHER\n[10.0.1.5]:2222 ssh-ed25519 PORT\n10.0.1.5 ssh-ed25519 NEW\n"
        );
        assert!(has(&p, "10.0.1.5"));
        assert!(!has(&p, "10.0.1.7"));
        assert_eq!(host_name("10.0.1.5", 2222), "[10.0.1.5]:2222");
    }

    #[test]
    fn edit_removes_several_names_and_leaves_a_missing_file_missing() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("lab.known_hosts");
        assert!(!edit(&p, &["10.233.0.2".into()], &[]).unwrap());
        assert!(!p.exists(), "nothing to add: no file");
        edit(
            &p,
            &[],
            &[
                "10.233.0.2 ssh-ed25519 A".into(),
                "10.233.0.3 ssh-ed25519 B".into(),
                "10.233.0.4 ssh-ed25519 C".into(),
            ],
        )
        .unwrap();
        assert!(edit(&p, &["10.233.0.2".into(), "10.233.0.4".into()], &[]).unwrap());
        assert!(
            !edit(&p, &["10.233.0.9".into()], &[]).unwrap(),
            "unchanged: not written"
        );
        assert_eq!(
            std::fs::read_to_string(&p).unwrap(),
            "10.233.0.3 ssh-ed25519 B\n"
        );
    }
}
