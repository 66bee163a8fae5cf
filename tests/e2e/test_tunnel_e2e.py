"""
CONNECT tunnels end to end: the eager connection to the target (a failure
is the CONNECT's own answer, for intercepted and passed-through tunnels
alike), and what an intercepted tunnel carries (plain HTTP, raw TCP, a
server that speaks first), with raw sockets and curl on 127.0.0.1.
"""

from __future__ import annotations

import json
import socket
import time
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any

import pytest
import pytest_twisted
from twisted.internet import reactor
from twisted.internet.address import IPv4Address
from twisted.internet.endpoints import HostnameEndpoint
from twisted.internet.error import TimeoutError
from twisted.internet.interfaces import (
    IHostnameResolver,
    IHostResolution,
    IReactorPluggableNameResolver,
    IResolutionReceiver,
)
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.threads import deferToThread
from zope.interface import implementer

from tests.e2e.conftest import Running, curl, needs_curl, parse_responses, raw
from tests.e2e.test_failures_e2e import _Failing
from tests.e2e.test_hooks_e2e import Ends
from twistproxy.connection import Client, Server
from twistproxy.hooks import Addon
from twistproxy.http import HTTPFlow, Request, Response
from twistproxy.limits import Limits
from twistproxy.replay import ServerReplay

pytestmark = pytest.mark.e2e

KINDS = ("intercepted", "passthrough")


@implementer(IHostResolution)
class _Resolution:
    def __init__(self, name: str) -> None:
        self.name = name

    def cancel(self) -> None:
        """Nothing to cancel: answers are given at once."""


@implementer(IHostnameResolver)
class _Names:
    """
    A resolver that knows the names in *known* (each resolves to
    127.0.0.1) and no other, without asking anybody: the tests never send a
    DNS query.

    :ivar asked: Every name looked up.
    """

    def __init__(self, known: Sequence[str]) -> None:
        self.known = set(known)
        self.asked: list[str] = []

    def resolveHostName(  # noqa: N802  (Twisted's name)
        self, resolutionReceiver: IResolutionReceiver, hostName: str,  # noqa: N803
        portNumber: int = 0, addressTypes: Any = None,  # noqa: N803
        transportSemantics: str = "TCP",  # noqa: N803
    ) -> IHostResolution:
        self.asked.append(hostName)
        resolution = _Resolution(hostName)
        resolutionReceiver.resolutionBegan(resolution)
        if hostName in self.known:
            resolutionReceiver.addressResolved(IPv4Address("TCP", "127.0.0.1", portNumber))
        resolutionReceiver.resolutionComplete()
        return resolution


@implementer(IReactorPluggableNameResolver)
class _ResolvingReactor:
    """The test's reactor, with :class:`_Names` for its name resolver."""

    def __init__(self, names: _Names) -> None:
        self.nameResolver = names

    def installNameResolver(self, resolver: IHostnameResolver) -> IHostnameResolver:  # noqa: N802
        raise NotImplementedError

    def __getattr__(self, name: str) -> Any:
        return getattr(reactor, name)


def _endpoints(names: _Names) -> Any:
    """The production endpoints (``HostnameEndpoint``), resolving with *names*."""
    resolving = _ResolvingReactor(names)

    def endpoint(scheme: str, host: str, port: int) -> HostnameEndpoint:
        return HostnameEndpoint(resolving, host, port, timeout=5)

    return endpoint


