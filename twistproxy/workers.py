# -*- test-case-name: tests.test_workers -*-
"""
One process per core: ``twistd twistproxy --workers N``.

The process twistd starts becomes a :class:`Supervisor`: it makes sure it
alone serves the address (no other process listens there, checked with a
socket bound *without* ``SO_REUSEPORT``, and no other supervisor is starting
on it, a lock named after the address), picks the port for port 0, then
starts N worker processes, each a full proxy with the same CA, each
listening on that address with its own ``SO_REUSEPORT`` socket.  The kernel
spreads new connections evenly over those sockets (one socket shared by
every worker would let whichever process wakes first accept a whole burst).

A worker that dies is started again after a delay (1 s) that doubles with
each further quick failure in a row (one within :attr:`Supervisor.quick` seconds of its
start); after :attr:`Supervisor.give_up_after` of them the supervisor gives
up: it stops every worker and exits non-zero, saying why in one line.
Stopping the supervisor stops the workers; a supervisor that dies without
stopping them (``kill -9``) closes the pipe each worker reads as its
standard input, and a worker that meets the end of that pipe stops
(:class:`SupervisorWatch`).

Workers log through the supervisor: each writes its log events as JSON
lines to its standard output (:func:`worker_log_observer`), and the
supervisor publishes them to its own observers, marked with the worker's
number, so ``-l``/``--logfile`` (or any log observer twistd was given)
holds every process's lines, rotated by one process.

Workers that ``--save`` append to one file: each flow is one line written
with a single unbuffered append, which the kernel does not interleave with
another process's, so the file stays one flow per line.
"""

from __future__ import annotations

import atexit
import errno
import os
import socket
import sys
from collections.abc import Callable, Sequence
from typing import IO, Any

from twisted.application.service import Service
from twisted.internet import fdesc
from twisted.internet.defer import Deferred, DeferredList, maybeDeferred
from twisted.internet.protocol import ProcessProtocol
from twisted.logger import (
    FileLogObserver,
    ILogObserver,
    Logger,
    eventAsJSON,
    eventFromJSON,
    globalLogPublisher,
)
from twisted.python.failure import Failure

from twistproxy._target import join_host_port

_log = Logger(namespace="twistproxy.workers")


def split_endpoint(description: str) -> tuple[list[str], dict[str, str]]:
    """
    Split an endpoint description as ``serverFromString`` does: fields
    separated by ``:``, ``name=value`` fields by name, ``\\`` escaping the
    next character.
    """
    args: list[str] = []
    kwargs: dict[str, str] = {}
    current = ""
    name: str | None = None
    chars = iter(description)
    for char in chars:
        if char == "\\":
            current += next(chars, "")
        elif char == ":":
            if name is None:
                args.append(current)
            else:
                kwargs[name] = current
            current, name = "", None
        elif char == "=" and name is None:
            name, current = current, ""
        else:
            current += char
    if name is None:
        args.append(current)
    else:
        kwargs[name] = current
    return args, kwargs


INTERFACE_POSITION = {"tcp": 2, "tcp6": 3, "ssl": 5}
"""Where each endpoint type's parser takes ``interface`` positionally."""

_POSITIONS = {
    "interface": INTERFACE_POSITION,
    "backlog": {"tcp": 3, "tcp6": 2},
}


def endpoint_argument(args: list[str], kwargs: dict[str, str], name: str, default: str) -> str:
    """
    The argument *name* (``interface`` or ``backlog``) of a split endpoint
    description: by name, else in the position its type's parser gives it.
    """
    if name in kwargs:
        return kwargs[name]
    position = _POSITIONS[name].get(args[0].lower() if args else "")
    if position is not None and len(args) > position:
        return args[position]
    return default


def bind(description: str, *, listen: bool = True, reuse_port: bool = True) -> socket.socket:
    """
    Bind (with ``SO_REUSEPORT``) and listen as the endpoint *description*
    says: ``tcp:PORT`` or ``tcp6:PORT``, with ``interface`` and ``backlog``
    by name or in Twisted's positions.

    :param listen: ``False`` only binds: a probe of the address that no
        connection is ever handed to.
    :param reuse_port: ``False`` binds without ``SO_REUSEPORT``, which fails
        while any other socket listens on the address (a probe that no
        second ``--workers`` instance can share the port with).
    :raises ValueError: for another kind of endpoint or a malformed one.
    :raises OSError: if the address cannot be bound.
    """
    args, kwargs = split_endpoint(description)
    kind = args[0].lower() if args else ""
    if kind not in ("tcp", "tcp6"):
        raise ValueError(f"--workers needs a tcp: or tcp6: endpoint, not {description!r}")
    if len(args) < 2 or not args[1].isdigit():
        raise ValueError(f"no port in {description!r}")
    port = int(args[1])
    interface = endpoint_argument(args, kwargs, "interface",
                                  "::" if kind == "tcp6" else "0.0.0.0") or "0.0.0.0"
    backlog = int(endpoint_argument(args, kwargs, "backlog", "128"))
    family = socket.AF_INET6 if kind == "tcp6" or ":" in interface else socket.AF_INET
    listening = socket.socket(family, socket.SOCK_STREAM)
    try:
        # SO_REUSEADDR alone still refuses an address another socket
        # listens on; it only lets connections in TIME_WAIT be.
        listening.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if reuse_port:
            listening.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        listening.bind((interface, port))
        if listen:
            listening.listen(backlog)
        listening.setblocking(False)
    except BaseException:
        listening.close()
        raise
    return listening


