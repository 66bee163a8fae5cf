"""
The web UI's API with a plain HTTP client, through real sockets on
127.0.0.1: the proxy, the UI and an origin in the test's reactor, the
clients (``http.client``, to the UI and through the proxy) in threads.
"""

from __future__ import annotations

import gzip
import http.client
import json
import signal
import socket
import sqlite3
import subprocess
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from twisted.internet import reactor
from twisted.internet.endpoints import TCP4ServerEndpoint
from twisted.internet.task import deferLater
from twisted.internet.threads import deferToThread

from tests.e2e.origin import OriginFactory
from tests.e2e.test_faults_shutdown_e2e import (
    EXIT_TIMEOUT,
    PIECE,
    PIECES,
    assert_stopped_cleanly,
    connect,
    get,
    trickling,  # noqa: F401 -- a fixture
    until,
)
from tests.e2e.test_twistd import needs_curl, start_twistd
from tests.test_web_store import make_flow
from twistproxy.http import HTTPFlow
from twistproxy.proxy import ProxyFactory
from twistproxy.replay import ClientReplay
from twistproxy.service import ProxyService
from twistproxy.web import _actions
from twistproxy.web.api import DECODE_LIMIT
from twistproxy.web.service import WebUI
from twistproxy.web.store import FlowStore, View, summarize

pytestmark = pytest.mark.e2e

DATA = Path(__file__).parent.parent / "data"


class Setup:
    """A proxy with the web UI, an origin, and blocking clients."""

    def __init__(self, ui: WebUI, proxy: int, web: int, origin: int,
                 factory: OriginFactory) -> None:
        self.ui, self.proxy, self.web, self.origin, self.factory = (
            ui, proxy, web, origin, factory)

    def call(self, method: str, path: str, body: Any = None, *, token: bool = True,
             headers: dict[str, str] | None = None,
             data: bytes | None = None) -> tuple[int, dict[str, str], bytes]:
        """One request to the UI (blocking: run it in a thread); *data*: a raw body."""
        conn = http.client.HTTPConnection("127.0.0.1", self.web, timeout=10)
        sent = {"X-Twistproxy-Token": self.ui.guard.token} if token else {}
        sent.update(headers or {})
        if body is not None:
            data = json.dumps(body).encode()
        try:
            conn.request(method, path, body=data, headers=sent)
            response = conn.getresponse()
            return response.status, dict(response.getheaders()), response.read()
        finally:
            conn.close()

    def through_proxy_full(self, method: str, path: str) -> tuple[int, str, dict[str, str],
                                                                 bytes]:
        """A request through the proxy: status, reason, headers and body (blocking)."""
        conn = http.client.HTTPConnection("127.0.0.1", self.proxy, timeout=10)
        try:
            conn.request(method, f"http://127.0.0.1:{self.origin}{path}")
            response = conn.getresponse()
            return (response.status, response.reason, dict(response.getheaders()),
                    response.read())
        finally:
            conn.close()

    def through_proxy(self, method: str, path: str, headers: dict[str, str] | None = None,
                      body: bytes | None = None) -> tuple[int, bytes]:
        """One request to the origin through the proxy (blocking)."""
        conn = http.client.HTTPConnection("127.0.0.1", self.proxy, timeout=10)
        try:
            conn.request(method, f"http://127.0.0.1:{self.origin}{path}", body=body,
                         headers=headers or {})
            response = conn.getresponse()
            return response.status, response.read()
        finally:
            conn.close()


def call(setup: Setup, *args: Any, **kwargs: Any) -> Any:
    return deferToThread(setup.call, *args, **kwargs)


