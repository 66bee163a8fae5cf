# -*- test-case-name: tests.test_exchange -*-
"""
The response half of an exchange's decisions: :class:`ResponseSide`, a
base class of :class:`~twistproxy._exchange.Exchange`, takes the events
from the response head on (``RESPONSE_HEAD``, ``RESPONSE_INTERIM``,
``RESPONSE_DATA``, ``READ_DONE``, ``RESPONSE_END``) and ends the
``responseheaders`` and ``response`` hooks: whether the body is buffered or
streamed (and transformed), what of it is recorded, when a streamed head
goes out, and how the exchange ends once the response is in, written whole,
relayed or switched (a tunnel, a WebSocket).  Like the rest of the exchange
it does no I/O.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.python.failure import Failure

from twistproxy._body import joined
from twistproxy._events import Action, Actions, Body, InvalidEvent, ResponseHead, State
from twistproxy._framing import CHUNKED, NO_BODY
from twistproxy.errors import HookFailed, UpstreamProtocolError
from twistproxy.headers import Headers
from twistproxy.http import HTTPFlow, Response
from twistproxy.websocket import WebSocketData

# Module names for the members the hot paths read (see _exchange).
_RESPONSE_HEADERS = State.RESPONSE_HEADERS
_RECEIVING = State.RECEIVING
_STREAMING = State.STREAMING
_RESPONSE = State.RESPONSE
_RELAYED = State.RELAYED
_DONE = State.DONE
_STREAM = Body.STREAM
_DISCARD = Body.DISCARD
_RELAY_RESPONSE_ACTION = Action.RELAY_RESPONSE
_SEND_HEAD_ACTION = Action.SEND_HEAD
_WRITE_RESPONSE_ACTION = Action.WRITE_RESPONSE
_NONE: Actions = ()
_EVENT_STREAM = b"text/event-stream"


class ResponseSide:
    """
    The response's events and the hooks that end on it, for
    :class:`~twistproxy._exchange.Exchange`, whose state is the slots here
    and which has the steps this calls (running a hook, failing, answering,
    finishing).
    """

    __slots__ = (
        "flow", "refusal", "hooks", "whole", "body_limit", "declared", "intercepting", "state",
        "body", "body_done", "failure", "_held", "_request_body", "_response_size",
        "_framing", "_response_body", "_recorded", "_transform", "head_due", "expect",
        "_response_done", "_hook", "_pending", "_client_paused", "_upstream_held",
        "_upstream", "_sending", "_head_sent", "_gone", "_aborted", "_finish_owed",
        "_tunnel_lost", "_own", "_connect", "_shape", "_upgrade", "_switched",
    )

    # The state this reads and changes (the exchange's, all in the slots
    # above; Exchange.__init__ sets them).
    flow: HTTPFlow | None
    state: State
    whole: frozenset[str]
    body_limit: int
    body: Body
    body_done: bool
    head_due: bool
    _framing: int
    _response_body: list[bytes]
    _response_size: int
    _recorded: int
    _transform: Callable[[bytes], bytes] | None
    _upstream_held: bool
    _response_done: bool
    _upstream: bool
    _sending: bool
    _head_sent: bool
    _gone: bool
    _connect: bool
    _own: bool
    _upgrade: bool
    _switched: bool
    _tunnel_lost: Failure | None

    # The exchange's own steps this takes (Exchange defines them).
    def _run(self, hook: str, state: State, now: float) -> Actions:
        raise NotImplementedError

    def _fail(self, now: float, reason: Failure, run_hook: bool) -> Actions:
        raise NotImplementedError

    def _kill(self, now: float) -> Actions:
        raise NotImplementedError

    def _answer(self, action: Action, arg: Any) -> Actions:
        raise NotImplementedError

    def _finish(self) -> Actions:
        raise NotImplementedError

    def _drop_upstream(self) -> Actions:
        raise NotImplementedError

    def _response_head(self, now: float, head: ResponseHead) -> Actions:
        flow = self.flow
        assert flow is not None
        if head.server is not None:  # after a retry, not the one it was sent on first
            flow.server_conn = head.server
        if head.status == 101:
            if not self._upgrade:
                error = UpstreamProtocolError("the server switched protocols unasked")
                return self._fail(now, Failure(error), True)
            self._switched = True
            flow.websocket = WebSocketData()
        response = Response(
            head.version, head.status, head.reason, Headers(head.fields), None,
            timestamp_start=now,
        )
        flow.response = response
        self._framing = framing = head.framing
        if framing > self.body_limit or "response" not in self.whole or _event_stream(head):
            response.stream = True
        return self._run("responseheaders", _RESPONSE_HEADERS, now)

    def _after_responseheaders(self, now: float) -> Actions:
        flow = self.flow
        assert flow is not None and flow.response is not None
        if not (self._upstream_held or self._response_done) and flow.error is None:
            stream = flow.response.stream
            if not stream:
                self.state = _RECEIVING  # buffer the body
                return _NONE
            if stream is True and self._framing != NO_BODY and not flow.killed:
                self.state = _STREAMING  # stream it, the head once this read is handled
                self.head_due = True
                return _NONE
        actions: list[tuple[Action, Any]] = []
        held = self._upstream_held  # the hook was waited for: no read is being handled
        if held:
            self._upstream_held = False
            actions.append((Action.HOLD_UPSTREAM, False))
        if flow.killed:
            actions.extend(self._kill(now))
            return actions
        if flow.response.stream and self._framing != NO_BODY:
            actions.extend(self._stream(now, later=not held))
        else:
            self.state = _RECEIVING
        if self._response_done:
            actions.extend(self._response_complete(now))
        return actions

    def _stream(self, now: float, later: bool = False) -> Actions:
        """
        Stream the response: its head and what is kept now, the rest as it
        comes; or, *later*, once the read that brought the head is handled.
        """
        self.state = _STREAMING
        stream = self.flow.response.stream  # type: ignore[union-attr]
        if callable(stream):
            self._transform = stream
            try:
                self._response_body = [stream(piece) for piece in self._response_body]
            except Exception:
                return self._fail(now, _transform_failed(stream), True)
        if later:
            self.head_due = True
            return _NONE
        return self._head_out(self._response_body)

    def _head_out(self, pieces: list[bytes]) -> Actions:
        """The streamed response's head goes, with *pieces*, the body so far."""
        self.head_due = False
        self._head_sent = True
        framing = self._framing
        if self._transform is not None and framing >= 0:
            framing = CHUNKED  # the length changes: chunked (or until close)
        self._recorded = sum(map(len, pieces))
        return ((_SEND_HEAD_ACTION, (framing, tuple(pieces))),)

    def _response_interim(self, now: float, head: ResponseHead) -> Actions:
        """
        An interim response: recorded in ``flow.interim``, and relayed to
        an HTTP/1.1 client but for a ``100`` (the proxy asked for a
        held-back body itself, and does not pass the expectation on).
        """
        flow = self.flow
        assert flow is not None and flow.request is not None
        flow.interim += (Response(head.version, head.status, head.reason, Headers(head.fields),
                                  None, timestamp_start=now, timestamp_end=now),)
        if head.status == 100:
            return _NONE
        if self._gone or flow.request.http_version != "HTTP/1.1":
            return _NONE
        return ((Action.WRITE_INTERIM, head),)

    def _read_done(self, now: float, arg: Any) -> Actions:
        if not self.head_due:
            raise InvalidEvent("READ_DONE without a head held back")
        return self._head_out(self._response_body)

    def _response_data(self, now: float, data: bytes) -> Actions:
        self._response_size += len(data)
        state = self.state
        if state is _STREAMING:
            transform = self._transform
            if transform is not None:
                try:
                    data = transform(data)
                except Exception:
                    return self._fail(now, _transform_failed(transform), True)
            if self.head_due:  # it goes with the head
                self._response_body.append(data)
                return _NONE
            if self._recorded < self.body_limit:
                self._response_body.append(data)
                self._recorded += len(data)
            return ((_RELAY_RESPONSE_ACTION, data),)
        self._response_body.append(data)
        if state is _RECEIVING and self._response_size > self.body_limit:
            assert self.flow is not None and self.flow.response is not None
            self.flow.response.stream = True
            return self._stream(now)
        return _NONE

    def _response_end(self, now: float, trailers: Any) -> Actions:
        self._upstream = self._switched  # a switched connection stays until handed over
        if trailers:
            self.flow.response.trailers = Headers(trailers)  # type: ignore[union-attr]
        if self.body_done and self.state is not _RESPONSE_HEADERS:
            return self._response_complete(now)
        actions: list[tuple[Action, Any]] = []
        if not self.body_done and self.body is _STREAM:
            # The origin answered before the upload ended: drop the rest.
            self.body = _DISCARD
            if self._sending:
                self._sending = False
                actions.append((Action.STOP_BODY, None))
        if self.state is _RESPONSE_HEADERS:
            self._response_done = True
        else:
            actions.extend(self._response_complete(now))
        return actions

    def _response_complete(self, now: float) -> Actions:
        flow = self.flow
        assert flow is not None and flow.response is not None
        response = flow.response
        response.timestamp_end = now
        body, self._response_body = self._response_body, []
        if self.state is _STREAMING:
            actions: list[tuple[Action, Any]] = []
            transform = self._transform
            if transform is not None:
                try:
                    tail = transform(b"")  # the end: what the transformation still holds
                except Exception:
                    return self._fail(now, _transform_failed(transform), True)
                if tail:
                    body.append(tail)
                    if not self.head_due:
                        actions.append((_RELAY_RESPONSE_ACTION, tail))
            whole = joined(body)
            limit = self.body_limit
            response.raw_content = whole if len(whole) <= limit else whole[:limit]
            if self._response_size > limit:
                response.body_size = self._response_size
            if self.head_due and len(whole) <= limit:
                # It came whole in the read that brought its head: written whole.
                self.head_due = False
                actions.extend(self._answer(_WRITE_RESPONSE_ACTION, False))
            else:
                if self.head_due:
                    actions.extend(self._head_out(body))
                actions.extend(self._finish())
            actions.extend(self._run("response", _RELAYED, now))
            return actions
        response.raw_content = joined(body)
        return self._run("response", _RESPONSE, now)

    def _after_response(self, now: float) -> Actions:
        flow = self.flow
        assert flow is not None and flow.request is not None and flow.response is not None
        if flow.killed:
            return self._kill(now)
        self.state = _DONE
        if (self._connect or self._switched) and not self._own:
            # A CONNECT's 200 opens the tunnel, an origin's 101 the WebSocket
            # relay (its flow lives on there): both SWITCH the connection.
            if self._tunnel_lost is not None:
                self.state = _RESPONSE
                return self._fail(now, self._tunnel_lost, True)
            if flow.response.status_code == (101 if self._switched else 200):
                flow.live = self._switched and not self._gone
                if self._gone:
                    return self._drop_upstream()
                self._head_sent = True
                self._upstream = False
                return ((Action.SWITCH, "websocket" if self._switched else None),)
            # A response hook answered otherwise: that is the answer, no switch.
            flow.websocket = None
            return (*self._drop_upstream(), *self._answer(_WRITE_RESPONSE_ACTION, False))
        return self._answer(_WRITE_RESPONSE_ACTION, self._own)

    def _after_relayed(self, now: float) -> Actions:
        self.state = _DONE
        return _NONE


def _event_stream(head: ResponseHead) -> bool:
    """Whether the response is a ``text/event-stream`` (it always streams, unless a hook says)."""
    for name, value in head.fields:
        if len(name) == 12 and name.lower() == b"content-type":
            return value.split(b";", 1)[0].strip().lower() == _EVENT_STREAM
    return False


def _transform_failed(transform: object) -> Failure:
    """The failure of a callable ``response.stream`` that raised (call it in the ``except``)."""
    name = getattr(transform, "__qualname__", None) or repr(transform)
    return Failure(HookFailed("response.stream", name, Failure()))
