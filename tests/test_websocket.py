"""
Tests for the WebSocket pieces: the flow's data (:mod:`twistproxy.websocket`),
the upgrade rules in :mod:`twistproxy._headers`, the origin's ``101`` in
:class:`~twistproxy.client.ProxyClient`, and the relay
(:mod:`twistproxy._websocket`) on in-memory transports.  The whole way
through real sockets is ``tests/e2e/test_websocket_e2e.py``.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase
from wsproto.connection import CLIENT, SERVER, Connection
from wsproto.events import BytesMessage, CloseConnection, Ping, Pong, TextMessage
from wsproto.frame_protocol import Opcode

from twistproxy._framing import NO_BODY
from twistproxy._headers import request_head, response_fields, websocket_upgrade
from twistproxy._websocket import WebSocketRelay, extensions
from twistproxy.client import PoolKey, ProxyClient
from twistproxy.connection import Client, Server
from twistproxy.errors import HookTimeout, UpstreamProtocolError
from twistproxy.hooks import HookChain
from twistproxy.http import HTTPFlow, Request, Response
from twistproxy.websocket import WebSocketData, WebSocketMessage, inject

UPGRADE = [(b"Host", b"example.com"), (b"Connection", b"keep-alive, Upgrade"),
           (b"Upgrade", b"websocket"), (b"Sec-WebSocket-Key", b"dGhlIHNhbXBsZSBub25jZQ=="),
           (b"Sec-WebSocket-Version", b"13"), (b"Keep-Alive", b"300")]


def _request(method: str = "GET", fields: list[tuple[bytes, bytes]] = UPGRADE,
             version: str = "HTTP/1.1") -> Request:
    return Request("example.com", 80, method, "http", "", "/chat", version, fields, b"")


class ModelTests(SynchronousTestCase):
    """Tests for :class:`WebSocketData` and :class:`WebSocketMessage`."""

    def test_message_text_and_drop(self) -> None:
        """``text`` reads and sets the content as UTF-8; ``drop`` marks it."""
        message = WebSocketMessage(Opcode.TEXT, True, "é".encode(), 1.0)
        self.assertEqual(message.text, "é")
        message.text = "ü"
        self.assertEqual(message.content, "ü".encode())
        self.assertTrue(message.is_text)
        self.assertFalse(message.dropped)
        message.drop()
        self.assertTrue(message.dropped)
        self.assertRaises(ValueError, WebSocketMessage, 9, True, b"", 1.0)

    def test_state_round_trip(self) -> None:
        """The data and its messages survive get_state/from_state."""
        data = WebSocketData()
        data.messages = [WebSocketMessage(Opcode.TEXT, True, b"hi", 1.5),
                         WebSocketMessage(Opcode.BINARY, False, b"\x00", 2.5, dropped=True,
                                          injected=True)]
        data.closed_by_client, data.close_code, data.close_reason = True, 1000, "bye"
        data.timestamp_end = 3.0
        state = data.get_state()
        again = WebSocketData.from_state(state)
        self.assertEqual(again.get_state(), state)
        self.assertIs(again.messages[1].type, Opcode.BINARY)

    def test_malformed_state_refused(self) -> None:
        """Each malformed field is refused with a ValueError naming it."""
        good = WebSocketData().get_state()
        message = WebSocketMessage(Opcode.TEXT, True, b"hi", 1.0).get_state()
        bad: list[tuple[dict[str, Any], str]] = [
            ({**good, "messages": "no"}, "messages"),
            ({**good, "close_code": "1000"}, "close_code"),
            ({**good, "closed_by_client": 1}, "closed_by_client"),
            ({**good, "timestamp_end": "x"}, "timestamp_end"),
            ({**good, "extra": 1}, "unknown"),
            ({**good, "messages": [{**message, "content": "hi"}]}, "content"),
            ({**good, "messages": [{**message, "type": 8}]}, "text (1) or binary (2)"),
            ({**good, "messages": [{**message, "dropped": None}]}, "dropped"),
        ]
        for state, word in bad:
            with self.assertRaises(ValueError) as caught:
                WebSocketData.from_state(state)
            self.assertIn(word, str(caught.exception))

    def test_inject_needs_an_open_websocket(self) -> None:
        """inject() on a flow without a live WebSocket says so."""
        flow = HTTPFlow(Client(), Server())
        self.assertRaises(ValueError, inject, flow, "x", to_client=True)
        flow.websocket = WebSocketData()
        self.assertRaises(ValueError, inject, flow, "x", to_client=True)


class UpgradeHeaderTests(SynchronousTestCase):
    """Tests for the upgrade rules in :mod:`twistproxy._headers`."""

    def test_which_requests_ask(self) -> None:
        """Only an HTTP/1.1 GET with Connection: upgrade and Upgrade: websocket asks."""
        self.assertTrue(websocket_upgrade(_request()))
        self.assertFalse(websocket_upgrade(_request("POST")))
        self.assertFalse(websocket_upgrade(_request(version="HTTP/1.0")))
        no_token = [f for f in UPGRADE if f[0] != b"Connection"]
        self.assertFalse(websocket_upgrade(_request(fields=no_token)))
        h2c = [(n, b"h2c" if n == b"Upgrade" else v) for n, v in UPGRADE]
        self.assertFalse(websocket_upgrade(_request(fields=h2c)))

    def test_forwarded_upgrade_keeps_its_fields(self) -> None:
        """
        Forwarded as an upgrade, the request keeps Upgrade and the
        Sec-WebSocket fields, with one ``Connection: Upgrade``; the other
        hop-by-hop fields still go.  Not as an upgrade, Upgrade goes too.
        """
        head = request_head(_request(), NO_BODY, None, upgrade=True)
        self.assertEqual(head, (
            b"GET /chat HTTP/1.1\r\nHost: example.com\r\nUpgrade: websocket\r\n"
            b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n"
            b"Connection: Upgrade\r\n\r\n"))
        plain = request_head(_request(), NO_BODY, None)
        self.assertNotIn(b"Upgrade", plain)

    def test_101_keeps_upgrade(self) -> None:
        """The 101 written to the client keeps Upgrade and says Connection: Upgrade."""
        fields = [(b"Upgrade", b"websocket"), (b"Connection", b"upgrade"),
                  (b"Sec-WebSocket-Accept", b"x"), (b"Keep-Alive", b"1")]
        self.assertEqual(
            response_fields(fields, framing=NO_BODY, close=False, upgrade=True),
            [(b"Upgrade", b"websocket"), (b"Sec-WebSocket-Accept", b"x"),
             (b"Connection", b"Upgrade")])

    def test_extensions(self) -> None:
        """The permessage-deflate entry is found; any other extension is noticed."""
        self.assertEqual(
            extensions([(b"Sec-WebSocket-Extensions",
                         b"permessage-deflate; client_max_window_bits=12")]),
            ("permessage-deflate; client_max_window_bits=12", False))
        self.assertEqual(extensions([]), (None, False))
        both = [(b"sec-websocket-extensions", b"x-other, permessage-deflate")]
        self.assertEqual(extensions(both), ("permessage-deflate", True))
        tiny = [(b"Sec-WebSocket-Extensions", b"permessage-deflate; server_max_window_bits=8")]
        self.assertEqual(extensions(tiny), (None, True))


class _Receiver:
    def __init__(self) -> None:
        self.events: list[Any] = []

    def response_started(self, status: int, reason: bytes, version: bytes,
                         fields: list[tuple[bytes, bytes]], framing: int) -> None:
        self.events.append(("head", status, framing))

    def response_data(self, data: bytes) -> None:
        self.events.append(("data", data))

    def response_ended(self) -> None:
        self.events.append(("end",))

    def response_failed(self, reason: Failure) -> None:
        self.events.append(("failed", reason.value))


class ClientSwitchTests(SynchronousTestCase):
    """Tests for an origin's ``101`` in :class:`ProxyClient`."""

    def _client(self, upgrade: bool) -> tuple[ProxyClient, _Receiver, StringTransport]:
        client = ProxyClient(PoolKey("http", "example.com", 80))
        from twistproxy._timer import Deadline
        client.deadline = Deadline(Clock(), client.abandon)
        transport = StringTransport()
        client.makeConnection(transport)
        receiver = _Receiver()
        client.send(receiver, [b"GET / HTTP/1.1\r\n\r\n"], method=b"GET", upgrade=upgrade)
        return client, receiver, transport

    SWITCH = (b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
              b"Connection: Upgrade\r\n\r\n")

    def test_asked_101_ends_the_exchange_and_keeps_the_rest(self) -> None:
        """
        A 101 to an upgrade request is its response (no body); the bytes
        behind its head, even when the head came in pieces, are kept for the
        next protocol, and reading pauses.
        """
        client, receiver, transport = self._client(True)
        client.dataReceived(self.SWITCH[:20])
        client.dataReceived(self.SWITCH[20:] + b"\x81\x02hi")
        self.assertEqual(receiver.events, [("head", 101, NO_BODY), ("end",)])
        self.assertTrue(client.upgraded)
        self.assertEqual(client.take_switched(), b"\x81\x02hi")
        self.assertEqual(transport.producerState, "paused")
        self.assertFalse(transport.disconnecting)

    def test_unasked_101_is_an_error(self) -> None:
        """A 101 the request did not ask for fails the exchange."""
        client, receiver, transport = self._client(False)
        client.dataReceived(self.SWITCH)
        self.assertEqual(len(receiver.events), 1)
        self.assertIsInstance(receiver.events[0][1], UpstreamProtocolError)
        self.assertIn("unasked", str(receiver.events[0][1]))

    def test_101_to_something_else_is_an_error(self) -> None:
        """A 101 that does not switch to websocket fails an upgrade request."""
        client, receiver, transport = self._client(True)
        client.dataReceived(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: h2c\r\n"
                            b"Connection: Upgrade\r\n\r\n")
        self.assertIsInstance(receiver.events[0][1], UpstreamProtocolError)
        self.assertIn("websocket", str(receiver.events[0][1]))


