# -*- test-case-name: tests.test_http -*-
"""
The HTTP models: :class:`Request`, :class:`Response` and :class:`HTTPFlow`.
Their header fields are a :class:`~twistproxy.headers.Headers`.

The proxy builds one of each for every request it handles, so building them
is cheap: nothing is parsed, validated per field or decoded on construction,
and bodies are decoded only when :attr:`Message.content` or
:attr:`Message.text` is read.

Text conventions, as for the headers: bodies are stored as bytes; the text
attributes (:attr:`Request.method`, :attr:`Request.path`,
:attr:`Response.reason`, ...) are ``str``, and ``bytes`` given for them are
decoded as UTF-8 with ``surrogateescape``, so any byte survives a round
trip through ``str``.
"""

from __future__ import annotations

import time
import urllib.parse
from collections.abc import Callable, Iterable, Mapping
from http import HTTPStatus
from typing import Any, ClassVar, Self

from twistproxy._body import MessageBody
from twistproxy._state import check_keys
from twistproxy._target import DEFAULT_PORTS, authority_text, parse_url, split_authority
from twistproxy.connection import Client, Server
from twistproxy.flow import Flow
from twistproxy.headers import Headers, _make_headers, _to_str
from twistproxy.websocket import WebSocketData


class Message(MessageBody):
    """
    What requests and responses share: the HTTP version, the headers and
    the body.  The body's API (:attr:`content`, :attr:`text`,
    :meth:`decode`, :meth:`encode`, :attr:`body_size`, ...) is
    :class:`~twistproxy._body.MessageBody`'s.

    :ivar http_version: For example ``"HTTP/1.1"``.
    :ivar headers: The header fields.
    :ivar raw_content: The body as it travels on the wire (still
        Content-Encoded), or ``None`` if it was streamed and not captured.
    :ivar timestamp_start: When the first byte was seen, if known.
    :ivar timestamp_end: When the last byte was seen, if known.
    :ivar stream: Set by a ``requestheaders``/``responseheaders`` hook to
        pass the body through unbuffered.
    :ivar trailers: The trailer fields that followed a chunked body, or
        ``None`` (there were none).  A message with trailers is sent
        chunked, its trailers after the body.
    """

    # raw_content, _decoded and _streamed_size are MessageBody's slots.
    __slots__ = (
        "http_version", "headers", "timestamp_start", "timestamp_end", "stream", "trailers",
    )

    http_version: str
    headers: Headers
    timestamp_start: float | None
    timestamp_end: float | None
    stream: bool
    trailers: Headers | None

    def __init__(
        self,
        http_version: str | bytes,
        headers: Headers | Iterable[tuple[bytes, bytes]],
        content: bytes | None,
        timestamp_start: float | None = None,
        timestamp_end: float | None = None,
        trailers: Headers | Iterable[tuple[bytes, bytes]] | None = None,
    ) -> None:
        """
        :param http_version: For example ``"HTTP/1.1"``.
        :param headers: A :class:`Headers` (used as is, not copied) or the
            wire fields.
        :param content: The raw (still encoded) body, or ``None``.
        :param timestamp_start: When the first byte was seen.
        :param timestamp_end: When the last byte was seen.
        """
        self.http_version = (
            http_version.decode("utf-8", "surrogateescape")
            if type(http_version) is bytes
            else _to_str(http_version)
        )
        self.headers = headers if isinstance(headers, Headers) else Headers(headers)
        self.raw_content = content
        self.timestamp_start = timestamp_start
        self.timestamp_end = timestamp_end
        self.stream = False
        self.trailers = (
            None if trailers is None
            else trailers if isinstance(trailers, Headers) else Headers(trailers)
        )
        self._decoded = None
        self._streamed_size = None

    # State

    _message_keys: ClassVar[tuple[str, ...]] = (
        "http_version",
        "headers",
        "content",
        "timestamp_start",
        "timestamp_end",
        "body_size",
        "trailers",
    )

    def _message_state(self) -> dict[str, Any]:
        return {
            "http_version": self.http_version,
            "headers": self.headers.get_state(),
            "content": self.raw_content,
            "timestamp_start": self.timestamp_start,
            "timestamp_end": self.timestamp_end,
            # Set only for a body recorded in part (or not at all).
            "body_size": self._streamed_size,
            "trailers": None if self.trailers is None else self.trailers.get_state(),
        }

    def _set_message_state(self, state: Mapping[str, Any]) -> None:
        content = state["content"]
        if content is not None and not isinstance(content, bytes):
            raise ValueError(f"message content in state must be bytes or None, not {content!r}")
        headers = Headers.from_state(state["headers"])
        self.http_version = _to_str(state["http_version"])
        self.headers = headers
        self.raw_content = content
        self.timestamp_start = state["timestamp_start"]
        self.timestamp_end = state["timestamp_end"]
        body_size = state["body_size"]
        if body_size is not None and (type(body_size) is not int or body_size < 0):
            raise ValueError(f"message body_size in state must be a whole number or None, "
                             f"not {body_size!r}")
        self._streamed_size = body_size
        trailers = state["trailers"]
        self.trailers = None if trailers is None else Headers.from_state(trailers)
        self._decoded = None


