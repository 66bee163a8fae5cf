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


def _rss_kib(pid: int) -> int:
    """The resident set size of process *pid*, in KiB."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise AssertionError(f"no VmRSS for {pid}")


def _mapped(pid: int) -> str:
    """The files process *pid* has mapped (its shared libraries among them)."""
    return Path(f"/proc/{pid}/maps").read_text()


def _children(pid: int) -> set[int]:
    """The processes whose parent is *pid*."""
    children = set()
    for task in Path(f"/proc/{pid}/task").iterdir():
        children.update(int(c) for c in (task / "children").read_text().split())
    return children


def _alive(pid: int) -> bool:
    """Whether *pid* runs (a zombie no one reaped yet counts as gone)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rpartition(")")[2].split()[0] != "Z"
    except FileNotFoundError:
        return False


@pytest_twisted.ensureDeferred
async def test_daemon_supervisor_is_small(tmp_path: Path) -> None:
    """
    ``twistd --pidfile P -l LOG twistproxy --workers 2``, in the background:
    the pid file names the supervisor, which has loaded neither the proxy
    (no ``httptools``) nor TLS (no ``cryptography``) and is much smaller
    than its workers; the log holds the CA it created and both workers'
    lines; ``SIGTERM`` to the pid in the pid file stops everything and
    removes the pid file.
    """
    port = free_port()
    pidfile, log = tmp_path / "twistd.pid", tmp_path / "proxy.log"
    starter = spawn([*twistd_command(), f"--pidfile={pidfile}", "-l", str(log), "twistproxy",
                     "--port", str(port), "--workers", "2", "--ca-dir", str(tmp_path / "ca")],
                    tmp_path)
    supervisor = workers = None
    try:
        assert await starter.wait(30) == 0, starter.output  # twistd went to the background
        supervisor = int(pidfile.read_text())
        text = ""
        for _ in range(300):  # bounded: 30 s, until both workers accept
            text = log.read_text() if log.exists() else ""
            if len(ACCEPTING.findall(text)) == 2:
                break
            await deferLater(reactor, 0.1, lambda: None)
        assert len(ACCEPTING.findall(text)) == 2, text
        assert "created a CA for intercepting HTTPS" in text, text
        workers = _children(supervisor)
        assert len(workers) == 2, workers
        maps = _mapped(supervisor)
        assert "httptools" not in maps and "cryptography" not in maps, maps
        assert all("httptools" in _mapped(pid) for pid in workers)
        smallest = min(_rss_kib(pid) for pid in workers)
        assert _rss_kib(supervisor) < 0.75 * smallest, (_rss_kib(supervisor), smallest)
        os.kill(supervisor, signal.SIGTERM)
        for _ in range(150):  # bounded: 15 s
            if not _alive(supervisor) and not any(_alive(pid) for pid in workers):
                break
            await deferLater(reactor, 0.1, lambda: None)
        assert not _alive(supervisor) and not any(_alive(pid) for pid in workers)
        assert not pidfile.exists()
    finally:
        for pid in [supervisor, *(workers or ())]:
            if pid is not None and _alive(pid):
                os.kill(pid, signal.SIGKILL)
        await starter.stop()


async def _scrape(port: int) -> dict[str, int]:
    """``twistproxy_worker_connections_total`` of each worker, from ``/metrics``."""
    data = await raw(port, b"GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                           b"Connection: close\r\n\r\n", timeout=10)
    [page] = parse_responses(data)
    assert page.status == 200
    return {worker: int(float(value)) for worker, value in re.findall(
        r'^twistproxy_worker_connections_total\{worker="(\d+)"\} (\S+)$',
        page.body.decode(), re.MULTILINE)}


@pytest_twisted.ensureDeferred
async def test_connections_spread_over_the_workers(tmp_path: Path) -> None:
    """
    200 connections to ``--workers 2``: the supervisor's ``/metrics`` counts
    each worker's connections, and each took at least a quarter; each
    worker says how many it accepted when it stops.
    """
    origin = reactor.listenTCP(0, OriginFactory(), interface="127.0.0.1")
    origin_port = origin.getHost().port
    metrics = free_port()
    child, port = await start_twistd(tmp_path, "--workers", "2", "--quiet", "--no-intercept",
                                     "--metrics-port", str(metrics))
    try:
        for _ in range(150):  # both workers accepting (bounded: 15 s)
            if len(re.findall(r"worker \d+ accepting", child.output)) == 2:
                break
            await deferLater(reactor, 0.1, lambda: None)
        for _ in range(4):
            answers = await DeferredList([
                raw(port, (f"GET http://127.0.0.1:{origin_port}/echo HTTP/1.1\r\n"
                           "Connection: close\r\n\r\n").encode(), timeout=10)
                for _ in range(50)
            ], consumeErrors=True)
            assert all(ok for ok, _ in answers), answers
        # And the one connection start_twistd made to see the port accept.
        expected = 201
        split: dict[str, int] = {}
        for _ in range(50):  # the workers push their counts once a second (bounded: 10 s)
            split = await _scrape(metrics)
            if sum(split.values()) == expected:
                break
            await deferLater(reactor, 0.2, lambda: None)
        assert sorted(split) == ["0", "1"] and sum(split.values()) == expected, split
        assert min(split.values()) >= 50, split
    finally:
        await child.stop()
        await origin.stopListening()
    said = [int(n) for n in re.findall(r"it accepted (\d+) connections", child.output)]
    assert sorted(said) == sorted(split.values()), child.output
