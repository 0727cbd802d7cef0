#!/usr/bin/python3
# Managed by kiln (backup module). kiln-backup: logical MariaDB backups to an S3 bucket,
# a mirror of the media bucket, retention, health, restore and restore verification.
#
#   kiln-backup run                      dump every database + accounts, manifest, upload,
#                                        mirror media, apply retention
#   kiln-backup health                   exit 1 when the newest backup is older than allowed
#   kiln-backup verify [--from T]        restore into a scratch server, compare row counts
#                                        and CHECKSUM TABLE with the manifest; exit 1 on mismatch
#   kiln-backup restore [--from T|latest] [--no-media] [--no-users]
#                                        check the manifest and every file, then restore
#   kiln-backup list                     backups in the bucket, newest first
#   kiln-backup prune [--prefix P] [--dry-run]   apply retention now
#   kiln-backup s3 ls|put|get|rm BUCKET [KEY] [FILE]   the configured S3 endpoint, by hand
#
# Configuration: /etc/kiln/backup/backup.json (no secrets); S3 credentials from
# /etc/kiln/backup/s3.env (mode 0600). No credential is ever put on a command line or
# printed. Backups are s3://BUCKET/PREFIX/YYYYMMDDTHHMMSSZ/{db-NAME.sql.gz, users.sql.gz,
# manifest.json, manifest.json.sha256}; a backup without its manifest is incomplete.
import argparse
import datetime
import fcntl
import gzip
import hashlib
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.environ.get("KILN_BACKUP_LIB", "/usr/local/lib/kiln"))

# `kiln restore --into HOST` runs the tool from a private directory with these overridden.
CONFIG = os.environ.get("KILN_BACKUP_CONFIG", "/etc/kiln/backup/backup.json")
CREDENTIALS = os.environ.get("KILN_BACKUP_CREDENTIALS", "/etc/kiln/backup/s3.env")
STAMP = "%Y%m%dT%H%M%SZ"
SYSTEM_DBS = ("information_schema", "mysql", "performance_schema", "sys")


class Refused(Exception):
    """The backup cannot be trusted: nothing was restored."""


def log(msg):
    print("kiln-backup: " + msg, flush=True)


# ---------------------------------------------------------------------------------------
# Retention (pure)
# ---------------------------------------------------------------------------------------
def parse_stamp(s):
    return datetime.datetime.strptime(s, STAMP).replace(tzinfo=datetime.timezone.utc)


def retention(stamps, daily=7, weekly=4, monthly=12):
    """The backups to keep, from timestamps (YYYYMMDDTHHMMSSZ) of complete backups.

    Each rule keeps the newest backup of each of its N most recent periods that have a
    backup: `daily` calendar days, `weekly` ISO weeks, `monthly` calendar months (UTC).
    The rules are independent and their union is kept; the newest backup is always kept.
    """
    ordered = sorted(set(stamps), reverse=True)
    keep = set(ordered[:1])
    rules = (
        (daily, lambda d: d.date()),
        (weekly, lambda d: d.isocalendar()[:2]),
        (monthly, lambda d: (d.year, d.month)),
    )
    for count, period in rules:
        seen = set()
        for s in ordered:
            if len(seen) >= count:
                break
            p = period(parse_stamp(s))
            if p not in seen:
                seen.add(p)
                keep.add(s)
    return keep


# ---------------------------------------------------------------------------------------
# Set-up
# ---------------------------------------------------------------------------------------
def load_config():
    with open(CONFIG) as f:
        cfg = json.load(f)
    cfg.setdefault("prefix", "mariadb")
    cfg.setdefault("databases", [])
    cfg.setdefault("keep", {"daily": 7, "weekly": 4, "monthly": 12})
    cfg.setdefault("max_age_hours", 26)
    cfg.setdefault("workdir", "/var/lib/kiln-backup")
    cfg.setdefault("mysql_defaults", "")
    return cfg


