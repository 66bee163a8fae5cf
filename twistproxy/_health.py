# -*- test-case-name: tests.test_metrics -*-
"""
What a load balancer and a monitoring system ask a running proxy: its
health (``GET /healthz``) and its metrics (``GET /metrics``), on the
``--metrics-port`` listener; and the order a stopping proxy goes in so that
the balancer stops sending before the listeners close.

:class:`RunningService` holds the proxy's services.  Started, it serves
``/healthz`` with ``200 ready`` once every listener is up (the CA was
loaded before anything started: a CA that cannot be loaded ends twistd).
Stopped (``SIGTERM``), it answers ``503 draining`` at once, keeps the
listeners accepting for ``drain_delay`` seconds (the balancer's checks see
the 503 and send no new connections), then stops them, which drains their
connections (:mod:`twistproxy._drain`), and closes its own listener last.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.application.service import MultiService
from twisted.internet.defer import Deferred, gatherResults, maybeDeferred
from twisted.internet.interfaces import IListeningPort
from twisted.internet.task import deferLater
from twisted.logger import Logger
from twisted.web.resource import Resource
from twisted.web.server import Request, Site

_log = Logger(namespace="twistproxy")


class Health:
    """
    Whether the proxy should be sent connections.

    :ivar ready: Every listener is up.
    :ivar draining: The proxy is stopping.
    """

    ready = False
    draining = False

    def status(self) -> tuple[int, bytes]:
        """The status code and body ``/healthz`` answers with."""
        if self.draining:
            return 503, b"draining\n"
        if not self.ready:
            return 503, b"starting\n"
        return 200, b"ready\n"


class _Healthz(Resource):
    isLeaf = True

    def __init__(self, health: Health) -> None:
        super().__init__()
        self._health = health

    def render_GET(self, request: Request) -> bytes:
        code, body = self._health.status()
        request.setResponseCode(code)
        request.setHeader(b"content-type", b"text/plain; charset=utf-8")
        request.setHeader(b"cache-control", b"no-store")
        return body

    render_HEAD = render_GET


class _Metrics(Resource):
    isLeaf = True

    def __init__(self, registry: Any, before: Callable[[], object]) -> None:
        super().__init__()
        self._registry = registry
        self._before = before

    def render_GET(self, request: Request) -> bytes:
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

        self._before()
        request.setHeader(b"content-type", CONTENT_TYPE_LATEST.encode("ascii"))
        return generate_latest(self._registry)


def status_site(health: Health, registry: Any = None,
                before: Callable[[], object] = lambda: None) -> Site:
    """
    The web site of the ``--metrics-port`` listener: ``/healthz`` from
    *health*, and ``/metrics`` from the Prometheus *registry* (after
    calling *before*, which brings sampled values up to date) if one is
    given.
    """
    root = Resource()
    root.putChild(b"healthz", _Healthz(health))
    if registry is not None:
        root.putChild(b"metrics", _Metrics(registry, before))
    site = Site(root)
    site.displayTracebacks = False
    site.noisy = False
    site.log = lambda request: None  # type: ignore[method-assign]  # scraped every few s
    return site


class RunningService(MultiService):
    """
    The proxy's services, with its health (and metrics) listener and the
    order of its stop (see the module's description).

    :param clock: Times the drain delay.
    :param health: What ``/healthz`` reports.
    :param listening: Each returns a Deferred that fires once its listener
        is up (``ProxyService.when_listening``), called after the services
        started; the health is ready once all have fired.
    :param endpoint: Where the health and metrics listener listens (a server
        endpoint), or ``None``.
    :param site: What it serves (:func:`status_site`).
    :param drain_delay: Seconds the listeners keep accepting, the health
        saying 503, before they stop.
    :param on_stop: Called once everything stopped (the metrics directory
        is removed, the last sample taken).
    """

    def __init__(
        self,
        clock: Any,
        health: Health,
        *,
        listening: list[Callable[[], Deferred[Any]]],
        endpoint: Any = None,
        site: Site | None = None,
        drain_delay: float = 0.0,
        on_stop: Callable[[], object] = lambda: None,
    ) -> None:
        super().__init__()
        self._clock = clock
        self.health = health
        self._listening = listening
        self._endpoint = endpoint
        self._site = site
        self._drain_delay = drain_delay
        self._on_stop = on_stop
        self.port: IListeningPort | None = None

    def startService(self) -> None:
        """
        Listen for health checks (a failure to listen raises, as a proxy
        listener's does), start the proxy's services, then report ready
        once their listeners are up.
        """
        if self._endpoint is not None:
            failure: list[Any] = []
            d = self._endpoint.listen(self._site)
            d.addCallbacks(self._listened, failure.append)
            if failure:
                failure[0].raiseException()
        super().startService()
        waits = [wait() for wait in self._listening]
        gatherResults(waits, consumeErrors=True).addCallbacks(self._ready, lambda _: None)

    def _listened(self, port: IListeningPort) -> None:
        self.port = port
        address = port.getHost()
        _log.info("twistproxy health and metrics on http://{host}:{port}/healthz",
                  host=getattr(address, "host", "?"), port=getattr(address, "port", "?"))

    def _ready(self, _: object) -> None:
        if not self.health.draining:
            self.health.ready = True

    def stopService(self) -> Deferred[None]:
        """
        Say ``503 draining`` at once; after the drain delay stop the proxy's
        services (they drain), then the health listener.
        """
        self.health.draining = True
        self.health.ready = False
        if self._drain_delay > 0:
            _log.info("twistproxy stops: accepting for {delay:g} s more while /healthz says "
                      "draining", delay=self._drain_delay)
            delayed: Deferred[None] = deferLater(self._clock, self._drain_delay, lambda: None)
        else:
            delayed = Deferred()
            delayed.callback(None)

        def stop_services(_: object) -> Deferred[None]:
            return MultiService.stopService(self)

        def stop_listener(_: object) -> Deferred[Any] | None:
            port, self.port = self.port, None
            return maybeDeferred(port.stopListening) if port is not None else None

        def done(result: object) -> object:
            self._on_stop()
            return result

        return delayed.addCallback(stop_services).addCallback(stop_listener).addBoth(done)
