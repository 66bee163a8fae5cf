"""
Tests for :mod:`twistproxy._twisted_compat`: every private Twisted name
twistproxy relies on is still there, and nothing else uses one.
"""

from __future__ import annotations

import ast
import contextlib
import socket
from pathlib import Path

from twisted.internet import tcp
from twisted.internet.epollreactor import EPollReactor
from twisted.internet.protocol import Protocol
from twisted.internet.testing import MemoryReactor, StringTransport
from twisted.python.reflect import namedAny
from twisted.trial.unittest import SynchronousTestCase
from twisted.web import http

import twisted
from twistproxy import _twisted_compat
from twistproxy._twisted_compat import (
    PRIVATE_NAMES,
    dispatch_directly,
    send_eagerly,
    take_buffered,
)

PACKAGE = Path(_twisted_compat.__file__).parent


class PrivateNamesTests(SynchronousTestCase):
    """
    The private names listed in :data:`PRIVATE_NAMES` exist in the installed
    Twisted, and only ``_twisted_compat.py`` uses Twisted privates.
    """

    def test_every_name_exists(self) -> None:
        """
        Each listed name is found on its owner (on a connected channel for
        instance attributes); a release that renamed one fails here, naming it.
        """
        channel = http.HTTPChannel()
        channel.makeConnection(StringTransport())
        decoder = http._ChunkedTransferDecoder(lambda data: None, lambda rest: None)
        ours, theirs = socket.socketpair()
        self.addCleanup(ours.close)
        self.addCleanup(theirs.close)
        connection = tcp.Connection(ours, None)
        reactor = EPollReactor()
        self.addCleanup(reactor._poller.close)
        instances = {http.HTTPChannel: channel, http._ChunkedTransferDecoder: decoder,
                     tcp.Connection: connection, EPollReactor: reactor}
        missing = []
        for owner, name in PRIVATE_NAMES:
            target = namedAny(owner)
            found = hasattr(target, name) or (
                target in instances and hasattr(instances[target], name)
            )
            if not found:
                missing.append(f"{owner}.{name}")
        self.assertEqual(
            missing, [],
            f"Twisted {twisted.__version__} no longer has {', '.join(missing)}: "
            "twistproxy/_twisted_compat.py must follow (and setup.cfg's Twisted range)",
        )

    def test_buffer_is_a_list_of_bytes(self) -> None:
        """
        ``HTTPChannel._dataBuffer`` holds the bytes read behind a request as a
        list, which :func:`take_buffered` empties.
        """
        channel = http.HTTPChannel()
        channel.makeConnection(StringTransport())
        self.assertEqual(channel._dataBuffer, [])
        channel._dataBuffer.append(b"tls")
        self.assertEqual(take_buffered(channel), b"tls")
        self.assertEqual(channel._dataBuffer, [])

    def test_no_other_module_uses_twisted_privates(self) -> None:
        """
        No twistproxy module but ``_twisted_compat.py`` imports a private
        Twisted name or touches one of :data:`PRIVATE_NAMES` as an attribute.
        """
        names = {name for _, name in PRIVATE_NAMES}
        offenders = []
        for path in sorted(PACKAGE.rglob("*.py")):
            if path.name == "_twisted_compat.py":
                continue
            tree = ast.parse(path.read_text(), str(path))
            for node in ast.walk(tree):
                if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("twisted"):
                    offenders += [f"{path.name}: {a.name}" for a in node.names
                                  if a.name.startswith("_") and a.name != "__future__"]
                elif isinstance(node, ast.Attribute) and node.attr in names:
                    offenders.append(f"{path.name}:{node.lineno}: .{node.attr}")
                elif isinstance(node, ast.FunctionDef) and node.name in names:
                    offenders.append(f"{path.name}:{node.lineno}: def {node.name}")
        self.assertEqual(offenders, [])


