"""
Tests for the access control options of :mod:`twistproxy.tap`:
``--proxy-auth``, ``--proxy-auth-file``, ``--allow-hosts``, ``--block-hosts``
and the warning about an open proxy.
"""

from __future__ import annotations

import os
import tempfile
from typing import Any

from twisted.internet.testing import MemoryReactorClock
from twisted.logger import LogLevel, capturedLogs
from twisted.python import usage
from twisted.trial.unittest import SynchronousTestCase

from tests.fakes import write_temp_file
from tests.options import parse
from twistproxy.addons.access import HostPolicy, ProxyAuth
from twistproxy.options import Options
from twistproxy.proxy import ProxyFactory
from twistproxy.tap import loopback_only, make_service


def _addons(options: Options) -> tuple[object, ...]:
    """The addons of the proxy *options* make, in order."""
    reactor = MemoryReactorClock()
    make_service(options, reactor).startService()
    [(_, factory, _, _)] = reactor.tcpServers
    assert isinstance(factory, ProxyFactory)
    return factory.chain.addons


def _warnings(options: Options) -> list[dict[str, Any]]:
    """The warnings logged while the service for *options* is made and started."""
    with capturedLogs() as events:
        make_service(options, MemoryReactorClock()).startService()
    return [e for e in events if e["log_level"] >= LogLevel.warn]


class FileTestCase(SynchronousTestCase):
    """
    A test case that writes files in a private temporary directory.
    """

    def write(self, data: bytes) -> str:
        """A file holding *data*, removed after the test."""
        return write_temp_file(self, data)

    def usage_error(self, *args: str) -> str:
        """The one-line message of the usage error parsing *args* raises."""
        with self.assertRaises(usage.UsageError) as caught:
            parse(*args)
        message = str(caught.exception)
        self.assertNotIn("\n", message)
        return message


class ProxyAuthOptionTests(FileTestCase):
    """
    Tests for ``--proxy-auth`` and ``--proxy-auth-file``.
    """

    def test_none_by_default(self) -> None:
        """
        Without the options there is no proxy authentication.
        """
        options = parse()
        self.assertIsNone(options["proxy-auth-addon"])
        self.assertFalse(any(isinstance(a, ProxyAuth) for a in _addons(options)))

    def test_repeatable(self) -> None:
        """
        ``--proxy-auth`` may be given more than once; a password keeps the
        colons after the first.
        """
        options = parse("--proxy-auth", "alice:pw", "--proxy-auth", "bob:a:b")
        auth = options["proxy-auth-addon"]
        assert isinstance(auth, ProxyAuth)
        self.assertEqual(auth.users, frozenset({"alice", "bob"}))

    def test_file_and_option(self) -> None:
        """
        The users of ``--proxy-auth-file`` join those of ``--proxy-auth``.
        """
        path = self.write(b"# team\ncarol:pw1\n\ndave:pw2\n")
        options = parse("--proxy-auth", "alice:pw", "--proxy-auth-file", path)
        auth = options["proxy-auth-addon"]
        assert isinstance(auth, ProxyAuth)
        self.assertEqual(auth.users, frozenset({"alice", "carol", "dave"}))

    def test_bad_credentials(self) -> None:
        """
        A ``--proxy-auth`` without a colon, or with an empty user or
        password, is a usage error that does not repeat the value.
        """
        for value in ("alice-secret", ":secret", "alice:"):
            message = self.usage_error("--proxy-auth", value)
            self.assertIn("--proxy-auth", message)
            self.assertIn("USER:PASS", message)
            self.assertNotIn("secret", message)

    def test_user_twice(self) -> None:
        """
        A user given twice, by the option or by the option and the file, is
        a usage error.
        """
        message = self.usage_error("--proxy-auth", "a:1", "--proxy-auth", "a:2")
        self.assertIn("'a' is given twice", message)
        path = self.write(b"a:3\n")
        message = self.usage_error("--proxy-auth", "a:1", "--proxy-auth-file", path)
        self.assertIn("also given with --proxy-auth", message)

    def test_malformed_file(self) -> None:
        """
        A malformed line is a usage error naming the file and the line
        number, not the line.
        """
        path = self.write(b"# users\nalice:pw\n\nsecret-without-colon\n")
        message = self.usage_error("--proxy-auth-file", path)
        self.assertIn(f"--proxy-auth-file {path}, line 4", message)
        self.assertNotIn("secret", message)

    def test_unreadable_file(self) -> None:
        """
        A file that cannot be read is a usage error naming it and why.
        """
        path = os.path.join(tempfile.gettempdir(), "twistproxy-test-no-such-users")
        message = self.usage_error("--proxy-auth-file", path)
        self.assertIn(path, message)
        self.assertIn("No such file", message)
        directory = os.path.dirname(self.write(b""))
        message = self.usage_error("--proxy-auth-file", directory)
        self.assertIn("Is a directory", message)

    def test_empty_file(self) -> None:
        """
        A file without users is a usage error (it would lock everyone out).
        """
        path = self.write(b"# nobody yet\n")
        self.assertIn("no users", self.usage_error("--proxy-auth-file", path))


