//! The russh transport against a real OpenSSH server: Debian's sshd started here on
//! 127.0.0.1 on a free high port, with its own host keys and authorized_keys in a temp dir,
//! and killed by its pid at the end. Output, exit codes and stdin as `run` gives them;
//! known_hosts strictness: an unknown key refused, a changed key refused (also with
//! `accept_new`), `accept_new` recording an unknown one; a config russh cannot follow handed
//! to OpenSSH; a host that accepts and never answers fails within the connect timeout.
//!
//! Needs root and /usr/sbin/sshd (`apt-get install openssh-server`; `.ci/run` installs it).
//! Without them it says NOT RUN, and fails instead under CI or `KILN_E2E=require`.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use kiln::desired::Connection;
use kiln::transport::russh::{prepare, Plan, RusshTransport};
use kiln::transport::ssh::SshOptions;
use kiln::transport::Transport;

const SSHD: &str = "/usr/sbin/sshd";

struct Sshd {
    child: Child,
    port: u16,
}

impl Drop for Sshd {
    fn drop(&mut self) {
        // Only the sshd this test started, by its pid.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn keygen(path: &Path) -> String {
    let st = Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-C", "t", "-f"])
        .arg(path)
        .status()
        .unwrap();
    assert!(st.success());
    let public = std::fs::read_to_string(path.with_extension("pub")).unwrap();
    let mut w = public.split_whitespace();
    format!("{} {}", w.next().unwrap(), w.next().unwrap())
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn start_sshd(dir: &Path, host_key: &Path, authorized: &Path) -> Sshd {
    // Debian's sshd refuses to start without its privilege separation directory.
    std::fs::create_dir_all("/run/sshd").unwrap();
    let port = free_port();
    let cfg = dir.join(format!("sshd_config_{port}"));
    std::fs::write(
        &cfg,
        format!(
            "ListenAddress 127.0.0.1\nPort {port}\nHostKey {}\nAuthorizedKeysFile {}\n\
             PermitRootLogin prohibit-password\nPasswordAuthentication no\n\
             KbdInteractiveAuthentication no\nUsePAM no\nStrictModes no\nPidFile none\n\
             MaxSessions 10\n",
            host_key.display(),
            authorized.display()
        ),
    )
    .unwrap();
    let child = Command::new(SSHD)
        .args(["-D", "-e", "-f"])
        .arg(&cfg)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let sshd = Sshd { child, port };
    let t = Instant::now();
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(t.elapsed() < Duration::from_secs(10), "sshd did not listen");
        std::thread::sleep(Duration::from_millis(50));
    }
    sshd
}

struct Fixture {
    dir: tempfile::TempDir,
    client_key: PathBuf,
    host_a: String,
    host_b: String,
    sshd: Sshd,
}

impl Fixture {
    fn new() -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let client_key = dir.path().join("client");
        let client_pub = keygen(&client_key);
        let authorized = dir.path().join("authorized_keys");
        std::fs::write(&authorized, format!("{client_pub}\n")).unwrap();
        let host_a = keygen(&dir.path().join("host_a"));
        let host_b = keygen(&dir.path().join("host_b"));
        std::fs::create_dir_all(dir.path().join("home/.ssh")).unwrap();
        let sshd = start_sshd(dir.path(), &dir.path().join("host_a"), &authorized);
        Fixture {
            dir,
            client_key,
            host_a,
            host_b,
            sshd,
        }
    }

    fn conn(&self) -> Connection {
        Connection {
            address: "127.0.0.1".into(),
            port: self.sshd.port,
            user: "root".into(),
            key: Some(self.client_key.clone()),
            provider: kiln::spec::Provider::Static,
        }
    }

    fn known_hosts(&self, name: &str, contents: Option<&str>) -> PathBuf {
        let p = self.dir.path().join(name);
        if let Some(c) = contents {
            std::fs::write(&p, c).unwrap();
        }
        p
    }

    fn home(&self) -> String {
        self.dir.path().join("home").display().to_string()
    }

