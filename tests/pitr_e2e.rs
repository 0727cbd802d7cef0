//! Point-in-time recovery end to end, on four real Debian 12 lab hosts (environment
//! `pitrtest`, 10.233.0.51-54): `db1`-`db3` a 3-node Galera cluster with binary logs (the
//! mariadb-galera module), each also running the backup module with `peers = [db1, db2,
//! db3]` (the first one with a fresh heartbeat archives the binary logs and takes the
//! scheduled backups), `storage` the lab's S3 store (minio module) and `storage2` its
//! off-site replica.
//!
//! Scenarios in order:
//! - apply converges, and `kiln verify` passes right after it: the archiver took the first
//!   base backup by itself and the archive keeps up (no `kiln backup` by hand);
//! - a writer commits a row every 100 ms; a `DROP TABLE` after time T; `kiln restore
//!   --to-time T` brings back exactly the rows committed at or before T;
//! - `kiln restore --physical --to-time T` (the physical copy as db1's data directory, a new
//!   cluster formed from it, the binary logs replayed up to T, db2/db3 rejoined by full state
//!   transfer) undoes a `DELETE` after T on every node;
//! - the DR drill, twice in a row: with the writer running, all three database containers
//!   are deleted; `kiln rebuild` brings the cluster back and every row committed more than
//!   60 s before the loss is there; the measured RPO and RTO are printed;
//! - every object in the bucket is age ciphertext (the environment sets `age_recipients`),
//!   holds no row text, and does not decrypt without the identity;
//! - the archiving node's container is deleted: another node archives within 2 minutes and
//!   the archive has no hole from the latest base backup to the newest write;
//! - every object is also on the replica (`replicate_to`, a second storage host); the first
//!   storage host is deleted and `kiln restore` brings back the latest point from the
//!   replica alone.
//! Needs root and the lab's S3 stand-in (as data_e2e).

mod common;

use std::io::BufRead;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use common::{expect, Lab, Run};

const ENV: &str = "pitrtest";

/// The environment, its backups encrypted to `recipient` (the identity comes from
/// PITR_AGE_IDENTITY, a secret the suite scans every output for).
fn env_toml(recipient: &str) -> String {
    ENV_TOML.replace("AGE_RECIPIENT", recipient)
}

const ENV_TOML: &str = r#"description = "Point-in-time recovery end-to-end (tests/pitr_e2e.rs)"

[ssh]
user = "root"

[hosts.db1]
address = "10.233.0.51"
provider = "lab"
roles = ["db"]

[hosts.db2]
address = "10.233.0.52"
provider = "lab"
roles = ["db"]

[hosts.db3]
address = "10.233.0.53"
provider = "lab"
roles = ["db"]

[hosts.storage]
address = "10.233.0.54"
provider = "lab"
roles = ["storage"]

[hosts.storage2]
address = "10.233.0.55"
provider = "lab"
roles = ["storage"]

[roles.db]
modules = ["mariadb-galera", "backup"]

[roles.storage]
modules = ["minio"]

[modules.mariadb-galera]
cluster_name = "pitrtest"
nodes = ["db1", "db2", "db3"]
databases = ["app"]
firewall = false

[modules.minio]
artifact_url = "http://10.233.0.1:8090/minio"
artifact_sha256_secret = "minio_artifact_sha256"
buckets = ["backups"]
# The backup hosts sign with their own user, limited to the backup bucket: every backup,
# archive, restore and failover below runs without a root key.
policies = [{ name = "kiln-backup", policy = { Version = "2012-10-17", Statement = [{ Effect = "Allow", Action = ["s3:*"], Resource = ["arn:aws:s3:::backups", "arn:aws:s3:::backups/*"] }] } }]
users = [{ name = "kiln-backup", secret = "minio_backup_key", policy = "kiln-backup" }]

[modules.backup]
endpoint = "http://storage:9000"
access_key = "kiln-backup"
secret_key_secret = "minio_backup_key"
peers = ["db1", "db2", "db3"]
replicate_to = "http://storage2:9000"
# A restore that hangs fails the suite in bounded time (the default is 4 h).
restore_timeout = 900
age_recipients = ["AGE_RECIPIENT"]
age_identity_secret = "backup_age_identity"

[secrets.backup_age_identity]
env = "PITR_AGE_IDENTITY"

[secrets.minio_root_user]
generate = 16

[secrets.minio_root_password]
generate = 32

[secrets.minio_backup_key]
generate = 32

[secrets.minio_artifact_sha256]
lab_artifact = "minio.sha256"
"#;

const TABLE: &str = "CREATE TABLE IF NOT EXISTS app.w (id BIGINT AUTO_INCREMENT PRIMARY KEY, \
                     t DATETIME(6) NOT NULL, tag VARCHAR(8) NOT NULL, n INT NOT NULL)";

fn now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
}

