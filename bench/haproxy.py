#!/usr/bin/env python3
"""
Issue 18's bench row, as a scenario that runs and prints: keep-alive 1 KiB
requests through HAProxy (tcp mode, ``send-proxy``) to two twistproxy
instances on loopback ports, and the same with two proxy.py instances
(``--enable-proxy-protocol``) when bench/run.py's proxy.py virtualenv
(``bench/.venv-proxypy``) exists.

    python bench/haproxy.py                 # 10 s per proxy, 50 connections
    python bench/haproxy.py --seconds 3 --connections 10

The load is ``wrk`` when it is installed (keep-alive, ``-c`` connections,
one thread), otherwise a Python client of that many keep-alive
connections, which measures the client as much as the proxies.  The
origin is a small asyncio server in this process answering 1 KiB.  It
prints requests per second, errors, and how each instance's share came
out.  Nothing is pinned and nothing is compared against a stored figure:
on a shared machine the numbers are indications, not results for
``bench/RESULTS.md``.  Needs ``haproxy`` (Debian's package).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
PROXYPY = REPO / "bench" / ".venv-proxypy" / "bin" / "proxy"
BODY = b"x" * 1024
RESPONSE = (b"HTTP/1.1 200 OK\r\nContent-Length: 1024\r\nContent-Type: text/plain\r\n\r\n"
            + BODY)
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


def origin(port: int, ready: threading.Event) -> None:
    """A keep-alive origin answering every request with 1 KiB (runs in a thread)."""

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while await reader.readuntil(b"\r\n\r\n"):
                writer.write(RESPONSE)
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    async def main() -> None:
        server = await asyncio.start_server(serve, "127.0.0.1", port)
        ready.set()
        async with server:
            await server.serve_forever()

    asyncio.run(main())


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


def python_load(front: int, url: str, connections: int, seconds: float) -> tuple[int, int]:
    """Keep-alive GETs on *connections* sockets for *seconds*: (answered, failed)."""
    counts = [0, 0]
    lock = threading.Lock()
    host = url.split("/")[2]
    request = f"GET {url} HTTP/1.1\r\nHost: {host}\r\n\r\n".encode()
    deadline = time.monotonic() + seconds

    def one() -> None:
        done = failed = 0
        try:
            sock = socket.create_connection(("127.0.0.1", front), timeout=5)
            buffer = b""
            while time.monotonic() < deadline:
                sock.sendall(request)
                while b"\r\n\r\n" not in buffer:
                    buffer += _recv(sock)
                head, _, buffer = buffer.partition(b"\r\n\r\n")
                if not head.startswith(b"HTTP/1.1 200"):
                    raise ConnectionError(head[:40].decode("latin-1"))
                while len(buffer) < len(BODY):  # the origin's Content-Length
                    buffer += _recv(sock)
                buffer = buffer[len(BODY):]
                done += 1
            sock.close()
        except OSError:
            failed += 1
        with lock:
            counts[0] += done
            counts[1] += failed

    threads = [threading.Thread(target=one) for _ in range(connections)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(seconds + 10)
    return counts[0], counts[1]


def _recv(sock: socket.socket) -> bytes:
    chunk = sock.recv(65536)
    if not chunk:
        raise ConnectionError("closed")
    return chunk


def wrk_load(front: int, url: str, connections: int, seconds: float) -> str:
    wrk = shutil.which("wrk")
    assert wrk is not None
    script = Path(tempfile.mkstemp(suffix=".lua")[1])
    script.write_text(f'wrk.path = "{url}"\n')
    out = subprocess.run([wrk, "-t1", f"-c{connections}", f"-d{seconds:g}s", "-s", str(script),
                          f"http://127.0.0.1:{front}"], capture_output=True, text=True,
                         timeout=seconds + 30)
    script.unlink()
    return out.stdout


def scenario(kind: str, haproxy: str, origin_port: int, args: argparse.Namespace) -> None:
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
            url = f"http://127.0.0.1:{origin_port}/1k"
            print(f"== {kind}: HAProxy -> 2 instances, keep-alive 1 KiB, "
                  f"{args.connections} connections, {args.seconds:g} s")
            if shutil.which("wrk"):
                print(wrk_load(front, url, args.connections, args.seconds))
            else:
                answered, failed = python_load(front, url, args.connections, args.seconds)
                print(f"   {answered / args.seconds:.0f} requests/s (Python client), "
                      f"{failed} connections failed")
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
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--connections", type=int, default=50)
    args = parser.parse_args()
    haproxy = shutil.which("haproxy") or "/usr/sbin/haproxy"
    if not os.access(haproxy, os.X_OK):
        raise SystemExit("haproxy is not installed (apt-get install haproxy)")
    origin_port = free_port()
    ready = threading.Event()
    threading.Thread(target=origin, args=(origin_port, ready), daemon=True).start()
    ready.wait(10)
    scenario("twistproxy", haproxy, origin_port, args)
    if PROXYPY.exists():
        scenario("proxy.py", haproxy, origin_port, args)
    else:
        print(f"(proxy.py: no {PROXYPY.relative_to(REPO)}; bench/run.py creates it)")


if __name__ == "__main__":
    main()
