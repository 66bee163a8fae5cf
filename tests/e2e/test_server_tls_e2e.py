"""
The server side's TLS facts through real sockets on 127.0.0.1: an HTTPS
origin reached through the proxy (inside an intercepted tunnel, and for an
``https`` URL sent in the clear), the flow's server record with the
handshake's facts and the origin's certificate, kept by a flow file and
shown by the web UI's flow detail.
"""

from __future__ import annotations

import datetime
import hashlib
import http.client
import io
import json
from typing import Any

import pytest
import pytest_twisted
from cryptography.hazmat.primitives.serialization import Encoding
from twisted.internet import reactor
from twisted.internet.task import deferLater
from twisted.internet.threads import deferToThread

from tests.e2e.conftest import curl, needs_curl, parse_responses, raw
from tests.e2e.test_hooks_e2e import Ends
from twistproxy.connection import Server
from twistproxy.flowfile import dump_flows, read_flows
from twistproxy.web.service import WebUI

pytestmark = pytest.mark.e2e


def assert_origin_facts(server: Server, pki: Any, sni: str | None) -> None:
    """*server* holds the facts of a handshake with an origin presenting ``pki.good``."""
    cert = pki.good.certificate
    assert server.tls_established
    assert server.sni == sni
    assert server.alpn == b"http/1.1"
    assert server.tls_version in ("TLSv1.2", "TLSv1.3")
    certificate = server.certificate
    assert certificate is not None
    assert certificate.subject == "CN=localhost"
    assert certificate.issuer == "CN=origin test CA"
    assert certificate.dns_names == ("localhost",)
    assert certificate.ip_addresses == ("127.0.0.1", "::1")
    assert certificate.sha256 == hashlib.sha256(cert.public_bytes(Encoding.DER)).hexdigest()
    assert int(certificate.serial, 16) == cert.serial_number
    assert certificate.not_before == cert.not_valid_before_utc.timestamp()
    assert certificate.not_after == cert.not_valid_after_utc.timestamp()


@needs_curl
@pytest_twisted.ensureDeferred
async def test_intercepted_flows_have_server_tls(pki: Any, start_tls_origin: Any,
                                                  start_https_proxy: Any) -> None:
    """
    Two requests in one intercepted tunnel to ``localhost`` (the CONNECT's
    connection, TLS started on it with the client's SNI, then kept alive):
    both flows share the one server record, with the SNI sent, ALPN,
    version and the origin's certificate; a flow file keeps them.
    """
    origin = start_tls_origin(pki.good)
    ends = Ends()
    proxy = await start_https_proxy(addons=[ends])
    url = f"https://localhost:{origin.port}/echo"
    out, err, code = await curl("-x", f"http://127.0.0.1:{proxy.port}",
                                "--cacert", str(pki.proxy_ca_pem), url, url)
    assert code == 0, err
    assert out.count(b'"target": "/echo"') == 2
    first, second = [f for f in ends.flows if f.request.method == "GET"]
    assert origin.factory.connections == 1
    assert second.server_conn is first.server_conn  # the connection reused
    assert_origin_facts(first.server_conn, pki, "localhost")
    out_file = io.BytesIO()
    dump_flows([first, second], out_file)
    restored = list(read_flows(io.BytesIO(out_file.getvalue())))
    for flow in restored:
        assert_origin_facts(flow.server_conn, pki, "localhost")
    assert restored[0].server_conn.certificate == first.server_conn.certificate


@pytest_twisted.ensureDeferred
async def test_pooled_connection_has_server_tls(pki: Any, start_tls_origin: Any,
                                                start_https_proxy: Any) -> None:
    """
    ``GET https://127.0.0.1:PORT/`` sent in the clear: the pool's own TLS
    connection (an endpoint wrapped in TLS) records the facts, no SNI for
    an IP address; a second request, from another client connection,
    takes that kept-alive connection and has the same facts.
    """
    origin = start_tls_origin(pki.good)
    ends = Ends()
    proxy = await start_https_proxy(addons=[ends])
    for n in (1, 2):
        request = (f"GET https://127.0.0.1:{origin.port}/echo?n={n} HTTP/1.1\r\n"
                   "Connection: close\r\n\r\n").encode()
        [parsed] = parse_responses(await raw(proxy.port, request))
        assert parsed.status == 200
    assert proxy.factory.pool.reused == 1 and origin.factory.connections == 1
    first, second = ends.flows
    assert second.server_conn is first.server_conn
    assert_origin_facts(first.server_conn, pki, None)


def _get(port: int, path: str, token: str) -> tuple[int, Any]:
    """A GET to the web UI (blocking): status and JSON body."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request("GET", path, headers={"X-Twistproxy-Token": token})
        response = conn.getresponse()
        return response.status, json.loads(response.read())
    finally:
        conn.close()


@needs_curl
@pytest_twisted.ensureDeferred
async def test_web_detail_shows_server_tls(pki: Any, start_tls_origin: Any,
                                           start_https_proxy: Any) -> None:
    """
    The web UI's flow detail of an intercepted HTTPS flow has the server
    connection's TLS facts and the origin's certificate.
    """
    origin = start_tls_origin(pki.good)
    ui = WebUI(reactor=reactor, port=0)
    proxy = await start_https_proxy(addons=ui.addons)
    web = ui.service()
    web.startService()
    try:
        out, err, code = await curl("-x", f"http://127.0.0.1:{proxy.port}",
                                    "--cacert", str(pki.proxy_ca_pem),
                                    f"https://localhost:{origin.port}/echo?web=1")
        assert code == 0, err
        listed: Any = None
        for _ in range(50):  # the recorder writes every 100 ms
            status, listed = await deferToThread(
                _get, ui.guard.port, "/api/flows?filter=~u%20web%3D1", ui.guard.token)
            if status == 200 and listed["total"] == 1:
                break
            await deferLater(reactor, 0.05, lambda: None)
        assert listed is not None and listed["total"] == 1, listed
        flow_id = listed["flows"][0]["id"]
        status, detail = await deferToThread(
            _get, ui.guard.port, f"/api/flows/{flow_id}", ui.guard.token)
        assert status == 200
        server = detail["server_conn"]
        assert server["tls"] is True
        assert (server["sni"], server["alpn"]) == ("localhost", "http/1.1")
        assert server["tls_version"].startswith("TLSv1.")
        certificate = server["certificate"]
        assert certificate["subject"] == "CN=localhost"
        assert certificate["issuer"] == "CN=origin test CA"
        assert certificate["dns_names"] == ["localhost"]
        assert certificate["ip_addresses"] == ["127.0.0.1", "::1"]
        not_after = datetime.datetime.fromtimestamp(certificate["not_after"], datetime.UTC)
        assert not_after == pki.good.certificate.not_valid_after_utc
        assert detail["client_conn"]["certificate"] is None  # the client presents none
    finally:
        await web.stopService()