/// "YYYY-MM-DD HH:MM:SS" (UTC) of epoch seconds, through date(1).
fn utc(t: f64) -> String {
    let r = common::local("date", &["-u", "-d", &format!("@{}", t as i64), "+%F %T"]);
    r.stdout.trim().to_string()
}

/// A writer on a database node: one row every 100 ms through the node's socket, numbered
/// 1, 2, … under its tag (Galera's auto-increment leaves gaps in ids), each committed row
/// printed (`n<TAB>commit time`) back to the test as it commits.
struct Writer {
    child: Child,
    rows: Arc<Mutex<Vec<(i64, String)>>>,
    host: String,
    tag: String,
    root: std::path::PathBuf,
    bin: std::path::PathBuf,
}

impl Writer {
    fn start(lab: &Lab, host: &str, tag: &str) -> Writer {
        let script = format!(
            "rm -f /run/stop-writer-{tag}; mariadb -e '{TABLE}'; n=0; while [ ! -e /run/stop-writer-{tag} ]; do n=$((n+1)); mariadb -N -B -e \"INSERT INTO app.w (t, tag, n) VALUES (NOW(6), '{tag}', $n); SELECT $n, t FROM app.w WHERE id = LAST_INSERT_ID()\" || exit 1; sleep 0.1; done"
        );
        let mut child = Command::new(&lab.bin)
            .current_dir(lab.root.path())
            .env("KILN_ROOT", lab.root.path())
            .args(["ssh", ENV, host, "--", "sh", "-c"])
            .arg(format!("'{}'", script.replace('\'', "'\\''")))
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("start the writer");
        let rows = Arc::new(Mutex::new(vec![]));
        let out = child.stdout.take().unwrap();
        let sink = rows.clone();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(out).lines().map_while(Result::ok) {
                let mut it = line.split('\t');
                if let (Some(id), Some(t)) = (it.next(), it.next()) {
                    if let Ok(id) = id.parse() {
                        sink.lock().unwrap().push((id, t.to_string()));
                    }
                }
            }
        });
        Writer {
            child,
            rows,
            host: host.to_string(),
            tag: tag.to_string(),
            root: lab.root.path().to_path_buf(),
            bin: lab.bin.clone(),
        }
    }

    fn committed(&self) -> Vec<(i64, String)> {
        self.rows.lock().unwrap().clone()
    }

    /// Stops the loop on the host (a killed ssh client does not stop it), then the client.
    /// On a host that is gone, the loop went with it.
    fn stop(mut self) -> Vec<(i64, String)> {
        let _ = Command::new(&self.bin)
            .current_dir(&self.root)
            .env("KILN_ROOT", &self.root)
            .args(["ssh", ENV, &self.host, "--", "touch"])
            .arg(format!("/run/stop-writer-{}", self.tag))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline && matches!(self.child.try_wait(), Ok(None)) {
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        std::thread::sleep(Duration::from_millis(300));
        self.committed()
    }
}

/// A condition on measurements the suite made itself (no command output to show).
fn ensure(cond: bool, what: &str) -> Result<(), String> {
    if cond {
        Ok(())
    } else {
        Err(what.to_string())
    }
}

fn sql(lab: &Lab, host: &str, q: &str) -> Run {
    lab.sh(
        host,
        &format!("mariadb -N -B -e \"{}\"", q.replace('"', "\\\"")),
    )
}

fn up(lab: &Lab) -> Result<(), String> {
    // Fresh hosts: a killed earlier run leaves its converged hosts (and their rows) behind.
    let r = lab.kiln(&["lab", "down", ENV]);
    expect(
        r.code == 0,
        "kiln lab down (leftovers of an earlier run)",
        &r,
    )?;
    let r = lab.kiln(&["lab", "up", ENV]);
    expect(r.code == 0, "lab up", &r)
}

fn apply_then_verify(lab: &Lab) -> Result<(), String> {
    let r = lab.kiln(&["apply", ENV, "--yes"]);
    expect(r.code == 0, "apply converges", &r)?;
    // No `kiln backup` here: the archiver takes the first base backup once Synced.
    let v = lab.kiln(&["verify", ENV]);
    expect(
        v.code == 0 && v.stdout.contains("binlog archive complete up to"),
        "kiln verify passes right after the first apply (first backup and archive present)",
        &v,
    )?;
    let list = lab.sh("db1", "kiln-backup list");
    expect(
        list.code == 0 && list.stdout.contains(" complete"),
        "a complete base backup exists",
        &list,
    )
}

