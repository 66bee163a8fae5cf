"""
End-to-end tests of upstream mode (``upstream:http[s]://HOST:PORT``)
through real sockets on 127.0.0.1: a *front* twistproxy in upstream mode
chained to a second twistproxy (or tinyproxy, where installed) as the
*upstream*, with and without proxy authentication, plain HTTP, intercepted
and passed-through HTTPS, an ``https`` upstream, an unreachable one, client
replay, and twistd.
"""

from __future__ import annotations

import base64
import json
import shutil
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from twisted.internet import reactor
from twisted.protocols.tls import TLSMemoryBIOFactory

from tests.e2e.conftest import Running, curl, needs_curl, parse_responses, raw
from tests.e2e.pki import OriginTLS
from tests.e2e.test_hooks_e2e import Ends
from tests.e2e.test_twistd import (
    Child,
    free_port,
    spawn_listening,
    twistd_command,
)
from tests.e2e.test_twistd import curl as twistd_curl
from twistproxy.addons.access import ProxyAuth
from twistproxy.connection import Client, Server
from twistproxy.http import HTTPFlow, Request
from twistproxy.modes import parse_mode
from twistproxy.proxy import ProxyFactory
from twistproxy.replay import ClientReplay

pytestmark = pytest.mark.e2e
TINYPROXY = shutil.which("tinyproxy")


def _mode(port: int, scheme: str = "http", host: str = "127.0.0.1") -> Any:
    return parse_mode(f"upstream:{scheme}://{host}:{port}")


def _get(origin: Running, path: str, *more: bytes, close: bool = True) -> bytes:
    head = (b"GET http://127.0.0.1:%d%s HTTP/1.1\r\nHost: 127.0.0.1:%d\r\n"
            % (origin.port, path.encode(), origin.port))
    return head + b"".join(more) + (b"Connection: close\r\n" if close else b"") + b"\r\n"


def _header(echoed: dict[str, Any], name: str) -> list[str]:
    return [value for key, value in echoed["headers"] if key.lower() == name]


def _head(received: bytes) -> bool:
    """A whole response to a CONNECT (an error page has a body) arrived."""
    head, sep, body = received.partition(b"\r\n\r\n")
    if not sep:
        return False
    [length] = [line.split(b":")[1] for line in head.split(b"\r\n")
                if line.lower().startswith(b"content-length:")] or [b"0"]
    return len(body) >= int(length)


def _basic(credentials: str) -> bytes:
    return b"Proxy-Authorization: Basic " + base64.b64encode(credentials.encode()) + b"\r\n"


@pytest_twisted.ensureDeferred
async def test_plain_http_through_upstream(origin: Running, start_proxy: Any) -> None:
    """
    Plain requests go to the upstream proxy in absolute form, two of them
    on one kept-alive connection to it; each proxy adds its Via; the
    front's flows name the upstream proxy as the server connection's
    address and record the mode.
    """
    upstream_ends, front_ends = Ends(), Ends()
    upstream = await start_proxy(addons=[upstream_ends])
    front = await start_proxy(mode=_mode(upstream.port), addons=[front_ends])
    data = await raw(front.port, _get(origin, "/echo/1", close=False) + _get(origin, "/echo/2"))
    first, second = parse_responses(data)
    assert (first.status, second.status) == (200, 200), data
    echoed = json.loads(second.body)
    assert echoed["target"] == "/echo/2"
    via = ", ".join(_header(echoed, "via"))
    assert via.count("twistproxy-") == 2, via
    one, two = upstream_ends.flows
    assert one.request is not None and one.request.url == f"http://127.0.0.1:{origin.port}/echo/1"
    assert one.client_conn.id == two.client_conn.id  # one pooled connection to the upstream
    flow = front_ends.flows[0]
    assert flow.server_conn.address == ("127.0.0.1", upstream.port)
    assert flow.mode == f"upstream:http://127.0.0.1:{upstream.port}"


