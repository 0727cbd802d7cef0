//! Monitoring end to end: a small clone of environments/lab.toml — `acme`, `web`, a two-node
//! Galera cluster `db1`/`db2` with backups to `storage`, and the `monitor` host — on this
//! suite's own addresses (10.233.0.81–.86), with the lab's monitoring set to short intervals
//! (scrape and evaluation 5 s, alerts after 10 s).
//!
//! Scenarios (in order, each building on the last): fresh apply and `kiln verify` (its
//! monitoring check: every generated target up, no alert firing), Prometheus' own view of
//! the targets (each job and instance kiln derived, every one up), the rules passing
//! `promtool check rules` on the host, the exporters closed to anyone but the monitoring
//! host, the mysqld exporter's account without a password; a second apply changes nothing;
//! nginx stopped on `web` → the SiteDown alert reaches the lab's webhook receiver within
//! 2 minutes, nginx started → the resolved notification arrives (both latencies printed);
//! MariaDB stopped on db2 → GaleraClusterSmall (db1 sees a cluster of 1) and MariaDBDown reach
//! the webhook, resolved when it is back; a certificate replaced by one expiring in 3 days →
//! CertificateExpiring, resolved by the next `kiln apply` (which puts the issued one back);
//! MinIO stopped and a backup run → BackupFailed, resolved by the next good run; a site
//! removed from the spec is gone from the probes after the next apply.

mod common;

use std::time::{Duration, Instant};

use common::{expect, Lab};

const ENV: &str = "montest";
const ACME: &str = "10.233.0.81";
const WEB: &str = "10.233.0.82";
const DB1: &str = "10.233.0.83";
const MONITOR: &str = "10.233.0.84";
const DB2: &str = "10.233.0.85";
const STORAGE: &str = "10.233.0.86";

/// environments/lab.toml with acme, web, db1, db2, storage and monitor only, on this suite's
/// addresses.
fn env_text(without_admin_site: bool) -> String {
    let lab = std::fs::read_to_string(common::repo().join("environments/lab.toml"))
        .expect("environments/lab.toml");
    let mut doc: toml_edit::DocumentMut = lab.parse().expect("lab.toml parses");
    let hosts = doc["hosts"].as_table_mut().expect("[hosts]");
    let names: Vec<String> = hosts.iter().map(|(k, _)| k.to_string()).collect();
    for n in names {
        if !["acme", "web", "db1", "db2", "storage", "monitor"].contains(&n.as_str()) {
            hosts.remove(&n);
        }
    }
    for (h, a) in [
        ("acme", ACME),
        ("web", WEB),
        ("db1", DB1),
        ("monitor", MONITOR),
        ("db2", DB2),
        ("storage", STORAGE),
    ] {
        doc["hosts"][h]["address"] = toml_edit::value(a);
    }
    // Two Galera nodes (so one lost leaves a cluster smaller than its nodes), backups on
    // `storage` only (no off-site copy here).
    let two = || toml_edit::value(toml_edit::Array::from_iter(["db1", "db2"]));
    doc["modules"]["mariadb-galera"]["nodes"] = two();
    doc["modules"]["galera-endpoint"]["nodes"] = two();
    doc["modules"]["backup"]["peers"] = two();
    doc["modules"]["backup"]
        .as_table_mut()
        .expect("[modules.backup]")
        .remove("replicate_to");
    // AIDE's first database costs minutes of CPU on a shared machine and is not what this
    // suite is about.
    doc["modules"]["debian-base"]["hardening_aide"] = toml_edit::value(false);
    let m = &mut doc["modules"]["monitoring"];
    m["scrape_interval"] = toml_edit::value("5s");
    m["evaluation_interval"] = toml_edit::value("5s");
    m["alert_for"] = toml_edit::value("10s");
    m["group_wait"] = toml_edit::value("5s");
    m["group_interval"] = toml_edit::value("10s");
    m["repeat_interval"] = toml_edit::value("1h");
    if without_admin_site {
        let sites = doc["modules"]["nginx"]["sites"]
            .as_array_mut()
            .expect("nginx sites");
        sites.retain(|s| {
            s.as_inline_table()
                .and_then(|t| t.get("name"))
                .and_then(|n| n.as_str())
                != Some("admin")
        });
    }
    doc.to_string()
}

