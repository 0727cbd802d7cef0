//! Stopping and removing hosts, and the shared network once no host uses it.

use std::cmp::Reverse;
use std::fs;
use std::path::Path;
use std::process::Command;
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use super::{apt_cache::*, artifacts, host::*, net::*, util::*, BRIDGE};

/// How long a container gets to power off after SIGTERM before it is killed.
const STOP_GRACE: Duration = Duration::from_secs(15);

/// Stops the host's container and removes all of its pieces.
pub(super) fn remove_host(host: &Host, say: &dyn Fn(String)) -> Result<()> {
    let result = (|| {
        let exists = host.dir.exists()
            || Path::new("/run/netns").join(&host.netns).exists()
            || Path::new("/sys/class/net").join(&host.veth).exists()
            || host.cgroup_dirs().iter().any(|d| d.exists());
        if !exists {
            return Ok(());
        }
        say(format!("removing {}", host.label()));
        stop_container(host, say)?;
        clean_runtime_leftovers(host)?;
        remove_tree(&host.dir)
    })();
    result.with_context(|| format!("lab host {}", host.label()))
}

/// SIGTERMs the recorded nspawn (which powers the container off), waits up to
/// STOP_GRACE, then SIGKILLs it. Only the recorded pid, and only if it still is our
/// nspawn: after a reboot or a kill the number may belong to anything.
pub(super) fn stop_container(host: &Host, say: &dyn Fn(String)) -> Result<()> {
    let Some(pid) = host.running_pid() else {
        return Ok(());
    };
    say(format!("stopping {} (pid {pid})", host.label()));
    signal(pid, "TERM");
    let deadline = Instant::now() + STOP_GRACE;
    while host.running_pid().is_some() {
        if Instant::now() > deadline {
            say(format!(
                "{} did not power off within {} s; killing it",
                host.label(),
                STOP_GRACE.as_secs()
            ));
            signal(pid, "KILL");
            wait_until(Duration::from_secs(5), || host.running_pid().is_none());
            break;
        }
        thread::sleep(Duration::from_millis(100));
    }
    remove_file_if_exists(&host.pid_file())
}

/// Removes what a stopped or killed container leaves outside its directory: the
/// processes still in its cgroups (when nspawn is SIGKILLed the container's own
/// init can survive it), the cgroup directories, the namespace and the veth.
pub(super) fn clean_runtime_leftovers(host: &Host) -> Result<()> {
    for dir in host.cgroup_dirs() {
        kill_cgroup(&dir)?;
    }
    for dir in host.cgroup_dirs() {
        remove_cgroup(&dir)?;
    }
    teardown_network(host)?;
    remove_file_if_exists(&host.pid_file())
}

/// SIGKILLs every process in a cgroup tree. Only processes the lab started live
/// there: the directory is named after the host and created by the lab.
pub(super) fn kill_cgroup(dir: &Path) -> Result<()> {
    if !dir.exists() {
        return Ok(());
    }
    // cgroup2 can kill a whole tree atomically (Linux 5.14+); v1 needs a sweep,
    // repeated because a dying tree can still fork.
    let kill_file = dir.join("cgroup.kill");
    if kill_file.exists() {
        fs::write(&kill_file, "1")
            .with_context(|| format!("cannot write {}", kill_file.display()))?;
    }
    for _ in 0..50 {
        let pids = cgroup_pids(dir);
        if pids.is_empty() {
            return Ok(());
        }
        for pid in pids {
            signal(pid, "KILL");
        }
        thread::sleep(Duration::from_millis(100));
    }
    bail!(
        "processes are still left in {} after SIGKILL",
        dir.display()
    )
}

pub(super) fn cgroup_pids(dir: &Path) -> Vec<u32> {
    let mut pids = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        if let Ok(text) = fs::read_to_string(d.join("cgroup.procs")) {
            pids.extend(text.lines().filter_map(|l| l.trim().parse::<u32>().ok()));
        }
        if let Ok(entries) = fs::read_dir(&d) {
            stack.extend(
                entries
                    .flatten()
                    .filter(|e| e.path().is_dir())
                    .map(|e| e.path()),
            );
        }
    }
    pids
}

/// Removes a cgroup directory and its children, deepest first. A cgroup can only be
/// removed once its processes are fully gone, which lags a little behind SIGKILL, so
/// this retries for a few seconds.
pub(super) fn remove_cgroup(dir: &Path) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        if !dir.exists() {
            return Ok(());
        }
        let mut dirs = Vec::new();
        let mut stack = vec![dir.to_path_buf()];
        while let Some(d) = stack.pop() {
            if let Ok(entries) = fs::read_dir(&d) {
                stack.extend(
                    entries
                        .flatten()
                        .filter(|e| e.path().is_dir())
                        .map(|e| e.path()),
                );
            }
            dirs.push(d);
        }
        dirs.sort_by_key(|d| Reverse(d.components().count()));
        let mut last_error = None;
        for d in &dirs {
            if let Err(e) = fs::remove_dir(d) {
                if e.kind() != std::io::ErrorKind::NotFound {
                    last_error = Some(e);
                }
            }
        }
        match last_error {
            None => return Ok(()),
            Some(e) if Instant::now() > deadline => {
                return Err(e).with_context(|| format!("cannot remove cgroup {}", dir.display()));
            }
            Some(_) => thread::sleep(Duration::from_millis(100)),
        }
    }
}

/// After the last host of any env is gone, removes the bridge and stops the
/// apt cache the lab started (its files stay on disk for the next `up`).
pub(super) fn remove_shared_network_if_unused(
    state_dir: &Path,
    log: &mut dyn FnMut(&str),
) -> Result<()> {
    let bridge = Path::new("/sys/class/net").join(BRIDGE);
    if !bridge.exists() {
        return Ok(());
    }
    let ports = fs::read_dir(bridge.join("brif"))
        .map(|d| d.count())
        .unwrap_or(0);
    if ports > 0 {
        log(&format!(
            "keeping bridge {BRIDGE}: {ports} lab host(s) of other envs still use it"
        ));
        return Ok(());
    }
    artifacts::stop(state_dir, log)?;
    log(&format!("removing bridge {BRIDGE}"));
    run(Command::new("ip").args(["link", "del", BRIDGE]))?;
    stop_apt_cache(state_dir, log)?;
    Ok(())
}
