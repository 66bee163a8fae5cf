# -*- test-case-name: tests.test_socks -*-
"""
A tunnel asked for without ``CONNECT``: :class:`TunnelOpening`.

A SOCKS5 client names its destination in a SOCKS request, a redirected
(transparent) client by where it was going; either way the proxy opens
the same tunnel a ``CONNECT`` opens, and decides about it the same way.
So the destination becomes a ``CONNECT`` flow, driven through the same
exchange core (:class:`~twistproxy._exchange.Exchange`) as an HTTP
``CONNECT``: its ``http_connect`` hook (where proxy authentication and the
host policy answer), the tunnel's far end
(:class:`~twistproxy._connect.TunnelEnd`: an eager connection, the
``server_connected`` hook, the check that it does not lead back to the
proxy), passthrough by ``ignore_hosts`` or the hook's choice, and the
``response`` or ``error`` hook that ends the flow.  Only the answers
differ: this shell reports them to its listener's protocol
(:class:`IOpeningListener`), which answers in its own words, and hands the
connection to the tunnel (:func:`~twistproxy._connect.enter_tunnel`) once
it is open.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any
from typing import Protocol as TypingProtocol

from twisted.internet.defer import Deferred
from twisted.python.failure import Failure

from twistproxy._chain import HookWaiter
from twistproxy._connect import TunnelEnd, enter_tunnel, open_tunnel
from twistproxy._events import Action, Event
from twistproxy._request import new_flow
from twistproxy._target import authority_for
from twistproxy.channel import Proxy
from twistproxy.connection import Server
from twistproxy.errors import BadRequestTarget, LoopDetected
from twistproxy.http import HTTPFlow


class IOpeningListener(TypingProtocol):
    """What a :class:`TunnelOpening` reports to: its listener's protocol."""

    def tunnel_opened(self, end: TunnelEnd) -> bytes:
        """
        The tunnel is open: answer the client (a SOCKS5 success reply, or
        nothing), and return the client's bytes read already, which go
        into the tunnel first.
        """

    def tunnel_refused(self, status: int | None, reason: Failure | None) -> None:
        """
        The tunnel will not open: a hook answered the ``CONNECT`` flow with
        *status* (403 from the host policy, 407 from proxy
        authentication...), or it failed for *reason* (the destination
        unreachable, a loop, a hook that raised).  Answer the client; the
        connection is closed after.
        """