/// A writer on db2 for `secs` seconds, then T (a whole second), then 4 s more. Returns T,
/// what db1 holds of the rows committed at or before T (count, newest id and time: as the
/// database itself says, before the mistake that follows), and how many rows the writer saw
/// committed.
fn write_around_t(lab: &Lab, tag: &str, secs: u64) -> (String, Run, usize) {
    let w = Writer::start(lab, "db2", tag);
    std::thread::sleep(Duration::from_secs(secs));
    let t_text = utc(now().floor());
    std::thread::sleep(Duration::from_secs(4));
    let seen = w.stop().len();
    let want = sql(
        lab,
        "db1",
        &format!(
            "SELECT COUNT(*), MAX(id), MAX(t) FROM app.w WHERE t < '{t_text}' + INTERVAL 1 SECOND"
        ),
    );
    (t_text, want, seen)
}

fn restore_to_time_undoes_a_drop(lab: &Lab) -> Result<(), String> {
    let (t_text, want, seen) = write_around_t(lab, "r", 8);
    let after = sql(lab, "db1", "SELECT COUNT(*) FROM app.w");
    expect(want.code == 0 && after.code == 0, "count rows", &want)?;
    let n_after: i64 = after.stdout.trim().parse().unwrap_or(0);
    let want_n: i64 = want
        .stdout
        .split('\t')
        .next()
        .unwrap_or("0")
        .trim()
        .parse()
        .unwrap_or(0);
    expect(
        want_n > 20 && n_after > want_n && seen as i64 >= want_n,
        &format!("rows before T ({want_n}) and after it ({n_after}); the writer saw {seen}"),
        &want,
    )?;
    let drop = sql(lab, "db1", "DROP TABLE app.w");
    expect(drop.code == 0, "yesterday's mistake: DROP TABLE", &drop)?;
    // The archive must hold the drop's binlog file before the restore can stop short of it.
    std::thread::sleep(Duration::from_secs(45));
    let started = Instant::now();
    let r = lab.kiln(&["restore", ENV, "--to-time", &t_text, "--yes"]);
    expect(
        r.code == 0 && r.stdout.contains("replayed"),
        &format!("kiln restore --to-time '{t_text}'"),
        &r,
    )?;
    println!(
        "      restore --to-time: {:.1} s, {want_n} rows up to {t_text}",
        started.elapsed().as_secs_f64()
    );
    // Into one node alone: the others left the cluster for it and rejoined by state
    // transfer — incremental: the same history, and the lab's restore is far smaller than
    // the restored node's gcache.
    for host in ["db2", "db3"] {
        let rejoined = r
            .stdout
            .lines()
            .find(|l| l.starts_with(&format!("{host}: rejoined by IST")));
        expect(
            r.stdout.contains(&format!(
                "{host}: MariaDB stopped (the restore goes into db1 alone"
            )) && rejoined.is_some(),
            &format!("{host} left the cluster for the restore and rejoined it by IST"),
            &r,
        )?;
        println!("      {}", rejoined.unwrap_or_default());
    }
    whole_with(lab, &want)?;
    Ok(())
}

/// `kiln restore --physical --to-time T`: the backup's physical copy becomes db1's data
/// directory, a new cluster (a new history) forms from it, the archived binary logs are
/// replayed up to T, db2 and db3 rejoin by full state transfer, and a new base backup is
/// taken; a `DELETE` after T is undone on every node.
fn physical_restore_to_time(lab: &Lab) -> Result<(), String> {
    // A base backup with a physical copy (the archiver's first one takes none).
    let b = lab.kiln(&["backup", ENV]);
    expect(
        b.code == 0 && b.stdout.contains("physical copy"),
        "kiln backup (with the physical copy)",
        &b,
    )?;
    let uuid = |host: &str| {
        sql(
            lab,
            host,
            "SHOW GLOBAL STATUS LIKE 'wsrep_cluster_state_uuid'",
        )
        .stdout
        .trim()
        .split('\t')
        .nth(1)
        .unwrap_or_default()
        .to_string()
    };
    let before = uuid("db1");
    // The old timeline's newest base: retention must keep it after the restore's new base
    // (a new history) becomes the newest of the day.
    let list = lab.sh("db1", "kiln-backup list | head -n 1");
    let old_base = list
        .stdout
        .split_whitespace()
        .next()
        .unwrap_or_default()
        .to_string();
    expect(
        list.code == 0 && list.stdout.contains(" complete"),
        "the newest backup before the restore",
        &list,
    )?;
    let (t_text, want, seen) = write_around_t(lab, "p", 6);
    expect(
        want.code == 0 && seen > 40,
        &format!("rows written ({seen} by the writer)"),
        &want,
    )?;
    let mistake = sql(lab, "db1", "DELETE FROM app.w");
    expect(
        mistake.code == 0,
        "the mistake: DELETE FROM app.w",
        &mistake,
    )?;
    std::thread::sleep(Duration::from_secs(45));
    let started = Instant::now();
    let r = lab.kiln(&["restore", ENV, "--physical", "--to-time", &t_text, "--yes"]);
    expect(
        r.code == 0
            && r.stdout.contains("a new Galera cluster formed from it")
            && r.stdout.contains("replayed")
            && r.stdout.contains("a new base backup of the restored data"),
        &format!("kiln restore --physical --to-time '{t_text}'"),
        &r,
    )?;
    println!(
        "      restore --physical --to-time (with the new base backup): {:.1} s",
        started.elapsed().as_secs_f64()
    );
    for host in ["db2", "db3"] {
        let rejoined = r
            .stdout
            .lines()
            .find(|l| l.starts_with(&format!("{host}: rejoined by SST")));
        expect(
            rejoined.is_some(),
            &format!("{host} rejoined the new cluster by SST (its state is of the old history)"),
            &r,
        )?;
        println!("      {}", rejoined.unwrap_or_default());
    }
    let after = uuid("db1");
    expect(
        !before.is_empty() && !after.is_empty() && before != after,
        &format!("a new cluster history (state UUID {before} before, {after} after)"),
        &r,
    )?;
    whole_with(lab, &want)?;
    let list = lab.sh("db1", "kiln-backup list");
    expect(
        list.stdout
            .lines()
            .next()
            .is_some_and(|l| !l.starts_with(&old_base))
            && list.stdout.contains(&format!("{old_base} complete")),
        &format!(
            "retention kept {old_base}, the left timeline's base of the day, beside the \
             restore's new one"
        ),
        &list,
    )?;
    let kept = lab.sh("db1", "test -d /var/lib/mysql.before-restore");
    expect(
        kept.code == 0,
        "the data directory before the restore is kept",
        &kept,
    )
}