def address_lock(host: str, port: int) -> socket.socket | None:
    """
    Take the lock of one supervisor per address: a UNIX socket bound to a
    name in Linux's abstract namespace made of this user's id and
    *host*:*port*.  Binding is atomic and the kernel frees the name when
    the socket is closed or its process dies (even by ``kill -9``), so no
    stale lock outlives a crash.  Elsewhere than on Linux there is no such
    namespace: ``None``, and only the port check guards the address.

    :returns: The socket holding the lock (close it to release), or
        ``None`` where locks are not available.
    :raises OSError: ``EADDRINUSE`` if another process holds the lock.
    """
    if not sys.platform.startswith("linux"):
        return None
    lock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        lock.bind(f"\0twistproxy-workers-{os.getuid()}-{join_host_port(host, port)}")
    except OSError as e:
        lock.close()
        if e.errno == errno.EADDRINUSE:
            raise OSError(e.errno, "another twistproxy --workers supervisor is starting "
                                   "on this address") from None
        raise
    return lock


_SUPERVISOR_ONLY = ("--workers", "--restart-limit", "--port", "-p", "--metrics-port",
                    "--drain-delay")


def worker_arguments(args: list[str]) -> list[str]:
    """
    The ``twistd twistproxy`` arguments *args* for a worker: without
    ``--workers``, ``--restart-limit``, ``--port`` (and ``-p``),
    ``--metrics-port`` and ``--drain-delay`` (the supervisor's), and their
    values (the supervisor adds the concrete port).
    """
    out: list[str] = []
    skip = False
    for arg in args:
        if skip:
            skip = False
        elif arg in _SUPERVISOR_ONLY:
            skip = True
        elif arg != "--worker" and not arg.startswith(
            (*(f"{name}=" for name in _SUPERVISOR_ONLY if name.startswith("--")), "-p")
        ):
            out.append(arg)
    return out


EVENTS_VARIABLE = "TWISTPROXY_SUPERVISOR_EVENTS"
"""
The environment variable that carries, as JSON lines, what ``twistd
twistproxy`` logged before it became the supervisor (:func:`exec_supervisor`;
the CA it created): twistd starts logging after that, so the supervisor
logs them again.
"""

_TWISTD = ("-c", "import sys; from twisted.scripts.twistd import run; run()")
"""How a worker (or the supervisor, see :func:`exec_supervisor`) runs twistd."""


def exec_supervisor(raw_args: Sequence[str], arguments: Sequence[str],
                    events: Sequence[dict[str, Any]] = ()) -> None:
    """
    Become ``twistd twistproxy-supervisor`` *arguments*
    (:mod:`twistproxy.supervisor_tap`) in place of this process, which is
    twistd running ``twistproxy`` *raw_args*: the same process id (twistd
    writes its pid file and goes to the background only after this), the
    same twistd options (``-l``, ``--pidfile``, ``-n``...), none of the
    modules loaded so far.  *events*, logged before twistd's logging
    starts, are handed over to be logged there.

    Returns only when this process is not such a twistd (another runner,
    or options not from its command line): the caller then supervises in
    this process.
    """
    argv = sys.argv
    at = len(argv) - len(raw_args) - 1
    if ("twisted.scripts.twistd" not in sys.modules or at < 1 or argv[at] != "twistproxy"
            or argv[at + 1:] != list(raw_args)):
        return
    env = os.environ.copy()
    if events:
        env[EVENTS_VARIABLE] = "".join(eventAsJSON(event) + "\n" for event in events)
    for stream in (sys.stdout, sys.stderr):
        if stream is not None:
            stream.flush()  # what is buffered would be lost with this image
    os.execve(sys.executable, [sys.executable, *_TWISTD, *argv[1:at],
                               "twistproxy-supervisor", *arguments], env)


