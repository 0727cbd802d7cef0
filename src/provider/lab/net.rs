//! The lab network: the bridge and each host's namespace and veth.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use anyhow::{bail, Result};

use super::{host::*, util::*, BRIDGE, BRIDGE_IP};

pub(super) fn ensure_bridge() -> Result<()> {
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
pub(super) fn setup_network(host: &Host) -> Result<()> {
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

pub(super) fn teardown_network(host: &Host) -> Result<()> {
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