class HostOptionTests(FileTestCase):
    """
    Tests for ``--allow-hosts`` and ``--block-hosts``.
    """

    def test_none_by_default(self) -> None:
        """
        Without the options there is no host policy.
        """
        options = parse()
        self.assertIsNone(options["host-policy"])
        self.assertFalse(any(isinstance(a, HostPolicy) for a in _addons(options)))

    def test_patterns(self) -> None:
        """
        Both options are repeatable and make one policy.
        """
        options = parse("--allow-hosts", r"\.example:", "--allow-hosts", "~d internal",
                        "--block-hosts", r"^ads\.")
        policy = options["host-policy"]
        assert isinstance(policy, HostPolicy)
        self.assertEqual(policy.allow, (r"\.example:", "~d internal"))
        self.assertEqual(policy.block, (r"^ads\.",))
        self.assertIsInstance(parse("--block-hosts", "x")["host-policy"], HostPolicy)

    def test_invalid_pattern(self) -> None:
        """
        An invalid regex or filter is a one-line usage error naming the
        option and the pattern.
        """
        message = self.usage_error("--allow-hosts", "a[")
        self.assertIn("--allow-hosts 'a['", message)
        self.assertIn("not a regular expression", message)
        message = self.usage_error("--block-hosts", "~zz")
        self.assertIn("--block-hosts '~zz'", message)
        self.assertIn("not a filter expression", message)


class AddonOrderTests(FileTestCase):
    """
    Where the access control addons go among the others.
    """

    def test_order(self) -> None:
        """
        Proxy authentication runs first (even the CA page needs it), then
        the CA page, then the host policy (which the CA page, being the
        proxy's own, is not subject to), then everything else.
        """
        options = parse("--proxy-auth", "a:b", "--block-hosts", "x")
        self.assertEqual(
            [type(addon).__name__ for addon in _addons(options)],
            ["ProxyAuth", "CertPage", "HostPolicy", "FlowLog"],
        )

    def test_order_without_interception(self) -> None:
        """
        Without the CA page the two come first, authentication first.
        """
        options = parse("--no-intercept", "--quiet", "--proxy-auth", "a:b",
                        "--allow-hosts", "x")
        self.assertEqual(
            [type(addon).__name__ for addon in _addons(options)],
            ["ProxyAuth", "HostPolicy"],
        )


class OpenProxyWarningTests(SynchronousTestCase):
    """
    Tests for the warning about a proxy reachable from the network without
    authentication.
    """

    def assert_warns(self, *args: str) -> None:
        """Making the service for *args* logs the open proxy warning once."""
        options = parse(*args)
        [event] = _warnings(options)
        self.assertEqual(event["log_level"], LogLevel.warn)
        self.assertEqual(event["endpoint"], options["endpoint"])
        text = event["log_format"]
        self.assertIn("anyone who can reach this port can use the proxy", text)
        self.assertIn("--proxy-auth", text)
        self.assertIn("interface=127.0.0.1", text)

    def assert_silent(self, *args: str) -> None:
        """Making the service for *args* logs no warning."""
        self.assertEqual(_warnings(parse(*args)), [])

    def test_all_interfaces(self) -> None:
        """
        An endpoint without an interface, or on every interface, warns.
        """
        self.assert_warns("--port", "tcp:8080")
        self.assert_warns("--port", "tcp:8080:interface=0.0.0.0")
        self.assert_warns("--port", "tcp6:8080")

    def test_loopback(self) -> None:
        """
        A port number (on 127.0.0.1) or a loopback interface does not warn.
        """
        self.assert_silent("--port", "8080")
        self.assert_silent()
        self.assert_silent("--port", "tcp:8080:interface=127.0.0.1")
        self.assert_silent("--port", r"tcp6:8080:interface=\:\:1")

    def test_with_auth(self) -> None:
        """
        With proxy authentication, no interface warns.
        """
        self.assert_silent("--port", "tcp:8080", "--proxy-auth", "a:b")
        self.assert_silent("--port", "tcp:8080:interface=0.0.0.0", "--proxy-auth", "a:b")

    def test_host_policy_is_not_enough(self) -> None:
        """
        A host policy does not stop strangers from using the proxy: it
        still warns.
        """
        self.assert_warns("--port", "tcp:8080", "--allow-hosts", "example")


class LoopbackOnlyTests(SynchronousTestCase):
    """
    Tests for :func:`twistproxy.tap.loopback_only`.
    """

    def test_descriptions(self) -> None:
        """
        Only loopback TCP/SSL interfaces and UNIX sockets count as local;
        the interface may be positional, escaped, or IPv4-mapped.
        """
        for description, local in (
            ("tcp:8080", False),
            ("tcp:8080:interface=0.0.0.0", False),
            ("tcp:8080:interface=192.0.2.1", False),
            ("tcp:8080:interface=127.0.0.1", True),
            ("tcp:8080:interface=127.3.4.5", True),
            ("tcp:8080:interface=localhost", True),
            ("tcp:8080:127.0.0.1", True),
            ("tcp:8080:interface=127.0.0.1:backlog=5", True),
            ("tcp6:8080", False),
            (r"tcp6:8080:interface=\:\:", False),
            (r"tcp6:8080:interface=\:\:1", True),
            (r"tcp6:8080:50:\:\:1", True),
            (r"tcp6:8080:interface=\:\:ffff\:127.0.0.1", True),
            ("ssl:8443:privateKey=key.pem", False),
            ("ssl:8443:privateKey=key.pem:interface=127.0.0.1", True),
            ("ssl:8443:key.pem:cert.pem:TLS:127.0.0.1", True),
            ("unix:/run/twistproxy.sock", True),
            ("systemd:domain=INET:index=0", False),
            ("TCP:8080:interface=127.0.0.1", True),
        ):
            self.assertEqual(loopback_only(description), local, description)