    async fn connect(
        &self,
        known_hosts: &Path,
        accept_new: bool,
    ) -> anyhow::Result<RusshTransport> {
        let opts = SshOptions {
            known_hosts: known_hosts.to_path_buf(),
            accept_new,
            connect_timeout: Duration::from_secs(5),
        };
        let conn = self.conn();
        match prepare(&conn, &opts, &self.home()).await? {
            Plan::Russh(p) => RusshTransport::connect(&conn, &opts, p).await,
            Plan::OpenSsh(why) => panic!("expected russh, got a fallback: {why}"),
        }
    }
}

fn runnable() -> bool {
    let root = std::fs::read_to_string("/proc/self/status")
        .map(|s| s.lines().any(|l| l.starts_with("Uid:\t0\t")))
        .unwrap_or(false);
    if root && Path::new(SSHD).exists() {
        return true;
    }
    let required =
        std::env::var("KILN_E2E").as_deref() == Ok("require") || std::env::var_os("CI").is_some();
    assert!(
        !required,
        "russh_transport needs root and {SSHD} (apt-get install openssh-server)"
    );
    eprintln!("russh_transport: NOT RUN (needs root and {SSHD})");
    false
}

#[tokio::test]
async fn russh_runs_scripts_checks_host_keys_and_falls_back() {
    if !runnable() {
        return;
    }
    let f = Fixture::new();
    let port = f.sshd.port;
    let line_a = format!("[127.0.0.1]:{port} {}\n", f.host_a);

    // Known key: output, exit code, stderr, streaming lines, the script on stdin.
    let kh = f.known_hosts("known_a", Some(&line_a));
    let t = f
        .connect(&kh, false)
        .await
        .expect("connects with a known key");
    assert_eq!(t.describe(), format!("root@127.0.0.1:{port}"));
    let seen = std::sync::Mutex::new(vec![]);
    let sink = |l: &str| seen.lock().unwrap().push(l.to_string());
    let out = t
        .run(
            "echo hello\necho oops >&2\nprintf 'no newline'\nexit 3\n",
            Duration::from_secs(20),
            Some(&sink),
        )
        .await
        .unwrap();
    assert_eq!(out.status, Some(3));
    assert_eq!(out.stdout, "hello\nno newline\n");
    assert_eq!(out.stderr, "oops\n");
    assert_eq!(*seen.lock().unwrap(), ["hello", "no newline"]);

    // A large script (over any window) and large output at once, read while writing.
    let mut big = String::new();
    for i in 0..40_000 {
        big.push_str(&format!("echo line{i}\n"));
    }
    let out = t.run(&big, Duration::from_secs(60), None).await.unwrap();
    assert_eq!(out.status, Some(0));
    assert_eq!(out.stdout.lines().count(), 40_000);
    assert!(out.stdout.ends_with("line39999\n"));

    // Channels at once on one connection.
    let runs = (0..10).map(|i| {
        t.run(
            Box::leak(format!("echo {i}\n").into_boxed_str()),
            Duration::from_secs(20),
            None,
        )
    });
    for (i, r) in futures_join(runs).await.into_iter().enumerate() {
        assert_eq!(r.unwrap().stdout, format!("{i}\n"));
    }
    // The remote `timeout` ends a script that runs too long.
    let out = t
        .run("sleep 30\n", Duration::from_secs(1), None)
        .await
        .unwrap();
    assert_eq!(out.status, Some(124), "{out:?}");
    drop(t);

    // Unknown key: refused, nothing recorded.
    let kh = f.known_hosts("known_empty", Some(""));
    let e = f
        .connect(&kh, false)
        .await
        .err()
        .expect("refused")
        .to_string();
    assert!(e.contains("unknown") && e.contains("accept_new"), "{e}");
    assert_eq!(std::fs::read_to_string(&kh).unwrap(), "");

    // Changed key: refused, with and without accept_new.
    let kh = f.known_hosts(
        "known_b",
        Some(&format!("[127.0.0.1]:{port} {}\n", f.host_b)),
    );
    for accept_new in [false, true] {
        let e = f
            .connect(&kh, accept_new)
            .await
            .err()
            .expect("refused")
            .to_string();
        assert!(e.contains("CHANGED"), "{e}");
    }
    // Recorded for port 22 only: another port is unknown.
    let kh = f.known_hosts("known_22", Some(&format!("127.0.0.1 {}\n", f.host_a)));
    let e = f
        .connect(&kh, false)
        .await
        .err()
        .expect("refused")
        .to_string();
    assert!(e.contains("unknown"), "{e}");

    // accept_new records an unknown key, then it is known.
    let kh = f.known_hosts("known_new", None);
    f.connect(&kh, true).await.expect("accept_new connects");
    assert_eq!(std::fs::read_to_string(&kh).unwrap(), line_a);
    let t = f.connect(&kh, false).await.expect("recorded key is known");
    assert_eq!(
        t.run("echo ok\n", Duration::from_secs(10), None)
            .await
            .unwrap()
            .stdout,
        "ok\n"
    );

    // A ProxyJump in ~/.ssh/config for this host: russh stands aside, naming why.
    std::fs::write(
        f.dir.path().join("home/.ssh/config"),
        "Host 127.0.0.1\n  ProxyJump bastion\n",
    )
    .unwrap();
    let opts = SshOptions {
        known_hosts: f.known_hosts("known_a", None),
        accept_new: false,
        connect_timeout: Duration::from_secs(5),
    };
    match prepare(&f.conn(), &opts, &f.home()).await.unwrap() {
        Plan::OpenSsh(why) => assert!(why.contains("proxyjump") && why.contains(":2"), "{why}"),
        Plan::Russh(_) => panic!("russh would ignore ProxyJump"),
    }
}

