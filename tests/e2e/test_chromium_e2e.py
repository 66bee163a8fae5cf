"""
A real browser through the intercepting proxy: headless Chromium loads an
HTTPS page with a stylesheet, a script and an image from a TLS origin on
127.0.0.1, trusting the proxy's CA through its NSS database.

Skipped when ``chromium`` or ``certutil`` (Debian: ``libnss3-tools``) is not
installed.  Every child process runs in its own session and is bounded in
time; on a timeout its whole process group is killed.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import struct
import zlib
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from twisted.internet import reactor
from twisted.protocols.tls import TLSMemoryBIOFactory
from twisted.web.pages import notFound
from twisted.web.resource import IResource, Resource
from twisted.web.server import Request, Site

from tests.e2e.conftest import Running
from tests.e2e.pki import OriginTLS
from tests.e2e.test_twistd import Child
from twistproxy.hooks import Addon
from twistproxy.http import HTTPFlow, Response

pytestmark = pytest.mark.e2e

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CERTUTIL = shutil.which("certutil")
SETSID = shutil.which("setsid")
needs_chromium = pytest.mark.skipif(
    CHROMIUM is None or CERTUTIL is None,
    reason="chromium and certutil (libnss3-tools) are not both installed",
)

BROWSER_TIMEOUT = 60.0  # seconds for Chromium to load the page and dump it
TOOL_TIMEOUT = 20.0  # seconds for certutil

TITLE = "twistproxy: script ran"
PAGE = b"""<!doctype html>
<html><head><meta charset="utf-8"><title>not yet</title>
<link rel="stylesheet" href="/style.css">
</head>
<body>
<h1>Through the proxy</h1>
<img id="pixel" src="/pixel.png" alt="pixel" width="2" height="2">
<script src="/app.js"></script>
</body></html>
"""
STYLE = b"h1 { color: rgb(1, 2, 3); }\n"
# Runs at the end of <body>: the stylesheet before it has been applied.  The
# image is checked at the window's load event, when it has been decoded.
SCRIPT = b"""
document.title = "twistproxy: script ran";
var ran = document.createElement("p");
ran.id = "script-ran";
ran.textContent = "color " + getComputedStyle(document.querySelector("h1")).color;
document.body.appendChild(ran);
window.addEventListener("load", function () {
  var image = document.getElementById("pixel");
  var seen = document.createElement("p");
  seen.id = "image-seen";
  seen.textContent = "image " + image.naturalWidth + "x" + image.naturalHeight;
  document.body.appendChild(seen);
});
"""


def _png(width: int, height: int) -> bytes:
    """A valid opaque red RGB PNG of *width* x *height* pixels."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (struct.pack(">I", len(data)) + kind + data
                + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF))

    rows = b"".join(b"\x00" + b"\xff\x00\x00" * width for _ in range(height))
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header)
            + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b""))


IMAGE = _png(3, 2)  # not the size the <img> asks for, so the script sees the file's


class Bytes(Resource):
    """A resource answering every GET with fixed bytes."""

    isLeaf = True

    def __init__(self, body: bytes, content_type: str) -> None:
        super().__init__()
        self.body = body
        self.content_type = content_type.encode("ascii")

    def render_GET(self, request: Request) -> bytes:
        request.setHeader(b"content-type", self.content_type)
        request.setHeader(b"cache-control", b"no-store")
        return self.body


class Root(Resource):
    """The site's root: unknown paths (``/favicon.ico``) are a plain 404."""

    def getChild(self, path: bytes, request: Request) -> IResource:
        return notFound()


def _site() -> Site:
    root = Root()
    root.putChild(b"", Bytes(PAGE, "text/html; charset=utf-8"))
    root.putChild(b"style.css", Bytes(STYLE, "text/css"))
    root.putChild(b"app.js", Bytes(SCRIPT, "text/javascript"))
    root.putChild(b"pixel.png", Bytes(IMAGE, "image/png"))
    site = Site(root)
    site.log = lambda request: None  # type: ignore[method-assign]  # no access log
    return site


@pytest.fixture
def page_origin(pki: Any) -> Any:
    """A twisted.web site over TLS on 127.0.0.1, its certificate for localhost."""
    site = _site()
    port = reactor.listenTCP(0, TLSMemoryBIOFactory(OriginTLS(pki.good), False, site),
                             interface="127.0.0.1")
    yield Running(port, site)
    pytest_twisted.blockon(port.stopListening())


class Record(Addon):
    """
    Records every flow's URL and status, and keeps the browser off the
    network: anything not for localhost is answered 403 by the proxy.
    """

    def __init__(self) -> None:
        self.flows: list[HTTPFlow] = []

    def http_connect(self, flow: HTTPFlow) -> None:
        self._local_only(flow)

    def requestheaders(self, flow: HTTPFlow) -> None:
        self._local_only(flow)

    def _local_only(self, flow: HTTPFlow) -> None:
        assert flow.request is not None
        if flow.request.host not in ("localhost", "127.0.0.1"):
            flow.response = Response.make(403, "this test stays on localhost\n")

    def response(self, flow: HTTPFlow) -> None:
        self.flows.append(flow)

    def error(self, flow: HTTPFlow) -> None:
        self.flows.append(flow)

    def seen(self) -> dict[str, int | None]:
        """The URL and status of every flow but the CONNECTs."""
        return {
            flow.request.url: flow.response.status_code if flow.response else None
            for flow in self.flows
            if flow.request is not None and flow.request.method != "CONNECT"
        }

    def connects(self) -> list[str]:
        """The authorities of the CONNECT flows."""
        return [flow.request.url for flow in self.flows
                if flow.request is not None and flow.request.method == "CONNECT"]


