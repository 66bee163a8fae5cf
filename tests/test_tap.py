"""
Tests for :mod:`twistproxy.tap` and the twistd plugin that points at it.
"""

from __future__ import annotations

import json
import os
import stat
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from twisted.application.service import IServiceMaker
from twisted.internet.address import IPv4Address
from twisted.internet.error import CannotListenError, ConnectionDone, ConnectionRefusedError
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.logger import capturedLogs, formatEvent
from twisted.plugin import getPlugins
from twisted.python import usage
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from tests.fakes import TempDirTestCase
from tests.options import parse
from twistproxy._tls import UpstreamTLS
from twistproxy.addons.certpage import CertPage
from twistproxy.addons.flowlog import FlowLog
from twistproxy.addons.save import SaveFlows
from twistproxy.certs import CA_CERT_DER, CA_CERT_PEM, CA_FILE, CertificateAuthority
from twistproxy.connection import Client, Server
from twistproxy.flowfile import dump_flows, load_flows
from twistproxy.har import to_har
from twistproxy.http import HTTPFlow, Request, Response
from twistproxy.modes import REGULAR, parse_mode
from twistproxy.options import Options, parse_size
from twistproxy.proxy import DEFAULT_BODY_LIMIT, ProxyFactory
from twistproxy.replay import ServerReplay
from twistproxy.service import ProxyService
from twistproxy.tap import make_service
from twistproxy.workers import Supervisor

GOOD_ADDON = """\
from twistproxy.hooks import Addon


class AddHeader(Addon):
    def response(self, flow):
        flow.response.headers["X-Added"] = "yes"


class Plain:
    def request(self, flow):
        pass


addons = [AddHeader(), Plain()]
"""




def write_file(case: SynchronousTestCase, name: str, source: str) -> str:
    """
    Write *source* to a file called *name* in a new directory of *case*'s.

    :returns: The file's path.
    """
    directory = case.mktemp()
    os.makedirs(directory)
    path = os.path.join(directory, name)
    with open(path, "w", encoding="utf-8") as f:
        f.write(source)
    return path


class ParseSizeTests(SynchronousTestCase):
    """
    Tests for :func:`twistproxy.options.parse_size`.
    """

    def test_plain_number(self) -> None:
        """
        A bare number is a number of bytes.
        """
        self.assertEqual(parse_size("100"), 100)
        self.assertEqual(parse_size("0"), 0)

    def test_units(self) -> None:
        """
        ``k``, ``m`` and ``g`` are binary multiples, in either case, with an
        optional ``b`` or ``ib`` after them.
        """
        self.assertEqual(parse_size("512k"), 512 * 1024)
        self.assertEqual(parse_size("1m"), 1024**2)
        self.assertEqual(parse_size("1M"), 1024**2)
        self.assertEqual(parse_size("2GiB"), 2 * 1024**3)
        self.assertEqual(parse_size("3kb"), 3 * 1024)

    def test_spaces(self) -> None:
        """
        Spaces around the size and between the number and its unit are
        allowed.
        """
        self.assertEqual(parse_size(" 4 k "), 4096)

    def test_not_a_size(self) -> None:
        """
        Words, negative numbers, fractions, unknown units and the empty
        string raise ``ValueError`` naming the text.
        """
        for text in ("lots", "-1", "1.5m", "10t", "", "k", "1 2"):
            with self.subTest(text=text):
                with self.assertRaises(ValueError) as caught:
                    parse_size(text)
                self.assertIn(repr(text), str(caught.exception))


