# -*- test-case-name: tests.test_har -*-
"""
HAR 1.2 (the HTTP Archive that browsers' developer tools export) export and
import: :func:`to_har` and :func:`from_har`.

HAR is lossy: header bytes become text (UTF-8 when they are, else latin-1),
bodies are held decoded, connections are summarised and CONNECT tunnels are
left out.  So it is for exchanging traffic with other tools (browsers, HAR
viewers); the flow file format of :mod:`twistproxy.flowfile` is the one that
keeps everything.  ``python -m twistproxy.flowfile export-har IN OUT`` and
``import-har IN OUT`` convert between the two, and
:func:`~twistproxy.flowfile.load_flows` reads ``.har`` files too.

Errors are :exc:`~twistproxy.errors.FlowFileError`, the one error of
files of flows, naming the place in the document
(``log.entries[2].request: missing 'url'``).

This is core code: it reads no clock (imported flows take a ``now``
callable; exported timestamps are the flows' own) and does no I/O: it turns
parsed JSON into flows and flows into JSON-ready data.
"""

from __future__ import annotations

import base64
import binascii
import codecs
import re
import time
import urllib.parse
from collections.abc import Callable, Iterable, Iterator, Mapping
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Any

from wsproto.frame_protocol import Opcode

from twistproxy._body import content_type_params as _content_type_params
from twistproxy._flowerror import Invalid as _Invalid
from twistproxy._flowerror import describe_value as _describe_value
from twistproxy._flowerror import join_path as _join
from twistproxy._headers import check_messages as _check_messages
from twistproxy.errors import FlowFileError, InvalidMessage
from twistproxy.flow import Client, Error, Server
from twistproxy.headers import Headers
from twistproxy.http import HTTPFlow, Message, Request, Response
from twistproxy.websocket import WebSocketData, WebSocketMessage

# -- HAR export ----------------------------------------------------------------

_SURROGATE = re.compile("[\ud800-\udfff]")
_ESCAPED_BYTE = re.compile("[\udc80-\udcff]")
_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+\Z")
_CONTROL = re.compile("[\x00-\x1f\x7f]")
_FORM = "application/x-www-form-urlencoded"


def _clean(text: str) -> str:
    """
    :returns: *text* with lone surrogates (undecodable bytes kept by
        ``surrogateescape``) replaced by U+FFFD, so that it is valid Unicode.
    """
    return _SURROGATE.sub("\ufffd", text)


def _url_text(url: str) -> str:
    """
    :returns: *url* with its undecodable bytes percent-encoded.
    """
    url = _ESCAPED_BYTE.sub(lambda m: f"%{ord(m.group()) - 0xDC00:02X}", url)
    return _clean(url)


def _header_text(value: bytes) -> str:
    """
    :returns: Header bytes as text: UTF-8 if they are, else latin-1.
    """
    try:
        return value.decode("utf-8")
    except UnicodeDecodeError:
        return value.decode("latin-1")


def _iso(timestamp: float) -> str | None:
    """
    :returns: *timestamp* as ISO 8601 in UTC (``2024-05-01T10:00:00.123Z``),
        or ``None`` if it is out of range.
    """
    try:
        moment = datetime.fromtimestamp(timestamp, UTC)
    except (OverflowError, OSError, ValueError):
        return None
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _charset(content_type: str | None) -> str:
    """
    :returns: The codec of a Content-Type's charset, or UTF-8 if there is
        none or Python does not know it.
    """
    if content_type:
        charset = _content_type_params(content_type)[1].get("charset")
        if charset:
            try:
                return codecs.lookup(charset).name
            except LookupError:
                pass
    return "utf-8"


def _media_type(content_type: str | None) -> str:
    return _content_type_params(content_type)[0].lower() if content_type else ""


def _body_text(body: bytes, content_type: str | None) -> tuple[str, bool]:
    """
    :returns: The body as HAR text: decoded in the Content-Type's charset
        (UTF-8 by default) if that gives the same bytes back, else base64;
        and whether it is base64.
    """
    codec = _charset(content_type)
    try:
        text = body.decode(codec)
        if text.encode(codec) == body and not _SURROGATE.search(text):
            return text, False
    except (UnicodeError, LookupError):  # LookupError: not a text codec
        pass
    return base64.b64encode(body).decode("ascii"), True


def _content_type(message: Message) -> str | None:
    value = message.headers.get_raw(b"content-type")
    return _header_text(value) if value is not None else None


