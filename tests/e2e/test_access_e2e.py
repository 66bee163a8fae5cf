"""
Access control end to end: proxy authentication and the host policy, with
curl and raw sockets through a proxy on 127.0.0.1.
"""

from __future__ import annotations

import base64
import json
from typing import Any

import pytest
import pytest_twisted

from tests.e2e.conftest import Running, curl, needs_curl, parse_responses, raw
from tests.e2e.test_hooks_e2e import Ends
from twistproxy.addons.access import PROXY_USER, HostPolicy, ProxyAuth
from twistproxy.addons.certpage import CertPage

pytestmark = pytest.mark.e2e

USERS = {"alice": "open:sesame"}
CHALLENGE = b'Basic realm="twistproxy"'


def _authorization(user: str, password: str) -> str:
    token = base64.b64encode(f"{user}:{password}".encode()).decode()
    return f"Proxy-Authorization: Basic {token}\r\n"


async def _curl_status(proxy: Running, url: str, *extra: str) -> tuple[int, bytes, bytes]:
    """curl *url* through *proxy*: the status, the headers and the body."""
    out, err, code = await curl("-x", f"http://127.0.0.1:{proxy.port}", "-i", *extra, url)
    assert code == 0, err
    head, _, body = out.partition(b"\r\n\r\n")
    return int(head.split(b" ", 2)[1]), head, body


def _header_names(origin: Running) -> list[str]:
    """The lower-cased header names of every request the origin received."""
    return [name.decode().lower() for request in origin.factory.received
            for name, _ in request.headers]


# -- proxy authentication ---------------------------------------------------


@needs_curl
@pytest_twisted.ensureDeferred
async def test_curl_without_credentials_is_407(origin: Running, start_proxy: Any) -> None:
    """
    Without credentials curl gets a 407 with a text body, and the origin is
    not contacted.
    """
    proxy = await start_proxy(addons=[ProxyAuth(USERS)])
    status, _, body = await _curl_status(proxy, f"http://127.0.0.1:{origin.port}/echo")
    assert status == 407
    assert b"Proxy Authentication Required" in body
    assert origin.factory.connections == 0


@needs_curl
@pytest_twisted.ensureDeferred
async def test_407_carries_the_challenge(origin: Running, start_proxy: Any) -> None:
    """
    The 407 carries ``Proxy-Authenticate: Basic realm="twistproxy"``, for a
    request and for a CONNECT, so that clients know to ask for a password:
    curl answers the challenge by itself.
    """
    proxy = await start_proxy(addons=[ProxyAuth(USERS)])
    status, head, _ = await _curl_status(proxy, f"http://127.0.0.1:{origin.port}/echo")
    assert status == 407
    assert b"\r\nProxy-Authenticate: " + CHALLENGE + b"\r\n" in head + b"\r\n"
    [refused] = parse_responses(await raw(
        proxy.port,
        (f"CONNECT 127.0.0.1:{origin.port} HTTP/1.1\r\nHost: 127.0.0.1:{origin.port}\r\n"
         "Connection: close\r\n\r\n").encode()))
    assert refused.status == 407
    assert refused.header(b"proxy-authenticate") == CHALLENGE
    # curl --proxy-anyauth asks without credentials first, then answers the challenge.
    out, err, code = await curl(
        "-x", f"http://127.0.0.1:{proxy.port}", "--proxy-anyauth",
        "--proxy-user", "alice:open:sesame", "-o", "/dev/null", "-w", "%{http_code}",
        f"http://127.0.0.1:{origin.port}/echo")
    assert (code, out) == (0, b"200"), err


@needs_curl
@pytest_twisted.ensureDeferred
async def test_curl_with_credentials(origin: Running, start_proxy: Any) -> None:
    """
    With ``--proxy-user`` curl is served, and the origin never sees the
    ``Proxy-Authorization`` header; the flow records the user and no longer
    holds the credentials.
    """
    ends = Ends()
    proxy = await start_proxy(addons=[ProxyAuth(USERS), ends])
    status, _, body = await _curl_status(
        proxy, f"http://127.0.0.1:{origin.port}/echo", "--proxy-user", "alice:open:sesame")
    assert status == 200
    names = [name.lower() for name, _ in json.loads(body)["headers"]]
    assert "proxy-authorization" not in names
    assert "proxy-authorization" not in _header_names(origin)
    [flow] = ends.flows
    assert flow.metadata[PROXY_USER] == "alice"
    assert "Proxy-Authorization" not in flow.request.headers


