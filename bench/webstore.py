"""
Memory of the web UI's flow store: pushes N synthetic flows through the
store's addon (WebRecorder: requestheaders, then response, written in
100 ms batches on a fake clock) and prints the process's RSS at 1,000
flows and at N.

    PYTHONPATH=. python bench/webstore.py            # 100,000 flows
    PYTHONPATH=. python bench/webstore.py 20000

Each flow has a 600-byte response body (inline in its row) and every 1,000th
a 256 KiB one (kept in a row of its own).  A filter view (what a UI client
holds) is kept current all along.  At the end a second filter view is
built over every stored flow, as the API builds one (a chunk of flows per
step, a Cooperator giving the reactor a turn every 10 ms): it prints how
long that took and the longest turn it held the reactor; then how long
sorting that view, and the view of every flow, by host takes: in the
reactor thread (as the store did first), and in a thread (as it does now),
with the longest the reactor thread waited meanwhile.  The store is a
temporary file, deleted at the end.
"""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Callable

from twisted.internet.defer import Deferred
from twisted.internet.task import Clock, Cooperator

from twistproxy.connection import Client, Server
from twistproxy.http import HTTPFlow, Request, Response
from twistproxy.web.addon import WebRecorder
from twistproxy.web.store import FlowStore

BATCH = 100  # flows between two flushes (the clock moves 0.1 s)


def rss_mib() -> float:
    """This process's resident set size, in MiB (Linux)."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def make_flow(i: int) -> HTTPFlow:
    flow = HTTPFlow(Client(peername=("127.0.0.1", 40000 + i % 20000)), Server(), live=True)
    flow.request = Request.make("GET", f"http://host{i % 50}.example/path/{i}?q={i}",
                                headers={"User-Agent": "bench", "Accept": "*/*"})
    flow.request.timestamp_start = 1000.0 + i
    return flow


def respond(flow: HTTPFlow, i: int) -> None:
    size = 256 * 1024 if i % 1000 == 999 else 600
    flow.response = Response.make(200, b"x" * size, {"Content-Type": "text/plain"})
    flow.response.timestamp_end = 1000.01 + i
    flow.live = False


def build_view(store: FlowStore, threads: Threads) -> None:
    """Build a new filter view in turns, as the API does; print the longest turn."""
    turns: list[Callable[[], object]] = []
    cooperator = Cooperator(scheduler=turns.append)
    view = store.view("~u path/1 & ~c 200", build=False)
    done: list[object] = []
    store.built(view, cooperator).addCallback(done.append)
    longest, count, started = 0.0, 0, time.perf_counter()
    while turns and not done:
        turn = time.perf_counter()
        turns.pop(0)()
        longest = max(longest, time.perf_counter() - turn)
        count += 1
    print(f"new view of {len(store)} flows: {len(view)} match, built in "
          f"{time.perf_counter() - started:.2f} s over {count} reactor turns, "
          f"longest {longest * 1000:.0f} ms")
    inline = FlowStore(store.path)  # the same file, sorting in this thread
    try:
        for expression in (view.expression, ""):
            inline_view = inline.view(expression)
            started = time.perf_counter()
            inline.sorted(inline_view, "host", descending=True)
            alone = time.perf_counter() - started
            sorted_view = store.view(expression)
            threaded = store.sorted(sorted_view, "host", descending=True)
            took, stall = threads.spin()
            assert threaded.called
            print(f"sorting the view {expression!r} ({len(sorted_view)} flows) by host: "
                  f"in the reactor thread {alone * 1000:.0f} ms; in a thread {took * 1000:.0f} "
                  f"ms, the reactor's longest wait {stall * 1000:.1f} ms")
    finally:
        inline.close()


class Threads:
    """
    Runs each sort in a thread of its own while :meth:`spin` stands for
    the reactor: small steps in this thread, timing the longest wait
    between two (the GIL, held by the sorting thread).
    """

    def __init__(self) -> None:
        self._running: list[tuple[threading.Thread, list[object], Deferred[object]]] = []

    def __call__(self, sort: Callable[[], object]) -> Deferred[object]:
        result: list[object] = []
        thread = threading.Thread(target=lambda: result.append(sort()))
        done: Deferred[object] = Deferred()
        self._running.append((thread, result, done))
        thread.start()
        return done

    def spin(self) -> tuple[float, float]:
        """Until the sorts end: how long that took, and the longest wait between steps."""
        started = last = time.perf_counter()
        longest = 0.0
        while any(thread.is_alive() for thread, _, _ in self._running):
            sum(range(100))  # a reactor turn's small work
            now = time.perf_counter()
            longest, last = max(longest, now - last), now
        took = time.perf_counter() - started
        running, self._running = self._running, []
        for thread, result, done in running:
            thread.join()
            done.callback(result[0])
        return took, longest


def main() -> None:
    total = int(sys.argv[1]) if len(sys.argv) > 1 else 100_000
    clock = Clock()
    threads = Threads()
    store = FlowStore(in_thread=threads)  # type: ignore[arg-type]
    recorder = WebRecorder(store, clock=clock)
    view = store.view("~u path & ~c 200")
    view.users = 1
    started = time.perf_counter()
    print(f"start: RSS {rss_mib():.1f} MiB")
    try:
        for i in range(total):
            flow = make_flow(i)
            recorder.requestheaders(flow)
            respond(flow, i)
            recorder.response(flow)
            if i % BATCH == BATCH - 1:
                clock.advance(0.1)
            if i + 1 in (1_000, 10_000, total):
                clock.advance(0.1)
                print(f"{i + 1:>7} flows: RSS {rss_mib():.1f} MiB, view {len(view)}, "
                      f"{(time.perf_counter() - started) / (i + 1) * 1e6:.0f} us/flow, "
                      f"db {store.path.stat().st_size / 2**20:.0f} MiB")
        build_view(store, threads)
    finally:
        recorder.close()
        store.close()


if __name__ == "__main__":
    main()
