# -*- test-case-name: tests.test_workers -*-
"""
Tests for :mod:`twistproxy.workers` and the ``--workers`` options.
"""

from __future__ import annotations

import errno
import os
import shutil
import socket
import tempfile
from typing import Any

from twisted.internet.error import ProcessDone, ProcessTerminated
from twisted.internet.task import Clock
from twisted.logger import LogLevel, eventAsJSON
from twisted.python import usage
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from tests.options import parse
from twistproxy.options import Options
from twistproxy.workers import (
    Supervisor,
    SupervisorWatch,
    address_lock,
    bind,
    worker_arguments,
)


class BindTests(SynchronousTestCase):
    """
    Tests for :func:`bind`.
    """

    def test_tcp_with_interface(self) -> None:
        """A tcp endpoint is bound on its interface, listening and non-blocking."""
        listening = bind("tcp:0:interface=127.0.0.1")
        self.addCleanup(listening.close)
        self.assertEqual(listening.family, socket.AF_INET)
        self.assertEqual(listening.getsockname()[0], "127.0.0.1")
        self.assertFalse(listening.getblocking())

    def test_positional_interface(self) -> None:
        """Twisted's positional form (``tcp:PORT:INTERFACE``) names the interface too."""
        listening = bind("tcp:0:127.0.0.1")
        self.addCleanup(listening.close)
        self.assertEqual(listening.getsockname()[0], "127.0.0.1")

    def test_tcp6_escaped_interface(self) -> None:
        """An IPv6 interface with escaped colons gives an IPv6 socket."""
        try:
            listening = bind(r"tcp6:0:interface=\:\:1")
        except OSError:
            self.skipTest("no IPv6 loopback here")
        self.addCleanup(listening.close)
        self.assertEqual(listening.family, socket.AF_INET6)

    def test_probe_refuses_a_shared_port(self) -> None:
        """
        Without ``SO_REUSEPORT`` a probe cannot bind a port that another
        socket listens on with it, as a second ``--workers`` instance's
        workers would (the kernel would share the port between them).
        """
        listening = bind("tcp:0:interface=127.0.0.1")
        self.addCleanup(listening.close)
        port = listening.getsockname()[1]
        with bind(f"tcp:{port}:interface=127.0.0.1", listen=False) as shared:
            self.assertEqual(shared.getsockname()[1], port)  # with it: shared
        with self.assertRaises(OSError) as caught:
            bind(f"tcp:{port}:interface=127.0.0.1", listen=False, reuse_port=False)
        self.assertEqual(caught.exception.errno, errno.EADDRINUSE)

    def test_refusals(self) -> None:
        """Other endpoint kinds and a missing port are ValueErrors."""
        for description in ("unix:/tmp/x", "ssl:443", "tcp:interface=127.0.0.1"):
            with self.subTest(description=description), self.assertRaises(ValueError):
                bind(description)


class WorkerOptionTests(SynchronousTestCase):
    """
    Tests for ``--workers`` parsing.
    """

    def parse(self, *args: str) -> Options:
        return parse(*args)

    def test_auto_is_the_core_count(self) -> None:
        """``--workers auto`` is one worker per core."""
        self.assertEqual(self.parse("--workers", "auto")["workers"], os.cpu_count() or 1)
        self.assertEqual(self.parse()["workers"], 1)

    def test_bad_counts(self) -> None:
        """Zero, negative and non-numbers are usage errors."""
        for value in ("0", "-2", "many"):
            with self.subTest(value=value), self.assertRaises(usage.UsageError):
                self.parse("--workers", value)

    def test_client_replay_needs_one_process(self) -> None:
        """--client-replay with several workers is refused (it would run N times)."""
        directory = tempfile.mkdtemp()
        self.addCleanup(shutil.rmtree, directory)
        recording = os.path.join(directory, "r.jsonl")
        with open(recording, "w"):
            pass
        with self.assertRaises(usage.UsageError) as caught:
            self.parse("--workers", "2", "--client-replay", recording)
        self.assertIn("--workers 1", str(caught.exception))

    def test_worker_arguments(self) -> None:
        """
        The workers get the same arguments without the workers options and
        the port (the supervisor gives them the concrete one).
        """
        self.assertEqual(
            worker_arguments(["--port", "9", "--workers", "2", "--workers=3", "--quiet",
                              "-p", "8", "--port=7", "--worker", "--addon", "a.py"]),
            ["--quiet", "--addon", "a.py"],
        )


