"""Unit tests of kiln-backup's pure parts (templates/backup/kiln-backup.py), run by
tests/backup_tool.rs with `python3 -m unittest`."""
import datetime
import importlib.machinery
import importlib.util
import os
import unittest

HERE = os.path.dirname(os.path.abspath(__file__))
PATH = os.path.join(HERE, "..", "..", "templates", "backup", "kiln-backup.py")
loader = importlib.machinery.SourceFileLoader("kiln_backup", PATH)
spec = importlib.util.spec_from_loader("kiln_backup", loader)
kb = importlib.util.module_from_spec(spec)
loader.exec_module(kb)


def stamp(y, m, d, hh=2):
    return "%04d%02d%02dT%02d0000Z" % (y, m, d, hh)


def days(start, n, hours=(2,)):
    out = []
    for i in range(n):
        d = start - datetime.timedelta(days=i)
        for h in hours:
            out.append(stamp(d.year, d.month, d.day, h))
    return out


# History A: every day of June 2024, plus a few older ones (also used by tests/data_e2e.rs).
HISTORY_A = days(datetime.date(2024, 6, 30), 30) + [
    stamp(2024, 5, 15), stamp(2024, 4, 15), stamp(2024, 1, 10),
    stamp(2023, 6, 15), stamp(2023, 5, 1)]
KEEP_A = {stamp(2024, 6, d) for d in range(24, 31)} | {
    stamp(2024, 6, 23), stamp(2024, 6, 16), stamp(2024, 6, 9),  # weeks 25, 24, 23
    stamp(2024, 5, 15), stamp(2024, 4, 15), stamp(2024, 1, 10),  # months
    stamp(2023, 6, 15), stamp(2023, 5, 1)}


class Retention(unittest.TestCase):
    def test_history_a(self):
        self.assertEqual(kb.retention(HISTORY_A, 7, 4, 12), KEEP_A)
        self.assertEqual(len(KEEP_A), 15)

    def test_two_runs_a_day_for_500_days(self):
        history = days(datetime.date(2024, 6, 30), 500, hours=(2, 14))
        keep = kb.retention(history, 7, 4, 12)
        want = {stamp(2024, 6, d, 14) for d in range(24, 31)}                  # 7 days
        want |= {stamp(2024, 6, d, 14) for d in (23, 16, 9)}                   # + 3 weeks
        want |= {stamp(2024, m, d, 14) for m, d in ((5, 31), (4, 30), (3, 31), (2, 29), (1, 31))}
        want |= {stamp(2023, m, d, 14) for m, d in ((12, 31), (11, 30), (10, 31), (9, 30),
                                                     (8, 31), (7, 31))}        # + 11 months
        self.assertEqual(keep, want)
        self.assertEqual(len(keep), 21)

    def test_newest_is_always_kept_and_retention_is_stable(self):
        keep = kb.retention(HISTORY_A, 0, 0, 0)
        self.assertEqual(keep, {stamp(2024, 6, 30)})
        again = kb.retention(sorted(KEEP_A), 7, 4, 12)
        self.assertEqual(again, KEEP_A, "applying retention to what it kept keeps it all")

    def test_gaps_count_periods_with_backups(self):
        # Backups on 3 days only: all kept by the daily rule, whatever the gaps.
        h = [stamp(2024, 1, 1), stamp(2024, 3, 1), stamp(2024, 6, 1)]
        self.assertEqual(kb.retention(h, 7, 0, 0), set(h))
        self.assertEqual(kb.retention([], 7, 4, 12), set())


class HistoryAwareRetention(unittest.TestCase):
    """A restore starts a new history; the base of the timeline it left stays while its
    period is kept (issue 20's follow-up: the restore's new base used to delete it)."""

    BEFORE = stamp(2024, 6, 30, 2)    # the day's base of the old timeline
    AFTER = stamp(2024, 6, 30, 14)    # the restore's new base (new history)

    def histories(self, stamps):
        return {s: ("old" if s <= self.BEFORE else "new") for s in stamps}

    def test_the_left_timeline_keeps_its_newest_base_of_the_day(self):
        h = days(datetime.date(2024, 6, 29), 10) + [self.BEFORE, self.AFTER]
        keep = kb.retention(h, 7, 0, 0, self.histories(h))
        self.assertIn(self.BEFORE, keep)
        self.assertIn(self.AFTER, keep)
        self.assertEqual(len(keep), 8, "7 days, one of them with two histories")
        self.assertNotIn(self.BEFORE, kb.retention(h, 7, 0, 0),
                         "without histories the restore's base replaces it (the old rule)")

    def test_the_left_timeline_goes_with_its_period(self):
        later = days(datetime.date(2024, 7, 10), 10)     # ten days of the new history
        h = [self.BEFORE, self.AFTER] + later
        hist = self.histories(h)
        self.assertNotIn(self.BEFORE, kb.retention(h, 7, 0, 0, hist))
        monthly = kb.retention(h, 7, 0, 2, hist)
        self.assertTrue({self.BEFORE, self.AFTER} <= monthly, "June kept, once per history")
        self.assertNotIn(self.BEFORE, kb.retention(h, 7, 0, 1, hist), "June gone")

    def test_within_one_history_nothing_changes(self):
        hist = {s: "one" for s in HISTORY_A}
        self.assertEqual(kb.retention(HISTORY_A, 7, 4, 12, hist), KEEP_A)