@pytest_twisted.async_yield_fixture
async def setup() -> AsyncIterator[Setup]:
    """The proxy with the UI's addons, the UI on a free port, an origin."""
    factory = OriginFactory()
    origin: Any = reactor.listenTCP(0, factory, interface="127.0.0.1")
    ui = WebUI(reactor=reactor, port=0)
    proxy_factory = ProxyFactory(reactor=reactor, addons=ui.addons)
    ui.replay = ClientReplay(proxy_factory)
    proxy = ProxyService(TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1"), proxy_factory)
    proxy.startService()
    port = await proxy.when_listening()
    web = ui.service()
    web.startService()
    yield Setup(ui, port.getHost().port, ui.guard.port, origin.getHost().port, factory)
    await web.stopService()
    await proxy.stopService()
    await origin.stopListening()


@pytest_twisted.ensureDeferred
async def test_token_host_origin(setup: Setup) -> None:
    """
    Without the token every call is refused (the page too); a foreign Host
    (DNS rebinding) or Origin is refused even with it; /?token= sets the
    cookie, which then opens the page.
    """
    for path in ("/api/flows", "/", "/static/app.js", "/api/events"):
        status, _, body = await call(setup, "GET", path, token=False)
        assert status == 403, (path, body)
    status, _, body = await call(setup, "GET", "/api/flows",
                                 headers={"Host": f"rebound.example:{setup.web}"})
    assert status == 403 and b"rebound.example" in body
    status, _, body = await call(setup, "PUT", "/api/intercept", {"filter": "~q"},
                                 headers={"Origin": "http://evil.example"})
    assert status == 403 and b"another origin" in body
    assert setup.ui.intercept.expression == ""
    status, headers, _ = await call(setup, "GET", "/?token=wrong", token=False)
    assert status == 403
    status, headers, _ = await call(setup, "GET", f"/?token={setup.ui.guard.token}", token=False)
    assert status == 303 and headers["Location"] == "/"
    cookie = headers["Set-Cookie"].split(";")[0]
    assert "HttpOnly" in headers["Set-Cookie"] and "SameSite=strict" in headers["Set-Cookie"]
    status, headers, body = await call(setup, "GET", "/", token=False, headers={"Cookie": cookie})
    assert status == 200 and b"app.js" in body
    assert "default-src 'self'" in headers["Content-Security-Policy"]


@pytest_twisted.ensureDeferred
async def test_list_filter_detail_content(setup: Setup) -> None:
    """
    Flows made through the proxy are listed (paged, filtered), a bad
    filter is a 400 naming its column, a flow's detail and decoded body
    are served (the body never with its own type).
    """
    for i in range(3):
        status, _ = await deferToThread(setup.through_proxy, "GET", f"/echo?n={i}")
        assert status == 200
    status, _ = await deferToThread(setup.through_proxy, "GET", "/gzip")
    assert status == 200
    status, _, body = await call(setup, "GET", "/api/flows?limit=2&offset=1")
    page = json.loads(body)
    assert status == 200 and page["total"] == 4
    assert [f["path"] for f in page["flows"]] == ["/echo?n=1", "/echo?n=2"]
    status, _, body = await call(setup, "GET", "/api/flows?filter=~u%20gzip")
    listed = json.loads(body)
    assert listed["total"] == 1
    flow_id = listed["flows"][0]["id"]
    status, _, body = await call(setup, "GET", "/api/flows?filter=~d%20(")
    assert status == 400 and json.loads(body)["column"] == 4
    status, _, body = await call(setup, "GET", f"/api/flows/{flow_id}")
    detail = json.loads(body)
    assert detail["response"]["status_code"] == 200
    assert detail["response"]["body"]["content_encoding"] == "gzip"
    status, headers, body = await call(setup, "GET", f"/api/flows/{flow_id}/response/content")
    assert status == 200 and headers["X-Decoded"] == "yes"
    assert headers["Content-Type"] == "application/octet-stream"
    assert headers["Content-Security-Policy"] == "sandbox"
    assert b"gzip" not in body[:2] and len(body) > 0
    status, _, body = await call(setup, "GET", "/api/flows/nope")
    assert status == 404


@pytest_twisted.ensureDeferred
async def test_decompression_bomb(setup: Setup) -> None:
    """
    A body that decodes to more than the API's DECODE_LIMIT (9 MiB of HTML
    zeros in 9 KiB of gzip) is served as it was sent (``X-Decoded: no``)
    and not highlighted, without being decoded.
    """
    bomb = gzip.compress(b"\0" * (DECODE_LIMIT + 1024 * 1024))
    status, _ = await deferToThread(setup.through_proxy, "PUT", "/echo?bomb", {
        "Content-Encoding": "gzip", "Content-Type": "text/html"}, bomb)
    assert status == 200
    _, _, body = await call(setup, "GET", "/api/flows")
    [flow] = json.loads(body)["flows"]
    status, headers, body = await call(setup, "GET", f"/api/flows/{flow['id']}/request/content")
    assert status == 200 and headers["X-Decoded"] == "no"
    assert body == bomb
    status, _, body = await call(setup, "GET", f"/api/flows/{flow['id']}/request/highlight")
    assert status == 200 and json.loads(body)["language"] is None
    assert json.loads(body)["reason"].startswith("larger than")


@needs_curl
@pytest_twisted.ensureDeferred
async def test_export_as_command(setup: Setup) -> None:
    """
    A flow exports as a curl (or HTTPie) command; run, the curl command
    sends the origin the same request again.  raw is a file; an unknown
    format or flow is a 404.
    """
    status, _ = await deferToThread(setup.through_proxy, "PUT", "/echo?again",
                                    {"X-Mine": "yes", "Content-Type": "text/plain"}, b"the body")
    assert status == 200
    _, _, body = await call(setup, "GET", "/api/flows")
    [flow] = json.loads(body)["flows"]
    status, _, body = await call(setup, "GET", f"/api/flows/{flow['id']}/export/curl")
    exported = json.loads(body)
    assert status == 200 and exported["format"] == "curl"
    command = exported["command"]
    assert command.startswith("curl ") and "X-Mine: yes" in command
    done = await deferToThread(subprocess.run, ["sh", "-c", command + " --max-time 10"],
                               capture_output=True, timeout=30)
    assert done.returncode == 0, done.stderr
    again = [r for r in setup.factory.received if r.target == b"/echo?again"]
    assert len(again) == 2
    assert (again[1].method, again[1].body) == (again[0].method, again[0].body) == (
        b"PUT", b"the body")
    assert (b"X-Mine", b"yes") in again[1].headers
    status, _, body = await call(setup, "GET", f"/api/flows/{flow['id']}/export/httpie")
    assert status == 200 and " | http PUT " in json.loads(body)["command"]
    status, headers, body = await call(setup, "GET", f"/api/flows/{flow['id']}/export/raw")
    assert status == 200 and body.startswith(b"PUT /echo?again HTTP/1.1\r\n")
    assert "attachment" in headers["Content-Disposition"]
    for path in (f"/api/flows/{flow['id']}/export/wget", "/api/flows/nope/export/curl"):
        status, _, _ = await call(setup, "GET", path)
        assert status == 404, path


@pytest_twisted.ensureDeferred
async def test_list_sorted(setup: Setup) -> None:
    """
    The list sorts by a column either way (with a filter too); an unknown
    column or order is a 400 naming it.
    """
    for path in ("/status/404", "/echo?b", "/status/500", "/echo?a"):
        await deferToThread(setup.through_proxy, "GET", path)
    status, _, body = await call(setup, "GET", "/api/flows?sort=status&order=desc")
    page = json.loads(body)
    assert status == 200 and (page["sort"], page["order"]) == ("status", "desc")
    assert [f["status"] for f in page["flows"]] == [500, 404, 200, 200]
    status, _, body = await call(setup, "GET", "/api/flows?filter=~c%20200&sort=path")
    assert [f["path"] for f in json.loads(body)["flows"]] == ["/echo?a", "/echo?b"]
    status, _, body = await call(setup, "GET", "/api/flows?sort=path&offset=1&limit=2")
    assert [f["path"] for f in json.loads(body)["flows"]] == ["/echo?b", "/status/404"]
    status, _, body = await call(setup, "GET", "/api/flows?sort=cookie")
    assert status == 400 and "cannot sort by 'cookie'" in json.loads(body)["error"]
    status, _, body = await call(setup, "GET", "/api/flows?sort=path&order=up")
    assert status == 400 and "order must be asc or desc" in json.loads(body)["error"]


@pytest_twisted.ensureDeferred
async def test_mark_comment_delete_export(setup: Setup) -> None:
    """Marks and comments are stored, a flow can be deleted, exports hold the flows."""
    await deferToThread(setup.through_proxy, "GET", "/echo?keep")
    await deferToThread(setup.through_proxy, "GET", "/echo?drop")
    _, _, body = await call(setup, "GET", "/api/flows")
    keep, drop = (f["id"] for f in json.loads(body)["flows"])
    status, _, body = await call(setup, "PUT", f"/api/flows/{keep}",
                                 {"marked": "*", "comment": "look"})
    assert status == 200
    status, _, body = await call(setup, "GET", "/api/flows?filter=~marked")
    [marked] = json.loads(body)["flows"]
    assert (marked["id"], marked["comment"]) == (keep, "look")
    status, _, _ = await call(setup, "DELETE", f"/api/flows/{drop}")
    assert status == 200
    status, headers, body = await call(setup, "GET", "/api/export.har")
    har = json.loads(body)
    assert [e["request"]["url"] for e in har["log"]["entries"]] == [
        f"http://127.0.0.1:{setup.origin}/echo?keep"]
    assert "attachment" in headers["Content-Disposition"]
    status, _, body = await call(setup, "GET", "/api/export.jsonl")
    assert len(body.splitlines()) == 1 and b'"comment":"look"' in body


@pytest_twisted.ensureDeferred
async def test_intercept_edit_resume_and_kill(setup: Setup) -> None:
    """
    A request the intercept filter matches is held until resumed through
    the API, with the edits made meanwhile (the origin sees them); a held
    request killed through the API never reaches the origin.
    """
    status, _, _ = await call(setup, "PUT", "/api/intercept", {"filter": "~q & ~u held"})
    assert status == 200
    status, _, body = await call(setup, "PUT", "/api/intercept", {"filter": "~c x"})
    assert status == 400 and "column" in json.loads(body)
    held = deferToThread(setup.through_proxy, "POST", "/echo?held=1", {"X-A": "1"}, b"body")
    flow_id = None
    for _ in range(100):
        if setup.ui.recorder.live and any(f.intercepted for f in setup.ui.recorder.live.values()):
            flow_id = next(iter(setup.ui.recorder.live))
            break
        await deferToThread(time.sleep, 0.05)
    assert flow_id is not None
    assert not held.called
    status, _, body = await call(setup, "PUT", f"/api/flows/{flow_id}", {"request": {
        "method": "PUT", "url": f"http://127.0.0.1:{setup.origin}/echo?edited=1",
        "headers": [["Host", f"127.0.0.1:{setup.origin}"], ["X-A", "2"],
                    ["Content-Length", "4"]],
        "content": "new!"}})
    assert status == 200, body
    status, _, _ = await call(setup, "POST", f"/api/flows/{flow_id}/resume")
    assert status == 200
    code, answer = await held
    echoed = json.loads(answer)
    assert (code, echoed["method"], echoed["target"]) == (200, "PUT", "/echo?edited=1")
    assert ["X-A", "2"] in echoed["headers"] and echoed["length"] == 4
    killed = deferToThread(setup.through_proxy, "GET", "/echo?held=2")
    for _ in range(100):
        live = [f for f in setup.ui.recorder.live.values() if f.intercepted]
        if live:
            break
        await deferToThread(time.sleep, 0.05)
    status, _, _ = await call(setup, "POST", f"/api/flows/{live[0].id}/kill")
    assert status == 200
    with pytest.raises((http.client.HTTPException, OSError)):
        await killed
    assert not any(r.target == b"/echo?held=2" for r in setup.factory.received)


@pytest_twisted.ensureDeferred
async def test_highlight(setup: Setup) -> None:
    """
    An HTML body is answered as highlighted tokens whose texts joined are
    the body (markup in it stays text); JSON and bodies over the limit are
    not highlighted (the reason says why); no recorded body is a 404.
    """
    page = b'<p class="x">caf\xc3\xa9 &amp; <script>alert("hi")</script></p>'
    await deferToThread(setup.through_proxy, "PUT", "/echo?html",
                        {"Content-Type": "text/html; charset=utf-8"}, page)
    await deferToThread(setup.through_proxy, "PUT", "/echo?big",
                        {"Content-Type": "text/css"}, b"a{}" * (90 * 1024))
    _, _, body = await call(setup, "GET", "/api/flows")
    html, big = json.loads(body)["flows"]
    status, _, body = await call(setup, "GET", f"/api/flows/{html['id']}/request/highlight")
    answer = json.loads(body)
    assert status == 200 and (answer["language"], answer["complete"]) == ("html", True)
    assert "".join(text for _, text in answer["tokens"]) == page.decode()
    assert ["t", "script"] in answer["tokens"] and ["s", '"x"'] in answer["tokens"]
    status, _, body = await call(setup, "GET", f"/api/flows/{html['id']}/response/highlight")
    answer = json.loads(body)
    assert status == 200 and answer["language"] is None
    assert answer["reason"].startswith("application/json")
    status, _, body = await call(setup, "GET", f"/api/flows/{big['id']}/request/highlight")
    assert json.loads(body) == {"language": None,
                                "reason": "larger than 256 KiB: shown as plain text"}
    status, _, body = await call(setup, "GET", "/api/flows/nope/request/highlight")
    assert status == 404, body


def detail_length(message: dict[str, Any]) -> str:
    """The Content-Length header of a message in a flow's detail."""
    [value] = [v for n, v in message["headers"] if n.lower() == "content-length"]
    return str(value)


async def _held(setup: Setup, path: str) -> HTTPFlow:
    """The live flow of *path* once it is held (waits up to 5 s)."""
    for _ in range(100):
        for flow in list(setup.ui.recorder.live.values()):
            if flow.intercepted and flow.request is not None and flow.request.path == path:
                return flow
        await deferToThread(time.sleep, 0.05)
    raise AssertionError(f"{path} was not held")


@pytest_twisted.ensureDeferred
async def test_edit_held_response(setup: Setup) -> None:
    """
    A response the intercept filter holds is edited through the API
    (status, reason, headers, body as text) and resumed: the client gets
    the edit, with a Content-Length that fits the new body.  A bad edit (a
    CR LF in the reason) is a 400 that changes nothing; its request cannot
    be edited any more (it was sent).
    """
    status, _, _ = await call(setup, "PUT", "/api/intercept", {"filter": "~s & ~u held"})
    assert status == 200
    answer = deferToThread(setup.through_proxy_full, "GET", "/echo?held")
    flow = await _held(setup, "/echo?held")
    assert flow.response is not None and not answer.called
    status, _, body = await call(setup, "PUT", f"/api/flows/{flow.id}", {"response": {
        "status_code": 200, "reason": "OK\r\nX-Evil: 1"}})
    assert status == 400 and "reason" in json.loads(body)["error"], body
    assert flow.response.reason == "OK"
    status, _, body = await call(setup, "PUT", f"/api/flows/{flow.id}",
                                 {"request": {"method": "POST"}})
    assert status == 409 and "edit the held response" in json.loads(body)["error"]
    headers = [[n.decode(), v.decode()] for n, v in flow.response.headers.fields
               if n.lower() != b"x-origin-case"] + [["X-Edited", "yes"]]
    status, _, body = await call(setup, "PUT", f"/api/flows/{flow.id}", {"response": {
        "status_code": "201", "reason": "Made Here", "headers": headers,
        "content": '{"edited": "caf\u00e9"}'}})
    assert status == 200, body
    detail = json.loads(body)["response"]
    assert (detail["status_code"], detail["reason"]) == (201, "Made Here")
    status, _, _ = await call(setup, "POST", f"/api/flows/{flow.id}/resume")
    assert status == 200
    code, reason, got_headers, content = await answer
    assert (code, reason) == (201, "Made Here")
    assert content == '{"edited": "café"}'.encode()
    got = {name.lower(): value for name, value in got_headers.items()}
    assert got["x-edited"] == "yes" and "x-origin-case" not in got
    assert got["content-length"] == str(len(content)) == detail_length(detail)


@pytest_twisted.ensureDeferred
async def test_edit_stored_flow(setup: Setup) -> None:
    """
    A flow that is not live can be edited (request and response) and the
    edit is stored; a bad method is a 400.
    """
    await deferToThread(setup.through_proxy, "GET", "/echo?stored")
    _, _, body = await call(setup, "GET", "/api/flows")
    [flow] = json.loads(body)["flows"]
    status, _, body = await call(setup, "PUT", f"/api/flows/{flow['id']}", {"request": {
        "method": "POST", "url": f"http://127.0.0.1:{setup.origin}/echo?changed",
        "content": "a body"}})
    assert status == 200, body
    status, _, body = await call(setup, "PUT", f"/api/flows/{flow['id']}",
                                 {"request": {"method": "P O"}})
    assert status == 400 and "not a method" in json.loads(body)["error"]
    stored = setup.ui.store.load(flow["id"])
    assert stored is not None and stored.request is not None
    assert (stored.request.method, stored.request.path) == ("POST", "/echo?changed")
    assert stored.request.raw_content == b"a body"
    _, _, body = await call(setup, "GET", "/api/flows")
    assert json.loads(body)["flows"][0]["method"] == "POST"


@pytest_twisted.ensureDeferred
async def test_duplicate_edit_replay(setup: Setup) -> None:
    """
    A duplicate is a new stored flow (new id, not live) beside the
    original; its request is edited and replayed: the origin gets the
    edited request and the duplicate records the new response, the
    original unchanged.
    """
    await deferToThread(setup.through_proxy, "GET", "/echo?original")
    _, _, body = await call(setup, "GET", "/api/flows")
    [original] = json.loads(body)["flows"]
    status, _, body = await call(setup, "POST", f"/api/flows/{original['id']}/duplicate")
    copy = json.loads(body)
    assert status == 200 and copy["id"] != original["id"] and not copy["live"]
    assert copy["request"]["url"] == f"http://127.0.0.1:{setup.origin}/echo?original"
    _, _, body = await call(setup, "GET", "/api/flows")
    assert [f["id"] for f in json.loads(body)["flows"]] == [original["id"], copy["id"]]
    status, _, body = await call(setup, "PUT", f"/api/flows/{copy['id']}", {"request": {
        "url": f"http://127.0.0.1:{setup.origin}/echo?duplicate"}})
    assert status == 200, body
    status, _, body = await call(setup, "POST", f"/api/flows/{copy['id']}/replay")
    assert status == 200, body
    await setup.ui.replay.when_drained()
    assert [r.target for r in setup.factory.received] == [b"/echo?original", b"/echo?duplicate"]
    setup.ui.recorder.flush()
    replayed = setup.ui.store.load(copy["id"])
    assert replayed is not None and replayed.is_replay == "request"
    assert replayed.response is not None
    assert json.loads(replayed.response.content or b"")["target"] == "/echo?duplicate"
    kept = setup.ui.store.load(original["id"])
    assert kept is not None and kept.request is not None and kept.request.path == "/echo?original"
    status, _, _ = await call(setup, "POST", "/api/flows/nope/duplicate")
    assert status == 404


@pytest_twisted.ensureDeferred
async def test_import(setup: Setup) -> None:
    """
    A HAR file and a flow file load into the store and the list; loading
    one again gives the flows new ids (nothing overwritten); a file with a
    bad line loads the rest and names it; a file of nothing readable, an
    empty one, a HAR that is not JSON are 400s with the reason; a file over
    the limit a 413.
    """
    har = (DATA / "browser.har").read_bytes()
    status, _, body = await call(setup, "POST", "/api/import?name=browser.har", data=har)
    answer = json.loads(body)
    assert status == 200 and (answer["loaded"], answer["skipped"]) == (5, 0), body
    _, _, body = await call(setup, "GET", "/api/flows")
    listed = json.loads(body)["flows"]
    assert [f["host"] for f in listed][:2] == ["shop.example.com", "cdn.example.net"]
    assert [f["id"] for f in listed] == answer["ids"]
    flows = (DATA / "flows-v1.jsonl").read_bytes()
    status, _, body = await call(setup, "POST", "/api/import", data=flows)  # no name
    first = json.loads(body)
    assert status == 200 and first["loaded"] == len(flows.splitlines()), body
    ids = [json.loads(line)["id"] for line in flows.splitlines()]
    assert first["ids"] == ids
    status, _, body = await call(setup, "POST", "/api/import?name=again.jsonl", data=flows)
    again = json.loads(body)
    assert status == 200 and again["loaded"] == len(ids)
    assert not set(again["ids"]) & set(ids)
    _, _, body = await call(setup, "GET", "/api/flows")
    assert json.loads(body)["total"] == 5 + 2 * len(ids)
    status, _, body = await call(setup, "POST", "/api/import?name=mixed.jsonl",
                                 data=flows.splitlines(True)[0] + b"{not json\n")
    mixed = json.loads(body)
    assert status == 200 and (mixed["loaded"], mixed["skipped"]) == (1, 1)
    assert mixed["errors"][0].startswith("line 2: not valid JSON")
    for name, data, reason in (
        ("x.jsonl", b"\x89PNG\r\n\x1a\n\x00\x00",
         "x.jsonl: not a flow file twistproxy can read: line 1"),
        ("x.har", b"{not json", "x.har: not a HAR file: not valid JSON"),
        ("x.har", b'{"log": {"entries": 3}}', "x.har: log.entries: missing or not a list"),
        ("empty.har", b"", "empty.har is empty"),
    ):
        status, _, body = await call(setup, "POST", f"/api/import?name={name}", data=data)
        assert status == 400 and json.loads(body)["error"].startswith(reason), body
    status, _, body = await call(setup, "POST", "/api/import?name=export.json",
                                 data=b"\xef\xbb\xbf\n " + har)  # a HAR by its start
    assert status == 200 and json.loads(body)["loaded"] == 5, body
    _actions.MAX_IMPORT, limit = 1000, _actions.MAX_IMPORT
    try:
        status, _, body = await call(setup, "POST", "/api/import?name=big.har", data=har)
    finally:
        _actions.MAX_IMPORT = limit
    assert status == 413 and "larger than" in json.loads(body)["error"]


@pytest_twisted.ensureDeferred
async def test_replay_several(setup: Setup) -> None:
    """
    Flows picked by id, or all that a filter matches, are replayed one
    after another (each recorded as a replay); those that cannot be are
    skipped with their reason; more than the limit is refused.
    """
    for path in ("/echo?a", "/echo?b", "/status/404"):
        await deferToThread(setup.through_proxy, "GET", path)
    _, _, body = await call(setup, "GET", "/api/flows")
    a, b, missing = (f["id"] for f in json.loads(body)["flows"])
    status, _, body = await call(setup, "POST", "/api/replay", {"ids": [a, b, "nope"]})
    answer = json.loads(body)
    assert status == 200 and answer == {
        "queued": 2, "skipped": [{"id": "nope", "reason": "no such flow"}]}, body
    await setup.ui.replay.when_drained()
    status, _, body = await call(setup, "POST", "/api/replay?filter=~c%20404",
                                 {"matching": True})
    assert status == 200 and json.loads(body)["queued"] == 1, body
    await setup.ui.replay.when_drained()
    targets = [r.target for r in setup.factory.received]
    assert targets == [b"/echo?a", b"/echo?b", b"/status/404",
                       b"/echo?a", b"/echo?b", b"/status/404"]
    _, _, body = await call(setup, "GET", "/api/flows")  # (the list flushes the recorder)
    assert [f["replay"] for f in json.loads(body)["flows"]] == ["request"] * 3
    status, _, body = await call(setup, "POST", "/api/replay", {"all": True})
    assert status == 400
    _actions.MAX_REPLAY, limit = 2, _actions.MAX_REPLAY
    try:
        status, _, body = await call(setup, "POST", "/api/replay", {"matching": True})
    finally:
        _actions.MAX_REPLAY = limit
    assert status == 409 and json.loads(body)["error"] == (
        "3 flows are stored: at most 2 are replayed at once"), body


def stored_paths(path: Path) -> list[str]:
    """The paths of the flows in the store file *path*, read-only (it may be in use)."""
    if not path.exists():
        return []
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        rows = db.execute("SELECT json_extract(summary, '$.path') FROM flows").fetchall()
    except sqlite3.OperationalError:  # not made yet
        return []
    finally:
        db.close()
    return [p for p, in rows]


@pytest_twisted.ensureDeferred
async def test_flows_ending_in_the_drain_are_stored(tmp_path: Path, trickling: int) -> None:  # noqa: F811
    """
    ``twistd twistproxy --web --web-store PATH``, SIGTERM while a slow
    response trickles: the flow ends during the drain and is in the store
    file with its whole response (the store is closed after the drain, not
    when the UI stops listening).
    """
    path = tmp_path / "flows.sqlite3"
    child, port = await start_twistd(tmp_path, "--web", "--web-port", "0", "--web-store",
                                     str(path), "--shutdown-timeout", "15")
    try:
        slow = await connect(port)
        get(slow, trickling, "/slow")
        # The live flow is stored (its request is in); its response, buffered
        # for the UI's intercept hook, trickles for 2 s.
        await until(lambda: stored_paths(path) == ["/slow"], "the live flow in the store")
        assert not slow.data
        child.transport.signalProcess(signal.SIGTERM)  # type: ignore[union-attr]
        await until(lambda: slow.reason is not None, "the slow response's end")
        assert slow.data.endswith(PIECE * PIECES)
        await until(lambda: child.done, "the proxy's exit", EXIT_TIMEOUT)
        assert_stopped_cleanly(child.code, child.signal, child.output)
    finally:
        await child.stop()
    store = FlowStore(path)
    try:
        [summary] = store.summaries(store.view("").seqs)
        assert (summary["path"], summary["status"], summary["live"]) == ("/slow", 200, False)
        flow = store.load(summary["id"])
        assert flow is not None and flow.response is not None
        assert flow.response.raw_content == PIECE * PIECES
    finally:
        store.close()


def _open_events(port: int, token: str) -> tuple[socket.socket, bytes]:
    """Blocking: a push channel whose client reads its head, then nothing (a stalled tab)."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.settimeout(10)
    sock.connect(("127.0.0.1", port))
    sock.sendall(b"GET /api/events HTTP/1.1\r\nHost: 127.0.0.1:%d\r\n"
                 b"X-Twistproxy-Token: %s\r\n\r\n" % (port, token.encode()))
    received = b""
    for _ in range(100):
        if b": twistproxy\n\n" in received:
            break
        received += sock.recv(4096)
    return sock, received


def _read_until(sock: socket.socket, marker: bytes, limit: int) -> bytes:
    """Blocking: read *sock* until *marker* arrives (or *limit* bytes, or 10 s)."""
    received = b""
    deadline = time.monotonic() + 10
    while marker not in received and len(received) < limit and time.monotonic() < deadline:
        piece = sock.recv(65536)
        if not piece:
            break
        received += piece
    return received


def _buffered(transport: Any) -> int:
    """The bytes a Twisted TCP transport holds for its peer (not yet in the kernel)."""
    return len(transport.dataBuffer) - transport.offset + transport._tempDataLen


@pytest_twisted.ensureDeferred
async def test_events_stalled_client_bounded(setup: Setup) -> None:
    """
    A push-channel client that stops reading while thousands of flows are
    written: what the UI holds for it stays bounded (batches are dropped
    while it is behind, not buffered); once it reads again it gets one
    reload event with the current total.
    """
    sock, head = await deferToThread(_open_events, setup.web, setup.ui.guard.token)
    try:
        assert head.startswith(b"HTTP/1.1 200 OK\r\n"), head
        recorder = setup.ui.recorder
        [listener] = recorder._listeners
        transport = listener.__self__._request.transport  # type: ignore[attr-defined]
        transport.getHandle().setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
        count, most, sent = 0, 0, 0
        for _ in range(30):
            flows = [make_flow(f"/stalled/{count + i}/" + "p" * 600) for i in range(100)]
            count += len(flows)
            for flow in flows:
                recorder.touch(flow)
            recorder.flush()
            sent += sum(len(json.dumps(summarize(f, 0))) for f in flows)
            await deferLater(reactor, 0, lambda: None)  # the transport writes what it can
            most = max(most, _buffered(transport))
        assert sent > 2 * 2**20  # what the client would have been sent, in summaries
        assert most < 256 * 1024, most
        marker = b'{"total":%d,"reload":true}' % count
        received = await deferToThread(_read_until, sock, marker, 4 * 2**20)
        assert marker in received
        assert len(received) < 2**20, len(received)
    finally:
        sock.close()


@pytest_twisted.ensureDeferred
async def test_list_building_progress(setup: Setup) -> None:
    """
    A new filter view that takes a while to build: the list call answers
    202 with how many of the stored flows were read, and again until the
    view is built; then the page of flows.
    """
    store = setup.ui.store
    store.write([make_flow(f"/progress/{i}", status=200 if i % 2 else 404) for i in range(100)])
    store._chunk = 1
    step = store.build_step

    def slow_step(view: View) -> bool:
        time.sleep(0.005)  # 100 steps: at least 0.5 s, past PROGRESS_AFTER
        return step(view)

    store.build_step = slow_step  # type: ignore[method-assign]
    answers = []
    for _ in range(100):
        status, _, body = await call(setup, "GET", "/api/flows?filter=~c%20200&limit=5")
        answers.append((status, json.loads(body)))
        if status != 202:
            break
    status, page = answers[-1]
    assert status == 200 and page["total"] == 50
    assert [f["path"] for f in page["flows"]][:2] == ["/progress/1", "/progress/3"]
    building = [body["building"] for status, body in answers if status == 202]
    assert building and all(b["of"] == 100 and 0 < b["read"] <= 100 for b in building)
    assert [b["read"] for b in building] == sorted(b["read"] for b in building)
