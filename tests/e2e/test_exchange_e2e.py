"""
The exchange's decisions through real sockets on 127.0.0.1: the one retry
rule (a POST is never sent twice), nothing a hook sets can split a message
on the wire, and replayed requests take the live path (its timeout, its
``server_connected``).
"""

from __future__ import annotations

from typing import Any

import pytest
import pytest_twisted
from twisted.internet import reactor
from twisted.internet.protocol import Factory, Protocol

from tests.e2e.conftest import Running, parse_responses, raw
from twistproxy.connection import Server
from twistproxy.hooks import Addon
from twistproxy.http import HTTPFlow, Request
from twistproxy.limits import Limits
from twistproxy.replay import ClientReplay

pytestmark = pytest.mark.e2e

OK = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"


class _Scripted(Protocol):
    """
    An origin connection that reads whole requests (heads, and bodies by
    ``Content-Length``) and does what its factory's script says for each
    request line: answer, or cut the connection without a byte.
    """

    def __init__(self) -> None:
        self.buffer = b""

    def dataReceived(self, data: bytes) -> None:
        self.buffer += data
        factory: Scripted = self.factory  # type: ignore[assignment]
        while b"\r\n\r\n" in self.buffer:
            head, _, rest = self.buffer.partition(b"\r\n\r\n")
            lines = head.split(b"\r\n")
            length = 0
            for line in lines[1:]:
                name, _, value = line.partition(b":")
                if name.strip().lower() == b"content-length":
                    length = int(value)
            if len(rest) < length:
                return
            self.buffer = rest[length:]
            factory.requests.append(head)
            action = factory.script(lines[0], factory)
            if action == "cut":
                self.transport.loseConnection()  # type: ignore[union-attr]
                return
            if action != "silent":
                self.transport.write(action)  # type: ignore[union-attr]

    def connectionMade(self) -> None:
        self.factory.connections += 1  # type: ignore[attr-defined]


class Scripted(Factory):
    """Makes :class:`_Scripted` origins sharing a script and a log."""

    protocol = _Scripted

    def __init__(self, script: Any) -> None:
        self.script = script
        self.requests: list[bytes] = []
        self.connections = 0

    def count(self, start: bytes) -> int:
        """How many requests whose line starts with *start* arrived."""
        return sum(1 for head in self.requests if head.startswith(start))


@pytest.fixture
def scripted() -> Any:
    """Start scripted origins on 127.0.0.1; they stop after the test."""
    ports: list[Any] = []

    def start(script: Any) -> Running:
        factory = Scripted(script)
        port = reactor.listenTCP(0, factory, interface="127.0.0.1")
        ports.append(port)
        return Running(port, factory)

    yield start
    for port in ports:
        pytest_twisted.blockon(port.stopListening())


def request(origin: Running, method: bytes, path: bytes, body: bytes = b"",
            close: bool = False) -> bytes:
    """An absolute-form request for *path* on *origin*."""
    return (
        b"%s http://127.0.0.1:%d%s HTTP/1.1\r\nHost: 127.0.0.1:%d\r\n"
        b"Content-Length: %d\r\n%s\r\n%s"
        % (method, origin.port, path, origin.port, len(body),
           b"Connection: close\r\n" if close else b"", body)
    )


@pytest_twisted.ensureDeferred
async def test_post_is_not_sent_twice(scripted: Any, start_proxy: Any) -> None:
    """
    A GET, then a POST on the same pooled connection that the origin cuts
    before answering: the client gets a 502 and the origin saw the POST
    once (RFC 9110 section 9.2.2: a proxy must not retry it on its own).
    """
    origin = scripted(lambda line, _: "cut" if line.startswith(b"POST") else OK)
    proxy = await start_proxy()
    data = request(origin, b"GET", b"/first") + request(origin, b"POST", b"/pay", b"1 EUR",
                                                         close=True)
    first, second = parse_responses(await raw(proxy.port, data))
    assert first.status == 200
    assert second.status == 502, second.body
    assert origin.factory.count(b"POST /pay") == 1
    assert origin.factory.connections == 1


