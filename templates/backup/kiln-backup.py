#!/usr/bin/python3
# Managed by kiln (backup module). kiln-backup: logical MariaDB backups to an S3 bucket,
# a mirror of the media bucket, retention, health, restore and restore verification.
#
#   kiln-backup run                      dump every database + accounts, manifest, upload,
#                                        mirror media, apply retention
#   kiln-backup health                   exit 1 when the newest backup is older than allowed
#   kiln-backup verify [--from T]        restore into a scratch server, compare row counts
#                                        and CHECKSUM TABLE with the manifest; exit 1 on mismatch
#   kiln-backup restore [--from T|latest|--to-time T] [--physical] [--no-media] [--no-users]
#                                        check the manifest and every file, then restore:
#                                        the logical dump into the running server, or
#                                        (--physical) the physical copy as the data
#                                        directory; then the binlog archive replayed
#   kiln-backup list                     backups in the bucket, newest first
#   kiln-backup physical-extract [--from T] DIR   a backup's physical copy (mariadb-backup),
#                                        checked, decrypted, extracted and prepared into DIR:
#                                        a data directory a stopped server can start from
#   kiln-backup seed-export --to-config F --to-credentials F --rules F --key-file F
#                                        (kiln restore DST --from-env SRC, on SRC's host)
#                                        SRC's latest point restored into a scratch server,
#                                        anonymised there, written to DST's bucket as a backup
#   kiln-backup seeded [--mark STAMP --from ENV]   whether (exit 0; 4: not seeded) or
#                                        record that this environment was seeded
#   kiln-backup prune [--prefix P] [--dry-run]   apply retention now
#   kiln-backup s3 ls|put|get|rm BUCKET [KEY] [FILE]   the configured S3 endpoint, by hand
#
# Metrics for Prometheus (node exporter's textfile collector, `metrics_dir`, written
# atomically): every `run` and `verify` its outcome and time (kiln_backup_run_*.prom), a
# successful run and every archive cycle the newest complete backup's time, the allowed
# age, and the binlog archive's lag and its limit (kiln_backup.prom).
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
import select
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import threading
import time
import zlib

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


def retention(stamps, daily=7, weekly=4, monthly=12, histories=None):
    """The backups to keep, from timestamps (YYYYMMDDTHHMMSSZ) of complete backups.

    Each rule keeps the newest backup of each of its N most recent periods that have a
    backup: `daily` calendar days, `weekly` ISO weeks, `monthly` calendar months (UTC).
    The rules are independent and their union is kept; the newest backup is always kept.

    `histories` maps a stamp to the history of the data it holds (the Galera cluster's
    state UUID, see history()). Within each kept period the newest backup of *every*
    history is kept: a restore starts a new history and its base backup is the newest of
    the day, and the base of the timeline it left, taken earlier that day, is what a second
    restore to a later point of that timeline needs. Periods are counted over all
    histories, so a history that was left goes when its periods do.
    """
    histories = histories or {}
    ordered = sorted(set(stamps), reverse=True)
    keep = set(ordered[:1])
    rules = (
        (daily, lambda d: d.date()),
        (weekly, lambda d: d.isocalendar()[:2]),
        (monthly, lambda d: (d.year, d.month)),
    )
    for count, period in rules:
        seen, taken = set(), set()
        for s in ordered:
            p = period(parse_stamp(s))
            if p not in seen:
                if len(seen) >= count:
                    break
                seen.add(p)
            if (p, histories.get(s)) not in taken:
                taken.add((p, histories.get(s)))
                keep.add(s)
    return keep


# ---------------------------------------------------------------------------------------
# Set-up
# ---------------------------------------------------------------------------------------
def load_config(path=None):
    with open(path or CONFIG) as f:
        cfg = json.load(f)
    cfg.setdefault("prefix", "mariadb")
    cfg.setdefault("databases", [])
    cfg.setdefault("keep", {"daily": 7, "weekly": 4, "monthly": 12})
    cfg.setdefault("max_age_hours", 26)
    cfg.setdefault("workdir", "/var/lib/kiln-backup")
    cfg.setdefault("mysql_defaults", "")
    cfg.setdefault("age", {"recipients": [], "identity": ""})
    cfg.setdefault("metrics_dir", "/var/lib/prometheus/node-exporter")
    if os.environ.get("KILN_BACKUP_AGE_IDENTITY"):
        cfg["age"]["identity"] = os.environ["KILN_BACKUP_AGE_IDENTITY"]
    return cfg


def s3_client(cfg, credentials=None):
    import kiln_s3
    env = kiln_s3.read_env_file(credentials or CREDENTIALS)
    raw = kiln_s3.client(cfg["endpoint"], env["S3_ACCESS_KEY"], env["S3_SECRET_KEY"],
                         region=cfg.get("region", "us-east-1"))
    rep = cfg.get("replica") or {}
    if rep.get("endpoint"):
        raw = Replicated(raw, kiln_s3.client(
            rep["endpoint"], env.get("REPLICA_ACCESS_KEY") or env["S3_ACCESS_KEY"],
            env.get("REPLICA_SECRET_KEY") or env["S3_SECRET_KEY"],
            region=rep.get("region") or cfg.get("region", "us-east-1")), cfg)
    return Sealed(raw, cfg) if cfg.get("age", {}).get("recipients") else raw


class Replicated:
    """The backup bucket on two S3 targets: the primary and an off-site replica
    (`replicate_to`). Every object is written to both (a write the replica refuses fails
    the run, so the health check sees it); reads take the primary's object and fall back to
    the replica's when the primary fails or lacks it (its host lost, or rebuilt empty);
    listings are the union of both. The media mirror (`media_mirror_bucket`) is backup data
    too and goes to both, under the same name on the replica; the live media bucket lives on
    the primary only (the app's)."""

    def __init__(self, primary, replica, cfg):
        self.primary, self.replica = primary, replica
        self.bucket = cfg["bucket"]
        # Each replicated bucket and its name on the replica.
        self.map = {cfg["bucket"]: (cfg.get("replica") or {}).get("bucket") or cfg["bucket"]}
        if cfg.get("media_mirror_bucket"):
            self.map[cfg["media_mirror_bucket"]] = cfg["media_mirror_bucket"]
        self.said = False
        self.down = False

    def __getattr__(self, name):
        return getattr(self.primary, name)

    def _fallback(self, e):
        # A primary that cannot be reached is not asked again in this run (each request
        # would wait through its retries); one that answers "no such key" is.
        if isinstance(e, OSError):
            self.down = True
        if not self.said:
            log("the primary S3 target failed (%s: %s): reading the replica" % (
                type(e).__name__, str(e)[:160]))
            self.said = True

    def make_bucket(self, bucket):
        made = self.primary.make_bucket(bucket)
        if bucket in self.map:
            self.replica.make_bucket(self.map[bucket])
        return made

    def list(self, bucket, prefix=""):
        if bucket not in self.map:
            return self.primary.list(bucket, prefix)
        out, err = {}, None
        try:
            if self.down:
                raise OSError("the primary S3 target is unreachable")
            out = {o["key"]: o for o in self.primary.list(bucket, prefix)}
        except Exception as e:  # noqa: BLE001 - the replica answers instead
            self._fallback(e)
            err = e
        try:
            for o in self.replica.list(self.map[bucket], prefix):
                out.setdefault(o["key"], o)
        except Exception:  # noqa: BLE001
            if err is not None:
                raise err
        return sorted(out.values(), key=lambda o: o["key"])

    def put_file(self, bucket, key, path, sha256=None):
        sha = self.primary.put_file(bucket, key, path, sha256)
        if bucket in self.map:
            self.replica.put_file(self.map[bucket], key, path, sha)
        return sha

    def put_bytes(self, bucket, key, data):
        self.primary.put_bytes(bucket, key, data)
        if bucket in self.map:
            self.replica.put_bytes(self.map[bucket], key, data)

    def put_stream(self, bucket, key, stream):
        """Streams to the primary, then copies the stored object to the replica as it is
        read back from the primary (a stream is read once; nothing lands on local disk)."""
        self.primary.put_stream(bucket, key, stream)
        if bucket in self.map:
            body = self.primary.open_stream(bucket, key)
            try:
                self.replica.put_stream(self.map[bucket], key, body)
            finally:
                body.close()

    def _read(self, op, bucket, key, *args):
        """A read (`op`: get_file, open_stream, get_bytes) from the primary, or from the
        replica's copy when the primary fails or lacks the object."""
        if bucket not in self.map:
            return getattr(self.primary, op)(bucket, key, *args)
        try:
            if self.down:
                raise OSError("the primary S3 target is unreachable")
            return getattr(self.primary, op)(bucket, key, *args)
        except Exception as e:  # noqa: BLE001
            self._fallback(e)
            return getattr(self.replica, op)(self.map[bucket], key, *args)

    def get_file(self, bucket, key, path):
        return self._read("get_file", bucket, key, path)

    def open_stream(self, bucket, key):
        return self._read("open_stream", bucket, key)

    def get_bytes(self, bucket, key):
        return self._read("get_bytes", bucket, key)

    def delete(self, bucket, key):
        self.primary.delete(bucket, key)
        if bucket in self.map:
            self.replica.delete(self.map[bucket], key)


AGE_MAGIC = b"age-encryption.org/v1\n"


class Sealed:
    """The S3 client with every object of the backup bucket encrypted with age to the
    configured recipients (public keys) before it leaves the host, and decrypted with the
    identity (/etc/kiln/backup/age-identity, from a secret) when read: a bucket reader sees
    only ciphertext. The media mirror (`media_mirror_bucket`) is sealed the same way; the live
    media bucket (the app's) passes through unchanged. An
    object that is not age ciphertext is read as it is (backups taken before encryption was
    turned on stay restorable)."""

    def __init__(self, s3, cfg):
        self.s3, self.bucket = s3, cfg["bucket"]
        self.buckets = {cfg["bucket"]} | ({cfg["media_mirror_bucket"]}
                                          if cfg.get("media_mirror_bucket") else set())
        self.recipients = list(cfg["age"]["recipients"])
        self.identity = cfg["age"].get("identity") or ""
        self.tmp = cfg["workdir"]
        self.last_stored = None

    def __getattr__(self, name):
        return getattr(self.s3, name)

    def _age(self, args):
        r = subprocess.run(["age"] + args, capture_output=True, text=True)
        if r.returncode != 0:
            raise RuntimeError("age: %s" % r.stderr.strip()[-300:])

    def _seal(self, path):
        fd, out = tempfile.mkstemp(prefix=".sealed-", dir=self.tmp)
        os.close(fd)
        args = ["--encrypt"]
        for r in self.recipients:
            args += ["--recipient", r]
        self._age(args + ["--output", out, path])
        return out

    def _open(self, src, dst):
        with open(src, "rb") as f:
            head = f.read(len(AGE_MAGIC))
        if head != AGE_MAGIC:
            os.replace(src, dst)
            return
        if not self.identity or not os.path.exists(self.identity):
            raise Refused("the backups are encrypted and this host has no age identity "
                          "(the backup module's age_identity_secret)")
        self._age(["--decrypt", "--identity", self.identity, "--output", dst + ".plain", src])
        os.replace(dst + ".plain", dst)
        os.unlink(src)

    def put_file(self, bucket, key, path, sha256=None):
        if bucket not in self.buckets:
            return self.s3.put_file(bucket, key, path, sha256)
        sha256 = sha256 or sha256_file(path)
        sealed = self._seal(path)
        try:
            self.last_stored = {"sha256": self.s3.put_file(bucket, key, sealed),
                                "size": os.path.getsize(sealed)}
        finally:
            os.unlink(sealed)
        return sha256

    def put_stream(self, bucket, key, stream):
        """Encrypts a stream on its way up: `age` reads it from a pipe (fed by a thread)
        and its ciphertext is uploaded as it comes, hashed on the way (last_stored)."""
        if bucket not in self.buckets:
            return self.s3.put_stream(bucket, key, stream)
        args = ["age", "--encrypt"]
        for r in self.recipients:
            args += ["--recipient", r]
        p, t, failed = age_pipe(args, stream)
        sealed = Hashing(p.stdout, check=lambda: self._finished(p, t, failed))
        try:
            self.s3.put_stream(bucket, key, sealed)
        except BaseException:
            p.kill()
            t.join(timeout=5)
            p.wait()
            p.stdout.close()
            p.stderr.close()
            raise
        self._finished(p, t, failed)
        self.last_stored = {"sha256": sealed.sha256(), "size": sealed.size}

    @staticmethod
    def _finished(p, t, failed):
        """At the ciphertext's end: the plaintext's reader and age both ended well, or
        raise (so an upload of a cut stream is aborted)."""
        t.join()
        err = p.stderr.read().decode("utf-8", "replace") if not p.stderr.closed else ""
        rc = p.wait()
        p.stdout.close()
        p.stderr.close()
        if failed:
            raise failed[0]
        if rc != 0:
            raise RuntimeError("age: %s" % err.strip()[-300:])

    def put_bytes(self, bucket, key, data):
        if bucket not in self.buckets:
            return self.s3.put_bytes(bucket, key, data)
        fd, path = tempfile.mkstemp(prefix=".plain-", dir=self.tmp)
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
            self.put_file(bucket, key, path)
        finally:
            os.unlink(path)

    def open_stream(self, bucket, key):
        """The object's plaintext as a readable stream, decrypted as it downloads: `age`
        reads the ciphertext from a pipe (fed by a thread) and its output is read as it
        comes. An object that is not age ciphertext is read as it is. A failed download or
        decryption raises at the stream's end instead of EOF; close() ends both early."""
        raw = self.s3.open_stream(bucket, key)
        if bucket not in self.buckets:
            return raw
        head = b""
        while len(head) < len(AGE_MAGIC):
            chunk = raw.read(len(AGE_MAGIC) - len(head))
            if not chunk:
                break
            head += chunk
        if head != AGE_MAGIC:
            return Prefixed(head, raw)
        if not self.identity or not os.path.exists(self.identity):
            raw.close()
            raise Refused("the backups are encrypted and this host has no age identity "
                          "(the backup module's age_identity_secret)")
        return Decrypting(*age_pipe(["age", "--decrypt", "--identity", self.identity], raw,
                                    head=head, close=True))

    def get_file(self, bucket, key, path):
        if bucket not in self.buckets:
            return self.s3.get_file(bucket, key, path)
        self.s3.get_file(bucket, key, path + ".sealed")
        self._open(path + ".sealed", path)

    def get_bytes(self, bucket, key):
        if bucket not in self.buckets:
            return self.s3.get_bytes(bucket, key)
        fd, path = tempfile.mkstemp(prefix=".get-", dir=self.tmp)
        os.close(fd)
        try:
            self.get_file(bucket, key, path)
            with open(path, "rb") as f:
                return f.read()
        finally:
            if os.path.exists(path):
                os.unlink(path)