class Prune(unittest.TestCase):
    """prune() over an object store: each manifest read once, histories from them."""

    def setUp(self):
        import json
        self.s3 = MemoryS3()
        self.s3.get_bytes = lambda bucket, key: self.s3.objects[(bucket, key)]
        self.s3.delete = lambda bucket, key: self.s3.objects.pop((bucket, key))
        self.cfg = {"bucket": "b", "prefix": "env/db1",
                    "keep": {"daily": 2, "weekly": 0, "monthly": 0},
                    "binlog": {"enabled": False}}
        self.json = json

    def put(self, stamp, manifest):
        base = "env/db1/%s/" % stamp
        self.s3.objects[("b", base + "dump.sql.gz.age")] = b"x"
        self.s3.objects[("b", base + "manifest.json")] = (
            manifest if isinstance(manifest, bytes) else self.json.dumps(manifest).encode())

    def stamps(self):
        return sorted(kb.backups(self.s3, self.cfg))

    def test_a_restore_day_keeps_both_histories_and_their_binlogs(self):
        old = lambda seq: {"binlog": {"history": "aaaaaaaa", "domain": 1000,
                                      "gtid": "1000-1-%d" % seq}}
        self.put("20261201T020000Z", old(1))
        self.put("20261202T020000Z", old(3))
        self.put("20261203T020000Z", old(5))
        self.put("20261203T150000Z", {"binlog": {"history": "bbbbbbbb", "domain": 1000,
                                                 "gtid": "1000-1-9"}})
        self.cfg["binlog"]["enabled"] = True
        sha = "0" * 24
        files = {"old-before": "aaaaaaaa/db1-11111111.mariadb-bin.000001.1000-0-3-1764554400." + sha,
                 "old-after": "aaaaaaaa/db1-11111111.mariadb-bin.000002.1000-3-7-1764770400." + sha,
                 "new": "bbbbbbbb/db1-22222222.mariadb-bin.000001.1000-9-12-1764774000." + sha}
        for key in files.values():
            self.s3.objects[("b", "env/db1/binlog/" + key)] = b"x"
        kb.prune(self.s3, self.cfg, "env/db1", dry_run=False)
        self.assertEqual(self.stamps(),
                         ["20261202T020000Z", "20261203T020000Z", "20261203T150000Z"])
        self.assertNotIn(("b", "env/db1/20261201T020000Z/dump.sql.gz.age"), self.s3.objects,
                         "a dropped backup loses every object, not only its manifest")
        left = {n for n, k in files.items() if ("b", "env/db1/binlog/" + k) in self.s3.objects}
        self.assertEqual(left, {"old-after", "new"},
                         "the left timeline keeps the binlogs after its kept bases")

    def test_an_unreadable_manifest_is_never_taken_for_another_history(self):
        self.cfg["keep"]["daily"] = 1
        self.put("20261201T020000Z", {})
        self.put("20261203T020000Z", b"not json")
        self.put("20261203T100000Z", {})       # no binlog: history None
        self.put("20261203T150000Z", {"binlog": {"history": "bbbbbbbb", "domain": 1000,
                                                 "gtid": "1000-1-9"}})
        kb.prune(self.s3, self.cfg, "env/db1", dry_run=True)
        self.assertEqual(len(self.stamps()), 4, "a dry run deletes nothing")
        kb.prune(self.s3, self.cfg, "env/db1", dry_run=False)
        self.assertEqual(self.stamps(), ["20261203T020000Z", "20261203T100000Z",
                                         "20261203T150000Z"])


class Compare(unittest.TestCase):
    def test_compare_names_every_difference(self):
        want = {"a": {"rows": 1, "checksum": "10"}, "b": {"rows": 2, "checksum": "20"}}
        got = {"a": {"rows": 1, "checksum": "10"}, "b": {"rows": 2, "checksum": "21"},
               "c": {"rows": 0, "checksum": "0"}}
        p = kb.compare("app", want, got)
        self.assertEqual(len(p), 2)
        self.assertIn("app.b: rows 2 checksum 21", p[0])
        self.assertIn("app.c: not in the backup", p[1])


class ManifestNames(unittest.TestCase):
    def manifest(self, files, dbs=None):
        return {"files": {n: {"sha256": "0", "size": 0} for n in files},
                "databases": dbs or {}}

    def test_plain_names_pass(self):
        kb.check_manifest_names(self.manifest(
            ["app.sql.gz", "users.sql.gz"], {"app": {"file": "app.sql.gz"}}))

    def test_absolute_climbing_and_odd_names_are_refused(self):
        for bad in ["/etc/passwd", "../x", "a/../../b", "sub/dir.gz", "..", ".hidden",
                    "-rf", "a\nb", ""]:
            with self.assertRaises(kb.Refused, msg=bad):
                kb.check_manifest_names(self.manifest([bad]))

    def test_a_database_file_must_be_listed(self):
        with self.assertRaises(kb.Refused):
            kb.check_manifest_names(self.manifest(
                ["app.sql.gz"], {"app": {"file": "../../etc/shadow"}}))


def archived_file(src, name, start, end, mtime=1000, domain=0, history="b1ad9ee8"):
    return {"key": "k/%s/%s" % (src, name), "history": history, "src": src, "file": name,
            "domain": domain, "start": start, "end": end, "mtime": mtime, "sha256": "0" * 24,
            "size": 1}


