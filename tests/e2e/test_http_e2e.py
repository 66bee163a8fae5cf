"""
The HTTP path end to end: a client on a real socket, the proxy, and an
origin on 127.0.0.1, checking what each side receives byte for byte.
"""

from __future__ import annotations

import hashlib
import json
import socket
from typing import Any

import pytest
import pytest_twisted
from twisted.internet import reactor
from twisted.internet.defer import Deferred, gatherResults
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.protocol import Protocol

from tests.e2e.conftest import Running, curl, needs_curl, parse_responses, raw
from tests.e2e.origin import OriginFactory, pattern_bytes
from tests.fakes import ReadsBodies
from twistproxy.client import PoolKey

pytestmark = pytest.mark.e2e


def get(origin: Running, path: str = "/echo", *, method: str = "GET", headers: str = "",
        body: bytes = b"", close: bool = True) -> bytes:
    """A raw absolute-form request for *path* on *origin*."""
    extra = "Connection: close\r\n" if close else ""
    return (
        f"{method} http://127.0.0.1:{origin.port}{path} HTTP/1.1\r\n"
        f"Host: 127.0.0.1:{origin.port}\r\n{headers}{extra}\r\n"
    ).encode() + body


def echoed(response: bytes) -> dict[str, Any]:
    """The origin's /echo report in a single raw response."""
    [parsed] = parse_responses(response)
    assert parsed.status == 200, response
    return json.loads(parsed.body)  # type: ignore[no-any-return]


# -- request forwarding -------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_origin_form_and_host_from_uri(origin: Running, proxy: Running) -> None:
    """
    The origin receives an origin-form request whose Host header comes from
    the absolute-form URI when the client sent none.
    """
    request = (
        f"GET http://127.0.0.1:{origin.port}/echo?a=1&b=2 HTTP/1.1\r\n"
        "Connection: close\r\n\r\n"
    ).encode()
    report = echoed(await raw(proxy.port, request))
    assert report["target"] == "/echo?a=1&b=2"
    assert report["headers"][0] == ["Host", f"127.0.0.1:{origin.port}"]


@pytest_twisted.ensureDeferred
async def test_host_contradicting_uri_is_400(origin: Running, proxy: Running) -> None:
    """
    A Host header naming another host than the absolute-form URI is refused
    (two parsers must not disagree about where a request goes); a matching
    one, spelt with the default port, is fine.
    """
    contradicting = (f"GET http://127.0.0.1:{origin.port}/echo HTTP/1.1\r\n"
                     "Host: elsewhere.example\r\nConnection: close\r\n\r\n").encode()
    [parsed] = parse_responses(await raw(proxy.port, contradicting))
    assert parsed.status == 400 and b"Host header" in parsed.body
    assert origin.factory.received == []
    matching = (f"GET http://LOCALHOST:{origin.port}/echo HTTP/1.1\r\n"
                f"Host: localhost:{origin.port}\r\nConnection: close\r\n\r\n").encode()
    assert echoed(await raw(proxy.port, matching))["target"] == "/echo"


@pytest_twisted.ensureDeferred
async def test_hop_by_hop_removed_order_and_case_kept(origin: Running, proxy: Running) -> None:
    """
    Hop-by-hop fields (Connection and what it names, Keep-Alive,
    Proxy-Connection, Proxy-Authorization, TE, Trailer, Upgrade) are removed;
    the others arrive in order, in their original case, repeats kept.
    """
    headers = (
        "X-First: 1\r\n"
        "Connection: close, X-Drop-Me\r\n"
        "x-lower-case: kept\r\n"
        "X-Drop-Me: secret\r\n"
        "Keep-Alive: timeout=5\r\n"
        "Proxy-Connection: keep-alive\r\n"
        "Proxy-Authorization: Basic dTpw\r\n"
        "TE: trailers\r\n"
        "Trailer: X-Sum\r\n"
        "Upgrade: websocket\r\n"
        "X-Repeat: a\r\n"
        "X-MiXeD-CaSe: yes\r\n"
        "X-Repeat: b\r\n"
    )
    report = echoed(await raw(proxy.port, get(origin, headers=headers, close=False)))
    names = [name for name, _ in report["headers"]]
    assert names == ["Host", "X-First", "x-lower-case", "X-Repeat", "X-MiXeD-CaSe",
                     "X-Repeat", "Via"]
    assert [v for n, v in report["headers"] if n == "X-Repeat"] == ["a", "b"]


@pytest_twisted.ensureDeferred
async def test_response_headers_order_and_case(origin: Running, proxy: Running) -> None:
    """The client gets the origin's response fields in order and case."""
    [parsed] = parse_responses(await raw(proxy.port, get(origin)))
    assert parsed.names()[:3] == [b"Content-Type", b"X-Origin-Case", b"content-length"]


