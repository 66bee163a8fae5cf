# -*- test-case-name: tests.test_supervisor_tap -*-
"""
Tests for :mod:`twistproxy.supervisor_tap`, the ``--workers`` supervisor as
twistd runs it, and for how ``twistd twistproxy --workers N`` becomes it
(:func:`twistproxy.tap.supervisor_arguments`,
:func:`twistproxy.workers.exec_supervisor`).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

from twisted.application.service import IServiceMaker
from twisted.internet.error import ProcessTerminated
from twisted.internet.testing import MemoryReactorClock
from twisted.logger import LogLevel, capturedLogs, eventAsJSON, formatEvent
from twisted.plugin import getPlugins
from twisted.python import usage
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from tests.options import CA_DIR, parse
from twistproxy._health import RunningService
from twistproxy.certs import CA_FILE
from twistproxy.supervisor_tap import MainService, Options, supervisor_service
from twistproxy.tap import make_service, supervisor_arguments
from twistproxy.workers import EVENTS_VARIABLE, Supervisor, exec_supervisor


def _supervisor(top: Any) -> Supervisor:
    """The :class:`Supervisor` somewhere in the service tree *top*."""
    for child in top:
        if isinstance(child, Supervisor):
            return child
        if hasattr(child, "__iter__"):
            return _supervisor(child)
    raise AssertionError(f"no supervisor in {list(top)}")


class _Process:
    """A spawned process as a fake reactor hands it out: a signal ends it."""

    pid = 1000

    def __init__(self, protocol: Any) -> None:
        self._protocol = protocol

    def signalProcess(self, name: str) -> None:
        self._protocol.processEnded(Failure(ProcessTerminated(signal=15)))


class _Reactor(MemoryReactorClock):
    """A memory reactor that spawns fake processes."""

    def spawnProcess(self, protocol: Any, executable: str, args: list[str], env: Any,
                     childFDs: Any) -> _Process:
        process = _Process(protocol)
        protocol.makeConnection(process)
        return process


def _options(*args: str) -> Options:
    options = Options()
    options.parseOptions(list(args))
    return options


class ArgumentsTests(SynchronousTestCase):
    """
    Tests for :func:`twistproxy.tap.supervisor_arguments`.
    """

    def test_from_checked_options(self) -> None:
        """
        The supervisor gets the count, the endpoint, the restart limit, the
        workers' drain deadline and the drain delay; after ``--`` the
        workers' options, with the CA made here.
        """
        arguments = supervisor_arguments(parse(
            "--workers", "3", "--port", "9000", "--restart-limit", "2",
            "--shutdown-timeout", "20", "--drain-delay", "1.5", "-q"))
        at = arguments.index("--")
        self.assertEqual(arguments[:at], [
            "--workers", "3", "--endpoint", "tcp:9000:interface=127.0.0.1",
            "--restart-limit", "2", "--kill-after", "25.0", "--drain-delay", "1.5"])
        self.assertEqual(arguments[at + 1:], [
            "--ca-dir", CA_DIR, "--shutdown-timeout", "20", "-q",
            "--ca", str(Path(CA_DIR) / CA_FILE)])
        self.assertTrue((Path(CA_DIR) / CA_FILE).exists())

    def test_metrics_and_proxy_protocol(self) -> None:
        """
        ``--metrics-port`` is the supervisor's; the PROXY protocol of
        ``haproxy:`` goes to the workers.
        """
        arguments = supervisor_arguments(parse(
            "--workers", "2", "--no-intercept", "--port", "haproxy:tcp:9000",
            "--metrics-port", "9100"))
        at = arguments.index("--")
        self.assertIn("--metrics-endpoint", arguments[:at])
        self.assertEqual(arguments[arguments.index("--metrics-endpoint") + 1],
                         "tcp:9100:interface=127.0.0.1")
        self.assertEqual(arguments[arguments.index("--endpoint") + 1], "tcp:9000")
        self.assertEqual(arguments[at + 1:],
                         ["--ca-dir", CA_DIR, "--no-intercept", "--proxy-protocol"])

    def test_parsed_by_the_supervisor(self) -> None:
        """What :func:`supervisor_arguments` writes, the supervisor's Options read."""
        options = _options(*supervisor_arguments(parse(
            "--workers", "2", "--no-intercept", "--metrics-port", "9100")))
        self.assertEqual((options["workers"], options["endpoint"], options["restart-limit"],
                          options["kill-after"], options["metrics-endpoint"],
                          options["worker-args"]),
                         (2, "tcp:8080:interface=127.0.0.1", 5, 15.0,
                          "tcp:9100:interface=127.0.0.1", ["--ca-dir", CA_DIR, "--no-intercept"]))


class OptionsTests(SynchronousTestCase):
    """
    Tests for :class:`twistproxy.supervisor_tap.Options`.
    """

    def test_worker_arguments_after_the_separator(self) -> None:
        """Arguments after ``--`` are the workers', options among them."""
        options = _options("--endpoint", "tcp:1", "--", "--quiet", "--port", "x")
        self.assertEqual(options["worker-args"], ["--quiet", "--port", "x"])

    def test_endpoint_required(self) -> None:
        """Without ``--endpoint`` nothing is served: a usage error."""
        self.assertRaises(usage.UsageError, _options, "--workers", "2")

    def test_plugin(self) -> None:
        """twistd finds ``twistproxy-supervisor``, pointing at these options."""
        [maker] = [p for p in getPlugins(IServiceMaker)
                   if p.tapname == "twistproxy-supervisor"]
        self.assertIs(maker.options, Options)