/// After a restore to T: the cluster is whole again (3 nodes) and every node holds exactly
/// `want` (count, newest id and time of the rows committed at or before T).
fn whole_with(lab: &Lab, want: &Run) -> Result<(), String> {
    let size = sql(lab, "db1", "SHOW GLOBAL STATUS LIKE 'wsrep_cluster_size'");
    expect(
        size.code == 0 && size.stdout.trim().split('\t').nth(1) == Some("3"),
        "the cluster is whole again (3 nodes)",
        &size,
    )?;
    for host in ["db1", "db2", "db3"] {
        let got = sql(lab, host, "SELECT COUNT(*), MAX(id), MAX(t) FROM app.w");
        expect(
            got.code == 0 && got.stdout.trim() == want.stdout.trim(),
            &format!(
                "{host}: exactly the rows committed at or before T ({} wanted, {} got)",
                want.stdout.trim(),
                got.stdout.trim()
            ),
            &got,
        )?;
    }
    Ok(())
}

/// Deletes every database container while a writer commits, rebuilds, checks the rows.
fn drill(lab: &Lab, round: u32) -> Result<(), String> {
    let tag = format!("d{round}");
    let w = Writer::start(lab, "db1", &tag);
    // Long enough for the archive to hold rows older than 60 s at the loss.
    std::thread::sleep(Duration::from_secs(75));
    let loss = now();
    for h in ["db1", "db2", "db3"] {
        let r = lab.kiln(&["lab", "destroy", ENV, "--host", h]);
        expect(r.code == 0, &format!("destroy {h}"), &r)?;
    }
    let rows = w.stop();
    ensure(
        rows.len() > 300,
        &format!("the writer committed {} rows", rows.len()),
    )?;
    let started = Instant::now();
    let r = lab.kiln(&["rebuild", ENV, "--yes"]);
    let rto = started.elapsed().as_secs_f64();
    expect(
        r.code == 0 && r.stdout.contains("restored to the latest archived point"),
        &format!("drill {round}: kiln rebuild"),
        &r,
    )?;
    // The rebuild's timeline (its phases and their durations), for BENCHMARKS.md.
    for l in r.stdout.lines().skip_while(|l| !l.contains("timeline")) {
        println!("      {l}");
    }
    let got = sql(
        lab,
        "db2",
        &format!("SELECT COUNT(*), MAX(n), UNIX_TIMESTAMP(MAX(t)) FROM app.w WHERE tag = '{tag}'"),
    );
    let f: Vec<&str> = got.stdout.trim().split('\t').collect();
    expect(
        got.code == 0 && f.len() == 3,
        "rows after the rebuild",
        &got,
    )?;
    let max_id: i64 = f[1].parse().unwrap_or(-1);
    let newest: f64 = f[2].parse().unwrap_or(0.0);
    // Every row committed more than 60 s before the loss is there: numbers 1..=must, each
    // once (the writer commits one row at a time, in order).
    let must = rows
        .iter()
        .filter(|(_, t)| {
            let r = common::local("date", &["-u", "-d", &format!("{t} UTC"), "+%s"]);
            r.stdout.trim().parse::<f64>().unwrap_or(f64::MAX) < loss - 60.0
        })
        .map(|(id, _)| *id)
        .max()
        .unwrap_or(i64::MAX);
    let ids = sql(
        lab,
        "db2",
        &format!("SELECT COUNT(DISTINCT n) FROM app.w WHERE tag = '{tag}' AND n <= {must}"),
    );
    let min_id: i64 = 1;
    let present: i64 = ids.stdout.trim().parse().unwrap_or(-1);
    println!(
        "      drill {round}: RPO {:.1} s (loss at {}, newest restored row {}), RTO {:.0} s, {} rows committed, newest restored row no. {max_id}, every row up to no. {must} present: {}",
        loss - newest,
        utc(loss),
        utc(newest),
        rto,
        rows.len(),
        present == must - min_id + 1
    );
    expect(
        max_id >= must && present == must - min_id + 1,
        &format!(
            "drill {round}: every row committed more than 60 s before the loss (nos. {min_id}..{must}) is back ({present} of them, newest no. {max_id})"
        ),
        &got,
    )?;
    expect(
        loss - newest <= 60.0,
        &format!("drill {round}: RPO {:.1} s ≤ 60 s", loss - newest),
        &got,
    )
}

