# -*- test-case-name: tests.test_service -*-
"""
The client connections a proxy factory serves, and their drain when it
stops: :class:`OpenChannels`.

Every :class:`~twistproxy.channel.Proxy` channel is in its factory's
:class:`OpenChannels` while it serves a client connection (for an
intercepted tunnel, the channel inside in place of the outer one).  A drain
(:meth:`OpenChannels.drain`, from
:meth:`~twistproxy.service.ProxyService.stopService`) tells each channel to
close once it is idle (:meth:`~twistproxy.channel.Proxy.drain`); those
still open at the deadline give up what they carry
(:meth:`~twistproxy.channel.Proxy.shut`), and whatever is still open a
moment later is aborted.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure

from twistproxy.errors import ShuttingDown

if TYPE_CHECKING:
    from twistproxy.channel import Proxy

LAST_WORD = 1.0
"""
Seconds the answers given at the deadline (503s) have to go out before
the connections still open are aborted, and again before a drain stops
waiting for connections that do not report their end.
"""


class OpenChannels:
    """
    The channels of a factory's open client connections.

    :param clock: Times the drain.
    :ivar draining: A drain is under way: a channel added now is drained
        at once.
    """

    log = Logger(namespace="twistproxy")

    def __init__(self, clock: IReactorTime) -> None:
        self._clock = clock
        self._open: set[Proxy] = set()
        self._waiting: list[Deferred[int]] = []
        self._timer: IDelayedCall | None = None
        self._given_up = 0
        self.draining = False

    def __len__(self) -> int:
        return len(self._open)

    def add(self, channel: Proxy) -> None:
        """*channel* serves a connection (drained at once during a drain)."""
        self._open.add(channel)
        if self.draining:
            channel.drain()

    def replace(self, old: Proxy, new: Proxy) -> None:
        """*new*, a channel inside an intercepted tunnel, serves *old*'s connection now."""
        self._open.add(new)
        self._open.discard(old)

    def remove(self, channel: Proxy) -> None:
        """*channel*'s connection ended."""
        self._open.discard(channel)
        if self.draining and not self._open:
            self._drained()

    def drain(self, timeout: float) -> Deferred[int]:
        """
        Close every connection once it is idle: between requests at once,
        with a request in hand after its response, tunnels and WebSockets
        when they end.  After *timeout* seconds, what is still in flight is
        given up (503, or an aborted connection once a response started;
        tunnels aborted); :data:`LAST_WORD` seconds later, whatever is still
        open is aborted.  A drain under way is joined, not restarted.

        :returns: A Deferred that fires once every connection is closed,
            with how many were given up at the deadline.
        """
        d: Deferred[int] = Deferred()
        self._waiting.append(d)
        if self.draining:
            return d
        self.draining = True
        self._given_up = 0
        self.log.info(
            "twistproxy stops: draining {count} client connections (at most {timeout:g} s)",
            count=len(self._open), timeout=timeout,
        )
        for channel in list(self._open):
            channel.drain()
        if not self._open:
            self._drained()
        else:
            self._timer = self._clock.callLater(timeout, self._deadline, timeout)
        return d

    def _deadline(self, timeout: float) -> None:
        reason = Failure(ShuttingDown(
            f"the proxy shut down: the exchange was still going {timeout:g} s after "
            "the shutdown started"
        ))
        self._timer = self._clock.callLater(LAST_WORD, self._abort)
        self._given_up = sum(channel.shut(reason) for channel in list(self._open))

    def _abort(self) -> None:
        self._timer = self._clock.callLater(LAST_WORD, self._stop_waiting)
        for channel in list(self._open):
            channel.abort()

    def _stop_waiting(self) -> None:
        self._timer = None
        self.log.warn(
            "twistproxy stops: {count} client connections did not report their end",
            count=len(self._open),
        )
        self._open.clear()
        self._drained()

    def _drained(self) -> None:
        timer, self._timer = self._timer, None
        if timer is not None and timer.active():
            timer.cancel()
        self.draining = False
        self.log.info(
            "twistproxy stopped: connections drained, {aborted} given up at the deadline",
            aborted=self._given_up,
        )
        waiting, self._waiting = self._waiting, []
        for d in waiting:
            d.callback(self._given_up)
