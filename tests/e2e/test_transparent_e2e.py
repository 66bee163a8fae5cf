"""
End-to-end test of the ``transparent`` mode (:mod:`twistproxy._transparent`)
with a real iptables ``REDIRECT``: two network namespaces, a client's and a
gateway's joined by a veth pair; on the gateway an origin (on 10.200.2.2:80,
an address of its own) and ``twistd twistproxy --mode transparent``, and a
``PREROUTING`` rule that redirects the client's port-80 traffic to the
proxy, as on a container's or VM's gateway.

It needs root, ``ip`` and ``iptables``; it is skipped with the reason
otherwise.  The namespaces (and with them the veth pair and the rule) are
deleted at the end, whatever happened.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from twisted.internet.utils import getProcessOutputAndValue

from tests.e2e.test_twistd import output_contains, spawn, twistd_command
from twistproxy.flowfile import load_flows

pytestmark = pytest.mark.e2e

IP = shutil.which("ip")
IPTABLES = shutil.which("iptables")
CURL = shutil.which("curl")
ORIGIN = "10.200.2.2"  # what the client asks for
GATEWAY = "10.200.1.1"  # where the proxy listens
PROXY_PORT = 8081

def _origin_script(port: int) -> str:
    """
    An origin on ORIGIN:*port* answering every GET with its path and the
    Host it was sent; over TLS when given a certificate and key file.
    """
    return f"""
