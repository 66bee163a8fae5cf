"""
The documentation's examples (``docs/examples/``, included in the pages with
``literalinclude``) run as a reader would run them, against real sockets on
127.0.0.1: an addon file with ``twistd -n twistproxy --addon FILE``, a
program with ``python FILE``, a ``.tac`` with ``twistd -ny FILE``, a shell
script with ``sh``.

What a test changes in an example, and only that: the port numbers the
example listens on or connects to (8080, 8081, 8000, 5000) become free ports
and the origin's, since those are taken or unreachable here; where an
example filters on ``example.com`` and a request must really travel, the
filter names 127.0.0.1 instead. Every replacement is checked to apply, so an
example that changes its ports fails here rather than running unchanged.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import sys
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from twisted.internet.threads import deferToThread

from tests.e2e.conftest import Running
from tests.e2e.test_twistd import (
    CURL,
    accepting,
    curl,
    free_port,
    output_contains,
    run,
    sleep,
    spawn_listening,
    start_twistd,
    twistd_command,
)
from twistproxy.connection import Client, Server
from twistproxy.flowfile import dump_flows, load_flows
from twistproxy.http import HTTPFlow, Request, Response

pytestmark = [pytest.mark.e2e, pytest.mark.skipif(CURL is None, reason="curl is not installed")]

EXAMPLES = Path(__file__).resolve().parents[2] / "docs" / "examples"


def localized(name: str, directory: Path, replacements: Mapping[str, str]) -> Path:
    """
    Copy the example *name* into *directory* with *replacements* made: a
    number is replaced where it stands alone, anything else where it occurs;
    each must occur at least once.

    :returns: The copy's path.
    """
    text = (EXAMPLES / name).read_text(encoding="utf-8")
    for old, new in replacements.items():
        pattern = rf"(?<!\d){re.escape(old)}(?!\d)" if old.isdigit() else re.escape(old)
        text, count = re.subn(pattern, new, text)
        assert count, f"{old!r} is not in {name}"
    copy = directory / name
    copy.write_text(text, encoding="utf-8")
    return copy


async def fetch(*args: str, cwd: Path) -> tuple[dict[str, str], str]:
    """
    curl *args*; the response's headers (lower-case names, the last
    response's) and its body.
    """
    code, output = await curl("-D", "-", *args, cwd=cwd)
    assert code == 0, output
    head, body = "", output
    while body.startswith("HTTP/"):  # interim and CONNECT heads come first
        head, _, body = body.partition("\r\n\r\n")
    headers = {}
    for line in head.split("\r\n")[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return headers, body


def echoed(body: str) -> dict[str, Any]:
    """The origin's ``/echo`` description of the request it got."""
    result: dict[str, Any] = json.loads(body)
    return result


def recorded(url: str, body: str = "hi\n", **headers: str) -> HTTPFlow:
    """A flow recorded for a GET of *url* answered 200 with *body*."""
    flow = HTTPFlow(Client(), Server(address=("example.com", 80)))
    flow.request = Request.make("GET", url, headers=headers)
    flow.response = Response.make(200, body)
    return flow


