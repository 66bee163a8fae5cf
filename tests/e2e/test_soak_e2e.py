"""
A soak test: many client connections, tens of thousands of requests, normal
traffic mixed with failing origins and hostile clients, through proxies on
real sockets; afterwards every file descriptor is closed again and memory is
where it was after the warm-up.

Two proxies share the load: one with the default body limit (bodies up to
1 MiB are buffered) and one with a limit of 64 bytes (nearly every body
streams), so that both ways of relaying, and of failing, are soaked.

Clients are blocking sockets in a few threads (the reactor serves the proxy
and the origin meanwhile); each thread keeps its share of the connections
open and picks one at random for each request, so the proxy serves all of
them at once.  The whole run has a deadline: passing it fails the test.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import socket
import struct
import threading
import time
from collections import Counter
from typing import Any

import httptools
import pytest
import pytest_twisted
from twisted.internet import reactor
from twisted.internet.defer import DeferredList
from twisted.internet.task import LoopingCall, deferLater
from twisted.internet.threads import deferToThreadPool
from twisted.python.threadpool import ThreadPool

from tests.e2e.conftest import Running, rss
from tests.e2e.origin import pattern_bytes

pytestmark = pytest.mark.e2e

MB = 1024 * 1024
REQUESTS = 20_000  # in all, warm-up included
WARM_UP = 1_000  # requests before the memory baseline is taken
CONNECTIONS = 100
THREADS = 5
DEADLINE = 85.0  # seconds for the whole client run
SOCKET_TIMEOUT = 15.0
RSS_SLACK = 64 * MB
STREAMING_LIMIT = 64  # the second proxy's body limit: nearly every body streams
FD_SLACK = 0  # see test_soak: every descriptor the run opened must be closed

LARGEST = pattern_bytes(MB)  # /bytes/N sends LARGEST[:N]
NOISE = random.Random(0).randbytes(256 * 1024)  # POST bodies are slices of it
CHUNKED_BODY = b"".join(b"chunk-%d " % i for i in range(5))

# The mix: (kind, weight).  Normal traffic first, then faulty origins, then
# hostile clients.
MIX = [
    ("get_echo", 30),
    ("post_echo", 20),
    ("get_bytes", 10),
    ("get_chunked", 12),
    ("reset", 2),
    ("abort", 3),
    ("garbage", 3),
    ("refused", 3),
    ("drop_mid_response", 2),
    ("hostile", 15),
]




def _fds() -> int:
    """How many file descriptors this process has open."""
    return len(os.listdir("/proc/self/fd"))


class Response:
    """One response read from a socket, through httptools callbacks."""

    def __init__(self) -> None:
        self.status = 0
        self.headers: list[tuple[bytes, bytes]] = []
        self.pieces: list[bytes] = []
        self.messages = 0
        self.headers_done = False
        self.complete = False
        self.keep_alive = False
        self.closed = False  # the connection ended before the response did
        self.parser: Any = None

    @property
    def body(self) -> bytes:
        return b"".join(self.pieces)

    def on_message_begin(self) -> None:
        self.messages += 1

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers.append((name, value))

    def on_headers_complete(self) -> None:
        self.headers_done = True
        # Asked here: once the message is complete, llhttp has forgotten.
        self.status = self.parser.get_status_code()
        self.keep_alive = self.parser.should_keep_alive()

    def on_body(self, body: bytes) -> None:
        self.pieces.append(body)

    def on_message_complete(self) -> None:
        self.complete = True


class SoakError(AssertionError):
    """A response that breaks the rules of its kind of request."""


def read_response(sock: socket.socket) -> Response:
    """
    Read one response from *sock*; it ends complete, or with the connection
    (``closed``).  Bytes after the end of the response are an error: only
    one request is in flight.
    """
    response = Response()
    parser = response.parser = httptools.HttpResponseParser(response)
    while not response.complete:
        try:
            piece = sock.recv(256 * 1024)
        except ConnectionResetError:
            piece = b""
        if not piece:
            response.closed = True
            break
        parser.feed_data(piece)
        if response.messages > 1:
            raise SoakError(f"bytes after a complete response: {piece[-200:]!r}")
    return response


class Client:
    """
    One thread's clients: its connections, its random choices and its
    results.  Everything here runs in the thread.
    """

    def __init__(self, index: int, proxy_port: int, origin_port: int, closed_port: int,
                 plan: list[str], progress: Progress) -> None:
        self.random = random.Random(index)
        self.proxy_port = proxy_port
        self.origin = f"http://127.0.0.1:{origin_port}"
        self.host = f"127.0.0.1:{origin_port}"
        self.closed = f"http://127.0.0.1:{closed_port}"
        self.plan = plan
        self.progress = progress
        self.slots: list[socket.socket | None] = [None] * (CONNECTIONS // THREADS)
        self.counts: Counter[str] = Counter()
        self.errors: list[str] = []

    # -- connections ---------------------------------------------------------

    def _connect(self) -> socket.socket:
        sock = socket.create_connection(("127.0.0.1", self.proxy_port), timeout=SOCKET_TIMEOUT)
        self.counts["connections opened"] += 1
        return sock

    def _take(self) -> tuple[int, socket.socket]:
        slot = self.random.randrange(len(self.slots))
        sock = self.slots[slot]
        if sock is None:
            sock = self.slots[slot] = self._connect()
        return slot, sock

    def _discard(self, slot: int, *, reset: bool = False) -> None:
        sock, self.slots[slot] = self.slots[slot], None
        if sock is not None:
            if reset:  # an abortive close: RST instead of FIN
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            sock.close()

    def close_all(self) -> None:
        for slot in range(len(self.slots)):
            self._discard(slot)

    def _exchange(self, data: bytes, *, keep: bool = True) -> Response:
        """
        Send *data* on a random connection and read the response; with
        *keep*, a connection that closes without an answer is an error.
        """
        slot, sock = self._take()
        try:
            sock.sendall(data)
            response = read_response(sock)
        except BaseException:
            self._discard(slot)
            raise
        if response.closed and not response.headers_done and keep:
            raise SoakError(f"a kept-alive connection closed without an answer to {data[:80]!r}")
        if not response.complete or not response.keep_alive:
            self._discard(slot)
        return response

    def _request(self, method: str, target: str, body: bytes = b"", headers: str = "") -> bytes:
        authority = target.split("/")[2]  # the Host must agree with the target
        head = f"{method} {target} HTTP/1.1\r\nHost: {authority}\r\n{headers}"
        if body or method == "POST":
            head += f"Content-Length: {len(body)}\r\n"
        return (head + "\r\n").encode("latin-1") + body

    # -- the run ---------------------------------------------------------------

    def run(self) -> None:
        for kind in self.plan:
            if self.progress.stop.is_set():
                return
            try:
                getattr(self, "do_" + kind)()
            except (SoakError, OSError, httptools.HttpParserError, ValueError) as e:
                self.errors.append(f"{kind}: {type(e).__name__}: {e}"[:500])
            self.counts[kind] += 1
            self.progress.done()
        self.close_all()

    # normal traffic: complete, and exactly what the origin sent or received

    def do_get_echo(self) -> None:
        query = f"q={self.random.randrange(10**9)}&r=%20x"
        response = self._exchange(self._request("GET", f"{self.origin}/echo?{query}"))
        report = self._report(response)
        if report["target"] != f"/echo?{query}" or report["method"] != "GET":
            raise SoakError(f"wrong echo: {report}")

    def do_post_echo(self) -> None:
        # Mostly small bodies, some up to 200 KiB.
        if self.random.random() < 0.7:
            size = self.random.randrange(0, 4096)
        else:
            size = self.random.randrange(4096, 200 * 1024)
        start = self.random.randrange(len(NOISE) - size + 1)
        body = NOISE[start:start + size]
        response = self._exchange(self._request("POST", f"{self.origin}/echo", body))
        report = self._report(response)
        if report["length"] != size or report["sha256"] != hashlib.sha256(body).hexdigest():
            raise SoakError(f"body of {size} bytes arrived as {report['length']} bytes "
                            f"with another checksum")

    def do_get_bytes(self) -> None:
        size = self.random.choice([self.random.randrange(0, 64 * 1024),
                                   self.random.randrange(0, MB + 1)])
        response = self._exchange(self._request("GET", f"{self.origin}/bytes/{size}"))
        self._complete_200(response)
        if response.body != LARGEST[:size]:
            raise SoakError(f"/bytes/{size}: {len(response.body)} bytes, not the pattern")

    def do_get_chunked(self) -> None:
        response = self._exchange(self._request("GET", f"{self.origin}/chunked"))
        self._complete_200(response)
        if response.body != CHUNKED_BODY:
            raise SoakError(f"/chunked: {response.body!r}")

    def _complete_200(self, response: Response) -> None:
        if not response.complete or response.status != 200:
            raise SoakError(f"status {response.status}, complete={response.complete}, "
                            f"body {response.body[:200]!r}")

    def _report(self, response: Response) -> dict[str, Any]:
        self._complete_200(response)
        return json.loads(response.body)  # type: ignore[no-any-return]

    # faulty origins: 502/504, or an aborted connection; never a 200 that
    # looks complete

    def _faulty(self, target: str) -> None:
        response = self._exchange(self._request("GET", target), keep=False)
        if response.complete and response.status not in (502, 504):
            raise SoakError(f"{target}: complete response with status {response.status}")
        if not response.complete:
            self.counts["faulty aborted"] += 1

    def do_reset(self) -> None:
        self._faulty(f"{self.origin}/reset")

    def do_abort(self) -> None:
        self._faulty(f"{self.origin}/abort")

    def do_garbage(self) -> None:
        self._faulty(f"{self.origin}/garbage")

    def do_refused(self) -> None:
        self._faulty(f"{self.closed}/echo")

    def do_drop_mid_response(self) -> None:
        """Ask for a large body, read a little of it, and go away."""
        size = self.random.choice([512 * 1024, 4 * MB, 64 * MB])
        slot, sock = self._take()
        try:
            sock.sendall(self._request("GET", f"{self.origin}/bytes/{size}"))
            want = self.random.randrange(1, 64 * 1024)
            got = 0
            while got < want:
                piece = sock.recv(64 * 1024)
                if not piece:
                    raise SoakError("closed before the body")
                got += len(piece)
        finally:
            self._discard(slot, reset=self.random.random() < 0.5)

    # hostile clients: a 4xx or a close, then the connection is discarded

    def hostile_inputs(self) -> list[bytes]:
        origin, host = self.origin, self.host
        return [
            b"GARBAGE\r\n\r\n",
            f"GET {origin}/echo HTTP/1.1 extra\r\nHost: {host}\r\n\r\n".encode(),
            f"GET  {origin}/echo HTTP/1.1\r\nHost: {host}\r\n\r\n".encode(),
            f"GET {origin}/echo HTTP/9.9\r\nHost: {host}\r\n\r\n".encode(),
            f"GET {origin}/echo\r\n\r\n".encode(),
            f"GET {origin}/e\x00cho HTTP/1.1\r\n\r\n".encode(),
            # conflicting or broken framing
            f"POST {origin}/echo HTTP/1.1\r\nHost: {host}\r\nContent-Length: 5\r\n"
            f"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET /smuggled HTTP/1.1\r\n\r\n".encode(),
            f"POST {origin}/echo HTTP/1.1\r\nHost: {host}\r\nContent-Length: 5\r\n"
            f"Content-Length: 6\r\n\r\nabcdef".encode(),
            f"POST {origin}/echo HTTP/1.1\r\nHost: {host}\r\nContent-Length: -5\r\n\r\n".encode(),
            f"POST {origin}/echo HTTP/1.1\r\nHost: {host}\r\n"
            f"Transfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n".encode(),
            f"POST {origin}/echo HTTP/1.1\r\nHost: {host}\r\nTransfer-Encoding: chunked\r\n\r\n"
            f"zz\r\nabc\r\n0\r\n\r\n".encode(),
            f"POST {origin}/echo HTTP/1.1\r\nHost: {host}\r\nTransfer-Encoding: chunked\r\n\r\n"
            f"ffffffffffffffffffff\r\nabc\r\n".encode(),
            # odd header lines
            f"GET {origin}/echo HTTP/1.1\r\nHost: {host}\r\nX-A: 1\r\n folded\r\n\r\n".encode(),
            f"GET {origin}/echo HTTP/1.1\nHost: {host}\n\n".encode(),
            f"GET {origin}/echo HTTP/1.1\r\nHost: {host}\r\nX-A : 1\r\n\r\n".encode(),
            f"GET {origin}/echo HTTP/1.1\r\nHost: {host}\r\nX-A: a\x00b\r\n\r\n".encode(),
            f"GET {origin}/echo HTTP/1.1\r\nHost: elsewhere.example\r\n\r\n".encode(),
            # huge heads
            f"GET {origin}/echo HTTP/1.1\r\nHost: {host}\r\nX-Big: {'a' * 100_000}\r\n\r\n"
            .encode(),
            (f"GET {origin}/echo HTTP/1.1\r\nHost: {host}\r\n"
             + "".join(f"X-{i}: {i}\r\n" for i in range(2000)) + "\r\n").encode(),
            f"GET {origin}/{'a' * 70_000} HTTP/1.1\r\nHost: {host}\r\n\r\n".encode(),
        ]

    def do_hostile(self) -> None:
        data = self.random.choice(self.hostile_inputs())
        slot, sock = self._take()
        try:
            try:
                sock.sendall(data)
            except (BrokenPipeError, ConnectionResetError):
                return  # refused while still sending: a close
            response = read_response(sock)
        finally:
            self._discard(slot)
        if response.headers_done and not 400 <= response.status < 500:
            raise SoakError(f"{data[:100]!r} answered {response.status}")
        self.counts["hostile answered" if response.headers_done else "hostile closed"] += 1


class Progress:
    """Requests done in all threads; takes the memory baseline after the warm-up."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.count = 0
        self.baseline_rss: int | None = None
        self.stop = threading.Event()

    def done(self) -> None:
        with self.lock:
            self.count += 1
            if self.count == WARM_UP:
                self.baseline_rss = rss()