class Request(Message):
    """
    An HTTP request.

    :ivar method: For example ``"GET"``.
    :ivar scheme: ``"http"`` or ``"https"``.
    :ivar authority: The request-target's authority for absolute-form and
        CONNECT requests; empty for origin-form.
    :ivar path: The request-target's path and query (``"/a?b=1"``); empty
        for CONNECT.
    """

    __slots__ = ("_host", "_port", "method", "scheme", "authority", "path")

    _host: str
    _port: int
    method: str
    scheme: str
    authority: str
    path: str

    def __init__(
        self,
        host: str,
        port: int,
        method: str | bytes,
        scheme: str | bytes,
        authority: str | bytes,
        path: str | bytes,
        http_version: str | bytes,
        headers: Headers | Iterable[tuple[bytes, bytes]],
        content: bytes | None,
        trailers: Headers | Iterable[tuple[bytes, bytes]] | None = None,
        timestamp_start: float | None = None,
        timestamp_end: float | None = None,
    ) -> None:
        """
        The parameters set the attributes of the same names; ``bytes`` are
        decoded as UTF-8 with ``surrogateescape``.

        :param headers: A :class:`Headers` (used as is, not copied) or the
            wire fields.
        :param content: The raw (still encoded) body, or ``None`` if it is
            not captured.
        :param trailers: The trailer fields, or ``None``.
        """
        self._host = host
        self._port = port
        # The proxy hands bytes from the wire: decoded here without a call.
        self.method = (
            method.decode("utf-8", "surrogateescape") if type(method) is bytes
            else _to_str(method)
        )
        self.scheme = scheme if type(scheme) is str else _to_str(scheme)
        self.authority = (
            authority.decode("utf-8", "surrogateescape") if type(authority) is bytes
            else _to_str(authority)
        )
        self.path = (
            path.decode("utf-8", "surrogateescape") if type(path) is bytes else _to_str(path)
        )
        Message.__init__(
            self, http_version, headers, content, timestamp_start, timestamp_end, trailers
        )

    def __repr__(self) -> str:
        return f"<Request {self.method} {self.url}>"

    @classmethod
    def make(
        cls,
        method: str,
        url: str,
        content: bytes | str = b"",
        headers: Headers | Mapping[str, str] | Iterable[tuple[bytes, bytes]] = (),
    ) -> Self:
        """
        Build an HTTP/1.1 request in origin form.

        :param method: For example ``"POST"``.
        :param url: An absolute URL.
        :param content: The plain body; a ``str`` is encoded as UTF-8.  It
            is encoded with the Content-Encoding in *headers*, if any.
        :param headers: The headers (copied).  A Host header for *url* is put
            first if there is none; Content-Length is set when there is a
            body or the method is POST, PUT or PATCH (unless there is a
            Transfer-Encoding).
        :raises ValueError: if *url* is not an absolute URL or a header is
            invalid.
        """
        scheme, host, port, path = parse_url(url)
        fields = _make_headers(headers)
        if b"host" not in fields:
            fields.insert(0, "Host", authority_text(scheme, host, port))
        body = content.encode("utf-8") if isinstance(content, str) else content
        request = cls(host, port, method, scheme, "", path, "HTTP/1.1", fields, None)
        needs_length = body or method.upper() in ("POST", "PUT", "PATCH")
        if needs_length and b"transfer-encoding" not in fields:
            fields["Content-Length"] = "0"
        request.set_content(body)
        return request

    @property
    def host(self) -> str:
        """
        The host the request goes to (no brackets on IPv6 literals).

        Setting it updates a non-empty :attr:`authority` and an existing
        Host header to match, as setting :attr:`url` does.
        """
        return self._host

    @host.setter
    def host(self, value: str | bytes) -> None:
        host = _to_str(value)
        self._update_authorities(host, self._port)
        self._host = host

    @property
    def port(self) -> int:
        """
        The port the request goes to.

        Setting it updates a non-empty :attr:`authority` and an existing
        Host header to match, as setting :attr:`url` does.
        """
        return self._port

    @port.setter
    def port(self, value: int) -> None:
        self._update_authorities(self._host, value)
        self._port = value

    def _update_authorities(self, host: str, port: int) -> None:
        """
        Make an existing Host header and a non-empty authority name *host*
        and *port* (the header first: a value it refuses changes nothing).
        """
        hostport = authority_text(self.scheme, host, port)
        if b"host" in self.headers:
            self.headers[b"Host"] = hostport
        if self.authority:
            self.authority = authority_text("", host, port) if self._is_connect else hostport

    @property
    def _is_connect(self) -> bool:
        return self.method.upper() == "CONNECT"

    @property
    def url(self) -> str:
        """
        The absolute URL, ``scheme://host[:port]path``, the port left out
        when it is the scheme's default; ``host:port`` for CONNECT.

        Setting it (to an absolute URL) updates :attr:`scheme`,
        :attr:`host`, :attr:`port`, :attr:`path`, a non-empty
        :attr:`authority` and an existing Host header.  Setting an invalid
        URL raises :exc:`ValueError`.
        """
        if self._is_connect:
            return self.authority or authority_text("", self.host, self.port)
        return f"{self.scheme}://{authority_text(self.scheme, self.host, self.port)}{self.path}"

    @url.setter
    def url(self, value: str | bytes) -> None:
        scheme, host, port, path = parse_url(_to_str(value))
        self.scheme, self._host, self._port, self.path = scheme, host, port, path
        self._update_authorities(host, port)

    @property
    def host_header(self) -> str | None:
        """
        The Host header's value, or ``None``.  Setting ``None`` removes it;
        setting a value replaces it (or appends one).
        """
        return self.headers.get(b"host")

    @host_header.setter
    def host_header(self, value: str | bytes | None) -> None:
        if value is None:
            if b"host" in self.headers:
                del self.headers[b"host"]
        else:
            self.headers[b"Host"] = value

    @property
    def pretty_host(self) -> str:
        """
        The host the client asked for: the Host header's host if there is
        one, else :attr:`host`.
        """
        host_header = self.host_header
        if host_header:
            return split_authority(host_header)[0]
        return self.host

    @property
    def pretty_url(self) -> str:
        """
        Like :attr:`url`, but with the host and port from the Host header
        when there is one.
        """
        if self._is_connect:
            return self.url
        host_header = self.host_header
        if not host_header:
            return self.url
        host, port = split_authority(host_header)
        if port is None:
            port = DEFAULT_PORTS.get(self.scheme, self.port)
        return f"{self.scheme}://{authority_text(self.scheme, host, port)}{self.path}"

    @property
    def query(self) -> list[tuple[str, str]]:
        """
        The query string's ``(name, value)`` pairs, in order, percent- and
        ``+``-decoded (UTF-8, ``surrogateescape``).  The list is a new one
        each time: assign a list of pairs to change the query (an empty one
        removes it).
        """
        query = self.path.partition("?")[2]
        return urllib.parse.parse_qsl(query, keep_blank_values=True, errors="surrogateescape")

    @query.setter
    def query(self, value: Iterable[tuple[str, str]]) -> None:
        base = self.path.partition("?")[0]
        query = urllib.parse.urlencode(list(value), errors="surrogateescape")
        self.path = f"{base}?{query}" if query else base

    @property
    def path_components(self) -> tuple[str, ...]:
        """
        The path's non-empty segments, percent-decoded, without the query.
        Setting it rebuilds the path (keeping the query).
        """
        base = self.path.partition("?")[0]
        return tuple(
            urllib.parse.unquote(segment, errors="surrogateescape")
            for segment in base.split("/")
            if segment
        )

    @path_components.setter
    def path_components(self, value: Iterable[str]) -> None:
        _, sep, query = self.path.partition("?")
        path = "/" + "/".join(
            urllib.parse.quote(segment, safe="", errors="surrogateescape") for segment in value
        )
        self.path = f"{path}{sep}{query}"

    _state_keys: ClassVar[tuple[str, ...]] = (
        "host",
        "port",
        "method",
        "scheme",
        "authority",
        "path",
        *Message._message_keys,
    )

    def get_state(self) -> dict[str, Any]:
        """
        :returns: This request as plain data; header fields and the raw body
            stay ``bytes``.
        """
        state = self._message_state()
        state.update(
            host=self.host,
            port=self.port,
            method=self.method,
            scheme=self.scheme,
            authority=self.authority,
            path=self.path,
        )
        return state

    def set_state(self, state: Mapping[str, Any]) -> None:
        """
        Replace this request's fields with those of *state*.

        :param state: A dict from :meth:`get_state`.
        :raises ValueError: if *state* has unknown or missing keys or bad
            headers or body.
        """
        check_keys(state, self._state_keys, "request")
        self._set_message_state(state)
        self._host = state["host"]
        self._port = state["port"]
        self.method = _to_str(state["method"])
        self.scheme = _to_str(state["scheme"])
        self.authority = _to_str(state["authority"])
        self.path = _to_str(state["path"])

    @classmethod
    def from_state(cls, state: Mapping[str, Any]) -> Self:
        """
        Build a request from a dict made by :meth:`get_state`.

        :raises ValueError: as :meth:`set_state` does.
        """
        request = cls("", 0, "", "", "", "", "", Headers(), None)
        request.set_state(state)
        return request