@pytest_twisted.ensureDeferred
async def test_upstream_auth(origin: Running, start_proxy: Any) -> None:
    """
    ``upstream_auth`` logs in to an upstream proxy that requires it, on
    plain requests and on CONNECT; the client's own Proxy-Authorization is
    never passed on: without ``upstream_auth`` the upstream answers 407,
    which reaches the client as it is.
    """
    upstream = await start_proxy(addons=[ProxyAuth({"u": "p"})])
    good = await start_proxy(mode=_mode(upstream.port), upstream_auth="u:p")
    data = await raw(good.port, _get(origin, "/echo/auth"))
    [response] = parse_responses(data)
    assert response.status == 200, data
    assert not _header(json.loads(response.body), "proxy-authorization")
    data = await raw(good.port, b"CONNECT 127.0.0.1:%d HTTP/1.1\r\n\r\n" % origin.port,
                     until=_head)
    assert data.startswith(b"HTTP/1.1 200 "), data

    ends = Ends()
    bare = await start_proxy(mode=_mode(upstream.port), addons=[ends])
    data = await raw(bare.port, _get(origin, "/echo/mine", _basic("u:p")))
    [response] = parse_responses(data)
    assert response.status == 407, data
    assert ends.flows[0].response is not None and ends.flows[0].error is None
    assert len(origin.factory.received) == 1


@pytest_twisted.ensureDeferred
async def test_wrong_credentials_connect(origin: Running, start_proxy: Any) -> None:
    """
    An upstream proxy refusing our CONNECT (wrong credentials) makes the
    client's CONNECT a 407 with the upstream's reason, and the flow
    records the error.
    """
    upstream = await start_proxy(addons=[ProxyAuth({"u": "p"})])
    ends = Ends()
    front = await start_proxy(mode=_mode(upstream.port), upstream_auth="u:wrong", addons=[ends])
    data = await raw(front.port, b"CONNECT 127.0.0.1:%d HTTP/1.1\r\n\r\n" % origin.port,
                     until=_head)
    assert data.startswith(b"HTTP/1.1 407 Proxy Authentication Required\r\n"), data
    assert b"refused CONNECT 127.0.0.1:" in data
    [flow] = ends.flows
    assert flow.error is not None and "407" in flow.error.msg
    data = await raw(front.port, _get(origin, "/echo/x"))
    assert parse_responses(data)[0].status == 407, data
    assert not origin.factory.received


@needs_curl
@pytest_twisted.ensureDeferred
async def test_https_intercepted_through_upstream(
    start_tls_origin: Any, start_https_proxy: Any, start_proxy: Any, pki: Any,
) -> None:
    """
    A client's CONNECT is intercepted by the front proxy, whose connection
    to the origin goes through a CONNECT to the upstream (which passes the
    tunnel through): the client sees the front's certificate, the origin
    is verified, the flows are the front's, with the origin's TLS facts.
    """
    origin = start_tls_origin(pki.good)
    upstream_ends, front_ends = Ends(), Ends()
    upstream = await start_proxy(addons=[upstream_ends])  # no CA: passes tunnels through
    front = await start_https_proxy(mode=_mode(upstream.port), addons=[front_ends])
    for strategy_request in ("/echo/one", "/echo/two"):
        out, err, code = await curl("-x", f"http://127.0.0.1:{front.port}",
                                    "--cacert", str(pki.proxy_ca_pem),
                                    f"https://localhost:{origin.port}{strategy_request}")
        assert code == 0, err
        assert json.loads(out)["target"] == strategy_request
    connects = [f for f in upstream_ends.flows if f.request and f.request.method == "CONNECT"]
    assert len(connects) == 2
    assert connects[0].request is not None and connects[0].request.port == origin.port
    https = [f for f in front_ends.flows if f.request and f.request.scheme == "https"]
    assert len(https) == 2
    assert https[0].server_conn.address == ("127.0.0.1", upstream.port)
    for flow in https:  # TLS started on the tunnel (startTLS under the CONNECT's protocol)
        server = flow.server_conn
        assert server.tls_established and server.sni == "localhost"
        assert server.certificate is not None and server.certificate.subject == "CN=localhost"


@needs_curl
@pytest_twisted.ensureDeferred
async def test_passthrough_through_upstream(
    start_tls_origin: Any, start_https_proxy: Any, start_proxy: Any, pki: Any,
) -> None:
    """A tunnel passed through by policy goes through the upstream untouched."""
    origin = start_tls_origin(pki.good)
    upstream = await start_proxy()
    front = await start_https_proxy(mode=_mode(upstream.port), ignore_hosts=[r"^localhost:"])
    out, err, code = await curl("-x", f"http://127.0.0.1:{front.port}",
                                "--cacert", str(pki.origin_ca_pem),  # the origin's own certificate
                                f"https://localhost:{origin.port}/echo/raw")
    assert code == 0, err
    assert json.loads(out)["target"] == "/echo/raw"