@needs_curl
@pytest_twisted.ensureDeferred
async def test_curl_wrong_password(origin: Running, start_proxy: Any) -> None:
    """A wrong password is a 407 too, and the origin is not contacted."""
    proxy = await start_proxy(addons=[ProxyAuth(USERS)])
    status, _, _ = await _curl_status(
        proxy, f"http://127.0.0.1:{origin.port}/echo", "--proxy-user", "alice:open")
    assert status == 407
    assert origin.factory.connections == 0


@pytest_twisted.ensureDeferred
async def test_malformed_credentials_then_valid_on_same_connection(
        origin: Running, start_proxy: Any) -> None:
    """
    A malformed header is a 407, not a 500; the connection stays usable and
    the same client then succeeds with valid credentials on it.
    """
    proxy = await start_proxy(addons=[ProxyAuth(USERS)])
    url = f"http://127.0.0.1:{origin.port}/echo"
    data = (f"GET {url} HTTP/1.1\r\nHost: 127.0.0.1:{origin.port}\r\n"
            "Proxy-Authorization: Basic %%%\r\n\r\n"
            f"GET {url} HTTP/1.1\r\nHost: 127.0.0.1:{origin.port}\r\n"
            f"{_authorization('alice', 'open:sesame')}Connection: close\r\n\r\n").encode()
    refused, served = parse_responses(await raw(proxy.port, data))
    assert refused.status == 407 and refused.header(b"proxy-authenticate") == CHALLENGE
    assert served.status == 200
    assert "proxy-authorization" not in _header_names(origin)


@pytest_twisted.ensureDeferred
async def test_connect_without_credentials_opens_no_tunnel(
        origin: Running, start_proxy: Any) -> None:
    """
    A CONNECT without credentials is a 407 and no tunnel: the origin gets
    no connection, and what the client sends next is read as HTTP by the
    proxy, not relayed.
    """
    proxy = await start_proxy(addons=[ProxyAuth(USERS)])  # passthrough: no CA
    data = (f"CONNECT 127.0.0.1:{origin.port} HTTP/1.1\r\n"
            f"Host: 127.0.0.1:{origin.port}\r\n\r\n"
            "GET /echo HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").encode()
    responses = parse_responses(await raw(proxy.port, data))
    assert responses[0].status == 407
    assert responses[0].header(b"proxy-authenticate") == CHALLENGE
    assert all(r.status != 200 for r in responses)
    assert origin.factory.connections == 0


@pytest_twisted.ensureDeferred
async def test_connect_with_credentials_passthrough(origin: Running, start_proxy: Any) -> None:
    """
    A CONNECT with credentials opens a passthrough tunnel, and the origin
    does not see the credentials.
    """
    proxy = await start_proxy(addons=[ProxyAuth(USERS)])
    data = (f"CONNECT 127.0.0.1:{origin.port} HTTP/1.1\r\n"
            f"Host: 127.0.0.1:{origin.port}\r\n{_authorization('alice', 'open:sesame')}\r\n"
            "GET /echo HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").encode()
    received = await raw(proxy.port, data, until=lambda got: got.endswith(b"}"))
    assert received.startswith(b"HTTP/1.1 200 Connection established\r\n\r\n")
    [echoed] = parse_responses(received.split(b"\r\n\r\n", 1)[1])
    assert echoed.status == 200
    assert "proxy-authorization" not in _header_names(origin)


@needs_curl
@pytest_twisted.ensureDeferred
async def test_intercepted_tunnel_with_credentials(pki: Any, start_tls_origin: Any,
                                                   start_https_proxy: Any) -> None:
    """
    Through an intercepting proxy, curl's CONNECT carries the credentials
    and the requests inside the tunnel, which carry none, are served; the
    origin never sees Proxy-Authorization, and the inner flow knows the user.
    """
    origin = start_tls_origin(pki.good)
    ends = Ends()
    proxy = await start_https_proxy(addons=[ProxyAuth(USERS), ends])
    out, err, code = await curl(
        "-x", f"http://127.0.0.1:{proxy.port}", "--proxy-user", "alice:open:sesame",
        "--cacert", str(pki.proxy_ca_pem),
        f"https://127.0.0.1:{origin.port}/echo?a=1", f"https://127.0.0.1:{origin.port}/echo?b=2")
    assert code == 0, err
    targets = [json.loads(line)["target"] for line in out.replace(b"}{", b"}\n{").splitlines()]
    assert targets == ["/echo?a=1", "/echo?b=2"]
    assert "proxy-authorization" not in _header_names(origin)
    inner = [f for f in ends.flows if f.request.method == "GET"]
    assert len(inner) == 2
    assert all(f.client_conn.tls_established for f in inner)
    assert all(f.metadata[PROXY_USER] == "alice" for f in inner)


