"""
mitmproxy's own filter tests, run against :mod:`twistproxy.filters`.

The corpus below is every expression mitmproxy's
``test/mitmproxy/test_flowfilter.py`` (at mitmproxy 8fc25b30) evaluates on
an HTTP flow, a WebSocket flow or a flow of no protocol, with the answer
mitmproxy's test asserts, on twistproxy flows built as mitmproxy's
``tflow`` helpers build theirs.  Every one must parse and give mitmproxy's
answer.  mitmproxy's TCP, UDP and DNS flows have no twistproxy counterpart:
their operators are refused with a message that says so.  The tests of
``~src``, ``~dst``, ``~meta``, ``~marker`` and ``~comment`` beyond the
corpus follow it.
"""

from __future__ import annotations

from collections.abc import Callable

from twisted.trial.unittest import SynchronousTestCase
from wsproto.frame_protocol import Opcode

from twistproxy.connection import Client, Server
from twistproxy.filters import FilterError, parse
from twistproxy.flow import Error, Flow
from twistproxy.headers import Headers
from twistproxy.http import HTTPFlow, Request, Response
from twistproxy.websocket import WebSocketData, WebSocketMessage


def _client() -> Client:
    """mitmproxy's ``tclient_conn``: the client at 127.0.0.1:22."""
    return Client(peername=("127.0.0.1", 22), sockname=("", 0), sni="address")


def _server() -> Server:
    """mitmproxy's ``tserver_conn``: the origin at address:22."""
    return Server(address=("address", 22), peername=("192.168.0.1", 22), sockname=("address", 22))


def _request() -> Request:
    """mitmproxy's ``treq``: ``GET http://address:22/path``, body ``content``."""
    headers = Headers([(b"header", b"qvalue"), (b"content-length", b"7")])
    return Request("address", 22, "GET", "http", "", "/path", "HTTP/1.1", headers, b"content")


def _response() -> Response:
    """mitmproxy's ``tresp``: a 200 with body ``message``."""
    headers = Headers([(b"header-response", b"svalue"), (b"content-length", b"7")])
    return Response("HTTP/1.1", 200, "OK", headers, b"message")


def tflow(resp: bool = False, err: bool = False) -> HTTPFlow:
    """mitmproxy's ``tflow``."""
    flow = HTTPFlow(_client(), _server(), live=True, now=lambda: 946681200.0)
    flow.request = _request()
    flow.response = _response() if resp else None
    flow.error = Error("error", 946681207.0) if err else None
    return flow


def twebsocketflow() -> HTTPFlow:
    """mitmproxy's ``twebsocketflow``: a 101 and three messages."""
    flow = HTTPFlow(_client(), _server(), live=True, now=lambda: 946681200.0)
    flow.request = Request(
        "example.com", 80, "GET", "http", "example.com", "/ws", "HTTP/1.1",
        Headers(connection="upgrade", upgrade="websocket", sec_websocket_version="13",
                sec_websocket_key="1234"),
        b"",
    )
    flow.response = Response(
        "HTTP/1.1", 101, "Switching Protocols",
        Headers(connection="upgrade", upgrade="websocket", sec_websocket_accept=""), b"",
    )
    websocket = WebSocketData()
    websocket.messages = [
        WebSocketMessage(Opcode.BINARY, True, b"hello binary", 946681203.0),
        WebSocketMessage(Opcode.TEXT, True, b"hello text", 946681204.0),
        WebSocketMessage(Opcode.TEXT, False, b"it's me", 946681205.0),
    ]
    websocket.close_code, websocket.close_reason = 1000, "Close Reason"
    flow.websocket = websocket
    return flow


def tdummyflow(err: bool = False) -> Flow:
    """mitmproxy's ``tdummyflow``: a flow of no protocol."""
    flow = Flow(_client(), _server(), live=True, now=lambda: 946681200.0)
    flow.error = Error("error", 946681207.0) if err else None
    return flow


def _with(make: Callable[[], Flow], change: Callable[[Flow], object]) -> Callable[[], Flow]:
    """:returns: A maker of *make*'s flows with *change* applied."""

    def changed() -> Flow:
        flow = make()
        change(flow)
        return flow

    return changed


def _http(change: Callable[[HTTPFlow], object], resp: bool = False) -> Callable[[], Flow]:
    """:returns: A maker of :func:`tflow` flows with *change* applied."""
    return _with(lambda: tflow(resp), change)  # type: ignore[arg-type]


