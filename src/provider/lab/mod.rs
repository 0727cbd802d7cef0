//! The "lab" provider: local Debian 12 test hosts on this machine.
//!
//! Every lab host is a `systemd-nspawn` container booted from its own copy of a
//! debootstrapped Debian 12 image, living in its own network namespace whose `eth0`
//! is one end of a veth pair plugged into the bridge [`BRIDGE`] in the root
//! namespace. The hosts have no route to the outside world; apt reaches the Debian
//! mirror through the lab's apt cache (a caching proxy, `apt_cache.rs`) listening on
//! the bridge address. Each host gets its own SSH host keys, whose public half is
//! recorded in the caller's known_hosts file, and the lab's own SSH key is authorized
//! for root, so the rest of kiln talks to lab hosts exactly as it talks to real
//! servers: over SSH with strict host key checking.
//!
//! Everything the lab makes lives under `LabConfig::state_dir`:
//!
//! ```text
//! state_dir/
//!   ssh/id_ed25519{,.pub}         the lab key (see key_path)
//!   images/bookworm/              the base image, built once (bookworm.tmp while building)
//!   hosts/<env>-<name>/           one directory per host:
//!     lab-host                    who owns this directory (env, name, address)
//!     rootfs/                     the host's root filesystem (rootfs.tmp while being made)
//!     pid                         pid of the host's systemd-nspawn process
//!     console.log                 the container's console output of its latest boot
//!   apt-cache.{py,pid,log}        the apt cache (proxy) the lab runs
//!   apt-cache/                    its cached files, kept for the next `up`
//! ```
//!
//! Outside the state directory the lab makes, per host, a network namespace
//! (`kiln-<hash>`), a veth (`vk<hash>`) and cgroup directories
//! (`/sys/fs/cgroup/{systemd,unified}/kiln-lab-<env>-<name>`), plus the shared bridge.
//! None of these survive a reboot while the state directory does, and processes may
//! be killed at any moment by whoever ran kiln, so every operation here starts by
//! looking at what really exists and cleaning what a killed run left behind.
//!
//! The machine this was written on is a VM whose PID 1 is not systemd, with the
//! hybrid cgroup layout (named v1 `systemd` hierarchy plus cgroup2 at `unified`).
//! There is no host D-Bus, so nspawn runs with `--register=no --keep-unit`, and
//! each container is started from its own cgroup; otherwise all containers share
//! one cgroup tree and each container's systemd sees (and fights over) the
//! services of the others.

mod apt_cache;
pub mod artifacts;
mod boot;
mod host;
mod machine;
mod net;
mod provider;
mod remove;
mod up;
mod util;

use std::fs;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context, Result};

use super::known_hosts;
use host::*;
use machine::*;
use remove::*;
use up::*;
use util::*;

/// The bridge in the root namespace that every lab host's veth is plugged into.
pub const BRIDGE: &str = "kilnbr0";
/// The bridge's address (a /24); lab hosts use 10.233.0.2 to 10.233.0.254 and route
/// through it, and the lab's apt cache answers on it.
pub const BRIDGE_IP: &str = "10.233.0.1";

/// One lab host as the caller wants it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LabHost {
    pub name: String,
    pub address: Ipv4Addr,
    /// Extra names (site domains) written next to the host's name in every lab host's
    /// /etc/hosts, since the lab has no DNS.
    pub aliases: Vec<String>,
}

/// One environment's lab: its hosts and where the lab keeps its files.
#[derive(Debug, Clone)]
pub struct LabConfig {
    /// Environment name, e.g. "lab"; host directories, machine names and cgroups
    /// are prefixed with it so that several environments can share the machine.
    pub env: String,
    pub hosts: Vec<LabHost>,
    /// Everything the lab makes lives under it, e.g. /var/lib/kiln/lab.
    pub state_dir: PathBuf,
    /// The known_hosts file the lab writes the hosts' public host keys into
    /// (one `ADDR ssh-ed25519 KEY` line per host).
    pub known_hosts: PathBuf,
}

/// A lab host's state: `Running` (its container process is alive, it may still be
/// booting), `Stopped` (its root filesystem exists but no container runs it) or `Missing`
/// (it has no root filesystem: `up` would create it).
pub use super::HostState;
pub use provider::LabProvider;

