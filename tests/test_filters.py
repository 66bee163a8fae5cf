"""
Tests for :mod:`twistproxy.filters`.
"""

from __future__ import annotations

import gzip
import itertools
from collections.abc import Callable

from twisted.trial.unittest import SynchronousTestCase

from twistproxy import _encoding
from twistproxy.connection import Client, Server
from twistproxy.filters import Filter, FilterError, parse
from twistproxy.flow import Error, Flow
from twistproxy.headers import Headers
from twistproxy.http import HTTPFlow, Request, Response


def _flow(
    request: Request | None = None,
    response: Response | None = None,
) -> HTTPFlow:
    """
    :returns: An HTTP flow with *request* (by default a GET of
        ``http://example.com/path?q=1``) and *response*.
    """
    flow = HTTPFlow(Client(), Server(), now=lambda: 0.0)
    flow.request = (
        request if request is not None else Request.make("GET", "http://example.com/path?q=1")
    )
    flow.response = response
    return flow


def _matches(expression: str, flow: Flow) -> bool:
    """
    :returns: Whether the filter *expression* matches *flow*.
    """
    return parse(expression)(flow)


def _tree(flt: Filter) -> str:
    """
    :returns: How *flt* was read, as its ``repr`` shows it.
    """
    prefix = f"<Filter {flt.expression!r}: "
    text = repr(flt)
    assert text.startswith(prefix) and text.endswith(">"), text
    return text[len(prefix) : -1]


class FlagOperatorTests(SynchronousTestCase):
    """
    Tests for the operators without an argument.
    """

    def test_asset(self) -> None:
        """
        ``~a`` matches a response whose Content-Type is JavaScript, CSS, an
        image or a font, with or without parameters.
        """
        for content_type in (
            "application/javascript",
            "text/javascript; charset=utf-8",
            "application/x-javascript",
            "TEXT/CSS",
            "image/png",
            "font/woff2",
            "application/font-woff",
        ):
            response = Response.make(200, b"", {"Content-Type": content_type})
            self.assertTrue(_matches("~a", _flow(response=response)), content_type)
        for content_type in ("text/html", "application/json", "text/plain; x=image/png"):
            response = Response.make(200, b"", {"Content-Type": content_type})
            self.assertFalse(_matches("~a", _flow(response=response)), content_type)

    def test_asset_looks_at_the_response_only(self) -> None:
        """
        ``~a`` does not match without a response, nor on the request's
        Content-Type.
        """
        request = Request.make("POST", "http://example.com/", b"x", {"Content-Type": "text/css"})
        self.assertFalse(_matches("~a", _flow(request)))
        self.assertFalse(_matches("~a", _flow(request, Response.make(200))))

    def test_error(self) -> None:
        """
        ``~e`` matches a flow with an error.
        """
        flow = _flow()
        self.assertFalse(_matches("~e", flow))
        flow.error = Error("connection refused", 0.0)
        self.assertTrue(_matches("~e", flow))

    def test_request_and_response(self) -> None:
        """
        ``~q`` matches an HTTP flow without a response, ``~s`` one with.
        """
        flow = _flow()
        self.assertTrue(_matches("~q", flow))
        self.assertFalse(_matches("~s", flow))
        flow.response = Response.make(204)
        self.assertFalse(_matches("~q", flow))
        self.assertTrue(_matches("~s", flow))

    def test_marked(self) -> None:
        """
        ``~marked`` matches a flow with a non-empty marker.
        """
        flow = _flow()
        self.assertFalse(_matches("~marked", flow))
        flow.marked = ":star:"
        self.assertTrue(_matches("~marked", flow))

    def test_replay(self) -> None:
        """
        ``~replay`` matches any replayed flow, ``~replayq`` a replayed
        request and ``~replays`` a replayed response.
        """
        expected = {
            None: (False, False, False),
            "request": (True, True, False),
            "response": (True, False, True),
        }
        for is_replay, results in expected.items():
            flow = _flow()
            flow.is_replay = is_replay
            got = tuple(_matches(e, flow) for e in ("~replay", "~replayq", "~replays"))
            self.assertEqual(got, results, is_replay)

    def test_http_and_all(self) -> None:
        """
        ``~http`` matches HTTP flows only; ``~all`` matches every flow.
        """
        plain = Flow(Client(), Server(), now=lambda: 0.0)
        self.assertTrue(_matches("~http", _flow()))
        self.assertFalse(_matches("~http", plain))
        self.assertTrue(_matches("~all", _flow()))
        self.assertTrue(_matches("~all", plain))

    def test_websocket(self) -> None:
        """``~websocket`` matches the flows that switched to a WebSocket."""
        from twistproxy.websocket import WebSocketData

        flow = _flow(response=Response.make(101))
        self.assertFalse(_matches("~websocket", flow))
        self.assertFalse(_matches("~websocket", Flow(Client(), Server(), now=lambda: 0.0)))
        flow.websocket = WebSocketData()
        self.assertTrue(_matches("~websocket", flow))
        self.assertTrue(_matches("~websocket & ~s", flow))