import json, http.server, ssl, sys
class Echo(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        body = json.dumps({{"path": self.path, "host": self.headers["Host"]}}).encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
server = http.server.HTTPServer(("{ORIGIN}", {port}), Echo)
if len(sys.argv) > 2:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(sys.argv[1], sys.argv[2])
    server.socket = context.wrap_socket(server.socket, server_side=True)
print("origin ready", flush=True)
server.serve_forever()
"""


def _why_not() -> str | None:
    if sys.platform != "linux":
        return "transparent mode is Linux-only"
    if os.geteuid() != 0:
        return "needs root to build network namespaces and iptables rules"
    missing = [name for name, path in (("ip", IP), ("iptables", IPTABLES), ("curl", CURL))
               if path is None]
    if missing:
        return f"needs {', '.join(missing)}"
    return None


def _run(*args: str) -> None:
    subprocess.run(args, check=True, capture_output=True, timeout=10)


@pytest.fixture
def namespaces() -> Iterator[tuple[str, str]]:
    """The client's and the gateway's namespaces, wired; deleted after."""
    why = _why_not()
    if why is not None:
        pytest.skip(why)
    assert IP is not None and IPTABLES is not None
    tag = uuid.uuid4().hex[:6]
    client, gateway = f"tpc-{tag}", f"tpg-{tag}"
    try:
        _run(IP, "netns", "add", client)
    except (subprocess.CalledProcessError, OSError) as e:
        pytest.skip(f"cannot create a network namespace: {e}")
    try:
        _run(IP, "netns", "add", gateway)
        _run(IP, "link", "add", f"vc{tag}", "type", "veth", "peer", "name", f"vg{tag}")
        _run(IP, "link", "set", f"vc{tag}", "netns", client)
        _run(IP, "link", "set", f"vg{tag}", "netns", gateway)
        for ns, device, address in ((client, f"vc{tag}", "10.200.1.2/24"),
                                    (gateway, f"vg{tag}", f"{GATEWAY}/24")):
            _run(IP, "-n", ns, "link", "set", "lo", "up")
            _run(IP, "-n", ns, "addr", "add", address, "dev", device)
            _run(IP, "-n", ns, "link", "set", device, "up")
        _run(IP, "-n", gateway, "addr", "add", f"{ORIGIN}/32", "dev", "lo")
        _run(IP, "-n", client, "route", "add", "default", "via", GATEWAY)
        try:
            _run(IP, "netns", "exec", gateway, IPTABLES, "-t", "nat", "-A", "PREROUTING",
                 "-i", f"vg{tag}", "-p", "tcp", "--dport", "80",
                 "-j", "REDIRECT", "--to-ports", str(PROXY_PORT))
        except subprocess.CalledProcessError as e:
            pytest.skip(f"iptables cannot add a REDIRECT rule here: {e.stderr.decode()[:200]}")
        yield client, gateway
    finally:
        for ns in (client, gateway):
            subprocess.run([IP, "netns", "del", ns], capture_output=True, timeout=10)


async def _curl_in(ns: str, *args: str) -> tuple[bytes, bytes, int]:
    assert IP is not None and CURL is not None
    out, err, code = await getProcessOutputAndValue(
        IP, ("netns", "exec", ns, CURL, "--silent", "--show-error", "--max-time", "10", *args))
    return out, err, code


@pytest_twisted.ensureDeferred
async def test_redirected_connection(namespaces: tuple[str, str], tmp_path: Path) -> None:
    """
    A client's connection to ORIGIN:80, redirected by the gateway's rule,
    is served by the transparent listener: the origin answers (Host as the
    client sent it) and the saved flow names the original destination.  A
    connection made to the listener itself is closed, with a log line.
    """
    assert IP is not None
    client, gateway = namespaces
    origin = spawn([IP, "netns", "exec", gateway, sys.executable, "-c", _origin_script(80)],
                   tmp_path)
    saved = tmp_path / "flows.jsonl"
    proxy = spawn([IP, "netns", "exec", gateway, *twistd_command(), "-n", "--pidfile=",
                   "twistproxy", "--save", str(saved),
                   "--mode", f"transparent@{GATEWAY}:{PROXY_PORT}"], tmp_path)
    try:
        await output_contains(origin, "origin ready", timeout=10)
        await output_contains(proxy, f"listening on {GATEWAY}:{PROXY_PORT}", timeout=20)
        out, err, code = await _curl_in(client, f"http://{ORIGIN}/through?x=1")
        assert code == 0, err
        assert json.loads(out) == {"path": "/through?x=1", "host": ORIGIN}
        await output_contains(proxy, "/through?x=1 -> 200")
        out, err, code = await _curl_in(client, f"http://{GATEWAY}:{PROXY_PORT}/direct")
        assert code != 0 and out == b""
        await output_contains(proxy, "was not redirected")
    finally:
        await proxy.stop()
        await origin.stop()
    flows = [flow for flow in load_flows(saved) if flow.request.method == "GET"]
    [flow] = flows
    assert (flow.request.host, flow.request.port) == (ORIGIN, 80)
    assert flow.request.headers["host"] == ORIGIN
    assert flow.mode == f"transparent@{GATEWAY}:{PROXY_PORT}"
    assert flow.response is not None and flow.response.status_code == 200


@pytest_twisted.ensureDeferred
async def test_redirected_tls_by_sni(namespaces: tuple[str, str], tmp_path: Path,
                                     pki: Any) -> None:
    """
    A client's TLS connection to ORIGIN:443, redirected, is intercepted
    with a certificate for the name in its ClientHello (SNI), and goes on
    to the original destination with that name verified.
    """
    from cryptography.hazmat.primitives import serialization

    from tests.e2e.pki import make_ca, make_leaf

    assert IP is not None and IPTABLES is not None
    client, gateway = namespaces
    _run(IP, "netns", "exec", gateway, IPTABLES, "-t", "nat", "-A", "PREROUTING",
         "-p", "tcp", "--dport", "443", "-j", "REDIRECT", "--to-ports", str(PROXY_PORT))
    origin_ca = make_ca("transparent origin CA")
    leaf = make_leaf(origin_ca, ["origin.test"])
    cert_pem, key_pem, ca_pem = (tmp_path / name for name in ("o.pem", "o.key", "ca.pem"))
    cert_pem.write_bytes(leaf.certificate.public_bytes(serialization.Encoding.PEM))
    key_pem.write_bytes(leaf.key.private_bytes(serialization.Encoding.PEM,
                                               serialization.PrivateFormat.PKCS8,
                                               serialization.NoEncryption()))
    ca_pem.write_bytes(origin_ca[0].public_bytes(serialization.Encoding.PEM))
    origin = spawn([IP, "netns", "exec", gateway, sys.executable, "-c", _origin_script(443),
                    str(cert_pem), str(key_pem)], tmp_path)
    saved = tmp_path / "flows.jsonl"
    proxy = spawn([IP, "netns", "exec", gateway, *twistd_command(), "-n", "--pidfile=",
                   "twistproxy", "--save", str(saved), "--ca-dir", str(pki.proxy_ca_pem.parent),
                   "--upstream-ca", str(ca_pem),
                   "--mode", f"transparent@{GATEWAY}:{PROXY_PORT}"], tmp_path)
    try:
        await output_contains(origin, "origin ready", timeout=10)
        await output_contains(proxy, f"listening on {GATEWAY}:{PROXY_PORT}", timeout=20)
        out, err, code = await _curl_in(
            client, "--cacert", str(pki.proxy_ca_pem),
            "--resolve", f"origin.test:443:{ORIGIN}", "https://origin.test/tls?y=2")
        assert code == 0, err
        assert json.loads(out) == {"path": "/tls?y=2", "host": "origin.test"}
        await output_contains(proxy, "/tls?y=2 -> 200")
    finally:
        await proxy.stop()
        await origin.stop()
    [flow] = [flow for flow in load_flows(saved) if flow.request.method == "GET"]
    assert flow.request.scheme == "https"
    assert (flow.request.host, flow.request.port) == (ORIGIN, 443)
    assert flow.client_conn.sni == "origin.test"