@needs_curl
@pytest_twisted.ensureDeferred
async def test_intercepted_tunnel_without_credentials(pki: Any, start_tls_origin: Any,
                                                      start_https_proxy: Any) -> None:
    """Without credentials the CONNECT is refused: curl fails, the origin sees nothing."""
    origin = start_tls_origin(pki.good)
    proxy = await start_https_proxy(addons=[ProxyAuth(USERS)])
    _, err, code = await curl("-x", f"http://127.0.0.1:{proxy.port}",
                              "--cacert", str(pki.proxy_ca_pem),
                              f"https://127.0.0.1:{origin.port}/echo")
    assert code != 0
    assert b"407" in err
    assert origin.factory.connections == 0


@needs_curl
@pytest_twisted.ensureDeferred
async def test_ca_page_behind_authentication(pki: Any, start_https_proxy: Any) -> None:
    """
    With authentication in front of the CA page (the twistd plugin's
    order), the page needs credentials too.
    """
    proxy = await start_https_proxy(addons=[ProxyAuth(USERS), CertPage(pki.proxy_ca)])
    status, _, _ = await _curl_status(proxy, "http://twistproxy/cert/pem")
    assert status == 407
    status, _, body = await _curl_status(proxy, "http://twistproxy/cert/pem",
                                         "--proxy-user", "alice:open:sesame")
    assert status == 200 and body.startswith(b"-----BEGIN CERTIFICATE-----")


# -- host policy ----------------------------------------------------------------


@needs_curl
@pytest_twisted.ensureDeferred
async def test_blocked_host_http_and_connect(origin: Running, start_proxy: Any) -> None:
    """
    A blocked destination is a 403 naming it, over plain HTTP and for
    CONNECT (passthrough here), and the origin gets no connection.
    """
    policy = HostPolicy(block=[rf"^127\.0\.0\.1:{origin.port}$"])
    proxy = await start_proxy(addons=[policy])
    status, _, body = await _curl_status(proxy, f"http://127.0.0.1:{origin.port}/echo")
    assert status == 403
    assert f"127.0.0.1:{origin.port}".encode() in body
    [refused] = parse_responses(await raw(
        proxy.port,
        (f"CONNECT 127.0.0.1:{origin.port} HTTP/1.1\r\nHost: 127.0.0.1:{origin.port}\r\n"
         "Connection: close\r\n\r\n").encode()))
    assert refused.status == 403
    assert f"127.0.0.1:{origin.port}".encode() in refused.body
    assert origin.factory.connections == 0
    # A spelling of the same address does not get past the pattern.
    status, _, _ = await _curl_status(proxy, f"http://2130706433:{origin.port}/echo")
    assert status == 403
    assert origin.factory.connections == 0


@needs_curl
@pytest_twisted.ensureDeferred
async def test_blocked_host_intercepted(pki: Any, start_tls_origin: Any,
                                        start_https_proxy: Any) -> None:
    """
    Through an intercepting proxy a blocked CONNECT makes curl fail with
    the 403; a request inside an allowed tunnel is checked on its own (a
    filter on its URL here).
    """
    origin = start_tls_origin(pki.good)
    blocked = await start_https_proxy(addons=[HostPolicy(block=[rf".*:{origin.port}"])])
    _, err, code = await curl("-x", f"http://127.0.0.1:{blocked.port}",
                              "--cacert", str(pki.proxy_ca_pem),
                              f"https://127.0.0.1:{origin.port}/echo")
    assert code != 0 and b"403" in err
    assert origin.factory.connections == 0
    inner = await start_https_proxy(addons=[HostPolicy(block=["~u /secret"])])
    out, err, code = await curl("-x", f"http://127.0.0.1:{inner.port}", "-i",
                                "--cacert", str(pki.proxy_ca_pem),
                                f"https://127.0.0.1:{origin.port}/secret")
    assert code == 0, err
    established = b"HTTP/1.1 200 Connection established\r\n\r\n"
    assert out.startswith(established + b"HTTP/1.1 403 ")  # curl -i shows both


