"""
The built-in rewrites end to end: each addon in a proxy on 127.0.0.1, driven
by curl or a raw socket, against the test origin; and ``twistd twistproxy``
with several rewrite options at once.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from twisted.internet import reactor
from twisted.logger import globalLogPublisher
from twisted.web.resource import Resource
from twisted.web.server import Site

from tests.e2e.conftest import Running, curl, needs_curl, parse_responses, raw
from tests.e2e.test_twistd import curl as twistd_curl
from tests.e2e.test_twistd import sleep, start_twistd
from twistproxy.addons.maplocal import MapLocal
from twistproxy.addons.rewrites import (
    AntiCache,
    BlockList,
    MapRemote,
    ModifyBody,
    ModifyHeaders,
)
from twistproxy.addons.stickycookie import StickyCookie
from twistproxy.hooks import Addon
from twistproxy.http import HTTPFlow

pytestmark = pytest.mark.e2e


class Seen(Addon):
    """Records every flow at its end, without asking for whole bodies."""

    stream_bodies = True

    def __init__(self) -> None:
        self.flows: list[HTTPFlow] = []

    def response(self, flow: HTTPFlow) -> None:
        self.flows.append(flow)


async def _get(proxy: Running, url: str, *extra: str) -> tuple[int, bytes, bytes]:
    """curl *url* through *proxy*: the status, the head and the body."""
    out, err, code = await curl("-x", f"http://127.0.0.1:{proxy.port}", "-i", *extra, url)
    assert code == 0, err
    head, _, body = out.partition(b"\r\n\r\n")
    return int(head.split(b" ", 2)[1]), head, body


def _echoed(body: bytes) -> dict[str, str]:
    """The request headers /echo saw, by lower-cased name (last one wins)."""
    return {name.lower(): value for name, value in json.loads(body)["headers"]}


# -- block_list ---------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_block_list_444_closes_without_answer(origin: Running, start_proxy: Any) -> None:
    """
    ``|~d ads.example|444`` closes the connection without a byte; other
    requests pass; the origin never sees the blocked one.
    """
    proxy = await start_proxy(addons=[BlockList(["|~d ads.example|444"])])
    got = await raw(proxy.port, b"GET http://ads.example/x HTTP/1.1\r\nHost: ads.example\r\n\r\n")
    assert got == b""
    [ok] = parse_responses(await raw(proxy.port, (
        f"GET http://127.0.0.1:{origin.port}/echo HTTP/1.1\r\nHost: 127.0.0.1:{origin.port}\r\n"
        "Connection: close\r\n\r\n").encode()))
    assert ok.status == 200
    assert [r.target for r in origin.factory.received] == [b"/echo"]


@needs_curl
@pytest_twisted.ensureDeferred
async def test_block_list_status(origin: Running, start_proxy: Any) -> None:
    """``|~u /blocked|403`` answers 403 with an empty body; the origin is not contacted."""
    proxy = await start_proxy(addons=[BlockList(["|~u /blocked|403"])])
    status, _, body = await _get(proxy, f"http://127.0.0.1:{origin.port}/blocked/echo")
    assert (status, body) == (403, b"")
    assert origin.factory.connections == 0


# -- anticache ------------------------------------------------------------------


@needs_curl
@pytest_twisted.ensureDeferred
async def test_anticache(origin: Running, start_proxy: Any) -> None:
    """The origin never sees If-None-Match or If-Modified-Since; other headers pass."""
    proxy = await start_proxy(addons=[AntiCache()])
    status, _, body = await _get(
        proxy, f"http://127.0.0.1:{origin.port}/echo", "-H", 'If-None-Match: "v1"',
        "-H", "If-Modified-Since: Sat, 01 Jan 2000 00:00:00 GMT", "-H", "X-Kept: yes")
    assert status == 200
    headers = _echoed(body)
    assert "if-none-match" not in headers and "if-modified-since" not in headers
    assert headers["x-kept"] == "yes"


# -- map_remote -----------------------------------------------------------------


@needs_curl
@pytest_twisted.ensureDeferred
async def test_map_remote(origin: Running, start_proxy: Any) -> None:
    """
    A request for a host that does not exist is sent to the origin the rule
    names, with the Host header following, and its path kept.
    """
    target = f"http://127.0.0.1:{origin.port}"
    proxy = await start_proxy(addons=[
        MapRemote([rf"|~d api\.example|^http://api\.example|{target}"])])
    status, _, body = await _get(proxy, "http://api.example/echo?q=1")
    assert status == 200
    assert json.loads(body)["target"] == "/echo?q=1"
    assert _echoed(body)["host"] == f"127.0.0.1:{origin.port}"


# -- map_local ------------------------------------------------------------------


@pytest.fixture
def site(tmp_path: Path) -> Path:
    """A directory to serve, and a secret beside it (outside it)."""
    root = tmp_path / "site"
    (root / "js" / "lib").mkdir(parents=True)
    (root / "js" / "app.js").write_text("console.log('local')\n")
    (root / "js" / "lib" / "index.html").write_text("<p>lib</p>")
    (tmp_path / "secret.txt").write_text("do not serve")
    return root


@needs_curl
@pytest_twisted.ensureDeferred
async def test_map_local_directory(origin: Running, start_proxy: Any, site: Path) -> None:
    """
    ``|example.com/js|DIR`` serves files under DIR by the rest of the path
    (the query dropped), with a content type from the file name;
    ``/index.html`` is tried for a directory; a missing file is 404; the
    origin is never contacted.
    """
    proxy = await start_proxy(addons=[MapLocal([f"|example.com/js|{site / 'js'}"])])
    status, head, body = await _get(proxy, "http://example.com/js/app.js?v=3")
    assert (status, body) == (200, b"console.log('local')\n")
    assert b"javascript" in head.lower()
    status, head, body = await _get(proxy, "http://example.com/js/lib/")
    assert (status, body) == (200, b"<p>lib</p>")
    assert b"content-type: text/html" in head.lower()
    status, _, _ = await _get(proxy, "http://example.com/js/missing.js")
    assert status == 404
    assert origin.factory.connections == 0


@pytest_twisted.ensureDeferred
async def test_map_local_refuses_traversal(start_proxy: Any, site: Path) -> None:
    """
    A path that climbs out of the directory (``..``, plain or
    percent-encoded) is 404, and the file beside the directory is not
    served.
    """
    proxy = await start_proxy(addons=[MapLocal([f"|example.com/static|{site}"])])
    for target in (b"/static/../secret.txt", b"/static/%2e%2e/secret.txt",
                   b"/static/js/%2E%2E/%2e%2e/secret.txt"):
        data = await raw(proxy.port, b"GET http://example.com" + target +
                         b" HTTP/1.1\r\nHost: example.com\r\nConnection: close\r\n\r\n")
        [response] = parse_responses(data)
        assert response.status == 404, target
        assert b"do not serve" not in data


@needs_curl
@pytest_twisted.ensureDeferred
async def test_map_local_file_with_filter(origin: Running, start_proxy: Any, site: Path
                                          ) -> None:
    """A file rule with a filter serves the file to GET only; POST goes to the origin."""
    url = f"http://127.0.0.1:{origin.port}/echo"
    proxy = await start_proxy(addons=[
        MapLocal([f"|~m GET|127.0.0.1:{origin.port}/echo|{site / 'js' / 'app.js'}"])])
    status, _, body = await _get(proxy, url)
    assert (status, body) == (200, b"console.log('local')\n")
    status, _, body = await _get(proxy, url, "--data", "x=1")
    assert status == 200
    assert json.loads(body)["method"] == "POST"


# -- modify_headers -------------------------------------------------------------


@needs_curl
@pytest_twisted.ensureDeferred
async def test_modify_headers(origin: Running, start_proxy: Any, tmp_path: Path) -> None:
    """
    ``~q`` rules set and remove request headers (a value from a file, its
    line end dropped); a ``~s`` rule removes a response header.
    """
    agent = tmp_path / "agent.txt"
    agent.write_text("from-a-file\n")
    proxy = await start_proxy(addons=[ModifyHeaders([
        "|~q|X-Name|value", f"|~q|User-Agent|@{agent}", "|~q|X-Drop|", "|~s|X-Origin-Case|",
    ])])
    status, head, body = await _get(proxy, f"http://127.0.0.1:{origin.port}/echo",
                                    "-H", "X-Name: old", "-H", "X-Drop: me")
    assert status == 200
    headers = _echoed(body)
    assert headers["x-name"] == "value"
    assert headers["user-agent"] == "from-a-file"
    assert "x-drop" not in headers
    assert b"x-origin-case" not in head.lower()


# -- modify_body ----------------------------------------------------------------


@needs_curl
@pytest_twisted.ensureDeferred
async def test_modify_body_response(origin: Running, start_proxy: Any) -> None:
    """
    ``|~s & ~u /chunked|chunk-\\d|X`` rewrites a chunked response; responses
    the filter cannot match stay streamed (not buffered), and are unchanged.
    """
    seen = Seen()
    proxy = await start_proxy(addons=[ModifyBody([r"|~s & ~u /chunked|chunk-\d|X"]), seen])
    status, _, body = await _get(proxy, f"http://127.0.0.1:{origin.port}/chunked")
    assert (status, body) == (200, b"X X X X X ")
    status, _, body = await _get(proxy, f"http://127.0.0.1:{origin.port}/close")
    assert (status, body) == (200, b"delimited by close")
    assert [f.response.stream for f in seen.flows] == [False, True]


@needs_curl
@pytest_twisted.ensureDeferred
async def test_modify_body_gzip_and_body_filter(origin: Running, start_proxy: Any) -> None:
    """
    A rule whose filter reads the body (``~bs``) has the response buffered
    to decide; the gzip body is replaced decoded and sent encoded again.
    """
    proxy = await start_proxy(addons=[ModifyBody(["|~bs compressed|world|planet"])])
    status, head, body = await _get(
        proxy, f"http://127.0.0.1:{origin.port}/gzip", "--compressed")
    assert (status, body) == (200, b"hello, compressed planet")
    assert b"content-encoding: gzip" in head.lower()


@needs_curl
@pytest_twisted.ensureDeferred
async def test_modify_body_request(origin: Running, start_proxy: Any) -> None:
    """``|~q|secret|XXXXXX`` rewrites the request body the origin receives."""
    proxy = await start_proxy(addons=[ModifyBody(["|~q|secret|XXXXXX"])])
    status, _, body = await _get(proxy, f"http://127.0.0.1:{origin.port}/echo",
                                 "--data-binary", "a secret and a secret")
    assert status == 200
    sent = b"a XXXXXX and a XXXXXX"
    assert json.loads(body)["sha256"] == hashlib.sha256(sent).hexdigest()
    assert _echoed(body)["content-length"] == str(len(sent))


@needs_curl
@pytest_twisted.ensureDeferred
async def test_modify_body_over_the_limit_streams(origin: Running, start_proxy: Any) -> None:
    """
    A matching response longer than the body limit is streamed after all:
    the client gets it whole and unchanged, and a warning says it was not
    modified.
    """
    warnings: list[str] = []

    def observe(event: dict[str, Any]) -> None:
        if event.get("log_namespace") == "twistproxy.rewrites":
            warnings.append(event["log_format"])

    globalLogPublisher.addObserver(observe)
    try:
        proxy = await start_proxy(addons=[ModifyBody([r"|~u /bytes|\x00|Z"])], body_limit=1000)
        status, _, body = await _get(proxy, f"http://127.0.0.1:{origin.port}/bytes/5000")
        # The response hook runs once the relayed body ended: maybe just after curl's end.
        for _ in range(50):
            if warnings:
                break
            await sleep(0.1)
    finally:
        globalLogPublisher.removeObserver(observe)
    assert status == 200
    assert len(body) == 5000 and body.count(b"\x00") == 20
    assert any("streamed, not modified" in w for w in warnings), warnings


# -- stickycookie ---------------------------------------------------------------


class _Login(Resource):
    """``/login`` sets a cookie and expires another; ``/again`` shows the Cookie it got."""

    isLeaf = True

    def render_GET(self, request: Any) -> bytes:
        if request.path == b"/login":
            request.addCookie(b"sid", b"s3ss10n", path=b"/")
            request.addCookie(b"old", b"x", path=b"/", max_age=b"0")
            return b"welcome"
        return request.getHeader(b"cookie") or b"no cookie"


@needs_curl
@pytest_twisted.ensureDeferred
async def test_stickycookie(start_proxy: Any) -> None:
    """
    The cookie a server set is sent by the proxy (curl keeps no jar) with
    the next request to that host and port the filter matches; the expired
    one (Max-Age=0) is not; a request the filter does not match gets none.
    """
    login = reactor.listenTCP(0, Site(_Login()), interface="127.0.0.1")
    try:
        port = login.getHost().port
        proxy = await start_proxy(addons=[StickyCookie("~u /again")])
        status, _, body = await _get(proxy, f"http://127.0.0.1:{port}/login")
        assert (status, body) == (200, b"welcome")
        status, _, body = await _get(proxy, f"http://127.0.0.1:{port}/again")
        assert (status, body) == (200, b"sid=s3ss10n")
        status, _, body = await _get(proxy, f"http://127.0.0.1:{port}/other")
        assert (status, body) == (200, b"no cookie")
    finally:
        await login.stopListening()


@needs_curl
@pytest_twisted.ensureDeferred
async def test_stickycookie_sent(origin: Running, start_proxy: Any) -> None:
    """The cookie a response set comes back in the next matching request's Cookie header."""
    sticky = StickyCookie("~u /echo")
    proxy = await start_proxy(addons=[
        ModifyHeaders(["|~s & ~u /login|Set-Cookie|sid=abc; Path=/"]), sticky])
    await _get(proxy, f"http://127.0.0.1:{origin.port}/login")
    status, _, body = await _get(proxy, f"http://127.0.0.1:{origin.port}/echo")
    assert status == 200
    assert _echoed(body)["cookie"] == "sid=abc"


