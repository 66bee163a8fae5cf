"""
The web UI's flow store and its recorder: SQLite rows, bodies kept apart,
filter views kept current, batched writes on a clock.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock, Cooperator
from twisted.trial.unittest import SynchronousTestCase

from tests.e2e.pki import make_ca, make_leaf
from twistproxy.connection import Certificate, Client, Server
from twistproxy.filters import FilterError, parse
from twistproxy.http import HTTPFlow, Request, Response
from twistproxy.web.addon import WebIntercept, WebRecorder
from twistproxy.web.store import FlowStore, View


def make_flow(path: str = "/", *, body: bytes = b"", status: int | None = 200,
              host: str = "example.com") -> HTTPFlow:
    """A finished (or, with *status* None, live) flow for *path*."""
    flow = HTTPFlow(Client(peername=("127.0.0.1", 5000)), Server(), live=status is None)
    flow.request = Request.make("GET", f"http://{host}{path}")
    flow.request.timestamp_start = 100.0
    if status is not None:
        flow.response = Response.make(status, body, {"Content-Type": "application/octet-stream"})
        flow.response.timestamp_end = 100.25
    return flow


class StoreTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.store = FlowStore(inline_limit=16)
        self.addCleanup(self.store.close)

    def test_write_and_load(self) -> None:
        """A written flow reads back whole, with its summary listed."""
        flow = make_flow("/a", body=b"small")
        [(seq, summary, _)] = self.store.write([flow])
        self.assertEqual(summary["path"], "/a")
        self.assertEqual(summary["status"], 200)
        self.assertEqual(summary["duration"], 250.0)
        loaded = self.store.load(flow.id)
        assert loaded is not None and loaded.response is not None
        self.assertEqual(loaded.response.raw_content, b"small")
        self.assertEqual(self.store.summaries([seq])[0]["id"], flow.id)

    def test_update_keeps_seq(self) -> None:
        """Writing a flow again updates its row (same seq), not a new one."""
        flow = make_flow("/a", status=None)
        [(seq, summary, _)] = self.store.write([flow])
        self.assertIsNone(summary["status"])
        flow.response = Response.make(404)
        [(again, summary, _)] = self.store.write([flow])
        self.assertEqual((again, summary["status"], len(self.store)), (seq, 404, 1))

    def test_large_bodies_apart(self) -> None:
        """
        A body over the inline limit is kept in a row of its own: read with
        the flow only when asked for, its size known either way.
        """
        big = bytes(range(256)) * 4
        flow = make_flow("/big", body=big)
        self.store.write([flow])
        light = self.store.load(flow.id, bodies=False)
        assert light is not None and light.response is not None
        self.assertIsNone(light.response.raw_content)
        self.assertEqual(light.response.body_size, len(big))
        self.assertEqual(self.store.body(flow.id, "response"), big)
        whole = self.store.load(flow.id)
        assert whole is not None and whole.response is not None
        self.assertEqual(whole.response.raw_content, big)

    def test_large_body_replaced_and_deleted(self) -> None:
        """
        A body kept apart goes when the flow is written again without it,
        and with the flow when it is deleted.
        """
        flow = make_flow("/big", body=b"b" * 100)
        other = make_flow("/other", body=b"o" * 100)
        self.store.write([flow, other])
        assert flow.response is not None
        flow.response.content = b"small"
        self.store.write([flow])
        self.assertIsNone(self.store.body(flow.id, "response"))
        loaded = self.store.load(flow.id)
        assert loaded is not None and loaded.response is not None
        self.assertEqual(loaded.response.raw_content, b"small")
        self.store.delete(other.id)
        self.assertIsNone(self.store.body(other.id, "response"))
        self.assertEqual(self.store._db.execute("SELECT count(*) FROM blobs").fetchone()[0], 0)

    def test_views(self) -> None:
        """
        A view lists the matching flows in order, is kept current as flows
        are written and deleted, and says when it changed other than at
        its end.
        """
        flows = [make_flow(f"/{name}") for name in ("a1", "b1", "a2")]
        self.store.write(flows)
        view = self.store.view("~u /a")
        self.assertEqual(len(view), 2)
        self.store.write([make_flow("/a3")])
        self.assertEqual(len(view), 3)
        self.assertFalse(view.reload)
        flows[0].request.path = "/b0"  # type: ignore[union-attr]
        self.store.write([flows[0]])
        self.assertTrue(view.reload)
        self.assertEqual([s["path"] for s in self.store.summaries(view.seqs)], ["/a2", "/a3"])
        self.store.delete(flows[2].id)
        self.assertEqual([s["path"] for s in self.store.summaries(view.seqs)], ["/a3"])
        self.assertEqual(len(self.store.view("")), 3)

    def test_bad_filter(self) -> None:
        """A bad expression raises FilterError, with its position."""
        with self.assertRaises(FilterError) as raised:
            self.store.view("~d (")
        self.assertEqual(raised.exception.position, 3)


class ViewBuildTests(SynchronousTestCase):
    """A view built a chunk at a time while flows are written and deleted."""

    def setUp(self) -> None:
        self.store = FlowStore(chunk=3)
        self.addCleanup(self.store.close)
        self.flows = [make_flow(f"/{i}", status=200 if i % 2 else 404) for i in range(10)]
        self.store.write(self.flows)

    def expected(self, expression: str) -> list[int]:
        """The seqs a view built in one go has."""
        fresh = View(expression, parse(expression) if expression else None)
        while self.store.build_step(fresh):
            pass
        return list(fresh.seqs)

    def test_steps_with_changes(self) -> None:
        """
        Each step reads one chunk; flows changed, deleted and added meanwhile,
        before and after the rows read so far, end up as a fresh build has them.
        """
        view = self.store.view("~c 200", build=False)
        self.assertEqual((len(view), view.complete), (0, False))
        self.assertTrue(self.store.build_step(view))
        self.assertEqual(list(view.seqs), [2])  # rows 1-3 read
        read, later = self.flows[0], self.flows[6]
        assert read.response is not None and later.response is not None
        read.response.status_code = 200  # row 1: now matches
        later.response.status_code = 200  # row 7: the build sees it so
        self.store.write([read, later])
        self.store.delete(self.flows[1].id)  # row 2, read: goes
        self.store.delete(self.flows[3].id)  # row 4, not read yet
        self.store.write([make_flow("/new", status=200)])  # row 11
        while self.store.build_step(view):
            pass
        self.assertTrue(view.complete)
        self.assertEqual(list(view.seqs), [1, 6, 7, 8, 10, 11])
        self.assertEqual(list(view.seqs), self.expected("~c 200"))
        self.store.write([make_flow("/after", status=200)])
        self.assertEqual(list(view.seqs)[-1], 12)  # complete: kept current

    def test_built_spread_over_turns(self) -> None:
        """
        built() reads one chunk per reactor turn (with a cooperator that
        yields after each step) and answers every caller once complete.
        """
        turns_due: list[Callable[[], object]] = []  # the reactor's next turn

        def schedule(step: Callable[[], object]) -> None:
            turns_due.append(step)

        cooperator = Cooperator(terminationPredicateFactory=lambda: lambda: True,
                                scheduler=schedule)
        view = self.store.view("~c 404", build=False)
        answers: list[View] = []
        self.store.built(view, cooperator).addCallback(answers.append)
        self.store.built(view, cooperator).addCallback(answers.append)
        turns = 0
        while not answers and turns_due and turns < 20:
            turns_due.pop(0)()
            turns += 1
        self.assertEqual(turns, 4)  # 10 rows, 3 a step
        self.assertEqual(answers, [view, view])
        self.assertEqual(list(view.seqs), [1, 3, 5, 7, 9])
        self.assertIs(self.successResultOf(self.store.built(view, cooperator)), view)

    def test_sorted(self) -> None:
        """
        A view sorts by a summary field, ties by seq, either way; an unknown
        field is refused.  (The sort query runs on a read-only connection of
        its own, here and now by default: the temporary store's file.)
        """
        paths = ["/b", "/a", "/c", "/a"]
        store = FlowStore()
        self.addCleanup(store.close)
        store.write([make_flow(p, status=s) for p, s in zip(paths, (200, 500, 404, 200),
                                                            strict=True)])

        def order(view: View, key: str, descending: bool = False) -> list[int]:
            return list(self.successResultOf(store.sorted(view, key, descending)))

        every = store.view("")
        self.assertEqual(order(every, "path"), [2, 4, 1, 3])
        self.assertEqual(order(every, "path", True), [3, 1, 4, 2])
        self.assertEqual(order(every, "status"), [1, 4, 3, 2])
        self.assertEqual(order(every, "seq", True), [4, 3, 2, 1])
        ok = store.view("~c 200")
        self.assertEqual(order(ok, "path"), [4, 1])
        with self.assertRaises(ValueError) as raised:
            store.sorted(every, "state")
        self.assertIn("cannot sort by 'state'", str(raised.exception))

    def test_sorted_in_thread(self) -> None:
        """
        The sort runs where *in_thread* says (here: when the test says).  A
        first sort is waited for; after writes the last order is answered at
        once, the flows written since after it, while a new sort runs for
        the next call; after a delete the next call waits for a new sort.
        """
        sorts: list[tuple[Callable[[], object], Deferred[object]]] = []

        def in_thread(sort: Callable[[], object]) -> Deferred[object]:
            sorts.append((sort, Deferred()))
            return sorts[-1][1]

        def run_sorts() -> None:
            while sorts:
                sort, done = sorts.pop(0)
                done.callback(sort())

        store = FlowStore(in_thread=in_thread)  # type: ignore[arg-type]
        self.addCleanup(store.close)
        flows = [make_flow(p, status=200) for p in ("/b", "/c", "/a")]
        store.write(flows)
        ok = store.view("~c 200")
        first = store.sorted(ok, "path")
        again = store.sorted(ok, "path", descending=True)
        self.assertNoResult(first)
        self.assertEqual(len(sorts), 1)  # one sort for both
        run_sorts()
        self.assertEqual(list(self.successResultOf(first)), [3, 1, 2])
        self.assertEqual(list(self.successResultOf(again)), [2, 1, 3])
        self.assertEqual(len(sorts), 0)
        store.write([make_flow("/0", status=200), make_flow("/x", status=500)])
        assert flows[1].request is not None
        flows[1].request.path = "/"  # sorts first from the next sort on
        store.write([flows[1]])
        stale = self.successResultOf(store.sorted(ok, "path"))
        self.assertEqual(list(stale), [3, 1, 2, 4])  # the new flow after the order
        self.assertEqual(len(sorts), 1)  # sorting again meanwhile
        self.successResultOf(store.sorted(ok, "path"))
        self.assertEqual(len(sorts), 1)  # once
        run_sorts()
        self.assertEqual(list(self.successResultOf(store.sorted(ok, "path"))), [2, 4, 3, 1])
        self.assertEqual(len(sorts), 0)  # current: no sort
        store.delete(flows[2].id)
        waiting = store.sorted(ok, "path")
        self.assertNoResult(waiting)
        run_sorts()
        self.assertEqual(list(self.successResultOf(waiting)), [2, 4, 1])

    def test_sorted_deleted_meanwhile(self) -> None:
        """A flow deleted while a sort runs: sorted again before answering."""
        sorts: list[tuple[Callable[[], object], Deferred[object]]] = []

        def in_thread(sort: Callable[[], object]) -> Deferred[object]:
            sorts.append((sort, Deferred()))
            return sorts[-1][1]

        store = FlowStore(in_thread=in_thread)  # type: ignore[arg-type]
        self.addCleanup(store.close)
        flows = [make_flow(p) for p in ("/b", "/a")]
        store.write(flows)
        every = store.view("")
        waiting = store.sorted(every, "path")
        sort, done = sorts.pop()
        result = sort()  # the thread read both flows
        store.delete(flows[1].id)
        done.callback(result)
        self.assertNoResult(waiting)
        sort, done = sorts.pop()
        done.callback(sort())
        self.assertEqual(list(self.successResultOf(waiting)), [1])

    def test_whole_view(self) -> None:
        """The view of every flow reads seqs only, in as few steps."""
        view = self.store.view("", build=False)
        self.assertFalse(self.store.build_step(view))
        self.assertEqual(list(view.seqs), list(range(1, 11)))


def test_store_file_kept(tmp_path: Path) -> None:
    """A --web-store file is made 0600 and holds its flows across opening."""
    path = tmp_path / "flows.sqlite3"
    store = FlowStore(path)
    flow = make_flow("/kept")
    store.write([flow])
    store.close()
    assert path.stat().st_mode & 0o777 == 0o600
    again = FlowStore(path)
    try:
        assert again.load(flow.id) is not None
        [(seq, _, _)] = again.write([make_flow("/next")])
        assert seq == 2
    finally:
        again.close()


def test_store_file_first_schema(tmp_path: Path) -> None:
    """
    A --web-store file written with the first schema (bodies keyed by flow
    id) is moved to the current one when opened: its bodies still read.
    """
    path = tmp_path / "old.sqlite3"
    store = FlowStore(path, inline_limit=16)
    flow = make_flow("/old", body=b"x" * 100)
    store.write([flow])
    db = store._db
    db.executescript("""
        CREATE TABLE bodies (flow TEXT NOT NULL, side TEXT NOT NULL, data BLOB NOT NULL,
                             PRIMARY KEY (flow, side)) WITHOUT ROWID;
        INSERT INTO bodies SELECT flows.id, blobs.side, blobs.data
            FROM blobs JOIN flows USING (seq);
        DROP TABLE blobs;
    """)
    store.close()
    again = FlowStore(path)
    try:
        assert again.body(flow.id, "response") == b"x" * 100
        tables = {row[0] for row in again._db.execute("SELECT name FROM sqlite_master")}
        assert "bodies" not in tables
    finally:
        again.close()


def test_store_keeps_certificate_and_reads_older_rows(tmp_path: Path) -> None:
    """
    A flow's server certificate is kept by the store; a --web-store row
    written before rows named their format (format 5: no version, no
    certificate) still loads, without one.
    """
    path = tmp_path / "flows.sqlite3"
    store = FlowStore(path)
    leaf = make_leaf(make_ca("store test CA"), ["example.com"]).certificate
    flow = make_flow("/tls")
    flow.server_conn.tls_established = True
    flow.server_conn.certificate = Certificate.from_x509(leaf)
    old = make_flow("/old")
    store.write([flow, old])
    [state] = store._db.execute("SELECT state FROM flows WHERE id = ?", (old.id,)).fetchone()
    record = json.loads(state)
    assert record.pop("version") == 6
    del record["server_conn"]["certificate"]
    store._db.execute("UPDATE flows SET state = ? WHERE id = ?",
                      (json.dumps(record), old.id))
    store.close()
    again = FlowStore(path)
    try:
        loaded = again.load(flow.id)
        assert loaded is not None
        assert loaded.server_conn.certificate == flow.server_conn.certificate
        older = again.load(old.id)
        assert older is not None and older.request is not None
        assert older.request.path == "/old" and older.server_conn.certificate is None
    finally:
        again.close()


class RecorderTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.store = FlowStore()
        self.addCleanup(self.store.close)
        self.recorder = WebRecorder(self.store, clock=self.clock)
        self.batches: list[list[str]] = []
        self.recorder.subscribe(
            lambda written, reload: self.batches.append([f.id for _, _, f in written]))

    def test_batched(self) -> None:
        """
        Flows are written once per interval, each once however often it
        changed; a live flow is remembered until it ends.
        """
        flow = make_flow("/live", status=None)
        self.recorder.requestheaders(flow)
        self.recorder.requestheaders(make_flow("/other", status=None))
        self.assertEqual(len(self.store), 0)
        self.assertIn(flow.id, self.recorder.live)
        flow.response = Response.make(200)
        self.recorder.response(flow)
        self.clock.advance(0.1)
        self.assertEqual(len(self.batches), 1)
        self.assertEqual(len(self.batches[0]), 2)
        self.assertNotIn(flow.id, self.recorder.live)
        self.assertEqual(self.store.summaries([1])[0]["status"], 200)
        self.clock.advance(1)
        self.assertEqual(len(self.batches), 1)

    def test_connect_not_kept(self) -> None:
        """CONNECT flows are not stored."""
        flow = make_flow()
        flow.request = Request("example.com", 443, "CONNECT", "http", "example.com:443", "",
                               "HTTP/1.1", [], b"")
        self.recorder.error(flow)
        self.clock.advance(0.1)
        self.assertEqual(len(self.store), 0)

    def test_closed(self) -> None:
        """Closing writes what is pending; later flows are not written."""
        self.recorder.error(make_flow("/a"))
        self.recorder.close()
        self.recorder.error(make_flow("/b"))
        self.assertEqual(len(self.store), 1)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_intercept(self) -> None:
        """The intercept filter holds the flows it matches, and only them."""
        intercept = WebIntercept(self.recorder)
        intercept.set_filter("~q & ~u hold")
        held, passed = make_flow("/hold", status=None), make_flow("/pass", status=None)
        intercept.request(held)
        intercept.request(passed)
        self.assertTrue(held.intercepted)
        self.assertFalse(passed.intercepted)
        self.assertIn(held.id, self.recorder.live)
        intercept.set_filter("")
        other = make_flow("/hold", status=None)
        intercept.request(other)
        self.assertFalse(other.intercepted)
        with pytest.raises(FilterError):
            intercept.set_filter("~c notanumber")
