"""
Tests for :mod:`twistproxy.errors`.
"""

from __future__ import annotations

from twisted.internet import error
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from twistproxy.errors import (
    AddonError,
    BadRequestTarget,
    FlowKilled,
    HookFailed,
    HookTimeout,
    TwistProxyError,
    UpstreamConnectFailed,
    UpstreamConnectionLost,
    UpstreamNameNotResolved,
    UpstreamProtocolError,
    UpstreamTimeout,
    error_status,
    upstream_error,
)


class UpstreamErrorTests(SynchronousTestCase):
    """
    Tests for `upstream_error`.
    """

    def assert_translated(self, original: BaseException, expected: type[TwistProxyError]) -> str:
        """
        Assert that *original* is translated into exactly *expected*.

        :returns: The translated error's message.
        """
        translated = upstream_error(Failure(original))
        self.assertIs(type(translated.value), expected)
        return str(translated.value)

    def test_dns_lookup(self) -> None:
        """
        A DNS failure becomes `UpstreamNameNotResolved`, naming what failed.
        """
        message = self.assert_translated(
            error.DNSLookupError("nx.example"), UpstreamNameNotResolved
        )
        self.assertIn("nx.example", message)

    def test_refused(self) -> None:
        """
        A refused connection becomes `UpstreamConnectFailed`.
        """
        self.assert_translated(error.ConnectionRefusedError(), UpstreamConnectFailed)

    def test_timeout(self) -> None:
        """
        A connect timeout becomes `UpstreamTimeout`, not the
        `UpstreamConnectFailed` its base class `ConnectError` would give.
        """
        self.assert_translated(error.TimeoutError(), UpstreamTimeout)

    def test_no_route(self) -> None:
        """
        An unreachable host becomes `UpstreamConnectFailed`.
        """
        self.assert_translated(error.NoRouteError(), UpstreamConnectFailed)

    def test_other_connect_error_detail(self) -> None:
        """
        Another connect error becomes `UpstreamConnectFailed` carrying the
        operating system's message.
        """
        message = self.assert_translated(
            error.ConnectError(osError="Network is unreachable"), UpstreamConnectFailed
        )
        self.assertIn("Network is unreachable", message)

    def test_connection_lost(self) -> None:
        """
        A reset connection becomes `UpstreamConnectionLost`.
        """
        self.assert_translated(error.ConnectionLost(), UpstreamConnectionLost)

    def test_connection_done(self) -> None:
        """
        A cleanly closed connection becomes `UpstreamConnectionLost` too.
        """
        self.assert_translated(error.ConnectionDone(), UpstreamConnectionLost)

    def test_invalid_hostname(self) -> None:
        """
        A name ``HostnameEndpoint`` refuses to look up (IDNA cannot encode
        it) becomes `UpstreamNameNotResolved` (502), not a 500.
        """
        from twisted.internet.endpoints import HostnameEndpoint
        from twisted.internet.protocol import Factory
        from twisted.internet.testing import MemoryReactorClock

        d = HostnameEndpoint(MemoryReactorClock(), "a_b.example", 80).connect(Factory())
        reason = self.failureResultOf(d, ValueError)
        translated = upstream_error(reason)
        self.assertIs(type(translated.value), UpstreamNameNotResolved)
        self.assertIn("a_b.example", str(translated.value))

    def test_our_errors_pass_through(self) -> None:
        """
        A failure that already holds a `TwistProxyError` is returned as it
        is.
        """
        reason = Failure(UpstreamProtocolError("bad"))
        self.assertIs(upstream_error(reason), reason)

    def test_other_errors_pass_through(self) -> None:
        """
        A failure that is not a transport failure is returned unchanged.
        """
        reason = Failure(ValueError("boom"))
        self.assertIs(upstream_error(reason), reason)