def s3_client(cfg):
    import kiln_s3
    env = kiln_s3.read_env_file(CREDENTIALS)
    return kiln_s3.S3(cfg["endpoint"], env["S3_ACCESS_KEY"], env["S3_SECRET_KEY"],
                      region=cfg.get("region", "us-east-1"))


def lock(cfg):
    os.makedirs(cfg["workdir"], mode=0o700, exist_ok=True)
    f = open(os.path.join(cfg["workdir"], "lock"), "w")
    try:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        log("another kiln-backup run holds %s/lock; waiting" % cfg["workdir"])
        fcntl.flock(f, fcntl.LOCK_EX)
    return f


def mysql_cmd(cfg, *args, socket=None):
    if socket:
        return ["mariadb", "--no-defaults", "--socket=" + socket, "-uroot"] + list(args)
    cmd = ["mariadb"]
    if cfg["mysql_defaults"]:
        cmd.append("--defaults-extra-file=" + cfg["mysql_defaults"])
    return cmd + list(args)


def dump_cmd(cfg, *args):
    cmd = ["mariadb-dump"]
    if cfg["mysql_defaults"]:
        cmd.append("--defaults-extra-file=" + cfg["mysql_defaults"])
    return cmd + list(args)


def sql(cfg, statement, socket=None):
    r = subprocess.run(mysql_cmd(cfg, "-N", "-B", "-e", statement, socket=socket),
                       capture_output=True,
                       text=True)
    if r.returncode != 0:
        raise RuntimeError("mariadb: %s" % r.stderr.strip())
    return [line.split("\t") for line in r.stdout.splitlines()]


def qi(name):
    return "`" + name.replace("`", "``") + "`"


def databases(cfg):
    if cfg["databases"]:
        return list(cfg["databases"])
    return [r[0] for r in sql(cfg, "SHOW DATABASES") if r[0] not in SYSTEM_DBS]


def table_stats(cfg, db, socket=None):
    """{table: {rows, checksum}} of the base tables of db."""
    tables = [r[0] for r in sql(cfg, "SELECT TABLE_NAME FROM information_schema.TABLES "
                                     "WHERE TABLE_SCHEMA = '%s' AND TABLE_TYPE = 'BASE TABLE' "
                                     "ORDER BY TABLE_NAME" % db.replace("'", "''"), socket)]
    stats = {}
    if not tables:
        return stats
    for t in tables:
        n = sql(cfg, "SELECT COUNT(*) FROM %s.%s" % (qi(db), qi(t)), socket)[0][0]
        stats[t] = {"rows": int(n), "checksum": None}
    rows = sql(cfg, "CHECKSUM TABLE " + ", ".join("%s.%s" % (qi(db), qi(t)) for t in tables),
               socket)
    for name, value in rows:
        t = name.split(".", 1)[1]
        if t in stats:
            stats[t]["checksum"] = value
    return stats


def sha256_file(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def pipe_to_gzip(cmd, path):
    """Runs cmd, compressing its stdout into path; raises on any failure."""
    with open(path, "wb") as raw:
        p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        with gzip.GzipFile(fileobj=raw, mode="wb", mtime=0) as gz:
            shutil.copyfileobj(p.stdout, gz, 1 << 20)
        err = p.stderr.read().decode("utf-8", "replace")
        if p.wait() != 0:
            raise RuntimeError("%s failed: %s" % (cmd[0], err.strip()))


# ---------------------------------------------------------------------------------------
# Backups in the bucket
# ---------------------------------------------------------------------------------------
def backups(s3, cfg, prefix=None):
    """{stamp: {"complete": bool, "keys": [...]}} under the prefix."""
    prefix = (prefix or cfg["prefix"]).rstrip("/") + "/"
    out = {}
    for o in s3.list(cfg["bucket"], prefix):
        rest = o["key"][len(prefix):]
        stamp, _, name = rest.partition("/")
        if not re.fullmatch(r"\d{8}T\d{6}Z", stamp):
            continue
        b = out.setdefault(stamp, {"complete": False, "keys": []})
        b["keys"].append(o["key"])
        if name == "manifest.json":
            b["complete"] = True
    return out


def pick(s3, cfg, which):
    found = backups(s3, cfg)
    complete = sorted((s for s, b in found.items() if b["complete"]), reverse=True)
    if not complete:
        raise Refused("no complete backup under s3://%s/%s/" % (cfg["bucket"], cfg["prefix"]))
    if which in (None, "", "latest"):
        return complete[0]
    if which not in found:
        raise Refused("no backup %s (have: %s)" % (which, ", ".join(complete[:10])))
    if which not in complete:
        raise Refused("backup %s is incomplete (no manifest)" % which)
    return which


SAFE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,200}$")


