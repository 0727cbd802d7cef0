//! Fault injection on the converged lab: each scenario breaks a run for real (kiln killed,
//! a second kiln holding the lock, a host's link cut, a full disk, apt's lock held, a
//! configuration check failing), then proves that nothing was lost and that a re-run
//! converges. Included by tests/lab_e2e.rs.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::common::{expect, Lab, Run};
use super::ENV;

/// A test overlay of the scratch repository: `modules/` becomes a directory holding copies of
/// the shipped `base` and `web-hello` plus the given extra modules, and the environment file
/// is edited. Dropping it puts both back.
pub struct Overlay<'a> {
    lab: &'a Lab,
    env_file: PathBuf,
    original: String,
}

impl<'a> Overlay<'a> {
    pub fn new(
        lab: &'a Lab,
        extra: &[(&str, &str)],
        edit: impl Fn(&str) -> String,
    ) -> Result<Overlay<'a>, String> {
        let env_file = lab.path(&format!("environments/{ENV}.toml"));
        let original = std::fs::read_to_string(&env_file).map_err(|e| e.to_string())?;
        let o = Overlay {
            lab,
            env_file,
            original,
        };
        let modules = lab.path("modules");
        std::fs::remove_file(&modules).map_err(|e| e.to_string())?;
        std::fs::create_dir_all(&modules).map_err(|e| e.to_string())?;
        let repo = Path::new(env!("CARGO_MANIFEST_DIR"));
        for m in ["base.toml", "web-hello.toml"] {
            std::fs::copy(repo.join("modules").join(m), modules.join(m))
                .map_err(|e| e.to_string())?;
        }
        for (name, text) in extra {
            std::fs::write(modules.join(format!("{name}.toml")), text)
                .map_err(|e| e.to_string())?;
        }
        std::fs::write(&o.env_file, edit(&o.original)).map_err(|e| e.to_string())?;
        Ok(o)
    }
}

impl Drop for Overlay<'_> {
    fn drop(&mut self) {
        let _ = std::fs::write(&self.env_file, &self.original);
        let modules = self.lab.path("modules");
        let _ = std::fs::remove_dir_all(&modules).or_else(|_| std::fs::remove_file(&modules));
        let repo = Path::new(env!("CARGO_MANIFEST_DIR"));
        let _ = std::os::unix::fs::symlink(repo.join("modules"), &modules);
    }
}

/// Adds a module to a role's list in the environment text.
pub fn with_module(env: &str, role_modules: &str, module: &str) -> String {
    let new = role_modules.replace(']', &format!(", \"{module}\"]"));
    assert!(env.contains(role_modules), "{role_modules} not in the env");
    env.replace(role_modules, &new)
}

const WEB_MODULES: &str = "modules = [\"base\", \"web-hello\"]";
const DB_MODULES: &str = "modules = [\"base\"]";

/// A command that sleeps `secs` (after `after`, when given), until it has run once. After
/// nginx's site file it sits between that write and the reload the file notifies, which runs
/// at the end of the host's run.
fn pause_module(secs: u32, after: Option<&str>) -> String {
    let after = after
        .map(|a| format!("after = [\"{a}\"]\n"))
        .unwrap_or_default();
    format!(
        r#"[[resource]]
type = "command"
name = "fault-pause"
run = "sleep {secs} && touch /var/tmp/kiln-fault-paused"
creates = "/var/tmp/kiln-fault-paused"
{after}"#
    )
}

fn pause_after_site(secs: u32) -> String {
    pause_module(secs, Some("file:/etc/nginx/sites-available/kiln"))
}

fn pause(secs: u32) -> String {
    pause_module(secs, None)
}

/// A kiln run in the background, its output recorded with the suite's others when it ends.
fn spawn(lab: &Lab, args: &[&str]) -> Result<Child, String> {
    let mut c = Command::new(&lab.bin);
    c.current_dir(lab.path(""))
        .env("NO_COLOR", "1")
        .env("KILN_ROOT", lab.path(""))
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (k, v) in &lab.envs {
        c.env(k, v);
    }
    c.spawn()
        .map_err(|e| format!("spawning kiln {args:?}: {e}"))
}

