"""
End-to-end tests of the proxy modes (:mod:`twistproxy.modes`) through real
sockets on 127.0.0.1: a reverse proxy in front of an origin, in the clear
and over TLS on either side.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from cryptography.hazmat.primitives import serialization
from twisted.internet import reactor
from twisted.internet.protocol import Factory, Protocol

from tests.e2e.conftest import CURL, Running, curl, parse_responses, raw
from tests.e2e.test_hooks_e2e import Ends
from tests.e2e.test_twistd import (
    accepting,
    free_port,
    output_contains,
    spawn,
    twistd_command,
)
from tests.e2e.test_twistd import curl as twistd_curl
from twistproxy._tls import GivenCertificate
from twistproxy.addons.reverse import ReverseRewrite
from twistproxy.modes import parse_mode

pytestmark = pytest.mark.e2e
needs_curl = pytest.mark.skipif(CURL is None, reason="curl is not installed")


def _echoed(data: bytes) -> dict[str, Any]:
    [response] = parse_responses(data)
    assert response.status == 200, data
    echoed: dict[str, Any] = json.loads(response.body)
    return echoed


def _host(echoed: dict[str, Any]) -> str:
    [host] = [value for name, value in echoed["headers"] if name.lower() == "host"]
    return host


@pytest_twisted.ensureDeferred
async def test_reverse_plain(origin: Running, start_proxy: Any) -> None:
    """
    Origin-form requests to a reverse listener reach its origin with the
    origin's Host; the flow records the mode.
    """
    ends = Ends()
    mode = parse_mode(f"reverse:http://127.0.0.1:{origin.port}")
    proxy = await start_proxy(mode=mode, addons=[ends])
    data = await raw(proxy.port, b"GET /echo/a?b=1 HTTP/1.1\r\nHost: front.example\r\n"
                                 b"Connection: close\r\n\r\n")
    echoed = _echoed(data)
    assert echoed["target"] == "/echo/a?b=1"
    assert _host(echoed) == f"127.0.0.1:{origin.port}"
    [flow] = ends.flows
    assert flow.mode == f"reverse:http://127.0.0.1:{origin.port}"
    assert flow.request is not None and flow.request.url == (
        f"http://127.0.0.1:{origin.port}/echo/a?b=1")


@pytest_twisted.ensureDeferred
async def test_reverse_keeps_host_when_told(origin: Running, start_proxy: Any) -> None:
    """``keep_host_header`` sends the client's Host to the origin."""
    mode = parse_mode(f"reverse:http://127.0.0.1:{origin.port}")
    proxy = await start_proxy(mode=mode, keep_host_header=True)
    data = await raw(proxy.port, b"GET /echo HTTP/1.1\r\nHost: front.example\r\n"
                                 b"Connection: close\r\n\r\n")
    assert _host(_echoed(data)) == "front.example"


@pytest_twisted.ensureDeferred
async def test_reverse_is_not_an_open_proxy(origin: Running, start_proxy: Any) -> None:
    """
    An absolute-form request to a reverse listener goes to its origin, not
    where it points; a CONNECT is refused.
    """
    mode = parse_mode(f"reverse:http://127.0.0.1:{origin.port}")
    proxy = await start_proxy(mode=mode)
    data = await raw(proxy.port, b"GET http://127.0.0.1:1/echo/x HTTP/1.1\r\n"
                                 b"Host: 127.0.0.1:1\r\nConnection: close\r\n\r\n")
    assert _echoed(data)["target"] == "/echo/x"
    data = await raw(proxy.port, b"CONNECT 127.0.0.1:1 HTTP/1.1\r\nHost: 127.0.0.1:1\r\n\r\n",
                     until=lambda received: b"reverse proxy" in received)
    assert data.startswith(b"HTTP/1.1 400 "), data
    assert b"reverse proxy" in data
    assert len(origin.factory.received) == 1


