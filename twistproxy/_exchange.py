# -*- test-case-name: tests.test_exchange -*-
"""
One exchange's life, decided without I/O.

An :class:`Exchange` is the state machine of one request through the proxy
and its response: which hook runs when, when the request goes upstream,
whether a body is buffered for the hooks or streamed, when either side is
paused, and how the exchange ends.  :meth:`Exchange.handle` takes an event
and the time and answers with the actions the shell carries out (the shell
for HTTP/1 is :class:`~twistproxy.proxy.ProxyRequest`).  No transport, no
clock, no reactor: the flow is plain data.

What each event does in each state is ``_TABLE``; an event a state does not
list is a bug in the shell (:class:`~twistproxy._events.InvalidEvent`).
``docs/architecture.rst`` draws the table and one request's way through it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.python.failure import Failure

from twistproxy._body import capped, joined
from twistproxy._events import (
    HOOK_STATES,
    TERMINAL_STATES,
    Action,
    Actions,
    Body,
    Event,
    InvalidEvent,
    State,
)
from twistproxy._framing import NO_BODY
from twistproxy._headers import check_messages, check_shape, websocket_upgrade
from twistproxy._response import ResponseSide
from twistproxy.connection import Server
from twistproxy.errors import InvalidMessage, describe
from twistproxy.flow import Error
from twistproxy.headers import Headers
from twistproxy.http import HTTPFlow, Response

HIGH_WATER = 64 * 1024
"""Request body bytes held (before they can go anywhere) before the client is paused."""


# Reading an Enum member as a class attribute is a Python-level look-up in
# CPython 3.11: the hot paths use module names for the members (and for the
# argument-less actions, ready made); the rare ones read the members.
_NEW = State.NEW
_REQUEST_HEADERS = State.REQUEST_HEADERS
_READING = State.READING
_REQUEST = State.REQUEST
_CONNECTING = State.CONNECTING
_WAITING = State.WAITING
_RESPONSE_HEADERS = State.RESPONSE_HEADERS
_RECEIVING = State.RECEIVING
_STREAMING = State.STREAMING
_RESPONSE = State.RESPONSE
_RELAYED = State.RELAYED
_DISCARDING = State.DISCARDING
_ERROR = State.ERROR
_DONE = State.DONE
_HOLD = Body.HOLD
_BUFFER = Body.BUFFER
_STREAM = Body.STREAM
_DISCARD = Body.DISCARD
_CLOSE_AFTER = (Action.CLOSE_AFTER, None)
_FINISH = (Action.FINISH, None)
_OPEN_UPSTREAM = (Action.OPEN_UPSTREAM, None)
_PAUSE_CLIENT = (Action.PAUSE_CLIENT, None)
_RESUME_CLIENT = (Action.RESUME_CLIENT, None)
_FORWARD_BODY_ACTION = Action.FORWARD_BODY
_RELAY_RESPONSE_ACTION = Action.RELAY_RESPONSE
_RUN_HOOK_ACTION = Action.RUN_HOOK
_SEND_HEAD_ACTION = Action.SEND_HEAD
_SEND_REQUEST_ACTION = Action.SEND_REQUEST
_WRITE_RESPONSE_ACTION = Action.WRITE_RESPONSE

_NONE: Actions = ()
_CONTINUE: Actions = ((Action.CONTINUE, None),)
_SEND_WHOLE_REQUEST: Actions = ((Action.SEND_REQUEST, (True, None)),)  # its body is raw_content
_REQUEST_HOOKS = frozenset({"requestheaders", "request", "http_connect"})
_RESPONSE_HOOKS = frozenset({"responseheaders", "response"})
_MESSAGE_HOOKS = _REQUEST_HOOKS | _RESPONSE_HOOKS
_WHOLE_BODY_HOOKS = frozenset({"request", "response"})


class Exchange(ResponseSide):
    """
    The state machine of one exchange.

    :param flow: The flow :func:`new_flow` made, or ``None`` when the
        request was refused (*refusal*).
    :param refusal: Why the request cannot be proxied; it is answered once
        its body has been read.
    :param hooks: The hooks somebody implements: the others are not run
        (and cost no round trip through the shell).
    :param whole: Of ``request`` and ``response``, the hooks somebody
        implements who reads bodies whole (see
        :meth:`~twistproxy.hooks.HookChain.whole_bodies`): a body is buffered
        for them, and streams when its hook is not in here.
    :param body_limit: Bodies up to this many bytes are buffered for the
        hooks; larger ones stream.  A streamed body is recorded into the
        flow up to this many bytes (``body_size`` says how many it had).
    :param declared: The request body's framing as it arrived.
    :param intercepting: Whether a CONNECT can be intercepted (the proxy has
        a certificate store); without, every tunnel passes through.
    :param expect: The client (HTTP/1.1) sent ``Expect: 100-continue``: it
        holds its body back until asked.  The ``requestheaders`` hooks run
        first: an answer from them goes without the body; otherwise the
        proxy asks for it (``CONTINUE``), as RFC 9110 section 10.1.1 lets a
        proxy do, and the expectation is not passed on (an origin that
        ignored it would leave the client waiting).

    :ivar state: The :class:`State`.
    :ivar body: What happens to request body bytes (:class:`Body`).
    :ivar body_done: The request body has all arrived.
    :ivar failure: The first failure of the exchange, once it failed.
    :ivar head_due: A streamed response's head is held back until the read
        from the origin that brought it is handled (``READ_DONE``), so that
        a response that came whole in that read is written whole.
    """

    __slots__ = ()  # the state is ResponseSide's slots

    def __init__(
        self,
        flow: HTTPFlow | None,
        *,
        refusal: BaseException | None = None,
        hooks: frozenset[str] = frozenset(),
        whole: frozenset[str] = _WHOLE_BODY_HOOKS,
        body_limit: int,
        declared: int = NO_BODY,
        intercepting: bool = False,
        expect: bool = False,
    ) -> None:
        self.flow = flow
        self.refusal = refusal
        self.hooks = hooks
        self.whole = whole
        self.body_limit = body_limit
        self.declared = declared
        self.intercepting = intercepting
        self.state = _NEW
        self.body = _HOLD
        self.body_done = False
        self.failure: Failure | None = None
        self._held = 0  # request body bytes seen (not discarded)
        # The request body's pieces: kept (HOLD, BUFFER, STREAM before it
        # goes), then for a streamed body its record, up to body_limit.
        self._request_body: list[bytes] = []
        self._response_size = 0
        self._response_body: list[bytes] = []  # kept, then recorded once streaming
        self._recorded = 0  # bytes in _response_body while streaming
        self._transform: Callable[[bytes], bytes] | None = None  # a callable response.stream
        self.head_due = False
        self.expect = expect
        self._framing = NO_BODY  # of the response, as it arrived
        self._response_done = False  # the response ended while its head hook ran
        self._hook = ""  # the hook running
        self._pending = False  # ... and it has to be waited for
        self._client_paused = False
        self._upstream_held = False
        self._upstream = False  # an upstream side is open (or opening)
        self._sending = False  # the request body streams upstream now
        self._head_sent = False  # the client has the response head
        self._gone = False  # the client's connection is gone
        self._aborted = False  # ... or being aborted
        self._finish_owed = False  # the answer is out; finish once the body is read
        self._tunnel_lost: Failure | None = None
        self._shape: tuple[object, ...] | None = None  # the messages as a hook got them
        self._own = False  # the response was made by a hook, not an origin
        self._upgrade = False  # the request went upstream asking for a WebSocket
        self._switched = False  # ... and the origin answered 101: its connection is ours
        # A CONNECT: its "body" is the tunnel's, its upstream a TunnelEnd.
        self._connect = flow is not None and flow.request.method == "CONNECT"  # type: ignore[union-attr]

    def handle(self, event: Event, now: float, arg: Any = None) -> Actions:
        """
        Take *event* (with its argument) at time *now*: change state and
        return what the shell is to do, in order.

        :raises InvalidEvent: if the exchange cannot take *event* now.
        """
        handler = _TABLE.get((self.state, event))
        if handler is None:
            raise InvalidEvent(f"{event.name} is not allowed in {self.state.name}")
        return handler(self, now, arg)

    # -- hooks -------------------------------------------------------------

    def _run(self, hook: str, state: State, now: float) -> Actions:
        """Enter *state* and run *hook*, or go straight on when nobody implements it."""
        self.state = state
        if hook in self.hooks:
            self._hook = hook
            if hook in _MESSAGE_HOOKS and state is not _RELAYED:
                self._shape = check_shape(self.flow)  # type: ignore[arg-type]
            return ((_RUN_HOOK_ACTION, hook),)
        return _AFTER[state](self, now)

    def _hook_pending(self, now: float, arg: Any) -> Actions:
        self._pending = True
        actions: list[tuple[Action, Any]] = []
        if not self.body_done and not self._client_paused:
            self._client_paused = True
            actions.append(_PAUSE_CLIENT)
        if self.state is _RESPONSE_HEADERS and not self._upstream_held:
            self._upstream_held = True
            actions.append((Action.HOLD_UPSTREAM, True))
        return actions

    def _hook_ended(self) -> list[tuple[Action, Any]]:
        self._pending = False
        if self._client_paused:
            self._client_paused = False
            return [_RESUME_CLIENT]
        return []

    def _hook_done(self, now: float, arg: Any) -> Actions:
        actions = self._hook_ended()
        shape, self._shape = self._shape, None
        if shape is not None:
            # What the hook changed is checked before a byte of it is written.
            hook = self._hook
            try:
                check_messages(self.flow, shape, hook in _REQUEST_HOOKS)  # type: ignore[arg-type]
            except InvalidMessage as e:
                error = InvalidMessage(e.field, f"{e.detail} (set by a {hook!r} hook)")
                return actions + list(self._fail(now, Failure(error), hook != "response"))
        actions.extend(_AFTER[self.state](self, now))
        return actions

    def _hook_failed(self, now: float, reason: Failure) -> Actions:
        actions = self._hook_ended()
        state = self.state
        if state is _ERROR:
            actions.extend(self._send_failure(self.failure or reason))
        elif state is _RELAYED:
            # The streamed response is out: the failure is only recorded.
            assert self.flow is not None
            self.flow.error = Error(describe(reason), now, reason.type)
            self.state = _DONE
        else:
            # The response hook was the flow's last; any other still owes
            # the flow its error hook.
            actions.extend(self._fail(now, reason, state is not _RESPONSE))
        return actions

    # -- the request ---------------------------------------------------------

    def _head(self, now: float, complete: Any) -> Actions:
        flow = self.flow
        if complete:  # the request has no body: the head is all of it
            self.body_done = True
        if flow is None:
            self.state = _DISCARDING
            self.body = _DISCARD
            if complete or self.expect:  # (a held-back body is not asked for)
                return self._refuse()
            return _NONE
        if self._connect:
            self.state = _READING
            self.body = _DISCARD
            if complete:
                return self._run("http_connect", _REQUEST, now)
            return _NONE
        declared = self.declared
        if declared > self.body_limit or (
            "request" not in self.whole and declared != NO_BODY and declared != 0
        ):
            flow.request.stream = True  # type: ignore[union-attr]
        return self._run("requestheaders", _REQUEST_HEADERS, now)

    def _refuse(self) -> Actions:
        """Answer a request that cannot be proxied, its body read."""
        assert self.refusal is not None
        self.state = _DONE
        return self._answer(Action.ERROR_PAGE, Failure(self.refusal))

    def _settled(self, now: float) -> Actions | None:
        """After a request hook: what a kill or an answer from the hook does, if either."""
        flow = self.flow
        assert flow is not None
        if flow.killed:
            return self._kill(now)
        if flow.response is not None:
            return self._answered(now)
        return None

    def _after_requestheaders(self, now: float) -> Actions:
        flow = self.flow
        assert flow is not None and flow.request is not None
        settled = self._settled(now)
        if settled is not None:
            return settled
        # A body held back (Expect: 100-continue) is wanted now: ask for it.
        asked = _CONTINUE if self.expect and not self.body_done else _NONE
        if flow.request.stream:
            self.body = _STREAM
            return (*asked, *self._run("request", _REQUEST, now))
        self.body = _BUFFER
        self.state = _READING
        if self.body_done:
            return self._request_read(now)
        return asked

    def _request_read(self, now: float) -> Actions:
        """The buffered body is whole: it goes to the request, the hook runs."""
        flow = self.flow
        assert flow is not None and flow.request is not None
        flow.request.timestamp_end = now
        if self._held:
            body, self._request_body = self._request_body, []
            flow.request.raw_content = joined(body)
        else:  # no body: nothing kept
            flow.request.raw_content = b""
        return self._run("request", _REQUEST, now)

    def _after_request(self, now: float) -> Actions:
        flow = self.flow
        assert flow is not None and flow.request is not None
        settled = self._settled(now)
        if settled is not None:
            return settled
        self.state = _CONNECTING
        self._upstream = True
        if self._connect:
            flow.passthrough = flow.passthrough or not self.intercepting
            return ((Action.OPEN_TUNNEL, flow.passthrough),)
        if self.body_done and websocket_upgrade(flow.request):
            self._upgrade = True
            return ((Action.OPEN_UPSTREAM, True),)
        return (_OPEN_UPSTREAM,)

    def _answered(self, now: float) -> Actions:
        """A hook answered the request: drop its body, answer once it is read."""
        self.body = _DISCARD
        self._request_body = []
        actions: list[tuple[Action, Any]] = []
        if not self.body_done and not self.expect:  # (a held-back body is not waited for)
            self.state = _DISCARDING
            if self._client_paused:
                self._client_paused = False
                actions.append(_RESUME_CLIENT)
            return actions
        actions.extend(self._respond_from_hook(now))
        return actions

    def _respond_from_hook(self, now: float) -> Actions:
        response = self.flow.response  # type: ignore[union-attr]
        assert response is not None
        self._own = True
        if response.timestamp_start is None:
            response.timestamp_start = now
        if response.timestamp_end is None:
            response.timestamp_end = now
        return self._run("response", _RESPONSE, now)

    def _body_data(self, now: float, data: bytes) -> Actions:
        if self.body_done:
            raise InvalidEvent("BODY_DATA after BODY_END")
        body = self.body
        if body is _DISCARD:
            return _NONE
        if body is _STREAM and self._sending:
            if self._held < self.body_limit:  # recorded, up to the limit
                self._request_body.append(data)
            self._held += len(data)
            return ((_FORWARD_BODY_ACTION, data),)
        self._request_body.append(data)
        self._held += len(data)
        if body is _BUFFER and self._held > self.body_limit:
            # Too big to buffer after all: stream it, and the request hook
            # runs now, without the body.
            flow = self.flow
            assert flow is not None and flow.request is not None
            flow.request.stream = True
            self.body = _STREAM
            return self._run("request", _REQUEST, now)
        if body is not _BUFFER and self._held > HIGH_WATER and not self._client_paused:
            self._client_paused = True
            return (_PAUSE_CLIENT,)
        return _NONE

    def _body_end(self, now: float, trailers: Any) -> Actions:
        if self.body_done:
            raise InvalidEvent("BODY_END twice")
        self.body_done = True
        if trailers and self.flow is not None:
            self.flow.request.trailers = Headers(trailers)  # type: ignore[union-attr]
        state = self.state
        if state is _READING and not self._client_paused and not self._connect:
            return self._request_read(now)  # the common case
        actions: list[tuple[Action, Any]] = []
        if self._client_paused:
            self._client_paused = False
            actions.append(_RESUME_CLIENT)
        if self._finish_owed:
            self._finish_owed = False
            actions.append(_FINISH)
        elif state is _READING:
            if self._connect:
                actions.extend(self._run("http_connect", _REQUEST, now))
            else:
                actions.extend(self._request_read(now))
        elif state is _DISCARDING:
            if self.flow is None:
                actions.extend(self._refuse())
            else:
                actions.extend(self._respond_from_hook(now))
        elif self._sending:
            self._sending = False
            assert self.flow is not None and self.flow.request is not None
            self._record_request(now)
            actions.append((Action.END_BODY, None))
        return actions

    def _record_request(self, now: float) -> None:
        """A streamed request body is all in: what was recorded of it goes to the flow."""
        request = self.flow.request  # type: ignore[union-attr]
        assert request is not None
        request.timestamp_end = now
        body, self._request_body = self._request_body, []
        request.raw_content = capped(body, self.body_limit)
        if self._held > self.body_limit:
            request.body_size = self._held

    # -- upstream ----------------------------------------------------------

    def _upstream_ready(self, now: float, server: Server | None) -> Actions:
        flow = self.flow
        assert flow is not None and flow.request is not None
        if server is not None:
            flow.server_conn = server
        if self._connect:
            flow.response = Response(
                b"HTTP/1.1", 200, b"Connection established", Headers(), b"",
                timestamp_start=now, timestamp_end=now,
            )
            return self._run("response", _RESPONSE, now)
        self.state = _WAITING
        if self.body is not _STREAM:
            return _SEND_WHOLE_REQUEST
        held = tuple(self._request_body)
        if self.body_done:
            self._record_request(now)
            return ((_SEND_REQUEST_ACTION, (True, held)),)
        self._sending = True
        if self._client_paused:  # the upstream's pace rules from now on
            self._client_paused = False
            return ((_SEND_REQUEST_ACTION, (False, held)), _RESUME_CLIENT)
        return ((_SEND_REQUEST_ACTION, (False, held)),)

    def _upstream_failed(self, now: float, reason: Failure) -> Actions:
        self._upstream = False
        self._sending = False
        if self.state is _RESPONSE:  # a CONNECT's far end closed while its response hook ran
            if not self._connect:
                raise InvalidEvent("UPSTREAM_FAILED in RESPONSE outside a CONNECT")
            self._tunnel_lost = reason
            return _NONE
        actions: list[tuple[Action, Any]] = []
        if self.state is _RESPONSE_HEADERS and self._pending:
            self._pending = False
            actions.append((Action.CANCEL_HOOK, None))
        actions.extend(self._fail(now, reason, True))
        return actions

    # -- endings ---------------------------------------------------------------

    def _answer(self, action: Action, arg: Any) -> Actions:
        """
        Write an answer (*action*, *arg*) and end the request; a client
        still sending its body learns first that the connection closes after.
        """
        self._head_sent = True
        if self.flow is not None:
            self.flow.live = False
        if self._gone or self._aborted:
            return _NONE
        if self.body_done:
            return ((action, arg), _FINISH)
        return (_CLOSE_AFTER, (action, arg), *self._finish_later())

    def _finish(self) -> Actions:
        """A streamed answer is out: end the request, at once or once its body is read."""
        if self.flow is not None:
            self.flow.live = False
        if self._gone:
            return _NONE
        if self.body_done:
            return (_FINISH,)
        return (_CLOSE_AFTER, *self._finish_later())

    def _finish_later(self) -> Actions:
        """HTTPChannel ends a request only once its body is read: drop the rest, then end it."""
        self._finish_owed = True
        self.body = _DISCARD
        if self._client_paused:
            self._client_paused = False
            return (_RESUME_CLIENT,)
        return _NONE

    def _drop_upstream(self) -> Actions:
        """Close the upstream side; a request body still arriving goes nowhere now."""
        self._sending = False
        actions: list[tuple[Action, Any]] = []
        if self._upstream:
            self._upstream = False
            actions.append((Action.ABANDON_UPSTREAM, None))
        if not self.body_done and self.body is not _DISCARD:
            self.body = _DISCARD
            self._request_body = []
        return actions

    def _fail(self, now: float, reason: Failure, run_hook: bool) -> Actions:
        """
        Fail the exchange: the error hook (if *run_hook*), then an error
        page when nothing was sent yet, otherwise an aborted connection, so
        a truncated body never looks complete.
        """
        if self.state is _DONE or self.state is _ERROR:
            return _NONE
        self.head_due = False  # an error page, if nothing was sent
        actions = list(self._drop_upstream())
        self.failure = reason
        flow = self.flow
        if flow is not None:
            flow.error = Error(describe(reason), now, reason.type)
        if flow is not None and run_hook:
            actions.extend(self._run("error", _ERROR, now))
        else:
            actions.extend(self._send_failure(reason))
        return actions

    def _after_error(self, now: float) -> Actions:
        return self._send_failure(self.failure)

    def _send_failure(self, reason: Failure | None) -> Actions:
        self.state = _DONE
        if self.flow is not None:
            self.flow.live = False
        if self._gone or self._aborted or reason is None:
            return _NONE
        if self._head_sent:
            self._aborted = True
            return ((Action.ABORT_CLIENT, None),)
        return self._answer(Action.ERROR_PAGE, reason)

    def _kill(self, now: float) -> Actions:
        """
        A hook killed the flow: abort the client's connection without an
        answer, then run the error hook unless the flow's last hook ran.
        """
        actions = list(self._drop_upstream())
        flow = self.flow
        assert flow is not None
        flow.live = False
        if not self._gone and not self._aborted:
            self._aborted = True
            actions.append((Action.ABORT_CLIENT, None))
        if self.state in TERMINAL_STATES:
            self.state = _DONE
            return actions
        actions.extend(self._run("error", _ERROR, now))
        return actions

    def _client_gone(self, now: float, arg: Any) -> Actions:
        self._gone = True
        self.head_due = False
        self._client_paused = False
        actions: list[tuple[Action, Any]] = []
        if self._pending:
            self._pending = False
            actions.append((Action.CANCEL_HOOK, None))
        actions.extend(self._drop_upstream())
        state = self.state
        flow = self.flow
        if flow is None or state is _DONE:
            self.state = _DONE
            return actions
        if state is not _RELAYED and state is not _ERROR:
            flow.error = Error("client disconnected", now)
        flow.live = False
        if state in TERMINAL_STATES:
            self.state = _DONE
            return actions
        actions.extend(self._run("error", _ERROR, now))
        return actions

    def _cancel(self, now: float, reason: Failure) -> Actions:
        """
        The proxy gives the exchange up: it fails with *reason* the way a
        failing hook or upstream fails it (the hook waited for is
        cancelled, the upstream closed, the error hook runs, then the error
        page, or an aborted connection once the response has started).
        """
        if self._pending:
            return ((Action.CANCEL_HOOK, None), *self._hook_failed(now, reason))
        return self._fail(now, reason, True)
    def _client_failed(self, now: float, reason: Failure) -> Actions:
        """The client's body stops here (too slow): fail, or end an answer that went."""
        self.body_done = True  # no more of it is read: nothing waits for its end
        self.body = _DISCARD
        self._request_body = []
        self._client_paused = False
        if self._finish_owed:  # the answer is out; only the body's end was awaited
            self._finish_owed = False
            return (_FINISH,)
        actions: list[tuple[Action, Any]] = []
        if self._pending and self.state is not _ERROR:
            self._pending = False
            actions.append((Action.CANCEL_HOOK, None))
        actions.extend(self._fail(now, reason, self.state not in TERMINAL_STATES))
        return actions

    def _ignore(self, now: float, arg: Any) -> Actions:
        return _NONE