class BinlogChain(unittest.TestCase):
    """The replay chain over archived binary logs of several nodes."""

    def test_one_node_in_order_from_the_base_position(self):
        files = [archived_file("db1-aaaaaaaa", "mariadb-bin.%06d" % i, s, e)
                 for i, (s, e) in enumerate([(0, 10), (10, 25), (25, 25), (25, 40)], 1)]
        steps, reached, gap = kb.chain(files, "b1ad9ee8", 0, 12)
        self.assertEqual([(f["file"], after) for f, after in steps],
                         [("mariadb-bin.000002", 12), ("mariadb-bin.000004", 25)])
        self.assertEqual((reached, gap), (40, False))

    def test_a_takeover_continues_from_the_other_node_without_replaying_twice(self):
        # db1 archived up to 30 then was lost; db2 took over with files that overlap.
        files = [archived_file("db1-aaaaaaaa", "mariadb-bin.000001", 0, 20),
                 archived_file("db1-aaaaaaaa", "mariadb-bin.000002", 20, 30),
                 archived_file("db2-bbbbbbbb", "mariadb-bin.000007", 15, 38),
                 archived_file("db2-bbbbbbbb", "mariadb-bin.000008", 38, 50)]
        steps, reached, gap = kb.chain(files, "b1ad9ee8", 0, 5)
        self.assertEqual([(f["src"], f["file"], after) for f, after in steps],
                         [("db1-aaaaaaaa", "mariadb-bin.000001", 5),
                          ("db2-bbbbbbbb", "mariadb-bin.000007", 20),
                          ("db2-bbbbbbbb", "mariadb-bin.000008", 38)])
        self.assertEqual((reached, gap), (50, False))

    def test_a_hole_stops_the_chain_and_says_so(self):
        files = [archived_file("db1-aaaaaaaa", "mariadb-bin.000001", 0, 20),
                 archived_file("db1-aaaaaaaa", "mariadb-bin.000003", 31, 40)]
        steps, reached, gap = kb.chain(files, "b1ad9ee8", 0, 0)
        self.assertEqual(len(steps), 1)
        self.assertEqual((reached, gap), (20, True))

    def test_other_histories_and_domains_are_never_replayed(self):
        # A cluster formed anew (another state UUID) counts its GTIDs from 1 again.
        files = [archived_file("db1-aaaaaaaa", "mariadb-bin.000001", 0, 20),
                 archived_file("db1-cccccccc", "mariadb-bin.000001", 0, 900, history="0f0f0f0f"),
                 archived_file("db1-aaaaaaaa", "mariadb-bin.000009", 0, 900, domain=7)]
        steps, reached, gap = kb.chain(files, "b1ad9ee8", 0, 10)
        self.assertEqual([f["file"] for f, _ in steps], ["mariadb-bin.000001"])
        self.assertEqual((reached, gap), (20, False))

    def test_archive_keys_parse_and_odd_ones_do_not(self):
        m = kb.ARCHIVE_KEY.match("b1ad9ee8/db1.example-a7d7e8e6.mariadb-bin.000012."
                                 "0-22-40-1796244575.df726819dcd046c6f49d7aea")
        self.assertIsNotNone(m)
        self.assertEqual((m["src"], m["file"], m["start"], m["end"]),
                         ("db1.example-a7d7e8e6", "mariadb-bin.000012", "22", "40"))
        for bad in ["b1ad9ee8/db1-a7d7e8e6.mariadb-bin.000012.0-22-40-17.short",
                    "b1ad9ee8/../x-a7d7e8e6.mariadb-bin.000012.0-1-2-3.df726819dcd046c6f49d7aea",
                    "heartbeat-db1.json"]:
            self.assertIsNone(kb.ARCHIVE_KEY.match(bad), bad)

    def test_gtid_lists(self):
        self.assertEqual(kb.parse_gtids("[0-1-7,3-3-2]"), {0: (1, 7), 3: (3, 2)})
        self.assertEqual(kb.gtid_seq("0-1-7,3-3-2", 3), 2)
        self.assertEqual(kb.gtid_seq("", 0), 0)

    def test_replay_drops_the_session_gtid_settings_only(self):
        drop = ["/*M!100001 SET @@session.gtid_seq_no=9*//*!*/;",
                "/*M!100001 SET @@session.server_id=1*//*!*/;",
                "/*M!100001 SET @@session.gtid_domain_id=0*//*!*/;",
                "/*!100001 SET @@SESSION.SERVER_ID=@@GLOBAL.SERVER_ID */;",
                "/*!100001 SET @@SESSION.GTID_DOMAIN_ID=@@GLOBAL.GTID_DOMAIN_ID */;"]
        keep = ["SET TIMESTAMP=1796244360/*!*/;", "SET @@session.pseudo_thread_id=25/*!*/;",
                "INSERT INTO t VALUES ('/*M!100001 SET @@session.server_id=1*/')",
                "/*M!100101 SET @@session.skip_parallel_replication=0*//*!*/;"]
        for line in drop:
            self.assertIsNotNone(kb.BinlogReplay.SESSION_GTID.match(line), line)
        for line in keep:
            self.assertIsNone(kb.BinlogReplay.SESSION_GTID.match(line), line)


class BinlogRetention(unittest.TestCase):
    def test_files_before_every_kept_base_go_newer_ones_stay(self):
        files = [archived_file("db1-aaaaaaaa", "mariadb-bin.000001", 0, 10, mtime=100),
                 archived_file("db1-aaaaaaaa", "mariadb-bin.000002", 10, 20, mtime=200),
                 archived_file("db1-aaaaaaaa", "mariadb-bin.000003", 20, 30, mtime=300),
                 # an older history, before every kept backup
                 archived_file("db1-cccccccc", "mariadb-bin.000009", 0, 90, mtime=50,
                               history="0f0f0f0f"),
                 # a newer history whose first backup is still to come
                 archived_file("db1-dddddddd", "mariadb-bin.000001", 0, 5, mtime=400,
                               history="1e1e1e1e")]
        gone = kb.binlog_prunable(files, [("b1ad9ee8", 0, 15)], oldest=150)
        self.assertEqual(sorted((f["src"], f["file"]) for f in gone),
                         [("db1-aaaaaaaa", "mariadb-bin.000001"),
                          ("db1-cccccccc", "mariadb-bin.000009")])


