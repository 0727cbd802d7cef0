//! The lab's apt cache on the bridge: the only way out for the hosts' apt.
//!
//! A small caching HTTP proxy (`apt_cache.py`, Python's standard library only) that fetches
//! each file once however many hosts ask for it at the same moment. It replaced
//! apt-cacher-ng, whose parallel revalidations of one InRelease collide and leave apt hanging
//! on a half-closed socket when many new hosts refresh at once (BENCHMARKS.md, Analysis; the
//! CI run of stop 26 lost a whole suite to it). One process serves every lab environment; it
//! runs in its own session so the lab knows its pid, and stops with the bridge.

use std::fs;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{bail, Result};

use super::{util::*, BRIDGE_IP, PROXY_PORT};

/// The proxy itself, written to the state directory at every `up` (a changed script
/// restarts the proxy, so an upgraded kiln never talks to an older one).
const SCRIPT: &str = include_str!("apt_cache.py");
/// The mirrors the cache fetches from: the lab hosts' sources (super::MIRROR and
/// super::SECURITY_MIRROR) and Debian's security host, nothing else.
const MIRRORS: &[&str] = &["deb.debian.org", "security.debian.org"];

fn script_path(state_dir: &Path) -> PathBuf {
    state_dir.join("apt-cache.py")
}

fn pid_path(state_dir: &Path) -> PathBuf {
    state_dir.join("apt-cache.pid")
}

/// Where the cached files live (kept when the lab goes down, for the next `up`).
pub(super) fn cache_dir(state_dir: &Path) -> PathBuf {
    state_dir.join("apt-cache")
}

fn address() -> SocketAddr {
    format!("{BRIDGE_IP}:{PROXY_PORT}")
        .parse()
        .expect("valid address")
}

fn listening() -> bool {
    TcpStream::connect_timeout(&address(), Duration::from_millis(500)).is_ok()
}

/// Makes sure the apt cache runs on the bridge address (the bridge must exist), restarting
/// the one the lab started when its script changed.
pub(super) fn ensure_apt_cache(state_dir: &Path, log: &mut dyn FnMut(&str)) -> Result<()> {
    let script = script_path(state_dir);
    let current = read_optional(&script)?;
    let changed = current != SCRIPT;
    if changed {
        write_file(&script, SCRIPT.as_bytes(), 0o644)?;
    }
    let ours = our_apt_cache_pid(state_dir);
    if listening() && ours.is_none() {
        // Another lab directory's kiln may run the cache for the same bridge: use it.
        if is_kiln_apt_cache() {
            log(&format!(
                "using the apt cache another lab directory started on {}",
                address()
            ));
            return Ok(());
        }
        bail!(
            "something that is not the lab's apt cache listens on {}; the lab needs that port \
             (stop it, or end the process that holds it)",
            address()
        );
    }
    if listening() && !changed {
        return Ok(());
    }
    if let Some(pid) = ours {
        log(&format!(
            "restarting the apt cache (pid {pid}): {}",
            if changed {
                "its script changed"
            } else {
                "it does not answer"
            }
        ));
        stop_pid(state_dir, pid);
    }
    log(&format!("starting the apt cache on {}", address()));
    let mut cmd = Command::new("setsid");
    cmd.arg("python3")
        .arg(&script)
        .arg("--listen")
        .arg(address().to_string())
        .arg("--dir")
        .arg(cache_dir(state_dir));
    for m in MIRRORS {
        cmd.args(["--allow", m]);
    }
    spawn_server(
        "apt cache",
        cmd,
        &state_dir.join("apt-cache.log"),
        &pid_path(state_dir),
        listening,
    )
}

/// Whether what listens on the cache's address is a kiln apt cache (it names itself in
/// its Server header, also on the 403 it gives a host that is not a mirror).
fn is_kiln_apt_cache() -> bool {
    let Ok(mut s) = TcpStream::connect_timeout(&address(), Duration::from_secs(2)) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
    if s.write_all(b"HEAD http://kiln.invalid/ HTTP/1.0\r\n\r\n")
        .is_err()
    {
        return false;
    }
    let mut head = Vec::new();
    let _ = s.take(4096).read_to_end(&mut head);
    String::from_utf8_lossy(&head).lines().any(|l| {
        l.to_ascii_lowercase()
            .starts_with("server: kiln-lab-apt-cache")
    })
}

/// The pid of the apt cache this lab started, if it still runs.
pub(super) fn our_apt_cache_pid(state_dir: &Path) -> Option<u32> {
    let pid: u32 = fs::read_to_string(pid_path(state_dir))
        .ok()?
        .trim()
        .parse()
        .ok()?;
    let args = process_args(pid)?;
    let script = script_path(state_dir);
    args.iter().any(|a| Path::new(a) == script).then_some(pid)
}

fn stop_pid(state_dir: &Path, pid: u32) {
    signal(pid, "TERM");
    if !wait_until(Duration::from_secs(10), || {
        our_apt_cache_pid(state_dir).is_none()
    }) {
        signal(pid, "KILL");
        wait_until(Duration::from_secs(5), || {
            our_apt_cache_pid(state_dir).is_none()
        });
    }
}

/// Stops the apt cache the lab started (after the last host is gone); its files stay.
pub(super) fn stop_apt_cache(state_dir: &Path, log: &mut dyn FnMut(&str)) -> Result<()> {
    if let Some(pid) = our_apt_cache_pid(state_dir) {
        log(&format!("stopping the apt cache (pid {pid})"));
        stop_pid(state_dir, pid);
    }
    remove_file_if_exists(&pid_path(state_dir))
}
