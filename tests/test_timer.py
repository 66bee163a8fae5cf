"""
Tests for :mod:`twistproxy._timer`.
"""

from __future__ import annotations

import gc
import weakref

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from twistproxy._timer import Deadline, Pace


class DeadlineTests(SynchronousTestCase):
    """
    A Deadline expires once its time has passed since the latest start,
    never while stopped, and keeps at most one call on the clock.
    """

    def setUp(self) -> None:
        self.clock = Clock()
        self.expired: list[str] = []
        self.deadline = Deadline(self.clock, lambda: self.expired.append("first"))

    def test_expires_after_start(self) -> None:
        """Started for 10 s, it expires at 10 s, not before, and only once."""
        self.deadline.start(10)
        self.clock.advance(9.9)
        self.assertEqual(self.expired, [])
        self.assertTrue(self.deadline.active())
        self.clock.advance(0.1)
        self.assertEqual(self.expired, ["first"])
        self.assertFalse(self.deadline.active())
        self.clock.advance(100)
        self.assertEqual(self.expired, ["first"])
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_restart_moves_it_later(self) -> None:
        """A restart counts from the restart, with one call on the clock throughout."""
        self.deadline.start(10)
        self.clock.advance(6)
        self.deadline.start(10)
        self.assertEqual(len(self.clock.getDelayedCalls()), 1)
        self.clock.advance(9)  # 15 s: the first call came due and re-armed
        self.assertEqual(self.expired, [])
        self.assertEqual(len(self.clock.getDelayedCalls()), 1)
        self.clock.advance(1)
        self.assertEqual(self.expired, ["first"])

    def test_shorter_restart_brings_the_call_forward(self) -> None:
        """Restarted with a shorter time, it expires at that earlier time."""
        self.deadline.start(60)
        self.deadline.start(5)
        self.clock.advance(5)
        self.assertEqual(self.expired, ["first"])

    def test_shorter_restart_arms_a_new_call(self) -> None:
        """
        Brought forward, the armed call is cancelled and a new one armed,
        not reset: the reactor's reset of a call to a sooner time searches
        its whole heap of timers.
        """
        self.deadline.start(60)
        [first] = self.clock.getDelayedCalls()
        self.deadline.start(5)
        [second] = self.clock.getDelayedCalls()
        self.assertTrue(first.cancelled)
        self.assertIsNot(second, first)
        self.assertEqual(second.getTime(), 5)
        self.clock.advance(60)
        self.assertEqual(self.expired, ["first"])
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_stop(self) -> None:
        """Stopped, it does not expire; its call runs out and is not armed again."""
        self.deadline.start(10)
        self.deadline.stop()
        self.assertFalse(self.deadline.active())
        self.clock.advance(30)
        self.assertEqual(self.expired, [])
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_stop_then_start(self) -> None:
        """Started again after a stop, it expires counting from the new start."""
        self.deadline.start(10)
        self.clock.advance(8)
        self.deadline.stop()
        self.deadline.start(10)
        self.clock.advance(9)
        self.assertEqual(self.expired, [])
        self.clock.advance(1)
        self.assertEqual(self.expired, ["first"])

    def test_cancel_leaves_no_call(self) -> None:
        """Cancelled, no call is left on the clock and nothing expires."""
        self.deadline.start(10)
        self.deadline.cancel()
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.clock.advance(30)
        self.assertEqual(self.expired, [])

    def test_start_names_what_expires(self) -> None:
        """A callable given to start replaces the one given at construction."""
        self.deadline.start(1, lambda: self.expired.append("second"))
        self.clock.advance(1)
        self.assertEqual(self.expired, ["second"])

    def test_stop_lets_go_of_the_callable(self) -> None:
        """
        Stopped, the deadline keeps no reference to a callable given to
        start (its armed call outlives it), and expires with its own again.
        """

        class Owner:
            def expire(self) -> None:
                raise AssertionError("a stopped deadline expired")

        owner = Owner()
        self.deadline.start(10, owner.expire)
        self.deadline.stop()
        gone = weakref.ref(owner)
        del owner
        gc.collect()
        self.assertIsNone(gone())
        self.deadline.start(5)
        self.clock.advance(10)
        self.assertEqual(self.expired, ["first"])


class PaceTests(SynchronousTestCase):
    """
    A Pace expires when a window of reading ends short of its minimum;
    paused time does not count.
    """

    def setUp(self) -> None:
        self.clock = Clock()
        self.expired: list[float] = []
        self.pace = Pace(self.clock, lambda: self.expired.append(self.clock.seconds()))

    def test_trickle_expires(self) -> None:
        """One byte a second against 100 bytes per 10 s: expired at 10 s, once."""
        self.pace.start(10, 100)
        for _ in range(30):
            self.clock.advance(1)
            self.pace.received(1)
        self.assertEqual(self.expired, [10])
        self.assertFalse(self.pace.running)

    def test_steady_pace_goes_on(self) -> None:
        """The minimum in every window: never expired, over many windows."""
        self.pace.start(10, 100)
        for _ in range(100):
            self.pace.received(10)
            self.clock.advance(1)
        self.assertEqual(self.expired, [])
        self.assertTrue(self.pace.running)

    def test_each_window_counts_alone(self) -> None:
        """A fast first window does not pay for a silent second one."""
        self.pace.start(10, 100)
        self.pace.received(10_000)
        self.clock.advance(10)
        self.assertEqual(self.expired, [])
        self.clock.advance(10)
        self.assertEqual(self.expired, [20])

    def test_paused_time_does_not_count(self) -> None:
        """Paused, a window never ends; resumed, a new window starts."""
        self.pace.start(10, 100)
        self.clock.advance(5)
        self.pace.pause()
        self.clock.advance(1000)
        self.assertEqual(self.expired, [])
        self.pace.resume()
        self.clock.advance(9.9)
        self.assertEqual(self.expired, [])
        self.clock.advance(0.1)
        self.assertEqual(self.expired, [1015])

    def test_stop_and_cancel(self) -> None:
        """Stopped, nothing expires; cancelled, no call is left on the clock."""
        self.pace.start(10, 100)
        self.pace.stop()
        self.clock.advance(100)
        self.assertEqual(self.expired, [])
        self.pace.start(10, 0)  # at least one byte a window
        self.clock.advance(10)
        self.assertEqual(self.expired, [110])
        self.pace.start(10, 1)
        self.pace.cancel()
        self.assertEqual(self.clock.getDelayedCalls(), [])
