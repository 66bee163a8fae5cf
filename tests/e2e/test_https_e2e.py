"""
HTTPS end to end: CONNECT tunnels intercepted with the proxy's CA or passed
through, and TLS towards origins verified, with real clients (curl, openssl
s_client) on 127.0.0.1.
"""

from __future__ import annotations

import json
import shutil
from typing import Any

import pytest
import pytest_twisted
from twisted.internet import reactor
from twisted.internet.defer import DeferredList
from twisted.internet.task import deferLater

from tests.e2e.conftest import (
    Running,
    curl,
    needs_curl,
    parse_responses,
    raw,
    run_closed_stdin,
)
from tests.e2e.test_hooks_e2e import Ends
from twistproxy._tls import UpstreamTLS
from twistproxy.hooks import Addon
from twistproxy.http import HTTPFlow, Response

pytestmark = pytest.mark.e2e

OPENSSL = shutil.which("openssl")
needs_openssl = pytest.mark.skipif(OPENSSL is None, reason="openssl is not installed")


async def _curl_https(
    proxy: Running, url: str, cacert: Any, *extra: str
) -> tuple[bytes, bytes, int]:
    return await curl("-x", f"http://127.0.0.1:{proxy.port}", "--cacert", str(cacert),
                      *extra, url)


async def _presented(proxy: Running, connect: str, *options: str) -> bytes:
    """The certificate text openssl s_client sees through the proxy."""
    assert OPENSSL is not None
    output, _ = await run_closed_stdin(
        OPENSSL, "s_client", "-proxy", f"127.0.0.1:{proxy.port}", "-connect", connect,
        *options, "-showcerts")
    return output


@needs_curl
@pytest_twisted.ensureDeferred
async def test_curl_through_interception(pki: Any, start_tls_origin: Any,
                                         start_https_proxy: Any) -> None:
    """
    curl trusting only the proxy's CA gets an HTTPS origin's answer through
    the proxy (so the certificate it saw was issued by the proxy's CA), and
    the flow inside the tunnel is an https flow with the client's TLS details.
    """
    origin = start_tls_origin(pki.good)
    ends = Ends()
    proxy = await start_https_proxy(addons=[ends])
    out, err, code = await _curl_https(
        proxy, f"https://127.0.0.1:{origin.port}/echo?tls=1", pki.proxy_ca_pem)
    assert code == 0, err
    report = json.loads(out)
    assert report["target"] == "/echo?tls=1"
    inner = [f for f in ends.flows if f.request.method == "GET"]
    assert len(inner) == 1
    flow = inner[0]
    assert flow.request.scheme == "https" and flow.request.port == origin.port
    assert flow.client_conn.tls_established
    assert flow.client_conn.alpn == b"http/1.1"
    assert flow.client_conn.tls_version.startswith("TLS")
    connects = [f for f in ends.flows if f.request.method == "CONNECT"]
    assert len(connects) == 1 and connects[0].response.status_code == 200


@needs_curl
@pytest_twisted.ensureDeferred
async def test_curl_fails_without_the_proxy_ca(pki: Any, start_tls_origin: Any,
                                               start_https_proxy: Any) -> None:
    """A client trusting only the origin's CA refuses the intercepted tunnel."""
    origin = start_tls_origin(pki.good)
    proxy = await start_https_proxy()
    _, _, code = await _curl_https(proxy, f"https://127.0.0.1:{origin.port}/echo",
                                   pki.origin_ca_pem)
    assert code != 0


@needs_openssl
@pytest_twisted.ensureDeferred
async def test_certificate_by_sni_and_without(pki: Any, start_tls_origin: Any,
                                              start_https_proxy: Any) -> None:
    """
    The certificate follows the ClientHello's SNI when it differs from the
    CONNECT host, and is the CONNECT host's when the client sends no SNI.
    """
    origin = start_tls_origin(pki.good)
    proxy = await start_https_proxy()
    with_sni = await _presented(proxy, f"localhost:{origin.port}",
                                "-servername", "sni.example")
    assert b"CN = sni.example" in with_sni or b"CN=sni.example" in with_sni
    assert b"twistproxy test CA" in with_sni
    without = await _presented(proxy, f"localhost:{origin.port}", "-noservername")
    assert b"CN = localhost" in without or b"CN=localhost" in without