def _closed_port() -> int:
    """A port on 127.0.0.1 nobody listens on."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


def _connect(host: str, port: int, close: bool = True) -> bytes:
    return (f"CONNECT {host}:{port} HTTP/1.1\r\nHost: {host}:{port}\r\n"
            + ("Connection: close\r\n" if close else "") + "\r\n").encode()


async def _start(start_proxy: Any, start_https_proxy: Any, kind: str, **kwargs: Any) -> Running:
    """A proxy that intercepts its tunnels, or passes them all through."""
    if kind == "intercepted":
        proxy: Running = await start_https_proxy(**kwargs)
    else:
        proxy = await start_proxy(**kwargs)
    return proxy


@pytest.mark.parametrize("kind", KINDS)
@pytest_twisted.ensureDeferred
async def test_refused_port_is_502(start_proxy: Any, start_https_proxy: Any, kind: str) -> None:
    """
    A CONNECT to a port nobody listens on is answered 502 saying the
    connection was refused, not ``200`` and a dead tunnel; the flow ends
    in ``error``.
    """
    ends = Ends()
    proxy = await _start(start_proxy, start_https_proxy, kind, addons=[ends])
    [parsed] = parse_responses(await raw(proxy.port, _connect("127.0.0.1", _closed_port())))
    assert parsed.status == 502
    assert b"connection refused" in parsed.body
    [flow] = ends.flows
    assert ends.ends[flow.id] == ["error"]
    assert "connection refused" in flow.error.msg


@pytest.mark.parametrize("kind", KINDS)
@pytest_twisted.ensureDeferred
async def test_unresolvable_name_is_502(start_proxy: Any, start_https_proxy: Any,
                                        kind: str) -> None:
    """
    A CONNECT to a name that does not resolve is answered 502 saying so,
    through the production endpoint (``HostnameEndpoint``) with a resolver
    that answers locally.
    """
    names = _Names(known=["origin.test"])
    proxy = await _start(start_proxy, start_https_proxy, kind, endpoint_factory=_endpoints(names))
    [parsed] = parse_responses(await raw(proxy.port, _connect("nosuch.invalid", 443)))
    assert parsed.status == 502
    assert b"name not resolved" in parsed.body and b"nosuch.invalid" in parsed.body
    assert names.asked == ["nosuch.invalid"]


@pytest.mark.parametrize("kind", KINDS)
@pytest_twisted.ensureDeferred
async def test_connect_timeout_is_504(start_proxy: Any, start_https_proxy: Any,
                                      kind: str) -> None:
    """A connection attempt that times out answers the CONNECT 504 saying so."""
    proxy = await _start(
        start_proxy, start_https_proxy, kind,
        endpoint_factory=lambda scheme, host, port: _Failing(TimeoutError(), delay=0.05))
    [parsed] = parse_responses(await raw(proxy.port, _connect("origin.test", 443)))
    assert parsed.status == 504
    assert b"timed out connecting" in parsed.body


@pytest.mark.parametrize("kind", KINDS)
@pytest_twisted.ensureDeferred
async def test_connected_before_200(origin: Running, start_proxy: Any, start_https_proxy: Any,
                                    kind: str) -> None:
    """
    The origin is connected, and ``server_connected`` has run with its
    record, before the client gets its ``200``: the CONNECT flow carries
    that record.
    """
    seen: list[Server] = []

    class Watch(Addon):
        def server_connected(self, server: Server) -> None:
            seen.append(server)

    ends = Ends()
    names = _Names(known=["origin.test"])
    proxy = await _start(start_proxy, start_https_proxy, kind, addons=[Watch(), ends],
                         endpoint_factory=_endpoints(names))
    answer = await raw(proxy.port, _connect("origin.test", origin.port, close=False),
                       until=lambda data: b"\r\n\r\n" in data)
    assert answer == b"HTTP/1.1 200 Connection established\r\n\r\n"
    [server] = seen
    assert server.address == ("origin.test", origin.port)
    assert server.peername == ("127.0.0.1", origin.port)
    [flow] = ends.flows
    assert flow.server_conn is server


@pytest.mark.parametrize("kind", KINDS)
@pytest_twisted.ensureDeferred
async def test_connect_to_the_proxy_itself_is_508(start_proxy: Any, start_https_proxy: Any,
                                                  kind: str) -> None:
    """A CONNECT whose target is the proxy's own address is refused as a loop."""
    proxy = await _start(start_proxy, start_https_proxy, kind)
    [parsed] = parse_responses(await raw(proxy.port, _connect("127.0.0.1", proxy.port)))
    assert parsed.status == 508
    assert b"tunnel names this proxy itself" in parsed.body


# -- what the tunnel carries ---------------------------------------------------


class _LineOrigin(Protocol):
    """
    A line-based origin: it greets first when its factory has a greeting
    (as SMTP does), and answers each line with the factory's prefix and
    the line.
    """

    factory: _LineOrigins

    def connectionMade(self) -> None:
        self.factory.connections += 1
        self._buffer = b""
        if self.factory.greeting:
            self.transport.write(self.factory.greeting)  # type: ignore[union-attr]

    def dataReceived(self, data: bytes) -> None:
        self._buffer += data
        while b"\n" in self._buffer:
            line, self._buffer = self._buffer.split(b"\n", 1)
            self.factory.lines.append(line + b"\n")
            self.transport.write(self.factory.prefix + line + b"\n")  # type: ignore[union-attr]


class _LineOrigins(Factory):
    protocol = _LineOrigin

    def __init__(self, greeting: bytes = b"", prefix: bytes = b"") -> None:
        self.greeting = greeting
        self.prefix = prefix
        self.lines: list[bytes] = []
        self.connections = 0


@pytest_twisted.async_yield_fixture
async def start_line_origin() -> AsyncIterator[Any]:
    """Start line origins on 127.0.0.1; stopped after the test."""
    ports: list[Any] = []

    def start(**kwargs: Any) -> Running:
        factory = _LineOrigins(**kwargs)
        port = reactor.listenTCP(0, factory, interface="127.0.0.1")
        ports.append(port)
        return Running(port, factory)

    yield start
    for port in ports:
        await port.stopListening()


