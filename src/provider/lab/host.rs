//! Lab hosts and their names: everything derived from one configured host (machine
//! name, directories, namespace, veth, cgroups), and the checks run before anything is touched.

use std::collections::HashSet;
use std::fs;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};

use super::{util::*, LabConfig, LabHost};
use sha2::{Digest, Sha256};

/// Everything derived from one configured host: names and paths of its pieces.
#[derive(Debug, Clone)]
pub(super) struct Host {
    pub(super) env: String,
    pub(super) name: String,
    pub(super) address: Ipv4Addr,
    pub(super) aliases: Vec<String>,
    /// `<env>-<name>`: the nspawn machine name, host directory and cgroup suffix.
    pub(super) machine: String,
    pub(super) dir: PathBuf,
    pub(super) rootfs: PathBuf,
    /// Interface names are limited to 15 bytes, so the veth (and, for symmetry, the
    /// namespace) is named after a hash of env/name rather than the names themselves.
    pub(super) netns: String,
    pub(super) veth: String,
    pub(super) cgroup: String,
}

impl Host {
    pub(super) fn new(cfg: &LabConfig, h: &LabHost) -> Host {
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

    pub(super) fn label(&self) -> String {
        format!("{} ({})", self.name, self.address)
    }

    pub(super) fn pid_file(&self) -> PathBuf {
        self.dir.join("pid")
    }

    pub(super) fn console_log(&self) -> PathBuf {
        self.dir.join("console.log")
    }

    pub(super) fn identity_file(&self) -> PathBuf {
        self.dir.join("lab-host")
    }

    pub(super) fn identity(&self) -> String {
        format!(
            "env={}\nname={}\naddress={}\n",
            self.env, self.name, self.address
        )
    }

    /// The pid of this host's systemd-nspawn, if the recorded pid is alive and really
    /// is nspawn running our root filesystem. A pid file left by a killed run, or
    /// whose pid the kernel has since given to something else, yields None.
    pub(super) fn running_pid(&self) -> Option<u32> {
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
    pub(super) fn cgroup_dirs(&self) -> Vec<PathBuf> {
        cgroup_roots()
            .into_iter()
            .map(|root| root.join(&self.cgroup))
            .collect()
    }
}

pub(super) fn lab_hosts(cfg: &LabConfig) -> Vec<Host> {
    cfg.hosts.iter().map(|h| Host::new(cfg, h)).collect()
}

/// Makes the state directory absolute: pid and rootfs paths are compared with the
/// command lines of running processes, and those must not depend on the caller's cwd.
pub(super) fn normalize(cfg: &LabConfig) -> Result<LabConfig> {
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
pub(super) fn validate(cfg: &LabConfig) -> Result<()> {
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
pub(super) fn check_label(what: &str, s: &str) -> Result<()> {
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
pub(super) fn check_conflicts(state_dir: &Path, hosts: &[Host]) -> Result<()> {
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

pub(super) fn field<'a>(text: &'a str, key: &str) -> Option<&'a str> {
    text.lines()
        .find_map(|l| l.strip_prefix(key)?.strip_prefix('='))
}
