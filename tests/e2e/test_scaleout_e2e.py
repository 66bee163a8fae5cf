"""
Scale-out end to end (issue 18): HAProxy in front of three ``twistd
twistproxy`` processes on loopback ports, speaking the PROXY protocol to
them and health-checking their ``/healthz``.

Clients (threads with blocking sockets, from 127.0.0.2 so that the real
client differs from the balancer's 127.0.0.1) send a bounded load through
HAProxy.  One instance is sent SIGTERM mid-load: its ``/healthz`` says 503,
HAProxy stops sending to it, it drains and exits as on any SIGTERM, and no request fails.
Another is killed with SIGKILL while slow requests are in flight: only
requests in flight at that moment fail; every later one is answered (HAProxy
redispatches).  Every answered request is in exactly one instance's
``--save`` file, with the client's real address, and in the instance that
answered it.

It runs twice: with the instances on loopback ports (no root needed), and,
as root with ``ip`` at hand, each instance in a network namespace of its
own with an address of its own (10.202.N.2, joined to the host by a veth
pair), HAProxy and the clients on the host, the origin on an address of the
host's (10.202.0.1) that every namespace reaches; the namespaces and that
address are removed afterwards, whatever happened.
"""

from __future__ import annotations

import http.client
import json
import os
import re
import shutil
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import attrs
import pytest
import pytest_twisted
from twisted.internet import reactor
from twisted.internet.defer import Deferred, DeferredList, gatherResults
from twisted.internet.threads import deferToThread

from tests.e2e.origin import OriginFactory
from tests.e2e.test_faults_shutdown_e2e import assert_stopped_cleanly
from tests.e2e.test_twistd import Child, free_port, sleep, spawn, twistd_command

pytestmark = pytest.mark.e2e

HAPROXY = shutil.which("haproxy") or (
    "/usr/sbin/haproxy" if os.access("/usr/sbin/haproxy", os.X_OK) else None)
needs_haproxy = pytest.mark.skipif(
    HAPROXY is None,
    reason="haproxy is not installed (Debian package haproxy; .ci/run installs it)")

CLIENT = "127.0.0.2"  # the clients' address; HAProxy connects from 127.0.0.1
START_TIMEOUT = 20.0
REQUEST_TIMEOUT = 10.0

TAG_ADDON = """
from twistproxy.hooks import Addon

class Tag(Addon):
    stream_bodies = True

    def responseheaders(self, flow):
        flow.response.headers["X-Instance"] = "{name}"

addons = [Tag()]
"""

HAPROXY_CONFIG = Path(__file__).resolve().parents[2] / "docs" / "examples" / "haproxy.cfg"
"""The configuration docs/deployment.rst shows; :func:`haproxy_config` adapts it."""


def haproxy_config(front: int, servers: list[str]) -> str:
    """
    docs/examples/haproxy.cfg with the frontend on 127.0.0.1:*front* and
    *servers* (whole ``server`` lines) in place of its three.
    """
    text = HAPROXY_CONFIG.read_text(encoding="utf-8")
    text, binds = re.subn(r"(?m)^    bind 127\.0\.0\.1:8080$", f"    bind 127.0.0.1:{front}", text)
    lines = text.splitlines()
    documented = [i for i, line in enumerate(lines) if line.startswith("    server ")]
    assert binds == 1 and len(documented) == 3, text
    lines[documented[0]:documented[-1] + 1] = servers
    return "\n".join(lines) + "\n"


IP = shutil.which("ip")


@attrs.define
class Placement:
    """
    Where the instances run: *addresses*, one per instance (where it
    listens), *prefixes*, the command that runs it there, and *origin*, the
    address the origin listens on, which every instance reaches.
    """

    addresses: list[str]
    prefixes: list[list[str]]
    origin: str


@attrs.define
class Instance:
    """One twistproxy process behind HAProxy."""

    name: str
    address: str
    port: int
    metrics: int
    save: Path
    child: Child


