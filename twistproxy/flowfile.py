# -*- test-case-name: tests.test_flowfile -*-
"""
Flow files: flows saved as JSON lines, and HAR 1.2 export and import.

**The native format** holds one flow per line, a JSON object::

    {"version":1,"type":"http","id":"...","request":{"headers":[["Host","example.com"]],
     "content":"aGVsbG8=",...},"response":{...},...}

It is :meth:`HTTPFlow.get_state <twistproxy.http.HTTPFlow.get_state>` made
JSON-safe by a schema that knows every field: header names and values and
the TLS ALPN protocol (short protocol bytes) are latin-1 strings, which map
each byte to one character and so keep any byte; bodies (``content``) are
base64 strings, or ``null`` when the body was not captured; tuples are lists;
every other field is written as it is.  Lines are ASCII (other characters
are ``\\u`` escapes), end with ``\\n`` and contain no other newline, so log
pipelines can ship them line by line and old files stay readable: every line
carries :data:`FORMAT_VERSION`, and older lines are upgraded on reading.

:class:`FlowWriter` appends flows (flushing each), :func:`read_flows` streams
them back; :func:`dump_flows` and :func:`load_flows` are shortcuts.

**HAR 1.2** (the HTTP Archive that browsers export): :func:`to_har` and
:func:`from_har`.  HAR is lossy (header bytes become text, connections are
summarised), so it is for exchanging traffic with other tools; the native
format is the one that keeps everything.

**The command** ``python -m twistproxy.flowfile export-har IN OUT`` and
``import-har IN OUT`` converts between the two (see :func:`main`).

This is core code: it reads no clock (flows take a ``now`` callable), opens
no sockets, and does I/O only through the file objects (or, for
:func:`load_flows` and :func:`main`, the paths) it is given.
"""

from __future__ import annotations

import argparse
import base64
import binascii
import codecs
import json
import os
import re
import sys
import time
import urllib.parse
from collections.abc import Callable, Iterable, Iterator, Mapping
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import IO, Any

from twistproxy import __version__
from twistproxy.flow import FLOW_STATE_VERSION, Client, Error, Server
from twistproxy.http import Headers, HTTPFlow, Message, Request, Response, _content_type_params

FORMAT_VERSION: int = 1
"""
The version of a flow file line, written as its ``"version"`` key.

It is bumped on every change to what a line holds: the shape of the flow
state (:data:`~twistproxy.flow.FLOW_STATE_VERSION`) or how the state is
written as JSON.  It is not the flow state version itself: a line holds the
state without the state's own ``"version"`` key, and a line of the current
format holds a state of the current ``FLOW_STATE_VERSION``.  So a bump of
``FLOW_STATE_VERSION`` comes with a bump of this number and an entry in
:data:`_UPGRADES` (a test pins the pair to make sure).  Both are 1 today.
"""

_UPGRADES: dict[int, Callable[[dict[str, Any]], dict[str, Any]]] = {}
"""
The upgrade chain: ``_UPGRADES[n]`` turns a line record of format version
``n`` (without its ``"version"`` key) into one of version ``n + 1``.
Reading applies them in turn until a record reaches :data:`FORMAT_VERSION`.
Empty while there has only been version 1.
"""


class FlowFileError(ValueError):
    """
    A flow file or HAR is malformed or from a newer twistproxy, or a flow
    cannot be written.  The message says where: ``line 3: ...`` for a flow
    file, ``log.entries[2].request: ...`` for a HAR.
    """


# -- The JSON schema of a flow state -----------------------------------------


class _Invalid(ValueError):
    """
    A value does not fit the schema.

    :ivar where: The value's path, for example ``request.headers[2][0]``
        (empty for the whole record).
    :ivar reason: What is wrong with it.
    """

    def __init__(self, where: str, reason: str) -> None:
        super().__init__(f"{where}: {reason}" if where else reason)
        self.where = where
        self.reason = reason


def _join(where: str, key: str) -> str:
    return f"{where}.{key}" if where and key else where or key


_JSON_NAMES = {
    dict: "an object",
    list: "a list",
    str: "a string",
    bool: "a boolean",
    int: "a number",
    float: "a number",
    type(None): "null",
}


def _describe(value: object) -> str:
    return _JSON_NAMES.get(type(value), type(value).__name__)