#[tokio::test]
async fn a_host_that_never_answers_fails_within_the_connect_timeout() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let hold = tokio::spawn(async move {
        let mut held = vec![];
        while let Ok((s, _)) = listener.accept().await {
            held.push(s);
        }
    });
    let dir = tempfile::tempdir().unwrap();
    let conn = Connection {
        address: "127.0.0.1".into(),
        port,
        user: "root".into(),
        key: None,
        provider: kiln::spec::Provider::Static,
    };
    let opts = SshOptions {
        known_hosts: dir.path().join("known_hosts"),
        accept_new: false,
        connect_timeout: Duration::from_secs(1),
    };
    let home = dir.path().display().to_string();
    let t = Instant::now();
    let p = match prepare(&conn, &opts, &home).await.unwrap() {
        Plan::Russh(p) => p,
        Plan::OpenSsh(why) => panic!("{why}"),
    };
    let e = RusshTransport::connect(&conn, &opts, p)
        .await
        .err()
        .expect("fails")
        .to_string();
    assert!(t.elapsed() < Duration::from_secs(3), "{:?}", t.elapsed());
    assert!(e.contains("timed out after 1s"), "{e}");
    hold.abort();
}

async fn futures_join<F: std::future::Future>(fs: impl Iterator<Item = F>) -> Vec<F::Output> {
    let mut handles = vec![];
    for f in fs {
        handles.push(f);
    }
    let mut out = vec![];
    // Poll them together: join_all without the futures crate.
    let pinned: Vec<_> = handles.into_iter().map(Box::pin).collect();
    let mut pending: Vec<Option<std::pin::Pin<Box<F>>>> = pinned.into_iter().map(Some).collect();
    let mut results: Vec<Option<F::Output>> = (0..pending.len()).map(|_| None).collect();
    std::future::poll_fn(|cx| {
        let mut done = true;
        for (i, slot) in pending.iter_mut().enumerate() {
            if let Some(f) = slot {
                match f.as_mut().poll(cx) {
                    std::task::Poll::Ready(v) => {
                        results[i] = Some(v);
                        *slot = None;
                    }
                    std::task::Poll::Pending => done = false,
                }
            }
        }
        if done {
            std::task::Poll::Ready(())
        } else {
            std::task::Poll::Pending
        }
    })
    .await;
    out.extend(results.into_iter().map(|r| r.expect("ready")));
    out
}
