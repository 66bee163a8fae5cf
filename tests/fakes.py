"""
Fakes for unit tests: an endpoint factory whose connections are in-memory
``StringTransport`` pairs the test drives by hand.
"""

from __future__ import annotations

import itertools
import os
import shutil
import tempfile
from collections.abc import Callable
from typing import Any

import attrs
from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.interfaces import IHandshakeListener, IStreamClientEndpoint
from twisted.internet.protocol import Factory, Protocol, connectionDone
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.protocols.tls import TLSMemoryBIOFactory
from twisted.python.failure import Failure
from twisted.test import iosim
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import implementer

from twistproxy.hooks import Addon


class ReadsBodies(Addon):
    """
    An addon whose ``request`` and ``response`` hooks read bodies whole
    (and do nothing): with it loaded, bodies under the limit are buffered
    rather than streamed.
    """

    def request(self, flow: Any) -> None:
        """Nothing; its being here buffers request bodies."""

    def response(self, flow: Any) -> None:
        """Nothing; its being here buffers response bodies."""


@implementer(IStreamClientEndpoint)
class FakeEndpoint:
    """Connects a factory's protocol to a fresh ``StringTransport``."""

    def __init__(self, owner: FakeEndpointFactory, key: tuple[str, str, int]) -> None:
        self.owner = owner
        self.key = key

    def connect(self, factory: Any) -> Deferred[Any]:
        """Build the protocol and connect it to a transport at once (or fail)."""
        if self.owner.fail_with is not None:
            return fail(self.owner.fail_with)
        protocol = factory.buildProtocol(IPv4Address("TCP", self.key[1], self.key[2]))
        transport = StringTransport(
            hostAddress=IPv4Address("TCP", "127.0.0.1", 40000),
            peerAddress=IPv4Address("TCP", "127.0.0.1", self.key[2]),
        )
        protocol.makeConnection(transport)
        self.owner.connections.append((protocol, transport))
        return succeed(protocol)


class FakeEndpointFactory:
    """
    An endpoint factory recording what was asked for and every connection.

    :ivar requested: ``(scheme, host, port)`` per endpoint asked for.
    :ivar connections: ``(protocol, transport)`` per connection made.
    :ivar fail_with: When set, every connection attempt fails with it.
    """

    fail_with: Exception | None = None

    def __init__(self) -> None:
        self.requested: list[tuple[str, str, int]] = []
        self.connections: list[tuple[Any, StringTransport]] = []

    def __call__(self, scheme: str, host: str, port: int) -> FakeEndpoint:
        self.requested.append((scheme, host, port))
        return FakeEndpoint(self, (scheme, host, port))


# A recording protocol, and real TLS connections joined in memory.  This is
# the only test module that imports twisted.test.iosim (Twisted's private test
# helpers, STYLE C3): if it moves, only this file changes.


@implementer(IHandshakeListener)
class Recorder(Protocol):
    """
    An application protocol that keeps what it is told: the bytes it
    receives, the end of a TLS handshake and why its connection ended.

    :param greeting: Bytes to write as soon as it is connected (over TLS:
        before the handshake, so they wait in the TLS layer's buffer).
    :ivar received: Each ``dataReceived`` call's bytes, in order.
    :ivar handshake_done: Whether a TLS handshake completed under it.
    :ivar reason: Why the connection ended, once it has.
    :ivar handle: The transport's ``getHandle()`` (the ``SSL.Connection``)
        when the connection ended: a TLS transport forgets it afterwards.
    """

    transport: Any

    def __init__(self, greeting: bytes = b"") -> None:
        self.greeting = greeting
        self.received: list[bytes] = []
        self.handshake_done = False
        self.reason: Failure | None = None
        self.handle: Any = None

    def connectionMade(self) -> None:
        """Send the greeting, if any."""
        if self.greeting:
            self.transport.write(self.greeting)

    def data(self) -> bytes:
        """All the bytes received so far."""
        return b"".join(self.received)

    def dataReceived(self, data: bytes) -> None:
        """Keep *data*."""
        self.received.append(data)

    def handshakeCompleted(self) -> None:
        """Note that the TLS handshake is done."""
        self.handshake_done = True

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        """Keep *reason* and the transport's TLS handle."""
        self.reason = reason
        self.handle = getattr(self.transport, "getHandle", lambda: None)()


