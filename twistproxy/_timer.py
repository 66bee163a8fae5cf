# -*- test-case-name: tests.test_timer -*-
"""
A timeout that costs almost nothing to restart.

The proxy restarts its timeouts on every exchange (the connection's idle
time, the request head's deadline, the origin's silence, a pooled
connection's idle time).  A ``DelayedCall`` per restart means an object, a
heap push and a cancellation each time; :class:`Deadline` only records when
it now expires, and keeps one ``DelayedCall`` armed that, when it comes due
early, re-arms itself for the rest.  :class:`Pace` builds a minimum rate
(a request body's) on one.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.internet.interfaces import IReactorTime


class Deadline:
    """
    One restartable timeout.

    :param clock: Where time comes from and calls are scheduled.
    :param expired: Called once the deadline passes while started (no
        arguments); :meth:`start` may name another callable for one run
        (until it expires or is stopped).
    """

    __slots__ = ("_clock", "_default", "_expired", "_at", "_call", "_armed")

    def __init__(self, clock: IReactorTime, expired: Callable[[], object]) -> None:
        self._clock = clock
        self._default = self._expired = expired
        self._at: float | None = None
        self._call: Any = None
        self._armed = 0.0  # when the armed call comes due

    def start(self, seconds: float, expired: Callable[[], object] | None = None) -> None:
        """
        (Re)start: expire *seconds* from now, calling *expired* (or the
        callable given at construction) then.
        """
        if expired is not None:
            self._expired = expired
        at = self._clock.seconds() + seconds
        self._at = at
        if self._call is None:
            self._call = self._clock.callLater(seconds, self._check)
            self._armed = at
        elif self._armed > at:
            # Sooner than the armed call: arm a new one.  Not reset(): a
            # reactor finds the call to bring forward by a linear search of
            # its heap (one scan of every timer of every connection), where
            # a cancel is counted and a new call pushed in log time.
            self._call.cancel()
            self._call = self._clock.callLater(seconds, self._check)
            self._armed = at

    def stop(self) -> None:
        """
        Stop without expiring; the armed call, when it comes, does nothing.
        A callable given to :meth:`start` is let go (it may hold a whole
        finished exchange).
        """
        self._at = None
        self._expired = self._default

    def cancel(self) -> None:
        """Stop and cancel the armed call (for a connection that is gone)."""
        self.stop()
        call, self._call = self._call, None
        if call is not None and call.active():
            call.cancel()

    def active(self) -> bool:
        """Whether the deadline is started and has not expired."""
        return self._at is not None

    def _check(self) -> None:
        self._call = None
        at = self._at
        if at is None:
            return
        clock = self._clock
        now = clock.seconds()
        if now < at:
            self._call = clock.callLater(at - now, self._check)
            self._armed = at
            return
        self._at = None
        expired, self._expired = self._expired, self._default
        expired()


class Pace:
    """
    A minimum pace for bytes arriving (a request body): in every window of
    *window* seconds while it runs, at least *minimum* bytes must arrive,
    or *expired* is called (once).  Paused time does not count: resuming
    starts a new window.

    :param clock: Where time comes from and calls are scheduled.
    :param expired: Called when a window ends short (no arguments).
    """

    __slots__ = ("_deadline", "_expired", "_window", "_minimum", "_count", "running", "paused")

    def __init__(self, clock: IReactorTime, expired: Callable[[], object]) -> None:
        self._deadline = Deadline(clock, self._window_ended)
        self._expired = expired
        self._window = 0.0
        self._minimum = 1
        self._count = 0
        self.running = False
        self.paused = False

    def start(self, window: float, minimum: int) -> None:
        """Start measuring: *minimum* bytes (at least one) every *window* seconds."""
        self._window, self._minimum, self._count = window, max(1, minimum), 0
        self.running, self.paused = True, False
        self._deadline.start(window)

    def received(self, count: int) -> None:
        """*count* bytes arrived."""
        self._count += count

    def pause(self) -> None:
        """Stop the clock: the bytes are held back on purpose."""
        if self.running and not self.paused:
            self.paused = True
            self._deadline.stop()

    def resume(self) -> None:
        """Start the clock again, with a new window."""
        if self.running and self.paused:
            self.paused = False
            self._count = 0
            self._deadline.start(self._window)

    def stop(self) -> None:
        """Stop measuring (everything arrived)."""
        self.running = self.paused = False
        self._deadline.stop()

    def cancel(self) -> None:
        """Stop, and cancel the armed call (for a connection that is gone)."""
        self.stop()
        self._deadline.cancel()

    def _window_ended(self) -> None:
        if self._count >= self._minimum:
            self._count = 0
            self._deadline.start(self._window)
            return
        self.running = False
        self._expired()
