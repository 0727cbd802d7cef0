//! End-to-end for the `mariadb-galera` module and kiln's cluster orchestration, on three
//! real Debian 12 lab hosts (10.233.0.31-33, environment `galeratest`, in a scratch copy of
//! the repository so that no lab of yours is touched).
//!
//! Scenarios, in order on one cluster: fresh formation (3 nodes Synced, a row written on
//! db1 is read on db3), a second apply changes nothing, clean stop of all nodes then
//! apply (bootstraps from the safe_to_bootstrap node), kill -9 of all nodes then apply
//! (bootstraps from the highest recovered seqno), a config change rolls node by node while
//! a poller checks the cluster stays Primary with at least 2 nodes, and verify passes.
//! Needs root; without root it fails loudly rather than pretending to pass.

mod common;

use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{expect, Lab, Run};

const ENV: &str = "galeratest";
const NODES: [&str; 3] = ["db1", "db2", "db3"];
const SECRET_VAR: &str = "KILN_GALERA_E2E_APP_PASSWORD";
const SECRET: &str = "Galera-e2e-Pw-3b9d71";

const ENV_TOML: &str = r#"description = "Galera end-to-end (tests/galera_e2e.rs)"

[ssh]
user = "root"

[hosts.db1]
address = "10.233.0.31"
provider = "lab"
roles = ["db"]

[hosts.db2]
address = "10.233.0.32"
provider = "lab"
roles = ["db"]

[hosts.db3]
address = "10.233.0.33"
provider = "lab"
roles = ["db"]

[hosts.app]
address = "10.233.0.30"
provider = "lab"
roles = ["app"]

[roles.db]
modules = ["mariadb-galera"]

# The lab's PHP API (its /health queries the database) behind HAProxy on 127.0.0.1:3306.
[roles.app]
modules = ["galera-endpoint", "php", "node", "lab-apps", "nginx"]

[modules.galera-endpoint]
nodes = ["db1", "db2", "db3"]

[modules.php]
pools = [{ name = "api", user = "api", dir = "/srv/api", env = { DB_HOST = "127.0.0.1", DB_PORT = "3306", DB_NAME = "app", DB_USER = "app" }, secret_env = { DB_PASSWORD = "db_app" } }]

[modules.node]
apps = [{ name = "node-api", dir = "/srv/node-api", port = 3000, health = "/health" }]

[modules.nginx]
sites = [{ name = "api", type = "php", domains = ["api.galera.test"], root = "/srv/api/public", pool = "api" }]

[modules.mariadb-galera]
cluster_name = "galeratest"
nodes = ["db1", "db2", "db3"]
buffer_pool_size = "128M"
databases = ["app"]
users = [{ name = "app", host = "10.233.0.%", password_secret = "db_app", grants = ["ALL PRIVILEGES ON `app`.*"] }]
allow_from = ["10.233.0.30"]

[secrets.db_app]
env = "KILN_GALERA_E2E_APP_PASSWORD"
"#;

/// The suite's own helpers on the shared harness.
trait Galera {
    fn sql(&self, host: &str, sql: &str) -> Run;
    fn status(&self, host: &str, var: &str) -> String;
    fn set_param(&self, line_prefix: &str, line: &str);
}

impl Galera for Lab {
    /// One SQL statement's output (`-N -B`) on a host, as root over the socket.
    fn sql(&self, host: &str, sql: &str) -> Run {
        self.sh(
            host,
            &format!("mariadb -N -B -e \"{}\"", sql.replace('"', "\\\"")),
        )
    }

    fn status(&self, host: &str, var: &str) -> String {
        self.sql(host, &format!("SHOW GLOBAL STATUS LIKE '{var}'"))
            .stdout
            .split('\t')
            .nth(1)
            .unwrap_or_default()
            .trim()
            .to_string()
    }

    fn set_param(&self, line_prefix: &str, line: &str) {
        let p = self.env_file();
        let text = std::fs::read_to_string(&p).expect("env");
        let new: Vec<String> = text
            .lines()
            .map(|l| {
                if l.starts_with(line_prefix) {
                    line.to_string()
                } else {
                    l.to_string()
                }
            })
            .collect();
        std::fs::write(&p, new.join("\n") + "\n").expect("write env");
    }
}

fn all_synced(lab: &Lab) -> Result<(), String> {
    for h in NODES {
        let size = lab.status(h, "wsrep_cluster_size");
        let state = lab.status(h, "wsrep_local_state_comment");
        let status = lab.status(h, "wsrep_cluster_status");
        if size != "3" || state != "Synced" || status != "Primary" {
            return Err(format!(
                "{h}: cluster_size {size:?}, state {state:?}, status {status:?} (want 3, Synced, Primary)"
            ));
        }
    }
    Ok(())
}

