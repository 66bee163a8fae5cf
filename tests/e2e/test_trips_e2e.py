"""
End-to-end tests for the small trips of issue 13: ``twistd twistproxy
--version``, the flow log line the README shows, and a second proxy from
the same directory with ``--pidfile=``.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest_twisted

from tests.e2e.test_twistd import (
    REPO,
    accepting,
    curl,
    free_port,
    needs_curl,
    origin_port,
    output_contains,
    run,
    spawn,
    start_twistd,
    twistd_command,
)
from twistproxy import __version__

__all__ = ["origin_port"]  # the fixture, imported for the tests here

_README = (REPO / "README.rst").read_text(encoding="utf-8")


@pytest_twisted.ensureDeferred
async def test_version(tmp_path: Path) -> None:
    """
    ``twistd twistproxy --version`` prints twistproxy's version, and
    Twisted's, and exits 0.
    """
    from twisted.copyright import version as twisted_version

    code, output = await run([*twistd_command(), "twistproxy", "--version"], tmp_path)
    assert code == 0, output
    assert f"twistproxy {__version__} (Twisted {twisted_version}, Python " in output


@needs_curl
@pytest_twisted.ensureDeferred
async def test_readme_log_line(tmp_path: Path, origin_port: int) -> None:
    """
    The flow log line the README shows names the logger (the ``[...]``
    part) twistd's flow lines really carry, and has their shape.
    """
    child, port = await start_twistd(tmp_path)
    try:
        url = f"http://127.0.0.1:{origin_port}/echo"
        code, body = await curl("-x", f"http://127.0.0.1:{port}", url, cwd=tmp_path)
        assert code == 0, body
        await output_contains(child, f"GET {url} -> 200")
    finally:
        await child.stop()
    line = next(text for text in child.output.splitlines() if f"GET {url} -> 200" in text)
    shape = re.compile(r"^\S+ \[([^\]]+)\] [\d.]+:\d+ GET \S+ -> 200 \S+ \S+ \d+ ms")
    real = shape.match(line)
    assert real is not None, line
    samples = [text.strip() for text in _README.splitlines() if " -> 200 " in text]
    assert len(samples) == 1, samples
    sample = shape.match(samples[0])
    assert sample is not None, samples[0]
    assert sample.group(1) == real.group(1)


@pytest_twisted.ensureDeferred
async def test_second_proxy_with_pidfile(tmp_path: Path) -> None:
    """
    A second ``twistd`` from the same directory is refused while the first
    holds ``twistd.pid``; with ``--pidfile=`` another file, as the README
    says, it starts.
    """
    first_port = free_port()
    first = spawn([*twistd_command(), "-n", "twistproxy", "--port", str(first_port)], tmp_path)
    try:
        await accepting(first_port, first)
        assert (tmp_path / "twistd.pid").is_file()
        code, output = await run(
            [*twistd_command(), "-n", "twistproxy", "--port", str(free_port())], tmp_path
        )
        assert code not in (0, None), output
        assert "Another twistd server is running" in output, output
        assert "--pidfile=second.pid twistproxy" in _README
        second_port = free_port()
        second = spawn(
            [*twistd_command(), "-n", "--pidfile=second.pid", "twistproxy",
             "--port", str(second_port)],
            tmp_path,
        )
        try:
            await accepting(second_port, second)
            assert (tmp_path / "second.pid").is_file()
        finally:
            await second.stop()
    finally:
        await first.stop()
