# -*- test-case-name: tests.test_web_api,tests.e2e.test_web_api_e2e -*-
"""
The web UI's HTTP side: :class:`WebRoot`, the twisted.web resource tree
(the page, its static files, the JSON API and the push channel), every
request checked by a :class:`~twistproxy.web._guard.Guard` first.

The API (every call needs the token: the cookie the page's URL sets, or an
``X-Twistproxy-Token`` header)::

    GET    /api/flows?filter=F&offset=N&limit=N   a page of flow summaries
                  &sort=KEY&order=asc|desc        sorted by a summary field
    GET    /api/flows/ID                          one flow (the flow view)
    GET    /api/flows/ID/request/content          a body, decoded (?download=1)
    GET    /api/flows/ID/request/highlight        {"language", "tokens": [[class, text]]}
    GET    /api/flows/ID/export/curl              {"command": ...} (httpie too; raw: a file)
    PUT    /api/flows/ID                          {marked, comment, request|response: {...}}
    DELETE /api/flows/ID
    POST   /api/flows/ID/resume | kill | replay | duplicate
    POST   /api/replay?filter=F                   {"ids": [...]} or {"matching": true}
    POST   /api/import?name=N                     a flow file or HAR as the body
    GET    /api/export.har?filter=F, /api/export.jsonl?filter=F
    GET    /api/intercept, PUT /api/intercept     {"filter": F}
    GET    /api/events?filter=F                   server-sent events
"""

from __future__ import annotations

import io
import json
from array import array
from collections.abc import Callable
from importlib.resources import files
from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IDelayedCall, IPushProducer
from twisted.internet.task import Cooperator
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request
from zope.interface import implementer

from twistproxy import __version__
from twistproxy.export import FORMATS, ExportError
from twistproxy.filters import FilterError
from twistproxy.flow import FlowNotKillable
from twistproxy.flowfile import dump_flows
from twistproxy.har import to_har
from twistproxy.http import HTTPFlow
from twistproxy.web._actions import Actions, edit_message
from twistproxy.web._actions import ApiError as _HTTPError
from twistproxy.web._detail import flow_detail
from twistproxy.web._guard import TOKEN_HEADER, Guard
from twistproxy.web.addon import WebIntercept, WebRecorder, Written
from twistproxy.web.store import SIDES, View

_log = Logger(namespace="twistproxy.web")

STATIC = files("twistproxy.web") / "static"
"""The page's files."""

MAX_PAGE = 1000
"""The most flow summaries one list call returns."""

PROGRESS_AFTER = 0.25
"""Seconds a list call waits for a new filter view before answering how far it got."""

MAX_BODY = 16 * 1024 * 1024
"""The largest request body the API reads (an edited body, say)."""

DECODE_LIMIT = 8 * 1024 * 1024
"""
The most bytes a body is decoded to (``Content-Encoding``) for the flow view,
its download and highlighting: a small compressed body can decode to
gigabytes; past it the body is served as it was sent (``X-Decoded: no``).
"""

_SECURITY_HEADERS = [
    (b"Content-Security-Policy",
     b"default-src 'self'; img-src 'self' blob: data:; object-src 'none'; "
     b"base-uri 'none'; frame-ancestors 'none'; form-action 'self'"),
    (b"X-Content-Type-Options", b"nosniff"),
    (b"Referrer-Policy", b"no-referrer"),
    (b"X-Frame-Options", b"DENY"),
]


def _send_json(request: Request, value: Any, code: int = 200) -> bytes:
    request.setResponseCode(code)
    request.setHeader(b"Content-Type", b"application/json")
    request.setHeader(b"Cache-Control", b"no-store")
    return json.dumps(value, separators=(",", ":")).encode()


def _refuse(request: Request, code: int, message: str) -> bytes:
    request.setResponseCode(code)
    request.setHeader(b"Content-Type", b"text/plain; charset=utf-8")
    return f"twistproxy web UI: {message}\n".encode()


class _Refused(Resource):
    isLeaf = True

    def __init__(self, code: int, message: str) -> None:
        super().__init__()
        self._code, self._message = code, message

    def render(self, request: Request) -> bytes:
        return _refuse(request, self._code, self._message)