fn row_count(lab: &Lab, host: &str) -> String {
    lab.sql(host, "SELECT COUNT(*) FROM app.t")
        .stdout
        .trim()
        .to_string()
}

fn every_node_has_rows(lab: &Lab, want: usize) -> Result<(), String> {
    for h in NODES {
        let n = row_count(lab, h);
        if n != want.to_string() {
            return Err(format!("{h} has {n:?} rows in app.t, want {want}"));
        }
    }
    Ok(())
}

/// DR: a database node is lost (its container deleted); `kiln rebuild` creates it, applies,
/// and the node rejoins by state transfer with every row.
fn rebuild_a_lost_node(lab: &Lab) -> Result<(), String> {
    let before = row_count(lab, "db1");
    let r = lab.kiln(&["lab", "destroy", ENV, "--host", "db3"]);
    expect(r.code == 0, "kiln lab destroy --host db3", &r)?;
    // Galera notices the loss after its suspect timeout (a few seconds).
    let mut size = String::new();
    for _ in 0..30 {
        size = lab.status("db1", "wsrep_cluster_size");
        if size == "2" {
            break;
        }
        std::thread::sleep(std::time::Duration::from_secs(1));
    }
    if size != "2" {
        return Err(format!(
            "after losing db3 the cluster size is {size:?}, want 2"
        ));
    }
    let r = lab.kiln(&["rebuild", ENV, "--yes"]);
    expect(
        r.code == 0
            && r.stdout.contains("Rebuild of galeratest — timeline (RTO")
            && r.stdout.contains("lab: created db3")
            && r.stdout.contains("db3 galera_node[galeratest]: join")
            && r.stdout.contains("surviving database nodes kept the data"),
        "kiln rebuild creates db3 and joins it",
        &r,
    )?;
    all_synced(lab)?;
    let after = row_count(lab, "db3");
    if after != before || before.is_empty() {
        return Err(format!(
            "db3 has {after:?} rows after the rebuild, db1 had {before:?}"
        ));
    }
    Ok(())
}

/// The app host (module galera-endpoint: HAProxy on its 127.0.0.1:3306 in front of the
/// cluster) and the name of its PHP site.
const APP: &str = "10.233.0.30";

/// One call of the PHP API's /health: the Galera node that answered its query, or the error.
fn health_once() -> Result<String, String> {
    let r = common::local(
        "curl",
        &[
            "-sS",
            "--max-time",
            "3",
            "-H",
            "Host: api.galera.test",
            &format!("http://{APP}/health"),
        ],
    );
    if r.code != 0 {
        return Err(format!("curl exit {}: {}", r.code, r.stderr.trim()));
    }
    let v: serde_json::Value = serde_json::from_str(&r.stdout)
        .map_err(|e| format!("/health is not JSON ({e}): {}", r.stdout))?;
    let db = &v["database"];
    if db["ok"] == serde_json::Value::Bool(true) {
        Ok(db["node"].as_str().unwrap_or("?").to_string())
    } else {
        Err(format!("database not ok: {}", db))
    }
}

#[derive(Debug)]
struct Health {
    at: Instant,
    db: Result<String, String>,
}

/// Runs `f` while a poller calls /health every 200 ms; returns f's result and every answer.
fn polling<R: Send>(f: impl FnOnce() -> R) -> (R, Vec<Health>) {
    let stop = AtomicBool::new(false);
    let samples: Mutex<Vec<Health>> = Mutex::new(vec![]);
    let r = std::thread::scope(|s| {
        s.spawn(|| {
            while !stop.load(Ordering::SeqCst) {
                let at = Instant::now();
                let db = health_once();
                samples.lock().expect("lock").push(Health { at, db });
                std::thread::sleep(Duration::from_millis(200).saturating_sub(at.elapsed()));
            }
        });
        let r = f();
        stop.store(true, Ordering::SeqCst);
        r
    });
    (r, samples.into_inner().expect("lock"))
}

/// Waits (up to `secs`) until every node is Synced in a Primary component of 3.
fn wait_all_synced(lab: &Lab, secs: u64) -> Result<(), String> {
    let start = Instant::now();
    loop {
        match all_synced(lab) {
            Ok(()) => return Ok(()),
            Err(e) if start.elapsed() > Duration::from_secs(secs) => return Err(e),
            Err(_) => std::thread::sleep(Duration::from_secs(1)),
        }
    }
}