def _har_headers(headers: Headers) -> list[dict[str, str]]:
    return [{"name": _header_text(n), "value": _header_text(v)} for n, v in headers.fields]


def _ms(start: float | None, end: float | None) -> float:
    """
    :returns: Milliseconds from *start* to *end* (at least 0), or -1 if
        either is unknown.
    """
    if start is None or end is None:
        return -1
    return round(max(0.0, (end - start) * 1000), 3)


def _request_cookies(headers: Headers) -> list[dict[str, Any]]:
    cookies = []
    for raw in headers.get_all_raw(b"cookie"):
        for part in _header_text(raw).split(";"):
            name, sep, value = part.strip().partition("=")
            if name or value:
                cookies.append(
                    {"name": name.strip(), "value": value.strip()}
                    if sep
                    else {"name": "", "value": name.strip()}
                )
    return cookies


def _cookie_date(value: str) -> float | None:
    """
    :returns: A Set-Cookie ``Expires`` date as a timestamp, or ``None`` if
        it does not parse.
    """
    try:
        moment = parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.timestamp()


def _response_cookies(response: Response) -> list[dict[str, Any]]:
    cookies = []
    for raw in response.headers.get_all_raw(b"set-cookie"):
        first, *attributes = _header_text(raw).split(";")
        name, sep, value = first.partition("=")
        cookie: dict[str, Any] = (
            {"name": name.strip(), "value": value.strip()}
            if sep
            else {"name": "", "value": name.strip()}
        )
        expires: float | None = None
        max_age: int | None = None
        flags = {"httponly": False, "secure": False}
        for attribute in attributes:
            key, _, arg = attribute.partition("=")
            key, arg = key.strip().lower(), arg.strip()
            if key in ("path", "domain"):
                cookie[key] = arg
            elif key == "expires":
                expires = _cookie_date(arg)
            elif key == "max-age" and re.fullmatch(r"-?[0-9]+", arg):
                max_age = int(arg)
            elif key in flags:
                flags[key] = True
        if max_age is not None and response.timestamp_start is not None:
            expires = response.timestamp_start + max_age  # Max-Age wins (RFC 6265 5.3)
        when = _iso(expires) if expires is not None else None
        if when is not None:
            cookie["expires"] = when
        cookie["httpOnly"] = flags["httponly"]
        cookie["secure"] = flags["secure"]
        cookies.append(cookie)
    return cookies


def _har_request(request: Request) -> dict[str, Any]:
    query = urllib.parse.parse_qsl(
        _clean(request.path.partition("?")[2]), keep_blank_values=True, errors="replace"
    )
    har: dict[str, Any] = {
        "method": _clean(request.method),
        "url": _url_text(request.url),
        "httpVersion": _clean(request.http_version),
        "cookies": _request_cookies(request.headers),
        "headers": _har_headers(request.headers),
        "queryString": [{"name": n, "value": v} for n, v in query],
    }
    body = request.get_content(strict=False)
    if body:
        content_type = _content_type(request)
        text, is_base64 = _body_text(body, content_type)
        post: dict[str, Any] = {"mimeType": content_type or ""}
        if is_base64:
            post["_encoding"] = "base64"  # HAR 1.2 has no postData.encoding
        elif _media_type(content_type) == _FORM:
            pairs = urllib.parse.parse_qsl(text, keep_blank_values=True, errors="replace")
            post["params"] = [{"name": n, "value": v} for n, v in pairs]
        post["text"] = text
        har["postData"] = post
    har["headersSize"] = -1
    har["bodySize"] = request.body_size if request.body_size is not None else -1
    return har


def _har_response(flow: HTTPFlow) -> dict[str, Any]:
    response = flow.response
    if response is None:
        har: dict[str, Any] = {
            "status": 0,
            "statusText": "",
            "httpVersion": "",
            "cookies": [],
            "headers": [],
            "content": {"size": 0, "mimeType": ""},
            "redirectURL": "",
            "headersSize": -1,
            "bodySize": -1,
        }
    else:
        content_type = _content_type(response)
        content: dict[str, Any] = {"size": response.body_size or 0, "mimeType": content_type or ""}
        raw = response.raw_content
        if raw is not None:
            body = response.get_content(strict=False)
            assert body is not None
            content["size"] = len(body)
            if len(body) > len(raw):
                content["compression"] = len(body) - len(raw)
            text, is_base64 = _body_text(body, content_type)
            content["text"] = text
            if is_base64:
                content["encoding"] = "base64"
            if body is raw and response.headers.get_raw(b"content-encoding"):
                content["_undecoded"] = True  # text holds the still-encoded body
        location = response.headers.get_raw(b"location")
        har = {
            "status": response.status_code,
            "statusText": _clean(response.reason),
            "httpVersion": _clean(response.http_version),
            "cookies": _response_cookies(response),
            "headers": _har_headers(response.headers),
            "content": content,
            "redirectURL": _header_text(location) if location is not None else "",
            "headersSize": -1,
            "bodySize": response.body_size if response.body_size is not None else -1,
        }
    if flow.error is not None:
        har["_error"] = _clean(flow.error.msg)
    return har


