# -*- test-case-name: tests.test_memorytls -*-
"""
TLS on the standard library's ``ssl.MemoryBIO``, on both sides of the proxy.

:class:`ServerTLS` sits between an intercepted tunnel's TCP transport and
the channel that reads the requests inside it; :class:`ClientTLS` between a
TCP connection to an origin (or an ``https`` upstream proxy) and the
:class:`~twistproxy.client.ProxyClient` that speaks HTTP on it.  Both do
what Twisted's ``TLSMemoryBIOProtocol`` would, but drive an
``ssl.SSLObject`` instead of a pyOpenSSL connection: the record layer's
loops run in C, a read that finds no whole record ends on a length check
instead of a Python exception, and writes go down at once (no
``callLater(0)``).  Measured in ``bench/ANALYSIS.md``.

What the protocol above sees is a transport: ``write``, ``writeSequence``,
``loseConnection`` (after a ``close_notify``), ``abortConnection``,
``getPeer``/``getHost``, producer registration and pausing (passed on to
the TCP transport, whose buffer is the only one: ciphertext is written as
soon as it is made), and, once the handshake is done, the ALPN protocol and
the TLS version (:meth:`ServerTLS.alpn`, :meth:`ServerTLS.tls_version`);
on the server side the client's SNI name (:attr:`ServerTLS.server_name`).
What it writes before the handshake is done waits until it is.  An
``IHandshakeListener`` protocol hears when the handshake completes; a TLS
error (a refused certificate: ``ssl.SSLCertVerificationError``) ends the
connection with the ``ssl.SSLError`` as the reason.
"""

from __future__ import annotations

import ssl
from typing import Any
from weakref import ref

from twisted.internet.error import ConnectionDone, ConnectionLost
from twisted.internet.interfaces import (
    IConsumer,
    IHandshakeListener,
    IProtocol,
    IPushProducer,
    ISSLTransport,
    ITransport,
)
from twisted.internet.protocol import Protocol, connectionDone
from twisted.python.failure import Failure
from zope.interface import implementer

_READ = 65536
"""Plaintext bytes asked for per read of the record layer."""