@pytest_twisted.ensureDeferred
async def test_ipv6_literal(proxy: Running) -> None:
    """A request to an IPv6 literal origin (``http://[::1]:port/``) is proxied."""
    from twisted.internet import reactor

    try:
        port = reactor.listenTCP(0, OriginFactory(), interface="::1")
    except Exception:  # pragma: no cover - a machine without IPv6 loopback
        pytest.skip("no IPv6 loopback here")
    try:
        number = port.getHost().port
        request = (f"GET http://[::1]:{number}/echo HTTP/1.1\r\n"
                   "Connection: close\r\n\r\n").encode()
        report = echoed(await raw(proxy.port, request))
        assert ["Host", f"[::1]:{number}"] in report["headers"]
    finally:
        await port.stopListening()


@pytest_twisted.ensureDeferred
async def test_bad_target_is_400_with_reason(proxy: Running) -> None:
    """An origin-form request to the proxy is answered 400 with a reason."""
    response = await raw(proxy.port, b"GET /echo HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    [parsed] = parse_responses(response)
    assert parsed.status == 400
    assert b"absolute URI" in parsed.body


# -- bodies and framing ---------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_content_length_request_body(origin: Running, proxy: Running) -> None:
    """A Content-Length request body arrives whole and unchanged."""
    body = bytes(range(256)) * 40
    request = get(origin, method="POST", headers=f"Content-Length: {len(body)}\r\n", body=body)
    report = echoed(await raw(proxy.port, request))
    assert report["length"] == len(body)
    assert report["sha256"] == hashlib.sha256(body).hexdigest()


@pytest_twisted.ensureDeferred
async def test_chunked_request_body(origin: Running, proxy: Running) -> None:
    """A chunked request body is de-chunked and re-framed unambiguously."""
    chunks = b"5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n"
    request = get(origin, method="POST", headers="Transfer-Encoding: chunked\r\n", body=chunks)
    report = echoed(await raw(proxy.port, request))
    assert report["length"] == 11
    assert report["sha256"] == hashlib.sha256(b"hello world").hexdigest()
    framing = [n.lower() for n, _ in report["headers"]
               if n.lower() in ("content-length", "transfer-encoding")]
    assert framing == ["content-length"]


@pytest_twisted.ensureDeferred
async def test_chunked_response(origin: Running, proxy: Running) -> None:
    """A chunked response reaches the client whole."""
    [parsed] = parse_responses(await raw(proxy.port, get(origin, "/chunked")))
    assert parsed.complete
    assert parsed.body == b"chunk-0 chunk-1 chunk-2 chunk-3 chunk-4 "


@pytest_twisted.ensureDeferred
async def test_close_delimited_response(origin: Running, start_proxy: Any) -> None:
    """
    A body the origin ends by closing is relayed with explicit framing:
    chunked as it streams, or its length once buffered (for an addon that
    reads bodies whole); the client's connection stays open either way.
    """
    for addons, framing in (([], b"transfer-encoding"), ([ReadsBodies()], b"content-length")):
        proxy = await start_proxy(addons=addons)

        def complete(response: bytes) -> bool:
            return any(parsed.complete for parsed in parse_responses(response))

        [parsed] = parse_responses(await raw(proxy.port, get(origin, "/close", close=False),
                                             until=complete))
        assert parsed.complete
        assert parsed.body == b"delimited by close"
        assert parsed.header(framing) is not None


@pytest_twisted.ensureDeferred
async def test_head_has_no_body(origin: Running, proxy: Running) -> None:
    """
    A HEAD response keeps the origin's Content-Length but carries no body;
    the next request on the connection is answered normally.
    """
    data = get(origin, method="HEAD", close=False) + get(origin, "/chunked")
    response = await raw(proxy.port, data)
    head, rest = response.split(b"\r\n\r\n", 1)
    assert head.startswith(b"HTTP/1.1 200")
    assert b"content-length: " in head.lower()
    [parsed] = parse_responses(rest)
    assert parsed.body == b"chunk-0 chunk-1 chunk-2 chunk-3 chunk-4 "


@pytest.mark.parametrize("status", [204, 304])
@pytest_twisted.ensureDeferred
async def test_bodiless_statuses(origin: Running, proxy: Running, status: int) -> None:
    """204 and 304 responses carry no body and no added framing."""
    data = get(origin, f"/status/{status}", close=False) + get(origin, "/chunked")
    response = await raw(proxy.port, data)
    head, rest = response.split(b"\r\n\r\n", 1)
    assert head.startswith(b"HTTP/1.1 %d" % status)
    assert b"content-length" not in head.lower()
    assert b"transfer-encoding" not in head.lower()
    assert parse_responses(rest)[0].body.startswith(b"chunk-0")


@pytest_twisted.ensureDeferred
async def test_interim_responses_relayed(origin: Running, start_proxy: Any) -> None:
    """
    An origin's ``103 Early Hints`` reaches the client, with its fields,
    before the final response; its ``100 Continue`` does not (the client
    did not ask; when one does, the proxy answers it).  The flow records both.
    """
    from tests.e2e.test_hooks_e2e import Ends

    ends = Ends()
    proxy = await start_proxy(addons=[ends])
    response = await raw(proxy.port, get(origin, "/interim"))
    early, _, final = response.partition(b"\r\n\r\n")
    assert early == b"HTTP/1.1 103 Early Hints\r\nLink: </a.css>", response
    [parsed] = parse_responses(final)
    assert (parsed.status, parsed.body) == (200, b"final")
    [flow] = ends.flows
    assert [r.status_code for r in flow.interim] == [100, 103]


@pytest_twisted.ensureDeferred
async def test_expect_100_continue(origin: Running, proxy: Running) -> None:
    """
    A client sending ``Expect: 100-continue`` gets ``100 Continue`` before
    sending its body, then the final response; Expect is not forwarded.
    """

    def talk(port: int) -> tuple[bytes, bytes]:
        with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
            sock.sendall(get(origin, method="POST",
                             headers="Content-Length: 4\r\nExpect: 100-continue\r\n"))
            interim = sock.recv(1024)
            sock.sendall(b"data")
            rest = b""
            while piece := sock.recv(65536):
                rest += piece
            return interim, rest

    from twisted.internet.threads import deferToThread

    interim, rest = await deferToThread(talk, proxy.port)
    assert interim == b"HTTP/1.1 100 Continue\r\n\r\n"
    report = echoed(rest)
    assert report["length"] == 4
    assert all(name.lower() != "expect" for name, _ in report["headers"])


@needs_curl
@pytest_twisted.ensureDeferred
async def test_large_download_streams_intact(origin: Running, start_proxy: Any) -> None:
    """A body above the buffering limit streams through byte for byte (curl)."""
    proxy = await start_proxy(body_limit=64 * 1024)
    size = 8 * 1024 * 1024 + 3
    out, err, code = await curl("-x", f"http://127.0.0.1:{proxy.port}",
                                f"http://127.0.0.1:{origin.port}/bytes/{size}")
    assert code == 0, err
    assert hashlib.sha256(out).digest() == hashlib.sha256(pattern_bytes(size)).digest()


@needs_curl
@pytest_twisted.ensureDeferred
async def test_large_upload_streams_intact(origin: Running, start_proxy: Any,
                                           tmp_path: Any) -> None:
    """A request body above the limit streams to the origin intact (curl)."""
    proxy = await start_proxy(body_limit=64 * 1024)
    body = pattern_bytes(3 * 1024 * 1024 + 11)
    upload = tmp_path / "upload.bin"
    upload.write_bytes(body)
    for extra in ([], ["-H", "Transfer-Encoding: chunked"]):
        out, err, code = await curl("-x", f"http://127.0.0.1:{proxy.port}", "--data-binary",
                                    f"@{upload}", *extra,
                                    f"http://127.0.0.1:{origin.port}/echo")
        assert code == 0, err
        report = json.loads(out)
        assert report["length"] == len(body)
        assert report["sha256"] == hashlib.sha256(body).hexdigest()


# -- connections ----------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_pipelined_requests_answered_in_order(origin: Running, proxy: Running) -> None:
    """Three pipelined requests are answered in order on one connection."""
    data = (get(origin, "/echo?n=1", close=False) + get(origin, "/chunked", close=False)
            + get(origin, "/echo?n=3"))
    parsed = parse_responses(await raw(proxy.port, data))
    assert [p.status for p in parsed] == [200, 200, 200]
    assert json.loads(parsed[0].body)["target"] == "/echo?n=1"
    assert parsed[1].body.startswith(b"chunk-0")
    assert json.loads(parsed[2].body)["target"] == "/echo?n=3"


@pytest_twisted.ensureDeferred
async def test_upstream_connections_are_reused(origin: Running, proxy: Running) -> None:
    """Sequential requests from different clients share one upstream connection."""
    for _ in range(4):
        echoed(await raw(proxy.port, get(origin)))
    assert origin.factory.connections == 1
    assert proxy.factory.pool.idle_count(PoolKey("http", "127.0.0.1", origin.port)) == 1


class _KeepAliveClient(Protocol):
    """A keep-alive client asking one request at a time for an /echo report."""

    def __init__(self) -> None:
        self.received = b""
        self.answered: Deferred[bytes] | None = None

    def ask(self, request: bytes) -> Deferred[bytes]:
        """Send *request*; fires with the whole response."""
        self.received = b""
        self.answered = Deferred()
        self.transport.write(request)  # type: ignore[union-attr]
        return self.answered

    def dataReceived(self, data: bytes) -> None:
        self.received += data
        if self.received.endswith(b"}") and self.answered is not None:
            answered, self.answered = self.answered, None
            answered.callback(self.received)


@pytest_twisted.ensureDeferred
async def test_busy_keep_alive_clients_keep_their_upstream_connections(
        origin: Running, proxy: Running) -> None:
    """
    120 keep-alive clients asking in lockstep (every answer in before the
    next round) go on over the upstream connections their first round
    opened: all 120 are idle at once between rounds, and none is closed
    and reopened (a pool capped at 100 idle connections closed 20 a round).
    """
    endpoint = TCP4ClientEndpoint(reactor, "127.0.0.1", proxy.port)
    clients = [await connectProtocol(endpoint, _KeepAliveClient()) for _ in range(120)]
    try:
        for round_ in range(4):
            answers = await gatherResults([
                client.ask(get(origin, f"/echo?round={round_}&client={i}", close=False))
                for i, client in enumerate(clients)])
            assert [echoed(a)["target"] for a in answers] == [
                f"/echo?round={round_}&client={i}" for i in range(120)]
    finally:
        for client in clients:
            client.transport.loseConnection()  # type: ignore[union-attr]
    assert origin.factory.connections == 120
    assert proxy.factory.pool.idle_count(PoolKey("http", "127.0.0.1", origin.port)) == 120


@pytest_twisted.ensureDeferred
async def test_client_keep_alive(origin: Running, proxy: Running) -> None:
    """A client's keep-alive connection serves several requests."""

    def talk(port: int) -> list[bytes]:
        answers = []
        with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
            for i in range(3):
                sock.sendall(get(origin, f"/echo?i={i}", close=False))
                data = b""
                while not data.endswith(b"}"):
                    data += sock.recv(65536)
                answers.append(data)
        return answers

    from twisted.internet.threads import deferToThread

    answers = await deferToThread(talk, proxy.port)
    assert [echoed(a)["target"] for a in answers] == ["/echo?i=0", "/echo?i=1", "/echo?i=2"]


@pytest_twisted.ensureDeferred
async def test_http10_client_gets_close_delimited_stream(origin: Running,
                                                          start_proxy: Any) -> None:
    """
    An HTTP/1.0 client streaming a chunked origin response gets a body
    delimited by the connection's end, never chunked coding it cannot read.
    """
    proxy = await start_proxy(body_limit=4)
    request = f"GET http://127.0.0.1:{origin.port}/chunked HTTP/1.0\r\n\r\n".encode()
    response = await raw(proxy.port, request)
    head, body = response.split(b"\r\n\r\n", 1)
    assert b"transfer-encoding" not in head.lower()
    assert body == b"chunk-0 chunk-1 chunk-2 chunk-3 chunk-4 "


@pytest_twisted.ensureDeferred
async def test_twisted_agent_through_proxy(origin: Running, proxy: Running) -> None:
    """A Twisted client (``ProxyAgent``) gets its POST answered through the proxy."""
    from io import BytesIO

    from twisted.internet import reactor
    from twisted.internet.defer import Deferred
    from twisted.internet.endpoints import TCP4ClientEndpoint
    from twisted.internet.protocol import Protocol
    from twisted.web.client import FileBodyProducer, ProxyAgent

    class Collect(Protocol):
        # readBody warns about ProxyAgent's transport (no abortConnection).
        def __init__(self) -> None:
            self.data = b""
            self.done: Deferred[bytes] = Deferred()

        def dataReceived(self, data: bytes) -> None:
            self.data += data

        def connectionLost(self, reason: object = None) -> None:
            self.done.callback(self.data)

    agent = ProxyAgent(TCP4ClientEndpoint(reactor, "127.0.0.1", proxy.port), reactor)
    body = b"from a Twisted client"
    response = await agent.request(
        b"POST", b"http://127.0.0.1:%d/echo?agent=1" % origin.port,
        bodyProducer=FileBodyProducer(BytesIO(body)))
    collect = Collect()
    response.deliverBody(collect)
    report = json.loads(await collect.done)
    assert response.code == 200
    assert report["target"] == "/echo?agent=1"
    assert report["sha256"] == hashlib.sha256(body).hexdigest()