@pytest.fixture
def python_on_path(tmp_path: Path) -> Iterator[dict[str, str]]:
    """An environment whose ``python`` is this interpreter, for shell examples."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "python").symlink_to(sys.executable)
    env = dict(os.environ)
    env["PATH"] = f"{bin_dir}{os.pathsep}{env.get('PATH', '')}"
    env["PYTHONPATH"] = os.pathsep.join(
        p for p in (str(EXAMPLES.parents[1]), env.get("PYTHONPATH", "")) if p
    )
    yield env


# -- addon files, loaded by twistd -----------------------------------------


@pytest_twisted.ensureDeferred
async def test_shout(tmp_path: Path, origin: Running) -> None:
    """shout.py upper-cases a streamed text/plain body and prints the URL and size."""
    child, port = await start_twistd(tmp_path, "--addon", str(EXAMPLES / "shout.py"))
    try:
        url = f"http://127.0.0.1:{origin.port}/trickle/3/10"
        _, body = await fetch("-x", f"http://127.0.0.1:{port}", url, cwd=tmp_path)
        assert body == "PIECE-0\nPIECE-1\nPIECE-2\n"
        await output_contains(child, f"{url} 24 False")
    finally:
        await child.stop()


@pytest_twisted.ensureDeferred
async def test_censor(tmp_path: Path) -> None:
    """
    censor.py answers ``status?`` itself and hides ``secret`` in the other
    messages (a ``websockets`` client through the proxy, an echoing origin).
    """
    from websockets.sync.client import connect

    from tests.e2e.test_websocket_e2e import Origin

    origin = Origin()
    child, port = await start_twistd(tmp_path, "--addon", str(EXAMPLES / "censor.py"))
    try:
        def talk() -> list[str | bytes]:
            with connect(f"ws://127.0.0.1:{origin.port}/chat", open_timeout=10,
                         proxy=f"http://127.0.0.1:{port}") as ws:
                ws.send("status?")
                first = ws.recv(timeout=10)
                ws.send("my secret")
                return [first, ws.recv(timeout=10)]

        assert await deferToThread(talk) == ["status: proxied", "echo:my ******"]
        assert origin.received == ["my ******"]  # the origin never saw "status?"
        await output_contains(child, "WebSocket open: http://127.0.0.1:")
        await output_contains(child, "closed 1000 after 4 messages")
    finally:
        await child.stop()
        origin.stop()


@pytest_twisted.ensureDeferred
async def test_stamp(tmp_path: Path, origin: Running) -> None:
    """stamp.py declares options: ``--set`` sets the stamp, ``skip`` leaves a host alone."""
    stamp = str(EXAMPLES / "stamp.py")
    code, output = await run([*twistd_command(), "--pidfile=", "twistproxy", "--addon", stamp,
                              "--options"], tmp_path)
    assert code == 0 and "The X-Stamp of every response." in output, output
    child, port = await start_twistd(tmp_path, "--addon", stamp, "--set", "stamp=mine",
                                     "--set", "skip=localhost")
    try:
        proxy = f"http://127.0.0.1:{port}"
        headers, _ = await fetch("-x", proxy, f"http://127.0.0.1:{origin.port}/echo", cwd=tmp_path)
        assert headers["x-stamp"] == "mine"
        headers, _ = await fetch("-x", proxy, f"http://localhost:{origin.port}/echo", cwd=tmp_path)
        assert "x-stamp" not in headers
    finally:
        await child.stop()
    code, output = await run([*twistd_command(), "-n", "--pidfile=", "twistproxy", "--port",
                              str(free_port()), "--addon", stamp, "--set", "stamp="], tmp_path)
    assert code != 0 and "stamp must not be empty" in output, output


@pytest_twisted.ensureDeferred
async def test_delay(tmp_path: Path, origin: Running) -> None:
    """delay.py holds requests and responses, then marks the response."""
    child, port = await start_twistd(tmp_path, "--addon", str(EXAMPLES / "delay.py"))
    try:
        headers, body = await fetch("-x", f"http://127.0.0.1:{port}",
                                    f"http://127.0.0.1:{origin.port}/echo", cwd=tmp_path)
        assert headers["x-delayed"] == "0.5"
        assert echoed(body)["method"] == "GET"
    finally:
        await child.stop()


@pytest_twisted.ensureDeferred
async def test_holdposts(tmp_path: Path, origin: Running) -> None:
    """holdposts.py holds a POST until its timer resumes it; then it goes through."""
    child, port = await start_twistd(tmp_path, "--addon", str(EXAMPLES / "holdposts.py"))
    try:
        _, body = await fetch("-x", f"http://127.0.0.1:{port}", "--data-raw", "held",
                              f"http://127.0.0.1:{origin.port}/echo", cwd=tmp_path)
        assert echoed(body)["method"] == "POST"
        assert origin.factory.received[-1].body == b"held"
    finally:
        await child.stop()


@pytest_twisted.ensureDeferred
async def test_tunnel_policy(tmp_path: Path) -> None:
    """tunnel_policy.py answers a CONNECT to a port other than 443 with 403."""
    child, port = await start_twistd(tmp_path, "--addon", str(EXAMPLES / "tunnel_policy.py"))
    try:
        code, output = await curl("-p", "-x", f"http://127.0.0.1:{port}",
                                  "http://127.0.0.1:8443/", cwd=tmp_path)
        assert code != 0 and "403" in output, output
    finally:
        await child.stop()


# -- programs -------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_slow_proxy(tmp_path: Path, origin: Running) -> None:
    """slow_proxy.py's request class adds a header each way and logs the flow."""
    port = free_port()
    program = localized("slow_proxy.py", tmp_path, {"8080": str(port)})
    child = await spawn_listening([sys.executable, str(program)], tmp_path, port)
    try:
        url = f"http://127.0.0.1:{origin.port}/echo"
        headers, body = await fetch("-x", f"http://127.0.0.1:{port}", url, cwd=tmp_path)
        assert headers["x-proxied-by"] == "twistproxy"
        assert ["X-Held-For", "100ms"] in echoed(body)["headers"]
        await output_contains(child, f"GET {url} -> 200")
    finally:
        await child.stop()


