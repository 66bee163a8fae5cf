"""
Tests for :mod:`twistproxy.addons.access`: proxy authentication and the host
policy, on flows built by hand.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import tempfile
from typing import Any

from twisted.logger import capturedLogs
from twisted.trial.unittest import SynchronousTestCase

from tests.fakes import write_temp_file
from twistproxy.addons import access
from twistproxy.addons.access import (
    PROXY_USER,
    HostPolicy,
    ProxyAuth,
    canonical_host,
    destination_names,
    load_users,
    parse_host_pattern,
    parse_user,
)
from twistproxy.connection import Client, Server
from twistproxy.filters import parse as parse_filter
from twistproxy.headers import Headers
from twistproxy.hooks import HookChain, validate_addon
from twistproxy.http import HTTPFlow, Request

PASSWORD = "s3cret:with colon"


def _client() -> Client:
    return Client(peername=("192.0.2.7", 51000))


def _flow(
    url: str,
    *,
    headers: list[tuple[bytes, bytes]] | None = None,
    client: Client | None = None,
) -> HTTPFlow:
    """A flow whose request for *url* has just had its headers read."""
    request = Request.make("GET", url, headers=headers or [])
    flow = HTTPFlow(client or _client(), Server(address=(request.host, request.port)),
                    live=True, now=lambda: 0.0)
    flow.request = request
    return flow


def _connect(
    host: str,
    port: int,
    *,
    headers: list[tuple[bytes, bytes]] | None = None,
    client: Client | None = None,
) -> HTTPFlow:
    """A ``CONNECT host:port`` flow, as the proxy builds it."""
    authority = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    fields = [(b"Host", authority.encode()), *(headers or [])]
    flow = HTTPFlow(client or _client(), Server(address=(host, port)), live=True,
                    now=lambda: 0.0)
    flow.request = Request(host, port, "CONNECT", "", authority, "", "HTTP/1.1",
                           Headers(fields), None)
    return flow


def _basic(user: str | bytes, password: str | bytes) -> tuple[bytes, bytes]:
    """A ``Proxy-Authorization`` field for *user* and *password*."""
    u = user.encode() if isinstance(user, str) else user
    p = password.encode() if isinstance(password, str) else password
    return (b"Proxy-Authorization", b"Basic " + base64.b64encode(u + b":" + p))


def _events_text(events: list[dict[str, Any]]) -> str:
    """Everything the log events hold, as one string."""
    return "\n".join(repr(sorted(event.items(), key=lambda kv: kv[0])) for event in events)


class ProxyAuthTests(SynchronousTestCase):
    """
    Tests for :class:`ProxyAuth`.
    """

    def setUp(self) -> None:
        self.auth = ProxyAuth({"alice": PASSWORD, "bob": "hunter2"})

    def assert_refused(self, flow: HTTPFlow) -> None:
        """*flow* was answered 407 with a Basic challenge and a short text."""
        response = flow.response
        assert response is not None
        self.assertEqual(response.status_code, 407)
        self.assertEqual(response.reason, "Proxy Authentication Required")
        self.assertEqual(response.headers["Proxy-Authenticate"], 'Basic realm="twistproxy"')
        self.assertEqual(response.headers["Content-Type"], "text/plain; charset=utf-8")
        text = response.text
        assert text is not None
        self.assertIn("407 Proxy Authentication Required", text)

    def test_is_an_addon(self) -> None:
        """
        The addon passes hook validation and implements the two hooks.
        """
        validate_addon(self.auth)
        chain = HookChain([self.auth])
        self.assertTrue(chain.has("http_connect"))
        self.assertTrue(chain.has("requestheaders"))
        self.assertFalse(chain.has("request"))

    def test_no_credentials(self) -> None:
        """
        A request without ``Proxy-Authorization`` is answered 407, and that
        is not logged as a failed attempt (browsers ask without first).
        """
        flow = _flow("http://example.com/")
        with capturedLogs() as events:
            self.auth.requestheaders(flow)
        self.assert_refused(flow)
        self.assertEqual(events, [])
        self.assertNotIn(PROXY_USER, flow.metadata)

    def test_valid_credentials(self) -> None:
        """
        Valid credentials pass: no response is set, the user is recorded in
        the flow's metadata and the header is removed from the flow.
        """
        flow = _flow("http://example.com/", headers=[_basic("alice", PASSWORD)])
        with capturedLogs() as events:
            self.auth.requestheaders(flow)
        self.assertIsNone(flow.response)
        self.assertEqual(flow.metadata[PROXY_USER], "alice")
        assert flow.request is not None
        self.assertNotIn("Proxy-Authorization", flow.request.headers)
        self.assertEqual(events, [])

    def test_scheme_is_case_insensitive(self) -> None:
        """
        ``basic`` in any case, with extra spaces around the token, is
        accepted.
        """
        token = base64.b64encode(b"bob:hunter2")
        flow = _flow("http://example.com/",
                     headers=[(b"proxy-authorization", b"bAsIc   " + token + b"  ")])
        self.auth.requestheaders(flow)
        self.assertIsNone(flow.response)

    def test_utf8_credentials(self) -> None:
        """
        User names and passwords are compared as UTF-8 bytes.
        """
        auth = ProxyAuth({"zoë": "pässwörd"})
        flow = _flow("http://example.com/", headers=[_basic("zoë", "pässwörd")])
        auth.requestheaders(flow)
        self.assertIsNone(flow.response)
        self.assertEqual(flow.metadata[PROXY_USER], "zoë")

    def test_wrong_password(self) -> None:
        """
        A wrong password is answered 407; the attempt is logged at warn
        level with the client's address and the user name, never the
        password, and the header is removed from the flow.
        """
        flow = _flow("http://example.com/", headers=[_basic("alice", "not-it-42")])
        with capturedLogs() as events:
            self.auth.requestheaders(flow)
        self.assert_refused(flow)
        assert flow.request is not None
        self.assertNotIn("Proxy-Authorization", flow.request.headers)
        [event] = events
        self.assertEqual(event["log_level"].name, "warn")
        self.assertEqual(event["log_namespace"], "twistproxy.access")
        self.assertEqual(event["user"], "alice")
        self.assertEqual(event["client"], "192.0.2.7:51000")
        text = _events_text(events)
        self.assertNotIn("not-it-42", text)
        self.assertNotIn(base64.b64encode(b"alice:not-it-42").decode(), text)

    def test_password_of_another_user(self) -> None:
        """
        A user with another user's password is refused.
        """
        flow = _flow("http://example.com/", headers=[_basic("alice", "hunter2")])
        self.auth.requestheaders(flow)
        self.assert_refused(flow)

    def test_password_prefix_and_extension(self) -> None:
        """
        A prefix of the password, or the password with more after it, is
        refused.
        """
        for password in (PASSWORD[:-1], PASSWORD + "x", ""):
            flow = _flow("http://example.com/", headers=[_basic("alice", password)])
            self.auth.requestheaders(flow)
            self.assert_refused(flow)

    def test_unknown_user_compared_against_dummy(self) -> None:
        """
        An unknown user is refused after the same constant-time comparison
        a known user gets, against a dummy digest: the time taken does not
        tell whether the user exists.  Even the dummy's own preimage fails.
        """
        compared: list[tuple[bytes, bytes]] = []
        original = hmac.compare_digest

        def compare_digest(a: bytes, b: bytes) -> bool:
            compared.append((a, b))
            return original(a, b)

        self.patch(access.hmac, "compare_digest", compare_digest)
        self.patch(access, "_digest", lambda password: bytes(32) if password == b"x" else
                   hashlib.sha256(password).digest())
        flow = _flow("http://example.com/", headers=[_basic("mallory", "x")])
        with capturedLogs() as events:
            self.auth.requestheaders(flow)
        self.assert_refused(flow)
        self.assertEqual(compared, [(bytes(32), bytes(32))])
        [event] = events
        self.assertEqual(event["user"], "mallory")
        compared.clear()
        flow = _flow("http://example.com/", headers=[_basic("bob", "wrong")])
        self.auth.requestheaders(flow)
        [(given, expected)] = compared
        self.assertEqual(len(given), len(expected))
        self.assertEqual(expected, hashlib.sha256(b"hunter2").digest())

    def test_malformed_headers(self) -> None:
        """
        A header that is not one valid Basic value is answered 407, not 500;
        the attempt is logged without the header's content.
        """
        cases = [
            [(b"Proxy-Authorization", b"Bearer abc.def")],
            [(b"Proxy-Authorization", b"Basic")],
            [(b"Proxy-Authorization", b"Basic !!!notbase64!!!")],
            [(b"Proxy-Authorization", b"Basic " + base64.b64encode(b"alice"))],
            [(b"Proxy-Authorization", b"Basic " + base64.b64encode(b"alice:" +
                                                                   PASSWORD.encode())[:-2])],
            [(b"Proxy-Authorization", b"")],
            [_basic("alice", PASSWORD), _basic("alice", PASSWORD)],
        ]
        for headers in cases:
            flow = _flow("http://example.com/", headers=headers)
            with capturedLogs() as events:
                self.auth.requestheaders(flow)
            self.assert_refused(flow)
            [event] = events
            self.assertIn("malformed", event["log_format"])
            self.assertNotIn(PASSWORD, _events_text(events))

    def test_connect(self) -> None:
        """
        A CONNECT without credentials is answered 407; with them it passes
        and records the user.
        """
        refused = _connect("example.com", 443)
        self.auth.http_connect(refused)
        self.assert_refused(refused)
        accepted = _connect("example.com", 443, headers=[_basic("bob", "hunter2")])
        self.auth.http_connect(accepted)
        self.assertIsNone(accepted.response)
        self.assertEqual(accepted.metadata[PROXY_USER], "bob")
        assert accepted.request is not None
        self.assertNotIn("Proxy-Authorization", accepted.request.headers)

    def test_inside_authenticated_tunnel(self) -> None:
        """
        Requests inside an intercepted tunnel whose CONNECT was accepted pass
        without credentials, and carry the tunnel's user.
        """
        client = _client()
        self.auth.http_connect(_connect("example.com", 443, client=client,
                                        headers=[_basic("bob", "hunter2")]))
        client.tunnel = ("example.com", 443)
        for path in ("/a", "/b"):
            inner = _flow(f"https://example.com{path}", client=client)
            self.auth.requestheaders(inner)
            self.assertIsNone(inner.response)
            self.assertEqual(inner.metadata[PROXY_USER], "bob")

    def test_tunnel_alone_is_not_enough(self) -> None:
        """
        A connection whose tunnel opened but whose CONNECT this addon did not
        accept (one refused, say) still needs credentials.
        """
        client = _client()
        self.auth.http_connect(_connect("example.com", 443, client=client))
        client.tunnel = ("example.com", 443)
        inner = _flow("https://example.com/", client=client)
        self.auth.requestheaders(inner)
        self.assert_refused(inner)

    def test_accepted_connect_without_tunnel(self) -> None:
        """
        After an accepted CONNECT whose tunnel did not open (the connection
        records no tunnel, TLS or not), a plain request on the connection
        needs credentials.
        """
        client = _client()
        self.auth.http_connect(_connect("example.com", 443, client=client,
                                        headers=[_basic("bob", "hunter2")]))
        client.tls_established = True  # as if: TLS alone is not the tunnel
        plain = _flow("http://example.com/", client=client)
        self.auth.requestheaders(plain)
        self.assert_refused(plain)

    def test_custom_realm(self) -> None:
        """
        The realm is named in the challenge; quotes in it are refused.
        """
        flow = _flow("http://example.com/")
        ProxyAuth({"a": "b"}, realm="corp").requestheaders(flow)
        assert flow.response is not None
        self.assertEqual(flow.response.headers["Proxy-Authenticate"], 'Basic realm="corp"')
        self.assertRaises(ValueError, ProxyAuth, {"a": "b"}, realm='x"y')

    def test_users(self) -> None:
        """
        :attr:`ProxyAuth.users` names the users.
        """
        self.assertEqual(self.auth.users, frozenset({"alice", "bob"}))

    def test_invalid_users(self) -> None:
        """
        No users, an empty user name, one with a colon, or an empty
        password are refused with :exc:`ValueError`.
        """
        for users in ({}, {"": "x"}, {"a:b": "x"}, {"a": ""}):
            self.assertRaises(ValueError, ProxyAuth, users)

    def test_no_request(self) -> None:
        """
        A flow without a request is left alone.
        """
        flow = HTTPFlow(_client(), Server(), now=lambda: 0.0)
        self.auth.requestheaders(flow)
        self.auth.http_connect(flow)
        self.assertIsNone(flow.response)


class ParseUserTests(SynchronousTestCase):
    """
    Tests for :func:`parse_user`.
    """

    def test_split_at_first_colon(self) -> None:
        """
        The user ends at the first colon; the password may hold more.
        """
        self.assertEqual(parse_user("u:p:q"), ("u", "p:q"))

    def test_errors(self) -> None:
        """
        No colon, an empty user or an empty password: :exc:`ValueError`
        whose message does not repeat the password.
        """
        for text in ("nocolon", ":pw-secret", "u:"):
            with self.assertRaises(ValueError) as caught:
                parse_user(text)
            self.assertNotIn("secret", str(caught.exception))
            self.assertNotIn("nocolon", str(caught.exception))


class LoadUsersTests(SynchronousTestCase):
    """
    Tests for :func:`load_users` and :meth:`ProxyAuth.from_file`.
    """

    def write(self, data: bytes) -> str:
        """A file holding *data*, removed after the test."""
        return write_temp_file(self, data)

    def test_file(self) -> None:
        """
        Comments, blank lines and CRLF line ends are skipped; passwords keep
        their colons and inner spaces.
        """
        path = self.write(
            b"# users\r\n\r\nalice:a:b c\r\n   # indented comment\n  \nbob:pw \n"
        )
        self.assertEqual(load_users(path), {"alice": "a:b c", "bob": "pw "})
        auth = ProxyAuth.from_file(path)
        self.assertEqual(auth.users, frozenset({"alice", "bob"}))
        flow = _flow("http://example.com/", headers=[_basic("alice", "a:b c")])
        auth.requestheaders(flow)
        self.assertIsNone(flow.response)

    def test_malformed_line(self) -> None:
        """
        A line without a colon is refused with the file and line number, and
        without the line's content.
        """
        path = self.write(b"# users\nalice:x\njust-a-secret-token\n")
        with self.assertRaises(ValueError) as caught:
            load_users(path)
        message = str(caught.exception)
        self.assertIn(f"{path}, line 3", message)
        self.assertNotIn("secret", message)
        self.assertNotIn("\n", message)

    def test_empty_fields(self) -> None:
        """
        An empty user name or password is refused with its line number.
        """
        for data, line in ((b":pw\n", 1), (b"a:b\n\nc:\n", 3)):
            with self.assertRaises(ValueError) as caught:
                load_users(self.write(data))
            self.assertIn(f"line {line}:", str(caught.exception))

    def test_duplicate_user(self) -> None:
        """
        A user given twice is refused at its second line.
        """
        with self.assertRaises(ValueError) as caught:
            load_users(self.write(b"a:1\nb:2\na:3\n"))
        self.assertIn("line 3", str(caught.exception))
        self.assertIn("given twice", str(caught.exception))

    def test_not_utf8(self) -> None:
        """
        A file that is not UTF-8 is refused with the line of the first bad
        byte.
        """
        with self.assertRaises(ValueError) as caught:
            load_users(self.write(b"a:1\nb:\xff\n"))
        self.assertIn("line 2: not UTF-8", str(caught.exception))

    def test_missing_file(self) -> None:
        """
        A file that cannot be read raises :exc:`OSError`.
        """
        missing = os.path.join(tempfile.gettempdir(), "twistproxy-no-such-users-file")
        self.assertRaises(OSError, load_users, missing)
        self.assertRaises(OSError, ProxyAuth.from_file, missing)

    def test_no_users(self) -> None:
        """
        :meth:`ProxyAuth.from_file` refuses a file with only comments.
        """
        path = self.write(b"# nobody\n\n")
        self.assertEqual(load_users(path), {})
        with self.assertRaises(ValueError) as caught:
            ProxyAuth.from_file(path)
        self.assertIn("no users", str(caught.exception))


class HostPolicyTests(SynchronousTestCase):
    """
    Tests for :class:`HostPolicy`.
    """

    def check(self, policy: HostPolicy, flow: HTTPFlow) -> None:
        """Run the hook the proxy would run for *flow*."""
        if flow.request is not None and flow.request.method == "CONNECT":
            policy.http_connect(flow)
        else:
            policy.requestheaders(flow)

    def assert_refused(self, policy: HostPolicy, flow: HTTPFlow, shown: str) -> None:
        """*flow* is refused with a 403 naming *shown*."""
        self.check(policy, flow)
        response = flow.response
        assert response is not None
        self.assertEqual(response.status_code, 403)
        self.assertEqual(response.reason, "Forbidden")
        text = response.text
        assert text is not None
        self.assertIn(shown, text)
        self.assertFalse(policy.permits(flow))

    def assert_passes(self, policy: HostPolicy, flow: HTTPFlow) -> None:
        """*flow* is let through."""
        self.check(policy, flow)
        self.assertIsNone(flow.response)
        self.assertTrue(policy.permits(flow))

    def test_is_an_addon(self) -> None:
        """
        The addon passes hook validation and implements the two hooks.
        """
        policy = HostPolicy(block=["x"])
        validate_addon(policy)
        chain = HookChain([policy])
        self.assertTrue(chain.has("http_connect"))
        self.assertTrue(chain.has("requestheaders"))

    def test_empty_policy(self) -> None:
        """
        Without patterns everything passes.
        """
        self.assert_passes(HostPolicy(), _flow("http://example.com/"))
        self.assert_passes(HostPolicy(), _connect("example.com", 443))

    def test_block_regex(self) -> None:
        """
        A block regex matches a whole host or a domain it is under,
        case-insensitively; what it does not match passes.
        """
        policy = HostPolicy(block=[r"ads\.example"])
        self.assert_refused(policy, _flow("http://ADS.example/x"), "ads.example:80")
        self.assert_refused(policy, _flow("http://cdn.ads.example:8080/"), "cdn.ads.example:8080")
        self.assert_passes(policy, _flow("http://badads.example/"))
        self.assert_passes(policy, _flow("http://ads.example.evil.example/"))
        self.assert_passes(policy, _flow("http://example.com/ads.example:"))

    def test_block_by_port(self) -> None:
        """
        The port is part of what a regex sees.
        """
        policy = HostPolicy(block=[r".*:(25|8443)"])
        self.assert_refused(policy, _connect("mail.example", 25), "mail.example:25")
        self.assert_refused(policy, _flow("https://example.com:8443/"), "example.com:8443")
        self.assert_passes(policy, _connect("mail.example", 443))

    def test_connect_refused(self) -> None:
        """
        A CONNECT to a blocked host is refused before the tunnel opens,
        passed through or not.
        """
        policy = HostPolicy(block=[r"blocked\.example"])
        flow = _connect("blocked.example", 443)
        flow.passthrough = True
        self.assert_refused(policy, flow, "blocked.example:443")

    def test_inner_request(self) -> None:
        """
        A request inside an intercepted tunnel is checked by its own host
        and port.
        """
        policy = HostPolicy(allow=[r"good\.example:443"])
        client = _client()
        client.tunnel = ("good.example", 443)
        self.assert_passes(policy, _flow("https://good.example/", client=client))
        self.assert_refused(policy, _flow("https://evil.example/", client=client),
                            "evil.example:443")

    def test_allow_only(self) -> None:
        """
        With allow patterns, only what one matches passes.
        """
        policy = HostPolicy(allow=[r"api\.example:443", r"internal"])
        self.assert_passes(policy, _connect("api.example", 443))
        self.assert_passes(policy, _flow("http://wiki.internal/"))
        self.assert_refused(policy, _connect("api.example", 8443), "api.example:8443")
        self.assert_refused(policy, _flow("http://example.com/"), "example.com:80")

    def test_block_beats_allow(self) -> None:
        """
        A destination both allowed and blocked is refused.
        """
        policy = HostPolicy(allow=[r"example"], block=[r"secret\.example"])
        self.assert_passes(policy, _flow("http://www.example/"))
        self.assert_refused(policy, _flow("http://secret.example/"), "secret.example:80")

    def test_filter_patterns(self) -> None:
        """
        Patterns starting with ``~``, ``!`` or ``(`` are filter expressions
        evaluated on the flow.
        """
        policy = HostPolicy(block=["~m CONNECT & !~d example\\.com"])
        self.assert_refused(policy, _connect("other.example", 443), "other.example:443")
        self.assert_passes(policy, _connect("example.com", 443))
        self.assert_passes(policy, _flow("http://other.example/"))
        allow = HostPolicy(allow=["(~d a\\.example | ~d b\\.example)", "!~u /private"])
        self.assert_passes(allow, _flow("http://a.example/private"))
        self.assert_passes(allow, _flow("http://c.example/public"))
        self.assert_refused(allow, _flow("http://c.example/private"), "c.example:80")

    def test_regex_and_filter_differ(self) -> None:
        """
        A plain word is a regex on ``host:port`` (it does not see the path);
        the same word in a filter's ``~u`` sees the URL.
        """
        regex = HostPolicy(block=["private"])
        self.assert_passes(regex, _flow("http://example.com/private"))
        filtered = HostPolicy(block=["~u private"])
        self.assert_refused(filtered, _flow("http://example.com/private"), "example.com:80")

    def test_host_header_does_not_count(self) -> None:
        """
        Filters see the destination, not a ``Host`` header naming another
        host: a CONNECT to a host outside the allow list is refused even when
        its Host header names an allowed one, and one to a blocked host is
        refused whatever its Host header says.
        """
        spoofed = [(b"Host", b"good.example:443")]
        allow = HostPolicy(allow=["~d ^good\\.example$"])
        flow = _connect("evil.example", 443)
        assert flow.request is not None
        flow.request.headers = Headers(spoofed)
        self.assert_refused(allow, flow, "evil.example:443")
        self.assertEqual(flow.request.headers.fields, tuple(spoofed))  # left as it was
        block = HostPolicy(block=["~d ^evil\\.example$"])
        flow = _connect("evil.example", 443)
        assert flow.request is not None
        flow.request.headers = Headers(spoofed)
        self.assert_refused(block, flow, "evil.example:443")

    def test_canonical_destination(self) -> None:
        """
        Trailing dots, numeric IPv4 spellings and IPv4-mapped IPv6 addresses
        cannot slip past a pattern written for the usual form.
        """
        policy = HostPolicy(block=[r"blocked\.example", r"10\.0\.0\.1", "~d ^127\\.0\\.0\\.1$"])
        self.assert_refused(policy, _flow("http://blocked.example./"), "blocked.example.:80")
        self.assert_refused(policy, _connect("BLOCKED.EXAMPLE.", 443), "BLOCKED.EXAMPLE.:443")
        self.assert_refused(policy, _flow("http://167772161/"), "167772161:80")
        self.assert_refused(policy, _flow("http://0xa.0.0.1/"), "0xa.0.0.1:80")
        self.assert_refused(policy, _flow("http://[::ffff:10.0.0.1]/"), "[::ffff:10.0.0.1]:80")
        self.assert_refused(policy, _flow("http://2130706433/"), "2130706433:80")
        self.assert_refused(policy, _connect("0x7f.1", 443), "0x7f.1:443")
        self.assert_passes(policy, _flow("http://10.0.0.10/"))

    def test_hosts_not_substrings(self) -> None:
        """
        ``~d example.com``, ``~d example\\.com`` and the plain pattern
        ``example.com`` mean the domain and its subdomains: not a host that
        merely contains the name, nor one that starts with it, in a block
        list and in an allow list alike.
        """
        for pattern in ("~d example.com", "~d example\\.com", "example.com", r"example\.com"):
            block = HostPolicy(block=[pattern])
            allow = HostPolicy(allow=[pattern])
            for inside in ("http://example.com/", "http://www.EXAMPLE.com./",
                           "https://a.b.example.com:8443/"):
                self.assert_refused(block, _flow(inside), "example")
                self.assert_passes(allow, _flow(inside))
            for outside in ("http://notexample.com/", "http://example.com.evil.example/",
                            "http://example.community/", "http://exampleXcom/"):
                self.assert_passes(block, _flow(outside))
                self.assert_refused(allow, _flow(outside), outside.split("/")[2].lower())
            self.assert_refused(block, _connect("www.example.com", 443), "www.example.com:443")
            self.assert_refused(allow, _connect("notexample.com", 443), "notexample.com:443")

    def test_literal_dots(self) -> None:
        """
        A host name given as it is has literal dots, in a filter's ``~d``
        too: ``www.example.com`` does not admit ``wwwxexample.com``; a
        regex means what it says.
        """
        for pattern in ("www.example.com", "~d www.example.com"):
            allow = HostPolicy(allow=[pattern])
            self.assert_passes(allow, _flow("http://www.example.com/"))
            self.assert_refused(allow, _flow("http://wwwxexample.com/"), "wwwxexample.com")
        regex = HostPolicy(allow=[r"www.example\.com"])
        self.assert_passes(regex, _flow("http://wwwxexample.com/"))

    def test_port_patterns(self) -> None:
        """
        ``host:port`` patterns match that port only; a regex may match any
        host on a port.
        """
        policy = HostPolicy(allow=["example.com:443", r"(.*\.)?internal:80(80)?"])
        self.assert_passes(policy, _connect("www.example.com", 443))
        self.assert_refused(policy, _connect("example.com", 8443), "example.com:8443")
        self.assert_passes(policy, _flow("http://wiki.internal:8080/"))
        self.assert_refused(policy, _flow("http://wiki.internal:8081/"), "wiki.internal:8081")

    def test_addresses_whole(self) -> None:
        """
        An IP address is matched whole: no "parent domain" of an address.
        """
        policy = HostPolicy(block=[r"0\.0\.1", "~d 0.1"])
        self.assert_passes(policy, _flow("http://10.0.0.1/"))
        self.assert_refused(HostPolicy(block=[r"10\..*"]), _flow("http://10.2.3.4/"), "10.2.3.4")

    def test_loopback_spellings(self) -> None:
        """
        A block of 127.0.0.1 or of localhost, in any form, refuses every
        spelling that reaches the loopback: the unspecified addresses (which
        a connection takes to the loopback), numeric spellings, ``::1``,
        ``localhost`` and names under ``.localhost``; other addresses and
        the rest of 127/8 pass.
        """
        spellings = ("127.0.0.1", "0.0.0.0", "0", "0x0", "0.0", "::", "0:0::0",
                     "::ffff:0.0.0.0", "127.1", "2130706433", "0x7f.1", "0177.0.0.1",
                     "::1", "::ffff:127.0.0.1", "localhost", "LOCALHOST.", "a.localhost")
        for pattern in ("127.0.0.1", r"127\.0\.0\.1", "localhost", "~d localhost",
                        "~d ^127\\.0\\.0\\.1$", "127.0.0.1:8080", "[::1]"):
            policy = HostPolicy(block=[pattern])
            for host in spellings:
                shown = f"[{host}]:8080" if ":" in host else f"{host}:8080"
                self.assert_refused(policy, _connect(host, 8080), shown)
            self.assert_passes(policy, _connect("127.0.0.2", 8080))
            self.assert_passes(policy, _connect("10.0.0.1", 8080))
            self.assert_passes(policy, _connect("localhost.example", 8080))

    def test_tilde_d_elsewhere_unchanged(self) -> None:
        """
        Outside the host policy ``~d`` keeps mitmproxy's meaning, a regex
        searched in the host: the same expression answers differently.
        """
        flow = _flow("http://notexample.com/")
        self.assertTrue(parse_filter("~d example.com")(flow))
        self.assertFalse(parse_host_pattern("~d example.com").filter(flow))  # type: ignore[misc]
        self.assertIn('~d "a.b"', repr(parse_host_pattern("~d a.b").filter))

    def test_ipv6_hostport(self) -> None:
        """
        A regex sees an IPv6 destination in brackets, in its usual form.
        """
        policy = HostPolicy(block=[r"\[2001:db8::1\]:443"])
        self.assert_refused(policy, _connect("2001:DB8:0:0::1", 443), "[2001:DB8:0:0::1]:443")

    def test_invalid_patterns(self) -> None:
        """
        An invalid regex or filter, or an empty pattern, is refused at
        construction with a one-line :exc:`ValueError` naming it.
        """
        for pattern, words in (
            ("a[", "not a regular expression"),
            ("~zz", "unknown operator '~zz' at column 1"),
            ("(~d a", "never closed"),
            ("~d a[", "not a filter expression"),
            ("", "empty"),
        ):
            for kwargs in ({"allow": [pattern]}, {"block": ["ok", pattern]}):
                with self.assertRaises(ValueError) as caught:
                    HostPolicy(**kwargs)
                message = str(caught.exception)
                self.assertIn(words, message)
                self.assertNotIn("\n", message)
                if pattern:
                    self.assertIn(repr(pattern), message)

    def test_patterns_kept(self) -> None:
        """
        The policy shows its patterns as given.
        """
        policy = HostPolicy(allow=["a", "~d b"], block=["c"])
        self.assertEqual((policy.allow, policy.block), (("a", "~d b"), ("c",)))
        self.assertIn("filter", repr(parse_host_pattern("~d b")))
        self.assertIn("regex", repr(parse_host_pattern("b")))

    def test_parenthesis(self) -> None:
        """
        A pattern starting with ``(`` is a filter only if it has a ``~``
        (host names never do), else a regex.
        """
        self.assertIsNone(parse_host_pattern(r"(ads|track)\.example").filter)
        self.assertIsNotNone(parse_host_pattern(r"(~d ads | ~d track)").filter)
        self.assertIsNotNone(parse_host_pattern(r"!ads").filter)

    def test_no_request(self) -> None:
        """
        A flow without a request is left alone.
        """
        flow = HTTPFlow(_client(), Server(), now=lambda: 0.0)
        policy = HostPolicy(allow=["x"])
        policy.requestheaders(flow)
        self.assertIsNone(flow.response)


class CanonicalHostTests(SynchronousTestCase):
    """
    Tests for :func:`canonical_host`.
    """

    def test_forms(self) -> None:
        """
        Names lose case and trailing dots; addresses get their usual form.
        """
        for given, expected in (
            ("Example.COM.", "example.com"),
            ("example.com", "example.com"),
            ("127.1", "127.0.0.1"),
            ("0177.0.0.1", "127.0.0.1"),
            ("2130706433", "127.0.0.1"),
            ("0x7F000001", "127.0.0.1"),
            ("::FFFF:7f00:1", "127.0.0.1"),
            ("2001:DB8:0:0:0:0:0:1", "2001:db8::1"),
            ("deadbeef.example", "deadbeef.example"),
            ("cafe", "cafe"),
            ("1.2.3.4.5", "1.2.3.4.5"),
            (".", "."),
        ):
            self.assertEqual(canonical_host(given), expected, given)


class DestinationNamesTests(SynchronousTestCase):
    """
    Tests for :func:`destination_names`.
    """

    def test_names(self) -> None:
        """
        A destination's usual form comes first; the unspecified addresses
        are the loopback they reach; the loopback goes by its three names.
        """
        for given, expected in (
            ("Example.COM.", ("example.com",)),
            ("10.0.0.1", ("10.0.0.1",)),
            ("0", ("127.0.0.1", "::1", "localhost")),
            ("0.0.0.0", ("127.0.0.1", "::1", "localhost")),
            ("::", ("::1", "127.0.0.1", "localhost")),
            ("localhost", ("localhost", "127.0.0.1", "::1")),
            ("x.Localhost", ("x.localhost", "127.0.0.1", "::1", "localhost")),
            ("127.0.0.2", ("127.0.0.2",)),
        ):
            self.assertEqual(destination_names(given), expected, given)
