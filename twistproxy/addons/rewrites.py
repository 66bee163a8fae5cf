# -*- test-case-name: tests.test_rewrites -*-
"""
Built-in rewrites, with mitmproxy's option syntax: :class:`BlockList`,
:class:`AntiCache`, :class:`MapRemote`, :class:`ModifyBody` and
:class:`ModifyHeaders` (:class:`~twistproxy.addons.maplocal.MapLocal` and
:class:`~twistproxy.addons.stickycookie.StickyCookie` live in modules of
their own).

Each is an ordinary addon that takes its configuration when it is made::

    ProxyFactory(reactor=reactor, addons=[
        BlockList(["|~d ads.example|444"]),
        ModifyHeaders(["|~q|User-Agent|twistproxy"]),
    ])

A spec's first character is its separator; the fields between separators
are ``[filter SEP]`` then the rewrite's own fields (mitmproxy's
``parse_spec``): ``|~q|X-Name|value``, or without a filter ``|X-Name|value``
(every flow).  The last field may hold the separator.  The filter is a
:mod:`twistproxy.filters` expression.  A spec whose first field is a
filter with one field too few (``|~d example|https://elsewhere``) is
refused: mitmproxy would take the filter for a URL regex that never
matches.  A spec that cannot be read raises
:exc:`ValueError` with a one-line message.

When the rewrites look at a flow: block lists, map_remote, anticache and
the request side of modify_headers act in ``requestheaders`` (nothing is
sent upstream yet, and no body is buffered for them), so their filters see
the request's headers only: body operators (``~b``, ``~bq``) never match
there.  modify_headers acts on responses in ``responseheaders``.
modify_body needs bodies whole: see :class:`ModifyBody`.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any, TypeVar

import attrs
from twisted.logger import Logger

from twistproxy.filters import Filter, FilterError
from twistproxy.filters import parse as parse_filter
from twistproxy.flow import Flow
from twistproxy.headers import Headers
from twistproxy.hooks import Addon
from twistproxy.http import HTTPFlow, Message, Response

__all__ = [
    "NO_RESPONSE",
    "AntiCache",
    "BlockList",
    "BlockSpec",
    "BodySpec",
    "HeaderSpec",
    "MapRemote",
    "ModifyBody",
    "ModifyHeaders",
    "RemoteSpec",
    "parse_block_spec",
    "parse_body_spec",
    "parse_header_spec",
    "parse_remote_spec",
    "split_spec",
    "unescape",
]

_log = Logger(namespace="twistproxy.rewrites")

NO_RESPONSE = 444
"""The block-list status that closes the connection without an answer (nginx's 444)."""

BLOCKED = "blocklisted"
"""The key of ``flow.metadata`` :class:`BlockList` sets on a flow it blocked."""

_BODY_OPERATORS = frozenset({"b", "bq", "bs"})

# -- reading specs -----------------------------------------------------------


def split_spec(option: str, fields: Sequence[str], *, need_filter: bool = False
               ) -> tuple[Filter | None, list[str]]:
    """
    Split a spec: its first character is the separator, then an optional
    filter, then *fields* (their names, for messages); the last field keeps
    any further separators.

    :param need_filter: The filter is not optional (block lists).
    :returns: The parsed filter (``None``: every flow) and the fields.
    :raises ValueError: for a spec without enough fields or with an
        invalid filter.
    """
    parts = option[1:].split(option[0], len(fields)) if option else []
    expected = (len(fields) + 1,) if need_filter else (len(fields), len(fields) + 1)
    if len(parts) not in expected:
        shape = "|" + ("filter|" if need_filter else "[filter|]") + "|".join(fields)
        if option[:1] not in ("", "|"):
            shape += f" (the separator is the first character, {option[0]!r} here)"
        raise ValueError(f"expected {shape}")
    if len(parts) == len(fields):
        first = parts[0]
        if first.startswith(("~", "!~")) and _parses(first):
            raise ValueError(
                f"the {fields[0]} {first!r} is a filter: the filter comes first, "
                f"then the {fields[0]}: |{first}|" + "|".join(fields))
        return None, parts
    expression = parts[0]
    try:
        flow_filter = parse_filter(expression)
    except FilterError as e:
        raise ValueError(
            f"filter {expression!r}: {e.reason} at column {e.position + 1}") from None
    return flow_filter, parts[1:]


def _parses(expression: str) -> bool:
    try:
        parse_filter(expression)
    except FilterError:
        return False
    return True


_ESCAPE = re.compile(rb"\\(x[0-9a-fA-F]{2}|x|[0-7]{1,3}|[\\'\"abfnrtv\n]|.|\Z)", re.DOTALL)
_SIMPLE = {b"\\": b"\\", b"'": b"'", b'"': b'"', b"a": b"\a", b"b": b"\b", b"f": b"\f",
           b"n": b"\n", b"r": b"\r", b"t": b"\t", b"v": b"\v", b"\n": b""}


def unescape(text: str) -> bytes:
    r"""
    *text* as bytes (UTF-8), its Python bytes escapes undone (``\n``,
    ``\x41``, ``\\``, octal), as mitmproxy reads spec fields; any other
    backslash is kept, so ``\d`` stays a regex's ``\d``.

    :raises ValueError: for ``\x`` without two hex digits or a trailing
        backslash.
    """

    def replace(match: re.Match[bytes]) -> bytes:
        escape = match.group(1)
        if escape in _SIMPLE:
            return _SIMPLE[escape]
        if escape == b"x":
            raise ValueError(f"invalid \\x escape at {match.start()} in {text!r}")
        if escape == b"":
            raise ValueError(f"trailing backslash in {text!r}")
        if escape[:1] == b"x":
            return bytes([int(escape[1:], 16)])
        if escape[:1].isdigit() and escape[:1] not in b"89":
            return bytes([int(escape, 8) & 0xFF])
        return match.group(0)

    return _ESCAPE.sub(replace, text.encode("utf-8", "surrogateescape"))


def _replacement(text: str) -> bytes:
    """
    A replacement field: ``@PATH`` is the file's contents (read now),
    anything else the field :func:`unescape`\\ d.

    :raises OSError: if the file cannot be read.
    :raises ValueError: for a bad escape.
    """
    if text.startswith("@"):
        return Path(text[1:]).expanduser().read_bytes()
    return unescape(text)


def _checked_replacement(text: str) -> None:
    """
    :raises ValueError: if :func:`_replacement` of *text* would fail now.
    """
    try:
        _replacement(text)
    except OSError as e:
        raise ValueError(f"cannot read {text[1:]}: {e.strerror or e}") from None


def _matches(flow_filter: Filter | None, flow: Flow) -> bool:
    return flow_filter is None or flow_filter(flow)


def _acting(flow: Any) -> bool:
    """Whether a request-side rewrite applies: a live HTTP flow not answered yet."""
    return (isinstance(flow, HTTPFlow) and flow.live and flow.response is None
            and flow.error is None)


_Spec = TypeVar("_Spec")


def _specs(specs: Iterable[str | _Spec], parse: Callable[[str], _Spec]) -> tuple[_Spec, ...]:
    """Specs given as text or parsed, all parsed."""
    return tuple(parse(spec) if isinstance(spec, str) else spec for spec in specs)


# -- block_list --------------------------------------------------------------


@attrs.frozen
class BlockSpec:
    """
    One block-list rule: ``SEPfilterSEPstatus``.

    :ivar filter: Which requests are blocked.
    :ivar status: The status they are answered with, or :data:`NO_RESPONSE`
        (444): the connection is closed without an answer.
    """

    filter: Filter
    status: int


def parse_block_spec(option: str) -> BlockSpec:
    """
    Read a block-list spec such as ``|~d ads.example|444`` (the filter is
    required; ``|~all|403`` blocks everything).

    :raises ValueError: with a one-line reason.
    """
    flow_filter, (status,) = split_spec(option, ["status"], need_filter=True)
    assert flow_filter is not None
    if not (status.isascii() and status.isdigit() and 200 <= int(status) <= 599):
        raise ValueError(f"{status!r} is not a status from 200 to 599 "
                         f"({NO_RESPONSE}: close without an answer)")
    return BlockSpec(flow_filter, int(status))


class BlockList(Addon):
    """
    Answer the requests a rule matches with its status and an empty body,
    without contacting the origin, or close the connection (status 444),
    in ``requestheaders``; the flow's ``metadata["blocklisted"]`` is set.
    The first rule that matches wins.  CONNECT requests are not blocked
    (the requests inside an intercepted tunnel are); to refuse tunnels too,
    use :class:`~twistproxy.addons.access.HostPolicy`.
    """

    def __init__(self, specs: Iterable[str | BlockSpec]) -> None:
        """
        :param specs: Rules as text (:func:`parse_block_spec`) or parsed.
        :raises ValueError: for a rule that cannot be read.
        """
        self.specs = _specs(specs, parse_block_spec)

    def requestheaders(self, flow: Any) -> None:
        """Block *flow* if a rule matches."""
        if not _acting(flow):
            return
        for spec in self.specs:
            if spec.filter(flow):
                flow.metadata[BLOCKED] = True
                if spec.status == NO_RESPONSE:
                    flow.kill()
                else:
                    flow.response = Response.make(spec.status)
                return


# -- anticache ---------------------------------------------------------------


class AntiCache(Addon):
    """
    Remove the request headers that may get a ``304 Not Modified`` instead
    of the whole response: ``If-None-Match`` and ``If-Modified-Since``
    (mitmproxy's ``anticache``), in ``requestheaders``.
    """

    HEADERS = (b"if-none-match", b"if-modified-since")

    def requestheaders(self, flow: Any) -> None:
        """Strip the conditional headers from *flow*'s request."""
        if not _acting(flow):
            return
        headers = flow.request.headers
        for name in self.HEADERS:
            if name in headers:
                del headers[name]


# -- map_remote --------------------------------------------------------------


@attrs.frozen
class RemoteSpec:
    """
    One map_remote rule: ``SEP[filterSEP]url-regexSEPreplacement``.

    :ivar filter: Which requests it applies to (``None``: all).
    :ivar pattern: Searched in the request's URL (``pretty_url``).
    :ivar replacement: What each match is replaced with (``\\1`` refers to
        a group, as in :func:`re.sub`).
    """

    filter: Filter | None
    pattern: re.Pattern[str]
    replacement: str


def parse_remote_spec(option: str) -> RemoteSpec:
    """
    Read a map_remote spec such as ``|~d api.example|https://staging.example``.

    :raises ValueError: with a one-line reason.
    """
    flow_filter, (regex, replacement) = split_spec(option, ["url-regex", "replacement"])
    return RemoteSpec(flow_filter, _compile("url-regex", regex), replacement)


def _compile(name: str, regex: str) -> re.Pattern[str]:
    """*regex* compiled; a bad one is a :exc:`ValueError` naming the field *name*."""
    try:
        return re.compile(regex)
    except re.error as e:
        raise ValueError(f"{name} {regex!r}: {e}") from None


class MapRemote(Addon):
    """
    Send requests elsewhere: each rule whose filter matches replaces what
    its regex matches in the request's URL (``pretty_url``, the Host
    header's host when there is one), in ``requestheaders``.  When the URL
    changes, the request goes to the new URL's scheme, host and port, and
    its Host header (and an absolute-form target) follow.  Every matching
    rule applies, in order, each to the URL the one before left.  A URL
    that the replacement makes invalid fails the hook (a 500, logged).
    """

    def __init__(self, specs: Iterable[str | RemoteSpec]) -> None:
        """
        :param specs: Rules as text (:func:`parse_remote_spec`) or parsed.
        :raises ValueError: for a rule that cannot be read.
        """
        self.specs = _specs(specs, parse_remote_spec)

    def requestheaders(self, flow: Any) -> None:
        """Rewrite *flow*'s URL by every rule that matches."""
        if not _acting(flow):
            return
        for spec in self.specs:
            if _matches(spec.filter, flow):
                url = flow.request.pretty_url
                new_url = spec.pattern.sub(spec.replacement, url)
                if new_url != url:
                    flow.request.url = new_url


# -- modify_headers ----------------------------------------------------------


@attrs.frozen
class HeaderSpec:
    """
    One modify_headers rule: ``SEP[filterSEP]nameSEP[@]value``.

    :ivar filter: Which messages it applies to (``None``: every request and
        every response).
    :ivar name: The header's name.
    :ivar value: The value, or ``@PATH`` of a file holding it (read each
        time, a final line end dropped); empty: the header is removed.
    """

    filter: Filter | None
    name: bytes
    value: str

    def read_value(self) -> bytes:
        """
        The value to set (empty: remove only).

        :raises OSError: if the value's file cannot be read.
        :raises ValueError: if the value is not a valid header value.
        """
        value = _replacement(self.value)
        if self.value.startswith("@"):
            value = value.removesuffix(b"\n").removesuffix(b"\r")
        if value:
            Headers().add(self.name, value)  # checks it
        return value


def parse_header_spec(option: str) -> HeaderSpec:
    """
    Read a modify_headers spec such as ``|~q|X-Name|value``, ``|~s|Server|``
    (remove) or ``|~q|User-Agent|@~/agent.txt``.

    :raises ValueError: with a one-line reason.
    """
    flow_filter, (name, value) = split_spec(option, ["name", "value"])
    spec = HeaderSpec(flow_filter, unescape(name), value)
    try:
        Headers().add(spec.name, b"x")
    except ValueError:
        raise ValueError(f"{name!r} is not a header name") from None
    try:
        spec.read_value()
    except OSError as e:
        raise ValueError(f"cannot read {value[1:]}: {e.strerror or e}") from None
    return spec


class ModifyHeaders(Addon):
    """
    Set or remove headers: in ``requestheaders`` on the request (of a flow
    not answered yet) and in ``responseheaders`` on the response, for each
    rule whose filter matches the flow then (``~q`` picks requests, ``~s``
    responses; no filter: both).  As mitmproxy does, every filter is tried
    on the message as it came, then each matching rule's header is removed,
    then each non-empty value is added, in rule order (two rules for one
    name give two fields).  A value file that cannot be read or holds an
    invalid value is logged and skipped.
    """

    def __init__(self, specs: Iterable[str | HeaderSpec]) -> None:
        """
        :param specs: Rules as text (:func:`parse_header_spec`) or parsed.
        :raises ValueError: for a rule that cannot be read.
        """
        self.specs = _specs(specs, parse_header_spec)

    def requestheaders(self, flow: Any) -> None:
        """Apply the matching rules to *flow*'s request headers."""
        if _acting(flow):
            self._run(flow, flow.request.headers)

    def responseheaders(self, flow: Any) -> None:
        """Apply the matching rules to *flow*'s response headers."""
        if flow.live and flow.error is None:
            self._run(flow, flow.response.headers)

    def _run(self, flow: HTTPFlow, headers: Headers) -> None:
        matching = [spec for spec in self.specs if _matches(spec.filter, flow)]
        for spec in matching:
            if spec.name in headers:
                del headers[spec.name]
        for spec in matching:
            try:
                value = spec.read_value()
            except (OSError, ValueError) as e:
                _log.warn("modify_headers: {name}: {error}; not set",
                          name=spec.name.decode("latin-1"), error=str(e), flow_id=flow.id)
                continue
            if value:
                headers.add(spec.name, value)


# -- modify_body -------------------------------------------------------------


@attrs.frozen
class BodySpec:
    """
    One modify_body rule: ``SEP[filterSEP]regexSEP[@]replacement``.

    :ivar filter: Which messages it applies to (``None``: every request and
        every response).
    :ivar pattern: Searched in the decoded body (bytes, ``re.DOTALL``).
    :ivar replacement: Put in place of each match, literally (no group
        references, as in mitmproxy), or ``@PATH`` of a file holding it
        (read each time).
    """

    filter: Filter | None
    pattern: re.Pattern[bytes]
    replacement: str

    @property
    def reads_bodies(self) -> bool:
        """Whether the filter has a body operator, so it cannot be decided on headers."""
        return self.filter is not None and bool(self.filter.operators & _BODY_OPERATORS)


def parse_body_spec(option: str) -> BodySpec:
    """
    Read a modify_body spec such as ``|~s|regex|replacement`` or
    ``|~q|foo|@~/payload``.

    :raises ValueError: with a one-line reason.
    """
    flow_filter, (regex, replacement) = split_spec(option, ["regex", "replacement"])
    try:
        pattern = re.compile(unescape(regex), re.DOTALL)
    except re.error as e:
        raise ValueError(f"regex {regex!r}: {e}") from None
    _checked_replacement(replacement)
    return BodySpec(flow_filter, pattern, replacement)


_EVENT_STREAM = b"text/event-stream"


def _literal(replacement: bytes) -> Callable[[re.Match[bytes]], bytes]:
    """What :meth:`re.Pattern.sub` puts for a match: *replacement*, no group references."""
    return lambda _: replacement


class ModifyBody(Addon):
    """
    Replace what a regex matches in bodies: in ``request`` on the request
    (of a flow not answered yet) and in ``response`` on the response, for
    each rule whose filter matches the flow then, in rule order.  The body
    is decoded from its Content-Encoding first and encoded again after
    (Content-Length follows).

    Bodies must be whole for this, and the proxy streams them by default.
    This addon does not make every body buffered (``stream_bodies`` is
    ``True``): in ``requestheaders`` and ``responseheaders`` it asks for
    the body to be buffered (``stream = False``) only when a rule's filter
    matches the flow's headers, or has a body operator and so may match
    once the body is read.  A buffered body longer than the proxy's body
    limit is streamed after all, and is then not modified (a warning is
    logged), as a body another hook asked to stream; server-sent events
    (``text/event-stream``) stay streamed.
    """

    stream_bodies = True  # buffers only the bodies its rules may change

    def __init__(self, specs: Iterable[str | BodySpec]) -> None:
        """
        :param specs: Rules as text (:func:`parse_body_spec`) or parsed.
        :raises ValueError: for a rule that cannot be read.
        """
        self.specs = _specs(specs, parse_body_spec)

    def _may_match(self, flow: HTTPFlow) -> bool:
        return any(spec.reads_bodies or _matches(spec.filter, flow) for spec in self.specs)

    def requestheaders(self, flow: Any) -> None:
        """Have the request body buffered if a rule may apply to it."""
        if _acting(flow) and flow.request.stream is True and self._may_match(flow):
            flow.request.stream = False

    def responseheaders(self, flow: Any) -> None:
        """Have the response body buffered if a rule may apply to it."""
        response = flow.response
        if not (flow.live and flow.error is None and response.stream is True):
            return
        content_type = response.headers.get_raw(b"content-type") or b""
        if not content_type.lower().startswith(_EVENT_STREAM) and self._may_match(flow):
            response.stream = False

    def request(self, flow: Any) -> None:
        """Apply the matching rules to *flow*'s request body."""
        if _acting(flow):
            self._run(flow, flow.request, "request")

    def response(self, flow: Any) -> None:
        """Apply the matching rules to *flow*'s response body."""
        # A streamed response was relayed already (the flow is no longer
        # live): _run says it was not modified.
        if flow.error is None and (flow.live or flow.response.stream):
            self._run(flow, flow.response, "response")

    def _run(self, flow: Any, message: Message, side: str) -> None:
        matching = [spec for spec in self.specs if _matches(spec.filter, flow)]
        if not matching:
            return
        if message.stream or message.raw_content is None or message.truncated:
            _log.warn("modify_body: the {side} body of {url} was streamed, not modified",
                      side=side, url=flow.request.pretty_url, flow_id=flow.id)
            return
        content = original = message.get_content(strict=False) or b""
        for spec in matching:
            try:
                replacement = _replacement(spec.replacement)
            except (OSError, ValueError) as e:
                _log.warn("modify_body: {error}; rule skipped", error=str(e), flow_id=flow.id)
                continue
            content = spec.pattern.sub(_literal(replacement), content)
        if content != original:
            message.set_content(content)