def check_manifest_names(manifest):
    """A manifest names the files restore writes into its work directory and loads: only
    plain names (no `/`, no `..`, no leading dot or dash) are accepted, so a tampered or
    corrupt manifest cannot make restore write or read outside that directory."""
    files = manifest.get("files")
    if not isinstance(files, dict):
        raise Refused("manifest has no file list")
    for name in files:
        if not isinstance(name, str) or not SAFE_NAME.match(name) or ".." in name:
            raise Refused("manifest names the file %r: not a plain file name; refusing" % (name,))
    for db, meta in (manifest.get("databases") or {}).items():
        if not isinstance(meta, dict) or meta.get("file") not in files:
            raise Refused("manifest: database %r names a file that is not in its file list" % (db,))


def fetch(s3, cfg, stamp, workdir):
    """Downloads a backup and checks it: the manifest against its sha256, every file
    against the manifest. Raises Refused on any difference."""
    base = "%s/%s/" % (cfg["prefix"].rstrip("/"), stamp)
    try:
        raw = s3.get_bytes(cfg["bucket"], base + "manifest.json")
        want = s3.get_bytes(cfg["bucket"], base + "manifest.json.sha256").decode().split()[0]
    except Exception as e:  # noqa: BLE001 - any failure to read it means: do not trust it
        raise Refused("cannot read the manifest of %s: %s" % (stamp, e))
    if hashlib.sha256(raw).hexdigest() != want:
        raise Refused("manifest of %s does not match manifest.json.sha256: corrupted" % stamp)
    try:
        manifest = json.loads(raw)
    except ValueError as e:
        raise Refused("manifest of %s is not JSON: %s" % (stamp, e))
    if manifest.get("timestamp") != stamp:
        raise Refused("manifest of %s names backup %r" % (stamp, manifest.get("timestamp")))
    check_manifest_names(manifest)
    for name, meta in sorted(manifest["files"].items()):
        path = os.path.join(workdir, name)
        s3.get_file(cfg["bucket"], base + name, path)
        got = sha256_file(path)
        if got != meta["sha256"] or os.path.getsize(path) != meta["size"]:
            raise Refused("%s of backup %s: sha256 %s, manifest says %s" %
                          (name, stamp, got, meta["sha256"]))
    log("backup %s: manifest and %d file(s) check out" % (stamp, len(manifest["files"])))
    return manifest


# ---------------------------------------------------------------------------------------
# run
# ---------------------------------------------------------------------------------------
def mirror_media(s3, cfg, previous):
    """Copies media objects missing or changed in the mirror bucket; deletes nothing (a
    mirror that deletes would propagate an accident). Returns the index for the manifest."""
    src, dst = cfg.get("media_bucket"), cfg.get("media_mirror_bucket")
    if not src or not dst:
        return None
    s3.make_bucket(dst)
    known = {}
    if previous:
        known = (previous.get("media") or {}).get("objects") or {}
    mirror = {o["key"]: o for o in s3.list(dst)}
    index, copied = {}, 0
    with tempfile.TemporaryDirectory(dir=cfg["workdir"]) as tmp:
        for o in s3.list(src):
            k = o["key"]
            m = mirror.get(k)
            prev = known.get(k)
            # A listing's ETag says whether an object changed; a server that lists none
            # (an empty ETag) gets every object read and hashed instead.
            same_as_prev = bool(o["etag"]) and prev is not None and \
                prev["etag"] == o["etag"] and prev["size"] == o["size"]
            if same_as_prev and m is not None and m["size"] == o["size"]:
                index[k] = prev
                continue
            path = os.path.join(tmp, "object")
            s3.get_file(src, k, path)
            sha = sha256_file(path)
            in_mirror = m is not None and m["size"] == o["size"] and (
                (bool(o["etag"]) and m["etag"] == o["etag"])
                or (prev is not None and prev["sha256"] == sha))
            if not in_mirror:
                s3.put_file(dst, k, path, sha)
                copied += 1
            index[k] = {"size": o["size"], "etag": o["etag"], "sha256": sha}
            os.unlink(path)
    log("media: %d object(s) in %s, %d copied to %s" % (len(index), src, copied, dst))
    return {"bucket": src, "mirror": dst, "objects": index}


