//! Small helpers: commands, signals, files, parallel work.

use std::cmp::Reverse;
use std::fs;
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

/// Copying root filesystems is disk-bound; more than this many at once only thrashes.
const MAX_PARALLEL: usize = 4;

/// Runs a command to completion; on failure the error names the command and
/// carries its stderr. Returns stdout.
pub(super) fn run(cmd: &mut Command) -> Result<String> {
    let desc = describe(cmd);
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("cannot run `{desc}`"))?;
    if !out.status.success() {
        let stderr = String::from_utf8_lossy(&out.stderr);
        let stdout = String::from_utf8_lossy(&out.stdout);
        let detail = if stderr.trim().is_empty() {
            stdout
        } else {
            stderr
        };
        bail!("`{desc}` failed ({}): {}", out.status, detail.trim());
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

pub(super) fn describe(cmd: &Command) -> String {
    let mut s = cmd.get_program().to_string_lossy().into_owned();
    for a in cmd.get_args() {
        s.push(' ');
        s.push_str(&a.to_string_lossy());
    }
    s
}

/// Sends a signal with kill(1); std has no way to signal a process that is not our
/// child. Failure means the process is already gone, which is what we wanted.
pub(super) fn signal(pid: u32, sig: &str) {
    let _ = Command::new("kill")
        .args(["-s", sig, &pid.to_string()])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
}

/// The command line of a live process; None if it is gone or a zombie (whose
/// cmdline is empty).
pub(super) fn process_args(pid: u32) -> Option<Vec<String>> {
    let raw = fs::read(format!("/proc/{pid}/cmdline")).ok()?;
    if raw.is_empty() {
        return None;
    }
    Some(
        raw.split(|b| *b == 0)
            .filter(|a| !a.is_empty())
            .map(|a| String::from_utf8_lossy(a).into_owned())
            .collect(),
    )
}

pub(super) fn wait_until(limit: Duration, mut done: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if done() {
            return true;
        }
        thread::sleep(Duration::from_millis(100));
    }
    done()
}

/// The cgroup hierarchies to put each container in: the named v1 "systemd" one and
/// cgroup2 at "unified" on a hybrid machine, or the root on a pure cgroup2 machine.
pub(super) fn cgroup_roots() -> Vec<PathBuf> {
    let base = Path::new("/sys/fs/cgroup");
    let roots: Vec<PathBuf> = ["systemd", "unified"]
        .iter()
        .map(|h| base.join(h))
        .filter(|p| p.join("cgroup.procs").exists())
        .collect();
    if roots.is_empty() && base.join("cgroup.procs").exists() {
        return vec![base.to_path_buf()];
    }
    roots
}

/// Writes a file, replacing a symlink at the path rather than writing through it: in
/// a container's root filesystem an absolute symlink points into this machine.
pub(super) fn write_file(path: &Path, content: &[u8], mode: u32) -> Result<()> {
    if let Ok(meta) = fs::symlink_metadata(path) {
        if meta.file_type().is_symlink() {
            fs::remove_file(path)
                .with_context(|| format!("cannot remove symlink {}", path.display()))?;
        }
    }
    if let Some(dir) = path.parent() {
        fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    }
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .open(path)
        .with_context(|| format!("cannot write {}", path.display()))?;
    f.write_all(content)
        .with_context(|| format!("cannot write {}", path.display()))?;
    set_mode(path, mode)
}

pub(super) fn set_mode(path: &Path, mode: u32) -> Result<()> {
    fs::set_permissions(path, fs::Permissions::from_mode(mode))
        .with_context(|| format!("cannot chmod {:o} {}", mode, path.display()))
}

/// A file's text, or "" if it does not exist; any other error is an error, so that a
/// file we could not read is never silently replaced.
pub(super) fn read_optional(path: &Path) -> Result<String> {
    match fs::read_to_string(path) {
        Ok(text) => Ok(text),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(String::new()),
        Err(e) => Err(e).with_context(|| format!("cannot read {}", path.display())),
    }
}

pub(super) fn remove_file_if_exists(path: &Path) -> Result<()> {
    match fs::remove_file(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            Err(e).with_context(|| format!("cannot remove {}", path.display()))
        }
        _ => Ok(()),
    }
}

/// Removes a directory tree that may hold mounts (a killed debootstrap leaves /proc
/// and /sys mounted inside its target). Mounts are detached first and rm stays on
/// one file system, so nothing outside the tree can ever be deleted through them.
pub(super) fn remove_tree(path: &Path) -> Result<()> {
    if fs::symlink_metadata(path).is_err() {
        return Ok(());
    }
    let info =
        fs::read_to_string("/proc/self/mountinfo").context("cannot read /proc/self/mountinfo")?;
    let mut points: Vec<PathBuf> = info
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .map(|p| PathBuf::from(unescape_mount_path(p)))
        .filter(|p| p.starts_with(path))
        .collect();
    points.sort_by_key(|p| Reverse(p.components().count()));
    for p in points {
        run(Command::new("umount").arg("-l").arg(&p))?;
    }
    run(Command::new("rm")
        .arg("-rf")
        .arg("--one-file-system")
        .arg(path))?;
    Ok(())
}