class Response(Message):
    """
    An HTTP response.

    :ivar status_code: For example ``200``.
    :ivar reason: The reason phrase, for example ``"OK"``.
    """

    __slots__ = ("status_code", "reason")

    status_code: int
    reason: str

    def __init__(
        self,
        http_version: str | bytes,
        status_code: int,
        reason: str | bytes,
        headers: Headers | Iterable[tuple[bytes, bytes]],
        content: bytes | None,
        trailers: Headers | Iterable[tuple[bytes, bytes]] | None = None,
        timestamp_start: float | None = None,
        timestamp_end: float | None = None,
    ) -> None:
        """
        The parameters set the attributes of the same names; ``bytes`` are
        decoded as UTF-8 with ``surrogateescape``.

        :param headers: A :class:`Headers` (used as is, not copied) or the
            wire fields.
        :param content: The raw (still encoded) body, or ``None`` if it is
            not captured.
        :param trailers: The trailer fields, or ``None``.
        """
        self.status_code = status_code
        self.reason = (
            reason.decode("utf-8", "surrogateescape") if type(reason) is bytes
            else _to_str(reason)
        )
        Message.__init__(
            self, http_version, headers, content, timestamp_start, timestamp_end, trailers
        )

    def __repr__(self) -> str:
        return f"<Response {self.status_code} {self.reason}>"

    @classmethod
    def make(
        cls,
        status_code: int = 200,
        content: bytes | str = b"",
        headers: Headers | Mapping[str, str] | Iterable[tuple[bytes, bytes]] = (),
    ) -> Self:
        """
        Build an HTTP/1.1 response (timestamps left ``None``).

        :param status_code: The status; the reason phrase is the standard
            one, or empty for an unknown status.
        :param content: The plain body.  A ``str`` is encoded in the
            Content-Type's charset (UTF-8 by default), and gets
            ``Content-Type: text/plain; charset=utf-8`` if *headers* has no
            Content-Type.  It is encoded with the Content-Encoding in
            *headers*, if any.
        :param headers: The headers (copied).  Content-Length is set to the
            body's length unless there is a Transfer-Encoding.
        :raises ValueError: if a header is invalid.
        """
        try:
            reason = HTTPStatus(status_code).phrase
        except ValueError:
            reason = ""
        fields = _make_headers(headers)
        response = cls("HTTP/1.1", status_code, reason, fields, None)
        if isinstance(content, str) and b"content-type" not in fields:
            fields["Content-Type"] = "text/plain; charset=utf-8"
        if b"transfer-encoding" not in fields:
            fields["Content-Length"] = "0"
        if isinstance(content, str):
            response.set_text(content)
        else:
            response.set_content(content)
        return response

    _state_keys: ClassVar[tuple[str, ...]] = ("status_code", "reason", *Message._message_keys)

    def get_state(self) -> dict[str, Any]:
        """
        :returns: This response as plain data; header fields and the raw
            body stay ``bytes``.
        """
        state = self._message_state()
        state.update(status_code=self.status_code, reason=self.reason)
        return state

    def set_state(self, state: Mapping[str, Any]) -> None:
        """
        Replace this response's fields with those of *state*.

        :param state: A dict from :meth:`get_state`.
        :raises ValueError: if *state* has unknown or missing keys or bad
            headers or body.
        """
        check_keys(state, self._state_keys, "response")
        self._set_message_state(state)
        self.status_code = state["status_code"]
        self.reason = _to_str(state["reason"])

    @classmethod
    def from_state(cls, state: Mapping[str, Any]) -> Self:
        """
        Build a response from a dict made by :meth:`get_state`.

        :raises ValueError: as :meth:`set_state` does.
        """
        response = cls("", 0, "", Headers(), None)
        response.set_state(state)
        return response


