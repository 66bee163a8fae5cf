"""
``twistd twistproxy`` run many times (issue 18): the PROXY protocol on a
listener, the health and metrics listener (one process and ``--workers``),
and one CA shared by several processes.
"""

from __future__ import annotations

import shutil
import socket
import ssl
import tempfile
import urllib.error
import urllib.request
from pathlib import Path

import pytest
import pytest_twisted
from twisted.internet.threads import deferToThread

from tests.e2e.conftest import parse_responses, raw
from tests.e2e.test_twistd import (
    accepting,
    free_port,
    output_contains,
    sleep,
    spawn,
    start_twistd,
    twistd_command,
)
from tests.e2e.test_twistd import origin_port as origin_port  # the fixture
from twistproxy.certs import CA_CERT_PEM, CA_FILE
from twistproxy.flowfile import load_flows

pytestmark = pytest.mark.e2e


def fetch(port: int, path: str) -> tuple[int, str]:
    """GET http://127.0.0.1:*port*/*path*: its status and body (blocking)."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as r:
            return int(r.status), r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def metric(text: str, line_start: str) -> float:
    """The value of the first line of *text* starting with *line_start*, 0 if none."""
    for line in text.splitlines():
        if line.startswith(line_start):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


@pytest_twisted.ensureDeferred
async def test_proxy_protocol_listener(tmp_path: Path, origin_port: int) -> None:
    """
    ``--port haproxy:...``: a request after a v1 header is the header's
    client's (flow log, save file, proxy auth's log); one without a header
    is closed unanswered, and counted.
    """
    port, metrics = free_port(), free_port()
    saved = tmp_path / "flows.jsonl"
    child = spawn([*twistd_command(), "-n", "--pidfile=", "twistproxy",
                   "--port", f"haproxy:tcp:{port}:interface=127.0.0.1",
                   "--metrics-port", str(metrics), "--proxy-auth", "u:p",
                   "--save", str(saved)], tmp_path)
    try:
        await output_contains(child, "twistproxy listening on", 15.0)
        header = f"PROXY TCP4 203.0.113.7 127.0.0.1 5555 {port}\r\n".encode()
        request = (f"GET http://127.0.0.1:{origin_port}/echo HTTP/1.1\r\n"
                   "Proxy-Authorization: Basic dTpw\r\nConnection: close\r\n\r\n").encode()
        [answered] = parse_responses(await raw(port, header + request, timeout=10))
        assert answered.status == 200
        refused = await raw(port, request, timeout=10)
        assert refused == b""
        await output_contains(child, "203.0.113.7:5555 GET http://127.0.0.1:")
        await output_contains(child, "refused a connection from 127.0.0.1:")
        # A request without credentials: the 407 is logged for the real client.
        bare = f"GET http://127.0.0.1:{origin_port}/echo HTTP/1.1\r\nConnection: close\r\n\r\n"
        header2 = f"PROXY TCP4 198.51.100.2 127.0.0.1 6666 {port}\r\n".encode()
        [denied] = parse_responses(await raw(port, header2 + bare.encode(), timeout=10))
        assert denied.status == 407
        await output_contains(child, "198.51.100.2:6666 GET")
        status, text = await deferToThread(fetch, metrics, "/metrics")
        assert status == 200
        assert metric(text, "twistproxy_proxy_header_refused_total") == 1
    finally:
        await child.stop()
    flows = load_flows(saved)
    assert [f.client_conn.peername for f in flows] == [("203.0.113.7", 5555),
                                                        ("198.51.100.2", 6666)]


@pytest_twisted.ensureDeferred
async def test_health_and_metrics(tmp_path: Path, origin_port: int) -> None:
    """
    ``/healthz`` is 200 when serving; ``/metrics`` counts flows and errors by
    kind; after SIGTERM ``/healthz`` says 503 while the proxy still
    accepts for ``--drain-delay``.
    """
    metrics = free_port()
    child, port = await start_twistd(tmp_path, "--metrics-port", str(metrics), "-q",
                                     "--drain-delay", "3")
    try:
        assert await deferToThread(fetch, metrics, "/healthz") == (200, "ready\n")
        closed = free_port()
        for target in (f"127.0.0.1:{origin_port}/bytes/100", f"127.0.0.1:{closed}/"):
            await raw(port, f"GET http://{target} HTTP/1.1\r\nConnection: close\r\n\r\n"
                      .encode(), timeout=10)
        status, text = await deferToThread(fetch, metrics, "/metrics")
        assert status == 200
        assert metric(text, 'twistproxy_flows_total{method="GET",status="2xx"}') == 1
        assert metric(text, 'twistproxy_errors_total{kind="connect_failed"}') == 1
        assert metric(text, 'twistproxy_body_bytes_total{direction="response"}') == 100
        # Every flow ran the response or error hooks (the metrics addon's own).
        answered = metric(text, 'twistproxy_hook_seconds_count{hook="response"}')
        failed = metric(text, 'twistproxy_hook_seconds_count{hook="error"}')
        assert (answered, failed) == (1, 1), text
        assert metric(text, "process_open_fds") > 0
        assert child.transport is not None
        child.transport.signalProcess("TERM")
        await output_contains(child, "accepting for 3 s more")
        assert await deferToThread(fetch, metrics, "/healthz") == (503, "draining\n")
        [late] = parse_responses(await raw(
            port, f"GET http://127.0.0.1:{origin_port}/bytes/10 HTTP/1.1\r\n"
            "Connection: close\r\n\r\n".encode(), timeout=10))
        assert late.status == 200  # still served during the delay
        await child.wait(20.0)
    finally:
        await child.stop()


@pytest_twisted.ensureDeferred
async def test_workers_metrics_are_summed(tmp_path: Path, origin_port: int) -> None:
    """
    ``--workers 2 --metrics-port``: the supervisor serves the sum of both
    workers' counters, from a directory it removes when it stops.
    """
    metrics = free_port()
    before = set(Path(tempfile.gettempdir()).glob("twistproxy-metrics-*"))
    child, port = await start_twistd(tmp_path, "--workers", "2", "-q",
                                     "--metrics-port", str(metrics))
    try:
        for _ in range(150):  # both workers accepting (bounded: 15 s)
            if child.output.count(" accepting") >= 2:
                break
            await sleep(0.1)
        for _ in range(20):
            await raw(port, f"GET http://127.0.0.1:{origin_port}/bytes/10 HTTP/1.1\r\n"
                      "Connection: close\r\n\r\n".encode(), timeout=10)
        counted = 0.0
        for _ in range(30):  # the workers push their counts once a second (bounded: 6 s)
            status, text = await deferToThread(fetch, metrics, "/metrics")
            assert status == 200, text
            counted = metric(text, 'twistproxy_flows_total{method="GET",status="2xx"}')
            if counted == 20:
                break
            await sleep(0.2)
        assert counted == 20
        assert await deferToThread(fetch, metrics, "/healthz") == (200, "ready\n")
        during = set(Path(tempfile.gettempdir()).glob("twistproxy-metrics-*"))
        assert len(during - before) == 1
    finally:
        await child.stop()
    assert not (during - before) & set(Path(tempfile.gettempdir()).glob("twistproxy-metrics-*"))


def _leaf_verifies(port: int, origin: int, cafile: Path) -> bytes:
    """
    CONNECT through the proxy on *port*, then TLS verified against
    *cafile* alone: the leaf the proxy minted for ``localhost`` (blocking).

    :returns: The leaf's issuer, DER.
    """
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(f"CONNECT localhost:{origin} HTTP/1.1\r\nHost: localhost:{origin}\r\n\r\n"
                     .encode())
        head = b""
        while b"\r\n\r\n" not in head:
            chunk = sock.recv(1024)
            assert chunk, head
            head += chunk
        assert head.startswith(b"HTTP/1.1 200"), head
        context = ssl.create_default_context(cafile=str(cafile))
        with context.wrap_socket(sock, server_hostname="localhost") as tls:
            cert = tls.getpeercert()
            assert cert is not None
            return repr(cert["issuer"]).encode()


@pytest_twisted.ensureDeferred
async def test_one_ca_for_many_processes(tmp_path: Path, origin_port: int) -> None:
    """
    Two processes on one --ca-dir (shared storage) and one given a copy of
    the CA file (--ca) mint leaves that a client trusting that one CA
    certificate accepts: nothing per host needs trusting.
    """
    shared = tmp_path / "shared-ca"
    copied = tmp_path / "elsewhere" / CA_FILE
    children = []
    try:
        first, port1 = await start_twistd(tmp_path, "--ca-dir", str(shared), "-q")
        children.append(first)
        second, port2 = await start_twistd(tmp_path, "--ca-dir", str(shared), "-q")
        children.append(second)
        copied.parent.mkdir()
        shutil.copy(shared / CA_FILE, copied)
        third, port3 = await start_twistd(tmp_path, "--ca", str(copied), "-q")
        children.append(third)
        await accepting(port3, third)
        cafile = shared / CA_CERT_PEM
        issuers = {await deferToThread(_leaf_verifies, port, origin_port, cafile)
                   for port in (port1, port2, port3)}
        assert len(issuers) == 1
    finally:
        for child in children:
            await child.stop()
