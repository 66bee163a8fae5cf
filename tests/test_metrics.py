"""
Tests for :mod:`twistproxy.metrics` and :mod:`twistproxy._health`: what
the metrics count, how errors are told apart, and the order a stopping
proxy goes in.
"""

from __future__ import annotations

from typing import Any

from prometheus_client import CollectorRegistry
from twisted.application.service import Service
from twisted.internet.defer import Deferred, succeed
from twisted.internet.task import Clock
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from twistproxy._health import Health, RunningService
from twistproxy.connection import Client, Server
from twistproxy.errors import (
    HookFailed,
    HookTimeout,
    UpstreamConnectFailed,
    UpstreamNameNotResolved,
    UpstreamTimeout,
    UpstreamTLSFailed,
)
from twistproxy.flow import Error
from twistproxy.hooks import HookChain
from twistproxy.http import HTTPFlow, Request, Response
from twistproxy.metrics import Metrics, error_kind


def flow(method: str = "GET", status: int | None = 200, body: bytes = b"") -> HTTPFlow:
    """A flow with a request and, unless *status* is None, a response."""
    made = HTTPFlow(Client(), Server(), now=lambda: 0.0)
    made.request = Request.make(method, "http://example.com/", body)
    if status is not None:
        made.response = Response.make(status, b"x" * 10)
    return made


def value(registry: CollectorRegistry, name: str, **labels: str) -> float:
    """The sample *name* with *labels*, 0 when absent."""
    found = registry.get_sample_value(name, labels)
    return 0.0 if found is None else found


class MetricsTests(SynchronousTestCase):
    """The addon counts what its hooks see, and samples the rest."""

    def setUp(self) -> None:
        self.registry = CollectorRegistry()
        self.metrics = Metrics(self.registry)

    def test_flows_by_method_and_status_class(self) -> None:
        self.metrics.response(flow("GET", 200))
        self.metrics.response(flow("GET", 204))
        self.metrics.response(flow("POST", 503, b"abc"))
        self.metrics.response(flow("BREW", 418))
        r = self.registry
        self.assertEqual(value(r, "twistproxy_flows_total", method="GET", status="2xx"), 0)
        self.metrics.sample()
        self.assertEqual(value(r, "twistproxy_flows_total", method="GET", status="2xx"), 2)
        self.assertEqual(value(r, "twistproxy_flows_total", method="POST", status="5xx"), 1)
        self.assertEqual(value(r, "twistproxy_flows_total", method="other", status="4xx"), 1)
        self.assertEqual(value(r, "twistproxy_body_bytes_total", direction="request"), 3)
        self.assertEqual(value(r, "twistproxy_body_bytes_total", direction="response"), 40)
        self.metrics.response(flow("GET", 200))
        self.metrics.sample()
        self.metrics.sample()  # what was pushed is not pushed again
        self.assertEqual(value(r, "twistproxy_flows_total", method="GET", status="2xx"), 3)

    def test_errors_by_kind(self) -> None:
        cases = [
            (UpstreamConnectFailed("refused"), "connect_failed"),
            (UpstreamNameNotResolved("no such host"), "name_not_resolved"),
            (UpstreamTLSFailed("bad certificate"), "tls_failed"),
            (UpstreamTimeout("slow"), "timeout"),
            (HookFailed("request", "A", Failure(ValueError("x"))), "hook_failed"),
            (HookTimeout("request", "A", 1.0), "hook_timeout"),
            (ValueError("what"), "other"),
        ]
        for exception, kind in cases:
            failed = flow(status=None)
            failed.error = Error(str(exception), 0.0, type(exception))
            self.assertEqual(error_kind(failed.error), kind)
            self.metrics.error(failed)
            self.assertEqual(value(self.registry, "twistproxy_errors_total", kind=kind), 1)
        killed = flow(status=None)
        killed.live = True
        killed.kill()
        self.metrics.error(killed)
        self.assertEqual(value(self.registry, "twistproxy_errors_total", kind="killed"), 1)
        gone = flow(status=None)
        gone.error = Error("client disconnected", 0.0)
        self.assertEqual(error_kind(gone.error), "client_gone")
        self.assertEqual(error_kind(Error("from a file", 0.0)), "other")

    def test_error_class_not_saved(self) -> None:
        """The exception class is not part of an error's state."""
        error = Error("refused", 1.0, UpstreamConnectFailed)
        self.assertEqual(error.get_state(), {"msg": "refused", "timestamp": 1.0})
        self.assertEqual(error, Error("refused", 1.0))

    def test_connections(self) -> None:
        m, r = self.metrics, self.registry
        m.client_connected(Client())
        m.client_connected(Client())
        m.client_disconnected(Client())
        m.server_connected(Server())
        self.assertEqual(value(r, "twistproxy_client_connections"), 1)
        self.assertEqual(value(r, "twistproxy_server_connections"), 1)

    def test_sampled(self) -> None:
        """Pool reuses and certificates are read from the proxy's counters."""

        class Pool:
            reused = 0

        class Factory:
            pool = Pool()
            chain = HookChain()

        class Store:
            minted = 2
            hits = 5

            def __len__(self) -> int:
                return 2

        factory, store = Factory(), Store()
        self.metrics.watch([factory], store)
        self.metrics.sample()
        factory.pool.reused = 3
        self.metrics.sample()
        self.metrics.sample()
        r = self.registry
        self.assertEqual(value(r, "twistproxy_pool_reuses_total"), 3)
        self.assertEqual(value(r, "twistproxy_certificates_minted_total"), 2)
        self.assertEqual(value(r, "twistproxy_certificate_cache_hits_total"), 5)
        self.assertEqual(value(r, "twistproxy_certificates_cached"), 2)

    def test_counted_with_labels(self) -> None:
        """A sampled count may carry labels (a worker's number)."""
        accepted = [4]
        self.metrics.count("worker_connections", "Accepted.", lambda: accepted[0],
                           labels={"worker": "1"})
        self.metrics.sample()
        accepted[0] = 9
        self.metrics.sample()
        self.assertEqual(
            value(self.registry, "twistproxy_worker_connections_total", worker="1"), 9)