class RegexOperatorTests(SynchronousTestCase):
    """
    Tests for the operators with a regular expression or a status code.
    """

    def setUp(self) -> None:
        """
        Build a POST with a JSON body and a token header, answered by an
        HTML page with a cookie.
        """
        request = Request.make(
            "POST",
            "http://api.example.com/v1/items",
            b'{"q": "needle"}',
            {"Content-Type": "application/json", "X-Token": "secret"},
        )
        response = Response.make(
            201,
            b"<p>haystack</p>",
            {"Content-Type": "text/html; charset=utf-8", "Set-Cookie": "sid=cookie"},
        )
        self.flow = _flow(request, response)

    def check(self, expression: str, expected: bool) -> None:
        """
        Assert that *expression* matches the flow exactly when *expected*.
        """
        self.assertEqual(_matches(expression, self.flow), expected, expression)

    def test_bodies(self) -> None:
        """
        ``~b`` searches both bodies, ``~bq`` the request's, ``~bs`` the
        response's.
        """
        self.check("~b needle", True)
        self.check("~b haystack", True)
        self.check("~b absent", False)
        self.check("~bq needle", True)
        self.check("~bq haystack", False)
        self.check("~bs haystack", True)
        self.check("~bs needle", False)

    def test_body_dot_matches_newline(self) -> None:
        """
        In body patterns ``.`` matches a newline too.
        """
        self.flow.request = Request.make("POST", "http://example.com/", b"first\nsecond")
        self.check("~bq first.second", True)

    def test_headers(self) -> None:
        """
        ``~h``, ``~hq`` and ``~hs`` search ``Name: value`` lines, each on its
        own, so ``^`` and ``$`` anchor a line.
        """
        self.check("~h '^x-token: secret$'", True)
        self.check("~hq 'X-Token: secret'", True)
        self.check("~hs 'X-Token'", False)
        self.check("~hs '^set-cookie: sid='", True)
        self.check("~hq set-cookie", False)
        self.check("~h 'secret$'", True)

    def test_content_types(self) -> None:
        """
        ``~t`` searches the Content-Type of either message, ``~tq`` the
        request's and ``~ts`` the response's.
        """
        self.check("~t json", True)
        self.check("~t html", True)
        self.check("~tq json", True)
        self.check("~tq html", False)
        self.check("~ts html", True)
        self.check("~ts json", False)
        self.check("~t xml", False)

    def test_method(self) -> None:
        """
        ``~m`` searches the method.
        """
        self.check("~m POST", True)
        self.check("~m ^P", True)
        self.check("~m ^GET$", False)

    def test_mode(self) -> None:
        """
        ``~mode`` searches the mode of the listener that carried the flow.
        """
        self.check("~mode ^regular$", True)
        self.check("~mode reverse", False)
        self.flow.client_conn.proxy_mode = "reverse:https://api.internal@8443"
        self.check("~mode ^reverse:", True)
        self.check(r"~mode @8443$", True)
        self.check("~mode regular", False)

    def test_url(self) -> None:
        """
        ``~u`` searches the URL.
        """
        self.check(r"~u ^http://api\.example\.com/v1/items$", True)
        self.check("~u /v2/", False)

    def test_bare_word_is_url(self) -> None:
        """
        A word or quoted string without an operator means ``~u``.
        """
        self.check("v1/items", True)
        self.check('"v1/items"', True)
        self.check("v2/items", False)
        self.assertEqual(_tree(parse("items")), '~u "items"')

    def test_domain(self) -> None:
        """
        ``~d`` searches the request's host.
        """
        self.check(r"~d ^api\.example\.com$", True)
        self.check("~d other", False)

    def test_host_header(self) -> None:
        """
        ``~d`` also searches the Host header's host, and ``~u`` the URL
        built from it, when the request goes to another address.
        """
        request = Request.make("GET", "http://10.0.0.1:8080/x", headers={"Host": "example.com"})
        self.flow.request = request
        self.check(r"~d ^10\.0\.0\.1$", True)
        self.check(r"~d ^example\.com$", True)
        self.check("~d other", False)
        self.check(r"~u ^http://10\.0\.0\.1:8080/x$", True)
        self.check(r"~u ^http://example\.com/x$", True)
        self.check("~u other", False)

    def test_status_code(self) -> None:
        """
        ``~c`` compares the response's status code.
        """
        self.check("~c 201", True)
        self.check("~c 0201", True)
        self.check("~c 200", False)

    def test_case_insensitive(self) -> None:
        """
        Every pattern is case-insensitive, and ``(?-i:...)`` makes part of
        one case-sensitive.
        """
        self.check("~d API.EXAMPLE", True)
        self.check("~m post", True)
        self.check("~u V1/ITEMS", True)
        self.check("~h 'X-TOKEN: SECRET'", True)
        self.check("~t APPLICATION/JSON", True)
        self.check("~b NEEDLE", True)
        self.check("~bs HAYSTACK", True)
        self.check("~u '(?-i:V1)'", False)
        self.check("~u '(?-i:v1)'", True)


