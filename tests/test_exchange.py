"""
Tests for :mod:`twistproxy._exchange`, by table: events pushed through an
:class:`Exchange` and the actions that come out, for every transition the
table holds and every event a state refuses (the way h11 tests its state
machine).  No transport, no reactor: the flow is plain data.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from twistproxy._events import Action, Body, Event, InvalidEvent, ResponseHead, State
from twistproxy._exchange import _TABLE, HIGH_WATER, Exchange
from twistproxy._framing import CHUNKED, NO_BODY, UNTIL_CLOSE
from twistproxy._request import new_flow
from twistproxy._target import Tunnel
from twistproxy.connection import Client
from twistproxy.errors import (
    BadRequestTarget,
    HookFailed,
    InvalidMessage,
    LoopDetected,
    RequestBodyTimeout,
    ShuttingDown,
    UpstreamConnectionLost,
    UpstreamTimeout,
)
from twistproxy.flow import Error
from twistproxy.http import HTTPFlow, Response

A = Action
VIA = b"1.1 twistproxy-0123abcd"
OK = ResponseHead(b"HTTP/1.1", 200, b"OK", [(b"Content-Length", b"2")], 2)


def made(
    method: bytes = b"GET",
    uri: bytes = b"http://example.com/a",
    fields: Iterable[tuple[bytes, bytes]] = (),
    *,
    hooks: Iterable[str] = (),
    body_limit: int = 100,
    declared: int = NO_BODY,
    intercepting: bool = True,
    passthrough: bool = False,
    whole: Iterable[str] = ("request", "response"),
    expect: bool = False,
) -> Exchange:
    """
    An exchange for a request head, as ProxyRequest makes one; by default
    somebody reads bodies whole (*whole*), so that they are buffered.
    """
    try:
        flow: HTTPFlow | None = new_flow(
            Client(peername=("127.0.0.1", 5000)), method, uri, b"HTTP/1.1", list(fields),
            tunnel=None, via=VIA, passthrough=lambda host, port: passthrough, now=1.0,
            clock=lambda: 2.0,
        )
        refusal = None
    except (BadRequestTarget, LoopDetected) as e:
        flow, refusal = None, e
    return Exchange(flow, refusal=refusal, hooks=frozenset(hooks), body_limit=body_limit,
                    declared=declared, intercepting=intercepting, whole=frozenset(whole),
                    expect=expect)


def kinds(actions: Iterable[tuple[Action, Any]]) -> list[Action]:
    """The actions without their arguments."""
    return [action for action, _ in actions]


class Play:
    """
    Pushes events through an exchange, recording every ``(state, event)``
    pair it handles in *seen* (for the coverage test).
    """

    def __init__(self, exchange: Exchange, seen: set[tuple[State, Event]]) -> None:
        self.exchange = exchange
        self.seen = seen
        self.now = 10.0

    @property
    def flow(self) -> HTTPFlow:
        flow = self.exchange.flow
        assert flow is not None
        return flow

    @property
    def state(self) -> State:
        return self.exchange.state

    def __call__(self, event: Event, arg: Any = None) -> list[tuple[Action, Any]]:
        self.seen.add((self.exchange.state, event))
        self.now += 1
        return list(self.exchange.handle(event, self.now, arg))

    def kinds(self, event: Event, arg: Any = None) -> list[Action]:
        return kinds(self(event, arg))


Scenario = Callable[[SynchronousTestCase, set[tuple[State, Event]]], None]
SCENARIOS: list[Scenario] = []


def scenario(function: Scenario) -> Scenario:
    """Register *function* for the coverage test, and run it as a test of its own."""
    SCENARIOS.append(function)
    return function


# -- scenarios: each drives exchanges along one kind of path -----------------


@scenario
def plain_get(t: SynchronousTestCase, seen: set[tuple[State, Event]]) -> None:
    """
    A GET with no hooks: the body's end opens the upstream, readiness sends
    the whole request, the response is kept, then written and finished.
    """
    p = Play(made(), seen)
    t.assertEqual(p(Event.HEAD), [])
    t.assertIs(p.state, State.READING)
    t.assertEqual(p.kinds(Event.BODY_END), [A.OPEN_UPSTREAM])  # no body: nothing to hand over
    t.assertEqual(p.flow.request.raw_content, b"")  # type: ignore[union-attr]
    t.assertIs(p.state, State.CONNECTING)
    t.assertEqual(p(Event.UPSTREAM_READY), [(A.SEND_REQUEST, (True, None))])
    t.assertIs(p.state, State.WAITING)
    t.assertEqual(p(Event.RESPONSE_HEAD, OK), [])
    t.assertIs(p.state, State.RECEIVING)
    t.assertEqual(p(Event.RESPONSE_DATA, b"hi"), [])  # kept
    t.assertEqual(p(Event.RESPONSE_END), [(A.WRITE_RESPONSE, False), (A.FINISH, None)])
    t.assertEqual(p.flow.response.raw_content, b"hi")  # type: ignore[union-attr]
    t.assertIs(p.state, State.DONE)
    t.assertFalse(p.flow.live)
    t.assertEqual(p.flow.request.timestamp_end, 12.0)  # type: ignore[union-attr]
    t.assertEqual(p.flow.response.timestamp_start, 14.0)  # type: ignore[union-attr]
    t.assertEqual(p.flow.response.timestamp_end, 16.0)  # type: ignore[union-attr]
    t.assertEqual(p(Event.CLIENT_GONE), [])


@scenario
def whole_heads(t: SynchronousTestCase, seen: set[tuple[State, Event]]) -> None:
    """
    A request without a body goes in as one HEAD event that says so: a GET
    goes upstream at once, a CONNECT runs http_connect, a refused request
    is answered at once.
    """
    p = Play(made(), seen)
    t.assertEqual(p(Event.HEAD, True), [(A.OPEN_UPSTREAM, None)])
    t.assertTrue(p.exchange.body_done)
    t.assertEqual(p.flow.request.raw_content, b"")  # type: ignore[union-attr]
    p = Play(made(b"CONNECT", b"example.com:443", hooks=("http_connect",)), seen)
    t.assertEqual(p(Event.HEAD, True), [(A.RUN_HOOK, "http_connect")])
    p = Play(made(uri=b"/nope"), seen)
    t.assertEqual(p.kinds(Event.HEAD, True), [A.ERROR_PAGE, A.FINISH])
    t.assertIs(p.state, State.DONE)


@scenario
def every_hook(t: SynchronousTestCase, seen: set[tuple[State, Event]]) -> None:
    """
    With every hook implemented, each runs in turn: requestheaders, request,
    (server_connected is the upstream's), responseheaders, response.
    Waiting for one pauses the client while it still sends, and holds the
    origin back while it looks at a response head.
    """
    hooks = ("requestheaders", "request", "responseheaders", "response", "error")
    p = Play(made(b"POST", declared=3, hooks=hooks), seen)
    t.assertEqual(p(Event.HEAD), [(A.RUN_HOOK, "requestheaders")])
    t.assertEqual(p.kinds(Event.HOOK_PENDING), [A.PAUSE_CLIENT])
    t.assertEqual(p(Event.BODY_DATA, b"abc"), [])  # kept
    t.assertEqual(p.kinds(Event.HOOK_DONE), [A.RESUME_CLIENT])
    t.assertIs(p.state, State.READING)
    t.assertEqual(p(Event.BODY_END), [(A.RUN_HOOK, "request")])
    t.assertEqual(p.flow.request.raw_content, b"abc")  # type: ignore[union-attr]
    t.assertEqual(p(Event.HOOK_PENDING), [])  # the body is in: nothing to pause
    t.assertEqual(p.kinds(Event.HOOK_DONE), [A.OPEN_UPSTREAM])
    t.assertEqual(p.kinds(Event.UPSTREAM_READY), [A.SEND_REQUEST])
    t.assertEqual(p(Event.RESPONSE_HEAD, OK), [(A.RUN_HOOK, "responseheaders")])
    t.assertEqual(p(Event.HOOK_PENDING), [(A.HOLD_UPSTREAM, True)])
    t.assertEqual(p(Event.RESPONSE_DATA, b"hi"), [])  # kept
    t.assertEqual(p(Event.RESPONSE_END), [])  # noted: the hook still runs
    t.assertEqual(p(Event.HOOK_DONE), [(A.HOLD_UPSTREAM, False), (A.RUN_HOOK, "response")])
    t.assertEqual(p.flow.response.raw_content, b"hi")  # type: ignore[union-attr]
    t.assertIs(p.state, State.RESPONSE)
    t.assertEqual(p(Event.HOOK_PENDING), [])
    t.assertEqual(p.kinds(Event.HOOK_DONE), [A.WRITE_RESPONSE, A.FINISH])
    t.assertIs(p.state, State.DONE)


@scenario
def streamed_upload(t: SynchronousTestCase, seen: set[tuple[State, Event]]) -> None:
    """
    A body declared beyond the limit streams: kept until the upstream is
    ready (the client paused past the high-water mark), then forwarded as
    it arrives, the client's pace the upstream's; its end ends it upstream.
    """
    p = Play(made(b"PUT", declared=1000), seen)
    t.assertEqual(p.kinds(Event.HEAD), [A.OPEN_UPSTREAM])
    t.assertTrue(p.flow.request.stream)  # type: ignore[union-attr]
    t.assertIs(p.exchange.body, Body.STREAM)
    t.assertEqual(p.kinds(Event.BODY_DATA, b"x" * HIGH_WATER), [])  # kept
    t.assertEqual(p.kinds(Event.BODY_DATA, b"x"), [A.PAUSE_CLIENT])
    t.assertEqual(p(Event.UPSTREAM_READY),
                  [(A.SEND_REQUEST, (False, (b"x" * HIGH_WATER, b"x"))), (A.RESUME_CLIENT, None)])
    t.assertEqual(p(Event.BODY_DATA, b"y"), [(A.FORWARD_BODY, b"y")])
    t.assertEqual(p(Event.BODY_END), [(A.END_BODY, None)])
    t.assertEqual(p.flow.request.timestamp_end, p.now)  # type: ignore[union-attr]
    # Recorded up to the limit, and how long it was.
    limit = p.exchange.body_limit
    t.assertEqual(p.flow.request.raw_content, b"x" * limit)  # type: ignore[union-attr]
    t.assertEqual(p.flow.request.body_size, HIGH_WATER + 2)  # type: ignore[union-attr]
    t.assertTrue(p.flow.request.truncated)  # type: ignore[union-attr]
    t.assertEqual(p.kinds(Event.RESPONSE_HEAD, OK), [])
    t.assertIs(p.state, State.RECEIVING)


@scenario
def upload_answered_early(t: SynchronousTestCase, seen: set[tuple[State, Event]]) -> None:
    """
    An origin that answers before the upload ends: the upload stops, the
    answer goes out, the connection closes once the rest of the body has
    been read and dropped.
    """
    p = Play(made(b"PUT", declared=1000), seen)
    p(Event.HEAD)
    p(Event.UPSTREAM_READY)
    t.assertEqual(p(Event.RESPONSE_HEAD, OK), [])
    t.assertEqual(p(Event.RESPONSE_DATA, b"no"), [])
    t.assertEqual(
        p(Event.RESPONSE_END),
        [(A.STOP_BODY, None), (A.CLOSE_AFTER, None), (A.WRITE_RESPONSE, False)],
    )
    t.assertIs(p.state, State.DONE)
    t.assertIs(p.exchange.body, Body.DISCARD)
    t.assertEqual(p(Event.BODY_DATA, b"rest"), [])
    t.assertEqual(p(Event.BODY_END), [(A.FINISH, None)])
    t.assertEqual(p(Event.CLIENT_GONE), [])


@scenario
def buffered_grows_too_big(t: SynchronousTestCase, seen: set[tuple[State, Event]]) -> None:
    """
    A chunked body that outgrows the limit while buffered switches to
    streaming: the request hook runs then, without the body.
    """
    p = Play(made(b"POST", declared=CHUNKED, hooks=("request",), body_limit=4), seen)
    p(Event.HEAD)
    t.assertIs(p.state, State.READING)
    t.assertEqual(p(Event.BODY_DATA, b"abc"), [])
    t.assertEqual(p(Event.BODY_DATA, b"de"), [(A.RUN_HOOK, "request")])
    t.assertTrue(p.flow.request.stream)  # type: ignore[union-attr]
    t.assertIs(p.exchange.body, Body.STREAM)
    t.assertEqual(p.kinds(Event.HOOK_PENDING), [A.PAUSE_CLIENT])
    t.assertEqual(p(Event.BODY_DATA, b"f"), [])
    t.assertEqual(p.kinds(Event.HOOK_DONE), [A.RESUME_CLIENT, A.OPEN_UPSTREAM])
    t.assertEqual(p(Event.BODY_DATA, b"g"), [])  # not yet sending: kept
    t.assertEqual(p(Event.BODY_END), [])  # CONNECTING: the send will be whole
    t.assertEqual(p(Event.UPSTREAM_READY),
                  [(A.SEND_REQUEST, (True, (b"abc", b"de", b"f", b"g")))])
    t.assertEqual(p.flow.request.raw_content, b"abcd")  # type: ignore[union-attr]
    t.assertEqual(p.flow.request.body_size, 7)  # type: ignore[union-attr]


@scenario
def streamed_response(t: SynchronousTestCase, seen: set[tuple[State, Event]]) -> None:
    """
    A response beyond the limit streams: its head goes once the read that
    brought it is handled, with what came in that read, then each piece as
    it comes; the request finishes at the end, then the response hook runs,
    too late to change anything; its failure is only recorded.
    """
    p = Play(made(hooks=("response",)), seen)
    p(Event.HEAD)
    p(Event.BODY_END)
    p(Event.UPSTREAM_READY)
    big = ResponseHead(b"HTTP/1.1", 200, b"OK", [], 1000)
    t.assertEqual(p(Event.RESPONSE_HEAD, big), [])
    t.assertIs(p.state, State.STREAMING)
    t.assertTrue(p.exchange.head_due)
    t.assertEqual(p(Event.RESPONSE_DATA, b"a"), [])  # in the head's read
    t.assertEqual(p(Event.READ_DONE), [(A.SEND_HEAD, (1000, (b"a",)))])
    t.assertFalse(p.exchange.head_due)
    t.assertEqual(p(Event.RESPONSE_DATA, b"b"), [(A.RELAY_RESPONSE, b"b")])
    t.assertEqual(p(Event.RESPONSE_END), [(A.FINISH, None), (A.RUN_HOOK, "response")])
    t.assertIs(p.state, State.RELAYED)
    t.assertEqual(p.flow.response.body_size, 2)  # type: ignore[union-attr]
    t.assertEqual(p.flow.response.raw_content, b"ab")  # type: ignore[union-attr]
    t.assertFalse(p.flow.response.truncated)  # type: ignore[union-attr]
    t.assertEqual(p(Event.HOOK_PENDING), [])
    t.assertEqual(p(Event.HOOK_FAILED, Failure(ValueError("late"))), [])
    t.assertIs(p.state, State.DONE)
    t.assertEqual(p.flow.error.msg, "late")  # type: ignore[union-attr]


@scenario
def response_grows_too_big(t: SynchronousTestCase, seen: set[tuple[State, Event]]) -> None:
    """
    A close-delimited response that outgrows the limit switches to
    streaming: the head and what was kept go out, then the rest; a
    streamed response's hook that ends normally ends the exchange.
    """
    p = Play(made(hooks=("response",), body_limit=3), seen)
    p(Event.HEAD)
    p(Event.BODY_END)
    p(Event.UPSTREAM_READY)
    p(Event.RESPONSE_HEAD, ResponseHead(b"HTTP/1.0", 200, b"OK", [], UNTIL_CLOSE))
    t.assertEqual(p(Event.RESPONSE_DATA, b"ab"), [])
    t.assertEqual(p(Event.RESPONSE_DATA, b"cd"), [(A.SEND_HEAD, (UNTIL_CLOSE, (b"ab", b"cd")))])
    t.assertTrue(p.flow.response.stream)  # type: ignore[union-attr]
    t.assertEqual(p(Event.RESPONSE_DATA, b"ef"), [(A.RELAY_RESPONSE, b"ef")])
    p(Event.RESPONSE_END)
    t.assertEqual(p.flow.response.raw_content, b"abc")  # type: ignore[union-attr]
    t.assertEqual(p.flow.response.body_size, 6)  # type: ignore[union-attr]
    t.assertTrue(p.flow.response.truncated)  # type: ignore[union-attr]
    t.assertEqual(p(Event.HOOK_DONE), [])
    t.assertIs(p.state, State.DONE)


@scenario
def streamed_by_default(t: SynchronousTestCase, seen: set[tuple[State, Event]]) -> None:
    """
    When nobody reads bodies whole, a request body and a response body
    stream however small they are, and are still recorded into the flow;
    a response hook that does not need them whole runs once it is relayed.
    """
    p = Play(made(b"POST", declared=3, hooks=("response",), whole=()), seen)
    t.assertEqual(p(Event.HEAD), [(A.OPEN_UPSTREAM, None)])
    t.assertTrue(p.flow.request.stream)  # type: ignore[union-attr]
    t.assertEqual(p(Event.BODY_DATA, b"ab"), [])  # kept until the request goes
    t.assertEqual(p(Event.UPSTREAM_READY), [(A.SEND_REQUEST, (False, (b"ab",)))])
    t.assertEqual(p(Event.BODY_DATA, b"c"), [(A.FORWARD_BODY, b"c")])
    t.assertEqual(p(Event.BODY_END), [(A.END_BODY, None)])
    t.assertEqual(p.flow.request.raw_content, b"abc")  # type: ignore[union-attr]
    t.assertFalse(p.flow.request.truncated)  # type: ignore[union-attr]
    t.assertEqual(p(Event.RESPONSE_HEAD, OK), [])  # held back until the read is done
    t.assertTrue(p.flow.response.stream)  # type: ignore[union-attr]
    t.assertEqual(p(Event.RESPONSE_DATA, b"hi"), [])
    # All of it came in the head's read: written whole, then the hook.
    t.assertEqual(p(Event.RESPONSE_END),
                  [(A.WRITE_RESPONSE, False), (A.FINISH, None), (A.RUN_HOOK, "response")])
    t.assertIs(p.state, State.RELAYED)
    t.assertEqual(p.flow.response.raw_content, b"hi")  # type: ignore[union-attr]
    # A request without a body is not marked streaming: nothing to stream.
    p = Play(made(whole=()), seen)
    t.assertEqual(p(Event.HEAD, True), [(A.OPEN_UPSTREAM, None)])
    t.assertFalse(p.flow.request.stream)  # type: ignore[union-attr]
    t.assertEqual(p.flow.request.raw_content, b"")  # type: ignore[union-attr]


@scenario
def event_stream(t: SynchronousTestCase, seen: set[tuple[State, Event]]) -> None:
    """
    A ``text/event-stream`` response streams even when a hook reads bodies
    whole, unless its ``responseheaders`` hook asks for it buffered.
    """
    sse = ResponseHead(b"HTTP/1.1", 200, b"OK",
                       [(b"content-TYPE", b"Text/Event-Stream; charset=utf-8")], CHUNKED)
    p = Play(made(hooks=("response",)), seen)
    p(Event.HEAD, True)
    p(Event.UPSTREAM_READY)
    t.assertEqual(p(Event.RESPONSE_HEAD, sse), [])
    t.assertEqual(p(Event.READ_DONE), [(A.SEND_HEAD, (CHUNKED, ()))])
    p = Play(made(hooks=("responseheaders", "response")), seen)
    p(Event.HEAD, True)
    p(Event.UPSTREAM_READY)
    t.assertEqual(p(Event.RESPONSE_HEAD, sse), [(A.RUN_HOOK, "responseheaders")])
    t.assertTrue(p.flow.response.stream)  # type: ignore[union-attr]
    p.flow.response.stream = False  # type: ignore[union-attr]
    t.assertEqual(p(Event.HOOK_DONE), [])
    t.assertIs(p.state, State.RECEIVING)


@scenario
def stream_transform(t: SynchronousTestCase, seen: set[tuple[State, Event]]) -> None:
    """
    A callable ``response.stream`` transforms each piece (what was kept
    too) and is called with ``b""`` at the end for what it still holds; a
    body of known length goes out chunked, since its length changes, and
    what the client got is what is recorded.  A transformation that raises
    fails the flow, the client's connection aborted.
    """
    p = Play(made(hooks=("responseheaders",), whole=()), seen)
    p(Event.HEAD, True)
    p(Event.UPSTREAM_READY)
    p(Event.RESPONSE_HEAD, OK)
    p(Event.HOOK_PENDING)
    t.assertEqual(p(Event.RESPONSE_DATA, b"h"), [])  # kept while the hook runs
    p.flow.response.stream = lambda data: data.upper() if data else b"!"  # type: ignore[union-attr]
    t.assertEqual(p(Event.HOOK_DONE),
                  [(A.HOLD_UPSTREAM, False), (A.SEND_HEAD, (CHUNKED, (b"H",)))])
    t.assertEqual(p(Event.RESPONSE_DATA, b"i"), [(A.RELAY_RESPONSE, b"I")])
    t.assertEqual(p(Event.RESPONSE_END), [(A.RELAY_RESPONSE, b"!"), (A.FINISH, None)])
    t.assertEqual(p.flow.response.raw_content, b"HI!")  # type: ignore[union-attr]

    def broken(data: bytes) -> bytes:
        raise ValueError("no")

    for head_out in (False, True):
        p = Play(made(hooks=("responseheaders", "error"), whole=()), seen)
        p(Event.HEAD, True)
        p(Event.UPSTREAM_READY)
        p(Event.RESPONSE_HEAD, OK)
        p.flow.response.stream = broken  # type: ignore[union-attr]
        t.assertEqual(p(Event.HOOK_DONE), [])  # at once: the head waits for the read's end
        if head_out:
            t.assertEqual(p(Event.READ_DONE), [(A.SEND_HEAD, (CHUNKED, ()))])
        t.assertEqual(p(Event.RESPONSE_DATA, b"x"),
                      [(A.ABANDON_UPSTREAM, None), (A.RUN_HOOK, "error")])
        t.assertIn("ValueError: no", p.flow.error.msg)  # type: ignore[union-attr]
        # The client's connection is aborted once the head is out; before, an error page.
        t.assertEqual(p.kinds(Event.HOOK_DONE),
                      [A.ABORT_CLIENT] if head_out else [A.ERROR_PAGE, A.FINISH])


@scenario
def expect_and_interim(t: SynchronousTestCase, seen: set[tuple[State, Event]]) -> None:
    """
    ``Expect: 100-continue``: the ``requestheaders`` hooks run first; an
    answer (a hook's, or a refusal) goes at once, without the body; else the
    proxy asks for the body (``CONTINUE``), buffered or streamed.  Interim
    responses: a ``103`` is relayed, a ``100`` is not (the proxy asked).
    """
    p = Play(made(b"POST", declared=3, hooks=("requestheaders", "request"), expect=True),
             seen)
    t.assertEqual(p(Event.HEAD), [(A.RUN_HOOK, "requestheaders")])
    t.assertEqual(p(Event.HOOK_DONE), [(A.CONTINUE, None)])
    t.assertIs(p.state, State.READING)
    p = Play(made(b"POST", declared=3, expect=True, whole=()), seen)
    t.assertEqual(p(Event.HEAD), [(A.CONTINUE, None), (A.OPEN_UPSTREAM, None)])
    p = Play(made(b"POST", declared=3, hooks=("requestheaders",), expect=True), seen)
    p(Event.HEAD)
    p.flow.response = Response.make(403, b"no")
    t.assertEqual(p.kinds(Event.HOOK_DONE), [A.CLOSE_AFTER, A.WRITE_RESPONSE])
    t.assertEqual(p(Event.BODY_END), [(A.FINISH, None)])  # should the client send it after all
    p = Play(made(b"POST", uri=b"/nope", declared=3, expect=True), seen)
    t.assertEqual(p.kinds(Event.HEAD), [A.CLOSE_AFTER, A.ERROR_PAGE])

    p = Play(made(), seen)
    p(Event.HEAD, True)
    p(Event.UPSTREAM_READY)
    early = ResponseHead(b"HTTP/1.1", 103, b"Early Hints", [(b"Link", b"</a.css>")], NO_BODY)
    t.assertEqual(p(Event.RESPONSE_INTERIM, early), [(A.WRITE_INTERIM, early)])
    proceed = ResponseHead(b"HTTP/1.1", 100, b"Continue", [], NO_BODY)
    t.assertEqual(p(Event.RESPONSE_INTERIM, proceed), [])
    t.assertIs(p.state, State.WAITING)
    # Both recorded, in order, heads only.
    t.assertEqual([(r.status_code, r.reason) for r in p.flow.interim],
                  [(103, "Early Hints"), (100, "Continue")])
    t.assertEqual(p.flow.interim[0].headers["link"], "</a.css>")


@scenario
def hook_answers(t: SynchronousTestCase, seen: set[tuple[State, Event]]) -> None:
    """
    A requestheaders hook that answers while the body still arrives: the
    body is dropped, the answer (the hook's own) waits for its end, and
    runs through the response hook; nothing goes upstream.
    """
    p = Play(made(b"POST", declared=5, hooks=("requestheaders", "response")), seen)
    p(Event.HEAD)
    p.flow.response = Response.make(403, b"no")
    t.assertEqual(p(Event.HOOK_DONE), [])  # the body is dropped as it comes
    t.assertIs(p.state, State.DISCARDING)
    t.assertEqual(p(Event.BODY_DATA, b"12345"), [])
    t.assertEqual(p(Event.BODY_END), [(A.RUN_HOOK, "response")])
    t.assertEqual(p.kinds(Event.HOOK_DONE), [A.WRITE_RESPONSE, A.FINISH])
    t.assertEqual(p.exchange._own, True)
    response = p.flow.response
    t.assertEqual((response.timestamp_start, response.timestamp_end), (14.0, 14.0))


@scenario
def request_hook_answers(t: SynchronousTestCase, seen: set[tuple[State, Event]]) -> None:
    """A request hook that answers (the body is in): the answer goes at once."""
    p = Play(made(hooks=("request",)), seen)
    p(Event.HEAD)
    p(Event.BODY_END)
    p.flow.response = Response.make(200, b"mock")
    t.assertEqual(p(Event.HOOK_DONE), [(A.WRITE_RESPONSE, True), (A.FINISH, None)])


@scenario
def refused(t: SynchronousTestCase, seen: set[tuple[State, Event]]) -> None:
    """
    A request that cannot be proxied has no flow: its body is read and
    dropped, then the error page answers it; no hook runs.
    """
    p = Play(made(uri=b"/not-absolute", hooks=("requestheaders", "error")), seen)
    t.assertIsNone(p.exchange.flow)
    t.assertEqual(p(Event.HEAD), [])
    t.assertIs(p.state, State.DISCARDING)
    t.assertEqual(p(Event.BODY_DATA, b"x"), [])
    actions = p(Event.BODY_END)
    t.assertEqual(kinds(actions), [A.ERROR_PAGE, A.FINISH])
    actions[0][1].trap(BadRequestTarget)
    t.assertIs(p.state, State.DONE)


@scenario
def killed_at_each_hook(t: SynchronousTestCase, seen: set[tuple[State, Event]]) -> None:
    """
    A flow killed by a hook: the client's connection is aborted without an
    answer, the upstream closed, and the error hook runs unless the
    response hook (the flow's last) was the killer.
    """
    hooks = ("requestheaders", "request", "responseheaders", "response", "error")
    p = Play(made(hooks=hooks), seen)
    p(Event.HEAD)
    p.flow.kill()
    t.assertEqual(p(Event.HOOK_DONE),
                  [(A.ABORT_CLIENT, None), (A.RUN_HOOK, "error")])
    t.assertIs(p.state, State.ERROR)
    t.assertEqual(p(Event.HOOK_DONE), [])
    t.assertIs(p.state, State.DONE)
    t.assertEqual(p(Event.BODY_END), [])

    p = Play(made(hooks=hooks), seen)
    p(Event.HEAD)
    p(Event.HOOK_DONE)
    p(Event.BODY_END)
    p(Event.HOOK_DONE)
    p(Event.UPSTREAM_READY)
    p(Event.RESPONSE_HEAD, OK)
    p.flow.kill()
    t.assertEqual(p.kinds(Event.HOOK_DONE), [A.ABANDON_UPSTREAM, A.ABORT_CLIENT, A.RUN_HOOK])

    p = Play(made(hooks=hooks), seen)
    for event in (Event.HEAD, Event.HOOK_DONE, Event.BODY_END, Event.HOOK_DONE,
                  Event.UPSTREAM_READY):
        p(event)
    p(Event.RESPONSE_HEAD, OK)
    p(Event.HOOK_DONE)
    p(Event.RESPONSE_END)
    t.assertIs(p.state, State.RESPONSE)
    p.flow.kill()
    t.assertEqual(p(Event.HOOK_DONE), [(A.ABORT_CLIENT, None)])
    t.assertIs(p.state, State.DONE)

    p = Play(made(hooks=hooks), seen)
    for event in (Event.HEAD, Event.HOOK_DONE, Event.BODY_END):
        p(event)
    p.flow.kill()
    t.assertEqual(p.kinds(Event.HOOK_DONE), [A.ABORT_CLIENT, A.RUN_HOOK])


@scenario
def upstream_fails(t: SynchronousTestCase, seen: set[tuple[State, Event]]) -> None:
    """
    The upstream failing before any response byte: the error hook, then the
    error page with the failure's status; after the head went out, the
    connection is aborted instead, so a truncated body never looks whole.
    """
    reason = Failure(UpstreamConnectionLost("reset"))
    for state in (State.CONNECTING, State.WAITING, State.RECEIVING):
        p = Play(made(hooks=("error",)), seen)
        p(Event.HEAD)
        p(Event.BODY_END)
        if state is not State.CONNECTING:
            p(Event.UPSTREAM_READY)
        if state is State.RECEIVING:
            p(Event.RESPONSE_HEAD, OK)
        t.assertIs(p.state, state)
        t.assertEqual(p(Event.UPSTREAM_FAILED, reason), [(A.RUN_HOOK, "error")])
        t.assertEqual(p.flow.error.msg, "reset")  # type: ignore[union-attr]
        t.assertEqual(p(Event.HOOK_PENDING), [])
        t.assertEqual(p(Event.HOOK_DONE), [(A.ERROR_PAGE, reason), (A.FINISH, None)])
        t.assertFalse(p.flow.live)

    p = Play(made(hooks=("error",), body_limit=0), seen)
    p(Event.HEAD)
    p(Event.BODY_END)
    p(Event.UPSTREAM_READY)
    p(Event.RESPONSE_HEAD, OK)
    t.assertIs(p.state, State.STREAMING)
    p(Event.READ_DONE)  # the head is out
    t.assertEqual(p(Event.UPSTREAM_FAILED, reason), [(A.RUN_HOOK, "error")])
    t.assertEqual(p(Event.HOOK_FAILED, Failure(ValueError())), [(A.ABORT_CLIENT, None)])

    # Failing while the head is still held back: nothing was sent, an error page.
    p = Play(made(hooks=("error",), body_limit=0), seen)
    p(Event.HEAD, True)
    p(Event.UPSTREAM_READY)
    p(Event.RESPONSE_HEAD, OK)
    t.assertTrue(p.exchange.head_due)
    t.assertEqual(p(Event.UPSTREAM_FAILED, reason), [(A.RUN_HOOK, "error")])
    t.assertFalse(p.exchange.head_due)
    t.assertEqual(p(Event.HOOK_DONE), [(A.ERROR_PAGE, reason), (A.FINISH, None)])

    p = Play(made(b"PUT", declared=1000), seen)
    p(Event.HEAD)
    p(Event.UPSTREAM_READY)
    timeout = Failure(UpstreamTimeout("silent"))
    t.assertEqual(
        p(Event.UPSTREAM_FAILED, timeout),
        [(A.CLOSE_AFTER, None), (A.ERROR_PAGE, timeout)],
    )
    t.assertEqual(p(Event.BODY_END), [(A.FINISH, None)])


@scenario
def upstream_fails_during_head_hook(t: SynchronousTestCase, seen: set[tuple[State, Event]]) -> None:
    """The origin failing while responseheaders runs cancels that hook."""
    p = Play(made(hooks=("responseheaders",)), seen)
    p(Event.HEAD)
    p(Event.BODY_END)
    p(Event.UPSTREAM_READY)
    p(Event.RESPONSE_HEAD, OK)
    p(Event.HOOK_PENDING)
    reason = Failure(UpstreamConnectionLost("gone"))
    t.assertEqual(p.kinds(Event.UPSTREAM_FAILED, reason), [A.CANCEL_HOOK, A.ERROR_PAGE, A.FINISH])


@scenario
def hooks_fail(t: SynchronousTestCase, seen: set[tuple[State, Event]]) -> None:
    """
    A failing hook fails the flow with an error page (500 for a hook); a
    failing error hook still answers with the first failure; a failing
    response hook is the flow's last (no error hook).
    """
    hooks = ("requestheaders", "request", "responseheaders", "response", "error")
    for before in (0, 2, 5):
        p = Play(made(hooks=hooks), seen)
        steps = [(Event.HEAD, None), (Event.HOOK_DONE, None), (Event.BODY_END, None),
                 (Event.HOOK_DONE, None), (Event.UPSTREAM_READY, None),
                 (Event.RESPONSE_HEAD, OK)]
        for event, arg in steps[: before + 1]:
            p(event, arg)
        first = Failure(HookFailed("x", "Addon", Failure(ValueError("boom"))))
        dropped = {5: [(A.ABANDON_UPSTREAM, None)]}.get(before, [])  # the origin answers
        t.assertEqual(p(Event.HOOK_FAILED, first), [*dropped, (A.RUN_HOOK, "error")])
        answer = [(A.ERROR_PAGE, first), (A.FINISH, None)]
        if before == 0:  # the body is still due: answer, close once it is read
            answer = [(A.CLOSE_AFTER, None), (A.ERROR_PAGE, first)]
        t.assertEqual(p(Event.HOOK_FAILED, Failure(ValueError("again"))), answer)

    p = Play(made(hooks=hooks), seen)
    for event, arg in [(Event.HEAD, None), (Event.HOOK_DONE, None), (Event.BODY_END, None),
                       (Event.HOOK_DONE, None), (Event.UPSTREAM_READY, None),
                       (Event.RESPONSE_HEAD, OK), (Event.HOOK_DONE, None),
                       (Event.RESPONSE_END, None)]:
        p(event, arg)
    t.assertIs(p.state, State.RESPONSE)
    failure = Failure(ValueError("response hook"))
    t.assertEqual(p(Event.HOOK_FAILED, failure), [(A.ERROR_PAGE, failure), (A.FINISH, None)])


@scenario
def invalid_after_hooks(t: SynchronousTestCase, seen: set[tuple[State, Event]]) -> None:
    """
    A hook that leaves a field that cannot be written fails the flow with
    a message naming the field and the hook, before anything is written.
    """
    p = Play(made(hooks=("request", "error")), seen)
    p(Event.HEAD)
    p(Event.BODY_END)
    p.flow.request.path = "/a HTTP/1.1\r\nX: y"  # type: ignore[union-attr]
    actions = p(Event.HOOK_DONE)
    t.assertEqual(kinds(actions), [A.RUN_HOOK])
    error = p.exchange.failure.value  # type: ignore[union-attr]
    t.assertIsInstance(error, InvalidMessage)
    t.assertIn("request path", str(error))
    t.assertIn("'request' hook", str(error))
    t.assertEqual(p.kinds(Event.HOOK_DONE), [A.ERROR_PAGE, A.FINISH])

    p = Play(made(hooks=("response",)), seen)
    for event in (Event.HEAD, Event.BODY_END, Event.UPSTREAM_READY):
        p(event)
    p(Event.RESPONSE_HEAD, OK)
    p(Event.RESPONSE_END)
    p.flow.response.reason = "OK\r\nSet-Cookie: a=b"  # type: ignore[union-attr]
    actions = p(Event.HOOK_DONE)
    t.assertEqual(kinds(actions), [A.ERROR_PAGE, A.FINISH])
    t.assertIn("response reason", str(actions[0][1].value))


@scenario
def client_goes(t: SynchronousTestCase, seen: set[tuple[State, Event]]) -> None:
    """
    A client that goes away: the hook waited for is cancelled, the upstream
    closed, the flow fails with "client disconnected" and gets its error
    hook, unless its last hook (response or error) already started.
    """
    hooks = ("requestheaders", "request", "responseheaders", "response", "error")
    p = Play(made(hooks=hooks), seen)
    p(Event.HEAD)
    p(Event.HOOK_PENDING)
    t.assertEqual(p(Event.CLIENT_GONE),
                  [(A.CANCEL_HOOK, None), (A.RUN_HOOK, "error")])
    t.assertEqual(p.flow.error.msg, "client disconnected")  # type: ignore[union-attr]
    t.assertEqual(p(Event.HOOK_DONE), [])
    t.assertIs(p.state, State.DONE)

    p = Play(made(hooks=("error",)), seen)
    p(Event.HEAD)
    p(Event.BODY_END)
    p(Event.UPSTREAM_READY)
    t.assertEqual(p(Event.CLIENT_GONE), [(A.ABANDON_UPSTREAM, None), (A.RUN_HOOK, "error")])
    t.assertEqual(p(Event.HOOK_PENDING), [])
    t.assertEqual(p(Event.CLIENT_GONE), [(A.CANCEL_HOOK, None)])
    t.assertIs(p.state, State.DONE)

    p = Play(made(hooks=("response",)), seen)
    for event in (Event.HEAD, Event.BODY_END, Event.UPSTREAM_READY):
        p(event)
    p(Event.RESPONSE_HEAD, OK)
    p(Event.RESPONSE_END)
    p(Event.HOOK_PENDING)
    t.assertEqual(p(Event.CLIENT_GONE), [(A.CANCEL_HOOK, None)])
    t.assertEqual(p.flow.error.msg, "client disconnected")  # type: ignore[union-attr]

    p = Play(made(hooks=("response",), body_limit=0), seen)
    for event in (Event.HEAD, Event.BODY_END, Event.UPSTREAM_READY):
        p(event)
    p(Event.RESPONSE_HEAD, OK)
    p(Event.RESPONSE_END)
    t.assertIs(p.state, State.RELAYED)
    t.assertEqual(p(Event.CLIENT_GONE), [])
    t.assertIsNone(p.flow.error)  # it ended with its response

    p = Play(made(uri=b"/refused"), seen)
    p(Event.HEAD)
    t.assertEqual(p(Event.CLIENT_GONE), [])
    t.assertIs(p.state, State.DONE)


@scenario
def connect_passthrough(t: SynchronousTestCase, seen: set[tuple[State, Event]]) -> None:
    """
    A CONNECT runs http_connect once read, opens the tunnel's far end
    before answering, runs the response hook on its 200 and switches; a
    far end lost meanwhile fails the flow instead.
    """
    hooks = ("http_connect", "response", "error")
    p = Play(made(b"CONNECT", b"example.com:443", hooks=hooks, passthrough=True), seen)
    t.assertEqual(p(Event.HEAD), [])
    t.assertIs(p.state, State.READING)
    t.assertEqual(p(Event.BODY_END), [(A.RUN_HOOK, "http_connect")])
    t.assertEqual(p(Event.HOOK_DONE), [(A.OPEN_TUNNEL, True)])
    t.assertEqual(p(Event.UPSTREAM_READY), [(A.RUN_HOOK, "response")])
    t.assertEqual(p.flow.response.status_code, 200)  # type: ignore[union-attr]
    t.assertEqual(p(Event.HOOK_DONE), [(A.SWITCH, None)])
    t.assertIs(p.state, State.DONE)

    p = Play(made(b"CONNECT", b"example.com:443", hooks=hooks, passthrough=True), seen)
    p(Event.HEAD)
    p(Event.BODY_END)
    p(Event.HOOK_DONE)
    p(Event.UPSTREAM_READY)
    lost = Failure(UpstreamConnectionLost("closed"))
    t.assertEqual(p(Event.UPSTREAM_FAILED, lost), [])
    t.assertEqual(p(Event.HOOK_DONE), [(A.RUN_HOOK, "error")])
    t.assertEqual(p(Event.HOOK_DONE), [(A.ERROR_PAGE, lost), (A.FINISH, None)])


@scenario
def connect_intercepted(t: SynchronousTestCase, seen: set[tuple[State, Event]]) -> None:
    """
    Without a certificate store every tunnel passes through; with one,
    a tunnel is intercepted unless configuration or the hook says otherwise;
    a response hook that answers otherwise gets its answer written and no
    tunnel; http_connect answering does the same.
    """
    p = Play(made(b"CONNECT", b"example.com:443", intercepting=False), seen)
    p(Event.HEAD)
    t.assertEqual(p(Event.BODY_END), [(A.OPEN_TUNNEL, True)])
    t.assertTrue(p.flow.passthrough)

    p = Play(made(b"CONNECT", b"example.com:443", hooks=("response",)), seen)
    p(Event.HEAD)
    t.assertEqual(p(Event.BODY_END), [(A.OPEN_TUNNEL, False)])
    p(Event.UPSTREAM_READY)
    p.flow.response = Response.make(407)
    t.assertEqual(p.kinds(Event.HOOK_DONE), [A.ABANDON_UPSTREAM, A.WRITE_RESPONSE, A.FINISH])

    p = Play(made(b"CONNECT", b"example.com:443", hooks=("http_connect",)), seen)
    p(Event.HEAD)
    p(Event.BODY_END)
    p.flow.response = Response.make(403)
    t.assertEqual(p.kinds(Event.HOOK_DONE), [A.WRITE_RESPONSE, A.FINISH])

    p = Play(made(b"CONNECT", b"example.com:443", hooks=("response",)), seen)
    p(Event.HEAD)
    p(Event.BODY_END)
    p(Event.UPSTREAM_READY)
    t.assertEqual(p(Event.CLIENT_GONE), [(A.ABANDON_UPSTREAM, None)])


UPGRADE = [(b"Host", b"example.com"), (b"Connection", b"Upgrade"), (b"Upgrade", b"websocket"),
           (b"Sec-WebSocket-Key", b"dGhlIHNhbXBsZSBub25jZQ=="),
           (b"Sec-WebSocket-Version", b"13")]
SWITCHING = ResponseHead(b"HTTP/1.1", 101, b"Switching Protocols",
                         [(b"Upgrade", b"websocket"), (b"Connection", b"Upgrade")], NO_BODY)


@scenario
def websocket_upgrade(t: SynchronousTestCase, seen: set[tuple[State, Event]]) -> None:
    """
    A GET asking for a WebSocket goes upstream saying so (OPEN_UPSTREAM's
    argument); the origin's 101 runs responseheaders and response like any
    response, the flow gets its WebSocketData and stays live, and the end
    is SWITCH "websocket" (the connection is the relay's, not abandoned).
    A response hook that changes the status gets that answer written and
    the origin's connection closed; a kill or the client going away closes
    it too; a 101 to a request that did not ask is an error.
    """
    hooks = ("responseheaders", "response", "error")
    p = Play(made(fields=UPGRADE, hooks=hooks), seen)
    t.assertEqual(p(Event.HEAD, True), [(A.OPEN_UPSTREAM, True)])
    t.assertEqual(p(Event.UPSTREAM_READY), [(A.SEND_REQUEST, (True, None))])
    t.assertEqual(p(Event.RESPONSE_HEAD, SWITCHING), [(A.RUN_HOOK, "responseheaders")])
    t.assertIsNotNone(p.flow.websocket)
    t.assertEqual(p(Event.HOOK_DONE), [])
    t.assertEqual(p(Event.RESPONSE_END), [(A.RUN_HOOK, "response")])
    t.assertEqual(p(Event.HOOK_DONE), [(A.SWITCH, "websocket")])
    t.assertIs(p.state, State.DONE)
    t.assertTrue(p.flow.live)
    t.assertEqual(p(Event.CLIENT_GONE), [])

    p = Play(made(fields=UPGRADE, hooks=hooks), seen)
    p(Event.HEAD, True)
    p(Event.UPSTREAM_READY)
    p(Event.RESPONSE_HEAD, SWITCHING)
    p(Event.HOOK_DONE)
    p(Event.RESPONSE_END)
    p.flow.response = Response.make(403)
    t.assertEqual(p.kinds(Event.HOOK_DONE), [A.ABANDON_UPSTREAM, A.WRITE_RESPONSE, A.FINISH])
    t.assertIsNone(p.flow.websocket)
    t.assertFalse(p.flow.live)

    p = Play(made(fields=UPGRADE, hooks=hooks), seen)
    p(Event.HEAD, True)
    p(Event.UPSTREAM_READY)
    p(Event.RESPONSE_HEAD, SWITCHING)
    p(Event.HOOK_DONE)
    p(Event.RESPONSE_END)
    p.flow.kill()
    t.assertEqual(p.kinds(Event.HOOK_DONE), [A.ABANDON_UPSTREAM, A.ABORT_CLIENT])

    p = Play(made(fields=UPGRADE, hooks=hooks), seen)
    p(Event.HEAD, True)
    p(Event.UPSTREAM_READY)
    p(Event.RESPONSE_HEAD, SWITCHING)
    p(Event.HOOK_DONE)
    p(Event.RESPONSE_END)
    t.assertEqual(p(Event.HOOK_PENDING), [])
    t.assertEqual(p(Event.CLIENT_GONE), [(A.CANCEL_HOOK, None), (A.ABANDON_UPSTREAM, None)])

    p = Play(made(fields=UPGRADE), seen)  # no hooks: straight through
    p(Event.HEAD, True)
    p(Event.UPSTREAM_READY)
    t.assertEqual(p(Event.RESPONSE_HEAD, SWITCHING), [])
    t.assertEqual(p(Event.RESPONSE_END), [(A.SWITCH, "websocket")])

    for fields, method in ((UPGRADE[:2] + UPGRADE[3:], b"GET"), (UPGRADE, b"POST")):
        p = Play(made(method, fields=fields, hooks=("error",)), seen)
        t.assertEqual(p(Event.HEAD, True), [(A.OPEN_UPSTREAM, None)])
        p(Event.UPSTREAM_READY)
        t.assertEqual(p.kinds(Event.RESPONSE_HEAD, SWITCHING), [A.ABANDON_UPSTREAM, A.RUN_HOOK])
        t.assertEqual(p.flow.error.msg,  # type: ignore[union-attr]
                      "the server switched protocols unasked")
        t.assertIsNone(p.flow.websocket)


@scenario
def body_while_waiting(t: SynchronousTestCase, seen: set[tuple[State, Event]]) -> None:
    """
    Body events arrive in every state where the body may still be coming:
    while hooks run, while connecting, waiting, receiving, streaming, while
    the error hook runs.
    """
    hooks = ("responseheaders", "response", "error")
    p = Play(made(b"PUT", declared=1000, hooks=hooks), seen)
    p(Event.HEAD)
    t.assertIs(p.state, State.CONNECTING)
    t.assertEqual(p(Event.BODY_DATA, b"a"), [])  # kept until the request goes
    p(Event.UPSTREAM_READY)
    p(Event.RESPONSE_HEAD, OK)
    t.assertIs(p.state, State.RESPONSE_HEADERS)
    t.assertEqual(p(Event.BODY_DATA, b"b"), [(A.FORWARD_BODY, b"b")])
    p(Event.HOOK_DONE)
    t.assertIs(p.state, State.RECEIVING)
    t.assertEqual(p(Event.BODY_DATA, b"c"), [(A.FORWARD_BODY, b"c")])
    t.assertEqual(p(Event.BODY_END), [(A.END_BODY, None)])
    t.assertEqual(p.kinds(Event.RESPONSE_END), [A.RUN_HOOK])
    t.assertEqual(p.kinds(Event.HOOK_DONE), [A.WRITE_RESPONSE, A.FINISH])

    for target, steps in (
        (State.STREAMING, [(Event.UPSTREAM_READY, None),
                           (Event.RESPONSE_HEAD, ResponseHead(b"HTTP/1.1", 200, b"", [], 5000)),
                           (Event.HOOK_DONE, None)]),
        (State.ERROR, [(Event.UPSTREAM_FAILED, Failure(UpstreamTimeout("t")))]),
        (State.WAITING, [(Event.UPSTREAM_READY, None)]),
    ):
        p = Play(made(b"PUT", declared=1000, hooks=hooks), seen)
        p(Event.HEAD)
        for event, arg in steps:
            p(event, arg)
        t.assertIs(p.state, target)
        p(Event.BODY_DATA, b"z")
        p(Event.BODY_END)
    for state_hooks, target in ((("requestheaders",), State.REQUEST_HEADERS),
                                (("request",), State.REQUEST)):
        p = Play(made(b"PUT", declared=1000, hooks=state_hooks), seen)
        p(Event.HEAD)
        if target is State.REQUEST_HEADERS:
            t.assertIs(p.state, target)
        else:
            t.assertIs(p.state, State.REQUEST)
        t.assertEqual(p(Event.BODY_DATA, b"z"), [])  # kept
        t.assertEqual(p(Event.BODY_END), [])

    p = Play(made(b"PUT", declared=1000, hooks=("responseheaders",)), seen)
    p(Event.HEAD)
    p(Event.UPSTREAM_READY)
    p(Event.RESPONSE_HEAD, OK)
    t.assertIs(p.state, State.RESPONSE_HEADERS)
    t.assertEqual(p(Event.BODY_END), [(A.END_BODY, None)])

    p = Play(made(b"PUT", declared=1000, hooks=("response",)), seen)
    p(Event.HEAD)
    p(Event.UPSTREAM_READY)
    p(Event.RESPONSE_HEAD, OK)
    p(Event.RESPONSE_END)
    t.assertIs(p.state, State.RESPONSE)
    t.assertEqual(p(Event.BODY_DATA, b"dropped"), [])
    t.assertEqual(p(Event.BODY_END), [])
    t.assertEqual(p.kinds(Event.HOOK_DONE), [A.WRITE_RESPONSE, A.FINISH])

    p = Play(made(b"PUT", declared=1000, hooks=("response",), body_limit=0), seen)
    p(Event.HEAD)
    p(Event.UPSTREAM_READY)
    p(Event.RESPONSE_HEAD, OK)
    t.assertEqual(p.kinds(Event.RESPONSE_END),  # whole in the head's read: written whole
                  [A.STOP_BODY, A.CLOSE_AFTER, A.WRITE_RESPONSE, A.RUN_HOOK])
    t.assertIs(p.state, State.RELAYED)
    t.assertEqual(p(Event.BODY_DATA, b"dropped"), [])
    t.assertEqual(p(Event.BODY_END), [(A.FINISH, None)])


def discarding(t: SynchronousTestCase, seen: set[tuple[State, Event]]) -> Play:
    """An exchange a hook answered, in DISCARDING while the client's body still comes."""
    p = Play(made(b"POST", declared=5, hooks=("requestheaders",)), seen)
    p(Event.HEAD)
    p.flow.response = Response.make(403)
    p(Event.HOOK_DONE)
    t.assertIs(p.state, State.DISCARDING)
    return p


@scenario
def cancelled_everywhere(t: SynchronousTestCase, seen: set[tuple[State, Event]]) -> None:
    """
    The proxy may give an exchange up (CANCEL, at the shutdown deadline) in
    any state after NEW: the hook waited for is cancelled, the upstream
    closed, the flow fails with the reason and gets its error hook (unless
    its response hook started), then a 503 if nothing was sent, an aborted
    connection if the response started, nothing once it is over.
    """
    shut = Failure(ShuttingDown())
    hooks = ("requestheaders", "request", "responseheaders", "response", "error")
    pending, done = (Event.HOOK_PENDING, None), (Event.HOOK_DONE, None)
    ready, head = (Event.UPSTREAM_READY, None), (Event.RESPONSE_HEAD, OK)
    cases: list[tuple[Exchange, list[tuple[Event, Any]], State, list[Action]]] = [
        (made(b"POST", declared=2, hooks=hooks), [pending], State.REQUEST_HEADERS,
         [A.CANCEL_HOOK, A.RESUME_CLIENT, A.RUN_HOOK]),
        (made(b"POST", declared=2, hooks=("error",)), [], State.READING, [A.RUN_HOOK]),
        (made(b"POST", declared=2), [], State.READING,
         [A.CLOSE_AFTER, A.ERROR_PAGE]),
        (made(hooks=hooks), [done, pending], State.REQUEST, [A.CANCEL_HOOK, A.RUN_HOOK]),
        (made(), [], State.CONNECTING, [A.ABANDON_UPSTREAM, A.ERROR_PAGE, A.FINISH]),
        (made(), [ready], State.WAITING, [A.ABANDON_UPSTREAM, A.ERROR_PAGE, A.FINISH]),
        (made(hooks=hooks), [done, done, ready, head, pending], State.RESPONSE_HEADERS,
         [A.CANCEL_HOOK, A.ABANDON_UPSTREAM, A.RUN_HOOK]),
        (made(), [ready, head], State.RECEIVING, [A.ABANDON_UPSTREAM, A.ERROR_PAGE, A.FINISH]),
        (made(body_limit=0, whole=()), [ready, head, (Event.READ_DONE, None)], State.STREAMING,
         [A.ABANDON_UPSTREAM, A.ABORT_CLIENT]),
        (made(hooks=("response",)), [ready, head, (Event.RESPONSE_END, None), pending],
         State.RESPONSE, [A.CANCEL_HOOK, A.ERROR_PAGE, A.FINISH]),
        (made(hooks=("response",), body_limit=0), [ready, head, (Event.RESPONSE_END, None),
                                                    pending],
         State.RELAYED, [A.CANCEL_HOOK]),
        (made(hooks=("error",)), [(Event.UPSTREAM_FAILED, Failure(ValueError("gone"))),
                                  pending],
         State.ERROR, [A.CANCEL_HOOK, A.ERROR_PAGE, A.FINISH]),
        (made(), [ready, head, (Event.RESPONSE_END, None)], State.DONE, []),
    ]
    for exchange, path, state, expected in cases:
        p = Play(exchange, seen)
        p(Event.HEAD, exchange.declared == NO_BODY)
        for event, arg in path:
            p(event, arg)
        t.assertIs(p.state, state)
        actions = p(Event.CANCEL, shut)
        t.assertEqual(kinds(actions), expected, state.name)
        for action, arg in actions:
            if action is A.ERROR_PAGE:  # its 503, or the failure the error hook had
                t.assertIs(arg, shut if state is not State.ERROR else p.exchange.failure)
        if state is State.ERROR:
            t.assertEqual(p.flow.error.msg, "gone")  # type: ignore[union-attr]
        elif state is not State.DONE:
            t.assertEqual(p.flow.error.msg, str(shut.value))  # type: ignore[union-attr]
        if p.state is State.ERROR:  # a body still to come: the connection closes after
            t.assertEqual(kinds(p(Event.HOOK_DONE)), [A.CLOSE_AFTER, A.ERROR_PAGE]
                          if not p.exchange.body_done else [A.ERROR_PAGE, A.FINISH])
        t.assertIs(p.state, State.DONE)

    p = discarding(t, seen)
    t.assertEqual(p.kinds(Event.CANCEL, shut), [A.CLOSE_AFTER, A.ERROR_PAGE])
    t.assertIs(p.state, State.DONE)


@scenario
def clients_go_everywhere(t: SynchronousTestCase, seen: set[tuple[State, Event]]) -> None:
    """A client may go in any state; the exchange ends in DONE each time."""
    hooks = ("requestheaders", "request", "responseheaders", "response", "error")
    paths: list[list[tuple[Event, Any]]] = [
        [],
        [(Event.HOOK_DONE, None)],
        [(Event.HOOK_DONE, None), (Event.BODY_END, None), (Event.HOOK_DONE, None)],
        [(Event.HOOK_DONE, None), (Event.BODY_END, None), (Event.HOOK_DONE, None),
         (Event.UPSTREAM_READY, None)],
        [(Event.HOOK_DONE, None), (Event.BODY_END, None)],
        [(Event.HOOK_DONE, None), (Event.BODY_END, None), (Event.HOOK_DONE, None),
         (Event.UPSTREAM_READY, None), (Event.RESPONSE_HEAD, OK)],
        [(Event.HOOK_DONE, None), (Event.BODY_END, None), (Event.HOOK_DONE, None),
         (Event.UPSTREAM_READY, None), (Event.RESPONSE_HEAD, OK), (Event.HOOK_DONE, None)],
    ]
    for path in paths:
        p = Play(made(b"POST", declared=2, hooks=hooks), seen)
        p(Event.HEAD)
        for event, arg in path:
            p(event, arg)
        p(Event.CLIENT_GONE)
        if p.state is State.ERROR:
            p(Event.HOOK_DONE)
        t.assertIs(p.state, State.DONE)

    p = discarding(t, seen)
    t.assertEqual(p.kinds(Event.CLIENT_GONE), [])
    t.assertIs(p.state, State.DONE)

    p = Play(made(b"PUT", declared=1000, body_limit=0), seen)
    p(Event.HEAD)
    p(Event.UPSTREAM_READY)
    p(Event.RESPONSE_HEAD, OK)
    t.assertIs(p.state, State.STREAMING)
    t.assertEqual(p.kinds(Event.CLIENT_GONE), [A.ABANDON_UPSTREAM])
    p = Play(made(b"PUT", declared=1000), seen)
    p(Event.HEAD)
    p(Event.UPSTREAM_READY)
    p(Event.RESPONSE_HEAD, OK)
    t.assertIs(p.state, State.RECEIVING)
    p(Event.CLIENT_GONE)
    t.assertIs(p.state, State.DONE)


@scenario
def body_too_slow(t: SynchronousTestCase, seen: set[tuple[State, Event]]) -> None:
    """
    A client whose body falls below the minimum pace (``CLIENT_FAILED``):
    nothing of it is awaited any more.  Nothing answered yet: the error
    hook, then the error page (408) and the end, the upstream abandoned.
    An answer streaming: the connection aborted.  An answer that went
    whole, only the body's end awaited: the request ends.  In any state
    the exchange ends in DONE.
    """
    slow = Failure(RequestBodyTimeout("too slowly"))
    p = Play(made(b"PUT", declared=1000), seen)
    p(Event.HEAD)
    p(Event.UPSTREAM_READY)
    t.assertIs(p.state, State.WAITING)
    t.assertEqual(p(Event.CLIENT_FAILED, slow),
                  [(A.ABANDON_UPSTREAM, None), (A.ERROR_PAGE, slow), (A.FINISH, None)])
    t.assertEqual(p.flow.error.msg, "too slowly")  # type: ignore[union-attr]
    t.assertIs(p.state, State.DONE)
    t.assertIs(p.exchange.body, Body.DISCARD)

    p = Play(made(b"PUT", declared=1000, hooks=("error",)), seen)
    p(Event.HEAD)
    t.assertEqual(p(Event.CLIENT_FAILED, slow),
                  [(A.ABANDON_UPSTREAM, None), (A.RUN_HOOK, "error")])  # opened at once
    t.assertEqual(p(Event.HOOK_DONE), [(A.ERROR_PAGE, slow), (A.FINISH, None)])

    p = Play(made(b"PUT", declared=1000, body_limit=0), seen)
    p(Event.HEAD)
    p(Event.UPSTREAM_READY)
    p(Event.RESPONSE_HEAD, OK)
    p(Event.READ_DONE)  # the head is out
    t.assertIs(p.state, State.STREAMING)
    t.assertEqual(p(Event.CLIENT_FAILED, slow),
                  [(A.ABANDON_UPSTREAM, None), (A.ABORT_CLIENT, None)])

    p = Play(made(b"PUT", declared=1000), seen)
    p(Event.HEAD)
    p(Event.UPSTREAM_READY)
    p(Event.RESPONSE_HEAD, OK)
    p(Event.RESPONSE_DATA, b"no")
    p(Event.RESPONSE_END)
    t.assertIs(p.state, State.DONE)
    t.assertEqual(p(Event.CLIENT_FAILED, slow), [(A.FINISH, None)])
    t.assertEqual(p(Event.CLIENT_FAILED, slow), [])

    p = Play(made(b"PUT", declared=1000, body_limit=0, hooks=("request", "error")), seen)
    p(Event.HEAD)
    p(Event.HOOK_PENDING)
    t.assertIs(p.state, State.REQUEST)  # the hook runs on the head: the body streams
    t.assertEqual(p.kinds(Event.CLIENT_FAILED, slow), [A.CANCEL_HOOK, A.RUN_HOOK])
    t.assertEqual(p(Event.HOOK_DONE), [(A.ERROR_PAGE, slow), (A.FINISH, None)])

    # Every other state, as clients_go_everywhere reaches them.
    hooks = ("requestheaders", "request", "responseheaders", "response", "error")
    paths: list[list[tuple[Event, Any]]] = [
        [],
        [(Event.HOOK_DONE, None)],
        [(Event.HOOK_DONE, None), (Event.BODY_END, None), (Event.HOOK_DONE, None)],
        [(Event.HOOK_DONE, None), (Event.BODY_END, None), (Event.HOOK_DONE, None),
         (Event.UPSTREAM_READY, None), (Event.RESPONSE_HEAD, OK)],
        [(Event.HOOK_DONE, None), (Event.BODY_END, None), (Event.HOOK_DONE, None),
         (Event.UPSTREAM_READY, None), (Event.RESPONSE_HEAD, OK), (Event.HOOK_DONE, None)],
        [(Event.HOOK_DONE, None), (Event.BODY_END, None), (Event.HOOK_DONE, None),
         (Event.UPSTREAM_READY, None), (Event.RESPONSE_HEAD, OK), (Event.HOOK_DONE, None),
         (Event.RESPONSE_DATA, b"ok"), (Event.RESPONSE_END, None)],
        [(Event.HOOK_FAILED, Failure(ValueError()))],
    ]
    for path in paths:
        p = Play(made(b"POST", declared=2, hooks=hooks), seen)
        p(Event.HEAD)
        for event, arg in path:
            p(event, arg)
        p(Event.CLIENT_FAILED, slow)
        if p.state is State.ERROR:
            p(Event.HOOK_DONE)
        t.assertIs(p.state, State.DONE, path)

    p = Play(made(b"POST", declared=5, hooks=("requestheaders",)), seen)
    p(Event.HEAD)
    p.flow.response = Response.make(403)
    p(Event.HOOK_DONE)
    t.assertIs(p.state, State.DISCARDING)
    t.assertEqual(p(Event.CLIENT_FAILED, slow), [(A.ERROR_PAGE, slow), (A.FINISH, None)])

    p = Play(made(b"PUT", declared=1000, body_limit=0, hooks=("response",)), seen)
    p(Event.HEAD)
    p(Event.UPSTREAM_READY)
    p(Event.RESPONSE_HEAD, OK)
    p(Event.READ_DONE)
    p(Event.RESPONSE_END)
    t.assertIs(p.state, State.RELAYED)  # the streamed answer is out: its request ends
    t.assertEqual(p.kinds(Event.CLIENT_FAILED, slow), [A.FINISH])
    t.assertEqual(p(Event.HOOK_DONE), [])


# -- the tests ------------------------------------------------------------------


class ScenarioTests(SynchronousTestCase):
    """
    Each scenario, run on its own (the scenario functions' docstrings say
    what they pin down).
    """

    def run_scenario(self, function: Scenario) -> None:
        function(self, set())

    def test_plain_get(self) -> None:
        """See :func:`plain_get`."""
        self.run_scenario(plain_get)

    def test_whole_heads(self) -> None:
        """See :func:`whole_heads`."""
        self.run_scenario(whole_heads)

    def test_websocket_upgrade(self) -> None:
        """See :func:`websocket_upgrade`."""
        self.run_scenario(websocket_upgrade)

    def test_every_hook(self) -> None:
        """See :func:`every_hook`."""
        self.run_scenario(every_hook)

    def test_expect_and_interim(self) -> None:
        """See :func:`expect_and_interim`."""
        self.run_scenario(expect_and_interim)

    def test_streamed_by_default(self) -> None:
        """See :func:`streamed_by_default`."""
        self.run_scenario(streamed_by_default)

    def test_event_stream(self) -> None:
        """See :func:`event_stream`."""
        self.run_scenario(event_stream)

    def test_stream_transform(self) -> None:
        """See :func:`stream_transform`."""
        self.run_scenario(stream_transform)

    def test_streamed_upload(self) -> None:
        """See :func:`streamed_upload`."""
        self.run_scenario(streamed_upload)

    def test_body_too_slow(self) -> None:
        """See :func:`body_too_slow`."""
        self.run_scenario(body_too_slow)

    def test_upload_answered_early(self) -> None:
        """See :func:`upload_answered_early`."""
        self.run_scenario(upload_answered_early)

    def test_buffered_grows_too_big(self) -> None:
        """See :func:`buffered_grows_too_big`."""
        self.run_scenario(buffered_grows_too_big)

    def test_streamed_response(self) -> None:
        """See :func:`streamed_response`."""
        self.run_scenario(streamed_response)

    def test_response_grows_too_big(self) -> None:
        """See :func:`response_grows_too_big`."""
        self.run_scenario(response_grows_too_big)

    def test_hook_answers(self) -> None:
        """See :func:`hook_answers`."""
        self.run_scenario(hook_answers)

    def test_request_hook_answers(self) -> None:
        """See :func:`request_hook_answers`."""
        self.run_scenario(request_hook_answers)

    def test_refused(self) -> None:
        """See :func:`refused`."""
        self.run_scenario(refused)

    def test_killed_at_each_hook(self) -> None:
        """See :func:`killed_at_each_hook`."""
        self.run_scenario(killed_at_each_hook)

    def test_upstream_fails(self) -> None:
        """See :func:`upstream_fails`."""
        self.run_scenario(upstream_fails)

    def test_upstream_fails_during_head_hook(self) -> None:
        """See :func:`upstream_fails_during_head_hook`."""
        self.run_scenario(upstream_fails_during_head_hook)

    def test_hooks_fail(self) -> None:
        """See :func:`hooks_fail`."""
        self.run_scenario(hooks_fail)

    def test_invalid_after_hooks(self) -> None:
        """See :func:`invalid_after_hooks`."""
        self.run_scenario(invalid_after_hooks)

    def test_client_goes(self) -> None:
        """See :func:`client_goes`."""
        self.run_scenario(client_goes)

    def test_connect_passthrough(self) -> None:
        """See :func:`connect_passthrough`."""
        self.run_scenario(connect_passthrough)

    def test_connect_intercepted(self) -> None:
        """See :func:`connect_intercepted`."""
        self.run_scenario(connect_intercepted)

    def test_body_while_waiting(self) -> None:
        """See :func:`body_while_waiting`."""
        self.run_scenario(body_while_waiting)

    def test_cancelled_everywhere(self) -> None:
        """See :func:`cancelled_everywhere`."""
        self.run_scenario(cancelled_everywhere)

    def test_clients_go_everywhere(self) -> None:
        """See :func:`clients_go_everywhere`."""
        self.run_scenario(clients_go_everywhere)


class TableTests(SynchronousTestCase):
    """
    The table as a whole: every transition it holds is exercised by the
    scenarios, and every event it does not hold for a state is refused.
    """

    def test_every_transition_exercised(self) -> None:
        """The scenarios together handle every ``(state, event)`` the table holds."""
        seen: set[tuple[State, Event]] = set()
        for function in SCENARIOS:
            function(self, seen)
        missing = sorted(f"{state.name} + {event.name}" for state, event in set(_TABLE) - seen)
        self.assertEqual(missing, [])

    def test_every_other_event_refused(self) -> None:
        """
        Every event a state's row does not hold raises :class:`InvalidEvent`,
        naming both; the exchange's state is left as it was.
        """
        for state in State:
            for event in Event:
                if (state, event) in _TABLE:
                    continue
                exchange = made()
                exchange.state = state
                with self.assertRaises(InvalidEvent) as caught:
                    exchange.handle(event, 1.0)
                self.assertIn(event.name, str(caught.exception))
                self.assertIn(state.name, str(caught.exception))
                self.assertIs(exchange.state, state)

    def test_body_events_after_the_end_refused(self) -> None:
        """Body data or a second end after the body's end is a shell bug."""
        p = Play(made(), set())
        p(Event.HEAD)
        p(Event.BODY_END)
        with self.assertRaises(InvalidEvent):
            p(Event.BODY_DATA, b"late")
        with self.assertRaises(InvalidEvent):
            p(Event.BODY_END)

    def test_upstream_failed_in_response_only_for_connect(self) -> None:
        """A failing upstream during a plain response hook is a shell bug."""
        p = Play(made(hooks=("response",)), set())
        for event in (Event.HEAD, Event.BODY_END, Event.UPSTREAM_READY):
            p(event)
        p(Event.RESPONSE_HEAD, OK)
        p(Event.RESPONSE_END)
        with self.assertRaises(InvalidEvent):
            p(Event.UPSTREAM_FAILED, Failure(ValueError()))


class DocumentedTableTests(SynchronousTestCase):
    """
    ``docs/architecture.rst`` shows the table; it stays the code's.
    """

    def test_documented_table_is_the_table(self) -> None:
        """Each state's documented events are exactly those ``_TABLE`` holds for it."""
        page = Path(__file__).parent.parent / "docs" / "architecture.rst"
        text = page.read_text().split(".. state-table-start")[1].split(".. state-table-end")[0]
        documented: dict[str, set[str]] = {}
        state = ""
        for line in text.splitlines():
            if not line.startswith("``") and not line.startswith(" " * 23 + "``"):
                continue
            if line.startswith("``"):
                state, _, line = line.partition(" ")
                state = state.strip("`")
            documented.setdefault(state, set()).update(
                name.strip("`, ") for name in line.split() if name.strip("`, ")
            )
        actual = {
            s.name: {event.name for event in Event if (s, event) in _TABLE} for s in State
        }
        self.assertEqual(documented, actual)


class NewFlowTests(SynchronousTestCase):
    """
    Tests for :func:`new_flow`: the flow a request head makes, or the
    refusal.
    """

    def test_absolute_form(self) -> None:
        """An absolute-form target gives the request's scheme, host, port and path."""
        exchange = made(uri=b"http://Example.com:8080/a?b=1", fields=[(b"X", b"1")])
        request = exchange.flow.request  # type: ignore[union-attr]
        self.assertEqual((request.scheme, request.host, request.port, request.path),
                         ("http", "Example.com", 8080, "/a?b=1"))
        self.assertEqual(request.headers.fields, ((b"X", b"1"), (b"Host", b"Example.com:8080")))
        self.assertEqual(request.timestamp_start, 1.0)
        self.assertTrue(exchange.flow.live)  # type: ignore[union-attr]

    def test_refusals(self) -> None:
        """Origin form, bad bytes, a contradicting Host and a loop are refused."""
        for uri, fields, error in (
            (b"/a", [], BadRequestTarget),
            (b"http://a/\x7f", [], BadRequestTarget),
            (b"http://a/", [(b"Host", b"b")], BadRequestTarget),
            (b"http://a/", [(b"Via", b"1.1 other, " + VIA)], LoopDetected),
        ):
            exchange = made(uri=uri, fields=fields)
            self.assertIsNone(exchange.flow)
            self.assertIsInstance(exchange.refusal, error)

    def test_connect(self) -> None:
        """A CONNECT names host and port, and needs both."""
        exchange = made(b"CONNECT", b"[::1]:8443", passthrough=True)
        request = exchange.flow.request  # type: ignore[union-attr]
        self.assertEqual((request.method, request.host, request.port), ("CONNECT", "::1", 8443))
        self.assertTrue(exchange.flow.passthrough)  # type: ignore[union-attr]
        self.assertIsInstance(made(b"CONNECT", b"example.com").refusal, BadRequestTarget)

    def test_tunnel(self) -> None:
        """
        Inside an intercepted tunnel, origin form goes to the tunnel's host
        over https, and the client's Host is kept.
        """
        flow = new_flow(Client(), b"GET", b"/x", b"HTTP/1.1", [(b"Host", b"alias")],
                        tunnel=Tunnel("example.com", 8443), via=VIA,
                        passthrough=lambda h, p: False, now=0.0, clock=lambda: 0.0)
        request = flow.request
        assert request is not None
        self.assertEqual((request.scheme, request.host, request.port, request.path),
                         ("https", "example.com", 8443, "/x"))
        self.assertEqual(request.headers.fields, ((b"Host", b"alias"),))
        with self.assertRaises(BadRequestTarget):
            new_flow(Client(), b"CONNECT", b"a:443", b"HTTP/1.1", [], tunnel=Tunnel("a", 443),
                     via=VIA, passthrough=lambda h, p: False, now=0.0, clock=lambda: 0.0)

    def test_plain_tunnel(self) -> None:
        """
        Inside a tunnel that carries plain HTTP, origin form goes to the
        tunnel's host over http, with a Host made from it when the client
        sent none (the default port left out).
        """
        for port, authority in ((8080, "example.com:8080"), (80, "example.com")):
            flow = new_flow(Client(), b"GET", b"/x", b"HTTP/1.1", [],
                            tunnel=Tunnel("example.com", port, "http"), via=VIA,
                            passthrough=lambda h, p: False, now=0.0, clock=lambda: 0.0)
            request = flow.request
            assert request is not None
            self.assertEqual((request.scheme, request.host, request.port, request.path),
                             ("http", "example.com", port, "/x"))
            self.assertEqual(request.headers.fields, ((b"Host", authority.encode()),))

    def test_reverse(self) -> None:
        """
        To a reverse proxy, origin form and absolute form alike go to its
        origin, with the origin's Host (or the client's, when kept); a
        CONNECT is refused.
        """
        origin = Tunnel("api.internal", 8443, "https", reverse=True, rewrite_host=True)
        kept = Tunnel("api.internal", 8443, "https", reverse=True)
        for tunnel, uri, host in (
            (origin, b"/x?a=1", b"api.internal:8443"),
            (origin, b"http://elsewhere.example/x?a=1", b"api.internal:8443"),
            (kept, b"/x?a=1", b"localhost:9000"),
        ):
            flow = new_flow(Client(), b"GET", uri, b"HTTP/1.1", [(b"Host", b"localhost:9000")],
                            tunnel=tunnel, via=VIA, passthrough=lambda h, p: False,
                            now=0.0, clock=lambda: 0.0)
            request = flow.request
            assert request is not None
            self.assertEqual(
                (request.scheme, request.host, request.port, request.path),
                ("https", "api.internal", 8443, "/x?a=1"), uri)
            self.assertEqual(request.headers.fields, ((b"Host", host),))
        with self.assertRaisesRegex(BadRequestTarget, "reverse proxy"):
            new_flow(Client(), b"CONNECT", b"a:443", b"HTTP/1.1", [], tunnel=origin,
                     via=VIA, passthrough=lambda h, p: False, now=0.0, clock=lambda: 0.0)

    def test_killed_flow_uses_its_clock(self) -> None:
        """The flow's clock stamps a kill (the exchange reads no clock)."""
        exchange = made()
        flow = exchange.flow
        assert flow is not None
        flow.kill()
        self.assertEqual(flow.error, Error(Error.KILLED_MESSAGE, 2.0))
