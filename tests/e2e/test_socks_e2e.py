"""
End-to-end tests of the ``socks5`` mode (:mod:`twistproxy._socks`) through
real sockets on 127.0.0.1: curl's SOCKS5 client (host names and IPv4
addresses, with and without a login) and a raw-socket client for the edge
cases.
"""

from __future__ import annotations

import json
import socket
import struct
import time
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from twisted.internet import reactor
from twisted.internet.task import deferLater
from twisted.internet.threads import deferToThread

from tests.e2e.conftest import Running, curl, needs_curl
from tests.e2e.origin import OriginFactory
from tests.e2e.test_hooks_e2e import Ends
from tests.e2e.test_twistd import accepting, free_port, output_contains, spawn, twistd_command
from tests.e2e.test_twistd import curl as twistd_curl
from twistproxy.addons.access import HostPolicy, ProxyAuth
from twistproxy.limits import Limits
from twistproxy.modes import parse_mode

pytestmark = pytest.mark.e2e
SOCKS5 = parse_mode("socks5")


def _recv_exactly(sock: socket.socket, size: int) -> bytes:
    data = b""
    while len(data) < size:
        piece = sock.recv(size - len(data))
        if not piece:
            break
        data += piece
    return data


def _read_until_closed(sock: socket.socket, timeout: float) -> bytes:
    deadline = time.monotonic() + timeout
    data = b""
    while time.monotonic() < deadline:
        try:
            piece = sock.recv(65536)
        except (ConnectionResetError, TimeoutError):
            break
        if not piece:
            break
        data += piece
    return data


def socks_connect(
    port: int, request: bytes, *, methods: bytes = b"\x00", login: bytes | None = None,
    then: bytes | None = None, timeout: float = 10.0,
) -> tuple[bytes, bytes, bytes]:
    """
    Blocking: greet the SOCKS5 listener on *port* offering *methods*, log
    in with *login* (an RFC 1929 message) if given, send *request* (the
    bytes after ``VER``), and return the method choice, the reply and what
    came after *then* was sent, until the connection closed.
    """
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(b"\x05" + bytes((len(methods),)) + methods)
        choice = _recv_exactly(sock, 2)
        if choice[1:] == b"\xff":
            return choice, b"", _read_until_closed(sock, timeout)
        if login is not None:
            sock.sendall(login)
            answer = _recv_exactly(sock, 2)
            if answer != b"\x01\x00":
                return choice, answer, _read_until_closed(sock, timeout)
        sock.sendall(b"\x05" + request)
        head = _recv_exactly(sock, 4)
        if len(head) < 4:
            return choice, head, b""
        size = {1: 4, 4: 16}.get(head[3], 0)
        answer = head + _recv_exactly(sock, size + 2)
        if then is not None:
            sock.sendall(then)
        return choice, answer, _read_until_closed(sock, timeout)


async def counted_out(factory: Any) -> None:
    """Wait (bounded) until the proxy has seen every client connection close."""
    for _ in range(40):
        if factory.connections == 0:
            return
        await deferLater(reactor, 0.05, lambda: None)
    assert factory.connections == 0


def _ipv4(host: str, port: int, command: int = 1) -> bytes:
    return bytes((command, 0, 1)) + socket.inet_aton(host) + struct.pack("!H", port)


def _name(host: str, port: int) -> bytes:
    encoded = host.encode("ascii")
    return bytes((1, 0, 3, len(encoded))) + encoded + struct.pack("!H", port)


def _get(path: str, host: str) -> bytes:
    return f"GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode()


@needs_curl
@pytest_twisted.ensureDeferred
async def test_curl_socks5_hostname(origin: Running, start_https_proxy: Any) -> None:
    """
    ``curl --socks5-hostname``: the plain HTTP request inside the
    (intercepting) tunnel is served as a flow, recorded with the
    listener's mode, after the CONNECT flow.
    """
    ends = Ends()
    proxy = await start_https_proxy(mode=SOCKS5, addons=[ends])
    out, err, code = await curl("--socks5-hostname", f"127.0.0.1:{proxy.port}",
                                f"http://localhost:{origin.port}/echo/socks?x=1")
    assert code == 0, err
    assert json.loads(out)["target"] == "/echo/socks?x=1"
    connect, get = ends.flows
    assert connect.request is not None and connect.request.method == "CONNECT"
    assert (connect.request.host, connect.request.port) == ("localhost", origin.port)
    assert get.request is not None and get.request.url == (
        f"http://localhost:{origin.port}/echo/socks?x=1")
    assert get.mode == "socks5" and get.response is not None
    assert get.response.status_code == 200
    ends.check_one_each()


