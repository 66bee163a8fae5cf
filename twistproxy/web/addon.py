# -*- test-case-name: tests.test_web_store -*-
"""
The web UI's addons: :class:`WebRecorder` writes every flow to the
:class:`~twistproxy.web.store.FlowStore` (in batches, off the hot path) and
tells the push channel; :class:`WebIntercept` holds the flows the UI's
intercept filter matches until the UI resumes or kills them.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from typing import Any

from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger

from twistproxy.filters import Filter, parse
from twistproxy.hooks import Addon
from twistproxy.http import HTTPFlow
from twistproxy.web.store import FlowStore

_log = Logger(namespace="twistproxy.web")

FLUSH_INTERVAL = 0.1
"""Seconds between the store's batched writes."""

Written = list[tuple[int, dict[str, Any], HTTPFlow]]
Listener = Callable[[Written, bool], object]


class WebRecorder(Addon):
    """
    Writes every flow to *store*: when its request headers are in (a live
    flow), whenever the UI changes it, and when it ends (response, error, a
    WebSocket's close).  A flow changed several times between two flushes is
    written once, as it is at the flush; flushes run *interval* seconds
    after the first change, so SQLite sees one transaction per batch.
    CONNECT flows are not kept (the requests inside an intercepted tunnel
    are).

    A batch that cannot be written (a full disk) is logged once and counted
    in :attr:`lost`; the proxy goes on.

    :ivar live: The live flows seen, by id (the UI resumes, kills and edits
        these).
    :ivar lost: How many flow writes failed.
    :ivar clock: The clock batches are timed on (the reactor).
    """

    stream_bodies = True  # it records what the proxy recorded of a body

    def __init__(self, store: FlowStore, *, clock: IReactorTime,
                 interval: float = FLUSH_INTERVAL) -> None:
        self.store = store
        self.live: dict[str, HTTPFlow] = {}
        self.lost = 0
        self.clock = self._clock = clock
        self._interval = interval
        self._pending: dict[str, HTTPFlow] = {}
        self._call: IDelayedCall | None = None
        self._listeners: list[Listener] = []
        self._failing = False
        self._closed = False

    def subscribe(self, listener: Listener) -> None:
        """
        Call ``listener(written, reload)`` after each batch: *written* the
        ``(seq, summary, flow)`` of each flow written, *reload* whether flows
        were deleted (the views changed other than by these).
        """
        self._listeners.append(listener)

    def unsubscribe(self, listener: Listener) -> None:
        """Stop calling *listener*."""
        if listener in self._listeners:
            self._listeners.remove(listener)

    def notify(self, written: Written, reload: bool = False) -> None:
        """Tell the listeners about *written* flows (or a reload)."""
        for listener in list(self._listeners):
            listener(written, reload)

    # -- hooks --------------------------------------------------------------------

    def requestheaders(self, flow: HTTPFlow) -> None:
        """A new live flow."""
        self.live[flow.id] = flow
        self.touch(flow)

    def response(self, flow: HTTPFlow) -> None:
        """The flow ended with a response (a WebSocket's goes on until it closes)."""
        response = flow.response
        if flow.websocket is not None and response is not None and response.status_code == 101:
            self.touch(flow)
        else:
            self._end(flow)

    def websocket_end(self, flow: HTTPFlow) -> None:
        """A WebSocket closed."""
        self._end(flow)

    def error(self, flow: HTTPFlow) -> None:
        """The flow failed."""
        self._end(flow)

    def _end(self, flow: HTTPFlow) -> None:
        self.live.pop(flow.id, None)
        self.touch(flow)

    # -- batching -----------------------------------------------------------------

    def touch(self, flow: HTTPFlow) -> None:
        """Write *flow* with the next batch."""
        request = flow.request
        if self._closed or request is None or request.method.upper() == "CONNECT":
            return
        self._pending[flow.id] = flow
        if self._call is None:
            self._call = self._clock.callLater(self._interval, self.flush)

    def flush(self) -> None:
        """Write the flows changed since the last batch now."""
        call, self._call = self._call, None
        if call is not None and call.active():
            call.cancel()
        pending, self._pending = self._pending, {}
        if not pending:
            return
        try:
            written = self.store.write(pending.values())
        except (sqlite3.Error, OSError) as e:
            self.lost += len(pending)
            if not self._failing:
                self._failing = True
                _log.error("--web: cannot store flows: {error}; the UI misses them until "
                           "writing works again (the proxy goes on)", error=str(e))
            return
        if self._failing:
            self._failing = False
            _log.info("--web: storing flows again; {lost} were lost", lost=self.lost)
        self.notify(written)

    def close(self) -> None:
        """Write what is pending; flows changed later are not written."""
        self.flush()
        self._closed = True


class WebIntercept(Addon):
    """
    Holds (``flow.intercept()``) the flows the intercept filter matches,
    once with the request read whole and once with the response, until the
    UI resumes or kills them.  With no filter (the default) it holds
    nothing.

    Its ``request`` and ``response`` hooks need bodies whole, so that a held
    message's body can be shown and edited: with the web UI, bodies up to
    the body limit are buffered (a ``*headers`` hook may still stream one).
    """

    def __init__(self, recorder: WebRecorder) -> None:
        self._recorder = recorder
        self._filter: Filter | None = None
        self.expression = ""

    def set_filter(self, expression: str) -> None:
        """
        Hold the flows *expression* matches from now on (``""``: none).

        :raises FilterError: if it is not a filter expression.
        """
        expression = expression.strip()
        self._filter = parse(expression) if expression else None
        self.expression = expression

    def request(self, flow: HTTPFlow) -> None:
        """Hold a matching request before it is sent on."""
        self._hold(flow)

    def response(self, flow: HTTPFlow) -> None:
        """Hold a matching response before it is sent to the client."""
        self._hold(flow)

    def _hold(self, flow: HTTPFlow) -> None:
        flow_filter = self._filter
        request = flow.request
        if flow_filter is None or request is None or request.method.upper() == "CONNECT":
            return
        if flow.response is not None and flow.response.stream:
            return  # already sent: nothing to hold
        if flow_filter(flow):
            flow.intercept()
            self._recorder.live[flow.id] = flow
            self._recorder.touch(flow)