def _through_tunnel(proxy_port: int, origin_port: int, lines: list[bytes],
                    *, wait_for: bytes = b"", timeout: float = 10.0) -> bytes:
    """
    Blocking: open a tunnel to *origin_port* on a raw socket, read the
    ``200`` and then until *wait_for* has come (if given); then send each of
    *lines* and read until its answer's line end.  Returns everything read
    after the ``200``.
    """
    deadline = time.monotonic() + timeout
    with socket.create_connection(("127.0.0.1", proxy_port), timeout=timeout) as sock:
        sock.sendall(_connect("127.0.0.1", origin_port, close=False))
        received = b""

        def read_until(done: Callable[[bytes], bool]) -> None:
            nonlocal received
            while not done(received) and time.monotonic() < deadline:
                piece = sock.recv(65536)
                if not piece:
                    break
                received += piece

        read_until(lambda data: b"\r\n\r\n" in data)
        head, _, received = received.partition(b"\r\n\r\n")
        assert head == b"HTTP/1.1 200 Connection established", head
        read_until(lambda data: wait_for in data)
        for line in lines:
            expected = received.count(b"\n") + 1
            sock.sendall(line)
            read_until(lambda data, n=expected: data.count(b"\n") >= n)  # type: ignore[misc]
        return received


@needs_curl
@pytest_twisted.ensureDeferred
async def test_plain_http_inside_intercepted_tunnel(origin: Running,
                                                    start_https_proxy: Any) -> None:
    """
    ``curl --proxytunnel`` with an ``http://`` URL speaks plain HTTP inside
    the CONNECT tunnel: the proxy serves it as ``http`` flows for the
    tunnel's host and port, through the hooks, on the connection the
    CONNECT opened (the origin sees one connection for the two requests).
    """
    ends = Ends()
    proxy = await start_https_proxy(addons=[ends])
    url = f"http://127.0.0.1:{origin.port}/echo?plain=1"
    out, err, code = await curl("-p", "-x", f"http://127.0.0.1:{proxy.port}", url, url)
    assert code == 0, err
    assert out.count(b'"target": "/echo?plain=1"') == 2
    [connect, *inner] = ends.flows
    assert connect.request.method == "CONNECT" and connect.response.status_code == 200
    assert [flow.request.url for flow in inner] == [url, url]
    assert all(flow.response.status_code == 200 for flow in inner)
    assert all(flow.server_conn is connect.server_conn for flow in inner)
    assert not inner[0].client_conn.tls_established
    assert origin.factory.connections == 1
    via = dict(origin.factory.received[0].headers).get(b"Via", b"")
    assert b"twistproxy" in via  # the proxy made the request, not a raw relay


@pytest_twisted.ensureDeferred
async def test_raw_tcp_inside_intercepted_tunnel(start_https_proxy: Any,
                                                 start_line_origin: Any) -> None:
    """
    Bytes that are neither TLS nor HTTP (a line protocol) are relayed
    untouched to the origin through the CONNECT's connection, both ways.
    """
    line_origin = start_line_origin(prefix=b"echo: ")
    ends = Ends()
    proxy = await start_https_proxy(addons=[ends])
    lines = [b"hello there\n", b"GET / HTTP/1.1\n", b"\x16\x03\x01 bytes\n"]
    received = await deferToThread(_through_tunnel, proxy.port, line_origin.port, lines)
    assert received == b"".join(b"echo: " + line for line in lines)
    assert line_origin.factory.lines == lines
    assert line_origin.factory.connections == 1
    [connect] = ends.flows  # no flows inside a raw tunnel
    assert connect.request.method == "CONNECT"


@pytest_twisted.ensureDeferred
async def test_server_speaks_first(start_https_proxy: Any, start_line_origin: Any) -> None:
    """
    An origin that greets first (SMTP-like) is relayed raw at once: the
    client gets the greeting without saying anything, long before the
    sniffing wait (an hour here) is over, and the conversation goes on.
    """
    line_origin = start_line_origin(greeting=b"220 mail.test ESMTP\r\n", prefix=b"250 ")
    proxy = await start_https_proxy(limits=Limits(sniff_timeout=3600))
    received = await deferToThread(
        _through_tunnel, proxy.port, line_origin.port, [b"EHLO client.test\r\n"],
        wait_for=b"ESMTP\r\n")
    assert received == b"220 mail.test ESMTP\r\n250 EHLO client.test\r\n"


