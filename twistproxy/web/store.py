# -*- test-case-name: tests.test_web_store -*-
"""
The web UI's flow store: every flow in SQLite, so that the proxy's memory
stays flat however many flows it has seen.

A flow is one row: its summary (what the flow list shows, as JSON) and its
state (a flow file record, :mod:`twistproxy._flowschema`, with its format
version: a ``--web-store`` file kept from an older twistproxy is upgraded
as a flow file is, row by row when read).  Bodies longer
than ``inline_limit`` are kept out of the state, in a table of their own,
and read only when asked for.  Rows are numbered in the order flows were
first written (``seq``); the UI pages through *views*: the sorted seqs of
the flows a filter expression matches, kept up to date as flows are
written, so that a page is a slice and a new flow an append.

Everything here runs in the reactor thread; SQLite is given one batch of
writes at a time (:class:`~twistproxy.web.addon.WebRecorder` flushes every
100 ms) in one transaction.
"""

from __future__ import annotations

import json
import os
import sqlite3
import tempfile
import time
from array import array
from bisect import bisect_left, bisect_right
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

from twisted.internet.defer import Deferred, maybeDeferred, succeed
from twisted.internet.task import Cooperator
from twisted.python.failure import Failure

from twistproxy._flowschema import FLOW
from twistproxy.filters import Filter, parse
from twistproxy.flow import FLOW_STATE_VERSION
from twistproxy.flowfile import FORMAT_VERSION, upgrade_record
from twistproxy.http import HTTPFlow

INLINE_LIMIT = 64 * 1024
"""Bodies longer than this (bytes, as on the wire) are kept in rows of their own."""

MAX_VIEWS = 8
"""Filter views kept besides those the push channel's clients hold."""

CHUNK = 100
"""Flows a view's build reads and filters in one step (about 6 ms)."""

_ALL = 2**63 - 1  # View.scanned once every row was read

SORT_KEYS = ("time", "client", "method", "host", "path", "status", "size", "duration",
             "marked")
"""The summary fields the flow list can be sorted by (besides ``seq``, the default)."""

_SCHEMA = """
CREATE TABLE IF NOT EXISTS flows (
    seq INTEGER PRIMARY KEY,
    id TEXT NOT NULL UNIQUE,
    summary TEXT NOT NULL,
    state BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS blobs (
    seq INTEGER NOT NULL,
    side TEXT NOT NULL,
    data BLOB NOT NULL,
    PRIMARY KEY (seq, side)
);
"""
# Bodies are keyed by their flow's seq (not its random id) in a rowid table
# with a small index.  The first schema kept them in a WITHOUT ROWID table
# keyed by the id (its records are the whole rows, bodies included), and
# the two DELETEs each write did there cost more the more flows the store
# held: 2 us at 100 flows, 260 at 35,000 with a 256 KiB body every 1,000
# flows, 3 flat with none (measured, not traced inside SQLite).

_MIGRATE = """
INSERT OR REPLACE INTO blobs (seq, side, data)
    SELECT flows.seq, bodies.side, bodies.data FROM bodies JOIN flows ON flows.id = bodies.flow;
DROP TABLE bodies;
"""

_FIRST_FORMAT = 5  # the flow file format of rows that do not name theirs

SIDES = ("request", "response")

Sorter = Callable[[], "array[int]"]
InThread = Callable[[Sorter], "Deferred[array[int]]"]
"""Runs a sort query (a function that blocks) away from the reactor thread."""


def summarize(flow: HTTPFlow, seq: int) -> dict[str, Any]:
    """
    What the flow list shows of *flow*: one JSON object.

    :param seq: The flow's row number in the store.
    """
    request = flow.request
    response = flow.response
    client = flow.client_conn.peername
    start = request.timestamp_start if request is not None else None
    end = None
    if flow.error is not None:
        end = flow.error.timestamp
    elif flow.websocket is not None and flow.websocket.timestamp_end is not None:
        end = flow.websocket.timestamp_end
    elif response is not None:
        end = response.timestamp_end
    return {
        "seq": seq,
        "id": flow.id,
        "time": start if start is not None else flow.timestamp_created,
        "client": f"{client[0]}:{client[1]}" if client else "",
        "method": request.method if request is not None else "",
        "scheme": request.scheme if request is not None else "",
        "host": request.pretty_host if request is not None else "",
        "port": request.port if request is not None else 0,
        "path": request.path if request is not None else "",
        "status": response.status_code if response is not None else None,
        "size": response.body_size if response is not None else None,
        "duration": None if start is None or end is None else round((end - start) * 1000, 1),
        "marked": flow.marked,
        "comment": flow.comment,
        "error": flow.error.msg if flow.error is not None else None,
        "intercepted": flow.intercepted,
        "live": flow.live,
        "replay": flow.is_replay,
        "websocket": flow.websocket is not None,
    }


