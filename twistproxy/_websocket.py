# -*- test-case-name: tests.test_websocket -*-
"""
The WebSocket relay: after an origin's ``101``, both connections of the
flow are handed to a :class:`WebSocketRelay` (:func:`switch_websocket`, the
``SWITCH`` action's ``"websocket"`` case).

Each side speaks WebSocket through its own ``wsproto`` connection, given
the handshake already done: the SERVER role towards the client, the CLIENT
role towards the origin, each with ``permessage-deflate`` set up as the
``101`` negotiated it, so that messages are seen uncompressed.  A message
is reassembled from its frames, recorded in ``flow.websocket.messages``,
given to the ``websocket_message`` hooks (through the proxy's one
:class:`~twistproxy.hooks.HookChain`, with its deadline) and then sent on
whole, unless a hook dropped it.  While a hook is waited for, that side is
not read, so its messages keep their order.

Pings and pongs are relayed end to end (a ping is answered by the far end,
not by the proxy).  A close is relayed with its code and reason, answered
to the side that sent it, and both connections close.  A message past
``Limits.max_websocket_message`` closes both sides with ``1009``.  Each
side's transport is registered as a producer with the other's, so a slow
reader pauses the sender (a hook pausing a side is a second reason to
pause, kept apart from the consumer's).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IPushProducer
from twisted.internet.protocol import Protocol, connectionDone
from twisted.logger import Logger
from twisted.python.failure import Failure
from wsproto.connection import CLIENT, SERVER, Connection, ConnectionState
from wsproto.events import (
    BytesMessage,
    CloseConnection,
    Event,
    Message,
    Ping,
    Pong,
    TextMessage,
)
from wsproto.extensions import Extension, PerMessageDeflate
from wsproto.frame_protocol import CloseReason, Opcode
from zope.interface import implementer

from twistproxy._connect import hand_over
from twistproxy._framing import NO_BODY
from twistproxy._headers import response_head
from twistproxy._tunnel import Relay
from twistproxy._twisted_compat import take_buffered
from twistproxy.flow import Error
from twistproxy.http import HTTPFlow
from twistproxy.websocket import WebSocketData, WebSocketMessage

_log = Logger()

_OPEN = ConnectionState.OPEN
_PIECE = 1 << 30  # uncompressed: hand wsproto each read whole
_DEFLATED_PIECE = 2 * 1024  # compressed: at most ~2 MiB inflated at once
_LOST = CloseReason.ABNORMAL_CLOSURE  # 1006: no close frame, the connection ended


def extensions(fields: Sequence[tuple[bytes, bytes]]) -> tuple[str | None, bool]:
    """
    What a ``101``'s ``Sec-WebSocket-Extensions`` negotiated: the
    ``permessage-deflate`` entry (to set both sides up with), and whether
    any other extension was, or parameters wsproto refuses (the relay
    cannot read such messages).
    """
    deflate = None
    other = False
    for name, value in fields:
        if name.lower() != b"sec-websocket-extensions":
            continue
        for entry in value.decode("latin-1").split(","):
            entry = entry.strip()
            if not entry:
                continue
            if entry.split(";", 1)[0].strip().lower() != PerMessageDeflate.name:
                other = True
                continue
            try:
                PerMessageDeflate().finalize(entry)
            except ValueError:  # a window size out of range, a bad number
                other = True
            else:
                deflate = entry
    return deflate, other


def _connection(role: Any, deflate: str | None) -> Connection:
    """A wsproto connection past its handshake, with permessage-deflate as negotiated."""
    extensions: list[Extension] = []
    if deflate is not None:
        extension = PerMessageDeflate()
        extension.finalize(deflate)
        extensions.append(extension)
    return Connection(role, extensions)


@implementer(IPushProducer)
class _Side(Protocol):
    """
    One connection of the relay: the client's (``from_client``) or the
    origin's.  It is also the producer registered with the *other* side's
    transport, so pausing it stops reading this side.
    """

    transport: Any
    peer: _Side
    lost = False

    def __init__(
        self, relay: WebSocketRelay, from_client: bool, ws: Connection, piece: int
    ) -> None:
        self.relay = relay
        self.from_client = from_client
        self.ws = ws
        self.piece = piece  # bytes handed to wsproto at a time
        self.unfed = b""  # received, not yet handed to wsproto (from _fed on)
        self._fed = 0
        self.pieces: list[bytes] = []  # the message being reassembled
        self.size = 0
        self.waiting = False  # a hook on this side's message is waited for
        self._consumer_paused = False

    # -- bytes in ----------------------------------------------------------

    def dataReceived(self, data: bytes) -> None:
        """Bytes from this side's peer: to wsproto, then the events out."""
        if self.ws.state is ConnectionState.CLOSED or self.relay.closing:
            return
        self.unfed = self.unfed[self._fed:] + data if self._fed < len(self.unfed) else data
        self._fed = 0
        self.relay.pump(self)

    def feed(self) -> bool:
        """
        Hand wsproto the next piece of what arrived: ``False`` when there
        was none.  Compressed messages are fed a few KiB at a time, so that
        what one piece inflates to stays small next to the message limit
        (wsproto inflates whatever it is given at once).
        """
        start = self._fed
        if start >= len(self.unfed):
            return False
        unfed = self.unfed
        self._fed = end = start + self.piece
        self.ws.receive_data(unfed if start == 0 and end >= len(unfed) else unfed[start:end])
        return True

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        """This connection ended."""
        self.lost = True
        self.relay.side_lost(self)

    def write(self, event: Event) -> None:
        """Send *event* to this side's peer, if its connection can take it."""
        if self.lost:
            return
        ws = self.ws
        if isinstance(event, CloseConnection):
            if ws.state is not _OPEN and ws.state is not ConnectionState.REMOTE_CLOSING:
                return
        elif ws.state is not _OPEN:
            return
        self.transport.write(ws.send(event))

    def close(self) -> None:
        """Close this connection once what was written is out."""
        if not self.lost:
            self.transport.loseConnection()

    # -- IPushProducer (for the other side's transport), and hooks -----------

    def pauseProducing(self) -> None:
        """The other side cannot take more: stop reading this side."""
        self._consumer_paused = True
        self.set_reading()

    def resumeProducing(self) -> None:
        """The other side can take more."""
        self._consumer_paused = False
        self.set_reading()

    def stopProducing(self) -> None:
        """The other side is gone."""
        self.close()

    def set_reading(self) -> None:
        """Read this side unless the other side or a hook holds it back."""
        if self.lost:
            return
        if self._consumer_paused or self.waiting or not self.relay.started:
            self.transport.pauseProducing()
        else:
            self.transport.resumeProducing()