class HTTPFlow(Flow):
    """
    An HTTP exchange: a :class:`~twistproxy.flow.Flow` with a request and,
    once there is one, a response.

    :ivar request: The request, once its headers are in.
    :ivar response: The response, once its headers are in (or a hook set
        one).
    :ivar passthrough: For a CONNECT flow: relay the tunnel's bytes
        untouched instead of intercepting its TLS (an ``http_connect`` hook
        may set it).
    :ivar websocket: For a request the origin switched to a WebSocket
        (``101``): its messages and how it closed
        (:class:`~twistproxy.websocket.WebSocketData`); otherwise ``None``.
    :ivar interim: The interim (1xx) responses the origin sent before
        :attr:`response` (``103 Early Hints``, ``100 Continue``...), heads
        only, in order.
    """

    __slots__ = ("request", "response", "passthrough", "websocket", "interim")

    type: ClassVar[str] = "http"

    _state_keys: ClassVar[frozenset[str]] = Flow._state_keys | {
        "request",
        "response",
        "passthrough",
        "websocket",
        "interim",
    }

    request: Request | None
    response: Response | None
    passthrough: bool
    websocket: WebSocketData | None
    interim: tuple[Response, ...]

    def __init__(
        self,
        client_conn: Client,
        server_conn: Server,
        live: bool = False,
        *,
        now: Callable[[], float] = time.time,
    ) -> None:
        """
        :param client_conn: The client connection.
        :param server_conn: The server connection.
        :param live: Whether the proxy is working on this flow.
        :param now: The clock, as for :class:`~twistproxy.flow.Flow`.
        """
        super().__init__(client_conn, server_conn, live, now=now)
        self.request = None
        self.response = None
        self.passthrough = False
        self.websocket = None
        self.interim = ()

    def __repr__(self) -> str:
        request = self.request
        what = f"{request.method} {request.url}" if request is not None else "no request"
        if self.response is not None:
            what += f" -> {self.response.status_code}"
        elif self.error is not None:
            what += f" -> error: {self.error.msg}"
        return f"<HTTPFlow {what}>"

    def get_state(self) -> dict[str, Any]:
        """
        :returns: As :meth:`Flow.get_state <twistproxy.flow.Flow.get_state>`,
            plus ``"request"``, ``"response"`` and ``"websocket"`` (state
            dicts or ``None``), ``"interim"`` (a list of response state
            dicts) and ``"passthrough"``.
        """
        state = super().get_state()
        state["passthrough"] = self.passthrough
        state["request"] = self.request.get_state() if self.request is not None else None
        state["response"] = self.response.get_state() if self.response is not None else None
        websocket = self.websocket
        state["websocket"] = websocket.get_state() if websocket is not None else None
        state["interim"] = [response.get_state() for response in self.interim]
        return state

    def _apply_state(self, state: dict[str, Any]) -> None:
        request_state = state.pop("request")
        response_state = state.pop("response")
        websocket_state = state.pop("websocket")
        interim = tuple(Response.from_state(s) for s in state.pop("interim"))
        passthrough = bool(state.pop("passthrough"))
        request = Request.from_state(request_state) if request_state is not None else None
        response = Response.from_state(response_state) if response_state is not None else None
        websocket = (
            WebSocketData.from_state(websocket_state) if websocket_state is not None else None
        )
        super()._apply_state(state)
        self.request = request
        self.response = response
        self.passthrough = passthrough
        self.websocket = websocket
        self.interim = interim
