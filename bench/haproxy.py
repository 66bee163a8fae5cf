#!/usr/bin/env python3
"""
Issue 18's bench row: keep-alive 1 KiB requests through HAProxy (tcp mode,
``send-proxy``) to two twistproxy instances on loopback ports, against the
same with two proxy.py instances (``--enable-proxy-protocol``), on the
machine's two cores as a team would run them (nothing pinned: HAProxy, the
instances, nginx and wrk share the cores).

    python bench/haproxy.py                        # 3 rounds of 10 s, 50 connections
    python bench/haproxy.py --rounds 5 --seconds 5

Each round starts both setups fresh, one after the other (the order
reversed every other round), and loads each with the same wrk run against
bench/run.py's nginx origin; it prints each round's requests per second,
the medians and the median of the paired ratios twistproxy/proxy.py: quote
that one.  proxy.py is installed into bench/run.py's virtualenv
(``bench/.venv-proxypy``, the version bench/run.py names) unless
``--no-install``.  Needs ``haproxy``, ``nginx`` and ``wrk`` (Debian's).
Only 127.0.0.1 is used; every load is bounded in time.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import run as bench  # noqa: E402  (bench/run.py: its nginx origin, wrk and venv helpers)

REPO = Path(__file__).resolve().parent.parent
PROXYPY = bench.PROXYPY_VENV / "bin" / "proxy"
CONFIG = """\
defaults
    mode tcp
    timeout connect 1s
    timeout client 30s
    timeout server 30s
frontend proxy
    bind 127.0.0.1:{front}
    default_backend proxies
backend proxies
    balance roundrobin
    default-server send-proxy
{servers}
"""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_listening(port: int, seconds: float = 20.0) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.1)
    raise SystemExit(f"nothing listens on {port} after {seconds} s")


def instances(kind: str, ports: list[int], tmp: Path) -> list[subprocess.Popen[bytes]]:
    """Start two proxies of *kind* behind the PROXY protocol."""
    started = []
    for port in ports:
        if kind == "twistproxy":
            argv = [sys.executable, "-c", "from twisted.scripts.twistd import run; run()",
                    "-n", "--pidfile=", "twistproxy", "-q", "--ca-dir", str(tmp / "ca"),
                    "--port", f"haproxy:tcp:{port}:interface=127.0.0.1"]
        else:
            argv = [str(PROXYPY), "--hostname", "127.0.0.1", "--port", str(port),
                    "--enable-proxy-protocol", "--num-workers", "1"]
        env = dict(os.environ, PYTHONPATH=str(REPO))
        started.append(subprocess.Popen(argv, env=env, cwd=tmp, stdout=subprocess.DEVNULL,
                                        stderr=subprocess.DEVNULL))
    return started


def scenario(kind: str, haproxy: str, origin_port: int, args: argparse.Namespace,
             lua: Path) -> dict[str, float]:
    """One measured run of *kind*'s two instances behind a fresh HAProxy."""
    with tempfile.TemporaryDirectory() as directory:
        tmp = Path(directory)
        ports = [free_port(), free_port()]
        front = free_port()
        servers = "\n".join(f"    server p{i} 127.0.0.1:{port}" for i, port in enumerate(ports))
        config = tmp / "haproxy.cfg"
        config.write_text(CONFIG.format(front=front, servers=servers))
        children = instances(kind, ports, tmp)
        balancer = None
        try:
            for port in ports:
                wait_listening(port)
            balancer = subprocess.Popen([haproxy, "-db", "-f", str(config)],
                                        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            wait_listening(front)
            out = subprocess.run(
                ["wrk", "-t1", f"-c{args.connections}", f"-d{args.seconds}s", "--timeout",
                 "10s", "--latency", "-s", str(lua), f"http://127.0.0.1:{front}"],
                capture_output=True, text=True, timeout=args.seconds + 60)
            return bench.parse_wrk(out.stdout)
        finally:
            for child in [*children, *([balancer] if balancer else [])]:
                child.send_signal(signal.SIGTERM)
            for child in [*children, *([balancer] if balancer else [])]:
                try:
                    child.wait(15)
                except subprocess.TimeoutExpired:
                    child.kill()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--connections", type=int, default=50)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--no-install", action="store_true",
                        help="do not install proxy.py into bench/.venv-proxypy")
    args = parser.parse_args()
    haproxy = shutil.which("haproxy") or "/usr/sbin/haproxy"
    if not os.access(haproxy, os.X_OK):
        raise SystemExit("haproxy is not installed (apt-get install haproxy)")
    for tool in ("nginx", "wrk"):
        if shutil.which(tool) is None:
            raise SystemExit(f"{tool} is not installed (apt-get install {tool})")
    if not PROXYPY.exists() and not args.no_install:
        why = bench.install_venv(bench.PROXYPY_VENV, bench.PROXYPY_REQUIREMENT,
                                 "pip-proxypy.log")
        if why is not None:
            raise SystemExit(why)
    kinds = ["twistproxy", *(["proxy.py"] if PROXYPY.exists() else [])]
    _, cert, key = bench.make_origin_pki(bench.OUT / "pki")
    http_port, https_port = bench.free_ports(2)
    nginx = bench.start_origin(http_port, https_port, cert, key)
    lua = bench.write_lua("haproxy", path=f"http://127.0.0.1:{http_port}/{bench.SMALL}",
                          host=f"127.0.0.1:{http_port}", close=False)
    rps: dict[str, list[float]] = {kind: [] for kind in kinds}
    try:
        print(f"HAProxy -> 2 instances, keep-alive 1 KiB, {args.connections} connections, "
              f"{args.seconds} s per run, {args.rounds} rounds", flush=True)
        for round_number in range(args.rounds):
            order = kinds if round_number % 2 == 0 else kinds[::-1]
            for kind in order:
                result = scenario(kind, haproxy, http_port, args, lua)
                rps[kind].append(result["rps"])
                print(f"  round {round_number + 1}, {kind}: {result['rps']:,.0f} req/s "
                      f"(errors {result['errors']:.0f}, non-2xx {result['non2xx']:.0f})",
                      flush=True)
    finally:
        nginx.stop()
        bench.stop_all()
    for kind in kinds:
        print(f"{kind}: median {statistics.median(rps[kind]):,.0f} req/s")
    if len(kinds) == 2:
        ratios = [a / b for a, b in zip(rps["twistproxy"], rps["proxy.py"], strict=True)]
        print("twistproxy / proxy.py per round: "
              + ", ".join(f"{r:.2f}" for r in ratios)
              + f"; median {statistics.median(ratios):.2f}")


if __name__ == "__main__":
    main()
