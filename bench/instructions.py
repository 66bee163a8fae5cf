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
flight on each; ``--https``: inside intercepted ``CONNECT`` tunnels), so
the reactor's loop, the transports, TLS and the system-call wrappers are
counted too (the kernel's side of the system calls is not:
``strace -c -f -p PID`` counts those).  twistd is stopped with SIGTERM and
counted whole, twice as above.  Timers that fire by the clock, and how the
connections' requests happen to fall into reactor turns, make it repeat
less exactly than in memory: the same code counted twice gave 512,549 and
513,316 per request (8 connections, 0.15% apart).  About 2 minutes a revision.
"""

from __future__ import annotations

import argparse
import os
import re
import socket
import ssl
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


def _load(proxy_port: int, args: argparse.Namespace, requests: int, ca_pem: Path) -> None:
    """
    *requests* keep-alive GETs of 1 KiB through the proxy over
    ``args.connections`` connections, one request in flight on each: absolute
    form, or with ``--https`` origin form inside an intercepted ``CONNECT``.
    """
    target = f"127.0.0.1:{args.https_port if args.https else args.origin_port}"
    path = "/1k.bin" if args.https else f"http://{target}/1k.bin"
    request = (f"GET {path} HTTP/1.1\r\nHost: {target}\r\nUser-Agent: wrk\r\n"
               "Accept: */*\r\n\r\n").encode()
    conns: list[socket.socket] = []
    try:
        for _ in range(min(args.connections, requests)):
            conn = socket.create_connection(("127.0.0.1", proxy_port), timeout=120)
            conns.append(conn)
            if args.https:
                conn.sendall(f"CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n\r\n".encode())
                if not _read_head(conn).startswith(b"HTTP/1.1 200"):
                    raise SystemExit("the proxy refused the CONNECT")
                context = ssl.create_default_context(cafile=str(ca_pem))
                conns[-1] = context.wrap_socket(conn, server_hostname="127.0.0.1")
        done = 0
        deadline = time.monotonic() + 1800
        while done < requests:
            if time.monotonic() > deadline:
                raise SystemExit(f"the load timed out after {done} responses")
            batch = conns[:requests - done]
            for conn in batch:
                conn.sendall(request)
            for conn in batch:
                head = _read_head(conn)
                body = b""
                while len(body) < 1024:
                    data = conn.recv(1024 - len(body))
                    if not data:
                        raise SystemExit("the proxy closed a connection")
                    body += data
                if not head.startswith(b"HTTP/1.1 200 "):
                    raise SystemExit(f"unexpected answer: {head[:200]!r}")
            done += len(batch)
    finally:
        for conn in conns:
            conn.close()


def _read_head(conn: socket.socket) -> bytes:
    """A response head, read a byte at a time (the body is left unread)."""
    head = b""
    while not head.endswith(b"\r\n\r\n"):
        data = conn.recv(1)
        if not data:
            raise SystemExit(f"the proxy closed the connection after {head[:200]!r}")
        head += data
    return head


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
        _load(port, args, requests, proxy.ca_pem())
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
    parser.add_argument("--https", action="store_true",
                        help="with --sockets: scenario (e), HTTPS intercepted through CONNECT")
    parser.add_argument("--connections", type=int, default=1,
                        help="client connections with --sockets, one request in flight each")
    parser.add_argument("--drive", type=int, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.drive is not None:
        drive(args.drive, args.addon, args.certpage, args.metrics)
        return 0
    if not 1 <= args.requests <= 100_000 or not 1 <= args.warm <= 100_000:
        parser.error("--requests and --warm must be 1-100000")
    if args.https and not args.sockets:
        parser.error("--https needs --sockets")
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
        args.origin_port, args.https_port = bench.free_ports(2)
        origin = bench.start_origin(args.origin_port, args.https_port, cert, key)
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
    scenario = "(e) HTTPS intercepted" if args.https else "(a)"
    print(f"{scenario} keep-alive 1 KiB, {where}, {what}: instructions per request")
    for label, figure in figures.items():
        print(f"  {label:>16}: {figure:,.0f}")
    if args.compare:
        this, other = figures.values()
        print(f"  this checkout / {args.compare}: {this / other:.3f}")
    print(f"({time.monotonic() - started:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
