# -*- test-case-name: tests.test_tap_limits -*-
"""
Tests for the twistd options that set :class:`twistproxy.limits.Limits`.
"""

from __future__ import annotations

import resource
from typing import Any

from twisted.internet.testing import MemoryReactorClock
from twisted.python import usage
from twisted.trial.unittest import SynchronousTestCase

from tests.options import parse
from twistproxy import tap
from twistproxy.options import Options, default_max_connections
from twistproxy.proxy import ProxyFactory
from twistproxy.tap import make_service


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
            "--max-header-size", "32k", "--max-request-line", "1k", "--sniff-timeout", "0.5",
            "--max-websocket-message", "2m",
        )).limits
        self.assertEqual(
            (limits.max_connections, limits.header_timeout, limits.upstream_timeout,
             limits.max_header_size, limits.max_response_header_size,
             limits.max_request_line, limits.sniff_timeout, limits.max_websocket_message),
            (7, 2.5, 9.0, 32768, 32768, 1024, 0.5, 2 * 1024 * 1024),
        )

    def test_body_pace_options(self) -> None:
        """``--body-timeout`` and ``--body-min-rate`` set the request body's pace."""
        limits = self.factory(self.parse("--body-timeout", "5", "--body-min-rate", "0")).limits
        self.assertEqual((limits.body_timeout, limits.body_min_rate), (5.0, 0))
        limits = self.factory(self.parse()).limits
        self.assertEqual((limits.body_timeout, limits.body_min_rate), (30.0, 500))

    def test_backlog(self) -> None:
        """The --port listener gets ``--backlog``, 1024 by default."""
        for args, expected in (((), 1024), (("--backlog", "4096"), 4096),
                               (("--port", "tcp:8081:backlog=7", "--backlog", "99"), 7)):
            reactor = MemoryReactorClock()
            make_service(self.parse(*args), reactor).startService()
            [(_, _, backlog, _)] = reactor.tcpServers
            self.assertEqual(backlog, expected, args)

    def test_backlog_every_listener(self) -> None:
        """Every ``--mode`` listener gets ``--backlog``."""
        reactor = MemoryReactorClock()
        make_service(self.parse("--mode", "regular@8081", "--mode", "regular@8082",
                                "--backlog", "77"), reactor).startService()
        self.assertEqual(sorted((port, backlog) for port, _, backlog, _ in reactor.tcpServers),
                         [(8081, 77), (8082, 77)])

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
                     ["--sniff-timeout", "0"],
                     ["--max-header-size", "lots"], ["--max-websocket-message", "0"],
                     ["--body-timeout", "0"], ["--body-timeout", "inf"],
                     ["--body-min-rate", "-1"], ["--backlog", "0"], ["--backlog", "x"]):
            with self.subTest(args=args), self.assertRaises(usage.UsageError) as caught:
                self.parse(*args)
            self.assertNotIn("\n", str(caught.exception))


class HookDeadlineOptionTests(SynchronousTestCase):
    """
    ``--hook-timeout`` and ``--intercept-timeout`` reach the proxy factory;
    bad values are usage errors naming the option.
    """

    def factory_arguments(self, *args: str) -> dict[str, Any]:
        """
        The keyword arguments the service for *args* builds its
        :class:`ProxyFactory` with.
        """
        made: list[dict[str, Any]] = []

        def recording(**kwargs: Any) -> ProxyFactory:
            made.append(kwargs)
            return ProxyFactory(**kwargs)

        self.patch(tap, "ProxyFactory", recording)
        make_service(parse(*args), MemoryReactorClock())
        [kwargs] = made
        return kwargs

    def test_defaults(self) -> None:
        """
        By default a hook may take 60 seconds and an intercepted flow waits
        for as long as it takes.
        """
        kwargs = self.factory_arguments()
        self.assertEqual((kwargs["hook_timeout"], kwargs["intercept_timeout"]), (60.0, None))

    def test_options_reach_the_factory(self) -> None:
        """
        Each option gives the factory its deadline, in seconds.
        """
        kwargs = self.factory_arguments("--hook-timeout", "2.5", "--intercept-timeout", "300")
        self.assertEqual((kwargs["hook_timeout"], kwargs["intercept_timeout"]), (2.5, 300.0))

    def test_bad_values(self) -> None:
        """
        Zero, negative, infinite or non-numeric values are one-line usage
        errors naming the option and the value.
        """
        for option in ("--hook-timeout", "--intercept-timeout"):
            for value in ("0", "-1", "abc", "inf", "nan"):
                with self.subTest(option=option, value=value):
                    with self.assertRaises(usage.UsageError) as caught:
                        parse(option, value)
                    message = str(caught.exception)
                    self.assertNotIn("\n", message)
                    self.assertIn(f"{option} {value}: not a positive number of seconds", message)

    def test_help(self) -> None:
        """
        ``--help`` explains both options, with their defaults.
        """
        help_text = " ".join(Options().getUsage(width=1000).split())
        self.assertIn(
            "--hook-timeout= Seconds a hook's Deferred or coroutine may take (then 500). "
            "[default: 60.0]",
            help_text,
        )
        self.assertIn(
            "--intercept-timeout= Seconds an intercepted flow waits for resume() (then 500). "
            "[default: no limit]",
            help_text,
        )


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