class WebSocketRelay:
    """
    Relays one WebSocket between the client's connection and the origin's,
    message by message, with the WebSocket hooks.

    :param flow: The flow; its ``websocket`` gets the messages.
    :param chain: The proxy's hook chain.
    :param first: The flow's request object, whose own hook methods run
        first (as for every other hook).
    :param hooks: The hooks somebody implements.
    :param deflate: The ``permessage-deflate`` entry of the ``101``, if any.
    :param limit: Bytes a message may have; a bigger one closes both sides
        with ``1009``.
    :param clock: The time, for message timestamps.
    :param on_end: Called once both connections are gone, before
        ``websocket_end`` runs (the shell stamps the connection records).
    :ivar started: The ``websocket_start`` hooks are done: messages flow.
    :ivar closing: Both sides are being closed: what still arrives is
        dropped.
    """

    started = False
    closing = False
    _ended = False

    def __init__(
        self,
        flow: HTTPFlow,
        *,
        chain: Any,
        first: object,
        hooks: frozenset[str],
        deflate: str | None,
        limit: int,
        clock: Callable[[], float],
        on_end: Callable[[], object],
    ) -> None:
        self.flow = flow
        self.data: WebSocketData = flow.websocket or WebSocketData()
        flow.websocket = self.data
        self.data._relay = self
        self._chain = chain
        self._first = first
        self._hooks = hooks
        self._limit = limit
        self._clock = clock
        self._on_end = on_end
        piece = _DEFLATED_PIECE if deflate is not None else _PIECE
        self.client = _Side(self, True, _connection(SERVER, deflate), piece)
        self.server = _Side(self, False, _connection(CLIENT, deflate), piece)
        self.client.peer = self.server
        self.server.peer = self.client

    def start(self) -> None:
        """
        Both sides are connected: join them as each other's producers, run
        ``websocket_start``, then relay.
        """
        client, server = self.client, self.server
        client.set_reading()
        server.set_reading()
        if client.lost or server.lost:
            self.started = True
            for side in (client, server):
                if side.lost:
                    self.side_lost(side)
            return
        client.transport.registerProducer(server, True)
        server.transport.registerProducer(client, True)
        d = self._run("websocket_start")
        if d is None:
            self._started()
        else:
            d.addCallbacks(lambda _: self._started(), self._hook_failed)

    def _started(self) -> None:
        if self.closing:
            return
        if self.flow.killed:
            self._kill()
            return
        self.started = True
        for side in (self.client, self.server):
            side.set_reading()
            self.pump(side)

    def _run(self, hook: str) -> Deferred[None] | None:
        if hook not in self._hooks:
            return None
        return self._chain.run(hook, self.flow, first=self._first)

    # -- events ---------------------------------------------------------------

    def pump(self, side: _Side) -> None:
        """
        Handle *side*'s events, feeding wsproto what arrived piece by
        piece, until a hook has to be waited for.
        """
        while self.started and not side.waiting and not self.closing:
            self._handle_events(side)
            if side.waiting or self.closing or not side.feed():
                return

    def _handle_events(self, side: _Side) -> None:
        for event in side.ws.events():
            if isinstance(event, Message):
                self._message_part(side, event)
            elif isinstance(event, Ping):
                if side.peer.ws.state is _OPEN:
                    side.peer.write(Ping(event.payload))
                else:
                    side.write(event.response())
            elif isinstance(event, Pong):
                side.peer.write(Pong(event.payload))
            elif isinstance(event, CloseConnection):
                self._closed_by(side, event)
            if side.waiting or self.closing:
                break

    def _message_part(self, side: _Side, event: Message[Any]) -> None:
        data = event.data
        piece = data.encode("utf-8") if isinstance(data, str) else bytes(data)
        side.size += len(piece)
        if side.size > self._limit:
            self._too_big(side)
            return
        side.pieces.append(piece)
        if not event.message_finished:
            return
        pieces, side.pieces, side.size = side.pieces, [], 0
        content = pieces[0] if len(pieces) == 1 else b"".join(pieces)
        kind = Opcode.TEXT if isinstance(event, TextMessage) else Opcode.BINARY
        message = WebSocketMessage(kind, side.from_client, content, self._clock())
        self.data.messages.append(message)
        d = self._run("websocket_message")
        if d is None:
            self._after_hook(side, message)
            return
        side.waiting = True
        side.set_reading()
        d.addCallbacks(self._hook_done, self._hook_failed, callbackArgs=(side, message))

    def _hook_done(self, _: object, side: _Side, message: WebSocketMessage) -> None:
        side.waiting = False
        if self.closing:
            return
        self._after_hook(side, message)
        if not self.closing:
            side.set_reading()
            self.pump(side)

    def _after_hook(self, side: _Side, message: WebSocketMessage) -> None:
        if self.flow.killed:
            self._kill()
        elif not message.dropped:
            self._send(side.peer, message)

    def _send(self, to: _Side, message: WebSocketMessage) -> None:
        if message.type is Opcode.TEXT:
            to.write(TextMessage(data=message.content.decode("utf-8", "replace")))
        else:
            to.write(BytesMessage(data=message.content))

    def inject(self, message: WebSocketMessage, to_client: bool) -> None:
        """
        Send *message* to the client (*to_client*) or the origin now and
        record it (:func:`twistproxy.websocket.inject`).

        :raises ValueError: if that side is closing or closed.
        """
        to = self.client if to_client else self.server
        if self.closing or to.lost or to.ws.state is not _OPEN:
            raise ValueError("the WebSocket is closing: nothing can be injected")
        message.timestamp = self._clock()
        self.data.messages.append(message)
        self._send(to, message)

    # -- the end ------------------------------------------------------------------

    def _closed_by(self, side: _Side, event: CloseConnection) -> None:
        """*side* closed (or its connection ended: code 1006): the other side too."""
        data = self.data
        if data.close_code is None:
            data.closed_by_client = side.from_client
            data.close_code = int(event.code)
            data.close_reason = event.reason or None
        if event.code == _LOST:
            # No close frame came: the far end learns the same way (what was
            # on its way to it still goes first).
            self._close_all()
            return
        side.peer.write(CloseConnection(event.code, event.reason))
        side.write(event.response())
        self._close_all()

    def _too_big(self, side: _Side) -> None:
        data = self.data
        reason = f"message over {self._limit} bytes"
        if data.close_code is None:
            data.close_code = CloseReason.MESSAGE_TOO_BIG
            data.close_reason = reason
        _log.info("WebSocket {url}: closed, a message was over {limit} bytes",
                  url=_url(self.flow), limit=self._limit)
        for each in (self.client, self.server):
            each.write(CloseConnection(CloseReason.MESSAGE_TOO_BIG, reason))
        self._close_all()

    def _hook_failed(self, reason: Failure) -> None:
        """A hook raised or timed out (the chain logged it): close with 1011."""
        if self.closing:
            return
        data = self.data
        if data.close_code is None:
            data.close_code = CloseReason.INTERNAL_ERROR
            data.close_reason = "a hook failed"
        self.flow.error = Error(f"a WebSocket hook failed: {reason.getErrorMessage()}",
                                self._clock())
        for each in (self.client, self.server):
            each.write(CloseConnection(CloseReason.INTERNAL_ERROR, "proxy hook failed"))
        self._close_all()

    def _kill(self) -> None:
        self._close_all(abort=True)

    def _close_all(self, abort: bool = False) -> None:
        self.closing = True
        for side in (self.client, self.server):
            if side.lost:
                continue
            if abort:
                side.transport.abortConnection()
            else:
                side.close()

    def side_lost(self, side: _Side) -> None:
        """*side*'s connection ended: the other ends too; once both have, the relay ends."""
        other = side.peer
        if not other.lost:
            other.transport.unregisterProducer()
        if not self.closing and self.started:
            self.pump(side)  # what arrived before the end
            side.ws.receive_data(None)  # the close code 1006
            self.pump(side)
        self._close_all()
        if self.client.lost and self.server.lost and not self._ended:
            self._end()

    def _end(self) -> None:
        self._ended = True
        data = self.data
        data._relay = None
        if data.close_code is None:
            data.close_code = _LOST
        data.timestamp_end = self._clock()
        self.flow.live = False
        self._on_end()
        d = self._run("websocket_end")
        if d is not None:
            d.addErrback(lambda _: None)  # logged by the chain; the flow is over