def _ip(*args: str) -> None:
    assert IP is not None
    subprocess.run([IP, *args], check=True, capture_output=True, timeout=10)


@pytest.fixture(params=["loopback", "namespaces"])
def placement(request: Any) -> Iterator[Placement]:
    """The instances on loopback ports, or each in a network namespace of its own."""
    if request.param == "loopback":
        yield Placement(["127.0.0.1"] * 3, [[]] * 3, "127.0.0.1")
        return
    if sys.platform != "linux" or os.geteuid() != 0 or IP is None:
        pytest.skip("namespaces need Linux, root and ip (the loopback variant ran)")
    tag = uuid.uuid4().hex[:6]
    names = [f"so{n}-{tag}" for n in range(1, 4)]
    made: list[str] = []
    origin = "10.202.0.1"
    try:
        try:
            _ip("addr", "add", f"{origin}/32", "dev", "lo")
        except subprocess.CalledProcessError as e:
            pytest.skip(f"cannot add an address here: {e.stderr.decode()[:200]}")
        for n, name in enumerate(names, start=1):
            _ip("netns", "add", name)
            made.append(name)
            host_side, inner = f"vh{n}{tag}", f"vn{n}{tag}"
            _ip("link", "add", host_side, "type", "veth", "peer", "name", inner)
            _ip("link", "set", inner, "netns", name)
            _ip("addr", "add", f"10.202.{n}.1/24", "dev", host_side)
            _ip("link", "set", host_side, "up")
            _ip("-n", name, "link", "set", "lo", "up")
            _ip("-n", name, "addr", "add", f"10.202.{n}.2/24", "dev", inner)
            _ip("-n", name, "link", "set", inner, "up")
            _ip("-n", name, "route", "add", "default", "via", f"10.202.{n}.1")
        yield Placement([f"10.202.{n}.2" for n in range(1, 4)],
                        [[IP, "netns", "exec", name] for name in names], origin)
    finally:
        for name in made:  # its veth pair goes with it
            subprocess.run([IP, "netns", "del", name], capture_output=True, timeout=10)
        subprocess.run([IP, "addr", "del", f"{origin}/32", "dev", "lo"],
                       capture_output=True, timeout=10)


@attrs.define
class Outcome:
    """One request through HAProxy, as the client saw it."""

    id: str
    started: float
    ended: float
    client_port: int
    instance: str | None = None
    error: str | None = None


def get(front: int, url: str) -> Outcome:
    """
    One request for *url* through HAProxy on a new connection (blocking),
    told apart from every other by its ``X-Id`` header.
    """
    started = time.monotonic()
    request_id = uuid.uuid4().hex
    conn = http.client.HTTPConnection("127.0.0.1", front, timeout=REQUEST_TIMEOUT,
                                      source_address=(CLIENT, 0))
    client_port = 0
    try:
        conn.connect()
        client_port = conn.sock.getsockname()[1]
        conn.request("GET", url, headers={"Connection": "close", "X-Id": request_id})
        response = conn.getresponse()
        response.read()
        if response.status != 200:
            return Outcome(request_id, started, time.monotonic(), client_port,
                           error=f"status {response.status}")
        return Outcome(request_id, started, time.monotonic(), client_port,
                       instance=response.getheader("X-Instance"))
    except (OSError, http.client.HTTPException) as e:
        return Outcome(request_id, started, time.monotonic(), client_port, error=repr(e))
    finally:
        conn.close()


def load(front: int, url: str, seconds: float, most: int) -> list[Outcome]:
    """Requests one after the other for *seconds*, *most* of them at most (blocking)."""
    outcomes: list[Outcome] = []
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline and len(outcomes) < most:
        outcomes.append(get(front, url))
    return outcomes