@needs_curl
@pytest_twisted.ensureDeferred
async def test_certificates_cached_and_shared(pki: Any, start_tls_origin: Any,
                                              start_https_proxy: Any) -> None:
    """
    Tunnels to one host, first two at once then more, mint one certificate
    and build one TLS context.
    """
    origin = start_tls_origin(pki.good)
    proxy = await start_https_proxy()
    url = f"https://127.0.0.1:{origin.port}/echo"
    results = await DeferredList(
        [_as_deferred(_curl_https(proxy, url, pki.proxy_ca_pem)) for _ in range(2)]
    )
    assert all(ok and result[2] == 0 for ok, result in results), results
    await _curl_https(proxy, url, pki.proxy_ca_pem)
    contexts = proxy.factory.contexts
    assert contexts.store.minted == 1
    assert contexts.built == 1


@needs_curl
@pytest_twisted.ensureDeferred
async def test_a_tunnel_per_request_does_not_fill_the_pool(
        pki: Any, start_tls_origin: Any, start_https_proxy: Any) -> None:
    """
    Each tunnel opens its own connection to the origin, which the pool then
    keeps: with one tunnel per request, the idle ones stop at the pool's
    ``max_idle_adopted``, not at its much larger ``max_idle_per_host``.
    """
    origin = start_tls_origin(pki.good)
    proxy = await start_https_proxy()
    pool = proxy.factory.pool
    pool.max_idle_adopted = 2
    for _ in range(5):
        out, err, code = await _curl_https(proxy, f"https://127.0.0.1:{origin.port}/echo",
                                           pki.proxy_ca_pem)
        assert code == 0, err
        assert json.loads(out)["target"] == "/echo"
    assert pool.idle_count() == 2
    assert pool.max_idle_per_host > 5


def _as_deferred(coroutine: Any) -> Any:
    from twisted.internet.defer import Deferred

    return Deferred.fromCoroutine(coroutine)


@pytest.mark.parametrize(
    "which, reason",
    [
        ("expired", b"expired"),
        ("wrong_host", b"not valid for 127.0.0.1"),
        ("unknown_ca", b"unknown issuer"),
    ],
)
@needs_curl
@pytest_twisted.ensureDeferred
async def test_bad_upstream_certificates(pki: Any, start_tls_origin: Any,
                                         start_https_proxy: Any, which: str,
                                         reason: bytes) -> None:
    """
    An origin certificate that is expired, for another host, or from an
    unknown CA is refused with a 502 saying why; ``--insecure`` accepts it.
    """
    origin = start_tls_origin(getattr(pki, which))
    proxy = await start_https_proxy()
    out, err, code = await _curl_https(
        proxy, f"https://127.0.0.1:{origin.port}/echo", pki.proxy_ca_pem,
        "--write-out", "\n%{http_code}")
    assert code == 0, err
    body, status = out.rsplit(b"\n", 1)
    assert status == b"502"
    assert reason in body, body
    insecure = await start_https_proxy(upstream_tls=UpstreamTLS(insecure=True))
    out, err, code = await _curl_https(
        insecure, f"https://127.0.0.1:{origin.port}/echo", pki.proxy_ca_pem)
    assert code == 0, err
    assert json.loads(out)["target"] == "/echo"


@needs_curl
@pytest_twisted.ensureDeferred
async def test_passthrough_by_ignore_hosts(pki: Any, start_tls_origin: Any,
                                           start_https_proxy: Any) -> None:
    """
    A tunnel matching ``ignore_hosts`` is relayed untouched: the client sees
    the origin's own certificate (it trusts the origin's CA, not ours), and
    the CONNECT flow still gets its hooks.
    """
    origin = start_tls_origin(pki.good)
    ends = Ends()
    proxy = await start_https_proxy(ignore_hosts=[rf"^127\.0\.0\.1:{origin.port}$"],
                                    addons=[ends])
    out, err, code = await _curl_https(proxy, f"https://127.0.0.1:{origin.port}/echo",
                                       pki.origin_ca_pem)
    assert code == 0, err
    assert json.loads(out)["target"] == "/echo"
    [connect] = ends.flows
    assert connect.passthrough and connect.response.status_code == 200
    _, _, code = await _curl_https(proxy, f"https://127.0.0.1:{origin.port}/echo",
                                   pki.proxy_ca_pem)
    assert code != 0  # not our certificate


