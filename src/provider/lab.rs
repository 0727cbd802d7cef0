//! The "lab" provider: local Debian 12 test hosts on this machine.
//!
//! Every lab host is a `systemd-nspawn` container booted from its own copy of a
//! debootstrapped Debian 12 image, living in its own network namespace whose `eth0`
//! is one end of a veth pair plugged into the bridge [`BRIDGE`] in the root
//! namespace. The hosts have no route to the outside world; apt reaches the Debian
//! mirror through an `apt-cacher-ng` proxy listening on the bridge address. Each
//! host gets its own SSH host keys, whose public half is recorded in the caller's
//! known_hosts file, and the lab's own SSH key is authorized for root, so the rest
//! of kiln talks to lab hosts exactly as it talks to real servers: over SSH with
//! strict host key checking.
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
//!   apt-cacher-ng.{pid,log}       the proxy, when the lab started it
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

use std::cmp::Reverse;
use std::collections::HashSet;
use std::fs;
use std::io::{Read, Seek, SeekFrom, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{mpsc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use sha2::{Digest, Sha256};

/// The bridge in the root namespace that every lab host's veth is plugged into.
pub const BRIDGE: &str = "kilnbr0";
/// The bridge's address (a /24); lab hosts use 10.233.0.2 to 10.233.0.254 and route
/// through it, and apt-cacher-ng answers on it.
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

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HostState {
    /// Its container process is alive (it may still be booting).
    Running,
    /// Its root filesystem exists but no container runs it.
    Stopped,
    /// It has no root filesystem: `up` would create it.
    Missing,
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
/// Packages on top of minbase: what booting, SSH, and kiln's own modules need.
const IMAGE_PACKAGES: &str =
    "systemd,systemd-sysv,openssh-server,dbus,iproute2,python3,ca-certificates,sudo,curl";
/// Packages this machine needs to run the lab, with a file that shows each is there.
const MACHINE_PACKAGES: &[&str] = &[
    "debootstrap",
    "systemd-container",
    "apt-cacher-ng",
    "iproute2",
    "openssh-client",
];

const PROXY_PORT: u16 = 3142;
/// The Debian backend apt-cacher-ng must know; its packaged default (ftp.debian.org)
/// does not answer on every network, and then every request gets "503 Host not found".
const ACNG_BACKEND: &str = "http://deb.debian.org/debian/";
const ACNG_BACKENDS_FILE: &str = "/etc/apt-cacher-ng/backends_debian";

/// How long a host may take from the start of its container until SSH answers.
const SSH_DEADLINE: Duration = Duration::from_secs(60);
/// How long a container gets to power off after SIGTERM before it is killed.
const STOP_GRACE: Duration = Duration::from_secs(15);
/// Copying root filesystems is disk-bound; more than this many at once only thrashes.
const MAX_PARALLEL: usize = 4;

/// The delimiters of the part of each host's /etc/hosts that the lab rewrites.
const HOSTS_BEGIN: &str = "# BEGIN kiln lab hosts (rewritten by `kiln lab up`)";
const HOSTS_END: &str = "# END kiln lab hosts";

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
/// bridge, and the apt-cacher-ng the lab started, only when no lab host of any
/// environment remains on the bridge. Pieces that are already gone are skipped.
pub fn down(cfg: &LabConfig, log: &mut dyn FnMut(&str)) -> Result<()> {
    let cfg = normalize(cfg)?;
    require_root()?;
    let hosts = lab_hosts(&cfg);
    let results = in_parallel(&hosts, log, |host, say| remove_host(host, say));
    // The known_hosts lines go even when removing some host failed: a host that is
    // half gone must not keep vouching for a key that will never come back.
    let addresses: Vec<Ipv4Addr> = hosts.iter().map(|h| h.address).collect();
    let known = update_known_hosts(&cfg.known_hosts, &addresses, &[]);
    collect_errors(results)?;
    known?;
    // Only directories, never files, and only when empty: someone else's env may be here.
    let _ = fs::remove_dir(cfg.state_dir.join("hosts"));
    remove_shared_network_if_unused(&cfg.state_dir, log)
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
    update_known_hosts(&cfg.known_hosts, &[host.address], &[])
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

// ---------------------------------------------------------------------------
// Hosts and their names
// ---------------------------------------------------------------------------

/// Everything derived from one configured host: names and paths of its pieces.
#[derive(Debug, Clone)]
struct Host {
    env: String,
    name: String,
    address: Ipv4Addr,
    aliases: Vec<String>,
    /// `<env>-<name>`: the nspawn machine name, host directory and cgroup suffix.
    machine: String,
    dir: PathBuf,
    rootfs: PathBuf,
    /// Interface names are limited to 15 bytes, so the veth (and, for symmetry, the
    /// namespace) is named after a hash of env/name rather than the names themselves.
    netns: String,
    veth: String,
    cgroup: String,
}

impl Host {
    fn new(cfg: &LabConfig, h: &LabHost) -> Host {
        let machine = format!("{}-{}", cfg.env, h.name);
        let digest = Sha256::digest(format!("{}/{}", cfg.env, h.name).as_bytes());
        let short = hex::encode(&digest[..4]);
        let dir = cfg.state_dir.join("hosts").join(&machine);
        Host {
            env: cfg.env.clone(),
            name: h.name.clone(),
            address: h.address,
            aliases: h.aliases.clone(),
            rootfs: dir.join("rootfs"),
            dir,
            netns: format!("kiln-{short}"),
            veth: format!("vk{short}"),
            cgroup: format!("kiln-lab-{machine}"),
            machine,
        }
    }

    fn label(&self) -> String {
        format!("{} ({})", self.name, self.address)
    }

    fn pid_file(&self) -> PathBuf {
        self.dir.join("pid")
    }

    fn console_log(&self) -> PathBuf {
        self.dir.join("console.log")
    }

    fn identity_file(&self) -> PathBuf {
        self.dir.join("lab-host")
    }

    fn identity(&self) -> String {
        format!(
            "env={}\nname={}\naddress={}\n",
            self.env, self.name, self.address
        )
    }

    /// The pid of this host's systemd-nspawn, if the recorded pid is alive and really
    /// is nspawn running our root filesystem. A pid file left by a killed run, or
    /// whose pid the kernel has since given to something else, yields None.
    fn running_pid(&self) -> Option<u32> {
        let pid: u32 = fs::read_to_string(self.pid_file())
            .ok()?
            .trim()
            .parse()
            .ok()?;
        let args = process_args(pid)?;
        let is_nspawn = args.first().is_some_and(|a| a.ends_with("systemd-nspawn"));
        let runs_our_rootfs = args.iter().any(|a| Path::new(a) == self.rootfs);
        (is_nspawn && runs_our_rootfs).then_some(pid)
    }

    /// This host's cgroup directory in each hierarchy the machine has.
    fn cgroup_dirs(&self) -> Vec<PathBuf> {
        cgroup_roots()
            .into_iter()
            .map(|root| root.join(&self.cgroup))
            .collect()
    }
}

fn lab_hosts(cfg: &LabConfig) -> Vec<Host> {
    cfg.hosts.iter().map(|h| Host::new(cfg, h)).collect()
}

/// Makes the state directory absolute: pid and rootfs paths are compared with the
/// command lines of running processes, and those must not depend on the caller's cwd.
fn normalize(cfg: &LabConfig) -> Result<LabConfig> {
    validate(cfg)?;
    let mut cfg = cfg.clone();
    if cfg.state_dir.is_relative() {
        let cwd = std::env::current_dir().context("cannot read the current directory")?;
        cfg.state_dir = cwd.join(&cfg.state_dir);
    }
    Ok(cfg)
}

/// Rejects configurations that would produce clashing or invalid names, before
/// anything is touched.
fn validate(cfg: &LabConfig) -> Result<()> {
    check_label("environment name", &cfg.env)?;
    let mut names = HashSet::new();
    let mut addresses = HashSet::new();
    for h in &cfg.hosts {
        check_label("lab host name", &h.name)?;
        if !names.insert(h.name.as_str()) {
            bail!("lab host {:?} is listed twice in env {:?}", h.name, cfg.env);
        }
        let o = h.address.octets();
        if o[..3] != [10, 233, 0] || !(2..=254).contains(&o[3]) {
            bail!(
                "lab host {} has address {}, outside the lab's 10.233.0.2-10.233.0.254",
                h.name,
                h.address
            );
        }
        if !addresses.insert(h.address) {
            bail!(
                "address {} is given to two lab hosts of env {:?}",
                h.address,
                cfg.env
            );
        }
        // The machine name is limited to 64 characters by systemd.
        let machine_len = cfg.env.len() + 1 + h.name.len();
        if machine_len > 64 {
            bail!(
                "lab machine name {}-{} is longer than 64 characters",
                cfg.env,
                h.name
            );
        }
    }
    Ok(())
}

/// Names end up as hostnames, directory names and cgroup names: keep them to a
/// hostname label.
fn check_label(what: &str, s: &str) -> Result<()> {
    let ok = !s.is_empty()
        && s.len() <= 63
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-');
    if !ok {
        bail!("{what} {s:?} must be 1-63 characters of a-z, 0-9 and '-', not starting or ending with '-'");
    }
    Ok(())
}

/// Refuses to touch a host directory that belongs to another env/host (env "a-b"
/// with host "c" and env "a" with host "b-c" share the directory name "a-b-c"), and
/// refuses an address that a host of another env already uses on the shared bridge.
fn check_conflicts(state_dir: &Path, hosts: &[Host]) -> Result<()> {
    for host in hosts {
        if let Ok(found) = fs::read_to_string(host.identity_file()) {
            let found_pair = (field(&found, "env"), field(&found, "name"));
            if found_pair != (Some(host.env.as_str()), Some(host.name.as_str())) {
                bail!(
                    "{} belongs to another lab host ({}); rename env or host",
                    host.dir.display(),
                    found.replace('\n', " ").trim()
                );
            }
        }
    }
    let Ok(entries) = fs::read_dir(state_dir.join("hosts")) else {
        return Ok(());
    };
    for entry in entries.flatten() {
        let Ok(found) = fs::read_to_string(entry.path().join("lab-host")) else {
            continue;
        };
        let (Some(env), Some(name), Some(addr)) = (
            field(&found, "env"),
            field(&found, "name"),
            field(&found, "address"),
        ) else {
            continue;
        };
        for host in hosts {
            let same_host = env == host.env && name == host.name;
            if !same_host
                && addr == host.address.to_string()
                && entry.path().join("rootfs").exists()
            {
                bail!(
                    "address {} of lab host {} is already used by host {name} of env {env}; \
                     run `down` for that env first or pick another address",
                    host.address,
                    host.name
                );
            }
        }
    }
    Ok(())
}

fn field<'a>(text: &'a str, key: &str) -> Option<&'a str> {
    text.lines()
        .find_map(|l| l.strip_prefix(key)?.strip_prefix('='))
}

// ---------------------------------------------------------------------------
// up
// ---------------------------------------------------------------------------

/// Every container's systemd takes inotify instances; with the kernel's default of 128 per
/// user, the tenth or so container fails to boot ("Failed to allocate manager object: Too
/// many open files"). Raise the limits (never lower them).
fn ensure_inotify_limits(log: &mut dyn FnMut(&str)) {
    for (file, want) in [
        ("/proc/sys/fs/inotify/max_user_instances", 8192u64),
        ("/proc/sys/fs/inotify/max_user_watches", 1_048_576),
    ] {
        let have: u64 = fs::read_to_string(file)
            .ok()
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0);
        if have < want {
            match fs::write(file, want.to_string()) {
                Ok(()) => log(&format!("raised {file} from {have} to {want}")),
                Err(e) => log(&format!(
                    "cannot raise {file} ({e}); many hosts may fail to boot"
                )),
            }
        }
    }
}

/// `up`: brings every host of cfg (or only the one named) to running and answering SSH.
fn bring_up(cfg: &LabConfig, only: Option<&str>, log: &mut dyn FnMut(&str)) -> Result<()> {
    require_root()?;
    ensure_machine_packages(log)?;
    fs::create_dir_all(&cfg.state_dir).with_context(|| {
        format!(
            "cannot create the lab state directory {}",
            cfg.state_dir.display()
        )
    })?;
    let key = ensure_lab_key(&cfg.state_dir, log)?;
    let pubkey = read_public_key(&key.with_extension("pub"))?;
    let image = ensure_image(&cfg.state_dir, log)?;
    ensure_bridge()?;
    ensure_apt_cacher(&cfg.state_dir, log)?;
    ensure_inotify_limits(log);
    // Artifacts (the MinIO stand-in) served on the bridge: see provider::artifacts.
    super::artifacts::ensure(&cfg.state_dir, log)?;

    let all = lab_hosts(cfg);
    check_conflicts(&cfg.state_dir, &all)?;
    let hosts: Vec<Host> = all
        .iter()
        .filter(|h| only.is_none() || only == Some(h.name.as_str()))
        .cloned()
        .collect();

    // Creating root filesystems is the slow part (a few seconds of copying each), so
    // every host is prepared and started in its own thread.
    let results = in_parallel(&hosts, log, |host, say| {
        prepare_and_start(host, &all, &image, &pubkey, say)
    });
    let mut children = Vec::new();
    let mut errors = Vec::new();
    for (host, r) in hosts.iter().zip(results) {
        match r {
            Ok(child) => children.push((host.clone(), Mutex::new(child))),
            Err(e) => errors.push(e),
        }
    }

    // The host keys go into known_hosts before anyone connects: the SSH check below
    // is strict, as every later connection from kiln will be.
    let mut lines = Vec::new();
    for (host, _) in &children {
        lines.push((host.address, host_key_line(host)?));
    }
    let addresses: Vec<Ipv4Addr> = lines.iter().map(|(a, _)| *a).collect();
    update_known_hosts(&cfg.known_hosts, &addresses, &lines)?;

    let results = in_parallel(&children, log, |(host, child), say| {
        let mut child = child.lock().map_err(|_| anyhow!("a lab thread panicked"))?;
        let waited = wait_for_ssh(host, &key, &cfg.known_hosts, child.as_mut())?;
        let state = boot_state(host, &key, &cfg.known_hosts)?;
        say(format!(
            "{} is up (ssh after {:.1} s, systemd: {state})",
            host.label(),
            waited.as_secs_f64()
        ));
        Ok(())
    });
    for r in results {
        if let Err(e) = r {
            errors.push(e);
        }
    }
    combine(errors)
}

/// Makes sure one host is running: leaves a healthy running host alone (refreshing
/// the files the lab owns in it), cleans what a killed run left, creates the root
/// filesystem if it is missing, and starts the container. Returns the nspawn child
/// when it started one, so that the SSH wait can notice an early exit.
fn prepare_and_start(
    host: &Host,
    all: &[Host],
    image: &Path,
    pubkey: &str,
    say: &dyn Fn(String),
) -> Result<Option<Child>> {
    let result = (|| {
        if let Some(pid) = host.running_pid() {
            if network_intact(host) {
                say(format!("{} is already running (pid {pid})", host.label()));
                refresh_host_files(host, all, pubkey)?;
                return Ok(None);
            }
            // Without its namespace or veth the host is unreachable and cannot be
            // repaired while it runs: the namespace is fixed at container start.
            say(format!("{} lost its network; restarting it", host.label()));
            stop_container(host, say)?;
        }
        clean_runtime_leftovers(host)?;
        if !host.rootfs.is_dir() {
            create_rootfs(host, all, image, pubkey, say)?;
        } else {
            refresh_host_files(host, all, pubkey)?;
        }
        say(format!("starting {}", host.label()));
        start_container(host).map(Some)
    })();
    result.with_context(|| format!("lab host {}", host.label()))
}

/// True if the host's namespace exists and its veth is on the bridge.
fn network_intact(host: &Host) -> bool {
    let veth = Path::new("/sys/class/net").join(&host.veth);
    let master = fs::read_link(veth.join("master")).ok();
    Path::new("/run/netns").join(&host.netns).exists()
        && master.is_some_and(|m| m.file_name().is_some_and(|n| n == BRIDGE))
}

/// Copies the base image into a new root filesystem and gives it its identity: SSH
/// host keys, machine id, hostname, hosts, apt configuration and root's authorized
/// key. It is made under rootfs.tmp and renamed at the end, so that a killed run
/// never leaves a half-made root filesystem that looks finished.
fn create_rootfs(
    host: &Host,
    all: &[Host],
    image: &Path,
    pubkey: &str,
    say: &dyn Fn(String),
) -> Result<()> {
    say(format!("creating {} from the base image", host.label()));
    let tmp = host.dir.join("rootfs.tmp");
    remove_tree(&tmp)?;
    fs::create_dir_all(&host.dir)
        .with_context(|| format!("cannot create {}", host.dir.display()))?;
    write_file(&host.identity_file(), host.identity().as_bytes(), 0o644)?;
    run(Command::new("cp")
        .arg("-a")
        .arg("--reflink=auto")
        .arg(image)
        .arg(&tmp))?;

    // Each host gets its own host keys; the image has none (see ensure_image).
    run(Command::new("ssh-keygen").arg("-A").arg("-f").arg(&tmp))?;
    // A machine id of its own keeps journald and anything keyed on it apart.
    write_file(
        &tmp.join("etc/machine-id"),
        format!("{}\n", random_hex(16)?).as_bytes(),
        0o444,
    )?;
    write_file(
        &tmp.join("etc/hostname"),
        format!("{}\n", host.name).as_bytes(),
        0o644,
    )?;
    let hosts_file = format!(
        "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n\
         ff02::1\tip6-allnodes\nff02::2\tip6-allrouters\n\n{}",
        hosts_block(all)
    );
    write_file(&tmp.join("etc/hosts"), hosts_file.as_bytes(), 0o644)?;
    // The lab has no reachable DNS server; an empty resolv.conf makes lookups of
    // names missing from /etc/hosts fail at once (nothing answers on 127.0.0.1:53)
    // instead of hanging for ~20 s. write_file replaces a symlink (to systemd-resolved,
    // say) with a regular file, and nspawn runs with --resolv-conf=off to leave it so.
    write_file(&tmp.join("etc/resolv.conf"), b"", 0o644)?;

    // apt goes through apt-cacher-ng on the bridge: the hosts have no other way out.
    remove_file_if_exists(&tmp.join("etc/apt/sources.list"))?;
    let sources = format!(
        "Types: deb\nURIs: {MIRROR}\nSuites: {SUITE} {SUITE}-updates\nComponents: main\n\
         Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg\n\n\
         Types: deb\nURIs: {SECURITY_MIRROR}\nSuites: {SUITE}-security\nComponents: main\n\
         Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg\n"
    );
    write_file(
        &tmp.join("etc/apt/sources.list.d/debian.sources"),
        sources.as_bytes(),
        0o644,
    )?;
    // Like a cloud image: the lists debootstrap fetched (`bookworm` only) and no record of
    // a successful update, so every first apply takes the path a fresh server takes (the
    // lists are refreshed before the first install; see facts::apt_lists).
    remove_file_if_exists(&tmp.join("var/lib/apt/periodic/update-success-stamp"))?;
    let proxy = format!("Acquire::http::Proxy \"http://{BRIDGE_IP}:{PROXY_PORT}\";\n");
    write_file(
        &tmp.join("etc/apt/apt.conf.d/01kiln-proxy"),
        proxy.as_bytes(),
        0o644,
    )?;

    let ssh_dir = tmp.join("root/.ssh");
    fs::create_dir_all(&ssh_dir).with_context(|| format!("cannot create {}", ssh_dir.display()))?;
    set_mode(&ssh_dir, 0o700)?;
    write_file(
        &ssh_dir.join("authorized_keys"),
        format!("{pubkey}\n").as_bytes(),
        0o600,
    )?;

    fs::rename(&tmp, &host.rootfs).with_context(|| {
        format!(
            "cannot rename {} to {}",
            tmp.display(),
            host.rootfs.display()
        )
    })
}

/// Rewrites what the lab owns in an existing root filesystem, so that `up` with a
/// changed host list or a new lab key brings old hosts up to date. Only the marked
/// block of /etc/hosts is touched: configuration management may own the rest.
fn refresh_host_files(host: &Host, all: &[Host], pubkey: &str) -> Result<()> {
    let hosts_path = host.rootfs.join("etc/hosts");
    let current = read_optional(&hosts_path)?;
    let updated = replace_hosts_block(&current, &hosts_block(all));
    if updated != current {
        write_file(&hosts_path, updated.as_bytes(), 0o644)?;
    }
    let auth = host.rootfs.join("root/.ssh/authorized_keys");
    let current = read_optional(&auth)?;
    if !current.lines().any(|l| l.trim() == pubkey) {
        fs::create_dir_all(host.rootfs.join("root/.ssh"))
            .with_context(|| format!("cannot create {}/root/.ssh", host.rootfs.display()))?;
        let mut text = current;
        if !text.is_empty() && !text.ends_with('\n') {
            text.push('\n');
        }
        text.push_str(pubkey);
        text.push('\n');
        write_file(&auth, text.as_bytes(), 0o600)?;
    }
    Ok(())
}

fn hosts_block(all: &[Host]) -> String {
    let mut block = format!("{HOSTS_BEGIN}\n");
    for h in all {
        block.push_str(&format!("{}\t{}", h.address, h.name));
        for a in &h.aliases {
            block.push(' ');
            block.push_str(a);
        }
        block.push('\n');
    }
    block.push_str(HOSTS_END);
    block.push('\n');
    block
}

fn replace_hosts_block(current: &str, block: &str) -> String {
    if let (Some(start), Some(end)) = (current.find(HOSTS_BEGIN), current.find(HOSTS_END)) {
        if start < end {
            let mut after = &current[end + HOSTS_END.len()..];
            after = after.strip_prefix('\n').unwrap_or(after);
            return format!("{}{}{}", &current[..start], block, after);
        }
    }
    let mut text = current.to_string();
    if !text.is_empty() && !text.ends_with('\n') {
        text.push('\n');
    }
    text.push_str(block);
    text
}

/// The `ADDR ssh-ed25519 KEY` known_hosts line for a host, from its root filesystem.
fn host_key_line(host: &Host) -> Result<String> {
    let path = host.rootfs.join("etc/ssh/ssh_host_ed25519_key.pub");
    let text = fs::read_to_string(&path).with_context(|| {
        format!(
            "lab host {}: cannot read its host key {}",
            host.name,
            path.display()
        )
    })?;
    let mut parts = text.split_whitespace();
    match (parts.next(), parts.next()) {
        (Some(kind @ "ssh-ed25519"), Some(key)) => Ok(format!("{} {kind} {key}", host.address)),
        _ => bail!(
            "lab host {}: {} is not an ed25519 public key",
            host.name,
            path.display()
        ),
    }
}

/// Creates the namespace, veth and cgroups and starts the container detached, so
/// that it outlives this process. The pid goes to the host's pid file.
fn start_container(host: &Host) -> Result<Child> {
    setup_network(host)?;
    let mut procs_files = Vec::new();
    for dir in host.cgroup_dirs() {
        fs::create_dir_all(&dir)
            .with_context(|| format!("cannot create cgroup {}", dir.display()))?;
        procs_files.push(dir.join("cgroup.procs"));
    }
    remove_file_if_exists(&host.pid_file())?;
    let console = fs::File::create(host.console_log())
        .with_context(|| format!("cannot create {}", host.console_log().display()))?;
    let console_err = console
        .try_clone()
        .context("cannot duplicate the console log handle")?;

    // The shell joins the host's cgroups and records its pid, then execs nspawn, so
    // the pid recorded is nspawn's and nspawn starts inside the host's own cgroups
    // (joining them from here after the spawn would race with nspawn reading them).
    // setsid puts it in a session of its own: a Ctrl-C aimed at kiln must not reach
    // the containers. It does not fork, as the child is not a process group leader,
    // so the pid stays the same through setsid, sh and nspawn.
    const BOOT_SCRIPT: &str = r#"set -e
pidfile=$1; shift
while [ "$1" != -- ]; do echo $$ > "$1"; shift; done
shift
echo $$ > "$pidfile"
exec "$@""#;
    let mut cmd = Command::new("setsid");
    cmd.arg("sh")
        .arg("-c")
        .arg(BOOT_SCRIPT)
        .arg("kiln-lab-boot")
        .arg(host.pid_file());
    cmd.args(&procs_files).arg("--");
    cmd.arg("systemd-nspawn")
        // No host D-Bus or systemd to register with: stay in the cgroup we are given.
        .args(["--register=no", "--keep-unit", "--quiet", "--boot"])
        .arg("--directory")
        .arg(&host.rootfs)
        .arg(format!(
            "--network-namespace-path=/run/netns/{}",
            host.netns
        ))
        .arg(format!("--machine={}", host.machine))
        .arg(format!("--hostname={}", host.name))
        // The host has its own network namespace, so it may manage its own firewall
        // (nftables) the way a real server does.
        .arg("--capability=CAP_NET_ADMIN")
        // Keep our empty resolv.conf, and leave the machine's journal alone.
        .args([
            "--resolv-conf=off",
            "--link-journal=no",
            "--console=read-only",
        ]);
    cmd.stdin(Stdio::null())
        .stdout(console)
        .stderr(console_err)
        .current_dir("/");
    let mut child = cmd
        .spawn()
        .context("cannot run setsid sh -c … systemd-nspawn")?;

    // Wait for the pid file so that a kiln killed right after this still leaves a
    // container that the next run can find and stop.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        if host.running_pid().is_some() {
            return Ok(child);
        }
        if let Some(status) = child.try_wait().context("cannot wait for systemd-nspawn")? {
            bail!(
                "systemd-nspawn exited at once ({status}); end of {}:\n{}",
                host.console_log().display(),
                tail(&host.console_log(), 30)
            );
        }
        if Instant::now() > deadline {
            bail!(
                "systemd-nspawn did not record its pid in {} within 5 s",
                host.pid_file().display()
            );
        }
        thread::sleep(Duration::from_millis(20));
    }
}