def _metadata(flow: Flow) -> None:
    flow.metadata.update({"a": 1, "b": "string", "c": {"key": "value"}})


def _gzipped(resp: bool) -> Callable[[], Flow]:
    """:returns: A maker of :func:`tflow` flows with gzip-encoded bodies."""

    def encode(flow: HTTPFlow) -> None:
        assert flow.request is not None
        flow.request.encode("gzip")
        if flow.response is not None:
            flow.response.encode("gzip")

    return _http(encode, resp)


def _response_text(text: str) -> Callable[[Flow], None]:
    """:returns: A change that sets the response's text (mitmproxy's ``.text =``)."""

    def change(flow: Flow) -> None:
        assert isinstance(flow, HTTPFlow) and flow.response is not None
        flow.response.text = text

    return change


def _response_header(name: str, value: str) -> Callable[[Flow], None]:
    """:returns: A change that sets the response's header *name* to *value*."""

    def change(flow: Flow) -> None:
        assert isinstance(flow, HTTPFlow) and flow.response is not None
        flow.response.headers[name] = value

    return change


def _content_type(side: str) -> Callable[[HTTPFlow], None]:
    """:returns: A change that sets the Content-Type of *side* to ``text/json``."""

    def change(flow: HTTPFlow) -> None:
        getattr(flow, side).headers["content-type"] = "text/json"

    return change


def _body_cases(
    q: Callable[[], Flow], s: Callable[[], Flow]
) -> list[tuple[str, Callable[[], Flow], str, bool]]:
    """mitmproxy's ``match_body`` on a request flow *q* and a response flow *s*."""
    cases = [
        ("~b nonexistent", q, False), ("~b content", q, True), ("~b message", s, True),
        ("~bq nomatch", s, False), ("~bq content", q, True), ("~bq content", s, True),
        ("~bq message", q, False), ("~bq message", s, False),
        ("~bs nomatch", s, False), ("~bs content", q, False), ("~bs content", s, False),
        ("~bs message", q, False),
    ]
    out = [("match_body", make, expression, answer) for expression, make, answer in cases]
    for text in ("яч", "测试", "ॐ", "لله", "θεός", "לוהים", "神", "하나님", "Äÿ", "message"):
        out.append(("match_body", _with(s, _response_text(text)), f"~bs {text}", True))
    return out