@pytest_twisted.ensureDeferred
async def test_get_is_retried_once_on_a_stale_connection(scripted: Any,
                                                          start_proxy: Any) -> None:
    """
    A GET on a pooled connection that the origin cuts before answering goes
    once more on a new connection, which answers it; a GET cut on both
    connections is not tried a third time.
    """
    cuts = {b"GET /again": 1, b"GET /never": 2}

    def script(line: bytes, factory: Scripted) -> Any:
        for start, times in cuts.items():
            if line.startswith(start) and factory.count(start) <= times:
                return "cut"
        return OK

    origin = scripted(script)
    proxy = await start_proxy()
    data = request(origin, b"GET", b"/first") + request(origin, b"GET", b"/again", close=True)
    first, second = parse_responses(await raw(proxy.port, data))
    assert (first.status, second.status, second.body) == (200, 200, b"ok")
    assert origin.factory.count(b"GET /again") == 2
    assert origin.factory.connections == 2

    data = request(origin, b"GET", b"/first") + request(origin, b"GET", b"/never", close=True)
    first, second = parse_responses(await raw(proxy.port, data))
    assert (first.status, second.status) == (200, 502)
    assert origin.factory.count(b"GET /never") == 2


class _SplitPath(Addon):
    """A request hook that tries to smuggle a second request into the path."""

    def request(self, flow: HTTPFlow) -> None:
        assert flow.request is not None
        flow.request.path = "/a HTTP/1.1\r\nHost: x\r\n\r\nGET /smuggled"


class _SplitReason(Addon):
    """A response hook that tries to inject a field through the reason phrase."""

    def response(self, flow: HTTPFlow) -> None:
        assert flow.response is not None
        flow.response.reason = "OK\r\nSet-Cookie: session=stolen"


@pytest_twisted.ensureDeferred
async def test_hook_cannot_split_the_request(scripted: Any, start_proxy: Any) -> None:
    """
    A hook that sets a path holding CR/LF: the origin sees no request at
    all (let alone two), the client a 500 naming the field and the hook.
    """
    origin = scripted(lambda line, _: OK)
    proxy = await start_proxy(addons=[_SplitPath()])
    [answer] = parse_responses(await raw(proxy.port, request(origin, b"GET", b"/", close=True)))
    assert answer.status == 500
    assert b"invalid request path" in answer.body
    assert b"'request' hook" in answer.body
    assert origin.factory.requests == []


@pytest_twisted.ensureDeferred
async def test_hook_cannot_inject_a_response_field(scripted: Any, start_proxy: Any) -> None:
    """
    A hook that sets a reason phrase holding CR/LF: the client gets a 500
    whose head has no injected ``Set-Cookie``.
    """
    origin = scripted(lambda line, _: OK)
    proxy = await start_proxy(addons=[_SplitReason()])
    data = await raw(proxy.port, request(origin, b"GET", b"/", close=True))
    [answer] = parse_responses(data)
    assert answer.status == 500
    assert answer.header(b"Set-Cookie") is None
    assert b"stolen" not in data.partition(b"\r\n\r\n")[0]
    assert b"invalid response reason" in answer.body


class _Connections(Addon):
    """Counts the server connections it is told of."""

    def __init__(self) -> None:
        self.servers: list[Server] = []

    def server_connected(self, server: Server) -> None:
        self.servers.append(server)


@pytest_twisted.ensureDeferred
async def test_replay_takes_the_live_path(scripted: Any, start_proxy: Any) -> None:
    """
    A replayed request against an origin that never answers fails after
    the upstream timeout (it used to wait for ever), and replays run
    ``server_connected`` for their new connections as live requests do.
    """
    origin = scripted(lambda line, _: "silent" if b"/silent" in line else OK)
    connections = _Connections()
    proxy = await start_proxy(addons=[connections], limits=Limits(upstream_timeout=0.5))
    replay = ClientReplay(proxy.factory)

    answered = HTTPFlow.from_state(_flow_state(origin, "/ok"))
    await replay.replay(answered)
    assert answered.response is not None and answered.response.status_code == 200
    assert len(connections.servers) == 1
    assert answered.server_conn is connections.servers[0]

    silent = HTTPFlow.from_state(_flow_state(origin, "/silent"))
    started = reactor.seconds()
    await replay.replay(silent)
    assert silent.response is None
    assert silent.error is not None and "sent nothing for 0.5 s" in silent.error.msg
    assert reactor.seconds() - started < 5


def _flow_state(origin: Running, path: str) -> dict[str, Any]:
    """The state of a finished, recorded flow for *path* on *origin*."""
    flow = HTTPFlow(_client(), Server(address=("127.0.0.1", origin.port)))
    flow.request = Request.make("GET", f"http://127.0.0.1:{origin.port}{path}")
    return flow.get_state()


def _client() -> Any:
    from twistproxy.connection import Client

    return Client(peername=("127.0.0.1", 1))
