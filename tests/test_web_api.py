"""
The web UI's guard (token, Host, Origin) and its twistd options, as unit
tests; the API through real sockets is tests/e2e/test_web_api_e2e.py.
"""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from twistproxy.options import Options
from twistproxy.web._guard import Guard


class GuardTests(SynchronousTestCase):
    def test_host(self) -> None:
        """Addresses and localhost on the UI's port pass; names and other ports do not."""
        guard = Guard("t", 8081)
        for ok in (b"127.0.0.1:8081", b"localhost:8081", b"[::1]:8081", b"10.0.0.2:8081"):
            self.assertIsNone(guard.host_refusal(ok), ok)
        for bad in (b"evil.example:8081", b"127.0.0.1:8082", b"127.0.0.1", None, b"[::1"):
            self.assertIsNotNone(guard.host_refusal(bad), bad)
        self.assertIsNone(Guard("t", 8081, frozenset({"ui.lan"})).host_refusal(b"ui.lan:8081"))

    def test_origin(self) -> None:
        """Only the UI's own origin (or none) passes; cross-site fetches do not."""
        guard = Guard("t", 8081)
        host = b"127.0.0.1:8081"
        self.assertIsNone(guard.origin_refusal(None, host, None))
        self.assertIsNone(guard.origin_refusal(b"http://127.0.0.1:8081", host, b"same-origin"))
        self.assertIsNotNone(guard.origin_refusal(b"http://evil.example", host, None))
        self.assertIsNotNone(guard.origin_refusal(b"null", host, None))
        self.assertIsNotNone(guard.origin_refusal(None, host, b"cross-site"))

    def test_token(self) -> None:
        """The token compares whole."""
        guard = Guard("secret", 1)
        self.assertTrue(guard.token_valid(b"secret"))
        self.assertFalse(guard.token_valid("secre"))
        self.assertFalse(guard.token_valid(None))


class OptionsTests(SynchronousTestCase):
    def test_web_options(self) -> None:
        """--web-* need --web; --web needs one process; the port is checked."""
        for args, message in (
            (["--web-port", "9000"], "--web-port needs --web"),
            (["--web", "--workers", "2"], "--web runs in one process"),
            (["--web", "--web-port", "70000"], "not a port number"),
        ):
            options = Options()
            with self.assertRaises(Exception) as raised:
                options.parseOptions(args)
            self.assertIn(message, str(raised.exception))
        options = Options()
        options.parseOptions(["--web"])
        self.assertEqual((options["web-host"], options["web-port"]), ("127.0.0.1", 8081))