def _corpus() -> list[tuple[str, Callable[[], Flow], str, bool]]:
    """
    :returns: ``(mitmproxy test, flow maker, expression, mitmproxy's answer)``
        for every HTTP, WebSocket and no-protocol case of mitmproxy's tests.
    """
    req, resp, err = tflow, lambda: tflow(resp=True), lambda: tflow(err=True)
    js = _with(resp, _response_header("content-type", "text/javascript"))
    q_json = _http(_content_type("request"))
    s_json = _http(_content_type("response"), True)

    def s_json_request(flow: HTTPFlow) -> None:
        assert flow.request is not None and flow.response is not None
        del flow.response.headers["content-type"]
        flow.request.headers["content-type"] = "text/json"

    moved = _with(s_json, s_json_request)  # type: ignore[arg-type]
    default_mark = _http(lambda f: setattr(f, "marked", ":default:"))
    x_mark = _http(lambda f: setattr(f, "marked", "X"))
    oink = _http(lambda f: setattr(f.request, "method", "oink"))
    no_request = _http(lambda f: setattr(f, "request", None))
    no_peer = _http(lambda f: setattr(f.client_conn, "peername", None))
    no_address = _http(lambda f: setattr(f.server_conn, "address", None))
    replay_q = _http(lambda f: setattr(f, "is_replay", "request"))
    replay_s = _http(lambda f: setattr(f, "is_replay", "response"))
    meta = _with(tflow, _metadata)
    ws, dummy, dummy_err = twebsocketflow, tdummyflow, lambda: tdummyflow(err=True)
    commented = _with(dummy, lambda f: setattr(f, "comment", "comment"))
    table: dict[str, list[tuple[Callable[[], Flow], str, bool]]] = {
        "http.test_http": [(req, "~http", True)],
        "http.test_asset": [(resp, "~a", False), (js, "~a", True)],
        "http.test_fcontenttype": [
            (req, "~t content", False), (resp, "~t content", False), (q_json, "~t json", True),
            (q_json, "~tq json", True), (q_json, "~ts json", False), (s_json, "~t json", True),
            (moved, "~t json", True), (moved, "~tq json", True), (moved, "~ts json", False),
        ],
        "http.test_freq_fresp": [
            (req, "~q", True), (resp, "~q", False), (req, "~s", False), (resp, "~s", True),
        ],
        "http.test_ferr": [(err, "~e", True)],
        "http.test_fmarked": [(req, "~marked", False), (default_mark, "~marked", True)],
        "http.test_fmarker_char": [(default_mark, "~marker X", False), (x_mark, "~marker X", True)],
        "http.test_head": [
            (req, "~h nonexistent", False), (req, "~h qvalue", True), (req, "~h header", True),
            (req, "~h 'header: qvalue'", True), (resp, "~h 'header: qvalue'", True),
            (resp, "~h 'header-response: svalue'", True), (resp, "~hq 'header: qvalue'", True),
            (resp, "~hq 'header-response: svalue'", False), (req, "~hq 'header: qvalue'", True),
            (req, "~hq 'header-request: svalue'", False), (resp, "~hs 'header: qvalue'", False),
            (resp, "~hs 'header-response: svalue'", True), (req, "~hs 'header: qvalue'", False),
        ],
        "http.test_case_sensitive": [
            (req, "~m get", True), (req, "~m GET", True), (req, "~m post", False),
            (oink, "~m get", False),
        ],
        "http.test_domain": [(req, "~d address", True), (req, "~d none", False)],
        "http.test_url": [
            (req, "~u address", True), (req, "~u address:22/path", True),
            (req, "~u moo/path", False), (no_request, "~u address", False),
            (resp, "~u address", True), (resp, "~u address:22/path", True),
            (resp, "~u moo/path", False),
        ],
        "http.test_code": [(req, "~c 200", False), (resp, "~c 200", True), (resp, "~c 201", False)],
        "http.test_src": [
            (req, "~src 127.0.0.1", True), (req, "~src foobar", False), (req, "~src :22", True),
            (req, "~src :99", False), (req, "~src 127.0.0.1:22", True),
            (no_peer, "~src address:22", False),
        ],
        "http.test_dst": [
            (req, "~dst address", True), (req, "~dst foobar", False), (req, "~dst :22", True),
            (req, "~dst :99", False), (req, "~dst address:22", True),
            (no_address, "~dst address:22", False),
        ],
        "http.test_and": [
            (resp, "~c 200 & ~h head", True), (resp, "~c 200 & ~h nohead", False),
            (resp, "(~c 200 & ~h head) & ~b content", True),
            (resp, "(~c 200 & ~h head) & ~b nonexistent", False),
            (resp, "(~c 200 & ~h nohead) & ~b content", False),
        ],
        "http.test_or": [
            (resp, "~c 200 | ~h nohead", True), (resp, "~c 201 | ~h head", True),
            (resp, "~c 201 | ~h nohead", False), (resp, "(~c 201 | ~h nohead) | ~s", True),
        ],
        "http.test_not": [
            (resp, "! ~c 200", False), (resp, "! ~c 201", True), (resp, "!~c 201 !~c 202", True),
            (resp, "!~c 201 !~c 200", False),
        ],
        "http.test_replay": [
            (req, "~replay", False), (replay_q, "~replay", True), (replay_q, "~replayq", True),
            (replay_q, "~replays", False), (replay_s, "~replay", True),
            (replay_s, "~replayq", False), (replay_s, "~replays", True),
        ],
        "http.test_metadata": [
            (meta, "~meta a", True), (meta, "~meta no", False), (meta, "~meta string", True),
            (meta, "~meta key", True), (meta, "~meta value", True),
            (meta, '~meta "b: string"', True), (meta, "~meta \"'key': 'value'\"", True),
        ],
        "websocket.test_websocket": [(ws, "~websocket", True), (ws, "~http", True)],
        "websocket.test_handshake": [(req, "~websocket", False), (resp, "~websocket", False)],
        "websocket.test_domain": [(ws, "~d example.com", True), (ws, "~d none", False)],
        "websocket.test_url": [
            (ws, "~u example.com", True), (ws, "~u example.com/ws", True),
            (ws, "~u moo/path", False),
        ],
        "websocket.test_body": [
            (ws, "~b hello", True), (ws, "~b me", True), (ws, "~b nonexistent", False),
            (ws, "~bq hello", True), (ws, "~bq me", False), (ws, "~bq nonexistent", False),
            (ws, "~bs me", True), (ws, "~bs hello", False), (ws, "~bs nonexistent", False),
        ],
        "websocket.test_src": [
            (ws, "~src 127.0.0.1", True), (ws, "~src foobar", False), (ws, "~src :22", True),
            (ws, "~src :99", False), (ws, "~src 127.0.0.1:22", True),
        ],
        "websocket.test_dst": [
            (ws, "~dst address", True), (ws, "~dst foobar", False), (ws, "~dst :22", True),
            (ws, "~dst :99", False), (ws, "~dst address:22", True),
        ],
        "websocket.test_and": [
            (ws, "~b hello & ~b me", True), (ws, "~src wrongaddress & ~b hello", False),
            (ws, "(~src :22 & ~dst :22) & ~b hello", True),
            (ws, "(~src address:22 & ~dst :22) & ~b nonexistent", False),
            (ws, "(~src address:22 & ~dst :99) & ~b hello", False),
        ],
        "websocket.test_or": [
            (ws, "~b hello | ~b me", True), (ws, "~src :22 | ~b me", True),
            (ws, "~src :99 | ~dst :99", False), (ws, "(~src :22 | ~dst :22) | ~b me", True),
        ],
        "websocket.test_not": [
            (ws, "! ~src :22", False), (ws, "! ~src :99", True), (ws, "!~src :99 !~src :99", True),
            (ws, "!~src :99 !~src :22", False),
        ],
        "dummy.test_filters": [
            (dummy, "~all", True), (dummy, "~a", False), (dummy, "~b whatever", False),
            (dummy, "~bq whatever", False), (dummy, "~bs whatever", False),
            (dummy, "~c 0", False), (dummy, "~d whatever", False), (dummy, "~dst address", True),
            (dummy, "~dst nonexistent", False), (dummy_err, "~e", True), (dummy, "~e", False),
            (dummy, "~http", False), (dummy, "~websocket", False),
            (dummy, "~h whatever", False), (dummy, "~hq whatever", False),
            (dummy, "~hs whatever", False), (dummy, "~m whatever", False), (dummy, "~s", False),
            (dummy, "~src 127.0.0.1", True), (dummy, "~src nonexistent", False),
            (dummy, "~t whatever", False), (dummy, "~tq whatever", False),
            (dummy, "~ts whatever", False), (dummy, "~u whatever", False), (dummy, "~q", False),
            (dummy, "~comment .", False), (commented, "~comment .", True),
        ],
        "test_match": [(req, "foobar", False)],
    }
    cases = [
        (name, make, expression, answer)
        for name, rows in table.items()
        for make, expression, answer in rows
    ]
    cases += _body_cases(req, resp)
    gzipped = _body_cases(_gzipped(False), _gzipped(True))
    cases += [(f"{name} (gzip)", make, e, a) for name, make, e, a in gzipped]
    return cases