def previous_manifest(s3, cfg):
    try:
        stamp = pick(s3, cfg, "latest")
        base = "%s/%s/" % (cfg["prefix"].rstrip("/"), stamp)
        return json.loads(s3.get_bytes(cfg["bucket"], base + "manifest.json"))
    except Exception:  # noqa: BLE001 - only an optimisation (reusing media hashes)
        return None


def cmd_run(cfg, args):
    s3 = s3_client(cfg)
    s3.make_bucket(cfg["bucket"])
    stamp = datetime.datetime.now(datetime.timezone.utc).strftime(STAMP)
    base = "%s/%s/" % (cfg["prefix"].rstrip("/"), stamp)
    manifest = {"format": 1, "timestamp": stamp, "host": socket.gethostname(),
                "files": {}, "databases": {}}
    with tempfile.TemporaryDirectory(dir=cfg["workdir"]) as tmp:
        for db in databases(cfg):
            before = table_stats(cfg, db)
            name = "db-%s.sql.gz" % db
            pipe_to_gzip(dump_cmd(cfg, "--single-transaction", "--routines", "--triggers",
                                  "--events", "--hex-blob", "--databases", db),
                         os.path.join(tmp, name))
            after = table_stats(cfg, db)
            # Counts and checksums taken before and after the dump: equal means no write
            # reached the database meanwhile, so they describe the dump exactly.
            manifest["databases"][db] = {"file": name, "tables": after,
                                         "stable": before == after}
            if before != after:
                log("%s: written to during the dump; verification compares the table set only" % db)
        pipe_to_gzip(dump_cmd(cfg, "--system=users", "--insert-ignore"),
                     os.path.join(tmp, "users.sql.gz"))
        for name in sorted(os.listdir(tmp)):
            path = os.path.join(tmp, name)
            sha = s3.put_file(cfg["bucket"], base + name, path)
            manifest["files"][name] = {"sha256": sha, "size": os.path.getsize(path)}
        manifest["media"] = mirror_media(s3, cfg, previous_manifest(s3, cfg))
        raw = json.dumps(manifest, indent=2, sort_keys=True).encode()
        # The checksum first: a manifest is only ever visible with its checksum beside it.
        s3.put_bytes(cfg["bucket"], base + "manifest.json.sha256",
                     ("%s  manifest.json\n" % hashlib.sha256(raw).hexdigest()).encode())
        s3.put_bytes(cfg["bucket"], base + "manifest.json", raw)
    log("backup %s done: %d database(s) (%s), accounts, %s; s3://%s/%s" % (
        stamp, len(manifest["databases"]), ", ".join(manifest["databases"]) or "none",
        "%d media object(s)" % len(manifest["media"]["objects"]) if manifest["media"] else "no media",
        cfg["bucket"], base))
    prune(s3, cfg, cfg["prefix"], dry_run=False)
    state = os.path.join(cfg["workdir"], "last-success")
    with open(state + ".tmp", "w") as f:
        f.write(stamp + "\n")
    os.replace(state + ".tmp", state)
    return 0