class OptionsTests(TempDirTestCase):
    """
    Tests for :class:`twistproxy.options.Options`.
    """

    def assert_usage_error(self, *args: str) -> str:
        """
        Parsing *args* fails with a one-line ``UsageError``, and afterwards
        :meth:`Options.getUsage` is the short hint.

        :returns: The error message.
        """
        options = Options()
        with self.assertRaises(usage.UsageError) as caught:
            options.parseOptions(list(args))
        message = str(caught.exception)
        self.assertNotIn("\n", message)
        self.assertEqual(
            options.getUsage(),
            "Run 'twistd twistproxy --help' for the options.\n",
        )
        return message

    def test_defaults(self) -> None:
        """
        Without arguments the proxy listens on port 8080 of 127.0.0.1, logs
        flows, loads no addons and uses the default limits.
        """
        options = parse()
        self.assertEqual(options["listeners"], [(REGULAR, "tcp:8080:interface=127.0.0.1")])
        self.assertEqual(options["endpoint"], "tcp:8080:interface=127.0.0.1")
        self.assertEqual(options["body-limit"], DEFAULT_BODY_LIMIT)
        self.assertEqual(options["timeout"], 60.0)
        self.assertEqual(options["connect-timeout"], 30.0)
        self.assertFalse(options["quiet"])
        self.assertEqual(options["addon"], [])
        self.assertEqual(options["addons"], [])

    def test_port_number(self) -> None:
        """
        A port number listens on that port of 127.0.0.1 only.
        """
        self.assertEqual(parse("--port", "9000")["endpoint"], "tcp:9000:interface=127.0.0.1")
        self.assertEqual(parse("-p", "9001")["endpoint"], "tcp:9001:interface=127.0.0.1")

    def test_port_endpoint(self) -> None:
        """
        A Twisted endpoint description is used as it is.
        """
        options = parse("--port", "tcp:0:interface=127.0.0.1")
        self.assertEqual(options["endpoint"], "tcp:0:interface=127.0.0.1")

    def test_port_out_of_range(self) -> None:
        """
        A number that is not a port is refused, naming it.
        """
        message = self.assert_usage_error("--port", "70000")
        self.assertIn("--port 70000", message)

    def test_port_unknown_endpoint(self) -> None:
        """
        A description no endpoint parser knows is refused, naming it.
        """
        message = self.assert_usage_error("--port", "nonsense:x")
        self.assertIn("--port nonsense:x", message)

    def test_port_parser_failure(self) -> None:
        """
        An endpoint whose parser fails other than with ``ValueError`` (a TLS
        endpoint whose key file is missing) is refused too, not let through
        as a traceback.
        """
        missing = os.path.join(self.mktemp(), "missing.pem")
        message = self.assert_usage_error("--port", f"ssl:8443:privateKey={missing}")
        self.assertIn("missing.pem", message)

    def test_port_twice(self) -> None:
        """
        ``--port`` given twice is refused (not the last one kept), with the
        way to listen on several.
        """
        message = self.assert_usage_error("--port", "9000", "-p", "9001")
        self.assertIn("--port given twice (9000, 9001)", message)
        self.assertIn("--mode regular@PORT", message)

    def test_modes(self) -> None:
        """
        Each ``--mode`` is a listener, on 127.0.0.1 and its port (or the
        mode's default).
        """
        options = parse("--mode", "regular@9000", "--mode", "regular",
                        "--mode", "reverse:http://127.0.0.1:81@0.0.0.0:9002")
        self.assertEqual(options["listeners"], [
            (parse_mode("regular@9000"), "tcp:9000:interface=127.0.0.1"),
            (parse_mode("regular"), "tcp:8080:interface=127.0.0.1"),
            (parse_mode("reverse:http://127.0.0.1:81@0.0.0.0:9002"),
             "tcp:9002:interface=0.0.0.0"),
        ])

    def test_mode_refused(self) -> None:
        """A bad mode, a port taken twice, or --port beside --mode: one line each."""
        self.assertIn("--mode unknown mode 'nope'", self.assert_usage_error("--mode", "nope"))
        message = self.assert_usage_error("--mode", "regular", "--mode", "reverse:x.example")
        self.assertIn("both listen on port 8080", message)
        message = self.assert_usage_error("--port", "9000", "--mode", "regular")
        self.assertIn("--port and --mode", message)
        message = self.assert_usage_error("--keep-host-header")
        self.assertIn("--keep-host-header needs a --mode reverse", message)
        message = self.assert_usage_error("--workers", "2", "--mode", "regular")
        self.assertIn("no --mode with it", message)
        message = self.assert_usage_error("--mode", "transparent", "--proxy-auth", "a:b")
        self.assertIn("--mode transparent with proxy authentication", message)

    def test_socks5_and_transparent_listeners(self) -> None:
        """socks5 listens on 1080 by default, transparent on its port; both are served."""
        options = parse("--mode", "socks5", "--mode", "transparent@8081")
        self.assertEqual([endpoint for _, endpoint in options["listeners"]],
                         ["tcp:1080:interface=127.0.0.1", "tcp:8081:interface=127.0.0.1"])

    def test_body_limit(self) -> None:
        """
        ``--body-limit`` takes a size in bytes, with an optional unit.
        """
        self.assertEqual(parse("--body-limit", "512k")["body-limit"], 512 * 1024)
        self.assertEqual(parse("--body-limit", "1m")["body-limit"], 1024 * 1024)
        self.assertEqual(parse("--body-limit", "100")["body-limit"], 100)

    def test_body_limit_not_a_size(self) -> None:
        """
        ``--body-limit`` refuses what is not a size.
        """
        message = self.assert_usage_error("--body-limit", "lots")
        self.assertIn("lots", message)

    def test_timeouts_positive(self) -> None:
        """
        ``--timeout`` and ``--connect-timeout`` take positive numbers of
        seconds; zero, negative numbers and words are refused.
        """
        self.assertEqual(parse("--timeout", "2.5")["timeout"], 2.5)
        self.assertEqual(parse("--connect-timeout", "5")["connect-timeout"], 5.0)
        for option in ("--timeout", "--connect-timeout"):
            for value in ("0", "-1", "soon"):
                with self.subTest(option=option, value=value):
                    self.assert_usage_error(option, value)

    def test_quiet(self) -> None:
        """
        ``--quiet`` and ``-q`` set the quiet flag.
        """
        self.assertTrue(parse("--quiet")["quiet"])
        self.assertTrue(parse("-q")["quiet"])

    def test_usage_before_failure(self) -> None:
        """
        Before any failure :meth:`Options.getUsage` is the full help,
        naming every option.
        """
        text = Options().getUsage()
        for option in (
            "--port",
            "--addon",
            "--body-limit",
            "--timeout",
            "--connect-timeout",
            "--quiet",
        ):
            self.assertIn(option, text)


class AddonOptionTests(TempDirTestCase):
    """
    Tests for ``--addon``: loading addon files at option-parsing time.
    """

    def write(self, name: str, source: str) -> str:
        """
        Write *source* to a file called *name* in a new directory.

        :returns: The file's path.
        """
        return write_file(self, name, source)

    def assert_refused(self, path: str) -> str:
        """
        ``--addon path`` fails with a one-line ``UsageError`` naming the
        file.

        :returns: The error message.
        """
        options = Options()
        with self.assertRaises(usage.UsageError) as caught:
            options.parseOptions(["--addon", path])
        message = str(caught.exception)
        self.assertIn(path, message)
        self.assertNotIn("\n", message)
        return message

    def test_loads_addons(self) -> None:
        """
        A file defining ``addons`` contributes its addons, in order.
        """
        options = parse("--addon", self.write("good.py", GOOD_ADDON))
        self.assertEqual(
            [type(addon).__name__ for addon in options["addons"]], ["AddHeader", "Plain"]
        )

    def test_repeatable(self) -> None:
        """
        ``--addon`` may be given more than once; the files' addons are kept
        in the order of the options.
        """
        hook = "    def request(self, flow):\n        pass\n"
        first = self.write("first.py", f"class A:\n{hook}addons = [A()]\n")
        second = self.write("second.py", f"class B:\n{hook}addons = [B()]\n")
        options = parse("--addon", first, "--addon", second)
        self.assertEqual(options["addon"], [first, second])
        self.assertEqual([type(a).__name__ for a in options["addons"]], ["A", "B"])

    def test_refused_file(self) -> None:
        """
        A file ``load_addons`` refuses is a one-line usage error: the option
        and its reason, which names the file (the reasons are tested in
        :mod:`tests.test_script`).
        """
        path = self.write("syntax.py", "x = 1\ndef broken(:\n")
        message = self.assert_refused(path)
        self.assertTrue(message.startswith(f"--addon {path}:2: syntax error"), message)


