# -*- test-case-name: tests.test_har -*-
"""
The reading half of :mod:`twistproxy.har`: HAR entries made into flows
(:func:`flows_from_entries`, behind :func:`~twistproxy.har.from_har`), and
the text helpers both halves use (how header bytes and bodies become HAR
text and back).  Core code, like the rest: no clock, no I/O.
"""

from __future__ import annotations

import base64
import binascii
import re
import urllib.parse
from collections.abc import Callable, Iterator, Mapping
from datetime import UTC, datetime
from typing import Any

from wsproto.frame_protocol import Opcode

from twistproxy._body import charset_codec, content_type_params
from twistproxy._flowerror import Invalid as _Invalid
from twistproxy._flowerror import describe_value as _describe_value
from twistproxy._flowerror import join_path as _join
from twistproxy._headers import check_messages as _check_messages
from twistproxy.connection import Client, Server
from twistproxy.errors import FlowFileError, InvalidMessage
from twistproxy.flow import Error
from twistproxy.headers import Headers
from twistproxy.http import HTTPFlow, Message, Request, Response
from twistproxy.websocket import WebSocketData, WebSocketMessage

FORM = "application/x-www-form-urlencoded"
"""The media type of an HTML form's body, which HAR lists as ``params``."""

_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+\Z")
_CONTROL = re.compile("[\x00-\x1f\x7f]")


def header_text(value: bytes) -> str:
    """Header bytes as HAR text: UTF-8 if they are, else latin-1."""
    try:
        return value.decode("utf-8")
    except UnicodeDecodeError:
        return value.decode("latin-1")


def media_type(content_type: str | None) -> str:
    """A Content-Type's media type, lower-cased (``""`` for none)."""
    return content_type_params(content_type)[0].lower() if content_type else ""


def content_type_of(message: Message) -> str | None:
    """*message*'s Content-Type as HAR text, or ``None``."""
    value = message.headers.get_raw(b"content-type")
    return header_text(value) if value is not None else None


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


def _objects(items: list[Any], where: str) -> Iterator[tuple[str, Mapping[str, Any]]]:
    """
    Each item of the HAR list *items* (at *where*) with where it stands.

    :raises _Invalid: at the first item that is not an object.
    """
    for index, item in enumerate(items):
        here = f"{where}[{index}]"
        if not isinstance(item, Mapping):
            raise _Invalid(here, f"expected an object, got {_describe_value(item)}")
        yield here, item


def _trailers_from_har(har: Mapping[str, Any], where: str) -> Headers | None:
    """The message's ``_trailers`` (twistproxy's own HAR field), or ``None``."""
    items = _get(har, "_trailers", list, where, default=None)
    return None if items is None else _headers_from_har(items, f"{where}._trailers")


def _headers_from_har(items: list[Any], where: str) -> Headers:
    """
    :returns: The HAR header list as :class:`Headers`, without HTTP/2
        pseudo-headers (``:authority`` and the like).
    :raises _Invalid: if an entry is not a valid header.
    """
    headers = Headers()
    for here, item in _objects(items, where):
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
        return text.encode(charset_codec(content_type))
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
    request.trailers = _trailers_from_har(har, "request")
    post = _get(har, "postData", Mapping, "request", default=None)
    size = _get(har, "bodySize", (int, float), "request", default=-1)
    if post is None:
        if size > 0:  # a body the HAR does not hold
            request.body_size = int(size)
        else:
            request.raw_content = b""
        return request
    where = "request.postData"
    content_type = content_type_of(request) or _get(post, "mimeType", str, where, default="")
    text = _get(post, "text", str, where, default=None)
    params = _get(post, "params", list, where, default=[])
    if post.get("_notRecorded") is True:
        _not_recorded(request, size)
    elif text is not None:
        encoding = post.get("encoding") or post.get("_encoding")
        _set_recorded(request, _text_body(text, encoding, content_type, where), post, size)
    elif params:
        if media_type(content_type) != FORM:
            raise _Invalid(
                where,
                "has params but no text (only URL-encoded params can be "
                "turned back into a body)",
            )
        _set_body(request, _form_body(params, f"{where}.params"))
    else:
        request.raw_content = b""
    return request


def _form_body(params: list[Any], where: str) -> bytes:
    """
    :returns: HAR ``postData.params`` as a URL-encoded body.
    """
    pairs = [
        (_get(param, "name", str, here), _get(param, "value", str, here, default=""))
        for here, param in _objects(params, where)
    ]
    return urllib.parse.urlencode(pairs).encode("ascii")


