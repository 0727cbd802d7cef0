//! The lab's apt cache (src/provider/lab/apt_cache.py) against a mirror on loopback that
//! counts what it is asked: one fetch per file however many clients ask at once, index
//! files refreshed after their time, packages kept, incomplete or wrong bodies never kept,
//! the last good index served when the mirror is gone, and no fetch from hosts that are not
//! mirrors. The lab suites run it against Debian's real mirror.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// A mirror that answers slowly (so that clients overlap) and counts requests per path.
/// `/count?PATH` answers how many times PATH was asked for.
const MIRROR: &str = r#"
import hashlib, http.server, socketserver, sys, threading, time
counts = {}
lock = threading.Lock()
BODY = {
    "/debian/dists/bookworm/InRelease": b"release v1\n" * 100,
    "/debian/pool/main/h/hello/hello_2.10-3_amd64.deb": b"\x7fdeb" * 5000,
}
GOOD = b"an index\n"
BODY["/debian/dists/bookworm/main/by-hash/SHA256/" + hashlib.sha256(GOOD).hexdigest()] = GOOD
BODY["/debian/dists/bookworm/main/by-hash/SHA256/" + "0" * 64] = b"not what the name says"
class H(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def log_message(self, *a): pass
    def do_GET(self):
        path = self.path
        if path.startswith("/count?"):
            body = str(counts.get(path[7:], 0)).encode()
        else:
            with lock:
                counts[path] = counts.get(path, 0) + 1
            time.sleep(0.3)
            if path == "/debian/pool/short.deb":
                self.send_response(200)
                self.send_header("Content-Length", "1000")
                self.end_headers()
                self.wfile.write(b"x" * 10)
                self.close_connection = True
                return
            body = BODY.get(path)
            if body is None:
                self.send_response(404)
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
class S(socketserver.ThreadingMixIn, http.server.HTTPServer):
    daemon_threads = True
    request_queue_size = 64
S(("127.0.0.1", int(sys.argv[1])), H).serve_forever()
"#;

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

struct Proc(Child);
impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn wait_listening(port: u16) {
    let until = Instant::now() + Duration::from_secs(10);
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < until, "nothing listens on port {port}");
        thread::sleep(Duration::from_millis(50));
    }
}

fn start_mirror(port: u16) -> Proc {
    let p = Proc(
        Command::new("python3")
            .args(["-c", MIRROR, &port.to_string()])
            .stdin(Stdio::null())
            .spawn()
            .expect("python3"),
    );
    wait_listening(port);
    p
}

fn start_cache(port: u16, mirror: u16, dir: &std::path::Path, ttl: u32) -> Proc {
    let p = Proc(
        Command::new("python3")
            .arg(repo().join("src/provider/lab/apt_cache.py"))
            .args(["--listen", &format!("127.0.0.1:{port}"), "--dir"])
            .arg(dir)
            .args(["--allow", &format!("127.0.0.1:{mirror}")])
            .args(["--ttl", &ttl.to_string(), "--timeout", "5", "--tries", "2"])
            .stdin(Stdio::null())
            .spawn()
            .expect("python3"),
    );
    wait_listening(port);
    p
}

/// One GET through the proxy, as apt sends it (absolute URL): (status, body).
fn get(proxy: u16, url: &str) -> (u16, Vec<u8>) {
    let mut s = TcpStream::connect(("127.0.0.1", proxy)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    write!(
        s,
        "GET {url} HTTP/1.1\r\nHost: x\r\nConnection: close\r\nCache-Control: max-age=0\r\n\r\n"
    )
    .unwrap();
    let mut r = BufReader::new(s);
    let mut line = String::new();
    r.read_line(&mut line).unwrap();
    let status: u16 = line.split_whitespace().nth(1).unwrap().parse().unwrap();
    let mut len = 0usize;
    loop {
        line.clear();
        r.read_line(&mut line).unwrap();
        if line.trim().is_empty() {
            break;
        }
        if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
            len = v.trim().parse().unwrap();
        }
    }
    let mut body = vec![0; len];
    r.read_exact(&mut body).unwrap();
    (status, body)
}

/// How many times the mirror was asked for `path` (asked of the mirror itself).
fn asked(mirror: u16, path: &str) -> u32 {
    let (_, body) = get(mirror, &format!("/count?{path}"));
    String::from_utf8(body).unwrap().parse().unwrap()
}

