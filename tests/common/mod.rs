//! Shared harness of the lab end-to-end suites: a scratch repository with its own
//! environment file, `kiln` run inside it, shell commands on lab hosts through `kiln ssh`.
#![allow(dead_code)]

use std::io::Read;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Command, ExitStatus, Stdio};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

/// Time limit of a kiln command run by [`Lab::kiln`] / [`Lab::kiln_env`], in seconds. The
/// slowest ones (`kiln lab up` of fresh hosts, `kiln apply` of a whole stack, `kiln
/// rebuild`, `kiln restore`) take a few minutes under load; no whole scenario of a CI run
/// took more than about four. A command that needs longer says so:
/// [`Lab::kiln_timeout`].
pub const KILN_TIMEOUT: u64 = 900;
/// Time limit of a shell command on a lab host ([`Lab::sh`], [`Lab::sh_in`]), in seconds
/// (lynis' install and audit, the longest, takes about a minute and a half); longer:
/// [`Lab::sh_timeout`].
pub const SH_TIMEOUT: u64 = 300;
/// Time limit of a local command ([`local`]), in seconds (testssl.sh of one site, the
/// longest, about a minute); longer: [`local_timeout`].
pub const LOCAL_TIMEOUT: u64 = 300;
/// Exit code of a [`Run`] whose command hit its time limit (as coreutils' `timeout`); its
/// stderr ends with `TIMED OUT after N s: COMMAND LINE`.
pub const TIMED_OUT: i32 = 124;

pub struct Lab {
    pub root: tempfile::TempDir,
    pub bin: PathBuf,
    pub env: String,
    /// Variables set for every kiln run (a secret's value, say).
    pub envs: Vec<(String, String)>,
    /// Every kiln output except `kiln ssh`'s, to check that no secret ever appears.
    pub outputs: Mutex<Vec<String>>,
    /// Secret values given to kiln by this suite (besides the generated ones).
    pub secrets: Vec<String>,
}

pub struct Run {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl Run {
    pub fn all(&self) -> String {
        format!("{}\n{}", self.stdout, self.stderr)
    }

    /// The command hit its time limit and was killed ([`TIMED_OUT`]).
    pub fn timed_out(&self) -> bool {
        self.code == TIMED_OUT && self.stderr.contains("TIMED OUT after ")
    }
}

pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

impl Lab {
    /// A scratch repository: `modules/` linked, `templates/` a directory of links (so that a
    /// test may replace one module's templates with a copy), and `environments/ENV.toml`.
    pub fn new(env: &str, env_text: &str) -> Lab {
        let root = tempfile::Builder::new()
            .prefix("kiln-e2e-")
            .tempdir()
            .expect("tempdir");
        std::os::unix::fs::symlink(repo().join("modules"), root.path().join("modules"))
            .expect("link modules");
        std::fs::create_dir_all(root.path().join("templates")).expect("mkdir templates");
        for e in std::fs::read_dir(repo().join("templates")).expect("templates") {
            let e = e.expect("entry");
            std::os::unix::fs::symlink(e.path(), root.path().join("templates").join(e.file_name()))
                .expect("link template dir");
        }
        std::fs::create_dir_all(root.path().join("environments")).expect("mkdir");
        let lab = Lab {
            root,
            bin: PathBuf::from(env!("CARGO_BIN_EXE_kiln")),
            env: env.to_string(),
            envs: vec![],
            outputs: Mutex::new(vec![]),
            secrets: vec![],
        };
        lab.write_env(env_text);
        lab
    }

    pub fn write_env(&self, text: &str) {
        std::fs::write(self.env_file(), text).expect("write env");
    }

    pub fn env_file(&self) -> PathBuf {
        self.path(&format!("environments/{}.toml", self.env))
    }

    /// Replaces templates/MODULE (a link) with a private copy the test may edit.
    pub fn own_templates(&self, module: &str) -> PathBuf {
        let dst = self.path(&format!("templates/{module}"));
        std::fs::remove_file(&dst).expect("unlink template dir");
        std::fs::create_dir_all(&dst).expect("mkdir");
        for e in std::fs::read_dir(repo().join("templates").join(module)).expect("read") {
            let e = e.expect("entry");
            std::fs::copy(e.path(), dst.join(e.file_name())).expect("copy template");
        }
        dst
    }