/// Polls the host until `ssh root@ADDR true` succeeds with the lab key and strict
/// host key checking, or the deadline passes. Returns how long it took.
fn wait_for_ssh(
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
fn boot_state(host: &Host, key: &Path, known_hosts: &Path) -> Result<String> {
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
fn ssh_args(key: &Path, known_hosts: &Path) -> Vec<String> {
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

// ---------------------------------------------------------------------------
// Stopping and removing
// ---------------------------------------------------------------------------

/// Stops the host's container and removes all of its pieces.
fn remove_host(host: &Host, say: &dyn Fn(String)) -> Result<()> {
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
fn stop_container(host: &Host, say: &dyn Fn(String)) -> Result<()> {
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
fn clean_runtime_leftovers(host: &Host) -> Result<()> {
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
fn kill_cgroup(dir: &Path) -> Result<()> {
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

fn cgroup_pids(dir: &Path) -> Vec<u32> {
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
fn remove_cgroup(dir: &Path) -> Result<()> {
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
/// apt-cacher-ng the lab started (its cache stays on disk for the next `up`).
fn remove_shared_network_if_unused(state_dir: &Path, log: &mut dyn FnMut(&str)) -> Result<()> {
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
    super::artifacts::stop(state_dir, log)?;
    log(&format!("removing bridge {BRIDGE}"));
    run(Command::new("ip").args(["link", "del", BRIDGE]))?;
    if let Some(pid) = our_apt_cacher_pid(state_dir) {
        log(&format!("stopping apt-cacher-ng (pid {pid})"));
        signal(pid, "TERM");
        if !wait_until(Duration::from_secs(10), || {
            our_apt_cacher_pid(state_dir).is_none()
        }) {
            signal(pid, "KILL");
        }
        remove_file_if_exists(&state_dir.join("apt-cacher-ng.pid"))?;
    }
    Ok(())
}

// ---------------------------------------------------------------------------
// Network
// ---------------------------------------------------------------------------

fn ensure_bridge() -> Result<()> {
    let dev = Path::new("/sys/class/net").join(BRIDGE);
    if !dev.exists() {
        run(Command::new("ip").args(["link", "add", BRIDGE, "type", "bridge"]))?;
    } else if !dev.join("bridge").exists() {
        bail!("network interface {BRIDGE} exists but is not a bridge; remove it");
    }
    let addrs = run(Command::new("ip").args(["-4", "-o", "addr", "show", "dev", BRIDGE]))?;
    if !addrs.contains(&format!("inet {BRIDGE_IP}/24 ")) {
        run(Command::new("ip").args(["addr", "add", &format!("{BRIDGE_IP}/24"), "dev", BRIDGE]))?;
    }
    run(Command::new("ip").args(["link", "set", BRIDGE, "up"]))?;
    Ok(())
}

/// Builds the host's namespace from scratch: a leftover namespace or veth from a
/// killed run is removed first, as nothing in it is worth keeping.
fn setup_network(host: &Host) -> Result<()> {
    teardown_network(host)?;
    let ns = host.netns.as_str();
    let addr = format!("{}/24", host.address);
    run(Command::new("ip").args(["netns", "add", ns]))?;
    // The peer is created directly inside the namespace under its final name, so
    // no temporary name can clash in the root namespace.
    run(Command::new("ip").args([
        "link", "add", &host.veth, "type", "veth", "peer", "name", "eth0", "netns", ns,
    ]))?;
    run(Command::new("ip").args(["link", "set", &host.veth, "master", BRIDGE]))?;
    run(Command::new("ip").args(["link", "set", &host.veth, "up"]))?;
    run(Command::new("ip").args(["-n", ns, "link", "set", "lo", "up"]))?;
    run(Command::new("ip").args(["-n", ns, "addr", "add", &addr, "dev", "eth0"]))?;
    run(Command::new("ip").args(["-n", ns, "link", "set", "eth0", "up"]))?;
    run(Command::new("ip").args(["-n", ns, "route", "add", "default", "via", BRIDGE_IP]))?;
    Ok(())
}

fn teardown_network(host: &Host) -> Result<()> {
    let netns = Path::new("/run/netns").join(&host.netns);
    let veth = Path::new("/sys/class/net").join(&host.veth);
    if netns.exists() {
        if let Err(e) = run(Command::new("ip").args(["netns", "del", &host.netns])) {
            if netns.exists() {
                return Err(e);
            }
        }
        // The kernel destroys the namespace, and with it the veth pair, a moment
        // after the last reference goes; creating the veth again before that fails
        // with "File exists", so give it a little time.
        wait_until(Duration::from_secs(3), || !veth.exists());
    }
    // Deleting the namespace normally takes the veth pair with it, but not while a
    // process still holds the namespace, nor for a veth orphaned some other way. A
    // failure because it vanished in between is no failure.
    if veth.exists() {
        if let Err(e) = run(Command::new("ip").args(["link", "del", &host.veth])) {
            if veth.exists() {
                return Err(e);
            }
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------
// apt-cacher-ng
// ---------------------------------------------------------------------------

/// Makes sure apt-cacher-ng knows the Debian backend and listens on port 3142 of
/// the root namespace (all addresses, so the hosts reach it on the bridge address).
fn ensure_apt_cacher(state_dir: &Path, log: &mut dyn FnMut(&str)) -> Result<()> {
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
fn ensure_acng_backend() -> Result<bool> {
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

fn our_apt_cacher_pid(state_dir: &Path) -> Option<u32> {
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

// ---------------------------------------------------------------------------
// Machine: packages, key, base image
// ---------------------------------------------------------------------------

fn require_root() -> Result<()> {
    let status =
        fs::read_to_string("/proc/self/status").context("cannot read /proc/self/status")?;
    let euid = status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .ok_or_else(|| anyhow!("no Uid line in /proc/self/status"))?;
    if euid != "0" {
        bail!("the lab provider must run as root (it creates network namespaces, bridges and containers)");
    }
    Ok(())
}

/// Installs the machine packages the lab needs, with apt-get, when any is missing.
fn ensure_machine_packages(log: &mut dyn FnMut(&str)) -> Result<()> {
    let os = fs::read_to_string("/etc/os-release").unwrap_or_default();
    let ids: Vec<&str> = ["ID", "ID_LIKE"]
        .iter()
        .filter_map(|k| field(&os, k))
        .flat_map(|v| v.trim_matches('"').split_whitespace())
        .collect();
    if !ids.iter().any(|id| *id == "debian" || *id == "ubuntu") {
        bail!(
            "the lab provider needs a Debian or Ubuntu machine (found ID {:?} in /etc/os-release)",
            ids
        );
    }
    // dpkg-query exits non-zero when a package is unknown but still reports the known
    // ones, so its status is ignored and only the "ii" lines count.
    let out = Command::new("dpkg-query")
        .args(["-W", "-f", "${Package} ${db:Status-Abbrev}\n"])
        .args(MACHINE_PACKAGES)
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .output()
        .context("cannot run dpkg-query")?;
    let installed: HashSet<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| {
            let mut f = l.split_whitespace();
            let name = f.next()?.split(':').next()?.to_string();
            (f.next()? == "ii").then_some(name)
        })
        .collect();
    let missing: Vec<&str> = MACHINE_PACKAGES
        .iter()
        .copied()
        .filter(|p| !installed.contains(*p))
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    log(&format!("installing {} with apt-get", missing.join(" ")));
    let install = || {
        run(Command::new("apt-get")
            .args(["install", "-y", "-q"])
            .args(&missing)
            .env("DEBIAN_FRONTEND", "noninteractive"))
    };
    // A machine whose package lists are stale or absent needs an update first; try
    // without it, as it is slow and usually unnecessary.
    if install().is_err() {
        run(Command::new("apt-get")
            .args(["update", "-q"])
            .env("DEBIAN_FRONTEND", "noninteractive"))?;
        install()?;
    }
    Ok(())
}

/// Creates the lab's SSH key pair on first use. The pair is made under a temporary
/// name and renamed public half first, so a killed run leaves either no key (made
/// again next time) or a complete pair.
fn ensure_lab_key(state_dir: &Path, log: &mut dyn FnMut(&str)) -> Result<PathBuf> {
    let key = key_path(state_dir);
    let dir = key
        .parent()
        .ok_or_else(|| anyhow!("key path {} has no parent", key.display()))?;
    fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    set_mode(dir, 0o700)?;
    let public = key.with_extension("pub");
    if key.exists() {
        if !public.exists() {
            let pub_text = run(Command::new("ssh-keygen").arg("-y").arg("-f").arg(&key))?;
            write_file(&public, pub_text.as_bytes(), 0o644)?;
        }
        set_mode(&key, 0o600)?;
        return Ok(key);
    }
    log("creating the lab ssh key");
    let tmp = dir.join("id_ed25519.new");
    remove_file_if_exists(&tmp)?;
    remove_file_if_exists(&tmp.with_extension("new.pub"))?;
    run(Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-C", "kiln-lab", "-f"])
        .arg(&tmp))?;
    fs::rename(dir.join("id_ed25519.new.pub"), &public)
        .context("cannot install the lab public key")?;
    fs::rename(&tmp, &key).context("cannot install the lab private key")?;
    set_mode(&key, 0o600)?;
    Ok(key)
}

fn read_public_key(path: &Path) -> Result<String> {
    let text =
        fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    let line = text.lines().next().unwrap_or("").trim().to_string();
    if !line.starts_with("ssh-ed25519 ") {
        bail!("{} is not an ed25519 public key", path.display());
    }
    Ok(line)
}

/// Builds the base image once with debootstrap. The build happens in bookworm.tmp
/// and is renamed when complete, so a killed build is started over rather than used.
fn ensure_image(state_dir: &Path, log: &mut dyn FnMut(&str)) -> Result<PathBuf> {
    let images = state_dir.join("images");
    let image = images.join(SUITE);
    if image.is_dir() {
        return Ok(image);
    }
    let tmp = images.join(format!("{SUITE}.tmp"));
    remove_tree(&tmp)?;
    fs::create_dir_all(&images).with_context(|| format!("cannot create {}", images.display()))?;
    log("building base image (once, ~60 s)");
    let started = Instant::now();
    let log_path = images.join("debootstrap.log");
    let out = fs::File::create(&log_path)
        .with_context(|| format!("cannot create {}", log_path.display()))?;
    let err = out
        .try_clone()
        .context("cannot duplicate the debootstrap log handle")?;
    let status = Command::new("debootstrap")
        .args([
            "--variant=minbase",
            &format!("--include={IMAGE_PACKAGES}"),
            SUITE,
        ])
        .arg(&tmp)
        .arg(MIRROR)
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        .status()
        .context("cannot run debootstrap")?;
    if !status.success() {
        bail!(
            "debootstrap {SUITE} into {} failed ({status}); end of {}:\n{}\nend of its own log:\n{}",
            tmp.display(),
            log_path.display(),
            tail(&log_path, 20),
            tail(&tmp.join("debootstrap/debootstrap.log"), 20)
        );
    }

    // Host keys made by openssh-server's postinst would be shared by every host.
    for entry in fs::read_dir(tmp.join("etc/ssh"))
        .context("cannot list the image's /etc/ssh")?
        .flatten()
    {
        if entry.file_name().to_string_lossy().starts_with("ssh_host_") {
            fs::remove_file(entry.path())
                .with_context(|| format!("cannot remove {}", entry.path().display()))?;
        }
    }
    // Each host writes its own machine id; the image's must not leak into them.
    write_file(&tmp.join("etc/machine-id"), b"", 0o444)?;
    // Units that cannot work in these containers and would leave the system
    // "degraded": none found on Debian 12 minbase with systemd 252 (checked with
    // `systemctl --failed` after boot). Add masks here when a new release needs it.

    fs::rename(&tmp, &image)
        .with_context(|| format!("cannot rename {} to {}", tmp.display(), image.display()))?;
    log(&format!(
        "base image built in {:.0} s",
        started.elapsed().as_secs_f64()
    ));
    Ok(image)
}

// ---------------------------------------------------------------------------
// known_hosts
// ---------------------------------------------------------------------------

/// Removes the lines for `remove` addresses and appends `add`, writing the file
/// through a temporary file so a reader never sees it half-written.
fn update_known_hosts(path: &Path, remove: &[Ipv4Addr], add: &[(Ipv4Addr, String)]) -> Result<()> {
    let current = match fs::read_to_string(path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            if add.is_empty() {
                return Ok(());
            }
            String::new()
        }
        Err(e) => return Err(e).with_context(|| format!("cannot read {}", path.display())),
    };
    let gone: HashSet<String> = remove.iter().map(|a| a.to_string()).collect();
    let mut text = String::new();
    for line in current.lines() {
        let names = line.split_whitespace().next().unwrap_or("");
        if !names.split(',').any(|n| gone.contains(n)) {
            text.push_str(line);
            text.push('\n');
        }
    }
    for (_, line) in add {
        text.push_str(line);
        text.push('\n');
    }
    if text == current {
        return Ok(());
    }
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    }
    let tmp = path.with_extension("kiln-tmp");
    write_file(&tmp, text.as_bytes(), 0o644)?;
    fs::rename(&tmp, path).with_context(|| format!("cannot replace {}", path.display()))
}

// ---------------------------------------------------------------------------
// Small helpers
// ---------------------------------------------------------------------------

/// Runs a command to completion; on failure the error names the command and
/// carries its stderr. Returns stdout.
fn run(cmd: &mut Command) -> Result<String> {
    let desc = describe(cmd);
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("cannot run `{desc}`"))?;
    if !out.status.success() {
        let stderr = String::from_utf8_lossy(&out.stderr);
        let stdout = String::from_utf8_lossy(&out.stdout);
        let detail = if stderr.trim().is_empty() {
            stdout
        } else {
            stderr
        };
        bail!("`{desc}` failed ({}): {}", out.status, detail.trim());
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn describe(cmd: &Command) -> String {
    let mut s = cmd.get_program().to_string_lossy().into_owned();
    for a in cmd.get_args() {
        s.push(' ');
        s.push_str(&a.to_string_lossy());
    }
    s
}

/// Sends a signal with kill(1); std has no way to signal a process that is not our
/// child. Failure means the process is already gone, which is what we wanted.
fn signal(pid: u32, sig: &str) {
    let _ = Command::new("kill")
        .args(["-s", sig, &pid.to_string()])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
}

/// The command line of a live process; None if it is gone or a zombie (whose
/// cmdline is empty).
fn process_args(pid: u32) -> Option<Vec<String>> {
    let raw = fs::read(format!("/proc/{pid}/cmdline")).ok()?;
    if raw.is_empty() {
        return None;
    }
    Some(
        raw.split(|b| *b == 0)
            .filter(|a| !a.is_empty())
            .map(|a| String::from_utf8_lossy(a).into_owned())
            .collect(),
    )
}

fn wait_until(limit: Duration, mut done: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if done() {
            return true;
        }
        thread::sleep(Duration::from_millis(100));
    }
    done()
}

/// The cgroup hierarchies to put each container in: the named v1 "systemd" one and
/// cgroup2 at "unified" on a hybrid machine, or the root on a pure cgroup2 machine.
fn cgroup_roots() -> Vec<PathBuf> {
    let base = Path::new("/sys/fs/cgroup");
    let roots: Vec<PathBuf> = ["systemd", "unified"]
        .iter()
        .map(|h| base.join(h))
        .filter(|p| p.join("cgroup.procs").exists())
        .collect();
    if roots.is_empty() && base.join("cgroup.procs").exists() {
        return vec![base.to_path_buf()];
    }
    roots
}

/// Writes a file, replacing a symlink at the path rather than writing through it: in
/// a container's root filesystem an absolute symlink points into this machine.
fn write_file(path: &Path, content: &[u8], mode: u32) -> Result<()> {
    if let Ok(meta) = fs::symlink_metadata(path) {
        if meta.file_type().is_symlink() {
            fs::remove_file(path)
                .with_context(|| format!("cannot remove symlink {}", path.display()))?;
        }
    }
    if let Some(dir) = path.parent() {
        fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    }
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .open(path)
        .with_context(|| format!("cannot write {}", path.display()))?;
    f.write_all(content)
        .with_context(|| format!("cannot write {}", path.display()))?;
    set_mode(path, mode)
}

fn set_mode(path: &Path, mode: u32) -> Result<()> {
    fs::set_permissions(path, fs::Permissions::from_mode(mode))
        .with_context(|| format!("cannot chmod {:o} {}", mode, path.display()))
}

/// A file's text, or "" if it does not exist; any other error is an error, so that a
/// file we could not read is never silently replaced.
fn read_optional(path: &Path) -> Result<String> {
    match fs::read_to_string(path) {
        Ok(text) => Ok(text),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(String::new()),
        Err(e) => Err(e).with_context(|| format!("cannot read {}", path.display())),
    }
}

fn remove_file_if_exists(path: &Path) -> Result<()> {
    match fs::remove_file(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            Err(e).with_context(|| format!("cannot remove {}", path.display()))
        }
        _ => Ok(()),
    }
}

/// Removes a directory tree that may hold mounts (a killed debootstrap leaves /proc
/// and /sys mounted inside its target). Mounts are detached first and rm stays on
/// one file system, so nothing outside the tree can ever be deleted through them.
fn remove_tree(path: &Path) -> Result<()> {
    if fs::symlink_metadata(path).is_err() {
        return Ok(());
    }
    let info =
        fs::read_to_string("/proc/self/mountinfo").context("cannot read /proc/self/mountinfo")?;
    let mut points: Vec<PathBuf> = info
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .map(|p| PathBuf::from(unescape_mount_path(p)))
        .filter(|p| p.starts_with(path))
        .collect();
    points.sort_by_key(|p| Reverse(p.components().count()));
    for p in points {
        run(Command::new("umount").arg("-l").arg(&p))?;
    }
    run(Command::new("rm")
        .arg("-rf")
        .arg("--one-file-system")
        .arg(path))?;
    Ok(())
}

/// mountinfo escapes space, tab, newline and backslash as \ooo.
fn unescape_mount_path(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && i + 4 <= b.len()
            && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c))
        {
            out.push((b[i + 1] - b'0') * 64 + (b[i + 2] - b'0') * 8 + (b[i + 3] - b'0'));
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The last `lines` lines of a (log) file, reading at most its last 64 KiB, without
/// the colours and carriage returns of a container console so that it reads well
/// inside an error message.
fn tail(path: &Path, lines: usize) -> String {
    let read = || -> std::io::Result<String> {
        let mut f = fs::File::open(path)?;
        let len = f.metadata()?.len();
        f.seek(SeekFrom::Start(len.saturating_sub(64 * 1024)))?;
        let mut buf = Vec::new();
        f.read_to_end(&mut buf)?;
        Ok(String::from_utf8_lossy(&buf).into_owned())
    };
    match read() {
        Ok(text) => {
            let text = strip_terminal_codes(&text);
            let all: Vec<&str> = text.lines().collect();
            all[all.len().saturating_sub(lines)..].join("\n")
        }
        Err(e) => format!("(cannot read {}: {e})", path.display()),
    }
}

/// Removes CSI escape sequences (ESC [ ... final byte) and carriage returns.
fn strip_terminal_codes(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\u{1b}' if chars.peek() == Some(&'[') => {
                chars.next();
                // Parameters and intermediates run up to a final byte in @..~.
                for c in chars.by_ref() {
                    if ('@'..='~').contains(&c) {
                        break;
                    }
                }
            }
            '\r' => {}
            c => out.push(c),
        }
    }
    out
}

fn random_hex(bytes: usize) -> Result<String> {
    let mut buf = vec![0u8; bytes];
    fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut buf))
        .context("cannot read /dev/urandom")?;
    Ok(hex::encode(buf))
}

/// Runs `work` for every item on up to MAX_PARALLEL threads. Threads cannot share
/// the caller's `log` (it is neither Send nor Sync), so they send their lines here
/// and this thread hands them to `log` as they come. Results keep the items' order.
fn in_parallel<T: Sync, R: Send>(
    items: &[T],
    log: &mut dyn FnMut(&str),
    work: impl Fn(&T, &dyn Fn(String)) -> R + Sync,
) -> Vec<R> {
    let next = AtomicUsize::new(0);
    let workers = items.len().clamp(1, MAX_PARALLEL);
    let (tx, rx) = mpsc::channel::<String>();
    let mut results: Vec<Option<R>> = (0..items.len()).map(|_| None).collect();
    thread::scope(|s| {
        let handles: Vec<_> = (0..workers)
            .map(|_| {
                let tx = tx.clone();
                let (next, work) = (&next, &work);
                s.spawn(move || {
                    let say = |m: String| {
                        let _ = tx.send(m);
                    };
                    let mut done = Vec::new();
                    loop {
                        let i = next.fetch_add(1, Ordering::SeqCst);
                        if i >= items.len() {
                            break done;
                        }
                        done.push((i, work(&items[i], &say)));
                    }
                })
            })
            .collect();
        drop(tx);
        for line in rx {
            log(&line);
        }
        for h in handles {
            match h.join() {
                Ok(done) => {
                    for (i, r) in done {
                        results[i] = Some(r);
                    }
                }
                Err(panic) => std::panic::resume_unwind(panic),
            }
        }
    });
    // Every index below items.len() was taken by exactly one worker.
    results.into_iter().flatten().collect()
}

fn collect_errors(results: Vec<Result<()>>) -> Result<()> {
    combine(results.into_iter().filter_map(|r| r.err()).collect())
}

/// One error stays as it is; several become one listing them all, so a failure on
/// one host does not hide another's.
fn combine(mut errors: Vec<anyhow::Error>) -> Result<()> {
    match errors.len() {
        0 => Ok(()),
        1 => Err(errors.remove(0)),
        n => {
            let all: Vec<String> = errors.iter().map(|e| format!("{e:#}")).collect();
            bail!("{n} lab hosts failed:\n- {}", all.join("\n- "))
        }
    }
}