class Anonymize(unittest.TestCase):
    COLS = {("app", "customers"): {"id": ("int", 0, False), "email": ("varchar", 191, False),
                                   "name": ("varchar", 20, True), "notes": ("text", 65535, True),
                                   "status": ("varchar", 16, False)},
            ("app", "sessions"): {"id": ("int", 0, False)}}

    def test_the_pads_give_rfc2104_hmac(self):
        import hashlib
        import hmac
        for key in (b"k", b"x" * 64, b"y" * 100):
            ki, ko = kb.hmac_pads(key)
            msg = "jane@example.com".encode()
            inner = hashlib.sha256(bytes.fromhex(ki) + msg).digest()
            got = hashlib.sha256(bytes.fromhex(ko) + inner).hexdigest()
            self.assertEqual(got, hmac.new(key, msg, hashlib.sha256).hexdigest())

    def test_statements_for_columns_drops_and_truncation(self):
        rules = {"tables": [
            {"db": "app", "table": "customers",
             "columns": {"email": "email", "name": "name", "notes": "null", "id": "keep"},
             "drop": [{"column": "status", "equals": "it's deleted"}]},
            {"db": "app", "table": "sessions", "truncate": True}]}
        st = kb.anonymize_statements(rules, self.COLS, 1700000000)
        self.assertEqual(st[0], "SET SESSION timestamp = 1700000000")
        self.assertIn("DELETE FROM `app`.`customers` WHERE `status` = 'it''s deleted'", st)
        self.assertIn("DELETE FROM `app`.`sessions`", st)
        upd = [s for s in st if s.startswith("UPDATE `app`.`customers`")]
        self.assertEqual(len(upd), 1)
        self.assertIn("`notes` = NULL", upd[0])
        self.assertIn("@example.invalid", upd[0])
        # A fake is cut to the column's length; `keep` leaves the column out.
        self.assertIn("LEFT(", upd[0])
        self.assertIn(", 20)", upd[0])
        self.assertNotIn("`id` =", upd[0])
        # The key is never in a statement: only the session variables holding its pads.
        self.assertIn("@kiln_ki", upd[0])

    def test_rules_naming_what_is_not_there_are_refused(self):
        bad = [
            ({"db": "app", "table": "nope", "columns": {"x": "name"}}, "no such table"),
            ({"db": "app", "table": "customers", "columns": {"mail": "email"}}, "no column"),
            ({"db": "app", "table": "customers", "columns": {"email": "null"}}, "NOT NULL"),
            ({"db": "app", "table": "customers", "columns": {"id": "hash"}}, "text column"),
            ({"db": "app", "table": "customers", "columns": {"email": "shuffle"}}, "unknown action"),
            ({"db": "app`; DROP", "table": "customers"}, "plain table name"),
            ({"db": "app", "table": "customers", "drop": [{"column": "x", "equals": 1}]}, "no column"),
        ]
        for rule, why in bad:
            with self.assertRaises(kb.Refused) as e:
                kb.anonymize_statements({"tables": [rule]}, self.COLS, 0)
            self.assertIn(why, str(e.exception))

    def test_string_literals_escape_quotes_and_backslashes(self):
        self.assertEqual(kb.sql_text("a'b\\c"), "'a''b\\\\c'")

    def test_placeholder_png_is_a_valid_png(self):
        import struct
        import zlib
        png = kb.PLACEHOLDER_PNG
        self.assertEqual(png[:8], b"\x89PNG\r\n\x1a\n")
        pos = 8
        while pos < len(png):
            n = struct.unpack(">I", png[pos:pos + 4])[0]
            body = png[pos + 4:pos + 8 + n]
            crc = struct.unpack(">I", png[pos + 8 + n:pos + 12 + n])[0]
            self.assertEqual(zlib.crc32(body) & 0xffffffff, crc)
            pos += 12 + n
        self.assertEqual(pos, len(png))


class PointInTimeVerify(unittest.TestCase):
    def replay(self, steps, until=None, stop_seq=None):
        r = object.__new__(kb.BinlogReplay)
        r.steps, r.until, r.stop_seq = steps, until, stop_seq
        return r

    def test_a_stop_gtid_ends_the_plan_at_the_file_that_holds_it(self):
        f = [{"end": 10, "mtime": 100}, {"end": 20, "mtime": 200}, {"end": 30, "mtime": 300}]
        steps = [(f[0], 0), (f[1], 10), (f[2], 20)]
        self.assertEqual(self.replay(steps, stop_seq=15).plan(),
                         [(f[0], 0, False), (f[1], 10, True)])
        self.assertEqual(self.replay(steps, stop_seq=20).plan(),
                         [(f[0], 0, False), (f[1], 10, True)])
        self.assertEqual(self.replay(steps, stop_seq=5).plan(), [(f[0], 0, True)])
        # Already past the point at the base: nothing to replay.
        self.assertEqual(self.replay(steps[1:], stop_seq=10).plan(), [])
        self.assertEqual(len(self.replay(steps).plan()), 3)

    def test_a_stop_time_replays_every_file_that_may_hold_its_second(self):
        # File 0 was last written in second 100: every event in it is of second 100 or
        # earlier, and file 1 may hold more events of second 100 (a rotation inside it).
        f = [{"end": 10, "mtime": 100}, {"end": 20, "mtime": 101}, {"end": 30, "mtime": 300}]
        steps = [(f[0], 0), (f[1], 10), (f[2], 20)]
        self.assertEqual(self.replay(steps, until=100).plan(),
                         [(f[0], 0, False), (f[1], 10, True)])
        self.assertEqual(self.replay(steps, until=99).plan(), [(f[0], 0, True)])
        self.assertEqual(self.replay(steps, until=101).plan(),
                         [(f[0], 0, False), (f[1], 10, False), (f[2], 20, True)])
        self.assertEqual(self.replay(steps, until=400).plan(),
                         [(f[0], 0, False), (f[1], 10, False), (f[2], 20, False)])

    def test_gtid_event_lines_are_recognised(self):
        m = kb.BinlogReplay.GTID_EVENT.match(
            "#261203  1:35:00 server id 1  end_log_pos 456 CRC32 0x1a2b3c4d \tGTID 1000-1-57 trans")
        self.assertEqual(m.groups(), ("1000", "1", "57"))
        self.assertIsNone(kb.BinlogReplay.GTID_EVENT.match("INSERT INTO t VALUES ('GTID 1-1-1')"))

    def test_content_rows_parse(self):
        script = kb.content_script({("app", "t"): ["id", "name"]})
        self.assertEqual(len(script), 1)
        self.assertIn("CONCAT_WS(0x1f, `id`, ISNULL(`id`), `name`, ISNULL(`name`))", script[0])
        got, status = kb.parse_content(
            "Binlog_snapshot_file\tmariadb-bin.000003\nBinlog_snapshot_position\t812\n"
            "T\tapp\tt\t42\t123456\n")
        self.assertEqual(got, {("app", "t"): (42, "123456")})
        self.assertEqual(status["binlog_snapshot_position"], "812")