fn drill_1(lab: &Lab) -> Result<(), String> {
    drill(lab, 1)
}

fn drill_2(lab: &Lab) -> Result<(), String> {
    drill(lab, 2)
}

/// Python on a node with kiln-backup loaded as a module and an S3 client.
fn py(lab: &Lab, host: &str, code: &str) -> Run {
    lab.sh(
        host,
        &format!(
            "python3 - <<'PYEOF'\nimport importlib.machinery, importlib.util, json, sys, time\nloader = importlib.machinery.SourceFileLoader('kb', '/usr/local/sbin/kiln-backup')\nspec = importlib.util.spec_from_loader('kb', loader)\nkb = importlib.util.module_from_spec(spec)\nloader.exec_module(kb)\ncfg = kb.load_config()\ns3 = kb.s3_client(cfg)\n{code}\nPYEOF"
        ),
    )
}

fn archiver_takeover(lab: &Lab) -> Result<(), String> {
    // After the rebuild, a peer that archived while db1 came back stands by again: its last
    // heartbeat ages out.
    let started = Instant::now();
    let who = loop {
        let who = py(
            lab,
            "db2",
            "hbs = kb.heartbeats(s3, cfg)\nfresh = [h for h, b in hbs.items() if time.time() - b['time'] < 30]\nprint(' '.join(sorted(fresh)))",
        );
        if who.stdout.trim() == "db1" || started.elapsed() > Duration::from_secs(120) {
            break who;
        }
        std::thread::sleep(Duration::from_secs(5));
    };
    expect(
        who.code == 0 && who.stdout.trim() == "db1",
        "db1 (the first peer) archives alone",
        &who,
    )?;
    let w = Writer::start(lab, "db3", "t");
    std::thread::sleep(Duration::from_secs(5));
    let lost = Instant::now();
    let r = lab.kiln(&["lab", "destroy", ENV, "--host", "db1"]);
    expect(r.code == 0, "destroy db1, the archiving node", &r)?;
    let mut took = None;
    while lost.elapsed() < Duration::from_secs(150) {
        let hb = py(
            lab,
            "db2",
            "hbs = kb.heartbeats(s3, cfg)\nb = hbs.get('db2')\nprint('yes' if b and time.time() - b['time'] < 30 and b['until'] > time.time() - 40 else 'no')",
        );
        if hb.stdout.trim() == "yes" {
            took = Some(lost.elapsed().as_secs_f64());
            break;
        }
        std::thread::sleep(Duration::from_secs(3));
    }
    let rows = w.stop();
    let Some(secs) = took else {
        return Err("no other node archived within 150 s of losing db1".into());
    };
    println!(
        "      db2 archives {secs:.0} s after db1 was lost ({} rows written meanwhile)",
        rows.len()
    );
    ensure(secs <= 120.0, &format!("takeover in {secs:.0} s ≤ 120 s"))?;
    // Let db2 archive past the last write, then: the chain from the latest base backup
    // reaches the newest GTID with no hole across the takeover.
    std::thread::sleep(Duration::from_secs(45));
    let chain = py(
        lab,
        "db2",
        "found = kb.backups(s3, cfg)\nstamp = sorted(s for s, b in found.items() if b['complete'])[-1]\nm = json.loads(s3.get_bytes(cfg['bucket'], cfg['prefix'] + '/' + stamp + '/manifest.json'))\nb = m['binlog']\nsteps, reached, gap = kb.chain(kb.archived(s3, cfg), b['history'], b['domain'], kb.gtid_seq(b['gtid'], b['domain']))\nnow_seq = kb.gtid_seq(kb.sql(cfg, 'SELECT @@gtid_binlog_pos')[0][0], b['domain'])\nprint('reached', reached, 'current', now_seq, 'gap', gap, 'sources', ' '.join(sorted(set(f['src'].split('-')[0] for f, _ in steps))))",
    );
    let out = chain.stdout.trim().to_string();
    let nums: Vec<&str> = out.split_whitespace().collect();
    expect(
        chain.code == 0
            && nums.len() >= 8
            && nums[1] == nums[3]
            && nums[5] == "False"
            && out.contains("db2"),
        "the archive reaches the newest write with no hole, db2's files after the takeover",
        &chain,
    )
}