class WebRoot(Resource):
    """
    The UI's root: checks ``Host``, ``Origin`` and the token on every
    request, then serves ``/`` (the page; ``/?token=T`` sets the token's
    cookie and redirects to ``/``), ``/static/`` and ``/api/``.
    """

    def __init__(self, guard: Guard, recorder: WebRecorder, intercept: WebIntercept,
                 replay: Callable[[HTTPFlow], str | None] | None = None) -> None:
        super().__init__()
        self._guard = guard
        self._static = _Static()
        self._api = _Api(recorder, intercept, replay)

    def getChildWithDefault(self, path: bytes, request: Request) -> Resource:
        """Check the request, then route it."""
        for name, value in _SECURITY_HEADERS:
            request.setHeader(name, value)
        guard = self._guard
        host = _header(request, b"host")
        refusal = guard.host_refusal(host)
        if refusal is None:
            refusal = guard.origin_refusal(_header(request, b"origin"), host,
                                           _header(request, b"sec-fetch-site"))
        if refusal is not None:
            _log.warn("--web: refused {method} {uri} from {client}: {why}",
                      method=request.method.decode("latin-1"),
                      uri=request.uri.decode("latin-1")[:200].split("?")[0],
                      client=str(request.getClientAddress()), why=refusal)
            return _Refused(403, f"refused: {refusal}")
        if path == b"" and not request.postpath and b"token" in request.args:
            return _Login(guard)
        token = _header(request, TOKEN_HEADER)
        if not guard.token_valid(token) and not guard.token_valid(request.getCookie(
                guard.cookie_name)):
            return _Refused(403, "open the URL twistproxy printed at start (it holds the "
                            "token), or send the token in an X-Twistproxy-Token header")
        if path == b"":
            return self._static.page(b"index.html")
        if path == b"static":
            return self._static
        if path == b"api":
            return self._api
        return _Refused(404, "no such page")


_TYPES = {".html": b"text/html; charset=utf-8", ".js": b"text/javascript; charset=utf-8",
          ".css": b"text/css; charset=utf-8"}


class _Static(Resource):
    """The page's files (and nothing else: no listing, no other path)."""

    def __init__(self) -> None:
        super().__init__()
        for item in STATIC.iterdir():
            suffix = "." + item.name.rpartition(".")[2]
            if suffix in _TYPES:
                self.putChild(item.name.encode(), _File(item.read_bytes(), _TYPES[suffix]))

    def page(self, name: bytes) -> Resource:
        """The file *name*."""
        return self.children[name]

    def getChild(self, path: bytes, request: Request) -> Resource:
        return _Refused(404, "no such file")


class _File(Resource):
    isLeaf = True

    def __init__(self, data: bytes, content_type: bytes) -> None:
        super().__init__()
        self._data, self._type = data, content_type

    def render_GET(self, request: Request) -> bytes:
        request.setHeader(b"Content-Type", self._type)
        request.setHeader(b"Cache-Control", b"no-cache")
        return self._data


class _Login(Resource):
    """``/?token=T``: set the token's cookie, then go to ``/`` (the token leaves the URL)."""

    isLeaf = True

    def __init__(self, guard: Guard) -> None:
        super().__init__()
        self._guard = guard

    def render_GET(self, request: Request) -> bytes:
        guard = self._guard
        if not guard.token_valid(request.args[b"token"][0]):
            return _refuse(request, 403, "wrong token")
        request.addCookie(guard.cookie_name, guard.token.encode(), path=b"/",
                          httpOnly=True, sameSite="strict")
        request.setResponseCode(303)
        request.setHeader(b"Location", b"/")
        return b""


