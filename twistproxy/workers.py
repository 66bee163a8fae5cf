# -*- test-case-name: tests.test_workers -*-
"""
One process per core: ``twistd twistproxy --workers N``.

The process twistd starts becomes a :class:`Supervisor`: it checks that the
address can be bound (and picks the port, for port 0), then starts N worker
processes, each a full proxy with the same CA, each listening on that
address with its own ``SO_REUSEPORT`` socket.  The kernel spreads new
connections evenly over those sockets (one socket shared by every worker
would let whichever process wakes first accept a whole burst).  A worker
that dies is started again after a short delay; stopping the supervisor
stops the workers.

Workers that ``--save`` append to one file: each flow is one line written
with a single unbuffered append, which the kernel does not interleave with
another process's, so the file stays one flow per line.
"""

from __future__ import annotations

import os
import socket
import sys
from collections.abc import Sequence
from typing import Any

from twisted.application.service import Service
from twisted.internet.defer import Deferred, DeferredList, maybeDeferred
from twisted.internet.protocol import ProcessProtocol
from twisted.logger import Logger
from twisted.python.failure import Failure

from twistproxy._target import join_host_port
from twistproxy.service import drain

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


def bind(description: str, *, listen: bool = True) -> socket.socket:
    """
    Bind (with ``SO_REUSEPORT``) and listen as the endpoint *description*
    says: ``tcp:PORT`` or ``tcp6:PORT``, with ``interface`` and ``backlog``
    by name or in Twisted's positions.

    :param listen: ``False`` only binds: a probe of the address that no
        connection is ever handed to.
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
        listening.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listening.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        listening.bind((interface, port))
        if listen:
            listening.listen(backlog)
        listening.setblocking(False)
    except BaseException:
        listening.close()
        raise
    return listening


class _Worker(ProcessProtocol):
    """One worker process, as the supervisor sees it."""

    def __init__(self, supervisor: Supervisor, number: int) -> None:
        self.supervisor = supervisor
        self.number = number
        self.ended: Deferred[None] = Deferred()

    def processEnded(self, reason: Failure) -> None:
        self.ended.callback(None)
        self.supervisor.worker_ended(self, reason)


class Supervisor(Service):
    """
    Starts *count* workers listening on one address, and restarts those
    that die.

    :param reactor: Spawns the processes and schedules the restarts.
    :param count: How many workers.
    :param endpoint: The ``tcp:``/``tcp6:`` endpoint description to serve.
    :param worker_args: The ``twistd twistproxy`` arguments for each worker
        (they get ``--port`` with the concrete port and ``--worker`` on top).
    :param restart_delay: Seconds to wait before starting a dead worker again.
    :ivar workers: The workers running now, by number.
    :ivar address: ``(host, port)`` the workers listen on, once started.
    """

    address: tuple[str, int] | None = None

    def __init__(
        self,
        reactor: Any,
        *,
        count: int,
        endpoint: str,
        worker_args: Sequence[str],
        restart_delay: float = 1.0,
    ) -> None:
        self._reactor = reactor
        self.count = count
        self._endpoint = endpoint
        self._worker_args = list(worker_args)
        self.restart_delay = restart_delay
        self.workers: dict[int, _Worker] = {}
        self._processes: dict[int, Any] = {}

    def startService(self) -> None:
        """Check the address (a port taken fails here), then start the workers."""
        with bind(self._endpoint, listen=False) as probe:
            host, port = probe.getsockname()[:2]
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
        worker = _Worker(self, number)
        args = [
            sys.executable, "-c",
            "import sys; from twisted.scripts.twistd import run; run()",
            "-n", "--pidfile=", "twistproxy", *self._worker_args,
            "--port", self._concrete, "--worker",
        ]
        process = self._reactor.spawnProcess(
            worker, sys.executable, args, env=os.environ.copy(),
            childFDs={0: "w", 1: 1, 2: 2},
        )
        self.workers[number] = worker
        self._processes[number] = process
        _log.info("started worker {number} (pid {pid})", number=number, pid=process.pid)

    def worker_ended(self, worker: _Worker, reason: Failure) -> None:
        """A worker exited: start another after :attr:`restart_delay`, unless stopping."""
        if self.workers.get(worker.number) is worker:
            del self.workers[worker.number]
            self._processes.pop(worker.number, None)
        if self.running:
            _log.warn("worker {number} exited ({why}); restarting in {delay:g} s",
                      number=worker.number, why=reason.getErrorMessage(),
                      delay=self.restart_delay)
            self._reactor.callLater(self.restart_delay, self._spawn, worker.number)

    def stopService(self) -> Deferred[Any]:
        """Stop the workers (TERM, then KILL after 10 s)."""
        super().stopService()
        ended = [worker.ended for worker in self.workers.values()]
        for process in list(self._processes.values()):
            _signal(process, "TERM")
        killer = self._reactor.callLater(10, self._kill_all)

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


class WorkerPortService(Service):
    """
    In a worker: listen on the supervisor's address with a socket of this
    worker's own (``SO_REUSEPORT``), handed to the reactor.

    :param reactor: Adopts the socket.
    :param endpoint: The concrete ``tcp:``/``tcp6:`` endpoint description.
    :param factory: Serves each connection.
    :param shutdown_timeout: Seconds the exchanges in flight may take to
        finish when the worker stops (see :func:`~twistproxy.service.drain`).
    """

    port: Any = None

    def __init__(
        self, reactor: Any, endpoint: str, factory: Any, *, shutdown_timeout: float = 10.0
    ) -> None:
        self._reactor = reactor
        self._endpoint = endpoint
        self._factory = factory
        self._shutdown_timeout = shutdown_timeout

    def startService(self) -> None:
        """Bind, listen and start accepting."""
        super().startService()
        with bind(self._endpoint) as listening:
            # The reactor keeps a duplicate of the descriptor; ours closes.
            self.port = self._reactor.adoptStreamPort(
                listening.fileno(), listening.family, self._factory
            )
        _log.info("worker {pid} accepting", pid=os.getpid())

    def stopService(self) -> Any:
        """Stop accepting, then drain the connections (:func:`~twistproxy.service.drain`)."""
        super().stopService()
        port, self.port = self.port, None
        stopped = maybeDeferred(port.stopListening) if port is not None else None
        return drain(self._factory, self._shutdown_timeout, stopped)
