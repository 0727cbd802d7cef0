#!/usr/bin/python3
# Managed by kiln (minio module). kiln-minio: what the minio module does through the S3
# and MinIO admin APIs, with the root credentials from /etc/default/minio (never taken
# from or put on a command line).
#   kiln-minio wait [SECONDS]   until /minio/health/live answers 200
#   kiln-minio ensure [--check] buckets and canned policies of /etc/kiln/minio/config.json,
#                               users of /etc/kiln/minio/users.json (0600: their secret keys);
#                               --check: exit 0 when nothing is missing (changes nothing)
import http.client
import json
import os
import struct
import sys
import time
import urllib.parse

sys.path.insert(0, "/usr/local/lib/kiln")
import kiln_s3  # noqa: E402

CONFIG = "/etc/kiln/minio/config.json"
USERS = "/etc/kiln/minio/users.json"
ENV = "/etc/default/minio"


def log(msg):
    print("kiln-minio: " + msg, file=sys.stderr)


def live(endpoint):
    u = urllib.parse.urlsplit(endpoint)
    try:
        c = http.client.HTTPConnection(u.netloc, timeout=5)
        c.request("GET", "/minio/health/live")
        return c.getresponse().status == 200
    except OSError:
        return False


def wait(endpoint, seconds):
    deadline = time.time() + seconds
    while time.time() < deadline:
        if live(endpoint):
            return True
        time.sleep(1)
    return False


def canon(doc):
    """A policy document as MinIO keeps it: Action/Resource always lists, and the order of
    list items meaningless (MinIO answers with its sets in any order)."""
    if isinstance(doc, dict):
        return {k: canon([v] if k in LISTY and isinstance(v, str) else v)
                for k, v in doc.items()}
    if isinstance(doc, list):
        return sorted((canon(x) for x in doc), key=lambda x: json.dumps(x, sort_keys=True))
    return doc


LISTY = ("Action", "NotAction", "Resource", "NotResource")


def policy_body(p):
    doc = p["policy"]
    if isinstance(doc, str):
        doc = json.loads(doc)
    return json.dumps(doc, sort_keys=True)


# MinIO's admin API encrypts request bodies that carry secrets (add-user) with the root
# password: salt(32) | algorithm id | nonce(8) | sio-go stream (16 KiB fragments, AEAD nonce =
# nonce | LE32 sequence number, associated data = final flag | tag of the empty message).
# The key is argon2id(password, salt, t=1, m=64 MiB, p=4). Debian's python3-cryptography
# (AES-GCM) and python3-argon2 (or a cryptography with Argon2id) do the work.
def madmin_encrypt(password, data):
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM
    salt, nonce = os.urandom(32), os.urandom(8)
    try:
        from cryptography.hazmat.primitives.kdf.argon2 import Argon2id
        key = Argon2id(salt=salt, length=32, iterations=1, lanes=4,
                       memory_cost=64 * 1024).derive(password.encode())
    except ImportError:
        from argon2.low_level import Type, hash_secret_raw
        key = hash_secret_raw(password.encode(), salt, time_cost=1, memory_cost=64 * 1024,
                              parallelism=4, hash_len=32, type=Type.ID)
    aead = AESGCM(key)
    tag = aead.encrypt(nonce + struct.pack("<I", 0), b"", None)
    chunks = [data[i:i + (1 << 14)] for i in range(0, len(data), 1 << 14)] or [b""]
    out = [salt, b"\x00", nonce]
    for seq, chunk in enumerate(chunks, 1):
        flag = b"\x80" if seq == len(chunks) else b"\x00"
        out.append(aead.encrypt(nonce + struct.pack("<I", seq), chunk, flag + tag))
    return b"".join(out)


def user_state(s3, endpoint, u):
    """None when the user is as wanted, else what is wrong."""
    try:
        info = json.loads(s3.admin("GET", "user-info", {"accessKey": u["name"]}))
    except kiln_s3.S3Error as e:
        if e.status not in (400, 404):
            raise
        return "missing"
    if info.get("status") != "enabled":
        return "disabled"
    if (info.get("policyName") or "") != u["policy"]:
        return "attached to policy %r, not %r" % (info.get("policyName") or "", u["policy"])
    # Whether its secret key still is the wanted one: a request signed with it is refused
    # as unknown or badly signed when it is not (AccessDenied means the key is good).
    try:
        kiln_s3.S3(endpoint, u["name"], u["secret"]).request("GET", "/", what="list buckets")
    except kiln_s3.S3Error as e:
        if e.code in ("InvalidAccessKeyId", "SignatureDoesNotMatch"):
            return "holding another secret key"
        if e.code != "AccessDenied":
            raise
    return None


