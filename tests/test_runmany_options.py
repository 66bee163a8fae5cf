"""
The options of running many (issue 18): ``--proxy-protocol`` and the
``haproxy:`` prefix, ``--metrics-port``, ``--drain-delay``, and what a
``--workers`` supervisor passes on to its workers.
"""

from __future__ import annotations

from twisted.python import usage
from twisted.trial.unittest import SynchronousTestCase

from twistproxy.options import Options
from twistproxy.tap import loopback_only
from twistproxy.workers import worker_arguments


def parse(*args: str) -> Options:
    options = Options()
    options.parseOptions(list(args))
    return options


class ProxyProtocolOptionTests(SynchronousTestCase):
    """Which listeners take the PROXY protocol."""

    def test_flag_prefixes_every_listener(self) -> None:
        options = parse("--proxy-protocol", "--mode", "regular@8081",
                        "--mode", "reverse:http://127.0.0.1:9000@8082")
        self.assertEqual([d for _, d in options["listeners"]],
                         ["haproxy:tcp:8081:interface=127.0.0.1",
                          "haproxy:tcp:8082:interface=127.0.0.1"])

    def test_port_prefix_sets_the_flag(self) -> None:
        options = parse("--port", "haproxy:tcp:8080:interface=127.0.0.1")
        self.assertTrue(options["proxy-protocol"])
        self.assertEqual(options["endpoint"], "haproxy:tcp:8080:interface=127.0.0.1")

    def test_a_port_number(self) -> None:
        options = parse("--proxy-protocol", "--port", "8080")
        self.assertEqual(options["endpoint"], "haproxy:tcp:8080:interface=127.0.0.1")

    def test_without(self) -> None:
        self.assertFalse(parse("--port", "8080")["proxy-protocol"])

    def test_loopback_sees_through_the_prefix(self) -> None:
        self.assertTrue(loopback_only("haproxy:tcp:8080:interface=127.0.0.1"))
        self.assertFalse(loopback_only("haproxy:tcp:8080:interface=0.0.0.0"))


class MetricsOptionTests(SynchronousTestCase):
    """--metrics-port and --drain-delay."""

    def test_off_by_default(self) -> None:
        options = parse()
        self.assertIsNone(options["metrics-endpoint"])
        self.assertEqual(options["drain-delay"], 0.0)

    def test_port_number_on_loopback(self) -> None:
        self.assertEqual(parse("--metrics-port", "9100")["metrics-endpoint"],
                         "tcp:9100:interface=127.0.0.1")

    def test_endpoint(self) -> None:
        self.assertEqual(parse("--metrics-port", "tcp6:9100:interface=\\:\\:1")["metrics-endpoint"],
                         "tcp6:9100:interface=\\:\\:1")

    def test_refused(self) -> None:
        for args, expected in [
            (("--metrics-port", "70000"), "--metrics-port 70000: not a port number"),
            (("--metrics-port", "nonsense:1"), "--metrics-port nonsense:1: not a port or"),
            (("--metrics-port", "haproxy:tcp:9100"), "the PROXY protocol is for --port"),
            (("--drain-delay", "-1"), "--drain-delay"),
        ]:
            with self.assertRaises(usage.UsageError) as raised:
                parse(*args)
            self.assertIn(expected, str(raised.exception))

    def test_workers_do_not_get_the_supervisors_options(self) -> None:
        """The supervisor serves the metrics and delays the drain, not its workers."""
        self.assertEqual(
            worker_arguments(["--workers", "2", "--metrics-port", "9100", "--drain-delay=3",
                              "--proxy-protocol", "--port", "8080", "-q"]),
            ["--proxy-protocol", "-q"])