class FailingReactor(MemoryReactorClock):
    """
    A memory reactor on which every TCP port is taken.
    """

    def listenTCP(self, port: int, *args: Any, **kwargs: Any) -> Any:
        """
        Fail as a taken port does.
        """
        raise CannotListenError("127.0.0.1", port, OSError(98, "Address already in use"))


class MakeServiceTests(TempDirTestCase):
    """
    Tests for :func:`twistproxy.tap.make_service`.
    """

    def proxy_factory(self, reactor: MemoryReactorClock) -> ProxyFactory:
        """
        The factory of the one port *reactor* listens on.
        """
        [(_, factory, _, _)] = reactor.tcpServers
        assert isinstance(factory, ProxyFactory)
        return factory

    def test_listens_once_on_loopback(self) -> None:
        """
        Started, the service listens once, on 127.0.0.1 and the port given.
        """
        reactor = MemoryReactorClock()
        make_service(parse("--port", "9000"), reactor).startService()
        [(port, factory, backlog, interface)] = reactor.tcpServers
        self.assertEqual((port, interface), (9000, "127.0.0.1"))
        self.assertIsInstance(factory, ProxyFactory)

    def test_default_port(self) -> None:
        """
        By default the service listens on 127.0.0.1:8080.
        """
        reactor = MemoryReactorClock()
        make_service(parse(), reactor).startService()
        self.assertEqual(
            [(port, interface) for port, _, _, interface in reactor.tcpServers],
            [(8080, "127.0.0.1")],
        )

    def test_workers_killed_after_their_drain(self) -> None:
        """
        The supervisor gives its workers their ``--shutdown-timeout`` (and
        the drain's last aborts, and a margin) before it kills them.
        """
        top = make_service(parse("--workers", "2", "--no-intercept",
                                 "--shutdown-timeout", "20"), MemoryReactorClock())
        [supervisor] = [child for child in top if isinstance(child, Supervisor)]
        self.assertEqual(supervisor.kill_after, 25.0)

    def test_listeners_per_mode(self) -> None:
        """
        Each mode listens with a factory of its own, sharing the addons;
        flows record the mode.
        """
        reactor = MemoryReactorClock()
        make_service(parse("--mode", "regular@9000",
                           "--mode", "reverse:http://127.0.0.1:81@9001",
                           "--keep-host-header"), reactor).startService()
        listening = [(port, factory) for port, factory, _, _ in reactor.tcpServers]
        self.assertEqual([port for port, _ in listening], [9000, 9001])
        first, second = (factory for _, factory in listening)
        assert isinstance(first, ProxyFactory) and isinstance(second, ProxyFactory)
        self.assertEqual((first.mode_text, second.mode_text),
                         ("regular@9000", "reverse:http://127.0.0.1:81@9001"))
        self.assertIsNone(first.entry)
        self.assertIsNotNone(second.entry)
        self.assertEqual(first.chain.addons, second.chain.addons)

    def test_endpoint_description(self) -> None:
        """
        An endpoint description is listened on as it says.
        """
        reactor = MemoryReactorClock()
        make_service(parse("--port", "tcp:8123:interface=0.0.0.0"), reactor).startService()
        [(port, _, _, interface)] = reactor.tcpServers
        self.assertEqual((port, interface), (8123, "0.0.0.0"))

    def test_proxy_service(self) -> None:
        """
        The service holds one :class:`ProxyService` for the endpoint.
        """
        [child] = list(make_service(parse(), MemoryReactorClock()))
        self.assertIsInstance(child, ProxyService)

    def test_flow_log(self) -> None:
        """
        The CA page and the flow log run first, then the addon files' addons.
        """
        reactor = MemoryReactorClock()
        path = write_file(self, "good.py", GOOD_ADDON)
        make_service(parse("--addon", path), reactor).startService()
        addons = self.proxy_factory(reactor).chain.addons
        self.assertEqual(
            [type(addon).__name__ for addon in addons],
            ["CertPage", "FlowLog", "AddHeader", "Plain"],
        )

    def test_quiet(self) -> None:
        """
        With ``--quiet`` the flow log addon is left out.
        """
        reactor = MemoryReactorClock()
        make_service(parse("--quiet"), reactor).startService()
        addons = self.proxy_factory(reactor).chain.addons
        self.assertFalse(any(isinstance(addon, FlowLog) for addon in addons))

    def test_limits(self) -> None:
        """
        The body limit and timeouts reach the factory.
        """
        reactor = MemoryReactorClock()
        options = parse("--body-limit", "2k", "--timeout", "7")
        make_service(options, reactor).startService()
        factory = self.proxy_factory(reactor)
        self.assertEqual(factory.body_limit, 2048)
        self.assertEqual(factory.timeOut, 7.0)

    def test_cannot_listen(self) -> None:
        """
        A failure to listen ends the program with one line naming the
        endpoint, not a traceback: ``SystemExit`` with a message.
        """
        service = make_service(parse("--port", "9000"), FailingReactor())
        with self.assertRaises(SystemExit) as caught:
            service.startService()
        message = caught.exception.code
        assert isinstance(message, str)
        self.assertIn("tcp:9000:interface=127.0.0.1", message)
        self.assertIn("Address already in use", message)
        self.assertNotIn("\n", message)

    def test_stop(self) -> None:
        """
        Stopping the service stops the proxy service's listening port.
        """
        service = make_service(parse(), MemoryReactorClock())
        service.startService()
        [child] = list(service)
        assert isinstance(child, ProxyService)
        self.assertIsNotNone(child.port)
        service.stopService()
        self.assertIsNone(child.port)
        self.assertFalse(child.running)


class PluginTests(SynchronousTestCase):
    """
    Tests for ``twisted/plugins/twistproxy_plugin.py``.
    """

    def test_discoverable(self) -> None:
        """
        twistd finds the plugin by its tap name, and it points at
        :mod:`twistproxy.tap`.
        """
        [maker] = [p for p in getPlugins(IServiceMaker) if p.tapname == "twistproxy"]
        self.assertIs(maker.options, Options)
        self.assertTrue(maker.description)


def _now() -> datetime:
    return datetime.now(UTC)