_MAX_LINE = 1024 * 1024
"""Bytes of a worker's output kept waiting for the end of a line."""


class _Worker(ProcessProtocol):
    """
    One worker process, as the supervisor sees it: its log lines are
    published to the supervisor's observer.
    """

    def __init__(self, supervisor: Supervisor, number: int, started: float) -> None:
        self.supervisor = supervisor
        self.number = number
        self.started = started
        self.ended: Deferred[None] = Deferred()
        self._partial = {1: b"", 2: b""}

    def childDataReceived(self, childFD: int, data: bytes) -> None:
        """Publish each whole line the worker wrote on standard output or error."""
        if childFD not in self._partial:
            return
        *lines, rest = (self._partial[childFD] + data).split(b"\n")
        if len(rest) > _MAX_LINE:
            lines.append(rest)
            rest = b""
        self._partial[childFD] = rest
        for line in lines:
            if line.strip():
                self.supervisor.worker_output(self, line, json=childFD == 1)

    def processEnded(self, reason: Failure) -> None:
        for fd, rest in self._partial.items():
            if rest.strip():
                self.supervisor.worker_output(self, rest, json=fd == 1)
        self._partial = {}
        self.ended.callback(None)
        self.supervisor.worker_ended(self, reason)


class Supervisor(Service):
    """
    Starts *count* workers listening on one address, and restarts those
    that die, backing off, until one fails too often right after starting.

    :param reactor: Spawns the processes, tells the time and schedules the
        restarts.
    :param count: How many workers.
    :param endpoint: The ``tcp:``/``tcp6:`` endpoint description to serve.
    :param worker_args: The ``twistd twistproxy`` arguments for each worker
        (they get ``--port`` with the concrete port and ``--worker`` on top).
    :param restart_delay: Seconds to wait before starting a dead worker
        again, doubled for each quick failure in a row after the first.
    :param max_restart_delay: The most that delay grows to.
    :param quick: A worker that exits within this many seconds of its start
        failed quickly.
    :param give_up_after: After this many quick failures in a row of one
        worker, stop every worker and call *give_up*.
    :param kill_after: Seconds the workers have to stop after ``SIGTERM``
        (their drain: ``--shutdown-timeout`` and a little more) before
        they are killed.
    :param give_up: Called with a one-line reason when the supervisor gives
        up (the twistd plugin stops the reactor and exits with status 1).
    :param observer: Where the workers' log events go.
    :ivar workers: The workers running now, by number.
    :ivar address: ``(host, port)`` the workers listen on, once started.
    """

    address: tuple[str, int] | None = None
    _lock: socket.socket | None = None

    def __init__(
        self,
        reactor: Any,
        *,
        count: int,
        endpoint: str,
        worker_args: Sequence[str],
        restart_delay: float = 1.0,
        max_restart_delay: float = 30.0,
        quick: float = 10.0,
        give_up_after: int = 5,
        kill_after: float = 10.0,
        give_up: Callable[[str], object],
        observer: ILogObserver = globalLogPublisher,
    ) -> None:
        self._reactor = reactor
        self.count = count
        self._endpoint = endpoint
        self._worker_args = list(worker_args)
        self.restart_delay = restart_delay
        self.max_restart_delay = max_restart_delay
        self.quick = quick
        self.give_up_after = give_up_after
        self.kill_after = kill_after
        self._give_up = give_up
        self._observer = observer
        self._text_log = Logger(namespace=_log.namespace, observer=observer)
        self.workers: dict[int, _Worker] = {}
        self._processes: dict[int, Any] = {}
        self._quick_failures: dict[int, int] = {}

    def startService(self) -> None:
        """
        Check that this supervisor alone serves the address, then start the
        workers.

        :raises OSError: if another process listens on the address, or
            another supervisor is starting on it.
        """
        try:
            probe = bind(self._endpoint, listen=False, reuse_port=False)
        except OSError as e:
            if e.errno == errno.EADDRINUSE:
                raise OSError(e.errno, "another process listens on this address") from None
            raise
        with probe:
            host, port = probe.getsockname()[:2]
            # Taken while the probe holds the port, so that a port 0 probe
            # names the port no one else took meanwhile.
            self._lock = address_lock(host, port)
        self.address = (host, port)
        kind = self._endpoint.partition(":")[0]
        escaped = host.replace(":", "\\:")
        self._concrete = f"{kind}:{port}:interface={escaped}"
        super().startService()
        _log.info("twistproxy listening on {address} with {count} workers",
                  address=join_host_port(host, port), count=self.count)
        for number in range(self.count):
            self._spawn(number)

    def _spawn(self, number: int) -> None:
        if not self.running:
            return
        worker = _Worker(self, number, self._reactor.seconds())
        args = [
            sys.executable, *_TWISTD,
            "-n", "--pidfile=", "--logger", f"{__name__}.worker_log_observer",
            "twistproxy", *self._worker_args, "--port", self._concrete, "--worker",
            "--worker-number", str(number),
        ]
        # The worker's standard input is a pipe only this process writes
        # to: its end tells the worker that the supervisor is gone.
        process = self._reactor.spawnProcess(
            worker, sys.executable, args, env=os.environ.copy(),
            childFDs={0: "w", 1: "r", 2: "r"},
        )
        self.workers[number] = worker
        self._processes[number] = process
        _log.info("started worker {number} (pid {pid})", number=number, pid=process.pid)

    def worker_output(self, worker: _Worker, line: bytes, *, json: bool) -> None:
        """
        Publish one line *worker* wrote: a log event in JSON from its
        standard output (*json*), otherwise text (a message from before its
        logging started, or from the interpreter), logged as a warning.
        """
        text = line.decode("utf-8", "replace")
        event = None
        if json:
            try:
                event = eventFromJSON(text)
            except ValueError:
                event = None
        if not isinstance(event, dict) or "log_time" not in event:
            self._text_log.warn("worker {worker}: {line}", worker=worker.number,
                                line=text.rstrip())
            return
        level = getattr(event.get("log_level"), "name", "-")
        event["log_system"] = f"{event.get('log_namespace', '-')}#{level} worker {worker.number}"
        event["worker"] = worker.number
        self._observer(event)

    def worker_ended(self, worker: _Worker, reason: Failure) -> None:
        """
        A worker exited: start another after a delay that doubles with each
        quick failure in a row, or give up after :attr:`give_up_after` of
        them; nothing while stopping.
        """
        if self.workers.get(worker.number) is worker:
            del self.workers[worker.number]
            self._processes.pop(worker.number, None)
        if not self.running:
            return
        lived = self._reactor.seconds() - worker.started
        failures = self._quick_failures.get(worker.number, 0) + 1 if lived < self.quick else 0
        self._quick_failures[worker.number] = failures
        why = reason.getErrorMessage()
        if failures >= self.give_up_after:
            message = (f"worker {worker.number} failed {failures} times in a row within "
                       f"{self.quick:g} s of starting (last: {why}); giving up")
            _log.error("{message}", message=message)
            self._give_up(message)
            return
        delay = min(self.restart_delay * 2 ** max(failures - 1, 0), self.max_restart_delay)
        _log.warn("worker {number} exited ({why}); restarting in {delay:g} s",
                  number=worker.number, why=why, delay=delay)
        self._reactor.callLater(delay, self._spawn, worker.number)

    def stopService(self) -> Deferred[Any]:
        """Stop the workers (TERM, then KILL after ``kill_after`` s) and release the address."""
        super().stopService()
        # The workers stop listening first thing: the port check guards
        # the address from here on.
        lock, self._lock = self._lock, None
        if lock is not None:
            lock.close()
        ended = [worker.ended for worker in self.workers.values()]
        for process in list(self._processes.values()):
            _signal(process, "TERM")
        killer = self._reactor.callLater(self.kill_after, self._kill_all)

        def done(result: object) -> object:
            if killer.active():
                killer.cancel()
            return result

        return DeferredList(ended).addBoth(done)

    def _kill_all(self) -> None:
        for process in list(self._processes.values()):
            _signal(process, "KILL")