    pub fn path(&self, rel: &str) -> PathBuf {
        self.root.path().join(rel)
    }

    /// Sets a variable for every later kiln run.
    pub fn with_env(mut self, key: &str, value: &str) -> Lab {
        self.envs.push((key.to_string(), value.to_string()));
        self
    }

    /// Sets a secret's variable for every later kiln run; the value is scanned for in every
    /// output by [`Lab::no_secret_in_any_output`].
    pub fn with_secret(mut self, key: &str, value: &str) -> Lab {
        self.secrets.push(value.to_string());
        self.with_env(key, value)
    }

    /// Every secret of the suite: the values it set, and every secret kiln generated for an
    /// environment of the scratch repository (`~/.local/state/kiln/secrets/ENV/NAME`).
    pub fn known_secrets(&self) -> Vec<String> {
        let mut out = self.secrets.clone();
        let state = std::env::var_os("XDG_STATE_HOME")
            .map(PathBuf::from)
            .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".local/state")))
            .unwrap_or_else(|| PathBuf::from("/tmp"))
            .join("kiln/secrets");
        if let Ok(envs) = std::fs::read_dir(self.path("environments")) {
            for e in envs.flatten() {
                let p = e.path();
                if p.extension().is_none_or(|x| x != "toml") {
                    continue;
                }
                let name = p.file_stem().unwrap_or_default().to_owned();
                for s in std::fs::read_dir(state.join(name))
                    .into_iter()
                    .flatten()
                    .flatten()
                {
                    if let Ok(v) = std::fs::read_to_string(s.path()) {
                        out.push(v.trim_end_matches('\n').to_string());
                    }
                }
            }
        }
        out.retain(|v| v.len() >= 8);
        out
    }

    /// No output of any kiln run of the suite (but `kiln ssh`, which the suites use to read
    /// hosts' files on purpose) holds a secret, its sha256 hex or its base64.
    pub fn no_secret_in_any_output(&self) -> Result<(), String> {
        use base64::Engine as _;
        use sha2::Digest as _;
        let outputs = self.outputs.lock().expect("lock");
        let secrets = self.known_secrets();
        for v in &secrets {
            let forms = [
                ("the value", v.clone()),
                ("its sha256", hex_of(&sha2::Sha256::digest(v.as_bytes()))),
                (
                    "its base64",
                    base64::engine::general_purpose::STANDARD.encode(v),
                ),
            ];
            for (what, f) in &forms {
                if let Some(o) = outputs.iter().find(|o| o.contains(f.as_str())) {
                    return Err(format!(
                        "a kiln output holds a secret ({what}; {} chars):\n{}",
                        v.len(),
                        o.replace(f.as_str(), "<SECRET>")
                    ));
                }
            }
        }
        println!(
            "      scanned {} outputs for {} secrets (value, sha256, base64)",
            outputs.len(),
            secrets.len()
        );
        Ok(())
    }

    pub fn kiln(&self, args: &[&str]) -> Run {
        self.kiln_env_timeout(args, &[], KILN_TIMEOUT)
    }

    /// A kiln run with its own time limit (seconds) instead of [`KILN_TIMEOUT`].
    pub fn kiln_timeout(&self, args: &[&str], secs: u64) -> Run {
        self.kiln_env_timeout(args, &[], secs)
    }

    /// A kiln run in the scratch repository, with extra variables for this run only.
    pub fn kiln_env(&self, args: &[&str], envs: &[(&str, &str)]) -> Run {
        self.kiln_env_timeout(args, envs, KILN_TIMEOUT)
    }

    /// [`Lab::kiln_env`] with its own time limit (seconds). Every output but `kiln ssh`'s
    /// is recorded for [`Lab::no_secret_in_any_output`], a timed-out one too.
    pub fn kiln_env_timeout(&self, args: &[&str], envs: &[(&str, &str)], secs: u64) -> Run {
        let mut c = Command::new(&self.bin);
        c.current_dir(self.root.path())
            .env("NO_COLOR", "1")
            .env("KILN_ROOT", self.root.path())
            .args(args);
        for (k, v) in &self.envs {
            c.env(k, v);
        }
        for (k, v) in envs {
            c.env(k, v);
        }
        let r = run_timed(c, secs);
        if args.first() != Some(&"ssh") {
            self.outputs.lock().expect("lock").push(r.all());
        }
        r
    }

    /// Runs a shell command on a lab host through `kiln ssh` (limit [`SH_TIMEOUT`]).
    pub fn sh(&self, host: &str, cmd: &str) -> Run {
        self.sh_in_timeout(&self.env, host, cmd, SH_TIMEOUT)
    }

    /// [`Lab::sh`] with its own time limit (seconds).
    pub fn sh_timeout(&self, host: &str, cmd: &str, secs: u64) -> Run {
        self.sh_in_timeout(&self.env, host, cmd, secs)
    }

    /// Runs a shell command on a host of another environment of the scratch repository.
    pub fn sh_in(&self, env: &str, host: &str, cmd: &str) -> Run {
        self.sh_in_timeout(env, host, cmd, SH_TIMEOUT)
    }

    /// [`Lab::sh_in`] with its own time limit (seconds).
    pub fn sh_in_timeout(&self, env: &str, host: &str, cmd: &str, secs: u64) -> Run {
        self.kiln_env_timeout(
            &[
                "ssh",
                env,
                host,
                "--",
                "sh",
                "-c",
                &format!("'{}'", cmd.replace('\'', "'\\''")),
            ],
            &[],
            secs,
        )
    }
}