class HTTPSOptionTests(TempDirTestCase):
    """
    Tests for the HTTPS options: ``--ignore-hosts``, ``--upstream-ca``,
    ``--insecure``, ``--no-intercept``, ``--ca`` and ``--ca-dir``.
    """

    def assert_usage_error(self, *args: str) -> str:
        """
        Parsing *args* fails with a one-line ``UsageError``.

        :returns: The error message.
        """
        with self.assertRaises(usage.UsageError) as caught:
            parse(*args)
        message = str(caught.exception)
        self.assertNotIn("\n", message)
        return message

    def factory(self, options: Options) -> ProxyFactory:
        """
        The proxy factory :func:`make_service` builds for *options*.
        """
        reactor = MemoryReactorClock()
        make_service(options, reactor).startService()
        [(_, factory, _, _)] = reactor.tcpServers
        assert isinstance(factory, ProxyFactory)
        return factory

    def ca_file(self) -> tuple[CertificateAuthority, str]:
        """
        A CA saved in a new directory.

        :returns: The CA and the path of its key-and-certificate file.
        """
        authority = CertificateAuthority.generate(now=_now())
        directory = Path(self.mktemp())
        authority.save(directory)
        return authority, str(directory / CA_FILE)

    def test_ignore_hosts_repeatable(self) -> None:
        """
        ``--ignore-hosts`` may be given more than once; the patterns are
        kept in order and reach the factory, which passes through the
        tunnels whose ``host:port`` they match.
        """
        self.assertEqual(parse()["ignore-hosts"], [])
        options = parse("--ignore-hosts", r"\.bank\.example:443$",
                        "--ignore-hosts", r"^10\.")
        self.assertEqual(options["ignore-hosts"], [r"\.bank\.example:443$", r"^10\."])
        factory = self.factory(options)
        self.assertTrue(factory.ignores("www.bank.example", 443))
        self.assertTrue(factory.ignores("10.0.0.1", 8443))
        self.assertFalse(factory.ignores("www.bank.example", 8443))
        self.assertFalse(factory.ignores("example.com", 443))

    def test_ignore_hosts_not_a_regex(self) -> None:
        """
        A pattern that is not a regular expression is refused, naming it.
        """
        message = self.assert_usage_error("--ignore-hosts", "(")
        self.assertIn("--ignore-hosts '('", message)
        self.assertIn("not a regular expression", message)

    def test_upstream_ca_default(self) -> None:
        """
        Without ``--upstream-ca`` or ``--insecure``, origins are verified
        against the system's store, and the factory's pool uses those
        settings.
        """
        options = parse()
        upstream = options["upstream-tls"]
        self.assertIsInstance(upstream, UpstreamTLS)
        self.assertIsNone(upstream.ca_file)
        self.assertFalse(upstream.insecure)
        self.assertIs(self.factory(options).pool.tls, upstream)

    def test_upstream_ca(self) -> None:
        """
        ``--upstream-ca`` with a PEM file of certificates makes the origins
        be verified against it.
        """
        authority, _ = self.ca_file()
        path = write_file(self, "origins.pem", authority.certificate_pem().decode("ascii"))
        upstream = parse("--upstream-ca", path)["upstream-tls"]
        self.assertEqual(upstream.ca_file, path)
        self.assertFalse(upstream.insecure)

    def test_upstream_ca_missing(self) -> None:
        """
        A missing ``--upstream-ca`` file is a usage error naming it.
        """
        missing = os.path.join(self.mktemp(), "missing.pem")
        message = self.assert_usage_error("--upstream-ca", missing)
        self.assertIn(f"--upstream-ca {missing}", message)
        self.assertIn("no such file", message)

    def test_upstream_ca_not_certificates(self) -> None:
        """
        An ``--upstream-ca`` file holding no PEM certificate is a usage
        error.
        """
        path = write_file(self, "nothing.pem", "not a certificate\n")
        message = self.assert_usage_error("--upstream-ca", path)
        self.assertIn(path, message)
        self.assertIn("no PEM certificate", message)

    def test_insecure(self) -> None:
        """
        ``--insecure`` gives an :class:`UpstreamTLS` that verifies nothing,
        used by the factory's pool.
        """
        options = parse("--insecure")
        upstream = options["upstream-tls"]
        self.assertIsInstance(upstream, UpstreamTLS)
        self.assertTrue(upstream.insecure)
        self.assertIs(self.factory(options).pool.tls, upstream)

    def test_intercepts_by_default(self) -> None:
        """
        By default the factory has TLS contexts from a certificate store
        whose CA the CA page serves, first among the addons.
        """
        factory = self.factory(parse())
        self.assertIsNotNone(factory.contexts)
        self.assertIsInstance(factory.chain.addons[0], CertPage)

    def test_no_intercept(self) -> None:
        """
        ``--no-intercept`` builds no certificate store (every tunnel passes
        through), adds no CA page and makes no CA.
        """
        directory = self.mktemp()
        factory = self.factory(parse("--ca-dir", directory, "--no-intercept"))
        self.assertIsNone(factory.contexts)
        self.assertFalse(any(isinstance(addon, CertPage) for addon in factory.chain.addons))
        self.assertFalse(os.path.exists(directory))

    def test_ca_file(self) -> None:
        """
        ``--ca`` with a good CA file loads that CA: it signs the minted
        certificates and the CA page serves it.
        """
        authority, path = self.ca_file()
        factory = self.factory(parse("--ca", path))
        assert factory.contexts is not None
        self.assertEqual(factory.contexts.store.authority.certificate, authority.certificate)
        issued = factory.contexts.store.certificate_for("example.com")
        self.assertEqual(issued.certificate.issuer, authority.certificate.subject)

    def test_ca_file_bad(self) -> None:
        """
        A ``--ca`` file that is malformed, or missing, makes
        :func:`make_service` raise ``SystemExit`` with one line naming the
        file, not a traceback.
        """
        malformed = write_file(self, "bad.pem", "-----BEGIN CERTIFICATE-----\nnope\n")
        missing = os.path.join(self.mktemp(), "missing.pem")
        for path, reason in ((malformed, "malformed PEM"), (missing, "cannot be read")):
            with self.subTest(path=path):
                options = parse("--ca", path)
                with self.assertRaises(SystemExit) as caught:
                    make_service(options, MemoryReactorClock())
                message = caught.exception.code
                assert isinstance(message, str)
                self.assertTrue(message.startswith("twistproxy: "), message)
                self.assertIn(path, message)
                self.assertIn(reason, message)
                self.assertNotIn("\n", message)

    def test_ca_dir_created_then_reused(self) -> None:
        """
        ``--ca-dir`` names where the CA is made on the first start (the
        directory 0700, the key file 0600, the certificate as PEM and DER)
        and loaded from on the next.
        """
        directory = Path(self.mktemp())  # its parent exists; only the last level is made
        first = self.factory(parse("--ca-dir", str(directory)))
        self.assertEqual(stat.S_IMODE(directory.stat().st_mode), 0o700)
        self.assertEqual(stat.S_IMODE((directory / CA_FILE).stat().st_mode), 0o600)
        self.assertTrue((directory / CA_CERT_PEM).is_file())
        self.assertTrue((directory / CA_CERT_DER).is_file())
        second = self.factory(parse("--ca-dir", str(directory)))
        assert first.contexts is not None and second.contexts is not None
        self.assertEqual(
            first.contexts.store.authority.certificate,
            second.contexts.store.authority.certificate,
        )

    def test_ca_dir_unusable(self) -> None:
        """
        A ``--ca-dir`` whose CA file is broken makes :func:`make_service`
        raise ``SystemExit`` with one line, and the file is left alone.
        """
        directory = Path(self.mktemp())
        directory.mkdir()
        (directory / CA_FILE).write_text("garbage\n")
        with self.assertRaises(SystemExit) as caught:
            make_service(parse("--ca-dir", str(directory)), MemoryReactorClock())
        message = caught.exception.code
        assert isinstance(message, str)
        self.assertIn(str(directory / CA_FILE), message)
        self.assertNotIn("\n", message)
        self.assertEqual((directory / CA_FILE).read_text(), "garbage\n")