def _har_entry(flow: HTTPFlow, request: Request) -> dict[str, Any]:
    response, error = flow.response, flow.error
    send = _ms(request.timestamp_start, request.timestamp_end)
    if response is not None:
        wait = _ms(request.timestamp_end, response.timestamp_start)
        receive = _ms(response.timestamp_start, response.timestamp_end)
    else:
        wait = _ms(request.timestamp_end, error.timestamp if error is not None else None)
        receive = -1
    started = request.timestamp_start
    entry: dict[str, Any] = {
        "startedDateTime": _iso(started if started is not None else flow.timestamp_created)
        or "1970-01-01T00:00:00.000Z",
        "time": round(sum(t for t in (send, wait, receive) if t >= 0), 3),
        "request": _har_request(request),
        "response": _har_response(flow),
        "cache": {},
        "timings": {
            "blocked": -1,
            "dns": -1,
            "connect": -1,
            "send": send,
            "wait": wait,
            "receive": receive,
            "ssl": -1,
        },
    }
    server = flow.server_conn
    if server.peername is not None:
        entry["serverIPAddress"] = _clean(server.peername[0])
    if server.timestamp_start is not None:
        entry["connection"] = _clean(server.id)
    if flow.comment:
        entry["comment"] = _clean(flow.comment)
    if flow.websocket is not None:
        entry["_resourceType"] = "websocket"
        entry["_webSocketMessages"] = [_har_message(m) for m in flow.websocket.messages]
    return entry


def _har_message(message: WebSocketMessage) -> dict[str, Any]:
    """A WebSocket message as Chromium exports it (``_dropped``/``_injected`` are ours)."""
    text = message.type is Opcode.TEXT
    har: dict[str, Any] = {
        "type": "send" if message.from_client else "receive",
        "time": message.timestamp,
        "opcode": int(message.type),
        "data": message.content.decode("utf-8", "replace") if text
        else base64.b64encode(message.content).decode("ascii"),
    }
    if message.dropped:
        har["_dropped"] = True
    if message.injected:
        har["_injected"] = True
    return har


def to_har(flows: Iterable[HTTPFlow], *, creator_version: str) -> dict[str, Any]:
    """
    Export flows as a HAR 1.2 document (``{"log": {...}}``, ready for
    :func:`json.dump`), one entry per flow, in the order given.

    Flows without a request, and CONNECT flows (tunnels, which HAR has no
    way to show; the requests inside an intercepted tunnel are flows of
    their own), are left out.  Every string is valid Unicode: header bytes
    are UTF-8 text if they are UTF-8, else latin-1; bodies are decoded
    (Content-Encoding undone) text in their charset, or base64 when that
    would not give the same bytes back (``content.encoding`` is
    ``"base64"``; for request bodies, which HAR 1.2 gives no encoding,
    ``postData._encoding``).  A flow without a response gets status 0; a
    failed flow's error is in ``response._error``, as browsers write it.
    ``pages`` is empty (a proxy does not know pages) and timings the proxy
    does not measure (blocked, DNS, connect, TLS) are -1.  A WebSocket
    flow's messages are in ``_webSocketMessages`` as Chromium writes them
    (``type`` ``"send"`` or ``"receive"``, ``time`` in seconds since the
    epoch, ``opcode`` 1 or 2, ``data`` the text, or a binary message in
    base64), with ``_resourceType`` ``"websocket"``; :func:`from_har`
    reads them back.

    :param flows: The flows.
    :param creator_version: The version in ``log.creator`` (twistproxy's).
    :returns: The HAR document.
    """
    entries = []
    for flow in flows:
        request = flow.request
        if request is not None and request.method.upper() != "CONNECT":
            entries.append(_har_entry(flow, request))
    return {
        "log": {
            "version": "1.2",
            "creator": {"name": "twistproxy", "version": creator_version},
            "pages": [],
            "entries": entries,
        }
    }


# -- HAR import ----------------------------------------------------------------

