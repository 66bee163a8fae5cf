#!/usr/bin/env python3
"""
WebSocket echo through twistproxy and through mitmproxy: messages/s and CPU.

    python bench/websocket.py                        # 5 pairs of fresh proxies
    python bench/websocket.py --via absolute       # the upgrade without CONNECT
    python bench/websocket.py --pairs 3 --rounds 2 --seconds 5 --connections 10 --size 64
    python bench/websocket.py --twistproxy-tree ../other-checkout

An echo origin (the ``websockets`` library's server, plain ``ws://``) and a
client (``websockets``, ``connect(..., proxy="http://127.0.0.1:P")``) run in
processes of their own pinned to the load core; the proxies are started with
their defaults, pinned to the proxy core: ``twistd -n twistproxy --port P``
(with ``--ca-dir`` under bench/out/) and ``mitmdump --listen-host 127.0.0.1 -p
P -q`` (with its confdir under bench/out/).  The ``websockets`` client reaches
a ``ws://`` URI through an HTTP proxy with a ``CONNECT`` tunnel, so what is
measured is what each proxy does by default with plain HTTP inside a
tunnel; before the pairs, one logging instance of each is probed to say
which path it took (HTTP flows with a WebSocket relayed message by message,
or a raw tunnel).  ``--via absolute`` sends the upgrade to the proxy as an
absolute-form ``GET http://127.0.0.1:ORIGIN/`` instead (no tunnel).

Each pair starts a fresh twistproxy and a fresh mitmproxy (which one starts
first alternates between pairs), warms each up with a discarded 1 s run,
then loads them alternately for ``--rounds`` rounds: each run opens
``--connections`` WebSockets and, on each, sends a ``--size``-byte binary
message and waits for its echo, again and again, for ``--seconds`` (and at
most a bounded number of round trips).  Every echo must equal what was sent,
or the run fails.  Figures per run: round trips per second, and the proxy's
CPU seconds (user + system, from /proc) per 1,000 round trips.  Printed: each
run, each pair's ratios twistproxy/mitmproxy (of the pair's medians), and the
medians over the pairs.  Only 127.0.0.1 is used; every load is bounded in
time and count.  Logs go to bench/out/logs/websocket-*.log.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import json
import os
import random
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import run as bench  # noqa: E402  (bench/run.py: process, port, /proc and venv helpers)

MAX_PER_CONNECTION = 1_000_000  # round trips on one connection in one run, at most
STALL = 10.0  # seconds an echo may take before the run fails as stalled
OPEN_TIMEOUT = 15.0  # seconds to open all the connections of a run
WARMUP_SECONDS = 1
PROXIES = ("twistproxy", "mitmproxy")


# -- the origin and the client (run as child processes of the harness) -------------


async def _serve(port: int) -> None:
    """The echo origin: every message comes back as it came."""
    from websockets.asyncio.server import ServerConnection, serve

    async def echo(ws: ServerConnection) -> None:
        async for message in ws:
            await ws.send(message)

    async with serve(echo, "127.0.0.1", port, max_size=None):
        await asyncio.Future()  # until the harness stops the process


class EchoMismatch(Exception):
    """An echo differed from the message sent."""


def _absolute_form() -> type:
    """A ``websockets`` ClientConnection whose handshake's request-target is
    absolute (``GET http://host:port/ HTTP/1.1``), as sent to an HTTP proxy
    without ``CONNECT``."""
    from websockets.asyncio.client import ClientConnection
    from websockets.uri import WebSocketURI

    @dataclasses.dataclass
    class AbsoluteURI(WebSocketURI):
        @property
        def resource_name(self) -> str:
            return f"http://{self.host}:{self.port}{super().resource_name}"

    class AbsoluteFormConnection(ClientConnection):
        def __init__(self, protocol: Any, **kwargs: Any) -> None:
            protocol.uri = AbsoluteURI(**dataclasses.asdict(protocol.uri))
            super().__init__(protocol, **kwargs)

    return AbsoluteFormConnection


async def _client(proxy_port: int | None, origin_port: int, connections: int,
                  seconds: float, size: int, max_messages: int, via: str) -> dict[str, Any]:
    """Open *connections* WebSockets (through the proxy, by *via*), then do round
    trips on each until *seconds* pass or *max_messages* are done; the counts."""
    from websockets.asyncio.client import ClientConnection, connect

    uri = f"ws://127.0.0.1:{origin_port}/"
    options: dict[str, Any] = {"proxy": None}
    if proxy_port and via == "connect":
        options["proxy"] = f"http://127.0.0.1:{proxy_port}"
    elif proxy_port:  # absolute-form: to the proxy's port, no CONNECT
        options.update(host="127.0.0.1", port=proxy_port, create_connection=_absolute_form())
    fills = [random.randbytes(max(size - 12, 0)) for _ in range(64)]

    async def open_one() -> ClientConnection:
        return await connect(uri, open_timeout=OPEN_TIMEOUT, max_size=None, **options)

    opened = await asyncio.wait_for(
        asyncio.gather(*(open_one() for _ in range(connections)), return_exceptions=True),
        OPEN_TIMEOUT + 5)
    failures = [f"{type(e).__name__}: {e}" for e in opened if isinstance(e, BaseException)]
    sockets = [ws for ws in opened if not isinstance(ws, BaseException)]
    if failures:
        for ws in sockets:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(ws.close(), 5)
        return {"messages": 0, "elapsed": 0.0, "errors": failures[:3]}

    async def loop(index: int, ws: ClientConnection, deadline: float) -> int:
        done = 0
        while done < max_messages and time.monotonic() < deadline:
            payload = (done.to_bytes(8, "big") + index.to_bytes(4, "big")
                       + fills[done % len(fills)])[:size]
            await ws.send(payload)
            try:
                echo = await asyncio.wait_for(ws.recv(), STALL)
            except TimeoutError:
                raise TimeoutError(f"no echo within {STALL:.0f} s (connection {index}, "
                                   f"after {done} round trips): stalled") from None
            if echo != payload:
                got = echo if isinstance(echo, bytes) else echo.encode()
                raise EchoMismatch(f"connection {index}, round trip {done}: sent "
                                   f"{len(payload)} bytes, got {len(got)} that differ")
            done += 1
        return done

    extensions = [extension.name for extension in sockets[0].protocol.extensions]
    started = time.monotonic()
    results = await asyncio.gather(*(loop(i, ws, started + seconds)
                                     for i, ws in enumerate(sockets)), return_exceptions=True)
    elapsed = time.monotonic() - started
    for ws in sockets:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(ws.close(), 5)
    errors = [f"{type(r).__name__}: {r}" for r in results if isinstance(r, BaseException)]
    return {"messages": sum(r for r in results if isinstance(r, int)), "elapsed": elapsed,
            "errors": errors[:3], "extensions": extensions}


# -- the harness --------------------------------------------------------------------


def _twistd() -> list[str]:
    local = Path(sys.executable).parent / "twistd"
    if local.exists():
        return [str(local)]
    return [sys.executable, "-c", "from twisted.scripts.twistd import run; run()"]


class Peer:
    """One proxy: how to start it, with its environment."""

    def __init__(self, name: str, argv: list[str], quiet_argv: list[str],
                 env: dict[str, str] | None) -> None:
        self.name = name
        self._argv = argv  # as measured, with "{port}" for the port
        self._logging_argv = quiet_argv  # the same with its flow log on (for the probe)
        self.env = env

    def argv(self, port: int, *, logging: bool = False) -> list[str]:
        argv = self._logging_argv if logging else self._argv
        return [arg.replace("{port}", str(port)) for arg in argv]

    def start(self, port: int, tag: str, *, logging: bool = False) -> bench.Child:
        child = bench.Child(bench.pinned(bench.PROXY_CORE, self.argv(port, logging=logging)),
                            bench.LOGS / f"websocket-{self.name}{tag}.log", env=self.env)
        try:
            bench.wait_listening(port, child)
        except RuntimeError as e:
            child.stop()
            raise RuntimeError(f"{self.name} did not start: {e}") from None
        return child


def twistproxy_peer(tree: Path) -> Peer:
    """``twistd -n twistproxy --port P`` from *tree* (on PYTHONPATH)."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        filter(None, [str(tree), os.environ.get("PYTHONPATH")])))
    twistd = _twistd()
    try:
        result = subprocess.run([*twistd, "twistproxy", "--help"], env=env, timeout=60,
                                capture_output=True, text=True, cwd=bench.REPO)
    except (OSError, subprocess.TimeoutExpired) as e:
        raise SystemExit(f"websocket bench: twistproxy: {e}") from None
    help_text = result.stdout + result.stderr
    if "--port" not in help_text:
        raise SystemExit(f"websocket bench: twistd does not find the twistproxy plugin in "
                         f"{tree} (is it a twistproxy checkout?)")
    if "--max-websocket-message" not in help_text:
        raise SystemExit(f"websocket bench: the twistproxy in {tree} has no WebSocket "
                         "support (no --max-websocket-message)")
    argv = [*twistd, "-n", "--pidfile=", "twistproxy", "--port", "{port}",
            "--ca-dir", str(bench.OUT / "twistproxy-ca")]
    return Peer("twistproxy", argv, argv, env)  # it logs a line per flow by default


def mitmproxy_peer(install: bool) -> Peer:
    """``mitmdump --listen-host 127.0.0.1 -p P -q`` from bench/.venv."""
    mitmdump = bench.VENV / "bin" / "mitmdump"
    if not mitmdump.exists():
        if not install:
            raise SystemExit(f"websocket bench: {mitmdump} is missing (--no-install given)")
        why = bench.install_venv(bench.VENV, "mitmproxy", "pip-mitmproxy.log")
        if why is not None or not mitmdump.exists():
            raise SystemExit(f"websocket bench: mitmproxy: {why or 'no mitmdump after pip'} "
                             f"(pip's output: {bench.LOGS / 'pip-mitmproxy.log'})")
    base = [str(mitmdump), "--listen-host", "127.0.0.1", "-p", "{port}"]
    conf = ["--set", f"confdir={bench.OUT / 'mitmproxy-conf'}"]
    return Peer("mitmproxy", [*base, "-q", *conf], [*base, *conf], None)


def client_run(proxy_port: int | None, origin_port: int, args: argparse.Namespace, *,
               seconds: float, connections: int | None = None,
               max_messages: int = MAX_PER_CONNECTION) -> dict[str, Any]:
    """Run the client process once (pinned to the load core); its counts."""
    argv = bench.pinned(bench.LOAD_CORE, [
        sys.executable, __file__, "--role", "client", "--origin-port", str(origin_port),
        "--proxy-port", str(proxy_port or 0), "--seconds", str(seconds),
        "--connections", str(connections or args.connections), "--size", str(args.size),
        "--max-messages", str(max_messages), "--via", args.via])
    result = bench.run(argv, timeout=seconds + OPEN_TIMEOUT + STALL + 30, record=False)
    try:
        counts: dict[str, Any] = json.loads(result.stdout.strip().splitlines()[-1])
    except (ValueError, IndexError):
        raise RuntimeError(f"the client failed (exit {result.returncode}):\n"
                           f"{result.stderr.strip()[-2000:]}") from None
    if counts["errors"]:
        raise RuntimeError("the client saw: " + "; ".join(counts["errors"]))
    if not counts["messages"]:
        raise RuntimeError("no round trip was done")
    return counts


def probe(peer: Peer, origin_port: int, args: argparse.Namespace) -> str:
    """Which path a WebSocket through *peer* takes, from its flow log."""
    port = bench.free_ports(1)[0]
    (bench.LOGS / f"websocket-{peer.name}-probe.log").unlink(missing_ok=True)
    child = peer.start(port, "-probe", logging=True)
    try:
        counts = client_run(port, origin_port, args, seconds=2, connections=1, max_messages=3)
        time.sleep(1.0)  # let it write its log lines
    except RuntimeError as e:
        raise RuntimeError(f"through {peer.name} (--via {args.via}): {e} (its log: "
                           f"{bench._show(str(child.log))})") from None
    finally:
        child.stop()
    lines = child.log.read_text(errors="replace").splitlines()
    said = sorted((line.strip() for line in lines
                   if "websocket" in line.lower() or " 101" in line),
                  key=lambda line: "websocket" not in line.lower())
    log = bench._show(str(child.log))
    extensions = ", ".join(counts["extensions"]) or "none"
    if said:
        path = f"flows (WebSocket relayed message by message); its log ({log}): {said[0][:200]}"
    elif any("CONNECT" in line or "tcp" in line.lower() for line in lines):
        path = f"tunnel (no WebSocket flow in its log {log}; raw relay)"
    else:
        path = f"unknown: nothing about the WebSocket in its log {log}"
    return f"{path}\n  (extensions the client negotiated: {extensions})"


def measure(peer: Peer, child: bench.Child, port: int, origin_port: int,
            args: argparse.Namespace, seconds: float) -> dict[str, float]:
    """One run through *peer*: round trips/s, CPU per 1,000 round trips, RSS."""
    watch = bench.ProcWatch(child.pid, tree=True)
    others = bench.Foreign()
    cores = bench._cpu_times()
    cpu0 = watch.cpu()
    try:
        counts = client_run(port, origin_port, args, seconds=seconds)
    except RuntimeError as e:
        raise RuntimeError(f"through {peer.name}: {e} (its log: "
                           f"{bench._show(str(child.log))})") from None
    cpu1 = watch.cpu()
    load = bench.core_busy(cores, bench.LOAD_CORE)
    if not child.alive():
        raise RuntimeError(f"{peer.name} died during the run:\n{child.tail()}")
    messages = counts["messages"]
    return {"rate": messages / counts["elapsed"], "cpu": (cpu1 - cpu0) / messages * 1000,
            "rss": watch.rss(), "messages": messages, "others": others.percent(),
            "cpu_percent": 100 * (cpu1 - cpu0) / counts["elapsed"], "load": load}


def pair(number: int, peers: list[Peer], origin_port: int, args: argparse.Namespace,
         budget: list[float]) -> dict[str, dict[str, float]]:
    """One pair of fresh proxies, loaded alternately; each one's medians."""
    order = peers if number % 2 == 0 else list(reversed(peers))
    print(f"pair {number + 1} of {args.pairs} (started first: {order[0].name}):", flush=True)
    children: dict[str, tuple[bench.Child, int]] = {}
    try:
        for peer in order:
            port = bench.free_ports(1)[0]
            children[peer.name] = (peer.start(port, f"-{number + 1}"), port)
        for peer in order:
            child, port = children[peer.name]
            measure(peer, child, port, origin_port, args, WARMUP_SECONDS)
        runs: dict[str, list[dict[str, float]]] = {peer.name: [] for peer in peers}
        for round_ in range(args.rounds):
            for peer in order if round_ % 2 == 0 else reversed(order):
                bench.wait_quiet(budget)
                child, port = children[peer.name]
                run = measure(peer, child, port, origin_port, args, args.seconds)
                runs[peer.name].append(run)
                print(f"  {peer.name:>10}: {run['rate']:8,.0f} msg/s, "
                      f"{run['cpu']:6.3f} CPU-s per 1,000 msgs "
                      f"(proxy {run['cpu_percent']:.0f}% of its core, load core "
                      f"{run['load']:.0f}% busy, other processes {run['others']:.0f}%), "
                      f"RSS {run['rss']:.1f} MiB", flush=True)
        return {name: {key: statistics.median(r[key] for r in done)
                       for key in ("rate", "cpu", "rss")} | {"rss_first": done[0]["rss"]}
                for name, done in runs.items()}
    finally:
        for child, _ in children.values():
            child.stop()


def main() -> int:
    parser = argparse.ArgumentParser(
        description="WebSocket echo through twistproxy and mitmproxy (defaults, reached with "
        "the websockets library's proxy= argument): round trips/s and the proxy's CPU "
        "seconds per 1,000 round trips, over pairs of fresh processes (see bench/README.md).")
    parser.add_argument("--pairs", type=int, default=5,
                        help="pairs of fresh proxy processes; the medians of their ratios "
                        "are the figures to quote (default: 5)")
    parser.add_argument("--rounds", type=int, default=2,
                        help="measured runs per proxy in each pair, alternating (default: 2)")
    parser.add_argument("--seconds", type=float, default=5.0,
                        help="seconds per measured run (default: 5)")
    parser.add_argument("--connections", type=int, default=10,
                        help="concurrent WebSockets, each doing one round trip at a time "
                        "(default: 10)")
    parser.add_argument("--size", type=int, default=64,
                        help="bytes per binary message, at least 16 (default: 64)")
    parser.add_argument("--via", choices=("connect", "absolute"), default="connect",
                        help="how the client reaches the origin through the proxy: "
                        "'connect' (the default) is what websockets' connect(proxy=...) "
                        "does, a CONNECT tunnel with the WebSocket's HTTP inside it; "
                        "'absolute' sends the upgrade to the proxy as an absolute-form "
                        "GET http://127.0.0.1:PORT/ (no tunnel)")
    parser.add_argument("--twistproxy-tree", type=Path, default=bench.REPO,
                        help="the twistproxy checkout to run, put on PYTHONPATH "
                        "(default: this one)")
    parser.add_argument("--no-install", action="store_true",
                        help="do not pip install mitmproxy into bench/.venv when missing")
    parser.add_argument("--max-wait", type=float, default=120.0,
                        help="seconds, over the whole run, to wait for other processes to go "
                        "quiet before runs (default: 120)")
    parser.add_argument("--role", choices=("harness", "origin", "client"), default="harness",
                        help=argparse.SUPPRESS)
    parser.add_argument("--origin-port", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--proxy-port", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--max-messages", type=int, default=MAX_PER_CONNECTION,
                        help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.role == "origin":
        with contextlib.suppress(KeyboardInterrupt):
            asyncio.run(_serve(args.origin_port))
        return 0
    if args.role == "client":
        counts = asyncio.run(_client(args.proxy_port or None, args.origin_port,
                                     args.connections, args.seconds, args.size,
                                     args.max_messages, args.via))
        print(json.dumps(counts))
        return 1 if counts["errors"] else 0
    if not (1 <= args.pairs <= 20 and 1 <= args.rounds <= 10 and 1 <= args.seconds <= 60
            and 1 <= args.connections <= 500 and 16 <= args.size <= 16 * 1024 * 1024):
        parser.error("--pairs must be 1-20, --rounds 1-10, --seconds 1-60, "
                     "--connections 1-500 and --size 16 bytes to 16 MiB")
    if (os.cpu_count() or 1) < 2:
        print("websocket bench: needs 2 cores (proxy on core 0, the rest on core 1)",
              file=sys.stderr)
        return 1
    if not (args.twistproxy_tree / "twistproxy").is_dir():
        parser.error(f"--twistproxy-tree {args.twistproxy_tree}: no twistproxy package there")
    if shutil.which("taskset") is None:
        print("websocket bench: taskset is missing; install it with: "
              "sudo apt-get install -y util-linux", file=sys.stderr)
        return 1
    bench.LOGS.mkdir(parents=True, exist_ok=True)
    peers = [twistproxy_peer(args.twistproxy_tree.resolve()),
             mitmproxy_peer(install=not args.no_install)]
    started = time.monotonic()
    origin_port = bench.free_ports(1)[0]
    origin = bench.Child(bench.pinned(bench.LOAD_CORE, [
        sys.executable, __file__, "--role", "origin", "--origin-port", str(origin_port)]),
        bench.LOGS / "websocket-origin.log")
    try:
        bench.wait_listening(origin_port, origin)
        direct = client_run(None, origin_port, args, seconds=args.seconds)
        print(f"without a proxy: {direct['messages'] / direct['elapsed']:,.0f} msg/s "
              f"({args.connections} connections, {args.size}-byte messages; the client "
              f"and the origin share core {bench.LOAD_CORE})", flush=True)
        for peer in peers:
            print(f"path through {peer.name}: {probe(peer, origin_port, args)}", flush=True)
        budget = [args.max_wait]
        medians = [pair(n, peers, origin_port, args, budget) for n in range(args.pairs)]
    except (RuntimeError, OSError) as e:
        print(f"websocket bench: error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("websocket bench: interrupted", file=sys.stderr)
        return 130
    finally:
        origin.stop()
        bench.stop_all()
    ours, theirs = PROXIES
    print(f"\nper pair (medians of {args.rounds} runs of {args.seconds:g} s, "
          f"{args.connections} connections, {args.size}-byte messages):")
    rate_ratios, cpu_ratios = [], []
    for n, m in enumerate(medians):
        rate_ratios.append(m[ours]["rate"] / m[theirs]["rate"])
        cpu_ratios.append(m[ours]["cpu"] / m[theirs]["cpu"])
        print(f"  pair {n + 1}: msg/s {m[ours]['rate']:,.0f} vs {m[theirs]['rate']:,.0f} "
              f"(ratio {rate_ratios[-1]:.2f}); CPU-s per 1,000 msgs {m[ours]['cpu']:.3f} vs "
              f"{m[theirs]['cpu']:.3f} (ratio {cpu_ratios[-1]:.2f}); RSS after the runs "
              f"{m[ours]['rss']:.1f} vs {m[theirs]['rss']:.1f} MiB")
    print(f"\nmedians over {args.pairs} pairs:")
    for name in PROXIES:
        rate = statistics.median(m[name]["rate"] for m in medians)
        cpu = statistics.median(m[name]["cpu"] for m in medians)
        print(f"  {name:>10}: {rate:8,.0f} msg/s, {cpu:.3f} CPU-s per 1,000 msgs")
    print(f"  twistproxy/mitmproxy per pair: msg/s "
          f"{', '.join(f'{r:.2f}' for r in rate_ratios)} (median "
          f"{statistics.median(rate_ratios):.2f}); CPU per message "
          f"{', '.join(f'{r:.2f}' for r in cpu_ratios)} (median "
          f"{statistics.median(cpu_ratios):.2f})")
    print(f"({time.monotonic() - started:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
