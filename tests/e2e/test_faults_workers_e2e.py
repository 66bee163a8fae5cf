"""
Faults an operator meets with ``--workers`` and the CA directory (issue 12,
items 5 and 6), injected for real: a second instance on the same port, two
instances starting at once, ``kill -9`` of the supervisor, a worker that
cannot start, and several processes starting on one empty ``--ca-dir``.

Every child is bounded in time and stopped in a ``finally``.
"""

from __future__ import annotations

import os
import re
import signal
import stat
from pathlib import Path

import pytest
import pytest_twisted
from twisted.internet import reactor
from twisted.internet.defer import DeferredList
from twisted.internet.endpoints import TCP4ClientEndpoint
from twisted.internet.error import ConnectError
from twisted.internet.protocol import Factory, Protocol

from tests.e2e.conftest import parse_responses, raw
from tests.e2e.test_twistd import (
    Child,
    accepting,
    free_port,
    run,
    sleep,
    spawn,
    start_twistd,
    twistd_command,
)
from twistproxy.certs import CA_CERT_PEM, CA_FILE

pytestmark = pytest.mark.e2e

WORKER_PID = re.compile(r"started worker \d+ \(pid (\d+)\)")


def _twistproxy(port: int, *options: str) -> list[str]:
    return [*twistd_command(), "-n", "--pidfile=", "twistproxy", "--port", str(port), *options]


def _worker_pids(child: Child) -> set[int]:
    return {int(pid) for pid in WORKER_PID.findall(child.output)}


