"""
End-to-end tests for exports: flows the proxy saved, exported with
``python -m twistproxy.flowfile export-curl``, sent again by running the
commands in ``/bin/sh`` against the origin.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

import pytest_twisted
from twisted.internet.utils import getProcessOutputAndValue

from tests.e2e.conftest import needs_curl, raw
from twistproxy.addons.save import SaveFlows
from twistproxy.flowfile import load_flows

REPO = Path(__file__).resolve().parents[2]

_BINARY = bytes(range(256)) + b"'\"$(touch /tmp/nope)`x`\\%s\n\r\x00-"


def _requests(port: int) -> list[bytes]:
    """
    The requests sent through the proxy: a binary POST, a text PUT with
    shell characters, a GET with repeated and empty headers and no
    User-Agent of its own kind, a DELETE with an empty body, and a HEAD.
    """
    url = f"http://127.0.0.1:{port}"
    common = b"User-Agent: tester/1\r\nAccept: */*\r\n"
    text = "caf\u00e9 'quoted' \"double\" $HOME `id` ; & | < > * ? ~ #".encode()
    return [
        b"POST %s/echo/bin?x=1&y=[2] HTTP/1.1\r\nHost: 127.0.0.1:%d\r\n%s"
        b"Content-Type: application/octet-stream\r\nContent-Length: %d\r\n\r\n%s"
        % (url.encode(), port, common, len(_BINARY), _BINARY),
        b"PUT %s/echo/text HTTP/1.1\r\nHost: 127.0.0.1:%d\r\n%sContent-Length: %d\r\n\r\n%s"
        % (url.encode(), port, common, len(text), text),
        b"GET %s/echo/get HTTP/1.1\r\nHost: 127.0.0.1:%d\r\n%sX-Twice: one\r\n"
        b"X-Empty:\r\nX-Twice: two\r\nCookie: a=b; c=d\r\n\r\n" % (url.encode(), port, common),
        b"DELETE %s/echo/delete HTTP/1.1\r\nHost: 127.0.0.1:%d\r\n%sContent-Length: 0\r\n\r\n"
        % (url.encode(), port, common),
        b"HEAD %s/echo/head HTTP/1.1\r\nHost: 127.0.0.1:%d\r\n%s\r\n"
        % (url.encode(), port, common),
    ]


def _fields(headers: list[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes]]:
    """The header fields to compare: names lowered, without Host and the framing."""
    return [
        (name.lower(), value)
        for name, value in headers
        if name.lower() not in (b"host", b"content-length", b"via", b"connection")
    ]


async def _run(*args: str) -> tuple[bytes, bytes, int]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH", "")) if p)
    out, err, code = await getProcessOutputAndValue(args[0], args[1:], env=env)
    return out, err, code


@needs_curl
@pytest_twisted.ensureDeferred
async def test_curl_reproduces_saved_requests(
    origin: Any, start_proxy: Any, tmp_path: Path
) -> None:
    """
    Each curl command sends the origin what the proxy sent it the first
    time: the method, the target, the header fields in order (values,
    repeats and empty ones included), and the body byte for byte, shell
    characters and every byte value included; ``--filter`` chooses the
    flows.
    """
    saved = tmp_path / "saved.jsonl"
    saving = SaveFlows.open(saved)
    proxy = await start_proxy(addons=[saving])
    for request in _requests(origin.port):
        answer = await raw(proxy.port, request, until=lambda data: b"\r\n\r\n" in data)
        assert answer.startswith(b"HTTP/1.1 200 "), answer[:100]
    saving.close()
    first = list(origin.factory.received)
    assert len(first) == 5
    assert len(load_flows(saved)) == 5

    out, err, code = await _run(
        sys.executable, "-m", "twistproxy.flowfile", "export-curl", str(saved),
        "--filter", "~u /echo/ & !~m HEAD",
    )
    assert (err, code) == (b"", 0)
    commands = out.decode("utf-8").splitlines()
    assert len(commands) == 4
    assert all(command.startswith(("curl ", "printf ")) for command in commands)
    for command in commands:
        out, err, code = await _run("/bin/sh", "-c", command + " --silent --show-error")
        assert (err, code) == (b"", 0), command
    again = origin.factory.received[5:]
    assert len(again) == 4
    for before, after in zip(first, again, strict=False):
        assert after.method == before.method
        assert after.target == before.target
        assert after.body == before.body
        assert _fields(after.headers) == _fields(before.headers)
    assert not Path("/tmp/nope").exists()


@needs_curl
@pytest_twisted.ensureDeferred
async def test_head_and_export_errors(origin: Any, start_proxy: Any, tmp_path: Path) -> None:
    """
    A HEAD goes again as ``curl --head``; a bad ``--filter`` is one line
    naming the option, and exit status 1.
    """
    saved = tmp_path / "saved.jsonl"
    saving = SaveFlows.open(saved)
    proxy = await start_proxy(addons=[saving])
    answer = await raw(proxy.port, _requests(origin.port)[4], until=lambda d: b"\r\n\r\n" in d)
    assert answer.startswith(b"HTTP/1.1 200 ")
    saving.close()
    out, err, code = await _run(
        sys.executable, "-m", "twistproxy.flowfile", "export-curl", str(saved)
    )
    assert (err, code) == (b"", 0)
    assert b" --head " in out
    _, err, code = await _run("/bin/sh", "-c", out.decode().strip() + " --silent")
    assert code == 0
    assert origin.factory.received[-1].method == b"HEAD"
    out, err, code = await _run(
        sys.executable, "-m", "twistproxy.flowfile", "export-curl", str(saved), "--filter", "~u a["
    )
    assert code == 1
    assert err.count(b"\n") == 1
    assert b"--filter '~u a[': invalid regular expression" in err