class TunnelOpening(HookWaiter):
    """
    The ``CONNECT`` exchange of a tunnel whose client named its
    destination some other way (see the module's description).

    :param channel: The client's channel (its connection handed over to
        *listener*, which feeds :meth:`client_gone`).
    :param listener: Told how it ends.
    :param host: The destination.
    :param port: The destination.
    :param fields: Header fields for the ``CONNECT`` flow's request (a
        ``Proxy-Authorization`` made from SOCKS5 credentials, for the
        proxy authentication addon to check and remove).
    :ivar flow: The ``CONNECT`` flow.
    """

    _upstream: Any = None  # the TunnelEnd
    _busy = False
    _over = False

    def __init__(
        self, channel: Proxy, listener: IOpeningListener, host: str, port: int,
        fields: Sequence[tuple[bytes, bytes]] = (),
    ) -> None:
        self.channel = channel
        self._listener = listener
        factory = self._factory = channel.factory
        self._queue: list[tuple[Event, Any]] = []
        # The request class's own hooks run first, as for an HTTP CONNECT.
        self._first = first = factory.request_factory(channel)
        authority = authority_for("", host, port)  # host:port, always with the port
        self.flow: HTTPFlow | None = None
        refusal: BadRequestTarget | LoopDetected | None = None
        try:
            self.flow = new_flow(
                channel.client_conn, b"CONNECT", authority, b"HTTP/1.1", list(fields),
                tunnel=None, via=factory.via, passthrough=factory.passes_through,
                now=factory.reactor.seconds(), clock=factory.reactor.seconds,
            )
        except (BadRequestTarget, LoopDetected) as e:
            refusal = e
        first.flow = self.flow
        self._exchange = factory.exchange(first, refusal)

    def start(self) -> None:
        """Run the exchange: ``http_connect``, then the tunnel's far end."""
        self._event(Event.HEAD, True)

    def client_gone(self) -> None:
        """The client closed before the tunnel opened."""
        if not self._over:
            self._over = True
            self._event(Event.CLIENT_GONE)

    # -- what the tunnel's far end reports (IUpstreamReceiver) ---------------

    def upstream_ready(self, server: Server | None) -> None:
        """The far end is open (or the certificate minted)."""
        self._event(Event.UPSTREAM_READY, server)

    def response_failed(self, reason: Failure) -> None:
        """The far end could not be opened, or closed before the switch."""
        self._upstream = None
        self._event(Event.UPSTREAM_FAILED, reason)

    # -- what open_tunnel asks of a CONNECT's request -------------------------

    def server_hook(self) -> Callable[[Server], Deferred[Any] | None] | None:
        """What runs the ``server_connected`` hook (``None``: nobody implements it)."""
        if "server_connected" not in self._exchange.hooks:
            return None
        chain, first = self._factory.chain, self._first
        return lambda server: chain.run("server_connected", server, first=first)

    def swap_upstream(self, upstream: Any) -> Any:
        """Make *upstream* the far end; return the last one."""
        last, self._upstream = self._upstream, upstream
        return last

    # -- events in, actions out -----------------------------------------------

    def _event(self, event: Event, arg: Any = None) -> None:
        queue = self._queue
        queue.append((event, arg))
        if self._busy:
            return
        self._busy = True
        try:
            while queue:
                event, arg = queue.pop(0)
                for action, value in self._exchange.handle(event, self._seconds(), arg):
                    _PERFORM[action](self, value)
        finally:
            self._busy = False

    def _seconds(self) -> float:
        seconds: float = self._factory.reactor.seconds()
        return seconds

    def _run_hook(self, hook: str) -> None:
        d = self._factory.chain.run(hook, self.flow, first=self._first)
        if d is None:
            self._queue.insert(0, (Event.HOOK_DONE, None))
            return
        if self._wait_for_hook(d):
            self._queue.insert(0, (Event.HOOK_PENDING, None))

    def _pause_client(self, _: object) -> None:
        if not self._over:
            self.channel.transport.pauseProducing()

    def _resume_client(self, _: object) -> None:
        if not self._over:
            self.channel.transport.resumeProducing()

    def _answered(self, own: object) -> None:
        """A hook answered the ``CONNECT`` flow: no tunnel."""
        response = self.flow.response if self.flow is not None else None
        self._refused(response.status_code if response is not None else None, None)

    def _error(self, reason: Failure) -> None:
        self._refused(None, reason)

    def _refused(self, status: int | None, reason: Failure | None) -> None:
        if not self._over:
            self._over = True
            self._listener.tunnel_refused(status, reason)

    def _finish(self, _: object) -> None:
        """The refusal is answered: close (a switched tunnel never finishes)."""
        if self.channel.transport is not None:
            self.channel.transport.loseConnection()

    def _abandon_upstream(self, _: object) -> None:
        upstream, self._upstream = self._upstream, None
        if upstream is not None:
            upstream.abandon()

    def _abort_client(self, _: object) -> None:
        self._over = True
        self.channel.transport.abortConnection()

    def _switch(self, _: object) -> None:
        end: TunnelEnd = self.swap_upstream(None)
        self._over = True
        request = self.flow.request if self.flow is not None else None
        assert request is not None
        buffered = self._listener.tunnel_opened(end)
        enter_tunnel(self.channel, end, request.host, request.port, buffered)


def _nothing(_: TunnelOpening, __: object) -> None:
    """An action a ``CONNECT`` has no use for here (its answer closes the connection)."""


_PERFORM: dict[Action, Callable[[TunnelOpening, Any], None]] = {
    Action.RUN_HOOK: TunnelOpening._run_hook,
    Action.CANCEL_HOOK: TunnelOpening._cancel_hook,
    Action.PAUSE_CLIENT: TunnelOpening._pause_client,
    Action.RESUME_CLIENT: TunnelOpening._resume_client,
    Action.OPEN_TUNNEL: open_tunnel,
    Action.WRITE_RESPONSE: TunnelOpening._answered,
    Action.ERROR_PAGE: TunnelOpening._error,
    Action.CLOSE_AFTER: _nothing,
    Action.FINISH: TunnelOpening._finish,
    Action.ABANDON_UPSTREAM: TunnelOpening._abandon_upstream,
    Action.ABORT_CLIENT: TunnelOpening._abort_client,
    Action.SWITCH: TunnelOpening._switch,
}