def healthz(address: str, port: int) -> int:
    """The status of ``/healthz`` on *address*:*port*, 0 if it does not answer (blocking)."""
    try:
        with urllib.request.urlopen(f"http://{address}:{port}/healthz", timeout=2) as r:
            return int(r.status)
    except urllib.error.HTTPError as e:
        return e.code
    except OSError:
        return 0


def metric(address: str, port: int, line_start: str) -> float:
    """The value of the first metrics line starting with *line_start* (blocking)."""
    with urllib.request.urlopen(f"http://{address}:{port}/metrics", timeout=2) as r:
        for line in r.read().decode().splitlines():
            if line.startswith(line_start):
                return float(line.rsplit(" ", 1)[1])
    return 0.0


async def until_healthy(instance: Instance) -> None:
    """Wait (bounded) until *instance*'s ``/healthz`` says 200."""
    for _ in range(int(START_TIMEOUT * 5)):
        if instance.child.done:
            raise AssertionError(f"{instance.name} exited:\n{instance.child.output}")
        if await deferToThread(healthz, instance.address, instance.metrics) == 200:
            return
        await sleep(0.2)
    raise AssertionError(f"{instance.name} never became healthy:\n{instance.child.output}")


def saved_clients(path: Path) -> list[tuple[str, str, int, str | None]]:
    """The request id, client address and X-Instance of every flow in the save file *path*."""
    found = []
    for line in path.read_bytes().splitlines():
        record = json.loads(line)
        host, port = record["client_conn"]["peername"]
        headers = {k.lower(): v for k, v in record["response"]["headers"]}
        request_id = {k.lower(): v for k, v in record["request"]["headers"]}["x-id"]
        found.append((request_id, host, port, headers.get("x-instance")))
    return found


@pytest_twisted.async_yield_fixture
async def origin_port(placement: Placement) -> AsyncIterator[int]:
    """An origin on the placement's origin address; yields its port."""
    port: Any = reactor.listenTCP(0, OriginFactory(), interface=placement.origin)
    yield port.getHost().port
    await port.stopListening()