# -- twistd ---------------------------------------------------------------------


@needs_curl
@pytest_twisted.ensureDeferred
async def test_twistd_rewrite_options(tmp_path: Path, origin: Running, site: Path) -> None:
    """
    ``twistd twistproxy`` with --block-list, --map-local, --map-remote,
    --modify-headers, --modify-body and --anticache: each acts on curl's
    requests through the proxy.
    """
    target = f"http://127.0.0.1:{origin.port}"
    child, port = await start_twistd(
        tmp_path,
        "--block-list", "|~d ads.example|404",
        "--map-local", f"|example.com/js|{site / 'js'}",
        "--map-remote", rf"|~d api\.example|^http://api\.example|{target}",
        "--modify-headers", "|~q|X-Name|value",
        "--modify-body", "|~s & ~u /chunked|chunk|piece",
        "--anticache",
    )
    proxy = f"http://127.0.0.1:{port}"
    try:
        code, out = await twistd_curl("-x", proxy, "-o", "/dev/null", "-w", "%{http_code}",
                                      "http://ads.example/x", cwd=tmp_path)
        assert (code, out) == (0, "404"), out
        code, out = await twistd_curl("-x", proxy, "http://example.com/js/app.js",
                                      cwd=tmp_path)
        assert (code, out) == (0, "console.log('local')\n"), out
        code, out = await twistd_curl("-x", proxy, "-H", 'If-None-Match: "1"',
                                      "http://api.example/echo", cwd=tmp_path)
        assert code == 0, out
        headers = _echoed(out.encode())
        assert headers["x-name"] == "value" and "if-none-match" not in headers
        assert headers["host"] == f"127.0.0.1:{origin.port}"
        code, out = await twistd_curl("-x", proxy, f"{target}/chunked", cwd=tmp_path)
        assert (code, out) == (0, "piece-0 piece-1 piece-2 piece-3 piece-4 "), out
    finally:
        await child.stop()