@pytest_twisted.ensureDeferred
async def test_https_proxy(tmp_path: Path, pki: Any, start_tls_origin: Any) -> None:
    """
    https_proxy.py makes its CA in ~/.twistproxy and intercepts HTTPS for a
    client trusting it (the origin's CA is the system's here: SSL_CERT_FILE).
    """
    origin = start_tls_origin(pki.good)
    port = free_port()
    program = localized("https_proxy.py", tmp_path, {"8080": str(port)})
    os.environ["SSL_CERT_FILE"] = str(pki.origin_ca_pem)
    try:
        child = await spawn_listening([sys.executable, str(program)], tmp_path, port)
    finally:
        del os.environ["SSL_CERT_FILE"]
    try:
        ca = tmp_path / ".twistproxy" / "twistproxy-ca-cert.pem"
        url = f"https://localhost:{origin.port}/echo"
        _, body = await fetch("--cacert", str(ca), "-x", f"http://127.0.0.1:{port}", url,
                              cwd=tmp_path)
        assert echoed(body)["method"] == "GET"
        await output_contains(child, f"GET {url} -> 200")
    finally:
        await child.stop()


@pytest_twisted.ensureDeferred
async def test_one_server(tmp_path: Path, origin: Running) -> None:
    """one_server.py sends every request to one server, whatever its host."""
    port = free_port()
    program = localized("one_server.py", tmp_path, {"8080": str(port), "8000": str(origin.port)})
    child = await spawn_listening([sys.executable, str(program)], tmp_path, port)
    try:
        _, body = await fetch("-x", f"http://127.0.0.1:{port}", "http://example.com/echo",
                              cwd=tmp_path)
        assert ["Host", "example.com"] in echoed(body)["headers"]
    finally:
        await child.stop()


@pytest_twisted.ensureDeferred
async def test_proxy_tac(tmp_path: Path, origin: Running) -> None:
    """proxy.tac runs under ``twistd -ny`` and proxies."""
    port = free_port()
    tac = localized("proxy.tac", tmp_path, {"8080": str(port)})
    child = await spawn_listening([*twistd_command(), "--pidfile=", "-ny", str(tac)], tmp_path,
                                  port)
    try:
        url = f"http://127.0.0.1:{origin.port}/echo"
        _, body = await fetch("-x", f"http://127.0.0.1:{port}", url, cwd=tmp_path)
        assert echoed(body)["method"] == "GET"
        await output_contains(child, f"GET {url} -> 200")
    finally:
        await child.stop()


@pytest_twisted.ensureDeferred
async def test_listen(tmp_path: Path, origin: Running) -> None:
    """listen.py listens without a service and says where."""
    port = free_port()
    program = localized("listen.py", tmp_path, {"8080": str(port)})
    child = await spawn_listening([sys.executable, str(program)], tmp_path, port)
    try:
        await output_contains(child, f"listening on {port}")
        _, body = await fetch("-x", f"http://127.0.0.1:{port}",
                              f"http://127.0.0.1:{origin.port}/echo", cwd=tmp_path)
        assert echoed(body)["method"] == "GET"
    finally:
        await child.stop()


@pytest_twisted.ensureDeferred
async def test_listeners(tmp_path: Path, origin: Running) -> None:
    """listeners.py: a regular proxy and a reverse proxy in front of the origin."""
    regular, reverse = free_port(), free_port()
    program = localized("listeners.py", tmp_path,
                        {"8080": str(regular), "8081": str(reverse), "5000": str(origin.port)})
    child = await spawn_listening([sys.executable, str(program)], tmp_path, regular)
    try:
        await accepting(reverse, child)
        _, body = await fetch("-x", f"http://127.0.0.1:{regular}",
                              f"http://127.0.0.1:{origin.port}/echo", cwd=tmp_path)
        assert echoed(body)["target"] == "/echo"
        _, body = await fetch(f"http://127.0.0.1:{reverse}/echo?via=reverse", cwd=tmp_path)
        assert echoed(body)["target"] == "/echo?via=reverse"
    finally:
        await child.stop()


