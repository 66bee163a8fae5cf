# -*- test-case-name: tests.test_exchange -*-
"""
The vocabulary of an exchange (:mod:`twistproxy._exchange`): where it is
(:class:`State`), what happens to it (:class:`Event`), what the shell is to
do (:class:`Action`) and what happens to request body bytes (:class:`Body`);
and the port a connection to the origin reports a response to
(:class:`IResponseReceiver`), whatever protocol carries it.

The events and actions are the same for any protocol: a head, data, an end
and an abort on each side, and pausing either side's reading.  What is
HTTP/1's own stays in its shell (:class:`~twistproxy.proxy.ProxyRequest`).
"""

from __future__ import annotations

from collections.abc import Sequence
from enum import Enum, auto
from typing import TYPE_CHECKING, Any
from typing import Protocol as TypingProtocol

from twistproxy.connection import Server

if TYPE_CHECKING:
    from twisted.python.failure import Failure


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


HOOK_STATES = frozenset({
    State.REQUEST_HEADERS, State.REQUEST, State.RESPONSE_HEADERS, State.RESPONSE,
    State.RELAYED, State.ERROR,
})
"""The states in which a hook runs."""

TERMINAL_STATES = frozenset({State.RESPONSE, State.RELAYED, State.ERROR, State.DONE})
"""
The states past the start of the flow's last hook (``response`` or
``error``): a client that goes away then no longer earns the flow its
``error`` hook.
"""


class Event(_Identity):
    """What happens to an exchange; :meth:`Exchange.handle` takes one at a time."""

    #: The request head was read (in ``NEW``, once); the argument is true
    #: when the request has no body, so that the head is the whole request
    #: (no ``BODY_END`` follows).
    HEAD = auto()
    #: A piece of the request body; the argument is the bytes.
    BODY_DATA = auto()
    #: The request body is complete (or there is none); the argument is
    #: the trailer fields of a chunked body, if it had any.
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
    #: :class:`~twistproxy.connection.Server` record, if there is one.
    UPSTREAM_READY = auto()
    #: The upstream side failed (connecting, TLS, a loop, the
    #: ``server_connected`` hook, the origin's silence, the connection lost
    #: mid-response); the argument is the Failure.
    UPSTREAM_FAILED = auto()
    #: The response head arrived; the argument is a :class:`ResponseHead`.
    RESPONSE_HEAD = auto()
    #: A piece of the response body; the argument is the bytes.
    RESPONSE_DATA = auto()
    #: The response is complete; the argument is the trailer fields of a
    #: chunked body, if it had any.
    RESPONSE_END = auto()
    #: An interim (1xx) response head arrived before the final one; the
    #: argument is a :class:`ResponseHead`.
    RESPONSE_INTERIM = auto()
    #: The read from the origin that brought the response head has been
    #: handled; the shell reports it while the exchange's ``head_due`` is
    #: set (a streamed response's head held back to go out with its body).
    READ_DONE = auto()
    #: The client's connection is gone.
    CLIENT_GONE = auto()
    #: The proxy gives the exchange up (it shuts down and the exchange
    #: outlived the deadline); the argument is the Failure it ends with.
    CANCEL = auto()
    #: The client broke a limit while sending its request body (it was too
    #: slow): no more of the body is read, and the exchange fails with the
    #: Failure given as the argument (an error page, or an aborted
    #: connection once an answer started); the connection closes after.
    CLIENT_FAILED = auto()


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
    #: Write the request body piece given as the argument upstream.
    FORWARD_BODY = auto()
    #: Open the upstream side for ``flow.request``: report
    #: ``UPSTREAM_READY`` or ``UPSTREAM_FAILED``.  The argument is true when
    #: the request asks for a WebSocket
    #: (:func:`~twistproxy._headers.websocket_upgrade`): it goes with its
    #: ``Upgrade``, and a ``101`` answers it (``RESPONSE_HEAD``, then
    #: ``RESPONSE_END`` with the connection kept for ``SWITCH``).
    OPEN_UPSTREAM = auto()
    #: For a CONNECT: make ready the tunnel's other end, a connection to the
    #: origin when the argument (passthrough) is true, or the certificate
    #: to intercept with; report ``UPSTREAM_READY`` or ``UPSTREAM_FAILED``.
    OPEN_TUNNEL = auto()
    #: Send the request head upstream with the body in hand.  The argument
    #: is ``(complete, pieces)``: *pieces* is the streamed body so far, or
    #: ``None`` for ``flow.request.raw_content``; when not *complete*, the
    #: body goes on streaming (``FORWARD_BODY``, ``END_BODY``) with the
    #: client's reading paced by the upstream's.
    SEND_REQUEST = auto()
    #: The streamed request body is complete upstream.
    END_BODY = auto()
    #: The upstream takes no more request body (it answered first).
    STOP_BODY = auto()
    #: Hold back (argument true) or go on reading the response.
    HOLD_UPSTREAM = auto()
    #: Write the response body piece given as the argument to the client.
    RELAY_RESPONSE = auto()
    #: Stream ``flow.response``: its head and the body so far now, the rest
    #: as it arrives, the origin's reading paced by the client's.  The
    #: argument is ``(framing, pieces)``: the framing the body is relayed
    #: with (as it arrived, or chunked when a ``stream`` callable changes
    #: it) and the body so far.
    SEND_HEAD = auto()
    #: Ask the client for the body it held back (``Expect: 100-continue``):
    #: write ``100 Continue``.
    CONTINUE = auto()
    #: Write the interim response head given as the argument (a
    #: :class:`ResponseHead`) to the client.
    WRITE_INTERIM = auto()
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
    #: Hand the client's connection over.  For a CONNECT (argument
    #: ``None``): answer ``200`` and give it to the tunnel.  After an
    #: origin's ``101`` to a WebSocket upgrade (argument ``"websocket"``):
    #: write ``flow.response`` and give it, with the origin's connection, to
    #: the WebSocket relay.
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


class IResponseReceiver(TypingProtocol):
    """
    What a :class:`ProxyClient` reports an exchange's response to.  Exactly
    one of :meth:`response_ended` and :meth:`response_failed` is called for
    every exchange, after any number of the others.
    """

    def response_started(
        self,
        status: int,
        reason: bytes,
        version: bytes,
        fields: list[tuple[bytes, bytes]],
        framing: int,
    ) -> None:
        """
        The response's status line and header fields have arrived; its
        body is delimited as *framing* says
        (:func:`~twistproxy._framing.response_framing`).
        """

    def response_data(self, data: bytes) -> None:
        """A piece of the response body (transfer coding removed) arrived."""

    def read_done(self) -> None:
        """
        The read from the origin that carried the response's head has been
        handled (with whatever of the body came in it).
        """

    def response_trailers(self, fields: list[tuple[bytes, bytes]]) -> None:
        """The chunked body ended with trailer *fields* (the end follows)."""

    def response_interim(
        self, status: int, reason: bytes, fields: list[tuple[bytes, bytes]]
    ) -> None:
        """An interim (1xx) response arrived before the final one."""

    def response_ended(self) -> None:
        """The response is complete."""

    def response_failed(self, reason: Failure) -> None:
        """The exchange failed; *reason* holds a TwistProxyError where one fits."""