def age_pipe(args, src, head=b"", close=False):
    """Starts `age` (`args`) with its stdin fed by a thread from `head`, then the readable
    `src` to its end (closed then, with `close`). Returns (process, thread, failed): the
    caller reads the process' stdout, and Sealed._finished judges, at its end, `failed` (what
    stopped the feeding) and age's exit status."""
    p = subprocess.Popen(args, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE)
    failed = []

    def feed():
        try:
            if head:
                p.stdin.write(head)
            for chunk in iter(lambda: src.read(1 << 20), b""):
                p.stdin.write(chunk)
        except BaseException as e:  # noqa: BLE001 - reported at the output's end
            failed.append(e)
        finally:
            try:
                p.stdin.close()
            except OSError:
                pass
            if close:
                src.close()

    t = threading.Thread(target=feed, daemon=True)
    t.start()
    return p, t, failed


class Prefixed:
    """`head`, then the rest of `raw`: a stream whose first bytes were read to look at."""

    def __init__(self, head, raw):
        self.head, self.raw = head, raw

    def read(self, n=-1):
        if self.head:
            if n is None or n < 0:
                out, self.head = self.head + self.raw.read(), b""
            else:
                out, self.head = self.head[:n], self.head[n:]
            return out
        return self.raw.read(n)

    def close(self):
        self.raw.close()


class Decrypting:
    """age's plaintext output as a readable stream (Sealed.open_stream). At its end the
    feeding thread and age must both have ended well, or read() raises."""

    def __init__(self, p, t, failed):
        self.p, self.t, self.failed, self.done = p, t, failed, False

    def read(self, n=-1):
        if self.done:
            return b""
        data = self.p.stdout.read(n if n is not None and n >= 0 else -1)
        if not data:
            self.done = True
            Sealed._finished(self.p, self.t, self.failed)
        return data

    def close(self):
        if self.done:
            return
        self.done = True
        self.p.kill()
        self.p.stdout.close()   # a writer still in the pipe gets EPIPE, so the thread ends
        self.p.wait()
        self.t.join(timeout=5)
        self.p.stderr.close()


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


class Hashing:
    """A readable binary stream over `raw` that hashes (sha256) and counts what passes.
    At the end of `raw`, `check()` runs before EOF is returned: it raises when the producer
    failed, so a consumer (an upload) never takes a cut stream for a whole one."""

    def __init__(self, raw, check=None):
        self.raw, self.check = raw, check
        self.h, self.size, self.done = hashlib.sha256(), 0, False

    def read(self, n=-1):
        data = self.raw.read(n if n is not None and n >= 0 else -1)
        if data:
            self.h.update(data)
            self.size += len(data)
        elif not self.done:
            self.done = True
            if self.check:
                self.check()
        return data

    def sha256(self):
        return self.h.hexdigest()


class GzipOf:
    """gzip (mtime 0) of a command's stdout as a readable stream, produced as it is read.
    The command's stderr goes to an unnamed file (mariadb-backup logs every file it copies:
    a pipe nobody reads would fill and stop it). At the end, a command that failed raises
    RuntimeError instead of EOF."""

    def __init__(self, cmd):
        self.cmd = cmd
        self.err = tempfile.TemporaryFile()
        self.p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=self.err)
        self.z = zlib.compressobj(6, zlib.DEFLATED, 31)
        self.buf, self.eof = b"", False

    def read(self, n=-1):
        want = n if n is not None and n >= 0 else float("inf")
        while not self.eof and len(self.buf) < want:
            chunk = self.p.stdout.read(1 << 20)
            if chunk:
                self.buf += self.z.compress(chunk)
            else:
                self.buf += self.z.flush()
                self.eof = True
                self._ended()
        if want == float("inf"):
            out, self.buf = self.buf, b""
        else:
            out, self.buf = self.buf[:n], self.buf[n:]
        return out

    def _ended(self):
        rc = self.p.wait()
        self.p.stdout.close()
        self.err.seek(0)
        err = self.err.read().decode("utf-8", "replace")
        self.err.close()
        if rc != 0:
            raise RuntimeError("%s failed (exit %d): %s" % (self.cmd[0], rc, err.strip()[-500:]))

    def close(self):
        if self.p.poll() is None:
            self.p.kill()
            self.p.wait()
        self.p.stdout.close()
        if not self.err.closed:
            self.err.close()


def pipe_to_gzip(cmd, path):
    """Runs cmd, compressing its stdout into path; raises on any failure. Returns the first
    64 KiB of the output (where mariadb-dump writes the binlog position)."""
    head = b""
    with open(path, "wb") as raw:
        p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        with gzip.GzipFile(fileobj=raw, mode="wb", mtime=0) as gz:
            while True:
                chunk = p.stdout.read(1 << 20)
                if not chunk:
                    break
                if len(head) < 65536:
                    head += chunk[:65536 - len(head)]
                gz.write(chunk)
        err = p.stderr.read().decode("utf-8", "replace")
        if p.wait() != 0:
            raise RuntimeError("%s failed: %s" % (cmd[0], err.strip()))
    return head.decode("utf-8", "replace")


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


PHYSICAL = "physical.mbstream.gz"


def fetch(s3, cfg, stamp, workdir, logical=True):
    """Downloads a backup and checks it: the manifest against its sha256, every file
    against the manifest. Raises Refused on any difference. The physical copy is never
    downloaded here: extract_physical streams it from object storage and checks it on the
    way; without `logical` (a physical restore) only the manifest is read and checked."""
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
        if name == PHYSICAL or not logical:
            continue
        path = os.path.join(workdir, name)
        s3.get_file(cfg["bucket"], base + name, path)
        got = sha256_file(path)
        if got != meta["sha256"] or os.path.getsize(path) != meta["size"]:
            raise Refused("%s of backup %s: sha256 %s, manifest says %s" %
                          (name, stamp, got, meta["sha256"]))
    if not logical:
        log("backup %s: manifest checks out" % stamp)
        return manifest
    checked = [n for n in manifest["files"] if n != PHYSICAL]
    log("backup %s: manifest and %d file(s) check out%s" % (
        stamp, len(checked), " (the physical copy is checked as it streams in)"
        if PHYSICAL in manifest["files"] else ""))
    return manifest


# ---------------------------------------------------------------------------------------
# run
# ---------------------------------------------------------------------------------------
def mirror_media(s3, cfg, previous):
    """Copies media objects missing or changed in the mirror bucket; deletes nothing (a
    mirror that deletes would propagate an accident). Returns the index for the manifest.
    The mirror is backup data: with age recipients its objects are sealed (a mirror object's
    size is then its ciphertext's, recorded as `stored_size`), with `replicate_to` they go
    off-site too."""
    src, dst = cfg.get("media_bucket"), cfg.get("media_mirror_bucket")
    if not src or not dst:
        return None
    s3.make_bucket(dst)
    sealing = isinstance(s3, Sealed)
    known = {}
    if previous:
        known = (previous.get("media") or {}).get("objects") or {}
    mirror = {o["key"]: o for o in s3.list(dst)}
    index, copied = {}, 0

    def held(m, prev, o, sha):
        """The mirror's object m is the source object o (sha256 `sha`, None: not read)."""
        if m is None:
            return False
        if sealing:
            # Only what this tool sealed counts (a plaintext copy from before encryption
            # was turned on is sealed again): the recorded ciphertext size and the content.
            return prev is not None and prev.get("sealed") is True and \
                m["size"] == prev.get("stored_size") and (sha is None or prev["sha256"] == sha)
        if m["size"] != o["size"]:
            return False
        if sha is None:
            return True
        return (bool(o["etag"]) and m["etag"] == o["etag"]) or \
            (prev is not None and prev["sha256"] == sha)

    with tempfile.TemporaryDirectory(dir=cfg["workdir"]) as tmp:
        for o in s3.list(src):
            k = o["key"]
            m = mirror.get(k)
            prev = known.get(k)
            # A listing's ETag says whether an object changed; a server that lists none
            # (an empty ETag) gets every object read and hashed instead.
            same_as_prev = bool(o["etag"]) and prev is not None and \
                prev["etag"] == o["etag"] and prev["size"] == o["size"]
            if same_as_prev and held(m, prev, o, None):
                index[k] = prev
                continue
            path = os.path.join(tmp, "object")
            s3.get_file(src, k, path)
            sha = sha256_file(path)
            entry = {"size": o["size"], "etag": o["etag"], "sha256": sha}
            if held(m, prev, o, sha):
                if prev is not None and "stored_size" in prev:
                    entry.update(sealed=prev.get("sealed", False), stored_size=prev["stored_size"])
            else:
                s3.put_file(dst, k, path, sha)
                copied += 1
                if sealing:
                    entry.update(sealed=True, stored_size=s3.last_stored["size"])
            index[k] = entry
            os.unlink(path)
    log("media: %d object(s) in %s, %d copied to %s%s" % (
        len(index), src, copied, dst, " (sealed with age)" if sealing else ""))
    return {"bucket": src, "mirror": dst, "objects": index}


def physical_backup(s3, cfg, dbs, base, manifest):
    """A physical copy with mariadb-backup (`--galera-info` on a Galera node: the cluster
    position a node restored from it starts at): mbstream, gzipped and (with age
    recipients) encrypted as it is produced, streamed to object storage (multipart above
    64 MiB) and never written to this host's disk, so a database larger than the backup
    host's free space still gets its copy. Recorded in the manifest with the sha256 and size
    of what was uploaded (plaintext, and the stored ciphertext). Row counts and checksums
    around it: equal means no write reached it, so a verification compares them exactly."""
    before = {db: table_stats(cfg, db) for db in dbs}
    work = tempfile.mkdtemp(prefix="physical-", dir=cfg["workdir"])
    try:
        cmd = ["mariadb-backup"]
        if cfg["mysql_defaults"]:
            cmd.append("--defaults-extra-file=" + cfg["mysql_defaults"])
        cmd += ["--backup", "--stream=mbstream", "--target-dir=" + work]
        galera = galera_state(cfg) is not None
        if galera:
            cmd.append("--galera-info")
        t0 = time.time()
        gz = GzipOf(cmd)
        src = Hashing(gz)
        try:
            if hasattr(s3, "last_stored"):
                s3.last_stored = None
            s3.put_stream(cfg["bucket"], base + PHYSICAL, src)
        finally:
            gz.close()
    finally:
        shutil.rmtree(work, ignore_errors=True)
    after = {db: table_stats(cfg, db) for db in dbs}
    entry = {"sha256": src.sha256(), "size": src.size}
    if getattr(s3, "last_stored", None):
        entry["stored"] = dict(s3.last_stored)
        manifest["encrypted"] = "age"
    manifest["files"][PHYSICAL] = entry
    log("physical copy (mariadb-backup%s): %.1f MiB streamed to s3://%s/%s in %.1f s" % (
        ", with the Galera position" if galera else "", src.size / 1048576.0,
        cfg["bucket"], base + PHYSICAL, time.time() - t0))
    return {"file": PHYSICAL, "galera_info": galera, "tables": after, "stable": before == after}


