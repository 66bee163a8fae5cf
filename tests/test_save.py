"""
Tests for :mod:`twistproxy.addons.save`: the :class:`SaveFlows` addon.  The
``--save`` and ``--save-filter`` options that build it are tested in
:mod:`tests.test_tap`.
"""

from __future__ import annotations

import io
import os
import stat
from unittest import SkipTest

from twisted.logger import capturedLogs, formatEvent
from twisted.trial.unittest import SynchronousTestCase

from tests.test_flowfile import failed_flow, make_flow, temp_dir
from tests.test_flowfile_faults import RawFile
from twistproxy.addons.save import SaveFlows
from twistproxy.connection import Client, Server
from twistproxy.errors import FlowFileError
from twistproxy.flowfile import FlowWriter, load_flows, read_flows
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


class SaveFaultTests(SynchronousTestCase):
    """
    A flow file that cannot be written never reaches the hooks: flows are
    counted as lost and the failure is logged once.
    """

    def test_write_failure_logged_once(self) -> None:
        """
        While writing fails (a full disk) the hooks return normally, every
        flow is counted lost and one error line says so; when writing works
        again one line counts the lost flows, and closing says the total.
        """
        out = RawFile(budget=0)
        saving = SaveFlows(FlowWriter(out), name="flows.jsonl")
        with capturedLogs() as events:
            saving.response(make_flow())
            saving.error(failed_flow())
            saving.response(make_flow())
        self.assertEqual((saving.saved, saving.lost), (0, 3))
        self.assertEqual([formatEvent(e) for e in events], [
            "--save flows.jsonl: cannot write flows: No space left on device; flows are not "
            "saved until writing works again (the proxy goes on)",
        ])
        out.budget = 1 << 30
        with capturedLogs() as events:
            saving.response(make_flow())
            saving.response(make_flow())
            saving.close()
            saving.close()
        self.assertEqual((saving.saved, saving.lost), (2, 3))
        self.assertEqual([formatEvent(e) for e in events], [
            "--save flows.jsonl: writing flows again; 3 flows were lost so far",
            "--save flows.jsonl: 3 flows were not saved (2 were)",
        ])
        self.assertEqual(len(list(read_flows(io.BytesIO(bytes(out.data))))), 2)

    def test_dev_full(self) -> None:
        """
        ``/dev/full`` (every write fails with ENOSPC) opens, and saving to
        it loses flows without raising.
        """
        if not os.path.exists("/dev/full"):
            raise SkipTest("no /dev/full")
        with capturedLogs() as events:
            saving = SaveFlows.open("/dev/full")
            saving.response(make_flow())
            saving.error(failed_flow())
            saving.close()
        self.assertEqual((saving.saved, saving.lost), (0, 2))
        self.assertEqual(len(events), 2)
        self.assertIn("No space left on device", formatEvent(events[0]))

    def test_unwritable_flow(self) -> None:
        """
        A flow whose metadata is not JSON is logged with its id and lost;
        the next one is saved.
        """
        out = FlowFile()
        saving = SaveFlows(out, name="f")
        odd = make_flow()
        odd.metadata = {"x": object()}
        with capturedLogs() as events:
            saving.response(odd)
            saving.response(make_flow())
        self.assertEqual((saving.saved, saving.lost), (1, 1))
        [event] = events
        self.assertIn(f"--save f: flow {odd.id} cannot be written", formatEvent(event))

    def test_after_close(self) -> None:
        """
        A flow ending after the file was closed is lost, with one warning
        however many follow.
        """
        saving = SaveFlows(FlowFile(), name="f")
        saving.close()
        with capturedLogs() as events:
            saving.response(make_flow())
            saving.error(failed_flow())
        self.assertEqual((saving.saved, saving.lost), (0, 2))
        self.assertEqual([formatEvent(e) for e in events],
                         ["--save f: a flow ended after the file was closed; not saved"])


class OpenTests(SynchronousTestCase):
    """
    Tests for `SaveFlows.open`.
    """

    def setUp(self) -> None:
        self.path = os.path.join(temp_dir(self), "flows.jsonl")

    def test_partial_line_reported(self) -> None:
        """
        A file ending in a partial line is reported in one warning, and the
        flows saved after it are readable.
        """
        with open(self.path, "wb") as f:
            f.write(b'{"version": 4, "ty')
        os.chmod(self.path, 0o600)
        with capturedLogs() as events:
            saving = SaveFlows.open(self.path)
        [event] = events
        self.assertEqual(
            formatEvent(event),
            f"--save {self.path}: the file ended in a partial line (18 bytes, cut short by a "
            "crash or a full disk); a newline now ends it, so new flows start on a line of "
            "their own (reading the file skips it only when told to)",
        )
        flow = make_flow()
        saving.response(flow)
        saving.close()
        errors: list[FlowFileError] = []
        self.assertEqual([f.id for f in load_flows(self.path, on_error=errors.append)],
                         [flow.id])
        self.assertEqual(len(errors), 1)

    def test_open_to_others_warned(self) -> None:
        """
        An existing file others may read is warned about (and left as it
        is); a new one is ``0600`` and not warned about.
        """
        with capturedLogs() as events:
            SaveFlows.open(self.path).close()
        self.assertEqual(events, [])
        self.assertEqual(stat.S_IMODE(os.stat(self.path).st_mode), 0o600)
        os.chmod(self.path, 0o644)
        with capturedLogs() as events:
            SaveFlows.open(self.path).close()
        [event] = events
        self.assertIn("the file is open to other users (mode 0644)", formatEvent(event))
        self.assertEqual(stat.S_IMODE(os.stat(self.path).st_mode), 0o644)