@attrs.frozen
class TLSConnection:
    """
    Two TLS endpoints joined in memory by :func:`connect_tls`.

    :ivar client: The client's TLS layer (``getHandle()`` is its
        ``SSL.Connection``, or its ``ssl.SSLObject`` for what *client_tls*
        made).
    :ivar server: The server's TLS layer.
    :ivar client_app: The protocol above the client's TLS.
    :ivar server_app: The protocol above the server's TLS.
    :ivar pump: Moves bytes between the two; ``pump.flush()`` until quiet.
    """

    client: Any  # a TLSMemoryBIOProtocol, or what client_tls made
    server: Any  # a TLSMemoryBIOProtocol, or what server_tls made
    client_app: Recorder
    server_app: Recorder
    pump: Any


def connect_tls(
    client_creator: Any = None,
    server_creator: Any = None,
    *,
    server_tls: Callable[[Recorder], Any] | None = None,
    client_tls: Callable[[Recorder], Any] | None = None,
    client_greeting: bytes = b"",
    clock: Clock | None = None,
) -> TLSConnection:
    """
    Join a TLS client made by *client_creator* to a TLS server made by
    *server_creator* (both connection creators, as ``TLSMemoryBIOFactory``
    takes them) over in-memory transports, and pump until the handshake and
    whatever follows it are done: a real handshake, no sockets.

    :param server_tls: Instead of *server_creator*: makes the server's TLS
        layer around the server's application protocol (a
        :class:`~twistproxy._memorytls.ServerTLS`, say).
    :param client_tls: Instead of *client_creator*: makes the client's TLS
        layer around the client's application protocol (a
        :class:`~twistproxy._memorytls.ClientTLS`, say).
    :param client_greeting: Bytes the client's application writes as soon
        as it is connected, before the handshake.
    """
    clock = clock if clock is not None else Clock()
    client_app, server_app = Recorder(client_greeting), Recorder()
    if client_tls is None:
        client_factory = TLSMemoryBIOFactory(client_creator, True, Factory(), clock=clock)
        client = client_factory.protocol(client_factory, client_app)
    else:
        client = client_tls(client_app)
    if server_tls is None:
        server_factory = TLSMemoryBIOFactory(server_creator, False, Factory(), clock=clock)
        server = server_factory.protocol(server_factory, server_app)
    else:
        server = server_tls(server_app)
    _, _, pump = iosim.connectedServerAndClient(lambda: server, lambda: client, clock=clock)
    return TLSConnection(client, server, client_app, server_app, pump)


def write_temp_file(case: SynchronousTestCase, data: bytes, name: str = "users") -> str:
    """A file *name* holding *data* in a private directory removed after *case*."""
    directory = tempfile.mkdtemp(prefix="twistproxy-test-")
    case.addCleanup(shutil.rmtree, directory, True)
    path = os.path.join(directory, name)
    with open(path, "wb") as f:
        f.write(data)
    return path


class TempDirTestCase(SynchronousTestCase):
    """
    A test case whose :meth:`mktemp` paths are under a private temporary
    directory removed after the test, not under the current directory
    (pytest does not run tests in trial's ``_trial_temp``).
    """

    def mktemp(self) -> str:
        """
        A new path, not yet created, under this test's temporary directory.
        """
        if not hasattr(self, "_temp_base"):
            self._temp_base = tempfile.mkdtemp(prefix="twistproxy-test-")
            self._temp_names = itertools.count()
            self.addCleanup(shutil.rmtree, self._temp_base, True)
        return os.path.join(self._temp_base, str(next(self._temp_names)))
