"""
Faults, end to end: ``SIGTERM`` to ``twistd twistproxy --save`` while
responses are in flight.  The origin is in the test process and trickles
its responses; the clients are raw sockets in the test process, so that
how their connection ended (closed or reset) is seen.
"""

from __future__ import annotations

import signal
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import TCP4ClientEndpoint
from twisted.internet.error import ConnectionDone
from twisted.internet.protocol import Factory, Protocol
from twisted.python.failure import Failure

from tests.e2e.test_twistd import output_contains, sleep, start_twistd
from twistproxy.flowfile import load_flows

pytestmark = pytest.mark.e2e

PIECES = 8  # the slow response's body: this many pieces of PIECE bytes
PIECE = b"x" * 1000
EXIT_TIMEOUT = 20.0  # seconds for the proxy to exit after SIGTERM


class Trickling(Protocol):
    """
    An origin that answers ``/fast`` at once, ``/silent`` never, and
    trickles any other response: its head and first piece at once, then a
    piece every ``interval`` seconds (``/stall``: no more pieces at all).
    """

    def __init__(self, interval: float) -> None:
        self.interval = interval
        self.buffer = b""
        self.sent = 0
        self.call: Any = None

    def dataReceived(self, data: bytes) -> None:
        self.buffer += data
        if b"\r\n\r\n" not in self.buffer:
            return
        head, _, self.buffer = self.buffer.partition(b"\r\n\r\n")
        path = head.split(b" ")[1]
        if path == b"/fast":
            self.transport.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
            return
        if path == b"/silent":
            return
        self.transport.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n"
                             % (PIECES * len(PIECE)))
        self.sent = 0
        self.stalled = path == b"/stall"
        self.more()

    def more(self) -> None:
        self.call = None
        if self.transport.disconnecting or self.sent >= PIECES:
            return
        self.transport.write(PIECE)
        self.sent += 1
        if not self.stalled:
            self.call = reactor.callLater(self.interval, self.more)

    def connectionLost(self, reason: Failure = ConnectionDone()) -> None:  # noqa: B008
        if self.call is not None and self.call.active():
            self.call.cancel()


class Client(Protocol):
    """A raw client: sends its requests, keeps every byte and how the connection ended."""

    def __init__(self) -> None:
        self.data = b""
        self.reason: Failure | None = None
        self.ended: Deferred[None] = Deferred()

    def dataReceived(self, data: bytes) -> None:
        self.data += data

    def connectionLost(self, reason: Failure = ConnectionDone()) -> None:  # noqa: B008
        self.reason = reason
        self.ended.callback(None)


@pytest_twisted.async_yield_fixture
async def trickling() -> AsyncIterator[int]:
    """The trickling origin (a piece every 0.25 s) on 127.0.0.1; yields its port."""
    port: Any = reactor.listenTCP(0, Factory.forProtocol(lambda: Trickling(0.25)),
                                  interface="127.0.0.1")
    yield port.getHost().port
    await port.stopListening()


async def connect(port: int) -> Client:
    """A raw client connected to the proxy on *port*."""
    client = Client()
    endpoint = TCP4ClientEndpoint(reactor, "127.0.0.1", port, timeout=5)
    await endpoint.connect(Factory.forProtocol(lambda: client))
    return client


def get(client: Client, origin: int, path: str) -> None:
    """Send a proxy request for *path* on the origin."""
    client.transport.write(  # type: ignore[union-attr]
        b"GET http://127.0.0.1:%d%s HTTP/1.1\r\nHost: 127.0.0.1:%d\r\n\r\n"
        % (origin, path.encode(), origin))


def assert_stopped_cleanly(code: int | None, by: int | None, output: str) -> None:
    """
    twistd stopped as it does on SIGTERM once its services stopped: it logs
    its shut-down and ends itself with the signal it got (Twisted re-raises
    it, so a supervisor sees it), not with an error.
    """
    assert (code, by) in ((0, None), (None, signal.SIGTERM)), (code, by, output)
    assert "Server Shut Down." in output, output
    assert "Traceback" not in output, output