_Handler = Callable[[Exchange, float, Any], Actions]

# What a hook state does once its hook is done (or when nobody implements it).
_AFTER: dict[State, Callable[[Exchange, float], Actions]] = {
    State.REQUEST_HEADERS: Exchange._after_requestheaders,
    State.REQUEST: Exchange._after_request,
    State.RESPONSE_HEADERS: Exchange._after_responseheaders,
    State.RESPONSE: Exchange._after_response,
    State.RELAYED: Exchange._after_relayed,
    State.ERROR: Exchange._after_error,
}


def _table() -> dict[tuple[State, Event], _Handler]:
    table: dict[tuple[State, Event], _Handler] = {
        (State.NEW, Event.HEAD): Exchange._head,
        (State.CONNECTING, Event.UPSTREAM_READY): Exchange._upstream_ready,
        (State.WAITING, Event.RESPONSE_HEAD): Exchange._response_head,
        (State.RESPONSE, Event.UPSTREAM_FAILED): Exchange._upstream_failed,
        (State.STREAMING, Event.READ_DONE): Exchange._read_done,
        (State.WAITING, Event.RESPONSE_INTERIM): Exchange._response_interim,
    }
    for state in HOOK_STATES:
        table[state, Event.HOOK_PENDING] = Exchange._hook_pending
        table[state, Event.HOOK_DONE] = Exchange._hook_done
        table[state, Event.HOOK_FAILED] = Exchange._hook_failed
    for state in (State.CONNECTING, State.WAITING, State.RESPONSE_HEADERS, State.RECEIVING,
                  State.STREAMING):
        table[state, Event.UPSTREAM_FAILED] = Exchange._upstream_failed
    for state in (State.RESPONSE_HEADERS, State.RECEIVING, State.STREAMING):
        table[state, Event.RESPONSE_DATA] = Exchange._response_data
        table[state, Event.RESPONSE_END] = Exchange._response_end
    for state in State:
        if state is not State.NEW:
            table[state, Event.BODY_DATA] = Exchange._body_data
            table[state, Event.BODY_END] = Exchange._body_end
            table[state, Event.CLIENT_GONE] = Exchange._client_gone
            table[state, Event.CANCEL] = Exchange._cancel
            table[state, Event.CLIENT_FAILED] = Exchange._client_failed
    table[State.DONE, Event.CLIENT_GONE] = Exchange._ignore
    table[State.DONE, Event.CANCEL] = Exchange._ignore
    return table


_TABLE = _table()