async def run(args: list[str], home: Path, timeout: float) -> tuple[int | None, bytes, bytes]:
    """
    Run *args* with ``HOME`` set to *home*, stdin closed, in a session of
    its own (Chromium starts helper processes); if it has not ended after
    *timeout* seconds, kill the session's processes and fail.

    :returns: The exit code, stdout and stderr.
    """
    child = Child()
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(home),
           "LANG": "C.UTF-8"}
    argv = [SETSID, *args] if SETSID else args
    process = reactor.spawnProcess(child, argv[0], argv, env=env, path=str(home),
                                   childFDs={0: "w", 1: "r", 2: "r"})
    process.closeStdin()
    pid = process.pid
    expired: list[bool] = []

    def expire() -> None:
        expired.append(True)
        _kill(pid)

    timer = reactor.callLater(timeout, expire)
    try:
        code = await child.ended
    finally:
        if timer.active():
            timer.cancel()
        if SETSID:
            _kill(pid)  # helpers the child left behind, if any
    if expired:
        raise AssertionError(f"{args[0]} did not finish in {timeout} s:\n"
                             f"{child.err.decode(errors='replace')[-3000:]}")
    return code, child.out, child.err


def _kill(pid: int | None) -> None:
    """
    SIGKILL the process group *pid* leads (the session ``setsid`` made),
    or without ``setsid`` the process alone.
    """
    if pid is None:
        return
    try:
        if SETSID:
            os.killpg(pid, signal.SIGKILL)
        else:
            os.kill(pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


async def nss_database(home: Path, ca_pem: Path | None) -> None:
    """
    Create the NSS database Chromium reads, ``$HOME/.pki/nssdb``, and when
    *ca_pem* is given import it as a trusted CA for TLS servers.
    """
    assert CERTUTIL is not None
    database = home / ".pki" / "nssdb"
    database.mkdir(parents=True)
    commands = [["-N", "--empty-password"]]
    if ca_pem is not None:
        commands.append(["-A", "-t", "C,,", "-n", "twistproxy-test", "-i", str(ca_pem)])
    for command in commands:
        code, out, err = await run([CERTUTIL, "-d", f"sql:{database}", *command], home,
                                   TOOL_TIMEOUT)
        assert code == 0, (command, out, err)


async def dump_dom(home: Path, proxy: Running, url: str) -> tuple[int | None, str, str]:
    """
    Load *url* in headless Chromium through *proxy*, with ``HOME`` (and so
    the NSS database) in *home*; returns the exit code, the DOM it dumped,
    and its stderr.
    """
    assert CHROMIUM is not None
    code, out, err = await run([
        CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
        "--no-first-run", "--disable-background-networking", "--disable-component-update",
        "--disable-sync", "--disable-dev-shm-usage",
        f"--user-data-dir={home / 'chromium-profile'}",
        f"--proxy-server=http://127.0.0.1:{proxy.port}",
        # Chromium never proxies localhost unless told so with this token.
        "--proxy-bypass-list=<-loopback>",
        "--dump-dom", url,
    ], home, BROWSER_TIMEOUT)
    return code, out.decode("utf-8", "replace"), err.decode("utf-8", "replace")


@needs_chromium
@pytest_twisted.ensureDeferred
async def test_chromium_loads_page_through_interception(
    tmp_path: Path, pki: Any, page_origin: Running, start_https_proxy: Any
) -> None:
    """
    Chromium trusting the proxy's CA loads the page, its stylesheet, script
    and image, all through intercepted HTTPS: the script ran (it set the
    title and saw the stylesheet's colour and the image's size), and the
    proxy saw each of the four as an https flow answered 200.
    """
    record = Record()
    proxy = await start_https_proxy(addons=[record])
    await nss_database(tmp_path, pki.proxy_ca_pem)
    base = f"https://localhost:{page_origin.port}"
    code, dom, err = await dump_dom(tmp_path, proxy, f"{base}/")
    assert code == 0, err[-3000:]
    assert f"<title>{TITLE}</title>" in dom, (dom, err[-3000:])
    assert re.search(r'<p id="script-ran">color rgb\(1, 2, 3\)</p>', dom), dom
    assert '<p id="image-seen">image 3x2</p>' in dom, dom
    seen = record.seen()
    for path in ("/", "/style.css", "/app.js", "/pixel.png"):
        assert seen.get(f"{base}{path}") == 200, (path, seen)
    assert f"localhost:{page_origin.port}" in record.connects()
    for flow in record.flows:
        if flow.request.host == "localhost" and flow.request.method != "CONNECT":
            assert flow.request.scheme == "https"
            assert flow.client_conn.tls_established


@needs_chromium
@pytest_twisted.ensureDeferred
async def test_chromium_refuses_without_the_ca(
    tmp_path: Path, pki: Any, page_origin: Running, start_https_proxy: Any
) -> None:
    """
    With an NSS database that does not hold the proxy's CA, Chromium
    reaches the proxy (it sends the CONNECT) but refuses the certificate:
    the script never runs and no request travels inside the tunnel.
    """
    record = Record()
    proxy = await start_https_proxy(addons=[record])
    await nss_database(tmp_path, None)
    base = f"https://localhost:{page_origin.port}"
    _, dom, err = await dump_dom(tmp_path, proxy, f"{base}/")
    # Chromium names the error in some releases and gives only its number
    # (-202 is ERR_CERT_AUTHORITY_INVALID) in others, such as Debian's 150.
    assert "ERR_CERT_AUTHORITY_INVALID" in err or "net_error -202" in err, err[-3000:]
    assert TITLE not in dom
    assert "script-ran" not in dom
    assert f"localhost:{page_origin.port}" in record.connects(), (record.flows, err[-3000:])
    assert not any(url.startswith(base) for url in record.seen()), record.seen()