def recorded(
    url: str = "http://127.0.0.1:9/a?x=1",
    *,
    method: str = "GET",
    body: bytes = b"",
    headers: dict[str, str] | None = None,
    answer: bytes = b"recorded",
) -> HTTPFlow:
    """
    A finished flow, as a recording holds it.
    """
    flow = HTTPFlow(Client(), Server(), now=lambda: 1.0)
    flow.request = Request.make(method, url, body, headers or {})
    flow.response = Response.make(200, answer)
    return flow


def live(url: str, *, method: str = "GET", body: bytes = b"",
         headers: dict[str, str] | None = None) -> HTTPFlow:
    """
    A live flow with a request and no response yet, as the ``request`` hook
    sees it.
    """
    flow = HTTPFlow(Client(), Server(), live=True, now=lambda: 2.0)
    flow.request = Request.make(method, url, body, headers or {})
    return flow


class StopCountingReactor(MemoryReactorClock):
    """
    A memory reactor that counts :meth:`stop` calls.
    """

    stops = 0

    def stop(self) -> None:
        """
        Count the call, then stop as the memory reactor does.
        """
        self.stops += 1
        super().stop()


class ReplayOptionTests(TempDirTestCase):
    """
    Tests for the flow file options: ``--save``, ``--save-filter``,
    ``--server-replay`` and its matching options, ``--client-replay``,
    ``--replay-concurrency`` and ``--exit-after-replay``.
    """

    def write_flows(self, name: str, *flows: HTTPFlow) -> str:
        """
        Write *flows* to a new flow file called *name*.

        :returns: Its path.
        """
        directory = self.mktemp()
        os.makedirs(directory)
        path = os.path.join(directory, name)
        with open(path, "wb") as out:
            dump_flows(flows, out)
        return path

    def write_har(self, name: str, *flows: HTTPFlow) -> str:
        """
        Write *flows* to a new HAR file called *name*.

        :returns: Its path.
        """
        return write_file(self, name, json.dumps(to_har(flows, creator_version="test")))

    def usage_error(self, *args: str) -> str:
        """
        Parsing *args* fails with a ``UsageError``.

        :returns: Its message.
        """
        with self.assertRaises(usage.UsageError) as caught:
            parse(*args)
        return str(caught.exception)

    def started(
        self, options: Options, reactor: MemoryReactorClock | None = None
    ) -> tuple[MemoryReactorClock, ProxyFactory, Any]:
        """
        Build and start the service for *options* on *reactor* (a new
        memory reactor by default).

        :returns: The reactor, the proxy factory and the started service.
        """
        reactor = MemoryReactorClock() if reactor is None else reactor
        service = make_service(options, reactor)
        service.startService()
        self.addCleanup(lambda: service.running and service.stopService())
        [(_, factory, _, _)] = reactor.tcpServers
        assert isinstance(factory, ProxyFactory)
        return reactor, factory, service

    def addon(self, factory: ProxyFactory, kind: type[Any]) -> Any:
        """
        The one addon of type *kind* in *factory*'s chain.
        """
        [addon] = [a for a in factory.chain.addons if isinstance(a, kind)]
        return addon

    # --save, --save-filter

    def test_save_filter_malformed(self) -> None:
        """
        A malformed ``--save-filter`` is a usage error naming the option,
        the problem and its column.
        """
        message = self.usage_error("--save", os.path.join(self.mktemp(), "f.jsonl"),
                                   "--save-filter", "~d example.com & (~c 304")
        self.assertTrue(message.startswith("--save-filter: "), message)
        self.assertIn("'(' is never closed at column 18", message)
        message = self.usage_error("--save-filter", "~zz")
        self.assertIn("unknown operator '~zz' at column 1", message)

    def test_save_filter(self) -> None:
        """
        A good ``--save-filter`` is parsed and reaches the ``SaveFlows``
        addon, which then saves only the flows it accepts.
        """
        path = self.mktemp() + ".jsonl"
        options = parse("--save", path, "--save-filter", "~d example.com & !~c 304")
        self.assertEqual(options["save-filter-parsed"].expression, "~d example.com & !~c 304")
        _, factory, service = self.started(options)
        saving = self.addon(factory, SaveFlows)
        wanted = recorded("http://example.com/keep")
        unwanted = recorded("http://example.com/cached")
        assert unwanted.response is not None
        unwanted.response.status_code = 304
        other = recorded("http://other.example/")
        for flow in (wanted, unwanted, other):
            saving.response(flow)
        service.stopService()
        self.assertEqual(saving.saved, 1)
        [saved] = load_flows(path)
        self.assertEqual(saved.get_state(), wanted.get_state())

    def test_save_appends(self) -> None:
        """
        ``--save`` appends: a second run adds its flows after the first
        run's; stopping the service closes the file.
        """
        path = self.mktemp() + ".jsonl"
        for url in ("http://example.com/1", "http://example.com/2"):
            _, factory, service = self.started(parse("--save", path))
            self.addon(factory, SaveFlows).response(recorded(url))
            service.stopService()
        self.assertEqual(
            [f.request.url for f in load_flows(path) if f.request is not None],
            ["http://example.com/1", "http://example.com/2"],
        )
        with open(path, "rb") as f:
            self.assertEqual(len(f.read().splitlines()), 2)

    def test_save_closes_after_drain(self) -> None:
        """
        Stopping closes the ``--save`` file only once the connections are
        drained: a flow given up at the ``--shutdown-timeout`` deadline is
        saved with its error, then the file is closed.
        """
        path = self.mktemp() + ".jsonl"
        reactor, factory, service = self.started(
            parse("--save", path, "--shutdown-timeout", "3", "--quiet"))
        saving = self.addon(factory, SaveFlows)
        channel = factory.buildProtocol(IPv4Address("TCP", "127.0.0.1", 5000))
        transport = StringTransport(peerAddress=IPv4Address("TCP", "127.0.0.1", 5000))
        channel.makeConnection(transport)
        channel.dataReceived(b"GET http://127.0.0.1:9999/slow HTTP/1.1\r\n\r\n")
        stopped = service.stopService()
        reactor.advance(2)
        self.assertNoResult(stopped)
        self.assertEqual(saving.saved, 0)
        reactor.advance(1)
        self.assertIn(b" 503 ", transport.value())
        self.assertEqual(saving.saved, 1)
        self.assertNoResult(stopped)  # the file is still open
        channel.connectionLost(Failure(ConnectionDone()))
        self.successResultOf(stopped)
        [flow] = load_flows(path)
        assert flow.error is not None
        self.assertIn("shut down", flow.error.msg)
        self.assertIsNone(flow.response)

    def test_shutdown_timeout(self) -> None:
        """
        ``--shutdown-timeout`` is 10 s by default, may be 0, and reaches the
        proxy service; a negative one is a usage error naming the option.
        """
        self.assertEqual(parse()["shutdown-timeout"], 10.0)
        self.assertEqual(parse("--shutdown-timeout", "0")["shutdown-timeout"], 0.0)
        _, _, service = self.started(parse("--shutdown-timeout", "2.5"))
        [proxy] = list(service)
        self.assertEqual(proxy.shutdown_timeout, 2.5)
        message = self.usage_error("--shutdown-timeout", "-1")
        self.assertIn("--shutdown-timeout -1: not a number of seconds, 0 or more", message)

    def test_save_unwritable(self) -> None:
        """
        A ``--save`` path that cannot be opened for appending makes
        :func:`make_service` raise ``SystemExit`` with one line naming the
        option, the path and why.
        """
        directory = self.mktemp()
        os.makedirs(directory)
        missing = os.path.join(self.mktemp(), "no-such-dir", "f.jsonl")
        for path, reason in ((directory, "Is a directory"),
                             (missing, "No such file or directory")):
            with self.subTest(path=path):
                with self.assertRaises(SystemExit) as caught:
                    make_service(parse("--save", path), MemoryReactorClock())
                message = caught.exception.code
                assert isinstance(message, str)
                self.assertEqual(message, f"twistproxy: --save {path}: {reason}")

    # --server-replay

    def test_server_replay_missing(self) -> None:
        """
        A missing ``--server-replay`` file is a usage error naming it.
        """
        missing = os.path.join(self.mktemp(), "missing.jsonl")
        message = self.usage_error("--server-replay", missing)
        self.assertEqual(message, f"--server-replay {missing}: No such file or directory")

    def test_recording_corrupt(self) -> None:
        """
        A recording with a corrupt line is a usage error naming the option,
        the file and the line, for both replay options.
        """
        path = self.write_flows("bad.jsonl", recorded())
        with open(path, "ab") as f:
            f.write(b"{not json\n")
        for option in ("--server-replay", "--client-replay"):
            with self.subTest(option=option):
                message = self.usage_error(option, path)
                self.assertTrue(message.startswith(f"{option} {path}: line 2: "), message)
                self.assertIn("not valid JSON", message)

    def test_skip_invalid_flows(self) -> None:
        """
        With ``--skip-invalid-flows`` the lines (or HAR entries) of a
        recording that cannot be read are skipped, and one warning per file
        counts them and names the first; the option needs a replay file.
        """
        path = self.write_flows("bad.jsonl", recorded("http://example.com/1"))
        with open(path, "ab") as f:
            f.write(b"{not json\n" + b"[" * 200_000 + b"\n")
        with open(path, "ab") as f:
            dump_flows([recorded("http://example.com/2")], f)
        for option in ("--server-replay", "--client-replay"):
            with self.subTest(option=option):
                with capturedLogs() as events:
                    options = parse(option, path, "--skip-invalid-flows")
                flows = options[f"{option[2:]}-flows"]
                self.assertEqual([f.request.path for f in flows], ["/1", "/2"])
                [event] = events
                self.assertTrue(formatEvent(event).startswith(
                    f"{option} {path}: skipped 2 unreadable flows (first: line 2: not valid "
                    "JSON"), formatEvent(event))
        self.assertEqual(self.usage_error("--skip-invalid-flows"),
                         "--skip-invalid-flows needs --client-replay or --server-replay")

    def test_recording_unwritable(self) -> None:
        """
        A recording holding a message that could not be written as it
        stands (a reason phrase with CR LF in it, a HAR entry whose URL
        holds one) is a one-line usage error naming the option, the file,
        the line or entry and the field, for both replay options.
        """
        bad = recorded()
        assert bad.response is not None
        bad.response.reason = "OK\r\nSet-Cookie: a=b"
        path = self.write_flows("bad.jsonl", recorded(), bad)
        har = self.write_har("bad.har", recorded(), recorded())
        with open(har, encoding="utf-8") as f:
            document = json.load(f)
        document["log"]["entries"][1]["request"]["url"] = "http://example.com/a\r\nb"
        with open(har, "w", encoding="utf-8") as f:
            json.dump(document, f)
        for option in ("--server-replay", "--client-replay"):
            with self.subTest(option=option):
                message = self.usage_error(option, path)
                self.assertEqual(
                    message,
                    f"{option} {path}: line 2: invalid response reason: "
                    "'OK\\r\\nSet-Cookie: a=b' holds a CR, LF or control",
                )
                message = self.usage_error(option, har)
                self.assertTrue(
                    message.startswith(f"{option} {har}: log.entries[1].request.url: "), message
                )
                self.assertNotIn("\n", message)

    def test_recordings_read(self) -> None:
        """
        ``--server-replay`` and ``--client-replay`` are repeatable and take
        flow files and ``.har`` files; the flows are read while the options
        are parsed, in the order given.
        """
        first = self.write_flows("one.jsonl", recorded("http://example.com/1"))
        har = self.write_har("two.har", recorded("http://example.com/2"),
                             recorded("http://example.com/3"))
        for option in ("server-replay", "client-replay"):
            with self.subTest(option=option):
                options = parse(f"--{option}", first, f"--{option}", har)
                self.assertEqual(options[option], [first, har])
                self.assertEqual(
                    [f.request.url for f in options[f"{option}-flows"] if f.request],
                    ["http://example.com/1", "http://example.com/2", "http://example.com/3"],
                )

    def test_connection_strategy(self) -> None:
        """
        ``--connection-strategy`` reaches the proxy factory: ``eager`` by
        default, ``lazy`` by default when server replay answers what it
        does not match itself (``--replay-unmatched kill`` or ``404``: the
        proxy may be offline), and what the option says when given.
        """
        path = self.write_flows("rec.jsonl", recorded("https://example.com/a"))
        cases = [
            ((), True),
            (("--connection-strategy", "lazy"), False),
            (("--server-replay", path), True),
            (("--server-replay", path, "--replay-unmatched", "404"), False),
            (("--server-replay", path, "--replay-unmatched", "kill"), False),
            (("--server-replay", path, "--replay-unmatched", "404",
              "--connection-strategy", "eager"), True),
        ]
        for args, eager in cases:
            with self.subTest(args=args):
                _, factory, _ = self.started(parse(*args))
                self.assertIs(factory.connect_eagerly, eager)

    def test_bad_connection_strategy(self) -> None:
        """Another strategy is a usage error naming the choices."""
        self.assertEqual(self.usage_error("--connection-strategy", "sometimes"),
                         "--connection-strategy sometimes: choose one of eager, lazy")

    def test_server_replay_defaults(self) -> None:
        """
        With ``--server-replay`` a ``ServerReplay`` addon holding the
        recordings runs after the CA page, the flow log and the addon files
        (so it sees their last word on ``flow.passthrough``); by
        default an unmatched request is forwarded, the query and body count
        and headers do not.  A served response is stamped by the reactor's
        clock.  Without the option there is no such addon.
        """
        self.assertFalse(any(isinstance(a, ServerReplay)
                             for a in self.started(parse())[1].chain.addons))
        path = self.write_flows("rec.jsonl", recorded("http://example.com/a?x=1&y=2",
                                                      method="POST", body=b"b"))
        reactor, factory, _ = self.started(parse("--server-replay", path))
        self.assertEqual([type(a).__name__ for a in factory.chain.addons],
                         ["CertPage", "FlowLog", "ServerReplay"])
        replay = self.addon(factory, ServerReplay)
        self.assertEqual((replay.unmatched, replay.count()), ("forward", 1))
        for flow in (live("http://example.com/a?x=1", method="POST", body=b"b"),
                     live("http://example.com/a?x=1&y=2", method="POST", body=b"other")):
            replay.request(flow)
            self.assertIsNone(flow.response)
            self.assertIsNone(flow.error)
        reactor.advance(1234.5)
        flow = live("http://example.com/a?y=2&x=1", method="POST", body=b"b",
                    headers={"X-Any": "thing"})
        replay.request(flow)
        assert flow.response is not None
        self.assertEqual(flow.response.content, b"recorded")
        self.assertEqual(flow.response.timestamp_start, 1234.5)
        self.assertEqual(flow.is_replay, "response")
        self.assertEqual(replay.count(), 0)

    def test_server_replay_options(self) -> None:
        """
        ``--replay-ignore-param`` (repeatable), ``--replay-ignore-content``
        and ``--replay-match-header`` reach the ``ServerReplay`` addon and
        change what matches; ``--replay-unmatched kill`` kills a request
        nothing matches.
        """
        path = self.write_flows(
            "rec.jsonl",
            recorded("http://example.com/a?x=1&t=100&r=5", method="POST", body=b"one",
                     headers={"X-Tenant": "blue"}),
        )
        options = parse("--server-replay", path, "--replay-ignore-param", "t",
                        "--replay-ignore-param", "r", "--replay-ignore-content",
                        "--replay-match-header", "X-Tenant", "--replay-unmatched", "kill")
        self.assertEqual(options["replay-ignore-param"], ["t", "r"])
        self.assertEqual(options["replay-match-header"], ["X-Tenant"])
        self.assertTrue(options["replay-ignore-content"])
        _, factory, _ = self.started(options)
        replay = self.addon(factory, ServerReplay)
        self.assertEqual(replay.unmatched, "kill")
        other_tenant = live("http://example.com/a?x=1&t=7", method="POST", body=b"two",
                            headers={"X-Tenant": "red"})
        replay.request(other_tenant)
        self.assertIsNone(other_tenant.response)
        self.assertTrue(other_tenant.killed)
        matching = live("http://example.com/a?x=1&t=7", method="POST", body=b"two",
                        headers={"x-tenant": "blue"})
        replay.request(matching)
        assert matching.response is not None
        self.assertEqual(matching.response.content, b"recorded")

    def test_replay_unmatched_404(self) -> None:
        """
        ``--replay-unmatched 404`` answers a request nothing matches with a
        404 instead of forwarding it.
        """
        path = self.write_flows("rec.jsonl", recorded())
        _, factory, _ = self.started(parse("--server-replay", path,
                                           "--replay-unmatched", "404"))
        flow = live("http://example.com/unknown")
        self.addon(factory, ServerReplay).request(flow)
        assert flow.response is not None
        self.assertEqual(flow.response.status_code, 404)

    def test_replay_unmatched_unknown(self) -> None:
        """
        ``--replay-unmatched`` takes only forward, kill or 404.
        """
        message = self.usage_error("--replay-unmatched", "maybe")
        self.assertEqual(message, "--replay-unmatched maybe: choose one of forward, kill, 404")

    # --client-replay

    def test_replay_concurrency_zero(self) -> None:
        """
        ``--replay-concurrency`` must be a whole number of at least 1.
        """
        for value in ("0", "-1"):
            with self.subTest(value=value):
                message = self.usage_error("--replay-concurrency", value)
                self.assertIn(f"'{value}' is not a whole number of at least 1", message)
        self.usage_error("--replay-concurrency", "two")
        self.assertEqual(parse("--replay-concurrency", "3")["replay-concurrency"], 3)

    def test_exit_after_replay_needs_client_replay(self) -> None:
        """
        ``--exit-after-replay`` without ``--client-replay`` is a usage
        error.
        """
        message = self.usage_error("--exit-after-replay")
        self.assertEqual(message, "--exit-after-replay needs --client-replay")

    def test_client_replay_connects(self) -> None:
        """
        Starting the service built with ``--client-replay`` queues the
        recorded flows: with ``--replay-concurrency 2`` two are sent at
        once, each connecting to its recorded host and port; the reactor is
        not stopped without ``--exit-after-replay``.
        """
        path = self.write_flows("rec.jsonl", *(
            recorded(f"http://127.0.0.1:{port}/") for port in (8001, 8002, 8003)
        ))
        reactor = StopCountingReactor()
        self.started(parse("--client-replay", path, "--replay-concurrency", "2"), reactor)
        self.assertEqual([(host, port) for host, port, *_ in reactor.tcpClients],
                         [("127.0.0.1", 8001), ("127.0.0.1", 8002)])
        _, _, connecting, *_ = reactor.tcpClients[0]
        connecting.clientConnectionFailed(reactor.connectors[0],
                                          Failure(ConnectionRefusedError()))
        self.assertEqual([port for _, port, *_ in reactor.tcpClients], [8001, 8002, 8003])
        self.assertEqual(reactor.stops, 0)

    def test_exit_after_replay_when_drained(self) -> None:
        """
        With ``--exit-after-replay`` the reactor is stopped once, when every
        flow was replayed (or failed), not before.
        """
        path = self.write_flows("rec.jsonl", recorded("http://127.0.0.1:8001/"))
        reactor = StopCountingReactor()
        self.started(parse("--client-replay", path, "--exit-after-replay"), reactor)
        reactor.running = reactor.hasRun = True  # twistd's reactor.run() has begun
        [(host, port, connecting, *_)] = reactor.tcpClients
        self.assertEqual((host, port, reactor.stops), ("127.0.0.1", 8001, 0))
        connecting.clientConnectionFailed(reactor.connectors[0],
                                          Failure(ConnectionRefusedError()))
        self.assertEqual(reactor.stops, 1)

    def test_exit_after_replay_nothing_to_replay(self) -> None:
        """
        With ``--exit-after-replay`` and a recording of flows that cannot be
        replayed (a ``CONNECT``), nothing is sent and starting the service
        raises ``SystemExit`` with one line saying so (twistd then exits
        with status 1), after the warning naming why each flow was refused.
        """
        path = self.write_flows("rec.jsonl", recorded("http://example.com:443/",
                                                      method="CONNECT"))
        reactor = StopCountingReactor()
        service = make_service(parse("--client-replay", path, "--exit-after-replay"), reactor)
        with capturedLogs() as events, self.assertRaises(SystemExit) as caught:
            service.startService()
        self.addCleanup(service.stopService)
        self.assertEqual(
            caught.exception.code,
            "twistproxy: --client-replay: nothing to replay: none of the 1 recorded flows "
            "can be replayed (see the warnings above)",
        )
        [refused] = [e for e in events if "reason" in e]
        self.assertIn("CONNECT", refused["reason"])
        self.assertEqual((reactor.tcpClients[1:], reactor.stops), ([], 0))

    def test_nothing_to_replay_warns(self) -> None:
        """
        Without ``--exit-after-replay``, a recording with nothing to replay
        is a warning and the proxy runs on.
        """
        path = self.write_flows("rec.jsonl", recorded("http://example.com:443/",
                                                      method="CONNECT"))
        reactor = StopCountingReactor()
        with capturedLogs() as events:
            _, _, service = self.started(parse("--client-replay", path), reactor)
        self.assertTrue(service.running)
        self.assertIn("--client-replay: nothing to replay: none of the 1 recorded flows",
                      formatEvent(events[-1]))
        self.assertEqual(reactor.stops, 0)

    def test_saved_flows_replayed(self) -> None:
        """
        Flows saved by ``--save`` while they were live in that process
        (the ``response`` hook runs before the flow ends) are read back not
        live, and ``--client-replay`` replays them; at the end one line
        counts the answered and failed replays.
        """
        path = self.mktemp() + ".jsonl"
        _, factory, service = self.started(parse("--save", path))
        flow = recorded("http://127.0.0.1:8001/")
        flow.live = True
        self.addon(factory, SaveFlows).response(flow)
        service.stopService()
        reactor = StopCountingReactor()
        with capturedLogs() as events:
            self.started(parse("--client-replay", path, "--exit-after-replay"), reactor)
            reactor.running = reactor.hasRun = True
            [(host, port, connecting, *_)] = reactor.tcpClients
            self.assertEqual((host, port), ("127.0.0.1", 8001))
            connecting.clientConnectionFailed(reactor.connectors[0],
                                              Failure(ConnectionRefusedError()))
        self.assertEqual(reactor.stops, 1)
        self.assertIn("replayed 1 recorded requests: 0 answered, 1 failed",
                      formatEvent(events[-1]))
