//! Waiting for a started container: SSH answers with strict host key checking, then
//! systemd's view of the boot.

use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use super::{host::*, util::*};

/// How long a host may take from the start of its container until SSH answers.
const SSH_DEADLINE: Duration = Duration::from_secs(60);

/// Polls the host until `ssh root@ADDR true` succeeds with the lab key and strict
/// host key checking, or the deadline passes. Returns how long it took.
pub(super) fn wait_for_ssh(
    host: &Host,
    key: &Path,
    known_hosts: &Path,
    mut child: Option<&mut Child>,
) -> Result<Duration> {
    let start = Instant::now();
    let mut last_error = String::from("port 22 never accepted a connection");
    let target = SocketAddr::from((host.address, 22));
    loop {
        // A container that died will never answer: say so now, not in 60 s.
        let exited = match child.as_deref_mut() {
            Some(c) => c
                .try_wait()
                .context("cannot wait for systemd-nspawn")?
                .map(|s| s.to_string()),
            None => host
                .running_pid()
                .is_none()
                .then(|| "process gone".to_string()),
        };
        if let Some(how) = exited {
            bail!(
                "lab host {}: its container stopped ({how}) before SSH answered; end of {}:\n{}",
                host.label(),
                host.console_log().display(),
                tail(&host.console_log(), 30)
            );
        }
        // A bare TCP connect is much cheaper than starting ssh while sshd is not up yet.
        if TcpStream::connect_timeout(&target, Duration::from_millis(500)).is_ok() {
            let out = Command::new("ssh")
                .args(ssh_args(key, known_hosts))
                .arg(format!("root@{}", host.address))
                .arg("true")
                .stdin(Stdio::null())
                .output()
                .context("cannot run ssh")?;
            if out.status.success() {
                return Ok(start.elapsed());
            }
            last_error = format!(
                "ssh failed ({}): {}",
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        if start.elapsed() > SSH_DEADLINE {
            bail!(
                "lab host {}: SSH did not answer within {} s (last: {last_error}); end of {}:\n{}",
                host.label(),
                SSH_DEADLINE.as_secs(),
                host.console_log().display(),
                tail(&host.console_log(), 30)
            );
        }
        thread::sleep(Duration::from_millis(250));
    }
}

/// Waits for the host's boot to finish and reports systemd's view of it: "running",
/// or "degraded" with the failed units. A degraded host is reported, not refused:
/// what failed may not matter to the caller, and the host is reachable either way.
pub(super) fn boot_state(host: &Host, key: &Path, known_hosts: &Path) -> Result<String> {
    // SSH answers before the boot has finished; --wait blocks until it has, bounded
    // by timeout(1) so a unit stuck in "activating" cannot hang `up`.
    let script = "state=$(timeout 30 systemctl is-system-running --wait); \
                  echo \"$state\"; [ \"$state\" = running ] || systemctl --failed --no-legend --plain";
    let out = run(Command::new("ssh")
        .args(ssh_args(key, known_hosts))
        .arg(format!("root@{}", host.address))
        .arg(script))
    .with_context(|| {
        format!(
            "lab host {}: cannot ask systemd for its state",
            host.label()
        )
    })?;
    let mut lines = out.lines().map(str::trim).filter(|l| !l.is_empty());
    let state = lines.next().unwrap_or("unknown").to_string();
    let failed: Vec<&str> = lines.filter_map(|l| l.split_whitespace().next()).collect();
    Ok(if failed.is_empty() {
        state
    } else {
        format!("{state}, failed units: {}", failed.join(" "))
    })
}

/// Options for ssh that depend on nothing but the lab: no user config, no agent,
/// strict checking against the lab's known_hosts only.
pub(super) fn ssh_args(key: &Path, known_hosts: &Path) -> Vec<String> {
    vec![
        "-F".into(),
        "/dev/null".into(),
        "-i".into(),
        key.display().to_string(),
        "-o".into(),
        "IdentitiesOnly=yes".into(),
        "-o".into(),
        "BatchMode=yes".into(),
        "-o".into(),
        format!("UserKnownHostsFile={}", known_hosts.display()),
        "-o".into(),
        "GlobalKnownHostsFile=/dev/null".into(),
        "-o".into(),
        "StrictHostKeyChecking=yes".into(),
        "-o".into(),
        "ConnectTimeout=5".into(),
        "-o".into(),
        "LogLevel=ERROR".into(),
    ]
}