class BodyTests(SynchronousTestCase):
    """
    Tests for how body operators read bodies.
    """

    def test_gzip_body_matched_decoded(self) -> None:
        """
        A gzip-encoded body is searched with its coding undone.
        """
        raw = gzip.compress(b"the plain text")
        headers = Headers([(b"Content-Encoding", b"gzip")])
        flow = _flow(response=Response("HTTP/1.1", 200, "OK", headers, raw))
        self.assertTrue(_matches("~bs 'plain text'", flow))
        self.assertTrue(_matches("~b 'plain text'", flow))

    def test_undecodable_body_matched_raw(self) -> None:
        """
        A body that does not decode with its Content-Encoding is searched as
        it is, without an error.
        """
        headers = Headers([(b"Content-Encoding", b"gzip")])
        flow = _flow(response=Response("HTTP/1.1", 200, "OK", headers, b"not gzip at all"))
        self.assertTrue(_matches("~bs 'not gzip'", flow))

    def test_body_not_utf8(self) -> None:
        """
        A body that is not UTF-8 is searched as bytes: ASCII patterns
        match, regex escapes reach any byte, and a non-ASCII pattern is
        searched as UTF-8.
        """
        flow = _flow(response=Response.make(200, b"\xff\xfe caf\xe9 ok"))
        self.assertTrue(_matches("~bs caf", flow))
        self.assertTrue(_matches(r"~bs ^\xff\xfe", flow))
        self.assertTrue(_matches(r"~bs 'caf\xe9'", flow))
        self.assertFalse(_matches("~bs café", flow))
        flow.response = Response.make(200, "café".encode())
        self.assertTrue(_matches("~bs café", flow))

    def test_body_not_captured(self) -> None:
        """
        A body that was not captured matches no body pattern, not even an
        empty one; an empty body matches the empty pattern.
        """
        flow = _flow(response=Response("HTTP/1.1", 200, "OK", Headers(), None))
        self.assertFalse(_matches("~bs ''", flow))
        flow.response = Response("HTTP/1.1", 200, "OK", Headers(), b"")
        self.assertTrue(_matches("~bs ''", flow))

    def test_bodies_decoded_only_for_body_operators(self) -> None:
        """
        A filter without a body operator never decodes a body; one with a
        body operator does.
        """
        calls: list[str] = []
        original = _encoding.decode

        def decode(data: bytes, encoding: str, limit: int | None = None) -> bytes:
            calls.append(encoding)
            return original(data, encoding, limit)

        self.patch(_encoding, "decode", decode)

        def gzipped() -> Response:
            headers = Headers([(b"Content-Encoding", b"gzip"), (b"Content-Type", b"text/css")])
            return Response("HTTP/1.1", 200, "OK", headers, gzip.compress(b"body"))

        flow = _flow(response=gzipped())
        everything_else = parse(
            "~a | ~e | ~q | ~s | ~marked | ~replay | ~http | ~all | ~c 200 | ~d x | ~h x"
            " | ~hq x | ~hs x | ~m x | ~t x | ~tq x | ~ts x | ~u x | x | !~d x"
        )
        everything_else(flow)
        self.assertEqual(calls, [])
        self.assertFalse(parse("~bs nothing")(flow))
        self.assertEqual(calls, ["gzip"])


