# -*- test-case-name: tests.test_upstream_proxy -*-
"""
Upstream mode (``upstream:http[s]://HOST[:PORT]``): a regular proxy whose
connections all go through another proxy.

A listener in upstream mode has an :class:`UpstreamPool`, a
:class:`~twistproxy.pool.ConnectionPool` whose connections lead through
the :class:`UpstreamProxy`, so that the rest of the proxy (the exchange,
``CONNECT`` tunnels, interception, replay) works as in regular mode:

- a plain ``http`` request (absolute form from the client, or replayed)
  goes to the upstream proxy in absolute form, with its
  ``Proxy-Authorization``, on a pooled keep-alive connection to the proxy
  (a :class:`~twistproxy.client.PoolKey` with ``proxy``, the upstream
  proxy's own address: every origin's requests share those connections);
- every other connection (a ``CONNECT`` tunnel's far end, the connections
  for the requests inside an intercepted tunnel, ``https`` replays) is a
  :class:`TunnelEndpoint`: a ``CONNECT host:port`` to the upstream proxy,
  whose transport, after the ``2xx``, is the new connection's, TLS to the
  origin (verified as usual) started on it by the pool where needed.

``upstream:https://`` speaks TLS to the upstream proxy itself, verified as
an origin's would be (``--upstream-ca``, ``--insecure``).  The records of
those connections (``flow.server_conn``) name the upstream proxy as their
``address``: that is where the proxy connected; the origin is the
request's.  A ``CONNECT`` the upstream proxy refuses fails with
:class:`~twistproxy.errors.UpstreamProxyRefused`, which answers the client
with the upstream's own status.
"""

from __future__ import annotations

import base64
import re
import ssl
from collections.abc import Sequence
from http import HTTPStatus
from typing import Any

import attrs
from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.interfaces import (
    IHalfCloseableProtocol,
    IProtocol,
    IProtocolFactory,
    IReactorTime,
    IStreamClientEndpoint,
)
from twisted.internet.protocol import Factory, Protocol, connectionDone
from twisted.python.failure import Failure
from zope.interface import implementer

from twistproxy._target import authority_for
from twistproxy._tls import describe_tls_failure
from twistproxy.client import PoolKey
from twistproxy.errors import (
    TwistProxyError,
    UpstreamConnectionLost,
    UpstreamProtocolError,
    UpstreamProxyRefused,
    UpstreamTimeout,
    UpstreamTLSFailed,
    upstream_error,
)
from twistproxy.pool import ConnectionPool, EndpointFactory

_STATUS_LINE = re.compile(rb"HTTP/1\.[01] ([1-9][0-9][0-9])(?: ([\t\x20-\x7e]*))?\r?\n", re.I)
_MAX_ANSWER = 64 * 1024  # bytes of a CONNECT's answer head


@attrs.frozen(slots=True)
class UpstreamProxy:
    """
    The proxy an upstream-mode listener sends everything through.

    :ivar scheme: ``http``, or ``https`` for TLS to the proxy itself.
    :ivar host: Where the proxy is.
    :ivar port: Where the proxy is.
    :ivar authorization: The ``Proxy-Authorization`` value sent to it
        (:func:`basic_authorization`), or ``None``.
    """

    scheme: str
    host: str
    port: int
    authorization: bytes | None = attrs.field(default=None, repr=False)

    @classmethod
    def from_mode(cls, mode: Any, auth: str | None = None) -> UpstreamProxy:
        """
        The upstream proxy of an ``upstream`` :class:`~twistproxy.modes.Mode`,
        with the credentials *auth* (``USER:PASS``), if any.

        :raises ValueError: if *auth* is not ``USER:PASS``.
        """
        assert mode.kind == "upstream" and mode.scheme is not None
        assert mode.host is not None and mode.port is not None
        authorization = basic_authorization(auth) if auth is not None else None
        return cls(mode.scheme, mode.host, mode.port, authorization)

    @property
    def address(self) -> tuple[str, int]:
        """The proxy's ``(host, port)``, which its connections' records name."""
        return (self.host, self.port)

    def __str__(self) -> str:
        """The proxy as a URL, ``http://proxy.example:3128``."""
        return (self.scheme + "://"
                + authority_for(self.scheme, self.host, self.port).decode("ascii"))

    @property
    def fields(self) -> list[tuple[bytes, bytes]]:
        """The header fields every request to the proxy carries."""
        if self.authorization is None:
            return []
        return [(b"Proxy-Authorization", self.authorization)]


