"""
WebSocket echo, for scenario (w): an echo origin, and a load that sends
messages through a proxy and waits for each echo.

``python bench/ws_echo.py origin --port P`` serves WebSockets on
127.0.0.1:P that send every message back (no compression); it prints
``ready`` once listening and runs until SIGTERM.

``python bench/ws_echo.py load --proxy-port N --origin-port P --connections
10 --seconds 5 --size 100`` opens the connections through the proxy with an
absolute-form upgrade (``GET http://127.0.0.1:P/ HTTP/1.1``, as a proxy
client would send it; no CONNECT), then on each one sends a text message of
``--size`` bytes and waits for its echo, over and over, for ``--seconds``;
prints one JSON line: ``{"msgs": round trips per second, "p99": ms,
"errors": n}``.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import signal
import time

from wsproto.connection import CLIENT, Connection
from wsproto.events import CloseConnection, TextMessage


async def _origin(port: int) -> None:
    from websockets.asyncio.server import serve

    async def echo(ws: object) -> None:
        async for message in ws:  # type: ignore[attr-defined]
            await ws.send(message)  # type: ignore[attr-defined]

    loop = asyncio.get_running_loop()
    stop = loop.create_future()
    def done() -> None:
        if not stop.done():
            stop.set_result(None)

    loop.add_signal_handler(signal.SIGTERM, done)
    async with serve(echo, "127.0.0.1", port, compression=None, max_size=None):
        print("ready", flush=True)
        await stop


async def _connection(proxy_port: int, origin_port: int, size: int, until: float,
                      latencies: list[float]) -> int:
    reader, writer = await asyncio.open_connection("127.0.0.1", proxy_port)
    key = base64.b64encode(os.urandom(16))
    writer.write(
        b"GET http://127.0.0.1:%d/ HTTP/1.1\r\nHost: 127.0.0.1:%d\r\nConnection: Upgrade\r\n"
        b"Upgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: %s\r\n\r\n"
        % (origin_port, origin_port, key))
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
    if not head.startswith(b"HTTP/1.1 101"):
        raise RuntimeError(f"no 101: {head[:60]!r}")
    ws = Connection(CLIENT)
    payload = "x" * size
    count = 0
    while time.monotonic() < until:
        sent = time.perf_counter()
        writer.write(ws.send(TextMessage(data=payload)))
        echoed = False
        while not echoed:
            data = await asyncio.wait_for(reader.read(65536), 10)
            if not data:
                raise RuntimeError("closed")
            ws.receive_data(data)
            echoed = any(isinstance(e, TextMessage) for e in ws.events())
        latencies.append(time.perf_counter() - sent)
        count += 1
    writer.write(ws.send(CloseConnection(code=1000)))
    writer.close()
    return count


async def _load(args: argparse.Namespace) -> dict[str, object]:
    until = time.monotonic() + args.seconds
    latencies: list[float] = []
    started = time.monotonic()
    results = await asyncio.gather(
        *(_connection(args.proxy_port, args.origin_port, args.size, until, latencies)
          for _ in range(args.connections)),
        return_exceptions=True)
    elapsed = time.monotonic() - started
    errors = [r for r in results if isinstance(r, BaseException)]
    total = sum(r for r in results if isinstance(r, int))
    latencies.sort()
    p99 = latencies[int(len(latencies) * 0.99)] * 1000 if latencies else float("nan")
    return {"msgs": total / elapsed, "p99": p99, "errors": len(errors),
            "first_error": repr(errors[0]) if errors else ""}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="mode", required=True)
    origin = sub.add_parser("origin")
    origin.add_argument("--port", type=int, required=True)
    load = sub.add_parser("load")
    load.add_argument("--proxy-port", type=int, required=True)
    load.add_argument("--origin-port", type=int, required=True)
    load.add_argument("--connections", type=int, default=10)
    load.add_argument("--seconds", type=float, default=5.0)
    load.add_argument("--size", type=int, default=100)
    args = parser.parse_args()
    if args.mode == "origin":
        asyncio.run(_origin(args.port))
    else:
        print(json.dumps(asyncio.run(_load(args))), flush=True)


if __name__ == "__main__":
    main()