class MissingPartsTests(SynchronousTestCase):
    """
    Tests for flows that lack what an operator looks at.
    """

    def test_no_response(self) -> None:
        """
        Operators on the response do not match a flow without one.
        """
        flow = _flow(Request.make("POST", "http://example.com/", b"body"))
        for expression in ("~s", "~bs .", "~bs ''", "~c 200", "~hs .", "~ts .", "~a"):
            self.assertFalse(_matches(expression, flow), expression)
        self.assertTrue(_matches("~b body", flow))
        self.assertTrue(_matches("~h .", flow))

    def test_no_request(self) -> None:
        """
        Operators on the request do not match an HTTP flow without one.
        """
        flow = HTTPFlow(Client(), Server(), now=lambda: 0.0)
        for expression in ("~u ''", "~d ''", "~m ''", "~hq ''", "~bq ''", "~tq ''", "x"):
            self.assertFalse(_matches(expression, flow), expression)
        self.assertTrue(_matches("~q", flow))

    def test_not_http(self) -> None:
        """
        HTTP operators do not match a flow that is not an HTTP flow; the
        flow operators do.
        """
        flow = Flow(Client(), Server(), now=lambda: 0.0)
        for expression in ("~u ''", "~d ''", "~h ''", "~b ''", "~t ''", "~c 200", "~q", "~s", "~a"):
            self.assertFalse(_matches(expression, flow), expression)
        flow.marked = "x"
        flow.error = Error("boom", 0.0)
        self.assertTrue(_matches("~marked & ~e & !~http", flow))


def _truth_table(
    expression: str, expected: Callable[[bool, bool, bool], bool]
) -> list[tuple[bool, bool, bool]]:
    """
    Evaluate *expression* (over ``~e``, ``~s`` and ``~marked``) on a flow
    for each combination of the three.

    :returns: The combinations where it differs from *expected*.
    """
    flt = parse(expression)
    wrong = []
    for error, responded, marked in itertools.product((False, True), repeat=3):
        flow = _flow(response=Response.make(200) if responded else None)
        flow.error = Error("boom", 0.0) if error else None
        flow.marked = "m" if marked else ""
        if flt(flow) != expected(error, responded, marked):
            wrong.append((error, responded, marked))
    return wrong


