#!/usr/bin/python3
# Managed by kiln (minio module). kiln-minio: what the minio module does through the S3
# and MinIO admin APIs, with the root credentials from /etc/default/minio (never taken
# from or put on a command line).
#   kiln-minio wait [SECONDS]   until /minio/health/live answers 200
#   kiln-minio ensure [--check] buckets and canned policies of /etc/kiln/minio/config.json;
#                               --check: exit 0 when nothing is missing (changes nothing)
import http.client
import json
import sys
import time
import urllib.parse

sys.path.insert(0, "/usr/local/lib/kiln")
import kiln_s3  # noqa: E402

CONFIG = "/etc/kiln/minio/config.json"
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


def policy_body(p):
    doc = p["policy"]
    if isinstance(doc, str):
        doc = json.loads(doc)
    return json.dumps(doc, sort_keys=True)


def ensure(check):
    cfg = json.load(open(CONFIG))
    env = kiln_s3.read_env_file(ENV)
    if not wait(cfg["endpoint"], 5 if check else 90):
        log("%s/minio/health/live does not answer" % cfg["endpoint"])
        return 1
    s3 = kiln_s3.S3(cfg["endpoint"], env["MINIO_ROOT_USER"], env["MINIO_ROOT_PASSWORD"])
    missing = 0
    for b in cfg.get("buckets", []):
        if s3.bucket_exists(b):
            continue
        missing += 1
        if check:
            log("bucket %s is missing" % b)
        else:
            s3.make_bucket(b)
            log("created bucket %s" % b)
    # Canned policies (MinIO admin API; a plain S3 server has none of this).
    for p in cfg.get("policies", []):
        want = policy_body(p)
        try:
            have = s3.admin("GET", "info-canned-policy", {"name": p["name"], "v": "2"})
            have = json.loads(have)
            have = json.dumps(have.get("Policy", have), sort_keys=True)
        except kiln_s3.S3Error as e:
            if e.status not in (400, 404):
                raise
            have = None
        if have == want:
            continue
        missing += 1
        if check:
            log("policy %s is %s" % (p["name"], "missing" if have is None else "different"))
        else:
            s3.admin("PUT", "add-canned-policy", {"name": p["name"]}, want.encode())
            log("wrote policy %s" % p["name"])
    return 1 if (check and missing) else 0


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