fn up(lab: &Lab) -> Result<(), String> {
    let r = lab.kiln(&["lab", "down", ENV]);
    expect(
        r.code == 0,
        "kiln lab down (leftovers of an earlier run)",
        &r,
    )?;
    let r = lab.kiln(&["lab", "up", ENV]);
    expect(r.code == 0, "kiln lab up", &r)?;
    let r = lab.kiln(&["lab", "status", ENV]);
    expect(
        r.code == 0 && r.stdout.matches("running").count() == 6,
        "six hosts running",
        &r,
    )
}

/// Prometheus' active targets on the monitor host as `job instance health` lines.
fn targets(lab: &Lab) -> common::Run {
    // The pipeline's status is python's: it fails when the API gave nothing.
    lab.sh(
        "monitor",
        r#"curl -fsS --max-time 10 'http://127.0.0.1:9090/api/v1/targets?state=active' | python3 -c '
import json, sys
ts = json.load(sys.stdin)["data"]["activeTargets"]
for line in sorted("%s %s %s" % (t["labels"]["job"], t["labels"]["instance"], t["health"]) for t in ts):
    print(line)'"#,
    )
}

const EXPECTED: [&str; 22] = [
    "alertmanager monitor",
    "blackbox monitor",
    "mysqld db1",
    "mysqld db2",
    "nginx web",
    "node acme",
    "node db1",
    "node db2",
    "node monitor",
    "node storage",
    "node web",
    "prometheus monitor",
    "sites https://admin.lab.test/",
    "sites https://api.lab.test/health",
    "sites https://app.lab.test/",
    "sites https://node.lab.test/health",
    "ssh acme",
    "ssh db1",
    "ssh db2",
    "ssh monitor",
    "ssh storage",
    "ssh web",
];

fn fresh_apply_and_verify(lab: &Lab) -> Result<(), String> {
    let r = lab.kiln(&["apply", ENV, "--yes"]);
    expect(
        r.code == 0 && r.stdout.contains("no failures"),
        "first apply",
        &r,
    )?;
    let v = lab.kiln(&["verify", ENV]);
    expect(
        v.code == 0
            && v.stdout
                .contains("monitoring: every generated target is up and no alert fires")
            && v.stdout.contains("22 target(s) up, no alert firing"),
        "kiln verify: the monitoring check passes (22 targets up, no alert)",
        &v,
    )
}

fn prometheus_scrapes_exactly_what_kiln_derived(lab: &Lab) -> Result<(), String> {
    let t = targets(lab);
    let want: Vec<String> = EXPECTED.iter().map(|e| format!("{e} up")).collect();
    let got: Vec<&str> = t.stdout.lines().collect();
    expect(
        t.code == 0 && got == want.iter().map(String::as_str).collect::<Vec<_>>(),
        &format!(
            "Prometheus' active targets are exactly, and all up:\n{}",
            want.join("\n")
        ),
        &t,
    )?;
    let rules = lab.sh(
        "monitor",
        "promtool check rules /etc/prometheus/kiln-rules.yml && promtool check config /etc/prometheus/prometheus.yml",
    );
    expect(
        rules.code == 0 && rules.all().contains("SUCCESS: 15 rules found"),
        "promtool: the generated rules (15) and config pass",
        &rules,
    )?;
    // The metrics the rules read are there: Galera's state through the socket account.
    let q = lab.sh(
        "monitor",
        "curl -fsS --max-time 10 'http://127.0.0.1:9090/api/v1/query?query=mysql_global_status_wsrep_local_state' ; echo; curl -fsS --max-time 10 'http://127.0.0.1:9090/api/v1/query?query=mysql_global_status_wsrep_cluster_status'",
    );
    expect(
        q.code == 0
            && q.stdout.matches("\"4\"]").count() == 2
            && q.stdout.matches("\"1\"]").count() == 2,
        "Prometheus has both nodes' Galera local state (4, Synced) and cluster status (1, Primary)",
        &q,
    )
}