/// The backup hosts hold the backup user's key, not MinIO's root key: on both targets it
/// reads the backup bucket and is refused MinIO's admin API and any other bucket.
fn backup_hosts_hold_no_root_key(lab: &Lab) -> Result<(), String> {
    let r = py(
        lab,
        "db1",
        "import kiln_s3\nenv = kiln_s3.read_env_file('/etc/kiln/backup/s3.env')\nprint('key', env['S3_ACCESS_KEY'], env['REPLICA_ACCESS_KEY'])\ndef refused(what, fn):\n    try:\n        fn(); print('allowed', what)\n    except kiln_s3.S3Error as e:\n        print('refused', what, e.status)\nfor name, url, a, k in (('storage', cfg['endpoint'], env['S3_ACCESS_KEY'], env['S3_SECRET_KEY']), ('storage2', cfg['replica']['endpoint'], env['REPLICA_ACCESS_KEY'], env['REPLICA_SECRET_KEY'])):\n    me = kiln_s3.S3(url, a, k)\n    print(name, 'lists', len(me.list(cfg['bucket'], cfg['prefix'] + '/')) > 0)\n    refused(name + ' admin', lambda: me.admin('GET', 'list-users'))\n    refused(name + ' new bucket', lambda: me.make_bucket('kiln-other'))",
    );
    expect(
        r.code == 0
            && r.stdout.trim()
                == "key kiln-backup kiln-backup\nstorage lists True\nrefused storage admin 403\nrefused storage new bucket 403\nstorage2 lists True\nrefused storage2 admin 403\nrefused storage2 new bucket 403",
        "the backup hosts' key reads the backup bucket on both targets and nothing else",
        &r,
    )
}

/// Every object in the backup bucket is age ciphertext; none reads without the identity,
/// and none holds a row's text; with it, the tool reads them (restore used them above).
fn objects_are_encrypted(lab: &Lab) -> Result<(), String> {
    let r = py(
        lab,
        "db2",
        "import kiln_s3\nraw = s3.s3\nkeys = [o['key'] for o in raw.list(cfg['bucket'], cfg['prefix'] + '/')]\nplain = 0\nleak = 0\nfor k in keys:\n    b = raw.get_bytes(cfg['bucket'], k)\n    if not b.startswith(b'age-encryption.org/v1\\n'):\n        plain += 1; print('PLAIN', k)\n    if b'INSERT INTO' in b or b'app.w' in b or b'CREATE TABLE' in b:\n        leak += 1\nopen('/root/one.age', 'wb').write(raw.get_bytes(cfg['bucket'], keys[0]))\nprint('objects', len(keys), 'plain', plain, 'leak', leak)",
    );
    let out = r.stdout.trim().to_string();
    expect(
        r.code == 0 && out.ends_with("plain 0 leak 0") && !out.contains("objects 0 "),
        "every object in the bucket is age ciphertext with no row text in it",
        &r,
    )?;
    let d = lab.sh("db2", "age --decrypt /root/one.age >/dev/null 2>&1 && echo OPENED || echo REFUSED; age-keygen 2>/dev/null > /root/other.key; age --decrypt --identity /root/other.key /root/one.age >/dev/null 2>&1 && echo OPENED || echo REFUSED; rm -f /root/one.age /root/other.key");
    expect(
        d.stdout.trim() == "REFUSED\nREFUSED",
        "an object does not decrypt without the identity (nor with another one)",
        &d,
    )
}

/// The first S3 target's host is deleted: `kiln restore` reads everything from the
/// replica and brings back the latest point.
fn replica_serves_when_the_first_target_is_gone(lab: &Lab) -> Result<(), String> {
    let both = py(
        lab,
        "db2",
        "a = set(o['key'] for o in s3.s3.primary.list(cfg['bucket'], cfg['prefix'] + '/'))\nb = set(o['key'] for o in s3.s3.replica.list(cfg['bucket'], cfg['prefix'] + '/'))\nprint(len(a), len(a - b))",
    );
    let n: Vec<i64> = both
        .stdout
        .split_whitespace()
        .filter_map(|x| x.parse().ok())
        .collect();
    expect(
        both.code == 0 && n.len() == 2 && n[0] > 0 && n[1] == 0,
        "every object of the first target is on the replica",
        &both,
    )?;
    let want = sql(lab, "db2", "SELECT COUNT(*), MAX(id) FROM app.w");
    let r = lab.kiln(&["lab", "destroy", ENV, "--host", "storage"]);
    expect(r.code == 0, "destroy the first S3 target's host", &r)?;
    let r = lab.kiln(&["restore", ENV, "--yes"]);
    expect(
        r.code == 0 && r.stdout.contains("reading the replica") && r.stdout.contains("replayed"),
        "kiln restore from the replica",
        &r,
    )?;
    let got = sql(lab, "db3", "SELECT COUNT(*), MAX(id) FROM app.w");
    expect(
        want.code == 0 && got.stdout.trim() == want.stdout.trim(),
        &format!(
            "the latest point from the replica ({} wanted, {} got)",
            want.stdout.trim(),
            got.stdout.trim()
        ),
        &got,
    )
}

