# -*- test-case-name: tests.test_export -*-
"""
Flows as commands and bytes to paste elsewhere: mitmproxy's "export"
formats.

- :func:`to_curl`: a ``curl`` command line that sends the flow's request
  again.
- :func:`to_httpie`: the same for HTTPie's ``http``.
- :func:`to_raw`: the request, and the response if there is one, as HTTP/1
  bytes.

The commands are one line of POSIX shell: every argument is quoted with
:func:`shlex.quote`.  A body that is UTF-8 text without control characters
is written in the command; any other body is piped in by ``printf`` with
octal escapes (``printf '\\000\\377' | curl --data-binary @- ...``), so no
byte is lost to the shell or the terminal.  The body goes as it was
recorded, its Content-Encoding not undone (mitmproxy's export decodes it):
the origin gets the bytes it got the first time.

What the command sends: the request's method, its URL (built from the Host
header, as :attr:`~twistproxy.http.Request.pretty_url`), every header as
recorded, in order, repeats kept, and the body.  Left out are
``Content-Length`` when there is a body (the tool counts it again) and a
``Host`` header the URL already gives.  The tools add headers of their own
when the flow has none of that name (curl: ``User-Agent``, ``Accept``;
HTTPie: those and ``Accept-Encoding``, ``Connection``); a ``Content-Type``
they would add to a body is suppressed.

``python -m twistproxy.flowfile export-curl FLOWS`` (and ``export-httpie``,
``export-raw``) runs these on a flow file's flows, ``--filter EXPR`` to
choose them.

This is core code: no I/O, no clock.
"""

from __future__ import annotations

import shlex
from collections.abc import Callable, Iterable
from typing import IO
from urllib.parse import urlsplit

from twistproxy.flow import Flow
from twistproxy.http import HTTPFlow, Message, Request

__all__ = ["FORMATS", "ExportError", "export_flows", "to_curl", "to_httpie", "to_raw"]


class ExportError(ValueError):
    """
    A flow cannot be exported in the format asked for: it has no request,
    a body was not recorded in full, or it is a ``CONNECT``.
    """


def _request(flow: Flow) -> Request:
    """
    :returns: *flow*'s request, if it is one a command can send again.
    :raises ExportError: if there is none, or it is a ``CONNECT``.
    """
    request = flow.request if isinstance(flow, HTTPFlow) else None
    if request is None:
        raise ExportError("the flow has no request")
    if request.method.upper() == "CONNECT":
        raise ExportError("a CONNECT request cannot be sent again this way")
    return request


def _check_body(message: Message, what: str) -> bytes:
    """
    :returns: *message*'s raw body.
    :raises ExportError: if it was not recorded, or not in full.
    """
    body = message.raw_content
    if body is None or message.truncated:
        raise ExportError(f"the {what} body was not recorded in full")
    return body


def _is_text(body: bytes) -> bool:
    """Whether *body* can be written in a command as it is: UTF-8, no control characters."""
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return text.isprintable()


def _printf(body: bytes) -> str:
    """
    :returns: A ``printf`` command that writes *body* exactly, in any
        POSIX shell: every byte that is not printable ASCII, and ``\\``,
        ``%``, ``'`` and a leading ``-``, as an octal escape.
    """
    chars = []
    for index, byte in enumerate(body):
        char = chr(byte)
        if 0x20 <= byte < 0x7F and char not in "\\%'" and not (index == 0 and char == "-"):
            chars.append(char)
        else:
            chars.append(f"\\{byte:03o}")
    return "printf '" + "".join(chars) + "'"


def _headers(request: Request, url: str, body: bytes) -> list[tuple[str, str]]:
    """
    :returns: The header fields the command sends: all of them but a
        ``Content-Length`` the tool counts again and a ``Host`` the URL
        gives.
    """
    authority = urlsplit(url).netloc
    fields = []
    for name, value in request.headers.items(multi=True):
        lower = name.lower()
        if (lower == "content-length" and body) or (lower == "host" and value == authority):
            continue
        fields.append((name, value))
    return fields


def _check_text(fields: Iterable[tuple[str, str]]) -> None:
    """
    :raises ExportError: if a header is not UTF-8 text (a command line is).
    """
    for name, value in fields:
        try:
            f"{name}{value}".encode()
        except UnicodeEncodeError:
            raise ExportError(f"header {name!r} is not UTF-8 text") from None


def _to_send(flow: Flow) -> tuple[Request, bytes, str, list[tuple[str, str]]]:
    """
    :returns: What a command sends again for *flow*: its request, the body,
        the URL and the header fields (see :func:`_headers`).
    :raises ExportError: if the request cannot be sent again.
    """
    request = _request(flow)
    body = _check_body(request, "request")
    url = request.pretty_url
    fields = _headers(request, url, body)
    _check_text(fields)
    return request, body, url, fields


def _lacks_content_type(body: bytes, fields: list[tuple[str, str]]) -> bool:
    """Whether there is a body but no Content-Type (the tool would add its own)."""
    return bool(body) and not any(name.lower() == "content-type" for name, _ in fields)