@needs_curl
@pytest_twisted.ensureDeferred
async def test_https_upstream_proxy(
    origin: Running, start_tls_origin: Any, start_https_proxy: Any, pki: Any,
) -> None:
    """
    ``upstream:https://`` speaks TLS to the upstream proxy, verified like
    an origin (here against the test origin CA): plain requests and
    intercepted HTTPS both go through it.
    """
    tls_origin = start_tls_origin(pki.good)
    ends = Ends()
    upstream_factory = ProxyFactory(reactor=reactor, addons=[ends])
    listening = reactor.listenTCP(
        0, TLSMemoryBIOFactory(OriginTLS(pki.good), False, upstream_factory),
        interface="127.0.0.1")
    try:
        port = listening.getHost().port
        front = await start_https_proxy(mode=_mode(port, "https", "localhost"))
        data = await raw(front.port, _get(origin, "/echo/tls-upstream"))
        assert parse_responses(data)[0].status == 200, data
        out, err, code = await curl("-x", f"http://127.0.0.1:{front.port}",
                                    "--cacert", str(pki.proxy_ca_pem),
                                    f"https://localhost:{tls_origin.port}/echo/inner")
        assert code == 0, err
        assert json.loads(out)["target"] == "/echo/inner"
        methods = [f.request.method for f in ends.flows if f.request is not None]
        # The CONNECT's own tunnel cannot take TLS to the origin inside TLS to
        # the upstream (no startTLS there): the request inside opens another.
        assert methods.count("GET") == 1 and "CONNECT" in methods, methods
    finally:
        await listening.stopListening()


@pytest_twisted.ensureDeferred
async def test_https_upstream_proxy_not_trusted(origin: Running, start_https_proxy: Any,
                                                pki: Any) -> None:
    """An ``https`` upstream proxy whose certificate is not trusted: 502, saying so."""
    upstream_factory = ProxyFactory(reactor=reactor)
    listening = reactor.listenTCP(
        0, TLSMemoryBIOFactory(OriginTLS(pki.unknown_ca), False, upstream_factory),
        interface="127.0.0.1")
    try:
        front = await start_https_proxy(
            mode=_mode(listening.getHost().port, "https", "localhost"))
        data = await raw(front.port, b"CONNECT localhost:443 HTTP/1.1\r\n\r\n", until=_head)
        assert data.startswith(b"HTTP/1.1 502 "), data
        assert b"TLS with upstream proxy https://localhost:" in data, data
    finally:
        await listening.stopListening()


@pytest_twisted.ensureDeferred
async def test_upstream_unreachable(origin: Running, start_proxy: Any) -> None:
    """Nothing listens where the upstream proxy should be: 502 naming it, for both ways."""
    port = free_port()
    front = await start_proxy(mode=_mode(port))
    data = await raw(front.port, _get(origin, "/echo/x"))
    assert data.startswith(b"HTTP/1.1 502 "), data
    assert b"upstream proxy http://127.0.0.1:%d: connection refused" % port in data, data
    data = await raw(front.port, b"CONNECT 127.0.0.1:%d HTTP/1.1\r\n\r\n" % origin.port,
                     until=_head)
    assert data.startswith(b"HTTP/1.1 502 "), data
    assert b"upstream proxy http://127.0.0.1:%d" % port in data, data


@pytest_twisted.ensureDeferred
async def test_upstream_is_this_proxy(origin: Running, start_proxy: Any) -> None:
    """An upstream proxy that is the listener itself is a loop: 508, not a storm."""
    port = free_port()
    front = await start_proxy(mode=_mode(port))
    # Point it at itself: a second listener in upstream mode, on the port it names.
    looping = ProxyFactory(reactor=reactor, mode=_mode(port))
    listening = reactor.listenTCP(port, looping, interface="127.0.0.1")
    try:
        data = await raw(port, _get(origin, "/echo/loop"))
        assert data.startswith(b"HTTP/1.1 508 "), data
    finally:
        await listening.stopListening()
    assert front.port != port and not origin.factory.received