class SendEagerlyTests(SynchronousTestCase):
    """
    :func:`send_eagerly`: a TCP transport sends a write at once when nothing
    is queued, and otherwise queues it as Twisted does, in order.
    """

    def setUp(self) -> None:
        self.ours, self.theirs = socket.socketpair()
        self.addCleanup(self.ours.close)
        self.addCleanup(self.theirs.close)
        self.ours.setblocking(False)
        self.theirs.setblocking(False)
        self.reactor = MemoryReactor()
        self.transport = tcp.Connection(self.ours, Protocol(), self.reactor)
        self.transport.connected = 1
        send_eagerly(self.transport)

    def received(self) -> bytes:
        data = b""
        with contextlib.suppress(BlockingIOError):
            while chunk := self.theirs.recv(1 << 20):
                data += chunk
        return data

    def test_idle_transport_sends_at_once(self) -> None:
        """A write and a sequence reach the peer without a reactor turn."""
        self.transport.write(b"head ")
        self.transport.writeSequence([b"and ", b"body"])
        self.assertEqual(self.received(), b"head and body")
        self.assertNotIn(self.transport, self.reactor.getWriters())

    def test_queued_data_keeps_its_place(self) -> None:
        """Behind queued bytes a write is queued too: the order holds."""
        self.transport._tempDataBuffer.append(b"first ")
        self.transport._tempDataLen += 6
        self.transport.write(b"second")
        self.assertEqual(self.received(), b"")
        self.assertIn(self.transport, self.reactor.getWriters())
        self.transport.doWrite()
        self.assertEqual(self.received(), b"first second")

    def test_a_full_socket_queues_the_rest(self) -> None:
        """What the socket does not take is queued and sent when writable."""
        self.ours.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
        self.theirs.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        data = bytes(range(256)) * 512  # 128 KiB: more than the socket takes at once
        self.transport.write(data)
        self.assertIn(self.transport, self.reactor.getWriters())
        got = self.received()
        for _ in range(100):
            if len(got) == len(data):
                break
            self.transport.doWrite()
            got += self.received()
        self.assertEqual(got, data)

    def test_closing_or_tls_transport_queues(self) -> None:
        """After loseConnection, or once TLS started, writes go Twisted's way."""
        tls_layer = StringTransport()  # what Twisted's write hands the bytes to
        self.transport.protocol = tls_layer
        self.transport.TLS = True
        self.transport.write(b"x")
        self.assertEqual((self.received(), tls_layer.value()), (b"", b"x"))
        self.transport.TLS = False
        self.transport.disconnecting = True
        self.transport.write(b"y")
        self.assertEqual(self.received(), b"")

    def test_other_transports_are_left_alone(self) -> None:
        """A transport that is not TCP keeps its own write."""
        transport = StringTransport()
        send_eagerly(transport)
        self.assertNotIn("write", vars(transport))


class _Reader:
    """A readable end of a socket pair for a reactor: records reads, or fails."""

    def __init__(self, sock: socket.socket, fail: bool = False) -> None:
        self.sock, self.fail = sock, fail
        self.read: list[bytes] = []
        self.lost: list[object] = []

    def fileno(self) -> int:
        return self.sock.fileno()

    def doRead(self) -> None:
        if self.fail:
            raise RuntimeError("broken reader")
        self.read.append(self.sock.recv(100))

    def connectionLost(self, reason: object) -> None:
        self.lost.append(reason)

    def logPrefix(self) -> str:
        return "_Reader"


class DispatchDirectlyTests(SynchronousTestCase):
    """
    :func:`dispatch_directly`: an epoll reactor's ready connections are
    handed to its event handler without the legacy log context.
    """

    def setUp(self) -> None:
        self.reactor = EPollReactor()
        self.addCleanup(self.reactor._poller.close)
        self.assertTrue(dispatch_directly(self.reactor))

    def _pair(self) -> tuple[socket.socket, socket.socket]:
        ours, theirs = socket.socketpair()
        self.addCleanup(ours.close)
        self.addCleanup(theirs.close)
        ours.setblocking(False)
        return ours, theirs

    def test_ready_connection_reads(self) -> None:
        """A readable connection is read in the next iteration; an idle one is not."""
        ours, theirs = self._pair()
        idle, _ = self._pair()
        reader, other = _Reader(ours), _Reader(idle)
        self.reactor.addReader(reader)
        self.reactor.addReader(other)
        theirs.send(b"ping")
        self.reactor.doIteration(0)
        self.assertEqual((reader.read, other.read), ([b"ping"], []))
        self.reactor.removeAll()

    def test_failing_read_is_logged_and_disconnects(self) -> None:
        """What a read raises is logged, and the connection is lost, as before."""
        ours, theirs = self._pair()
        reader = _Reader(ours, fail=True)
        self.reactor.addReader(reader)
        theirs.send(b"ping")
        self.reactor.doIteration(0)
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)
        self.assertEqual(len(reader.lost), 1)
        self.assertNotIn(reader, self.reactor.getReaders())

    def test_other_reactors_left_alone(self) -> None:
        """A reactor that is not epoll's keeps its own dispatch."""
        other = MemoryReactor()
        self.assertFalse(dispatch_directly(other))
        self.assertNotIn("doIteration", vars(other))