def _url(flow: HTTPFlow) -> str:
    """The flow's URL, for the log."""
    return flow.request.url if flow.request is not None else "?"


def switch_websocket(request: Any) -> None:
    """
    The ``SWITCH`` action after an origin's ``101`` to a WebSocket upgrade:
    write the ``101`` (as the hooks left it) to the client, finish the
    request, and hand the client's connection and the origin's (with the
    bytes either side sent behind the handshake) to a
    :class:`WebSocketRelay`; with an extension the relay cannot read,
    to a raw relay instead.
    """
    channel = request.channel
    factory = channel.factory
    flow: HTTPFlow = request.flow
    response = flow.response
    assert response is not None
    upstream = request.swap_upstream(None)
    origin = upstream.switched
    upstream.switched = None
    request.code, request.code_message = 101, response.reason.encode("utf-8", "surrogateescape")
    channel.transport.write(response_head(
        request.clientproto, 101, request.code_message, response.headers.fields,
        framing=NO_BODY, close=False, upgrade=True,
    ))
    buffered = take_buffered(channel)
    channel.persistent = True  # the connection outlives this request
    request.startedWriting = 1  # the 101 went out raw: finish() writes no head
    request.finish()
    channel.stop_deadlines()

    def server_closed() -> None:
        factory.server_closed(origin)

    def ended() -> None:
        channel.relay_closed(None)
        server_closed()

    deflate, other = extensions(response.headers.fields)
    relay = WebSocketRelay(
        flow, chain=factory.chain, first=request, hooks=factory.hooks_for(type(request))[0],
        deflate=deflate, limit=factory.limits.max_websocket_message,
        clock=factory.reactor.seconds, on_end=ended,
    )
    if other:
        _log.info("WebSocket {url}: an extension twistproxy cannot read was negotiated; "
                  "relaying its bytes without the message hooks", url=_url(flow))
        _relay_raw(relay, channel, origin, buffered)
        return
    hand_over(channel, relay.client, buffered)
    hand_over(origin, relay.server, origin.take_switched())
    relay.server.lost = origin.lost  # the origin may have closed while the hooks ran
    relay.start()


def _relay_raw(relay: WebSocketRelay, channel: Any, origin: Any, buffered: bytes) -> None:
    """
    Relay, as raw bytes, a WebSocket whose frames cannot be read (with a
    passthrough tunnel's :class:`~twistproxy._tunnel.Relay` pair): no
    messages are recorded, and only ``websocket_end`` runs, once both sides
    closed.
    """
    relay.data._relay = None  # nothing can be injected into bytes we do not frame
    closed: list[Relay] = []

    def side_closed(side: Relay) -> None:
        closed.append(side)
        if len(closed) == 2:
            relay._end()

    near, far = Relay(on_close=side_closed), Relay(on_close=side_closed)
    hand_over(channel, near, buffered)
    hand_over(origin, far, origin.take_switched())
    if origin.lost:  # the origin closed while the hooks ran
        far.lost = True
        closed.append(far)
    near.join(far)
