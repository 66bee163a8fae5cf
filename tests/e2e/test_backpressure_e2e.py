"""
Backpressure end to end: a slow client slows the origin down, a slow origin
slows the client down, and the proxy's memory stays flat meanwhile.
"""

from __future__ import annotations

import json
import socket
import time

import pytest
import pytest_twisted
from twisted.internet import reactor
from twisted.internet.task import deferLater
from twisted.internet.threads import deferToThread

from tests.e2e import origin as origin_module
from tests.e2e.conftest import Running, parse_responses, rss
from tests.e2e.test_http_e2e import get

pytestmark = pytest.mark.e2e

MB = 1024 * 1024




def _slow_read(port: int, request: bytes, rate: int, seconds: float) -> int:
    """Read at about *rate* bytes per second for *seconds*; return bytes read."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
        sock.sendall(request)
        start = time.monotonic()
        read = 0
        while (elapsed := time.monotonic() - start) < seconds:
            if read > rate * elapsed:
                time.sleep(0.01)
                continue
            piece = sock.recv(16 * 1024)
            if not piece:
                break
            read += len(piece)
        return read


@pytest_twisted.ensureDeferred
async def test_slow_reader_pauses_origin_and_memory_stays_flat(
    origin: Running, proxy: Running
) -> None:
    """
    A client reading a 1 GiB download at 2 MB/s for 4 s: the origin is never
    more than socket buffers ahead of the client, and the proxy's memory
    grows by a few MB at most (without backpressure it would buffer
    hundreds of MB in that time).
    """
    before = rss()
    peak = before
    reading = deferToThread(_slow_read, proxy.port, get(origin, "/bytes/1073741824"),
                            2 * MB, 4.0)
    while not reading.called:
        peak = max(peak, rss())
        await deferLater(reactor, 0.1, lambda: None)
    read = await reading
    assert 6 * MB < read < 10 * MB
    ahead = origin.factory.body_sent - read
    assert ahead < 24 * MB, f"origin ran {ahead / MB:.1f} MB ahead of the client"
    assert peak - before < 16 * MB, f"RSS grew by {(peak - before) / MB:.1f} MB"


def _upload(port: int, request_head: bytes, size: int, early: float) -> tuple[int, bytes]:
    """
    Send *size* body bytes; return how many the socket had accepted after
    *early* seconds, and the response.
    """
    block = b"u" * (256 * 1024)
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(request_head)
        sock.setblocking(False)
        start = time.monotonic()
        sent = 0
        accepted_early = -1
        while sent < size:
            if accepted_early < 0 and time.monotonic() - start > early:
                accepted_early = sent
            try:
                sent += sock.send(block[: size - sent])
            except BlockingIOError:
                time.sleep(0.005)
        if accepted_early < 0:
            accepted_early = sent
        sock.setblocking(True)
        response = b""
        while piece := sock.recv(65536):
            response += piece
        return accepted_early, response


@pytest_twisted.ensureDeferred
async def test_slow_origin_pauses_client_upload(origin: Running, proxy: Running) -> None:
    """
    While the origin does not read, a streamed upload fills only the socket
    buffers: the client cannot push the whole body; once the origin reads
    again, every byte arrives.
    """
    size = 128 * MB
    head = get(origin, "/sink", method="POST", headers=f"Content-Length: {size}\r\n")
    before = rss()
    accepted, response = await deferToThread(
        _upload, proxy.port, head, size, origin_module.SINK_PAUSE * 0.75)
    assert accepted < 48 * MB, f"{accepted / MB:.1f} MB accepted while the origin slept"
    [parsed] = parse_responses(response)
    assert json.loads(parsed.body) == size
    assert rss() - before < 32 * MB
