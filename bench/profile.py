#!/usr/bin/env python3
"""
Where twistproxy's time goes per request, and whether a change made it cheaper.

    python bench/profile.py                   # cProfile of (a): top functions per request
    python bench/profile.py --https           # the same for (e), through the socat shim
    python bench/profile.py --compare HEAD~3  # CPU per request: this checkout against a revision
    python bench/profile.py --compare HEAD~3 --pairs 5 --rounds 4  # over 5 pairs of processes

The profile runs twistd under cProfile (``--profiler=cprofile``) while wrk
loads it as in scenario (a) or (e) of bench/run.py (same nginx origin, same
pinning), and prints each function's own time and call count per request
(per ``headers_received`` call).  cProfile adds a fixed cost to every call,
so small functions look bigger than they are: read it for where the calls
are, and the comparison for what a change is worth.

The comparison starts two proxies at once, one from this checkout and one
from a ``git worktree`` of the revision, both pinned to the proxy core, and
loads them alternately with the same wrk run; it prints each side's CPU
microseconds per request (user and system, from /proc) and requests/s,
medians over the rounds.  Both see the same disturbances, so their ratio
means more than either figure: quote that.  Two processes of the *same*
code differ by up to 7% here (memory layout: a fixed PYTHONHASHSEED does not
remove it), so ``--pairs N`` repeats the whole comparison with fresh
processes and gives the median of the N ratios: quote that one.

Everything generated goes to bench/out/profile/.  Only 127.0.0.1 is used and
every load is bounded in time.
"""

from __future__ import annotations

import argparse
import os
import pstats
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import run as bench  # noqa: E402  (bench/run.py: the harness's origin, wrk and process helpers)

OUT = bench.OUT / "profile"


def _twistd(port: int, extra_twistd: tuple[str, ...] = (), addon: bool = False) -> list[str]:
    """twistd's argv as bench/run.py runs it; *addon*: with the trivial addon."""
    proxy = bench.TwistProxy(bench.OUT / "pki" / "origin-ca.pem")
    if proxy.unavailable:
        raise SystemExit(f"twistproxy: {proxy.unavailable}")
    argv = proxy.argv(port, addon=addon, workers=None)
    # twistd's own options go before the subcommand.
    at = argv.index("twistproxy")
    return [*argv[:at], *extra_twistd, *argv[at:]]


def _lua(https: bool, http_port: int, https_port: int, close: bool = False) -> Path:
    """The wrk script for (a) (absolute-form requests) or (e) (through the shim);
    *close*: ``Connection: close``, (b) or (f)."""
    if https:
        return bench.write_lua("profile-e", path=f"/{bench.SMALL}",
                               host=f"127.0.0.1:{https_port}", close=close)
    return bench.write_lua("profile-a", path=f"http://127.0.0.1:{http_port}/{bench.SMALL}",
                           host=f"127.0.0.1:{http_port}", close=close)


def _url(https: bool, proxy_port: int, shim_port: int) -> str:
    if https:
        return f"https://127.0.0.1:{shim_port}/{bench.SMALL}"
    return f"http://127.0.0.1:{proxy_port}"


def _shim(listen: int, proxy_port: int, https_port: int) -> bench.Child:
    argv = bench.pinned(bench.LOAD_CORE, [
        "socat", f"TCP-LISTEN:{listen},fork,reuseaddr,bind=127.0.0.1",
        f"PROXY:127.0.0.1:127.0.0.1:{https_port},proxyport={proxy_port}"])
    child = bench.Child(argv, bench.LOGS / f"profile-socat-{listen}.log")
    bench.wait_listening(listen, child)
    return child