@pytest_twisted.ensureDeferred
async def test_shared_addons(tmp_path: Path, origin: Running) -> None:
    """shared_addons.tac: both listeners stamp with the manager's option."""
    first, second = free_port(), free_port()
    (tmp_path / "stamp.py").write_bytes((EXAMPLES / "stamp.py").read_bytes())
    tac = localized("shared_addons.tac", tmp_path, {"8080": str(first), "8081": str(second)})
    child = await spawn_listening([*twistd_command(), "--pidfile=", "-ny", str(tac)], tmp_path,
                                first)
    try:
        await accepting(second, child)
        for port in (first, second):
            headers, _ = await fetch("-x", f"http://127.0.0.1:{port}",
                                     f"http://127.0.0.1:{origin.port}/echo", cwd=tmp_path)
            assert headers["x-stamp"] == "mine"
    finally:
        await child.stop()


@pytest_twisted.ensureDeferred
async def test_rewrites_addons(tmp_path: Path, origin: Running) -> None:
    """
    rewrites_addons.py: a blocked host gets no answer, requests get the
    header and lose their cache validators.
    """
    port = free_port()
    program = localized("rewrites_addons.py", tmp_path, {"8080": str(port)})
    (tmp_path / "js").mkdir()
    child = await spawn_listening([sys.executable, str(program)], tmp_path, port)
    try:
        proxy = f"http://127.0.0.1:{port}"
        code, output = await curl("-x", proxy, "http://ads.example/", cwd=tmp_path)
        assert code in (52, 56), output  # no reply: closed (444), or reset
        _, body = await fetch("-x", proxy, "-H", "If-None-Match: abc",
                              f"http://127.0.0.1:{origin.port}/echo", cwd=tmp_path)
        headers = echoed(body)["headers"]
        assert ["X-Name", "value"] in headers
        assert not any(name.lower() == "if-none-match" for name, _ in headers)
    finally:
        await child.stop()


@pytest_twisted.ensureDeferred
async def test_save_flows(tmp_path: Path, origin: Running) -> None:
    """save_flows.py saves the flows its filter accepts, and closes the file at exit."""
    port = free_port()
    program = localized("save_flows.py", tmp_path,
                        {"8080": str(port), "~d example.com": "~d 127.0.0.1"})
    child = await spawn_listening([sys.executable, str(program)], tmp_path, port)
    try:
        proxy = f"http://127.0.0.1:{port}"
        await fetch("-x", proxy, f"http://127.0.0.1:{origin.port}/echo?saved", cwd=tmp_path)
        await fetch("-x", proxy, f"http://localhost:{origin.port}/echo?not-saved", cwd=tmp_path)
    finally:
        await child.stop()
    assert child.code == 0 or child.signal is not None, child.output
    flows = load_flows(str(tmp_path / "saved.jsonl"))
    assert [flow.request.path for flow in flows] == ["/echo?saved"]


@pytest_twisted.ensureDeferred
async def test_client_replay(tmp_path: Path, origin: Running) -> None:
    """client_replay.py sends the recorded requests again and prints the answers."""
    url = f"http://127.0.0.1:{origin.port}/echo?again"
    with open(tmp_path / "flows.jsonl", "wb") as out:
        dump_flows([recorded(url)], out)
    code, output = await run([sys.executable, str(EXAMPLES / "client_replay.py")], tmp_path)
    assert code == 0, output
    assert f"request {url} <Response 200 OK" in output, output
    assert origin.factory.received[-1].target == b"/echo?again"


@pytest_twisted.ensureDeferred
async def test_server_replay(tmp_path: Path) -> None:
    """
    server_replay.py answers a recorded request from the recording (no
    network), ignoring the ``_`` parameter, and anything else with 404.
    """
    with open(tmp_path / "flows.jsonl", "wb") as out:
        dump_flows([recorded("http://example.com/hello?_=1", "recorded\n", Accept="*/*")], out)
    port = free_port()
    program = localized("server_replay.py", tmp_path, {"8080": str(port)})
    child = await spawn_listening([sys.executable, str(program)], tmp_path, port)
    try:
        proxy = f"http://127.0.0.1:{port}"
        _, body = await fetch("-x", proxy, "http://example.com/hello?_=2", cwd=tmp_path)
        assert body == "recorded\n"
        code, output = await curl("-f", "-x", proxy, "http://example.com/other", cwd=tmp_path)
        assert code == 22 and "404" in output, output
    finally:
        await child.stop()


