"""
Failures end to end: what the client gets when the origin cannot be reached,
fails before answering, or fails mid-response; and what happens upstream when
the client goes away.
"""

from __future__ import annotations

import socket
from typing import Any

import pytest
import pytest_twisted
from twisted.internet import reactor
from twisted.internet.defer import Deferred, fail
from twisted.internet.error import DNSLookupError, TimeoutError
from twisted.internet.interfaces import IStreamClientEndpoint
from twisted.internet.task import deferLater
from twisted.internet.threads import deferToThread
from zope.interface import implementer

from tests.e2e.conftest import Running, parse_responses, raw
from tests.e2e.test_hooks_e2e import Ends
from tests.e2e.test_http_e2e import echoed, get
from tests.fakes import ReadsBodies

pytestmark = pytest.mark.e2e


@implementer(IStreamClientEndpoint)
class _Failing:
    """An endpoint whose connection attempts fail with *error* after *delay*."""

    def __init__(self, error: Exception, delay: float = 0.0) -> None:
        self.error = error
        self.delay = delay

    def connect(self, factory: Any) -> Deferred[Any]:
        if not self.delay:
            return fail(self.error)

        def boom() -> None:
            raise self.error

        return deferLater(reactor, self.delay, boom)


async def _status_and_text(
    proxy: Running, origin_port: int, path: str = "/echo"
) -> tuple[int, bytes]:
    request = (f"GET http://127.0.0.1:{origin_port}{path} HTTP/1.1\r\n"
               "Connection: close\r\n\r\n").encode()
    [parsed] = parse_responses(await raw(proxy.port, request))
    return parsed.status, parsed.body


@pytest_twisted.ensureDeferred
async def test_refused_is_502(start_proxy: Any) -> None:
    """A refused connection is a 502 whose body says so; the flow gets the error."""
    ends = Ends()
    proxy = await start_proxy(addons=[ends])
    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    status, text = await _status_and_text(proxy, port)
    assert status == 502 and b"connection refused" in text
    ends.check_one_each()
    assert "connection refused" in ends.flows[0].error.msg


@pytest_twisted.ensureDeferred
async def test_name_not_resolved_is_502(start_proxy: Any) -> None:
    """An unresolvable name is a 502 saying the name was not resolved."""
    proxy = await start_proxy(
        endpoint_factory=lambda scheme, host, port: _Failing(DNSLookupError(host)))
    status, text = await _status_and_text(proxy, 80)
    assert status == 502 and b"name not resolved" in text


@pytest_twisted.ensureDeferred
async def test_connect_timeout_is_504(start_proxy: Any) -> None:
    """A connection attempt that times out is a 504 saying so."""
    proxy = await start_proxy(
        endpoint_factory=lambda scheme, host, port: _Failing(TimeoutError(), delay=0.05))
    status, text = await _status_and_text(proxy, 80)
    assert status == 504 and b"timed out" in text


@pytest_twisted.ensureDeferred
async def test_reset_before_response_is_502(origin: Running, proxy: Running) -> None:
    """The origin resetting before answering is a 502 naming the reset."""
    status, text = await _status_and_text(proxy, origin.port, "/abort")
    assert status == 502 and b"connection" in text


@pytest_twisted.ensureDeferred
async def test_garbage_is_502(origin: Running, proxy: Running) -> None:
    """A response that is not HTTP is a 502, not relayed."""
    status, text = await _status_and_text(proxy, origin.port, "/garbage")
    assert status == 502 and b"bad response" in text


@pytest_twisted.ensureDeferred
async def test_buffered_response_cut_short_is_502(origin: Running, start_proxy: Any) -> None:
    """
    A response the origin cuts short while the proxy still buffers it (an
    addon reads bodies whole) is a 502: nothing was sent, so the client
    learns the truth.
    """
    proxy = await start_proxy(addons=[ReadsBodies()])
    status, text = await _status_and_text(proxy, origin.port, "/reset")
    assert status == 502 and b"mid-response" in text


@pytest_twisted.ensureDeferred
async def test_streamed_response_cut_short_aborts_client(origin: Running,
                                                        start_proxy: Any) -> None:
    """
    A streamed response cut short by the origin aborts the client
    connection, so the client never sees a complete-looking body.
    """
    ends = Ends()
    proxy = await start_proxy(body_limit=10, addons=[ends])
    response = await raw(proxy.port, get(origin, "/reset"))
    head, body = response.split(b"\r\n\r\n", 1)
    assert b"content-length: 1000" in head.lower()
    assert len(body) < 1000
    ends.check_one_each()
    assert ends.flows[0].error is not None


@pytest_twisted.ensureDeferred
async def test_proxy_keeps_serving_after_failures(origin: Running, proxy: Running) -> None:
    """After resets and garbage, the proxy still answers normally."""
    for path in ("/abort", "/garbage", "/reset"):
        await _status_and_text(proxy, origin.port, path)
    echoed(await raw(proxy.port, get(origin)))


@pytest_twisted.ensureDeferred
async def test_client_gone_mid_download_closes_upstream(origin: Running,
                                                       start_proxy: Any) -> None:
    """
    A client that disconnects mid-response makes the proxy close that
    upstream connection rather than pool it; the flow ends with an error.
    """
    ends = Ends()
    proxy = await start_proxy(addons=[ends])
    request = get(origin, "/bytes/1073741824", close=False)
    await raw(proxy.port, request, until=lambda data: len(data) > 2_000_000)
    for _ in range(40):
        if origin.factory.open == 0:
            break
        await deferLater(reactor, 0.05, lambda: None)
    assert origin.factory.open == 0
    assert proxy.factory.pool.idle_count() == 0
    ends.check_one_each()
    assert ends.flows[0].error.msg == "client disconnected"


@pytest_twisted.ensureDeferred
async def test_client_gone_mid_upload_closes_upstream(origin: Running,
                                                     start_proxy: Any) -> None:
    """A client that disconnects mid-upload makes the proxy close upstream."""
    proxy = await start_proxy(body_limit=1000)

    def upload(port: int) -> None:
        with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
            sock.sendall(get(origin, "/echo", method="POST",
                             headers="Content-Length: 10000000\r\n", close=False))
            sock.sendall(b"z" * 100_000)

    await deferToThread(upload, proxy.port)
    for _ in range(40):
        if origin.factory.connections and origin.factory.open == 0:
            break
        await deferLater(reactor, 0.05, lambda: None)
    assert origin.factory.connections == 1 and origin.factory.open == 0


@pytest_twisted.ensureDeferred
async def test_https_target_goes_over_tls(origin: Running, proxy: Running) -> None:
    """
    ``GET https://...`` is sent over TLS, never in cleartext: against a
    plain-text origin the handshake fails, the client gets a 502 naming
    TLS, and the origin never sees the request.
    """
    request = (f"GET https://127.0.0.1:{origin.port}/echo HTTP/1.1\r\n"
               "Connection: close\r\n\r\n").encode()
    [parsed] = parse_responses(await raw(proxy.port, request))
    assert parsed.status == 502 and b"TLS" in parsed.body
    assert origin.factory.received == []
