"""
Bodies that trickle, end to end: an origin that sends its body a piece at a
time reaches the client piece by piece unless somebody reads bodies whole,
and what streamed is still recorded (the flow a hook sees, the file
``--save`` writes).
"""

from __future__ import annotations

import socket
import time
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.task import deferLater
from twisted.internet.threads import deferToThread

from tests.e2e.conftest import Running, parse_responses
from tests.e2e.origin import OriginFactory
from tests.e2e.test_hooks_e2e import Ends
from tests.e2e.test_twistd import output_contains, start_twistd
from tests.fakes import ReadsBodies
from twistproxy.flowfile import load_flows
from twistproxy.hooks import Addon
from twistproxy.http import HTTPFlow

pytestmark = pytest.mark.e2e


def _timed_exchange(port: int, data: bytes, timeout: float = 15.0) -> list[tuple[float, bytes]]:
    """
    Blocking: send *data* to 127.0.0.1:*port* and read until the response
    is complete (or the connection closes), noting when each read came.
    """
    deadline = time.monotonic() + timeout
    reads: list[tuple[float, bytes]] = []
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(data)
        received = b""
        while time.monotonic() < deadline:
            piece = sock.recv(65536)
            if not piece:
                break
            reads.append((time.time(), piece))
            received += piece
            if any(parsed.complete for parsed in parse_responses(received)):
                break
    return reads


def timed(port: int, data: bytes) -> Deferred[list[tuple[float, bytes]]]:
    """:func:`_timed_exchange` in a thread."""
    return deferToThread(_timed_exchange, port, data)


def request(origin_port: int, path: str) -> bytes:
    """An absolute-form GET for *path* on the origin, closing after."""
    return (f"GET http://127.0.0.1:{origin_port}{path} HTTP/1.1\r\n"
            f"Host: 127.0.0.1:{origin_port}\r\nConnection: close\r\n\r\n").encode()


def first_body_read(reads: list[tuple[float, bytes]], marker: bytes) -> float:
    """When the read that brought *marker* (a body's first piece) came."""
    seen = b""
    for when, piece in reads:
        seen += piece
        if marker in seen:
            return when
    raise AssertionError(f"{marker!r} never came: {seen!r}")


def body_of(reads: list[tuple[float, bytes]]) -> bytes:
    [parsed] = parse_responses(b"".join(piece for _, piece in reads))
    assert parsed.complete
    return parsed.body


TRICKLED = b"".join(b"piece-%d\n" % i for i in range(30))


@pytest_twisted.ensureDeferred
async def test_trickle_streams_and_is_saved(tmp_path: Path) -> None:
    """
    Through ``twistd -n twistproxy --save``, a body trickled in 30 pieces
    100 ms apart reaches the client while the origin is still sending (the
    first piece well before the last is written), the flow log shows the
    time to the first byte, and the saved flow holds the whole body.
    """
    factory = OriginFactory()
    origin: Any = reactor.listenTCP(0, factory, interface="127.0.0.1")
    origin_port = origin.getHost().port
    saved = tmp_path / "flows.jsonl"
    child, port = await start_twistd(tmp_path, "--save", str(saved))
    try:
        reads = await timed(port, request(origin_port, "/trickle/30/100"))
        assert body_of(reads) == TRICKLED
        assert factory.trickled is not None
        # 2.9 s of trickling: the first piece came long before the end.
        assert first_body_read(reads, b"piece-0") < factory.trickled - 2.0
        assert len(reads) >= 10  # piece by piece, not in one go
        await output_contains(child, "/trickle/30/100 -> 200")
        assert "(first byte " in child.output
        for _ in range(50):  # the flow is saved once its response hook ran
            if saved.exists() and saved.read_bytes().endswith(b"\n"):
                break
            await deferLater(reactor, 0.1, lambda: None)
    finally:
        await child.stop()
        await origin.stopListening()
    [flow] = load_flows(saved)
    assert flow.response is not None
    assert flow.response.content == TRICKLED
    assert not flow.response.truncated


@pytest_twisted.ensureDeferred
async def test_buffered_for_a_hook_that_reads_bodies(start_proxy: Any) -> None:
    """
    With an addon whose ``response`` hook reads bodies whole, the same
    trickle reaches the client in one piece, after the origin is done.
    """
    factory = OriginFactory()
    origin: Any = reactor.listenTCP(0, factory, interface="127.0.0.1")
    try:
        proxy = await start_proxy(addons=[ReadsBodies()])
        reads = await timed(proxy.port, request(origin.getHost().port, "/trickle/5/100"))
        assert body_of(reads) == b"".join(b"piece-%d\n" % i for i in range(5))
        assert factory.trickled is not None
        assert first_body_read(reads, b"piece-0") >= factory.trickled
    finally:
        await origin.stopListening()


@pytest_twisted.ensureDeferred
async def test_event_stream_streams_even_for_a_hook(start_proxy: Any) -> None:
    """
    Server-sent events stream although an addon reads bodies whole, and
    that addon's ``response`` hook sees every event, recorded.
    """
    factory = OriginFactory()
    origin: Any = reactor.listenTCP(0, factory, interface="127.0.0.1")
    ends = Ends()
    try:
        proxy: Running = await start_proxy(addons=[ends])
        reads = await timed(proxy.port, request(origin.getHost().port, "/events/10/100"))
        events = b"".join(b"data: %d\n\n" % i for i in range(10))
        assert body_of(reads) == events
        assert factory.trickled is not None
        assert first_body_read(reads, b"data: 0") < factory.trickled - 0.5
    finally:
        await origin.stopListening()
    [flow] = ends.flows
    assert flow.response is not None and flow.response.content == events


@pytest_twisted.ensureDeferred
async def test_stream_transform_and_truncated_record(start_proxy: Any) -> None:
    """
    A callable ``stream`` set by a ``responseheaders`` hook changes each
    piece on its way (the client gets it chunked); with a body limit of 20
    bytes the flow records the first 20 of what was sent, marked truncated,
    with the whole length.
    """
    seen: list[HTTPFlow] = []

    class Shout(Addon):
        stream_bodies = True

        def responseheaders(self, flow: HTTPFlow) -> None:
            flow.response.stream = lambda data: data.upper()  # type: ignore[union-attr]

        def response(self, flow: HTTPFlow) -> None:
            seen.append(flow)

    factory = OriginFactory()
    origin: Any = reactor.listenTCP(0, factory, interface="127.0.0.1")
    try:
        proxy = await start_proxy(addons=[Shout()], body_limit=20)
        reads = await timed(proxy.port, request(origin.getHost().port, "/trickle/5/10"))
    finally:
        await origin.stopListening()
    shouted = b"".join(b"PIECE-%d\n" % i for i in range(5))
    assert body_of(reads) == shouted
    [flow] = seen
    assert flow.response is not None
    assert flow.response.raw_content == shouted[:20]
    assert flow.response.truncated
    assert flow.response.body_size == len(shouted)


@pytest_twisted.ensureDeferred
async def test_whole_in_one_read_is_written_whole(origin: Running, proxy: Running) -> None:
    """
    A streamed response that came whole in the read that brought its head
    (``/chunked`` is written at once) goes out whole, with its length, as
    a buffered one would.
    """
    reads = await timed(proxy.port, request(origin.port, "/chunked"))
    [parsed] = parse_responses(b"".join(piece for _, piece in reads))
    assert parsed.body == b"chunk-0 chunk-1 chunk-2 chunk-3 chunk-4 "
    assert parsed.header(b"content-length") == b"40"
    assert parsed.header(b"transfer-encoding") is None
