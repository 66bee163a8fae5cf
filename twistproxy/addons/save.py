# -*- test-case-name: tests.test_save -*-
"""
Saving flows as they complete: ``twistd twistproxy --save flows.jsonl``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import BinaryIO

from twistproxy.flowfile import FlowWriter
from twistproxy.hooks import Addon
from twistproxy.http import HTTPFlow


class SaveFlows(Addon):
    """
    Writes every flow that ends (with a response or an error) to a flow
    file, one line each, flushed as it is written: a crash loses at most the
    flows still in flight.  CONNECT flows are not saved (the requests inside
    an intercepted tunnel are); replayed flows are, with their new response.
    A WebSocket flow is saved when it closes, with its messages.

    :param out: Where the flow file is written.
    :param flow_filter: Saves only the flows it accepts (``--save-filter``).
    :ivar saved: How many flows were written.
    """

    stream_bodies = True  # it needs what is recorded of a body, not all of it

    def __init__(
        self, out: BinaryIO, *, flow_filter: Callable[[HTTPFlow], bool] | None = None
    ) -> None:
        self._writer = FlowWriter(out)
        self._filter = flow_filter
        self.saved = 0

    def response(self, flow: HTTPFlow) -> None:
        """Save a flow that ended with a response (a WebSocket's once it closes)."""
        response = flow.response
        if flow.websocket is None or response is None or response.status_code != 101:
            self._save(flow)

    def websocket_end(self, flow: HTTPFlow) -> None:
        """Save a WebSocket flow, closed."""
        self._save(flow)

    def error(self, flow: HTTPFlow) -> None:
        """Save a flow that ended with an error."""
        self._save(flow)

    def _save(self, flow: HTTPFlow) -> None:
        if flow.request is None or flow.request.method == "CONNECT":
            return
        if self._filter is not None and not self._filter(flow):
            return
        self._writer.add(flow)
        self.saved += 1

    def close(self) -> None:
        """Close the flow file."""
        self._writer.close()