def ensure_users(s3, endpoint, root_password, check):
    try:
        users = json.load(open(USERS))
    except FileNotFoundError:
        return 0
    missing = 0
    for u in users:
        wrong = user_state(s3, endpoint, u)
        if wrong is None:
            continue
        missing += 1
        if check:
            log("user %s is %s" % (u["name"], wrong))
            continue
        body = json.dumps({"secretKey": u["secret"], "status": "enabled"}).encode()
        s3.admin("PUT", "add-user", {"accessKey": u["name"]},
                 madmin_encrypt(root_password, body))
        s3.admin("PUT", "set-user-or-group-policy",
                 {"policyName": u["policy"], "userOrGroup": u["name"], "isGroup": "false"})
        log("wrote user %s (policy %s)" % (u["name"], u["policy"]))
    return missing


def policy_state(s3, p):
    """(wanted document, None when the canned policy is as wanted, else what is wrong)."""
    want = json.dumps(canon(json.loads(policy_body(p))), sort_keys=True)
    try:
        have = s3.admin("GET", "info-canned-policy", {"name": p["name"], "v": "2"})
        have = json.loads(have)
        have = json.dumps(canon(have.get("Policy", have)), sort_keys=True)
    except kiln_s3.S3Error as e:
        if e.status not in (400, 404):
            raise
        have = None
    if have == want:
        return want, None
    return want, "missing" if have is None else "different"


def problems(s3, cfg, endpoint):
    """Everything that differs from the wanted state, asked all at once: each bucket, policy
    and user is its own request (or two), and `--check` is the guard of every `kiln plan`,
    so they run side by side instead of one round trip after another."""
    from concurrent.futures import ThreadPoolExecutor
    try:
        users = json.load(open(USERS))
    except FileNotFoundError:
        users = []
    tasks = [lambda b=b: None if s3.bucket_exists(b) else "bucket %s is missing" % b
             for b in cfg.get("buckets", [])]
    tasks += [lambda p=p: (lambda w: w and "policy %s is %s" % (p["name"], w))(
        policy_state(s3, p)[1]) for p in cfg.get("policies", [])]
    tasks += [lambda u=u: (lambda w: w and "user %s is %s" % (u["name"], w))(
        user_state(s3, endpoint, u)) for u in users]
    if not tasks:
        return []
    with ThreadPoolExecutor(max_workers=min(8, len(tasks))) as ex:
        return [x for x in ex.map(lambda f: f(), tasks) if x]


def ensure(check):
    cfg = json.load(open(CONFIG))
    env = kiln_s3.read_env_file(ENV)
    if not wait(cfg["endpoint"], 5 if check else 90):
        log("%s/minio/health/live does not answer" % cfg["endpoint"])
        return 1
    s3 = kiln_s3.S3(cfg["endpoint"], env["MINIO_ROOT_USER"], env["MINIO_ROOT_PASSWORD"])
    if check:
        found = problems(s3, cfg, cfg["endpoint"])
        for what in found:
            log(what)
        return 1 if found else 0
    for b in cfg.get("buckets", []):
        if not s3.bucket_exists(b):
            s3.make_bucket(b)
            log("created bucket %s" % b)
    # Canned policies (MinIO admin API; a plain S3 server has none of this).
    for p in cfg.get("policies", []):
        want, wrong = policy_state(s3, p)
        if wrong is not None:
            s3.admin("PUT", "add-canned-policy", {"name": p["name"]}, want.encode())
            log("wrote policy %s" % p["name"])
    ensure_users(s3, cfg["endpoint"], env["MINIO_ROOT_PASSWORD"], False)
    return 0


def main(argv):
    if len(argv) >= 2 and argv[1] == "wait":
        cfg = json.load(open(CONFIG))
        return 0 if wait(cfg["endpoint"], int(argv[2]) if len(argv) > 2 else 60) else 1
    if len(argv) >= 2 and argv[1] == "ensure":
        return ensure("--check" in argv[2:])
    print(__doc__ or "usage: kiln-minio wait [SECONDS] | ensure [--check]", file=sys.stderr)
    return 2


if __name__ == "__main__":
    try:
        sys.exit(main(sys.argv))
    except (kiln_s3.S3Error, OSError, KeyError, ValueError) as e:
        log("error: %s" % e)
        sys.exit(1)