if __name__ == "__main__":
    unittest.main()


class Metrics(unittest.TestCase):
    """The node exporter textfile metrics: Prometheus' text format, written atomically."""

    def cfg(self, d):
        return {"metrics_dir": d, "prefix": "lab/db1", "max_age_hours": 26,
                "binlog": {"enabled": True, "target_lag": 60}}

    def test_state_and_runs_are_written_whole_and_readable(self):
        import stat as st
        import tempfile
        with tempfile.TemporaryDirectory() as d:
            cfg = self.cfg(d)
            kb.record_state(cfg, "20240630T020000Z", lag=12.5)
            kb.record_run(cfg, "backup", False, when=1700000000)
            names = sorted(os.listdir(d))
            self.assertEqual(names, ["kiln_backup.prom", "kiln_backup_run_backup.prom"])
            text = open(os.path.join(d, "kiln_backup.prom")).read()
            self.assertIn('kiln_backup_newest_complete_timestamp_seconds{prefix="lab/db1"} 1719712800.0\n', text)
            self.assertIn('kiln_backup_max_age_seconds{prefix="lab/db1"} 93600.0\n', text)
            self.assertIn('kiln_backup_binlog_archive_lag_seconds{prefix="lab/db1"} 12.5\n', text)
            self.assertIn('kiln_backup_binlog_archive_lag_limit_seconds{prefix="lab/db1"} 120.0\n', text)
            self.assertEqual(text.count("# TYPE kiln_backup_max_age_seconds gauge"), 1)
            run = open(os.path.join(d, "kiln_backup_run_backup.prom")).read()
            self.assertIn('kiln_backup_last_run_success{kind="backup",prefix="lab/db1"} 0.0\n', run)
            self.assertIn('kiln_backup_last_run_timestamp_seconds{kind="backup",prefix="lab/db1"} 1700000000.0\n', run)
            mode = st.S_IMODE(os.stat(os.path.join(d, "kiln_backup.prom")).st_mode)
            self.assertEqual(mode, 0o644)

    def test_no_directory_no_file_and_no_error(self):
        cfg = self.cfg("/nonexistent/kiln-metrics")
        self.assertFalse(kb.write_metrics(cfg, "x", [("a", "h", {}, 1)]))

    def test_label_values_are_escaped(self):
        self.assertIn('a{p="x\\"y\\\\z"} 1.0', kb.prom_text([("a", "h", {"p": 'x"y\\z'}, 1)]))


class MemoryS3:
    """An in-memory object store with the tool's client interface (put_stream reads the
    stream the way boto3's upload_fileobj does: in parts, to its end)."""

    def __init__(self):
        self.objects = {}

    def put_stream(self, bucket, key, stream):
        parts = []
        for chunk in iter(lambda: stream.read(7919), b""):
            parts.append(chunk)
        self.objects[(bucket, key)] = b"".join(parts)

    def open_stream(self, bucket, key):
        import io
        return io.BytesIO(self.objects[(bucket, key)])

    def make_bucket(self, bucket):
        return False

    def list(self, bucket, prefix=""):
        import hashlib
        return [{"key": k, "size": len(v), "etag": hashlib.md5(v).hexdigest()}
                for (b, k), v in sorted(self.objects.items()) if b == bucket and k.startswith(prefix)]

    def put_file(self, bucket, key, path, sha256=None):
        with open(path, "rb") as f:
            self.objects[(bucket, key)] = f.read()
        return sha256 or kb.sha256_file(path)

    def get_file(self, bucket, key, path):
        with open(path, "wb") as f:
            f.write(self.objects[(bucket, key)])


