#!/usr/bin/python3
# Managed by kiln (monitoring): `kiln verify`'s check on the monitoring host. Asks the local
# Prometheus (its HTTP API) that every target kiln generated (/etc/prometheus/kiln-targets.json)
# is scraped and up, that it scrapes nothing else, and that no alert fires. Waits up to
# --wait seconds for that (a fresh start: targets not scraped yet, an alert of the first
# minutes resolving), then names every target down and every alert firing.
import argparse
import json
import sys
import time
import urllib.request

API = "http://127.0.0.1:9090/api/v1/"


def get(path):
    with urllib.request.urlopen(API + path, timeout=10) as r:
        return json.load(r)["data"]


def judge(expected):
    active = get("targets?state=active")["activeTargets"]
    seen = {(t["labels"].get("job"), t["labels"].get("instance")): t for t in active}
    problems = []
    for job, inst in sorted(expected):
        t = seen.get((job, inst))
        if t is None:
            problems.append("%s %s: not a target of Prometheus" % (job, inst))
        elif t["health"] != "up":
            problems.append("%s %s: %s %s" % (job, inst, t["health"], t.get("lastError", "")))
    for key in sorted(set(seen) - set(expected)):
        problems.append("%s %s: scraped, but kiln did not generate it" % key)
    return problems


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--wait", type=int, default=0)
    ap.add_argument("--targets", default="/etc/prometheus/kiln-targets.json")
    args = ap.parse_args()
    expected = {(t["job"], t["instance"]) for t in json.load(open(args.targets))}
    deadline = time.time() + args.wait
    while True:
        firing = []
        try:
            problems = judge(expected)
            if not problems:
                firing = [a for a in get("alerts")["alerts"] if a["state"] == "firing"]
        except OSError as e:
            problems = ["Prometheus API: %s" % e]
        if not (problems or firing) or time.time() >= deadline:
            break
        time.sleep(3)
    for p in problems:
        print("DOWN " + p)
    for a in firing:
        print("FIRING %s %s: %s" % (a["labels"].get("alertname"), a["labels"].get("instance", ""),
                                   a.get("annotations", {}).get("summary", "")))
    if problems or firing:
        return 1
    print("%d target(s) up, no alert firing" % len(expected))
    return 0


if __name__ == "__main__":
    sys.exit(main())