def basic_authorization(credentials: str) -> bytes:
    """
    The ``Proxy-Authorization`` value for *credentials*, ``USER:PASS``
    (Basic, UTF-8).

    :raises ValueError: if *credentials* is not ``USER:PASS``.
    """
    user, sep, _ = credentials.partition(":")
    if not sep or not user:
        raise ValueError("must be USER:PASS")
    if any(ord(c) < 0x20 or ord(c) == 0x7F for c in credentials):
        raise ValueError("must not hold control characters")
    return b"Basic " + base64.b64encode(credentials.encode("utf-8"))


def check_upstream_auth(auth: str | None, modes: Sequence[Any]) -> None:
    """
    Check ``--upstream-auth`` *auth* against the listeners' *modes*.

    :raises ValueError: for *auth* without an ``upstream`` mode, or not
        ``USER:PASS``.
    """
    if auth is None:
        return
    if not any(mode.kind == "upstream" for mode in modes):
        raise ValueError("needs a --mode upstream:...")
    basic_authorization(auth)


def connect_request(host: str, port: int, fields: list[tuple[bytes, bytes]]) -> bytes:
    """The ``CONNECT`` request for *host*:*port*, with *fields* (credentials)."""
    authority = authority_for("", host, port)
    lines = [b"CONNECT ", authority, b" HTTP/1.1\r\nHost: ", authority, b"\r\n"]
    for name, value in fields:
        lines += (name, b": ", value, b"\r\n")
    lines.append(b"\r\n")
    return b"".join(lines)


class UpstreamPool(ConnectionPool):
    """
    The connection pool of an upstream-mode listener: every connection
    goes through *proxy* (see the module's description).

    :param proxy: The upstream proxy.
    :param endpoint_factory: Makes the TCP endpoint to the upstream proxy
        (``hostname_endpoints`` in production).
    :param connect_timeout: Seconds the upstream proxy may take to answer a
        ``CONNECT`` (then 504).
    :param kwargs: The rest of :class:`~twistproxy.pool.ConnectionPool`'s
        parameters; *tls* verifies the origins and an ``https`` proxy.
    """

    def __init__(
        self,
        proxy: UpstreamProxy,
        *,
        reactor: IReactorTime,
        endpoint_factory: EndpointFactory,
        connect_timeout: float = 30.0,
        **kwargs: Any,
    ) -> None:
        super().__init__(reactor=reactor, endpoint_factory=self._tunnel, **kwargs)
        self.proxy: UpstreamProxy = proxy
        self._direct = endpoint_factory
        self._connect_timeout = connect_timeout

    def key_for(
        self, scheme: str, host: str, port: int, server_name: str | None = None,
        *, tunnel: bool = False,
    ) -> PoolKey:
        """
        A connection to the upstream proxy for a plain ``http`` request that
        did not come through a tunnel; a tunnel's otherwise.
        """
        if scheme != "http" or tunnel:
            return PoolKey(scheme, host, port, server_name)
        proxy = self.proxy
        name = proxy.host if proxy.scheme == "https" else None
        return PoolKey(proxy.scheme, proxy.host, proxy.port, name, proxy=True)

    def proxy_fields(self, key: PoolKey) -> list[tuple[bytes, bytes]] | None:
        """The upstream proxy's fields for a *key* to it; ``None`` for a tunnel's."""
        return self.proxy.fields if key.proxy else None

    def endpoint_for(self, key: PoolKey) -> IStreamClientEndpoint:
        """To the upstream proxy itself for a *key* to it; a tunnel through it otherwise."""
        if key.proxy:
            return _Named(self._direct(key.scheme, key.host, key.port), self.proxy)
        return self._tunnel(key.scheme, key.host, key.port)

    def _tunnel(self, scheme: str, host: str, port: int) -> IStreamClientEndpoint:
        """The pool's endpoint factory: a ``CONNECT`` tunnel to *host*:*port*."""
        proxy = self.proxy
        endpoint: Any = self._direct("tcp", proxy.host, proxy.port)
        if proxy.scheme == "https":
            endpoint = self.tls.wrap(endpoint, proxy.host)
        return TunnelEndpoint(
            _Named(endpoint, proxy), proxy, host, port,
            clock=self.clock, timeout=self._connect_timeout,
        )


@implementer(IStreamClientEndpoint)
class _Named:
    """An endpoint to the upstream proxy whose failures say so."""

    def __init__(self, endpoint: IStreamClientEndpoint, proxy: UpstreamProxy) -> None:
        self._endpoint = endpoint
        self._proxy = proxy

    def connect(self, factory: IProtocolFactory) -> Deferred[IProtocol]:
        """Connect, naming the upstream proxy in a failure."""
        d = self._endpoint.connect(factory)
        d.addErrback(upstream_error)
        d.addErrback(self._named)
        return d

    def _named(self, reason: Failure) -> Failure:
        error = reason.value
        if isinstance(error, TwistProxyError) and not isinstance(error, UpstreamProxyRefused):
            return Failure(type(error)(f"upstream proxy {self._proxy}: {error}"))
        return reason


