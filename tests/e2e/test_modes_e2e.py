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
from twisted.internet import reactor

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