_REQUIRED = object()


def _get(
    obj: Mapping[str, Any],
    key: str,
    types: type | tuple[type, ...],
    where: str,
    default: Any = _REQUIRED,
) -> Any:
    """
    :returns: ``obj[key]`` checked to be of *types*; *default* when it is
        absent or ``null`` and a default is given.
    :raises _Invalid: if it is required and absent, or of another type.
    """
    value = obj.get(key)
    if value is None:
        if default is _REQUIRED:
            raise _Invalid(where, f"missing {key!r}")
        return default
    kinds = types if isinstance(types, tuple) else (types,)
    if not isinstance(value, kinds) or (isinstance(value, bool) and bool not in kinds):
        raise _Invalid(_join(where, key), f"unexpected {_describe_value(value)}")
    return value


def _http_version(version: str) -> str:
    lower = version.strip().lower()
    if lower in ("h2", "http/2", "http/2.0"):
        return "HTTP/2.0"
    if lower in ("h3", "http/3", "http/3.0"):
        return "HTTP/3"
    if lower.startswith("http/"):
        return "HTTP/" + version.strip()[5:]
    return "HTTP/1.1"  # browsers leave it empty for some entries


def _parse_time(value: str, where: str) -> float:
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        raise _Invalid(where, f"not an ISO 8601 date and time: {value!r}") from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.timestamp()


def _headers_from_har(items: list[Any], where: str) -> Headers:
    """
    :returns: The HAR header list as :class:`Headers`, without HTTP/2
        pseudo-headers (``:authority`` and the like).
    :raises _Invalid: if an entry is not a valid header.
    """
    headers = Headers()
    for i, item in enumerate(items):
        here = f"{where}[{i}]"
        if not isinstance(item, Mapping):
            raise _Invalid(here, f"expected an object, got {_describe_value(item)}")
        name = _get(item, "name", str, here)
        value = _get(item, "value", str, here, default="")
        if name.startswith(":"):
            continue
        try:
            headers.add(name, value)
        except ValueError as e:
            raise _Invalid(here, str(e)) from None
    return headers


def _text_body(text: str, encoding: object, content_type: str | None, where: str) -> bytes:
    """
    :returns: The bytes of a HAR ``text``: base64-decoded, or encoded in the
        Content-Type's charset (UTF-8 if it cannot hold the text).
    """
    if encoding == "base64":
        try:
            return base64.b64decode("".join(text.split()), validate=True)
        except (binascii.Error, ValueError):
            raise _Invalid(_join(where, "text"), "is not valid base64") from None
    if encoding not in (None, ""):
        raise _Invalid(_join(where, "encoding"), f"unsupported encoding {encoding!r}")
    try:
        return text.encode(_charset(content_type))
    except (UnicodeError, LookupError):
        pass
    try:
        return text.encode("utf-8", "surrogateescape")
    except UnicodeError:
        raise _Invalid(_join(where, "text"), "cannot be encoded") from None


def _timestamps(entry: Mapping[str, Any]) -> tuple[float, float, float, float, float]:
    """
    :returns: When the entry started, its request started and ended, and
        its response started and ended, from ``startedDateTime``, ``time``
        and ``timings`` (-1 and missing timings count as 0).
    """
    started = _parse_time(_get(entry, "startedDateTime", str, ""), "startedDateTime")
    timings = _get(entry, "timings", Mapping, "", default={})
    phases = {}
    for key in ("blocked", "dns", "connect", "send", "wait", "receive"):
        value = _get(timings, key, (int, float), "timings", default=0)
        phases[key] = max(0.0, value / 1000)
    if not any(key in timings for key in ("send", "wait", "receive")):
        phases["receive"] = max(0.0, _get(entry, "time", (int, float), "", default=0) / 1000)
    request_start = started + phases["blocked"] + phases["dns"] + phases["connect"]
    request_end = request_start + phases["send"]
    response_start = request_end + phases["wait"]
    response_end = response_start + phases["receive"]
    return started, request_start, request_end, response_start, response_end