fn exporters_only_for_the_monitoring_host(lab: &Lab) -> Result<(), String> {
    for (port, addr) in [
        (9100, WEB),
        (9113, WEB),
        (9104, DB1),
        (9104, DB2),
        (9100, STORAGE),
    ] {
        let from_monitor = lab.sh(
            "monitor",
            &format!("curl -fsS -o /dev/null --max-time 5 http://{addr}:{port}/metrics"),
        );
        expect(
            from_monitor.code == 0,
            &format!("monitor reaches {addr}:{port}"),
            &from_monitor,
        )?;
        let from_acme = lab.sh(
            "acme",
            &format!("curl -sS -o /dev/null --max-time 5 http://{addr}:{port}/metrics"),
        );
        expect(
            from_acme.code != 0,
            &format!("acme (no monitoring) is refused at {addr}:{port}"),
            &from_acme,
        )?;
    }
    let stub = lab.sh(
        "acme",
        &format!("curl -sS -o /dev/null --max-time 5 http://{WEB}:8080/stub_status"),
    );
    expect(
        stub.code != 0,
        "nginx's stub_status is loopback only",
        &stub,
    )?;
    let grants = lab.sh(
        "db1",
        "mariadb -N -B -e \"SHOW GRANTS FOR 'prometheus'@'localhost'\"",
    );
    expect(
        grants.code == 0
            && grants.stdout.contains("unix_socket")
            && grants.stdout.contains("PROCESS")
            && !grants.stdout.contains("PASSWORD")
            && !grants.stdout.contains("SELECT"),
        "the exporter's account: unix_socket, PROCESS and REPLICATION CLIENT, no password, no SELECT",
        &grants,
    )
}

fn second_apply_changes_nothing(lab: &Lab) -> Result<(), String> {
    let p = lab.kiln(&["plan", ENV, "--detailed-exitcode"]);
    expect(p.code == 0, "re-plan is empty", &p)?;
    let before = lab.sh("monitor", "systemctl show -p MainPID --value prometheus prometheus-alertmanager prometheus-blackbox-exporter; stat -c %Y /etc/prometheus/*.yml");
    let r = lab.kiln(&["apply", ENV, "--yes"]);
    expect(r.code == 0, "second apply", &r)?;
    let after = lab.sh("monitor", "systemctl show -p MainPID --value prometheus prometheus-alertmanager prometheus-blackbox-exporter; stat -c %Y /etc/prometheus/*.yml");
    expect(
        before.stdout == after.stdout,
        "nothing restarted or rewritten on the monitor host",
        &after,
    )
}

/// Waits (up to `limit`) for a notification of `alert` with `status` ("firing"/"resolved")
/// received after `since` (epoch seconds) by the lab's webhook receiver.
fn wait_for_notification(
    lab: &Lab,
    alert: &str,
    status: &str,
    since: f64,
    limit: Duration,
) -> Result<f64, String> {
    let t0 = Instant::now();
    let script = format!(
        r#"python3 -c '
import json
for line in open("/var/lib/kiln-webhook/alerts.jsonl"):
    n = json.loads(line)
    if n["received"] < {since}:
        continue
    for a in n["body"].get("alerts", []):
        if a["labels"].get("alertname") == "{alert}" and a["status"] == "{status}":
            print(n["received"], a["labels"].get("instance"))
            raise SystemExit(0)
raise SystemExit(1)' 2>/dev/null"#
    );
    loop {
        let r = lab.sh("monitor", &script);
        if r.code == 0 {
            let at: f64 = r
                .stdout
                .split_whitespace()
                .next()
                .and_then(|s| s.parse().ok())
                .unwrap_or(0.0);
            return Ok(at);
        }
        if t0.elapsed() > limit {
            let all = lab.sh(
                "monitor",
                "tail -c 3000 /var/lib/kiln-webhook/alerts.jsonl; curl -s http://127.0.0.1:9090/api/v1/alerts",
            );
            return Err(format!(
                "no {status} {alert} notification within {} s\n{}",
                limit.as_secs(),
                all.all()
            ));
        }
        std::thread::sleep(Duration::from_secs(2));
    }
}