class View:
    """
    The flows one filter expression matches, as the sorted seqs of their
    rows: the flow list pages through it.

    :ivar expression: The filter expression (``""``: every flow).
    :ivar seqs: The matching rows' seqs, ascending.
    :ivar users: How many push channels show it (it is kept while used).
    :ivar reload: Whether the last :meth:`FlowStore.write` changed it other
        than at its end.
    :ivar scanned: The rows up to this seq were read while building it (past
        it, rows are left to the build, which reads them as they are then).
    :ivar read: How many rows the build read so far.
    :ivar of: How many rows there were when the build started (``None``
        before its first step).
    """

    def __init__(self, expression: str, flow_filter: Filter | None) -> None:
        self.expression = expression
        self.filter = flow_filter
        self.seqs: array[int] = array("q")
        self.users = 0  # push channels showing this view
        self.reload = False  # the last write changed it other than at its end
        self.scanned = 0
        self.read = 0
        self.of: int | None = None
        self._waiting: list[Deferred[View]] | None = None  # a build under way
        self._sorted: dict[str, _Order] = {}  # by summary field

    @property
    def complete(self) -> bool:
        """Whether every stored flow was read (it is then kept current)."""
        return self.scanned == _ALL

    def __len__(self) -> int:
        return len(self.seqs)

    def index(self, seq: int) -> int | None:
        """Where *seq* is in the view, or ``None`` when it is not in it."""
        i = bisect_left(self.seqs, seq)
        return i if i < len(self.seqs) and self.seqs[i] == seq else None

    def put(self, seq: int, matches: bool) -> bool:
        """
        Put *seq* in the view or take it out.

        :returns: Whether the view changed other than at its end (a flow left
            it, or one joined before the last): the UI reloads what it shows.
        """
        if seq > self.scanned:
            return False  # the build reads it
        seqs = self.seqs
        i = bisect_left(seqs, seq)
        present = i < len(seqs) and seqs[i] == seq
        if matches and not present:
            seqs.insert(i, seq)
            return i != len(seqs) - 1
        if not matches and present:
            del seqs[i]
            return True
        return False


class _Order:
    """
    A view's seqs ordered by one summary field, as of one sort: those up
    to seq *upto*; the view's later ones follow them, in arrival order.
    """

    def __init__(self) -> None:
        self.seqs: array[int] | None = None  # none sorted yet
        self.upto = 0
        self.writes = -1  # FlowStore._writes when it was sorted
        self.deletes = -1  # FlowStore._deletes when it was sorted
        self.waiting: list[Deferred[None]] | None = None  # a sort under way


