"""
Fixtures for the end-to-end tests: an origin and a proxy listening on
127.0.0.1 (port 0) in the test's reactor, and clients that talk to them
through real sockets.  Blocking socket clients run in threads so the reactor
keeps serving the proxy and the origin meanwhile.
"""

from __future__ import annotations

import shutil
import socket
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
import pytest_twisted
from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import TCP4ServerEndpoint
from twisted.internet.threads import deferToThread
from twisted.internet.utils import getProcessOutputAndValue

from tests.e2e.origin import OriginFactory
from twistproxy.proxy import ProxyFactory
from twistproxy.service import ProxyService

pytestmark = pytest.mark.e2e


class Running:
    """A listening server: its port number and its factory."""

    def __init__(self, port: Any, factory: Any) -> None:
        self.listening = port
        self.port = port.getHost().port
        self.factory = factory


@pytest_twisted.async_yield_fixture
async def origin() -> AsyncIterator[Running]:
    """An origin server on 127.0.0.1."""
    factory = OriginFactory()
    port = reactor.listenTCP(0, factory, interface="127.0.0.1")
    yield Running(port, factory)
    await port.stopListening()


@pytest.fixture
def start_proxy() -> Any:
    """
    Start proxies with the given ProxyFactory keyword arguments; each is
    stopped at the end of the test.
    """
    services: list[ProxyService] = []

    async def start(**kwargs: Any) -> Running:
        factory = ProxyFactory(reactor=reactor, **kwargs)
        service = ProxyService(TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1"), factory)
        service.startService()
        port = await service.when_listening()
        services.append(service)
        return Running(port, factory)

    yield start
    for service in services:
        pytest_twisted.blockon(Deferred.fromCoroutine(_stop(service)))


async def _stop(service: ProxyService) -> None:
    await service.stopService()


@pytest_twisted.async_yield_fixture
async def proxy(start_proxy: Any) -> AsyncIterator[Running]:
    """A proxy with no addons on 127.0.0.1."""
    yield await start_proxy()


def exchange(
    port: int,
    data: bytes,
    *,
    until: Callable[[bytes], bool] | None = None,
    timeout: float = 10.0,
    shutdown: bool = False,
) -> bytes:
    """
    Blocking: connect to 127.0.0.1:*port*, send *data*, and read until the
    connection closes (or *until* says enough).  Run it in a thread.
    """
    deadline = time.monotonic() + timeout
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(data)
        if shutdown:
            sock.shutdown(socket.SHUT_WR)
        received = b""
        while time.monotonic() < deadline:
            try:
                piece = sock.recv(65536)
            except ConnectionResetError:
                break
            if not piece:
                break
            received += piece
            if until is not None and until(received):
                break
        return received


def raw(port: int, data: bytes, **kwargs: Any) -> Deferred[bytes]:
    """:func:`exchange` in a thread."""
    return deferToThread(exchange, port, data, **kwargs)


CURL = shutil.which("curl")


async def curl(*args: str) -> tuple[bytes, bytes, int]:
    """Run curl with *args*; returns stdout, stderr and the exit code."""
    assert CURL is not None
    out, err, code = await getProcessOutputAndValue(CURL, ("--silent", "--show-error", *args))
    return out, err, code


needs_curl = pytest.mark.skipif(CURL is None, reason="curl is not installed")


class Parsed:
    """A response parsed from raw bytes."""

    def __init__(self) -> None:
        self.status = 0
        self.reason = b""
        self.headers: list[tuple[bytes, bytes]] = []
        self.body = b""
        self.complete = False

    def header(self, name: bytes) -> bytes | None:
        """The first value of header *name* (case-insensitive)."""
        for key, value in self.headers:
            if key.lower() == name.lower():
                return value
        return None

    def names(self) -> list[bytes]:
        """The header names in order, as sent."""
        return [name for name, _ in self.headers]


def parse_responses(data: bytes) -> list[Parsed]:
    """Parse every response in *data* (not for responses to HEAD)."""
    import httptools

    parsed: list[Parsed] = []

    class _Callbacks:
        def on_message_begin(self) -> None:
            parsed.append(Parsed())

        def on_status(self, reason: bytes) -> None:
            parsed[-1].reason += reason

        def on_header(self, name: bytes, value: bytes) -> None:
            parsed[-1].headers.append((name, value))

        def on_headers_complete(self) -> None:
            parsed[-1].status = parser.get_status_code()

        def on_body(self, body: bytes) -> None:
            parsed[-1].body += body

        def on_message_complete(self) -> None:
            parsed[-1].complete = True

    parser = httptools.HttpResponseParser(_Callbacks())
    parser.feed_data(data)
    return parsed


@pytest.fixture(scope="session")
def pki(tmp_path_factory: Any) -> Any:
    """The test PKI (see tests/e2e/pki.py), made once per session."""
    from tests.e2e.pki import make_pki

    return make_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture
def start_tls_origin() -> Any:
    """Start TLS origins presenting a given certificate; stopped after the test."""
    from twisted.protocols.tls import TLSMemoryBIOFactory

    from tests.e2e.pki import OriginTLS

    ports: list[Any] = []

    def start(cert: Any) -> Running:
        factory = OriginFactory()
        tls = TLSMemoryBIOFactory(OriginTLS(cert), False, factory)
        port = reactor.listenTCP(0, tls, interface="127.0.0.1")
        ports.append(port)
        return Running(port, factory)

    yield start
    for port in ports:
        pytest_twisted.blockon(port.stopListening())


@pytest.fixture
def start_https_proxy(start_proxy: Any, pki: Any) -> Any:
    """
    Start an intercepting proxy using the test proxy CA and trusting the
    test origin CA upstream; keyword arguments go to ProxyFactory.
    """
    import datetime

    from twistproxy._tls import UpstreamTLS
    from twistproxy.certs import CertificateStore

    async def start(**kwargs: Any) -> Running:
        kwargs.setdefault(
            "cert_store",
            CertificateStore(pki.proxy_ca,
                             now=lambda: datetime.datetime.now(datetime.UTC)),
        )
        kwargs.setdefault("upstream_tls", UpstreamTLS(ca_file=str(pki.origin_ca_pem)))
        return await start_proxy(**kwargs)

    return start


async def run_closed_stdin(executable: str, *args: str) -> tuple[bytes, int]:
    """
    Run *executable* with its standard input closed (``getProcessOutput``
    leaves it open, which keeps ``openssl s_client`` waiting); returns its
    output (stdout and stderr together) and exit code.
    """
    from twisted.internet.protocol import ProcessProtocol

    done: Deferred[tuple[bytes, int]] = Deferred()

    class Collect(ProcessProtocol):
        def __init__(self) -> None:
            self.output = b""

        def connectionMade(self) -> None:
            self.transport.closeStdin()

        def outReceived(self, data: bytes) -> None:
            self.output += data

        errReceived = outReceived

        def processEnded(self, reason: Any) -> None:
            done.callback((self.output, reason.value.exitCode or 0))

    process = reactor.spawnProcess(Collect(), executable, (executable, *args),
                                   env={"PATH": "/usr/bin:/bin"})
    try:
        return await done.addTimeout(20, reactor)
    except Exception:
        if process.pid is not None:
            process.signalProcess("KILL")  # don't let a hung child outlive the test
        raise


def rss() -> int:
    """This process's resident set size in bytes."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS")