@needs_curl
@pytest_twisted.ensureDeferred
async def test_curl_socks5_ipv4(origin: Running, start_proxy: Any) -> None:
    """``curl --socks5`` resolves the name itself and sends an IPv4 address."""
    ends = Ends()
    proxy = await start_proxy(mode=SOCKS5, addons=[ends])
    out, err, code = await curl("--socks5", f"127.0.0.1:{proxy.port}",
                                f"http://localhost:{origin.port}/echo/v4")
    assert code == 0, err
    assert json.loads(out)["target"] == "/echo/v4"
    connect = ends.flows[0]
    assert connect.request is not None and connect.request.host == "127.0.0.1"


@needs_curl
@pytest_twisted.ensureDeferred
async def test_curl_socks5_https_intercepted(
    start_tls_origin: Any, start_https_proxy: Any, pki: Any
) -> None:
    """
    HTTPS through SOCKS5 is intercepted with the proxy's CA (curl trusts
    it and nothing else): the request is a flow with scheme https.
    """
    tls_origin = start_tls_origin(pki.good)
    ends = Ends()
    proxy = await start_https_proxy(mode=SOCKS5, addons=[ends])
    out, err, code = await curl("--cacert", str(pki.proxy_ca_pem),
                                "--socks5-hostname", f"127.0.0.1:{proxy.port}",
                                f"https://localhost:{tls_origin.port}/echo/secret")
    assert code == 0, err
    assert json.loads(out)["target"] == "/echo/secret"
    get = ends.flows[-1]
    assert get.request is not None and get.request.scheme == "https"
    assert get.client_conn.sni == "localhost"


@needs_curl
@pytest_twisted.ensureDeferred
async def test_curl_socks5_passthrough_without_ca(start_tls_origin: Any, start_proxy: Any,
                                                   pki: Any) -> None:
    """Without a CA the tunnel is relayed raw: curl sees the origin's own certificate."""
    tls_origin = start_tls_origin(pki.good)
    ends = Ends()
    proxy = await start_proxy(mode=SOCKS5, addons=[ends])
    out, err, code = await curl("--cacert", str(pki.origin_ca_pem),
                                "--socks5-hostname", f"127.0.0.1:{proxy.port}",
                                f"https://localhost:{tls_origin.port}/echo/raw")
    assert code == 0, err
    assert json.loads(out)["target"] == "/echo/raw"
    [connect] = ends.flows
    assert connect.request is not None and connect.request.method == "CONNECT"
    assert connect.passthrough


@needs_curl
@pytest_twisted.ensureDeferred
async def test_curl_socks5_login(origin: Running, start_https_proxy: Any) -> None:
    """
    With proxy authentication, the SOCKS5 listener requires a login with
    the same users: right credentials pass (the flows name the user, and
    hold no credentials), wrong ones and none at all are refused.
    """
    ends = Ends()
    proxy = await start_https_proxy(mode=SOCKS5, addons=[ProxyAuth({"alice": "s3cret"}), ends])
    url = f"http://localhost:{origin.port}/echo/login"
    out, err, code = await curl("--socks5-hostname", f"127.0.0.1:{proxy.port}",
                                "--proxy-user", "alice:s3cret", url)
    assert code == 0, err
    assert json.loads(out)["target"] == "/echo/login"
    connect, get = ends.flows
    assert connect.metadata["proxy_user"] == get.metadata["proxy_user"] == "alice"
    assert connect.request is not None and "proxy-authorization" not in connect.request.headers
    for credentials in (["--proxy-user", "alice:wrong"], ["--proxy-user", "bob:s3cret"], []):
        out, err, code = await curl("--socks5-hostname", f"127.0.0.1:{proxy.port}",
                                    *credentials, url)
        assert code != 0 and out == b"", (credentials, err)
    assert len(origin.factory.received) == 1
    # A raw client offering no-auth only is told no method is acceptable.
    choice, _, _ = await deferToThread(socks_connect, proxy.port, _ipv4("127.0.0.1", 1))
    assert choice == b"\x05\xff"
    await counted_out(proxy.factory)


@pytest_twisted.ensureDeferred
async def test_raw_client_connects(origin: Running, start_proxy: Any) -> None:
    """
    A raw client: the reply names the address the proxy connected from,
    and bytes sent right behind the request (before the reply) go through.
    """
    proxy = await start_proxy(mode=SOCKS5)

    def early() -> tuple[bytes, bytes]:
        with socket.create_connection(("127.0.0.1", proxy.port), timeout=10) as sock:
            request = b"\x05" + _name("localhost", origin.port)
            sock.sendall(b"\x05\x01\x00" + request + _get("/echo/early", "localhost"))
            return _recv_exactly(sock, 2 + 10), _read_until_closed(sock, 10)

    answer, response = await deferToThread(early)
    assert answer[:2] == b"\x05\x00"
    assert answer[2:6] == b"\x05\x00\x00\x01"
    assert socket.inet_ntoa(answer[6:10]) == "127.0.0.1"
    assert struct.unpack("!H", answer[10:12])[0] != 0
    assert response.startswith(b"HTTP/1.1 200 ") and b'"target": "/echo/early"' in response