class PhysicalRestore(unittest.TestCase):
    """Which backup a physical restore starts from, and the position it rolls forward from."""

    def put_backup(self, s3, stamp, physical):
        import json
        files = {"dump.sql.gz": {}}
        if physical:
            files[kb.PHYSICAL] = {}
        base = "env/db1/%s/" % stamp
        s3.objects[("b", base + "manifest.json")] = json.dumps({"files": files}).encode()

    def test_the_newest_backup_with_a_physical_copy_at_or_before_the_point(self):
        s3 = MemoryS3()
        s3.get_bytes = lambda bucket, key: s3.objects[(bucket, key)]
        cfg = {"bucket": "b", "prefix": "env/db1"}
        self.put_backup(s3, "20261201T010000Z", True)
        self.put_backup(s3, "20261202T010000Z", False)   # the archiver's first: none
        self.put_backup(s3, "20261203T010000Z", True)
        s3.objects[("b", "env/db1/20261202T020000Z/dump.sql.gz")] = b""   # incomplete
        t = lambda s: kb.parse_stamp(s).timestamp()
        self.assertEqual(kb.pick_base(s3, cfg, t("20261202T120000Z")), "20261202T010000Z")
        self.assertEqual(kb.pick_base(s3, cfg, t("20261202T120000Z"), physical=True),
                         "20261201T010000Z")
        self.assertEqual(kb.pick_base(s3, cfg, t("20261203T010000Z"), physical=True),
                         "20261203T010000Z")
        with self.assertRaises(kb.Refused) as e:
            kb.pick_base(s3, cfg, t("20261130T000000Z"), physical=True)
        self.assertIn("with a physical copy", str(e.exception))

    def test_an_interrupted_swap_keeps_the_original(self):
        kept = kb.original_kept
        # (state left by an earlier run, DATADIR exists, DATADIR.before-restore exists)
        self.assertFalse(kept("", True, False))          # first restore
        self.assertFalse(kept("done", True, True))       # OLD is a finished restore's: replaced
        self.assertFalse(kept("swapping", True, False))  # killed before DATADIR moved
        self.assertTrue(kept("swapping", False, True))   # killed right after it moved
        self.assertTrue(kept("swapped", True, True))     # DATADIR is the copy: OLD kept
        self.assertTrue(kept("swapped", False, True))
        self.assertFalse(kept("swapped", True, False))   # OLD removed by hand since

    def test_binlog_info_of_either_name(self):
        import tempfile
        with tempfile.TemporaryDirectory() as d:
            self.assertEqual(kb.binlog_info(d), "")
            with open(os.path.join(d, "xtrabackup_binlog_info"), "w") as f:
                f.write("mariadb-bin.000005\t389\t1000-1-6\n")
            self.assertEqual(kb.binlog_info(d), "1000-1-6")
            with open(os.path.join(d, "mariadb_backup_binlog_info"), "w") as f:
                f.write("mariadb-bin.000009\t12\t1000-1-6,1-1-3\n")
            self.assertEqual(kb.binlog_info(d), "1000-1-6,1-1-3")


class Streams(unittest.TestCase):
    """The physical copy's way up: produced, gzipped, (encrypted,) hashed and uploaded as one
    stream, a failure anywhere raising before the upload can end."""

    def test_gzip_of_a_command_is_its_output_gzipped_and_hashed(self):
        import gzip
        import hashlib
        data = os.urandom(300000).hex().encode()  # 600 kB, several pipe reads
        with open(os.path.join(self.tmp(), "in"), "wb") as f:
            f.write(data)
        src = kb.Hashing(kb.GzipOf(["cat", f.name]))
        s3 = MemoryS3()
        s3.put_stream("b", "k", src)
        stored = s3.objects[("b", "k")]
        self.assertEqual(gzip.decompress(stored), data)
        self.assertEqual(src.sha256(), hashlib.sha256(stored).hexdigest())
        self.assertEqual(src.size, len(stored))

    def test_a_failed_command_raises_instead_of_ending_the_stream(self):
        src = kb.Hashing(kb.GzipOf(["sh", "-c", "printf partial; echo 'disk full' >&2; exit 3"]))
        s3 = MemoryS3()
        with self.assertRaises(RuntimeError) as e:
            s3.put_stream("b", "k", src)
        self.assertIn("exit 3", str(e.exception))
        self.assertIn("disk full", str(e.exception))
        self.assertEqual(s3.objects, {})

    def test_a_chatty_stderr_does_not_stop_the_command(self):
        # mariadb-backup logs every file it copies; 1 MB on stderr would fill a pipe.
        src = kb.GzipOf(["sh", "-c", "head -c 1000000 /dev/zero | tr '\\0' x >&2; echo done"])
        s3 = MemoryS3()
        s3.put_stream("b", "k", src)
        import gzip
        self.assertEqual(gzip.decompress(s3.objects[("b", "k")]), b"done\n")

    def test_replicated_stream_lands_on_both_targets(self):
        primary, replica = MemoryS3(), MemoryS3()
        rep = kb.Replicated(primary, replica, {"bucket": "bk", "replica": {"bucket": "off"}})
        import io
        rep.put_stream("bk", "p/physical", io.BytesIO(b"x" * 20000))
        self.assertEqual(primary.objects[("bk", "p/physical")], b"x" * 20000)
        self.assertEqual(replica.objects[("off", "p/physical")], b"x" * 20000)
        rep.put_stream("media", "m", io.BytesIO(b"y"))
        self.assertNotIn(("off", "m"), replica.objects)

    def age_stand_in(self):
        # Not age: a stand-in with its header and a reversible transform, so the plumbing
        # (a thread feeding it, its output hashed while uploaded, failures) is what is tested;
        # the real age runs in pitr_e2e on the lab.
        d = self.tmp()
        with open(os.path.join(d, "age"), "w") as f:
            f.write("""#!/bin/sh
out=/dev/stdout; in=/dev/stdin; mode=
while [ $# -gt 0 ]; do
  case "$1" in
    --output) out=$2; shift 2 ;;
    --recipient|--identity) shift 2 ;;
    --encrypt|--decrypt) mode=$1; shift ;;
    *) in=$1; shift ;;
  esac
done
if [ "$mode" = --encrypt ]; then
  { printf 'age-encryption.org/v1\\n'; tr a-z A-Z < "$in"; } > "$out"
else
  tail -c +23 "$in" | tr A-Z a-z > "$out"
fi
""")
        os.chmod(f.name, 0o755)
        old = os.environ["PATH"]
        os.environ["PATH"] = d + os.pathsep + old
        self.addCleanup(os.environ.__setitem__, "PATH", old)

    def tmp(self):
        import tempfile
        d = tempfile.mkdtemp()
        import shutil
        self.addCleanup(shutil.rmtree, d)
        return d

    def test_sealed_stream_uploads_the_ciphertext_and_records_both_hashes(self):
        import hashlib
        import io
        self.age_stand_in()
        inner = MemoryS3()
        sealed = kb.Sealed(inner, {"bucket": "bk", "workdir": self.tmp(),
                                   "age": {"recipients": ["age1test"], "identity": ""}})
        plain = b"abc" * 500000  # 1.5 MB: more than one pipe buffer each way
        src = kb.Hashing(io.BytesIO(plain))
        sealed.put_stream("bk", "k", src)
        stored = inner.objects[("bk", "k")]
        self.assertEqual(stored, b"age-encryption.org/v1\n" + plain.upper())
        self.assertEqual(src.sha256(), hashlib.sha256(plain).hexdigest())
        self.assertEqual(sealed.last_stored, {"sha256": hashlib.sha256(stored).hexdigest(),
                                              "size": len(stored)})

    def test_sealed_stream_raises_when_its_source_fails(self):
        self.age_stand_in()
        inner = MemoryS3()
        sealed = kb.Sealed(inner, {"bucket": "bk", "workdir": self.tmp(),
                                   "age": {"recipients": ["age1test"], "identity": ""}})
        src = kb.Hashing(kb.GzipOf(["sh", "-c", "head -c 200000 /dev/zero; exit 5"]))
        with self.assertRaises(RuntimeError) as e:
            sealed.put_stream("bk", "k", src)
        self.assertIn("exit 5", str(e.exception))
        self.assertEqual(inner.objects, {})