@implementer(IStreamClientEndpoint)
class TunnelEndpoint:
    """
    Connects to *host*:*port* through an upstream proxy: a ``CONNECT`` on a
    connection made by *endpoint* (to the proxy), and after its ``2xx`` the
    connection is the protocol's, as if *endpoint* had reached the origin.

    The Deferred :meth:`connect` returns fails with
    :class:`~twistproxy.errors.UpstreamProxyRefused` for any other answer,
    :class:`~twistproxy.errors.UpstreamTimeout` when none comes in
    *timeout* seconds, and as the connection to the proxy failed
    otherwise; cancelling it closes the connection.
    """

    def __init__(
        self, endpoint: IStreamClientEndpoint, proxy: UpstreamProxy, host: str, port: int,
        *, clock: IReactorTime, timeout: float,
    ) -> None:
        self._endpoint = endpoint
        self._proxy = proxy
        self._host = host
        self._port = port
        self._clock = clock
        self._timeout = timeout

    def connect(self, protocolFactory: IProtocolFactory) -> Deferred[IProtocol]:  # noqa: N803
        """``IStreamClientEndpoint``: the tunnel's protocol, once the proxy said yes."""
        proxy = self._proxy
        handshake = _Handshake(
            protocolFactory, proxy, self._host, self._port,
            clock=self._clock, timeout=self._timeout,
        )
        handshake.connecting = d = self._endpoint.connect(_Once(handshake))
        d.addCallbacks(handshake.reached, handshake.not_reached)
        return handshake.result


class _Once(Factory):
    """Builds the one protocol it was made with."""

    noisy = False

    def __init__(self, protocol: Protocol) -> None:
        self._protocol = protocol

    def buildProtocol(self, addr: Any) -> Protocol:
        """The protocol given."""
        return self._protocol