class _Hooks:
    """Addon recording WebSocket hooks; ``answer`` is what the message hook returns."""

    def __init__(self) -> None:
        self.calls: list[str] = []
        self.answer: Any = None
        self.fail = False
        self.kill = False

    def websocket_start(self, flow: HTTPFlow) -> None:
        self.calls.append("start")

    def websocket_message(self, flow: HTTPFlow) -> Any:
        assert flow.websocket is not None
        self.calls.append("message " + flow.websocket.messages[-1].text)
        if self.fail:
            raise RuntimeError("boom")
        if self.kill:
            flow.kill()
        return self.answer

    def websocket_end(self, flow: HTTPFlow) -> None:
        self.calls.append("end")


class _RelayCase(SynchronousTestCase):
    """A :class:`WebSocketRelay` between two in-memory transports, with :meth:`addon`."""

    def addon(self) -> Any:
        return _Hooks()

    def setUp(self) -> None:
        self.clock = Clock()
        self.hooks = self.addon()
        chain = HookChain([self.hooks], clock=self.clock, timeout=5.0)
        self.flow = HTTPFlow(Client(), Server(), live=True)
        self.flow.request = _request()
        self.flow.response = Response.make(101)
        self.ended = 0
        self.relay = WebSocketRelay(
            self.flow, chain=chain, first=None,
            hooks=frozenset({"websocket_start", "websocket_message", "websocket_end"}),
            deflate=None, limit=100, clock=self.clock.seconds, on_end=self._ended)
        self.near, self.far = StringTransport(), StringTransport()
        self.relay.client.makeConnection(self.near)
        self.relay.server.makeConnection(self.far)
        self.relay.start()
        # The ends: a browser and an origin, as wsproto connections.
        self.browser = Connection(CLIENT)
        self.origin = Connection(SERVER)

    def _ended(self) -> None:
        self.ended += 1

    def from_browser(self, event: Any) -> None:
        self.relay.client.dataReceived(self.browser.send(event))

    def from_origin(self, event: Any) -> None:
        self.relay.server.dataReceived(self.origin.send(event))

    def at_origin(self) -> list[Any]:
        self.origin.receive_data(self.far.value())
        self.far.clear()
        return list(self.origin.events())

    def at_browser(self) -> list[Any]:
        self.browser.receive_data(self.near.value())
        self.near.clear()
        return list(self.browser.events())


