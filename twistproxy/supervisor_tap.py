# -*- test-case-name: tests.test_supervisor_tap -*-
"""
The ``--workers`` supervisor as twistd runs it: ``twistd twistproxy
--workers N`` checks its options, makes the CA, and then becomes (by
``exec``, keeping its process id) ``twistd twistproxy-supervisor``, a
process that holds only what supervising needs.

Why a process of its own: Python cannot unload modules, and checking the
options loads the whole proxy (the addon files, filters, certificates,
TLS), about 60 MB that a supervisor would carry for nothing.  This module
imports none of it: :mod:`twistproxy.workers` and, only for
``--metrics-port`` or ``--drain-delay``, the health and metrics listener.

:class:`Options` are never typed by a user: :func:`twistproxy.tap.makeService`
writes them from options it has already checked, so a bad option is still
refused in one line before anything starts.  The same :func:`supervisor_service`
builds the supervisor when it runs in the process that parsed the options
(a reactor other than twistd's, as in the tests).
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
from typing import Any

from twisted.application.service import IService, MultiService
from twisted.logger import eventFromJSON, globalLogPublisher
from twisted.python import usage

from twistproxy.workers import EVENTS_VARIABLE, Supervisor, stop_and_fail


class Options(usage.Options):
    """
    The options of ``twistd twistproxy-supervisor``, written by
    :func:`twistproxy.tap.makeService`; the arguments after ``--`` are the
    workers' ``twistd twistproxy`` options.
    """

    synopsis = "[options] -- [twistproxy options for each worker]"
    longdesc = "(internal) The supervisor 'twistd twistproxy --workers N' becomes."
    optParameters = [
        ["workers", None, 2, "How many workers.", int],
        ["endpoint", None, None, "The tcp: or tcp6: endpoint the workers serve."],
        ["restart-limit", None, 5, "Quick failures in a row of one worker before giving up.",
         int],
        ["kill-after", None, 10.0, "Seconds the workers have to stop before they are killed.",
         float],
        ["metrics-endpoint", None, None, "Serve /healthz and the workers' /metrics here."],
        ["drain-delay", None, 0.0, "Seconds /healthz says 503 before the workers stop.", float],
    ]

    def parseArgs(self, *worker_args: str) -> None:
        """The workers' ``twistd twistproxy`` options."""
        self["worker-args"] = list(worker_args)

    def postOptions(self) -> None:
        """An endpoint is required."""
        if self["endpoint"] is None:
            raise usage.UsageError("--endpoint is required")


def makeService(options: Options) -> IService:
    """
    ``IServiceMaker.makeService`` of ``twistd twistproxy-supervisor``: the
    supervisor on the global reactor, which is imported here without
    pyOpenSSL (see :func:`_without_tls`).
    """
    _relog(os.environ.pop(EVENTS_VARIABLE, ""))
    _without_tls(options["metrics-endpoint"])
    from twisted.internet import reactor

    return supervisor_service(options, reactor)


def supervisor_service(options: Options, reactor: Any) -> MultiService:
    """
    The service of a supervisor run with *options* on *reactor*: the
    :class:`~twistproxy.workers.Supervisor`, under the health and metrics
    listener when ``metrics-endpoint`` or ``drain-delay`` asks for one.
    """
    worker_args = list(options["worker-args"])
    endpoint = options["endpoint"]
    top = MainService(endpoint)
    parent: MultiService = top
    metrics = options["metrics-endpoint"]
    if metrics is not None or options["drain-delay"]:
        parent = _running(options, reactor, worker_args)
        parent.setServiceParent(top)
    Supervisor(reactor, count=options["workers"], endpoint=endpoint,
               worker_args=worker_args, give_up_after=options["restart-limit"],
               kill_after=options["kill-after"],
               give_up=stop_and_fail(reactor)).setServiceParent(parent)
    return top


def _running(options: Options, reactor: Any, worker_args: list[str]) -> MultiService:
    """
    The supervisor's health listener (``--metrics-port``), which serves the
    sum of the metrics the workers record in a directory made here (added
    to *worker_args*, removed when the supervisor stops), and delays the
    workers' drain (``--drain-delay``).
    """
    from twisted.internet.endpoints import serverFromString

    from twistproxy._health import Health, RunningService, status_site

    endpoint = options["metrics-endpoint"]
    site = None
    on_stop: Any = lambda: None  # noqa: E731
    if endpoint is not None:
        from twistproxy.metrics import collect_directory, forget_dead

        directory = tempfile.mkdtemp(prefix="twistproxy-metrics-")
        worker_args += ["--metrics-dir", directory]
        health = Health()
        site = status_site(health, collect_directory(directory), lambda: forget_dead(directory))
        on_stop = lambda: shutil.rmtree(directory, ignore_errors=True)  # noqa: E731
    else:
        health = Health()
    return RunningService(
        reactor, health, listening=[], drain_delay=options["drain-delay"], site=site,
        endpoint=None if endpoint is None else serverFromString(reactor, endpoint),
        on_stop=on_stop,
    )


class MainService(MultiService):
    """
    The service twistd runs: a failure to listen ends twistd with one line
    and a non-zero exit status, not a traceback.

    :param endpoint: The address it serves, for that line.
    """

    def __init__(self, endpoint: str) -> None:
        super().__init__()
        self._endpoint = endpoint

    def startService(self) -> None:
        """Start the services; turn a failure to listen into ``SystemExit``."""
        try:
            super().startService()
        except Exception as e:
            raise SystemExit(f"twistproxy: cannot listen on {self._endpoint}: {e}") from e


def _relog(lines: str) -> None:
    """Log again the JSON events of *lines* (see :data:`~twistproxy.workers.EVENTS_VARIABLE`)."""
    for line in lines.splitlines():
        try:
            event = eventFromJSON(line)
        except ValueError:
            continue
        if isinstance(event, dict) and "log_time" in event:
            globalLogPublisher(event)


def _without_tls(metrics_endpoint: str | None) -> None:
    """
    Have Twisted run in this process as if pyOpenSSL were not installed,
    unless the metrics listener speaks TLS: the supervisor never does, and
    the reactor's TCP module otherwise imports pyOpenSSL and
    ``cryptography`` to offer ``startTLS`` (13 MB of the supervisor's
    RSS).  Twisted supports running without them (it catches the
    ``ImportError`` that a ``None`` in ``sys.modules`` raises); too late
    once the TCP module is imported, which changes nothing then.
    """
    if metrics_endpoint is not None and metrics_endpoint.split(":", 1)[0].lower() == "ssl":
        return
    if "twisted.internet.tcp" not in sys.modules:
        sys.modules.setdefault("OpenSSL", None)  # type: ignore[arg-type]