def _plan(total: int, seed: int) -> list[str]:
    kinds = [kind for kind, _ in MIX]
    weights = [weight for _, weight in MIX]
    return random.Random(seed).choices(kinds, weights, k=total)


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]  # type: ignore[no-any-return]


@pytest_twisted.ensureDeferred
async def test_soak(origin: Running, start_proxy: Any) -> None:
    """
    100 connections and 20,000 requests: normal ones all complete with the
    right bytes, faulty ones 502/504 or aborted, hostile ones 4xx or closed.
    Afterwards the process's descriptors are back to where they started: the
    listeners and the reactor's own are opened before the count, and every
    socket opened since (the clients', both sides of the proxy's and the
    origin's) is closed, so no slack is allowed.  RSS is within 64 MB of
    the baseline taken after the warm-up.
    """
    proxies = [await start_proxy(), await start_proxy(body_limit=STREAMING_LIMIT)]
    closed_port = _closed_port()
    pool = ThreadPool(minthreads=THREADS, maxthreads=THREADS, name="soak-clients")
    framings: Counter[str] = Counter()

    def drain_origin() -> None:
        # The origin keeps what it received: check the framing, then let go
        # of the bodies so they do not count against the proxy's memory.
        received, origin.factory.received[:] = list(origin.factory.received), []
        for request in received:
            names = [name.lower() for name, _ in request.headers]
            framing = names.count(b"content-length") + names.count(b"transfer-encoding")
            framings["two framings" if framing > 1 else "one framing or none"] += 1

    peak = [0]

    def sample() -> None:
        drain_origin()
        peak[0] = max(peak[0], rss())

    sampler = LoopingCall(sample)
    sampler.start(0.25)
    fds_before = _fds()
    progress = Progress()
    per_thread = REQUESTS // THREADS
    clients = [
        Client(i, proxies[i % 2].port, origin.port, closed_port, _plan(per_thread, i), progress)
        for i in range(THREADS)
    ]
    pool.start()
    started = time.monotonic()
    try:
        runs = DeferredList(
            [deferToThreadPool(reactor, pool, client.run) for client in clients],
            consumeErrors=True,
        )
        runs.addTimeout(DEADLINE, reactor)
        try:
            results = await runs
        except Exception:
            progress.stop.set()
            raise AssertionError(
                f"the soak missed its deadline of {DEADLINE:.0f} s after "
                f"{progress.count} of {REQUESTS} requests"
            ) from None
    finally:
        progress.stop.set()
        pool.stop()
    elapsed = time.monotonic() - started
    for ok, result in results:
        assert ok, result
    counts: Counter[str] = sum((client.counts for client in clients), Counter())
    errors = [error for client in clients for error in client.errors]
    print(f"\nsoak: {progress.count} requests in {elapsed:.1f} s "
          f"({progress.count / elapsed:.0f}/s); {dict(sorted(counts.items()))}")
    assert not errors, f"{len(errors)} bad exchanges, first ones: {errors[:10]}"
    assert progress.count == per_thread * THREADS

    # Close the pool's idle connections and wait for every socket to close.
    for proxy in proxies:
        proxy.factory.pool.close()
    for _ in range(100):
        if _fds() <= fds_before + FD_SLACK:
            break
        await deferLater(reactor, 0.05, lambda: None)
    sampler.stop()
    drain_origin()
    fds_after = _fds()
    rss_after = rss()
    assert progress.baseline_rss is not None
    print(f"soak: fds {fds_before} -> {fds_after}; RSS after warm-up "
          f"{progress.baseline_rss / MB:.0f} MB, peak {peak[0] / MB:.0f} MB, "
          f"end {rss_after / MB:.0f} MB; origin saw {dict(framings)}")
    assert fds_after <= fds_before + FD_SLACK, f"{fds_after - fds_before} descriptors leaked"
    assert framings["two framings"] == 0
    assert rss_after - progress.baseline_rss < RSS_SLACK, (
        f"RSS grew by {(rss_after - progress.baseline_rss) / MB:.0f} MB after the warm-up"
    )