class RelayTests(_RelayCase):
    """Tests for :class:`WebSocketRelay` between two in-memory transports."""

    def test_each_transport_produces_for_the_other(self) -> None:
        """Each side's transport is the producer of the other's, as in a tunnel."""
        self.assertIs(self.far.producer, self.relay.client)
        self.assertIs(self.near.producer, self.relay.server)
        self.relay.client.pauseProducing()  # the origin's buffer is full
        self.assertEqual(self.near.producerState, "paused")
        self.relay.client.resumeProducing()
        self.assertEqual(self.near.producerState, "producing")

    def test_pending_hook_pauses_its_side_only(self) -> None:
        """
        While a message hook is waited for, its side is not read (a resume
        from the other side's buffer does not change that) and later
        messages wait behind it; then they go in order.
        """
        waiting: Deferred[None] = Deferred()
        self.hooks.answer = waiting
        self.from_browser(TextMessage(data="one"))
        self.hooks.answer = None
        self.from_browser(TextMessage(data="two"))
        self.assertEqual(self.near.producerState, "paused")
        self.assertEqual(self.far.producerState, "producing")
        self.relay.client.resumeProducing()
        self.assertEqual(self.near.producerState, "paused")
        self.assertEqual(self.at_origin(), [])
        self.from_origin(TextMessage(data="other way"))
        self.assertEqual([e.data for e in self.at_browser()], ["other way"])
        waiting.callback(None)
        self.assertEqual([e.data for e in self.at_origin()], ["one", "two"])
        self.assertEqual(self.near.producerState, "producing")
        self.assertEqual(self.hooks.calls,
                         ["start", "message one", "message other way", "message two"])

    def test_pings_relayed_end_to_end(self) -> None:
        """A ping goes to the far end, and its pong comes back: the proxy answers none."""
        self.from_browser(Ping(b"p"))
        self.assertEqual(self.at_browser(), [])
        [ping] = self.at_origin()
        self.assertIsInstance(ping, Ping)
        self.from_origin(ping.response())
        [pong] = self.at_browser()
        self.assertIsInstance(pong, Pong)
        self.assertEqual(pong.payload, b"p")

    def test_close_relayed_and_answered(self) -> None:
        """A close goes on with its code and reason, is answered, and both sides close."""
        self.from_browser(CloseConnection(4000, "bye"))
        [close] = self.at_origin()
        self.assertEqual((close.code, close.reason), (4000, "bye"))
        [answer] = self.at_browser()
        self.assertEqual(answer.code, 4000)
        self.assertTrue(self.near.disconnecting and self.far.disconnecting)
        data = self.flow.websocket
        assert data is not None
        self.assertEqual((data.close_code, data.close_reason, data.closed_by_client),
                         (4000, "bye", True))
        self.relay.client.connectionLost(Failure(Exception()))
        self.relay.server.connectionLost(Failure(Exception()))
        self.assertEqual(self.ended, 1)
        self.assertEqual(self.hooks.calls[-1], "end")
        self.assertFalse(self.flow.live)

    def test_lost_without_close_ends_the_other(self) -> None:
        """A connection that ends without a close ends the other the same way (1006)."""
        self.relay.server.connectionLost(Failure(Exception()))
        self.assertTrue(self.near.disconnecting)
        self.relay.client.connectionLost(Failure(Exception()))
        data = self.flow.websocket
        assert data is not None
        self.assertEqual((data.close_code, data.closed_by_client), (1006, False))
        self.assertEqual(self.hooks.calls, ["start", "end"])

    def test_too_big_closes_1009(self) -> None:
        """A message over the limit, in fragments, closes both sides with 1009."""
        self.from_browser(BytesMessage(data=b"x" * 60, message_finished=False))
        self.from_browser(BytesMessage(data=b"x" * 60, message_finished=True))
        [close] = self.at_origin()
        self.assertEqual(close.code, 1009)
        [close] = self.at_browser()
        self.assertEqual(close.code, 1009)
        assert self.flow.websocket is not None
        self.assertEqual(self.flow.websocket.messages, [])
        self.assertEqual(self.flow.websocket.close_reason, "message over 100 bytes")

    def test_compression_bomb_stays_small(self) -> None:
        """
        A compressed message that inflates far past the limit (50 MiB of
        zeros in ~50 KiB) is refused with 1009 after inflating a few MiB of
        it, not all of it at once.
        """
        import tracemalloc

        from wsproto.extensions import PerMessageDeflate

        offer = "permessage-deflate"
        relay = WebSocketRelay(
            self.flow, chain=HookChain([], clock=self.clock), first=None, hooks=frozenset(),
            deflate=offer, limit=1024 * 1024, clock=self.clock.seconds, on_end=self._ended)
        near, far = StringTransport(), StringTransport()
        relay.client.makeConnection(near)
        relay.server.makeConnection(far)
        relay.start()
        deflate = PerMessageDeflate()
        deflate.finalize(offer)
        browser = Connection(CLIENT, [deflate])
        wire = browser.send(BytesMessage(data=bytes(50 * 1024 * 1024)))
        self.assertLess(len(wire), 100 * 1024)
        tracemalloc.start()
        try:
            relay.client.dataReceived(wire)
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
        self.assertLess(peak, 16 * 1024 * 1024)
        origin = Connection(SERVER, [PerMessageDeflate()])
        origin.receive_data(far.value())
        self.assertEqual([e.code for e in origin.events()], [1009])

    def test_failing_hook_closes_1011(self) -> None:
        """A message hook that raises closes both sides with 1011; the flow says why."""
        self.hooks.fail = True
        self.from_browser(TextMessage(data="x"))
        self.assertEqual([e.code for e in self.at_origin()], [1011])
        self.assertEqual([e.code for e in self.at_browser()], [1011])
        assert self.flow.error is not None
        self.assertIn("hook", self.flow.error.msg)
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)

    def test_hook_timeout_closes_1011(self) -> None:
        """A message hook past the chain's deadline closes the WebSocket too."""
        self.hooks.answer = Deferred()
        self.from_browser(TextMessage(data="x"))
        self.clock.advance(6)
        self.assertEqual([e.code for e in self.at_browser()], [1011])
        self.assertEqual(len(self.flushLoggedErrors(HookTimeout)), 1)

    def test_kill_aborts_both(self) -> None:
        """A message hook that kills the flow aborts both connections."""
        self.hooks.kill = True
        self.from_browser(TextMessage(data="x"))
        self.assertEqual(self.at_origin(), [])
        self.assertTrue(self.near.disconnecting and self.far.disconnecting)

    def test_inject(self) -> None:
        """inject() sends towards either side at once and records the message."""
        inject(self.flow, "to browser", to_client=True)
        inject(self.flow, b"to origin", to_client=False)
        self.assertEqual([e.data for e in self.at_browser()], ["to browser"])
        self.assertEqual([e.data for e in self.at_origin()], [b"to origin"])
        assert self.flow.websocket is not None
        self.assertEqual([(m.from_client, m.injected) for m in self.flow.websocket.messages],
                         [(False, True), (True, True)])


