# -*- test-case-name: tests.test_filters -*-
r"""
Filter expressions: mitmproxy's flow filter syntax, for HTTP flows.

:func:`parse` turns an expression into a :class:`Filter`, a callable that
tells whether a flow matches.  Parse once and call many times: every regular
expression is compiled by :func:`parse`, and a filter reads (and decodes) a
body only when it has a body operator and evaluation reaches it.

Operators without an argument: ``~a`` (the response's Content-Type is
JavaScript, CSS, an image or a font), ``~e`` (the flow has an error), ``~q``
(an HTTP flow without a response), ``~s`` (with a response), ``~marked``,
``~replay``, ``~replayq`` (a replayed request), ``~replays`` (a replayed
response), ``~websocket`` (an HTTP flow switched to a WebSocket), ``~http``
and ``~all``.  With a regular expression: ``~b``,
``~bq``, ``~bs`` (either body, the request's, the response's), ``~h``,
``~hq``, ``~hs`` (a ``Name: value`` header line), ``~t``, ``~tq``, ``~ts``
(a Content-Type value), ``~d`` (the request's host or its Host header's
host), ``~m`` (the method), ``~mode`` (the mode of the listener that carried
the flow, as :func:`~twistproxy.modes.parse_mode` reads it: ``regular``,
``reverse:https://api.internal@8443``; twistproxy's own), ``~u`` (the
URL, absolute or built from the Host header), ``~src`` (the client's
address as ``host:port``), ``~dst`` (the address the proxy connected to for
the flow, ``host:port``), ``~meta`` (the flow's metadata, one ``key: value``
line per key), ``~marker`` (the flow's marker) and ``~comment`` (its
comment).  ``~c`` takes a status code.  A word or quoted string on its own
means ``~u``.  Operators on what a flow does not have (``~bs`` before the
response, any HTTP operator on a non-HTTP flow, ``~dst`` before the proxy
connected) do not match.  The body operators also search a WebSocket's
messages (``~bq`` the client's, ``~bs`` the origin's), as mitmproxy's do.
mitmproxy's ``~tcp``, ``~udp`` and ``~dns`` are refused with a message
saying so: twistproxy records HTTP flows only.

The grammar, loosest first (``{x}`` is zero or more ``x``)::

    filter   = sequence
    sequence = or_expr {or_expr}          # juxtaposition: an implicit &
    or_expr  = and_expr {"|" and_expr}
    and_expr = not_expr {"&" not_expr}
    not_expr = "!" not_expr | term
    term     = "(" sequence ")" | "~" name [argument] | argument
    argument = word | '"' chars '"' | "'" chars "'"

So ``!`` binds tightest, then ``&``, then ``|``, and terms written side by
side are joined by an ``&`` looser than ``|``: ``~q ~d a | ~d b`` is
``~q & (~d a | ~d b)``.  That is how mitmproxy reads them ("the default
binary operator is &", docs.mitmproxy.org/stable/concepts/filters; its
pyparsing grammar joins whole expressions), except that mitmproxy allows
juxtaposition only outside parentheses and we allow it inside too.

Tokens: whitespace separates tokens.  A word runs up to whitespace, a
parenthesis, ``~`` or a quote; ``!``, ``&`` and ``|`` are operators only
where a token starts and are regex characters inside a word (as in
mitmproxy), so ``~u a|b`` is the regex ``a|b`` and ``~d a|~s`` is
``~d "a|" ~s``: put spaces around operators.  An argument may start with
``!``, ``&`` or ``|``.  In a quoted string ``\\``, ``\"`` and ``\'`` are
escapes and any other backslash is kept, so ``"a\.b"`` is the regex
``a\.b`` (mitmproxy drops the backslash of every escape there).

Matching: :func:`re.search`, case-insensitive (mitmproxy's default; use
``(?-i:...)`` for a case-sensitive part).  Header lines and values are
``str`` (bytes decoded as UTF-8 with ``surrogateescape``), each line
searched on its own, so ``^`` and ``$`` anchor a line; ``~meta`` and
``~comment`` search their whole text with :data:`re.MULTILINE`, so there
too ``^`` and ``$`` anchor a line (mitmproxy's flags).  Bodies are searched
as ``bytes``, with their Content-Encoding undone (a body that does not
decode is searched as it is) and no charset applied: the pattern is
encoded as UTF-8 and compiled with :data:`re.DOTALL`, and case folding
is ASCII-only there.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Iterator
from typing import Any, AnyStr, Generic

import attrs

from twistproxy.flow import Flow
from twistproxy.http import HTTPFlow, Message, Request, Response

__all__ = ["Filter", "FilterError", "HostTest", "parse"]


class FilterError(ValueError):
    """
    A filter expression is invalid.

    The message names the problem and its column (counted from 1), then
    shows the expression (whitespace shown as spaces) with a caret under
    that column.

    :ivar expression: The expression given to :func:`parse`.
    :ivar position: The index in :attr:`expression` of the problem (its
        length for something missing at the end).
    :ivar reason: What is wrong, without the position.
    """

    def __init__(self, expression: str, position: int, reason: str) -> None:
        """
        :param expression: The whole expression.
        :param position: The index of the problem.
        :param reason: What is wrong.
        """
        self.expression = expression
        self.position = position
        self.reason = reason
        shown = "".join(" " if c.isspace() else c for c in expression)
        super().__init__(f"{reason} at column {position + 1}\n{shown}\n{' ' * position}^")


HostTest = Callable[[str, "re.Pattern[str]"], Callable[[Flow], bool]]
"""
How ``~d`` matches when :func:`parse` is given one: called with the
argument and its compiled regular expression, it returns the test of a flow.
"""


# The tree


class _Node:
    """
    A node of a parsed filter: called with a flow, it says whether the flow
    matches; ``str()`` gives it in filter syntax, fully parenthesized.
    """

    __slots__ = ()

    def __call__(self, flow: Flow) -> bool:
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self}>"


def _quote(value: str) -> str:
    """
    :returns: *value* as a double-quoted argument that parses back to it.
    """
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


@attrs.frozen(repr=False)
class _Flag(_Node):
    code: str
    test: Callable[[Flow], bool]

    def __call__(self, flow: Flow) -> bool:
        return self.test(flow)

    def __str__(self) -> str:
        return f"~{self.code}"


@attrs.frozen(repr=False)
class _Code(_Node):
    status: int

    def __call__(self, flow: Flow) -> bool:
        response = _response(flow)
        return response is not None and response.status_code == self.status

    def __str__(self) -> str:
        return f"~c {self.status}"


@attrs.frozen(repr=False)
class _Search(_Node, Generic[AnyStr]):
    code: str
    source: str
    pattern: re.Pattern[AnyStr]
    subjects: Callable[[Flow], Iterable[AnyStr]]

    def __call__(self, flow: Flow) -> bool:
        search = self.pattern.search
        return any(search(subject) is not None for subject in self.subjects(flow))

    def __str__(self) -> str:
        return f"~{self.code} {_quote(self.source)}"


@attrs.frozen(repr=False)
class _Test(_Flag):
    """An operator whose regex is matched by a test the caller gave :func:`parse`."""

    source: str

    def __str__(self) -> str:
        return f"~{self.code} {_quote(self.source)}"


@attrs.frozen(repr=False)
class _Not(_Node):
    child: _Node

    def __call__(self, flow: Flow) -> bool:
        return not self.child(flow)

    def __str__(self) -> str:
        return f"!{self.child}"


@attrs.frozen(repr=False)
class _Join(_Node):
    operator: str  # "&" or "|"
    children: tuple[_Node, ...]

    def __call__(self, flow: Flow) -> bool:
        test = all if self.operator == "&" else any
        return test(child(flow) for child in self.children)

    def __str__(self) -> str:
        return "(" + f" {self.operator} ".join(map(str, self.children)) + ")"


@attrs.frozen
class Filter:
    """
    A parsed filter expression; made by :func:`parse`.

    Calling it with a :class:`~twistproxy.flow.Flow` returns whether the
    flow matches.  Its ``repr`` shows the expression and how it was read,
    fully parenthesized.

    :ivar expression: The expression it was parsed from.
    """

    expression: str
    _root: _Node = attrs.field(repr=False)

    def __call__(self, flow: Flow) -> bool:
        """
        :param flow: The flow to test; it is not changed.
        :returns: Whether *flow* matches.
        """
        return self._root(flow)

    def __repr__(self) -> str:
        return f"<Filter {self.expression!r}: {self._root}>"

    @property
    def operators(self) -> frozenset[str]:
        """
        The operators the expression uses, without their ``~`` (``{"d",
        "q"}`` for ``~d example & ~q``; a bare word is ``"u"``): a caller can
        tell, say, whether matching may need a body (``b``, ``bq``, ``bs``).
        """
        return frozenset(_operators(self._root))


def _operators(node: _Node) -> Iterator[str]:
    """The operator codes in the tree under *node*."""
    if isinstance(node, _Not):
        yield from _operators(node.child)
    elif isinstance(node, _Join):
        for child in node.children:
            yield from _operators(child)
    elif isinstance(node, _Code):
        yield "c"
    else:
        yield getattr(node, "code", "")


# What the operators look at


def _response(flow: Flow) -> Response | None:
    return flow.response if isinstance(flow, HTTPFlow) else None


def _request(flow: Flow) -> Request | None:
    return flow.request if isinstance(flow, HTTPFlow) else None


def _from_request(get: Callable[[Request], Iterable[str]]) -> Callable[[Flow], Iterable[str]]:
    def strings(flow: Flow) -> Iterable[str]:
        request = _request(flow)
        return get(request) if request is not None else ()

    return strings


def _from_messages(
    request: bool, response: bool, get: Callable[[Message], Iterable[AnyStr]]
) -> Callable[[Flow], Iterator[AnyStr]]:
    def subjects(flow: Flow) -> Iterator[AnyStr]:
        if isinstance(flow, HTTPFlow):
            if request and flow.request is not None:
                yield from get(flow.request)
            if response and flow.response is not None:
                yield from get(flow.response)

    return subjects


def _urls(request: Request) -> tuple[str, ...]:
    url, pretty_url = request.url, request.pretty_url
    return (url,) if url == pretty_url else (url, pretty_url)


def _body(message: Message) -> Iterable[bytes]:
    content = message.get_content(strict=False)
    return () if content is None else (content,)


def _bodies(request: bool, response: bool) -> Callable[[Flow], Iterator[bytes]]:
    """
    :returns: The subjects of a body operator: the chosen messages' bodies,
        then the WebSocket messages sent by the chosen sides.
    """
    messages = _from_messages(request, response, _body)

    def subjects(flow: Flow) -> Iterator[bytes]:
        yield from messages(flow)
        websocket = getattr(flow, "websocket", None)
        if websocket is not None:
            for message in websocket.messages:
                sent_by_chosen_side = request if message.from_client else response
                if sent_by_chosen_side:
                    yield message.content

    return subjects


def _address(address: tuple[str, int] | None) -> tuple[str, ...]:
    return () if address is None else (f"{address[0]}:{address[1]}",)


def _metadata(flow: Flow) -> tuple[str]:
    return ("\n".join(f"{key}: {value}" for key, value in flow.metadata.items()),)


def _header_lines(message: Message) -> Iterator[str]:
    return (f"{name}: {value}" for name, value in message.headers.items(multi=True))


def _content_types(message: Message) -> list[str]:
    return message.headers.get_all(b"content-type")


_ASSET_TYPES = frozenset(
    {
        b"text/javascript",
        b"application/javascript",
        b"application/x-javascript",
        b"application/ecmascript",
        b"text/ecmascript",
        b"text/css",
    }
)
_ASSET_PREFIXES = (b"image/", b"font/", b"application/font-", b"application/x-font-")


def _is_asset(flow: Flow) -> bool:
    response = _response(flow)
    if response is None:
        return False
    for value in response.headers.get_all_raw(b"content-type"):
        media_type = value.split(b";", 1)[0].strip().lower()
        if media_type in _ASSET_TYPES or media_type.startswith(_ASSET_PREFIXES):
            return True
    return False


_FLAGS: dict[str, Callable[[Flow], bool]] = {
    "a": _is_asset,
    "e": lambda flow: flow.error is not None,
    "q": lambda flow: isinstance(flow, HTTPFlow) and flow.response is None,
    "s": lambda flow: _response(flow) is not None,
    "marked": lambda flow: bool(flow.marked),
    "replay": lambda flow: flow.is_replay is not None,
    "replayq": lambda flow: flow.is_replay == "request",
    "replays": lambda flow: flow.is_replay == "response",
    "http": lambda flow: isinstance(flow, HTTPFlow),
    "websocket": lambda flow: getattr(flow, "websocket", None) is not None,
    "all": lambda flow: True,
}

_TEXT_OPERATORS: dict[str, Callable[[Flow], Iterable[str]]] = {
    "d": _from_request(lambda request: (request.host, request.pretty_host)),
    "h": _from_messages(True, True, _header_lines),
    "hq": _from_messages(True, False, _header_lines),
    "hs": _from_messages(False, True, _header_lines),
    "m": _from_request(lambda request: (request.method,)),
    "mode": lambda flow: (flow.mode,),
    "t": _from_messages(True, True, _content_types),
    "tq": _from_messages(True, False, _content_types),
    "ts": _from_messages(False, True, _content_types),
    "u": _from_request(_urls),
    "src": lambda flow: _address(flow.client_conn.peername),
    "dst": lambda flow: _address(flow.server_conn.address),
    "meta": _metadata,
    "marker": lambda flow: (flow.marked,),
    "comment": lambda flow: (flow.comment,),
}

_MULTILINE = frozenset({"meta", "comment"})
"""The text operators whose one subject may hold several lines."""

_NOT_RECORDED = {"tcp": "TCP", "udp": "UDP", "dns": "DNS"}
"""mitmproxy's operators for kinds of flows twistproxy does not record."""