/// Runs a local command (limit [`LOCAL_TIMEOUT`]).
pub fn local(cmd: &str, args: &[&str]) -> Run {
    local_timeout(cmd, args, LOCAL_TIMEOUT)
}

/// Runs a local command with its own time limit (seconds).
pub fn local_timeout(cmd: &str, args: &[&str], secs: u64) -> Run {
    let mut c = Command::new(cmd);
    c.args(args);
    run_timed(c, secs)
}

/// Runs `c` to its end, or for at most `secs` seconds: standard input empty, standard
/// output and error read on threads of their own (a full pipe never blocks the command).
/// The command runs in a process group of its own; at the limit that group is killed (the
/// command and what it started: kiln's ssh clients, a remote shell's client), and the
/// [`Run`] has exit code [`TIMED_OUT`], the output read so far, and on stderr `TIMED OUT
/// after N s: COMMAND LINE`. What the lab must keep running (containers, apt-cacher-ng, the
/// artifact server) is started with `setsid`, in no group of ours. The same happens when
/// the command exits but something it started still holds its output open at the limit.
/// Panics when the command cannot be started at all.
pub fn run_timed(c: Command, secs: u64) -> Run {
    let line = command_line(&c);
    try_run_timed(c, secs).unwrap_or_else(|e| panic!("cannot run {line}: {e}"))
}

enum Event {
    Exited(std::io::Result<ExitStatus>),
    Closed,
}