class FilesTests(SynchronousTestCase):
    """WebSocket flows in flow files and HAR."""

    def _flow(self) -> HTTPFlow:
        flow = HTTPFlow(Client(), Server(), now=lambda: 1.0)
        flow.request = _request()
        flow.request.timestamp_start = 1.0
        flow.response = Response.make(101)
        data = flow.websocket = WebSocketData()
        data.messages = [WebSocketMessage(Opcode.TEXT, True, "héllo".encode(), 2.5),
                         WebSocketMessage(Opcode.BINARY, False, b"\x00\xff", 3.5, dropped=True),
                         WebSocketMessage(Opcode.TEXT, False, b"hi", 4.0, injected=True)]
        data.closed_by_client, data.close_code, data.close_reason = False, 4001, "bye"
        data.timestamp_end = 5.0
        return flow

    def test_flow_file_round_trip(self) -> None:
        """A WebSocket flow is written to a flow file and read back whole."""
        import io

        from twistproxy.flowfile import dump_flows, read_flows

        out = io.BytesIO()
        dump_flows([self._flow()], out)
        [flow] = read_flows(io.BytesIO(out.getvalue()))
        assert flow.websocket is not None
        self.assertEqual(flow.websocket.get_state(), self._flow().websocket.get_state())  # type: ignore[union-attr]

    def test_flow_file_refuses_malformed_websocket(self) -> None:
        """A malformed websocket record is refused with a one-line FlowFileError."""
        import io
        import json

        from twistproxy.errors import FlowFileError
        from twistproxy.flowfile import dump_flows, read_flows

        out = io.BytesIO()
        dump_flows([self._flow()], out)
        for change, expected in (
            (lambda r: r["websocket"]["messages"][0].update(type=9), "text (1) or binary (2)"),
            (lambda r: r["websocket"]["messages"][0].update(content=5), "base64"),
            (lambda r: r["websocket"].update(close_code="x"), "close_code"),
        ):
            record = json.loads(out.getvalue())
            change(record)
            line = json.dumps(record).encode() + b"\n"
            with self.assertRaises(FlowFileError) as caught:
                list(read_flows(io.BytesIO(line)))
            message = str(caught.exception)
            self.assertIn(expected, message)
            self.assertTrue(message.startswith("line 1: ") and "\n" not in message, message)

    def test_version_1_line_has_no_websocket(self) -> None:
        """A version 1 line is upgraded: its flow has no WebSocket."""
        import io
        import json

        from twistproxy.flowfile import dump_flows, read_flows

        out = io.BytesIO()
        dump_flows([self._flow()], out)
        record = json.loads(out.getvalue())
        record["version"] = 1
        del record["websocket"]
        [flow] = read_flows(io.BytesIO(json.dumps(record).encode() + b"\n"))
        self.assertIsNone(flow.websocket)

    def test_har_as_chromium_writes_it(self) -> None:
        """
        HAR export writes ``_webSocketMessages`` as Chromium does (send and
        receive, seconds, opcodes, text or base64) and reads them back.
        """
        from twistproxy.har import from_har, to_har

        har = to_har([self._flow()], creator_version="1")
        [entry] = har["log"]["entries"]
        self.assertEqual(entry["_resourceType"], "websocket")
        self.assertEqual(entry["_webSocketMessages"], [
            {"type": "send", "time": 2.5, "opcode": 1, "data": "héllo"},
            {"type": "receive", "time": 3.5, "opcode": 2, "data": "AP8=", "_dropped": True},
            {"type": "receive", "time": 4.0, "opcode": 1, "data": "hi", "_injected": True},
        ])
        [flow] = from_har(har)
        assert flow.websocket is not None
        self.assertEqual([m.get_state() for m in flow.websocket.messages],
                         [m.get_state() for m in self._flow().websocket.messages])  # type: ignore[union-attr]

    def test_har_from_a_browser(self) -> None:
        """Control frames a tool lists are skipped; a bad binary payload is refused."""
        from twistproxy.errors import FlowFileError
        from twistproxy.har import from_har, to_har

        har = to_har([self._flow()], creator_version="1")
        entry = har["log"]["entries"][0]
        entry["_webSocketMessages"].append({"type": "receive", "time": 6, "opcode": 9, "data": ""})
        [flow] = from_har(har)
        self.assertEqual(len(flow.websocket.messages), 3)  # type: ignore[union-attr]
        entry["_webSocketMessages"][1]["data"] = "not base64!"
        with self.assertRaises(FlowFileError) as caught:
            list(from_har(har))
        self.assertIn("_webSocketMessages[1].data", str(caught.exception))


class DocumentedExampleTests(_RelayCase):
    """
    The worked example addon ``docs/hooks.rst`` shows (``docs/examples/censor.py``)
    does what it says.
    """

    def addon(self) -> Any:
        import os

        path = os.path.join(os.path.dirname(__file__), "..", "docs", "examples", "censor.py")
        with open(path, encoding="utf-8") as f:
            code = f.read()
        namespace: dict[str, Any] = {}
        exec(compile(code, path, "exec"), namespace)  # noqa: S102
        return namespace["Censor"]()

    def test_example(self) -> None:
        """It censors, and answers ``status?`` itself without the origin seeing it."""
        import contextlib
        import io

        with contextlib.redirect_stdout(io.StringIO()):
            self.from_browser(TextMessage(data="status?"))
            self.from_origin(TextMessage(data="a secret"))
        self.assertEqual([e.data for e in self.at_browser()], ["status: proxied", "a ******"])
        self.assertEqual(self.at_origin(), [])