class _Api(Resource):
    isLeaf = True

    def __init__(self, recorder: WebRecorder, intercept: WebIntercept,
                 replay: Callable[[HTTPFlow], str | None] | None) -> None:
        super().__init__()
        self._recorder = recorder
        self._store = recorder.store
        self._intercept = intercept
        self._replay = replay
        clock = recorder.clock
        # A new filter view is built a chunk of flows at a time, the reactor
        # serving others in between (10 ms of work per turn).
        self._cooperator = Cooperator(scheduler=lambda step: clock.callLater(0, step))
        self._actions = Actions(recorder, self._cooperator, replay)

    def render(self, request: Request) -> bytes | int:
        method = request.method.decode("ascii", "replace")
        path = [p.decode("utf-8", "replace") for p in request.postpath or ()]
        try:
            return self._route(request, method, path)
        except _HTTPError as e:
            return _send_json(request, e.body, e.code)

    def _route(self, request: Request, method: str, path: list[str]) -> bytes | int:
        match method, path:
            case "GET", ["flows"]:
                return self._with_view(request, lambda view: self._list(request, view),
                                       progress=True)
            case "GET", ["events"]:
                return self._with_view(request, lambda view: _Events(
                    self._recorder, view).start(request))
            case "GET", ["intercept"]:
                return _send_json(request, {"filter": self._intercept.expression})
            case "PUT", ["intercept"]:
                expression = str(_json_body(request).get("filter", ""))
                try:
                    self._intercept.set_filter(expression)
                except FilterError as e:
                    raise _filter_error(e) from None
                return _send_json(request, {"filter": self._intercept.expression})
            case "GET", ["export.har"]:
                return self._with_view(request, lambda view: _download(
                    request, json.dumps(to_har(self._matching(view), creator_version=__version__)
                                        ).encode(), "flows.har", b"application/json"))
            case "GET", ["export.jsonl"]:
                return self._with_view(request, lambda view: _download(
                    request, _flow_file(self._matching(view)), "flows.jsonl",
                    b"application/x-ndjson"))
            case "GET", ["flows", flow_id]:
                flow = self._flow(flow_id, bodies=False)
                return _send_json(request, flow_detail(flow, self._store.seq_of(flow_id)))
            case "GET", ["flows", flow_id, side, "content"] if side in SIDES:
                return self._content(request, self._flow(flow_id), side)
            case "GET", ["flows", flow_id, side, "highlight"] if side in SIDES:
                return _later(request, self._actions.highlight(self._flow(flow_id), side))
            case "GET", ["flows", flow_id, "export", name] if name in FORMATS:
                return self._export(request, self._flow(flow_id), name)
            case "PUT", ["flows", flow_id]:
                return _send_json(request, self._change(flow_id, _json_body(request)))
            case "DELETE", ["flows", flow_id]:
                return _send_json(request, self._delete(flow_id))
            case "POST", ["flows", flow_id, action] if action in ("resume", "kill", "replay"):
                return _send_json(request, self._act(flow_id, action))
            case "POST", ["flows", flow_id, "duplicate"]:
                return _send_json(request, self._actions.duplicate(self._flow(flow_id)))
            case "POST", ["replay"]:
                return self._with_view(request, lambda view: _send_json(
                    request, self._actions.replay(view, _json_body(request))))
            case "POST", ["import"]:
                assert request.content is not None
                return _later(request, self._actions.load(request.content, _arg(request, "name")))
        raise _HTTPError(404, f"no such API call: {method} /api/{'/'.join(path)}")

    # -- reading ------------------------------------------------------------

    def _with_view(self, request: Request, then: Callable[[View], bytes | int], *,
                   progress: bool = False) -> bytes | int:
        """
        ``then(view)`` with the view of the request's filter: now if it is
        built, else once it is (``NOT_DONE_YET`` until then).  With
        *progress*, a view still building after :data:`PROGRESS_AFTER`
        seconds is answered ``202`` with how far the build got instead
        (``{"building": {"read": N, "of": M}}``): the caller asks again.
        """
        self._recorder.flush()  # the view includes what was just seen
        try:
            view = self._store.view(_arg(request, "filter"), build=False)
        except FilterError as e:
            raise _filter_error(e) from None
        if view.complete:
            return then(view)
        gone: list[object] = []  # the client went, or it was answered
        request.notifyFinish().addErrback(gone.append)
        timer: IDelayedCall | None = None

        def building() -> None:
            if gone:
                return
            gone.append(None)
            request.write(_send_json(request, {
                "building": {"read": view.read, "of": view.of or view.read},
                "total": 0, "flows": []}, 202))
            request.finish()

        if progress:
            timer = self._recorder.clock.callLater(PROGRESS_AFTER, building)

        def answer(view: View) -> None:
            if timer is not None and timer.active():
                timer.cancel()
            if gone:
                return
            try:
                result = then(view)
            except _HTTPError as e:
                result = _send_json(request, e.body, e.code)
            if result is not NOT_DONE_YET:
                assert isinstance(result, bytes)
                request.write(result)
                request.finish()

        def failed(failure: Failure) -> None:
            if timer is not None and timer.active():
                timer.cancel()
            _log.failure("--web: cannot build the view of {expression!r}", failure,
                         expression=view.expression)
            if not gone:
                request.setResponseCode(500)
                request.finish()

        self._store.built(view, self._cooperator).addCallback(answer).addErrback(failed)
        return NOT_DONE_YET

    def _list(self, request: Request, view: View) -> bytes | int:
        """A page of *view*, in the order asked for (``NOT_DONE_YET`` while it is sorted)."""
        offset = max(0, _int_arg(request, "offset", 0))
        limit = min(MAX_PAGE, max(0, _int_arg(request, "limit", 100)))
        key = _arg(request, "sort") or "seq"
        order = _arg(request, "order") or "asc"
        if order not in ("asc", "desc"):
            raise _HTTPError(400, f"order must be asc or desc, not {order!r}")
        try:
            ordered = self._store.sorted(view, key, order == "desc")
        except ValueError as e:
            raise _HTTPError(400, str(e)) from None

        def page(seqs: array[int]) -> dict[str, Any]:
            return {"total": len(seqs), "offset": offset, "sort": key, "order": order,
                    "flows": self._store.summaries(seqs[offset:offset + limit])}

        return _later(request, ordered.addCallback(page))

    def _matching(self, view: View) -> list[HTTPFlow]:
        return list(self._store.flows(view.seqs))

    def _flow(self, flow_id: str, *, bodies: bool = True) -> HTTPFlow:
        live = self._recorder.live.get(flow_id)
        if live is not None:
            return live
        flow = self._store.load(flow_id, bodies=bodies)
        if flow is None:
            raise _HTTPError(404, f"no flow {flow_id}")
        return flow

    def _content(self, request: Request, flow: HTTPFlow, side: str) -> bytes:
        message = flow.request if side == "request" else flow.response
        if message is None or message.raw_content is None:
            raise _HTTPError(404, f"the flow has no recorded {side} body")
        content = message.get_content(strict=False, limit=DECODE_LIMIT)
        decoded = content is not message.raw_content or not message.headers.get(
            b"content-encoding")
        request.setHeader(b"X-Decoded", b"yes" if decoded else b"no")
        if content is None:
            content = message.raw_content
        if _arg(request, "download"):
            name = f"{flow.id}-{side}"
            return _download(request, content, name, b"application/octet-stream")
        # Never the body's own type: a page of the origin's must not run here.
        request.setHeader(b"Content-Type", b"application/octet-stream")
        request.setHeader(b"Content-Security-Policy", b"sandbox")
        request.setHeader(b"Cache-Control", b"no-store")
        return content

    def _export(self, request: Request, flow: HTTPFlow, name: str) -> bytes:
        try:
            exported = FORMATS[name](flow)
        except ExportError as e:
            raise _HTTPError(409, f"cannot export as {name}: {e}") from None
        if isinstance(exported, bytes):
            return _download(request, exported, f"{flow.id}.http", b"application/octet-stream")
        return _send_json(request, {"format": name, "command": exported})

    # -- acting ---------------------------------------------------------------

    def _written(self, flow: HTTPFlow) -> None:
        if flow.id in self._recorder.live:
            self._recorder.touch(flow)
            self._recorder.flush()
        else:
            self._recorder.notify(self._store.write([flow]))

    def _change(self, flow_id: str, body: dict[str, Any]) -> dict[str, Any]:
        flow = self._flow(flow_id)
        for side in SIDES:  # edits first (each whole or not at all), then the rest
            if side in body:
                edit_message(flow, side, body[side])
        if "marked" in body:
            flow.marked = str(body["marked"])[:8]
        if "comment" in body:
            flow.comment = str(body["comment"])
        self._written(flow)
        return flow_detail(flow, self._store.seq_of(flow_id))

    def _delete(self, flow_id: str) -> dict[str, Any]:
        if flow_id in self._recorder.live:
            raise _HTTPError(409, "the flow is live: kill it first")
        if self._store.delete(flow_id) is None:
            raise _HTTPError(404, f"no flow {flow_id}")
        self._recorder.notify([], True)
        return {"deleted": flow_id}

    def _act(self, flow_id: str, action: str) -> dict[str, Any]:
        flow = self._flow(flow_id)
        if action == "replay":
            if self._replay is None:
                raise _HTTPError(409, "replay is not available here")
            reason = self._replay(flow)
            if reason is not None:
                raise _HTTPError(409, f"cannot replay: {reason}")
            return {"replaying": flow_id}
        if flow_id not in self._recorder.live:
            raise _HTTPError(409, "the flow is not live")
        if action == "resume":
            flow.resume()
        else:
            try:
                flow.kill()
            except FlowNotKillable as e:
                raise _HTTPError(409, str(e)) from None
        self._written(flow)
        return {action: flow_id}


