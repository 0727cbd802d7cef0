//! This machine: root, the packages the lab needs, the lab's SSH key, the base image.

use std::collections::HashSet;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

use anyhow::{anyhow, bail, Context, Result};

use super::{host::*, key_path, util::*, MIRROR, SUITE};

/// Packages on top of minbase: what booting, SSH, and kiln's own modules need.
const IMAGE_PACKAGES: &str =
    "systemd,systemd-sysv,openssh-server,dbus,iproute2,python3,ca-certificates,sudo,curl";
/// Packages this machine needs to run the lab, with a file that shows each is there.
const MACHINE_PACKAGES: &[&str] = &[
    "debootstrap",
    "systemd-container",
    "iproute2",
    "openssh-client",
    // The apt cache and the artifact server are Python (standard library only).
    "python3",
];

pub(super) fn require_root() -> Result<()> {
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
pub(super) fn ensure_machine_packages(log: &mut dyn FnMut(&str)) -> Result<()> {
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
pub(super) fn ensure_lab_key(state_dir: &Path, log: &mut dyn FnMut(&str)) -> Result<PathBuf> {
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

pub(super) fn read_public_key(path: &Path) -> Result<String> {
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
pub(super) fn ensure_image(state_dir: &Path, log: &mut dyn FnMut(&str)) -> Result<PathBuf> {
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