fn now_on(lab: &Lab, host: &str) -> Result<f64, String> {
    let r = lab.sh(host, "date +%s.%N");
    r.stdout
        .trim()
        .parse()
        .map_err(|_| format!("date on {host}: {}", r.all()))
}

fn site_down_alert_reaches_the_webhook(lab: &Lab) -> Result<(), String> {
    let t0 = now_on(lab, "monitor")?;
    let r = lab.sh("web", "systemctl stop nginx");
    expect(r.code == 0, "stop nginx on web", &r)?;
    let fired = wait_for_notification(lab, "SiteDown", "firing", t0, Duration::from_secs(120));
    let t1 = now_on(lab, "monitor")?;
    let s = lab.sh("web", "systemctl start nginx");
    expect(s.code == 0, "start nginx on web", &s)?;
    let fired = fired?;
    println!(
        "    SiteDown firing reached the webhook {:.1} s after nginx stopped",
        fired - t0
    );
    expect(
        fired - t0 <= 120.0,
        "the SiteDown alert within 2 minutes",
        &r,
    )?;
    let resolved =
        wait_for_notification(lab, "SiteDown", "resolved", t1, Duration::from_secs(120))?;
    println!(
        "    SiteDown resolved reached the webhook {:.1} s after nginx started",
        resolved - t1
    );
    let v = lab.kiln(&["verify", ENV]);
    expect(v.code == 0, "verify green again", &v)
}

/// The instance label of a `status` notification of `alert` received after `since`, waited
/// for up to `limit`; prints the latency after `since` as `what`.
fn notified(
    lab: &Lab,
    alert: &str,
    status: &str,
    since: f64,
    limit: Duration,
    what: &str,
) -> Result<f64, String> {
    let at = wait_for_notification(lab, alert, status, since, limit)?;
    println!(
        "    {alert} {status} reached the webhook {:.1} s after {what}",
        at - since
    );
    Ok(at)
}

fn galera_alert_when_a_node_stops(lab: &Lab) -> Result<(), String> {
    let t0 = now_on(lab, "monitor")?;
    let r = lab.sh("db2", "systemctl stop mariadb");
    expect(r.code == 0, "stop MariaDB on db2", &r)?;
    let small = notified(
        lab,
        "GaleraClusterSmall",
        "firing",
        t0,
        Duration::from_secs(120),
        "MariaDB stopped on db2",
    );
    let down = small.as_ref().ok().map(|_| {
        notified(
            lab,
            "MariaDBDown",
            "firing",
            t0,
            Duration::from_secs(60),
            "MariaDB stopped on db2",
        )
    });
    // What Prometheus says of the survivor, for the record and the assertion below.
    let size = lab.sh(
        "monitor",
        "curl -fsS --max-time 10 'http://127.0.0.1:9090/api/v1/query?query=mysql_global_status_wsrep_cluster_size'",
    );
    let t1 = now_on(lab, "monitor")?;
    let s = lab.sh("db2", "systemctl start mariadb");
    expect(s.code == 0, "start MariaDB on db2 (it rejoins)", &s)?;
    small?;
    down.expect("asked when GaleraClusterSmall fired")?;
    expect(
        size.stdout.contains("\"instance\":\"db1\"") && size.stdout.contains("\"1\"]"),
        "Prometheus saw db1 in a cluster of 1 while db2 was down",
        &size,
    )?;
    notified(
        lab,
        "GaleraClusterSmall",
        "resolved",
        t1,
        Duration::from_secs(180),
        "MariaDB started on db2",
    )?;
    notified(
        lab,
        "MariaDBDown",
        "resolved",
        t1,
        Duration::from_secs(120),
        "MariaDB started on db2",
    )?;
    let v = lab.kiln(&["verify", ENV]);
    expect(v.code == 0, "verify green again (db2 Synced)", &v)
}