class _Kind:
    """
    How one field of the flow state is written as JSON and read back.
    """

    def encode(self, value: Any) -> Any:
        """
        :returns: *value* as JSON data.
        :raises ValueError: if *value* is not of this kind.
        """
        return value

    def decode(self, value: Any, where: str) -> Any:
        """
        :returns: The state value for the JSON *value*.
        :raises _Invalid: naming *where* if *value* does not fit.
        """
        raise NotImplementedError


class _Plain(_Kind):
    """A JSON scalar kept as it is: checked against *types* on reading."""

    def __init__(self, what: str, *types: type) -> None:
        self._what = what
        self._types = types

    def decode(self, value: Any, where: str) -> Any:
        if not isinstance(value, self._types) or (
            isinstance(value, bool) and bool not in self._types
        ):
            raise _Invalid(where, f"expected {self._what}, got {_describe(value)}")
        return value


class _Optional(_Kind):
    """A value of *kind*, or ``None``."""

    def __init__(self, kind: _Kind) -> None:
        self._kind = kind

    def encode(self, value: Any) -> Any:
        return None if value is None else self._kind.encode(value)

    def decode(self, value: Any, where: str) -> Any:
        return None if value is None else self._kind.decode(value, where)


class _Latin1(_Kind):
    """Short protocol bytes as a latin-1 string: one character per byte."""

    def encode(self, value: Any) -> Any:
        if not isinstance(value, bytes):
            raise ValueError(f"expected bytes, got {value!r}")
        return value.decode("latin-1")

    def decode(self, value: Any, where: str) -> Any:
        if not isinstance(value, str):
            raise _Invalid(where, f"expected a string, got {_describe(value)}")
        try:
            return value.encode("latin-1")
        except UnicodeEncodeError:
            raise _Invalid(where, "has characters above U+00FF (bytes are latin-1)") from None


class _Base64(_Kind):
    """A body as a base64 string."""

    def encode(self, value: Any) -> Any:
        if not isinstance(value, bytes):
            raise ValueError(f"expected bytes, got {type(value).__name__}")
        return base64.b64encode(value).decode("ascii")

    def decode(self, value: Any, where: str) -> Any:
        if not isinstance(value, str):
            raise _Invalid(where, f"expected a base64 string, got {_describe(value)}")
        try:
            return base64.b64decode(value, validate=True)
        except (binascii.Error, ValueError):
            raise _Invalid(where, "is not valid base64") from None


class _List(_Kind):
    """A list of *item* values."""

    def __init__(self, item: _Kind) -> None:
        self._item = item

    def encode(self, value: Any) -> Any:
        return [self._item.encode(x) for x in value]

    def decode(self, value: Any, where: str) -> Any:
        if not isinstance(value, list):
            raise _Invalid(where, f"expected a list, got {_describe(value)}")
        return [self._item.decode(x, f"{where}[{i}]") for i, x in enumerate(value)]


class _Pair(_Kind):
    """A two-item sequence (a tuple or list) as a two-item list."""

    def __init__(self, first: _Kind, second: _Kind) -> None:
        self._kinds = (first, second)

    def encode(self, value: Any) -> Any:
        a, b = value
        return [self._kinds[0].encode(a), self._kinds[1].encode(b)]

    def decode(self, value: Any, where: str) -> Any:
        if not isinstance(value, list) or len(value) != 2:
            raise _Invalid(where, f"expected a list of two items, got {_describe(value)}")
        first, second = self._kinds
        return [first.decode(value[0], f"{where}[0]"), second.decode(value[1], f"{where}[1]")]


class _Object(_Kind):
    """Free-form JSON data in an object (flow metadata), kept as it is."""

    def decode(self, value: Any, where: str) -> Any:
        if not isinstance(value, dict):
            raise _Invalid(where, f"expected an object, got {_describe(value)}")
        return value


class _Record(_Kind):
    """An object with exactly the keys of *fields*, each of its kind."""

    def __init__(self, fields: Mapping[str, _Kind]) -> None:
        self._fields = dict(fields)

    def encode(self, value: Any) -> Any:
        unknown = set(value) - set(self._fields)
        if unknown:
            raise ValueError(f"the flow file format has no place for {sorted(unknown)!r}")
        return {key: self._fields[key].encode(x) for key, x in value.items()}

    def decode(self, value: Any, where: str) -> Any:
        if not isinstance(value, dict):
            raise _Invalid(where, f"expected an object, got {_describe(value)}")
        unknown = set(value) - set(self._fields)
        if unknown:
            raise _Invalid(where, f"unknown keys {sorted(unknown)!r}")
        missing = [key for key in self._fields if key not in value]
        if missing:
            raise _Invalid(where, f"missing keys {missing!r}")
        return {
            key: kind.decode(value[key], _join(where, key)) for key, kind in self._fields.items()
        }