fn try_run_timed(mut c: Command, secs: u64) -> std::io::Result<Run> {
    let line = command_line(&c);
    c.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0);
    let mut child = c.spawn()?;
    // The child leads its group: its pid is the group's id.
    let group = child.id() as i32;
    let (tx, rx) = mpsc::channel();
    let out = Arc::new(Mutex::new(Vec::new()));
    let err = Arc::new(Mutex::new(Vec::new()));
    let stdout = child.stdout.take().expect("piped stdout");
    let stderr = child.stderr.take().expect("piped stderr");
    spawn_reader(stdout, out.clone(), tx.clone());
    spawn_reader(stderr, err.clone(), tx.clone());
    {
        let tx = tx.clone();
        std::thread::spawn(move || {
            let _ = tx.send(Event::Exited(child.wait()));
        });
    }
    drop(tx);
    let deadline = Instant::now() + Duration::from_secs(secs);
    let (status, open) = collect(&rx, deadline, None, 2);
    let text =
        |b: &Arc<Mutex<Vec<u8>>>| String::from_utf8_lossy(&b.lock().expect("lock")).to_string();
    if let (Some(status), 0) = (&status, open) {
        return Ok(Run {
            code: status.as_ref().ok().and_then(|s| s.code()).unwrap_or(-1),
            stdout: text(&out),
            stderr: text(&err),
        });
    }
    // SAFETY: kill(2) on the process group this function created (its leader is our
    // child, whose pid the kernel does not reuse while the group has a member).
    unsafe {
        libc::kill(-group, libc::SIGKILL);
    }
    // The group is gone: the pipes close and the child is reaped, unless a process that
    // left the group (setsid) holds them; then what was read is all there is.
    let exited_before = status.is_some();
    let (status, _) = collect(&rx, Instant::now() + Duration::from_secs(5), status, open);
    let why = match (exited_before, &status) {
        (true, Some(Ok(s))) => format!(
            " (it exited {}, but a process it started kept its output open)",
            s.code()
                .map_or("on a signal".to_string(), |c| format!("with {c}"))
        ),
        _ => String::new(),
    };
    let message = format!("TIMED OUT after {secs} s: {line}{why}");
    println!("      {message}");
    let mut stderr = text(&err);
    if !stderr.is_empty() && !stderr.ends_with('\n') {
        stderr.push('\n');
    }
    stderr.push_str(&message);
    stderr.push('\n');
    Ok(Run {
        code: TIMED_OUT,
        stdout: text(&out),
        stderr,
    })
}

/// Waits until the child exited and `open` pipes closed, or until `deadline`; returns the
/// exit status (if seen) and how many pipes are still open.
fn collect(
    rx: &mpsc::Receiver<Event>,
    deadline: Instant,
    mut status: Option<std::io::Result<ExitStatus>>,
    mut open: usize,
) -> (Option<std::io::Result<ExitStatus>>, usize) {
    while status.is_none() || open > 0 {
        match rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
            Ok(Event::Exited(s)) => status = Some(s),
            Ok(Event::Closed) => open -= 1,
            Err(_) => break,
        }
    }
    (status, open)
}

fn spawn_reader(
    mut from: impl Read + Send + 'static,
    to: Arc<Mutex<Vec<u8>>>,
    tx: mpsc::Sender<Event>,
) {
    std::thread::spawn(move || {
        let mut buf = [0u8; 16384];
        loop {
            match from.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => to.lock().expect("lock").extend_from_slice(&buf[..n]),
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(_) => break,
            }
        }
        let _ = tx.send(Event::Closed);
    });
}