fn certificate_alert_when_one_expires_soon(lab: &Lab) -> Result<(), String> {
    let t0 = now_on(lab, "monitor")?;
    // What an operator's mistake or a stuck renewal leaves: a certificate for the right
    // names that expires in 3 days, served by nginx.
    let r = lab.sh(
        "web",
        "set -e; d=/etc/kiln/tls/live/app; \
         openssl req -x509 -newkey rsa:2048 -nodes -days 3 -subj /CN=app.lab.test \
           -addext subjectAltName=DNS:app.lab.test -keyout $d/privkey.pem.t -out $d/fullchain.pem.t 2>/dev/null; \
         chmod 600 $d/privkey.pem.t; mv -f $d/privkey.pem.t $d/privkey.pem; mv -f $d/fullchain.pem.t $d/fullchain.pem; \
         nginx -t -q && systemctl reload nginx",
    );
    expect(
        r.code == 0,
        "a 3-day certificate for app.lab.test installed by hand",
        &r,
    )?;
    let fired = notified(
        lab,
        "CertificateExpiring",
        "firing",
        t0,
        Duration::from_secs(120),
        "the short certificate was installed",
    )?;
    let firing = lab.sh(
        "monitor",
        r#"curl -fsS --max-time 10 http://127.0.0.1:9090/api/v1/alerts | python3 -c '
import json, sys
for a in json.load(sys.stdin)["data"]["alerts"]:
    if a["labels"]["alertname"] == "CertificateExpiring" and a["state"] == "firing":
        print(a["labels"]["instance"])'"#,
    );
    expect(
        firing.code == 0 && firing.stdout.trim() == "https://app.lab.test/",
        "CertificateExpiring fires for app.lab.test alone",
        &firing,
    )?;
    // kiln sees the certificate due (3 days < renew_days) and puts a good one in place.
    let p = lab.kiln(&["plan", ENV, "--limit", "web"]);
    expect(
        p.code == 0 && p.stdout.contains("kiln-certs sync"),
        "the plan runs kiln-certs sync for the short certificate",
        &p,
    )?;
    let t1 = now_on(lab, "monitor")?;
    let a = lab.kiln(&["apply", ENV, "--limit", "web", "--yes"]);
    expect(a.code == 0, "apply on web", &a)?;
    let resolved = notified(
        lab,
        "CertificateExpiring",
        "resolved",
        t1.max(fired),
        Duration::from_secs(120),
        "kiln apply replaced it",
    );
    resolved?;
    let v = lab.kiln(&["verify", ENV]);
    expect(v.code == 0, "verify green again", &v)
}

fn backup_alert_when_a_backup_fails(lab: &Lab) -> Result<(), String> {
    let t0 = now_on(lab, "monitor")?;
    let r = lab.sh("storage", "systemctl stop minio");
    expect(r.code == 0, "stop MinIO on storage", &r)?;
    let b = lab.sh("db1", "timeout 300 systemctl start kiln-backup.service");
    let after = lab.sh(
        "db1",
        "systemctl is-failed kiln-backup.service; cat /var/lib/prometheus/node-exporter/kiln_backup_run_*.prom",
    );
    let fired = notified(
        lab,
        "BackupFailed",
        "firing",
        t0,
        Duration::from_secs(120),
        "a backup ran with MinIO stopped",
    );
    let t1 = now_on(lab, "monitor")?;
    let s = lab.sh("storage", "systemctl start minio");
    expect(s.code == 0, "start MinIO on storage", &s)?;
    expect(
        b.code != 0,
        "the backup run fails while MinIO is stopped",
        &b,
    )?;
    expect(
        after.stdout.starts_with("failed")
            && after
                .stdout
                .lines()
                .any(|l| l.starts_with("kiln_backup_last_run_success{") && l.ends_with(" 0.0")),
        "the unit is failed and the textfile metric says the last run failed",
        &after,
    )?;
    fired?;
    let ok = lab.sh(
        "db1",
        &format!(
            "for i in $(seq 30); do curl -fsS -o /dev/null --max-time 2 http://{STORAGE}:9000/minio/health/live && break; sleep 1; done; \
             timeout 300 systemctl start kiln-backup.service"
        ),
    );
    expect(ok.code == 0, "a backup with MinIO back succeeds", &ok)?;
    notified(
        lab,
        "BackupFailed",
        "resolved",
        t1,
        Duration::from_secs(120),
        "MinIO was started and a backup succeeded",
    )?;
    let v = lab.kiln(&["verify", ENV]);
    expect(v.code == 0, "verify green again", &v)
}

