"""
CONNECT tunnels end to end: the eager connection to the target (a failure
is the CONNECT's own answer, for intercepted and passed-through tunnels
alike), with raw sockets and curl on 127.0.0.1.
"""

from __future__ import annotations

import socket
from collections.abc import Sequence
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
from zope.interface import implementer

from tests.e2e.conftest import Running, parse_responses, raw
from tests.e2e.test_failures_e2e import _Failing
from tests.e2e.test_hooks_e2e import Ends
from twistproxy.flow import Server
from twistproxy.hooks import Addon

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