_NUMBER = _Plain("a number", int, float)
_TIME = _Optional(_NUMBER)
_STR = _Plain("a string", str)
_BOOL = _Plain("true or false", bool)
_INT = _Plain("an integer", int)
_ADDRESS = _Optional(_Pair(_STR, _INT))
_CONNECTION = {
    "id": _STR,
    "peername": _ADDRESS,
    "sockname": _ADDRESS,
    "timestamp_start": _TIME,
    "timestamp_end": _TIME,
    "error": _Optional(_STR),
    "tls_established": _BOOL,
    "sni": _Optional(_STR),
    "alpn": _Optional(_Latin1()),
    "tls_version": _Optional(_STR),
}
_MESSAGE = {
    "http_version": _STR,
    "headers": _List(_Pair(_Latin1(), _Latin1())),
    "content": _Optional(_Base64()),
    "timestamp_start": _TIME,
    "timestamp_end": _TIME,
}
_FLOW = _Record(
    {
        "type": _STR,
        "id": _STR,
        "error": _Optional(_Record({"msg": _STR, "timestamp": _NUMBER})),
        "client_conn": _Record(_CONNECTION),
        "server_conn": _Record({**_CONNECTION, "address": _ADDRESS}),
        "intercepted": _BOOL,
        "marked": _STR,
        "is_replay": _Optional(_STR),
        "live": _BOOL,
        "timestamp_created": _NUMBER,
        "metadata": _Object(),
        "comment": _STR,
        "passthrough": _BOOL,
        "request": _Optional(
            _Record(
                {
                    "host": _STR,
                    "port": _INT,
                    "method": _STR,
                    "scheme": _STR,
                    "authority": _STR,
                    "path": _STR,
                    **_MESSAGE,
                }
            )
        ),
        "response": _Optional(_Record({"status_code": _INT, "reason": _STR, **_MESSAGE})),
    }
)
"""The schema of a line: a flow state without its ``"version"``."""


# -- JSON lines ----------------------------------------------------------------


def _encode_flow(flow: HTTPFlow) -> bytes:
    """
    :returns: *flow* as one line of the current format, ending in ``\\n``.
    :raises FlowFileError: if the flow holds something JSON cannot: its
        metadata must be JSON data (dicts, lists, strings, numbers, booleans
        and ``None``; tuples are read back as lists, non-string keys as
        strings).
    """
    state = flow.get_state()
    del state["version"]
    try:
        record = {"version": FORMAT_VERSION, **_FLOW.encode(state)}
        line = json.dumps(record, ensure_ascii=True, allow_nan=False, separators=(",", ":"))
    except (TypeError, ValueError) as e:
        raise FlowFileError(f"flow {flow.id} cannot be written: {e}") from e
    return line.encode("ascii") + b"\n"


def _decode_line(line: bytes, now: Callable[[], float]) -> HTTPFlow:
    """
    :returns: The flow on *line*, upgraded to the current format.
    :raises ValueError: (often :exc:`_Invalid` or :exc:`FlowFileError`) if
        the line is not a flow this version understands.
    """
    try:
        record = json.loads(line)
    except ValueError as e:  # JSONDecodeError, or UnicodeDecodeError for bad UTF-8
        hint = "" if line.endswith(b"\n") else " (the file ends in the middle of this line)"
        raise _Invalid("", f"not valid JSON: {e}{hint}") from None
    if not isinstance(record, dict):
        raise _Invalid("", f"expected a JSON object, got {_describe(record)}")
    version = record.pop("version", None)
    if type(version) is not int:
        raise _Invalid("version", f"missing or not an integer: {version!r}")
    if version > FORMAT_VERSION:
        raise FlowFileError(
            f"flow format version {version} is newer than this twistproxy understands "
            f"({FORMAT_VERSION}); upgrade twistproxy"
        )
    while version < FORMAT_VERSION:
        upgrade = _UPGRADES.get(version)
        if upgrade is None:
            raise _Invalid("version", f"flow format version {version} is unknown")
        record = upgrade(record)
        version += 1
    state = _FLOW.decode(record, "")
    state["version"] = FLOW_STATE_VERSION
    return HTTPFlow.from_state(state, now=now)