_PARSE_ONLY = [
    "~q", "~c 10", "~m foobar", "~u foobar", "~q ~c 10", "~replay", "~replayq", "~replays",
    "~comment .", "~s шгн", "foobar ~h rex", "~u 'foo ~u bar' ~u voing", r"~u 'foobar\"\''",
    r'~u "foo \'bar"', "(~u foobar & ~h voing)", "!~h test", "!(~u test & ~h bar)",
    "~u foobar | ~h voing", "~u foobar & ~h voing", "~hq 'header: qvalue'", "~a", "~marked",
    "~http", "~websocket", "~all", "~e", "~t content", "~tq content", "~ts content", "~h rex",
    "~hq rex", "~hs rex", "~b rex", "~bq rex", "~bs rex", "~m get", "~d example.com", "~u foo",
    "~src 127.0.0.1", "~dst example.com:443", "~meta foo", "~marker red", "~comment note",
    "~c 404", "~u foo & ~c 200", "~u foo | ~c 200", "!(~u foo | ~c 200)", "test",
]
"""The expressions mitmproxy's tests only parse (test_simple, test_quoting, ...)."""


class MitmproxyCorpusTests(SynchronousTestCase):
    """
    mitmproxy's filter tests give mitmproxy's answers here.
    """

    def test_answers(self) -> None:
        """
        Every expression of the corpus parses and gives the answer
        mitmproxy's test asserts.
        """
        cases = _corpus()
        wrong = [
            (name, expression, answer)
            for name, make, expression, answer in cases
            if parse(expression)(make()) != answer
        ]
        self.assertEqual(wrong, [])
        self.assertEqual(len(cases), 202)

    def test_parses(self) -> None:
        """
        The expressions mitmproxy's tests parse without evaluating parse
        here too, and read their quoted arguments as mitmproxy does.
        """
        for expression in _PARSE_ONLY:
            parse(expression)
        self.assertTrue(repr(parse(r"~u 'foobar\"\''")).endswith(': ~u "foobar\\"\'">'))
        self.assertTrue(repr(parse(r'~u "foo \'bar"')).endswith(': ~u "foo \'bar">'))

    def test_refused(self) -> None:
        """
        What mitmproxy refuses is refused: an empty expression, an operator
        without its argument, an invalid regex, an invalid regex given
        to ``flowfilter.match``.
        """
        for expression in ("", "~b", "~h [", "[foobar"):
            self.assertRaises(FilterError, parse, expression)

    def test_other_protocols(self) -> None:
        """
        ``~tcp``, ``~udp`` and ``~dns`` (mitmproxy's TCP, UDP and DNS flows,
        which twistproxy does not record) are refused with a message that
        says so, where mitmproxy's tests use them.
        """
        for expression, position in (("~tcp", 0), ("~http & !~udp", 9), ("~dns", 0)):
            error = self.assertRaises(FilterError, parse, expression)
            self.assertEqual(error.position, position)
            name = expression[position + 1 : position + 4]
            self.assertEqual(
                error.reason,
                f"~{name} is mitmproxy's operator for {name.upper()} flows,"
                " which twistproxy does not record",
            )