@needs_curl
@pytest_twisted.ensureDeferred
async def test_reverse_tls_client(origin: Running, start_https_proxy: Any, pki: Any) -> None:
    """
    A client speaking TLS to a reverse listener gets a certificate for the
    name it asked for from the proxy's CA; its requests go on to the
    origin in the clear, and the flow records the TLS facts.
    """
    ends = Ends()
    mode = parse_mode(f"reverse:http://127.0.0.1:{origin.port}")
    proxy = await start_https_proxy(mode=mode, addons=[ends])
    out, err, code = await curl("--cacert", str(pki.proxy_ca_pem), "-s",
                                f"https://localhost:{proxy.port}/echo/tls")
    assert code == 0, err
    echoed = json.loads(out)
    assert echoed["target"] == "/echo/tls"
    assert _host(echoed) == f"127.0.0.1:{origin.port}"
    [flow] = ends.flows
    assert flow.client_conn.tls_established and flow.client_conn.sni == "localhost"
    assert flow.request is not None and flow.request.scheme == "http"


@pytest_twisted.ensureDeferred
async def test_reverse_to_tls_origin(start_tls_origin: Any, start_https_proxy: Any,
                                     pki: Any) -> None:
    """
    A reverse listener for an ``https`` origin speaks TLS to it (verified
    against the origin's name) for a client in the clear.
    """
    tls_origin = start_tls_origin(pki.good)
    mode = parse_mode(f"reverse:https://127.0.0.1:{tls_origin.port}")
    proxy = await start_https_proxy(mode=mode)
    data = await raw(proxy.port, b"GET /echo/s HTTP/1.1\r\nHost: front.example\r\n"
                                 b"Connection: close\r\n\r\n")
    echoed = _echoed(data)
    assert echoed["target"] == "/echo/s"
    assert _host(echoed) == f"127.0.0.1:{tls_origin.port}"
    wrong = start_tls_origin(pki.wrong_host)
    proxy = await start_https_proxy(mode=parse_mode(f"reverse:https://127.0.0.1:{wrong.port}"))
    data = await raw(proxy.port, b"GET /echo HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    assert data.startswith(b"HTTP/1.1 502 "), data


@pytest_twisted.ensureDeferred
async def test_reverse_tls_without_ca_is_closed(origin: Running, start_proxy: Any) -> None:
    """
    Without a CA (no certificate store) a reverse listener cannot answer
    TLS: the connection is closed, and counted out.
    """
    mode = parse_mode(f"reverse:http://127.0.0.1:{origin.port}")
    proxy = await start_proxy(mode=mode)
    data = await raw(proxy.port, b"\x16\x03\x01\x00\x05hello")
    assert data == b""
    assert proxy.factory.connections == 0
    assert origin.factory.received == []


@needs_curl
@pytest_twisted.ensureDeferred
async def test_twistd_listens_in_each_mode(tmp_path: Path) -> None:
    """
    ``twistd twistproxy --mode regular@P --mode reverse:...@Q`` serves both
    listeners in one process.
    """
    from tests.e2e.origin import OriginFactory

    origin_listening: Any = reactor.listenTCP(0, OriginFactory(), interface="127.0.0.1")
    origin_port = origin_listening.getHost().port
    regular, reverse = free_port(), free_port()
    child = spawn([*twistd_command(), "-n", "--pidfile=", "twistproxy",
                   "--mode", f"regular@{regular}",
                   "--mode", f"reverse:http://127.0.0.1:{origin_port}@{reverse}"], tmp_path)
    try:
        await accepting(regular, child)
        await accepting(reverse, child)
        url = f"http://127.0.0.1:{origin_port}/echo/regular"
        code, body = await twistd_curl("-x", f"http://127.0.0.1:{regular}", url, cwd=tmp_path)
        assert code == 0 and '"target": "/echo/regular"' in body, body
        code, body = await twistd_curl(f"http://127.0.0.1:{reverse}/echo/reverse", cwd=tmp_path)
        assert code == 0 and '"target": "/echo/reverse"' in body, body
        await output_contains(child, "/echo/reverse -> 200")
        assert f"listening on 127.0.0.1:{regular}" in child.output
        assert f"listening on 127.0.0.1:{reverse}" in child.output
    finally:
        await child.stop()
        await origin_listening.stopListening()


class _Redirecting(Protocol):
    """An origin answering every request with a redirect to itself and cookies."""

    def dataReceived(self, data: bytes) -> None:
        if b"\r\n\r\n" not in data:
            return
        port = self.transport.getHost().port  # type: ignore[union-attr]
        self.transport.write(  # type: ignore[union-attr]
            b"HTTP/1.1 302 Found\r\nLocation: http://localhost:%d/next?a=1\r\n"
            b"Set-Cookie: s=1; Domain=localhost; Path=/\r\n"
            b"Set-Cookie: t=2; Domain=other.example\r\n"
            b"Content-Length: 0\r\nConnection: close\r\n\r\n" % port)
        self.transport.loseConnection()  # type: ignore[union-attr]


@pytest_twisted.ensureDeferred
async def test_reverse_rewrite(start_proxy: Any) -> None:
    """
    With ReverseRewrite (``--reverse-rewrite``), an origin's redirect to
    itself points at the host the client reached, and its cookie for its
    own domain loses the Domain; without it, both pass as sent.
    """
    listening: Any = reactor.listenTCP(0, Factory.forProtocol(_Redirecting),
                                       interface="127.0.0.1")
    try:
        mode = parse_mode(f"reverse:http://localhost:{listening.getHost().port}")
        request = b"GET /x HTTP/1.1\r\nHost: front.example:81\r\nConnection: close\r\n\r\n"
        rewriting = await start_proxy(mode=mode, addons=[ReverseRewrite()])
        [response] = parse_responses(await raw(rewriting.port, request))
        assert response.header(b"location") == b"http://front.example:81/next?a=1"
        assert response.headers.count((b"Set-Cookie", b"s=1; Path=/")) == 1
        assert (b"Set-Cookie", b"t=2; Domain=other.example") in response.headers
        plain = await start_proxy(mode=mode)
        [response] = parse_responses(await raw(plain.port, request))
        location = response.header(b"location")
        assert location is not None and location.startswith(b"http://localhost:")
    finally:
        await listening.stopListening()


@needs_curl
@pytest_twisted.ensureDeferred
async def test_reverse_with_a_given_certificate(origin: Running, start_https_proxy: Any,
                                                pki: Any, tmp_path: Path) -> None:
    """
    ``--certs`` (``certificates=``): a reverse listener presents the user's
    own certificate for the names it matches, minted ones for the others.
    """
    pem = tmp_path / "own.pem"
    pem.write_bytes(
        pki.good.key.private_bytes(serialization.Encoding.PEM,
                                   serialization.PrivateFormat.PKCS8,
                                   serialization.NoEncryption())
        + pki.good.certificate.public_bytes(serialization.Encoding.PEM))
    mode = parse_mode(f"reverse:http://127.0.0.1:{origin.port}")
    proxy = await start_https_proxy(
        mode=mode, certificates=[GivenCertificate("localhost", str(pem))])
    url = f"https://localhost:{proxy.port}/echo/own"
    out, err, code = await curl("--cacert", str(pki.origin_ca_pem), "-s", url)
    assert code == 0, err
    assert json.loads(out)["target"] == "/echo/own"
    # The CA's certificate is not the one presented for localhost now...
    _, _, code = await curl("--cacert", str(pki.proxy_ca_pem), "-s", url)
    assert code == 60
    # ... and is for the names the given one does not match.
    out, err, code = await curl("--cacert", str(pki.proxy_ca_pem), "-s", "--resolve",
                                f"front.example:{proxy.port}:127.0.0.1",
                                f"https://front.example:{proxy.port}/echo/minted")
    assert code == 0, err