fn removed_site_leaves_the_probes(lab: &Lab) -> Result<(), String> {
    lab.write_env(&env_text(true));
    let r = lab.kiln(&["apply", ENV, "--yes"]);
    expect(r.code == 0, "apply without the admin site", &r)?;
    // Prometheus restarts on the new configuration: ask until it answers (a minute at most).
    let t0 = Instant::now();
    let gone = |t: &common::Run| {
        t.code == 0
            && !t.stdout.contains("admin.lab.test")
            && t.stdout.contains("sites https://app.lab.test/ up")
    };
    let mut t = targets(lab);
    while !gone(&t) && t0.elapsed() < Duration::from_secs(60) {
        std::thread::sleep(Duration::from_secs(2));
        t = targets(lab);
    }
    expect(
        gone(&t),
        "Prometheus no longer probes admin.lab.test, still app.lab.test",
        &t,
    )?;
    let v = lab.kiln(&["verify", ENV]);
    expect(
        v.code == 0 && v.stdout.contains("21 target(s) up, no alert firing"),
        "verify: 21 targets up",
        &v,
    )?;
    let p = lab.kiln(&["plan", ENV, "--detailed-exitcode"]);
    expect(p.code == 0, "and the next plan is empty", &p)
}

fn down(lab: &Lab) -> Result<(), String> {
    let r = lab.kiln(&["lab", "down", ENV]);
    expect(r.code == 0, "kiln lab down", &r)?;
    let r = lab.kiln(&["lab", "status", ENV]);
    expect(!r.stdout.contains("running"), "no host running", &r)
}

fn main() {
    let lab = Lab::new(ENV, &env_text(false));
    common::run_suite(
        "monitoring_e2e",
        lab,
        &[
            ("lab up (fresh hosts)", &up),
            (
                "fresh apply, verify: every target up, no alert",
                &fresh_apply_and_verify,
            ),
            (
                "Prometheus scrapes exactly what kiln derived; promtool passes",
                &prometheus_scrapes_exactly_what_kiln_derived,
            ),
            (
                "exporters only for the monitoring host; the DB account has no password",
                &exporters_only_for_the_monitoring_host,
            ),
            (
                "second apply changes nothing",
                &second_apply_changes_nothing,
            ),
            (
                "nginx stopped: SiteDown reaches the webhook within 2 min, then resolved",
                &site_down_alert_reaches_the_webhook,
            ),
            (
                "MariaDB stopped on db2: the Galera alerts reach the webhook, then resolved",
                &galera_alert_when_a_node_stops,
            ),
            (
                "a certificate expiring in 3 days: CertificateExpiring; kiln apply resolves it",
                &certificate_alert_when_one_expires_soon,
            ),
            (
                "a failed backup: BackupFailed; a good run resolves it",
                &backup_alert_when_a_backup_fails,
            ),
            (
                "a removed site leaves the probes on the next apply",
                &removed_site_leaves_the_probes,
            ),
            ("no_secret_in_any_output", &|l: &Lab| {
                l.no_secret_in_any_output()
            }),
        ],
        &down,
        common::Policy {
            stop_at_failure: true,
            always: &["no_secret_in_any_output"],
        },
    );
}