@needs_curl
@pytest_twisted.ensureDeferred
async def test_http_connect_hook_answers_and_chooses(pki: Any, start_tls_origin: Any,
                                                     start_https_proxy: Any) -> None:
    """
    An ``http_connect`` hook can refuse a tunnel with its own response, or
    choose passthrough for it.
    """
    origin = start_tls_origin(pki.good)

    class Policy(Addon):
        def http_connect(self, flow: HTTPFlow) -> None:
            if flow.request.host == "localhost":
                flow.response = Response.make(403, "no tunnels to localhost\n")
            else:
                flow.passthrough = True

    proxy = await start_https_proxy(addons=[Policy()])
    request = (f"CONNECT localhost:{origin.port} HTTP/1.1\r\n"
               f"Host: localhost:{origin.port}\r\nConnection: close\r\n\r\n").encode()
    [parsed] = parse_responses(await raw(proxy.port, request))
    assert parsed.status == 403 and parsed.body == b"no tunnels to localhost\n"
    out, err, code = await _curl_https(proxy, f"https://127.0.0.1:{origin.port}/echo",
                                       pki.origin_ca_pem)
    assert code == 0, err


@pytest_twisted.ensureDeferred
async def test_connect_without_port_is_400(start_https_proxy: Any) -> None:
    """``CONNECT host`` without a port is a 400 saying what is missing."""
    proxy = await start_https_proxy()
    [parsed] = parse_responses(await raw(
        proxy.port, b"CONNECT example.com HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"))
    assert parsed.status == 400 and b"host:port" in parsed.body