/// mountinfo escapes space, tab, newline and backslash as \ooo.
pub(super) fn unescape_mount_path(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && i + 4 <= b.len()
            && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c))
        {
            out.push((b[i + 1] - b'0') * 64 + (b[i + 2] - b'0') * 8 + (b[i + 3] - b'0'));
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The last `lines` lines of a (log) file, reading at most its last 64 KiB, without
/// the colours and carriage returns of a container console so that it reads well
/// inside an error message.
pub(super) fn tail(path: &Path, lines: usize) -> String {
    let read = || -> std::io::Result<String> {
        let mut f = fs::File::open(path)?;
        let len = f.metadata()?.len();
        f.seek(SeekFrom::Start(len.saturating_sub(64 * 1024)))?;
        let mut buf = Vec::new();
        f.read_to_end(&mut buf)?;
        Ok(String::from_utf8_lossy(&buf).into_owned())
    };
    match read() {
        Ok(text) => {
            let text = strip_terminal_codes(&text);
            let all: Vec<&str> = text.lines().collect();
            all[all.len().saturating_sub(lines)..].join("\n")
        }
        Err(e) => format!("(cannot read {}: {e})", path.display()),
    }
}

/// Removes CSI escape sequences (ESC [ ... final byte) and carriage returns.
pub(super) fn strip_terminal_codes(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\u{1b}' if chars.peek() == Some(&'[') => {
                chars.next();
                // Parameters and intermediates run up to a final byte in @..~.
                for c in chars.by_ref() {
                    if ('@'..='~').contains(&c) {
                        break;
                    }
                }
            }
            '\r' => {}
            c => out.push(c),
        }
    }
    out
}

pub(super) fn random_hex(bytes: usize) -> Result<String> {
    let mut buf = vec![0u8; bytes];
    fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut buf))
        .context("cannot read /dev/urandom")?;
    Ok(hex::encode(buf))
}

/// Runs `work` for every item on up to MAX_PARALLEL threads. Threads cannot share
/// the caller's `log` (it is neither Send nor Sync), so they send their lines here
/// and this thread hands them to `log` as they come. Results keep the items' order.
pub(super) fn in_parallel<T: Sync, R: Send>(
    items: &[T],
    log: &mut dyn FnMut(&str),
    work: impl Fn(&T, &dyn Fn(String)) -> R + Sync,
) -> Vec<R> {
    let next = AtomicUsize::new(0);
    let workers = items.len().clamp(1, MAX_PARALLEL);
    let (tx, rx) = mpsc::channel::<String>();
    let mut results: Vec<Option<R>> = (0..items.len()).map(|_| None).collect();
    thread::scope(|s| {
        let handles: Vec<_> = (0..workers)
            .map(|_| {
                let tx = tx.clone();
                let (next, work) = (&next, &work);
                s.spawn(move || {
                    let say = |m: String| {
                        let _ = tx.send(m);
                    };
                    let mut done = Vec::new();
                    loop {
                        let i = next.fetch_add(1, Ordering::SeqCst);
                        if i >= items.len() {
                            break done;
                        }
                        done.push((i, work(&items[i], &say)));
                    }
                })
            })
            .collect();
        drop(tx);
        for line in rx {
            log(&line);
        }
        for h in handles {
            match h.join() {
                Ok(done) => {
                    for (i, r) in done {
                        results[i] = Some(r);
                    }
                }
                Err(panic) => std::panic::resume_unwind(panic),
            }
        }
    });
    // Every index below items.len() was taken by exactly one worker.
    results.into_iter().flatten().collect()
}

pub(super) fn collect_errors(results: Vec<Result<()>>) -> Result<()> {
    combine(results.into_iter().filter_map(|r| r.err()).collect())
}

/// One error stays as it is; several become one listing them all, so a failure on
/// one host does not hide another's.
pub(super) fn combine(mut errors: Vec<anyhow::Error>) -> Result<()> {
    match errors.len() {
        0 => Ok(()),
        1 => Err(errors.remove(0)),
        n => {
            let all: Vec<String> = errors.iter().map(|e| format!("{e:#}")).collect();
            bail!("{n} lab hosts failed:\n- {}", all.join("\n- "))
        }
    }
}

/// Starts one of the lab's servers (the apt cache, the artifact server): `cmd` begins with
/// `setsid`, so it runs in a session of its own that no caller's process group ends, and
/// the lab knows it by the pid written to `pid_path`. Its output goes to `log_path` (new at
/// every start). Returns once `ready` holds; fails at once if it exits, or after 15 s,
/// with the end of its log. `what` names it in messages.
pub(super) fn spawn_server(
    what: &str,
    mut cmd: Command,
    log_path: &Path,
    pid_path: &Path,
    ready: impl Fn() -> bool,
) -> Result<()> {
    let out = fs::File::create(log_path)
        .with_context(|| format!("cannot create {}", log_path.display()))?;
    let err = out
        .try_clone()
        .with_context(|| format!("cannot duplicate the {what} log handle"))?;
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        .current_dir("/")
        .spawn()
        .with_context(|| format!("cannot start the {what}: {}", describe(&cmd)))?;
    write_file(pid_path, format!("{}\n", child.id()).as_bytes(), 0o644)?;
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        if ready() {
            return Ok(());
        }
        if let Some(status) = child
            .try_wait()
            .with_context(|| format!("cannot wait for the {what}"))?
        {
            bail!(
                "the {what} exited at once ({status}); end of {}:\n{}",
                log_path.display(),
                tail(log_path, 20)
            );
        }
        if Instant::now() > deadline {
            bail!(
                "the {what} did not listen within 15 s; end of {}:\n{}",
                log_path.display(),
                tail(log_path, 20)
            );
        }
        thread::sleep(Duration::from_millis(100));
    }
}
