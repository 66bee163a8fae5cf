# -*- test-case-name: tests.test_upstream -*-
"""
The one path a request takes upstream, live or replayed:
:class:`UpstreamExchange`.

It takes a connection from a :class:`~twistproxy.pool.ConnectionPool` (an
idle one, or a new one that does not lead back to the proxy and has had its
``server_connected`` hook), hands the request to it, keeps the origin's
silence in bounds and applies the one retry rule
(:func:`~twistproxy._request.may_retry`), and reports the response to an
:class:`IUpstreamReceiver`: a :class:`~twistproxy.proxy.ProxyRequest`, or
client replay's collector.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any
from typing import Protocol as TypingProtocol

from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.interfaces import IPushProducer
from twisted.python.failure import Failure
from zope.interface import implementer

from twistproxy._events import IResponseReceiver
from twistproxy._request import may_retry
from twistproxy.client import PoolKey, ProxyClient
from twistproxy.connection import Server
from twistproxy.errors import LoopDetected, UpstreamConnectionLost, UpstreamTimeout
from twistproxy.pool import ConnectionPool

if TYPE_CHECKING:
    from twisted.internet.interfaces import IAddress


class IUpstreamReceiver(IResponseReceiver, TypingProtocol):
    """
    What an :class:`UpstreamExchange` reports to: the response's progress as
    :class:`IResponseReceiver` says, after :meth:`upstream_ready`.  A failure
    to connect (refused, no such name, TLS refused, the request points back
    at the proxy, a failing ``server_connected`` hook) is reported through
    :meth:`~IResponseReceiver.response_failed`, and so is the origin staying
    silent past the exchange's timeout.
    """

    def upstream_ready(self, server: Server | None) -> None:
        """
        A connection is ready for the request: call
        :meth:`UpstreamExchange.send` now.  Called once per exchange, with
        the connection's record.
        """


def checked(
    transport: Any,
    server: Server,
    *,
    here: IAddress | None,
    on_connected: Callable[[Server], Deferred[Any] | None] | None,
    ready: Callable[[], object],
    failed: Callable[[Failure], object],
    what: str,
) -> Deferred[Any] | None:
    """
    What every new upstream connection goes through before it carries
    anything (a request's, or a passthrough tunnel's): refused if it leads
    back to *here* (:class:`~twistproxy.errors.LoopDetected`, naming
    *what* it was for), then *on_connected* (the ``server_connected``
    hook) with its record; *ready* is called after, *failed* with the
    failure instead.

    :returns: The Deferred the hook returned, while it is waited for (to
        cancel when the connection is abandoned), or ``None``.
    """
    if here is not None and points_at(transport, here):
        failed(Failure(LoopDetected(f"the {what} names this proxy itself")))
        return None
    d = on_connected(server) if on_connected is not None else None
    if d is None:
        ready()
        return None
    d.addCallbacks(lambda _: ready(), failed)
    return d


def points_at(transport: Any, here: IAddress) -> bool:
    """
    Whether an upstream connection reached *here*, the address a client
    reached the proxy on: the same port, at that address or at the upstream
    connection's own local address (a name that resolves to this machine).
    """
    peer = transport.getPeer()
    if getattr(peer, "port", None) != getattr(here, "port", None):
        return False
    return peer.host in (getattr(here, "host", None), transport.getHost().host)


@implementer(IPushProducer)
class UpstreamExchange:
    """
    One request's way to an origin through a :class:`ConnectionPool`: the
    one path every request upstream takes, live or replayed.

    :meth:`open` takes an idle connection for the key, or makes a new one,
    checks that it does not lead back to the proxy (*here*) and runs
    *on_connected* (the ``server_connected`` hook) for it; then the receiver
    is told :meth:`~IUpstreamReceiver.upstream_ready` and sends the request.
    While the request is complete and the response is not, the origin may be
    silent for *timeout* seconds at most, except while the response is held
    back on the proxy's side (:meth:`hold`, or the client's backpressure
    through :meth:`pauseProducing`): that time is not the origin's silence.
    A request that meets a connection the origin closed meanwhile is sent
    once more on a new one when :func:`~twistproxy._request.may_retry`
    allows it; every other failure goes to the receiver.  Nothing happens
    until :meth:`open` is called.

    The exchange is the client connection's producer while a streamed
    response is relayed (``IPushProducer``).

    :param pool: Where connections come from (and go back to).
    :param key: Where the request goes.
    :param receiver: Told when to send, and of the response.
    :param method: The request's method (framing and the retry rule).
    :param timeout: Seconds the origin may stay silent once the request is
        complete.
    :param here: The address the client reached the proxy on: a new
        connection that leads there fails with
        :class:`~twistproxy.errors.LoopDetected`.
    :param on_connected: Runs for each new connection with its record (the
        ``server_connected`` hook); a Deferred it returns is waited for, and
        its failure fails the exchange.
    :param upgrade: The request asks for a WebSocket: a ``101`` answers it,
        and the connection is then kept out of the pool for the receiver
        (:attr:`switched`).
    :ivar switched: The connection, after the origin switched it to a
        WebSocket (``101``): nobody else's, until it is taken over or
        :meth:`abandon` closes it.
    :ivar server: The record of the connection carrying the request (the
        latest one, after a retry), once there is one.
    :ivar key: The *key* given.
    """

    server: Server | None = None
    switched: ProxyClient | None = None
    _client: ProxyClient | None = None
    _pending: Deferred[Any] | None = None  # connecting, or the server hook
    _sent: Sequence[bytes] | None = None  # the whole request, for a retry
    _complete = False
    _held = False  # by the receiver (a hook looks at the response head)
    _paused = False  # by the client's backpressure
    _over = False

    def __init__(
        self,
        pool: ConnectionPool,
        key: PoolKey,
        receiver: IUpstreamReceiver,
        *,
        method: bytes,
        timeout: float,
        here: IAddress | None = None,
        on_connected: Callable[[Server], Deferred[Any] | None] | None = None,
        upgrade: bool = False,
    ) -> None:
        self._upgrade = upgrade
        self._pool = pool
        self.key = key
        self._receiver = receiver
        self._method = method
        self._timeout = timeout
        self._here = here
        self._on_connected = on_connected
        self._attempts = 0

    def open(self) -> None:
        """
        Find a connection: an idle one is ready at once; a new one once it
        is connected, checked and its ``server_connected`` hook has run.  A
        retry always takes a new one (an idle one may be as stale as the
        last).
        """
        self._attempts += 1
        client = self._pool.take_idle(self.key) if self._attempts == 1 else None
        if client is not None:
            self._attach(client)
            self._receiver.upstream_ready(client.server)
            return
        self._pending = d = self._pool.connect(self.key)
        d.addCallbacks(self._connected, self._failed)

    def _connected(self, client: ProxyClient) -> None:
        self._pending = None
        self._attach(client)
        assert client.server is not None
        self._pending = checked(
            client.transport, client.server, here=self._here, on_connected=self._on_connected,
            ready=self._ready, failed=self._failed, what="request",
        )

    def _ready(self) -> None:
        self._pending = None
        if self._sent is not None:  # a retry: the request goes again as it went
            self.send(self._sent, complete=True)
        else:
            self._receiver.upstream_ready(self.server)

    def _attach(self, client: ProxyClient) -> None:
        self._client = client
        if client.server is not None:
            self.server = client.server

    def _failed(self, reason: Failure) -> None:
        """Connecting, or the ``server_connected`` hook, failed."""
        self._pending = None
        client, self._client = self._client, None
        if client is not None:
            client.abandon()
        # Abandoned (over): a cancelled connect reports nothing, whatever
        # the endpoint failed with (a TCP one: ConnectingCancelledError).
        if not reason.check(CancelledError) and not self._over:
            self._end().response_failed(reason)

    # -- the request -----------------------------------------------------

    def send(self, data: Sequence[bytes], *, complete: bool) -> None:
        """
        Write the request: its head and whatever body is in hand, the whole
        request when *complete* (kept for a retry then), otherwise the rest
        follows through :meth:`write_body` and :meth:`end_body`.
        """
        client = self._client
        assert client is not None, "send() before upstream_ready()"
        self._complete = complete
        if complete:
            self._sent = data
        client.send(self, data, method=self._method, complete=complete, upgrade=self._upgrade)
        if complete:
            self._watch()

    def write_body(self, data: Sequence[bytes]) -> None:
        """Write more of a streamed request body."""
        if self._client is not None and not self._over:
            self._client.write_body(data)

    def end_body(self, data: Sequence[bytes] = ()) -> None:
        """Write the end of a streamed request body; the origin's turn starts."""
        client = self._client
        if client is not None and not self._over:
            self._complete = True
            client.end_body(data)
            self._watch()

    @property
    def transport(self) -> Any:
        """The connection's transport (a streamed request's consumer), or ``None``."""
        client = self._client
        return client.transport if client is not None else None

    # -- holding the response back ----------------------------------------

    def hold(self, held: bool) -> None:
        """Stop (or go on) reading the response: a hook looks at its head."""
        self._held = held
        self._set_reading()

    def pauseProducing(self) -> None:
        """``IPushProducer``: the client cannot take more of the response."""
        self._paused = True
        self._set_reading()

    def resumeProducing(self) -> None:
        """``IPushProducer``: the client can take more of the response."""
        self._paused = False
        self._set_reading()

    def stopProducing(self) -> None:
        """``IPushProducer``: the client is gone."""
        self.abandon()

    def _set_reading(self) -> None:
        transport = self.transport
        if transport is not None and not self._over:
            if self._held or self._paused:
                transport.pauseProducing()
            else:
                transport.resumeProducing()

    # -- the origin's silence -----------------------------------------------

    def _watch(self) -> None:
        client = self._client
        if client is not None and not self._over:
            client.deadline.start(self._timeout, self._silent)

    def _silent(self) -> None:
        """The origin said nothing for the timeout, unless the proxy held it back."""
        if self._held or self._paused:
            self._watch()
            return
        client, self._client = self._client, None
        if client is not None:
            client.abandon()
        error = UpstreamTimeout(f"the server sent nothing for {self._timeout:g} s")
        self._end().response_failed(Failure(error))

    # -- the end --------------------------------------------------------------

    def abandon(self) -> None:
        """
        The receiver went away: close the connection (or stop connecting)
        and report nothing more.  A connection the origin switched to a
        WebSocket that nobody took over is closed too.
        """
        switched, self.switched = self.switched, None
        if switched is not None:
            switched.abandon()
        if self._over:
            return
        self._over = True
        pending, self._pending = self._pending, None
        if pending is not None:
            pending.addErrback(_ignore_cancelled)
            pending.cancel()
        client, self._client = self._client, None
        if client is not None:
            client.deadline.stop()
            client.abandon()

    def _end(self) -> IUpstreamReceiver:
        """Mark the exchange over and return the receiver, told nothing more after."""
        self._over = True
        client = self._client
        if client is not None:
            client.deadline.stop()
        return self._receiver

    # -- IResponseReceiver: what the connection reports --------------------

    def response_started(
        self,
        status: int,
        reason: bytes,
        version: bytes,
        fields: list[tuple[bytes, bytes]],
        framing: int,
    ) -> None:
        """The head arrived: the origin spoke; hand it on."""
        client = self._client
        if self._complete and client is not None:
            client.deadline.start(self._timeout)  # _silent, as _watch() set it
        self._receiver.response_started(status, reason, version, fields, framing)

    def response_data(self, data: bytes) -> None:
        """A piece of the body: the origin spoke; hand it on."""
        client = self._client
        if self._complete and client is not None:
            client.deadline.start(self._timeout)  # _silent, as _watch() set it
        self._receiver.response_data(data)

    def read_done(self) -> None:
        """The read that brought the head is handled: hand it on."""
        self._receiver.read_done()

    def response_trailers(self, fields: list[tuple[bytes, bytes]]) -> None:
        """The body's trailers: hand them on."""
        self._receiver.response_trailers(fields)

    def response_interim(
        self, status: int, reason: bytes, fields: list[tuple[bytes, bytes]]
    ) -> None:
        """An interim response: hand it on."""
        self._receiver.response_interim(status, reason, fields)

    def response_ended(self) -> None:
        """The response is complete."""
        client = self._client
        if client is not None and client.upgraded:
            self.switched = client  # out of the pool, for the WebSocket relay
        self._client = None  # back in the pool, or closed: not ours any more
        self._end().response_ended()

    def response_failed(self, reason: Failure) -> None:
        """The connection failed: once more on a new one if the rule allows."""
        client, self._client = self._client, None
        if client is not None:
            client.deadline.stop()
        if client is not None and may_retry(
            self._method,
            reused=client.reused,
            complete=self._sent is not None,
            answered=client.answered,
            lost=reason.check(UpstreamConnectionLost) is not None,
            attempts=self._attempts,
        ):
            self.open()
            return
        self._end().response_failed(reason)


def _ignore_cancelled(reason: Failure) -> None:
    reason.trap(CancelledError)