class FlowWriter:
    """
    Writes flows to a flow file, one line each.

    Each :meth:`add` writes a whole line in one ``write`` and flushes it,
    so a crash of the process loses at most the flows not yet added (the
    operating system may still hold the bytes: nothing is fsync'd).  The
    writer owns *out*: :meth:`close` closes it.  It is also a context
    manager that closes on exit.
    """

    def __init__(self, out: IO[bytes]) -> None:
        """
        :param out: A binary file object opened for writing (or appending).
        """
        self._out: IO[bytes] | None = out

    def add(self, flow: HTTPFlow) -> None:
        """
        Append *flow* and flush.

        :raises FlowFileError: if the flow cannot be written (see the
            module docstring); nothing is written then.
        :raises ValueError: if the writer is closed.
        """
        if self._out is None:
            raise ValueError("FlowWriter.add() after close()")
        self._out.write(_encode_flow(flow))
        self._out.flush()

    def close(self) -> None:
        """
        Close the file; later calls do nothing.
        """
        out, self._out = self._out, None
        if out is not None:
            out.close()

    def __enter__(self) -> FlowWriter:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def read_flows(
    source: Iterable[bytes], *, now: Callable[[], float] = time.time
) -> Iterator[HTTPFlow]:
    """
    Read flows from a flow file, lazily: one line is read and parsed per
    flow yielded, so a file of any size is never held whole.  Blank lines
    are skipped; lines of an older format are upgraded.

    :param source: A binary file object, or any iterable of lines.
    :param now: The clock the flows get (see :class:`~twistproxy.flow.Flow`).
    :returns: An iterator of the flows, not live unless saved live.
    :raises FlowFileError: when the iteration reaches a line that is not
        valid JSON, has keys or types the format does not have, or comes
        from a newer format version; the message starts ``line N:``.
    """
    for lineno, line in enumerate(source, start=1):
        if not line.strip():
            continue
        try:
            flow = _decode_line(line, now)
        except (ValueError, TypeError, KeyError) as e:
            raise FlowFileError(f"line {lineno}: {e}") from e
        yield flow


def dump_flows(flows: Iterable[HTTPFlow], out: IO[bytes]) -> int:
    """
    Write *flows* to *out* as a flow file (flushed at the end; *out* is left
    open).

    :returns: How many flows were written.
    :raises FlowFileError: as :meth:`FlowWriter.add` does.
    """
    count = 0
    for flow in flows:
        out.write(_encode_flow(flow))
        count += 1
    out.flush()
    return count


def load_flows(path: str | os.PathLike[str]) -> list[HTTPFlow]:
    """
    Read every flow of the flow file at *path*, or of the HAR file when
    *path* ends in ``.har``.  Use :func:`read_flows` for large files.

    :raises FlowFileError: as :func:`read_flows` or :func:`from_har` do, or
        when a HAR file is not JSON.
    :raises OSError: if the file cannot be read.
    """
    with open(path, "rb") as source:
        if os.fspath(path).lower().endswith(".har"):
            try:
                har = json.load(source)
            except ValueError as e:
                raise FlowFileError(f"not a HAR file: {e}") from e
            return list(from_har(har))
        return list(read_flows(source))


# -- HAR export ----------------------------------------------------------------

_SURROGATE = re.compile("[\ud800-\udfff]")
_ESCAPED_BYTE = re.compile("[\udc80-\udcff]")
_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+\Z")
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
    return entry


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
    does not measure (blocked, DNS, connect, TLS) are -1.

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
        raise _Invalid(_join(where, key), f"unexpected {_describe(value)}")
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
            raise _Invalid(here, f"expected an object, got {_describe(item)}")
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
            raise _Invalid(f"{where}[{i}]", f"expected an object, got {_describe(param)}")
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
        raise _Invalid("", f"expected an object, got {_describe(entry)}")
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
    return flow


def _flows_from_entries(entries: list[Any], now: Callable[[], float]) -> Iterator[HTTPFlow]:
    for index, entry in enumerate(entries):
        try:
            flow = _flow_from_entry(entry, now)
        except _Invalid as e:
            where = _join(f"log.entries[{index}]", e.where)
            raise FlowFileError(f"{where}: {e.reason}") from e
        except ValueError as e:
            raise FlowFileError(f"log.entries[{index}]: {e}") from e
        yield flow