#[test]
fn one_fetch_per_file_however_many_ask_and_nothing_incomplete_is_kept() {
    let mirror = free_port();
    let proxy = free_port();
    let dir = tempfile::tempdir().unwrap();
    let _m = start_mirror(mirror);
    let _c = start_cache(proxy, mirror, dir.path(), 3);
    let base = format!("http://127.0.0.1:{mirror}/debian");
    let release = "/debian/dists/bookworm/InRelease";

    // 24 new hosts ask for the same InRelease in the same moment: one fetch.
    let url = format!("{base}/dists/bookworm/InRelease");
    let answers: Vec<(u16, Vec<u8>)> = thread::scope(|s| {
        let hs: Vec<_> = (0..24).map(|_| s.spawn(|| get(proxy, &url))).collect();
        hs.into_iter().map(|h| h.join().unwrap()).collect()
    });
    for (status, body) in &answers {
        assert_eq!(*status, 200);
        assert_eq!(body, &b"release v1\n".repeat(100));
    }
    assert_eq!(asked(mirror, release), 1, "24 clients, one fetch");

    // Within its time the index is served from the cache; after it, fetched again.
    assert_eq!(get(proxy, &url).0, 200);
    assert_eq!(asked(mirror, release), 1);
    thread::sleep(Duration::from_millis(3200));
    assert_eq!(get(proxy, &url).0, 200);
    assert_eq!(
        asked(mirror, release),
        2,
        "an index past its time is fetched again"
    );

    // A package is kept for good.
    let deb = "/debian/pool/main/h/hello/hello_2.10-3_amd64.deb";
    for _ in 0..3 {
        let (status, body) = get(proxy, &format!("http://127.0.0.1:{mirror}{deb}"));
        assert_eq!((status, body.len()), (200, 20000));
    }
    assert_eq!(asked(mirror, deb), 1);

    // A short body is an error for the client and is not kept (asked again next time,
    // after the cache's own retry).
    let short = "/debian/pool/short.deb";
    assert_eq!(
        get(proxy, &format!("http://127.0.0.1:{mirror}{short}")).0,
        502
    );
    assert_eq!(asked(mirror, short), 2, "one try and one retry");
    assert_eq!(
        get(proxy, &format!("http://127.0.0.1:{mirror}{short}")).0,
        502
    );
    assert_eq!(asked(mirror, short), 4, "nothing of it was kept");

    // by-hash files are checked against their name.
    let good = format!(
        "/debian/dists/bookworm/main/by-hash/SHA256/{}",
        sha256_hex(b"an index\n")
    );
    assert_eq!(
        get(proxy, &format!("http://127.0.0.1:{mirror}{good}")),
        (200, b"an index\n".to_vec())
    );
    let bad = format!(
        "/debian/dists/bookworm/main/by-hash/SHA256/{}",
        "0".repeat(64)
    );
    assert_eq!(
        get(proxy, &format!("http://127.0.0.1:{mirror}{bad}")).0,
        502
    );

    // A missing file is the mirror's 404, not kept either.
    let missing = "/debian/pool/none.deb";
    assert_eq!(
        get(proxy, &format!("http://127.0.0.1:{mirror}{missing}")).0,
        404
    );

    // Only the mirrors it was given: no fetch anywhere else, no CONNECT tunnels.
    let other = free_port();
    assert_eq!(
        get(proxy, &format!("http://127.0.0.1:{other}/debian/x")).0,
        403
    );
    assert_eq!(get(proxy, "http://example.org/debian/x").0, 403);
    let mut s = TcpStream::connect(("127.0.0.1", proxy)).unwrap();
    write!(
        s,
        "CONNECT example.org:443 HTTP/1.1\r\nHost: example.org:443\r\n\r\n"
    )
    .unwrap();
    let mut line = String::new();
    BufReader::new(s).read_line(&mut line).unwrap();
    assert!(line.contains(" 501 ") || line.contains(" 405 "), "{line}");

    // The mirror gone: the last good index is served past its time, a package kept is
    // still served, and what was never fetched is an error.
    drop(_m);
    thread::sleep(Duration::from_millis(3200));
    assert_eq!(
        get(proxy, &url),
        (200, b"release v1\n".repeat(100)),
        "the last good index when the mirror cannot be reached"
    );
    assert_eq!(
        get(proxy, &format!("http://127.0.0.1:{mirror}{deb}")).0,
        200
    );
    assert_eq!(
        get(
            proxy,
            &format!("http://127.0.0.1:{mirror}/debian/pool/new.deb")
        )
        .0,
        502
    );
}

fn sha256_hex(data: &[u8]) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(data))
}
