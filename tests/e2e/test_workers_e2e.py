"""
``twistd twistproxy --workers 2`` end to end: both workers serve one port, a
killed worker is replaced, and flows saved by both land whole in one file.
"""

from __future__ import annotations

import os
import re
import signal
from pathlib import Path

import pytest
import pytest_twisted
from twisted.internet import reactor
from twisted.internet.defer import DeferredList
from twisted.internet.task import deferLater

from tests.e2e.conftest import parse_responses, raw
from tests.e2e.origin import OriginFactory
from tests.e2e.test_twistd import (
    accepting,
    free_port,
    spawn,
    start_twistd,
    twistd_command,
)
from twistproxy.flowfile import load_flows

pytestmark = pytest.mark.e2e

PID_ADDON = """
import os
from twistproxy.hooks import Addon

class Pid(Addon):
    def response(self, flow):
        flow.response.headers["X-Worker"] = str(os.getpid())

addons = [Pid()]
"""


async def _pids(port: int, origin_port: int, count: int) -> list[int]:
    """The X-Worker pids of *count* concurrent requests through the proxy."""
    requests = [
        raw(port, (f"POST http://127.0.0.1:{origin_port}/echo?i={i} HTTP/1.1\r\n"
                   f"Content-Length: {i * 997}\r\nConnection: close\r\n\r\n").encode()
            + b"z" * (i * 997), timeout=10)
        for i in range(count)
    ]
    answers = await DeferredList(requests, consumeErrors=True)
    pids = []
    for ok, data in answers:
        assert ok, data
        [parsed] = parse_responses(data)
        assert parsed.status == 200
        pids.append(int(parsed.header(b"x-worker")))
    return pids


@pytest_twisted.ensureDeferred
async def test_two_workers_share_the_port(tmp_path: Path) -> None:
    """
    Both workers accept connections; a killed worker is replaced and the
    proxy keeps answering; flows saved by both workers are one whole flow
    per line.
    """
    origin = reactor.listenTCP(0, OriginFactory(), interface="127.0.0.1")
    origin_port = origin.getHost().port
    addon = tmp_path / "pid.py"
    addon.write_text(PID_ADDON)
    saved = tmp_path / "flows.jsonl"
    child, port = await start_twistd(tmp_path, "--workers", "2", "--quiet", "--addon",
                                     str(addon), "--save", str(saved))
    try:
        pids: set[int] = set()
        answered = 0
        for _ in range(10):
            pids.update(await _pids(port, origin_port, 40))
            answered += 40
            if len(pids) >= 2:
                break
        assert len(pids) == 2, pids
        victim = min(pids)
        os.kill(victim, signal.SIGKILL)
        replaced = None
        for _ in range(60):  # bounded: 15 s
            await deferLater(reactor, 0.25, lambda: None)
            accepting = {int(m) for m in re.findall(r"worker (\d+) accepting", child.output)}
            new = accepting - pids
            if new:
                replaced = new.pop()
                break
        assert replaced is not None, child.output
        assert "restarting in 1 s" in child.output
        os.kill(replaced, 0)  # the replacement is alive
        served = await _pids(port, origin_port, 20)  # and the proxy still answers
        answered += 20
        assert victim not in served
    finally:
        await child.stop()
        await origin.stopListening()
    flows = load_flows(saved)  # every line parses: no two flows interleaved
    assert len(flows) == answered
    assert all(f.request.raw_content == b"z" * len(f.request.raw_content) for f in flows)



@pytest_twisted.ensureDeferred
async def test_logfile_holds_the_workers_lines(tmp_path: Path) -> None:
    """
    With ``-l FILE`` every worker's lines (start, flows) land in that file,
    marked with the worker's number, and none on the supervisor's output.
    """
    origin = reactor.listenTCP(0, OriginFactory(), interface="127.0.0.1")
    origin_port = origin.getHost().port
    log = tmp_path / "proxy.log"
    port = free_port()
    child = spawn([*twistd_command(), "-n", "--pidfile=", "-l", str(log), "twistproxy",
                   "--port", str(port), "--workers", "2"], tmp_path)
    try:
        await accepting(port, child)
        await _answered(port, origin_port)
        for _ in range(100):  # bounded: 10 s, until both workers and the flow logged
            text = log.read_text()
            if len(ACCEPTING.findall(text)) == 2 and " -> 200" in text:
                break
            await deferLater(reactor, 0.1, lambda: None)
        text = log.read_text()
        assert len(ACCEPTING.findall(text)) == 2, text
        assert re.search(r"worker \d+\] .*GET http://127\.0\.0\.1:\d+/echo -> 200", text), text
        assert "accepting" not in child.output and " -> 200" not in child.output, child.output
    finally:
        await child.stop()
        await origin.stopListening()


ACCEPTING = re.compile(r"worker \d+\] worker \d+ accepting")
"""A worker's start line, as the supervisor logs it."""


async def _answered(port: int, origin_port: int) -> None:
    data = await raw(port, (f"GET http://127.0.0.1:{origin_port}/echo HTTP/1.1\r\n"
                            "Connection: close\r\n\r\n").encode(), timeout=10)
    [parsed] = parse_responses(data)
    assert parsed.status == 200
