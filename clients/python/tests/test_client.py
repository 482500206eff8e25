"""Tests of the murmur Python client against a real daemon.

Each test class starts its own daemon (``murmur --data-dir D daemon``, replication off)
in a temporary directory and stops it with SIGTERM. The binary is ``$MURMUR_BIN``, else
``$CARGO_TARGET_DIR/release/murmur`` (``CARGO_TARGET_DIR`` defaulting to
``~/.cache/murmur/target``); the tests are skipped when it does not exist.

Run from the repository root: ``python3 -m unittest discover -s clients/python/tests -v``.
"""

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import unittest

try:
    import murmur
except ImportError:  # not installed: use the source tree next to this file
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "src"))
    import murmur

from murmur import Client, MurmurError, MurmurUnavailable


def murmur_bin() -> str:
    env = os.environ.get("MURMUR_BIN")
    if env:
        return env
    target = os.environ.get("CARGO_TARGET_DIR") or os.path.expanduser("~/.cache/murmur/target")
    return os.path.join(target, "release", "murmur")


class Daemon:
    """A daemon in a temporary data directory, replication off."""

    def __init__(self) -> None:
        binary = murmur_bin()
        if not os.access(binary, os.X_OK):
            if os.environ.get("MURMUR_BIN"):
                # Asked for explicitly (scripts/test does): a missing binary fails.
                raise RuntimeError(f"MURMUR_BIN={binary} is not an executable")
            raise unittest.SkipTest(
                f"no murmur binary at {binary} (set MURMUR_BIN or CARGO_TARGET_DIR)")
        self.dir = tempfile.mkdtemp(prefix="murmur-py-")
        with open(os.path.join(self.dir, "murmur.toml"), "w") as f:
            f.write("[p2p]\nenabled = false\n")
        self.log_path = os.path.join(self.dir, "daemon.log")
        self._log = open(self.log_path, "wb")
        env = {k: v for k, v in os.environ.items()
               if k not in ("MURMUR_SOCKET", "MURMUR_DATA_DIR")}
        self.proc = subprocess.Popen(
            [binary, "--data-dir", self.dir, "daemon"],
            stdin=subprocess.DEVNULL, stdout=self._log, stderr=subprocess.STDOUT, env=env)
        self.client = Client(data_dir=self.dir, timeout=10)
        deadline = time.monotonic() + 15
        while True:
            try:
                self.client.status()
                return
            except MurmurUnavailable:
                pass
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"the daemon did not start:\n{self.log()}")
            time.sleep(0.05)

    def log(self) -> str:
        with open(self.log_path, "rb") as f:
            return f.read().decode("utf-8", "replace")

    def stop(self) -> None:
        """SIGTERM, and wait (SIGKILL after 15 s)."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def remove(self) -> None:
        self.stop()
        self._log.close()
        shutil.rmtree(self.dir, ignore_errors=True)


class ClientTest(unittest.TestCase):
    """Every call against one daemon; each test uses its own topics."""

    @classmethod
    def setUpClass(cls) -> None:
        cls.daemon = Daemon()
        cls.c = cls.daemon.client

    @classmethod
    def tearDownClass(cls) -> None:
        cls.daemon.remove()

    def next_offset(self) -> int:
        return self.c.status()["events"]

    def collect(self, follow, n: int):
        """The next ``n`` events of ``follow``."""
        out = []
        for ev in follow:
            out.append(ev)
            if len(out) == n:
                break
        return out

    def test_a_retry_with_the_same_idempotency_key_stores_nothing(self):
        c = self.c
        first = c.publish("py/idem", "once", idempotency_key="py-key-1")
        again = c.publish("py/idem", "once", idempotency_key="py-key-1")
        self.assertEqual((again.seq, again.id, again.offset), (first.seq, first.id, first.offset))
        events, _ = c.read("py/idem")
        self.assertEqual(len(events), 1)
        with self.assertRaises(MurmurError) as e:
            c.publish("py/idem", "x", idempotency_key="has space")
        self.assertEqual(e.exception.code, "invalid_idempotency_key")

    def test_publish_text_round_trip(self) -> None:
        p = self.c.publish("py/text", "héllo wörld", content_type="text/plain")
        self.assertIsInstance(p, murmur.Published)
        self.assertEqual((p.topic, p.seq), ("py/text", 0))
        self.assertEqual(p.author, self.c.status()["author"])
        self.assertGreater(p.time_ms, 0)
        events, nxt = self.c.read("py/text")
        self.assertEqual(len(events), 1)
        ev = events[0]
        self.assertEqual((ev.id, ev.offset, ev.seq, ev.prev), (p.id, p.offset, 0, None))
        self.assertEqual(ev.data, "héllo wörld".encode())
        self.assertEqual(ev.text(), "héllo wörld")
        self.assertEqual((ev.kind, ev.content_type), ("data", "text/plain"))
        self.assertEqual(nxt, self.next_offset())
        self.assertEqual(self.c.event(p.id), murmur.Event(**{**ev.__dict__, "offset": None}))

    def test_publish_bytes_round_trip(self) -> None:
        payload = bytes(range(256)) + b"\xff\xfe\x00not utf-8\x80"
        p = self.c.publish("py/bytes", payload)
        q = self.c.publish("py/bytes", b"")
        events, nxt = self.c.read("py/bytes", from_offset=p.offset, limit=10)
        self.assertEqual([e.data for e in events], [payload, b""])
        self.assertEqual([e.seq for e in events], [0, 1])
        self.assertEqual(events[1].prev, p.id)
        self.assertIsNone(events[0].content_type)
        self.assertEqual(nxt, q.offset + 1)
        self.assertEqual(self.c.publish("py/bytes", '{"t": 1}').seq, 2)
        self.assertEqual(self.c.log("py/bytes", from_seq=2)[0][0].json(), {"t": 1})
        with self.assertRaises(TypeError):
            self.c.publish("py/bytes", 42)

    def test_batch_and_its_atomicity(self) -> None:
        ps = self.c.publish_batch([("py/batch/a", "1"), ("py/batch/a", b"\x00\x01", "application/x-raw"),
                                   ("py/batch/b", "3")])
        self.assertEqual([(p.topic, p.seq) for p in ps],
                         [("py/batch/a", 0), ("py/batch/a", 1), ("py/batch/b", 0)])
        self.assertEqual([p.offset for p in ps], [ps[0].offset + i for i in range(3)])
        before = self.next_offset()
        with self.assertRaises(MurmurError) as cm:
            self.c.publish_batch([("py/batch/a", "ok"), ("py/batch/#", "invalid topic")])
        self.assertEqual((cm.exception.status, cm.exception.code), (400, "invalid_topic"))
        self.assertIn("event 1", cm.exception.message)
        with self.assertRaises(MurmurError) as cm:
            self.c.publish_batch([("py/batch/a", "ok"), ("$fleet/x", "reserved")])
        self.assertEqual(cm.exception.code, "reserved_topic")
        self.assertEqual(self.next_offset(), before)
        events, _ = self.c.log("py/batch/a")
        self.assertEqual([e.data for e in events], [b"1", b"\x00\x01"])
        self.assertEqual(events[1].content_type, "application/x-raw")

    def test_follow_from_offset(self) -> None:
        first = self.c.publish("py/follow/a", "before")
        self.c.publish("py/follow/a", "at")

        def later():
            time.sleep(0.3)
            self.c.publish("py/follow/b", "after 1")
            self.c.publish_batch([("py/follow/a", "after 2"), ("py/other", "not followed")])

        t = threading.Thread(target=later)
        t.start()
        with self.c.follow("py/follow/#", from_offset=first.offset + 1, idle_timeout=10) as f:
            events = self.collect(f, 3)
            self.assertEqual([e.text() for e in events], ["at", "after 1", "after 2"])
            self.assertEqual(f.next_offset, events[-1].offset + 1)
            offsets = [e.offset for e in events]
            self.assertEqual(offsets, sorted(offsets))
        t.join()
        self.assertTrue(f.closed)
        self.assertEqual(list(f), [])
        # Resuming from next_offset picks up what came after.
        p = self.c.publish("py/follow/a", "resumed")
        with self.c.follow("py/follow/#", from_offset=f.next_offset, idle_timeout=10) as g:
            self.assertEqual(next(g).id, p.id)

    def test_follow_many_and_large_events(self) -> None:
        big = "x" * 700_000  # spans many chunks and reads
        ps = self.c.publish_batch([("py/bulk", f"e{i}") for i in range(2000)])
        self.c.publish("py/bulk", big)
        self.c.publish("py/bulk", bytes(range(256)) * 2000)
        with self.c.follow("py/bulk", from_offset=ps[0].offset, idle_timeout=10) as f:
            events = self.collect(f, 2002)
        self.assertEqual([e.seq for e in events], list(range(2002)))
        self.assertEqual(events[1999].text(), "e1999")
        self.assertEqual(events[2000].text(), big)
        self.assertEqual(events[2001].data, bytes(range(256)) * 2000)

    def test_follow_pattern_filter(self) -> None:
        start = self.next_offset()

        def later():
            time.sleep(0.2)
            for topic in ("py/filt/a/temp", "py/filt/a/hum", "py/filt/b/temp", "py/filt/temp"):
                self.c.publish(topic, topic)

        t = threading.Thread(target=later)
        t.start()
        with self.c.follow("py/filt/+/temp", from_offset=start, idle_timeout=10) as f:
            events = self.collect(f, 2)
        t.join()
        self.assertEqual([e.topic for e in events], ["py/filt/a/temp", "py/filt/b/temp"])
        # `#` in a pattern is sent URL-encoded, and matches every level below.
        events, _ = self.c.read("py/filt/#", from_offset=start)
        self.assertEqual(len(events), 4)

    def test_follow_from_now_and_idle_timeout(self) -> None:
        with self.c.follow("py/idle/#", idle_timeout=0.3) as f:
            t0 = time.monotonic()
            with self.assertRaises(TimeoutError):
                next(f)
            self.assertLess(time.monotonic() - t0, 3)
            self.assertTrue(f.closed)
        # From now: only events published after the stream opened.
        self.c.publish("py/idle/x", "old")
        f = self.c.follow("py/idle/#", idle_timeout=10)
        p = self.c.publish("py/idle/x", "new")
        self.assertEqual(next(f).id, p.id)
        f.close()

    def test_follow_close_from_another_thread(self) -> None:
        f = self.c.follow("py/quiet/#")
        threading.Timer(0.3, f.close).start()
        t0 = time.monotonic()
        self.assertEqual(list(f), [])
        self.assertLess(time.monotonic() - t0, 5)

    def test_follow_refused(self) -> None:
        with self.assertRaises(MurmurError) as cm:
            self.c.follow("py/bad/#/x")
        self.assertEqual((cm.exception.status, cm.exception.code), (400, "invalid_pattern"))

    def test_consumer_resumes_after_its_ack(self) -> None:
        ps = self.c.publish_batch([("py/resume/a", f"r{i}") for i in range(5)])
        self.c.publish("py/resume-other", "not followed")
        # A new consumer starts at from_offset; it receives all five.
        f = self.c.follow("py/resume/#", from_offset=ps[0].offset, idle_timeout=10,
                          consumer="py-resume")
        events = self.collect(f, 5)
        self.assertEqual([e.id for e in events], [p.id for p in ps])
        # Acknowledge the first two: cumulative, so acking the second covers the first.
        c = self.c.ack("py-resume", events[1].offset)
        self.assertEqual((c["name"], c["pattern"]), ("py-resume", "py/resume/#"))
        self.assertEqual(c["next"], events[1].offset + 1)
        self.assertEqual((c["pending"], c["pending_exact"]), (3, True))
        # An older ack never moves the cursor back.
        self.assertEqual(self.c.ack("py-resume", events[0].offset)["next"], events[1].offset + 1)
        # A new follow of the same consumer ends the older stream...
        g = self.c.follow("py/resume/#", idle_timeout=10, consumer="py-resume")
        t0 = time.monotonic()
        self.assertEqual(list(f), [])
        self.assertLess(time.monotonic() - t0, 5)
        self.assertTrue(f.closed)
        # ...and resumes after the ack: the three unacknowledged events come again.
        again = self.collect(g, 3)
        self.assertEqual([e.id for e in again], [p.id for p in ps[2:]])
        self.assertEqual([e.text() for e in again], ["r2", "r3", "r4"])
        g.close()
        # A restarted client acks everything and, resuming, sees only new events.
        self.c.ack("py-resume", again[-1].offset)
        with self.c.follow("py/resume/#", idle_timeout=10, consumer="py-resume") as h:
            p = self.c.publish("py/resume/a", "new")
            ev = next(h)
            self.assertEqual(ev.id, p.id)
            self.c.ack("py-resume", ev.offset)
        # The pattern is fixed at creation; pattern=None follows with the consumer's own.
        with self.assertRaises(MurmurError) as cm:
            self.c.follow("py/other/#", consumer="py-resume")
        self.assertEqual((cm.exception.status, cm.exception.code), (409, "consumer_pattern"))
        with self.c.follow(None, idle_timeout=10, consumer="py-resume") as h:
            self.c.publish("py/resume-other", "not followed either")
            p = self.c.publish("py/resume/a", "own pattern")
            self.assertEqual(next(h).id, p.id)
        with self.assertRaises(MurmurError) as cm:
            self.c.ack("py-resume", self.next_offset())
        self.assertEqual((cm.exception.status, cm.exception.code), (400, "bad_offset"))
        self.c.delete_consumer("py-resume")

    def test_consumers_list_and_delete(self) -> None:
        name = "py-list.1_x"
        f = self.c.follow("py/cons/list", idle_timeout=10, consumer=name)
        ps = [self.c.publish("py/cons/list", f"l{i}") for i in range(3)]
        self.assertEqual([e.id for e in self.collect(f, 3)], [p.id for p in ps])
        listed = self.c.consumers()
        self.assertGreaterEqual(listed["max"], 1)
        mine = [c for c in listed["consumers"] if c["name"] == name]
        self.assertEqual(len(mine), 1, listed)
        c = mine[0]
        # Nothing acknowledged: the consumer started at new events, so all three pend.
        self.assertEqual(c["pattern"], "py/cons/list")
        self.assertEqual((c["next"], c["pending"], c["pending_exact"]), (ps[0].offset, 3, True))
        self.assertTrue(c["streaming"])
        self.assertGreater(c["created_ms"], 0)
        self.assertEqual(self.c.consumer(name), c)
        # Deleting it ends its stream; the events stay.
        self.assertIsNone(self.c.delete_consumer(name))
        t0 = time.monotonic()
        self.assertEqual(list(f), [])
        self.assertLess(time.monotonic() - t0, 5)
        self.assertNotIn(name, [c["name"] for c in self.c.consumers()["consumers"]])
        self.assertEqual(len(self.c.read("py/cons/list")[0]), 3)
        for call in (lambda: self.c.consumer(name), lambda: self.c.delete_consumer(name),
                     lambda: self.c.ack(name, ps[0].offset)):
            with self.assertRaises(MurmurError) as cm:
                call()
            self.assertNotIsInstance(cm.exception, MurmurUnavailable)
            self.assertEqual((cm.exception.status, cm.exception.code), (404, "no_consumer"))
        # Names: 1-64 of A-Z a-z 0-9 . _ - (a "/" stays part of the name); ack needs one.
        for bad in ("has space", "a/b", "x" * 65):
            with self.assertRaises(MurmurError) as cm:
                self.c.follow("py/cons/list", consumer=bad)
            self.assertEqual((cm.exception.status, cm.exception.code), (400, "bad_consumer"))
            with self.assertRaises(MurmurError) as cm:
                self.c.consumer(bad)
            self.assertEqual((cm.exception.status, cm.exception.code), (400, "bad_consumer"))
        with self.assertRaises(MurmurError) as cm:
            self.c.follow("py/cons/list", ack="auto")
        self.assertEqual(cm.exception.status, 400)
        with self.assertRaises(MurmurError) as cm:
            self.c.follow("py/cons/list", consumer=name, ack="sometimes")
        self.assertEqual(cm.exception.status, 400)

    def test_consumer_auto_ack(self) -> None:
        name = "py-auto"
        ps = self.c.publish_batch([("py/cons/auto", f"a{i}") for i in range(4)])
        f = self.c.follow("py/cons/auto", from_offset=ps[0].offset, idle_timeout=10,
                          consumer=name, ack="auto")
        events = self.collect(f, 4)
        self.assertEqual([e.id for e in events], [p.id for p in ps])
        # The daemon acknowledges each page once the connection takes the next; no
        # ack call is made here.
        deadline = time.monotonic() + 10
        while True:
            c = self.c.consumer(name)
            if c["next"] > events[-1].offset:
                break
            self.assertLess(time.monotonic(), deadline, f"auto ack did not move next: {c}")
            time.sleep(0.05)
        self.assertEqual(c["pending"], 0)
        self.assertTrue(c["streaming"])
        f.close()
        # Resuming sends nothing acknowledged again: the next event is a new one.
        with self.c.follow("py/cons/auto", idle_timeout=10, consumer=name) as g:
            p = self.c.publish("py/cons/auto", "after")
            self.assertEqual(next(g).id, p.id)
        self.c.delete_consumer(name)

    def test_log_by_topic(self) -> None:
        ps = [self.c.publish("py/log", f"m{i}") for i in range(4)]
        self.c.publish("py/log/other", "x")
        events, nxt = self.c.log("py/log", from_seq=1, limit=2)
        self.assertEqual([e.seq for e in events], [1, 2])
        self.assertEqual([e.id for e in events], [ps[1].id, ps[2].id])
        self.assertIsNone(events[0].offset)
        self.assertEqual(nxt, 3)
        events, nxt = self.c.log("py/log", author=ps[0].author, from_seq=nxt)
        self.assertEqual(([e.text() for e in events], nxt), (["m3"], 4))
        self.assertEqual(self.c.log("py/log", from_seq=4), ([], 4))
        with self.assertRaises(MurmurError) as cm:
            self.c.log("py/log", author="nothex")
        self.assertEqual(cm.exception.code, "invalid_author")

    def test_status_topics_fleet_shape(self) -> None:
        p = self.c.publish("py/shape", "x")
        st = self.c.status()
        for key in ("version", "author", "data_dir", "events", "topics", "logs", "ingest"):
            self.assertIn(key, st)
        self.assertEqual(os.path.realpath(st["data_dir"]), os.path.realpath(self.daemon.dir))
        self.assertGreater(st["events"], p.offset)
        topics = {t["topic"]: t for t in self.c.topics()["topics"]}
        self.assertEqual(topics["py/shape"]["events"], 1)
        log = topics["py/shape"]["logs"][0]
        self.assertEqual((log["author"], log["head_seq"], log["head_id"]), (p.author, 0, p.id))
        nodes = self.c.fleet_nodes()
        self.assertIn("now_ms", nodes)
        self.assertIsInstance(nodes["nodes"], list)

    def test_documents(self) -> None:
        ch = self.c.doc_set("py/site", "plan", "sensors", {"t1": "north", "t2": "south"})
        self.assertEqual((ch["topic"], ch["doc"], ch["seq"]), ("py/site", "plan", 0))
        self.c.doc_set("py/site", "plan", "sensors/t1", "east")
        self.c.doc_change("py/site", "plan", [
            {"op": "counter", "path": "visits", "value": 1},
            {"op": "set", "path": "order", "value": []},
            {"op": "insert", "path": "order", "index": 0, "value": "pump"},
        ], message="setup")
        self.c.doc_change("py/site", "plan", [{"op": "increment", "path": "visits", "by": 2}])
        self.assertEqual(self.c.doc_get("py/site", "plan"), {
            "sensors": {"t1": "east", "t2": "south"}, "visits": 3, "order": ["pump"]})
        self.assertEqual(self.c.doc_get("py/site", "plan", "sensors/t1"), "east")
        self.assertEqual(self.c.doc_get("py/site", "plan", "order/0"), "pump")
        self.assertEqual(self.c.docs("py/site"), ["plan"])
        self.assertEqual(self.c.docs("py/nothing"), [])
        # Document changes are events of kind "doc" in the topic.
        events, _ = self.c.log("py/site")
        self.assertEqual({(e.kind, e.doc) for e in events}, {("doc", "plan")})
        with self.assertRaises(MurmurError) as cm:
            self.c.doc_get("py/site", "nope")
        self.assertEqual((cm.exception.status, cm.exception.code), (404, "no_such_document"))
        with self.assertRaises(MurmurError) as cm:
            self.c.doc_get("py/site", "plan", "missing/key")
        self.assertEqual(cm.exception.code, "no_such_path")
        with self.assertRaises(MurmurError) as cm:
            self.c.doc_change("py/site", "plan", [{"op": "increment", "path": "sensors"}])
        self.assertEqual(cm.exception.code, "wrong_type")

    def test_reserved_topic_refused(self) -> None:
        with self.assertRaises(MurmurError) as cm:
            self.c.publish("$fleet/x", "y")
        e = cm.exception
        self.assertEqual((e.status, e.code), (400, "reserved_topic"))
        self.assertIn("reserved", str(e))
        with self.assertRaises(MurmurError) as cm:
            self.c.doc_set("$fleet/x", "d", "k", 1)
        self.assertEqual(cm.exception.code, "reserved_topic")
        # The node's own $fleet topics are readable; `#` leaves them out, None does not.
        everything, _ = self.c.read(None, limit=1000)
        self.assertIn("$fleet/health", {e.topic for e in everything})
        apps, _ = self.c.read("#", limit=1000)
        self.assertNotIn("$fleet/health", {e.topic for e in apps})


class UnavailableTest(unittest.TestCase):
    """No daemon: every call raises MurmurUnavailable with the fix."""

    def setUp(self) -> None:
        self.dir = tempfile.mkdtemp(prefix="murmur-py-")
        self.addCleanup(shutil.rmtree, self.dir, True)

    def test_missing_socket(self) -> None:
        c = Client(data_dir=self.dir)
        self.assertEqual(c.socket_path, os.path.join(self.dir, "murmur.sock"))
        for call in (c.status, lambda: c.publish("a", "b"), lambda: c.follow(),
                     c.consumers, lambda: c.ack("n", 0)):
            with self.assertRaises(MurmurUnavailable) as cm:
                call()
            self.assertIsInstance(cm.exception, MurmurError)
            self.assertEqual((cm.exception.status, cm.exception.code), (None, "not_running"))
            self.assertIn("murmur daemon", str(cm.exception))

    def test_stale_socket(self) -> None:
        path = os.path.join(self.dir, "murmur.sock")
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.bind(path)  # bound, never listening: connecting is refused
        self.addCleanup(s.close)
        with self.assertRaises(MurmurUnavailable) as cm:
            Client(socket=path).status()
        self.assertIn("murmur daemon", str(cm.exception))

    def test_socket_resolution(self) -> None:
        saved = {k: os.environ.get(k) for k in ("MURMUR_SOCKET", "MURMUR_DATA_DIR")}

        def restore():
            for k, v in saved.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v

        self.addCleanup(restore)
        os.environ["MURMUR_DATA_DIR"] = "/srv/m"
        os.environ.pop("MURMUR_SOCKET", None)
        self.assertEqual(Client().socket_path, "/srv/m/murmur.sock")
        os.environ["MURMUR_SOCKET"] = "/run/m.sock"
        self.assertEqual(Client().socket_path, "/run/m.sock")
        self.assertEqual(Client(data_dir="/d").socket_path, "/d/murmur.sock")
        self.assertEqual(Client(socket="/x.sock", data_dir="/d").socket_path, "/x.sock")


class ShutdownTest(unittest.TestCase):
    """A follow stream ends when the daemon shuts down."""

    def test_follow_ends_at_shutdown(self) -> None:
        d = Daemon()
        self.addCleanup(d.remove)
        p = d.client.publish("py/end", "one")
        f = d.client.follow("py/end", from_offset=p.offset, idle_timeout=10)
        self.assertEqual(next(f).id, p.id)
        threading.Timer(0.2, d.stop).start()
        t0 = time.monotonic()
        self.assertEqual(list(f), [])
        self.assertLess(time.monotonic() - t0, 8)
        self.assertTrue(f.closed)
        self.assertEqual(d.proc.wait(10), 0, d.log())


if __name__ == "__main__":
    unittest.main()
