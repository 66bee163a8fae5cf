# -*- test-case-name: tests.test_service -*-
"""
:class:`ProxyService`: a proxy as a service in a Twisted service tree.
"""

from __future__ import annotations

from typing import Any

from twisted.application.service import Service
from twisted.internet.defer import (
    CancelledError,
    Deferred,
    fail,
    gatherResults,
    maybeDeferred,
    succeed,
)
from twisted.internet.interfaces import IListeningPort, IStreamServerEndpoint
from twisted.logger import Logger
from twisted.python.failure import Failure

from twistproxy._target import join_host_port
from twistproxy.limits import DEFAULT_BACKLOG
from twistproxy.proxy import ProxyFactory
from twistproxy.proxyprotocol import server_endpoint

DEFAULT_SHUTDOWN_TIMEOUT = 10.0
"""Seconds the exchanges in flight may take to finish once the proxy stops."""


class ProxyService(Service):
    """
    Listens on *endpoint* with *factory* while running, for example::

        factory = ProxyFactory(reactor=reactor, addons=[MyAddon()])
        ProxyService("tcp:8080:interface=127.0.0.1", factory).setServiceParent(application)

    *endpoint* is a server endpoint description (listening with *backlog*
    unless it names one, see :func:`~twistproxy.limits.with_backlog`) or an
    endpoint object, which keeps its own backlog (``TCP4ServerEndpoint``'s
    default is 50: pass ``backlog=DEFAULT_BACKLOG`` to it for bursts).  A
    description prefixed ``haproxy:`` takes the PROXY protocol (see
    :mod:`twistproxy.proxyprotocol`).

    Stopping it (``twistd`` does on ``SIGTERM``) drains the connections:
    see :meth:`stopService`. The service keeps its factory started
    (``doStart``) from when it listens until the drain ends, so that the
    addons' ``running`` comes once it listens and their ``done`` after the
    last flow (:mod:`twistproxy.lifecycle`).

    :ivar endpoint: Where to listen.
    :ivar factory: The proxy factory serving each connection.
    :ivar shutdown_timeout: Seconds the exchanges in flight may take to
        finish once the service stops (``--shutdown-timeout``).
    :ivar port: The listening port while running, else ``None``.
    """

    log = Logger()
    endpoint: IStreamServerEndpoint
    port: IListeningPort | None = None

    def __init__(
        self,
        endpoint: IStreamServerEndpoint | str,
        factory: ProxyFactory,
        *,
        backlog: int = DEFAULT_BACKLOG,
        shutdown_timeout: float = DEFAULT_SHUTDOWN_TIMEOUT,
    ) -> None:
        if not shutdown_timeout >= 0:
            raise ValueError(f"shutdown_timeout must be 0 or more, not {shutdown_timeout!r}")
        if isinstance(endpoint, str):
            self.endpoint = server_endpoint(factory.reactor, endpoint, backlog)
        else:
            self.endpoint = endpoint
        self.factory = factory
        self.shutdown_timeout = shutdown_timeout
        self._listening: Deferred[IListeningPort] | None = None
        self._failure: Failure | None = None
        self._waiters: list[Deferred[IListeningPort]] = []
        self._starting = False
        self._held = False

    def startService(self) -> None:
        """
        Start listening.

        :raises Exception: whatever the endpoint failed with (the port is
            taken, say) when it fails at once, as a TCP endpoint does, so
            that twistd stops instead of running without a listener; the
            service is then not running.  A later failure is logged in one
            line and fails the Deferreds from :meth:`when_listening`.
        """
        super().startService()
        self._failure = None
        self._listening = d = self.endpoint.listen(self.factory)
        self._starting = True
        try:
            d.addCallbacks(self._listened, self._not_listening)
        finally:
            self._starting = False
        failure = self._failure
        if failure is not None:
            # Failed at once: raise, rather than log, for the caller to see.
            self._failure = None
            self.running = 0
            failure.raiseException()

    def _listened(self, port: IListeningPort) -> None:
        self._listening = None
        self.port = port
        self._held = True
        self.factory.doStart()
        self.log.info("twistproxy listening on {address}", address=_describe_port(port))
        waiters, self._waiters = self._waiters, []
        for waiter in waiters:
            waiter.callback(port)

    def _not_listening(self, reason: Failure) -> None:
        self._listening = None
        if self._starting:
            self._failure = reason  # startService raises it
            return
        if not reason.check(CancelledError):  # else stopService gave up on the listen
            self._failure = reason
            self.running = 0
            self.log.error(
                "twistproxy could not listen: {error}", error=reason.getErrorMessage()
            )
        waiters, self._waiters = self._waiters, []
        for waiter in waiters:
            waiter.errback(reason)

    def when_listening(self) -> Deferred[IListeningPort]:
        """
        A Deferred that fires with the listening port once the service
        listens (at once when it already does), or fails with why it could
        not listen.

        :raises RuntimeError: if the service is not running.
        """
        if self.port is not None:
            return succeed(self.port)
        if self._listening is None:
            if self._failure is not None:
                return fail(self._failure)
            raise RuntimeError("the service is not running")
        d: Deferred[IListeningPort] = Deferred()
        self._waiters.append(d)
        return d

    def stopService(self) -> Deferred[None]:
        """
        Stop accepting at once (or give up a listen still in progress) and
        drain the client connections (:func:`drain`), then close the idle
        upstream connections.

        :returns: A Deferred that fires once the port is closed, every
            client connection has ended and the addons' ``done`` hooks are
            done.
        """
        super().stopService()
        port, self.port = self.port, None
        listening, self._listening = self._listening, None
        self._failure = None
        if listening is not None:
            listening.cancel()
        stopped: Deferred[Any] | None = None
        if port is not None:
            stopped = maybeDeferred(port.stopListening)
        held, self._held = self._held, False
        return drain(self.factory, self.shutdown_timeout, stopped, held=held)


def drain(
    factory: ProxyFactory, timeout: float, stopped: Deferred[Any] | None = None,
    *, held: bool = False,
) -> Deferred[None]:
    """
    Drain the client connections of *factory*, whose listening has
    stopped (or stops with *stopped*): each closes once idle (between
    requests at once, with a request in hand after its response, a tunnel
    or WebSocket when it ends); what is still in flight after *timeout*
    seconds is given up (a 503, or an aborted connection once its response
    started; tunnels aborted).  The idle upstream connections are closed
    at the start and at the end.  Every flow that ends meanwhile runs its
    hooks (and is saved by ``--save``) before this fires.

    :param held: The caller started *factory* (``doStart``) when it began
        listening: it is stopped (``doStop``) once drained, which runs the
        addons' ``done`` hooks after the last flow when no other listener
        holds their manager.
    :returns: A Deferred that fires once *stopped* has, every client
        connection has ended and, with *held*, the ``done`` hooks are done.
    """
    factory.pool.close()
    steps: list[Deferred[Any]] = [factory.channels.drain(timeout)]
    if stopped is not None:
        steps.append(stopped)

    def closed(_: object) -> Deferred[None] | None:
        factory.pool.close()
        if not held:
            return None
        factory.doStop()
        return factory.addons.when_done()

    return gatherResults(steps, consumeErrors=True).addCallback(closed)


def _describe_port(port: IListeningPort) -> str:
    """
    The address *port* listens on, for the log: ``host:port`` (IPv6
    literals bracketed), or the address's ``str`` when it has no host and
    port.
    """
    address = port.getHost()
    host = getattr(address, "host", None)
    number = getattr(address, "port", None)
    if host is None or number is None:
        return str(address)
    return join_host_port(host, number)