class ErrorStatusTests(SynchronousTestCase):
    """
    Tests for `error_status`.
    """

    def test_our_errors(self) -> None:
        """
        Each twistproxy error answers with its own status line.
        """
        expected = {
            BadRequestTarget: (400, b"Bad Request"),
            UpstreamConnectFailed: (502, b"Bad Gateway"),
            UpstreamNameNotResolved: (502, b"Bad Gateway"),
            UpstreamTimeout: (504, b"Gateway Timeout"),
            UpstreamConnectionLost: (502, b"Bad Gateway"),
            UpstreamProtocolError: (502, b"Bad Gateway"),
            FlowKilled: (502, b"Bad Gateway"),
            AddonError: (500, b"Internal Server Error"),
        }
        for cls, status in expected.items():
            with self.subTest(cls=cls.__name__):
                self.assertEqual(error_status(Failure(cls("x"))), status)

    def test_hook_failed(self) -> None:
        """
        A failed hook answers 500.
        """
        failure = Failure(HookFailed("request", "MyAddon", Failure(KeyError("k"))))
        self.assertEqual(error_status(failure), (500, b"Internal Server Error"))

    def test_other_errors(self) -> None:
        """
        Anything that is not a twistproxy error answers 500.
        """
        self.assertEqual(error_status(Failure(ValueError())), (500, b"Internal Server Error"))
        self.assertEqual(
            error_status(Failure(error.ConnectionRefusedError())),
            (500, b"Internal Server Error"),
        )

    def test_translated_transport_error(self) -> None:
        """
        A transport failure translated by `upstream_error` gets the
        translation's status.
        """
        reason = upstream_error(Failure(error.TimeoutError()))
        self.assertEqual(error_status(reason), (504, b"Gateway Timeout"))


class HookFailedTests(SynchronousTestCase):
    """
    Tests for `HookFailed`.
    """

    def test_message(self) -> None:
        """
        The message names the hook, the addon, and the cause's type and
        text.
        """
        error_ = HookFailed("responseheaders", "addon 'x.py'", Failure(ValueError("no good")))
        self.assertEqual(
            str(error_), "hook 'responseheaders' of addon 'x.py' failed: ValueError: no good"
        )

    def test_attributes(self) -> None:
        """
        The hook, addon and cause are kept for the error log.
        """
        cause = Failure(ZeroDivisionError("x"))
        error_ = HookFailed("request", "A", cause)
        self.assertEqual((error_.hook, error_.addon), ("request", "A"))
        self.assertIs(error_.cause, cause)
        self.assertIsInstance(error_, TwistProxyError)


class HookTimeoutTests(SynchronousTestCase):
    """
    Tests for `HookTimeout`.
    """

    def test_hook_message(self) -> None:
        """
        A hook that timed out is named, with its addon and the deadline.
        """
        error_ = HookTimeout("request", "SlowAddon", 0.5)
        self.assertEqual(str(error_), "hook 'request' of SlowAddon timed out after 0.5 s")
        self.assertEqual(error_.args, (str(error_),))
        self.assertFalse(error_.intercepted)

    def test_intercept_message(self) -> None:
        """
        A flow held by ``intercept()`` too long names the hook after which it
        was held, and says it was not resumed.
        """
        error_ = HookTimeout("response", "Hold", 30.0, intercepted=True)
        self.assertEqual(
            str(error_),
            "intercept() timed out: the flow was held for 30 s after hook 'response' of "
            "Hold without being resumed",
        )
        self.assertTrue(error_.intercepted)

    def test_is_hook_failed(self) -> None:
        """
        It is a `HookFailed` answered 500, with the hook, the addon, the
        deadline, and a `TimeoutError` as its cause.
        """
        error_ = HookTimeout("request", "A", 2.0)
        self.assertIsInstance(error_, HookFailed)
        self.assertEqual((error_.hook, error_.addon, error_.seconds), ("request", "A", 2.0))
        self.assertTrue(error_.cause.check(TimeoutError))
        self.assertEqual(error_status(Failure(error_)), (500, b"Internal Server Error"))