async def until(condition: Any, what: str, timeout: float = 10.0) -> None:
    """Wait (bounded) until *condition()* holds."""
    for _ in range(int(timeout * 20)):
        if condition():
            return
        await sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


@pytest_twisted.ensureDeferred
async def test_sigterm_drains(tmp_path: Path, trickling: int) -> None:
    """
    SIGTERM while a slow response trickles: the client gets all of it,
    then the connection closes; an idle keep-alive connection is
    closed at once, the flows are in the --save file, the proxy logs the
    drain and stops cleanly before the deadline.
    """
    saved = tmp_path / "flows.jsonl"
    child, port = await start_twistd(tmp_path, "--save", str(saved), "--shutdown-timeout", "15")
    try:
        idle = await connect(port)
        get(idle, trickling, "/fast")
        await until(lambda: idle.data.endswith(b"ok"), "the fast response")
        slow = await connect(port)
        get(slow, trickling, "/slow")
        await until(lambda: PIECE in slow.data, "the slow response's first piece")
        child.transport.signalProcess(signal.SIGTERM)  # type: ignore[union-attr]
        await until(lambda: idle.reason is not None, "the idle connection's close", 5)
        assert not slow.ended.called  # still trickling
        await until(lambda: slow.reason is not None, "the slow response's end")
        head, _, body = slow.data.partition(b"\r\n\r\n")
        assert body == PIECE * PIECES
        assert b"Content-Length: %d" % len(body) in head  # its head went before the drain
        assert slow.reason is not None and slow.reason.check(ConnectionDone)
        await until(lambda: child.done, "the proxy's exit", EXIT_TIMEOUT)
        assert_stopped_cleanly(child.code, child.signal, child.output)
    finally:
        await child.stop()
    assert "draining 2 client connections" in child.output, child.output
    assert "0 given up at the deadline" in child.output, child.output
    flows = list(load_flows(str(saved)))
    assert [f.request.path for f in flows if f.request is not None] == ["/fast", "/slow"]
    slow_flow = flows[1]
    assert slow_flow.error is None
    assert slow_flow.response is not None
    assert slow_flow.response.raw_content == PIECE * PIECES


@pytest_twisted.ensureDeferred
async def test_sigterm_deadline_aborts(tmp_path: Path, trickling: int) -> None:
    """
    SIGTERM while a response stalls past --shutdown-timeout: the client's
    connection is reset (not closed after a short body that could pass for
    whole), a request with no response yet gets a 503, both failed flows
    are saved with the shutdown as their error, and the proxy stops cleanly.
    """
    saved = tmp_path / "flows.jsonl"
    child, port = await start_twistd(tmp_path, "--save", str(saved), "--shutdown-timeout", "1")
    try:
        stalled = await connect(port)
        get(stalled, trickling, "/stall")
        await until(lambda: PIECE in stalled.data, "the stalled response's first piece")
        waiting = await connect(port)
        get(waiting, trickling, "/silent")
        await sleep(0.3)
        child.transport.signalProcess(signal.SIGTERM)  # type: ignore[union-attr]
        await until(lambda: stalled.reason is not None and waiting.reason is not None,
                    "both connections' end", 10)
        assert not stalled.data.endswith(PIECE * PIECES)
        assert stalled.reason is not None and not stalled.reason.check(ConnectionDone), \
            stalled.reason
        assert waiting.data.startswith(b"HTTP/1.1 503 Service Unavailable\r\n"), waiting.data
        await until(lambda: child.done, "the proxy's exit", EXIT_TIMEOUT)
        assert_stopped_cleanly(child.code, child.signal, child.output)
    finally:
        await child.stop()
    await output_contains(child, "2 given up at the deadline")
    flows = {f.request.path: f for f in load_flows(str(saved)) if f.request is not None}
    assert set(flows) == {"/stall", "/silent"}
    for flow in flows.values():
        assert flow.error is not None and "shut down" in flow.error.msg, flow.error
