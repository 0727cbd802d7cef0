#!/usr/bin/env python3
"""The lab's apt cache: a small caching HTTP proxy on the lab bridge, for the lab hosts' apt.

It replaces apt-cacher-ng, which stalls when many new hosts refresh the same InRelease in the
same second (BENCHMARKS.md, Analysis: its parallel revalidations collide and leave apt's http
method waiting on a half-closed socket). Here every file has one fetch at a time, whatever the
number of clients asking for it: the first asker fetches, the others wait for that fetch and
get its result.

- Index files that change in place (everything under dists/ but by-hash/) are fresh for
  --ttl seconds after their fetch; after that the next asker fetches them again. When the
  mirror cannot be reached, the last good copy is served (and the log says so).
- Everything else (pool/ packages, by-hash/ indexes) never changes under its name and is kept.
  A by-hash/SHA256 file is checked against its name before it is kept.
- A fetch is complete or not kept: the body must match Content-Length, it is written to a
  temporary file and renamed into place.
- Only the mirrors named by --allow are fetched from (no open proxy on the bridge); anything
  else gets 403. Only GET and HEAD.

Run by `kiln lab up` (src/provider/lab/apt_cache.rs), one process for every lab host.
"""

import argparse
import hashlib
import http.client
import http.server
import os
import re
import shutil
import socketserver
import sys
import tempfile
import threading
import time
import urllib.parse

USER_AGENT = "kiln-lab-apt-cache"
CHUNK = 1 << 16


class Cache:
    def __init__(self, root, ttl, allow, timeout, tries):
        self.root = root
        self.ttl = ttl
        self.allow = allow
        self.timeout = timeout
        self.tries = tries
        self.guard = threading.Lock()
        self.locks = {}

    def lock(self, key):
        with self.guard:
            return self.locks.setdefault(key, threading.Lock())

    def path(self, key):
        digest = hashlib.sha256(key.encode()).hexdigest()
        return os.path.join(self.root, digest[:2], digest)

    @staticmethod
    def volatile(path):
        return "/dists/" in path and "/by-hash/" not in path

    def fresh(self, key, path):
        file = self.path(key)
        try:
            age = time.time() - os.stat(file).st_mtime
        except FileNotFoundError:
            return None
        if not self.volatile(path) or age < self.ttl:
            return file
        return None

    def get(self, host, port, path):
        """(status, file or None, how): status 200 with a cached file, or an error status."""
        key = f"{host}:{port}{path}"
        file = self.fresh(key, path)
        if file:
            return 200, file, "hit"
        with self.lock(key):
            file = self.fresh(key, path)
            if file:
                return 200, file, "hit after wait"
            status, why = self.fetch(host, port, path, self.path(key))
            if status == 200:
                return 200, self.path(key), "fetched"
            stale = self.path(key)
            if status >= 500 and os.path.exists(stale):
                return 200, stale, f"stale ({why})"
            return status, None, why

    def fetch(self, host, port, path, dest):
        why = ""
        for attempt in range(self.tries):
            if attempt:
                time.sleep(2 * attempt)
            try:
                return self.fetch_once(host, port, path, dest)
            except (OSError, http.client.HTTPException, ValueError) as e:
                why = f"{type(e).__name__}: {e}"
                log(f"fetch {host}{path} failed (try {attempt + 1} of {self.tries}): {why}")
        return 502, why

    def fetch_once(self, host, port, path, dest):
        conn = http.client.HTTPConnection(host, port, timeout=self.timeout)
        try:
            conn.request(
                "GET",
                path,
                headers={"User-Agent": USER_AGENT, "Accept-Encoding": "identity"},
            )
            resp = conn.getresponse()
            if resp.status != 200:
                resp.read()
                if resp.status >= 500:
                    raise ValueError(f"the mirror answered {resp.status} {resp.reason}")
                return resp.status, f"{resp.status} {resp.reason}"
            os.makedirs(os.path.dirname(dest), exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=os.path.dirname(dest), prefix=".part-")
            try:
                sha = hashlib.sha256()
                size = 0
                with os.fdopen(fd, "wb") as out:
                    while True:
                        block = resp.read(CHUNK)
                        if not block:
                            break
                        sha.update(block)
                        size += len(block)
                        out.write(block)
                expected = resp.getheader("Content-Length")
                if expected is not None and int(expected) != size:
                    raise ValueError(f"short body: {size} of {expected} bytes")
                named = re.search(r"/by-hash/SHA256/([0-9a-f]{64})$", path)
                if named and named.group(1) != sha.hexdigest():
                    raise ValueError("by-hash file does not match its SHA256 name")
                os.replace(tmp, dest)
                tmp = None
            finally:
                if tmp:
                    os.unlink(tmp)
            return 200, "fetched"
        finally:
            conn.close()