def _signal(process: Any, name: str) -> None:
    try:
        process.signalProcess(name)
    except Exception:
        pass  # already gone


def stop_and_fail(reactor: Any) -> Callable[[str], None]:
    """
    A :class:`Supervisor`'s *give_up* for twistd: stop *reactor* (which
    stops the workers) and, once twistd has finished, end the process with
    status 1 and the reason on standard error.  twistd itself exits 0 after
    any clean stop, so the status is set at interpreter exit.
    """

    def give_up(message: str) -> None:
        atexit.register(_exit, 1, f"twistproxy: {message}")
        if reactor.running:
            reactor.stop()

    return give_up


def _exit(status: int, message: str) -> None:
    for stream in (sys.__stdout__, sys.__stderr__):
        if stream is not None:
            stream.flush()
    if sys.__stderr__ is not None:
        print(message, file=sys.__stderr__, flush=True)
    os._exit(status)


def worker_log_observer() -> ILogObserver:
    """
    twistd's ``--logger`` for a worker: each log event as one JSON line on
    the standard output the worker had when it started (a pipe the
    supervisor reads), before twistd redirects ``sys.stdout`` into the log.
    """
    out: IO[str] = open(os.dup(1), "w", encoding="utf-8", errors="replace")
    return FileLogObserver(out, lambda event: eventAsJSON(event) + "\n")


