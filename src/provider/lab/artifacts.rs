//! The lab's artifact server: `state_dir/artifacts/` served over HTTP on the bridge address
//! ([`ARTIFACT_PORT`]), so lab hosts can install "downloaded" binaries the way production
//! hosts do, from a URL pinned by sha256.
//!
//! Its one artifact today is `minio`: MinIO's server binary cannot be had on this machine,
//! so the lab serves a stand-in that starts the way MinIO does (`minio server [--address
//! :PORT] DIR...` with `MINIO_ROOT_USER`/`MINIO_ROOT_PASSWORD` in the environment): a small
//! sh adapter with the `s3s-fs` binary (crates.io, an S3 server storing objects as files,
//! checking SigV4 signatures) appended. `minio.sha256` beside it holds its pin, for
//! environments to read as a `file` secret. The `minio` module knows nothing of this.
//!
//! ```text
//! state_dir/artifacts/minio            the adapter + s3s-fs (rebuilt when s3s-fs changes)
//! state_dir/artifacts/minio.sha256     its sha256 (hex)
//! state_dir/artifacts/.minio.source    sha256 of the s3s-fs binary it was built from
//! state_dir/artifacts-http.{pid,log}   the HTTP server (python3 -m http.server)
//! ```
//!
//! s3s-fs comes from `$KILN_S3S_FS`, or `state_dir/tools/s3s-fs/bin/s3s-fs` where `.ci/run`
//! installs it (`cargo install s3s-fs@0.14.1 --features binary --locked --root ...`).
//! When neither exists, `kiln lab up` builds it once with the machine's cargo (a few
//! minutes); if that fails the lab still comes up, with a note, and serves no `minio`.

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

/// The stand-in's adapter; the s3s-fs binary follows the marker line.
const MINIO_ADAPTER: &str = r#"#!/bin/sh
# kiln lab stand-in for MinIO's server binary (NOT MinIO): s3s-fs 0.14.1, an S3 server that
# stores objects as files and checks SigV4 signatures, started the way MinIO is:
#   minio server [--address :PORT] [--console-address :PORT] DIR...
# with MINIO_ROOT_USER and MINIO_ROOT_PASSWORD in the environment. Only the first DIR is
# served (s3s-fs serves one directory); distributed endpoints (http://...) are refused.
# MinIO's unauthenticated /minio/health/live and /minio/health/ready are answered by a small
# python3 front on PORT; everything else is passed to s3s-fs on 127.0.0.1 (PORT+10000) as is
# (the Host header stays, so signatures still verify). Lab only: s3s-fs takes its keys as
# arguments, so they are visible to root in the process list of the storage host.
set -eu
self=$0
sum=$(cksum < "$self" | cut -d' ' -f1)
bin=${TMPDIR:-/tmp}/kiln-s3s-fs-$(id -u)-$sum
if [ ! -x "$bin" ]; then
	line=$(awk '/^__KILN_PAYLOAD__$/ { print NR + 1; exit }' "$self")
	tail -n +"$line" "$self" > "$bin.tmp.$$"
	chmod 0700 "$bin.tmp.$$"
	mv -f "$bin.tmp.$$" "$bin"
fi
case "${1:-}" in
	server) shift ;;
	--version|version) echo "minio version kiln-lab-standin (s3s-fs 0.14.1)"; exit 0 ;;
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
exec python3 - "$bin" "$port" "$dir" <<'KILN_PY'
import http.client, http.server, os, signal, socket, subprocess, sys, threading
binary, port, root = sys.argv[1], int(sys.argv[2]), sys.argv[3]
inner = port + 10000 if port + 10000 < 65536 else port - 10000
child = subprocess.Popen([binary, "--host", "127.0.0.1", "--port", str(inner),
                          "--access-key", os.environ["MINIO_ROOT_USER"],
                          "--secret-key", os.environ["MINIO_ROOT_PASSWORD"], root])
HOP = {"connection", "keep-alive", "proxy-connection", "transfer-encoding", "upgrade", "te",
       "trailer"}

def up():
    try:
        socket.create_connection(("127.0.0.1", inner), timeout=2).close()
        return True
    except OSError:
        return False

class Front(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def forward(self):
        if self.path.split("?")[0] in ("/minio/health/live", "/minio/health/ready"):
            self.send_response(200 if up() else 503)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        left = int(self.headers.get("Content-Length") or 0)
        c = http.client.HTTPConnection("127.0.0.1", inner, timeout=900)
        c.putrequest(self.command, self.path, skip_host=True, skip_accept_encoding=True)
        for k, v in self.headers.items():
            if k.lower() not in HOP:
                c.putheader(k, v)
        c.endheaders()
        while left > 0:
            chunk = self.rfile.read(min(left, 1 << 20))
            if not chunk:
                break
            c.send(chunk)
            left -= len(chunk)
        r = c.getresponse()
        self.send_response_only(r.status, r.reason)
        for k, v in r.getheaders():
            if k.lower() not in HOP:
                self.send_header(k, v)
        if self.command == "HEAD":
            self.end_headers()
        elif r.getheader("Content-Length") is None:
            data = r.read()
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)
        else:
            self.end_headers()
            for chunk in iter(lambda: r.read(1 << 20), b""):
                self.wfile.write(chunk)
        c.close()

    do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = forward