# -- flow files, from Python and from the shell --------------------------


@pytest_twisted.ensureDeferred
async def test_flow_file_examples(tmp_path: Path, python_on_path: dict[str, str]) -> None:
    """
    flows_write.py, flows_read.py, flows_har.py and flows_filter.py, run one
    after the other in one directory as the page shows them, print what
    their comments say; then the conversion and export commands run.
    """
    outputs = {}
    for name in ("flows_write.py", "flows_read.py", "flows_har.py", "flows_filter.py"):
        code, outputs[name] = await run([sys.executable, str(EXAMPLES / name)], tmp_path)
        assert code == 0, outputs[name]
    assert outputs["flows_write.py"] == "2\n"
    assert outputs["flows_read.py"].startswith(
        "GET http://example.com/hello 200\n2\nline 1: missing keys ['type', 'id', 'error', ")
    assert outputs["flows_har.py"] == "http://example.com/hello hi\n\n"
    assert outputs["flows_filter.py"] == (
        "['http://example.com/hello']\n17 '(' is never closed\n"
        "'(' is never closed at column 18\n~d example.com & (~c 304\n                 ^\n")

    def shell(script: str) -> str:
        import subprocess

        result = subprocess.run(["sh", str(EXAMPLES / script)], cwd=tmp_path, env=python_on_path,
                                capture_output=True, text=True, timeout=60)
        assert result.returncode == 0, result.stdout + result.stderr
        return result.stdout

    before = (tmp_path / "flows.jsonl").read_bytes()
    await deferToThread(shell, "convert.sh")
    assert (tmp_path / "flows.jsonl").read_bytes() == before  # not overwritten
    imported = load_flows(str(tmp_path / "imported.jsonl"))
    assert [flow.request.url for flow in imported] == ["http://example.com/hello"]

    post = recorded("http://example.com/form")
    post.request = Request.make("POST", "http://example.com/form", "a=1")
    with open(tmp_path / "flows.jsonl", "ab") as out:
        dump_flows([post], out)
    printed = await deferToThread(shell, "export.sh")
    assert printed.splitlines()[0].startswith("curl ")  # the POST, as curl
    assert "http://example.com/form" in printed.splitlines()[0]
    assert printed.splitlines()[1].startswith("http ")  # every flow as HTTPie: 2
    assert len(printed.splitlines()) == 3
    assert (tmp_path / "failures.txt").read_text() == ""  # no 500 among them


# -- install.rst: the first requests and the Python clients ----------------


@pytest_twisted.ensureDeferred
async def test_first_requests_and_clients(
    tmp_path: Path, origin: Running, pki: Any, start_tls_origin: Any,
    python_on_path: dict[str, str],
) -> None:
    """
    ``twistd -n twistproxy`` as install.rst starts it, then
    first_request.sh (curl, HTTP and HTTPS trusting the CA twistd made in
    ~/.twistproxy), client_requests.py, client_httpx.py and client_urllib.py
    (run as its comment says). The origins are local; the proxy trusts the
    HTTPS origin's CA as the system's (SSL_CERT_FILE).
    """
    tls_origin = start_tls_origin(pki.good)
    os.environ["SSL_CERT_FILE"] = str(pki.origin_ca_pem)
    try:
        child, port = await start_twistd(tmp_path)
    finally:
        del os.environ["SSL_CERT_FILE"]
    https_url = f"https://localhost:{tls_origin.port}/echo"
    env = dict(python_on_path, HOME=str(tmp_path))

    def run_here(args: list[str], **extra: str) -> str:
        import subprocess

        result = subprocess.run(args, cwd=tmp_path, env=dict(env, **extra),
                                capture_output=True, text=True, timeout=60)
        assert result.returncode == 0, result.stdout + result.stderr
        return result.stdout

    try:
        await output_contains(child, str(tmp_path / ".twistproxy"))  # where the CA was made
        script = localized("first_request.sh", tmp_path, {
            "8080": str(port),
            "http://example.com/": f"http://127.0.0.1:{origin.port}/echo",
            "https://example.com/": https_url,
        })
        printed = await deferToThread(run_here, ["sh", str(script)])
        bodies = [json.loads(line) for line in printed.replace("}{", "}\n{").splitlines()]
        assert [body["method"] for body in bodies] == ["GET", "GET"]
        await output_contains(child, f"GET {https_url} -> 200")
        for name in ("client_requests.py", "client_httpx.py"):
            program = localized(name, tmp_path,
                                {"8080": str(port), "https://example.com/": https_url})
            assert await deferToThread(run_here, [sys.executable, str(program)]) == "200\n"
        program = localized("client_urllib.py", tmp_path, {"https://example.com/": https_url})
        ca = str(tmp_path / ".twistproxy" / "twistproxy-ca-cert.pem")
        printed = await deferToThread(run_here, [sys.executable, str(program)],
                                      HTTPS_PROXY=f"http://127.0.0.1:{port}", SSL_CERT_FILE=ca)
        assert printed == "200\n"
    finally:
        await child.stop()


