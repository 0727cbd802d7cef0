//! Shared harness of the lab end-to-end suites: a scratch repository with its own
//! environment file, `kiln` run inside it, shell commands on lab hosts through `kiln ssh`.
#![allow(dead_code)]

use std::io::Read;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
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
        // A scan for nothing would pass whatever leaked: a suite registers its secrets.
        if secrets.is_empty() {
            return Err(
                "no secret to look for: the suite registers none (Lab::with_secret), so this \
                 scan could not fail"
                    .into(),
            );
        }
        if outputs.is_empty() {
            return Err("no output was recorded: nothing was scanned".into());
        }
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
    /// is recorded for [`Lab::no_secret_in_any_output`], a timed-out one too. `kiln lab up`
    /// and `kiln rebuild` note the environment as brought up; `kiln lab down` of such an
    /// environment is checked with [`Lab::assert_torn_down`], and [`run_suite`] fails the
    /// teardown unless every environment brought up was taken down and nothing is left.
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
        match args {
            ["lab", "up", env, ..] | ["rebuild", env, ..] => note_up(env, &r),
            ["lab", "down", env, ..] => self.note_down(env, &r),
            _ => {}
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
/// after N s: COMMAND LINE`. What the lab must keep running (containers, the apt cache, the
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

/// The bridge every lab host's veth is plugged into (`provider::lab::BRIDGE`).
pub const BRIDGE: &str = "kilnbr0";

/// How long the teardown check waits for the lab directory's lock (held by another
/// suite's `kiln lab up` or `down`) before it looks at a bridge with nothing attached.
const LAB_LOCK_WAIT: Duration = Duration::from_secs(900);

/// A lab environment this process brought up (`kiln lab up ENV`, `kiln rebuild ENV`): its
/// hosts as far as known, and what its latest `kiln lab down` showed (None: not taken down
/// since it was brought up).
struct BroughtUp {
    env: String,
    hosts: Vec<String>,
    down: Option<Result<String, String>>,
}

static BROUGHT_UP: Mutex<Vec<BroughtUp>> = Mutex::new(Vec::new());

/// `kiln lab up ENV` or `kiln rebuild ENV` ran (whatever its outcome): ENV has to be
/// taken down again. The hosts `kiln lab up` names (`lab `ENV` is up: web (10.233.0.21),
/// …`) are kept, in case the environment file loses one before the teardown.
fn note_up(env: &str, r: &Run) {
    let named: Vec<String> = r
        .stdout
        .lines()
        .filter_map(|l| l.strip_prefix(&format!("lab `{env}` is up: ")))
        .flat_map(|l| l.split(", "))
        .filter_map(|h| h.split(" (").next())
        .map(str::to_string)
        .collect();
    let mut all = BROUGHT_UP.lock().unwrap_or_else(|p| p.into_inner());
    match all.iter_mut().find(|b| b.env == env) {
        Some(b) => {
            b.down = None;
            for h in named {
                if !b.hosts.contains(&h) {
                    b.hosts.push(h);
                }
            }
        }
        None => all.push(BroughtUp {
            env: env.to_string(),
            hosts: named,
            down: None,
        }),
    }
}

/// Host names of `kiln lab status ENV` (`NAME ADDRESS STATE`, one line a host): kiln's
/// own reading of the environment file.
pub fn status_hosts(stdout: &str) -> Vec<String> {
    stdout
        .lines()
        .filter_map(|l| {
            let mut f = l.split_whitespace();
            let (name, addr) = (f.next()?, f.next()?);
            addr.parse::<std::net::Ipv4Addr>().ok()?;
            Some(name.to_string())
        })
        .collect()
}

/// What must be true once nothing of the teardown is left: every environment this process
/// brought up was taken down by a `kiln lab down` that exited 0, after which no piece of
/// any of its hosts remained ([`Lab::assert_torn_down`]). Ok holds one line per
/// environment, saying what was checked.
pub fn lab_teardown_verdict() -> Result<String, String> {
    let all = BROUGHT_UP.lock().unwrap_or_else(|p| p.into_inner());
    if all.is_empty() {
        return Ok("no lab environment was brought up".into());
    }
    let (mut ok, mut bad) = (vec![], vec![]);
    for b in all.iter() {
        match &b.down {
            None => bad.push(format!(
                "{}: brought up, but no `kiln lab down {}` ran after that",
                b.env, b.env
            )),
            Some(Ok(line)) => ok.push(line.clone()),
            Some(Err(e)) => bad.push(e.clone()),
        }
    }
    if bad.is_empty() {
        Ok(ok.join("\n"))
    } else {
        Err(format!("lab teardown incomplete:\n{}", bad.join("\n")))
    }
}

impl Lab {
    /// The lab directory kiln uses for this suite (`KILN_LAB_DIR`, as `state::lab_state_dir`).
    pub fn lab_dir(&self) -> PathBuf {
        self.envs
            .iter()
            .rev()
            .find(|(k, _)| k == "KILN_LAB_DIR")
            .map(|(_, v)| PathBuf::from(v))
            .or_else(|| std::env::var_os("KILN_LAB_DIR").map(PathBuf::from))
            .unwrap_or_else(|| PathBuf::from("/var/lib/kiln/lab"))
    }

    /// `kiln lab down ENV` ran: for an environment this process brought up, record whether
    /// it exited 0 and left nothing behind.
    fn note_down(&self, env: &str, r: &Run) {
        let known = {
            let all = BROUGHT_UP.lock().unwrap_or_else(|p| p.into_inner());
            all.iter().find(|b| b.env == env).map(|b| b.hosts.clone())
        };
        let Some(mut hosts) = known else {
            return;
        };
        let verdict = if r.code != 0 {
            Err(format!(
                "{env}: `kiln lab down {env}` exited {}:\n{}",
                r.code,
                r.all()
            ))
        } else {
            let status = self.kiln(&["lab", "status", env]);
            for h in status_hosts(&status.stdout) {
                if !hosts.contains(&h) {
                    hosts.push(h);
                }
            }
            if hosts.is_empty() {
                Err(format!(
                    "{env}: no host to check: `kiln lab status {env}` named none\n{}",
                    status.all()
                ))
            } else {
                torn_down_report(&self.lab_dir(), env, &hosts)
            }
        };
        let mut all = BROUGHT_UP.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(b) = all.iter_mut().find(|b| b.env == env) {
            b.down = Some(verdict);
        }
    }

    /// After `kiln lab down ENV`: nothing of the hosts `hosts` is left — no systemd-nspawn
    /// process of theirs (nor a machine `machinectl list` shows, where machinectl works), no
    /// network namespace, no veth, no cgroup directory, no host directory in the lab
    /// directory — and the bridge is gone unless a lab host of some environment (another
    /// suite's, running at the same time) is still attached to it.
    pub fn assert_torn_down(&self, env: &str, hosts: &[impl AsRef<str>]) -> Result<(), String> {
        let hosts: Vec<String> = hosts.iter().map(|h| h.as_ref().to_string()).collect();
        torn_down_report(&self.lab_dir(), env, &hosts).map(|line| println!("      {line}"))
    }
}

/// The names the lab provider gives host NAME of environment ENV, reproduced here: kiln
/// prints no namespace or veth name (`kiln lab status` gives name, address and state), so
/// this follows `Host::new` in src/provider/lab/host.rs — machine `ENV-NAME`, network
/// namespace `kiln-H` and veth `vkH` with H the first 4 bytes of sha256("ENV/NAME") in hex,
/// cgroup `kiln-lab-ENV-NAME`, host directory `LAB_DIR/hosts/ENV-NAME`.
pub struct LabNames {
    pub machine: String,
    pub netns: String,
    pub veth: String,
    pub cgroup: String,
}

pub fn lab_names(env: &str, host: &str) -> LabNames {
    use sha2::Digest as _;
    let digest = sha2::Sha256::digest(format!("{env}/{host}").as_bytes());
    let short = hex_of(&digest[..4]);
    LabNames {
        machine: format!("{env}-{host}"),
        netns: format!("kiln-{short}"),
        veth: format!("vk{short}"),
        cgroup: format!("kiln-lab-{env}-{host}"),
    }
}

/// Every piece of the lab hosts `hosts` of `env` that is still there, or Ok with one line
/// saying what was checked.
fn torn_down_report(lab_dir: &Path, env: &str, hosts: &[String]) -> Result<String, String> {
    let mut left = vec![];
    let nspawns = nspawn_processes();
    // machinectl only knows machines registered with systemd-machined (the lab runs
    // nspawn with --register=no; where PID 1 is not systemd machinectl cannot run at all).
    let machines = try_run_timed(
        {
            let mut c = Command::new("machinectl");
            c.args(["list", "--no-legend", "--no-pager"]);
            c
        },
        30,
    )
    .ok()
    .filter(|r| r.code == 0);
    for host in hosts {
        let n = lab_names(env, host);
        let machine_arg = format!("--machine={}", n.machine);
        for (pid, args) in &nspawns {
            if args.contains(&machine_arg) {
                left.push(format!(
                    "{host}: systemd-nspawn still runs (pid {pid}): {}",
                    args.join(" ")
                ));
            }
        }
        if let Some(m) = &machines {
            if m.stdout
                .lines()
                .any(|l| l.split_whitespace().next() == Some(n.machine.as_str()))
            {
                left.push(format!("{host}: machinectl lists machine {}", n.machine));
            }
        }
        let mut paths = vec![
            ("network namespace", Path::new("/run/netns").join(&n.netns)),
            ("veth", Path::new("/sys/class/net").join(&n.veth)),
            ("host directory", lab_dir.join("hosts").join(&n.machine)),
        ];
        for root in [
            "/sys/fs/cgroup/systemd",
            "/sys/fs/cgroup/unified",
            "/sys/fs/cgroup",
        ] {
            paths.push(("cgroup directory", Path::new(root).join(&n.cgroup)));
        }
        for (what, p) in paths {
            if p.exists() {
                left.push(format!("{host}: {what} {} is left", p.display()));
            }
        }
    }
    let bridge = bridge_state(lab_dir);
    if let Err(e) = &bridge {
        left.push(e.clone());
    }
    if !left.is_empty() {
        return Err(format!(
            "{env}: `kiln lab down {env}` exited 0 but left:\n  {}",
            left.join("\n  ")
        ));
    }
    Ok(format!(
        "{env} torn down ({}): `kiln lab down` exited 0; no nspawn process{}, netns, veth, \
         cgroup or host directory left; {}",
        hosts.join(", "),
        if machines.is_some() {
            " or machine"
        } else {
            ""
        },
        bridge.unwrap_or_default()
    ))
}

/// Every running systemd-nspawn: pid and arguments.
fn nspawn_processes() -> Vec<(u32, Vec<String>)> {
    let mut out = vec![];
    for e in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(raw) = std::fs::read(e.path().join("cmdline")) else {
            continue;
        };
        let args: Vec<String> = raw
            .split(|b| *b == 0)
            .filter(|a| !a.is_empty())
            .map(|a| String::from_utf8_lossy(a).to_string())
            .collect();
        if args.first().is_some_and(|a| a.ends_with("systemd-nspawn")) {
            out.push((pid, args));
        }
    }
    out
}