@pytest_twisted.ensureDeferred
async def test_passthrough_refused_upstream_is_502(start_proxy: Any) -> None:
    """
    Without a certificate store every tunnel passes through; an origin that
    refuses the connection makes the CONNECT a 502.
    """
    import socket

    proxy = await start_proxy()
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    [parsed] = parse_responses(await raw(
        proxy.port,
        f"CONNECT 127.0.0.1:{port} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode()))
    assert parsed.status == 502 and b"connection refused" in parsed.body


@needs_curl
@pytest_twisted.ensureDeferred
async def test_absolute_https_without_connect(pki: Any, start_tls_origin: Any,
                                              start_https_proxy: Any) -> None:
    """``GET https://...`` sent to the proxy in the clear goes to the origin over TLS."""
    origin = start_tls_origin(pki.good)
    proxy = await start_https_proxy()
    request = (f"GET https://127.0.0.1:{origin.port}/echo?plain=1 HTTP/1.1\r\n"
               "Connection: close\r\n\r\n").encode()
    [parsed] = parse_responses(await raw(proxy.port, request))
    assert parsed.status == 200
    assert json.loads(parsed.body)["target"] == "/echo?plain=1"


@needs_curl
@pytest_twisted.ensureDeferred
async def test_keep_alive_inside_tunnel(pki: Any, start_tls_origin: Any,
                                        start_https_proxy: Any) -> None:
    """Several requests in one intercepted tunnel share one upstream connection."""
    origin = start_tls_origin(pki.good)
    proxy = await start_https_proxy()
    url = f"https://127.0.0.1:{origin.port}/echo"
    out, err, code = await _curl_https(proxy, url, pki.proxy_ca_pem, url, url)
    assert code == 0, err
    assert out.count(b'"target": "/echo"') == 3
    await deferLater(reactor, 0, lambda: None)
    assert origin.factory.connections == 1


def _tls_through(proxy_port: int, host: str, port: int, cafile: str, request: bytes,
                 *, rate: int = 0, seconds: float = 0.0) -> tuple[bytes, int]:
    """
    Blocking: open a tunnel and speak TLS in it with Python's ssl module
    over memory BIOs, the ClientHello sent in the same write as the CONNECT.
    Reads the whole answer, or with *rate* reads about *rate* bytes a second
    for *seconds*; returns what was read (up to 1 MiB) and how many bytes.
    """
    import socket
    import ssl
    import time

    context = ssl.create_default_context(cafile=cafile)
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = context.wrap_bio(incoming, outgoing, server_hostname=host)
    with socket.create_connection(("127.0.0.1", proxy_port), timeout=10) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
        try:
            tls.do_handshake()
        except ssl.SSLWantReadError:
            pass
        connect = f"CONNECT {host}:{port} HTTP/1.1\r\nHost: {host}:{port}\r\n\r\n".encode()
        sock.sendall(connect + outgoing.read())  # the ClientHello rides along
        head = b""
        while b"\r\n\r\n" not in head:
            head += sock.recv(65536)
        head, rest = head.split(b"\r\n\r\n", 1)
        assert head == b"HTTP/1.1 200 Connection established", head
        incoming.write(rest)
        while True:
            try:
                tls.do_handshake()
                break
            except ssl.SSLWantReadError:
                sock.sendall(outgoing.read())
                incoming.write(sock.recv(65536))
        sock.sendall(outgoing.read())
        tls.write(request)
        sock.sendall(outgoing.read())
        kept, total, start = b"", 0, time.monotonic()
        while True:
            if rate:
                elapsed = time.monotonic() - start
                if elapsed > seconds:
                    break
                if total > rate * elapsed:
                    time.sleep(0.01)
                    continue
            try:
                data = tls.read(65536)
            except ssl.SSLWantReadError:
                piece = sock.recv(16 * 1024)
                if not piece:
                    break
                incoming.write(piece)
                continue
            except ssl.SSLZeroReturnError:
                break
            if not data:
                break
            total += len(data)
            if len(kept) < 1024 * 1024:
                kept += data
        return kept, total


@pytest_twisted.ensureDeferred
async def test_client_hello_with_connect_reaches_tls(pki: Any, start_tls_origin: Any,
                                                     start_https_proxy: Any) -> None:
    """
    A ClientHello sent in the same segment as the CONNECT request is handed
    to the TLS layer, not lost in (or parsed by) the HTTP channel.
    """
    from twisted.internet.threads import deferToThread

    origin = start_tls_origin(pki.good)
    proxy = await start_https_proxy()
    request = (f"GET /echo?same=segment HTTP/1.1\r\nHost: localhost:{origin.port}\r\n"
               "Connection: close\r\n\r\n").encode()
    data, _ = await deferToThread(_tls_through, proxy.port, "localhost", origin.port,
                                  str(pki.proxy_ca_pem), request)
    [parsed] = parse_responses(data)
    assert json.loads(parsed.body)["target"] == "/echo?same=segment"


@pytest_twisted.ensureDeferred
async def test_slow_reader_over_tls_memory_flat(pki: Any, start_tls_origin: Any,
                                                start_https_proxy: Any) -> None:
    """
    A client reading an intercepted 1 GiB download at 2 MB/s for 4 s: the
    origin stays within socket buffers of the client and the proxy's memory
    grows by a few MB at most.
    """
    from twisted.internet.threads import deferToThread

    from tests.e2e.conftest import rss
    from tests.e2e.test_backpressure_e2e import MB

    origin = start_tls_origin(pki.good)
    proxy = await start_https_proxy()
    request = (f"GET /bytes/1073741824 HTTP/1.1\r\nHost: localhost:{origin.port}\r\n"
               "Connection: close\r\n\r\n").encode()
    before = peak = rss()
    reading = deferToThread(_tls_through, proxy.port, "localhost", origin.port,
                            str(pki.proxy_ca_pem), request, rate=2 * MB, seconds=4.0)
    while not reading.called:
        peak = max(peak, rss())
        await deferLater(reactor, 0.1, lambda: None)
    _, read = await reading
    assert 6 * MB < read < 10 * MB
    ahead = origin.factory.body_sent - read
    assert ahead < 24 * MB, f"origin ran {ahead / MB:.1f} MB ahead of the client"
    assert peak - before < 16 * MB, f"RSS grew by {(peak - before) / MB:.1f} MB"


@pytest_twisted.ensureDeferred
async def test_connect_response_hook_can_refuse(pki: Any, start_tls_origin: Any,
                                                start_https_proxy: Any) -> None:
    """A ``response`` hook that turns a CONNECT's 200 into a 403 refuses the tunnel."""
    origin = start_tls_origin(pki.good)

    class Refuse(Addon):
        def response(self, flow: HTTPFlow) -> None:
            if flow.request.method == "CONNECT":
                flow.response = Response.make(403, "not today\n")

    proxy = await start_https_proxy(addons=[Refuse()])
    [parsed] = parse_responses(await raw(
        proxy.port,
        f"CONNECT 127.0.0.1:{origin.port} HTTP/1.1\r\nHost: x\r\n"
        "Connection: close\r\n\r\n".encode()))
    assert (parsed.status, parsed.body) == (403, b"not today\n")


@pytest_twisted.ensureDeferred
async def test_minting_failure_answers_instead_of_tunnel(start_https_proxy: Any) -> None:
    """
    When no certificate can be minted (the CA expired, say), the CONNECT is
    answered with an error page instead of a 200 that would leave the
    client waiting on a tunnel nobody serves.
    """
    import datetime

    from twistproxy.certs import CertificateAuthority, CertificateStore
    from twistproxy.errors import CertificateAuthorityError

    class Broken(CertificateStore):
        def certificate_for(self, hostname: str) -> Any:
            raise CertificateAuthorityError("the CA has expired")

    def now() -> datetime.datetime:
        return datetime.datetime.now(datetime.UTC)

    store = Broken(CertificateAuthority.generate(now=now()), now=now)
    proxy = await start_https_proxy(cert_store=store)
    [parsed] = parse_responses(await raw(
        proxy.port,
        b"CONNECT example.com:443 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"))
    assert parsed.status == 500 and b"expired" in parsed.body


@pytest_twisted.ensureDeferred
async def test_client_replay_of_https_flow(pki: Any, start_tls_origin: Any,
                                           start_https_proxy: Any) -> None:
    """
    An https flow is replayed over verified TLS with its recorded SNI: a flow
    recorded through a tunnel to an IP address, whose client sent SNI
    ``localhost``, goes to that IP with the name ``localhost``.
    """
    from twistproxy.client import PoolKey
    from twistproxy.connection import Client, Server
    from twistproxy.http import Request
    from twistproxy.replay import ClientReplay

    origin = start_tls_origin(pki.good)
    proxy = await start_https_proxy()
    flow = HTTPFlow(Client(sni="localhost"), Server(), now=lambda: 1.0)
    flow.request = Request.make("GET", f"https://127.0.0.1:{origin.port}/echo?replayed=1")
    await ClientReplay(proxy.factory).replay(flow)
    assert flow.error is None, flow.error
    assert json.loads(flow.response.content)["target"] == "/echo?replayed=1"
    assert flow.is_replay == "request"
    key = PoolKey("https", "127.0.0.1", origin.port, "localhost")
    assert proxy.factory.pool.idle_count(key) == 1


@pytest_twisted.ensureDeferred
async def test_tls_details_recorded_at_handshake(pki: Any, start_tls_origin: Any,
                                                 start_https_proxy: Any) -> None:
    """
    The client's TLS details are on its connection record once the
    handshake inside the tunnel completes, before any request; a CONNECT
    sent inside an intercepted tunnel is refused.
    """
    from twisted.internet.threads import deferToThread

    origin = start_tls_origin(pki.good)
    clients: list[Any] = []

    class Clients(Addon):
        def client_connected(self, client: Any) -> None:
            clients.append(client)

    proxy = await start_https_proxy(addons=[Clients()])
    nested = (f"CONNECT localhost:{origin.port} HTTP/1.1\r\nHost: x\r\n"
              "Connection: close\r\n\r\n").encode()
    data, _ = await deferToThread(_tls_through, proxy.port, "localhost", origin.port,
                                  str(pki.proxy_ca_pem), nested)
    [client] = clients
    assert client.tls_established and client.sni == "localhost"
    assert client.alpn is None  # Python's ssl offered no ALPN here
    assert data.startswith(b"HTTP/1.1 400 ") and b"inside an intercepted tunnel" in data