@needs_haproxy
@pytest_twisted.ensureDeferred
async def test_scale_out_behind_haproxy(tmp_path: Path, placement: Placement,
                                        origin_port: int) -> None:
    """
    Three instances behind HAProxy: a SIGTERM drains one with no failed
    request; a SIGKILL fails only what was in flight on the other; every
    answered flow is saved by the instance that answered it, with the
    client's real address.
    """
    assert HAPROXY is not None
    instances: list[Instance] = []
    haproxy: Child | None = None
    try:
        for name, address, prefix in zip(("t1", "t2", "t3"), placement.addresses,
                                         placement.prefixes, strict=True):
            addon = tmp_path / f"{name}.py"
            addon.write_text(TAG_ADDON.format(name=name))
            port, metrics = free_port(), free_port()
            save = tmp_path / f"{name}.jsonl"
            child = spawn([
                *prefix, *twistd_command(), "-n", "--pidfile=", "twistproxy", "-q",
                "--port", f"haproxy:tcp:{port}:interface={address}",
                "--metrics-port", f"tcp:{metrics}:interface={address}",
                "--drain-delay", "1.5",
                "--shutdown-timeout", "5", "--ca-dir", str(tmp_path / "ca"),
                "--save", str(save), "--addon", str(addon),
            ], tmp_path)
            instances.append(Instance(name, address, port, metrics, save, child))
        await gatherResults([Deferred.fromCoroutine(until_healthy(i)) for i in instances])

        front = free_port()
        servers = [f"    server {i.name} {i.address}:{i.port} check port {i.metrics}"
                   for i in instances]
        config = tmp_path / "haproxy.cfg"
        config.write_text(haproxy_config(front, servers))
        haproxy = spawn([HAPROXY, "-db", "-f", str(config)], tmp_path)
        url = f"http://{placement.origin}:{origin_port}/bytes/1024"
        for _ in range(50):  # HAProxy listening and its servers up (bounded)
            if haproxy.done:
                raise AssertionError(f"haproxy exited:\n{haproxy.output}")
            if (await deferToThread(get, front, url)).error is None:
                break
            await sleep(0.2)
        await sleep(1.0)  # every server checked at least twice (rise 2)

        # SIGTERM one instance mid-load: HAProxy drains it, nothing fails.
        t1, t2, t3 = instances
        loads = [deferToThread(load, front, url, 4.0, 800) for _ in range(3)]
        await sleep(0.5)
        assert t1.child.transport is not None
        t1.child.transport.signalProcess("TERM")
        termed_at = time.monotonic()
        results = await DeferredList(loads, consumeErrors=True)
        first = [o for ok, outcomes in results for o in (outcomes if ok else [])]
        assert all(ok for ok, _ in results), results
        failed = [o for o in first if o.error is not None]
        assert failed == [], failed
        served_by = {o.instance for o in first}
        assert served_by == {"t1", "t2", "t3"}, served_by
        await t1.child.wait(15.0)
        assert_stopped_cleanly(t1.child.code, t1.child.signal, t1.child.output)
        assert "accepting for 1.5 s more while /healthz says draining" in t1.child.output
        # t1 still accepts for its drain delay (1.5 s), but HAProxy, checking
        # every 200 ms, saw the 503 and sent it nothing new well before.
        marked_down = [o for o in first if termed_at + 0.7 < o.started < termed_at + 1.4]
        assert marked_down and all(o.instance != "t1" for o in marked_down), marked_down

        # SIGKILL another while slow requests are in flight on it.
        slow_url = f"http://{placement.origin}:{origin_port}/trickle/15/100"  # 1.5 s
        slow = [deferToThread(get, front, slow_url) for _ in range(4)]
        fast = [deferToThread(load, front, url, 3.0, 400) for _ in range(2)]
        await sleep(0.7)
        killed_at = time.monotonic()
        assert t2.child.transport is not None
        t2.child.transport.signalProcess("KILL")
        await t2.child.wait(5.0)
        # The kernel may still have queued connections for t2 until it died.
        dead_at = time.monotonic()
        slow_results = await DeferredList(slow, consumeErrors=True)
        fast_results = await DeferredList(fast, consumeErrors=True)
        slow_outcomes = [o for _, o in slow_results]
        second = slow_outcomes + [o for _, outcomes in fast_results for o in outcomes]
        lost = [o for o in second if o.error is not None]
        # What failed was in flight on t2 when it was killed, nothing else.
        assert all(o.started <= dead_at and o.ended >= killed_at for o in lost), (
            killed_at, dead_at, lost)
        assert all(o.error is None for o in second if o.started > dead_at), second
        assert all(o.instance in ("t2", "t3") for o in second if o.error is None)
        slow_on_t3 = sum(o.instance == "t3" for o in slow_outcomes)
        slow_lost = sum(o.error is not None for o in slow_outcomes)
        assert slow_lost >= 1 and slow_lost + slow_on_t3 == 4, slow_outcomes

        # Each answered request is saved once, by its instance, with the real client.
        saved: dict[str, tuple[str, int]] = {}
        for instance in instances:
            for request_id, host, port, tag in saved_clients(instance.save):
                assert host == CLIENT, (instance.name, host)
                assert tag == instance.name
                assert request_id not in saved
                saved[request_id] = (instance.name, port)
        for outcome in first + second:
            if outcome.error is None:
                assert saved[outcome.id] == (outcome.instance, outcome.client_port)
        t3_flows = len(saved_clients(t3.save))
        counted = await deferToThread(
            metric, t3.address, t3.metrics, 'twistproxy_flows_total{method="GET",status="2xx"}')
        assert counted == t3_flows
    finally:
        if haproxy is not None:
            await haproxy.stop()
        for instance in instances:
            await instance.child.stop()