@implementer(ITransport, ISSLTransport, IConsumer, IPushProducer)
class _MemoryTLS(Protocol):
    """
    What both sides share: one ``ssl.SSLObject`` over two ``ssl.MemoryBIO``
    between a TCP transport (below) and *inner* (above).  A subclass makes
    :attr:`_tls` and starts the handshake.

    :ivar handshake_done: Whether the handshake has completed.
    """

    handshake_done = False
    disconnecting = False
    disconnected = False
    _reason: Failure | None = None  # why TLS failed, for connectionLost
    _producer: Any = None
    _tls: ssl.SSLObject

    def __init__(self, inner: IProtocol) -> None:
        self._inner = inner
        self._incoming = ssl.MemoryBIO()
        self._outgoing = ssl.MemoryBIO()
        self._early: list[bytes] = []  # plaintext written before the handshake completed

    # -- the TCP side -------------------------------------------------------

    def connectionMade(self) -> None:
        """The TCP connection is ours: the inner protocol starts on top of it."""
        self._inner.makeConnection(self)

    def dataReceived(self, data: bytes) -> None:
        """Ciphertext from the peer: decrypt it and pass the plaintext up."""
        if self._reason is not None:  # TLS failed: the connection is closing
            return
        self._incoming.write(data)
        if not self.handshake_done:
            if not self._handshake():
                return
        tls = self._tls
        incoming = self._incoming
        while not self.disconnected:
            try:
                plain = tls.read(_READ)
            except ssl.SSLWantReadError:
                break
            except ssl.SSLZeroReturnError:  # its close_notify, answering ours
                return
            except ssl.SSLError as e:
                self._fail(e)
                return
            if not plain:  # the peer's close_notify
                self._flush()
                self.loseConnection()
                return
            self._inner.dataReceived(plain)  # looked up each time: a hand-over replaces it
            if not incoming.pending and not tls.pending():
                break
        if self._outgoing.pending:  # a key update, session tickets
            self._flush()

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        """The TCP connection is gone: so is the inner protocol's."""
        self.disconnected = True
        self._inner.connectionLost(self._reason or reason)

    def _handshake(self) -> bool:
        """Go on with the handshake; whether it is done (and the caller may read)."""
        try:
            self._tls.do_handshake()
        except ssl.SSLWantReadError:
            self._flush()
            return False
        except ssl.SSLError as e:
            self._fail(e)
            return False
        self.handshake_done = True
        self._flush()
        if IHandshakeListener.providedBy(self._inner):
            self._inner.handshakeCompleted()
        early, self._early = self._early, []
        if early and not self.disconnected:
            self._write(b"".join(early))
        if self.disconnecting and not self.disconnected:
            self._shutdown()
        return not self.disconnected

    def _fail(self, error: ssl.SSLError) -> None:
        """TLS failed: send the alert OpenSSL made, then close with *error* as the reason."""
        self._reason = Failure(error)
        self._flush()
        self.disconnecting = True
        self.transport.loseConnection()  # type: ignore[union-attr]

    def _flush(self) -> None:
        data = self._outgoing.read()
        if data:
            self.transport.write(data)  # type: ignore[union-attr]

    # -- the transport the inner protocol writes to ---------------------------

    def write(self, data: bytes) -> None:
        """Encrypt *data* and send it (after the handshake, if it is still going on)."""
        if self.disconnecting or self.disconnected or not data:
            return
        if not self.handshake_done:
            self._early.append(bytes(data))
            return
        self._write(data)

    def _write(self, data: bytes) -> None:
        try:
            self._tls.write(data)
        except ssl.SSLError as e:
            self._fail(e)
            return
        self.transport.write(self._outgoing.read())  # type: ignore[union-attr]

    def writeSequence(self, data: Any) -> None:
        """:meth:`write` of the joined pieces."""
        self.write(b"".join(data))

    def loseConnection(self) -> None:
        """
        Close TLS (``close_notify``), then the connection once the writes
        are out; what is written after is dropped.  (Like a TCP transport,
        and unlike Twisted's TLS, it does not wait for a registered producer
        to unregister: the channel registers itself for good.)
        """
        if self.disconnecting or self.disconnected:
            return
        self.disconnecting = True
        if self.handshake_done:
            self._shutdown()
        elif not self._early:
            self.transport.loseConnection()  # type: ignore[union-attr]
        # else: the handshake's end writes what waits, then shuts down

    def _shutdown(self) -> None:
        try:
            self._tls.unwrap()
        except ssl.SSLError:  # the peer's close_notify is not here yet (or TLS broke)
            pass
        self._flush()
        self.transport.loseConnection()  # type: ignore[union-attr]

    def abortConnection(self) -> None:
        """Close the connection at once, without ``close_notify``."""
        self.disconnecting = True
        self.transport.abortConnection()  # type: ignore[union-attr]

    def getPeer(self) -> Any:
        """The peer's address."""
        return self.transport.getPeer()  # type: ignore[union-attr]

    def getHost(self) -> Any:
        """The proxy's address on this connection."""
        return self.transport.getHost()  # type: ignore[union-attr]

    def getHandle(self) -> ssl.SSLObject:
        """The ``ssl.SSLObject`` of this connection."""
        return self._tls

    def alpn(self) -> bytes | None:
        """The application protocol agreed on with ALPN, or ``None``."""
        chosen = self._tls.selected_alpn_protocol()
        return chosen.encode("ascii") if chosen else None

    def tls_version(self) -> str | None:
        """The TLS version agreed on (``"TLSv1.3"``), or ``None`` before the handshake."""
        return self._tls.version()

    def __getattr__(self, name: str) -> Any:
        # What this transport does not have, the TCP transport may
        # (setTcpNoDelay, ...), as with Twisted's protocol wrappers.
        if name.startswith("__") or name == "transport":
            raise AttributeError(name)
        return getattr(self.transport, name)

    # -- producers: the TCP transport's buffer is the only one ------------------

    @property
    def producer(self) -> Any:
        """The producer registered through this transport, or ``None``."""
        return self._producer

    def registerProducer(self, producer: Any, streaming: bool) -> None:
        """Register *producer* with the TCP transport, whose buffer it fills."""
        self._producer = producer
        self.transport.registerProducer(producer, streaming)  # type: ignore[union-attr]

    def unregisterProducer(self) -> None:
        """Unregister the producer from the TCP transport."""
        self._producer = None
        if self.transport is not None and not self.disconnected:
            self.transport.unregisterProducer()  # type: ignore[attr-defined]

    def pauseProducing(self) -> None:
        """Stop reading from the peer."""
        self.transport.pauseProducing()  # type: ignore[union-attr]

    def resumeProducing(self) -> None:
        """Read from the peer again."""
        self.transport.resumeProducing()  # type: ignore[union-attr]

    def stopProducing(self) -> None:
        """Stop for good: close the connection."""
        self.loseConnection()


