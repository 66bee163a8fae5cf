"""
Tests for :mod:`twistproxy.modes`: how modes are spelt and what they mean.
"""

from __future__ import annotations

from datetime import UTC, datetime

from cryptography.hazmat.primitives.serialization import Encoding, NoEncryption, PrivateFormat
from twisted.python import usage
from twisted.trial.unittest import SynchronousTestCase as TestCase

from tests.fakes import TempDirTestCase
from tests.options import parse
from twistproxy._request import CLIENT_HOST
from twistproxy._target import Tunnel
from twistproxy._tls import GivenCertificate
from twistproxy.addons.reverse import ReverseRewrite
from twistproxy.certs import CertificateAuthority
from twistproxy.connection import Client, Server
from twistproxy.http import HTTPFlow, Request, Response
from twistproxy.modes import REGULAR, Mode, entry_for, parse_mode


class ParseModeTests(TestCase):
    """:func:`parse_mode` reads mitmproxy's spellings."""

    def test_spellings(self) -> None:
        """Each mode, with and without data and a listener."""
        cases = {
            "regular": Mode(),
            "regular@8081": Mode(listen_port=8081),
            "regular@0.0.0.0:80": Mode(listen_host="0.0.0.0", listen_port=80),
            "socks5": Mode("socks5"),
            "transparent@[::1]:9000": Mode("transparent", listen_host="::1", listen_port=9000),
            "upstream:http://127.0.0.1:3128": Mode("upstream", "http", "127.0.0.1", 3128),
            "upstream:proxy.internal": Mode("upstream", "http", "proxy.internal", 80),
            "reverse:https://api.internal@8443": Mode(
                "reverse", "https", "api.internal", 443, listen_port=8443),
            "reverse:api.internal": Mode("reverse", "https", "api.internal", 443),
            "reverse:http://[::1]:81@localhost:9000": Mode(
                "reverse", "http", "::1", 81, "localhost", 9000),
        }
        for text, mode in cases.items():
            self.assertEqual(parse_mode(text), mode, text)

    def test_text_round_trips(self) -> None:
        """A mode's text reads back as the same mode (what flows record)."""
        for text in ("regular", "regular@8081", "socks5@127.0.0.1:1080",
                     "upstream:https://proxy.internal:8443",
                     "reverse:http://[::1]:81@[::1]:9000", "reverse:https://api.internal@8443"):
            self.assertEqual(str(parse_mode(text)), text)
        self.assertEqual(str(parse_mode("reverse:api.internal:443")), "reverse:https://api.internal")

    def test_refused(self) -> None:
        """Each mistake is named in one line."""
        cases = {
            "foo": "unknown mode 'foo'",
            "upstream": "upstream needs a URL",
            "regular:x": "regular takes no data",
            "reverse:https://a/b": "has a path",
            "upstream:ftp://x": "the scheme must be http or https",
            "regular@x:1": "'x' is not an IP address",
            "regular@99999": "is not a port number",
            "regular@": "is not a port number",
            "regular@:80": "no address before the port",
            "upstream:http://user:pw@proxy:3128": "credentials for an upstream proxy",
            "Regular": "is not a mode",
        }
        for text, message in cases.items():
            with self.assertRaisesRegex(ValueError, message, msg=text):
                parse_mode(text)

    def test_endpoint(self) -> None:
        """Listeners are on loopback and the mode's default port unless told."""
        self.assertEqual(REGULAR.endpoint(), "tcp:8080:interface=127.0.0.1")
        self.assertEqual(parse_mode("socks5").endpoint(), "tcp:1080:interface=127.0.0.1")
        self.assertEqual(parse_mode("socks5").endpoint(9999), "tcp:9999:interface=127.0.0.1")
        self.assertEqual(parse_mode("regular@0.0.0.0:81").endpoint(9999),
                         "tcp:81:interface=0.0.0.0")
        self.assertEqual(parse_mode("regular@[::1]:81").endpoint(), r"tcp6:81:interface=\:\:1")

    def test_reverse_tunnel(self) -> None:
        """A reverse listener's requests go to its origin, Host rewritten unless kept."""
        mode = parse_mode("reverse:http://127.0.0.1:9000")
        self.assertEqual(mode.tunnel(),
                         Tunnel("127.0.0.1", 9000, "http", reverse=True, rewrite_host=True))
        self.assertFalse(mode.tunnel(keep_host=True).rewrite_host)

    def test_entries(self) -> None:
        """Regular listeners do nothing first; reverse ones watch the first byte."""
        self.assertIsNone(entry_for(REGULAR))
        self.assertIsNotNone(entry_for(parse_mode("reverse:http://127.0.0.1:9000")))


