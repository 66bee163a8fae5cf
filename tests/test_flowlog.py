# -*- test-case-name: tests.test_flowlog -*-
"""
Tests for :mod:`twistproxy.addons.flowlog`.
"""

from __future__ import annotations

from twisted.logger import LogLevel, capturedLogs
from twisted.trial.unittest import SynchronousTestCase

from twistproxy.addons.flowlog import FlowLog, format_flow
from twistproxy.connection import Client, Server
from twistproxy.flow import Error
from twistproxy.http import HTTPFlow, Request, Response


def _flow() -> HTTPFlow:
    flow = HTTPFlow(Client(peername=("127.0.0.1", 5000)), Server(address=("example.com", 80)),
                    now=lambda: 100.0)
    flow.request = Request.make("GET", "http://example.com/a?b=1")
    flow.request.timestamp_start = 100.0
    return flow


class FormatFlowTests(SynchronousTestCase):
    """
    Tests for :func:`format_flow`.
    """

    def test_response(self) -> None:
        """
        A completed flow shows client, method, URL, status, size, time and
        the time to the response's first byte.
        """
        flow = _flow()
        flow.response = Response.make(200, b"x" * 2048)
        flow.response.timestamp_start = 100.003
        flow.response.timestamp_end = 100.012
        self.assertEqual(
            format_flow(flow),
            "127.0.0.1:5000 GET http://example.com/a?b=1 -> 200 2.0 KiB 12 ms (first byte 3 ms)",
        )

    def test_streamed_size(self) -> None:
        """A streamed response shows the relayed size the proxy recorded."""
        flow = _flow()
        flow.response = Response.make(200)
        flow.response.raw_content = None
        flow.response.body_size = 3 * 1024 * 1024
        flow.response.timestamp_end = 101.0
        self.assertIn("-> 200 3.0 MiB 1000 ms", format_flow(flow))

    def test_error(self) -> None:
        """A failed flow shows its error instead of a status."""
        flow = _flow()
        flow.error = Error("connection refused", 100.5)
        self.assertEqual(
            format_flow(flow),
            "127.0.0.1:5000 GET http://example.com/a?b=1 -> << connection refused 500 ms",
        )


class FlowLogTests(SynchronousTestCase):
    """
    Tests for :class:`FlowLog`.
    """

    def test_one_line_per_terminal_hook(self) -> None:
        """``response`` and ``error`` each log one info line with the flow's id."""
        flow = _flow()
        flow.response = Response.make(204)
        with capturedLogs() as events:
            FlowLog().response(flow)
        self.assertEqual(len(events), 1)
        self.assertEqual(events[0]["log_level"], LogLevel.info)
        self.assertEqual(events[0]["flow_id"], flow.id)
        self.assertIn("-> 204 0 B", events[0]["line"])