# ---------------------------------------------------------------------------------------
# prune, list, health
# ---------------------------------------------------------------------------------------
def prune(s3, cfg, prefix, dry_run):
    found = backups(s3, cfg, prefix)
    complete = [s for s, b in found.items() if b["complete"]]
    k = cfg["keep"]
    keep = retention(complete, k["daily"], k["weekly"], k["monthly"])
    now = datetime.datetime.now(datetime.timezone.utc)
    drop = []
    for s, b in sorted(found.items()):
        if b["complete"] and s not in keep:
            drop.append(s)
        elif not b["complete"] and (now - parse_stamp(s)).total_seconds() > 2 * 86400:
            drop.append(s)  # a run that died two days ago will not finish
    for s in drop:
        if not dry_run:
            # The manifest goes first, so a half-deleted backup is incomplete, never wrong.
            keys = sorted(found[s]["keys"], key=lambda x: not x.endswith("/manifest.json"))
            for key in keys:
                s3.delete(cfg["bucket"], key)
    log("retention (%d daily, %d weekly, %d monthly): keeping %d, %s %d%s" % (
        k["daily"], k["weekly"], k["monthly"], len(keep),
        "would delete" if dry_run else "deleted", len(drop),
        (": " + " ".join(drop)) if drop else ""))
    return 0


def cmd_list(cfg, args):
    s3 = s3_client(cfg)
    for s, b in sorted(backups(s3, cfg).items(), reverse=True):
        print("%s %s" % (s, "complete" if b["complete"] else "incomplete"))
    return 0


def cmd_health(cfg, args):
    s3 = s3_client(cfg)
    complete = sorted((s for s, b in backups(s3, cfg).items() if b["complete"]), reverse=True)
    if not complete:
        log("UNHEALTHY: no complete backup under s3://%s/%s/" % (cfg["bucket"], cfg["prefix"]))
        return 1
    age = datetime.datetime.now(datetime.timezone.utc) - parse_stamp(complete[0])
    hours = age.total_seconds() / 3600
    if hours > cfg["max_age_hours"]:
        log("UNHEALTHY: newest backup %s is %.1f h old (at most %s h allowed)" %
            (complete[0], hours, cfg["max_age_hours"]))
        return 1
    log("newest backup %s is %.1f h old (at most %s h allowed)" %
        (complete[0], hours, cfg["max_age_hours"]))
    return 0