const QA: &str = "pitrqa";

/// Anonymisation rules of the QA copy: names, emails and phones faked, deleted customers
/// left out, sessions emptied.
const RULES: &str = r#"media = "placeholder"

[tables."app.customers"]
columns = { name = "name", email = "email", phone = "phone", id = "keep" }
drop = [{ column = "status", equals = "deleted" }]

[tables."app.sessions"]
truncate = true
"#;

/// `SELECT ... ORDER BY id` of the QA copy's customers (the anonymised columns).
fn qa_customers(lab: &Lab) -> Result<String, String> {
    let r = lab.sh_in(
        QA,
        "db1",
        "mariadb -N -B -e 'SELECT id, name, email, IFNULL(phone, \"-\"), status, updated FROM app.customers ORDER BY id'",
    );
    expect(r.code == 0, "read the QA copy's customers", &r)?;
    Ok(r.stdout)
}

fn qa_with_anonymised_data(lab: &Lab) -> Result<(), String> {
    // Customers and sessions on the source: 40 customers, every 8th deleted.
    let mut rows = vec![];
    for i in 1..=40 {
        rows.push(format!(
            "({i}, 'Realname{i} Customer', 'person{i}@customer.example', '+44 20 7946 {i:04}', '{}')",
            if i % 8 == 0 { "deleted" } else { "active" }
        ));
    }
    let ddl = format!(
        "CREATE TABLE app.customers (id INT PRIMARY KEY, name VARCHAR(64) NOT NULL, email VARCHAR(191) NOT NULL UNIQUE, phone VARCHAR(32) NULL, status VARCHAR(16) NOT NULL, updated TIMESTAMP NOT NULL DEFAULT CURRENT_TIMESTAMP ON UPDATE CURRENT_TIMESTAMP); INSERT INTO app.customers (id, name, email, phone, status) VALUES {}; CREATE TABLE app.sessions (id INT PRIMARY KEY, token VARCHAR(64)); INSERT INTO app.sessions VALUES (1, 'secret-session-token'); SELECT UNIX_TIMESTAMP()",
        rows.join(", ")
    );
    let r = lab.sh("db1", &format!("mariadb -N -B -e \"{ddl}\""));
    expect(r.code == 0, "customers on the source", &r)?;
    let written: f64 = r.stdout.trim().parse().unwrap_or(0.0);
    // The seed takes the source's latest point: the base backup of the first apply plus the
    // archived binary logs, so these rows arrive through the binlog replay. Wait until the
    // archive holds them.
    let start = Instant::now();
    loop {
        let h = lab.sh("db1", "kiln-backup health");
        let up_to = h
            .stdout
            .split("complete up to ")
            .nth(1)
            .map(|s| s.chars().take(19).collect::<String>())
            .unwrap_or_default();
        if !up_to.is_empty() && up_to > utc(written) {
            break;
        }
        if start.elapsed() > Duration::from_secs(150) {
            return Err(format!(
                "the archive never passed {}: {}",
                utc(written),
                h.all()
            ));
        }
        std::thread::sleep(Duration::from_secs(3));
    }
    std::fs::write(lab.path("environments/qa.anonymize.toml"), RULES).map_err(|e| e.to_string())?;
    let r = lab.kiln(&[
        "clone",
        ENV,
        QA,
        "--hosts",
        "lab@10.233.0.56",
        "--drop",
        "db2",
        "--drop",
        "db3",
        "--with-data",
        "--anonymize",
        "environments/qa.anonymize.toml",
    ]);
    expect(
        r.code == 0
            && r.stdout.contains("[seed]")
            && r.stdout.contains("anonymize = \"qa.anonymize.toml\"")
            && r.stdout.contains("[secrets.anonymize_key]"),
        "clone --with-data --anonymize writes [seed] and the anonymisation key",
        &r,
    )?;
    let r = lab.kiln(&["plan", QA, "--offline"]);
    expect(
        r.code == 0
            && r.stdout.contains("Seed: after a full apply")
            && r.stdout.contains("2 table rule(s), media: placeholder"),
        "the plan says the apply will seed",
        &r,
    )?;
    let r = lab.kiln(&["lab", "up", QA]);
    expect(r.code == 0, "lab up of the QA copy", &r)?;
    let r = lab.kiln(&["apply", QA, "--yes"]);
    expect(
        r.code == 0
            && r.stdout
                .contains("anonymised 2 table(s) in the scratch server")
            && r.stdout.contains("SEEDED ")
            && r.stdout
                .contains("row counts and checksums equal the backup's")
            && r.stdout.contains("recorded: seeded from pitrtest"),
        "the first apply of the QA copy seeds it from the source's latest point, anonymised",
        &r,
    )?;
    // Row counts: the source's, minus the dropped rows and the truncated table.
    let count = |env: &str, t: &str| {
        let r = lab.sh_in(
            env,
            "db1",
            &format!("mariadb -N -B -e 'SELECT COUNT(*) FROM app.{t}'"),
        );
        r.stdout.trim().to_string()
    };
    let got = (
        count(QA, "customers"),
        count(QA, "sessions"),
        count(ENV, "customers"),
    );
    if got != ("35".into(), "0".into(), "40".into()) {
        return Err(format!(
            "rows (QA customers, QA sessions, source customers): {got:?}, want 35, 0, 40"
        ));
    }
    let first = qa_customers(lab)?;
    for leak in ["Realname", "customer.example", "7946", "deleted"] {
        if first.contains(leak) {
            return Err(format!(
                "the QA copy still holds `{leak}` from the source:\n{first}"
            ));
        }
    }
    if first.lines().count() != 35
        || !first.lines().all(|l| {
            l.split('\t')
                .nth(2)
                .is_some_and(|e| e.ends_with("@example.invalid"))
        })
    {
        return Err(format!("every QA email is a fake: {first}"));
    }
    let src = lab.sh(
        "db1",
        "mariadb -N -B -e 'SELECT email FROM app.customers WHERE id = 1'",
    );
    expect(
        src.stdout.trim() == "person1@customer.example",
        "the source's data is untouched",
        &src,
    )?;
    // The same data seeded again gives the same fakes (QA bugs reproduce).
    let r = lab.kiln(&["restore", QA, "--from-env", ENV, "--yes"]);
    expect(
        r.code == 0 && r.stdout.contains("SEEDED "),
        "seeding again",
        &r,
    )?;
    let second = qa_customers(lab)?;
    if second != first {
        return Err(format!(
            "seeding twice gave other values:\n{first}\n---\n{second}"
        ));
    }
    println!("      QA copy: 35 of 40 customers, every name/email/phone faked, the same on a second seed");
    // A later apply does not seed again.
    let r = lab.kiln(&["apply", QA, "--yes"]);
    expect(
        r.code == 0 && r.stdout.contains("was seeded already") && !r.stdout.contains("SEEDED "),
        "a later apply does not seed again",
        &r,
    )?;
    let r = lab.kiln(&["lab", "down", QA]);
    expect(r.code == 0, "lab down of the QA copy", &r)
}