@pytest_twisted.ensureDeferred
async def test_raw_client_ipv6(start_https_proxy: Any) -> None:
    """An IPv6 destination (address type 4) is connected to and served."""
    try:
        listening: Any = reactor.listenTCP(0, OriginFactory(), interface="::1")
    except Exception as e:  # no IPv6 on this machine
        pytest.skip(f"cannot listen on ::1: {e}")
    try:
        port = listening.getHost().port
        ends = Ends()
        proxy = await start_https_proxy(mode=SOCKS5, addons=[ends])
        request = b"\x01\x00\x04" + socket.inet_pton(socket.AF_INET6, "::1") + struct.pack(
            "!H", port)
        _, answer, response = await deferToThread(
            socks_connect, proxy.port, request, then=_get("/echo/six", f"[::1]:{port}"))
        assert answer[:4] == b"\x05\x00\x00\x04" and len(answer) == 22, answer
        assert b'"target": "/echo/six"' in response
        assert ends.flows[-1].request.host == "::1"  # type: ignore[union-attr]
    finally:
        await listening.stopListening()


@pytest_twisted.ensureDeferred
async def test_raw_client_refusals(origin: Running, start_proxy: Any) -> None:
    """
    Each refusal has its reply code: BIND and UDP ASSOCIATE (7), an unknown
    address type (8), a closed port (5), a blocked host and the proxy
    itself (2); the connection closes after, and is counted out.
    """
    closed = free_port()
    proxy = await start_proxy(mode=SOCKS5, addons=[HostPolicy(block=["blocked.example"])])
    cases = [
        (_ipv4("127.0.0.1", origin.port, command=2), 7),
        (_ipv4("127.0.0.1", origin.port, command=3), 7),
        (b"\x01\x00\x09\x00\x00", 8),
        (_ipv4("127.0.0.1", closed), 5),
        (_name("blocked.example", 80), 2),
        (_ipv4("127.0.0.1", proxy.port), 2),
    ]
    for request, code in cases:
        _, answer, rest = await deferToThread(socks_connect, proxy.port, request)
        assert answer[:2] == bytes((5, code)), (request, answer)
        assert rest == b""
    assert origin.factory.received == []
    await counted_out(proxy.factory)


@pytest_twisted.ensureDeferred
async def test_hostile_clients_are_closed(start_proxy: Any) -> None:
    """
    Another version, a greeting without methods, and a handshake that stops
    half-way are closed without a reply (the last once the head timeout
    passes).
    """
    proxy = await start_proxy(mode=SOCKS5, limits=Limits(header_timeout=0.5))

    def send(data: bytes) -> tuple[bytes, float]:
        start = time.monotonic()
        with socket.create_connection(("127.0.0.1", proxy.port), timeout=10) as sock:
            sock.sendall(data)
            return _read_until_closed(sock, 10), time.monotonic() - start

    for data in (b"\x04\x01\x00\x50\x7f\x00\x00\x01\x00", b"GET / HTTP/1.1\r\n\r\n",
                 b"\x05\x00"):
        received, _ = await deferToThread(send, data)
        assert received == b"", data
    received, waited = await deferToThread(send, b"\x05\x01\x00\x05\x01\x00\x03\x20abc")
    assert received == b"\x05\x00"
    assert waited < 8
    await counted_out(proxy.factory)


@needs_curl
@pytest_twisted.ensureDeferred
async def test_twistd_socks5(tmp_path: Path) -> None:
    """``twistd twistproxy --mode socks5@PORT`` serves curl's SOCKS5 client."""
    origin_listening: Any = reactor.listenTCP(0, OriginFactory(), interface="127.0.0.1")
    origin_port = origin_listening.getHost().port
    port = free_port()
    child = spawn([*twistd_command(), "-n", "--pidfile=", "twistproxy", "--no-intercept",
                   "--mode", f"socks5@{port}"], tmp_path)
    try:
        await accepting(port, child)
        code, body = await twistd_curl("--socks5-hostname", f"127.0.0.1:{port}",
                                       f"http://localhost:{origin_port}/echo/twistd",
                                       cwd=tmp_path)
        assert code == 0 and '"target": "/echo/twistd"' in body, body
        await output_contains(child, f"CONNECT localhost:{origin_port} -> 200")
        assert f"listening on 127.0.0.1:{port}" in child.output
    finally:
        await child.stop()
        await origin_listening.stopListening()