class FlowOperatorTests(SynchronousTestCase):
    """
    Tests for ``~src``, ``~dst``, ``~meta``, ``~marker`` and ``~comment``
    beyond mitmproxy's corpus, and for body operators on WebSocket messages.
    """

    def test_addresses(self) -> None:
        """
        ``~src`` and ``~dst`` search ``host:port`` (an IPv6 host without
        brackets, as mitmproxy writes it); ``~dst`` does not match before
        the proxy connected.
        """
        flow = tflow()
        flow.client_conn.peername = ("::1", 5000)
        self.assertTrue(parse("~src ^::1:5000$")(flow))
        self.assertFalse(parse(r"~src \[")(flow))
        flow.server_conn = Server()
        self.assertFalse(parse("~dst ''")(flow))
        self.assertTrue(parse("!~dst ''")(flow))

    def test_meta_and_comment_lines(self) -> None:
        """
        ``~meta`` and ``~comment`` search their whole text, ``^`` and ``$``
        anchoring each line; a pattern may span lines.
        """
        flow = tflow()
        flow.metadata.update({"first": 1, "second": [2]})
        self.assertTrue(parse("~meta '^second: \\[2\\]$'")(flow))
        self.assertTrue(parse("~meta '1\\nsecond'")(flow))
        self.assertFalse(parse("~meta '^1'")(flow))
        self.assertFalse(parse("~meta .")(tflow()))
        flow.comment = "one\nTwo"
        self.assertTrue(parse("~comment ^two$")(flow))
        self.assertFalse(parse("~comment ^one$ & ~comment ^w")(flow))

    def test_marker(self) -> None:
        """
        ``~marker`` searches the marker; an unmarked flow matches only the
        empty pattern.
        """
        flow = tflow()
        self.assertFalse(parse("~marker .")(flow))
        self.assertTrue(parse("~marker ''")(flow))
        flow.marked = ":star:"
        self.assertTrue(parse("~marker ^:STAR:$")(flow))

    def test_websocket_bodies(self) -> None:
        """
        Body operators search a WebSocket's messages: ``~bq`` the client's,
        ``~bs`` the origin's, ``~b`` both; a flow without one only its bodies.
        """
        flow = twebsocketflow()
        self.assertTrue(parse("~bq 'hello binary'")(flow))
        self.assertFalse(parse("~bs 'hello binary'")(flow))
        self.assertTrue(parse("~bs \"it's\"")(flow))
        self.assertFalse(parse("~bq \"it's\"")(flow))
        flow.websocket = None
        self.assertFalse(parse("~b hello")(flow))

    def test_canonical_form(self) -> None:
        """
        The new operators show in a filter's ``repr`` as they parse back.
        """
        flt = parse("~src a ~dst b | ~meta c & !~marker d ~comment 'e f'")
        tree = '(~src "a" & (~dst "b" | (~meta "c" & !~marker "d")) & ~comment "e f")'
        self.assertEqual(repr(flt), f"<Filter {flt.expression!r}: {tree}>")
        self.assertEqual(repr(parse(tree)), f"<Filter {tree!r}: {tree}>")