def extract_physical(cfg, s3, stamp, manifest, target):
    """The backup's physical copy, streamed from object storage (decrypted as it comes)
    through gunzip into `mbstream -x` in `target`, then `mariadb-backup --prepare`: a data
    directory a server starts from. Through boto3 (the backup module installs it) nothing
    of the copy lands on this host's disk but the extracted files, so a host with room for
    the data directory can restore it whatever the compressed copy's size; the built-in
    client spools the object to a temporary file first. Its sha256 and size are checked
    against the manifest at the stream's end, before the prepare; on any failure `target`
    is removed and this raises (a caller swaps nothing in before this returns)."""
    meta = manifest["files"].get(PHYSICAL)
    if not meta:
        raise Refused("backup %s has no physical copy" % stamp)
    os.makedirs(target, mode=0o700, exist_ok=True)
    if os.listdir(target):
        raise Refused("%s is not empty" % target)
    t0 = time.time()
    try:
        body = s3.open_stream(cfg["bucket"], "%s/%s/%s" % (cfg["prefix"].rstrip("/"), stamp,
                                                            PHYSICAL))
        try:
            src = Hashing(body)
            gunzip_into(["mbstream", "-x", "-C", target], src, "mbstream -x")
            while src.read(1 << 20):   # whatever follows the gzip stream counts too
                pass
        finally:
            body.close()
        if src.sha256() != meta["sha256"] or src.size != meta["size"]:
            raise Refused("%s of backup %s: sha256 %s (%d bytes), the manifest says %s (%d "
                          "bytes)" % (PHYSICAL, stamp, src.sha256(), src.size, meta["sha256"],
                                      meta["size"]))
        log("physical copy of %s: %.1f MiB streamed, checked and extracted in %.1f s" % (
            stamp, src.size / 1048576.0, time.time() - t0))
        r = subprocess.run(["mariadb-backup", "--prepare", "--target-dir=" + target],
                           capture_output=True, text=True)
        if r.returncode != 0:
            raise RuntimeError("mariadb-backup --prepare: %s" %
                               (r.stderr or r.stdout).strip()[-500:])
    except BaseException:
        shutil.rmtree(target, ignore_errors=True)
        raise


def cmd_physical_extract(cfg, args):
    s3 = s3_client(cfg)
    stamp = pick(s3, cfg, args.from_)
    with tempfile.TemporaryDirectory(dir=cfg["workdir"]) as tmp:
        manifest = fetch(s3, cfg, stamp, tmp, logical=False)
    extract_physical(cfg, s3, stamp, manifest, args.dir)   # refuses a backup without one
    log("backup %s: physical copy prepared in %s%s" % (
        stamp, args.dir, " (xtrabackup_galera_info holds its cluster position)"
        if (manifest.get("physical") or {}).get("galera_info") else ""))
    return 0


def upload_files(s3, cfg, base, tmp, manifest):
    """Uploads every file of `tmp` under `base`, recording each in the manifest."""
    for name in sorted(os.listdir(tmp)):
        path = os.path.join(tmp, name)
        if not os.path.isfile(path):
            continue
        sha = s3.put_file(cfg["bucket"], base + name, path)
        manifest["files"][name] = {"sha256": sha, "size": os.path.getsize(path)}
        if getattr(s3, "last_stored", None):
            # Encrypted: the object's own hash and size too, so a bucket-side check
            # needs no identity.
            manifest["files"][name]["stored"] = dict(s3.last_stored)
            manifest["encrypted"] = "age"


def put_manifest(s3, cfg, base, manifest):
    """The manifest makes a backup complete; its checksum goes first, so a manifest is only
    ever visible with its checksum beside it."""
    raw = json.dumps(manifest, indent=2, sort_keys=True).encode()
    s3.put_bytes(cfg["bucket"], base + "manifest.json.sha256",
                 ("%s  manifest.json\n" % hashlib.sha256(raw).hexdigest()).encode())
    s3.put_bytes(cfg["bucket"], base + "manifest.json", raw)


def previous_manifest(s3, cfg):
    try:
        stamp = pick(s3, cfg, "latest")
        base = "%s/%s/" % (cfg["prefix"].rstrip("/"), stamp)
        return json.loads(s3.get_bytes(cfg["bucket"], base + "manifest.json"))
    except Exception:  # noqa: BLE001 - only an optimisation (reusing media hashes)
        return None


def cmd_run(cfg, args):
    s3 = s3_client(cfg)
    if args is not None and getattr(args, "if_leader", False):
        lead, other = leads(s3, cfg)
        if not lead:
            log("%s leads the backups (its archiver's heartbeat is fresh): nothing to do here" % other)
            return 0
    s3.make_bucket(cfg["bucket"])
    stamp = datetime.datetime.now(datetime.timezone.utc).strftime(STAMP)
    base = "%s/%s/" % (cfg["prefix"].rstrip("/"), stamp)
    manifest = {"format": 1, "timestamp": stamp, "host": socket.gethostname(),
                "files": {}, "databases": {}}
    with tempfile.TemporaryDirectory(dir=cfg["workdir"]) as tmp:
        dbs = databases(cfg)
        # The dump covers the whole server unless `databases` names some: a restore then
        # makes the server's databases exactly the backup's (what the binary logs continue).
        manifest["all_databases"] = not cfg["databases"]
        if binlog_on(cfg) and not dbs:
            # Nothing to dump yet (a new cluster before its databases): the position alone
            # is a base, and the binary logs hold everything that comes after.
            st = sql(cfg, "SHOW MASTER STATUS")[0]
            manifest["binlog"] = dump_position(
                cfg, "CHANGE MASTER TO MASTER_LOG_FILE='%s', MASTER_LOG_POS=%s" % (st[0], st[1]))
            log("no database yet: the base is binlog position %s:%s (GTID %s)" % (
                st[0], st[1], manifest["binlog"]["gtid"] or "none yet"))
        if binlog_on(cfg) and dbs:
            # Point-in-time recovery replays the binary logs from the dump's position, so
            # every database comes from one consistent snapshot with one GTID position.
            before = {db: table_stats(cfg, db) for db in dbs}
            name = "databases.sql.gz"
            head = pipe_to_gzip(dump_cmd(cfg, "--single-transaction", "--master-data=2",
                                         "--routines", "--triggers", "--events", "--hex-blob",
                                         "--databases", *dbs),
                                os.path.join(tmp, name))
            manifest["binlog"] = dump_position(cfg, head)
            for db in dbs:
                after = table_stats(cfg, db)
                manifest["databases"][db] = {"file": name, "tables": after,
                                             "stable": before[db] == after}
            log("dump at binlog position %s (GTID %s)" % (
                "%s:%s" % (manifest["binlog"]["file"], manifest["binlog"]["pos"]),
                manifest["binlog"]["gtid"] or "none yet"))
        for db in (dbs if "binlog" not in manifest else []):
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
        # Not in the archiver's first base backup, right after a node is created: while
        # mariadb-backup holds its backup stages, a Galera node refuses DDL ("Aborting TOI:
        # Replication paused on node for FTWRL/BACKUP STAGE"), and a new environment's
        # first minutes are when its schema is created. The scheduled runs take it.
        if cfg.get("physical") and args is not None:
            manifest["physical"] = physical_backup(s3, cfg, dbs, base, manifest)
        upload_files(s3, cfg, base, tmp, manifest)
        manifest["media"] = mirror_media(s3, cfg, previous_manifest(s3, cfg))
        put_manifest(s3, cfg, base, manifest)
    log("backup %s done: %d database(s) (%s), accounts, %s; s3://%s/%s" % (
        stamp, len(manifest["databases"]), ", ".join(manifest["databases"]) or "none",
        "%d media object(s)" % len(manifest["media"]["objects"]) if manifest["media"] else "no media",
        cfg["bucket"], base))
    prune(s3, cfg, cfg["prefix"], dry_run=False)
    state = os.path.join(cfg["workdir"], "last-success")
    with open(state + ".tmp", "w") as f:
        f.write(stamp + "\n")
    os.replace(state + ".tmp", state)
    try:
        publish_state(s3, cfg)
    except Exception as e:  # noqa: BLE001 - metrics never fail a backup
        log("metrics not written: %s: %s" % (type(e).__name__, e))
    return 0


# ---------------------------------------------------------------------------------------
# metrics (node exporter's textfile collector)
# ---------------------------------------------------------------------------------------
def prom_text(samples):
    """Prometheus' text format for [(name, help, labels, value)], one HELP/TYPE per name."""
    out, said = [], set()
    for name, help_, labels, value in samples:
        if name not in said:
            out.append("# HELP %s %s" % (name, help_))
            out.append("# TYPE %s gauge" % name)
            said.add(name)
        lab = ",".join('%s="%s"' % (k, str(v).replace("\\", "\\\\").replace('"', '\\"')
                                   .replace("\n", "\\n"))
                       for k, v in sorted(labels.items()))
        out.append(name + "{" + lab + "} " + repr(float(value)))
    return "\n".join(out) + "\n"


def write_metrics(cfg, name, samples):
    """Writes DIR/NAME.prom atomically (a temporary file in the same directory, renamed), so
    the exporter never reads half a file; readable by the exporter's user. Nothing when the
    directory does not exist (no node exporter on this host)."""
    d = cfg.get("metrics_dir") or ""
    if not d or not os.path.isdir(d):
        return False
    fd, tmp = tempfile.mkstemp(prefix="." + name, suffix=".tmp", dir=d)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(prom_text(samples))
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, os.path.join(d, name + ".prom"))
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return True


def record_run(cfg, kind, ok, when=None):
    lab = {"kind": kind, "prefix": cfg["prefix"]}
    write_metrics(cfg, "kiln_backup_run_" + kind, [
        ("kiln_backup_last_run_success", "1 when the last run of kiln-backup KIND succeeded",
         lab, 1 if ok else 0),
        ("kiln_backup_last_run_timestamp_seconds", "When the last run of kiln-backup KIND ended",
         lab, when if when is not None else time.time()),
    ])


def record_state(cfg, newest, lag=None):
    """The newest complete backup (a stamp, or None), and the archive's lag in seconds."""
    lab = {"prefix": cfg["prefix"]}
    samples = [("kiln_backup_max_age_seconds", "The age the newest complete backup may reach",
                lab, int(cfg["max_age_hours"]) * 3600)]
    if newest:
        samples.append(("kiln_backup_newest_complete_timestamp_seconds",
                        "When the newest complete backup was taken", lab,
                        parse_stamp(newest).timestamp()))
    b = cfg.get("binlog") or {}
    if b.get("enabled") and lag is not None:
        samples.append(("kiln_backup_binlog_archive_lag_seconds",
                        "Seconds since the point up to which the binlog archive is complete",
                        lab, lag))
        samples.append(("kiln_backup_binlog_archive_lag_limit_seconds",
                        "The archive lag the health check allows (2 x target_lag)", lab,
                        2 * int(b.get("target_lag", 60))))
    write_metrics(cfg, "kiln_backup", samples)


def publish_state(s3, cfg):
    complete = sorted((s for s, b in backups(s3, cfg).items() if b["complete"]), reverse=True)
    lag = None
    hbs = heartbeats(s3, cfg)
    if hbs:
        lag = max(0.0, time.time() - max(h["until"] for h in hbs.values()))
    record_state(cfg, complete[0] if complete else None, lag)


# ---------------------------------------------------------------------------------------
# prune, list, health
# ---------------------------------------------------------------------------------------
def prune(s3, cfg, prefix, dry_run):
    found = backups(s3, cfg, prefix)
    complete = [s for s, b in found.items() if b["complete"]]
    # Every complete backup's manifest, read once: its history for retention, its seed
    # mark, and the binlog position of the kept ones. An unreadable one is an Exception.
    manifests = {}
    for s in complete:
        try:
            manifests[s] = json.loads(s3.get_bytes(cfg["bucket"], "%s/%s/manifest.json" % (
                prefix.rstrip("/"), s)))
        except Exception as e:  # noqa: BLE001 - judged where it is used
            manifests[s] = e
    # A manifest that cannot be read gives its backup a history of its own: kept within
    # the retention window like any history, never taken for another's.
    histories = {s: (m.get("binlog") or {}).get("history") if isinstance(m, dict) else ("?", s)
                 for s, m in manifests.items()}
    k = cfg["keep"]
    keep = retention(complete, k["daily"], k["weekly"], k["monthly"], histories)
    now = datetime.datetime.now(datetime.timezone.utc)
    drop = []
    for s, b in sorted(found.items()):
        if b["complete"] and s not in keep:
            drop.append(s)
        elif not b["complete"] and (now - parse_stamp(s)).total_seconds() > 2 * 86400:
            drop.append(s)  # a run that died two days ago will not finish
    drop = [s for s in drop if not unrestored_seed(s3, cfg, s, manifests.get(s))]
    for s in drop:
        if not dry_run:
            # The manifest goes first, so a half-deleted backup is incomplete, never wrong.
            keys = sorted(found[s]["keys"], key=lambda x: not x.endswith("/manifest.json"))
            for key in keys:
                s3.delete(cfg["bucket"], key)
    log("retention (%d daily, %d weekly, %d monthly, each history's newest per period): "
        "keeping %d, %s %d%s" % (
            k["daily"], k["weekly"], k["monthly"], len(keep),
            "would delete" if dry_run else "deleted", len(drop),
            (": " + " ".join(drop)) if drop else ""))
    if cfg.get("binlog", {}).get("enabled") and keep:
        prune_binlogs(s3, cfg, {s: manifests[s] for s in keep}, dry_run)
    return 0


