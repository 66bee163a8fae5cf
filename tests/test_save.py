"""
Tests for :mod:`twistproxy.addons.save`: the :class:`SaveFlows` addon.  The
``--save`` and ``--save-filter`` options that build it are tested in
:mod:`tests.test_tap`.
"""

from __future__ import annotations

import io

from twisted.trial.unittest import SynchronousTestCase

from tests.test_flowfile import failed_flow, make_flow
from twistproxy.addons.save import SaveFlows
from twistproxy.flow import Client, Server
from twistproxy.flowfile import read_flows
from twistproxy.http import HTTPFlow, Request, Response


class FlowFile(io.BytesIO):
    """
    An in-memory flow file that keeps its bytes after :meth:`close` and
    counts flushes.
    """

    def __init__(self) -> None:
        super().__init__()
        self.closed_value: bytes | None = None
        self.flushes = 0

    def flush(self) -> None:
        self.flushes += 1
        super().flush()

    def close(self) -> None:
        if not self.closed:
            self.closed_value = self.getvalue()
        super().close()

    def flows(self) -> list[HTTPFlow]:
        """The flows written so far (or before closing)."""
        data = self.getvalue() if self.closed_value is None else self.closed_value
        return list(read_flows(io.BytesIO(data)))


def connect_flow() -> HTTPFlow:
    """A ``CONNECT`` flow, with the tunnel's 200 as its response."""
    flow = failed_flow()
    flow.error = None
    flow.request = Request(
        "example.com", 443, "CONNECT", "", "example.com:443", "", "HTTP/1.1", [], b""
    )
    flow.response = Response.make(200)
    return flow


class SaveFlowsTests(SynchronousTestCase):
    """
    Tests for `SaveFlows`.
    """

    def test_saves_responses_and_errors(self) -> None:
        """
        A flow that ends with a response, and one that ends with an error,
        are each written as a line, flushed at once, and counted.
        """
        out = FlowFile()
        saving = SaveFlows(out)
        answered, failed = make_flow(), failed_flow()
        saving.response(answered)
        self.assertEqual(out.flushes, 1)
        saving.error(failed)
        self.assertEqual(out.flushes, 2)
        self.assertEqual(saving.saved, 2)
        self.assertEqual(
            [flow.get_state() for flow in out.flows()],
            [answered.get_state(), failed.get_state()],
        )

    def test_skips_connect_and_requestless_flows(self) -> None:
        """
        ``CONNECT`` flows and flows without a request are not saved.
        """
        out = FlowFile()
        saving = SaveFlows(out)
        saving.response(connect_flow())
        saving.error(HTTPFlow(Client(), Server()))
        self.assertEqual(saving.saved, 0)
        self.assertEqual(out.getvalue(), b"")

    def test_filter(self) -> None:
        """
        With a filter, only the flows it accepts are saved.
        """
        out = FlowFile()
        seen: list[HTTPFlow] = []

        def only_answered(flow: HTTPFlow) -> bool:
            seen.append(flow)
            return flow.response is not None

        saving = SaveFlows(out, flow_filter=only_answered)
        answered, failed = make_flow(), failed_flow()
        saving.response(answered)
        saving.error(failed)
        self.assertEqual(seen, [answered, failed])
        self.assertEqual(saving.saved, 1)
        self.assertEqual([flow.id for flow in out.flows()], [answered.id])

    def test_close(self) -> None:
        """
        `SaveFlows.close` closes the flow file.
        """
        out = FlowFile()
        saving = SaveFlows(out)
        saving.response(make_flow())
        saving.close()
        self.assertTrue(out.closed)
        self.assertEqual(len(out.flows()), 1)