class ServerTLS(_MemoryTLS):
    """
    The server side of TLS with an intercepted client, around *inner*.

    :param context: The ``ssl.SSLContext`` to start the handshake with (its
        ``sni_callback`` may switch the connection to another one, and
        should call :func:`note_server_name` so that the name is known
        here, as :class:`~twistproxy._tls.ServerContexts`' does).
    :param inner: The protocol that reads and writes the plaintext.
    :ivar server_name: The name the client asked for (SNI), once the
        handshake has read it, or ``None``.
    """

    server_name: str | None = None

    def __init__(self, context: ssl.SSLContext, inner: IProtocol) -> None:
        super().__init__(inner)
        self._tls = context.wrap_bio(self._incoming, self._outgoing, server_side=True)
        self._tls.twistproxy_tls = ref(self)  # type: ignore[attr-defined]  # for the SNI callback

    def getPeerCertificate(self) -> None:
        """``ISSLTransport``: clients present no certificate here."""
        return None


class ClientTLS(_MemoryTLS):
    """
    The client side of TLS with a server (an origin, an ``https`` upstream
    proxy), around *inner*: the handshake starts as soon as the TCP
    connection is made (the client speaks first).

    :param context: A client ``ssl.SSLContext``; whether and how the
        server's certificate and name are verified is its business
        (:class:`~twistproxy._tls.UpstreamTLS`).
    :param server_hostname: The server's name, sent as SNI (not for an IP
        address: the standard library sends none then) and, where the
        context checks names, the name or address the certificate must be
        valid for.
    :param inner: The protocol that reads and writes the plaintext.
    """

    def __init__(self, context: ssl.SSLContext, server_hostname: str, inner: IProtocol) -> None:
        super().__init__(inner)
        self._tls = context.wrap_bio(
            self._incoming, self._outgoing, server_side=False, server_hostname=server_hostname
        )

    def connectionMade(self) -> None:
        """Start the inner protocol (its writes wait) and send the ClientHello."""
        self._inner.makeConnection(self)
        # Closed from makeConnection: the handshake runs only to send what
        # was written first (see loseConnection).
        if not self.disconnected and (self._early or not self.disconnecting):
            self._handshake()

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        """
        The TCP connection is gone: so is the inner protocol's.  A server
        that closed it without TLS's ``close_notify`` (and not in answer to
        this side's) may have had what it sent cut short, a body delimited
        by the close say: the reason is then ``ConnectionLost``, not
        ``ConnectionDone``, as with Twisted's TLS.
        """
        if not self.disconnecting and reason.check(ConnectionDone):
            reason = Failure(ConnectionLost("the server closed the connection without TLS's "
                                            "close_notify"))
        super().connectionLost(reason)

    @property
    def inner(self) -> IProtocol:
        """The protocol above."""
        return self._inner

    def getPeerCertificate(self) -> bytes | None:
        """``ISSLTransport``: the server's certificate (DER), once the handshake is done."""
        return self._tls.getpeercert(binary_form=True)


def note_server_name(tls: ssl.SSLObject, name: str | None) -> None:
    """Record the SNI *name* the client sent on *tls*'s :class:`ServerTLS`."""
    owner = getattr(tls, "twistproxy_tls", lambda: None)()
    if owner is not None:
        owner.server_name = name