/// Waits (up to `secs`) until /health is answered by `node`.
fn wait_writer(node: &str, secs: u64) -> Result<(), String> {
    let start = Instant::now();
    loop {
        let h = health_once();
        if h.as_deref() == Ok(node) {
            return Ok(());
        }
        if start.elapsed() > Duration::from_secs(secs) {
            return Err(format!(
                "/health is not served by {node} after {secs} s: {h:?}"
            ));
        }
        std::thread::sleep(Duration::from_millis(500));
    }
}

/// Issue 12: the app survives the loss of any one node. With a poller on /health every
/// 200 ms: MariaDB stopped on db1, then on db2, then db3's server killed with -9 (the
/// others back in between). After each loss the database is ok again within 10 s, served
/// by another node; the writer is always the first healthy node of the list.
fn app_survives_each_node_loss(lab: &Lab) -> Result<(), String> {
    wait_writer("db1", 30)?;
    let losses = [
        ("db1", "systemctl stop mariadb"),
        ("db2", "systemctl stop mariadb"),
        ("db3", "pkill -9 -x mariadbd"),
    ];
    for (victim, how) in losses {
        let (t0, samples) = polling(|| {
            std::thread::sleep(Duration::from_secs(1));
            let t0 = Instant::now();
            let r = lab.sh(victim, how);
            std::thread::sleep(Duration::from_secs(12));
            (r.code == 0).then_some(t0).ok_or(r)
        });
        let t0 = t0.map_err(|r| format!("{victim}: `{how}` failed: {}", r.all()))?;
        let after: Vec<&Health> = samples.iter().filter(|h| h.at >= t0).collect();
        let last_error = after.iter().rposition(|h| h.db.is_err());
        let outage = match last_error {
            None => Duration::ZERO,
            Some(i) => match after.get(i + 1) {
                Some(h) => h.at - t0,
                None => {
                    return Err(format!(
                        "{victim} lost: /health never recovered: last answers {:?}",
                        &after[after.len().saturating_sub(5)..]
                    ))
                }
            },
        };
        let errors = after.iter().filter(|h| h.db.is_err()).count();
        let served: std::collections::BTreeSet<&str> =
            after.iter().filter_map(|h| h.db.as_deref().ok()).collect();
        println!(
            "    {victim} lost ({how}): database ok again after {:.1} s ({errors} failed of {} calls; served by {served:?})",
            outage.as_secs_f64(),
            after.len()
        );
        if outage > Duration::from_secs(10) {
            return Err(format!(
                "{victim} lost: /health reported the database failing for {:.1} s (> 10 s)",
                outage.as_secs_f64()
            ));
        }
        if served.contains(victim)
            && after.last().and_then(|h| h.db.as_deref().ok()) == Some(victim)
        {
            return Err(format!(
                "{victim} is down but still answers /health's queries"
            ));
        }
        if victim == "db1" && after.last().map(|h| h.db.as_deref()) != Some(Ok("db2")) {
            return Err(format!(
                "with db1 down the writer must be db2 (the next node of the list): {:?}",
                after.last()
            ));
        }
        // Back in between: a stopped node is started (a killed one systemd restarts), then
        // db1, the first of the list, takes the writes again.
        if how.starts_with("systemctl") {
            let r = lab.sh(victim, "systemctl start mariadb");
            expect(r.code == 0, &format!("start mariadb on {victim}"), &r)?;
        }
        wait_all_synced(lab, 180)?;
        wait_writer("db1", 30)?;
    }
    Ok(())
}

fn up(lab: &Lab) -> Result<(), String> {
    let r = lab.kiln(&["lab", "down", ENV]);
    expect(r.code == 0, "kiln lab down (cleanup before start)", &r)?;
    let r = lab.kiln(&["lab", "up", ENV]);
    expect(r.code == 0, "kiln lab up failed", &r)?;
    let r = lab.kiln(&["lab", "status", ENV]);
    expect(
        r.code == 0 && r.stdout.matches("running").count() == 4,
        "four hosts running (three nodes and the app host)",
        &r,
    )
}