def _request_from_har(har: Mapping[str, Any], start: float, end: float) -> Request:
    method = _get(har, "method", str, "request")
    if not _TOKEN.match(method):
        raise _Invalid("request.method", f"not a valid method: {method!r}")
    url = _get(har, "url", str, "request")
    if _CONTROL.search(url):  # URL parsing would drop a CR, LF or tab unseen
        raise _Invalid("request.url", f"{url!r} holds a CR, LF or control")
    version = _http_version(_get(har, "httpVersion", str, "request", default=""))
    headers = _headers_from_har(
        _get(har, "headers", list, "request", default=[]), "request.headers"
    )
    request = Request(
        "",
        0,
        method,
        "",
        "",
        "",
        version,
        Headers(),
        None,
        timestamp_start=start,
        timestamp_end=end,
    )
    try:
        request.url = url
    except ValueError as e:
        raise _Invalid("request.url", str(e)) from None
    if b"host" not in headers:  # HTTP/2 has :authority instead; HTTP/1.1 needs Host
        headers.insert(0, "Host", urllib.parse.urlsplit(url).netloc.rpartition("@")[2])
    request.headers = headers
    post = _get(har, "postData", Mapping, "request", default=None)
    body = b""
    if post is not None:
        where = "request.postData"
        content_type = _content_type(request) or _get(post, "mimeType", str, where, default="")
        text = _get(post, "text", str, where, default=None)
        params = _get(post, "params", list, where, default=[])
        if text is not None:
            encoding = post.get("encoding") or post.get("_encoding")
            body = _text_body(text, encoding, content_type, where)
        elif params:
            if _media_type(content_type) != _FORM:
                raise _Invalid(
                    where,
                    "has params but no text (only URL-encoded params can be "
                    "turned back into a body)",
                )
            body = _form_body(params, f"{where}.params")
    _set_body(request, body)
    return request


def _form_body(params: list[Any], where: str) -> bytes:
    """
    :returns: HAR ``postData.params`` as a URL-encoded body.
    """
    pairs = []
    for i, param in enumerate(params):
        if not isinstance(param, Mapping):
            raise _Invalid(f"{where}[{i}]", f"expected an object, got {_describe_value(param)}")
        pairs.append(
            (
                _get(param, "name", str, f"{where}[{i}]"),
                _get(param, "value", str, f"{where}[{i}]", default=""),
            )
        )
    return urllib.parse.urlencode(pairs).encode("ascii")


def _set_body(message: Message, body: bytes) -> None:
    """
    Give *message* the decoded *body* from a HAR, encoded again with its
    Content-Encoding (updating a Content-Length).  An empty body stays
    empty: a 304 or a HEAD response announces a coding it does not apply.
    """
    if body:
        message.set_content(body)
    else:
        message.raw_content = b""


def _response_from_har(har: Mapping[str, Any], start: float, end: float) -> Response:
    status = _get(har, "status", int, "response")
    if not 100 <= status <= 999:
        raise _Invalid("response.status", f"not an HTTP status: {status}")
    version = _http_version(_get(har, "httpVersion", str, "response", default=""))
    reason = _get(har, "statusText", str, "response", default="")
    headers = _headers_from_har(
        _get(har, "headers", list, "response", default=[]), "response.headers"
    )
    response = Response(
        version, status, reason, headers, None, timestamp_start=start, timestamp_end=end
    )
    content = _get(har, "content", Mapping, "response", default={})
    where = "response.content"
    text = _get(content, "text", str, where, default=None)
    if text is not None:
        content_type = _content_type(response) or _get(content, "mimeType", str, where, default="")
        body = _text_body(text, content.get("encoding"), content_type, where)
        if content.get("_undecoded") is True:
            response.raw_content = body
        else:
            _set_body(response, body)
    elif _get(content, "size", (int, float), where, default=-1) == 0:
        response.raw_content = b""
    return response


def _flow_from_entry(entry: object, now: Callable[[], float]) -> HTTPFlow:
    if not isinstance(entry, Mapping):
        raise _Invalid("", f"expected an object, got {_describe_value(entry)}")
    started, request_start, request_end, response_start, response_end = _timestamps(entry)
    request = _request_from_har(_get(entry, "request", Mapping, ""), request_start, request_end)
    response_har = _get(entry, "response", Mapping, "", default={})
    flow = HTTPFlow(Client(), Server(address=(request.host, request.port)), now=now)
    flow.timestamp_created = started
    flow.request = request
    address = _get(entry, "serverIPAddress", str, "", default="")
    if address:
        flow.server_conn.peername = (address.strip("[]"), request.port)
    flow.comment = _get(entry, "comment", str, "", default="")
    message = _get(response_har, "_error", str, "response", default=None)
    if message is None:
        message = _get(entry, "_error", str, "", default=None)
    if _get(response_har, "status", int, "response", default=0) != 0:
        flow.response = _response_from_har(response_har, response_start, response_end)
        if message:
            flow.error = Error(message, response_end)
    else:
        flow.error = Error(message or "no response", response_start)
    frames = _get(entry, "_webSocketMessages", list, "", default=None)
    if frames is not None:
        flow.websocket = _websocket_from_har(frames, response_end)
    return flow