class AddressLockTests(SynchronousTestCase):
    """
    Tests for :func:`address_lock`.
    """

    def test_one_holder(self) -> None:
        """
        A second lock of the same address is refused while the first is
        held, other addresses are not, and closing frees it.
        """
        first = address_lock("127.0.0.1", 1)
        if first is None:
            self.skipTest("no abstract UNIX sockets here")
        with self.assertRaises(OSError) as caught:
            address_lock("127.0.0.1", 1)
        self.assertEqual(caught.exception.errno, errno.EADDRINUSE)
        self.assertIn("another twistproxy --workers supervisor", str(caught.exception))
        other = address_lock("127.0.0.1", 2)
        assert other is not None
        other.close()
        first.close()
        again = address_lock("127.0.0.1", 1)
        assert again is not None
        again.close()


class _Process:
    """A spawned process as a fake reactor hands it out."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.signals: list[str] = []

    def signalProcess(self, name: str) -> None:
        self.signals.append(name)


class _ProcessReactor(Clock):
    """A clock that records the processes it is asked to spawn."""

    def __init__(self) -> None:
        super().__init__()
        self.spawned: list[tuple[Any, list[str], dict[int, str | int]]] = []

    def spawnProcess(self, protocol: Any, executable: str, args: list[str], env: Any,
                     childFDs: dict[int, str | int]) -> _Process:
        process = _Process(1000 + len(self.spawned))
        self.spawned.append((protocol, args, childFDs))
        protocol.makeConnection(process)
        return process


_FAILED = Failure(ProcessTerminated(exitCode=1))


class SupervisorTests(SynchronousTestCase):
    """
    Tests for :class:`Supervisor` on a fake reactor.
    """

    def setUp(self) -> None:
        self.reactor = _ProcessReactor()
        self.reasons: list[str] = []
        self.events: list[dict[str, Any]] = []
        self.supervisor = Supervisor(
            self.reactor, count=2, endpoint="tcp:0:interface=127.0.0.1", worker_args=["-q"],
            give_up_after=3, give_up=self.reasons.append, observer=self.events.append,
        )
        self.supervisor.startService()
        self.addCleanup(self._stop)

    def _stop(self) -> None:
        if self.supervisor.running:
            self.supervisor.stopService()

    def end(self, number: int, reason: Failure = _FAILED) -> None:
        """Worker *number* (the latest of that number) exits."""
        self.supervisor.workers[number].processEnded(reason)

    def test_spawns_workers_with_a_pipe_each(self) -> None:
        """
        Each worker gets the concrete port, the worker flag and its number,
        a JSON logger, and pipes for all three standard descriptors.
        """
        self.assertEqual(len(self.reactor.spawned), 2)
        _, args, fds = self.reactor.spawned[0]
        port = self.supervisor.address[1]  # type: ignore[index]
        self.assertEqual(args[-5:], ["--port", f"tcp:{port}:interface=127.0.0.1", "--worker",
                                     "--worker-number", "0"])
        self.assertEqual(self.reactor.spawned[1][1][-2:], ["--worker-number", "1"])
        self.assertIn("twistproxy.workers.worker_log_observer", args)
        self.assertEqual(fds, {0: "w", 1: "r", 2: "r"})

    def test_back_off_then_give_up(self) -> None:
        """
        A worker that fails right after starting is restarted after 1 s,
        then 2 s; the third quick failure in a row gives up with a reason
        (and no restart).
        """
        self.end(0)
        self.reactor.advance(0.99)
        self.assertEqual(len(self.reactor.spawned), 2)
        self.reactor.advance(0.01)
        self.assertEqual(len(self.reactor.spawned), 3)
        self.end(0)
        self.reactor.advance(1.99)
        self.assertEqual(len(self.reactor.spawned), 3)
        self.reactor.advance(0.01)
        self.assertEqual(len(self.reactor.spawned), 4)
        self.assertEqual(self.reasons, [])
        self.end(0)
        [reason] = self.reasons
        self.assertIn("worker 0 failed 3 times in a row within 10 s of starting", reason)
        self.assertIn("exit code 1", reason)
        self.assertNotIn("\n", reason)
        self.reactor.advance(60)
        self.assertEqual(len(self.reactor.spawned), 4)

    def test_a_long_life_resets_the_count(self) -> None:
        """
        A worker that ran longer than ``quick`` before dying is restarted
        after 1 s, its earlier quick failures forgotten.
        """
        self.end(1)
        self.reactor.advance(1)
        self.end(1)
        self.reactor.advance(2)
        self.reactor.advance(30)  # this one lives
        self.end(1)
        self.reactor.advance(1)
        self.assertEqual(len(self.reactor.spawned), 5)
        self.end(1)
        self.end(0)
        self.assertEqual(self.reasons, [])

    def test_no_restart_when_stopping(self) -> None:
        """
        Stopping signals every worker; those that exit then are not
        restarted.
        """
        processes = [self.supervisor._processes[n] for n in (0, 1)]
        self.supervisor.stopService()
        self.assertEqual([p.signals for p in processes], [["TERM"], ["TERM"]])
        self.end(0, Failure(ProcessDone(0)))
        self.end(1)
        self.reactor.advance(60)
        self.assertEqual(len(self.reactor.spawned), 2)

    def test_killed_after_kill_after(self) -> None:
        """
        Workers still running ``kill_after`` seconds after ``SIGTERM`` (their
        drain outlived its deadline) are killed; not a moment before.
        """
        self.supervisor.kill_after = 15.0
        processes = [self.supervisor._processes[n] for n in (0, 1)]
        self.supervisor.stopService()
        self.end(0, Failure(ProcessDone(0)))
        self.reactor.advance(14.9)
        self.assertEqual([p.signals for p in processes], [["TERM"], ["TERM"]])
        self.reactor.advance(0.1)
        self.assertEqual(processes[1].signals, ["TERM", "KILL"])

    def test_worker_log_events_published(self) -> None:
        """
        A JSON log event a worker writes on standard output is published
        with its worker's number in the system, whole lines only; text on
        standard error, or output that is not an event, is logged as text.
        """
        worker = self.supervisor.workers[1]
        line = eventAsJSON({"log_format": "hello {who}", "who": "you", "log_time": 5.0,
                            "log_level": LogLevel.info, "log_namespace": "twistproxy"})
        worker.childDataReceived(1, line[:10].encode())
        self.assertEqual(self.events, [])
        worker.childDataReceived(1, line[10:].encode() + b"\n")
        [event] = self.events
        self.assertEqual(event["log_system"], "twistproxy#info worker 1")
        self.assertEqual(event["who"], "you")
        self.assertEqual(event["log_time"], 5.0)
        worker.childDataReceived(2, b"Traceback (most recent call last):\n")
        worker.childDataReceived(1, b"not an event\n\n")
        texts = [(e["log_level"], e["line"]) for e in self.events[1:]]
        self.assertEqual(texts, [(LogLevel.warn, "Traceback (most recent call last):"),
                                 (LogLevel.warn, "not an event")])
        self.assertEqual(self.events[1]["worker"], 1)

    def test_unfinished_line_published_at_exit(self) -> None:
        """What a worker wrote without a newline before exiting is still logged."""
        self.supervisor.workers[0].childDataReceived(2, b"twistproxy: cannot listen")
        self.end(0)
        self.assertEqual(self.events[0]["line"], "twistproxy: cannot listen")


class SupervisorWatchTests(SynchronousTestCase):
    """
    Tests for :class:`SupervisorWatch`, on a real pipe and a fake reactor.
    """

    def test_end_of_pipe_stops_the_reactor(self) -> None:
        """
        Bytes on the pipe are ignored; its end stops the reactor, once, and
        the watch is no longer a reader.
        """
        read, write = os.pipe()
        self.addCleanup(os.close, read)

        class Reactor:
            running = True
            stops = 0
            readers: set[object] = set()

            def addReader(self, reader: object) -> None:
                self.readers.add(reader)

            def removeReader(self, reader: object) -> None:
                self.readers.discard(reader)

            def stop(self) -> None:
                self.stops += 1

        reactor = Reactor()
        watch = SupervisorWatch(reactor, read)
        watch.startService()
        self.assertEqual(reactor.readers, {watch})
        os.write(write, b"x")
        self.assertIsNone(watch.doRead())
        os.close(write)
        ended = watch.doRead()
        self.assertIsNotNone(ended)
        reactor.readers.discard(watch)  # what the reactor does with a reader that ended
        watch.connectionLost(Failure(ended))  # type: ignore[arg-type]
        self.assertEqual(reactor.stops, 1)
        watch.stopService()
        self.assertEqual(reactor.stops, 1)