# -- howto.rst -------------------------------------------------------------


def twistd_line(script: str, directory: Path, replacements: Mapping[str, str]) -> list[str]:
    """
    The ``twistd`` command of the shell example *script* (localized with
    *replacements*), run with this interpreter and no pid file.
    """
    text = localized(script, directory, replacements).read_text(encoding="utf-8")
    (line,) = [line for line in text.splitlines() if line.startswith("twistd ")]
    return [*twistd_command(), "--pidfile=", *shlex.split(line)[1:]]


@pytest_twisted.ensureDeferred
async def test_block_host(tmp_path: Path, origin: Running) -> None:
    """block_host.py refuses the blocked hosts, over HTTP and CONNECT, and passes the rest."""
    child, port = await start_twistd(tmp_path, "--addon", str(EXAMPLES / "block_host.py"))
    try:
        proxy = f"http://127.0.0.1:{port}"
        code, output = await curl("-f", "-x", proxy, "http://ads.example.com/", cwd=tmp_path)
        assert code == 22 and "403" in output, output
        code, output = await curl("-x", proxy, "https://tracker.example.net/", cwd=tmp_path)
        assert code != 0 and "403" in output, output
        _, body = await fetch("-x", proxy, f"http://127.0.0.1:{origin.port}/echo", cwd=tmp_path)
        assert echoed(body)["method"] == "GET"
    finally:
        await child.stop()


@pytest_twisted.ensureDeferred
async def test_rewrite_response(tmp_path: Path, origin: Running) -> None:
    """rewrite_response.py adds a field to a JSON answer."""
    child, port = await start_twistd(tmp_path, "--addon", str(EXAMPLES / "rewrite_response.py"))
    try:
        _, body = await fetch("-x", f"http://127.0.0.1:{port}",
                              f"http://127.0.0.1:{origin.port}/echo", cwd=tmp_path)
        answer = echoed(body)
        assert answer["proxied"] is True and answer["method"] == "GET"
    finally:
        await child.stop()


@pytest_twisted.ensureDeferred
async def test_map_remote(tmp_path: Path, origin: Running) -> None:
    """map_remote.py sends api.example.com's requests to the staging server."""
    addon = localized("map_remote.py", tmp_path,
                      {"staging.example.com": "127.0.0.1", "8000": str(origin.port)})
    child, port = await start_twistd(tmp_path, "--addon", str(addon))
    try:
        _, body = await fetch("-x", f"http://127.0.0.1:{port}", "http://api.example.com/echo",
                              cwd=tmp_path)
        assert ["Host", f"127.0.0.1:{origin.port}"] in echoed(body)["headers"]
    finally:
        await child.stop()