def _websocket_from_har(frames: list[Any], end: float) -> WebSocketData:
    """
    The messages of ``_webSocketMessages``: text and binary ones (binary
    data is base64); control frames some tools list too are left out.
    """
    data = WebSocketData()
    for index, frame in enumerate(frames):
        where = f"_webSocketMessages[{index}]"
        if not isinstance(frame, Mapping):
            raise _Invalid(where, f"expected an object, got {_describe_value(frame)}")
        opcode = _get(frame, "opcode", int, where)
        if opcode not in (Opcode.TEXT, Opcode.BINARY):
            continue
        kind = _get(frame, "type", str, where)
        if kind not in ("send", "receive"):
            raise _Invalid(_join(where, "type"), f"expected 'send' or 'receive', not {kind!r}")
        text = _get(frame, "data", str, where, default="")
        if opcode == Opcode.TEXT:
            content = text.encode("utf-8", "surrogatepass")
        else:
            try:
                content = base64.b64decode(text, validate=True)
            except (binascii.Error, ValueError):
                raise _Invalid(_join(where, "data"), "is not valid base64") from None
        data.messages.append(WebSocketMessage(
            opcode, kind == "send", content, float(_get(frame, "time", (int, float), where)),
            dropped=_get(frame, "_dropped", bool, where, default=False),
            injected=_get(frame, "_injected", bool, where, default=False),
        ))
    data.timestamp_end = data.messages[-1].timestamp if data.messages else end
    return data


def _flows_from_entries(entries: list[Any], now: Callable[[], float]) -> Iterator[HTTPFlow]:
    for index, entry in enumerate(entries):
        try:
            flow = _flow_from_entry(entry, now)
            _check_messages(flow)
        except _Invalid as e:
            where = _join(f"log.entries[{index}]", e.where)
            raise FlowFileError(f"{where}: {e.reason}") from e
        except (ValueError, InvalidMessage) as e:
            raise FlowFileError(f"log.entries[{index}]: {e}") from e
        yield flow


def from_har(har: Mapping[str, Any], *, now: Callable[[], float] = time.time) -> Iterator[HTTPFlow]:
    """
    Turn a HAR document (``{"log": {...}}``, as browsers export it) into
    flows, one per entry, complete enough to replay: method, URL (scheme,
    host, port, path), headers and body.

    HTTP/2 pseudo-headers (``:authority`` and the like, which are not
    HTTP/1 fields) are dropped and a Host header is added when the entry
    has none.  A URL holding a CR, LF or other control character is
    refused rather than cleaned.  Bodies come from ``text`` (base64 when ``encoding``
    says so, else encoded in the Content-Type's charset) and are encoded
    again with the entry's Content-Encoding, since HAR holds them decoded; a
    response without ``text`` has no captured body (``raw_content`` is
    ``None``) unless its size is 0.  Timestamps come from
    ``startedDateTime`` and the timings.  An entry with status 0 or an
    ``_error`` gets an :class:`~twistproxy.flow.Error`.  Cookies and query
    string lists are not read (the headers and the URL hold them); custom
    ``_`` fields other than ``_error`` are ignored.

    :param har: The parsed HAR document.
    :param now: The clock the flows get (see :class:`~twistproxy.flow.Flow`).
    :returns: An iterator of the flows (not live).
    :raises FlowFileError: at once if the document has no ``log.entries``
        list or is not HAR 1.x; during the iteration if an entry is
        malformed, naming it and the field (``log.entries[2].request: missing
        'url'``), or if its request or response could not be written as it
        stands, as replay would write it (``log.entries[2]: invalid response
        reason: ...``, the field named as
        :exc:`~twistproxy.errors.InvalidMessage` names it); the message is
        one line.
    """
    if not isinstance(har, Mapping) or not isinstance(har.get("log"), Mapping):
        raise FlowFileError("not a HAR document: no log object")
    log = har["log"]
    version = log.get("version", "1.2")
    if not isinstance(version, str) or version.partition(".")[0] != "1":
        raise FlowFileError(f"log.version: HAR version {version!r} is not supported (only 1.x)")
    entries = log.get("entries")
    if not isinstance(entries, list):
        raise FlowFileError("log.entries: missing or not a list")
    return _flows_from_entries(entries, now)