fn fresh_formation(lab: &Lab) -> Result<(), String> {
    let r = lab.kiln(&["plan", ENV]);
    expect(
        r.code == 0
            && r.stdout
                .contains("db1 galera_node[galeratest]: bootstrap new cluster (first formation")
            && r.stdout
                .contains("db2 galera_node[galeratest]: join (waits for db1)")
            && r.stdout
                .contains("db3 galera_node[galeratest]: join (waits for db1, db2)"),
        "plan shows bootstrap of db1 and one-at-a-time joins",
        &r,
    )?;
    let r = lab.kiln(&["apply", ENV, "--yes"]);
    expect(
        r.code == 0 && r.stdout.contains("cluster galeratest done"),
        "first apply forms the cluster",
        &r,
    )?;
    all_synced(lab)?;
    let w = lab.sql(
        "db1",
        "CREATE TABLE app.t (id INT AUTO_INCREMENT PRIMARY KEY, v VARCHAR(40)); INSERT INTO app.t (v) VALUES ('written on db1')",
    );
    expect(w.code == 0, "write on db1", &w)?;
    let read = lab.sql("db3", "SELECT v FROM app.t");
    expect(
        read.stdout.contains("written on db1"),
        "row written on db1 is read on db3",
        &read,
    )?;
    // The app user exists with the secret's password, and reaches db1 from another node.
    let login = lab.sh(
        "db3",
        &format!("MYSQL_PWD='{SECRET}' mariadb -h 10.233.0.31 -u app -N -B -e 'SELECT COUNT(*) FROM app.t'"),
    );
    expect(
        login.code == 0 && login.stdout.trim() == "1",
        "app user logs in over TCP with the secret password",
        &login,
    )?;
    firewall_closes_mariadb_to_others(lab)
}

/// This machine (the bridge, 10.233.0.1) is neither a node nor in allow_from: the
/// nftables table drops its connections to 3306 and 4567, while a node gets through.
fn firewall_closes_mariadb_to_others(lab: &Lab) -> Result<(), String> {
    let table = lab.sh("db1", "nft list table inet kiln_galera");
    expect(
        table.code == 0 && table.stdout.contains("10.233.0.30"),
        "nftables table kiln_galera loaded with allow_from",
        &table,
    )?;
    for port in [3306, 4567] {
        let out = Command::new("timeout")
            .args([
                "3",
                "bash",
                "-c",
                &format!("exec 3<>/dev/tcp/10.233.0.31/{port}"),
            ])
            .output()
            .map_err(|e| e.to_string())?;
        if out.status.success() {
            return Err(format!(
                "10.233.0.1 reached db1:{port}, the firewall should drop it"
            ));
        }
    }
    let node = lab.sh(
        "db2",
        "timeout 3 bash -c \"exec 3<>/dev/tcp/10.233.0.31/3306\"",
    );
    expect(node.code == 0, "a node reaches db1:3306", &node)
}

fn second_apply_changes_nothing(lab: &Lab) -> Result<(), String> {
    let r = lab.kiln(&["plan", ENV, "--detailed-exitcode"]);
    expect(
        r.code == 0
            && r.stdout
                .contains("0 to create, 0 to update, 0 to remove, 0 to run"),
        "plan is empty on a healthy cluster",
        &r,
    )?;
    let r = lab.kiln(&["apply", ENV, "--yes"]);
    expect(
        r.code == 0 && r.stdout.contains("No changes to apply"),
        "second apply changes nothing",
        &r,
    )
}

fn insert(lab: &Lab, host: &str, n: usize) -> Result<(), String> {
    let values: Vec<String> = (0..n).map(|i| format!("('{host} row {i}')")).collect();
    let r = lab.sql(
        host,
        &format!("INSERT INTO app.t (v) VALUES {}", values.join(",")),
    );
    expect(r.code == 0, &format!("insert on {host}"), &r)
}

fn clean_stop_of_all_nodes(lab: &Lab) -> Result<(), String> {
    insert(lab, "db2", 10)?;
    // db3 leaves last: it is the one with safe_to_bootstrap: 1.
    for h in NODES {
        let r = lab.sh(h, "systemctl stop mariadb");
        expect(r.code == 0, &format!("stop {h}"), &r)?;
    }
    let g = lab.sh("db3", "grep safe_to_bootstrap /var/lib/mysql/grastate.dat");
    expect(
        g.stdout.contains("safe_to_bootstrap: 1"),
        "db3 is safe to bootstrap",
        &g,
    )?;
    let r = lab.kiln(&["plan", ENV, "--detailed-exitcode"]);
    expect(
        r.code == 2
            && r.stdout.contains(
                "db3 galera_node[galeratest]: bootstrap the cluster again (safe_to_bootstrap: 1)",
            )
            && r.stdout
                .contains("db1 galera_node[galeratest]: join (waits for db3)"),
        "plan bootstraps db3 and joins the others",
        &r,
    )?;
    let r = lab.kiln(&["apply", ENV, "--yes"]);
    expect(r.code == 0, "apply brings the cluster back", &r)?;
    all_synced(lab)?;
    every_node_has_rows(lab, 11)
}