class SupervisorWatch(Service):
    """
    In a worker: stop the reactor when the supervisor is gone, which the
    end of the pipe that is this worker's standard input tells (the
    supervisor holds its other end, and the kernel closes it when the
    supervisor dies, even by ``kill -9``).

    A pipe rather than Linux's parent-death signal (``prctl``): it works on
    every POSIX system, needs no ``ctypes``, and cannot miss a supervisor
    that died before the worker started watching (the end of a pipe stays
    readable), where a parent-death signal asked for too late never comes.

    :param reactor: Watches the descriptor and is stopped.
    :param fd: The pipe's descriptor (standard input).
    """

    def __init__(self, reactor: Any, fd: int = 0) -> None:
        self._reactor = reactor
        self._fd = fd
        self._watching = False

    def startService(self) -> None:
        """Start watching the pipe."""
        super().startService()
        fdesc.setNonBlocking(self._fd)
        self._reactor.addReader(self)
        self._watching = True

    def stopService(self) -> None:
        """Stop watching."""
        super().stopService()
        if self._watching:
            self._watching = False
            self._reactor.removeReader(self)

    def fileno(self) -> int:
        """The watched descriptor (``IReadDescriptor``)."""
        return self._fd

    def logPrefix(self) -> str:
        """For the reactor's log lines (``ILoggingContext``)."""
        return "SupervisorWatch"

    def doRead(self) -> object:
        """Discard what the supervisor wrote; the end of the pipe ends the worker."""
        return fdesc.readFromFD(self._fd, lambda data: None)

    def connectionLost(self, reason: Failure) -> None:
        """The pipe ended: the supervisor is gone, so this worker stops."""
        if not self._watching:
            return
        self._watching = False
        _log.warn("worker {pid}: the supervisor is gone; stopping", pid=os.getpid())
        if self._reactor.running:
            self._reactor.stop()


class WorkerPortService(Service):
    """
    In a worker: listen on the supervisor's address with a socket of this
    worker's own (``SO_REUSEPORT``), handed to the reactor.

    :param reactor: Adopts the socket.
    :param endpoint: The concrete ``tcp:``/``tcp6:`` endpoint description.
    :param factory: Serves each connection.
    :param shutdown_timeout: Seconds the exchanges in flight may take to
        finish when the worker stops (see :func:`~twistproxy.service.drain`).
    :param wrap: Wraps *factory* for the port (the PROXY protocol's
        :class:`~twistproxy.proxyprotocol.ProxyHeaderFactory`).
    """

    port: Any = None
    _listened: Any = None

    def __init__(
        self, reactor: Any, endpoint: str, factory: Any, *, shutdown_timeout: float = 10.0,
        wrap: Callable[[Any], Any] | None = None,
    ) -> None:
        self._reactor = reactor
        self._endpoint = endpoint
        self._factory = factory
        self._shutdown_timeout = shutdown_timeout
        self._wrap = wrap

    @property
    def accepted(self) -> int:
        """
        The connections this worker accepted so far (its share of the
        port's), stopped or not: the reactor's port numbers the connections
        it accepts (``sessionno``), so counting costs nothing per connection.
        """
        return int(getattr(self._listened, "sessionno", 0))

    def startService(self) -> None:
        """Bind, listen and start accepting."""
        super().startService()
        with bind(self._endpoint) as listening:
            # The reactor keeps a duplicate of the descriptor; ours closes.
            factory = self._factory if self._wrap is None else self._wrap(self._factory)
            self.port = self._reactor.adoptStreamPort(listening.fileno(), listening.family, factory)
        self._listened = self.port
        self._factory.doStart()  # held until drained: see drain()
        _log.info("worker {pid} accepting", pid=os.getpid())

    def stopService(self) -> Any:
        """
        Stop accepting, say how many connections this worker accepted, then
        drain the connections (:func:`~twistproxy.service.drain`).
        """
        # Imported here: the supervisor imports this module, not the proxy.
        from twistproxy.service import drain

        super().stopService()
        port, self.port = self.port, None
        stopped = maybeDeferred(port.stopListening) if port is not None else None
        if port is not None:
            _log.info("worker {pid} stopped accepting; it accepted {accepted} connections",
                      pid=os.getpid(), accepted=self.accepted)
        return drain(self._factory, self._shutdown_timeout, stopped, held=port is not None)