class ServiceTests(SynchronousTestCase):
    """
    Tests for :func:`twistproxy.supervisor_tap.supervisor_service`.
    """

    def test_supervisor_alone(self) -> None:
        """
        Without metrics or a drain delay, the supervisor runs right under
        the main service, with the options it was given.
        """
        top = supervisor_service(_options(
            "--workers", "3", "--endpoint", "tcp:0:interface=127.0.0.1", "--restart-limit", "4",
            "--kill-after", "12.5", "--", "-q"), MemoryReactorClock())
        self.assertIsInstance(top, MainService)
        [supervisor] = list(top)
        assert isinstance(supervisor, Supervisor)
        self.assertEqual((supervisor.count, supervisor.give_up_after, supervisor.kill_after),
                         (3, 4, 12.5))

    def test_metrics_directory(self) -> None:
        """
        With a metrics endpoint, the supervisor runs under the health
        listener, and the workers record into a directory made for them,
        removed when the supervisor stops.
        """
        reactor = _Reactor()
        top = supervisor_service(_options(
            "--endpoint", "tcp:0:interface=127.0.0.1", "--metrics-endpoint",
            "tcp:0:interface=127.0.0.1", "--", "-q"), reactor)
        [running] = list(top)
        self.assertIsInstance(running, RunningService)
        supervisor = _supervisor(top)
        arguments = supervisor._worker_args
        directory = Path(arguments[arguments.index("--metrics-dir") + 1])
        self.assertTrue(directory.is_dir())
        self.addCleanup(lambda: directory.exists() and directory.rmdir())
        top.startService()
        self.assertEqual(len(supervisor.workers), 2)
        top.stopService()
        reactor.advance(30)
        self.assertFalse(directory.exists())

    def test_make_service_in_process(self) -> None:
        """
        ``make_service`` on a reactor of its own builds the same supervisor
        in the process that parsed the options.
        """
        top = make_service(parse("--workers", "2", "--no-intercept", "--restart-limit", "3"),
                           MemoryReactorClock())
        self.assertIsInstance(top, MainService)
        self.assertEqual(_supervisor(top).give_up_after, 3)


class ExecTests(SynchronousTestCase):
    """
    Tests for :func:`twistproxy.workers.exec_supervisor`.
    """

    def setUp(self) -> None:
        self.execs: list[tuple[str, list[str], dict[str, str]]] = []
        self.patch(os, "execve", lambda path, args, env: self.execs.append((path, args, env)))

    def test_becomes_twistd_supervisor(self) -> None:
        """
        In twistd running ``twistproxy``, the process execs twistd with the
        same twistd options and ``twistproxy-supervisor``; the events given
        travel in the environment.
        """
        import twisted.scripts.twistd  # noqa: F401 (as in twistd's process)

        self.patch(sys, "argv", ["/usr/bin/twistd", "-l", "log", "--pidfile=p", "twistproxy",
                                 "--workers", "2"])
        event = {"log_format": "created {x}", "x": "a CA", "log_time": 1.0}
        exec_supervisor(["--workers", "2"], ["--workers", "2", "--endpoint", "tcp:1"], [event])
        [(path, args, env)] = self.execs
        self.assertEqual(path, sys.executable)
        self.assertEqual(args[args.index("-l"):], [
            "-l", "log", "--pidfile=p", "twistproxy-supervisor", "--workers", "2",
            "--endpoint", "tcp:1"])
        self.assertIn("twisted.scripts.twistd", args[2])
        self.assertEqual(env[EVENTS_VARIABLE], eventAsJSON(event) + "\n")

    def test_not_twistd(self) -> None:
        """
        Options parsed from elsewhere than this process's command line:
        nothing happens (the caller supervises in this process).
        """
        self.patch(sys, "argv", ["/usr/bin/twist", "twistproxy-other", "--workers", "2"])
        exec_supervisor(["--workers", "2"], ["--endpoint", "tcp:1"])
        self.patch(sys, "argv", ["pytest", "-q"])
        exec_supervisor(["--workers", "2"], ["--endpoint", "tcp:1"])
        self.assertEqual(self.execs, [])


class RelogTests(SynchronousTestCase):
    """
    Tests for the events the supervisor logs again.
    """

    def test_events_logged_again(self) -> None:
        """The events that travelled in the environment are logged in the supervisor."""
        from twistproxy.supervisor_tap import _relog

        event = {"log_format": "created {x}", "x": "a CA", "log_time": 1.0,
                 "log_namespace": "twistproxy", "log_level": LogLevel.info}
        with capturedLogs() as events:
            _relog(eventAsJSON(event) + "\nnot json\n")
        self.assertEqual([formatEvent(e) for e in events], ["created a CA"])