@pytest_twisted.ensureDeferred
async def test_record_and_replay(tmp_path: Path, origin: Running) -> None:
    """
    record.sh's twistd saves the session; replay.sh's answers it again
    without the origin, and anything else with 404.
    """
    url = f"http://127.0.0.1:{origin.port}/echo?recorded"
    port = free_port()
    child = await spawn_listening(twistd_line("record.sh", tmp_path, {"8080": str(port)}),
                                tmp_path, port)
    try:
        _, recorded_body = await fetch("-x", f"http://127.0.0.1:{port}", url, cwd=tmp_path)
    finally:
        await child.stop()
    seen = len(origin.factory.received)
    port = free_port()
    child = await spawn_listening(twistd_line("replay.sh", tmp_path, {"8080": str(port)}),
                                tmp_path, port)
    try:
        proxy = f"http://127.0.0.1:{port}"
        _, body = await fetch("-x", proxy, url, cwd=tmp_path)
        assert body == recorded_body
        code, output = await curl("-f", "-x", proxy, url + "&new", cwd=tmp_path)
        assert code == 22 and "404" in output, output
    finally:
        await child.stop()
    assert len(origin.factory.received) == seen  # the origin was not asked again


@pytest_twisted.ensureDeferred
async def test_llm_stream(tmp_path: Path, origin: Running) -> None:
    """
    llm_stream.py prints each server-sent event as it passes; the client
    gets them unchanged and --save keeps the whole exchange.
    """
    child, port = await start_twistd(tmp_path, "--addon", str(EXAMPLES / "llm_stream.py"),
                                     "--save", "llm.jsonl")
    url = f"http://127.0.0.1:{origin.port}/events/3/20"
    try:
        _, body = await fetch("-N", "-x", f"http://127.0.0.1:{port}", url, cwd=tmp_path)
        assert body == "data: 0\n\ndata: 1\n\ndata: 2\n\n"
        await output_contains(child, f"{url}: b'data: 0\\n\\n'")
        await output_contains(child, f"{url}: 27 bytes, truncated: False")
    finally:
        await child.stop()
    (flow,) = load_flows(str(tmp_path / "llm.jsonl"))
    assert flow.response is not None and flow.response.content == body.encode()


@pytest_twisted.ensureDeferred
async def test_web_and_proxy(tmp_path: Path, origin: Running) -> None:
    """web_and_proxy.tac serves its site and proxies, in one application."""
    site, port = free_port(), free_port()
    tac = localized("web_and_proxy.tac", tmp_path, {"8000": str(site), "8080": str(port)})
    child = await spawn_listening([*twistd_command(), "--pidfile=", "-ny", str(tac)], tmp_path,
                                  port)
    try:
        await accepting(site, child)
        _, body = await fetch(f"http://127.0.0.1:{site}/", cwd=tmp_path)
        assert body == "the site\n"
        _, body = await fetch("-x", f"http://127.0.0.1:{port}",
                              f"http://127.0.0.1:{origin.port}/echo", cwd=tmp_path)
        assert echoed(body)["method"] == "GET"
    finally:
        await child.stop()


@pytest_twisted.ensureDeferred
async def test_workers(tmp_path: Path, origin: Running) -> None:
    """workers.sh's twistd proxies on its port and says it is healthy on the metrics port."""
    port, metrics = free_port(), free_port()
    args = twistd_line("workers.sh", tmp_path, {"8080": str(port), "9101": str(metrics)})
    child = await spawn_listening(args, tmp_path, port)
    try:
        await accepting(metrics, child)
        _, body = await fetch("-x", f"http://127.0.0.1:{port}",
                              f"http://127.0.0.1:{origin.port}/echo", cwd=tmp_path)
        assert echoed(body)["method"] == "GET"
        for _ in range(50):  # healthy once the workers listen: bounded wait
            code, output = await curl("-f", f"http://127.0.0.1:{metrics}/healthz", cwd=tmp_path)
            if code == 0:
                break
            await sleep(0.2)
        assert code == 0, output
    finally:
        await child.stop()


@pytest_twisted.ensureDeferred
async def test_myaddons(tmp_path: Path, origin: Running) -> None:
    """
    The README's myaddons.py: ads.example.com answered 403 without contact,
    every request held (Slow) and every response stamped.
    """
    child, port = await start_twistd(tmp_path, "--addon", str(EXAMPLES / "myaddons.py"))
    try:
        proxy = f"http://127.0.0.1:{port}"
        code, output = await curl("-f", "-x", proxy, "http://ads.example.com/", cwd=tmp_path)
        assert code == 22 and "403" in output, output
        headers, body = await fetch("-x", proxy, f"http://127.0.0.1:{origin.port}/echo",
                                    cwd=tmp_path)
        assert headers["x-proxied-by"] == "twistproxy"
        assert echoed(body)["method"] == "GET"
    finally:
        await child.stop()
