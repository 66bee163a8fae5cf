#!/usr/bin/env python3
"""
Instructions per proxied request, counted by valgrind: a figure that does not
drift with the machine's load, for telling whether a change made the proxy's
own work cheaper or dearer.

    python bench/instructions.py                   # this checkout
    python bench/instructions.py --compare HEAD~3  # this checkout and a revision
    python bench/instructions.py --addon           # with bench/addons' trivial addon
    python bench/instructions.py --certpage        # with the CA page addon twistd loads
    python bench/instructions.py --metrics         # with the metrics addon (--metrics-port)

The driver runs scenario (a)'s exchange inside one process, over in-memory
transports: a keep-alive client sends ``GET http://127.0.0.1:8000/1k.bin``
through a ``Proxy`` channel, and the origin's side is a pooled upstream
connection answered with a 1 KiB response.  Twisted's ``HTTPChannel``,
httptools, the hook chain, the flow models, the deadlines and the pool all
run as they do in production; the system calls and the reactor's loop do
not, so this measures what a change to twistproxy's Python can change.

valgrind's cachegrind counts the instructions of two runs of the driver, with
``--warm`` and with ``--warm`` plus ``--requests`` requests, and the figure is
their difference divided by ``--requests``: start-up and imports cancel out.
The count is the same run after run (within a few hundred instructions per
request), whatever else the machine is doing, so a difference of 1% is real.
``bench/profile.py --compare`` measures CPU time under wrk instead: it
includes the kernel, but the machine's noise is several per cent.

Only in-memory transports are used: nothing listens, nothing connects.

``--sockets`` counts the whole proxy instead: twistd itself under valgrind,
listening on 127.0.0.1, proxying to bench/run.py's nginx origin for a client
that keeps ``--connections`` keep-alive connections busy (one request in
flight on each), so the reactor's loop, the transports and the system-call
wrappers are counted too (the kernel's side of the system calls is not:
``strace -c -f -p PID`` counts those).  twistd is stopped with SIGTERM and
counted whole, twice as above; a wall-clock timer firing more often in the
slower run is the only noise, a few hundred instructions per request.
"""

from __future__ import annotations

import argparse
import os
import re
import selectors
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
OUT = REPO / "bench" / "out" / "instructions"

BODY = b"x" * 1024
REQUEST = (
    b"GET http://127.0.0.1:8000/1k.bin HTTP/1.1\r\nHost: 127.0.0.1:8000\r\n"
    b"User-Agent: wrk\r\nAccept: */*\r\n\r\n"
)
RESPONSE = (
    b"HTTP/1.1 200 OK\r\nServer: nginx\r\nDate: Wed, 02 Dec 2026 04:00:00 GMT\r\n"
    b"Content-Type: application/octet-stream\r\nContent-Length: 1024\r\n"
    b"Connection: keep-alive\r\nETag: \"6565d1a0-400\"\r\nAccept-Ranges: bytes\r\n\r\n"
) + BODY


def drive(requests: int, addon: bool, certpage: bool = False, metrics: bool = False) -> None:
    """
    Proxy *requests* exchanges over one keep-alive client connection and one
    pooled upstream connection, checking each answer.
    """
    from twisted.internet.address import IPv4Address
    from twisted.internet.defer import succeed
    from twisted.internet.testing import MemoryReactorClock, StringTransport

    from twistproxy.proxy import ProxyFactory

    origins: list[tuple[object, StringTransport]] = []

    class Endpoint:
        def __init__(self, port: int) -> None:
            self.port = port

        def connect(self, factory: object) -> object:
            protocol = factory.buildProtocol(None)  # type: ignore[attr-defined]
            transport = StringTransport(
                hostAddress=IPv4Address("TCP", "127.0.0.1", 40000),
                peerAddress=IPv4Address("TCP", "127.0.0.1", self.port),
            )
            protocol.makeConnection(transport)
            origins.append((protocol, transport))
            return succeed(protocol)

    addons = []
    if addon:
        sys.path.insert(0, str(REPO / "bench" / "addons"))
        import twistproxy_stamp

        addons = list(twistproxy_stamp.addons)
    if certpage:
        # What twistd loads when it intercepts (and so in bench/run.py):
        # a requestheaders hook on every request.
        from datetime import UTC, datetime

        from twistproxy.addons.certpage import CertPage
        from twistproxy.certs import CertificateAuthority

        addons.append(CertPage(CertificateAuthority.generate(now=datetime.now(UTC))))
    if metrics:
        # What --metrics-port loads: the metrics addon, last.
        from prometheus_client import CollectorRegistry

        from twistproxy.metrics import Metrics

        addons.append(Metrics(CollectorRegistry()))
    factory = ProxyFactory(
        reactor=MemoryReactorClock(),
        endpoint_factory=lambda scheme, host, port: Endpoint(port),
        addons=addons,
    )
    if metrics:
        addons[-1].watch([factory])  # as twistd does: hook chains timed, pools sampled
    channel = factory.buildProtocol(IPv4Address("TCP", "127.0.0.1", 5000))
    client = StringTransport(
        hostAddress=IPv4Address("TCP", "127.0.0.1", 8080),
        peerAddress=IPv4Address("TCP", "127.0.0.1", 5000),
    )
    channel.makeConnection(client)
    for _ in range(requests):
        channel.dataReceived(REQUEST)
        origin, upstream = origins[-1]
        if not upstream.value().startswith(b"GET /1k.bin HTTP/1.1\r\n"):
            raise SystemExit(f"unexpected upstream request: {upstream.value()[:200]!r}")
        upstream.clear()
        origin.dataReceived(RESPONSE)  # type: ignore[attr-defined]
        answer = client.value()
        if not (answer.startswith(b"HTTP/1.1 200 OK\r\n") and answer.endswith(BODY)):
            raise SystemExit(f"unexpected answer: {answer[:200]!r}")
        client.clear()
    if len(origins) != 1:
        raise SystemExit(f"{len(origins)} upstream connections: the pool was not used")