def unrestored_seed(s3, cfg, stamp, m):
    """A seed backup (another environment's data, `kiln restore --from-env`) that this
    environment has not restored yet: retention keeps it. The environment's own first base
    backup, taken seconds later, would otherwise leave it the older of the day, and the
    restore that follows would find it gone. `m`: its manifest (None: an incomplete
    backup; an Exception: unreadable)."""
    if m is None:
        return False
    if isinstance(m, Exception):
        log("retention: keeping %s: its manifest cannot be read (%s)" % (stamp, m))
        return True
    if not m.get("seed"):
        return False
    try:
        marker = json.loads(s3.get_bytes(cfg["bucket"], seed_marker(cfg)))
    except Exception:  # noqa: BLE001 - no marker: not restored yet
        marker = {}
    if marker.get("backup") == stamp:
        return False
    log("retention: keeping seed backup %s until it is restored" % stamp)
    return True


def binlog_prunable(files, bases, oldest):
    """The archived binlog files no kept backup needs. `bases`: (history, domain, seq) of
    every kept base backup; `oldest`: the epoch of the oldest kept one. A file is needed
    when it holds write sets after some kept base of its history and domain; a file of a
    history no kept base belongs to is kept while it is newer than the oldest kept base (a
    new cluster whose first backup is still to come)."""
    histories = set(h for h, _, _ in bases)
    out = []
    for f in files:
        if any(f["history"] == h and f["domain"] == d and f["end"] > seq for h, d, seq in bases):
            continue
        if f["history"] in histories or f["mtime"] < oldest:
            out.append(f)
    return out


def prune_binlogs(s3, cfg, kept, dry_run):
    """`kept`: {stamp: manifest} of the backups retention keeps."""
    bases = []
    for stamp, m in sorted(kept.items()):
        if isinstance(m, Exception):  # unreadable: prune nothing rather than too much
            log("binlog retention skipped: cannot read the manifest of %s (%s)" % (stamp, m))
            return
        b = m.get("binlog")
        if b:
            bases.append((b.get("history"), b["domain"], gtid_seq(b["gtid"], b["domain"])))
    oldest = parse_stamp(min(kept)).timestamp()
    files = archived(s3, cfg)
    gone = binlog_prunable(files, bases, oldest)
    if not dry_run:
        for f in gone:
            s3.delete(cfg["bucket"], f["key"])
    log("binlog retention: %d archived file(s), %s %d no kept backup needs" % (
        len(files), "would delete" if dry_run else "deleted", len(gone)))


def cmd_list(cfg, args):
    s3 = s3_client(cfg)
    for s, b in sorted(backups(s3, cfg).items(), reverse=True):
        print("%s %s" % (s, "complete" if b["complete"] else "incomplete"))
    return 0


def cmd_health(cfg, args):
    s3 = s3_client(cfg)
    complete = sorted((s for s, b in backups(s3, cfg).items() if b["complete"]), reverse=True)
    deadline = time.time() + (args.wait or 0)
    while not complete and cfg.get("binlog", {}).get("enabled") and time.time() < deadline:
        # A new environment: the archiver takes the first backup once the node is Synced.
        log("no complete backup yet; the archiver takes the first one: waiting")
        time.sleep(5)
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
    if cfg.get("binlog", {}).get("enabled"):
        ok, msg = archive_health(s3, cfg)
        said = False
        while not ok and not heartbeats(s3, cfg) and time.time() < deadline:
            # A new environment: the archiver's first cycle (after the node is Synced, and
            # after a backup that holds the lock) has not ended yet. A stale heartbeat is
            # never waited for.
            if not said:
                log("no binlog archiver has published a heartbeat yet: waiting")
                said = True
            time.sleep(5)
            ok, msg = archive_health(s3, cfg)
        log(msg if ok else "UNHEALTHY: " + msg)
        if not ok:
            return 1
    return 0


# ---------------------------------------------------------------------------------------
# Binary logs: positions, the archive, the replay chain
# ---------------------------------------------------------------------------------------
def binlog_on(cfg):
    return bool(cfg.get("binlog", {}).get("enabled")) and \
        sql(cfg, "SELECT @@log_bin")[0][0] == "1"


def parse_gtids(text):
    """'0-1-7,3-3-2' (or '[0-1-7]') -> {domain: (server, seq)}."""
    out = {}
    for part in (text or "").strip().strip("[]").split(","):
        part = part.strip()
        if not part:
            continue
        d, srv, seq = (int(x) for x in part.split("-"))
        out[d] = (srv, seq)
    return out


def gtid_seq(text, domain):
    return parse_gtids(text).get(domain, (0, 0))[1]


def dump_position(cfg, head):
    """The binlog position mariadb-dump --master-data=2 wrote, with its GTID position."""
    m = re.search(r"CHANGE MASTER TO MASTER_LOG_FILE='([^']+)', MASTER_LOG_POS=(\d+)", head)
    if not m:
        raise RuntimeError("mariadb-dump wrote no binlog position (is log_bin on?)")
    f, pos = m.group(1), int(m.group(2))
    gtid = sql(cfg, "SELECT BINLOG_GTID_POS('%s', %d)" % (f.replace("'", "''"), pos))[0][0]
    return {"file": f, "pos": pos, "gtid": "" if gtid == "NULL" else gtid,
            "domain": wsrep_domain(cfg), "history": history(cfg)}


def history(cfg):
    """The Galera cluster's state UUID: one per history of the data (kept across restarts
    and state transfers; a cluster formed from empty data starts a new one). Binary logs
    continue a backup only within its history."""
    r = sql(cfg, "SHOW GLOBAL STATUS LIKE 'wsrep_cluster_state_uuid'")
    uuid = r[0][1] if r and len(r[0]) > 1 else ""
    return uuid[:8] if re.fullmatch(r"[0-9a-f-]{36}", uuid) else "nogalera"


def wsrep_domain(cfg):
    """The GTID domain of the cluster's write sets (wsrep_gtid_domain_id; a joiner takes
    its donor's, so the running value counts, not the configured one)."""
    r = sql(cfg, "SELECT @@wsrep_on, @@wsrep_gtid_mode, @@wsrep_gtid_domain_id, @@gtid_domain_id")
    on, mode, wdom, dom = r[0]
    return int(wdom) if on == "1" and mode == "1" else int(dom)


# An archived binlog file's key says everything the replay chain needs, so a restore lists
# the archive and reads no per-file metadata:
#   PREFIX/binlog/HISTORY/HOST-ID.FILE.DOMAIN-START-END-MTIME.SHA
# HISTORY is the first 8 digits of the cluster's state UUID (see history()), SHA the first
# 24 hex digits of the file's sha256 (short keys with few slashes: the lab's S3 stand-in
# keeps objects as files and refuses long keys). START and END are the domain's GTID
# sequence numbers before and after the file (its own Gtid_list event and the next file's),
# MTIME its last write (its newest event).
ARCHIVE_KEY = re.compile(r"^(?P<history>[0-9a-z]{8})/(?P<src>[A-Za-z0-9][A-Za-z0-9._-]*?-[0-9a-f]{8})\."
                         r"(?P<file>[A-Za-z0-9_-]+\.\d{6,})\."
                         r"(?P<domain>\d+)-(?P<start>\d+)-(?P<end>\d+)-(?P<mtime>\d+)\."
                         r"(?P<sha>[0-9a-f]{24})$")


def archive_prefix(cfg):
    return cfg["prefix"].rstrip("/") + "/binlog/"


def archived(s3, cfg):
    """Every archived binlog file: [{key, src, file, domain, start, end, mtime, sha256, size}]."""
    prefix = archive_prefix(cfg)
    out = []
    for o in s3.list(cfg["bucket"], prefix):
        m = ARCHIVE_KEY.match(o["key"][len(prefix):])
        if m:
            out.append({"key": o["key"], "history": m["history"], "src": m["src"],
                        "file": m["file"],
                        "domain": int(m["domain"]), "start": int(m["start"]),
                        "end": int(m["end"]), "mtime": int(m["mtime"]), "sha256": m["sha"],
                        "size": o["size"]})
    return out


def chain(files, history, domain, pos):
    """The archived files to replay after GTID sequence `pos` of `domain`, in order, each with
    the sequence number to start after: every node logs every write set under the same GTID,
    so the files of different nodes overlap and any of them continues another. Returns
    (steps, reached, gap): `gap` is True when a later file exists that no chain reaches (a
    hole in the archive: the replay stops before it)."""
    files = [f for f in files
             if f["history"] == history and f["domain"] == domain and f["end"] > f["start"]]
    steps = []
    while True:
        cands = [f for f in files if f["start"] <= pos < f["end"]]
        if not cands:
            break
        best = max(cands, key=lambda f: (f["end"], -f["mtime"], f["src"]))
        steps.append((best, pos))
        pos = best["end"]
    gap = any(f["end"] > pos for f in files)
    return steps, pos, gap


def heartbeats(s3, cfg):
    """{host: heartbeat} of every archiver that ever ran."""
    prefix = archive_prefix(cfg) + "heartbeat-"
    out = {}
    for o in s3.list(cfg["bucket"], prefix):
        try:
            hb = json.loads(s3.get_bytes(cfg["bucket"], o["key"]))
            out[hb["host"]] = hb
        except Exception:  # noqa: BLE001 - a torn heartbeat is no heartbeat
            continue
    return out


def local_binlogs(cfg):
    """[(name, size)] of this server's binary logs, oldest first; the last one is open."""
    return [(r[0], int(r[1])) for r in sql(cfg, "SHOW BINARY LOGS")]


def gtid_list_of(cfg, name):
    for r in sql(cfg, "SHOW BINLOG EVENTS IN '%s' LIMIT 4" % name.replace("'", "''")):
        if len(r) > 5 and r[2] == "Gtid_list":
            return r[5]
    return ""


def archive_identity(cfg):
    """A random id for this node's binary logs, kept beside kiln-backup's state: a rebuilt
    node (whose file names start again at .000001) archives under a new one."""
    path = os.path.join(cfg["workdir"], "binlog-id")
    try:
        with open(path) as f:
            ident = f.read().strip()
        if re.fullmatch(r"[0-9a-f]{8}", ident):
            return ident
    except FileNotFoundError:
        pass
    ident = os.urandom(4).hex()
    with open(path + ".tmp", "w") as f:
        f.write(ident + "\n")
    os.replace(path + ".tmp", path)
    return ident


class Archiver:
    """One node's binlog archiver. Every `interval` seconds, when this node leads: make the
    node apply every write set the cluster committed so far (wsrep_sync_wait), rotate the
    binary log if anything was written since the last rotation, upload every closed file
    not yet archived, and publish a heartbeat naming the second up to which the archive is
    complete. A node leads when no node before it in `peers` has published a fresh
    heartbeat (3 intervals), so the next node takes over by itself when a host is lost, and
    gives back when it returns; for a moment two may archive, which costs only duplicate
    files (the replay chain reads each write set once)."""

    def __init__(self, cfg, s3):
        self.cfg, self.s3 = cfg, s3
        b = cfg["binlog"]
        self.me = cfg["host"]
        self.interval = int(b.get("interval", 30))
        self.peers = list(b.get("peers") or [])
        self.ident = archive_identity(cfg)
        self.src = "%s-%s" % (self.me, self.ident)
        self.done = set()
        self.last_rotation = None
        self.leading = None
        self.history = None
        self.datadir = sql(cfg, "SELECT @@datadir")[0][0]

    def leads(self):
        return leads(self.s3, self.cfg)

    def synced(self):
        st = galera_state(self.cfg)
        return st is None or st == ("4", "ON")

    def known(self):
        self.history = history(self.cfg)
        prefix = "%s%s/%s." % (archive_prefix(self.cfg), self.history, self.src)
        for o in self.s3.list(self.cfg["bucket"], prefix):
            m = ARCHIVE_KEY.match(o["key"][len(archive_prefix(self.cfg)):])
            if m:
                self.done.add(m["file"])

    def cycle(self):
        leads, other = self.leads()
        if leads != self.leading:
            log("binlog archive: %s" % ("this node archives" if leads else
                                        "%s archives; this node stands by" % other))
            self.leading = leads
            if leads:
                self.known()
        if not leads:
            return False
        if not self.synced():
            log("binlog archive: this node is not Synced; not archiving")
            return False
        if history(self.cfg) != self.history:
            log("binlog archive: the cluster's history changed (a new cluster formed): "
                "archiving under %s" % history(self.cfg))
            self.done = set()
            self.known()
        if not has_complete_backup(self.s3, self.cfg):
            log("binlog archive: no complete backup under this prefix yet: taking the first one")
            held = lock(self.cfg)
            try:
                cmd_run(self.cfg, None)
            finally:
                held.close()
        t0 = time.time()
        # wsrep_sync_wait: this session waits until the node applied every write set the
        # cluster committed before now, so the rotation below closes a file holding them.
        r = subprocess.run(mysql_cmd(self.cfg, "-N", "-B", "-e",
                                     "SET SESSION wsrep_sync_wait=1; SELECT @@gtid_binlog_pos; "
                                     "SHOW MASTER STATUS"),
                           capture_output=True, text=True, timeout=120)
        if r.returncode != 0:
            raise RuntimeError("mariadb: %s" % r.stderr.strip())
        lines = [l.split("\t") for l in r.stdout.splitlines()]
        gtid = lines[0][0] if lines else ""
        status = (lines[1][0], lines[1][1]) if len(lines) > 1 else None
        if status != self.last_rotation:
            sql(self.cfg, "FLUSH BINARY LOGS")
            cur = sql(self.cfg, "SHOW MASTER STATUS")[0]
            self.last_rotation = (cur[0], cur[1])
        files = local_binlogs(self.cfg)
        domain = wsrep_domain(self.cfg)
        uploaded = 0
        for i, (name, size) in enumerate(files[:-1]):
            if name in self.done:
                continue
            start = gtid_seq(gtid_list_of(self.cfg, name), domain)
            end = gtid_seq(gtid_list_of(self.cfg, files[i + 1][0]), domain)
            path = os.path.join(self.datadir, name)
            mtime = int(os.stat(path).st_mtime)
            sha = sha256_file(path)
            key = "%s%s/%s.%s.%d-%d-%d-%d.%s" % (archive_prefix(self.cfg), self.history,
                                                 self.src, name, domain, start, end, mtime,
                                                 sha[:24])
            self.s3.put_file(self.cfg["bucket"], key, path, sha)
            self.done.add(name)
            uploaded += 1
        hb = {"host": self.me, "src": self.src, "history": self.history, "domain": domain,
              "gtid": gtid,
              "seq": gtid_seq(gtid, domain), "until": int(t0), "time": time.time(),
              "interval": self.interval}
        self.s3.put_bytes(self.cfg["bucket"], archive_prefix(self.cfg) + "heartbeat-%s.json"
                          % self.me, json.dumps(hb, sort_keys=True).encode())
        state = os.path.join(self.cfg["workdir"], "archived-until")
        with open(state + ".tmp", "w") as f:
            f.write("%d %s\n" % (int(t0), gtid))
        os.replace(state + ".tmp", state)
        if uploaded:
            log("binlog archive: %d file(s) uploaded; complete up to %s (GTID %s)" % (
                uploaded, iso(t0), gtid))
        return True


