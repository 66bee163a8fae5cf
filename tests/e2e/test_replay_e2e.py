"""
Flows on disk and replay, end to end through ``twistd -n twistproxy``:
record with ``--save``, answer from the recording with ``--server-replay``
while the origin is gone, and re-send recordings (also a browser's HAR
export) with ``--client-replay``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from twisted.internet import reactor

from tests.e2e.conftest import needs_curl
from tests.e2e.origin import OriginFactory
from tests.e2e.test_twistd import curl, start_twistd, twistd_command
from tests.e2e.test_twistd import spawn as spawn_child
from twistproxy.connection import Client, Server
from twistproxy.flowfile import FlowWriter, load_flows
from twistproxy.http import HTTPFlow, Request

pytestmark = pytest.mark.e2e

DATA = Path(__file__).parent.parent / "data"


@needs_curl
@pytest_twisted.ensureDeferred
async def test_record_then_replay_without_origin(tmp_path: Path) -> None:
    """
    Flows recorded with ``--save`` (and ``--save-filter``) are served again
    by ``--server-replay`` once the origin is gone, each once and in order;
    with ``--replay-unmatched 404`` nothing else is answered or forwarded.
    """
    origin = reactor.listenTCP(0, OriginFactory(), interface="127.0.0.1")
    base = f"http://127.0.0.1:{origin.getHost().port}"
    saved = tmp_path / "flows.jsonl"
    child, port = await start_twistd(tmp_path, "--save", str(saved), "--save-filter", "~u echo")
    proxy = f"http://127.0.0.1:{port}"
    try:
        _, first = await curl("-x", proxy, f"{base}/echo?a=1", cwd=tmp_path)
        _, posted = await curl("-x", proxy, "--data-binary", "hello", f"{base}/echo?p=1",
                               cwd=tmp_path)
        _, skipped = await curl("-x", proxy, f"{base}/chunked", cwd=tmp_path)
        assert skipped.startswith("chunk-0")
    finally:
        await child.stop()
        await origin.stopListening()
    flows = load_flows(saved)
    assert [f.request.path for f in flows] == ["/echo?a=1", "/echo?p=1"]

    child, port = await start_twistd(tmp_path, "--server-replay", str(saved),
                                     "--replay-unmatched", "404")
    proxy = f"http://127.0.0.1:{port}"
    try:
        code, again = await curl("-x", proxy, f"{base}/echo?a=1", cwd=tmp_path)
        assert (code, again) == (0, first)
        code, again = await curl("-x", proxy, "--data-binary", "hello", f"{base}/echo?p=1",
                                 cwd=tmp_path)
        assert (code, again) == (0, posted)
        for url in (f"{base}/echo?a=1", f"{base}/chunked"):  # used up; never recorded
            code, status = await curl("-x", proxy, "-o", "/dev/null", "-w", "%{http_code}",
                                      url, cwd=tmp_path)
            assert status == "404", url
        assert "connection refused" not in child.output  # no request reached a server
    finally:
        await child.stop()


def _write_recording(path: Path, urls: list[str]) -> None:
    with FlowWriter(path.open("wb")) as writer:
        for url in urls:
            flow = HTTPFlow(Client(), Server(), now=lambda: 1.0)
            flow.request = Request.make("GET", url)
            writer.add(flow)


async def _replay_and_exit(tmp_path: Path, recording: Path, *options: str) -> Any:
    """Run twistd with ``--client-replay`` until it exits by itself."""
    from tests.e2e.test_twistd import free_port

    child = spawn_child(
        [*twistd_command(), "-n", "--pidfile=", "twistproxy", "--port", str(free_port()),
         "--client-replay", str(recording), "--exit-after-replay", *options],
        tmp_path,
    )
    try:
        code = await child.wait(20)
    finally:
        await child.stop()
    assert code == 0, child.output
    return child


@pytest_twisted.ensureDeferred
async def test_client_replay_counts_at_origin(tmp_path: Path) -> None:
    """
    ``--client-replay`` sends every recorded request to the origin once, the
    results are saved with ``--save`` marked as replays with their new
    responses, and ``--exit-after-replay`` ends twistd when the queue drains.
    """
    factory = OriginFactory()
    origin = reactor.listenTCP(0, factory, interface="127.0.0.1")
    base = f"http://127.0.0.1:{origin.getHost().port}"
    recording = tmp_path / "recorded.jsonl"
    _write_recording(recording, [f"{base}/echo?n={n}" for n in range(3)])
    saved = tmp_path / "replayed.jsonl"
    try:
        child = await _replay_and_exit(tmp_path, recording, "--save", str(saved),
                                       "--replay-concurrency", "2")
    finally:
        await origin.stopListening()
    assert sorted(r.target for r in factory.received) == [b"/echo?n=0", b"/echo?n=1",
                                                         b"/echo?n=2"]
    replayed = load_flows(saved)
    assert len(replayed) == 3
    assert all(f.is_replay == "request" and f.response.status_code == 200 for f in replayed)
    assert "replaying 3 recorded requests" in child.output


@pytest_twisted.ensureDeferred
async def test_browser_har_replayed(tmp_path: Path) -> None:
    """
    A HAR file shaped like a browser's DevTools export, pointed at a local
    origin, is replayed directly with ``--client-replay FILE.har``.
    """
    factory = OriginFactory()
    origin = reactor.listenTCP(0, factory, interface="127.0.0.1")
    har = json.loads((DATA / "browser.har").read_text())
    entries = [e for e in har["log"]["entries"] if e["response"]["status"]]
    for index, entry in enumerate(entries):
        entry["request"]["url"] = f"http://127.0.0.1:{origin.getHost().port}/echo?entry={index}"
        entry["request"]["httpVersion"] = "HTTP/1.1"
        entry["request"]["headers"] = [h for h in entry["request"]["headers"]
                                       if not h["name"].startswith(":")
                                       and h["name"].lower() != "host"]
    har["log"]["entries"] = entries
    path = tmp_path / "export.har"
    path.write_text(json.dumps(har))
    try:
        await _replay_and_exit(tmp_path, path)
    finally:
        await origin.stopListening()
    targets = sorted(r.target.decode() for r in factory.received)
    assert targets == sorted(f"/echo?entry={i}" for i in range(len(entries)))
    posts = [r for r in factory.received if r.method == b"POST"]
    assert posts and all(r.body for r in posts)


@pytest_twisted.ensureDeferred
async def test_corrupt_recording_is_a_usage_error(tmp_path: Path) -> None:
    """A corrupt recording stops twistd at start with the file and line named."""
    from tests.e2e.test_twistd import run

    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"version": 1}\nnot json\n')
    code, output = await run(
        [*twistd_command(), "-n", "twistproxy", "--server-replay", str(bad)], tmp_path)
    assert code not in (0, None)
    assert "Traceback" not in output
    assert f"--server-replay {bad}: line 1" in output


@pytest_twisted.ensureDeferred
async def test_exit_after_replay_with_nothing_to_replay(tmp_path: Path) -> None:
    """
    ``--exit-after-replay`` with only flows that cannot be replayed exits at
    once, with status 1 and one line saying there was nothing to replay
    (after the warning saying why), not a traceback.
    """
    from tests.e2e.test_twistd import free_port, run

    recording = tmp_path / "connects.jsonl"
    with FlowWriter(recording.open("wb")) as writer:
        flow = HTTPFlow(Client(), Server(), now=lambda: 1.0)
        flow.request = Request.make("CONNECT", "http://example.com:443/")
        writer.add(flow)
    code, output = await run(
        [*twistd_command(), "-n", "--pidfile=", "twistproxy", "--port", str(free_port()),
         "--client-replay", str(recording), "--exit-after-replay"], tmp_path)
    assert code == 1, output
    assert "Traceback" not in output, output
    assert "not replaying" in output
    assert ("twistproxy: --client-replay: nothing to replay: none of the 1 recorded flows "
            "can be replayed") in output


@needs_curl
@pytest_twisted.ensureDeferred
async def test_save_client_replay_server_replay(tmp_path: Path) -> None:
    """
    The operator's round trip, from files ``--save`` wrote: flows saved
    from live traffic (a GET, a POST, a chunked answer, a body that
    streamed past ``--body-limit``, a failed request) are read back not
    live, in a file only the owner may read; ``--client-replay`` sends every
    one to the origin again and saves the new answers with ``--save``, with
    a line counting them; ``--server-replay`` of that file answers each
    request with the replayed response while the origin is gone.  A
    recording whose body was only recorded in part is never served: the
    request is unmatched (404) and the log says why.
    """
    import stat

    factory = OriginFactory()
    origin = reactor.listenTCP(0, factory, interface="127.0.0.1")
    base = f"http://127.0.0.1:{origin.getHost().port}"
    from tests.e2e.test_twistd import free_port

    closed = f"http://127.0.0.1:{free_port()}/gone"
    urls = [f"{base}/echo?a=1", f"{base}/echo?p=1", f"{base}/chunked", f"{base}/bytes/100000"]
    saved, replayed = tmp_path / "saved.jsonl", tmp_path / "replayed.jsonl"
    try:
        child, port = await start_twistd(tmp_path, "--save", str(saved), "--body-limit", "4096")
        proxy = f"http://127.0.0.1:{port}"
        try:
            for url in urls + [closed]:
                data = ("--data-binary", "hello") if "p=1" in url else ()
                await curl("-x", proxy, *data, "-o", "/dev/null", url, cwd=tmp_path)
        finally:
            await child.stop()
        assert stat.S_IMODE(saved.stat().st_mode) == 0o600
        recorded = load_flows(saved)
        assert [f.request.url for f in recorded] == urls + [closed]
        assert not any(f.live for f in recorded)
        assert recorded[3].response.truncated and recorded[4].error is not None
        before = len(factory.received)

        child = await _replay_and_exit(tmp_path, saved, "--save", str(replayed))
        targets = sorted(r.target.decode() for r in factory.received[before:])
        assert targets == sorted(url[len(base):] for url in urls)
        assert "replaying 5 recorded requests" in child.output
        assert "replayed 5 recorded requests: 4 answered, 1 failed" in child.output
    finally:
        await origin.stopListening()
    flows = load_flows(replayed)
    assert [f.is_replay for f in flows] == ["request"] * 5
    answered = [f for f in flows if f.response is not None]
    assert [f.request.url for f in answered] == urls

    child, port = await start_twistd(tmp_path, "--server-replay", str(replayed),
                                     "--replay-unmatched", "404")
    proxy = f"http://127.0.0.1:{port}"
    try:
        for flow in answered:
            data = ("--data-binary", "hello") if flow.request.method == "POST" else ()
            out = tmp_path / "body"
            code, output = await curl("-x", proxy, *data, "-o", str(out), flow.request.url,
                                      cwd=tmp_path)
            assert code == 0, output
            assert out.read_bytes() == flow.response.content, flow.request.url
    finally:
        await child.stop()

    child, port = await start_twistd(tmp_path, "--server-replay", str(saved),
                                     "--replay-unmatched", "404")
    try:
        code, status = await curl("-x", f"http://127.0.0.1:{port}", "-o", "/dev/null",
                                  "-w", "%{http_code}", urls[3], cwd=tmp_path)
        assert status == "404"
        assert f"the recorded response for {urls[3]} has no whole body" in child.output
    finally:
        await child.stop()