class StreamedRestore(unittest.TestCase):
    """The physical copy read back as a stream: decrypted as it downloads (Sealed), from the
    replica when the primary lacks it (Replicated), checked against the manifest at its
    end and extracted with nothing of it written to disk (extract_physical)."""

    age_stand_in = Streams.age_stand_in
    tmp = Streams.tmp

    def tools(self, prepare_rc=0):
        # mbstream -x -C DIR keeps what it reads as DIR/stream; mariadb-backup --prepare
        # exits with prepare_rc. The real ones run in data_e2e and pitr_e2e on the lab.
        d = self.tmp()
        for name, body in (("mbstream", 'cat > "$3/stream"'),
                           ("mariadb-backup", "exit %d" % prepare_rc)):
            with open(os.path.join(d, name), "w") as f:
                f.write("#!/bin/sh\n%s\n" % body)
            os.chmod(f.name, 0o755)
        old = os.environ["PATH"]
        os.environ["PATH"] = d + os.pathsep + old
        self.addCleanup(os.environ.__setitem__, "PATH", old)

    def sealed(self):
        self.age_stand_in()
        identity = os.path.join(self.tmp(), "identity")
        open(identity, "w").close()
        inner = MemoryS3()
        return inner, kb.Sealed(inner, {"bucket": "bk", "workdir": self.tmp(),
                                        "age": {"recipients": ["age1test"],
                                                "identity": identity}})

    def test_a_sealed_object_reads_back_as_its_plaintext(self):
        import io
        inner, sealed = self.sealed()
        plain = b"xyz" * 400000
        sealed.put_stream("bk", "k", io.BytesIO(plain))
        got = sealed.open_stream("bk", "k")
        parts = list(iter(lambda: got.read(65536), b""))
        self.assertEqual(b"".join(parts), plain)
        self.assertEqual(got.read(10), b"", "read after the end stays at the end")
        inner.objects[("bk", "plain")] = b"not sealed"
        self.assertEqual(sealed.open_stream("bk", "plain").read(), b"not sealed")
        early = sealed.open_stream("bk", "k")
        early.read(10)
        early.close()   # ends age and the feeding thread without reading the rest

    def test_no_identity_is_refused(self):
        import io
        inner, sealed = self.sealed()
        sealed.put_stream("bk", "k", io.BytesIO(b"abc"))
        sealed.identity = ""
        with self.assertRaises(kb.Refused):
            sealed.open_stream("bk", "k")

    def test_the_replica_serves_what_the_primary_lacks(self):
        primary, replica = MemoryS3(), MemoryS3()
        rep = kb.Replicated(primary, replica, {"bucket": "bk"})
        replica.objects[("bk", "k")] = b"from the replica"
        self.assertEqual(rep.open_stream("bk", "k").read(), b"from the replica")
        path = os.path.join(self.tmp(), "k")
        rep.get_file("bk", "k", path)
        with open(path, "rb") as f:
            self.assertEqual(f.read(), b"from the replica")
        primary.objects[("bk", "k")] = b"from the primary"
        self.assertEqual(rep.open_stream("bk", "k").read(), b"from the primary")

        def unreachable(bucket, key):
            raise ConnectionRefusedError("primary down")
        primary.open_stream = unreachable
        self.assertEqual(rep.open_stream("bk", "k").read(), b"from the replica")
        self.assertTrue(rep.down, "an unreachable primary is not asked again in this run")
        primary.open_stream = lambda bucket, key: self.fail("the primary was asked again")
        self.assertEqual(rep.open_stream("bk", "k").read(), b"from the replica")

    def physical(self, s3, data, manifest_data=None):
        import gzip
        import hashlib
        gz = gzip.compress(data, mtime=0)
        s3.objects[("bk", "env/20261201T010000Z/" + kb.PHYSICAL)] = gz
        want = gzip.compress(manifest_data, mtime=0) if manifest_data is not None else gz
        return {"files": {kb.PHYSICAL: {"sha256": hashlib.sha256(want).hexdigest(),
                                        "size": len(want)}}}

    @staticmethod
    def extract(s3, manifest, target):
        kb.extract_physical({"bucket": "bk", "prefix": "env"}, s3, "20261201T010000Z",
                            manifest, target)

    def test_extracted_from_the_stream_and_checked(self):
        self.tools()
        s3 = MemoryS3()
        data = os.urandom(300000)
        manifest = self.physical(s3, data)
        target = os.path.join(self.tmp(), "restore")
        self.extract(s3, manifest, target)
        with open(os.path.join(target, "stream"), "rb") as f:
            self.assertEqual(f.read(), data)

    def test_a_copy_unlike_its_manifest_is_refused_and_removed(self):
        self.tools()
        s3 = MemoryS3()
        manifest = self.physical(s3, b"what is stored", manifest_data=b"what was backed up")
        target = os.path.join(self.tmp(), "restore")
        with self.assertRaises(kb.Refused) as e:
            self.extract(s3, manifest, target)
        self.assertIn("the manifest says", str(e.exception))
        self.assertFalse(os.path.exists(target), "the half-extracted copy is removed")

    def test_a_cut_stream_is_refused_and_removed(self):
        self.tools()
        s3 = MemoryS3()
        manifest = self.physical(s3, os.urandom(100000))
        key = ("bk", "env/20261201T010000Z/" + kb.PHYSICAL)
        s3.objects[key] = s3.objects[key][:50000]
        target = os.path.join(self.tmp(), "restore")
        with self.assertRaises(EOFError):
            self.extract(s3, manifest, target)
        self.assertFalse(os.path.exists(target))

    def test_a_failed_prepare_removes_the_copy(self):
        self.tools(prepare_rc=3)
        s3 = MemoryS3()
        manifest = self.physical(s3, b"data")
        target = os.path.join(self.tmp(), "restore")
        with self.assertRaises(RuntimeError):
            self.extract(s3, manifest, target)
        self.assertFalse(os.path.exists(target))

    def test_a_target_with_files_is_refused_and_kept(self):
        self.tools()
        s3 = MemoryS3()
        manifest = self.physical(s3, b"data")
        target = self.tmp()
        open(os.path.join(target, "x"), "w").close()
        with self.assertRaises(kb.Refused):
            self.extract(s3, manifest, target)
        self.assertTrue(os.path.exists(os.path.join(target, "x")))