/// The command line as a shell would take it (arguments quoted where needed).
pub fn command_line(c: &Command) -> String {
    std::iter::once(c.get_program())
        .chain(c.get_args())
        .map(|a| {
            let a = a.to_string_lossy();
            let plain = !a.is_empty()
                && a.chars()
                    .all(|ch| ch.is_ascii_alphanumeric() || "_-./:=@%+,".contains(ch));
            if plain {
                a.to_string()
            } else {
                format!("'{}'", a.replace('\'', "'\\''"))
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

pub fn expect(cond: bool, what: &str, run: &Run) -> Result<(), String> {
    if cond {
        Ok(())
    } else {
        Err(format!("{what}\n--- exit {} ---\n{}", run.code, run.all()))
    }
}

fn hex_of(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// What a suite does after a scenario failed. The first scenario brings the lab up: when it
/// fails, nothing else can run.
#[derive(Clone, Copy)]
pub struct Policy {
    /// Later scenarios build on the state the earlier ones made: stop at the first failure.
    pub stop_at_failure: bool,
    /// Scenarios that still run after a failure: they check something independent of the
    /// state (e.g. that no secret was ever printed).
    pub always: &'static [&'static str],
}

pub type Scenario<'a, C> = (&'a str, &'a dyn Fn(&C) -> Result<(), String>);

/// The one harness of the end-to-end suites: root or NOT RUN, scenarios in order over one
/// shared lab (`ctx`), names given on the command line select scenarios (the first, lab up,
/// always runs), `teardown` always runs unless `KILN_E2E_KEEP` is set, times per scenario
/// and in total, and the exit code is 1 on any failure — a scenario not run after a failure
/// counts as failed, never as passed. The suite's context (and with it the lab's scratch
/// repository) is dropped before the process exits, unless `KILN_E2E_KEEP` keeps the lab.
pub fn run_suite<C>(
    suite: &str,
    ctx: C,
    scenarios: &[Scenario<'_, C>],
    teardown: &dyn Fn(&C) -> Result<(), String>,
    policy: Policy,
) -> ! {
    root_or_not_run(suite);
    let filter: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with('-'))
        .collect();
    let total = Instant::now();
    let (mut passed, mut failed) = (0, 0);
    let mut first_failed = false;
    let mut any_failed = false;
    for (i, (name, f)) in scenarios.iter().enumerate() {
        if i > 0 && !filter.is_empty() && !filter.iter().any(|x| name.contains(x.as_str())) {
            continue;
        }
        let blocked =
            first_failed || (any_failed && policy.stop_at_failure && !policy.always.contains(name));
        if blocked {
            println!("test {name} ... FAILED (not run: an earlier scenario failed)");
            failed += 1;
            continue;
        }
        let t = Instant::now();
        // A panicking scenario is a failed one: the rest and the teardown still run.
        let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| f(&ctx)))
            .unwrap_or_else(|p| {
                let what = p
                    .downcast_ref::<String>()
                    .cloned()
                    .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
                    .unwrap_or_default();
                Err(format!("panicked: {what}"))
            });
        match result {
            Ok(()) => {
                println!("test {name} ... ok ({:.1} s)", t.elapsed().as_secs_f64());
                passed += 1;
            }
            Err(e) => {
                println!(
                    "test {name} ... FAILED ({:.1} s)\n{e}\n",
                    t.elapsed().as_secs_f64()
                );
                failed += 1;
                any_failed = true;
                first_failed |= i == 0;
            }
        }
    }
    let keep = std::env::var_os("KILN_E2E_KEEP").is_some();
    if keep {
        println!(
            "\n!!! KILN_E2E_KEEP is set: the lab of {suite} is LEFT RUNNING (containers, netns, \
             bridge). Remove it with `kiln lab down` in its scratch repository.\n"
        );
    } else {
        let t = Instant::now();
        match teardown(&ctx) {
            Ok(()) => {
                println!("test teardown ... ok ({:.1} s)", t.elapsed().as_secs_f64());
                passed += 1;
            }
            Err(e) => {
                println!("test teardown ... FAILED\n{e}");
                failed += 1;
            }
        }
    }
    println!(
        "\n{suite} took {:.1} s\n{passed} passed, {failed} failed",
        total.elapsed().as_secs_f64()
    );
    if keep {
        // The scratch repository is how `kiln lab down` reaches the kept lab.
        std::mem::forget(ctx);
    } else {
        drop(ctx);
    }
    std::process::exit(if failed == 0 { 0 } else { 1 });
}

/// The end-to-end suites need root (systemd-nspawn, network namespaces, cgroups). As any
/// other user they say so plainly and end without running a scenario, so `cargo test`
/// runs every pure suite; with `KILN_E2E=require` (set by `.ci/run`) not being root fails.
pub fn root_or_not_run(suite: &str) {
    if unsafe { libc_geteuid() } == 0 {
        return;
    }
    if std::env::var("KILN_E2E").as_deref() == Ok("require") {
        eprintln!("{suite} needs root (systemd-nspawn, network namespaces), and KILN_E2E=require");
        std::process::exit(1);
    }
    println!(
        "\nNOT RUN: {suite} needs root (systemd-nspawn, network namespaces, cgroups).\n\
         0 scenarios ran. Run the whole suite as root (`sudo cargo test`, or .ci/run).\n"
    );
    std::process::exit(0);
}

extern "C" {
    #[link_name = "geteuid"]
    fn libc_geteuid() -> u32;
}
