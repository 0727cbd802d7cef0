//! The instances' SSH host keys, read from their console output and recorded in the
//! environment's known_hosts.

use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use base64::Engine;

use crate::provider::known_hosts;
use crate::spec::Environment;

use super::{client::*, instances::*};

/// The SSH host public keys cloud-init printed on the console (`TYPE BASE64` each),
/// from the last `BEGIN SSH HOST KEY KEYS` block.
pub fn parse_console_host_keys(console: &str) -> Vec<String> {
    let mut keys = vec![];
    let mut inside = false;
    let mut current = vec![];
    for line in console.lines() {
        let l = line.trim();
        if l.contains("-----BEGIN SSH HOST KEY KEYS-----") {
            inside = true;
            current.clear();
        } else if l.contains("-----END SSH HOST KEY KEYS-----") {
            if inside {
                keys = std::mem::take(&mut current);
            }
            inside = false;
        } else if inside {
            // A key line may carry a logger prefix: find the key type, then its key.
            let tokens: Vec<&str> = l.split_whitespace().collect();
            let at = tokens
                .iter()
                .position(|t| t.starts_with("ssh-") || t.starts_with("ecdsa-sha2-"));
            if let Some((t, k)) = at.and_then(|p| Some((tokens[p], *tokens.get(p + 1)?))) {
                if base64::engine::general_purpose::STANDARD.decode(k).is_ok() {
                    current.push(format!("{t} {k}"));
                }
            }
        }
    }
    keys
}

/// Records each instance's SSH host keys in the environment's known_hosts, from its
/// console output (read over the authenticated EC2 API). Instances created by this run
/// always get their keys (re)recorded; found ones only when their address has no line
/// yet. Polls until cloud-init has printed the keys or `timeout` passes.
pub async fn record_host_keys(
    ec2: &Ec2,
    env: &Environment,
    ensured: &[Ensured],
    timeout: Duration,
    log: &(dyn Fn(&str) + Sync),
) -> Result<()> {
    let known_hosts = env.known_hosts();
    for e in ensured {
        let conn = crate::desired::connection(env, &e.host, None);
        let name = known_hosts::host_name(&e.address, conn.port);
        if !e.created && known_hosts::has(&known_hosts, &name) {
            continue;
        }
        let start = Instant::now();
        let keys = loop {
            let console = ec2.console_output(&e.region, &e.instance_id).await?;
            let keys = parse_console_host_keys(&console);
            if !keys.is_empty() {
                break keys;
            }
            if start.elapsed() > timeout {
                bail!(
                    "host {}: instance {} printed no SSH host keys on its console within {} s \
                     (cloud-init prints them between `-----BEGIN SSH HOST KEY KEYS-----` and \
                     `-----END SSH HOST KEY KEYS-----`; an image without cloud-init needs its key \
                     added to {} by hand, or `ssh.accept_new = true`)",
                    e.host,
                    e.instance_id,
                    timeout.as_secs(),
                    known_hosts.display()
                );
            }
            tokio::time::sleep(Duration::from_secs(5).min(timeout)).await;
        };
        known_hosts::replace(&known_hosts, &name, &keys)?;
        log(&format!(
            "{}: recorded {} host key(s) of {} for {name} in {}",
            e.host,
            keys.len(),
            e.instance_id,
            known_hosts.display()
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// As a Debian 12 cloud image's cloud-init prints it (keys shortened).
    const CONSOLE: &str = "\
[   12.345678] cloud-init[512]: Cloud-init v. 22.4.2 running 'modules:final'
<14>Jan  1 00:00:00 cloud-init: #############################################################
<14>Jan  1 00:00:00 cloud-init: -----BEGIN SSH HOST KEY FINGERPRINTS-----
<14>Jan  1 00:00:00 cloud-init: 256 SHA256:Qe2H3Ykq0Jq9yJ0l8o8e3JcY4p1S1Xq6o3l1m3Y8k0c root@ip-10-0-1-5 (ECDSA)
<14>Jan  1 00:00:00 cloud-init: 256 SHA256:3aT0g2Jm8q2l6o0p3S1q1n8m2k4o3p2l1m0n9b8v7c6 root@ip-10-0-1-5 (ED25519)
<14>Jan  1 00:00:00 cloud-init: -----END SSH HOST KEY FINGERPRINTS-----
<14>Jan  1 00:00:00 cloud-init: #############################################################
-----BEGIN SSH HOST KEY KEYS-----
ecdsa-sha2-nistp256 AAAAE2VjZHNhLXNoYTItbmlzdHAyNTYAAAAIbmlzdHAyNTY= root@ip-10-0-1-5
<14>Jan  1 00:00:00 ec2: ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIGx1bW9zIGtleQ== root@ip-10-0-1-5
-----END SSH HOST KEY KEYS-----
[   13.000000] cloud-init[512]: Cloud-init v. 22.4.2 finished
";

    #[test]
    fn host_keys_from_console() {
        assert_eq!(
            parse_console_host_keys(CONSOLE),
            vec![
                "ecdsa-sha2-nistp256 AAAAE2VjZHNhLXNoYTItbmlzdHAyNTYAAAAIbmlzdHAyNTY=",
                "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIGx1bW9zIGtleQ==",
            ]
        );
        // No block, an unterminated block, or garbage: no keys.
        assert!(parse_console_host_keys("Linux version 6.1\nlogin:").is_empty());
        assert!(parse_console_host_keys(
            "-----BEGIN SSH HOST KEY KEYS-----\nssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIGx1bW9zIGtleQ==\n"
        )
        .is_empty());
        assert!(parse_console_host_keys(
            "-----BEGIN SSH HOST KEY KEYS-----\nrm -rf / now\n-----END SSH HOST KEY KEYS-----\n"
        )
        .is_empty());
        // A second boot prints again: the last block wins.
        let twice = format!(
            "{CONSOLE}-----BEGIN SSH HOST KEY KEYS-----\nssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIG5ldyBrZXk= root@x\n-----END SSH HOST KEY KEYS-----\n"
        );
        assert_eq!(
            parse_console_host_keys(&twice),
            vec!["ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIG5ldyBrZXk="]
        );
    }
}