@implementer(IPushProducer)
class _Events:
    """
    One push channel: server-sent events of the flows in one view.

    It is the request's producer: while the client is behind (the
    connection's send buffer full: a tab that stopped reading, a slow link),
    batches are dropped, not buffered, and once the buffer drained one
    ``reload`` event (the view's total) stands for them all: the page then
    reloads the rows in sight.  What waits for a slow client is bounded by
    the transport's buffer and one batch.
    """

    def __init__(self, recorder: WebRecorder, view: View) -> None:
        self._recorder = recorder
        self._view = view
        self._request: Request | None = None
        self._paused = False  # the client is behind: batches are dropped
        self._dropped = False  # a batch was dropped: reload once resumed

    def start(self, request: Request) -> int:
        """Answer *request* with the event stream (``NOT_DONE_YET``)."""
        request.setHeader(b"Content-Type", b"text/event-stream")
        request.setHeader(b"Cache-Control", b"no-store")
        self._request = request
        self._view.users += 1
        self._recorder.subscribe(self._written)
        request.registerProducer(self, True)
        request.write(b": twistproxy\n\n")
        request.notifyFinish().addBoth(self._gone)
        return NOT_DONE_YET

    def pauseProducing(self) -> None:
        """The client is behind: drop batches until it catches up."""
        self._paused = True

    def resumeProducing(self) -> None:
        """The client caught up: one ``reload`` for the batches dropped meanwhile."""
        self._paused = False
        if self._dropped:
            self._dropped = False
            self._send({"total": len(self._view), "reload": True})

    def stopProducing(self) -> None:
        """The connection is going: :meth:`_gone` follows."""

    def _gone(self, _: object) -> None:
        request, self._request = self._request, None
        self._recorder.unsubscribe(self._written)
        self._view.users -= 1
        if request is not None and request.channel is not None:  # None: the connection is lost
            request.unregisterProducer()

    def _written(self, written: Written, reload: bool) -> None:
        if self._request is None:
            return
        if self._paused:
            self._dropped = True
            return
        view = self._view
        event: dict[str, Any] = {"total": len(view), "reload": reload or view.reload}
        if not event["reload"]:
            changes = []
            for seq, summary, _ in written:
                index = view.index(seq)
                if index is not None:
                    changes.append({"index": index, "flow": summary})
            if not changes:
                return
            event["changes"] = changes
        self._send(event)

    def _send(self, event: dict[str, Any]) -> None:
        request = self._request
        if request is not None:
            request.write(b"event: flows\ndata: "
                          + json.dumps(event, separators=(",", ":")).encode() + b"\n\n")


