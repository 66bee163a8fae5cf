# -*- test-case-name: tests.test_exchange -*-
"""
One exchange's life, decided without I/O.

An :class:`Exchange` is the state machine of one request through the proxy
and its response: which hook runs when, when the request goes upstream,
whether a body is buffered for the hooks or streamed, when either side is
paused, and how the exchange ends (a response, an error page, an aborted
connection).  It is driven by :meth:`Exchange.handle` with an :class:`Event`
and the time, and answers with the :class:`Action` list the shell carries
out.  It holds no transport, reads no clock and touches no reactor; the flow
it works on is plain data.

The shell around it (:class:`~twistproxy.proxy.ProxyRequest` for HTTP/1)
turns Twisted's callbacks into events and the actions into transport calls.
The events and actions are the same for any protocol: a head, data, an end,
an abort on each side, and pausing either side's reading.  What is HTTP/1's
own (chunked coding, ``Connection``, keeping the connection) stays in the
shell, so another protocol plugs in as another shell around the same
decisions.

The states, their events and what each event leads to are the table
``_TABLE`` (``(state, event) -> handler``): an event a state does not list
is a bug in the shell and raises :class:`InvalidEvent`.  Besides its
state, an exchange keeps what happens to request body bytes (:class:`Body`)
and whether the body has all arrived, because a request body may stream
upstream while the response already comes back.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from enum import Enum, auto
from typing import Any

from twisted.python.failure import Failure

from twistproxy._framing import NO_BODY
from twistproxy._headers import check_request, check_response
from twistproxy._target import (
    Target,
    authority_for,
    check_host,
    parse_absolute_form,
    parse_authority,
)
from twistproxy.errors import BadRequestTarget, InvalidMessage, LoopDetected, describe
from twistproxy.flow import Client, Error, Server
from twistproxy.headers import Headers
from twistproxy.http import HTTPFlow, Request, Response

IDEMPOTENT_METHODS = frozenset({b"GET", b"HEAD", b"OPTIONS", b"TRACE", b"PUT", b"DELETE"})
"""
The methods a proxy may send again on its own (RFC 9110 section 9.2.2):
sending one twice has the effect of sending it once.
"""

HIGH_WATER = 64 * 1024
"""Request body bytes held (before they can go anywhere) before the client is paused."""


def may_retry(
    method: bytes, *, reused: bool, complete: bool, answered: bool, lost: bool, attempts: int
) -> bool:
    """
    The one retry rule: whether a request that failed upstream is sent once
    more, on a new connection, without telling anyone.

    Only when the failure is the one a kept-alive connection meets when the
    origin closed it meanwhile: an idempotent request (RFC 9110 section
    9.2.2: a proxy must not retry any other), written whole, on a reused
    connection, lost before a single byte of response, and only once.

    :param method: The request's method.
    :param reused: The connection had carried an exchange before.
    :param complete: The whole request was written (and is still in hand).
    :param answered: A byte of a response (even an interim one) arrived.
    :param lost: The failure is the connection closing or resetting.
    :param attempts: How many times the request was sent so far.
    """
    return (
        attempts == 1
        and reused
        and complete
        and lost
        and not answered
        and method in IDEMPOTENT_METHODS
    )


# -- the flow a request head makes ------------------------------------------

_VISIBLE = re.compile(rb"[\x21-\x7e]+\Z")


def new_flow(
    client: Client,
    method: bytes,
    uri: bytes,
    version: bytes,
    fields: list[tuple[bytes, bytes]],
    *,
    tunnel: tuple[str, int] | None,
    via: bytes,
    passthrough: Callable[[str, int], bool],
    now: float,
    clock: Callable[[], float],
) -> HTTPFlow:
    """
    The flow for a request head, or why the request cannot be proxied.

    :param client: The client connection's record.
    :param method: The method from the request line.
    :param uri: The request-target from the request line.
    :param version: The HTTP version from the request line.
    :param fields: The header fields as they arrived (used, not copied).
    :param tunnel: For a request inside an intercepted tunnel, the
        ``(host, port)`` the tunnel goes to: origin-form targets go there.
    :param via: This proxy's ``Via`` entry; a request carrying its token
        already came through here.
    :param passthrough: For a CONNECT, whether configuration passes the
        tunnel through untouched (``flow.passthrough``, which the
        ``http_connect`` hook may change).
    :param now: The time, for the request's timestamp.
    :param clock: The flow's clock (for the time a hook kills it at).
    :raises BadRequestTarget: for a target that cannot be proxied.
    :raises LoopDetected: if the request already passed this proxy.
    """
    if not _VISIBLE.match(uri):
        # Twisted lets bytes 0x7f-0xb0 through (it compares with 176 where
        # it meant octal 0o176); origins would not agree.
        raise BadRequestTarget("the request-target has invalid characters")
    if method == b"CONNECT":
        if tunnel is not None:
            raise BadRequestTarget("CONNECT inside an intercepted tunnel")
        host, port = parse_authority(uri, 0)
        if port == 0:
            raise BadRequestTarget("CONNECT needs host:port")
        flow = HTTPFlow(client, Server(address=(host, port)), live=True, now=clock)
        flow.request = Request(
            host, port, method, b"", uri, b"", version, Headers(fields), None,
            timestamp_start=now,
        )
        flow.passthrough = passthrough(host, port)
        return flow
    headers = Headers(fields)
    if tunnel is not None and uri[:1] == b"/":
        host, port = tunnel
        target = Target(scheme="https", host=host, port=port, path=uri,
                        authority=authority_for("https", host, port))
        if headers.get_raw(b"host") is None:
            headers["Host"] = target.authority
    else:
        target = parse_absolute_form(uri)
        if check_host(fields, target) != target.authority:
            headers["Host"] = target.authority
    token = via.split(b" ", 1)[1]
    for name, value in fields:
        if len(name) == 3 and name.lower() == b"via" and token in value:
            raise LoopDetected("the request came back to this proxy (Via)")
    flow = HTTPFlow(client, Server(address=(target.host, target.port)), live=True, now=clock)
    flow.request = Request(
        target.host, target.port, method, target.scheme, target.authority, target.path,
        version, headers, None, timestamp_start=now,
    )
    return flow


# -- the machine -------------------------------------------------------------


class _Identity(Enum):
    """An Enum hashed by identity: members are singletons, and the table's
    look-ups are on the hot path (Enum's own hash is a Python call)."""

    __hash__ = object.__hash__


class State(_Identity):
    """Where one exchange is."""

    #: Built from the request head; nothing has run yet.
    NEW = auto()
    #: The ``requestheaders`` hook runs.
    REQUEST_HEADERS = auto()
    #: The request body is read: buffered for the ``request`` hook (a
    #: CONNECT has none, and waits here for its end).
    READING = auto()
    #: The ``request`` hook (for a CONNECT: ``http_connect``) runs.
    REQUEST = auto()
    #: The upstream side is being opened: a connection and its
    #: ``server_connected`` hook; for a CONNECT the tunnel's other end, or
    #: the certificate to intercept it with.
    CONNECTING = auto()
    #: The request went upstream (its body may still be streaming); the
    #: response head has not arrived.
    WAITING = auto()
    #: The ``responseheaders`` hook runs; the origin is held back meanwhile.
    RESPONSE_HEADERS = auto()
    #: The response body is buffered for the ``response`` hook.
    RECEIVING = auto()
    #: The response body goes to the client as it arrives.
    STREAMING = auto()
    #: The ``response`` hook runs on a whole response (the origin's, one a
    #: hook made, a CONNECT's ``200``); then it is written.
    RESPONSE = auto()
    #: The ``response`` hook runs after a streamed response was relayed.
    RELAYED = auto()
    #: The answer is settled (a hook answered, or the request is refused)
    #: while the client still sends its body: it is read and dropped first.
    DISCARDING = auto()
    #: The ``error`` hook runs; then the error page or the aborted connection.
    ERROR = auto()
    #: Over: nothing more is written for this exchange.
    DONE = auto()


class Event(_Identity):
    """What happens to an exchange; :meth:`Exchange.handle` takes one at a time."""

    #: The request head was read (in ``NEW``, once); the argument is true
    #: when the request has no body, so that the head is the whole request
    #: (no ``BODY_END`` follows).
    HEAD = auto()
    #: A piece of the request body; the argument is the bytes.
    BODY_DATA = auto()
    #: The request body is complete (or there is none).
    BODY_END = auto()
    #: The hook chain started by ``RUN_HOOK`` has to be waited for.
    HOOK_PENDING = auto()
    #: The hook chain finished.
    HOOK_DONE = auto()
    #: The hook chain failed (a hook raised or timed out); the argument is
    #: the Failure.
    HOOK_FAILED = auto()
    #: The upstream side is open and takes the request (for a CONNECT: the
    #: tunnel can open); the argument is the connection's
    #: :class:`~twistproxy.flow.Server` record, if there is one.
    UPSTREAM_READY = auto()
    #: The upstream side failed (connecting, TLS, a loop, the
    #: ``server_connected`` hook, the origin's silence, the connection lost
    #: mid-response); the argument is the Failure.
    UPSTREAM_FAILED = auto()
    #: The response head arrived; the argument is a :class:`ResponseHead`.
    RESPONSE_HEAD = auto()
    #: A piece of the response body; the argument is the bytes.
    RESPONSE_DATA = auto()
    #: The response is complete.
    RESPONSE_END = auto()
    #: The client's connection is gone.
    CLIENT_GONE = auto()


class Action(_Identity):
    """
    What the shell is to do.  :meth:`Exchange.handle` returns
    ``(action, argument)`` pairs, carried out in order; an action that
    makes events happen is last in its list.
    """

    #: Run the hook named by the argument on the flow, and report
    #: ``HOOK_PENDING`` (if it has to be waited for), then ``HOOK_DONE`` or
    #: ``HOOK_FAILED``.
    RUN_HOOK = auto()
    #: Cancel the hook chain being waited for; report nothing of it.
    CANCEL_HOOK = auto()
    #: Stop reading from the client.
    PAUSE_CLIENT = auto()
    #: Read from the client again.
    RESUME_CLIENT = auto()
    #: Keep the request body piece given as the argument.
    KEEP_BODY = auto()
    #: Write the request body piece given as the argument upstream.
    FORWARD_BODY = auto()
    #: The kept request body becomes ``flow.request.raw_content``.
    SET_REQUEST_BODY = auto()
    #: Forget the kept request body: it will not be sent.
    DROP_BODY = auto()
    #: Open the upstream side for ``flow.request``: report
    #: ``UPSTREAM_READY`` or ``UPSTREAM_FAILED``.
    OPEN_UPSTREAM = auto()
    #: For a CONNECT: make ready the tunnel's other end, a connection to the
    #: origin when the argument (passthrough) is true, or the certificate
    #: to intercept with; report ``UPSTREAM_READY`` or ``UPSTREAM_FAILED``.
    OPEN_TUNNEL = auto()
    #: Send the request head upstream with the body in hand: the whole
    #: request when the argument is true, otherwise the body goes on
    #: streaming (``FORWARD_BODY``, ``END_BODY``) with the client's
    #: reading paced by the upstream's.
    SEND_REQUEST = auto()
    #: The streamed request body is complete upstream.
    END_BODY = auto()
    #: The upstream takes no more request body (it answered first).
    STOP_BODY = auto()
    #: Hold back (argument true) or go on reading the response.
    HOLD_UPSTREAM = auto()
    #: Keep the response body piece given as the argument.
    KEEP_RESPONSE = auto()
    #: Write the response body piece given as the argument to the client.
    RELAY_RESPONSE = auto()
    #: The kept response body becomes ``flow.response.raw_content``.
    SET_RESPONSE_BODY = auto()
    #: Stream ``flow.response``: its head and the kept body now, the rest
    #: as it arrives, the origin's reading paced by the client's.  The
    #: argument is the framing the response arrived with.
    SEND_HEAD = auto()
    #: Write ``flow.response`` whole; the argument says whether the proxy
    #: (a hook) made it rather than an origin.
    WRITE_RESPONSE = auto()
    #: Answer with the error page for the Failure given as the argument.
    ERROR_PAGE = auto()
    #: Announce that the connection closes after this answer: the client
    #: is still sending a body nobody wants.
    CLOSE_AFTER = auto()
    #: The answer is complete: end the client's request.
    FINISH = auto()
    #: Close the upstream side without waiting for anything.
    ABANDON_UPSTREAM = auto()
    #: Abort the client's connection (no answer, or a truncated one).
    ABORT_CLIENT = auto()
    #: For a CONNECT: answer ``200`` and hand the connection to the tunnel.
    SWITCH = auto()


class Body(_Identity):
    """What happens to request body bytes as they arrive."""

    #: Kept until the ``requestheaders`` hook decides (the client is paused
    #: past :data:`HIGH_WATER`).
    HOLD = auto()
    #: Kept for the ``request`` hook, up to the body limit.
    BUFFER = auto()
    #: Written upstream as they come, once the request has gone; kept
    #: until then.
    STREAM = auto()
    #: Dropped: the answer does not need them.
    DISCARD = auto()


class InvalidEvent(Exception):
    """An event arrived in a state that cannot take it: a bug in the shell."""


class ResponseHead:
    """
    The head of a response as it arrived from upstream.

    :ivar version: For example ``b"HTTP/1.1"``.
    :ivar status: The status code.
    :ivar reason: The reason phrase.
    :ivar fields: The header fields, in order and case.
    :ivar framing: How its body is delimited
        (:func:`~twistproxy._framing.response_framing`).
    :ivar server: The record of the connection it arrived on, if known.
    """

    __slots__ = ("version", "status", "reason", "fields", "framing", "server")

    def __init__(
        self, version: bytes, status: int, reason: bytes,
        fields: list[tuple[bytes, bytes]], framing: int, server: Server | None = None,
    ) -> None:
        self.version = version
        self.status = status
        self.reason = reason
        self.fields = fields
        self.framing = framing
        self.server = server


Actions = Sequence[tuple[Action, Any]]
"""What :meth:`Exchange.handle` returns: ``(action, argument)`` pairs."""

# Reading an Enum member as a class attribute is a Python-level look-up in
# CPython 3.11, several times a global's cost; the handlers, run a few times
# per request, use these module names for the members (and the argument-less
# actions, ready made).
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
_ABANDON_UPSTREAM = (Action.ABANDON_UPSTREAM, None)
_ABORT_CLIENT = (Action.ABORT_CLIENT, None)
_CANCEL_HOOK = (Action.CANCEL_HOOK, None)
_CLOSE_AFTER = (Action.CLOSE_AFTER, None)
_DROP_BODY = (Action.DROP_BODY, None)
_END_BODY = (Action.END_BODY, None)
_FINISH = (Action.FINISH, None)
_OPEN_UPSTREAM = (Action.OPEN_UPSTREAM, None)
_PAUSE_CLIENT = (Action.PAUSE_CLIENT, None)
_RESUME_CLIENT = (Action.RESUME_CLIENT, None)
_SET_REQUEST_BODY = (Action.SET_REQUEST_BODY, None)
_SET_RESPONSE_BODY = (Action.SET_RESPONSE_BODY, None)
_STOP_BODY = (Action.STOP_BODY, None)
_SWITCH = (Action.SWITCH, None)
_ERROR_PAGE_ACTION = Action.ERROR_PAGE
_FORWARD_BODY_ACTION = Action.FORWARD_BODY
_HOLD_UPSTREAM_ACTION = Action.HOLD_UPSTREAM
_KEEP_BODY_ACTION = Action.KEEP_BODY
_KEEP_RESPONSE_ACTION = Action.KEEP_RESPONSE
_OPEN_TUNNEL_ACTION = Action.OPEN_TUNNEL
_RELAY_RESPONSE_ACTION = Action.RELAY_RESPONSE
_RUN_HOOK_ACTION = Action.RUN_HOOK
_SEND_HEAD_ACTION = Action.SEND_HEAD
_SEND_REQUEST_ACTION = Action.SEND_REQUEST
_WRITE_RESPONSE_ACTION = Action.WRITE_RESPONSE

_NONE: Actions = ()
_REQUEST_HOOKS = frozenset({"requestheaders", "request", "http_connect"})
_RESPONSE_HOOKS = frozenset({"responseheaders", "response"})
_HOOK_STATES = frozenset({
    State.REQUEST_HEADERS, State.REQUEST, State.RESPONSE_HEADERS, State.RESPONSE,
    State.RELAYED, State.ERROR,
})
# Once the flow's last hook (response or error) has started, a client that
# goes away no longer earns the flow an error hook.
_TERMINAL = frozenset({State.RESPONSE, State.RELAYED, State.ERROR, State.DONE})


class Exchange:
    """
    The state machine of one exchange.

    :param flow: The flow :func:`new_flow` made, or ``None`` when the
        request was refused (*refusal*).
    :param refusal: Why the request cannot be proxied; it is answered once
        its body has been read.
    :param hooks: The hooks somebody implements: the others are not run
        (and cost no round trip through the shell).
    :param body_limit: Bodies up to this many bytes are buffered for the
        hooks; larger ones stream.
    :param declared: The request body's framing as it arrived.
    :param intercepting: Whether a CONNECT can be intercepted (the proxy has
        a certificate store); without, every tunnel passes through.

    :ivar state: The :class:`State`.
    :ivar body: What happens to request body bytes (:class:`Body`).
    :ivar body_done: The request body has all arrived.
    :ivar failure: The first failure of the exchange, once it failed.
    """

    __slots__ = (
        "flow", "refusal", "hooks", "body_limit", "declared", "intercepting", "state",
        "body", "body_done", "failure", "_held", "_response_size", "_framing",
        "_response_done", "_hook", "_pending", "_client_paused", "_upstream_held",
        "_upstream", "_sending", "_head_sent", "_gone", "_aborted", "_finish_owed",
        "_tunnel_lost", "_own",
    )

    def __init__(
        self,
        flow: HTTPFlow | None,
        *,
        refusal: BaseException | None = None,
        hooks: frozenset[str] = frozenset(),
        body_limit: int,
        declared: int = NO_BODY,
        intercepting: bool = False,
    ) -> None:
        self.flow = flow
        self.refusal = refusal
        self.hooks = hooks
        self.body_limit = body_limit
        self.declared = declared
        self.intercepting = intercepting
        self.state = _NEW
        self.body = _HOLD
        self.body_done = False
        self.failure: Failure | None = None
        self._held = 0  # request body bytes kept
        self._response_size = 0
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
        self._own = False  # the response was made by a hook, not an origin

    def handle(self, event: Event, now: float, arg: Any = None) -> Actions:
        """
        Take *event* (with its argument) at time *now*: change state and
        return what the shell is to do, in order.

        :raises InvalidEvent: if the exchange cannot take *event* now.
        """
        handler = _TABLE.get((self.state, event))
        if handler is None:
            raise InvalidEvent(f"{event.name} is not allowed in {self.state.name}")
        actions: Actions = handler(self, now, arg)
        return actions

    # -- hooks -------------------------------------------------------------

    def _run(self, hook: str, state: State, now: float) -> Actions:
        """Enter *state* and run *hook*, or go straight on when nobody implements it."""
        self.state = state
        if hook in self.hooks:
            self._hook = hook
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
            actions.append((_HOLD_UPSTREAM_ACTION, True))
        return actions

    def _hook_ended(self) -> list[tuple[Action, Any]]:
        self._pending = False
        if self._client_paused:
            self._client_paused = False
            return [_RESUME_CLIENT]
        return []

    def _hook_done(self, now: float, arg: Any) -> Actions:
        actions = self._hook_ended()
        hook = self._hook
        flow = self.flow
        assert flow is not None
        try:
            if hook in _REQUEST_HOOKS:
                assert flow.request is not None
                check_request(flow.request)
            if flow.response is not None and self.state is not _RELAYED and (
                hook in _REQUEST_HOOKS or hook in _RESPONSE_HOOKS
            ):
                check_response(flow.response)
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
            self.flow.error = Error(describe(reason), now)
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
            if complete:
                return self._refuse()
            return _NONE
        request = flow.request
        assert request is not None
        if request.method == "CONNECT":
            self.state = _READING
            self.body = _DISCARD
            if complete:
                return self._run("http_connect", _REQUEST, now)
            return _NONE
        if self.declared > self.body_limit:
            request.stream = True
        return self._run("requestheaders", _REQUEST_HEADERS, now)

    def _refuse(self) -> Actions:
        """Answer a request that cannot be proxied, its body read."""
        assert self.refusal is not None
        self.state = _DONE
        return self._answer(_ERROR_PAGE_ACTION, Failure(self.refusal))

    def _after_requestheaders(self, now: float) -> Actions:
        flow = self.flow
        assert flow is not None and flow.request is not None
        if flow.killed:
            return self._kill(now)
        if flow.response is not None:
            return self._answered(now)
        if flow.request.stream:
            self.body = _STREAM
            return self._run("request", _REQUEST, now)
        self.body = _BUFFER
        self.state = _READING
        if self.body_done:
            return self._request_read(now)
        return _NONE

    def _request_read(self, now: float) -> Actions:
        """The buffered body is whole: it goes to the request, the hook runs."""
        flow = self.flow
        assert flow is not None and flow.request is not None
        flow.request.timestamp_end = now
        if not self._held:  # no body: nothing kept to hand over
            flow.request.raw_content = b""
            return self._run("request", _REQUEST, now)
        return (_SET_REQUEST_BODY, *self._run("request", _REQUEST, now))

    def _after_request(self, now: float) -> Actions:
        flow = self.flow
        assert flow is not None and flow.request is not None
        if flow.killed:
            return self._kill(now)
        if flow.response is not None:
            return self._answered(now)
        self.state = _CONNECTING
        self._upstream = True
        if flow.request.method == "CONNECT":
            flow.passthrough = flow.passthrough or not self.intercepting
            return ((_OPEN_TUNNEL_ACTION, flow.passthrough),)
        return (_OPEN_UPSTREAM,)

    def _answered(self, now: float) -> Actions:
        """A hook answered the request: drop its body, answer once it is read."""
        self.body = _DISCARD
        actions: list[tuple[Action, Any]] = [_DROP_BODY]
        if not self.body_done:
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
            return ((_FORWARD_BODY_ACTION, data),)
        self._held += len(data)
        if body is _BUFFER and self._held > self.body_limit:
            # Too big to buffer after all: stream it, and the request hook
            # runs now, without the body.
            flow = self.flow
            assert flow is not None and flow.request is not None
            flow.request.stream = True
            self.body = _STREAM
            return ((_KEEP_BODY_ACTION, data), *self._run("request", _REQUEST, now))
        if body is not _BUFFER and self._held > HIGH_WATER and not self._client_paused:
            self._client_paused = True
            return ((_KEEP_BODY_ACTION, data), _PAUSE_CLIENT)
        return ((_KEEP_BODY_ACTION, data),)

    def _body_end(self, now: float, arg: Any) -> Actions:
        if self.body_done:
            raise InvalidEvent("BODY_END twice")
        self.body_done = True
        state = self.state
        if state is _READING and not self._client_paused:  # the common case
            flow = self.flow
            assert flow is not None and flow.request is not None
            if flow.request.method != "CONNECT":
                return self._request_read(now)
        actions: list[tuple[Action, Any]] = []
        if self._client_paused:
            self._client_paused = False
            actions.append(_RESUME_CLIENT)
        if self._finish_owed:
            self._finish_owed = False
            actions.append(_FINISH)
        elif state is _READING:
            flow = self.flow
            assert flow is not None and flow.request is not None
            if flow.request.method == "CONNECT":
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
            self.flow.request.timestamp_end = now
            actions.append(_END_BODY)
        return actions

    # -- upstream ----------------------------------------------------------

    def _upstream_ready(self, now: float, server: Server | None) -> Actions:
        flow = self.flow
        assert flow is not None and flow.request is not None
        if server is not None:
            flow.server_conn = server
        if flow.request.method == "CONNECT":
            flow.response = Response(
                b"HTTP/1.1", 200, b"Connection established", Headers(), b"",
                timestamp_start=now, timestamp_end=now,
            )
            return self._run("response", _RESPONSE, now)
        self.state = _WAITING
        complete = self.body_done or self.body is not _STREAM
        if complete:
            if self.body is _STREAM:
                flow.request.timestamp_end = now
            return ((_SEND_REQUEST_ACTION, True),)
        self._sending = True
        if self._client_paused:  # the upstream's pace rules from now on
            self._client_paused = False
            return ((_SEND_REQUEST_ACTION, False), _RESUME_CLIENT)
        return ((_SEND_REQUEST_ACTION, False),)

    def _upstream_failed(self, now: float, reason: Failure) -> Actions:
        self._upstream = False
        self._sending = False
        actions: list[tuple[Action, Any]] = []
        if self.state is _RESPONSE_HEADERS and self._pending:
            self._pending = False
            actions.append(_CANCEL_HOOK)
        actions.extend(self._fail(now, reason, True))
        return actions

    def _tunnel_failed(self, now: float, reason: Failure) -> Actions:
        """The tunnel's other end closed while the CONNECT's response hook ran."""
        flow = self.flow
        if flow is None or flow.request is None or flow.request.method != "CONNECT":
            raise InvalidEvent("UPSTREAM_FAILED in RESPONSE outside a CONNECT")
        self._upstream = False
        self._tunnel_lost = reason
        return _NONE

    # -- the response ---------------------------------------------------------

    def _response_head(self, now: float, head: ResponseHead) -> Actions:
        flow = self.flow
        assert flow is not None
        if head.server is not None:  # after a retry, not the one it was sent on first
            flow.server_conn = head.server
        response = Response(
            head.version, head.status, head.reason, Headers(head.fields), None,
            timestamp_start=now,
        )
        flow.response = response
        self._framing = framing = head.framing
        if framing > self.body_limit:
            response.stream = True
        return self._run("responseheaders", _RESPONSE_HEADERS, now)

    def _after_responseheaders(self, now: float) -> Actions:
        flow = self.flow
        assert flow is not None and flow.response is not None
        if not (self._upstream_held or self._response_done or flow.response.stream) and (
            flow.error is None
        ):
            self.state = _RECEIVING  # the common case: buffer the body
            return _NONE
        actions: list[tuple[Action, Any]] = []
        if self._upstream_held:
            self._upstream_held = False
            actions.append((_HOLD_UPSTREAM_ACTION, False))
        if flow.killed:
            actions.extend(self._kill(now))
            return actions
        if flow.response.stream and self._framing != NO_BODY:
            actions.extend(self._stream())
        else:
            self.state = _RECEIVING
        if self._response_done:
            actions.extend(self._response_complete(now))
        return actions

    def _stream(self) -> Actions:
        self.state = _STREAMING
        self._head_sent = True
        return ((_SEND_HEAD_ACTION, self._framing),)

    def _response_data(self, now: float, data: bytes) -> Actions:
        self._response_size += len(data)
        state = self.state
        if state is _STREAMING:
            return ((_RELAY_RESPONSE_ACTION, data),)
        if state is _RECEIVING and self._response_size > self.body_limit:
            assert self.flow is not None and self.flow.response is not None
            self.flow.response.stream = True
            return ((_KEEP_RESPONSE_ACTION, data), *self._stream())
        return ((_KEEP_RESPONSE_ACTION, data),)

    def _response_end(self, now: float, arg: Any) -> Actions:
        self._upstream = False
        if self.body_done and self.state is not _RESPONSE_HEADERS:
            return self._response_complete(now)
        actions: list[tuple[Action, Any]] = []
        if not self.body_done and self.body is _STREAM:
            # The origin answered before the upload ended: drop the rest.
            self.body = _DISCARD
            if self._sending:
                self._sending = False
                actions.append(_STOP_BODY)
        if self.state is _RESPONSE_HEADERS:
            self._response_done = True
        else:
            actions.extend(self._response_complete(now))
        return actions

    def _response_complete(self, now: float) -> Actions:
        flow = self.flow
        assert flow is not None and flow.response is not None
        flow.response.timestamp_end = now
        if self.state is _STREAMING:
            flow.response.body_size = self._response_size
            actions = list(self._finish())
            actions.extend(self._run("response", _RELAYED, now))
            return actions
        return (_SET_RESPONSE_BODY, *self._run("response", _RESPONSE, now))

    def _after_response(self, now: float) -> Actions:
        flow = self.flow
        assert flow is not None and flow.request is not None and flow.response is not None
        if flow.killed:
            return self._kill(now)
        self.state = _DONE
        if flow.request.method == "CONNECT" and not self._own:
            if self._tunnel_lost is not None:
                self.state = _RESPONSE
                return self._fail(now, self._tunnel_lost, True)
            if flow.response.status_code == 200:
                flow.live = False
                if self._gone:
                    return self._drop_upstream()
                self._head_sent = True
                self._upstream = False
                return (_SWITCH,)
            # A response hook answered otherwise: that is the answer, no tunnel.
            return (*self._drop_upstream(), *self._answer(_WRITE_RESPONSE_ACTION, False))
        return self._answer(_WRITE_RESPONSE_ACTION, self._own)

    def _after_relayed(self, now: float) -> Actions:
        self.state = _DONE
        return _NONE

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
            actions.append(_ABANDON_UPSTREAM)
        if not self.body_done and self.body is not _DISCARD:
            self.body = _DISCARD
            actions.append(_DROP_BODY)
        return actions

    def _fail(self, now: float, reason: Failure, run_hook: bool) -> Actions:
        """
        Fail the exchange: the error hook (if *run_hook*), then an error
        page when nothing was sent yet, otherwise an aborted connection, so
        a truncated body never looks complete.
        """
        if self.state is _DONE or self.state is _ERROR:
            return _NONE
        actions = list(self._drop_upstream())
        self.failure = reason
        flow = self.flow
        if flow is not None:
            flow.error = Error(describe(reason), now)
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
            return (_ABORT_CLIENT,)
        return self._answer(_ERROR_PAGE_ACTION, reason)

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
            actions.append(_ABORT_CLIENT)
        if self.state in _TERMINAL:
            self.state = _DONE
            return actions
        actions.extend(self._run("error", _ERROR, now))
        return actions

    def _client_gone(self, now: float, arg: Any) -> Actions:
        self._gone = True
        self._client_paused = False
        actions: list[tuple[Action, Any]] = []
        if self._pending:
            self._pending = False
            actions.append(_CANCEL_HOOK)
        actions.extend(self._drop_upstream())
        state = self.state
        flow = self.flow
        if flow is None or state is _DONE:
            self.state = _DONE
            return actions
        if state is not _RELAYED and state is not _ERROR:
            flow.error = Error("client disconnected", now)
        flow.live = False
        if state in _TERMINAL:
            self.state = _DONE
            return actions
        actions.extend(self._run("error", _ERROR, now))
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
        (State.RESPONSE, Event.UPSTREAM_FAILED): Exchange._tunnel_failed,
    }
    for state in _HOOK_STATES:
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
    table[State.DONE, Event.CLIENT_GONE] = Exchange._ignore
    return table


_TABLE = _table()