def to_curl(flow: Flow) -> str:
    """
    A ``curl`` command that sends *flow*'s request again.

    :returns: One line of POSIX shell (see the module docstring).
    :raises ExportError: if the request cannot be sent again.
    """
    request, body, url, fields = _to_send(flow)
    args = ["curl"]
    if request.http_version == "HTTP/1.0":
        args.append("--http1.0")
    if any(char in url for char in "[]{}"):
        args.append("--globoff")
    method = request.method
    if method == "HEAD" and not body:
        args.append("--head")
    elif method != ("POST" if body else "GET"):
        args += ["-X", method]
    for name, value in fields:
        args += ["-H", f"{name}: {value}" if value else f"{name};"]
    if _lacks_content_type(body, fields):
        args += ["-H", "Content-Type:"]  # curl would send a form's
    args.append(url)
    if not body:
        return shlex.join(args)
    if _is_text(body):
        return shlex.join([*args, "--data-raw", body.decode("utf-8")])
    return f"{_printf(body)} | {shlex.join([*args, '--data-binary', '@-'])}"


def to_httpie(flow: Flow) -> str:
    """
    An HTTPie (``http``) command that sends *flow*'s request again.

    :returns: One line of POSIX shell (see the module docstring).
    :raises ExportError: if the request cannot be sent again.
    """
    request, body, url, fields = _to_send(flow)
    args = ["http", request.method, url]
    args += [f"{name}:{value}" if value else f"{name};" for name, value in fields]
    if _lacks_content_type(body, fields):
        args.append("Content-Type:")  # HTTPie would send JSON's
    if not body:
        return shlex.join(args)
    text = body.decode("utf-8") if _is_text(body) else None
    pipe = _printf(body) if text is None else f"printf %s {shlex.quote(text)}"
    return f"{pipe} | {shlex.join(args)}"


def _chunked(message: Message) -> bool:
    coding = message.headers.get(b"transfer-encoding")
    return coding is not None and coding.rsplit(",", 1)[-1].strip().lower() == "chunked"


def _raw_body(message: Message, body: bytes) -> bytes:
    """
    :returns: *body* framed as the headers say: one chunk, the last chunk
        and the trailers when it was sent chunked, else as it is.
    """
    if not _chunked(message):
        return body
    out = [b"%x\r\n%s\r\n" % (len(body), body)] if body else []
    out.append(b"0\r\n")
    for name, value in (message.trailers.fields if message.trailers else ()):
        out.append(name + b": " + value + b"\r\n")
    out.append(b"\r\n")
    return b"".join(out)


def _raw_fields(message: Message) -> bytes:
    return b"".join(name + b": " + value + b"\r\n" for name, value in message.headers.fields)


def _raw_request(request: Request) -> bytes:
    body = _check_body(request, "request")
    target = request.authority if request.method.upper() == "CONNECT" else request.path
    line = f"{request.method} {target} {request.http_version}\r\n"
    head = line.encode("utf-8", "surrogateescape") + _raw_fields(request) + b"\r\n"
    return head + _raw_body(request, body)


def to_raw(flow: Flow) -> bytes:
    """
    *flow*'s request, then (after an empty line, ``\\r\\n\\r\\n``) its
    response if it has one, as HTTP/1 bytes: the request line in origin
    form, the headers as recorded, the body as recorded (a chunked body as
    one chunk and its trailers).

    :raises ExportError: if the flow has no request, or a body was not
        recorded in full.
    """
    request = flow.request if isinstance(flow, HTTPFlow) else None
    if request is None:
        raise ExportError("the flow has no request")
    parts = [_raw_request(request)]
    response = flow.response if isinstance(flow, HTTPFlow) else None
    if response is not None:
        body = _check_body(response, "response")
        line = f"{response.http_version} {response.status_code} {response.reason}\r\n"
        head = line.encode("utf-8", "surrogateescape") + _raw_fields(response) + b"\r\n"
        parts.append(head + _raw_body(response, body))
    return b"\r\n\r\n".join(parts)


FORMATS: dict[str, Callable[[Flow], str | bytes]] = {
    "curl": to_curl,
    "httpie": to_httpie,
    "raw": to_raw,
}
"""The export formats by name, as ``export-NAME`` commands take them."""


def export_flows(
    flows: Iterable[Flow],
    export: Callable[[Flow], str | bytes],
    out: IO[bytes],
    on_error: Callable[[Flow, ExportError], object],
) -> int:
    """
    Write each of *flows* exported by *export* to *out*: a command per line,
    raw flows separated by an empty line (``\\r\\n\\r\\n``).

    :param on_error: Called with a flow that cannot be exported and why; it
        is skipped.
    :returns: How many flows were written.
    """
    count = 0
    for flow in flows:
        try:
            exported = export(flow)
        except ExportError as e:
            on_error(flow, e)
            continue
        if isinstance(exported, str):
            out.write(exported.encode("utf-8") + b"\n")
        else:
            out.write((b"\r\n\r\n" if count else b"") + exported)
        count += 1
    return count
