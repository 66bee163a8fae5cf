# -*- test-case-name: tests.test_service -*-
"""
:class:`ProxyService`: a proxy as a service in a Twisted service tree.
"""

from __future__ import annotations

from twisted.application.service import Service
from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IListeningPort, IStreamServerEndpoint
from twisted.logger import Logger
from twisted.python.failure import Failure

from twistproxy.proxy import ProxyFactory


class ProxyService(Service):
    """
    Listens on *endpoint* with *factory* while running, for example::

        factory = ProxyFactory(reactor=reactor, addons=[MyAddon()])
        endpoint = TCP4ServerEndpoint(reactor, 8080, interface="127.0.0.1")
        ProxyService(endpoint, factory).setServiceParent(application)

    :ivar endpoint: Where to listen.
    :ivar factory: The proxy factory serving each connection.
    :ivar port: The listening port while running, else ``None``.
    """

    log = Logger()
    port: IListeningPort | None = None

    def __init__(self, endpoint: IStreamServerEndpoint, factory: ProxyFactory) -> None:
        self.endpoint = endpoint
        self.factory = factory
        self._listening: Deferred[IListeningPort] | None = None

    def startService(self) -> None:
        """
        Start listening.  A failure to listen (the port is taken, say) is
        logged in one line and raised again when it happens at once, so
        twistd stops instead of running without a listener.
        """
        super().startService()
        self._listening = d = self.endpoint.listen(self.factory)
        d.addCallback(self._listened)
        failures: list[Failure] = []
        d.addErrback(failures.append)
        if failures:
            self._listening = None
            self.running = 0
            failures[0].raiseException()

    def _listened(self, port: IListeningPort) -> IListeningPort:
        self.port = port
        self.log.info("twistproxy listening on {address}", address=_describe(port))
        return port

    def when_listening(self) -> Deferred[IListeningPort]:
        """
        A Deferred that fires with the listening port once the service
        listens (at once when it already does).
        """
        if self.port is not None:
            return succeed(self.port)
        if self._listening is None:
            raise RuntimeError("the service is not running")
        d: Deferred[IListeningPort] = Deferred()
        self._listening.addCallback(lambda port: (d.callback(port), port)[1])
        return d

    def stopService(self) -> Deferred[None] | None:
        """Stop listening and close the idle upstream connections."""
        super().stopService()
        port, self.port = self.port, None
        self._listening = None
        self.factory.pool.close()
        if port is not None:
            return port.stopListening()
        return None


def _describe(port: IListeningPort) -> str:
    address = port.getHost()
    host = getattr(address, "host", None)
    number = getattr(address, "port", None)
    if host is None:
        return str(address)
    return f"[{host}]:{number}" if ":" in host else f"{host}:{number}"