# ---------------------------------------------------------------------------------------
# restore, verify
# ---------------------------------------------------------------------------------------
def load_dump(cfg, path, socket=None):
    """Pipes a gzipped dump into mariadb (the server's, or a scratch server's socket)."""
    p = subprocess.Popen(mysql_cmd(cfg, socket=socket), stdin=subprocess.PIPE,
                         stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        with gzip.open(path, "rb") as gz:
            shutil.copyfileobj(gz, p.stdin, 1 << 20)
        p.stdin.close()
    except BrokenPipeError:
        pass
    err = p.stderr.read().decode("utf-8", "replace")
    if p.wait() != 0:
        raise RuntimeError("mariadb failed loading %s: %s" % (os.path.basename(path), err.strip()))


class ScratchServer:
    """A private MariaDB server for one verification: its own data directory under the
    work directory, a socket, no network, no configuration file read (so no Galera), gone
    afterwards. The backup is restored into it exactly as a real restore would load it
    (same database names, qualified names in triggers and routines included)."""

    def __init__(self, cfg):
        self.cfg = cfg

    def __enter__(self):
        self.dir = tempfile.mkdtemp(prefix="verify-", dir=self.cfg["workdir"])
        data = os.path.join(self.dir, "data")
        self.socket = os.path.join(self.dir, "mysqld.sock")
        r = subprocess.run(["mariadb-install-db", "--no-defaults", "--datadir=" + data,
                            "--user=root", "--auth-root-authentication-method=socket",
                            "--skip-test-db"], capture_output=True, text=True)
        if r.returncode != 0:
            raise RuntimeError("mariadb-install-db: %s" % (r.stderr or r.stdout).strip()[-500:])
        server = "/usr/sbin/mariadbd" if os.path.exists("/usr/sbin/mariadbd") else "mariadbd"
        self.proc = subprocess.Popen(
            [server, "--no-defaults", "--datadir=" + data, "--socket=" + self.socket,
             "--skip-networking", "--user=root", "--skip-log-bin",
             "--pid-file=" + os.path.join(self.dir, "mysqld.pid"),
             "--log-error=" + os.path.join(self.dir, "error.log"),
             "--innodb-buffer-pool-size=" + self.cfg.get("scratch_buffer_pool", "64M")],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        for _ in range(120):
            if self.proc.poll() is not None:
                break
            ok = subprocess.run(mysql_cmd(self.cfg, "-e", "SELECT 1", socket=self.socket),
                                capture_output=True).returncode == 0
            if ok:
                return self
            time.sleep(0.5)
        self.__exit__(None, None, None)
        raise RuntimeError("the scratch MariaDB server did not start")

    def __exit__(self, *exc):
        if self.proc.poll() is None:
            subprocess.run(["mariadb-admin", "--no-defaults", "--socket=" + self.socket,
                            "-uroot", "shutdown"], capture_output=True)
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        shutil.rmtree(self.dir, ignore_errors=True)


def compare(db, want, got):
    problems = []
    for t in sorted(set(want) | set(got)):
        if t not in got:
            problems.append("%s.%s: missing after restore" % (db, t))
        elif t not in want:
            problems.append("%s.%s: not in the backup" % (db, t))
        elif want[t] != got[t]:
            problems.append("%s.%s: rows %s checksum %s, backup has rows %s checksum %s" % (
                db, t, got[t]["rows"], got[t]["checksum"], want[t]["rows"], want[t]["checksum"]))
    return problems


def cmd_verify(cfg, args):
    s3 = s3_client(cfg)
    stamp = pick(s3, cfg, args.from_)
    problems = []
    with tempfile.TemporaryDirectory(dir=cfg["workdir"]) as tmp:
        manifest = fetch(s3, cfg, stamp, tmp)
        with ScratchServer(cfg) as scratch:
            for db, meta in sorted(manifest["databases"].items()):
                load_dump(cfg, os.path.join(tmp, meta["file"]), scratch.socket)
                got = table_stats(cfg, db, scratch.socket)
                if meta.get("stable", True):
                    p = compare(db, meta["tables"], got)
                else:
                    p = ["%s.%s: table missing after restore" % (db, t)
                         for t in meta["tables"] if t not in got]
                    log("%s: written to during its backup: checked the table set only" % db)
                problems += p
                log("%s: %d table(s) restored into a scratch server%s" % (
                    db, len(got), ", row counts and checksums equal" if not p else ""))
            if "users.sql.gz" in manifest["files"]:
                load_dump(cfg, os.path.join(tmp, "users.sql.gz"), scratch.socket)
                log("accounts load")
    if problems:
        for p in problems:
            log("MISMATCH " + p)
        log("VERIFY FAILED: backup %s does not restore to what it recorded" % stamp)
        return 1
    log("verify %s: OK" % stamp)
    return 0


def cmd_restore(cfg, args):
    s3 = s3_client(cfg)
    stamp = pick(s3, cfg, args.from_)
    problems = []
    with tempfile.TemporaryDirectory(dir=cfg["workdir"]) as tmp:
        # Everything is downloaded and checked before anything is touched.
        manifest = fetch(s3, cfg, stamp, tmp)
        for db, meta in sorted(manifest["databases"].items()):
            sql(cfg, "DROP DATABASE IF EXISTS %s" % qi(db))
            load_dump(cfg, os.path.join(tmp, meta["file"]))
            got = table_stats(cfg, db)
            p = compare(db, meta["tables"], got) if meta.get("stable", True) else []
            problems += p
            log("restored database %s: %d table(s)%s" % (
                db, len(got), ", row counts and checksums equal the backup's" if not p else ""))
        if not args.no_users and "users.sql.gz" in manifest["files"]:
            load_dump(cfg, os.path.join(tmp, "users.sql.gz"))
            log("restored accounts (existing ones kept: INSERT IGNORE)")
        media = manifest.get("media")
        if media and not args.no_media:
            problems += restore_media(s3, cfg, media, tmp)
    if problems:
        for p in problems:
            log("MISMATCH " + p)
        log("RESTORE INCOMPLETE: %d problem(s)" % len(problems))
        return 1
    log("restore of %s done" % stamp)
    return 0


def restore_media(s3, cfg, media, tmp):
    src, mirror = media["bucket"], media["mirror"]
    s3.make_bucket(src)
    have = {o["key"]: o for o in s3.list(src)}
    restored, problems = 0, []
    for k, meta in sorted(media["objects"].items()):
        h = have.get(k)
        if h and h["size"] == meta["size"]:
            if h["etag"] and h["etag"] == meta["etag"]:
                continue
            if not h["etag"]:
                # No ETag to compare: read the object and compare its sha256.
                path = os.path.join(tmp, "media-current")
                s3.get_file(src, k, path)
                same = sha256_file(path) == meta["sha256"]
                os.unlink(path)
                if same:
                    continue
        path = os.path.join(tmp, "media-object")
        try:
            s3.get_file(mirror, k, path)
        except Exception as e:  # noqa: BLE001
            problems.append("media %s: not in %s (%s)" % (k, mirror, e))
            continue
        if sha256_file(path) != meta["sha256"]:
            problems.append("media %s: the mirror holds another version than the backup's" % k)
            continue
        s3.put_file(src, k, path, meta["sha256"])
        restored += 1
        os.unlink(path)
    log("media: %d object(s) restored into %s from %s, %d already there" % (
        restored, src, mirror, len(media["objects"]) - restored - len(problems)))
    return problems


# ---------------------------------------------------------------------------------------
def cmd_s3(cfg, args):
    s3 = s3_client(cfg)
    op, bucket, rest = args.op, args.bucket, args.rest
    if op == "ls":
        for o in s3.list(bucket, rest[0] if rest else ""):
            print("%s\t%d\t%s" % (o["key"], o["size"], o["etag"]))
    elif op == "put":
        s3.put_file(bucket, rest[0], rest[1])
    elif op == "get":
        s3.get_file(bucket, rest[0], rest[1])
    elif op == "rm":
        s3.delete(bucket, rest[0])
    elif op == "mb":
        s3.make_bucket(bucket)
    return 0


def main(argv):
    ap = argparse.ArgumentParser(prog="kiln-backup")
    sub = ap.add_subparsers(dest="cmd", required=True)
    sub.add_parser("run")
    sub.add_parser("health")
    sub.add_parser("list")
    for name in ("verify", "restore"):
        p = sub.add_parser(name)
        p.add_argument("--from", dest="from_", default="latest")
        if name == "restore":
            p.add_argument("--no-media", action="store_true")
            p.add_argument("--no-users", action="store_true")
    p = sub.add_parser("prune")
    p.add_argument("--prefix")
    p.add_argument("--dry-run", action="store_true")
    p = sub.add_parser("s3")
    p.add_argument("op", choices=["ls", "put", "get", "rm", "mb"])
    p.add_argument("bucket")
    p.add_argument("rest", nargs="*")
    args = ap.parse_args(argv[1:])
    os.umask(0o077)
    cfg = load_config()
    held = lock(cfg) if args.cmd in ("run", "verify", "restore", "prune") else None
    try:
        if args.cmd == "prune":
            return prune(s3_client(cfg), cfg, args.prefix or cfg["prefix"], args.dry_run)
        return {"run": cmd_run, "health": cmd_health, "list": cmd_list, "verify": cmd_verify,
                "restore": cmd_restore, "s3": cmd_s3}[args.cmd](cfg, args)
    except Refused as e:
        log("REFUSED: %s; nothing was restored" % e)
        return 3
    finally:
        if held:
            held.close()


if __name__ == "__main__":
    try:
        sys.exit(main(sys.argv))
    except Exception as e:  # noqa: BLE001 - one line, no traceback with local values
        log("FAILED: %s: %s" % (type(e).__name__, e))
        sys.exit(1)