def leads(s3, cfg):
    """(True, "") when this host leads the archive and the scheduled backups, else (False,
    the peer that does): no peer before it in `peers` has a fresh heartbeat."""
    b = cfg.get("binlog", {})
    peers, me = list(b.get("peers") or []), cfg.get("host")
    if me not in peers:
        return True, ""
    hbs = heartbeats(s3, cfg)
    now = time.time()
    for p in peers[:peers.index(me)]:
        hb = hbs.get(p)
        if hb and now - hb.get("time", 0) < 3 * int(b.get("interval", 30)):
            return False, p
    return True, ""


def iso(t):
    return datetime.datetime.fromtimestamp(t, datetime.timezone.utc).strftime("%Y-%m-%d %H:%M:%S")


def has_complete_backup(s3, cfg):
    return any(b["complete"] for b in backups(s3, cfg).values())


def cmd_archive(cfg, args):
    if not cfg.get("binlog", {}).get("enabled"):
        log("binlog archiving is off in %s" % CONFIG)
        return 0
    s3 = s3_client(cfg)
    s3.make_bucket(cfg["bucket"])
    for _ in range(600):
        try:
            if binlog_on(cfg):
                break
            log("binlog archive: log_bin is off on this server; waiting")
        except RuntimeError as e:
            log("binlog archive: waiting for the server: %s" % e)
        if args.once:
            return 1
        time.sleep(10)
    a = Archiver(cfg, s3)
    log("binlog archive: every %d s as %s (peers: %s)" % (
        a.interval, a.src, ", ".join(a.peers) or "none"))
    while True:
        started = time.time()
        try:
            a.cycle()
        except Exception as e:  # noqa: BLE001 - one failed cycle; the next one retries
            log("binlog archive: cycle failed: %s: %s" % (type(e).__name__, e))
            if args.once:
                return 1
        try:
            publish_state(s3, cfg)
        except Exception as e:  # noqa: BLE001 - metrics never stop the archive
            log("binlog archive: metrics not written: %s: %s" % (type(e).__name__, e))
        if args.once:
            return 0
        time.sleep(max(1.0, a.interval - (time.time() - started)))


def archive_health(s3, cfg):
    """(ok, message): the archive is complete up to at most 2 x the target lag ago."""
    b = cfg.get("binlog", {})
    hbs = heartbeats(s3, cfg)
    if not hbs:
        return False, "no binlog archiver has published a heartbeat under s3://%s/%s" % (
            cfg["bucket"], archive_prefix(cfg))
    newest = max(hbs.values(), key=lambda h: h["until"])
    lag = time.time() - newest["until"]
    limit = 2 * int(b.get("target_lag", 60))
    msg = "binlog archive complete up to %s by %s (lag %.0f s, at most %d s allowed)" % (
        iso(newest["until"]), newest["host"], lag, limit)
    return lag <= limit, msg


class BinlogReplay:
    """Binary logs from the archive after a base backup's position, up to a time."""
    # The GTID of each replayed event is the cluster's to give: a session may not set them
    # on a Galera node (and must not on a standalone one either: the restored server's own
    # history starts at the restore).
    SESSION_GTID = re.compile(r"^/\*M?!\d+ SET @@session\.(gtid_domain_id|server_id|gtid_seq_no)"
                              r"=[^*]*\*/ *(/\*!\*/;|;)?$", re.I)

    GTID_EVENT = re.compile(r"^#.*\bGTID (\d+)-(\d+)-(\d+)\b")

    def __init__(self, s3, cfg, base_binlog, until, stop_seq=None):
        """`until`: replay up to that second; `stop_seq`: up to and including that GTID
        sequence number of the domain (one of the two, or neither: the archive's end)."""
        self.s3, self.cfg, self.until, self.stop_seq = s3, cfg, until, stop_seq
        self.domain = base_binlog["domain"]
        self.start = gtid_seq(base_binlog["gtid"], self.domain)
        self.steps, self.reached, self.gap = chain(archived(s3, cfg), base_binlog.get("history"),
                                                   self.domain, self.start)

    def plan(self):
        """The files to replay: every step until the first file that may hold an event after
        second `until` (that one replayed up to the end of `until`, the rest not at all)."""
        out = []
        for f, after in self.steps:
            if self.stop_seq is not None:
                if after >= self.stop_seq:
                    break
                last = f["end"] >= self.stop_seq
            else:
                # A file last written in second `until` holds only events of that second
                # or before; the next file may still hold events of the same second.
                last = self.until is not None and f["mtime"] > self.until
            out.append((f, after, last))
            if last:
                break
        return out

    def run(self, workdir, socket=None):
        applied = 0
        for f, after, last in self.plan():
            step("replaying binlog %s/%s" % (f["src"], f["file"]))
            path = os.path.join(workdir, "binlog")
            self.s3.get_file(self.cfg["bucket"], f["key"], path)
            if not sha256_file(path).startswith(f["sha256"]):
                raise Refused("archived %s/%s: sha256 differs from its archive key" % (
                    f["src"], f["file"]))
            cmd = ["mariadb-binlog", "--start-position=%d-0-%d" % (self.domain, after),
                   "--skip-gtid-strict-mode"]
            if last and self.until is not None:
                cmd.append("--stop-datetime=" + iso(self.until + 1))
            cmd.append(path)
            env = dict(os.environ, TZ="UTC")
            dec = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
            cli = subprocess.Popen(mysql_cmd(self.cfg, "--binary-mode", socket=socket),
                                   stdin=subprocess.PIPE, stdout=subprocess.DEVNULL,
                                   stderr=subprocess.PIPE)
            stopped = broken = False
            try:
                for line in dec.stdout:
                    text = line.rstrip(b"\n").decode("utf-8", "replace")
                    if self.stop_seq is not None and text.startswith("#"):
                        m = self.GTID_EVENT.match(text)
                        # Event groups start at their GTID event: stopping before the
                        # first one past the point leaves no transaction half sent.
                        if m and int(m.group(1)) == self.domain and int(m.group(3)) > self.stop_seq:
                            stopped = True
                            break
                    if self.SESSION_GTID.match(text):
                        continue
                    cli.stdin.write(line)
                cli.stdin.close()
            except BrokenPipeError:
                broken = True
            if stopped or broken:
                # The decoder may be blocked writing to a pipe no one reads any more.
                dec.kill()
            derr = dec.stderr.read().decode("utf-8", "replace").strip()
            cerr = cli.stderr.read().decode("utf-8", "replace").strip()
            if dec.wait() != 0 and not stopped and not broken:
                raise RuntimeError("mariadb-binlog %s: %s" % (f["file"], derr))
            if cli.wait() != 0:
                raise RuntimeError("replaying %s/%s: %s" % (f["src"], f["file"], cerr))
            os.unlink(path)
            applied += 1
            if last:
                break
        return applied


# ---------------------------------------------------------------------------------------
# restore, verify
# ---------------------------------------------------------------------------------------
def gunzip_into(cmd, path, what):
    """Streams a gzipped file (a path, or a readable binary stream) into a command's
    standard input; raises with the command's standard error when it fails."""
    p = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL,
                         stderr=subprocess.PIPE)
    try:
        with gzip.open(path, "rb") as gz:
            shutil.copyfileobj(gz, p.stdin, 1 << 20)
        p.stdin.close()
    except BrokenPipeError:
        pass
    except BaseException:
        # The source failed (a cut download, a corrupt gzip, age): the command must not
        # take what it got for the whole.
        p.kill()
        p.wait()
        p.stderr.close()
        raise
    err = p.stderr.read().decode("utf-8", "replace")
    p.stderr.close()
    if p.wait() != 0:
        raise RuntimeError("%s: %s" % (what, err.strip()[-1000:]))


def load_dump(cfg, path, socket=None):
    """Pipes a gzipped dump into mariadb (the server's, or a scratch server's socket)."""
    gunzip_into(mysql_cmd(cfg, socket=socket), path,
                "mariadb failed loading %s" % os.path.basename(path))


class ScratchServer:
    """A private MariaDB server for one verification: its own data directory under the
    work directory, a socket, no network, no configuration file read (so no Galera), gone
    afterwards. The backup is restored into it exactly as a real restore would load it
    (same database names, qualified names in triggers and routines included)."""

    def __init__(self, cfg, datadir=None):
        """`datadir`: start on an existing (prepared physical) data directory instead of a
        new one."""
        self.cfg, self.datadir = cfg, datadir

    def __enter__(self):
        self.dir = tempfile.mkdtemp(prefix="verify-", dir=self.cfg["workdir"])
        data = self.datadir or os.path.join(self.dir, "data")
        self.socket = os.path.join(self.dir, "mysqld.sock")
        if not self.datadir:
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
        log_text = ""
        try:
            with open(os.path.join(self.dir, "error.log")) as f:
                log_text = f.read()[-500:]
        except OSError:
            pass
        self.__exit__(None, None, None)
        raise RuntimeError("the scratch MariaDB server did not start: %s" % log_text.strip())

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


def verify_physical(cfg, s3, stamp, manifest, tmp):
    """The physical copy extracted, prepared and started in a scratch server: its tables
    are compared with what the backup recorded around it."""
    phys = manifest["physical"]
    data = os.path.join(tmp, "physical-data")
    extract_physical(cfg, s3, stamp, manifest, data)
    problems = []
    with ScratchServer(cfg, datadir=data) as scratch:
        for db, want in sorted(phys["tables"].items()):
            got = table_stats(cfg, db, scratch.socket)
            if phys.get("stable", True):
                p = compare(db, want, got)
            else:
                p = ["%s.%s: missing in the physical copy" % (db, t) for t in want if t not in got]
            problems += ["physical: " + x for x in p]
            log("physical copy: %s: %d table(s) start in a scratch server%s" % (
                db, len(got), ", row counts and checksums equal" if not p and phys.get("stable", True)
                else (" (written to during the copy: table set checked)" if not p else "")))
    shutil.rmtree(data, ignore_errors=True)
    return problems


def content_script(cols):
    """Per base table: its row count and an order-free checksum of its content
    (BIT_XOR of each row's CRC32, NULL told apart from ''), as `T db table count crc` rows."""
    out = []
    for (db, t), cs in sorted(cols.items()):
        row = ", ".join("%s, ISNULL(%s)" % (qi(c), qi(c)) for c in cs)
        out.append("SELECT 'T', %s, %s, COUNT(*), IFNULL(BIT_XOR(CRC32(CONCAT_WS(0x1f, %s))), 0) "
                   "FROM %s.%s" % (sql_text(db), sql_text(t), row, qi(db), qi(t)))
    return out


def parse_content(text):
    got, status = {}, {}
    for line in text.splitlines():
        f = line.split("\t")
        if len(f) == 5 and f[0] == "T":
            got[(f[1], f[2])] = (int(f[3]), f[4])
        elif len(f) == 2:
            status[f[0].lower()] = f[1]
    return got, status