def _count(tree: Path, requests: int, addon: bool, certpage: bool, metrics: bool = False) -> int:
    """Instructions valgrind counts for one run of the driver in *tree*."""
    with tempfile.NamedTemporaryFile(dir=OUT, prefix="cachegrind-", delete=False) as out:
        path = out.name
    try:
        argv = ["valgrind", "--tool=cachegrind", "--cache-sim=no",
                f"--cachegrind-out-file={path}", sys.executable, str(Path(__file__).resolve()),
                "--drive", str(requests)]
        if addon:
            argv.append("--addon")
        if certpage:
            argv.append("--certpage")
        if metrics:
            argv.append("--metrics")
        env = dict(os.environ, PYTHONPATH=str(tree), PYTHONHASHSEED="0")
        done = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=900,
                              cwd=tree)
        if done.returncode != 0:
            raise SystemExit(f"the driver failed in {tree}:\n{done.stderr[-3000:]}")
        summary = re.search(r"^summary:\s+(\d+)", Path(path).read_text(), re.MULTILINE)
        if summary is None:
            raise SystemExit(f"no summary in {path}")
        return int(summary.group(1))
    finally:
        os.unlink(path)


def _load(proxy_port: int, origin_port: int, requests: int, connections: int) -> None:
    """*requests* keep-alive GETs through the proxy, one in flight per connection."""
    request = (f"GET http://127.0.0.1:{origin_port}/1k.bin HTTP/1.1\r\n"
               f"Host: 127.0.0.1:{origin_port}\r\nUser-Agent: wrk\r\nAccept: */*\r\n\r\n"
               ).encode()
    selector = selectors.DefaultSelector()
    pending: dict[socket.socket, bytes] = {}
    sent = 0
    for _ in range(min(connections, requests)):
        conn = socket.create_connection(("127.0.0.1", proxy_port), timeout=120)
        conn.sendall(request)
        sent += 1
        pending[conn] = b""
        selector.register(conn, selectors.EVENT_READ)
    done = 0
    deadline = time.monotonic() + 1800
    while done < requests:
        if time.monotonic() > deadline:
            raise SystemExit(f"the load timed out after {done} responses")
        for key, _ in selector.select(timeout=60):
            conn = key.fileobj
            assert isinstance(conn, socket.socket)
            data = conn.recv(65536)
            if not data:
                raise SystemExit("the proxy closed a connection")
            buffered = pending[conn] + data
            end = buffered.find(b"\r\n\r\n")
            if end < 0 or len(buffered) < end + 4 + 1024:
                pending[conn] = buffered
                continue
            if not buffered.startswith(b"HTTP/1.1 200 ") or len(buffered) != end + 4 + 1024:
                raise SystemExit(f"unexpected answer: {buffered[:200]!r}")
            pending[conn] = b""
            done += 1
            if sent < requests:
                conn.sendall(request)
                sent += 1
    for conn in pending:
        selector.unregister(conn)
        conn.close()


