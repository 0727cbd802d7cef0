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

[roles.db]
modules = ["mariadb-galera"]

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

fn up(lab: &Lab) -> Result<(), String> {
    let r = lab.kiln(&["lab", "down", ENV]);
    expect(r.code == 0, "kiln lab down (cleanup before start)", &r)?;
    let r = lab.kiln(&["lab", "up", ENV]);
    expect(r.code == 0, "kiln lab up failed", &r)?;
    let r = lab.kiln(&["lab", "status", ENV]);
    expect(
        r.code == 0 && r.stdout.matches("running").count() == 3,
        "three hosts running",
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
    /// None: the node did not answer (restarting).
    status: Option<(String, u32)>,
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
                        r.spawn(move || {
                            let r = lab.sql(
                                h,
                                "SELECT VARIABLE_VALUE FROM information_schema.GLOBAL_STATUS WHERE VARIABLE_NAME IN ('WSREP_CLUSTER_STATUS','WSREP_CLUSTER_SIZE') ORDER BY VARIABLE_NAME",
                            );
                            let lines: Vec<&str> = r.stdout.lines().collect();
                            let status = if r.code == 0 && lines.len() == 2 {
                                Some((lines[1].to_string(), lines[0].parse().unwrap_or(0)))
                            } else {
                                None
                            };
                            samples.lock().expect("lock").push(Sample {
                                round,
                                host: h,
                                status,
                            });
                        });
                    }
                });
                round += 1;
            }
        });
        let r = lab.kiln(&["apply", ENV, "--yes"]);
        stop.store(true, Ordering::SeqCst);
        poller.join().expect("poller");
        r
    });
    expect(
        apply.code == 0 && apply.stdout.matches("rolling restart").count() >= 3,
        "apply rolls the restart",
        &apply,
    )?;
    let samples = samples.lock().expect("lock");
    let rounds = samples.iter().map(|s| s.round).max().unwrap_or(0) + 1;
    let mut down_seen = 0;
    for round in 0..rounds {
        let in_round: Vec<&Sample> = samples.iter().filter(|s| s.round == round).collect();
        let down = in_round.iter().filter(|s| s.status.is_none()).count();
        down_seen += down;
        if down > 1 {
            return Err(format!("more than one node down at once: {in_round:?}"));
        }
        for s in &in_round {
            if let Some((status, size)) = &s.status {
                // A restarting node answers before it is back in the cluster; every node
                // in the cluster must be Primary with at least 2 members.
                let restarting_alone = status != "Primary" && *size <= 1;
                if !restarting_alone && (status != "Primary" || *size < 2) {
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
        "    poller: {rounds} rounds, {} samples, {down_seen} while a node was down",
        samples.len()
    );
    if rounds < 3 {
        return Err(format!("the poller ran only {rounds} rounds"));
    }
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
            && r.stdout.contains("galera: node is Synced"),
        "verify runs the galera checks",
        &r,
    )?;
    lab.sh("db2", "systemctl stop mariadb");
    let r = lab.kiln(&["verify", ENV]);
    expect(r.code != 0, "verify fails with a node down", &r)?;
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
        &lab,
        &scenarios,
        &down,
        common::Policy {
            stop_at_failure: true,
            always: &["secret_never_printed", "no_secret_in_any_output"],
        },
    );
}
