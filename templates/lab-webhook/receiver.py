#!/usr/bin/python3
# Managed by kiln (lab-webhook): appends each POST body as one JSON line (with the time it
# arrived) to the file named by argv[2]; GET answers "ok". Loopback only.
import json
import sys
import time
from http.server import BaseHTTPRequestHandler, HTTPServer

PORT, OUT = int(sys.argv[1]), sys.argv[2]


class Handler(BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200)
        self.end_headers()
        self.wfile.write(b"ok\n")

    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        try:
            doc = json.loads(body)
        except ValueError:
            doc = {"unparsed": body.decode("utf-8", "replace")}
        with open(OUT, "a") as f:
            f.write(json.dumps({"received": time.time(), "body": doc}) + "\n")
        self.send_response(200)
        self.end_headers()

    def log_message(self, fmt, *args):
        pass


HTTPServer(("127.0.0.1", PORT), Handler).serve_forever()