class FlowStore:
    """
    Flows in a SQLite database.

    :param path: The database file; ``None`` for a temporary file, deleted
        by :meth:`close`.
    :param inline_limit: Bodies longer than this many bytes are kept in rows
        of their own.
    :param in_thread: Runs a sort query (blocking) in another thread and
        gives its result in the reactor thread (``deferToThreadPool`` with
        the reactor's pool, say); by default it runs here and now.
    """

    def __init__(self, path: str | os.PathLike[str] | None = None, *,
                 inline_limit: int = INLINE_LIMIT, chunk: int = CHUNK,
                 in_thread: InThread | None = None) -> None:
        self._temporary: str | None = None
        if path is None:
            fd, name = tempfile.mkstemp(prefix="twistproxy-web-", suffix=".sqlite3")
            os.close(fd)
            path = self._temporary = name
        else:
            # The flows hold cookies and credentials: a new file is its owner's.
            os.close(os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600))
        self.path = Path(path)
        self._db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.executescript(_SCHEMA)
        if self._db.execute("SELECT 1 FROM sqlite_master WHERE name = 'bodies'").fetchone():
            self._db.executescript("BEGIN;" + _MIGRATE + "COMMIT;")
        self._inline_limit = inline_limit
        self._chunk = chunk
        last = self._db.execute("SELECT max(seq) FROM flows").fetchone()[0]
        self._next_seq = (last or 0) + 1
        self._views: OrderedDict[str, View] = OrderedDict()
        self._in_thread: InThread = in_thread or maybeDeferred
        self._writes = 0  # writes and deletes so far: a sorted order is stale
        self._deletes = 0  # deletes so far: a sorted order is unusable

    # -- writing ------------------------------------------------------------

    def write(self, flows: Iterable[HTTPFlow]) -> list[tuple[int, dict[str, Any], HTTPFlow]]:
        """
        Insert or update *flows*, in one transaction, and update the views.

        :returns: For each flow, its seq, its summary and the flow.
        """
        written = []
        db = self._db
        db.execute("BEGIN")
        try:
            for flow in flows:
                seq = self.seq_of(flow.id)
                new = seq is None
                if seq is None:
                    seq = self._next_seq
                    self._next_seq += 1
                summary = summarize(flow, seq)
                state, bodies = self._encode(flow)
                summary_text = json.dumps(summary, separators=(",", ":"))
                if new:
                    db.execute("INSERT INTO flows VALUES (?, ?, ?, ?)",
                               (seq, flow.id, summary_text, state))
                else:
                    db.execute("UPDATE flows SET summary = ?, state = ? WHERE seq = ?",
                               (summary_text, state, seq))
                for side in SIDES:
                    data = bodies.get(side)
                    if data is not None:
                        db.execute("INSERT OR REPLACE INTO blobs VALUES (?, ?, ?)",
                                   (seq, side, data))
                    elif not new:
                        db.execute("DELETE FROM blobs WHERE seq = ? AND side = ?", (seq, side))
                written.append((seq, summary, flow))
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise
        self._writes += 1
        for view in self._views.values():
            view.reload = False
            for seq, _, flow in written:
                matches = view.filter is None or view.filter(flow)
                view.reload = view.put(seq, matches) or view.reload
        return written

    def seq_of(self, flow_id: str) -> int | None:
        """The seq of the flow with *flow_id*, or ``None`` if it is not stored."""
        row = self._db.execute("SELECT seq FROM flows WHERE id = ?", (flow_id,)).fetchone()
        return None if row is None else int(row[0])

    def _encode(self, flow: HTTPFlow) -> tuple[bytes, dict[str, bytes]]:
        """
        *flow*'s state as a flow file record, without the bodies longer than
        the inline limit, and those bodies by side.
        """
        state = flow.get_state()
        del state["version"]
        state["live"] = False
        bodies: dict[str, bytes] = {}
        for side in SIDES:
            message = state[side]
            if message is not None:
                content = message["content"]
                if content is not None and len(content) > self._inline_limit:
                    bodies[side] = content
                    message["content"] = None
        record = FLOW.encode(state)
        record["version"] = FORMAT_VERSION
        record["external"] = sorted(bodies)
        return json.dumps(record, separators=(",", ":")).encode("ascii"), bodies

    def delete(self, flow_id: str) -> int | None:
        """
        Delete a flow and its bodies.

        :returns: Its seq, or ``None`` if there was no such flow.
        """
        seq = self.seq_of(flow_id)
        if seq is None:
            return None
        self._db.execute("DELETE FROM flows WHERE seq = ?", (seq,))
        self._db.execute("DELETE FROM blobs WHERE seq = ?", (seq,))
        self._writes += 1
        self._deletes += 1
        for view in self._views.values():
            view.put(seq, False)
        return seq

    # -- reading ------------------------------------------------------------

    def __len__(self) -> int:
        count: int = self._db.execute("SELECT count(*) FROM flows").fetchone()[0]
        return count

    def load(self, flow_id: str, *, bodies: bool = True) -> HTTPFlow | None:
        """
        The flow with *flow_id* (not live), or ``None``.

        :param bodies: Also read the bodies kept in rows of their own (else
            they are ``None``, with their size).
        """
        row = self._db.execute("SELECT state FROM flows WHERE id = ?", (flow_id,)).fetchone()
        return None if row is None else self._decode(row[0], bodies)

    def _decode(self, data: bytes, bodies: bool) -> HTTPFlow:
        record = json.loads(data)
        external = record.pop("external")
        # Rows of a --web-store file written before rows kept their version
        # are format 5 (the store came with it); older rows are upgraded.
        version = record.pop("version", _FIRST_FORMAT)
        state = FLOW.decode(upgrade_record(record, version), "")
        state["version"] = FLOW_STATE_VERSION
        for side in external:
            message = state[side]
            if bodies:
                message["content"] = self.body(state["id"], side)
            else:
                message["body_size"] = message["body_size"] or self.body_size(state["id"], side)
        return HTTPFlow.from_state(state, now=time.time)

    def body(self, flow_id: str, side: str) -> bytes | None:
        """The raw body of *side* kept in a row of its own, or ``None``."""
        row = self._db.execute("SELECT data FROM blobs JOIN flows USING (seq) "
                               "WHERE flows.id = ? AND side = ?",
                               (flow_id, side)).fetchone()
        return None if row is None else bytes(row[0])

    def body_size(self, flow_id: str, side: str) -> int | None:
        """The length of a body kept in a row of its own, or ``None``."""
        row = self._db.execute("SELECT length(data) FROM blobs JOIN flows USING (seq) "
                               "WHERE flows.id = ? AND side = ?",
                               (flow_id, side)).fetchone()
        return None if row is None else int(row[0])

    def flows(self, seqs: Iterable[int], *, bodies: bool = True) -> Iterator[HTTPFlow]:
        """The flows of *seqs*, in that order (those deleted meanwhile left out)."""
        for seq in seqs:
            row = self._db.execute("SELECT state FROM flows WHERE seq = ?", (seq,)).fetchone()
            if row is not None:
                yield self._decode(row[0], bodies)

    def summaries(self, seqs: Iterable[int]) -> list[dict[str, Any]]:
        """The summaries of *seqs*, in that order (those deleted meanwhile left out)."""
        out = []
        for seq in seqs:
            row = self._db.execute("SELECT summary FROM flows WHERE seq = ?", (seq,)).fetchone()
            if row is not None:
                out.append(json.loads(row[0]))
        return out

    # -- views ----------------------------------------------------------------

    def view(self, expression: str, *, build: bool = True) -> View:
        """
        The view of *expression*, kept while used, and the last
        :data:`MAX_VIEWS` besides.  A new view is built by reading every
        stored flow: here and now with *build*, else by :meth:`built`.

        :raises FilterError: if *expression* is not a filter expression.
        """
        expression = expression.strip()
        view = self._views.get(expression)
        if view is not None:
            self._views.move_to_end(expression)
        else:
            view = View(expression, parse(expression) if expression else None)
            self._views[expression] = view
            self._forget_views()
        while build and self.build_step(view):
            pass
        return view

    def built(self, view: View, cooperator: Cooperator) -> Deferred[View]:
        """
        *view* once complete, built in steps of one chunk of flows that
        *cooperator* spreads out (the reactor serves others between them).
        """
        if view.complete:
            return succeed(view)
        done: Deferred[View] = Deferred()
        if view._waiting is None:
            view._waiting = []
            steps = cooperator.cooperate(self._steps(view)).whenDone()
            steps.addCallbacks(lambda _: self._built(view, None),
                               lambda failure: self._built(view, failure))
        view._waiting.append(done)
        return done

    def _steps(self, view: View) -> Iterator[None]:
        while self.build_step(view):
            yield None

    @staticmethod
    def _built(view: View, failure: Failure | None) -> None:
        waiting, view._waiting = view._waiting or [], None
        for done in waiting:
            if failure is None:
                done.callback(view)
            else:
                done.errback(failure)

    def build_step(self, view: View) -> bool:
        """
        Read the next chunk of stored flows into *view*.

        :returns: Whether there are more to read.
        """
        if view.complete:
            return False
        if view.of is None:
            view.of = len(self)
        flow_filter = view.filter
        if flow_filter is None:  # every flow: seqs only, cheap
            limit = self._chunk * 100
            rows = self._db.execute("SELECT seq FROM flows WHERE seq > ? ORDER BY seq LIMIT ?",
                                    (view.scanned, limit)).fetchall()
            view.seqs.extend(seq for seq, in rows)
        else:
            limit = self._chunk
            rows = self._db.execute(
                "SELECT seq, state FROM flows WHERE seq > ? ORDER BY seq LIMIT ?",
                (view.scanned, limit)).fetchall()
            bodies = "~b" in str(flow_filter)  # a body operator needs those kept apart too
            view.seqs.extend(seq for seq, data in rows
                             if flow_filter(self._decode(data, bodies)))
        view.read += len(rows)
        if len(rows) < limit:
            view.scanned = _ALL
            return False
        view.scanned = rows[-1][0]
        return True

    def sorted(self, view: View, key: str, descending: bool = False) -> Deferred[array[int]]:
        """
        The seqs of complete *view* ordered by the summary field *key* (ties,
        and ``seq`` itself, by seq), reversed if *descending*.

        SQLite sorts the stored rows (about 2 us a flow) on a connection of
        its own, in the *in_thread* the store was given.  The order is kept
        and answered at once while flows are written: the view's flows as
        of that sort in its order, then those written since in arrival
        order (a flow changed since stays where it was); an order that is
        stale that way is sorted again meanwhile, for the next call.  After
        a delete, the next call waits for a new sort.

        :raises ValueError: if *key* is not ``seq`` or one of :data:`SORT_KEYS`.
        """
        if key == "seq":
            return succeed(view.seqs[::-1] if descending else view.seqs)
        if key not in SORT_KEYS:
            raise ValueError(f"cannot sort by {key!r}: one of seq, {', '.join(SORT_KEYS)}")
        order = view._sorted.get(key)
        if order is None:
            order = view._sorted[key] = _Order()
        if order.writes != self._writes and order.waiting is None:
            self._sort(view, key, order)
        if order.seqs is None or order.deletes != self._deletes:
            done: Deferred[None] = Deferred()
            assert order.waiting is not None
            order.waiting.append(done)
            return done.addCallback(lambda _: self._ordered(view, order, descending))
        return succeed(self._ordered(view, order, descending))

    @staticmethod
    def _ordered(view: View, order: _Order, descending: bool) -> array[int]:
        assert order.seqs is not None
        seqs = view.seqs
        result = order.seqs + seqs[bisect_right(seqs, order.upto):]
        return result[::-1] if descending else result

    def _sort(self, view: View, key: str, order: _Order) -> None:
        """Sort *view* by *key* (in *in_thread*) into *order*, then tell who waits."""
        order.waiting = []
        writes, deletes = self._writes, self._deletes
        members = None if view.filter is None else array("q", view.seqs)
        upto = view.seqs[-1] if view.seqs else 0
        sort = _sorter(self.path.resolve(), key, upto, members)

        def sorted_(seqs: array[int]) -> None:
            order.seqs, order.upto, order.writes, order.deletes = seqs, upto, writes, deletes
            waiting, order.waiting = order.waiting or [], None
            if deletes != self._deletes:  # flows went meanwhile: again
                self._sort(view, key, order)
                assert order.waiting is not None
                order.waiting.extend(waiting)
                return
            for done in waiting:
                done.callback(None)

        def failed(failure: Failure) -> None:
            waiting, order.waiting = order.waiting or [], None
            del view._sorted[key]
            for done in waiting:
                done.errback(failure)

        self._in_thread(sort).addCallbacks(sorted_, failed)

    def _forget_views(self) -> None:
        unused = [e for e, v in self._views.items() if v.users == 0 and v._waiting is None]
        for expression in unused[: max(0, len(unused) - MAX_VIEWS)]:
            del self._views[expression]

    def views(self) -> list[View]:
        """The views kept now."""
        return list(self._views.values())

    def close(self) -> None:
        """Close the database; a temporary one is deleted."""
        self._db.close()
        if self._temporary is not None:
            for suffix in ("", "-wal", "-shm"):
                try:
                    os.unlink(self._temporary + suffix)
                except FileNotFoundError:
                    pass


def _sorter(path: Path, key: str, upto: int, members: array[int] | None) -> Sorter:
    """
    A function that sorts the rows up to seq *upto* (only *members*, if
    given: ascending seqs) by the summary field *key*, on a read-only
    connection of its own (WAL: it reads beside the writer), in any thread.
    """

    def sort() -> array[int]:
        db = sqlite3.connect(f"{path.as_uri()}?mode=ro", uri=True, isolation_level=None)
        try:
            rows = db.execute(f"SELECT seq FROM flows WHERE seq <= ? "
                              f"ORDER BY json_extract(summary, '$.{key}'), seq", (upto,))
            if members is None:
                return array("q", (seq for seq, in rows))
            count = len(members)
            return array("q", (seq for seq, in rows
                               if (i := bisect_left(members, seq)) < count
                               and members[i] == seq))
        finally:
            db.close()

    return sort
