#!/usr/bin/env python3
"""
Which of the harness's choices moves proxy.py's figure in scenario (a)?

    python bench/proxypy_setups.py              # 3 rounds, 6 s wrk runs
    python bench/proxypy_setups.py --rounds 5 --seconds 8

bench/run.py and an independent harness disagreed on proxy.py 2.4.10 (issue
16: 7,324 against 10,835 req/s for (a), twistproxy alike in both).  The
candidates named there are run here side by side, interleaved round by round
(odd rounds in one order, even in the other), each pinned to the proxy core
with nginx and wrk on the other, as bench/run.py does:

- bench/run.py's flags, a fresh process per run (the independent harness's
  way) and one process kept through every round (bench/run.py's way);
- proxy.py's defaults (``proxy --hostname 127.0.0.1 --port N``: an acceptor
  and a worker per core, INFO logging, a 10 s idle timeout), as its users
  start it;
- the defaults with one acceptor; bench/run.py's flags with the default
  ``--timeout``.

It prints each setup's requests/s per round and their medians.

``--shapes`` asks the other question, whether the *request's* shape moves the
ratio: twistproxy (as bench/run.py starts it) and proxy.py (bench/run.py's
flags), both kept through the rounds and interleaved, under wrk's bare
request (``Host`` only, 50 connections), a browser's header fields (nine
of them), and the bare request on 10 and on 200 connections; for each shape, every
run's requests/s and proxy CPU per request, and twistproxy/proxy.py per
round with its median.

Only 127.0.0.1 is used and every run is bounded in time.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import run as bench  # noqa: E402  (bench/run.py: the origin, wrk and process helpers)

_BENCH_FLAGS = ["--threadless", "--local-executor", "1", "--num-acceptors", "1",
                "--num-workers", "1", "--log-level", "WARNING", "--timeout", "60"]
SETUPS: dict[str, tuple[list[str], bool]] = {
    "bench/run.py's flags, fresh per run": (_BENCH_FLAGS, True),
    "bench/run.py's flags, kept": (_BENCH_FLAGS, False),
    "proxy.py's defaults, fresh": ([], True),
    "defaults, one acceptor, fresh": (["--num-acceptors", "1"], True),
    "bench/run.py's flags, default --timeout, fresh": (_BENCH_FLAGS[:-2], True),
}
"""Setup name: (flags after ``--hostname 127.0.0.1 --port N``, a fresh process per run)."""


def _start(flags: list[str], log: str) -> tuple[bench.Child, int]:
    port, = bench.free_ports(1)
    argv = [str(bench.PROXYPY_VENV / "bin" / "proxy"), "--hostname", "127.0.0.1",
            "--port", str(port), *flags, "--data-dir", str(bench.OUT / "proxypy-data")]
    child = bench.Child(bench.pinned(bench.PROXY_CORE, argv), bench.LOGS / log)
    bench.wait_listening(port, child)
    return child, port


_BROWSER_FIELDS = {
    "User-Agent": "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) "
                  "Chrome/131.0.0.0 Safari/537.36",
    "Accept": "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8",
    "Accept-Language": "en-GB,en;q=0.9",
    "Accept-Encoding": "gzip, deflate, br",
    "Cache-Control": "no-cache",
    "Pragma": "no-cache",
    "Proxy-Connection": "keep-alive",
    "Cookie": "session=4f2a9c1e7b; theme=dark",
}
SHAPES: dict[str, tuple[dict[str, str], int]] = {
    "bare request, 50 connections": ({}, 50),
    "browser's header fields, 50 connections": (_BROWSER_FIELDS, 50),
    "bare request, 10 connections": ({}, 10),
    "bare request, 200 connections": ({}, 200),
}
"""Shape name: (header fields besides Host, wrk connections)."""


def _lua(name: str, path: str, host: str, fields: dict[str, str]) -> Path:
    lua = bench.write_lua(name, path=path, host=host, close=False)
    with lua.open("a") as out:
        for field, value in fields.items():
            out.write(f'wrk.headers["{field}"] = "{value}"\n')
    return lua


def shapes(rounds: int, seconds: int, http_port: int) -> None:
    """twistproxy against proxy.py under each request shape: paired ratios."""
    target = f"127.0.0.1:{http_port}"
    origin_ca = bench.OUT / "pki" / "origin-ca.pem"
    proxies: list[bench.Proxy] = [bench.TwistProxy(origin_ca), bench.ProxyPy(origin_ca, False)]
    lanes = []
    for proxy in proxies:
        port, = bench.free_ports(1)
        child = bench.launch(proxy, port, tag="-shapes")
        bench.wait_listening(port, child)
        lanes.append((proxy, port, bench.ProcWatch(child.pid, tree=proxy.processes)))
    luas = {name: _lua(f"shape-{i}", f"http://{target}/{bench.SMALL}", target, fields)
            for i, (name, (fields, _)) in enumerate(SHAPES.items())}
    for _, port, _ in lanes:  # warm-up
        bench.wrk(f"http://127.0.0.1:{port}", luas[next(iter(SHAPES))], 2, 50)
    runs: dict[tuple[str, str], list[tuple[float, float]]] = {}
    for round_ in range(rounds):
        for name, (_, connections) in SHAPES.items():
            order = lanes if round_ % 2 == 0 else list(reversed(lanes))
            for proxy, port, watch in order:
                cpu0 = watch.cpu()
                result = bench.wrk(f"http://127.0.0.1:{port}", luas[name], seconds, connections)
                cpu_us = (watch.cpu() - cpu0) / (result["rps"] * seconds) * 1e6
                runs.setdefault((name, proxy.name), []).append((result["rps"], cpu_us))
                print(f"round {round_ + 1}, {name}, {proxy.label}: {result['rps']:,.0f} req/s, "
                      f"{cpu_us:.0f} µs CPU per request", flush=True)
    print(f"{rounds} rounds of {seconds} s, (a) HTTP keep-alive 1 KiB, twistproxy/proxy.py:")
    for name in SHAPES:
        ours, theirs = runs[(name, "twistproxy")], runs[(name, "proxypy")]
        rps = [a[0] / b[0] for a, b in zip(ours, theirs, strict=True)]
        cpu = [a[1] / b[1] for a, b in zip(ours, theirs, strict=True)]
        print(f"  {name}: requests/s {', '.join(f'{r:.2f}' for r in rps)} "
              f"(median {statistics.median(rps):.2f}); CPU per request "
              f"{', '.join(f'{r:.2f}' for r in cpu)} (median {statistics.median(cpu):.2f}); "
              f"medians {statistics.median(a[0] for a in ours):,.0f} and "
              f"{statistics.median(b[0] for b in theirs):,.0f} req/s, "
              f"{statistics.median(a[1] for a in ours):.0f} and "
              f"{statistics.median(b[1] for b in theirs):.0f} µs CPU per request")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0].strip())
    parser.add_argument("--rounds", type=int, default=3, help="runs per setup")
    parser.add_argument("--seconds", type=int, default=6, help="seconds per wrk run")
    parser.add_argument("--shapes", action="store_true",
                        help="twistproxy against proxy.py under several request shapes")
    args = parser.parse_args()
    if not 1 <= args.rounds <= 10 or not 1 <= args.seconds <= 30:
        parser.error("--rounds must be 1-10 and --seconds 1-30")
    bench.ensure_tools(install=False)
    if not (bench.PROXYPY_VENV / "bin" / "proxy").exists():
        raise SystemExit(f"no proxy.py in {bench.PROXYPY_VENV}: run bench/run.py once "
                         "(it installs it)")
    _, cert, key = bench.make_origin_pki(bench.OUT / "pki")
    http_port, https_port = bench.free_ports(2)
    origin = bench.start_origin(http_port, https_port, cert, key)
    lua = bench.write_lua("proxypy-setups", path=f"http://127.0.0.1:{http_port}/{bench.SMALL}",
                          host=f"127.0.0.1:{http_port}", close=False)
    started = time.monotonic()
    if args.shapes:
        try:
            shapes(args.rounds, args.seconds, http_port)
        finally:
            origin.stop()
            bench.stop_all()
        print(f"({time.monotonic() - started:.0f} s)")
        return 0
    kept: dict[str, tuple[bench.Child, int]] = {}
    figures: dict[str, list[float]] = {name: [] for name in SETUPS}
    try:
        for name, (flags, fresh) in SETUPS.items():
            if not fresh:
                kept[name] = _start(flags, "proxypy-setups-kept.log")
                bench.wrk(f"http://127.0.0.1:{kept[name][1]}", lua, 2, 50)
        for round_ in range(args.rounds):
            order = list(SETUPS) if round_ % 2 == 0 else list(reversed(SETUPS))
            for name in order:
                flags, fresh = SETUPS[name]
                child, port = _start(flags, "proxypy-setups.log") if fresh else kept[name]
                if fresh:
                    bench.wrk(f"http://127.0.0.1:{port}", lua, 2, 50)  # warm-up
                result = bench.wrk(f"http://127.0.0.1:{port}", lua, args.seconds, 50)
                figures[name].append(result["rps"])
                print(f"round {round_ + 1}, {name}: {result['rps']:,.0f} req/s", flush=True)
                if fresh:
                    child.stop()
        print(f"medians of {args.rounds} runs of {args.seconds} s, (a) HTTP keep-alive 1 KiB:")
        for name, runs in figures.items():
            listed = ", ".join(f"{r:,.0f}" for r in runs)
            print(f"  {name:>48}: {statistics.median(runs):8,.0f} req/s ({listed})")
    finally:
        origin.stop()
        bench.stop_all()
    print(f"({time.monotonic() - started:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