@needs_curl
@pytest_twisted.ensureDeferred
async def test_allow_list(origin: Running, start_proxy: Any) -> None:
    """
    With an allow list only matching destinations are served: another port
    is refused before any connection; ``localhost`` is the loopback by
    another of its names, and served.
    """
    proxy = await start_proxy(addons=[HostPolicy(allow=[rf"127\.0\.0\.1:{origin.port}"])])
    status, _, _ = await _curl_status(proxy, f"http://127.0.0.1:{origin.port}/echo")
    assert status == 200
    assert origin.factory.connections == 1
    status, _, body = await _curl_status(proxy, f"http://127.0.0.1:{origin.port + 1}/echo")
    assert status == 403 and f"127.0.0.1:{origin.port + 1}".encode() in body
    [refused] = parse_responses(await raw(
        proxy.port,
        (f"CONNECT 127.0.0.2:{origin.port} HTTP/1.1\r\nHost: 127.0.0.1:{origin.port}\r\n"
         "Connection: close\r\n\r\n").encode()))
    assert refused.status == 403
    assert origin.factory.connections == 1
    status, _, _ = await _curl_status(proxy, f"http://localhost:{origin.port}/echo")
    assert status == 200


@needs_curl
@pytest_twisted.ensureDeferred
async def test_authentication_before_policy(origin: Running, start_proxy: Any) -> None:
    """
    With both, an unauthenticated client learns nothing of the policy: a
    blocked destination is a 407 until it authenticates, then a 403.
    """
    proxy = await start_proxy(addons=[ProxyAuth(USERS), HostPolicy(block=["127.0.0.1"])])
    url = f"http://127.0.0.1:{origin.port}/echo"
    status, _, _ = await _curl_status(proxy, url)
    assert status == 407
    status, _, _ = await _curl_status(proxy, url, "--proxy-user", "alice:open:sesame")
    assert status == 403


@needs_curl
@pytest_twisted.ensureDeferred
async def test_plain_http_tunnel_with_credentials(origin: Running,
                                                  start_https_proxy: Any) -> None:
    """
    ``curl --proxytunnel`` with an ``http://`` URL: the CONNECT carries the
    credentials, and the plain requests inside the tunnel, which carry none,
    are served as the user's.
    """
    ends = Ends()
    proxy = await start_https_proxy(addons=[ProxyAuth(USERS), ends])
    url = f"http://127.0.0.1:{origin.port}/echo?plain=1"
    out, err, code = await curl(
        "-p", "-x", f"http://127.0.0.1:{proxy.port}", "--proxy-user", "alice:open:sesame", url)
    assert code == 0, err
    assert json.loads(out)["target"] == "/echo?plain=1"
    assert "proxy-authorization" not in _header_names(origin)
    [inner] = [f for f in ends.flows if f.request.method == "GET"]
    assert inner.metadata[PROXY_USER] == "alice"


@pytest_twisted.ensureDeferred
async def test_refused_tunnel_does_not_authorize_later_requests(
        origin: Running, start_https_proxy: Any) -> None:
    """
    Credentials on a CONNECT whose tunnel does not open (the origin refuses
    it: 502) do not let the plain requests that follow on the same
    connection through without their own.
    """
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        closed = sock.getsockname()[1]
    proxy = await start_https_proxy(addons=[ProxyAuth(USERS)])
    data = (f"CONNECT 127.0.0.1:{closed} HTTP/1.1\r\nHost: 127.0.0.1:{closed}\r\n"
            f"{_authorization('alice', 'open:sesame')}\r\n"
            f"GET http://127.0.0.1:{origin.port}/echo HTTP/1.1\r\n"
            f"Host: 127.0.0.1:{origin.port}\r\nConnection: close\r\n\r\n").encode()
    refused, after = parse_responses(await raw(proxy.port, data))
    assert refused.status == 502
    assert after.status == 407
    assert origin.factory.received == []