class FlowModeTests(TestCase):
    """Flows record the mode of the listener that carried them."""

    def test_mode_in_state(self) -> None:
        """``flow.mode`` is the client connection's, and survives the flow's state."""
        client = Client(proxy_mode="reverse:https://api.internal@8443")
        flow = HTTPFlow(client, Server())
        self.assertEqual(flow.mode, "reverse:https://api.internal@8443")
        copy = HTTPFlow.from_state(flow.get_state())
        self.assertEqual(copy.mode, "reverse:https://api.internal@8443")
        self.assertEqual(HTTPFlow(Client(), Server()).mode, "regular")


class GivenCertificateTests(TempDirTestCase):
    """``--certs``: a PEM of the user's own, for the names matching its pattern."""

    def pem(self, *, other_key: bool = False) -> str:
        """A PEM file with a key and a certificate (of another key, if asked)."""
        now = datetime.now(UTC)
        first = CertificateAuthority.generate(now=now)
        second = CertificateAuthority.generate(now=now) if other_key else first
        path = self.mktemp()
        with open(path, "wb") as out:
            out.write(second.key.private_bytes(Encoding.PEM, PrivateFormat.PKCS8,
                                               NoEncryption()))
            out.write(first.certificate.public_bytes(Encoding.PEM))
        return path

    def test_matches(self) -> None:
        """A glob or a name, case-insensitively."""
        given = GivenCertificate("*.Example.com", self.pem())
        self.assertTrue(given.matches("api.example.COM"))
        self.assertFalse(given.matches("example.com"))
        self.assertTrue(GivenCertificate("*", self.pem()).matches("anything"))

    def test_refused(self) -> None:
        """A missing file, a file without PEM, a key of another certificate: one line each."""
        with self.assertRaisesRegex(ValueError, "No such file"):
            GivenCertificate("*", "/nonexistent/own.pem")
        path = self.mktemp()
        with open(path, "w") as out:
            out.write("nothing here")
        with self.assertRaisesRegex(ValueError, "not a PEM key and certificate"):
            GivenCertificate("*", path)
        with self.assertRaisesRegex(ValueError, "the key is not the certificate's"):
            GivenCertificate("*", self.pem(other_key=True))

    def test_options(self) -> None:
        """``--certs [DOMAIN=]PATH``, and not with --no-intercept."""
        path = self.pem()
        [first, second] = parse("--certs", path, "--certs", f"*.internal={path}")["certs"]
        self.assertEqual((first.pattern, second.pattern), ("*", "*.internal"))
        with self.assertRaises(usage.UsageError):
            parse("--certs", "/nonexistent.pem")
        with self.assertRaises(usage.UsageError):
            parse("--certs", path, "--no-intercept")


class ReverseRewriteTests(TestCase):
    """:class:`ReverseRewrite` on flows of a reverse listener."""

    def flow(self, mode: str, location: str, *, tls: bool = False,
             client_host: str | None = "front.example") -> HTTPFlow:
        """A flow of *mode* whose response redirects to *location*."""
        flow = HTTPFlow(Client(proxy_mode=mode, tls_established=tls,
                               sockname=("127.0.0.1", 8443)), Server())
        flow.request = Request.make("GET", "http://api.internal/x")
        if client_host is not None:
            flow.metadata[CLIENT_HOST] = client_host
        else:
            del flow.request.headers["Host"]
        flow.response = Response.make(302, b"", {"Location": location,
                                                 "Content-Location": "/relative"})
        return flow

    def rewritten(self, flow: HTTPFlow) -> str | None:
        """The flow's Location after the addon ran."""
        ReverseRewrite().responseheaders(flow)
        assert flow.response is not None
        return flow.response.headers.get("Location")

    def test_location(self) -> None:
        """To the origin (any case, default port written or not): to the client's host."""
        mode = "reverse:https://api.internal@8443"
        for location in ("https://api.internal/a?b", "HTTPS://API.internal:443/a?b"):
            self.assertEqual(self.rewritten(self.flow(mode, location)),
                             "http://front.example/a?b")
        self.assertEqual(self.rewritten(self.flow(mode, "https://api.internal", tls=True)),
                         "https://front.example")
        for elsewhere in ("https://api.internal.evil/a", "http://api.internal/a",
                          "https://other/a", "/a"):
            self.assertEqual(self.rewritten(self.flow(mode, elsewhere)), elsewhere)

    def test_without_host(self) -> None:
        """A client that sent no Host: the address it reached."""
        flow = self.flow("reverse:https://api.internal", "https://api.internal/a",
                         client_host=None)
        self.assertEqual(self.rewritten(flow), "http://127.0.0.1:8443/a")

    def test_other_modes_untouched(self) -> None:
        """A regular listener's flows pass as they are."""
        self.assertEqual(self.rewritten(self.flow("regular", "https://api.internal/a")),
                         "https://api.internal/a")
