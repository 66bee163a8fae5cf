"""
The web UI's guard (token, Host, Origin), its twistd options, its body
highlighting and its actions on flows, as unit tests; the API through real
sockets is tests/e2e/test_web_api_e2e.py.
"""

from __future__ import annotations

import io

from twisted.internet.task import Clock, Cooperator
from twisted.trial.unittest import SynchronousTestCase

from twistproxy.connection import Client, Server
from twistproxy.flowfile import dump_flows
from twistproxy.http import HTTPFlow, Request, Response
from twistproxy.options import Options
from twistproxy.web._actions import Actions, ApiError, edit_message
from twistproxy.web._guard import Guard
from twistproxy.web._highlight import CLASSES, Highlight, body_text, language_of
from twistproxy.web.addon import WebRecorder
from twistproxy.web.store import FlowStore


class GuardTests(SynchronousTestCase):
    def test_host(self) -> None:
        """Addresses and localhost on the UI's port pass; names and other ports do not."""
        guard = Guard("t", 8081)
        for ok in (b"127.0.0.1:8081", b"localhost:8081", b"[::1]:8081", b"10.0.0.2:8081"):
            self.assertIsNone(guard.host_refusal(ok), ok)
        for bad in (b"evil.example:8081", b"127.0.0.1:8082", b"127.0.0.1", None, b"[::1"):
            self.assertIsNotNone(guard.host_refusal(bad), bad)
        self.assertIsNone(Guard("t", 8081, frozenset({"ui.lan"})).host_refusal(b"ui.lan:8081"))

    def test_origin(self) -> None:
        """Only the UI's own origin (or none) passes; cross-site fetches do not."""
        guard = Guard("t", 8081)
        host = b"127.0.0.1:8081"
        self.assertIsNone(guard.origin_refusal(None, host, None))
        self.assertIsNone(guard.origin_refusal(b"http://127.0.0.1:8081", host, b"same-origin"))
        self.assertIsNotNone(guard.origin_refusal(b"http://evil.example", host, None))
        self.assertIsNotNone(guard.origin_refusal(b"null", host, None))
        self.assertIsNotNone(guard.origin_refusal(None, host, b"cross-site"))

    def test_token(self) -> None:
        """The token compares whole."""
        guard = Guard("secret", 1)
        self.assertTrue(guard.token_valid(b"secret"))
        self.assertFalse(guard.token_valid("secre"))
        self.assertFalse(guard.token_valid(None))


class OptionsTests(SynchronousTestCase):
    def test_web_options(self) -> None:
        """--web-* need --web; --web needs one process; the port is checked."""
        for args, message in (
            (["--web-port", "9000"], "--web-port needs --web"),
            (["--web", "--workers", "2"], "--web runs in one process"),
            (["--web", "--web-port", "70000"], "not a port number"),
        ):
            options = Options()
            with self.assertRaises(Exception) as raised:
                options.parseOptions(args)
            self.assertIn(message, str(raised.exception))
        options = Options()
        options.parseOptions(["--web"])
        self.assertEqual((options["web-host"], options["web-port"]), ("127.0.0.1", 8081))