_BYTES_OPERATORS: dict[str, Callable[[Flow], Iterable[bytes]]] = {
    "b": _bodies(True, True),
    "bq": _bodies(True, False),
    "bs": _bodies(False, True),
}


# The parser


@attrs.frozen
class _Token:
    """
    :ivar kind: ``"("``, ``")"``, ``"!"``, ``"&"``, ``"|"``, ``"op"``,
        ``"word"``, ``"string"`` or ``"end"``.
    :ivar start: Where the token starts in the expression.
    :ivar value: The operator (``"~d"``) or the argument, unquoted.
    :ivar offsets: For an argument: where each of its characters comes from
        in the expression, then where the token ends (for error positions).
    """

    kind: str
    start: int
    value: str = ""
    offsets: tuple[int, ...] = ()


_OPERATOR_NAME = re.compile(r"~[A-Za-z0-9_]*")
_ESCAPABLE = "\\\"'"


class _Parser:
    """
    A recursive-descent parser over tokens read on demand: an argument is
    read with other rules than a term (see the module docstring).
    """

    def __init__(self, expression: str, hosts: HostTest | None = None) -> None:
        self._text = expression
        self._hosts = hosts
        self._pos = 0
        self._peeked: _Token | None = None
        self._last = ""

    def _error(self, position: int, reason: str) -> FilterError:
        return FilterError(self._text, position, reason)

    def _read(self, argument: bool = False) -> _Token:
        text = self._text
        pos = self._pos
        while pos < len(text) and text[pos].isspace():
            pos += 1
        if pos == len(text):
            self._pos = pos
            return _Token("end", pos)
        char = text[pos]
        if char in "()" or (char in "!&|~" and not argument):
            if char == "~":
                match = _OPERATOR_NAME.match(text, pos)
                assert match is not None
                self._pos = match.end()
                return _Token("op", pos, match.group())
            self._pos = pos + 1
            return _Token(char, pos, char)
        if char in "\"'":
            return self._read_string(pos)
        end = pos
        while end < len(text) and not text[end].isspace() and text[end] not in "()~\"'":
            end += 1
        if end == pos:  # "~" where an argument should be
            self._pos = pos
            return _Token("~", pos, "~")
        self._pos = end
        return _Token("word", pos, text[pos:end], (*range(pos, end), end))

    def _read_string(self, start: int) -> _Token:
        text = self._text
        quote = text[start]
        chars: list[str] = []
        offsets: list[int] = []
        pos = start + 1
        while pos < len(text) and text[pos] != quote:
            offsets.append(pos)
            if text[pos] == "\\" and pos + 1 < len(text) and text[pos + 1] in _ESCAPABLE:
                pos += 1
            chars.append(text[pos])
            pos += 1
        if pos == len(text):
            raise self._error(start, "unterminated string")
        self._pos = pos + 1
        return _Token("string", start, "".join(chars), (*offsets, pos))

    def _peek(self) -> _Token:
        if self._peeked is None:
            self._peeked = self._read()
        return self._peeked

    def _next(self) -> _Token:
        token = self._peek()
        self._peeked = None
        self._last = token.value
        return token

    def parse(self) -> _Node:
        if not self._text or self._text.isspace():
            raise self._error(0, "empty filter expression")
        return self._sequence(None)

    def _sequence(self, opening: _Token | None) -> _Node:
        items = [self._or()]
        while True:
            token = self._peek()
            if token.kind == "end":
                if opening is not None:
                    raise self._error(opening.start, "'(' is never closed")
                break
            if token.kind == ")":
                if opening is None:
                    raise self._error(token.start, "unmatched ')'")
                break
            items.append(self._or())
        return items[0] if len(items) == 1 else _Join("&", tuple(items))

    def _or(self) -> _Node:
        items = [self._and()]
        while self._peek().kind == "|":
            self._next()
            items.append(self._and())
        return items[0] if len(items) == 1 else _Join("|", tuple(items))

    def _and(self) -> _Node:
        items = [self._not()]
        while self._peek().kind == "&":
            self._next()
            items.append(self._not())
        return items[0] if len(items) == 1 else _Join("&", tuple(items))

    def _not(self) -> _Node:
        if self._peek().kind == "!":
            self._next()
            return _Not(self._not())
        return self._term()

    def _term(self) -> _Node:
        after = self._last
        token = self._next()
        if token.kind == "(":
            node = self._sequence(token)
            self._next()  # the ")"
            return node
        if token.kind == "op":
            return self._operator(token)
        if token.kind in ("word", "string"):
            return self._search("u", token, _TEXT_OPERATORS["u"])
        if token.kind == "end":
            raise self._error(token.start, f"expected a filter term after {after!r}")
        raise self._error(token.start, f"expected a filter term, found {token.value!r}")

    def _operator(self, token: _Token) -> _Node:
        name = token.value[1:]
        if name in _FLAGS:
            return _Flag(name, _FLAGS[name])
        if name == "c":
            argument = self._argument("expected a status code")
            digits = argument.value
            if digits.isascii() and digits.isdigit():
                try:
                    return _Code(int(digits))
                except ValueError:  # more digits than int() takes
                    pass
            raise self._error(argument.start, "expected a status code")
        if name in _TEXT_OPERATORS:
            reason = f"expected a regular expression after {token.value}"
            search = self._search(name, self._argument(reason), _TEXT_OPERATORS[name])
            if name == "d" and self._hosts is not None:
                return _Test(name, self._hosts(search.source, search.pattern), search.source)
            return search
        if name in _BYTES_OPERATORS:
            reason = f"expected a regular expression after {token.value}"
            return self._search(name, self._argument(reason), _BYTES_OPERATORS[name])
        if name in _NOT_RECORDED:
            reason = f"{token.value} is mitmproxy's operator for {_NOT_RECORDED[name]} flows"
            raise self._error(token.start, f"{reason}, which twistproxy does not record")
        raise self._error(token.start, f"unknown operator {token.value!r}")

    def _argument(self, reason: str) -> _Token:
        token = self._read(argument=True)
        if token.kind not in ("word", "string"):
            raise self._error(token.start, reason)
        return token

    def _search(
        self, code: str, argument: _Token, subjects: Callable[[Flow], Iterable[Any]]
    ) -> _Search[Any]:
        source: str | bytes = argument.value
        flags = re.IGNORECASE
        if code in _BYTES_OPERATORS:
            flags |= re.DOTALL
            try:
                source = argument.value.encode("utf-8", "surrogateescape")
            except UnicodeEncodeError as e:
                raise self._error(argument.offsets[e.start], "not encodable as UTF-8") from None
        elif code in _MULTILINE:
            flags |= re.MULTILINE
        try:
            pattern = re.compile(source, flags)
        except re.error as e:
            position = argument.start
            if e.pos is not None and len(source) == len(argument.value):
                position = argument.offsets[e.pos]
            raise self._error(position, f"invalid regular expression: {e.msg}") from None
        return _Search(code, argument.value, pattern, subjects)


def parse(expression: str, *, hosts: HostTest | None = None) -> Filter:
    """
    Parse a filter expression (see the module docstring for the syntax).

    :param expression: The expression, for example ``~d example\\.com & ~s``.
    :param hosts: How ``~d`` matches, instead of searching its regex in the
        request's host (mitmproxy's meaning, the default): the host policy
        (:class:`~twistproxy.addons.access.HostPolicy`) matches whole host
        names this way.
    :returns: The filter, its regular expressions compiled.
    :raises FilterError: if *expression* is empty, invalid or nested too
        deeply: its :attr:`~FilterError.position` is where the problem is.
    """
    parser = _Parser(expression, hosts)
    try:
        return Filter(expression, parser.parse())
    except RecursionError:
        raise FilterError(expression, parser._pos, "nested too deeply") from None
