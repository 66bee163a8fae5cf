"""
Tests for :mod:`twistproxy.limits`: the defaults and what a
:class:`~twistproxy.limits.Limits` accepts.  How the proxy enforces each
limit is tested in :mod:`tests.test_hardening`, the twistd options that set
them in :mod:`tests.test_tap_limits`.
"""

from __future__ import annotations

import attrs
from twisted.trial.unittest import SynchronousTestCase

from twistproxy.limits import DEFAULT_BACKLOG, Limits, with_backlog


class LimitsTests(SynchronousTestCase):
    """
    Tests for `Limits`.
    """

    def test_defaults(self) -> None:
        """
        The defaults are the documented ones: 8 KiB request line, 64 KiB
        header blocks, 256 header fields, 30 s for a request head, 120 s of
        origin silence, 3 s for a tunnel's first bytes, no connection limit,
        a request body's pace measured over 30 s at 500 bytes/s, and 10 MiB
        WebSocket messages.
        """
        limits = Limits()
        self.assertEqual(
            attrs.asdict(limits),
            {
                "max_request_line": 8 * 1024,
                "max_header_size": 64 * 1024,
                "max_header_count": 256,
                "max_response_header_size": 64 * 1024,
                "header_timeout": 30.0,
                "upstream_timeout": 120.0,
                "sniff_timeout": 3.0,
                "max_connections": 0,
                "body_timeout": 30.0,
                "body_min_rate": 500,
                "max_websocket_message": 10 * 1024 * 1024,
            },
        )

    def test_keyword_only_and_frozen(self) -> None:
        """
        Limits are given by name and cannot be changed afterwards; `attrs.evolve`
        makes a changed copy.
        """
        self.assertRaises(TypeError, Limits, 1024)  # type: ignore[misc]
        limits = Limits(max_connections=5)
        with self.assertRaises(attrs.exceptions.FrozenInstanceError):
            limits.max_connections = 6  # type: ignore[misc]
        self.assertEqual(attrs.evolve(limits, max_connections=6).max_connections, 6)
        self.assertEqual(limits.max_connections, 5)

    def test_sizes_have_a_floor(self) -> None:
        """
        Sizes and counts below their floor are refused with `ValueError`,
        the floor itself is accepted.
        """
        floors = {
            "max_request_line": 64,
            "max_header_size": 256,
            "max_header_count": 1,
            "max_response_header_size": 256,
            "max_connections": 0,
        }
        for name, floor in floors.items():
            with self.subTest(name=name):
                self.assertEqual(getattr(Limits(**{name: floor}), name), floor)
                self.assertRaises(ValueError, Limits, **{name: floor - 1})

    def test_sizes_are_integers(self) -> None:
        """
        A size or count that is not an `int` is refused with `TypeError`.
        """
        for name in ("max_request_line", "max_header_size", "max_header_count",
                     "max_response_header_size", "max_connections"):
            with self.subTest(name=name):
                self.assertRaises(TypeError, Limits, **{name: 1024.0})

    def test_times_positive(self) -> None:
        """
        A timeout of 0 or less is refused, naming the field and the value;
        a fraction of a second is accepted.
        """
        for name in ("header_timeout", "upstream_timeout", "sniff_timeout"):
            for value in (0, -1.5):
                with self.subTest(name=name, value=value):
                    with self.assertRaises(ValueError) as caught:
                        Limits(**{name: value})
                    self.assertEqual(
                        str(caught.exception), f"{name} must be positive, not {value!r}"
                    )
            self.assertEqual(getattr(Limits(**{name: 0.25}), name), 0.25)


class WithBacklogTests(SynchronousTestCase):
    """
    Tests for `with_backlog`: every listener opened from a description
    gets the backlog, unless it names its own.
    """

    def test_added(self) -> None:
        """Twisted's listeners get ``backlog=``, the default 1024."""
        self.assertEqual(DEFAULT_BACKLOG, 1024)
        self.assertEqual(with_backlog("tcp:8080:interface=127.0.0.1"),
                         "tcp:8080:interface=127.0.0.1:backlog=1024")
        self.assertEqual(with_backlog("TCP6:8080", 2048), "TCP6:8080:backlog=2048")
        self.assertEqual(with_backlog("unix:/tmp/p.sock", 10), "unix:/tmp/p.sock:backlog=10")
        self.assertEqual(with_backlog("ssl:443:privateKey=k.pem", 10),
                         "ssl:443:privateKey=k.pem:backlog=10")

    def test_kept(self) -> None:
        """A backlog given, or an endpoint type that takes none, is left alone."""
        for description in ("tcp:8080:backlog=5", "tcp:port=8080:BACKLOG=5:interface=::1",
                            "systemd:domain=INET:index=0", "onion:8080"):
            self.assertEqual(with_backlog(description, 10), description)

    def test_listens_with_it(self) -> None:
        """``serverFromString`` reads the result: the port listens with that backlog."""
        from twisted.internet.endpoints import serverFromString
        from twisted.internet.protocol import Factory
        from twisted.internet.testing import MemoryReactor

        reactor = MemoryReactor()
        serverFromString(reactor, with_backlog("tcp:8080:interface=127.0.0.1")).listen(Factory())
        [(port, _, backlog, interface)] = reactor.tcpServers
        self.assertEqual((port, backlog, interface), (8080, 1024, "127.0.0.1"))