class HighlightTests(SynchronousTestCase):
    def test_language_of(self) -> None:
        """HTML, XML (and +xml but images), CSS and JavaScript are highlighted; not JSON."""
        for content_type, language in (
            ("text/html; charset=utf-8", "html"), ("TEXT/HTML", "html"),
            ("application/xhtml+xml", "html"), ("application/xml", "xml"),
            ("application/atom+xml", "xml"), ("text/css", "css"),
            ("application/javascript", "javascript"), ("text/javascript", "javascript"),
            ("image/svg+xml", None), ("application/json", None), ("text/plain", None),
            (None, None), ("", None),
        ):
            self.assertEqual(language_of(content_type), language, content_type)

    def test_tokens_are_the_text(self) -> None:
        """
        The tokens' texts joined are the text, exactly (newlines, CRs and
        markup as they were), each with a known class; adjacent ones of one
        class are merged.
        """
        text = ('<!-- c -->\r\n<a href="/x?a=1&amp;b">t &lt; u</a>\n'
                '<script>if (a < 2) { f("s"); }</script><style>p { color: red }</style>\n')
        tokens = Highlight(text, "html").run().tokens
        self.assertEqual("".join(t for _, t in tokens), text)
        self.assertTrue({name for name, _ in tokens} <= CLASSES)
        self.assertIn(["c", "<!-- c -->"], tokens)
        self.assertIn(["t", "script"], tokens)
        self.assertIn(["s", '"/x?a=1&amp;b"'], tokens)
        for before, after in zip(tokens, tokens[1:], strict=False):
            self.assertNotEqual(before[0], after[0])
        for language, source in (("css", "a > b:hover { margin: 0 1px; } /* c */"),
                                 ("javascript", "const a = `t${1}`; // c\nreturn a;"),
                                 ("xml", "<?xml version='1.0'?><a x=\"1\"><![CDATA[<b>]]></a>")):
            tokens = Highlight(source, language).run().tokens
            self.assertEqual("".join(t for _, t in tokens), source, language)
            self.assertGreater(len(tokens), 3, language)

    def test_bounded(self) -> None:
        """
        Past max_tokens the rest of the text is one plain token (the text
        still whole); the steps come every *step* tokens.
        """
        text = "var a = 1;\n" * 100
        highlight = Highlight(text, "javascript", max_tokens=40, step=10)
        steps = list(highlight.steps())
        self.assertEqual(len(steps), 4)
        self.assertFalse(highlight.complete)
        self.assertEqual("".join(t for _, t in highlight.tokens), text)
        self.assertEqual(highlight.tokens[-1][0], "")
        self.assertGreater(len(highlight.tokens[-1][1]), len(text) // 2)
        whole = Highlight(text, "javascript").run()
        self.assertTrue(whole.complete)

    def test_body_text(self) -> None:
        """A body is read in its charset (UTF-8 by default), bad bytes replaced."""
        self.assertEqual(body_text(b"caf\xe9", "text/html; charset=latin-1"), "caf\xe9")
        self.assertEqual(body_text(b"caf\xc3\xa9 \xff", "text/html"), "caf\xe9 \ufffd")


def _flow(*, live: bool, held: bool, response: bool) -> HTTPFlow:
    flow = HTTPFlow(Client(), Server(), live=live)
    flow.request = Request.make("POST", "http://example.com/a", b"body",
                                {"Content-Type": "text/plain; charset=latin-1"})
    if response:
        flow.response = Response.make(200, b"gzipped text", {"Content-Encoding": "gzip"})
    if held:
        flow.intercept()
    return flow


class EditTests(SynchronousTestCase):
    def assertRefused(self, code: int, text: str, *args: object) -> None:
        with self.assertRaises(ApiError) as raised:
            edit_message(*args)  # type: ignore[arg-type]
        self.assertEqual(raised.exception.code, code)
        self.assertIn(text, raised.exception.body["error"])

    def test_when(self) -> None:
        """
        A held request, a held response, either side of a flow that is not
        live can be edited; a live flow that is not held, a held flow's
        sent request, a missing response cannot.
        """
        edit_message(_flow(live=True, held=True, response=False), "request", {"method": "PUT"})
        edit_message(_flow(live=True, held=True, response=True), "response", {"reason": "Fine"})
        edit_message(_flow(live=False, held=False, response=True), "request", {"method": "PUT"})
        edit_message(_flow(live=False, held=False, response=True), "response", {"reason": "X"})
        self.assertRefused(409, "only a held flow", _flow(live=True, held=False, response=True),
                           "response", {})
        self.assertRefused(409, "the request was sent", _flow(live=True, held=True, response=True),
                           "request", {})
        self.assertRefused(409, "no response", _flow(live=False, held=False, response=False),
                           "response", {})
        self.assertRefused(400, "expected an object", _flow(live=False, held=False, response=True),
                           "response", ["x"])

    def test_body_and_length(self) -> None:
        """
        The body text is encoded in the charset and with the
        Content-Encoding; Content-Length follows it.
        """
        flow = _flow(live=False, held=False, response=True)
        edit_message(flow, "request", {"content": "caf\xe9"})
        assert flow.request is not None and flow.response is not None
        self.assertEqual(flow.request.raw_content, b"caf\xe9")
        self.assertEqual(flow.request.headers["Content-Length"], "4")
        edit_message(flow, "response", {"status_code": 404, "content": "gone"})
        self.assertEqual(flow.response.status_code, 404)
        self.assertEqual(flow.response.content, b"gone")
        self.assertNotEqual(flow.response.raw_content, b"gone")  # gzipped
        self.assertEqual(flow.response.headers["Content-Length"],
                         str(len(flow.response.raw_content or b"")))

    def test_whole_or_nothing(self) -> None:
        """A bad field refuses the whole edit: nothing of it is applied."""
        flow = _flow(live=False, held=False, response=True)
        for side, edit, text in (
            ("response", {"status_code": 99, "reason": "Changed"}, "not a status code"),
            ("response", {"status_code": "2x"}, "not a status code"),
            ("response", {"reason": "OK\r\nX: 1", "content": "new"}, "response reason"),
            ("response", {"headers": [["Bad Name", "v"]], "reason": "Changed"}, "header name"),
            ("request", {"url": "http://example.com/b", "headers": [["X", "a\nb"]]}, "header"),
            ("request", {"method": "G T", "url": "http://example.com/b"}, "not a method"),
        ):
            self.assertRefused(400, text, flow, side, edit)
        assert flow.request is not None and flow.response is not None
        self.assertEqual((flow.response.status_code, flow.response.reason), (200, "OK"))
        self.assertEqual(flow.response.content, b"gzipped text")
        self.assertEqual((flow.request.method, flow.request.path), ("POST", "/a"))


class LoadTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.store = FlowStore()
        self.addCleanup(self.store.close)
        recorder = WebRecorder(self.store, clock=self.clock)
        self.batches: list[int] = []
        recorder.subscribe(lambda written, reload: self.batches.append(len(written)))
        # One step a reactor turn, each turn a call of the clock.
        cooperator = Cooperator(scheduler=lambda step: self.clock.callLater(0, step),
                                terminationPredicateFactory=lambda: lambda: True)
        self.actions = Actions(recorder, cooperator)

    def test_in_steps(self) -> None:
        """
        A file's flows are stored 100 a step (one transaction and one push
        each), the answer coming after the last; loaded again, every flow
        gets a new id (the first load's rows are kept as they were).
        """
        flows = [_flow(live=False, held=i == 0, response=True) for i in range(250)]
        data = io.BytesIO()
        dump_flows(flows, data)
        loading = self.actions.load(io.BytesIO(data.getvalue()), "x.jsonl")
        turns = 0
        while not loading.called and turns < 10:
            self.clock.advance(0)
            turns += 1
        first = self.successResultOf(loading)
        self.assertEqual(self.batches, [100, 100, 50])
        self.assertEqual((first["loaded"], first["skipped"]), (250, 0))
        self.assertEqual(first["ids"], [f.id for f in flows])
        loaded = self.store.load(flows[0].id)
        assert loaded is not None
        self.assertFalse(loaded.intercepted)  # a file's flow is not held
        again = self.actions.load(io.BytesIO(data.getvalue()), "again.jsonl")
        self.clock.advance(0)
        self.clock.advance(0)
        self.clock.advance(0)
        second = self.successResultOf(again)
        self.assertEqual(second["loaded"], 250)
        self.assertFalse(set(second["ids"]) & set(first["ids"]))
        self.assertEqual(len(self.store), 500)

    def test_refused(self) -> None:
        """Nothing readable, or an empty file: an ApiError naming the file and why."""
        with self.assertRaises(ApiError) as raised:
            self.actions.load(io.BytesIO(b""), "empty.jsonl")
        self.assertEqual(raised.exception.body["error"], "empty.jsonl is empty")
        loading = self.actions.load(io.BytesIO(b"nothing\n"), "x.jsonl")
        self.clock.advance(0)
        error = self.failureResultOf(loading, ApiError).value
        assert isinstance(error, ApiError)
        self.assertEqual(error.code, 400)
        self.assertIn("x.jsonl: not a flow file twistproxy can read: line 1", str(error))
