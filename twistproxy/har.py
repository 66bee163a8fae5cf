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
import re
import time
import urllib.parse
from collections.abc import Callable, Iterable, Iterator, Mapping
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Any

from wsproto.frame_protocol import Opcode

from twistproxy._body import charset_codec
from twistproxy._har_read import (
    FORM,
    content_type_of,
    flows_from_entries,
    header_text,
    media_type,
)
from twistproxy.errors import FlowFileError
from twistproxy.headers import Headers
from twistproxy.http import HTTPFlow, Message, Request, Response
from twistproxy.websocket import WebSocketMessage

# -- HAR export ----------------------------------------------------------------

_SURROGATE = re.compile("[\ud800-\udfff]")
_ESCAPED_BYTE = re.compile("[\udc80-\udcff]")


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


def _body_text(body: bytes, content_type: str | None) -> tuple[str, bool]:
    """
    :returns: The body as HAR text: decoded in the Content-Type's charset
        (UTF-8 by default) if that gives the same bytes back, else base64;
        and whether it is base64.
    """
    codec = charset_codec(content_type)
    try:
        text = body.decode(codec)
        if text.encode(codec) == body and not _SURROGATE.search(text):
            return text, False
    except (UnicodeError, LookupError):  # LookupError: not a text codec
        pass
    return base64.b64encode(body).decode("ascii"), True


def _har_headers(headers: Headers) -> list[dict[str, str]]:
    return [{"name": header_text(n), "value": header_text(v)} for n, v in headers.fields]


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
        for part in header_text(raw).split(";"):
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
        first, *attributes = header_text(raw).split(";")
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


def _body_fields(message: Message, mime_type: str) -> dict[str, Any]:
    """
    The HAR fields of *message*'s body, beside its ``mimeType``: ``text``
    (decoded, and base64 when text would not give the bytes back:
    ``base64`` says so) and ``size``; ``_notRecorded`` (no ``text``) for a
    body that was not recorded, ``_truncated`` for one recorded only in
    part (``text`` holds the recorded start, as it travelled), so that
    neither reads back as a whole body.
    """
    fields: dict[str, Any] = {"size": message.body_size or 0, "mimeType": mime_type}
    raw = message.raw_content
    if raw is None:
        fields["_notRecorded"] = True
        return fields
    body = raw if message.truncated else message.get_content(strict=False)
    assert body is not None
    if message.truncated:
        fields["_truncated"] = True
    fields["size"] = len(body)
    if len(body) > len(raw):
        fields["compression"] = len(body) - len(raw)
    fields["text"], fields["base64"] = _body_text(body, content_type_of(message))
    if body is raw and message.headers.get_raw(b"content-encoding"):
        fields["_undecoded"] = True  # text holds the still-encoded body
    return fields


def _mime_type(flow: HTTPFlow, message: Message, side: str) -> str:
    """
    *message*'s Content-Type; without one, the ``mimeType`` its HAR entry
    had when imported (:func:`from_har` keeps it in ``flow.metadata``).
    """
    content_type = content_type_of(message)
    if content_type is not None:
        return content_type
    kept = flow.metadata.get("har")
    value = kept.get(f"{side}_mime_type") if isinstance(kept, dict) else None
    return value if isinstance(value, str) else ""


def _har_request(flow: HTTPFlow, request: Request) -> dict[str, Any]:
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
    mime_type = _mime_type(flow, request, "request")
    if request.raw_content != b"":
        body = _body_fields(request, mime_type)
        post: dict[str, Any] = {"mimeType": mime_type}
        for key in ("_notRecorded", "_truncated", "_undecoded"):
            if key in body:
                post[key] = True
        if "text" in body:
            if body["base64"]:
                post["_encoding"] = "base64"  # HAR 1.2 has no postData.encoding
            elif media_type(mime_type) == FORM and "_truncated" not in body:
                pairs = urllib.parse.parse_qsl(body["text"], keep_blank_values=True,
                                               errors="replace")
                post["params"] = [{"name": n, "value": v} for n, v in pairs]
            post["text"] = body["text"]
        har["postData"] = post
    elif mime_type and content_type_of(request) is None:
        har["postData"] = {"mimeType": mime_type, "text": ""}
    har["headersSize"] = -1
    har["bodySize"] = request.body_size if request.body_size is not None else -1
    if request.trailers is not None:
        har["_trailers"] = _har_headers(request.trailers)  # HAR 1.2 has no trailers
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
        content = _body_fields(response, _mime_type(flow, response, "response"))
        if content.pop("base64", False):
            content["encoding"] = "base64"
        location = response.headers.get_raw(b"location")
        har = {
            "status": response.status_code,
            "statusText": _clean(response.reason),
            "httpVersion": _clean(response.http_version),
            "cookies": _response_cookies(response),
            "headers": _har_headers(response.headers),
            "content": content,
            "redirectURL": header_text(location) if location is not None else "",
            "headersSize": -1,
            "bodySize": response.body_size if response.body_size is not None else -1,
        }
        if response.trailers is not None:
            har["_trailers"] = _har_headers(response.trailers)
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
        "request": _har_request(flow, request),
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


def from_har(
    har: Mapping[str, Any],
    *,
    now: Callable[[], float] = time.time,
    on_error: Callable[[FlowFileError], object] | None = None,
) -> Iterator[HTTPFlow]:
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
    :param on_error: Called with the error of each entry that cannot be
        read, which is then skipped; without it (the default) the first
        such entry ends the iteration with its error.
    :returns: An iterator of the flows (not live).
    :raises FlowFileError: at once if the document has no ``log.entries``
        list or is not HAR 1.x; during the iteration (unless *on_error* is
        given) if an entry is
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
    return flows_from_entries(entries, now, on_error)