def live_snapshot(cfg, dbs):
    """The live server's tables as of one transaction WITH CONSISTENT SNAPSHOT, and the
    binary log position (as a GTID sequence of the cluster's domain) of that snapshot."""
    cols = {}
    if dbs:
        for db, t, c in sql(cfg, "SELECT c.TABLE_SCHEMA, c.TABLE_NAME, c.COLUMN_NAME FROM "
                                 "information_schema.COLUMNS c JOIN information_schema.TABLES t "
                                 "ON t.TABLE_SCHEMA = c.TABLE_SCHEMA AND t.TABLE_NAME = c.TABLE_NAME "
                                 "WHERE t.TABLE_TYPE = 'BASE TABLE' AND c.TABLE_SCHEMA IN (%s) "
                                 "ORDER BY c.TABLE_SCHEMA, c.TABLE_NAME, c.ORDINAL_POSITION"
                                 % ", ".join(sql_text(d) for d in dbs)):
            cols.setdefault((db, t), []).append(c)
    script = ["START TRANSACTION WITH CONSISTENT SNAPSHOT",
              "SHOW STATUS LIKE 'binlog_snapshot_%'"] + content_script(cols) + ["COMMIT"]
    r = subprocess.run(mysql_cmd(cfg, "-N", "-B"), input=";\n".join(script) + ";\n",
                       capture_output=True, text=True)
    if r.returncode != 0:
        raise RuntimeError("reading a consistent snapshot: %s" % r.stderr.strip()[-300:])
    want, status = parse_content(r.stdout)
    f, pos = status.get("binlog_snapshot_file"), status.get("binlog_snapshot_position")
    if not f or pos is None:
        raise RuntimeError("the server gave no binlog position for its snapshot")
    gtid = sql(cfg, "SELECT BINLOG_GTID_POS(%s, %d)" % (sql_text(f), int(pos)))[0][0]
    return gtid_seq("" if gtid == "NULL" else gtid, wsrep_domain(cfg)), cols, want


def verify_point_in_time(cfg, s3):
    """The binlog archive checked by use: the live server's consistent snapshot (row counts
    and content checksums, and its GTID), then the newest base backup plus the archived
    binary logs replayed up to exactly that GTID in a scratch server; every table must
    equal the snapshot's."""
    domain = wsrep_domain(cfg)
    t0 = time.time()
    seq, cols, want = live_snapshot(cfg, databases(cfg))
    stamp = pick_base(s3, cfg, t0)
    b = cfg.get("binlog") or {}
    wait = 4 * int(b.get("interval", 20)) + 120
    with tempfile.TemporaryDirectory(dir=cfg["workdir"]) as tmp:
        manifest = fetch(s3, cfg, stamp, tmp)
        base = manifest.get("binlog")
        if not base:
            return ["point in time: backup %s records no binlog position" % stamp]
        start = gtid_seq(base["gtid"], base["domain"])
        if start > seq:
            return []  # a base newer than the snapshot: nothing to replay to check
        while True:
            _, reached, _ = chain(archived(s3, cfg), base.get("history"), domain, start)
            if reached >= seq:
                break
            if time.time() - t0 > wait:
                return ["point in time: after %d s the archive reaches GTID %d-%d, not the "
                        "live snapshot's %d-%d" % (wait, domain, reached, domain, seq)]
            time.sleep(5)
        replay = BinlogReplay(s3, cfg, base, None, stop_seq=seq)
        with ScratchServer(cfg) as scratch:
            restore_databases(cfg, manifest, tmp, scratch.socket)
            if "users.sql.gz" in manifest["files"]:
                load_dump(cfg, os.path.join(tmp, "users.sql.gz"), scratch.socket)
            n = replay.run(tmp, scratch.socket)
            r = subprocess.run(mysql_cmd(cfg, "-N", "-B", "--force", socket=scratch.socket),
                               input=";\n".join(content_script(cols)) + ";\n",
                               capture_output=True, text=True)
            got, _ = parse_content(r.stdout)
    problems = []
    for k in sorted(want):
        if k not in got:
            problems.append("point in time: %s.%s: missing after the replay" % k)
        elif got[k] != want[k]:
            problems.append("point in time: %s.%s: %d rows (checksum %s) after the replay, the "
                            "live snapshot has %d rows (checksum %s)" % (k + got[k] + want[k]))
    log("point in time: backup %s + %d archived binlog file(s) replayed up to GTID %d-%d in a "
        "scratch server: %d table(s)%s" % (stamp, n, domain, seq, len(want),
                                           " equal the live server's snapshot" if not problems else ""))
    return problems


def cmd_verify(cfg, args):
    s3 = s3_client(cfg)
    stamp = pick(s3, cfg, args.from_)
    problems = []
    with tempfile.TemporaryDirectory(dir=cfg["workdir"]) as tmp:
        manifest = fetch(s3, cfg, stamp, tmp)
        if manifest.get("physical"):
            problems += verify_physical(cfg, s3, stamp, manifest, tmp)
        with ScratchServer(cfg) as scratch:
            restore_databases(cfg, manifest, tmp, scratch.socket)
            for db, meta in sorted(manifest["databases"].items()):
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
    if (cfg.get("binlog") or {}).get("enabled") and binlog_on(cfg) and args.from_ in (None, "", "latest"):
        problems += verify_point_in_time(cfg, s3)
    if problems:
        for p in problems:
            log("MISMATCH " + p)
        log("VERIFY FAILED: backup %s does not restore to what it recorded" % stamp)
        return 1
    log("verify %s: OK" % stamp)
    return 0


def parse_time(text):
    """'YYYY-MM-DD HH:MM:SS' (UTC) -> epoch seconds."""
    try:
        d = datetime.datetime.strptime(text.strip(), "%Y-%m-%d %H:%M:%S")
    except ValueError:
        raise Refused("--to-time %r: expected 'YYYY-MM-DD HH:MM:SS' (UTC)" % text)
    return int(d.replace(tzinfo=datetime.timezone.utc).timestamp())


def pick_base(s3, cfg, until, physical=False):
    """The newest complete backup taken at or before `until` (with `physical`: the newest
    that holds a physical copy; the archiver's first base backup takes none)."""
    found = backups(s3, cfg)
    for stamp in sorted((s for s, b in found.items() if b["complete"]), reverse=True):
        if parse_stamp(stamp).timestamp() > until:
            continue
        if physical and not has_physical(s3, cfg, stamp):
            continue
        return stamp
    raise Refused("no complete backup%s taken at or before %s" % (
        " with a physical copy" if physical else "", iso(until)))


def has_physical(s3, cfg, stamp):
    """Whether a backup's manifest lists a physical copy (read to choose only: fetch checks
    the manifest before anything is restored from it)."""
    base = "%s/%s/" % (cfg["prefix"].rstrip("/"), stamp)
    try:
        return PHYSICAL in json.loads(s3.get_bytes(cfg["bucket"], base + "manifest.json"))["files"]
    except Exception:  # noqa: BLE001 - unreadable: not a candidate
        return False


def galera_state(cfg, socket=None):
    """(wsrep_local_state, wsrep_ready) of a Galera node; None on a server without wsrep
    (a standalone server reports wsrep_ready OFF too)."""
    if sql(cfg, "SELECT @@wsrep_on", socket)[0][0] != "1":
        return None
    st = dict((k.lower(), v) for k, v in sql(
        cfg, "SHOW GLOBAL STATUS WHERE Variable_name IN ('wsrep_local_state', 'wsrep_ready')",
        socket))
    return st.get("wsrep_local_state"), st.get("wsrep_ready")


def wait_ready(cfg, limit):
    """Waits (at most `limit` seconds, saying what for) until the server answers, a Galera
    node is Synced, and Debian's debian-start (mysql_upgrade and table checks run at every
    start, which hold metadata locks a restore's DROP DATABASE would wait on) is over."""
    deadline = time.time() + limit
    said = None
    while True:
        why = None
        try:
            st = galera_state(cfg)
            if st is not None and st != ("4", "ON"):
                why = "the node to be Synced (wsrep_local_state %s, wsrep_ready %s)" % st
        except RuntimeError as e:
            why = "the server to answer (%s)" % str(e)[:120]
        if why is None:
            busy = subprocess.run(["pgrep", "-f", "-a", r"debian-start|mysql_upgrade|mariadb-upgrade|mysqlcheck|mariadb-check"],
                                  capture_output=True, text=True).stdout.strip()
            if busy:
                why = "Debian's debian-start to finish (%s)" % busy.splitlines()[0][:120]
        if why is None:
            return
        if time.time() > deadline:
            raise RuntimeError("gave up after %d s waiting for %s" % (limit, why))
        if why != said:
            log("waiting for " + why)
            said = why
        time.sleep(1)


def restore_databases(cfg, manifest, tmp, socket=None):
    """Drops the backup's databases (with a backup of the whole server: every database but
    the system ones, so the binary logs replay onto exactly the backup's state) and loads
    its dump files (each once)."""
    lw = int(cfg.get("lock_wait_timeout", 120))
    drop = set(manifest["databases"])
    if manifest.get("all_databases"):
        drop |= set(r[0] for r in sql(cfg, "SHOW DATABASES", socket) if r[0] not in SYSTEM_DBS)
    for db in sorted(drop):
        step("dropping database %s" % db)
        # A bound on the metadata lock: a DROP that would wait longer fails, saying so,
        # instead of hanging behind another session.
        sql(cfg, "SET SESSION lock_wait_timeout=%d; DROP DATABASE IF EXISTS %s" % (lw, qi(db)),
            socket)
    loaded = set()
    for db, meta in sorted(manifest["databases"].items()):
        if meta["file"] not in loaded:
            step("loading %s" % meta["file"])
            load_dump(cfg, os.path.join(tmp, meta["file"]), socket)
            loaded.add(meta["file"])


STEP = ["starting"]


def step(what):
    """Names what the run does now, for the message of a run that gives up."""
    STEP[0] = what


def bound(seconds, what):
    """Ends the whole run (this tool and the mariadb/mariadb-binlog it started) when it
    takes longer than `seconds`, saying which step it was in: a restore never hangs."""
    def expire(signum, frame):
        log("%s GAVE UP after %d s while %s; nothing further was done. Run it again: it "
            "starts over (databases dropped and reloaded)." % (what, seconds, STEP[0]))
        sys.stdout.flush()
        try:
            os.killpg(os.getpgid(0), signal.SIGTERM)
        finally:
            os._exit(124)
    signal.signal(signal.SIGALRM, expire)
    signal.alarm(max(1, int(seconds)))


def datadir_of(cfg):
    """The server's data directory (without a trailing slash): the running server's, else
    the configuration's (my_print_defaults), else Debian's."""
    try:
        return sql(cfg, "SELECT @@datadir")[0][0].rstrip("/")
    except RuntimeError:
        pass
    r = subprocess.run(["my_print_defaults", "--mysqld"], capture_output=True, text=True)
    for line in r.stdout.splitlines():
        if line.startswith("--datadir="):
            return line.split("=", 1)[1].rstrip("/")
    return "/var/lib/mysql"


def is_galera_config():
    """True when the server's configuration turns Galera on (for a server that is down)."""
    r = subprocess.run(["my_print_defaults", "--mysqld", "galera"], capture_output=True,
                       text=True)
    opts = dict(l[2:].split("=", 1) for l in r.stdout.splitlines()
                if l.startswith("--") and "=" in l)
    return opts.get("wsrep_on", "").upper() in ("ON", "1") and \
        opts.get("wsrep_provider", "none") != "none"


def binlog_info(datadir):
    """The GTID position the physical copy ends at (mariadb-backup's binlog info file)."""
    for name in ("mariadb_backup_binlog_info", "xtrabackup_binlog_info"):
        try:
            with open(os.path.join(datadir, name)) as f:
                parts = f.read().split()
        except FileNotFoundError:
            continue
        return parts[2] if len(parts) > 2 else ""
    return ""


def service(action, limit):
    """systemctl on mariadb.service (or galera_new_cluster for "bootstrap"), bounded."""
    cmd = ["galera_new_cluster"] if action == "bootstrap" else ["systemctl", action, "mariadb.service"]
    try:
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=limit)
    except subprocess.TimeoutExpired:
        raise RuntimeError("%s did not finish within %d s" % (" ".join(cmd), limit))
    if r.returncode != 0:
        j = subprocess.run(["journalctl", "-u", "mariadb.service", "-n", "15", "-o", "cat",
                            "--no-pager"], capture_output=True, text=True).stdout
        raise RuntimeError("%s failed (exit %d): %s\n%s" % (
            " ".join(cmd), r.returncode, (r.stderr or r.stdout).strip()[-300:], j.strip()))


def original_kept(state, have_datadir, have_old):
    """Whether an earlier physical restore was interrupted with the original data directory
    already moved to DATADIR.before-restore (then it is kept, and DATADIR, its copy if
    there, is replaced), from the state it recorded: "swapping" (written after the previous
    kept directory was removed, before DATADIR moves), "swapped" (after), "done"."""
    if state == "swapping":
        return not have_datadir and have_old
    return state == "swapped" and have_old


