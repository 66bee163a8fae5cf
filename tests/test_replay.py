# -*- test-case-name: tests.test_replay -*-
"""
Tests for :mod:`twistproxy.replay` with fake transports: client replay
through the proxy's pool and hooks, and server replay's matching.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import Deferred, fail
from twisted.internet.error import ConnectionRefusedError
from twisted.internet.testing import MemoryReactorClock
from twisted.logger import capturedLogs, formatEvent
from twisted.trial.unittest import SynchronousTestCase

from tests.fakes import FakeEndpointFactory
from twistproxy._memorytls import ClientTLS
from twistproxy.connection import Client, Server
from twistproxy.hooks import Addon
from twistproxy.http import HTTPFlow, Request, Response
from twistproxy.proxy import ProxyFactory
from twistproxy.replay import ClientReplay, ServerReplay


def recorded(method: str = "GET", url: str = "http://example.com/a?x=1", *,
             body: bytes = b"", status: int = 200, answer: bytes = b"old") -> HTTPFlow:
    """A finished flow as a recording holds it."""
    flow = HTTPFlow(Client(), Server(), now=lambda: 1.0)
    flow.request = Request.make(method, url, body)
    flow.response = Response.make(status, answer)
    return flow


class _Hooks(Addon):
    def __init__(self) -> None:
        self.events: list[tuple[str, str]] = []

    def request(self, flow: HTTPFlow) -> None:
        self.events.append(("request", flow.request.path))
        flow.request.headers["X-Replayed"] = "yes"

    def response(self, flow: HTTPFlow) -> None:
        self.events.append(("response", flow.request.path))

    def error(self, flow: HTTPFlow) -> None:
        self.events.append(("error", flow.request.path))


class ClientReplayTests(SynchronousTestCase):
    """
    Tests for :class:`ClientReplay`.
    """

    def setUp(self) -> None:
        self.endpoints = FakeEndpointFactory()
        self.hooks = _Hooks()
        self.factory = ProxyFactory(reactor=MemoryReactorClock(),
                                    endpoint_factory=self.endpoints, addons=[self.hooks])

    def answer(self, index: int, data: bytes) -> None:
        """The origin of connection *index* sends *data*."""
        protocol, _ = self.endpoints.connections[index]
        protocol.dataReceived(data)

    def test_check_reasons(self) -> None:
        """``check`` says why a flow cannot be replayed, and accepts a good one."""
        replay = ClientReplay(self.factory)
        self.assertIsNone(replay.check(recorded()))
        live = recorded()
        live.live = True
        self.assertIn("live", replay.check(live))
        held = recorded()
        held.intercept()
        self.assertIn("intercepted", replay.check(held))
        empty = HTTPFlow(Client(), Server())
        self.assertIn("no request", replay.check(empty))
        connect = recorded("CONNECT")
        self.assertIn("CONNECT", replay.check(connect))
        streamed = recorded("POST")
        streamed.request.raw_content = None
        self.assertIn("not recorded", replay.check(streamed))
        truncated = recorded("POST", body=b"the start")
        truncated.request.body_size = 5000
        self.assertIn("only the first 9 of the request body's 5000 bytes",
                      replay.check(truncated))

    def test_replays_request_and_records_new_response(self) -> None:
        """
        The request goes upstream through the hooks; the new response is
        recorded, the flow marked as a request replay, its old state backed up.
        """
        replay = ClientReplay(self.factory)
        flow = recorded("POST", "http://example.com/submit", body=b"payload")
        self.assertEqual(replay.start_replay([flow]), 1)
        [(_, transport)] = self.endpoints.connections
        sent = transport.value()
        self.assertTrue(sent.startswith(b"POST /submit HTTP/1.1\r\nHost: example.com\r\n"))
        self.assertIn(b"X-Replayed: yes\r\n", sent)
        self.assertTrue(sent.endswith(b"\r\n\r\npayload"))
        self.answer(0, b"HTTP/1.1 201 Created\r\nContent-Length: 3\r\n\r\nnew")
        self.assertEqual((flow.response.status_code, flow.response.content), (201, b"new"))
        self.assertEqual(flow.is_replay, "request")
        self.assertFalse(flow.live)
        self.assertEqual(self.hooks.events, [("request", "/submit"), ("response", "/submit")])
        self.assertTrue(flow.modified())
        flow.revert()
        self.assertEqual(flow.response.content, b"old")

    def test_failure_runs_error_hook(self) -> None:
        """An upstream that refuses makes the flow's error and runs ``error``."""
        factory = ProxyFactory(
            reactor=MemoryReactorClock(), addons=[self.hooks],
            endpoint_factory=lambda *key: _Refusing(),
        )
        flow = recorded()
        ClientReplay(factory).start_replay([flow])
        self.assertIn("connection refused", flow.error.msg)
        self.assertIsNone(flow.response)
        self.assertEqual(self.hooks.events, [("request", "/a?x=1"), ("error", "/a?x=1")])

    def test_skips_with_warning(self) -> None:
        """Flows ``check`` refuses are skipped with a warning naming why."""
        live = recorded()
        live.live = True
        with capturedLogs() as events:
            queued = ClientReplay(self.factory).start_replay([live])
        self.assertEqual(queued, 0)
        self.assertIn("the flow is live", events[0]["reason"])

    def test_one_at_a_time_by_default(self) -> None:
        """With concurrency 1 the second flow waits for the first's response."""
        replay = ClientReplay(self.factory)
        first, second = recorded(url="http://example.com/1"), recorded(url="http://a.example/2")
        replay.start_replay([first, second])
        self.assertEqual(len(self.endpoints.connections), 1)
        self.assertEqual(replay.count(), 2)
        self.answer(0, b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
        self.assertEqual(len(self.endpoints.connections), 2)
        self.assertEqual(replay.count(), 1)

    def test_concurrency_lets_others_pass_a_slow_one(self) -> None:
        """
        With concurrency 2 a second flow is sent while the first still waits
        (a long poll does not hold up the rest), and answered first.
        """
        replay = ClientReplay(self.factory, concurrency=2)
        slow, quick = recorded(url="http://slow.example/poll"), recorded(url="http://q.example/")
        replay.start_replay([slow, quick])
        self.assertEqual(len(self.endpoints.connections), 2)
        self.answer(1, b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        self.assertEqual(quick.response.content, b"ok")
        self.assertTrue(slow.live)

    def test_stop_and_drained(self) -> None:
        """``stop`` drops waiting flows; ``when_drained`` fires once none is left."""
        replay = ClientReplay(self.factory)
        replay.start_replay([recorded(url="http://example.com/1"),
                             recorded(url="http://example.com/2")])
        drained = replay.when_drained()
        replay.stop()
        self.assertEqual(replay.count(), 1)
        self.assertNoResult(drained)
        self.answer(0, b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
        self.successResultOf(drained)
        self.assertEqual(len(self.endpoints.connections), 1)

    def test_https_flow_goes_over_tls(self) -> None:
        """An https flow asks for a connection to its host on its port, wrapped in TLS."""
        flow = recorded(url="https://secure.example:8443/x")
        ClientReplay(self.factory).start_replay([flow])
        self.assertEqual(self.endpoints.requested, [("https", "secure.example", 8443)])
        [(protocol, _)] = self.endpoints.connections
        self.assertIsInstance(protocol, ClientTLS)
        self.assertEqual(protocol.getHandle().server_hostname, "secure.example")


class _Refusing:
    def connect(self, factory: Any) -> Deferred[Any]:
        return fail(ConnectionRefusedError())


class ServerReplayTests(SynchronousTestCase):
    """
    Tests for :class:`ServerReplay`.
    """

    def live(self, method: str = "GET", url: str = "http://example.com/a?x=1",
             body: bytes = b"", **headers: str) -> HTTPFlow:
        """A live flow whose request the replay addon sees."""
        flow = HTTPFlow(Client(), Server(), live=True, now=lambda: 5.0)
        flow.request = Request.make(method, url, body, headers)
        return flow

    def test_matching_request_answered(self) -> None:
        """A matching request gets a copy of the recorded response."""
        replay = ServerReplay([recorded(answer=b"recorded")], now=lambda: 9.0)
        flow = self.live()
        replay.request(flow)
        self.assertEqual(flow.response.content, b"recorded")
        self.assertEqual(flow.is_replay, "response")
        self.assertEqual(flow.response.timestamp_start, 9.0)

    def test_truncated_response_not_served(self) -> None:
        """A response recorded only in part is not served (nor is one not recorded)."""
        truncated = recorded(answer=b"the start")
        truncated.response.body_size = 5000
        replay = ServerReplay([truncated], now=lambda: 9.0)
        self.assertEqual(replay.count(), 0)
        flow = self.live()
        replay.request(flow)
        self.assertIsNone(flow.response)

    def test_websocket_flows_not_served(self) -> None:
        """A recorded WebSocket (a 101 and its messages) answers nothing: it goes upstream."""
        from twistproxy.websocket import WebSocketData

        websocket = recorded(status=101, answer=b"")
        websocket.websocket = WebSocketData()
        replay = ServerReplay([websocket])
        self.assertEqual(replay.count(), 0)
        flow = self.live()
        replay.request(flow)
        self.assertIsNone(flow.response)

    def test_key_parts(self) -> None:
        """Method, host, path, query and body all count; parameter order does not."""
        replay = ServerReplay([recorded("POST", "http://example.com/a?x=1&y=2", body=b"b")])
        for other in (self.live("PUT", "http://example.com/a?x=1&y=2", b"b"),
                      self.live("POST", "http://other.example/a?x=1&y=2", b"b"),
                      self.live("POST", "https://example.com/a?x=1&y=2", b"b"),
                      self.live("POST", "http://example.com/b?x=1&y=2", b"b"),
                      self.live("POST", "http://example.com/a?x=2&y=2", b"b"),
                      self.live("POST", "http://example.com/a?x=1&y=2", b"c")):
            replay.request(other)
            self.assertIsNone(other.response, other.request.url)
        same = self.live("POST", "http://example.com/a?y=2&x=1", b"b")
        replay.request(same)
        self.assertIsNotNone(same.response)

    def test_ignore_params_content_and_match_headers(self) -> None:
        """Options drop chosen parameters and the body, or add chosen headers."""
        replay = ServerReplay([recorded("POST", "http://example.com/?t=1&q=a", body=b"1")],
                              ignore_params=["t"], ignore_content=True)
        flow = self.live("POST", "http://example.com/?q=a&t=999", b"2")
        replay.request(flow)
        self.assertIsNotNone(flow.response)
        with_header = recorded()
        with_header.request.headers["Accept"] = "text/html"
        replay = ServerReplay([with_header], match_headers=["accept"])
        other = self.live(Accept="application/json")
        replay.request(other)
        self.assertIsNone(other.response)
        same = self.live(Accept="text/html")
        replay.request(same)
        self.assertIsNotNone(same.response)

    def test_recordings_served_in_order_once(self) -> None:
        """Several recordings of one request are served in order, each once."""
        replay = ServerReplay([recorded(answer=b"first"), recorded(answer=b"second")])
        answers = []
        for _ in range(3):
            flow = self.live()
            replay.request(flow)
            answers.append(flow.response.content if flow.response else None)
        self.assertEqual(answers, [b"first", b"second", None])
        self.assertEqual(replay.count(), 0)

    def test_unmatched_policies(self) -> None:
        """Unmatched requests are forwarded, killed or answered 404."""
        forward = self.live(url="http://nowhere.example/")
        ServerReplay([], unmatched="forward").request(forward)
        self.assertIsNone(forward.response)
        self.assertFalse(forward.killed)
        killed = self.live(url="http://nowhere.example/")
        ServerReplay([], unmatched="kill").request(killed)
        self.assertTrue(killed.killed)
        missing = self.live(url="http://nowhere.example/")
        ServerReplay([], unmatched="404").request(missing)
        self.assertEqual(missing.response.status_code, 404)
        with self.assertRaises(ValueError):
            ServerReplay([], unmatched="maybe")

    def test_passthrough_tunnels_refused_unless_forwarding(self) -> None:
        """With kill or 404, a tunnel that would pass through to a server is refused."""
        tunnel = self.live("CONNECT", "http://example.com:443/")
        tunnel.passthrough = True
        ServerReplay([], unmatched="404").http_connect(tunnel)
        self.assertEqual(tunnel.response.status_code, 404)
        allowed = self.live("CONNECT", "http://example.com:443/")
        allowed.passthrough = True
        ServerReplay([], unmatched="forward").http_connect(allowed)
        self.assertIsNone(allowed.response)

    def test_served_copy_is_independent(self) -> None:
        """Changing a served response leaves the recording untouched."""
        original = recorded(answer=b"keep")
        replay = ServerReplay([original, recorded(answer=b"keep")])
        flow = self.live()
        replay.request(flow)
        flow.response.content = b"changed"
        self.assertEqual(original.response.content, b"keep")

    def test_recording_without_body_left_out(self) -> None:
        """
        Recordings whose response body was not recorded whole (streamed, or
        only its start) are never served: one warning at start counts them;
        a request for one is unmatched, with a warning naming it, and gets
        what *unmatched* says (a 404 here), never an empty or partial body.
        """
        streamed = recorded()
        streamed.response.raw_content = None
        partial = recorded(url="http://example.com/b", answer=b"the start")
        partial.response.body_size = 5000
        with capturedLogs() as events:
            replay = ServerReplay([streamed, partial], unmatched="404")
        self.assertEqual(replay.count(), 0)
        self.assertEqual([formatEvent(e) for e in events], [
            "2 recorded response(s) have no whole body (not recorded, or recorded only in "
            "part) and are never served; a request for one is unmatched "
            "(first: http://example.com/a?x=1)",
        ])
        for url in ("http://example.com/a?x=1", "http://example.com/b"):
            flow = self.live(url=url)
            with capturedLogs() as events:
                replay.request(flow)
            self.assertEqual(flow.response.status_code, 404)
            self.assertEqual([formatEvent(e) for e in events], [
                f"the recorded response for {url} has no whole body; not served, so the "
                "request is unmatched (404)",
            ])