class MediaMirror(unittest.TestCase):
    """The media mirror is backup data: sealed with age and replicated like the backups."""

    tmp = Streams.tmp
    age_stand_in = Streams.age_stand_in

    def cfg(self):
        return {"bucket": "bk", "workdir": self.tmp(), "media_bucket": "media",
                "media_mirror_bucket": "mm", "replica": {"bucket": "off"},
                "age": {"recipients": ["age1test"], "identity": ""}}

    def test_sealed_and_replicated_mirror_copies_each_change_once(self):
        self.age_stand_in()
        cfg = self.cfg()
        primary, replica = MemoryS3(), MemoryS3()
        s3 = kb.Sealed(kb.Replicated(primary, replica, cfg), cfg)
        primary.objects[("media", "a.jpg")] = b"photo a"
        primary.objects[("media", "b.pdf")] = b"invoice b"
        first = kb.mirror_media(s3, cfg, None)
        self.assertEqual(primary.objects[("mm", "a.jpg")], b"age-encryption.org/v1\nPHOTO A")
        # Off-site, sealed, under the mirror's own name (not the backup bucket's).
        self.assertEqual(replica.objects[("mm", "b.pdf")], b"age-encryption.org/v1\nINVOICE B")
        self.assertNotIn(("media", "a.jpg"), replica.objects)
        self.assertTrue(first["objects"]["a.jpg"]["sealed"])
        # Unchanged: nothing copied again.
        before = dict(primary.objects)
        second = kb.mirror_media(s3, cfg, {"media": first})
        self.assertEqual(second["objects"], first["objects"])
        self.assertEqual(primary.objects, before)
        # Changed: that object only.
        primary.objects[("media", "a.jpg")] = b"photo a2"
        third = kb.mirror_media(s3, cfg, {"media": second})
        self.assertEqual(primary.objects[("mm", "a.jpg")], b"age-encryption.org/v1\nPHOTO A2")
        self.assertEqual(third["objects"]["b.pdf"], first["objects"]["b.pdf"])
        # Read back through the tool (with an identity): plaintext again.
        ident = os.path.join(self.tmp(), "identity")
        open(ident, "w").close()
        s3.identity = ident
        out = os.path.join(self.tmp(), "x")
        s3.get_file("mm", "a.jpg", out)
        self.assertEqual(open(out, "rb").read(), b"photo a2")

    def test_a_plaintext_mirror_from_before_encryption_is_sealed_again(self):
        self.age_stand_in()
        cfg = self.cfg()
        plain = MemoryS3()
        plain.objects[("media", "a.jpg")] = b"photo a"
        unsealed = kb.mirror_media(plain, dict(cfg, age={"recipients": []}), None)
        self.assertEqual(plain.objects[("mm", "a.jpg")], b"photo a")
        kb.mirror_media(kb.Sealed(plain, cfg), cfg, {"media": unsealed})
        self.assertEqual(plain.objects[("mm", "a.jpg")], b"age-encryption.org/v1\nPHOTO A")

    def test_the_live_media_bucket_is_never_sealed(self):
        self.age_stand_in()
        cfg = self.cfg()
        inner = MemoryS3()
        s3 = kb.Sealed(inner, cfg)
        path = os.path.join(self.tmp(), "m")
        with open(path, "wb") as f:
            f.write(b"served by the app")
        s3.put_file("media", "c.css", path)
        self.assertEqual(inner.objects[("media", "c.css")], b"served by the app")