/// Waits (bounded) for a background kiln and returns its result.
fn finish(lab: &Lab, mut child: Child, limit: Duration) -> Result<Run, String> {
    let t = Instant::now();
    loop {
        match child.try_wait().map_err(|e| e.to_string())? {
            Some(_) => break,
            None if t.elapsed() > limit => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!(
                    "a background kiln run did not end within {} s",
                    limit.as_secs()
                ));
            }
            None => std::thread::sleep(Duration::from_millis(200)),
        }
    }
    let out = child.wait_with_output().map_err(|e| e.to_string())?;
    let r = Run {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into(),
        stderr: String::from_utf8_lossy(&out.stderr).into(),
    };
    lab.outputs.lock().expect("lock").push(r.all());
    Ok(r)
}

/// Waits until the step's own `sleep SECS` process runs on the host.
fn wait_for_sleep(lab: &Lab, host: &str, secs: u32, child: &mut Child) -> Result<(), String> {
    let t = Instant::now();
    while t.elapsed() < Duration::from_secs(90) {
        // `-x`: the step's own process, not this probe (whose command line holds the text).
        let r = lab.sh(
            host,
            &format!("pgrep -x -f 'sleep {secs}' >/dev/null && echo running"),
        );
        if r.stdout.contains("running") {
            return Ok(());
        }
        if let Ok(Some(status)) = child.try_wait() {
            return Err(format!(
                "kiln ended ({status}) before the pause ran on {host}"
            ));
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    Err(format!("the pause never started on {host}"))
}

/// Waits until nothing holds the host's kiln lock (an orphaned run has ended).
fn wait_unlocked(lab: &Lab, host: &str) -> Result<(), String> {
    let r = lab.sh(host, "flock -w 60 /var/lib/kiln/lock true && echo free");
    expect(
        r.stdout.contains("free"),
        &format!("{host}'s lock is free again"),
        &r,
    )
}

fn host_now(lab: &Lab, host: &str) -> Result<u64, String> {
    let r = lab.sh(host, "date +%s");
    r.stdout
        .trim()
        .parse()
        .map_err(|_| format!("date on {host}: {}", r.all()))
}

/// How many times systemd reloaded nginx on web since `since` (epoch seconds), from the
/// journal; an unreadable journal is an error, never zero.
fn nginx_reloads_since(lab: &Lab, since: u64) -> Result<usize, String> {
    let r = lab.sh(
        "web",
        &format!(
            "j=$(journalctl -u nginx.service --since @{since} -o cat --no-pager) || exit 9; \
             printf '%s\\n' \"$j\" | grep -c '^Reloaded nginx'; exit 0"
        ),
    );
    if r.code != 0 {
        return Err(format!("reading nginx's journal on web:\n{}", r.all()));
    }
    r.stdout
        .trim()
        .parse()
        .map_err(|_| format!("reload count: {}", r.all()))
}

fn pending(lab: &Lab, host: &str) -> Result<String, String> {
    let r = lab.sh(host, "ls -1 /var/lib/kiln/pending");
    if r.code != 0 {
        return Err(format!("listing the handler journal:\n{}", r.all()));
    }
    Ok(r.stdout.trim().to_string())
}

fn converged(lab: &Lab, what: &str) -> Result<(), String> {
    let r = lab.kiln(&["plan", ENV, "--detailed-exitcode"]);
    expect(r.code == 0, &format!("{what}: the plan is empty"), &r)
}

fn server_name(env: &str, name: &str) -> String {
    env.replace(
        "[modules.web-hello]\n",
        &format!("[modules.web-hello]\nserver_name = \"{name}\"\n"),
    )
}

/// kill -9 of kiln after nginx's site file was written and before the reload it notifies:
/// the journalled reload is owed, the next run performs it exactly once.
pub fn killed_between_write_and_reload(lab: &Lab) -> Result<(), String> {
    let since = host_now(lab, "web")?;
    let site = "/etc/nginx/sites-available/kiln";
    let result = (|| {
        let _o = Overlay::new(lab, &[("fault-pause", &pause_after_site(7))], |e| {
            server_name(&with_module(e, WEB_MODULES, "fault-pause"), "killed.test")
        })?;
        let mut child = spawn(lab, &["apply", ENV, "--yes", "--limit", "web"])?;
        wait_for_sleep(lab, "web", 7, &mut child)?;
        child.kill().map_err(|e| e.to_string())?; // SIGKILL
        let _ = child.wait();
        // The orphan ends at its next step boundary, when its progress line meets the
        // closed connection; the reload after it never runs.
        wait_unlocked(lab, "web")?;
        let written = lab.sh("web", &format!("grep -c 'server_name killed.test' {site}"));
        expect(
            written.stdout.trim() == "1",
            "the site file was written before the kill",
            &written,
        )?;
        let owed = pending(lab, "web")?;
        let n = nginx_reloads_since(lab, since)?;
        if !owed.contains("reload@nginx.service") || n != 0 {
            return Err(format!(
                "after the kill: journal {owed:?}, {n} reloads (want the reload owed, none done)"
            ));
        }
        let r = lab.kiln(&["plan", ENV, "--detailed-exitcode", "--limit", "web"]);
        expect(
            r.code == 2
                && r.stdout.contains("handler:reload@nginx.service")
                && r.stdout.contains("owed by an earlier run"),
            "the plan shows the owed reload",
            &r,
        )?;
        let r = lab.kiln(&["apply", ENV, "--yes", "--limit", "web"]);
        expect(r.code == 0, "the re-run applies", &r)?;
        let n = nginx_reloads_since(lab, since)?;
        let owed = pending(lab, "web")?;
        if n != 1 || !owed.is_empty() {
            return Err(format!(
                "after the re-run: {n} reloads (want exactly 1), journal {owed:?} (want empty)"
            ));
        }
        let live = lab.sh(
            "web",
            "nginx -T 2>/dev/null | grep -c 'server_name killed.test'",
        );
        expect(
            live.stdout.trim() != "0",
            "nginx has the new configuration",
            &live,
        )?;
        converged(lab, "after the owed reload")
    })();
    // Back to the suite's configuration (one more reload).
    let _ = lab.sh("web", "rm -f /var/tmp/kiln-fault-paused");
    let r = lab.kiln(&["apply", ENV, "--yes"]);
    result?;
    expect(r.code == 0, "back to the suite's configuration", &r)
}

/// Two real applies at once: the second names the first (its pid) and gives up on the
/// locked host after --lock-timeout while the other host is applied; a third waits and
/// applies once the first is done.
pub fn two_applies_at_once(lab: &Lab) -> Result<(), String> {
    let result = (|| {
        let _o = Overlay::new(lab, &[("fault-pause", &pause(8))], |e| {
            with_module(e, WEB_MODULES, "fault-pause")
        })?;
        lab.sh("db1", "echo 'two applies' >> /etc/motd");
        let mut first = spawn(lab, &["apply", ENV, "--yes", "--limit", "web"])?;
        let first_pid = first.id();
        wait_for_sleep(lab, "web", 8, &mut first)?;
        let second = lab.kiln(&["apply", ENV, "--yes", "--lock-timeout", "1"]);
        let holder = format!("pid {first_pid} ");
        expect(
            second.code == 1
                && second
                    .stdout
                    .contains("another run held this host's lock for all of --lock-timeout 1 s")
                && second.stdout.contains(&holder)
                && second
                    .stderr
                    .contains("web: waiting up to 1 s for the lock held by kiln by")
                && second.stderr.contains(&holder),
            &format!("the second apply gives up on web naming the first ({holder})"),
            &second,
        )?;
        let db = lab.sh("db1", "grep -c '^two applies$' /etc/motd");
        expect(
            db.stdout.trim() == "0",
            "db1 applied by the second run",
            &db,
        )?;
        let third = lab.kiln(&["apply", ENV, "--yes", "--lock-timeout", "120"]);
        expect(
            third.code == 0
                && third
                    .stderr
                    .contains("web: waiting up to 120 s for the lock held by kiln by")
                && third.stderr.contains(&holder),
            "the third apply waits for the first, then applies",
            &third,
        )?;
        let first = finish(lab, first, Duration::from_secs(120))?;
        expect(first.code == 0, "the first apply finishes", &first)?;
        converged(lab, "after three applies")
    })();
    let _ = lab.sh("web", "rm -f /var/tmp/kiln-fault-paused");
    result
}

/// The lab veth of a host (the provider names it after sha256 of "env/name").
fn veth(env: &str, host: &str) -> Result<String, String> {
    let r = super::common::local(
        "sh",
        &[
            "-c",
            &format!("printf %s '{env}/{host}' | sha256sum | cut -c1-8"),
        ],
    );
    let short = r.stdout.trim();
    if r.code != 0 || short.len() != 8 {
        return Err(format!("hashing the host name: {}", r.all()));
    }
    Ok(format!("vk{short}"))
}

/// db1's link goes down while its run sleeps: web's run finishes, db1 alone is reported,
/// and once the link is back a re-run converges.
pub fn unreachable_host_mid_run_fails_alone(lab: &Lab) -> Result<(), String> {
    let link = veth(ENV, "db1")?;
    let result = (|| {
        let _o = Overlay::new(lab, &[("fault-pause", &pause(15))], |e| {
            with_module(e, DB_MODULES, "fault-pause")
        })?;
        lab.sh("web", "echo 'cut link' >> /etc/motd");
        let mut run = spawn(lab, &["apply", ENV, "--yes"])?;
        wait_for_sleep(lab, "db1", 15, &mut run)?;
        let down = super::common::local("ip", &["link", "set", &link, "down"]);
        expect(down.code == 0, &format!("ip link set {link} down"), &down)?;
        let cut = Instant::now();
        let r = finish(lab, run, Duration::from_secs(180))?;
        println!(
            "      db1 unreachable: the run ended {:.1} s after the cut",
            cut.elapsed().as_secs_f64()
        );
        let up = super::common::local("ip", &["link", "set", &link, "up"]);
        expect(up.code == 0, &format!("ip link set {link} up"), &up)?;
        expect(r.code == 1, "the apply fails", &r)?;
        // The apply's summary: one line per host, `  NAME  ok|FAILED  …`.
        let status = |host: &str| {
            r.stdout
                .lines()
                .find_map(|l| {
                    let mut w = l.split_whitespace();
                    (l.starts_with("  ") && w.next() == Some(host)).then(|| w.next())
                })
                .flatten()
                .map(str::to_string)
        };
        expect(
            status("db1").as_deref() == Some("FAILED") && status("web").as_deref() == Some("ok"),
            "db1 is reported failed, web ok",
            &r,
        )?;
        let motd = lab.sh("web", "grep -c '^cut link$' /etc/motd");
        expect(motd.stdout.trim() == "0", "web was applied", &motd)?;
        // The link is back: the orphan on db1 ends (its pause done, or at its next marker),
        // and the re-run converges.
        let t = Instant::now();
        let mut last = None;
        while t.elapsed() < Duration::from_secs(60) {
            let r = lab.kiln(&["apply", ENV, "--yes", "--lock-timeout", "60"]);
            if r.code == 0 {
                last = None;
                break;
            }
            last = Some(r);
            std::thread::sleep(Duration::from_secs(2));
        }
        if let Some(r) = last {
            return Err(format!("no re-run converged:\n{}", r.all()));
        }
        let done = lab.sh("db1", "test -e /var/tmp/kiln-fault-paused && echo done");
        expect(done.stdout.contains("done"), "db1's step ran", &done)?;
        converged(lab, "after the link came back")
    })();
    let _ = super::common::local("ip", &["link", "set", &link, "up"]);
    let _ = lab.sh("db1", "rm -f /var/tmp/kiln-fault-paused");
    result
}

/// The file system of the page is full during its write: the old page stays whole, no temp
/// file is left, the run fails naming the file; with room again a re-run converges.
pub fn full_disk_keeps_the_old_file(lab: &Lab) -> Result<(), String> {
    let page = "/var/www/kiln/index.html";
    let mount = lab.sh(
        "web",
        "set -e; rm -rf /run/kiln-fault-www; cp -a /var/www/kiln /run/kiln-fault-www; \
         mount -t tmpfs -o size=64k tmpfs /var/www/kiln; cp -a /run/kiln-fault-www/. /var/www/kiln/; \
         dd if=/dev/zero of=/var/www/kiln/filler bs=4k 2>/dev/null || true; \
         sha256sum /var/www/kiln/index.html",
    );
    if mount.code != 0 {
        let _ = lab.sh("web", "umount /var/www/kiln");
        return Err(format!("a full file system for the page:\n{}", mount.all()));
    }
    let before = mount.stdout.trim().to_string();
    let result = (|| {
        // The new page (the title twice) is larger than the old page plus a block: written
        // in place, the old page would be cut short, not replaced.
        let long_title = format!("kiln lab, disk full {}", "x".repeat(6000));
        let _o = Overlay::new(lab, &[], |e| {
            e.replace("title = \"kiln lab\"", &format!("title = \"{long_title}\""))
        })?;
        let r = lab.kiln(&["apply", ENV, "--yes", "--limit", "web"]);
        expect(
            r.code == 1 && r.all().contains(page),
            "the apply fails naming the page",
            &r,
        )?;
        let after = lab.sh(
            "web",
            &format!("sha256sum {page}; ls -A /var/www/kiln | grep -c '^\\.kiln' ; true"),
        );
        let mut lines = after.stdout.lines();
        let same = lines.next().map(str::trim) == Some(before.as_str());
        let temps = lines.next().map(str::trim);
        expect(
            same && temps == Some("0"),
            "the old page is intact and no temp file is left",
            &after,
        )?;
        lab.sh("web", "rm -f /var/www/kiln/filler");
        let r = lab.kiln(&["apply", ENV, "--yes", "--limit", "web"]);
        expect(r.code == 0, "with room again the re-run applies", &r)?;
        let page_now = lab.sh("web", &format!("grep -c 'disk full' {page}"));
        expect(page_now.stdout.trim() != "0", "the new page", &page_now)?;
        let r = lab.kiln(&["plan", ENV, "--detailed-exitcode", "--limit", "web"]);
        expect(r.code == 0, "converged", &r)
    })();
    let um = lab.sh("web", "umount /var/www/kiln && rm -rf /run/kiln-fault-www");
    let r = lab.kiln(&["apply", ENV, "--yes"]);
    result?;
    expect(um.code == 0, "umount", &um)?;
    expect(r.code == 0, "back to the suite's page", &r)
}

/// Another process holds dpkg's lock while a package is to be installed: apt waits for it
/// (bounded) instead of failing, and the package is installed once the lock is free.
pub fn apt_lock_held_by_another_process(lab: &Lab) -> Result<(), String> {
    let pkg = "tree";
    let hold = 12;
    let module = format!("[[resource]]\ntype = \"package\"\nname = \"{pkg}\"\n");
    let result = (|| {
        let _o = Overlay::new(lab, &[("fault-package", &module)], |e| {
            with_module(e, WEB_MODULES, "fault-package")
        })?;
        let r = lab.kiln(&["plan", ENV, "--detailed-exitcode", "--limit", "web"]);
        expect(
            r.code == 2 && r.stdout.contains(&format!("package:{pkg}")),
            "the package is to be installed",
            &r,
        )?;
        // dpkg's frontend lock is an fcntl lock (as apt and unattended-upgrades take it).
        let held = lab.sh(
            "web",
            &format!(
                "rm -f /run/kiln-fault-locked; \
                 nohup python3 -c 'import fcntl,time; f=open(\"/var/lib/dpkg/lock-frontend\",\"w\"); \
                 fcntl.lockf(f, fcntl.LOCK_EX); open(\"/run/kiln-fault-locked\",\"w\").close(); \
                 time.sleep({hold})' >/dev/null 2>&1 & \
                 for i in $(seq 50); do [ -e /run/kiln-fault-locked ] && exit 0; sleep 0.1; done; exit 1"
            ),
        );
        expect(held.code == 0, "another process holds dpkg's lock", &held)?;
        let started = Instant::now();
        let r = lab.kiln(&["apply", ENV, "--yes", "--limit", "web"]);
        let took = started.elapsed().as_secs_f64();
        expect(
            r.code == 0,
            "the apply waits for dpkg's lock and installs",
            &r,
        )?;
        println!("      apply with dpkg's lock held {hold} s: {took:.1} s");
        let inst = lab.sh("web", &format!("dpkg-query -W -f '${{Status}}' {pkg}"));
        expect(
            inst.stdout.contains("install ok installed"),
            "the package is installed",
            &inst,
        )?;
        if took < (hold as f64) - 3.0 {
            return Err(format!(
                "the apply took {took:.1} s: it did not meet the lock held for {hold} s"
            ));
        }
        let r = lab.kiln(&["plan", ENV, "--detailed-exitcode", "--limit", "web"]);
        expect(r.code == 0, "converged", &r)
    })();
    let _ = lab.sh("web", "rm -f /run/kiln-fault-locked");
    result
}

/// A configuration nginx refuses (a hand-made file) when a site change notifies it: the
/// reload is not done and stays owed, nginx keeps serving; fixed, the re-run reloads once.
pub fn failing_config_check_keeps_the_reload_owed(lab: &Lab) -> Result<(), String> {
    let since = host_now(lab, "web")?;
    let broken = "/etc/nginx/conf.d/zz-kiln-fault.conf";
    let result = (|| {
        let _o = Overlay::new(lab, &[], |e| server_name(e, "check.test"))?;
        let w = lab.sh("web", &format!("echo 'this is not nginx;' > {broken}"));
        expect(w.code == 0, "a broken configuration by hand", &w)?;
        let r = lab.kiln(&["apply", ENV, "--yes", "--limit", "web"]);
        expect(
            r.code == 1 && r.all().contains("configuration check failed: nginx -t -q"),
            "the apply stops at nginx's check",
            &r,
        )?;
        let owed = pending(lab, "web")?;
        let n = nginx_reloads_since(lab, since)?;
        let serving = lab.sh("web", "curl -fsS http://127.0.0.1/ | grep -c kiln");
        if !owed.contains("reload@nginx.service") || n != 0 || serving.code != 0 {
            return Err(format!(
                "after the failed check: journal {owed:?}, {n} reloads, serving: {}",
                serving.all()
            ));
        }
        lab.sh("web", &format!("rm -f {broken}"));
        let r = lab.kiln(&["apply", ENV, "--yes", "--limit", "web"]);
        expect(
            r.code == 0 && r.stdout.contains("handler:reload@nginx.service"),
            "fixed, the re-run reloads",
            &r,
        )?;
        let n = nginx_reloads_since(lab, since)?;
        let owed = pending(lab, "web")?;
        if n != 1 || !owed.is_empty() {
            return Err(format!(
                "after the fix: {n} reloads (want 1), journal {owed:?} (want empty)"
            ));
        }
        converged(lab, "after the owed reload")
    })();
    let _ = lab.sh("web", &format!("rm -f {broken}"));
    let r = lab.kiln(&["apply", ENV, "--yes"]);
    result?;
    expect(r.code == 0, "back to the suite's configuration", &r)
}
