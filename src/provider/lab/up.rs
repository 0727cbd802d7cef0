//! `up`: preparing and starting every host's container (root filesystem, identity,
//! host files) and waiting until all of them answer SSH.

use std::fs;
use std::net::Ipv4Addr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};

use super::{
    apt_cache::*, artifacts, boot::*, edit_known_hosts, host::*, machine::*, net::*, remove::*,
    util::*,
};
use super::{LabConfig, BRIDGE, BRIDGE_IP, MIRROR, PROXY_PORT, SECURITY_MIRROR, SUITE};

/// The delimiters of the part of each host's /etc/hosts that the lab rewrites.
const HOSTS_BEGIN: &str = "# BEGIN kiln lab hosts (rewritten by `kiln lab up`)";
const HOSTS_END: &str = "# END kiln lab hosts";

/// Every container's systemd takes inotify instances; with the kernel's default of 128 per
/// user, the tenth or so container fails to boot ("Failed to allocate manager object: Too
/// many open files"). Raise the limits (never lower them).
pub(super) fn ensure_inotify_limits(log: &mut dyn FnMut(&str)) {
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
pub(super) fn bring_up(
    cfg: &LabConfig,
    only: Option<&str>,
    log: &mut dyn FnMut(&str),
) -> Result<()> {
    require_root()?;
    fs::create_dir_all(&cfg.state_dir).with_context(|| {
        format!(
            "cannot create the lab state directory {}",
            cfg.state_dir.display()
        )
    })?;
    let _turn = super::lab_lock(&cfg.state_dir, log)?;
    ensure_machine_packages(log)?;
    let key = ensure_lab_key(&cfg.state_dir, log)?;
    let pubkey = read_public_key(&key.with_extension("pub"))?;
    let image = ensure_image(&cfg.state_dir, log)?;
    ensure_bridge()?;
    ensure_apt_cache(&cfg.state_dir, log)?;
    ensure_inotify_limits(log);
    // Artifacts (the MinIO stand-in) served on the bridge: see provider::lab::artifacts.
    artifacts::ensure(&cfg.state_dir, log)?;

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
    let lines: Vec<String> = lines.into_iter().map(|(_, l)| l).collect();
    edit_known_hosts(&cfg.known_hosts, &addresses, &lines)?;

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
pub(super) fn prepare_and_start(
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
pub(super) fn network_intact(host: &Host) -> bool {
    let veth = Path::new("/sys/class/net").join(&host.veth);
    let master = fs::read_link(veth.join("master")).ok();
    Path::new("/run/netns").join(&host.netns).exists()
        && master.is_some_and(|m| m.file_name().is_some_and(|n| n == BRIDGE))
}

/// Copies the base image into a new root filesystem and gives it its identity: SSH
/// host keys, machine id, hostname, hosts, apt configuration and root's authorized
/// key. It is made under rootfs.tmp and renamed at the end, so that a killed run
/// never leaves a half-made root filesystem that looks finished.
pub(super) fn create_rootfs(
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

    // apt goes through the lab's apt cache on the bridge: the hosts have no other way out.
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
    write_file(
        &tmp.join("etc/apt/apt.conf.d/01kiln-proxy"),
        apt_proxy_conf().as_bytes(),
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

/// The lab hosts' apt configuration: every request through the lab's apt cache.
fn apt_proxy_conf() -> String {
    format!("Acquire::http::Proxy \"http://{BRIDGE_IP}:{PROXY_PORT}\";\n")
}

/// Rewrites what the lab owns in an existing root filesystem, so that `up` with a
/// changed host list or a new lab key brings old hosts up to date. Only the marked
/// block of /etc/hosts is touched: configuration management may own the rest.
pub(super) fn refresh_host_files(host: &Host, all: &[Host], pubkey: &str) -> Result<()> {
    // A host made by an older lab may name another proxy port.
    let proxy_path = host.rootfs.join("etc/apt/apt.conf.d/01kiln-proxy");
    if read_optional(&proxy_path)? != apt_proxy_conf() {
        write_file(&proxy_path, apt_proxy_conf().as_bytes(), 0o644)?;
    }
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

pub(super) fn hosts_block(all: &[Host]) -> String {
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

pub(super) fn replace_hosts_block(current: &str, block: &str) -> String {
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
pub(super) fn host_key_line(host: &Host) -> Result<String> {
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
pub(super) fn start_container(host: &Host) -> Result<Child> {
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