def stop(*_):
    child.terminate()
    os._exit(0)

def watch():
    child.wait()
    print("minio (lab stand-in): s3s-fs exited with %s" % child.returncode, file=sys.stderr)
    os._exit(1)

signal.signal(signal.SIGTERM, stop)
threading.Thread(target=watch, daemon=True).start()
server = http.server.ThreadingHTTPServer(("0.0.0.0", port), Front)
server.daemon_threads = True
server.serve_forever()
KILN_PY
__KILN_PAYLOAD__
"#;

pub fn artifacts_dir(state_dir: &Path) -> PathBuf {
    state_dir.join("artifacts")
}

/// The URL lab hosts fetch an artifact from.
pub fn artifact_url(name: &str) -> String {
    format!("http://{BRIDGE_IP}:{ARTIFACT_PORT}/{name}")
}

fn s3s_fs(state_dir: &Path) -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("KILN_S3S_FS") {
        return Some(PathBuf::from(p));
    }
    let p = state_dir.join("tools/s3s-fs/bin/s3s-fs");
    p.exists().then_some(p)
}

/// Builds s3s-fs once with the machine's cargo (the lab's environments declare a MinIO; without
/// its stand-in their secrets and apply would fail). Its log is kept beside it.
fn build_s3s_fs(state_dir: &Path, log: &mut dyn FnMut(&str)) -> Option<PathBuf> {
    let root = state_dir.join("tools/s3s-fs");
    let logfile = state_dir.join("tools/s3s-fs-build.log");
    fs::create_dir_all(state_dir.join("tools")).ok()?;
    log("building the lab's MinIO stand-in once: cargo install s3s-fs@0.14.1 (a few minutes)");
    let out = fs::File::create(&logfile).ok()?;
    let err = out.try_clone().ok()?;
    let status = std::process::Command::new("cargo")
        .args([
            "install",
            "-q",
            "s3s-fs@0.14.1",
            "--features",
            "binary",
            "--locked",
            "--root",
        ])
        .arg(&root)
        .stdout(out)
        .stderr(err)
        .status();
    match status {
        Ok(s) if s.success() => Some(root.join("bin/s3s-fs")).filter(|p| p.exists()),
        other => {
            log(&format!(
                "note: building s3s-fs failed ({}); see {}",
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
    let found = s3s_fs(state_dir).or_else(|| build_s3s_fs(state_dir, log));
    match found {
        Some(bin) => {
            let payload = fs::read(&bin).with_context(|| format!("reading {}", bin.display()))?;
            let source = sha256_hex(&[MINIO_ADAPTER.as_bytes(), &payload].concat());
            let stamp = dir.join(".minio.source");
            let current = fs::read_to_string(&stamp).unwrap_or_default();
            if current.trim() != source || !dir.join("minio").exists() {
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
                    "artifact minio (MinIO stand-in: adapter + {}) built",
                    bin.display()
                ));
            }
        }
        None => log(&format!(
            "note: no s3s-fs, so the lab serves no MinIO stand-in; install it with \
             `cargo install s3s-fs@0.14.1 --features binary --locked --root {}`",
            state_dir.join("tools/s3s-fs").display()
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
    let log_path = state_dir.join("artifacts-http.log");
    let out = fs::File::create(&log_path)?;
    let err = out.try_clone()?;
    let mut child = Command::new("setsid")
        .args(["python3", "-m", "http.server", &ARTIFACT_PORT.to_string()])
        .args(["--bind", BRIDGE_IP, "--directory"])
        .arg(dir)
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        .current_dir("/")
        .spawn()
        .context("cannot run setsid python3 -m http.server")?;
    write(
        &state_dir.join("artifacts-http.pid"),
        format!("{}\n", child.id()).as_bytes(),
        0o644,
    )?;
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        if listening() {
            return Ok(());
        }
        if let Some(status) = child.try_wait()? {
            bail!(
                "the artifact server exited at once ({status}): see {}",
                log_path.display()
            );
        }
        if Instant::now() > deadline {
            bail!(
                "the artifact server did not listen within 15 s: see {}",
                log_path.display()
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
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
    #[test]
    fn adapter_ends_with_the_payload_marker() {
        assert!(super::MINIO_ADAPTER.ends_with("\n__KILN_PAYLOAD__\n"));
        assert_eq!(super::artifact_url("minio"), "http://10.233.0.1:8090/minio");
    }
}