@pytest_twisted.ensureDeferred
async def test_client_replay_through_upstream(origin: Running, start_proxy: Any) -> None:
    """Client replay on an upstream-mode factory sends the request through the upstream."""
    ends = Ends()
    upstream = await start_proxy(addons=[ends])
    front = await start_proxy(mode=_mode(upstream.port))
    flow = HTTPFlow(Client(), Server())
    flow.request = Request.make("GET", f"http://127.0.0.1:{origin.port}/echo/replayed")
    replay = ClientReplay(front.factory)
    assert replay.start_replay([flow]) == 1
    await replay.when_drained()
    assert flow.response is not None and flow.response.status_code == 200, flow.error
    assert json.loads(flow.response.content or b"")["target"] == "/echo/replayed"
    [seen] = ends.flows
    assert seen.request is not None and seen.request.path == "/echo/replayed"
    assert flow.server_conn.address == ("127.0.0.1", upstream.port)


# -- tinyproxy as the upstream -----------------------------------------------------


async def _tinyproxy(tmp_path: Path, *lines: str) -> tuple[Child, int]:
    """Start tinyproxy in the foreground on a free port with a config of its own."""
    assert TINYPROXY is not None
    port = free_port()
    config = tmp_path / "tinyproxy.conf"
    config.write_text("\n".join([
        f"Port {port}", "Listen 127.0.0.1", "Timeout 30", "MaxClients 10",
        "Allow 127.0.0.1", "LogLevel Error", "DisableViaHeader No", *lines, "",
    ]))
    return await spawn_listening([TINYPROXY, "-d", "-c", str(config)], tmp_path, port), port


@pytest.mark.skipif(TINYPROXY is None, reason="tinyproxy is not installed (Debian: tinyproxy)")
@needs_curl
@pytest_twisted.ensureDeferred
async def test_tinyproxy_upstream(tmp_path: Path, origin: Running, start_https_proxy: Any,
                                  start_tls_origin: Any, pki: Any) -> None:
    """
    tinyproxy (with BasicAuth) as the upstream: plain HTTP and intercepted
    HTTPS go through it with the right credentials; with wrong ones the
    client's CONNECT gets tinyproxy's refusal.
    """
    child, port = await _tinyproxy(tmp_path, "BasicAuth u p")
    try:
        front = await start_https_proxy(mode=_mode(port), upstream_auth="u:p")
        data = await raw(front.port, _get(origin, "/echo/tiny"))
        [response] = parse_responses(data)
        assert response.status == 200, data
        assert any("tinyproxy" in via for via in _header(json.loads(response.body), "via"))
        tls_origin = start_tls_origin(pki.good)
        out, err, code = await curl("-x", f"http://127.0.0.1:{front.port}",
                                    "--cacert", str(pki.proxy_ca_pem),
                                    f"https://localhost:{tls_origin.port}/echo/tiny-tls")
        assert code == 0, err
        assert json.loads(out)["target"] == "/echo/tiny-tls"
        wrong = await start_https_proxy(mode=_mode(port), upstream_auth="u:nope")
        data = await raw(wrong.port, b"CONNECT localhost:%d HTTP/1.1\r\n\r\n" % tls_origin.port,
                         until=_head)
        # What tinyproxy answers, relayed as it is (1.11 says 401, not 407).
        assert data.startswith((b"HTTP/1.1 401 ", b"HTTP/1.1 407 ")), data
        assert b"refused CONNECT localhost:" in data
    finally:
        await child.stop()


# -- twistd ---------------------------------------------------------------------


@needs_curl
@pytest_twisted.ensureDeferred
async def test_twistd_upstream_mode(tmp_path: Path, origin: Running, start_proxy: Any) -> None:
    """
    ``twistd twistproxy --mode upstream:http://127.0.0.1:P@Q --upstream-auth
    u:p`` serves on Q through the upstream proxy on P, logged in.
    """
    upstream = await start_proxy(addons=[ProxyAuth({"u": "p"})])
    listen = free_port()
    child = await spawn_listening(
        [*twistd_command(), "-n", "--pidfile=", "twistproxy", "--no-intercept",
         "--mode", f"upstream:http://127.0.0.1:{upstream.port}@{listen}",
         "--upstream-auth", "u:p"], tmp_path, listen)
    try:
        url = f"http://127.0.0.1:{origin.port}/echo/twistd"
        code, body = await twistd_curl("-x", f"http://127.0.0.1:{listen}", url, cwd=tmp_path)
        assert code == 0, body
        assert json.loads(body)["target"] == "/echo/twistd"
    finally:
        await child.stop()