impl LabConfig {
    /// The lab of an environment: its `provider = "lab"` hosts (those with an address)
    /// under the lab's state directory ([`crate::state::lab_state_dir`]).
    pub fn for_env(env: &crate::spec::Environment) -> LabConfig {
        let hosts: Vec<LabHost> = env
            .spec
            .hosts
            .iter()
            .filter(|(_, h)| h.provider == crate::spec::Provider::Lab)
            .filter_map(|(n, h)| {
                h.address
                    .as_ref()
                    .and_then(|a| a.parse().ok())
                    .map(|address| LabHost {
                        name: n.clone(),
                        address,
                        aliases: h.aliases.clone(),
                    })
            })
            .collect();
        LabConfig {
            env: env.name.clone(),
            hosts,
            state_dir: crate::state::lab_state_dir(),
            known_hosts: env.known_hosts(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostStatus {
    pub name: String,
    pub address: Ipv4Addr,
    pub state: HostState,
    /// The systemd-nspawn pid, when running.
    pub pid: Option<u32>,
}

/// Debian release of the base image and of every lab host.
const SUITE: &str = "bookworm";
/// The same mirrors as this machine's apt uses.
const MIRROR: &str = "http://deb.debian.org/debian";
const SECURITY_MIRROR: &str = "http://deb.debian.org/debian-security";

/// The lab's apt cache's port, on the bridge address (not apt-cacher-ng's 3142, so a
/// machine that runs apt-cacher-ng for itself keeps it).
const PROXY_PORT: u16 = 3143;

/// Path of the lab's SSH private key (ed25519, created on first `up`, mode 0600); its
/// .pub is authorized for root in every lab host.
pub fn key_path(state_dir: &Path) -> PathBuf {
    state_dir.join("ssh").join("id_ed25519")
}

/// Idempotent: creates what is missing, starts what is stopped, cleans leftovers of a
/// killed run, waits until every host answers SSH with strict host key checking
/// against `cfg.known_hosts`, then returns. `log` gets one human line per step.
pub fn up(cfg: &LabConfig, log: &mut dyn FnMut(&str)) -> Result<()> {
    let cfg = normalize(cfg)?;
    bring_up(&cfg, None, log)
}

/// Stops and removes every host of `cfg` (container process, root filesystem,
/// network namespace, veth, cgroup directories, known_hosts lines). Removes the
/// bridge, and the apt cache the lab started, only when no lab host of any
/// environment remains on the bridge. Pieces that are already gone are skipped.
pub fn down(cfg: &LabConfig, log: &mut dyn FnMut(&str)) -> Result<()> {
    let cfg = normalize(cfg)?;
    require_root()?;
    fs::create_dir_all(&cfg.state_dir)?;
    let _turn = lab_lock(&cfg.state_dir, log)?;
    let hosts = lab_hosts(&cfg);
    let results = in_parallel(&hosts, log, |host, say| remove_host(host, say));
    // The known_hosts lines go even when removing some host failed: a host that is
    // half gone must not keep vouching for a key that will never come back.
    let addresses: Vec<Ipv4Addr> = hosts.iter().map(|h| h.address).collect();
    let known = edit_known_hosts(&cfg.known_hosts, &addresses, &[]);
    collect_errors(results)?;
    known?;
    // Only directories, never files, and only when empty: someone else's env may be here.
    let _ = fs::remove_dir(cfg.state_dir.join("hosts"));
    remove_shared_network_if_unused(&cfg.state_dir, log)
}

/// Takes this lab directory's lock (`flock` on `lab.lock`, exclusive, released when the
/// returned file is dropped or the process dies). Environments of one lab directory share
/// the bridge, the apt cache and the artifact server: `up` and `down` of two environments
/// at once (tests/run runs two suites at a time) take turns, so that one never stops or
/// restarts what the other is starting, nor removes the bridge under hosts being created.
fn lab_lock(state_dir: &Path, log: &mut dyn FnMut(&str)) -> Result<fs::File> {
    use std::os::fd::AsRawFd;
    let path = state_dir.join("lab.lock");
    let f = fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path)
        .with_context(|| format!("cannot open {}", path.display()))?;
    // SAFETY: flock on a file descriptor this function owns; no memory is shared.
    if unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
        log("waiting for another `kiln lab` command on this lab directory");
        // SAFETY: as above.
        if unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX) } != 0 {
            bail!(
                "cannot lock {}: {}",
                path.display(),
                std::io::Error::last_os_error()
            );
        }
    }
    Ok(f)
}

/// Deletes the host `name` of `cfg` (container, root filesystem, network, known_hosts
/// line) and leaves it missing: the state a lost server is in. `up` creates it again.
pub fn delete_host(cfg: &LabConfig, name: &str, log: &mut dyn FnMut(&str)) -> Result<()> {
    let cfg = normalize(cfg)?;
    require_root()?;
    let host = lab_hosts(&cfg)
        .into_iter()
        .find(|h| h.name == name)
        .ok_or_else(|| anyhow!("lab env {:?} has no host named {name:?}", cfg.env))?;
    log(&format!("deleting {}", host.label()));
    collect_errors(in_parallel(std::slice::from_ref(&host), log, |h, say| {
        remove_host(h, say)
    }))?;
    edit_known_hosts(&cfg.known_hosts, &[host.address], &[])
}

/// Reports, for every host of `cfg`, whether its container runs, with its pid.
pub fn status(cfg: &LabConfig) -> Result<Vec<HostStatus>> {
    let cfg = normalize(cfg)?;
    Ok(lab_hosts(&cfg)
        .iter()
        .map(|host| {
            let pid = host.running_pid();
            let state = if pid.is_some() {
                HostState::Running
            } else if host.rootfs.is_dir() {
                HostState::Stopped
            } else {
                HostState::Missing
            };
            HostStatus {
                name: host.name.clone(),
                address: host.address,
                state,
                pid,
            }
        })
        .collect())
}

/// Drops the known_hosts lines of the lab addresses `remove` and appends `add`
/// ([`known_hosts::edit`]). The file stays world-readable (0644) as the lab always wrote
/// it: it holds public keys only.
fn edit_known_hosts(path: &Path, remove: &[Ipv4Addr], add: &[String]) -> Result<()> {
    let names: Vec<String> = remove.iter().map(|a| a.to_string()).collect();
    if known_hosts::edit(path, &names, add)? {
        set_mode(path, 0o644)?;
    }
    Ok(())
}