def _not_recorded(message: Message, size: float) -> None:
    """*message*'s body was not recorded; *size* is its ``bodySize`` (-1: unknown)."""
    message.raw_content = None
    message.body_size = int(size) if size > 0 else None


def _set_recorded(message: Message, body: bytes, fields: Mapping[str, Any], size: float) -> None:
    """
    Give *message* the *body* of a HAR ``text`` in *fields* (its
    ``content`` or ``postData``): the start of the body as it travelled
    when ``_truncated`` (with *size*, the ``bodySize``, as the whole; not
    recorded if that size is unknown), the body as it travelled when
    ``_undecoded``, else the decoded body.
    """
    if fields.get("_truncated") is True:
        if size > len(body):
            message.raw_content = body
            message.body_size = int(size)
        else:  # a start whose whole size is unknown cannot pass for anything
            _not_recorded(message, -1)
    elif fields.get("_undecoded") is True:
        message.raw_content = body
    else:
        _set_body(message, body)


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
    response.trailers = _trailers_from_har(har, "response")
    content = _get(har, "content", Mapping, "response", default={})
    where = "response.content"
    text = _get(content, "text", str, where, default=None)
    size = _get(har, "bodySize", (int, float), "response", default=-1)
    content_size = _get(content, "size", (int, float), where, default=-1)
    if content.get("_notRecorded") is True:
        _not_recorded(response, size)
    elif text is not None:
        content_type = content_type_of(response) or _get(
            content, "mimeType", str, where, default=""
        )
        body = _text_body(text, content.get("encoding"), content_type, where)
        _set_recorded(response, body, content, size)
    elif content_size == 0:
        response.raw_content = b""
    else:  # browsers leave out the text of what they did not keep
        _not_recorded(response, size if size > 0 else content_size)
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
    _keep_mime_type(flow, "request", _get(entry, "request", Mapping, "").get("postData"))
    if _get(response_har, "status", int, "response", default=0) != 0:
        flow.response = _response_from_har(response_har, response_start, response_end)
        _keep_mime_type(flow, "response", response_har.get("content"))
        if message:
            flow.error = Error(message, response_end)
    else:
        flow.error = Error(message or "no response", response_start)
    frames = _get(entry, "_webSocketMessages", list, "", default=None)
    if frames is not None:
        flow.websocket = _websocket_from_har(frames, response_end)
    return flow


def _keep_mime_type(flow: HTTPFlow, side: str, fields: object) -> None:
    """
    Keep the ``mimeType`` of *fields* (a ``postData`` or ``content``) in
    ``flow.metadata["har"]`` when the *side* (``"request"`` or
    ``"response"``) has no Content-Type header to give it back on export.
    """
    message = flow.request if side == "request" else flow.response
    if not isinstance(fields, Mapping) or message is None or content_type_of(message):
        return
    mime_type = fields.get("mimeType")
    if isinstance(mime_type, str) and mime_type:
        flow.metadata.setdefault("har", {})[f"{side}_mime_type"] = mime_type


def _websocket_from_har(frames: list[Any], end: float) -> WebSocketData:
    """
    The messages of ``_webSocketMessages``: text and binary ones (binary
    data is base64); control frames some tools list too are left out.
    """
    data = WebSocketData()
    for where, frame in _objects(frames, "_webSocketMessages"):
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


def flows_from_entries(
    entries: list[Any],
    now: Callable[[], float],
    on_error: Callable[[FlowFileError], object] | None = None,
) -> Iterator[HTTPFlow]:
    """
    The flows of HAR *entries*, lazily (see :func:`twistproxy.har.from_har`).

    :param on_error: Called with the error of each entry that cannot be
        read, which is then skipped; without it the first such entry ends
        the iteration with its error.
    """
    for index, entry in enumerate(entries):
        try:
            try:
                flow = _flow_from_entry(entry, now)
                _check_messages(flow)
            except _Invalid as e:
                where = _join(f"log.entries[{index}]", e.where)
                raise FlowFileError(f"{where}: {e.reason}") from e
            except (ValueError, InvalidMessage) as e:
                raise FlowFileError(f"log.entries[{index}]: {e}") from e
        except FlowFileError as e:
            if on_error is None:
                raise
            on_error(e)
            continue
        yield flow