@pytest_twisted.ensureDeferred
async def test_silent_client_gets_raw_tunnel(start_https_proxy: Any,
                                             start_line_origin: Any) -> None:
    """
    A client that says nothing for ``sniff_timeout`` gets a raw tunnel: what
    it sends after (TLS-looking bytes here) reaches the origin untouched.
    """
    line_origin = start_line_origin(prefix=b"echo: ")
    proxy = await start_https_proxy(limits=Limits(sniff_timeout=0.05))

    def late(proxy_port: int, origin_port: int) -> bytes:
        with socket.create_connection(("127.0.0.1", proxy_port), timeout=10) as sock:
            sock.sendall(_connect("127.0.0.1", origin_port, close=False))
            answer = b""
            while b"\r\n\r\n" not in answer:
                answer += sock.recv(1024)
            time.sleep(0.5)  # well past the wait
            sock.sendall(b"\x16\x03\x01 late\n")
            while answer.count(b"\n") < 3:
                piece = sock.recv(1024)
                if not piece:
                    break
                answer += piece
            return answer

    received = await deferToThread(late, proxy.port, line_origin.port)
    assert received.endswith(b"\r\n\r\necho: \x16\x03\x01 late\n"), received


@needs_curl
@pytest_twisted.ensureDeferred
async def test_ignored_host_not_sniffed(origin: Running, start_https_proxy: Any) -> None:
    """
    A tunnel passed through by policy (``ignore_hosts``) is relayed
    untouched whatever it carries: plain HTTP inside it makes no flows and
    reaches the origin as the client sent it.
    """
    ends = Ends()
    proxy = await start_https_proxy(addons=[ends], ignore_hosts=[rf":{origin.port}$"])
    url = f"http://127.0.0.1:{origin.port}/echo"
    out, err, code = await curl("-p", "-x", f"http://127.0.0.1:{proxy.port}", url)
    assert code == 0, err
    assert json.loads(out)["target"] == "/echo"
    [connect] = ends.flows
    assert connect.request.method == "CONNECT" and connect.passthrough
    assert b"Via" not in dict(origin.factory.received[0].headers)


@needs_curl
@pytest_twisted.ensureDeferred
async def test_connect_connection_carries_tls_with_client_sni(
        pki: Any, start_tls_origin: Any, start_https_proxy: Any) -> None:
    """
    The connection the CONNECT opened carries the first request inside the
    intercepted tunnel, TLS started on it with the client's SNI (not the
    CONNECT host): an origin whose certificate names only that SNI name is
    verified, and sees one connection.
    """
    origin = start_tls_origin(pki.wrong_host)  # valid for elsewhere.example only
    ends = Ends()
    proxy = await start_https_proxy(addons=[ends])
    out, err, code = await curl(
        "-x", f"http://127.0.0.1:{proxy.port}", "--cacert", str(pki.proxy_ca_pem),
        "--connect-to", f"elsewhere.example:443:127.0.0.1:{origin.port}",
        "https://elsewhere.example/echo?sni=1")
    assert code == 0, err
    assert json.loads(out)["target"] == "/echo?sni=1"
    connect, inner = ends.flows
    assert connect.request.host == "127.0.0.1" and inner.client_conn.sni == "elsewhere.example"
    assert inner.server_conn is connect.server_conn
    assert origin.factory.connections == 1


# -- the lazy connection strategy ------------------------------------------------


@needs_curl
@pytest_twisted.ensureDeferred
async def test_lazy_server_replay_offline(pki: Any, start_https_proxy: Any) -> None:
    """
    With the ``lazy`` strategy an intercepted CONNECT to a name that does
    not resolve opens (nothing connects before a request needs it), so
    server replay answers the HTTPS request inside from its recording,
    with no server at all; the name is never looked up.
    """
    recording = HTTPFlow(Client(), Server(), now=lambda: 1.0)
    recording.request = Request.make("GET", "https://offline.invalid/page")
    recording.response = Response.make(200, "from the recording\n")
    names = _Names(known=[])
    proxy = await start_https_proxy(
        addons=[ServerReplay([recording], unmatched="404")], connection_strategy="lazy",
        endpoint_factory=_endpoints(names))
    out, err, code = await curl(
        "-x", f"http://127.0.0.1:{proxy.port}", "--cacert", str(pki.proxy_ca_pem),
        "https://offline.invalid/page")
    assert code == 0, err
    assert out == b"from the recording\n"
    assert names.asked == []


@pytest_twisted.ensureDeferred
async def test_lazy_raw_tunnel(start_https_proxy: Any, start_line_origin: Any) -> None:
    """
    With the ``lazy`` strategy a tunnel carrying neither TLS nor HTTP
    connects to its origin once that is known, and relays both ways.
    """
    line_origin = start_line_origin(prefix=b"echo: ")
    proxy = await start_https_proxy(connection_strategy="lazy")
    received = await deferToThread(_through_tunnel, proxy.port, line_origin.port,
                                   [b"hello\n", b"again\n"])
    assert received == b"echo: hello\necho: again\n"
    assert line_origin.factory.connections == 1