class SyntaxTests(SynchronousTestCase):
    """
    Tests for precedence, grouping and quoting.
    """

    def test_precedence(self) -> None:
        """
        ``!`` binds tighter than ``&``, which binds tighter than ``|``:
        ``!a & b | c`` is ``((!a) & b) | c``.
        """
        flt = parse("!a & b | c")
        self.assertEqual(_tree(flt), '((!~u "a" & ~u "b") | ~u "c")')
        self.assertEqual(
            _truth_table("!~e & ~s | ~marked", lambda e, s, m: ((not e) and s) or m), []
        )
        self.assertEqual(_truth_table("~marked | ~s & !~e", lambda e, s, m: m or (s and not e)), [])

    def test_parentheses(self) -> None:
        """
        Parentheses group, and ``!`` applies to a whole group.
        """
        self.assertEqual(
            _truth_table("!(~e | ~s) & ~marked", lambda e, s, m: not (e or s) and m), []
        )
        self.assertEqual(_truth_table("~e & ((~s | ~marked))", lambda e, s, m: e and (s or m)), [])
        self.assertEqual(_truth_table("!!~e", lambda e, s, m: e), [])

    def test_juxtaposition_is_loosest_and(self) -> None:
        """
        Terms side by side are joined by an ``&`` looser than ``|``, as in
        mitmproxy, inside parentheses too.
        """
        self.assertEqual(_tree(parse("a b | c")), '(~u "a" & (~u "b" | ~u "c"))')
        self.assertEqual(_truth_table("~marked ~e | ~s", lambda e, s, m: m and (e or s)), [])
        self.assertEqual(_truth_table("(~e ~s) | ~marked", lambda e, s, m: (e and s) or m), [])

    def test_quoted_arguments(self) -> None:
        """
        Arguments may be double- or single-quoted, with spaces and the other
        quote inside.
        """
        request = Request.make("GET", "http://example.com/", headers={"X-Note": 'say "hi" it\'s'})
        flow = _flow(request)
        self.assertTrue(_matches('~h "X-Note: say"', flow))
        self.assertTrue(_matches("~h 'say \"hi\"'", flow))
        self.assertTrue(_matches('~h "it\'s"', flow))
        self.assertFalse(_matches('~h "X-Note: bye"', flow))

    def test_escapes(self) -> None:
        """
        In quotes, backslash escapes a backslash or a quote; other
        backslashes are kept for the regex.
        """
        self.assertEqual(_tree(parse(r'~h "a\"b"')), r'~h "a\"b"')
        self.assertEqual(_tree(parse(r"~h 'it\'s'")), '~h "it\'s"')
        flow = _flow(Request.make("GET", "http://example.com/a.b"))
        for expression in (r'"a\.b"', r'"a\\.b"', r"a\.b"):
            flt = parse(expression)
            self.assertEqual(_tree(flt), r'~u "a\\.b"', expression)
            self.assertTrue(flt(flow), expression)
            self.assertFalse(flt(_flow(Request.make("GET", "http://example.com/axb"))))
        backslash = _flow(Request.make("GET", "http://example.com/", headers={"X-P": "c:\\dir"}))
        self.assertTrue(_matches(r'~h "c:\\\\dir"', backslash))
        self.assertFalse(_matches(r'~h "c:\\dir"', backslash))

    def test_operator_characters_in_words(self) -> None:
        """
        ``!``, ``&`` and ``|`` are operators only where a token starts:
        inside a word, and at the start of an argument, they are regex
        characters.
        """
        self.assertEqual(_tree(parse("~u a|b")), '~u "a|b"')
        self.assertEqual(_tree(parse("~d a|~s")), '(~d "a|" & ~s)')
        self.assertEqual(_tree(parse("~h !x&y")), '~h "!x&y"')
        self.assertEqual(_tree(parse("~q&~s")), "(~q & ~s)")
        self.assertEqual(_tree(parse("!~q|(~s)")), "(!~q | ~s)")
        self.assertTrue(_matches("~u xyz|path", _flow()))

    def test_repr_and_expression(self) -> None:
        """
        A filter keeps its expression and shows how it was read.
        """
        flt = parse("~d a  & ~c 200")
        self.assertEqual(flt.expression, "~d a  & ~c 200")
        self.assertEqual(repr(flt), "<Filter '~d a  & ~c 200': (~d \"a\" & ~c 200)>")

    def test_canonical_form_parses_back(self) -> None:
        """
        The form the ``repr`` shows parses back to the same tree.
        """
        for expression in (
            "!a & b | c",
            r"~h 'x\"y\\.z' ~b \d+ | !(~e ~replayq)",
            "~bs é | ~tq ^a$ & ~marked",
        ):
            tree = _tree(parse(expression))
            self.assertEqual(_tree(parse(tree)), tree, expression)