def from_har(har: Mapping[str, Any], *, now: Callable[[], float] = time.time) -> Iterator[HTTPFlow]:
    """
    Turn a HAR document (``{"log": {...}}``, as browsers export it) into
    flows, one per entry, complete enough to replay: method, URL (scheme,
    host, port, path), headers and body.

    HTTP/2 pseudo-headers are dropped and a Host header is added when the
    entry has none.  Bodies come from ``text`` (base64 when ``encoding``
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
        'url'``).
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


# -- The command ---------------------------------------------------------------

_PROG = "python -m twistproxy.flowfile"


def _open_input(name: str) -> IO[bytes]:
    return sys.stdin.buffer if name == "-" else open(name, "rb")


def _write_output(name: str, write: Callable[[IO[bytes]], object]) -> None:
    if name == "-":
        write(sys.stdout.buffer)
        sys.stdout.buffer.flush()
    else:
        with open(name, "wb") as out:
            write(out)


def _export_har(args: argparse.Namespace) -> None:
    source = _open_input(args.input)
    try:
        flows = list(read_flows(source))
    except FlowFileError as e:
        raise FlowFileError(f"{args.input}: {e}") from e
    finally:
        if source is not sys.stdin.buffer:
            source.close()
    har = to_har(flows, creator_version=__version__)
    data = json.dumps(har, indent=2, ensure_ascii=False).encode("utf-8") + b"\n"
    _write_output(args.output, lambda out: out.write(data))


def _import_har(args: argparse.Namespace) -> None:
    source = _open_input(args.input)
    try:
        data = source.read()
    finally:
        if source is not sys.stdin.buffer:
            source.close()
    try:
        har = json.loads(data.decode("utf-8-sig"))  # HAR is UTF-8; a BOM is allowed
        flows = list(from_har(har))
    except ValueError as e:  # FlowFileError, JSONDecodeError, UnicodeDecodeError
        raise FlowFileError(f"{args.input}: {e}") from e
    _write_output(args.output, lambda out: dump_flows(flows, out))


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=_PROG,
        description="Convert between twistproxy flow files (JSON lines, as twistproxy saves "
        "flows) and HAR 1.2 files (as browsers' developer tools export them).",
        epilog="Use - for standard input or output.  On failure a one-line message goes to "
        "standard error and the exit status is 1; the output file is written only once the "
        "whole input has been read.",
    )
    commands = parser.add_subparsers(title="commands", required=True, metavar="COMMAND")
    export = commands.add_parser(
        "export-har",
        help="flow file -> HAR",
        description="Write the flows of a flow file as a HAR file.",
    )
    export.add_argument("input", metavar="IN.jsonl", help="the flow file to read")
    export.add_argument("output", metavar="OUT.har", help="the HAR file to write")
    export.set_defaults(run=_export_har)
    imp = commands.add_parser(
        "import-har",
        help="HAR -> flow file",
        description="Write the entries of a HAR file as a flow file.",
    )
    imp.add_argument("input", metavar="IN.har", help="the HAR file to read")
    imp.add_argument("output", metavar="OUT.jsonl", help="the flow file to write")
    imp.set_defaults(run=_import_har)
    return parser


def main(argv: list[str] | None = None) -> int:
    """
    Run the command line: ``export-har IN.jsonl OUT.har`` or ``import-har
    IN.har OUT.jsonl`` (``-h`` for help).

    :param argv: The arguments, without the program name; ``sys.argv[1:]``
        by default.
    :returns: The exit status: 0 on success, 1 on failure (after a one-line
        message on standard error), 2 for a usage error (argparse's
        convention, with the usage on standard error).
    """
    try:
        args = _parser().parse_args(argv)
    except SystemExit as e:  # -h, or a usage error argparse has reported
        return e.code if isinstance(e.code, int) else 2
    try:
        args.run(args)
    except OSError as e:
        what = f"{e.filename}: {e.strerror}" if e.filename and e.strerror else str(e)
        print(f"{_PROG}: error: {what}", file=sys.stderr)
        return 1
    except ValueError as e:  # FlowFileError, or text that cannot be written
        print(f"{_PROG}: error: {' '.join(str(e).split())}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