/// The bridge after a `kiln lab down`, judged by [`bridge_verdict`]. A bridge with nothing
/// attached is looked at again holding the lab directory's lock: another suite's `kiln lab
/// up` makes the bridge a moment before it plugs its first host in, and holds the lock
/// while doing so.
fn bridge_state(lab_dir: &Path) -> Result<String, String> {
    let look = || -> Result<(bool, String), String> {
        if !Path::new("/sys/class/net").join(BRIDGE).exists() {
            return Ok((false, String::new()));
        }
        let r = local_timeout("ip", &["-o", "link", "show", "master", BRIDGE], 30);
        // It may have gone between the two looks.
        if r.code != 0 && !Path::new("/sys/class/net").join(BRIDGE).exists() {
            return Ok((false, String::new()));
        }
        if r.code != 0 {
            return Err(format!(
                "ip -o link show master {BRIDGE} failed:\n{}",
                r.all()
            ));
        }
        Ok((true, r.stdout))
    };
    let (exists, attached) = look()?;
    if bridge_verdict(exists, &attached).is_ok() {
        return bridge_verdict(exists, &attached);
    }
    let _lock = lock_lab_dir(lab_dir)?;
    let (exists, attached) = look()?;
    bridge_verdict(exists, &attached)
}

/// Takes `LAB_DIR/lab.lock` as `kiln lab up` and `down` do (flock, exclusive), waiting up
/// to [`LAB_LOCK_WAIT`]; released when the file is dropped. No lock file: no lab command
/// ever ran there, nothing to wait for.
fn lock_lab_dir(lab_dir: &Path) -> Result<Option<std::fs::File>, String> {
    use std::os::fd::AsRawFd;
    let path = lab_dir.join("lab.lock");
    let Ok(f) = std::fs::File::open(&path) else {
        return Ok(None);
    };
    let until = Instant::now() + LAB_LOCK_WAIT;
    loop {
        // SAFETY: flock on a descriptor this function owns.
        if unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } == 0 {
            return Ok(Some(f));
        }
        if Instant::now() > until {
            return Err(format!(
                "{} stayed locked for {} s: cannot check the bridge",
                path.display(),
                LAB_LOCK_WAIT.as_secs()
            ));
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// The bridge may stay only while an interface is attached to it (a lab host of another
/// environment, say another suite's running at the same time); with nothing attached the
/// last `kiln lab down` must have removed it. `attached` is the output of `ip -o link show
/// master BRIDGE` (one line an interface).
pub fn bridge_verdict(exists: bool, attached: &str) -> Result<String, String> {
    if !exists {
        return Ok(format!("bridge {BRIDGE} gone"));
    }
    let names: Vec<&str> = attached
        .lines()
        .filter_map(|l| l.split(": ").nth(1))
        .map(|n| n.split('@').next().unwrap_or(n))
        .collect();
    if names.is_empty() {
        Err(format!(
            "bridge {BRIDGE} is left with no interface attached: the `kiln lab down` of the \
             last lab host must remove it"
        ))
    } else {
        Ok(format!(
            "bridge {BRIDGE} kept: {} interface(s) of other lab hosts still attached ({})",
            names.len(),
            names.join(", ")
        ))
    }
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
/// always runs), `teardown` always runs unless `KILN_E2E_KEEP` is set — and passes only if,
/// besides its own checks, every lab environment the suite brought up was taken down by a
/// `kiln lab down` that exited 0 and left nothing ([`lab_teardown_verdict`]) —, times per
/// scenario and in total, and the exit code is 1 on any failure — a scenario not run after a failure
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
        // The suite's own teardown, then, whatever it checked: every lab environment the
        // suite brought up was taken down (exit 0) and nothing of its hosts is left.
        let own = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| teardown(&ctx)))
            .unwrap_or_else(|_| Err("the teardown panicked".into()));
        let left = lab_teardown_verdict();
        match (own, left) {
            (Ok(()), Ok(checked)) => {
                for line in checked.lines() {
                    println!("      {line}");
                }
                println!("test teardown ... ok ({:.1} s)", t.elapsed().as_secs_f64());
                passed += 1;
            }
            (own, left) => {
                let errors: Vec<String> = [own.err(), left.err()].into_iter().flatten().collect();
                println!("test teardown ... FAILED\n{}", errors.join("\n"));
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
