# Managed by kiln (minio and backup modules). A small S3 client for MinIO-compatible
# servers: AWS Signature Version 4 over http.client, path-style addressing, no third-party
# package. Credentials are passed in by the caller (read from 0600 files), never taken
# from or put on a command line.
import datetime
import hashlib
import hmac
import http.client
import json
import os
import tempfile
import time
import urllib.parse
import xml.etree.ElementTree as ET

EMPTY_SHA256 = hashlib.sha256(b"").hexdigest()


class S3Error(Exception):
    def __init__(self, status, code, message, what):
        self.status = status
        self.code = code
        super().__init__("%s: HTTP %s %s %s" % (what, status, code, message))


def _q(s, safe="-_.~"):
    return urllib.parse.quote(s, safe=safe)


def _sign(key, msg):
    return hmac.new(key, msg.encode(), hashlib.sha256).digest()


def file_sha256(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


class _MakeBucket:
    def make_bucket(self, bucket):
        """Creates the bucket unless it exists. Returns whether it created it."""
        if self.bucket_exists(bucket):
            return False
        try:
            self._create_bucket(bucket)
        except S3Error as e:
            if e.code in ("BucketAlreadyOwnedByYou", "BucketAlreadyExists"):
                return False
            raise
        return True


class S3(_MakeBucket):
    def __init__(self, endpoint, access_key, secret_key, region="us-east-1", timeout=300):
        u = urllib.parse.urlsplit(endpoint)
        if u.scheme not in ("http", "https"):
            raise ValueError("endpoint must be http:// or https://: %r" % endpoint)
        self.scheme = u.scheme
        self.netloc = u.netloc
        self.access_key = access_key
        self.secret_key = secret_key
        self.region = region
        self.timeout = timeout

    def _conn(self):
        cls = http.client.HTTPSConnection if self.scheme == "https" else http.client.HTTPConnection
        return cls(self.netloc, timeout=self.timeout)

    def request(self, method, path, query=None, body=b"", body_sha256=None, headers=None,
                service="s3", want=(200, 204), out=None, what=None):
        """One signed request. `body` is bytes or an open binary file (then `body_sha256`
        must be given). `out`: a binary file to stream the response body into."""
        query = query or {}
        headers = dict(headers or {})
        if body_sha256 is None:
            body_sha256 = hashlib.sha256(body).hexdigest()
        now = datetime.datetime.now(datetime.timezone.utc)
        amz_date = now.strftime("%Y%m%dT%H%M%SZ")
        day = now.strftime("%Y%m%d")
        canonical_uri = _q(path, safe="/-_.~")
        canonical_query = "&".join(
            "%s=%s" % (_q(k), _q(str(v))) for k, v in sorted(query.items()))
        headers["host"] = self.netloc
        headers["x-amz-date"] = amz_date
        headers["x-amz-content-sha256"] = body_sha256
        if hasattr(body, "read"):
            headers["content-length"] = str(os.fstat(body.fileno()).st_size)
        else:
            headers["content-length"] = str(len(body))
        names = sorted(k.lower() for k in headers)
        lower = {k.lower(): str(v).strip() for k, v in headers.items()}
        canonical_headers = "".join("%s:%s\n" % (k, lower[k]) for k in names)
        signed = ";".join(names)
        creq = "\n".join([method, canonical_uri, canonical_query, canonical_headers,
                          signed, body_sha256])
        scope = "%s/%s/%s/aws4_request" % (day, self.region, service)
        sts = "\n".join(["AWS4-HMAC-SHA256", amz_date, scope,
                         hashlib.sha256(creq.encode()).hexdigest()])
        k = _sign(("AWS4" + self.secret_key).encode(), day)
        k = _sign(k, self.region)
        k = _sign(k, service)
        k = _sign(k, "aws4_request")
        sig = hmac.new(k, sts.encode(), hashlib.sha256).hexdigest()
        headers["Authorization"] = (
            "AWS4-HMAC-SHA256 Credential=%s/%s, SignedHeaders=%s, Signature=%s"
            % (self.access_key, scope, signed, sig))
        url = canonical_uri + ("?" + canonical_query if canonical_query else "")
        last = None
        for attempt in range(3):
            if hasattr(body, "seek"):
                body.seek(0)
            c = self._conn()
            try:
                c.request(method, url, body=body, headers=headers)
                r = c.getresponse()
                if r.status in want:
                    if out is not None:
                        for chunk in iter(lambda: r.read(1 << 20), b""):
                            out.write(chunk)
                        return r.status, dict(r.getheaders()), b""
                    return r.status, dict(r.getheaders()), r.read()
                data = r.read()
                code, msg = _error(data)
                err = S3Error(r.status, code, msg, what or "%s %s" % (method, path))
                if r.status < 500:
                    raise err
                last = err
            except (OSError, http.client.HTTPException) as e:
                last = e
            finally:
                c.close()
            time.sleep(1 + attempt)
        raise last

    # Buckets -------------------------------------------------------------------------
    def bucket_exists(self, bucket):
        try:
            self.request("HEAD", "/" + bucket, what="bucket " + bucket)
            return True
        except S3Error as e:
            if e.status == 404:
                return False
            raise

    def _create_bucket(self, bucket):
        self.request("PUT", "/" + bucket, what="create bucket " + bucket)

    # Objects -------------------------------------------------------------------------
    def list(self, bucket, prefix=""):
        """Every object under prefix: [{key, size, etag}] (ListObjectsV2, all pages)."""
        out, token = [], None
        while True:
            q = {"list-type": "2", "prefix": prefix}
            if token:
                q["continuation-token"] = token
            _, _, data = self.request("GET", "/" + bucket, query=q, what="list " + bucket)
            root = ET.fromstring(data)
            ns = root.tag.split("}")[0] + "}" if root.tag.startswith("{") else ""
            for c in root.findall(ns + "Contents"):
                out.append({
                    "key": c.findtext(ns + "Key"),
                    "size": int(c.findtext(ns + "Size") or 0),
                    "etag": (c.findtext(ns + "ETag") or "").strip('"'),
                })
            if (root.findtext(ns + "IsTruncated") or "false").lower() != "true":
                return out
            token = root.findtext(ns + "NextContinuationToken")
            if not token:
                return out

    def put_file(self, bucket, key, path, sha256=None):
        sha256 = sha256 or file_sha256(path)
        with open(path, "rb") as f:
            self.request("PUT", "/%s/%s" % (bucket, key), body=f, body_sha256=sha256,
                         headers={"x-amz-meta-sha256": sha256},
                         what="put %s/%s" % (bucket, key))
        return sha256

    def put_bytes(self, bucket, key, data):
        self.request("PUT", "/%s/%s" % (bucket, key), body=data,
                     what="put %s/%s" % (bucket, key))

    def get_file(self, bucket, key, path):
        tmp = path + ".part"
        with open(tmp, "wb") as f:
            self.request("GET", "/%s/%s" % (bucket, key), out=f, what="get %s/%s" % (bucket, key))
        os.replace(tmp, path)

    def get_bytes(self, bucket, key):
        return self.request("GET", "/%s/%s" % (bucket, key), what="get %s/%s" % (bucket, key))[2]

    def put_stream(self, bucket, key, stream):
        """A stream of unknown length: this signer needs the body's length and hash first,
        so it spools the stream to an unnamed temporary file (boto3's client streams)."""
        with tempfile.TemporaryFile() as f:
            h = hashlib.sha256()
            for chunk in iter(lambda: stream.read(1 << 20), b""):
                h.update(chunk)
                f.write(chunk)
            f.flush()
            self.request("PUT", "/%s/%s" % (bucket, key), body=f, body_sha256=h.hexdigest(),
                         what="put %s/%s" % (bucket, key))

    def open_stream(self, bucket, key):
        """The object's body as a readable binary file (spooled here)."""
        f = tempfile.TemporaryFile()
        self.request("GET", "/%s/%s" % (bucket, key), out=f, what="get %s/%s" % (bucket, key))
        f.seek(0)
        return f

    def delete(self, bucket, key):
        self.request("DELETE", "/%s/%s" % (bucket, key), want=(200, 204, 404),
                     what="delete %s/%s" % (bucket, key))

    # MinIO admin API (policies): signed like S3 requests, service "s3". -------------
    def admin(self, method, op, query=None, body=b""):
        return self.request(method, "/minio/admin/v3/" + op, query=query, body=body,
                            what="minio admin " + op)[2]


class BotoS3(_MakeBucket):
    """The same interface as `S3`, through boto3 (Debian's python3-boto3): multipart
    transfers for large files (above 64 MiB, in 64 MiB parts), retries with backoff,
    path-style addressing for MinIO-compatible servers. `S3` stays for what boto3 lacks
    (MinIO's admin API) and for hosts without boto3 (`kiln restore --into`)."""

    def __init__(self, endpoint, access_key, secret_key, region="us-east-1", timeout=300):
        import boto3
        import botocore.config
        from boto3.s3.transfer import TransferConfig
        u = urllib.parse.urlsplit(endpoint)
        if u.scheme not in ("http", "https"):
            raise ValueError("endpoint must be http:// or https://: %r" % endpoint)
        self.region = region
        self.client = boto3.session.Session().client(
            "s3", endpoint_url=endpoint, aws_access_key_id=access_key,
            aws_secret_access_key=secret_key, region_name=region,
            config=botocore.config.Config(
                signature_version="s3v4", s3={"addressing_style": "path"},
                # Few, quick attempts to connect: a target that is gone must fail fast so
                # the backup tool falls back to the replica (10 s x 5 attempts made a
                # restore with the first target lost take 385 s instead of 68 s).
                retries={"max_attempts": 3, "mode": "standard"},
                connect_timeout=3, read_timeout=timeout))
        self.transfer = TransferConfig(multipart_threshold=64 << 20,
                                       multipart_chunksize=64 << 20, use_threads=False)

    @staticmethod
    def _wrap(e, what):
        """botocore's ClientError as S3Error (the status the callers look at), its
        connection failures as OSError (as `S3` raises them: a target that cannot be
        reached, which the backup tool stops asking)."""
        import botocore.exceptions as bx
        if isinstance(e, (bx.ConnectionError, bx.HTTPClientError)):
            return ConnectionError("%s: %s" % (what, e))
        resp = getattr(e, "response", None)
        if isinstance(resp, dict):
            err = resp.get("Error") or {}
            status = (resp.get("ResponseMetadata") or {}).get("HTTPStatusCode")
            try:
                status = int(status if status is not None else err.get("Code"))
            except (TypeError, ValueError):
                pass
            return S3Error(status, err.get("Code", ""), err.get("Message", ""), what)
        return e

    def _call(self, what, fn, *args, **kw):
        try:
            return fn(*args, **kw)
        except Exception as e:  # noqa: BLE001 - re-raised as S3Error when it is one
            w = self._wrap(e, what)
            if w is e:
                raise
            raise w from None

    def bucket_exists(self, bucket):
        try:
            self._call("bucket " + bucket, self.client.head_bucket, Bucket=bucket)
            return True
        except S3Error as e:
            if e.status == 404:
                return False
            raise

    def _create_bucket(self, bucket):
        kw = {"Bucket": bucket}
        if self.region and self.region != "us-east-1":
            kw["CreateBucketConfiguration"] = {"LocationConstraint": self.region}
        self._call("create bucket " + bucket, self.client.create_bucket, **kw)

    def list(self, bucket, prefix=""):
        out = []
        pages = self.client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
        try:
            for page in pages:
                for c in page.get("Contents", []):
                    out.append({"key": c["Key"], "size": int(c.get("Size", 0)),
                                "etag": (c.get("ETag") or "").strip('"')})
        except Exception as e:  # noqa: BLE001
            w = self._wrap(e, "list " + bucket)
            if w is e:
                raise
            raise w from None
        return out

    def put_file(self, bucket, key, path, sha256=None):
        sha256 = sha256 or file_sha256(path)
        self._call("put %s/%s" % (bucket, key), self.client.upload_file, path, bucket, key,
                   ExtraArgs={"Metadata": {"sha256": sha256}}, Config=self.transfer)
        return sha256

    def put_bytes(self, bucket, key, data):
        self._call("put %s/%s" % (bucket, key), self.client.put_object, Bucket=bucket,
                   Key=key, Body=data)

    def get_file(self, bucket, key, path):
        tmp = path + ".part"
        self._call("get %s/%s" % (bucket, key), self.client.download_file, bucket, key, tmp,
                   Config=self.transfer)
        os.replace(tmp, path)

    def get_bytes(self, bucket, key):
        r = self._call("get %s/%s" % (bucket, key), self.client.get_object, Bucket=bucket, Key=key)
        return r["Body"].read()

    def put_stream(self, bucket, key, stream):
        """A stream of unknown length, never on local disk: one PUT below 64 MiB, above it a
        multipart upload in 64 MiB parts (held in memory one at a time). An exception
        raised by the stream's read aborts the upload (boto3 aborts the multipart upload),
        so a failed producer leaves no object."""
        self._call("put %s/%s" % (bucket, key), self.client.upload_fileobj, stream, bucket,
                   key, Config=self.transfer)

    def open_stream(self, bucket, key):
        """The object's body as a readable stream (read as it downloads)."""
        r = self._call("get %s/%s" % (bucket, key), self.client.get_object, Bucket=bucket, Key=key)
        return r["Body"]

    def delete(self, bucket, key):
        try:
            self._call("delete %s/%s" % (bucket, key), self.client.delete_object,
                       Bucket=bucket, Key=key)
        except S3Error as e:
            if e.status != 404:
                raise


def client(endpoint, access_key, secret_key, region="us-east-1"):
    """boto3 when this host has it (the backup module installs python3-boto3), else the
    built-in signer."""
    try:
        import boto3  # noqa: F401
    except ImportError:
        return S3(endpoint, access_key, secret_key, region=region)
    return BotoS3(endpoint, access_key, secret_key, region=region)


def _error(data):
    try:
        root = ET.fromstring(data)
        ns = root.tag.split("}")[0] + "}" if root.tag.startswith("{") else ""
        return root.findtext(ns + "Code") or "", root.findtext(ns + "Message") or ""
    except ET.ParseError:
        try:
            j = json.loads(data)
            return j.get("Code", ""), j.get("Message", "")
        except (ValueError, AttributeError):
            return "", data[:200].decode("utf-8", "replace")


def read_env_file(path):
    """KEY=value lines (optionally quoted), as systemd's EnvironmentFile reads them."""
    env = {}
    with open(path) as f:
        for line in f:
            line = line.strip()
            if not line or line.startswith("#") or "=" not in line:
                continue
            k, v = line.split("=", 1)
            v = v.strip()
            if len(v) >= 2 and v[0] == v[-1] and v[0] in "\"'":
                v = v[1:-1]
            env[k.strip()] = v
    return env