def physical_restore(cfg, s3, stamp, manifest, tmp, until, replay_binlogs):
    """The physical copy becomes this server's data directory, then the binary logs are
    replayed onto it. Everything is downloaded, checked, extracted and prepared beside the
    data directory (DATADIR.kiln-restore) before the server is touched; then the server
    stops, the current data directory is kept as DATADIR.before-restore (one kept: the
    previous one is removed), the prepared copy takes its place, and the server starts — a
    Galera node as a new cluster (galera_new_cluster): the prepared copy carries no cluster
    state, so the cluster starts a new history (a new state UUID) and the other nodes, whose
    state belongs to the old one, rejoin by full state transfer. An interrupted run is
    restartable: a state file tells a later run that DATADIR.before-restore holds the
    original, which is then kept. Returns the problems found."""
    phys = manifest.get("physical")
    if not phys:
        raise Refused("backup %s has no physical copy (the archiver's first base backup takes "
                      "none): restore it without --physical, or pick a backup that has one "
                      "(kiln-backup list)" % stamp)
    datadir = datadir_of(cfg)
    new, old = datadir + ".kiln-restore", datadir + ".before-restore"
    if os.path.ismount(datadir) or \
            os.stat(os.path.dirname(datadir)).st_dev != os.stat(datadir).st_dev:
        raise Refused("%s is a mount point: a physical restore swaps it with a directory beside "
                      "it (a rename within one file system). Mount the volume one level up, or "
                      "restore without --physical" % datadir)
    state_file = os.path.join(cfg["workdir"], "physical-restore")

    def set_state(v):
        with open(state_file + ".tmp", "w") as f:
            f.write(v + "\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(state_file + ".tmp", state_file)

    try:
        with open(state_file) as f:
            state = f.read().strip()
    except FileNotFoundError:
        state = ""
    was_galera = None
    try:
        was_galera = galera_state(cfg) is not None
    except RuntimeError:
        pass
    galera = was_galera if was_galera is not None else is_galera_config()
    step("streaming, checking, extracting and preparing the physical copy into %s" % new)
    shutil.rmtree(new, ignore_errors=True)
    extract_physical(cfg, s3, stamp, manifest, new)
    gtid = binlog_info(new)
    replay = None
    if replay_binlogs and manifest.get("binlog"):
        if not gtid:
            raise Refused("the physical copy of %s records no binlog position: it cannot be "
                          "rolled forward" % stamp)
        base = dict(manifest["binlog"], gtid=gtid)
        replay = BinlogReplay(s3, cfg, base, until)
        if replay.gap:
            log("WARNING: the binlog archive has a hole after GTID sequence %d: the "
                "replay stops there" % replay.reached)
        log("point in time: physical copy of %s (GTID %s) + %d archived binlog file(s) up "
            "to %s" % (stamp, gtid, len(replay.plan()),
                       iso(until) if until else "the archive's end"))
    elif until is not None:
        raise Refused("backup %s records no binlog position: it cannot be rolled forward "
                      "to %s" % (stamp, iso(until)))
    for name in ("grastate.dat", "galera.cache", "gvwstate.dat"):
        try:
            os.unlink(os.path.join(new, name))
        except FileNotFoundError:
            pass
    subprocess.run(["chown", "-R", "mysql:mysql", new], check=True)
    step("stopping MariaDB")
    service("stop", 300)
    # The swap, recorded so that a run killed anywhere in it leaves the original where a
    # later run finds and keeps it: "swapping" (OLD, if any, was removed; DATADIR may or may
    # not have moved yet), "swapped" (OLD is the original), "done" (a finished restore:
    # OLD is what it kept, removed by the next one).
    if original_kept(state, os.path.isdir(datadir), os.path.isdir(old)):
        log("an earlier physical restore was interrupted: %s (the data before it) is kept" % old)
        shutil.rmtree(datadir, ignore_errors=True)
    else:
        if os.path.isdir(old):
            log("removing %s (the data directory the previous restore kept)" % old)
            shutil.rmtree(old)
        set_state("swapping")
        try:
            os.rename(datadir, old)
        except OSError:
            # Nothing moved: the original starts again as it was (a Galera node as the
            # cluster's first: kiln stopped the others before it).
            set_state("done")
            log("%s could not be moved aside; starting MariaDB again on it" % datadir)
            service("bootstrap" if galera else "start", 900)
            raise
        set_state("swapped")
    os.rename(new, datadir)
    step("starting MariaDB on the restored data directory")
    try:
        service("bootstrap" if galera else "start", 900)
        wait_ready(cfg, int(cfg.get("ready_timeout", 600)))
    except Exception:
        log("the restored data directory did not start; the data before the restore is in %s "
            "(run the restore again: it keeps that directory)" % old)
        raise
    set_state("done")
    log("physical copy of %s in place%s; the data directory before the restore is kept in "
        "%s (remove it once the restore is checked)" % (
            stamp, ", a new Galera cluster formed from it (a new history)" if galera else "",
            old))
    problems = []
    for db, want in sorted(phys["tables"].items()):
        problems += check_restored(cfg, db, want, phys.get("stable", True))
    if replay:
        roll_forward(s3, cfg, replay, tmp, until)
    return problems


def cmd_restore(cfg, args):
    bound(int(cfg.get("restore_timeout", 4 * 3600)), "RESTORE")
    s3 = s3_client(cfg)
    until = parse_time(args.to_time) if args.to_time else None
    physical = getattr(args, "physical", False)
    if until is not None:
        stamp = pick_base(s3, cfg, until, physical)
    elif physical and args.from_ in (None, "", "latest"):
        stamp = pick_base(s3, cfg, time.time(), physical)
    else:
        stamp = pick(s3, cfg, args.from_)
    replay_binlogs = until is not None or (args.from_ in (None, "", "latest") and not args.no_binlog)
    problems = []
    if not physical:
        # (A physical restore replaces the data directory: the server may even be down.)
        step("waiting for the server to be ready")
        wait_ready(cfg, int(cfg.get("ready_timeout", 600)))
    with tempfile.TemporaryDirectory(dir=cfg["workdir"]) as tmp:
        # Everything is downloaded and checked before anything is touched.
        step("downloading and checking backup %s" % stamp)
        manifest = fetch(s3, cfg, stamp, tmp, logical=not physical)
        if physical:
            problems += physical_restore(cfg, s3, stamp, manifest, tmp, until, replay_binlogs)
        else:
            problems += logical_restore(cfg, s3, stamp, manifest, tmp, until, replay_binlogs,
                                        args)
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


def check_restored(cfg, db, want, stable):
    """A restored database's tables against the backup's record (row counts and checksums,
    when nothing wrote to it while the backup read it); says so, returns the problems."""
    got = table_stats(cfg, db)
    p = compare(db, want, got) if stable else []
    log("restored database %s: %d table(s)%s" % (
        db, len(got), ", row counts and checksums equal the backup's" if not p else ""))
    return p


def roll_forward(s3, cfg, replay, tmp, until):
    """Replays the archived binary logs after the restored base, up to `until` (or the
    archive's end), and says how far the archive reached."""
    n = replay.run(tmp)
    log("replayed %d binlog file(s): the databases are as of %s" % (
        n, iso(until) if until else "the archive's end, GTID sequence %d" % replay.reached))
    archive_reach(s3, cfg, until)


def archive_reach(s3, cfg, until):
    """Says how far the archive reached (and warns when short of `until`)."""
    hbs = heartbeats(s3, cfg)
    if until is None and hbs:
        newest = max(hbs.values(), key=lambda h: h["until"])
        log("the archive was complete up to %s (%s)" % (iso(newest["until"]), newest["host"]))
    if until is not None and hbs and max(h["until"] for h in hbs.values()) < until:
        log("WARNING: the archive reaches only %s, before the requested %s" % (
            iso(max(h["until"] for h in hbs.values())), iso(until)))


def logical_restore(cfg, s3, stamp, manifest, tmp, until, replay_binlogs, args):
    """The logical dump loaded into the running server, then the binary logs replayed."""
    problems = []
    replay = None
    if replay_binlogs and manifest.get("binlog"):
        replay = BinlogReplay(s3, cfg, manifest["binlog"], until)
        if replay.gap:
            log("WARNING: the binlog archive has a hole after GTID sequence %d: the "
                "replay stops there" % replay.reached)
        log("point in time: backup %s + %d archived binlog file(s) up to %s" % (
            stamp, len(replay.plan()), iso(until) if until else "the archive's end"))
    elif until is not None:
        raise Refused("backup %s records no binlog position: it cannot be rolled forward "
                      "to %s" % (stamp, iso(until)))
    restore_databases(cfg, manifest, tmp)
    for db, meta in sorted(manifest["databases"].items()):
        problems += check_restored(cfg, db, meta["tables"], meta.get("stable", True))
    # The accounts before the replay: the binary logs after the backup may change or drop
    # them (GRANT, DROP USER), which fails on a server that lacks them.
    if not args.no_users and "users.sql.gz" in manifest["files"]:
        load_dump(cfg, os.path.join(tmp, "users.sql.gz"))
        log("restored accounts (existing ones kept: INSERT IGNORE)")
    if replay:
        roll_forward(s3, cfg, replay, tmp, until)
    return problems


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
# seed: another environment's data, anonymised, as this environment's backup
# ---------------------------------------------------------------------------------------
FIRST_NAMES = ("Ada", "Alan", "Anna", "Ben", "Clara", "David", "Elena", "Emil", "Frida", "Grace",
               "Hugo", "Ines", "Jonas", "Karin", "Leo", "Lina", "Marta", "Nils", "Olga", "Paul",
               "Rosa", "Sam", "Tara", "Theo", "Uma", "Vera", "Wim", "Xenia", "Yann", "Zoe",
               "Ivan", "Mira")
LAST_NAMES = ("Archer", "Baker", "Carter", "Dalton", "Ellis", "Fischer", "Garcia", "Hansen",
              "Ito", "Jensen", "Keller", "Larsen", "Moreau", "Novak", "Olsen", "Petrov", "Quinn",
              "Rossi", "Schmidt", "Tanaka", "Ueda", "Vidal", "Walsh", "Xu", "Young", "Zeller",
              "Berg", "Costa", "Dubois", "Weber", "Silva", "Kowalski")
ACTIONS = ("keep", "name", "email", "phone", "hash", "null")
IDENT = re.compile(r"^[A-Za-z0-9_$]{1,64}$")
PLACEHOLDER_PNG = bytes.fromhex(
    "89504e470d0a1a0a0000000d49484452000000010000000108060000001f15c489"
    "0000000b4944415478da636000020000050001e9fadcd80000000049454e44ae426082")


def hmac_pads(key):
    """HMAC-SHA256's inner and outer padded keys (hex), so the server computes the HMAC of
    each value (RFC 2104) without the key ever being a column or a log line."""
    if len(key) > 64:
        key = hashlib.sha256(key).digest()
    key = key.ljust(64, b"\0")
    return bytes(b ^ 0x36 for b in key).hex(), bytes(b ^ 0x5c for b in key).hex()


def sql_text(v):
    return "'" + str(v).replace("\\", "\\\\").replace("'", "''") + "'"


def fake_expr(action, col, maxlen):
    """The SQL expression replacing column `col` (already quoted) for an action: a function
    of HMAC(key, value) alone, so the same value gets the same fake everywhere (joins on an
    email still match) and the same backup anonymises the same way twice."""
    h = "SHA2(CONCAT(@kiln_ko, UNHEX(SHA2(CONCAT(@kiln_ki, %s), 256))), 256)" % col
    if action == "name":
        e = "CONCAT(ELT(1 + CONV(SUBSTR(%s, 1, 4), 16, 10) %% %d, %s), ' ', " \
            "ELT(1 + CONV(SUBSTR(%s, 5, 4), 16, 10) %% %d, %s))" % (
                h, len(FIRST_NAMES), ", ".join(sql_text(n) for n in FIRST_NAMES),
                h, len(LAST_NAMES), ", ".join(sql_text(n) for n in LAST_NAMES))
    elif action == "email":
        e = "CONCAT('user-', SUBSTR(%s, 1, 16), '@example.invalid')" % h
    elif action == "phone":
        e = "CONCAT('+1-555-01', LPAD(CONV(SUBSTR(%s, 1, 4), 16, 10) %% 100, 2, '0'))" % h
    elif action == "hash":
        e = h
    else:
        raise Refused("unknown anonymisation action %r" % action)
    if maxlen:
        e = "LEFT(%s, %d)" % (e, maxlen)
    return "IF(%s IS NULL, NULL, %s)" % (col, e)


def anonymize_statements(rules, columns, at):
    """The SQL that applies `rules` ({"tables": [...]}) to tables whose columns are
    `columns` ({(db, table): {column: (data_type, max_length, nullable)}}), with the
    session clock fixed at `at` (ON UPDATE CURRENT_TIMESTAMP columns get the same value
    on every run). Raises Refused for a rule that names what is not there."""
    out = ["SET SESSION timestamp = %d" % at, "SET SESSION foreign_key_checks = 0"]
    text_types = ("char", "varchar", "tinytext", "text", "mediumtext", "longtext")
    for t in rules.get("tables", []):
        db, table = t["db"], t["table"]
        for n in (db, table):
            if not IDENT.match(n):
                raise Refused("anonymisation rule: %r is not a plain table name" % n)
        cols = columns.get((db, table))
        if cols is None:
            raise Refused("anonymisation rule for %s.%s: no such table in the backup" % (db, table))
        target = "%s.%s" % (qi(db), qi(table))
        if t.get("truncate"):
            out.append("DELETE FROM %s" % target)
            continue
        for d in t.get("drop", []):
            c = d["column"]
            if c not in cols:
                raise Refused("anonymisation rule for %s.%s: drop: no column %r" % (db, table, c))
            if "equals" in d:
                out.append("DELETE FROM %s WHERE %s = %s" % (target, qi(c), sql_text(d["equals"])))
            else:
                out.append("DELETE FROM %s WHERE %s LIKE %s" % (target, qi(c), sql_text(d["like"])))
        sets = []
        for c, action in sorted(t.get("columns", {}).items()):
            if action not in ACTIONS:
                raise Refused("anonymisation rule for %s.%s.%s: unknown action %r" % (
                    db, table, c, action))
            if c not in cols:
                raise Refused("anonymisation rule for %s.%s: no column %r" % (db, table, c))
            if action == "keep":
                continue
            data_type, maxlen, nullable = cols[c]
            if action == "null":
                if not nullable:
                    raise Refused("anonymisation rule for %s.%s.%s: null, but the column is "
                                  "NOT NULL" % (db, table, c))
                sets.append("%s = NULL" % qi(c))
                continue
            if data_type not in text_types:
                raise Refused("anonymisation rule for %s.%s.%s: %s needs a text column, the "
                              "column is %s" % (db, table, c, action, data_type))
            sets.append("%s = %s" % (qi(c), fake_expr(action, qi(c), maxlen)))
        if sets:
            out.append("UPDATE %s SET %s" % (target, ", ".join(sets)))
    return out


def table_columns(cfg, socket):
    out = {}
    for db, table, col, typ, maxlen, nullable in sql(
            cfg, "SELECT TABLE_SCHEMA, TABLE_NAME, COLUMN_NAME, DATA_TYPE, "
                 "IFNULL(CHARACTER_MAXIMUM_LENGTH, 0), IS_NULLABLE FROM information_schema.COLUMNS "
                 "WHERE TABLE_SCHEMA NOT IN ('information_schema', 'mysql', 'performance_schema', "
                 "'sys')", socket):
        out.setdefault((db, table), {})[col] = (typ.lower(), int(maxlen), nullable == "YES")
    return out


def anonymize(cfg, socket, rules, key, at):
    """Applies the rules in the scratch server, statement by statement, through stdin (the
    key's pads are never on a command line)."""
    ki, ko = hmac_pads(key)
    stmts = anonymize_statements(rules, table_columns(cfg, socket), at)
    script = "SET @kiln_ki = UNHEX('%s'), @kiln_ko = UNHEX('%s');\n%s;\n" % (
        ki, ko, ";\n".join(stmts))
    r = subprocess.run(mysql_cmd(cfg, "-N", "-B", socket=socket), input=script,
                       capture_output=True, text=True)
    if r.returncode != 0:
        raise RuntimeError("anonymising: %s" % r.stderr.strip()[-500:])
    n = len(rules.get("tables", []))
    log("anonymised %d table(s) in the scratch server (%d statement(s))" % (n, len(stmts) - 2))


def seed_media(s3, cfg, ds3, dcfg, media, mode, tmp):
    """The source backup's media into the destination's mirror bucket: copied, or each
    object replaced by a placeholder (a 1×1 PNG for images, a line of text otherwise)."""
    if mode == "none" or not media:
        log("media: not copied (%s)" % ("rules say none" if mode == "none" else "the backup has none"))
        return None
    if not dcfg.get("media_bucket") or not dcfg.get("media_mirror_bucket"):
        log("media: the destination has no media bucket; not copied")
        return None
    ds3.make_bucket(dcfg["media_mirror_bucket"])
    index = {}
    path = os.path.join(tmp, "media-object")
    for k, meta in sorted(media["objects"].items()):
        if mode == "placeholder":
            image = k.lower().rsplit(".", 1)[-1] in ("png", "jpg", "jpeg", "gif", "webp")
            with open(path, "wb") as f:
                f.write(PLACEHOLDER_PNG if image else b"placeholder (kiln seed)\n")
        else:
            s3.get_file(media["mirror"], k, path)
            if sha256_file(path) != meta["sha256"]:
                raise Refused("media %s: the mirror holds another version than the backup's" % k)
        sha = ds3.put_file(dcfg["media_mirror_bucket"], k, path)
        index[k] = {"size": os.path.getsize(path), "etag": "", "sha256": sha}
        os.unlink(path)
    log("media: %d object(s) %s" % (len(index), "as placeholders" if mode == "placeholder" else "copied"))
    return {"bucket": dcfg["media_bucket"], "mirror": dcfg["media_mirror_bucket"], "objects": index}


def cmd_seed_export(cfg, args):
    bound(int(cfg.get("restore_timeout", 4 * 3600)), "SEED")
    with open(args.rules) as f:
        rules = json.load(f)
    with open(args.key_file, "rb") as f:
        key = f.read().strip()
    if rules.get("tables") and not key:
        raise Refused("no anonymisation key")
    dcfg = load_config(args.to_config)
    ds3 = s3_client(dcfg, args.to_credentials)
    s3 = s3_client(cfg)
    stamp = pick(s3, cfg, "latest")
    with tempfile.TemporaryDirectory(dir=cfg["workdir"]) as tmp:
        step("downloading and checking backup %s" % stamp)
        manifest = fetch(s3, cfg, stamp, tmp)
        out = os.path.join(tmp, "out")
        os.mkdir(out)
        with ScratchServer(cfg) as scratch:
            step("loading backup %s into a scratch server" % stamp)
            restore_databases(cfg, manifest, tmp, scratch.socket)
            # The accounts too, for the replay (GRANT, DROP USER); the copy is dumped with
            # --databases only, so they never reach the destination.
            if "users.sql.gz" in manifest["files"]:
                load_dump(cfg, os.path.join(tmp, "users.sql.gz"), scratch.socket)
            replayed, point = 0, "backup %s" % stamp
            if manifest.get("binlog"):
                replay = BinlogReplay(s3, cfg, manifest["binlog"], None)
                replayed = replay.run(tmp, scratch.socket)
                point = "backup %s + %d archived binlog file(s), GTID sequence %d" % (
                    stamp, replayed, replay.reached)
            log("source point: %s" % point)
            step("anonymising")
            at = int(parse_stamp(stamp).timestamp())
            anonymize(cfg, scratch.socket, rules, key, at)
            dbs = [r[0] for r in sql(cfg, "SHOW DATABASES", scratch.socket)
                   if r[0] not in SYSTEM_DBS]
            dstamp = datetime.datetime.now(datetime.timezone.utc).strftime(STAMP)
            seeded = {"format": 1, "timestamp": dstamp, "host": socket.gethostname(),
                      "files": {}, "databases": {}, "all_databases": True,
                      "seed": {"from_prefix": cfg["prefix"], "from_backup": stamp,
                               "binlog_files": replayed,
                               "anonymized_tables": len(rules.get("tables", [])),
                               "media": rules.get("media", "copy")}}
            if dbs:
                step("dumping the anonymised databases")
                name = "databases.sql.gz"
                pipe_to_gzip(["mariadb-dump", "--no-defaults", "--socket=" + scratch.socket,
                              "-uroot", "--single-transaction", "--routines", "--triggers",
                              "--events", "--hex-blob", "--databases"] + dbs,
                             os.path.join(out, name))
                for db in dbs:
                    seeded["databases"][db] = {"file": name, "stable": True,
                                               "tables": table_stats(cfg, db, scratch.socket)}
        step("uploading to the destination")
        ds3.make_bucket(dcfg["bucket"])
        base = "%s/%s/" % (dcfg["prefix"].rstrip("/"), dstamp)
        upload_files(ds3, dcfg, base, out, seeded)
        seeded["media"] = seed_media(s3, cfg, ds3, dcfg, manifest.get("media"),
                                     rules.get("media", "copy"), tmp)
        put_manifest(ds3, dcfg, base, seeded)
    log("seed backup %s written to s3://%s/%s (%d database(s): %s)" % (
        dstamp, dcfg["bucket"], base, len(dbs), ", ".join(dbs) or "none"))
    print("SEEDED %s" % dstamp)
    return 0


def seed_marker(cfg):
    return "%s/seed.json" % cfg["prefix"].rstrip("/")


def cmd_seeded(cfg, args):
    s3 = s3_client(cfg)
    if args.mark:
        if not re.fullmatch(r"\d{8}T\d{6}Z", args.mark) or not re.fullmatch(r"[A-Za-z0-9_-]{1,64}", args.from_env or ""):
            raise Refused("seeded --mark STAMP --from ENV")
        s3.put_bytes(cfg["bucket"], seed_marker(cfg), json.dumps(
            {"backup": args.mark, "from": args.from_env,
             "at": iso(time.time())}, sort_keys=True).encode())
        log("recorded: seeded from %s (backup %s)" % (args.from_env, args.mark))
        return 0
    try:
        print(s3.get_bytes(cfg["bucket"], seed_marker(cfg)).decode())
        return 0
    except Exception as e:  # noqa: BLE001
        # Only a marker that is surely absent means "not seeded": a storage that does not
        # answer must never make kiln seed (replace the databases) again.
        if getattr(e, "status", None) != 404:
            raise
    print("not seeded")
    return 4


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


def die_with_caller():
    """When kiln runs this tool over SSH and goes away (killed, connection lost), the
    pipe of our standard output loses its reader: end this run and everything it started
    (mariadb, mariadb-binlog), so no restore goes on unattended. Under systemd (the
    timers) standard output is the journal's socket, not a pipe, and nothing is watched."""
    try:
        if not stat.S_ISFIFO(os.fstat(1).st_mode):
            return
    except OSError:
        return

    def watch():
        p = select.poll()
        p.register(1, select.POLLERR | select.POLLHUP)
        while True:
            for _, ev in p.poll(1000):
                if ev & (select.POLLERR | select.POLLHUP):
                    try:
                        os.killpg(os.getpgid(0), signal.SIGTERM)
                    finally:
                        os._exit(143)
    threading.Thread(target=watch, daemon=True).start()


def main(argv):
    ap = argparse.ArgumentParser(prog="kiln-backup")
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("run")
    p.add_argument("--if-leader", dest="if_leader", action="store_true")
    p = sub.add_parser("health")
    p.add_argument("--wait", type=int, default=0)
    sub.add_parser("list")
    for name in ("verify", "restore"):
        p = sub.add_parser(name)
        p.add_argument("--from", dest="from_", default="latest")
        if name == "restore":
            p.add_argument("--no-media", action="store_true")
            p.add_argument("--no-users", action="store_true")
            p.add_argument("--to-time", dest="to_time", default=None)
            p.add_argument("--no-binlog", action="store_true")
            p.add_argument("--physical", action="store_true")
    p = sub.add_parser("archive")
    p.add_argument("--once", action="store_true")
    p = sub.add_parser("physical-extract")
    p.add_argument("--from", dest="from_", default="latest")
    p.add_argument("dir")
    p = sub.add_parser("seed-export")
    p.add_argument("--to-config", required=True)
    p.add_argument("--to-credentials", required=True)
    p.add_argument("--rules", required=True)
    p.add_argument("--key-file", required=True)
    p = sub.add_parser("seeded")
    p.add_argument("--mark")
    p.add_argument("--from", dest="from_env")
    p = sub.add_parser("prune")
    p.add_argument("--prefix")
    p.add_argument("--dry-run", action="store_true")
    p = sub.add_parser("s3")
    p.add_argument("op", choices=["ls", "put", "get", "rm", "mb"])
    p.add_argument("bucket")
    p.add_argument("rest", nargs="*")
    args = ap.parse_args(argv[1:])
    os.umask(0o077)
    if args.cmd in ("restore", "verify", "run", "seed-export"):
        die_with_caller()
    cfg = load_config()
    held = lock(cfg) if args.cmd in ("run", "verify", "restore", "prune", "seed-export") else None
    rc = 1
    try:
        if args.cmd == "prune":
            return prune(s3_client(cfg), cfg, args.prefix or cfg["prefix"], args.dry_run)
        rc = {"run": cmd_run, "health": cmd_health, "list": cmd_list, "verify": cmd_verify,
                "restore": cmd_restore, "s3": cmd_s3, "archive": cmd_archive,
                "seed-export": cmd_seed_export, "seeded": cmd_seeded,
                "physical-extract": cmd_physical_extract}[args.cmd](cfg, args)
        return rc
    except Refused as e:
        log("REFUSED: %s; nothing was restored" % e)
        return 3
    finally:
        if held:
            held.close()
        if args.cmd in ("run", "verify"):
            # The outcome for Prometheus (BackupFailed): an exception counts as a failure.
            try:
                record_run(cfg, "backup" if args.cmd == "run" else "verify", rc == 0)
            except Exception as e:  # noqa: BLE001 - metrics never change the outcome
                log("metrics not written: %s: %s" % (type(e).__name__, e))


if __name__ == "__main__":
    try:
        sys.exit(main(sys.argv))
    except Exception as e:  # noqa: BLE001 - one line, no traceback with local values
        log("FAILED: %s: %s" % (type(e).__name__, e))
        sys.exit(1)
