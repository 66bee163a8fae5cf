# -*- test-case-name: tests.test_metrics -*-
"""
Prometheus metrics of a running proxy (``--metrics-port``), with the
``prometheus-client`` library.

:class:`Metrics` is an addon: the hooks count what they see (flows by
method and status class, errors by kind, body bytes each way, open client
and upstream connections); what no hook sees (idle upstream connections
reused, certificates minted and cached, connections refused for a missing
PROXY header) is read from the counters the proxy keeps anyway, once a
second and before each scrape (:meth:`Metrics.sample`).  The flows and
bytes the hooks count are plain integers until then too, so a request
pays for a few additions, not for ``prometheus-client``'s locked
increments; a worker killed with ``SIGKILL`` loses at most its last
second of them.

With ``--workers``, every worker records into the files of one directory
(``prometheus-client``'s multiprocess mode, :func:`use_directory`) and the
supervisor serves their sum (:func:`collect_directory`).
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

from twistproxy.errors import (
    HookFailed,
    HookTimeout,
    ShuttingDown,
    UpstreamConnectFailed,
    UpstreamNameNotResolved,
    UpstreamTimeout,
    UpstreamTLSFailed,
)
from twistproxy.flow import Error
from twistproxy.hooks import Addon

MULTIPROCESS_VARIABLE = "PROMETHEUS_MULTIPROC_DIR"
"""The environment variable ``prometheus-client`` reads its directory from."""

METHODS = ("GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH")
"""The methods counted by name; any other is counted as ``other``."""

STATUS_CLASSES = ("1xx", "2xx", "3xx", "4xx", "5xx")

ERROR_KINDS: tuple[tuple[type[BaseException], str], ...] = (
    # Most specific first.
    (UpstreamNameNotResolved, "name_not_resolved"),
    (UpstreamConnectFailed, "connect_failed"),
    (UpstreamTLSFailed, "tls_failed"),
    (UpstreamTimeout, "timeout"),
    (HookTimeout, "hook_timeout"),
    (HookFailed, "hook_failed"),
    (ShuttingDown, "shutting_down"),
)
"""The error kinds counted by the exception class that failed the flow."""

_PID_FILE = re.compile(r"gauge_live\w*_(\d+)\.db\Z")


def error_kind(error: Error) -> str:
    """
    The kind a flow's *error* is counted as: one of :data:`ERROR_KINDS`'
    names, ``killed``, ``client_gone``, or ``other``.
    """
    if error.msg == Error.KILLED_MESSAGE:
        return "killed"
    exception = error.exception
    if exception is None:
        return "client_gone" if error.msg == "client disconnected" else "other"
    for cls, kind in ERROR_KINDS:
        if issubclass(exception, cls):
            return kind
    return "other"


def use_directory(directory: str) -> None:
    """
    Record this process's metrics in *directory* (multiprocess mode):
    must run before ``prometheus_client`` is first imported.

    :raises RuntimeError: if it was imported already.
    """
    import sys

    if "prometheus_client" in sys.modules and os.environ.get(MULTIPROCESS_VARIABLE) != directory:
        raise RuntimeError("prometheus_client was imported before its directory was set")
    os.environ[MULTIPROCESS_VARIABLE] = directory


def collect_directory(directory: str) -> Any:
    """
    A registry serving the sum of every process's metrics in *directory*;
    the gauges of processes that are gone are dropped first.
    """
    from prometheus_client import CollectorRegistry
    from prometheus_client.multiprocess import MultiProcessCollector

    registry = CollectorRegistry()
    MultiProcessCollector(registry, path=directory)
    return registry


def forget_dead(directory: str) -> None:
    """Drop the live gauges of the processes recorded in *directory* that are gone."""
    from prometheus_client.multiprocess import mark_process_dead

    pids = set()
    for path in Path(directory).glob("gauge_live*.db"):
        match = _PID_FILE.match(path.name)
        if match is not None:
            pids.add(int(match.group(1)))
    for pid in pids:
        if pid != os.getpid() and not _alive(pid):
            mark_process_dead(pid, directory)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class Metrics(Addon):
    """
    Counts flows, errors, bytes and connections into Prometheus metrics.

    :param registry: Where the metrics are registered (a
        ``prometheus_client.CollectorRegistry``); ``None`` registers them
        nowhere, as in a worker whose values go to the multiprocess
        directory.
    """

    stream_bodies = True  # counts body sizes, never reads a body whole

    def __init__(self, registry: Any) -> None:
        from prometheus_client import Counter, Gauge, Histogram

        def counter(name: str, doc: str, labels: Iterable[str] = ()) -> Any:
            return Counter(f"twistproxy_{name}", doc, list(labels), registry=registry)

        def gauge(name: str, doc: str) -> Any:
            return Gauge(f"twistproxy_{name}", doc, registry=registry,
                         multiprocess_mode="livesum")

        flows = counter("flows", "Flows answered, by method and status class.",
                        ("method", "status"))
        # What the hooks count goes to plain lists first, and to
        # prometheus-client (whose increments take a lock) in sample().
        self._children = [[flows.labels(method, status) for status in STATUS_CLASSES]
                          for method in (*METHODS, "other")]
        self._counts = [[0] * len(STATUS_CLASSES) for _ in self._children]
        self._rows = dict(zip((*METHODS, "other"), self._counts, strict=True))
        self._other = self._rows["other"]
        self._bytes = [0, 0]  # request, response
        errors = counter("errors", "Flows that ended with an error, by kind.", ("kind",))
        self._errors = errors
        self._error_kinds = {kind: errors.labels(kind) for kind in _all_kinds()}
        body = counter("body_bytes", "Body bytes relayed, by direction "
                       "(request: client to server).", ("direction",))
        self._bytes_children = (body.labels("request"), body.labels("response"))
        self._clients = gauge("client_connections", "Client connections open.")
        self._servers = gauge("server_connections", "Upstream connections open.")
        self._hook_seconds = Histogram(
            "twistproxy_hook_seconds", "Seconds each hook chain took (every addon's hook of "
            "that name for one flow or connection, waits included), by hook.", ["hook"],
            registry=registry)
        self._timings: list[tuple[str, float]] = []
        self._sampled: list[tuple[Any, Callable[[], int], list[int]]] = []
        self._levels: list[tuple[Any, Callable[[], int]]] = []
        self._counter, self._gauge = counter, gauge

    # -- what no hook sees: sampled -----------------------------------------

    def count(self, name: str, doc: str, read: Callable[[], int],
              labels: Mapping[str, str] | None = None) -> None:
        """
        Count what *read* returns (an ever-growing count the proxy keeps)
        as the counter ``twistproxy_NAME_total``, with *labels* if given,
        brought up to date by :meth:`sample`.
        """
        counter = self._counter(name, doc, labels or ())
        if labels:
            counter = counter.labels(**labels)
        self._sampled.append((counter, read, [0]))

    def level(self, name: str, doc: str, read: Callable[[], int]) -> None:
        """Report what *read* returns as the gauge ``twistproxy_NAME``, set by :meth:`sample`."""
        self._levels.append((self._gauge(name, doc), read))

    def watch(self, factories: Iterable[Any], store: Any = None, *,
              refused: Callable[[], int] | None = None) -> None:
        """
        Time the hook chains of *factories* (``ProxyFactory``; the histogram
        ``twistproxy_hook_seconds``), and sample their pools, the certificate
        *store*, if there is one, and *refused*, the count of connections
        the PROXY protocol listeners closed for want of a header
        (:attr:`~twistproxy.proxyprotocol.ProxyHeaderFactory.refused`).
        """
        factories = list(factories)
        for factory in factories:
            factory.chain.time_hooks(self._timed)
        pools = [factory.pool for factory in factories]
        self.count("pool_reuses", "Requests sent on an idle upstream connection reused.",
                   lambda: sum(pool.reused for pool in pools))
        if refused is not None:
            self.count("proxy_header_refused", "Connections closed for a missing, invalid "
                       "or late PROXY protocol header.", refused)
        if store is not None:
            self.count("certificates_minted", "Leaf certificates minted.",
                       lambda: store.minted)
            self.count("certificate_cache_hits", "Leaf certificates found in the cache.",
                       lambda: store.hits)
            self.level("certificates_cached", "Leaf certificates in the cache.",
                       lambda: len(store))

    def sample(self) -> None:
        """
        Bring the metrics up to date: what the hooks counted since the last
        call, and the sampled counters and gauges.
        """
        for children, counts in zip(self._children, self._counts, strict=True):
            for index, count in enumerate(counts):
                if count:
                    children[index].inc(count)
                    counts[index] = 0
        for index, count in enumerate(self._bytes):
            if count:
                self._bytes_children[index].inc(count)
                self._bytes[index] = 0
        timings, self._timings = self._timings, []
        for hook, seconds in timings:
            self._hook_seconds.labels(hook).observe(seconds)
        for counter, read, last in self._sampled:
            value = read()
            if value > last[0]:
                counter.inc(value - last[0])
            last[0] = value
        for gauge, read in self._levels:
            gauge.set(read())

    def _timed(self, hook: str, seconds: float) -> None:
        """A hook chain ran for *seconds*: observed at the next :meth:`sample`."""
        self._timings.append((hook, seconds))

    # -- hooks ---------------------------------------------------------------

    def client_connected(self, client: Any) -> None:
        """One more client connection."""
        self._clients.inc()

    def client_disconnected(self, client: Any) -> None:
        """One client connection fewer."""
        self._clients.dec()

    def server_connected(self, server: Any) -> None:
        """One more upstream connection."""
        self._servers.inc()

    def server_disconnected(self, server: Any) -> None:
        """One upstream connection fewer."""
        self._servers.dec()

    def response(self, flow: Any) -> None:
        """Count an answered flow and its bytes."""
        request, response = flow.request, flow.response
        row = self._rows.get(request.method, self._other)
        status = response.status_code // 100 - 1
        if 0 <= status < 5:
            row[status] += 1
        counts = self._bytes
        size = request.body_size
        if size:
            counts[0] += size
        size = response.body_size
        if size:
            counts[1] += size

    def error(self, flow: Any) -> None:
        """Count a failed flow by its kind."""
        if flow.error is not None:
            self._error_kinds[error_kind(flow.error)].inc()


def _all_kinds() -> tuple[str, ...]:
    return (*(kind for _, kind in ERROR_KINDS), "killed", "client_gone", "other")