def _cpu_seconds(pid: int) -> tuple[float, float]:
    """(user + system, system) CPU seconds of *pid*."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    tick = os.sysconf("SC_CLK_TCK")
    user, system = int(fields[11]) / tick, int(fields[12]) / tick
    return user + system, system


def profile(args: argparse.Namespace, http_port: int, https_port: int) -> None:
    proxy_port, shim_port = bench.free_ports(2)
    stats_file = OUT / (("f" if args.close else "e") + ".pstats" if args.https
                        else ("b" if args.close else "a") + ".pstats")
    stats_file.unlink(missing_ok=True)
    argv = bench.pinned(bench.PROXY_CORE, _twistd(proxy_port, (
        f"--profile={stats_file}", "--profiler=cprofile", "--savestats"), args.addon))
    child = bench.Child(argv, bench.LOGS / "profile-twistd.log")
    bench.wait_listening(proxy_port, child)
    shim = _shim(shim_port, proxy_port, https_port) if args.https else None
    try:
        lua = _lua(args.https, http_port, https_port, args.close)
        url = _url(args.https, proxy_port, shim_port)
        bench.wrk(url, lua, 2, args.connections)
        result = bench.wrk(url, lua, args.seconds, args.connections)
        print(f"under cProfile: {result['rps']:,.0f} req/s")
    finally:
        if shim is not None:
            shim.stop()
        child.stop(grace=30.0)  # SIGTERM: twistd writes the stats as it stops
    stats = pstats.Stats(str(stats_file))
    entries = stats.stats  # type: ignore[attr-defined]
    requests = sum(v[1] for k, v in entries.items() if k[2] == "headers_received")
    if not requests:
        raise SystemExit("no request reached the proxy")
    rows = []
    for (filename, line, name), (_, calls, own, cumulative, _) in entries.items():
        where = filename.split("site-packages/")[-1].replace(str(bench.REPO) + "/", "")
        rows.append((own / requests * 1e6, cumulative / requests * 1e6, calls / requests,
                     f"{where}:{line}({name})"))
    rows.sort(reverse=True)
    total = sum(r[0] for r in rows)
    print(f"{requests:,} requests; {total:.0f} us per request under cProfile "
          f"(stats: {stats_file.relative_to(bench.REPO)})")
    layers: dict[str, float] = {}
    for own, _, _, where in rows:
        layer = _layer(where)
        layers[layer] = layers.get(layer, 0.0) + own
    print("own time by layer:")
    for layer, own in sorted(layers.items(), key=lambda item: -item[1]):
        print(f"  {100 * own / total:5.1f}%  {layer}")
    print(f"{'own us':>7} {'cum us':>7} {'calls':>6}  function")
    for own, cumulative, calls, where in rows[:args.top]:
        print(f"{own:7.1f} {cumulative:7.1f} {calls:6.1f}  {where}")


_SYSCALLS = ("'send' of '_socket", "'recv' of '_socket", "'poll' of 'select.epoll",
             "'modify' of 'select.epoll")
# (substring of "file:line(function)", layer), first match wins.
_LAYERS = (
    ("twistproxy/_headers", "twistproxy: header rules"),
    ("twistproxy/_target", "twistproxy: request-target parsing"),
    ("twistproxy/http.py", "twistproxy: flow model"),
    ("twistproxy/headers.py", "twistproxy: flow model"),
    ("twistproxy/_body", "twistproxy: flow model"),
    ("twistproxy/flow.py", "twistproxy: flow model"),
    ("twistproxy.flow", "twistproxy: flow model"),
    ("twistproxy/hooks", "twistproxy: hook chain and addons"),
    ("twistproxy/_chain", "twistproxy: hook chain and addons"),
    ("twistproxy/addons", "twistproxy: hook chain and addons"),
    ("twistproxy/client", "twistproxy: upstream client (httptools callbacks, pool)"),
    ("twistproxy/_upstream", "twistproxy: upstream client (httptools callbacks, pool)"),
    ("twistproxy/_exchange", "twistproxy: the exchange (decisions)"),
    ("twistproxy/_request", "twistproxy: the exchange (decisions)"),
    ("twistproxy/_framing", "twistproxy: header rules"),
    ("twistproxy/proxy", "twistproxy: channel and request (channel.py, proxy.py)"),
    ("twistproxy/channel", "twistproxy: channel and request (channel.py, proxy.py)"),
    ("twistproxy/_twisted_compat", "twistproxy: channel and request (channel.py, proxy.py)"),
    ("twistproxy/", "twistproxy: other"),
    ("bench/addons", "twistproxy: hook chain and addons"),
    ("twisted/web", "Twisted: HTTPChannel, Request"),
    ("twisted/protocols/basic", "Twisted: HTTPChannel, Request"),
    ("twisted/protocols/tls", "Twisted and pyOpenSSL: TLS"),
    ("OpenSSL", "Twisted and pyOpenSSL: TLS"),
    ("_openssl", "Twisted and pyOpenSSL: TLS"),
    ("twisted/internet/abstract", "Twisted: TCP transport"),
    ("twisted/internet/tcp", "Twisted: TCP transport"),
    ("twisted/internet/_newtls", "Twisted: TCP transport"),
    ("twisted/internet/endpoints", "Twisted: TCP transport"),
    ("twisted/", "Twisted: reactor, event dispatch, timers"),
)


def _layer(where: str) -> str:
    """Which layer a profile entry belongs to, for the summary."""
    if any(name in where for name in _SYSCALLS):
        return "system calls (send, recv, epoll)"
    for part, layer in _LAYERS:
        if part in where:
            return layer
    return "builtins and the standard library"


def compare(args: argparse.Namespace, http_port: int, https_port: int) -> None:
    tree = OUT / "compare-tree"
    if tree.exists():
        bench.run(["git", "worktree", "remove", "--force", str(tree)], timeout=60)
    bench.run(["git", "worktree", "add", "--detach", str(tree), args.compare], timeout=120,
              check=True)
    sides = {"this checkout": str(bench.REPO), args.compare: str(tree)}
    ratios = []
    try:
        for pair in range(args.pairs):
            if args.pairs > 1:
                print(f"pair {pair + 1} of {args.pairs} (fresh processes):", flush=True)
            # Odd pairs start (and first load) the revision first: no side
            # keeps the advantage or handicap of going first.
            order = dict(reversed(sides.items())) if pair % 2 else sides
            ratios.append(_compare_pair(args, order, http_port, https_port))
    finally:
        bench.run(["git", "worktree", "remove", "--force", str(tree)], timeout=60)
    if args.pairs > 1:
        listed = ", ".join(f"{ratio:.3f}" for ratio in ratios)
        print(f"CPU per request, this checkout / {args.compare}, per pair of processes: "
              f"{listed}; median {statistics.median(ratios):.3f}")


def _compare_pair(
    args: argparse.Namespace, sides: dict[str, str], http_port: int, https_port: int
) -> float:
    """
    Start one proxy per side (in the order of *sides*), load them
    alternately for ``args.rounds`` rounds, print the medians and return
    the ratio of CPU per request, this checkout's over the revision's.
    """
    children: dict[str, bench.Child] = {}
    ports: dict[str, tuple[int, int]] = {}
    shims: list[bench.Child] = []
    try:
        for label, path in sides.items():
            port, shim_port = bench.free_ports(2)
            env = dict(os.environ, PYTHONPATH=path)
            argv = bench.pinned(bench.PROXY_CORE, _twistd(port, addon=args.addon))
            child = bench.Child(argv, bench.LOGS / f"profile-{len(children)}.log", env=env)
            bench.wait_listening(port, child)
            children[label] = child
            if args.https:
                shims.append(_shim(shim_port, port, https_port))
            ports[label] = (port, shim_port)
        lua = _lua(args.https, http_port, https_port, args.close)
        for label in sides:
            bench.wrk(_url(args.https, *ports[label]), lua, 2, args.connections)
        figures: dict[str, list[tuple[float, float, float]]] = {label: [] for label in sides}
        for round_ in range(args.rounds):
            for label in sides if round_ % 2 == 0 else reversed(list(sides)):
                pid = children[label].pid
                cpu0, sys0 = _cpu_seconds(pid)
                result = bench.wrk(_url(args.https, *ports[label]), lua, args.seconds,
                                   args.connections)
                cpu1, sys1 = _cpu_seconds(pid)
                n = result["requests"]
                figures[label].append(((cpu1 - cpu0) / n * 1e6, (sys1 - sys0) / n * 1e6,
                                       result["rps"]))
                print(f"  {label}: {figures[label][-1][0]:.1f} us/request "
                      f"({figures[label][-1][1]:.1f} system), {result['rps']:,.0f} req/s",
                      flush=True)
        print(f"medians of {args.rounds} runs of {args.seconds} s, "
              f"{'(e) HTTPS' if args.https else '(a) HTTP'}:")
        medians = {}
        for label, runs in figures.items():
            medians[label] = [statistics.median(r[i] for r in runs) for i in range(3)]
            cpu, system, rps = medians[label]
            print(f"  {label:>16}: {cpu:6.1f} us CPU per request ({system:.1f} system), "
                  f"{rps:,.0f} req/s")
        this, other = (medians[label][0] for label in ("this checkout", args.compare))
        print(f"  CPU per request, this checkout / {args.compare}: {this / other:.3f}",
              flush=True)
        return this / other
    finally:
        for shim in shims:
            shim.stop()
        for child in children.values():
            child.stop()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0].strip())
    parser.add_argument("--https", action="store_true", help="scenario (e) instead of (a)")
    parser.add_argument("--close", action="store_true",
                        help="Connection: close: scenario (b), or (f) with --https")
    parser.add_argument("--addon", action="store_true",
                        help="with the trivial addon (bench/addons/twistproxy_stamp.py)")
    parser.add_argument("--compare", metavar="REV", default=None,
                        help="compare CPU per request with this git revision")
    parser.add_argument("--seconds", type=int, default=5, help="seconds per wrk run")
    parser.add_argument("--rounds", type=int, default=6, help="runs per side (--compare)")
    parser.add_argument("--pairs", type=int, default=1,
                        help="pairs of fresh processes (--compare): the median of their ratios")
    parser.add_argument("--top", type=int, default=40, help="functions shown (profile)")
    parser.add_argument("--connections", type=int, default=50,
                        help="wrk connections (default: 50, as bench/run.py)")
    args = parser.parse_args()
    if (not 1 <= args.seconds <= 60 or not 1 <= args.rounds <= 20 or not 1 <= args.pairs <= 10
            or not 1 <= args.connections <= 1000):
        parser.error("--seconds must be 1-60, --rounds 1-20, --pairs 1-10 "
                     "and --connections 1-1000")
    bench.ensure_tools(install=False)
    OUT.mkdir(parents=True, exist_ok=True)
    ca, cert, key = bench.make_origin_pki(bench.OUT / "pki")
    http_port, https_port = bench.free_ports(2)
    origin = bench.start_origin(http_port, https_port, cert, key)
    started = time.monotonic()
    try:
        if args.compare:
            compare(args, http_port, https_port)
        else:
            profile(args, http_port, https_port)
    except (RuntimeError, subprocess.CalledProcessError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    finally:
        origin.stop()
        bench.stop_all()
    print(f"({time.monotonic() - started:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
