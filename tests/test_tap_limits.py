# -*- test-case-name: tests.test_tap_limits -*-
"""
Tests for the twistd options that set :class:`twistproxy.limits.Limits`.
"""

from __future__ import annotations

import resource

from twisted.internet.testing import MemoryReactorClock
from twisted.python import usage
from twisted.trial.unittest import SynchronousTestCase

from tests.options import parse
from twistproxy.tap import Options, default_max_connections, make_service


class LimitOptionTests(SynchronousTestCase):
    """
    The limit options reach the proxy factory; bad values are usage errors.
    """

    def parse(self, *args: str) -> Options:
        return parse(*args)

    def factory(self, options: Options) -> object:
        reactor = MemoryReactorClock()
        make_service(options, reactor).startService()
        [(_, factory, _, _)] = reactor.tcpServers
        return factory

    def test_options_reach_the_factory(self) -> None:
        """Each option sets its limit on the factory's Limits."""
        limits = self.factory(self.parse(
            "--max-connections", "7", "--header-timeout", "2.5", "--upstream-timeout", "9",
            "--max-header-size", "32k", "--max-request-line", "1k",
        )).limits
        self.assertEqual(
            (limits.max_connections, limits.header_timeout, limits.upstream_timeout,
             limits.max_header_size, limits.max_response_header_size,
             limits.max_request_line),
            (7, 2.5, 9.0, 32768, 32768, 1024),
        )

    def test_default_max_connections_from_descriptors(self) -> None:
        """By default the connection limit follows the file-descriptor limit."""
        soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
        expected = 0 if soft == resource.RLIM_INFINITY else max(16, (soft - 64) // 2)
        self.assertEqual(default_max_connections(), expected)
        self.assertEqual(self.factory(self.parse()).limits.max_connections, expected)

    def test_bad_values(self) -> None:
        """Negative, zero or too small values are one-line usage errors."""
        for args in (["--max-connections", "-1"], ["--header-timeout", "0"],
                     ["--upstream-timeout", "-3"], ["--max-request-line", "10"],
                     ["--max-header-size", "lots"]):
            with self.subTest(args=args), self.assertRaises(usage.UsageError) as caught:
                self.parse(*args)
            self.assertNotIn("\n", str(caught.exception))


class IgnoredOptionTests(SynchronousTestCase):
    """
    Options that would be silently ignored without the option they refine
    are usage errors instead.
    """

    def parse(self, *args: str) -> None:
        parse(*args)

    def test_save_filter_needs_save(self) -> None:
        """--save-filter alone is refused."""
        with self.assertRaises(usage.UsageError) as caught:
            self.parse("--save-filter", "~d example.com")
        self.assertIn("needs --save", str(caught.exception))

    def test_replay_options_need_server_replay(self) -> None:
        """Server replay's matching options alone are refused, naming them."""
        for args in (["--replay-ignore-param", "t"], ["--replay-match-header", "Accept"],
                     ["--replay-ignore-content"], ["--replay-unmatched", "404"]):
            with self.subTest(args=args), self.assertRaises(usage.UsageError) as caught:
                self.parse(*args)
            self.assertIn(args[0], str(caught.exception))
            self.assertIn("needs --server-replay", str(caught.exception))