class ErrorTests(SynchronousTestCase):
    """
    Tests for invalid expressions.
    """

    def check(self, expression: str, position: int, reason: str) -> FilterError:
        """
        Assert that parsing *expression* fails at *position* for *reason*
        (a prefix), with the column and a caret under it in the message.
        """
        error = self.assertRaises(FilterError, parse, expression)
        self.assertIsInstance(error, ValueError)
        self.assertEqual((error.position, error.expression), (position, expression))
        self.assertTrue(error.reason.startswith(reason), error.reason)
        lines = str(error).split("\n")
        self.assertEqual(lines[0], f"{error.reason} at column {position + 1}")
        self.assertEqual(len(lines[1]), len(expression))
        self.assertEqual(lines[2], " " * position + "^")
        return error

    def test_message(self) -> None:
        """
        The message shows the expression with a caret under the problem.
        """
        error = self.check("~c abc", 3, "expected a status code")
        self.assertEqual(str(error), "expected a status code at column 4\n~c abc\n   ^")

    def test_whitespace_shown_as_spaces(self) -> None:
        """
        Tabs and newlines in the expression are shown as spaces, so the
        caret stays under the column.
        """
        error = self.check("~q\t&\n", 5, "expected a filter term after '&'")
        self.assertEqual(str(error).split("\n")[1], "~q & ")

    def test_empty(self) -> None:
        """
        An empty or blank expression is an error.
        """
        self.check("", 0, "empty filter expression")
        self.check("  ", 0, "empty filter expression")

    def test_status_code(self) -> None:
        """
        ``~c`` needs decimal digits.
        """
        self.check("~c 2xx", 3, "expected a status code")
        self.check("~c", 2, "expected a status code")
        self.check("~c ~s", 3, "expected a status code")
        self.check("~c ٣", 3, "expected a status code")
        self.check("~c " + "9" * 5000, 3, "expected a status code")

    def test_unknown_operator(self) -> None:
        """
        An unknown operator is an error at its ``~``.
        """
        self.check("~zz", 0, "unknown operator '~zz'")
        self.check("~s & ~zz x", 5, "unknown operator '~zz'")
        self.check("~q2", 0, "unknown operator '~q2'")
        self.check("~ x", 0, "unknown operator '~'")
        self.check("~Q", 0, "unknown operator '~Q'")

    def test_missing_argument(self) -> None:
        """
        An operator that takes a regex must be followed by one.
        """
        self.check("~d", 2, "expected a regular expression after ~d")
        self.check("~s & ~bs  ", 10, "expected a regular expression after ~bs")
        self.check("~h ~q", 3, "expected a regular expression after ~h")
        self.check("(~u)", 3, "expected a regular expression after ~u")

    def test_unbalanced_parentheses(self) -> None:
        """
        Every ``(`` needs a ``)`` and every ``)`` a ``(``.
        """
        self.check("(~q", 0, "'(' is never closed")
        self.check("~s & (~q | (~e)", 5, "'(' is never closed")
        self.check("~q)", 2, "unmatched ')'")
        self.check("(~q) ~s)", 7, "unmatched ')'")
        self.check("()", 1, "expected a filter term, found ')'")
        self.check("(", 1, "expected a filter term after '('")

    def test_dangling_operators(self) -> None:
        """
        ``&`` and ``|`` need a term on each side, ``!`` one after it.
        """
        self.check("~q &", 4, "expected a filter term after '&'")
        self.check("~q |", 4, "expected a filter term after '|'")
        self.check("& ~q", 0, "expected a filter term, found '&'")
        self.check("| ~q", 0, "expected a filter term, found '|'")
        self.check("~q | & ~s", 5, "expected a filter term, found '&'")
        self.check("!", 1, "expected a filter term after '!'")
        self.check("~q & !", 6, "expected a filter term after '!'")
        self.check("(~q &)", 5, "expected a filter term, found ')'")

    def test_nested_too_deeply(self) -> None:
        """
        Nesting deeper than Python's recursion limit is an error, not a
        crash; a hundred levels are fine.
        """
        deep = parse("!" * 100 + "~e" + " | ~s" * 100 + "(" * 100 + "~all" + ")" * 100)
        self.assertTrue(deep(_flow(response=Response.make(200))))
        self.assertFalse(deep(_flow()))
        error = self.assertRaises(FilterError, parse, "(" * 5000 + "~s" + ")" * 5000)
        self.assertEqual(error.reason, "nested too deeply")
        self.assertLess(error.position, 5000)
        self.assertEqual(str(error).split("\n")[2], " " * error.position + "^")

    def test_unterminated_string(self) -> None:
        """
        A quote must be closed; an escaped quote does not close it.
        """
        self.check('~u "abc', 3, "unterminated string")
        self.check("'abc\\'", 0, "unterminated string")

    def test_invalid_regex(self) -> None:
        """
        An invalid regex is an error at the place ``re`` names, mapped
        back through quotes and escapes.
        """
        self.check("~u a[b", 4, "invalid regular expression: unterminated character set")
        self.check('~h "\\"a(b"', 7, "invalid regular expression: missing ), unterminated")
        self.check("~b [a", 3, "invalid regular expression: unterminated character set")
        self.check("~d 'x' ~m *", 10, "invalid regular expression: nothing to repeat")

    def test_invalid_bytes_regex(self) -> None:
        """
        Body patterns are bytes patterns: escapes only ``str`` patterns
        know are errors, and characters UTF-8 cannot encode too.
        """
        self.check(r"~b a\u00e9", 4, "invalid regular expression: bad escape \\u")
        self.check("~bq 'é['", 4, "invalid regular expression: unterminated character set")
        self.check("~bs 'a\ud800'", 6, "not encodable as UTF-8")
