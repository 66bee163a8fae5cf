"""
Flow files under faults, the way an operator meets them, through ``twistd
-n twistproxy`` child processes and curl on 127.0.0.1: the proxy killed
with SIGKILL mid-traffic and restarted appending to the same ``--save``
file, ``--save /dev/full``, and a truncated or corrupt (or hostile) file
read back by the replay options.  Each checks that every flow that
completed is readable and every client got a whole answer or a clean
error.
"""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest
import pytest_twisted
from twisted.internet import reactor
from twisted.internet.defer import Deferred, gatherResults

from tests.e2e.conftest import Running, needs_curl
from tests.e2e.origin import OriginFactory
from tests.e2e.test_twistd import (
    curl,
    free_port,
    output_contains,
    run,
    sleep,
    start_twistd,
    twistd_command,
)
from twistproxy.errors import FlowFileError
from twistproxy.flowfile import load_flows

pytestmark = pytest.mark.e2e


async def _fetch(proxy: str, url: str, out: Path, cwd: Path) -> tuple[int | None, str]:
    """curl *url* through *proxy* into *out*; its exit code and output."""
    return await curl("-x", proxy, "-o", str(out), url, cwd=cwd)


@needs_curl
@pytest_twisted.ensureDeferred
async def test_kill_9_mid_traffic_then_append(tmp_path: Path) -> None:
    """
    SIGKILL while clients wait on slow answers: every request that got its
    answer before has its flow in the file; the clients cut off get an
    error from curl, never a short body passed off as whole.  The kill
    rarely lands mid-write, so the test then cuts the last line in half, as
    such a kill (or a full disk) leaves it.  Restarted on the same file,
    twistd says so in one line and its new flows start on a line of their
    own: read back, every completed flow is there, and the one cut line is
    named (strict) or skipped and counted (``--skip-invalid-flows``).
    """
    factory = OriginFactory()
    origin = reactor.listenTCP(0, factory, interface="127.0.0.1")
    base = f"http://127.0.0.1:{origin.getHost().port}"
    saved = tmp_path / "flows.jsonl"
    try:
        child, port = await start_twistd(tmp_path, "--save", str(saved))
        proxy = f"http://127.0.0.1:{port}"
        try:
            done = [f"{base}/echo?n={n}" for n in range(4)] + [f"{base}/bytes/300000"]
            for index, url in enumerate(done):
                code, output = await _fetch(proxy, url, tmp_path / f"done{index}", tmp_path)
                assert code == 0, output
            assert (tmp_path / "done4").stat().st_size == 300000
            slow = [f"{base}/trickle/40/100", f"{base}/hang", f"{base}/trickle/40/100"]
            waiting = gatherResults([
                Deferred.fromCoroutine(_fetch(proxy, url, tmp_path / f"slow{index}", tmp_path))
                for index, url in enumerate(slow)
            ])
            await sleep(1.0)
            child.transport.signalProcess(signal.SIGKILL)  # type: ignore[union-attr]
            cut_off = await waiting
            assert (await child.wait(10)) is None  # killed by a signal
        finally:
            await child.stop()
        for code, output in cut_off:  # 18: partial file, 52: empty reply, 56: recv failure
            assert code in (18, 52, 56), (code, output)
        before = load_flows(saved)
        assert [f.request.url for f in before] == done
        assert all(not f.live and f.response.status_code == 200 for f in before)

        data = saved.read_bytes()
        last = data.rstrip(b"\n").rfind(b"\n") + 1
        saved.write_bytes(data[: last + (len(data) - last) // 2])  # the last line, cut
        child, port = await start_twistd(tmp_path, "--save", str(saved))
        try:
            await output_contains(child, "the file ended in a partial line")
            after = [f"{base}/echo?after={n}" for n in range(2)]
            for url in after:
                code, output = await _fetch(f"http://127.0.0.1:{port}", url,
                                            tmp_path / "after", tmp_path)
                assert code == 0, output
        finally:
            await child.stop()
    finally:
        await origin.stopListening()

    with pytest.raises(FlowFileError, match=f"^line {len(done)}: not valid JSON"):
        load_flows(saved)
    errors: list[FlowFileError] = []
    read = load_flows(saved, on_error=errors.append)
    assert [f.request.url for f in read] == done[:-1] + after
    assert len(errors) == 1

    command = [*twistd_command(), "-n", "--pidfile=", "twistproxy", "--port",
               str(free_port()), "--server-replay", str(saved)]
    code, output = await run(command, tmp_path)
    assert code not in (0, None) and "Traceback" not in output, output
    assert f"--server-replay {saved}: line {len(done)}: not valid JSON" in output
    child, _ = await start_twistd(tmp_path, "--server-replay", str(saved),
                                  "--skip-invalid-flows")
    try:
        await output_contains(
            child, f"--server-replay {saved}: skipped 1 unreadable flows (first: line "
            f"{len(done)}: not valid JSON")
    finally:
        await child.stop()


@needs_curl
@pytest_twisted.ensureDeferred
async def test_save_to_dev_full(tmp_path: Path, origin: Running) -> None:
    """
    ``--save /dev/full``: every write fails (ENOSPC), and clients notice
    nothing: each gets its whole answer, no 500, no traceback.  The log has
    one line when writing first fails and, when twistd stops, one counting
    the flows lost.
    """
    if not os.path.exists("/dev/full"):
        pytest.skip("no /dev/full")
    child, port = await start_twistd(tmp_path, "--save", "/dev/full")
    proxy = f"http://127.0.0.1:{port}"
    try:
        for n in range(5):
            url = f"http://127.0.0.1:{origin.port}/bytes/{1000 * (n + 1)}"
            code, status = await curl("-x", proxy, "-o", str(tmp_path / "body"),
                                      "-w", "%{http_code}", url, cwd=tmp_path)
            assert (code, status) == (0, "200")
            assert (tmp_path / "body").stat().st_size == 1000 * (n + 1)
        await output_contains(child, f"GET http://127.0.0.1:{origin.port}/bytes/5000 -> 200")
    finally:
        await child.stop()
    output = child.output
    assert "Traceback" not in output, output
    failures = [line for line in output.splitlines() if "cannot write flows" in line]
    assert len(failures) == 1, output
    assert "No space left on device" in failures[0]
    assert "--save /dev/full: 5 flows were not saved (0 were)" in output


@pytest_twisted.ensureDeferred
async def test_hostile_files_one_line(tmp_path: Path) -> None:
    """
    A flow file or HAR nested 200,000 levels deep stops twistd with one
    line naming the option, the file (and line), not a traceback.
    """
    deep = b"[" * 200_000 + b"]" * 200_000
    (tmp_path / "deep.jsonl").write_bytes(deep + b"\n")
    (tmp_path / "deep.har").write_bytes(b'{"log": ' + deep + b"}")
    for name, where in (("deep.jsonl", "line 1: "), ("deep.har", "not a HAR file: ")):
        code, output = await run(
            [*twistd_command(), "-n", "--pidfile=", "twistproxy", "--port", str(free_port()),
             "--client-replay", name], tmp_path)
        assert code not in (0, None), output
        assert "Traceback" not in output and "RecursionError" not in output, output
        assert f"--client-replay {name}: {where}lists and objects nest more than 100 deep" \
            in output, output