@implementer(IHalfCloseableProtocol)
class _Handshake(Protocol):
    """
    One ``CONNECT`` through the upstream proxy: sends it, reads the answer's
    head, then hands the connection to the protocol the tunnel is for and
    passes everything on to it (a half-close too, where it takes one).  TLS
    with the origin sits above it, in the tunnel's protocol
    (:class:`~twistproxy._memorytls.ClientTLS`); TLS with an ``https``
    upstream proxy below it.
    """

    transport: Any = None
    connecting: Deferred[Any] | None = None
    _inner: IProtocol | None = None
    _over = False  # the result fired (or was cancelled)
    _timer: Any = None

    def __init__(
        self, factory: IProtocolFactory, proxy: UpstreamProxy, host: str, port: int,
        *, clock: IReactorTime, timeout: float,
    ) -> None:
        self._factory = factory
        self._proxy = proxy
        self._target = authority_for("", host, port).decode("ascii", "replace")
        self._request = connect_request(host, port, proxy.fields)
        self._clock = clock
        self._timeout = timeout
        self._answer = b""
        self.result: Deferred[IProtocol] = Deferred(self._cancel)

    # -- the connection to the proxy -------------------------------------------

    def reached(self, _: object) -> None:
        """The connection to the proxy is made (the CONNECT is on its way)."""
        self.connecting = None

    def not_reached(self, reason: Failure) -> None:
        """The connection to the proxy failed (its endpoint named the proxy)."""
        self.connecting = None
        if not self._over:
            self._over = True
            self.result.errback(reason)

    def connectionMade(self) -> None:
        """Ask for the tunnel, and give the proxy *timeout* seconds to answer."""
        self.transport.write(self._request)
        self._timer = self._clock.callLater(self._timeout, self._silent)

    # -- the answer ---------------------------------------------------------------

    def dataReceived(self, data: bytes) -> None:
        """The answer's head, then (the tunnel open) the protocol's bytes."""
        inner = self._inner
        if inner is not None:
            inner.dataReceived(data)
            return
        if self._over:
            return
        self._answer += data
        end = self._answer.find(b"\r\n\r\n")
        if end < 0:
            if len(self._answer) > _MAX_ANSWER:
                self._fail(UpstreamProtocolError(
                    f"upstream proxy {self._proxy}: its answer to CONNECT is too large"))
            return
        head, rest = self._answer[:end + 2], self._answer[end + 4:]
        self._answer = b""
        match = _STATUS_LINE.match(head)
        if match is None:
            self._fail(UpstreamProtocolError(
                f"upstream proxy {self._proxy} answered CONNECT with {head[:40]!r}, not HTTP"))
            return
        status = int(match.group(1))
        if status // 100 != 2:
            phrase = (match.group(2) or b"").strip() or _phrase(status)
            self._fail(UpstreamProxyRefused(
                f"upstream proxy {self._proxy} refused CONNECT {self._target}: "
                f"{status} {phrase.decode('ascii')}", status, phrase))
            return
        self._open(rest)

    def _open(self, rest: bytes) -> None:
        """The tunnel is open: the connection is the tunnel's protocol's now."""
        self._stop_timer()
        self._over = True
        inner = self._factory.buildProtocol(self.transport.getPeer())
        if inner is None:
            self.transport.abortConnection()
            self.result.errback(Failure(CancelledError("the tunnel's protocol declined")))
            return
        self._inner = inner
        inner.makeConnection(self.transport)
        self.result.callback(inner)
        if rest:
            inner.dataReceived(rest)

    def _silent(self) -> None:
        self._timer = None
        self._fail(UpstreamTimeout(
            f"upstream proxy {self._proxy} did not answer CONNECT {self._target} "
            f"in {self._timeout:g} s"))

    def _fail(self, error: TwistProxyError) -> None:
        self._stop_timer()
        if self._over:
            return
        self._over = True
        self.transport.abortConnection()
        self.result.errback(Failure(error))

    def _cancel(self, _: Deferred[IProtocol]) -> None:
        """The tunnel is not wanted any more: stop connecting, or close."""
        if self._over:
            return
        self._over = True
        self._stop_timer()
        connecting, self.connecting = self.connecting, None
        if connecting is not None:
            connecting.addErrback(lambda reason: reason.trap(CancelledError))
            connecting.cancel()
        elif self.transport is not None:
            self.transport.abortConnection()

    def _stop_timer(self) -> None:
        timer, self._timer = self._timer, None
        if timer is not None and timer.active():
            timer.cancel()

    # -- the end ----------------------------------------------------------------

    def readConnectionLost(self) -> None:
        """The far end is done sending: a half-close for the protocol that takes one."""
        inner = self._inner
        if inner is not None and IHalfCloseableProtocol.providedBy(inner):
            inner.readConnectionLost()
        else:
            self.transport.loseConnection()

    def writeConnectionLost(self) -> None:
        """Our sending side closed: tell the protocol that cares."""
        inner = self._inner
        if inner is not None and IHalfCloseableProtocol.providedBy(inner):
            inner.writeConnectionLost()

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        """The connection ended: the tunnel's protocol's end, or the CONNECT failed."""
        self._stop_timer()
        inner = self._inner
        if inner is not None:
            inner.connectionLost(reason)
            return
        if self._over:
            return
        self._over = True
        error: TwistProxyError
        if reason.check(ssl.SSLError):
            why = describe_tls_failure(reason, self._proxy.host)
            error = UpstreamTLSFailed(f"TLS with upstream proxy {self._proxy} failed: {why}")
        else:
            error = UpstreamConnectionLost(
                f"upstream proxy {self._proxy} closed the connection before "
                f"answering CONNECT {self._target}")
        self.result.errback(Failure(error))


def _phrase(status: int) -> bytes:
    """The standard reason phrase of *status*, or none."""
    try:
        return HTTPStatus(status).phrase.encode("ascii")
    except ValueError:
        return b""


def make_pool(
    pool: ConnectionPool | None,
    mode: Any,
    upstream_auth: str | None,
    *,
    reactor: IReactorTime,
    endpoint_factory: EndpointFactory,
    connect_timeout: float,
    **kwargs: Any,
) -> ConnectionPool:
    """
    A :class:`~twistproxy.proxy.ProxyFactory`'s pool for a listener in
    *mode*: *pool* if given, otherwise a new one, through the upstream
    proxy in ``upstream`` mode (with *upstream_auth*, ``USER:PASS``).

    :raises ValueError: for *upstream_auth* outside ``upstream`` mode or
        not ``USER:PASS``, or a *pool* given in ``upstream`` mode that does
        not go through that proxy.
    """
    upstream = mode.kind == "upstream"
    if upstream_auth is not None and not upstream:
        raise ValueError("upstream_auth is for an upstream mode")
    if not upstream:
        return pool if pool is not None else ConnectionPool(
            reactor=reactor, endpoint_factory=endpoint_factory, **kwargs)
    try:
        proxy = UpstreamProxy.from_mode(mode, upstream_auth)
    except ValueError as e:
        raise ValueError(f"upstream_auth {e}") from None
    if pool is not None:
        if pool.proxy != proxy:
            raise ValueError(f"the pool given does not go through upstream proxy {proxy}")
        return pool
    return UpstreamPool(proxy, reactor=reactor, endpoint_factory=endpoint_factory,
                        connect_timeout=connect_timeout, **kwargs)