fn kill_all_nodes(lab: &Lab) -> Result<(), String> {
    // A crash that nothing restarts: systemd would restart mariadbd after SIGKILL
    // (Restart=on-abnormal), so a runtime drop-in turns that off for this scenario.
    for h in NODES {
        let r = lab.sh(h, "mkdir -p /run/systemd/system/mariadb.service.d && printf '[Service]\\nRestart=no\\n' > /run/systemd/system/mariadb.service.d/kiln-e2e-crash.conf && systemctl daemon-reload");
        expect(r.code == 0, "crash drop-in", &r)?;
    }
    let result = kill_scenario(lab);
    for h in NODES {
        lab.sh(
            h,
            "rm -rf /run/systemd/system/mariadb.service.d && systemctl daemon-reload",
        );
    }
    result
}

fn kill_scenario(lab: &Lab) -> Result<(), String> {
    // db1 dies first; db2 and db3 go on as a Primary component of 2 and take writes that
    // db1 never sees. Then both die at once. db2 and db3 have the highest seqno; db2 is
    // listed first, so the cluster must come back from db2 — never from db1.
    let r = lab.sh("db1", "pkill -9 mariadbd");
    expect(r.code == 0, "kill -9 on db1", &r)?;
    let start = Instant::now();
    while lab.status("db2", "wsrep_cluster_size") != "2" {
        if start.elapsed() > Duration::from_secs(90) {
            return Err("db2 never saw the cluster shrink to 2".into());
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    insert(lab, "db2", 7)?;
    let t2 = std::thread::scope(|s| {
        let a = s.spawn(|| lab.sh("db2", "pkill -9 mariadbd"));
        let b = lab.sh("db3", "pkill -9 mariadbd");
        (a.join().expect("thread"), b)
    });
    expect(
        t2.0.code == 0 && t2.1.code == 0,
        "kill -9 on db2 and db3",
        &t2.0,
    )?;
    std::thread::sleep(Duration::from_secs(1));
    for h in NODES {
        let r = lab.sh(
            h,
            "systemctl is-active mariadb; grep seqno /var/lib/mysql/grastate.dat",
        );
        expect(
            !r.stdout.starts_with("active") && r.stdout.contains("seqno:   -1"),
            &format!("{h} crashed (seqno -1, not running)"),
            &r,
        )?;
    }
    let r = lab.kiln(&["plan", ENV, "--detailed-exitcode"]);
    expect(
        r.code == 2
            && r.stdout
                .contains("read the last committed position with galera_recovery")
            && r.stdout
                .contains("bootstrap the node with the highest recovered seqno"),
        "plan recovers by probing every node",
        &r,
    )?;
    let r = lab.kiln(&["apply", ENV, "--yes"]);
    expect(
        r.code == 0
            && r.stdout
                .contains("bootstrapping from db2: highest recovered seqno"),
        "apply bootstraps from db2, the node with the highest seqno (tie with db3: first listed)",
        &r,
    )?;
    all_synced(lab)?;
    every_node_has_rows(lab, 18)
}

#[derive(Debug)]
struct Sample {
    round: usize,
    host: &'static str,
    /// None: the node's server refused the connection (ERROR 2002: restarting).
    status: Option<(String, u32)>,
    /// When the probe was sent and when it returned (epoch seconds, the hosts share the clock).
    sent: f64,
    returned: f64,
}

fn epoch_now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

/// One node's answer to the poller: `Some(Some(..))` status, `Some(None)` the server is not
/// running (the client's ERROR 2002), `None` nothing known (the probe itself failed, e.g. the
/// SSH connection on a loaded machine, which says nothing about the server).
fn sample_status(r: &Run) -> Option<Option<(String, u32)>> {
    let lines: Vec<&str> = r.stdout.lines().collect();
    if r.code == 0 && lines.len() == 2 {
        return Some(Some((lines[1].to_string(), lines[0].parse().unwrap_or(0))));
    }
    if r.all().contains("ERROR 2002") {
        return Some(None);
    }
    None
}

/// The times (seconds since the epoch) at which systemd began stopping mariadb and at which
/// it had started it again on a host, since `since` (epoch seconds): the real restart
/// windows, whatever a poller happened to sample.
fn restart_windows(lab: &Lab, host: &str, since: u64) -> Result<Vec<(f64, f64)>, String> {
    let r = lab.sh(
        host,
        &format!("journalctl -u mariadb --since @{since} -o short-unix --no-pager"),
    );
    if r.code != 0 {
        return Err(format!("{host}: journalctl failed: {}", r.all()));
    }
    let mut windows = vec![];
    let mut stopping: Option<f64> = None;
    for line in r.stdout.lines() {
        let Some((t, msg)) = line.split_once(' ') else {
            continue;
        };
        let Ok(t) = t.parse::<f64>() else { continue };
        if msg.contains("systemd[1]: Stopping mariadb") {
            stopping = Some(t);
        } else if msg.contains("systemd[1]: Started mariadb") {
            if let Some(s) = stopping.take() {
                windows.push((s, t));
            }
        }
    }
    if stopping.is_some() {
        return Err(format!(
            "{host}: mariadb was stopped and never started again:\n{}",
            r.stdout
        ));
    }
    Ok(windows)
}

fn config_change_rolls(lab: &Lab) -> Result<(), String> {
    lab.set_param("buffer_pool_size", "buffer_pool_size = \"160M\"");
    let r = lab.kiln(&["plan", ENV, "--detailed-exitcode"]);
    expect(
        r.code == 2
            && r.stdout
                .contains("db1 galera_node[galeratest]: rolling restart")
            && r.stdout
                .contains("db3 galera_node[galeratest]: rolling restart"),
        "plan rolls a restart through the nodes",
        &r,
    )?;
    let stop = Arc::new(AtomicBool::new(false));
    let samples: Arc<Mutex<Vec<Sample>>> = Arc::new(Mutex::new(vec![]));
    let unknown = std::sync::atomic::AtomicUsize::new(0);
    let since = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
        .saturating_sub(1);
    let apply = std::thread::scope(|s| {
        let poller = s.spawn(|| {
            let mut round = 0;
            while !stop.load(Ordering::SeqCst) {
                // The three nodes are asked at the same moment (one thread each): asked one
                // after the other, a node that just came back and the next one just stopped
                // would look "down at once" while the restarts never overlapped.
                std::thread::scope(|r| {
                    for h in NODES {
                        let samples = &samples;
                        let unknown = &unknown;
                        r.spawn(move || {
                            let sent = epoch_now();
                            let r = lab.sql(
                                h,
                                "SELECT VARIABLE_VALUE FROM information_schema.GLOBAL_STATUS WHERE VARIABLE_NAME IN ('WSREP_CLUSTER_STATUS','WSREP_CLUSTER_SIZE') ORDER BY VARIABLE_NAME",
                            );
                            match sample_status(&r) {
                                Some(status) => samples.lock().expect("lock").push(Sample {
                                    round,
                                    host: h,
                                    status,
                                    sent,
                                    returned: epoch_now(),
                                }),
                                None => {
                                    unknown.fetch_add(1, Ordering::SeqCst);
                                }
                            }
                        });
                    }
                });
                round += 1;
            }
        });
        let (r, health) = polling(|| lab.kiln(&["apply", ENV, "--yes"]));
        stop.store(true, Ordering::SeqCst);
        poller.join().expect("poller");
        (r, health)
    });
    let (apply, health) = apply;
    expect(
        apply.code == 0
            && apply.stdout.matches("rolling restart").count() >= 3
            && apply
                .stdout
                .matches("drained: its health check answers 503")
                .count()
                == 3,
        "apply rolls the restart, draining each node first",
        &apply,
    )?;
    // The app's /health during the rolling restart: kiln drains each node before its
    // restart, so the proxy has moved away first and no call sees a database error.
    let failed: Vec<&Health> = health.iter().filter(|h| h.db.is_err()).collect();
    let served: std::collections::BTreeSet<&str> =
        health.iter().filter_map(|h| h.db.as_deref().ok()).collect();
    println!(
        "    /health during the rolling restart: {} calls, {} failed, served by {served:?}",
        health.len(),
        failed.len()
    );
    if !failed.is_empty() || health.len() < 20 || served.len() < 2 {
        return Err(format!(
            "during the rolling restart /health must never fail (and move between nodes): {} calls, failed: {failed:?}",
            health.len()
        ));
    }
    // The restarts themselves, from each node's journal: exactly one per node, and no two
    // overlapping (one node stopped at a time).
    let mut windows = vec![];
    for h in NODES {
        let w = restart_windows(lab, h, since)?;
        if w.len() != 1 {
            return Err(format!(
                "{h}: expected exactly one restart of mariadb during the apply, found {w:?}"
            ));
        }
        windows.push((h, w[0]));
    }
    let samples = samples.lock().expect("lock");
    let rounds = samples.iter().map(|s| s.round).max().unwrap_or(0) + 1;
    let mut down_seen = 0;
    // A node that was seen down is rejoining until it is seen in a Primary component again:
    // while it joins it may report a non-Primary view of its own (seen: "non-Primary, size
    // 2" on the node coming back). Every other node must stay Primary with >= 2 members.
    let mut rejoining: std::collections::BTreeSet<&str> = Default::default();
    for round in 0..rounds {
        let in_round: Vec<&Sample> = samples.iter().filter(|s| s.round == round).collect();
        let down = in_round.iter().filter(|s| s.status.is_none()).count();
        down_seen += down;
        if down > 1 {
            return Err(format!("more than one node down at once: {in_round:?}"));
        }
        for s in &in_round {
            match &s.status {
                None => {
                    rejoining.insert(s.host);
                }
                Some((status, size)) if status == "Primary" && *size >= 2 => {
                    rejoining.remove(s.host);
                }
                _ => {}
            }
        }
        for s in &in_round {
            if let Some((status, size)) = &s.status {
                let restarting_alone = status != "Primary" && *size <= 1;
                // A node's own restart window (from its journal, plus 10 s after
                // systemd's "Started" while it settles into the Primary view): a probe that
                // answered inside it is the node coming back, even when the poller never
                // caught its refused connection between rounds (seen: "non-Primary, size 3").
                let in_own_restart = windows.iter().any(|(h, (stop, started))| {
                    *h == s.host && s.returned >= *stop && s.sent <= *started + 10.0
                });
                let joining = status != "Primary" && (rejoining.contains(s.host) || in_own_restart);
                if !restarting_alone && !joining && (status != "Primary" || *size < 2) {
                    return Err(format!(
                        "round {round}: {} reports {status} with cluster size {size}",
                        s.host
                    ));
                }
            }
        }
        let primary_2 = in_round
            .iter()
            .filter(|s| matches!(&s.status, Some((st, sz)) if st == "Primary" && *sz >= 2))
            .count();
        if in_round.len() == 3 && primary_2 < 2 {
            return Err(format!(
                "round {round}: fewer than 2 nodes in a Primary component: {in_round:?}"
            ));
        }
    }
    println!(
        "    poller: {rounds} rounds, {} samples, {down_seen} while a node was down, {} probes failed (not counted)",
        samples.len(),
        unknown.load(Ordering::SeqCst)
    );
    if rounds < 3 {
        return Err(format!("the poller ran only {rounds} rounds"));
    }
    if down_seen == 0 {
        return Err("the poller never saw a node down: no restart was observed".into());
    }
    windows.sort_by(|a, b| a.1 .0.total_cmp(&b.1 .0));
    for pair in windows.windows(2) {
        let ((h1, (_, end1)), (h2, (start2, _))) = (pair[0], pair[1]);
        if start2 < end1 {
            return Err(format!(
                "restarts overlap: {h2} began stopping at {start2} before {h1} had started at {end1}: {windows:?}"
            ));
        }
    }
    println!(
        "    restarts from the journals, one at a time: {}",
        windows
            .iter()
            .map(|(h, (a, b))| format!("{h} {:.1} s", b - a))
            .collect::<Vec<_>>()
            .join(", ")
    );
    all_synced(lab)?;
    for h in NODES {
        let v = lab.sql(h, "SELECT @@innodb_buffer_pool_size");
        expect(
            v.stdout.trim() == (160 * 1024 * 1024).to_string(),
            &format!("{h} runs with the new buffer pool size"),
            &v,
        )?;
    }
    every_node_has_rows(lab, 18)?;
    second_apply_changes_nothing(lab)
}

fn verify_passes(lab: &Lab) -> Result<(), String> {
    let r = lab.kiln(&["verify", ENV]);
    expect(
        r.code == 0
            && r.stdout
                .contains("db3: galera: cluster size equals the node count")
            && r.stdout.contains("galera: node is Synced")
            && r.stdout
                .contains("db2: galera: the health check proxies ask answers 200")
            && r.stdout
                .contains("app: db endpoint: a node takes the writes")
            && r.stdout
                .contains("app: db endpoint: every node is up behind it"),
        "verify runs the galera and endpoint checks",
        &r,
    )?;
    lab.sh("db2", "systemctl stop mariadb");
    let r = lab.kiln(&["verify", ENV, "--format", "json"]);
    let doc: serde_json::Value = serde_json::from_str(&r.stdout).unwrap_or_default();
    let failing: Vec<String> = doc["checks"]
        .as_array()
        .map(|cs| {
            cs.iter()
                .filter(|c| c["passed"] == false)
                .map(|c| format!("{}: {}", c["host"], c["name"]))
                .collect()
        })
        .unwrap_or_default();
    expect(
        r.code == 1 && doc["status"] == "failed" && !failing.is_empty(),
        "verify fails with db2's node down: a health check fails",
        &r,
    )?;
    println!("      verify with db2 down, failing checks: {failing:?}");
    // One Galera node alone (`--limit db2`): only db2 is planned, and no cluster action is
    // (the cluster's decisions need every node's facts) — said, naming the nodes left out.
    // The role (`--limit db`) holds every node: db2's join is planned.
    let r = lab.kiln(&["plan", ENV, "--limit", "db2", "--format", "json"]);
    let doc: serde_json::Value = serde_json::from_str(&r.stdout).unwrap_or_default();
    let hosts: Vec<&str> = doc["hosts"]
        .as_array()
        .map(|hs| hs.iter().filter_map(|h| h["host"].as_str()).collect())
        .unwrap_or_default();
    expect(
        r.code == 0
            && hosts == ["db2"]
            && !r.stdout.contains("galera_node[galeratest]")
            && r.stderr.contains(
                "cluster galeratest: node(s) db1, db3 not in this run (or without its galera_node resource); no cluster actions planned",
            ),
        &format!("--limit db2 plans db2 alone, no cluster action, and says why (hosts {hosts:?})"),
        &r,
    )?;
    let r = lab.kiln(&["plan", ENV, "--limit", "db"]);
    expect(
        r.code == 0
            && r.stdout.contains("db2 galera_node[galeratest]: join")
            && !r.stdout.contains("app ("),
        "--limit db (the role) plans db2's join",
        &r,
    )?;
    // Through a saved plan: its cluster steps apply exactly, after the staleness check.
    let saved = lab.root.path().join("galera-plan.json");
    let saved = saved.to_str().unwrap_or_default();
    let r = lab.kiln(&["plan", ENV, "-o", saved]);
    expect(
        r.code == 0 && r.stdout.contains("db2 galera_node[galeratest]: join"),
        "saved plan joins the stopped node",
        &r,
    )?;
    let r = lab.kiln(&["apply", saved, "--yes"]);
    expect(
        r.code == 0 && r.stdout.contains("cluster galeratest done"),
        "applying the saved plan joins db2 again",
        &r,
    )?;
    let r = lab.kiln(&["verify", ENV]);
    expect(r.code == 0, "verify healthy again", &r)
}

fn secret_never_printed(lab: &Lab) -> Result<(), String> {
    for o in lab.outputs.lock().expect("lock").iter() {
        if o.contains(SECRET) {
            return Err(format!("the password appeared in kiln's output:\n{o}"));
        }
    }
    Ok(())
}

fn down(lab: &Lab) -> Result<(), String> {
    let r = lab.kiln(&["lab", "down", ENV]);
    expect(r.code == 0, "lab down", &r)?;
    let status = lab.kiln(&["lab", "status", ENV]);
    expect(
        !status.stdout.contains("running"),
        "no host left running",
        &status,
    )
}

fn main() {
    let lab = Lab::new(ENV, ENV_TOML).with_secret(SECRET_VAR, SECRET);
    let scenarios: &[(&str, fn(&Lab) -> Result<(), String>)] = &[
        ("galera_lab_up", up),
        ("fresh_formation", fresh_formation),
        ("second_apply_changes_nothing", second_apply_changes_nothing),
        ("app_survives_each_node_loss", app_survives_each_node_loss),
        ("clean_stop_of_all_nodes", clean_stop_of_all_nodes),
        ("kill_all_nodes", kill_all_nodes),
        ("config_change_rolls", config_change_rolls),
        ("verify_passes", verify_passes),
        ("rebuild_a_lost_node", rebuild_a_lost_node),
        ("secret_never_printed", secret_never_printed),
        ("no_secret_in_any_output", |l: &Lab| {
            l.no_secret_in_any_output()
        }),
    ];
    let scenarios: Vec<common::Scenario<'_, Lab>> = scenarios
        .iter()
        .map(|(n, f)| (*n, f as &dyn Fn(&Lab) -> Result<(), String>))
        .collect();
    // The scenarios build on each other: after a failure the rest cannot mean much, except
    // the check that no secret was ever printed.
    common::run_suite(
        "galera_e2e",
        lab,
        &scenarios,
        &down,
        common::Policy {
            stop_at_failure: true,
            always: &["secret_never_printed", "no_secret_in_any_output"],
        },
    );
}