def _gone(pid: int) -> bool:
    """Whether process *pid* has exited (a zombie no one reaped yet counts)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rpartition(")")[2].split()[0] == "Z"
    except FileNotFoundError:
        return True


async def _refuses_connections(port: int) -> bool:
    endpoint = TCP4ClientEndpoint(reactor, "127.0.0.1", port, timeout=1)
    try:
        connected = await endpoint.connect(Factory.forProtocol(Protocol))
    except ConnectError:
        return True
    connected.transport.loseConnection()
    return False


async def _statuses(port: int, count: int) -> list[int]:
    """The statuses of *count* concurrent requests without credentials."""
    answers = await DeferredList(
        [raw(port, b"GET http://127.0.0.1:9/ HTTP/1.1\r\nHost: 127.0.0.1:9\r\n"
                   b"Connection: close\r\n\r\n", timeout=10) for _ in range(count)],
        consumeErrors=True,
    )
    statuses = []
    for ok, data in answers:
        assert ok, data
        [parsed] = parse_responses(data)
        statuses.append(parsed.status)
    return statuses


def _one_line(output: str, *fragments: str) -> None:
    assert "Traceback" not in output, output
    assert any(all(f in line for f in fragments) for line in output.splitlines()), output


@pytest_twisted.ensureDeferred
async def test_second_instance_refused_and_auth_kept(tmp_path: Path) -> None:
    """
    A second ``--workers`` instance on a port the first serves exits
    non-zero with one line, and no request without credentials gets past
    the first instance's ``--proxy-auth`` (before the fix the kernel sent
    some to the second instance's workers, which asked for none).
    """
    first, port = await start_twistd(tmp_path, "--workers", "2", "--quiet",
                                     "--proxy-auth", "user:secret")
    try:
        code, output = await run(_twistproxy(port, "--workers", "2", "--quiet"), tmp_path)
        assert code not in (0, None), output
        _one_line(output, "twistproxy: cannot listen on", "another process listens")
        assert "started worker" not in output
        assert await _statuses(port, 20) == [407] * 20
    finally:
        await first.stop()


@pytest_twisted.ensureDeferred
async def test_two_instances_starting_at_once(tmp_path: Path) -> None:
    """
    Two ``--workers`` instances started together on one port: exactly one
    serves, the other exits non-zero with one line (its port check or the
    supervisors' lock stopped it before any worker started).
    """
    port = free_port()
    children = [spawn(_twistproxy(port, "--workers", "2", "--quiet"), tmp_path)
                for _ in range(2)]
    try:
        for _ in range(300):  # bounded: 30 s
            if any(child.done for child in children):
                break
            await sleep(0.1)
        [loser] = [child for child in children if child.done]
        [winner] = [child for child in children if not child.done]
        assert loser.code not in (0, None), loser.output
        _one_line(loser.output, "twistproxy: cannot listen on")
        assert "started worker" not in loser.output
        await accepting(port, winner)
        await sleep(1)
        assert not winner.done, winner.output
    finally:
        for child in children:
            await child.stop()


@pytest_twisted.ensureDeferred
async def test_kill_9_of_the_supervisor_ends_the_workers(tmp_path: Path) -> None:
    """
    ``kill -9`` of the supervisor: every worker exits within a bounded time
    (here 20 s, in practice well under one) and the port stops accepting.
    """
    child, port = await start_twistd(tmp_path, "--workers", "2", "--quiet")
    try:
        for _ in range(100):  # bounded: 10 s, until both workers are started
            if len(_worker_pids(child)) == 2:
                break
            await sleep(0.1)
        workers = _worker_pids(child)
        assert len(workers) == 2, child.output
        os.kill(child.transport.pid, signal.SIGKILL)  # type: ignore[union-attr]
        await child.wait(5)
        for _ in range(200):  # bounded: 20 s
            if all(_gone(pid) for pid in workers):
                break
            await sleep(0.1)
        assert all(_gone(pid) for pid in workers), workers
        assert await _refuses_connections(port)
    finally:
        await child.stop()
        for pid in workers:
            if not _gone(pid):
                os.kill(pid, signal.SIGKILL)


FAILING_ADDON = """
import sys

if "--worker" in sys.argv:
    raise RuntimeError("this worker cannot start")
addons = []
"""


@pytest_twisted.ensureDeferred
async def test_worker_failing_at_start_gives_up(tmp_path: Path) -> None:
    """
    Workers that fail at start are restarted after 1 s, and after
    ``--restart-limit`` quick failures in a row the supervisor stops and
    exits 1 with one line saying why; the workers' own error lines reach
    its log.
    """
    addon = tmp_path / "failing.py"
    addon.write_text(FAILING_ADDON)
    child = spawn(_twistproxy(free_port(), "--workers", "2", "--quiet", "--restart-limit", "2",
                              "--addon", str(addon)), tmp_path)
    try:
        code = await child.wait(60)
        output = child.output
        assert code == 1, output
        assert "restarting in 1 s" in output
        _one_line(output, "twistproxy: worker", "failed 2 times in a row within 10 s of starting",
                  "giving up")
        assert re.search(r"worker \d+: .*this worker cannot start", output), output
        # Two, then a restart of each (or of one, if the other's second
        # failure came first): never a third round.
        assert 3 <= len(_worker_pids(child)) <= 4, output
        assert all(_gone(pid) for pid in _worker_pids(child))
    finally:
        await child.stop()


@pytest_twisted.ensureDeferred
async def test_instances_racing_on_an_empty_ca_dir(tmp_path: Path) -> None:
    """
    Three twistd instances started at once on one empty ``--ca-dir``: one
    CA ends on disk, exactly one instance says it created it, and every
    instance serves that CA (its CA page through the proxy), whose key file
    is its owner's alone.
    """
    ca_dir = tmp_path / "ca"
    ports = [free_port() for _ in range(3)]
    children = [spawn(_twistproxy(port, "--quiet", "--ca-dir", str(ca_dir)), tmp_path)
                for port in ports]
    try:
        for port, child in zip(ports, children, strict=True):
            await accepting(port, child)
        on_disk = (ca_dir / CA_CERT_PEM).read_bytes()
        assert on_disk in (ca_dir / CA_FILE).read_bytes()
        assert stat.S_IMODE((ca_dir / CA_FILE).stat().st_mode) == 0o600
        for port in ports:
            data = await raw(port, b"GET http://twistproxy/cert/pem HTTP/1.1\r\n"
                                   b"Host: twistproxy\r\nConnection: close\r\n\r\n", timeout=10)
            [page] = parse_responses(data)
            assert page.status == 200
            assert page.body == on_disk, port
        created = sum("created a CA" in child.output for child in children)
        assert created == 1, [child.output for child in children]
    finally:
        for child in children:
            await child.stop()
