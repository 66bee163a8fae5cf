"""
Hardening end to end: hostile requests, misbehaving origins, loops and
connection limits, through real sockets on 127.0.0.1.  Each fault gets its
answer (a 4xx, 502/504 with a reason, or an aborted connection), the peer
connection is closed within a second or two, and the proxy keeps serving.
"""

from __future__ import annotations

import socket
from typing import Any

import pytest
import pytest_twisted
from twisted.internet import reactor
from twisted.internet.task import deferLater

from tests.e2e.conftest import Running, parse_responses, raw
from tests.e2e.test_http_e2e import echoed, get
from twistproxy.limits import Limits

pytestmark = pytest.mark.e2e


async def _origin_closes(origin: Running, seconds: float = 2.0) -> None:
    """Wait (bounded) until the origin has no open connection left."""
    for _ in range(int(seconds * 20)):
        if origin.factory.open == 0:
            return
        await deferLater(reactor, 0.05, lambda: None)
    raise AssertionError(f"{origin.factory.open} origin connections still open")


@pytest.mark.parametrize(
    "framing",
    [
        b"Content-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET /x HTTP/1.1\r\n\r\n",
        b"Transfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n0\r\n\r\nGET /x HTTP/1.1\r\n\r\n",
        b"Content-Length: 5\r\nContent-Length: 45\r\n\r\nhelloGET /x HTTP/1.1\r\n\r\n",
        b"Transfer-Encoding: xchunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
        b"Transfer-Encoding: chunked\r\nTransfer-Encoding: identity\r\n\r\n0\r\n\r\n",
    ],
)
@pytest_twisted.ensureDeferred
async def test_smuggling_refused(origin: Running, proxy: Running, framing: bytes) -> None:
    """
    Requests whose body could be read two ways are refused with 400 and a
    closed connection; the origin receives nothing, so no second request
    can be smuggled behind the first.
    """
    request = f"POST http://127.0.0.1:{origin.port}/echo HTTP/1.1\r\n".encode() + framing
    response = await raw(proxy.port, request)
    assert response.startswith(b"HTTP/1.1 400 "), response
    assert response.count(b"HTTP/1.1") == 1
    assert origin.factory.received == []


@pytest_twisted.ensureDeferred
async def test_origin_receives_one_unambiguous_request(origin: Running, proxy: Running) -> None:
    """A chunked upload reaches the origin re-framed with one Content-Length."""
    request = get(origin, method="POST", headers="Transfer-Encoding: chunked\r\n",
                  body=b"3\r\nabc\r\n0\r\n\r\n")
    echoed(await raw(proxy.port, request))
    [received] = origin.factory.received
    framing = [n.lower() for n, _ in received.headers
               if n.lower() in (b"content-length", b"transfer-encoding")]
    assert framing == [b"content-length"] and received.body == b"abc"


@pytest.mark.parametrize(
    "path, reason",
    [
        ("/ambiguous", b"bad response"),
        ("/bigheaders", b"too large"),
        ("/midheaders", b"connection"),
        ("/garbage", b"bad response"),
    ],
)
@pytest_twisted.ensureDeferred
async def test_misbehaving_origin_is_502(origin: Running, proxy: Running, path: str,
                                         reason: bytes) -> None:
    """
    An ambiguous response, oversized response headers, a reset mid-head or
    garbage: 502 with the reason, the origin connection closed, and the
    proxy still serving.
    """
    [parsed] = parse_responses(await raw(proxy.port, get(origin, path)))
    assert parsed.status == 502 and reason in parsed.body, parsed.body
    await _origin_closes(origin)
    echoed(await raw(proxy.port, get(origin)))


@pytest_twisted.ensureDeferred
async def test_silent_origin_is_504(origin: Running, start_proxy: Any) -> None:
    """An origin that never answers is a 504 after ``upstream_timeout``."""
    proxy = await start_proxy(limits=Limits(upstream_timeout=0.5))
    [parsed] = parse_responses(await raw(proxy.port, get(origin, "/hang"), timeout=5))
    assert parsed.status == 504 and b"sent nothing" in parsed.body
    await _origin_closes(origin)


@pytest_twisted.ensureDeferred
async def test_stalled_body_aborts_client(origin: Running, start_proxy: Any) -> None:
    """
    An origin that stalls mid-body: the client connection is aborted (never
    a complete-looking body) and the origin connection closed.
    """
    proxy = await start_proxy(limits=Limits(upstream_timeout=0.5), body_limit=4)
    response = await raw(proxy.port, get(origin, "/stall"), timeout=5)
    head, body = response.split(b"\r\n\r\n", 1)
    assert b"content-length: 1000" in head.lower() and len(body) < 1000
    await _origin_closes(origin)


@pytest_twisted.ensureDeferred
async def test_slowloris_gets_408(start_proxy: Any) -> None:
    """A client dribbling its request head is answered 408 and disconnected."""
    proxy = await start_proxy(limits=Limits(header_timeout=0.5))

    def dribble(port: int) -> bytes:
        import time

        with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
            sock.sendall(b"GET http://example.com/ HTTP/1.1\r\n")
            for _ in range(20):
                try:
                    sock.sendall(b"X")
                except OSError:
                    break
                time.sleep(0.1)
            data = b""
            while piece := sock.recv(4096):
                data += piece
            return data

    from twisted.internet.threads import deferToThread

    answer = await deferToThread(dribble, proxy.port)
    assert answer.startswith(b"HTTP/1.1 408 ")


@pytest_twisted.ensureDeferred
async def test_request_to_the_proxy_itself_is_508(origin: Running, proxy: Running) -> None:
    """
    A request naming the proxy's own address, by IP or by a name resolving
    to it, is refused with 508 instead of looping.
    """
    for host in ("127.0.0.1", "localhost"):
        request = (f"GET http://{host}:{proxy.port}/loop HTTP/1.1\r\n"
                   "Connection: close\r\n\r\n").encode()
        [parsed] = parse_responses(await raw(proxy.port, request, timeout=5))
        assert parsed.status == 508, (host, parsed.body)
    echoed(await raw(proxy.port, get(origin)))


@pytest_twisted.ensureDeferred
async def test_max_connections(origin: Running, start_proxy: Any) -> None:
    """Beyond ``max_connections`` a new connection gets 503 and is closed."""
    proxy = await start_proxy(limits=Limits(max_connections=2))
    held = [socket.create_connection(("127.0.0.1", proxy.port)) for _ in range(2)]
    try:
        await deferLater(reactor, 0.1, lambda: None)
        response = await raw(proxy.port, get(origin), timeout=5)
        assert response.startswith(b"HTTP/1.1 503 ")
    finally:
        for sock in held:
            sock.close()
    await deferLater(reactor, 0.2, lambda: None)
    echoed(await raw(proxy.port, get(origin)))