fn down(lab: &Lab) -> Result<(), String> {
    if lab.path(&format!("environments/{QA}.toml")).exists() {
        let r = lab.kiln(&["lab", "down", QA]);
        expect(r.code == 0, "lab down of the QA copy", &r)?;
    }
    let r = lab.kiln(&["lab", "down", ENV]);
    expect(r.code == 0, "lab down", &r)
}

fn main() {
    use age::secrecy::ExposeSecret;
    let id = age::x25519::Identity::generate();
    let lab = Lab::new(ENV, &env_toml(&id.to_public().to_string()))
        .with_secret("PITR_AGE_IDENTITY", id.to_string().expose_secret())
        // The QA copy (`kiln clone` names its variable) restores its own backups, which
        // the inherited module parameters encrypt to the same recipient.
        .with_secret("PITR_AGE_IDENTITY_PITRQA", id.to_string().expose_secret());
    let scenarios: &[common::Scenario<'_, Lab>] = &[
        ("pitr_lab_up", &up),
        ("apply_then_verify", &apply_then_verify),
        (
            "backup_hosts_hold_no_root_key",
            &backup_hosts_hold_no_root_key,
        ),
        ("qa_with_anonymised_data", &qa_with_anonymised_data),
        (
            "restore_to_time_undoes_a_drop",
            &restore_to_time_undoes_a_drop,
        ),
        ("physical_restore_to_time", &physical_restore_to_time),
        ("drill_1", &drill_1),
        ("drill_2", &drill_2),
        ("objects_are_encrypted", &objects_are_encrypted),
        ("archiver_takeover", &archiver_takeover),
        (
            "replica_serves_when_the_first_target_is_gone",
            &replica_serves_when_the_first_target_is_gone,
        ),
        ("no_secret_in_any_output", &|l: &Lab| {
            l.no_secret_in_any_output()
        }),
    ];
    common::run_suite(
        "pitr_e2e",
        lab,
        scenarios,
        &down,
        common::Policy {
            stop_at_failure: true,
            always: &["no_secret_in_any_output"],
        },
    );
}
