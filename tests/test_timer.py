"""
Tests for :mod:`twistproxy._timer`.
"""

from __future__ import annotations

import gc
import weakref

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from twistproxy._timer import Deadline


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