def log(msg):
    sys.stderr.write(f"{time.strftime('%H:%M:%S')} {msg}\n")
    sys.stderr.flush()


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = USER_AGENT
    cache = None  # set in main
    timeout = 300  # an idle client connection is closed after this

    def log_message(self, fmt, *args):
        pass

    def do_HEAD(self):
        self.answer(body=False)

    def do_GET(self):
        self.answer(body=True)

    def target(self):
        url = urllib.parse.urlsplit(self.path)
        if url.scheme == "http" and url.hostname:
            host, port, path = url.hostname, url.port or 80, url.path
        elif self.path.startswith("/"):
            raw = self.headers.get("Host", "")
            host, _, p = raw.partition(":")
            port, path = int(p) if p.isdigit() else 80, url.path
        else:
            return None
        if not path.startswith("/") or "/../" in path + "/" or "\x00" in path:
            return None
        return host.lower(), port, path

    def answer(self, body):
        started = time.monotonic()
        target = self.target()
        if target is None:
            return self.fail(400, "not an http URL this cache serves", body)
        host, port, path = target
        if f"{host}:{port}" not in self.cache.allow:
            return self.fail(403, f"{host}:{port} is not a mirror of the lab", body)
        status, file, how = self.cache.get(host, port, path)
        if status != 200:
            log(f"{self.client_address[0]} {host}{path}: {status} ({how})")
            return self.fail(status, how, body)
        try:
            with open(file, "rb") as f:
                size = os.fstat(f.fileno()).st_size
                self.send_response(200)
                self.send_header("Content-Type", "application/octet-stream")
                self.send_header("Content-Length", str(size))
                self.end_headers()
                if body:
                    shutil.copyfileobj(f, self.wfile, CHUNK)
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True
            return
        if how != "hit":
            log(f"{self.client_address[0]} {host}{path}: {how}, {size} bytes, "
                f"{time.monotonic() - started:.1f} s")

    def fail(self, status, why, body):
        text = f"{status} {why}\n".encode()
        self.send_response(status)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(text)))
        self.end_headers()
        if body:
            self.wfile.write(text)


class Server(socketserver.ThreadingMixIn, http.server.HTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 128


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--listen", required=True, help="ADDRESS:PORT")
    ap.add_argument("--dir", required=True, help="the cache directory")
    ap.add_argument("--allow", action="append", default=[], help="HOST[:PORT] of a mirror")
    ap.add_argument("--ttl", type=int, default=600, help="seconds an index file is fresh")
    ap.add_argument("--timeout", type=int, default=60, help="seconds of mirror silence")
    ap.add_argument("--tries", type=int, default=3)
    args = ap.parse_args()
    allow = {a if ":" in a else f"{a}:80" for a in args.allow}
    Handler.cache = Cache(args.dir, args.ttl, allow, args.timeout, args.tries)
    os.makedirs(args.dir, exist_ok=True)
    address, _, port = args.listen.rpartition(":")
    server = Server((address, int(port)), Handler)
    log(f"listening on {args.listen}, mirrors {sorted(allow)}, index files fresh {args.ttl} s")
    server.serve_forever()


if __name__ == "__main__":
    main()