def _count_sockets(tree: Path, requests: int, args: argparse.Namespace) -> int:
    """Instructions valgrind counts for a twistd from *tree* serving *requests*."""
    sys.path.insert(0, str(REPO / "bench"))
    import run as bench

    with tempfile.NamedTemporaryFile(dir=OUT, prefix="cachegrind-", delete=False) as out:
        path = out.name
    port, = bench.free_ports(1)
    proxy = bench.TwistProxy(bench.OUT / "pki" / "origin-ca.pem")
    argv = ["valgrind", "--tool=cachegrind", "--cache-sim=no", f"--cachegrind-out-file={path}",
            *proxy.argv(port, addon=args.addon, workers=None)]
    env = dict(os.environ, PYTHONPATH=str(tree), PYTHONHASHSEED="0")
    child = bench.Child(argv, bench.LOGS / "instructions-twistd.log", env=env)
    try:
        bench.wait_listening(port, child, timeout=600)
        _load(port, args.origin_port, requests, args.connections)
        child.stop(grace=300.0)
        summary = re.search(r"^summary:\s+(\d+)", Path(path).read_text(), re.MULTILINE)
        if summary is None:
            raise SystemExit(f"no summary in {path}: {child.tail()}")
        return int(summary.group(1))
    finally:
        child.stop()
        os.unlink(path)


def per_request(tree: Path, args: argparse.Namespace) -> float:
    """Instructions per request in *tree*: the difference of two runs."""
    if args.sockets:
        base = _count_sockets(tree, args.warm, args)
        more = _count_sockets(tree, args.warm + args.requests, args)
    else:
        base = _count(tree, args.warm, args.addon, args.certpage, args.metrics)
        more = _count(tree, args.warm + args.requests, args.addon, args.certpage, args.metrics)
    return (more - base) / args.requests


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0].strip())
    parser.add_argument("--compare", metavar="REV", default=None,
                        help="also count a git revision (in a worktree) and give the ratio")
    parser.add_argument("--addon", action="store_true",
                        help="load bench/addons/twistproxy_stamp.py (one response hook)")
    parser.add_argument("--certpage", action="store_true",
                        help="load the CA page addon, as twistd does (a requestheaders hook)")
    parser.add_argument("--metrics", action="store_true",
                        help="load the metrics addon, as --metrics-port does")
    parser.add_argument("--requests", type=int, default=1000, help="requests measured")
    parser.add_argument("--warm", type=int, default=200, help="requests of the base run")
    parser.add_argument("--sockets", action="store_true",
                        help="count twistd itself on 127.0.0.1 (with --addon or none)")
    parser.add_argument("--connections", type=int, default=1,
                        help="client connections with --sockets, one request in flight each")
    parser.add_argument("--drive", type=int, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.drive is not None:
        drive(args.drive, args.addon, args.certpage, args.metrics)
        return 0
    if not 1 <= args.requests <= 100_000 or not 1 <= args.warm <= 100_000:
        parser.error("--requests and --warm must be 1-100000")
    if args.sockets and (args.certpage or args.metrics):
        parser.error("--sockets runs twistd as bench/run.py does: --addon or no option")
    if not 1 <= args.connections <= 100:
        parser.error("--connections must be 1-100")
    OUT.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    origin = None
    if args.sockets:
        sys.path.insert(0, str(REPO / "bench"))
        import run as bench

        _, cert, key = bench.make_origin_pki(bench.OUT / "pki")
        args.origin_port, https_port = bench.free_ports(2)
        origin = bench.start_origin(args.origin_port, https_port, cert, key)
    try:
        return _main(args, started)
    finally:
        if origin is not None:
            origin.stop()


def _main(args: argparse.Namespace, started: float) -> int:
    figures = {"this checkout": per_request(REPO, args)}
    if args.compare:
        tree = OUT / "compare-tree"
        if tree.exists():
            subprocess.run(["git", "worktree", "remove", "--force", str(tree)], cwd=REPO,
                           timeout=60)
        subprocess.run(["git", "worktree", "add", "--detach", str(tree), args.compare],
                       cwd=REPO, timeout=120, check=True, capture_output=True)
        try:
            figures[args.compare] = per_request(tree, args)
        finally:
            subprocess.run(["git", "worktree", "remove", "--force", str(tree)], cwd=REPO,
                           timeout=60)
    what = ", ".join(name for name, on in (("one response hook", args.addon),
                                           ("the CA page addon", args.certpage),
                                           ("the metrics addon", args.metrics)) if on)
    what = f"with {what}" if what else "no addon"
    where = (f"twistd on 127.0.0.1, {args.connections} connection(s)" if args.sockets
             else "in memory")
    print(f"(a) keep-alive 1 KiB, {where}, {what}: instructions per request")
    for label, figure in figures.items():
        print(f"  {label:>16}: {figure:,.0f}")
    if args.compare:
        this, other = figures.values()
        print(f"  this checkout / {args.compare}: {this / other:.3f}")
    print(f"({time.monotonic() - started:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
