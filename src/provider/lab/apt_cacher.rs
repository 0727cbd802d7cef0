//! apt-cacher-ng on the bridge: the only way out for the hosts' apt.

use std::fs;
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::{Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use super::{util::*, PROXY_PORT};

/// The Debian backend apt-cacher-ng must know; its packaged default (ftp.debian.org)
/// does not answer on every network, and then every request gets "503 Host not found".
const ACNG_BACKEND: &str = "http://deb.debian.org/debian/";
const ACNG_BACKENDS_FILE: &str = "/etc/apt-cacher-ng/backends_debian";

/// Makes sure apt-cacher-ng knows the Debian backend and listens on port 3142 of
/// the root namespace (all addresses, so the hosts reach it on the bridge address).
pub(super) fn ensure_apt_cacher(state_dir: &Path, log: &mut dyn FnMut(&str)) -> Result<()> {
    let changed = ensure_acng_backend()?;
    let local = SocketAddr::from(([127, 0, 0, 1], PROXY_PORT));
    let listening = TcpStream::connect_timeout(&local, Duration::from_secs(1)).is_ok();
    if listening && !changed {
        return Ok(());
    }
    if listening {
        // It read its backends at start, so it must restart to see the new one.
        match our_apt_cacher_pid(state_dir) {
            Some(pid) => {
                log("restarting apt-cacher-ng to load its new Debian backend");
                signal(pid, "TERM");
                if !wait_until(Duration::from_secs(10), || {
                    TcpStream::connect_timeout(&local, Duration::from_millis(200)).is_err()
                }) {
                    bail!("apt-cacher-ng (pid {pid}) did not stop after SIGTERM");
                }
            }
            None => {
                log(&format!(
                    "warning: an apt-cacher-ng not started by kiln runs on port {PROXY_PORT}; \
                     restart it so that it reads {ACNG_BACKENDS_FILE}, or apt in lab hosts may get 503"
                ));
                return Ok(());
            }
        }
    }
    log("starting apt-cacher-ng");
    let user_exists = read_optional(Path::new("/etc/passwd"))?
        .lines()
        .any(|l| l.starts_with("apt-cacher-ng:"));
    // Its runtime directory is on /run and gone after a reboot; the init script
    // that would make it is not run on a machine without an init system.
    let mut install = Command::new("install");
    install.arg("-d");
    if user_exists {
        install.args(["-o", "apt-cacher-ng", "-g", "apt-cacher-ng"]);
    }
    run(install.arg("/run/apt-cacher-ng"))?;

    // It runs in the foreground of a session of its own, rather than daemonizing,
    // so the lab knows its pid and can stop it after the last host is gone. It runs
    // as its package's user, as the packaged service would, so the cache keeps the
    // ownership the package expects.
    let log_path = state_dir.join("apt-cacher-ng.log");
    let out = fs::File::create(&log_path)
        .with_context(|| format!("cannot create {}", log_path.display()))?;
    let err = out
        .try_clone()
        .context("cannot duplicate the apt-cacher-ng log handle")?;
    let mut cmd = Command::new("setsid");
    if user_exists {
        cmd.args([
            "setpriv",
            "--reuid=apt-cacher-ng",
            "--regid=apt-cacher-ng",
            "--init-groups",
        ]);
    }
    cmd.args([
        "/usr/sbin/apt-cacher-ng",
        "-c",
        "/etc/apt-cacher-ng",
        "ForeGround=1",
    ]);
    cmd.stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        .current_dir("/");
    let mut child = cmd
        .spawn()
        .context("cannot run setsid … /usr/sbin/apt-cacher-ng")?;
    write_file(
        &state_dir.join("apt-cacher-ng.pid"),
        format!("{}\n", child.id()).as_bytes(),
        0o644,
    )?;
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        if TcpStream::connect_timeout(&local, Duration::from_millis(200)).is_ok() {
            return Ok(());
        }
        if let Some(status) = child.try_wait().context("cannot wait for apt-cacher-ng")? {
            bail!(
                "apt-cacher-ng exited at once ({status}):\n{}",
                tail(&log_path, 20)
            );
        }
        if Instant::now() > deadline {
            bail!(
                "apt-cacher-ng did not listen on port {PROXY_PORT} within 15 s:\n{}",
                tail(&log_path, 20)
            );
        }
        thread::sleep(Duration::from_millis(100));
    }
}

/// Puts the Debian backend first in apt-cacher-ng's backends_debian (first, because
/// an unreachable earlier backend costs a timeout on every miss). Returns whether
/// the file changed.
pub(super) fn ensure_acng_backend() -> Result<bool> {
    let current = read_optional(Path::new(ACNG_BACKENDS_FILE))?;
    if current.lines().any(|l| l.trim() == ACNG_BACKEND) {
        return Ok(false);
    }
    write_file(
        Path::new(ACNG_BACKENDS_FILE),
        format!("{ACNG_BACKEND}\n{current}").as_bytes(),
        0o644,
    )?;
    Ok(true)
}

pub(super) fn our_apt_cacher_pid(state_dir: &Path) -> Option<u32> {
    let pid: u32 = fs::read_to_string(state_dir.join("apt-cacher-ng.pid"))
        .ok()?
        .trim()
        .parse()
        .ok()?;
    let args = process_args(pid)?;
    args.first()
        .is_some_and(|a| a.ends_with("apt-cacher-ng"))
        .then_some(pid)
}