def _later(request: Request, answer: Deferred[Any]) -> bytes | int:
    """
    The JSON of *answer*'s result, or of its :class:`ApiError`: at once if
    it has fired, else written once it does (``NOT_DONE_YET``), unless the
    client went meanwhile.  Any other failure is logged and answered 500.
    """

    def body(value: Any) -> bytes:
        return _send_json(request, value)

    def error(failure: Failure) -> bytes:
        if isinstance(failure.value, _HTTPError):
            return _send_json(request, failure.value.body, failure.value.code)
        _log.failure("--web: {uri} failed", failure, uri=request.uri.decode("latin-1")[:200])
        return _send_json(request, {"error": "internal error (logged)"}, 500)

    answer.addCallbacks(body, error)
    if answer.called:
        now: list[bytes] = []
        answer.addCallback(now.append)
        return now[0]
    gone: list[object] = []
    request.notifyFinish().addErrback(gone.append)

    def write(data: bytes) -> None:
        if not gone:
            request.write(data)
            request.finish()

    answer.addCallback(write)
    return NOT_DONE_YET


def _flow_file(flows: list[HTTPFlow]) -> bytes:
    out = io.BytesIO()
    dump_flows(flows, out)
    return out.getvalue()


def _header(request: Request, name: bytes) -> bytes | None:
    values = request.requestHeaders.getRawHeaders(name)
    return values[0] if values else None


def _arg(request: Request, name: str) -> str:
    values = request.args.get(name.encode())
    return values[0].decode("utf-8", "replace") if values else ""


def _int_arg(request: Request, name: str, default: int) -> int:
    text = _arg(request, name)
    try:
        return int(text) if text else default
    except ValueError:
        raise _HTTPError(400, f"{name} must be a whole number") from None


def _json_body(request: Request) -> dict[str, Any]:
    assert request.content is not None
    data = request.content.read(MAX_BODY + 1)
    if len(data) > MAX_BODY:
        raise _HTTPError(413, "the request body is too large")
    try:
        value = json.loads(data or b"{}")
    except ValueError as e:
        raise _HTTPError(400, f"the body is not JSON: {e}") from None
    if not isinstance(value, dict):
        raise _HTTPError(400, "expected a JSON object")
    return value


def _filter_error(e: FilterError) -> _HTTPError:
    return _HTTPError(400, e.reason, column=e.position + 1, expression=e.expression)


def _download(request: Request, data: bytes, name: str, content_type: bytes) -> bytes:
    request.setHeader(b"Content-Type", content_type)
    request.setHeader(b"Content-Disposition", f'attachment; filename="{name}"'.encode())
    request.setHeader(b"Cache-Control", b"no-store")
    return data