class HookTimeTests(SynchronousTestCase):
    """``twistproxy_hook_seconds``: how long each hook chain took."""

    def test_sync_and_waiting_chains(self) -> None:
        """A chain that returns at once and one that waits are both timed, by hook."""
        registry = CollectorRegistry()
        metrics = Metrics(registry)
        waiting: list[Deferred[None]] = []

        class Slow:
            def requestheaders(self, flow: object) -> None:
                pass

            def response(self, flow: object) -> Deferred[None]:
                d: Deferred[None] = Deferred()
                waiting.append(d)
                return d

        class Factory:
            pool = type("Pool", (), {"reused": 0})()
            chain = HookChain([Slow()])

        metrics.watch([Factory()])
        subject = flow("GET", 200)
        self.assertIsNone(Factory.chain.run("requestheaders", subject))
        pending = Factory.chain.run("response", subject)
        assert pending is not None
        metrics.sample()
        count = "twistproxy_hook_seconds_count"
        self.assertEqual(value(registry, count, hook="requestheaders"), 1)
        self.assertEqual(value(registry, count, hook="response"), 0)  # still waiting
        waiting[0].callback(None)
        metrics.sample()
        self.assertEqual(value(registry, count, hook="response"), 1)
        self.assertGreaterEqual(value(registry, "twistproxy_hook_seconds_sum", hook="response"),
                                0.0)
        self.assertIsNone(self.successResultOf(pending))


class Stopping(Service):
    """A child service whose stop the test ends."""

    stopped: Deferred[None] | None = None

    def stopService(self) -> Deferred[None]:
        super().stopService()
        self.stopped = Deferred()
        return self.stopped


class Listener:
    """A listening port that records its stop."""

    stopped = False

    def getHost(self) -> Any:
        return None

    def stopListening(self) -> None:
        self.stopped = True


class Endpoint:
    def __init__(self) -> None:
        self.port = Listener()

    def listen(self, factory: object) -> Deferred[Listener]:
        return succeed(self.port)


class RunningServiceTests(SynchronousTestCase):
    """Ready once the listeners are up; on stop 503 first, then the drain, then the listener."""

    def setUp(self) -> None:
        self.clock = Clock()
        self.health = Health()
        self.listening: Deferred[None] = Deferred()
        self.endpoint = Endpoint()
        self.stops: list[str] = []
        self.running = RunningService(
            self.clock, self.health, listening=[lambda: self.listening],
            endpoint=self.endpoint, drain_delay=5.0, on_stop=lambda: self.stops.append("done"),
        )
        self.child = Stopping()
        self.child.setServiceParent(self.running)

    def test_ready_once_listening(self) -> None:
        self.running.startService()
        self.assertEqual(self.health.status(), (503, b"starting\n"))
        self.listening.callback(None)
        self.assertEqual(self.health.status(), (200, b"ready\n"))

    def test_stop_order(self) -> None:
        self.running.startService()
        self.listening.callback(None)
        done = self.running.stopService()
        self.assertEqual(self.health.status(), (503, b"draining\n"))
        self.assertTrue(self.child.running)  # still accepting during the delay
        self.clock.advance(4.9)
        self.assertTrue(self.child.running)
        self.clock.advance(0.2)
        self.assertFalse(self.child.running)
        self.assertFalse(self.endpoint.port.stopped)  # health answers during the drain
        assert self.child.stopped is not None
        self.child.stopped.callback(None)
        self.assertTrue(self.endpoint.port.stopped)
        self.assertEqual(self.stops, ["done"])
        self.successResultOf(done)

    def test_never_ready_once_stopping(self) -> None:
        """A listener that comes up after the stop began does not say ready."""
        self.running.startService()
        self.running.stopService()
        self.listening.callback(None)
        self.assertEqual(self.health.status(), (503, b"draining\n"))
