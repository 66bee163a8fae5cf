"""
Hold idle keep-alive connections open to a proxy, for scenario (g).

``python bench/idle_clients.py --port PROXY_PORT --url http://127.0.0.1:ORIGIN/1k.bin --count 1000``

Each connection sends one absolute-form GET (keep-alive), reads the whole
response, and then stays open and silent.  Once every connection has its
response, one line ``ready OK FAILED`` is printed.  On SIGTERM, on
end-of-file on standard input, or after ``--max-seconds`` at the latest, one
line ``alive N closed M`` is printed (how many of the ready connections the
proxy still held open) and the program ends.
"""

from __future__ import annotations

import argparse
import asyncio
import resource
import signal
import sys
from urllib.parse import urlsplit


def _raise_nofile(wanted: int) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < wanted:
        new = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
        resource.setrlimit(resource.RLIMIT_NOFILE, (new, hard))


async def _open(port: int, request: bytes, timeout: float
                ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    reader, writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), timeout)
    writer.write(request)
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), timeout)
    status = int(head.split(b" ", 2)[1])
    if status != 200:
        writer.close()
        raise RuntimeError(f"status {status}")
    length = 0
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value.strip())
    await asyncio.wait_for(reader.readexactly(length), timeout)
    return reader, writer


async def main(args: argparse.Namespace) -> int:
    _raise_nofile(args.count + 256)
    target = urlsplit(args.url)
    request = (
        f"GET {args.url} HTTP/1.1\r\nHost: {target.netloc}\r\n"
        "User-Agent: twistproxy-bench-idle\r\n\r\n"
    ).encode()
    connections: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []
    failures: list[str] = []
    for start in range(0, args.count, args.batch):
        batch = min(args.batch, args.count - start)
        results = await asyncio.gather(
            *(_open(args.port, request, args.timeout) for _ in range(batch)),
            return_exceptions=True,
        )
        for result in results:
            if isinstance(result, BaseException):
                failures.append(f"{type(result).__name__}: {result}")
            else:
                connections.append(result)
    print(f"ready {len(connections)} {len(failures)}", flush=True)
    if failures:
        print(f"first failure: {failures[0]}", file=sys.stderr, flush=True)

    closed = 0

    async def watch(reader: asyncio.StreamReader) -> None:
        nonlocal closed
        try:
            await reader.read(1)
        except OSError:
            pass
        closed += 1

    watchers = [asyncio.ensure_future(watch(reader)) for reader, _ in connections]
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_reader(sys.stdin.fileno(), lambda: stop.set() if not sys.stdin.buffer.read1(1)
                    else None)
    try:
        await asyncio.wait_for(stop.wait(), args.max_seconds)
    except TimeoutError:
        pass
    print(f"alive {len(connections) - closed} closed {closed}", flush=True)
    for watcher in watchers:
        watcher.cancel()
    for _, writer in connections:
        writer.transport.abort()
    return 0


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    parser.add_argument("--port", type=int, required=True, help="the proxy's port on 127.0.0.1")
    parser.add_argument("--url", required=True, help="absolute URL to request once per connection")
    parser.add_argument("--count", type=int, default=1000)
    parser.add_argument("--batch", type=int, default=50, help="connections opened at once")
    parser.add_argument("--timeout", type=float, default=20.0, help="seconds per connection setup")
    parser.add_argument("--max-seconds", type=float, default=300.0, help="hold at most this long")
    sys.exit(asyncio.run(main(parser.parse_args())))
