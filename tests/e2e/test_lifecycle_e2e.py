"""
The addons' lifecycle and options end to end: ``twistd twistproxy`` as a
child process with an addon file that declares options (``--set``,
``--options``), records its hooks in a file, and is edited while the proxy
runs (reload).
"""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest
import pytest_twisted

from tests.e2e.test_faults_shutdown_e2e import (
    EXIT_TIMEOUT,
    PIECE,
    PIECES,
    assert_stopped_cleanly,
    connect,
    get,
    trickling,  # noqa: F401 -- a fixture
    until,
)
from tests.e2e.test_twistd import (
    assert_usage_error,
    output_contains,
    run,
    start_twistd,
    twistd_command,
)

pytestmark = pytest.mark.e2e

ADDON = """\
import typing

import events_beside  # a module in the addon file's own directory

from twistproxy import ctx


class Recorder:
    def load(self, loader):
        loader.add_option("events_file", typing.Optional[str], None, "Where hooks are written.")
        loader.add_option("stamp", str, "none", "The X-Stamp of every response.")
        loader.add_option("repeat", int, 1, "How many times to stamp.")

    def configure(self, updated):
        events_beside.write(f"configure {{','.join(sorted(updated))}} stamp={{ctx.options.stamp}}")

    def running(self):
        events_beside.write("running {version}")

    stream_bodies = True  # the response hook runs once a response streamed through

    def responseheaders(self, flow):
        flow.response.headers["X-Stamp"] = "{version}:" + ctx.options.stamp * ctx.options.repeat

    def response(self, flow):
        events_beside.write(f"response {{flow.request.path}}")

    def done(self):
        events_beside.write("done {version}")


addons = [Recorder()]
"""

BESIDE = """\
from twistproxy import ctx


def write(line):
    with open(ctx.options.events_file, "a") as f:
        f.write(line + "\\n")
"""


def write_addon(directory: Path, version: str) -> Path:
    """Write the addon file (and the module beside it) in *directory*."""
    (directory / "events_beside.py").write_text(BESIDE)
    path = directory / "recorder.py"
    path.write_text(ADDON.format(version=version))
    return path


def events(path: Path) -> list[str]:
    """The lines the addon wrote so far."""
    return path.read_text().splitlines() if path.exists() else []


@pytest_twisted.ensureDeferred
async def test_options_listed(tmp_path: Path) -> None:
    """
    ``--options`` lists the addon file's options (name, type, default,
    help) and exits 0 without starting the proxy.
    """
    addon = write_addon(tmp_path, "v1")
    code, output = await run(
        [*twistd_command(), "-n", "--pidfile=", "twistproxy", "--addon", str(addon), "--options"],
        tmp_path,
    )
    assert code == 0, output
    assert "stamp (str, default: 'none')\n    The X-Stamp of every response.\n" in output
    assert "repeat (int, default: 1)\n" in output
    assert "events_file (optional str, default: None)\n" in output
    assert "listening" not in output


@pytest_twisted.ensureDeferred
async def test_set_refused(tmp_path: Path) -> None:
    """
    ``--set`` with a wrong type or an unknown name ends twistd with one
    line naming the option; a mitmproxy hook twistproxy does not have is
    refused at start, saying so.
    """
    addon = write_addon(tmp_path, "v1")
    base = [*twistd_command(), "-n", "--pidfile=", "twistproxy", "--addon", str(addon)]
    code, output = await run([*base, "--set", "repeat=twice"], tmp_path)
    assert_usage_error(code, output, "--set repeat: 'twice' is not an int")
    code, output = await run([*base, "--set", "colour=red"], tmp_path)
    assert_usage_error(code, output, "--set unknown option 'colour'", "stamp")
    mitm = tmp_path / "mitm.py"
    mitm.write_text("class Hello:\n    def tls_clienthello(self, data):\n        pass\n"
                    "addons = [Hello()]\n")
    code, output = await run([*base[:-1], str(mitm)], tmp_path)
    assert_usage_error(code, output, "Hello.tls_clienthello",
                       "not implemented by twistproxy")


@pytest_twisted.ensureDeferred
async def test_lifecycle_in_order(tmp_path: Path, trickling: int) -> None:  # noqa: F811
    """
    An addon file's hooks run in order with the ``--set`` values: load
    (nothing to write yet), configure with every option, running once the
    proxy listens, response per flow, and at SIGTERM done after the last
    flow, a slow one still in flight when the signal came.
    """
    addon = write_addon(tmp_path, "v1")
    log = tmp_path / "events.txt"
    child, port = await start_twistd(
        tmp_path, "--addon", str(addon), "--set", f"events_file={log}", "--set", "stamp=ab",
        "--set", "repeat=2", "--shutdown-timeout", "15")
    try:
        await until(lambda: "running v1" in events(log), "running")
        fast = await connect(port)
        get(fast, trickling, "/fast")
        await until(lambda: fast.data.endswith(b"ok"), "the fast response")
        assert b"X-Stamp: v1:abab" in fast.data
        slow = await connect(port)
        get(slow, trickling, "/slow")
        await until(lambda: PIECE in slow.data, "the slow response's first piece")
        child.transport.signalProcess(signal.SIGTERM)  # type: ignore[union-attr]
        assert not slow.data.endswith(PIECE * PIECES)  # still trickling
        await until(lambda: slow.reason is not None, "the slow response's end")
        assert slow.data.endswith(PIECE * PIECES)
        await until(lambda: child.done, "the proxy's exit", EXIT_TIMEOUT)
        assert_stopped_cleanly(child.code, child.signal, child.output)
    finally:
        await child.stop()
    assert events(log) == [
        "configure events_file,repeat,stamp stamp=ab",
        "running v1",
        "response /fast",
        "response /slow",
        "done v1",
    ], child.output


@pytest_twisted.ensureDeferred
async def test_reload(tmp_path: Path, trickling: int) -> None:  # noqa: F811
    """
    Editing the addon file while twistd runs reloads it: the old addon's
    done, the new one's configure and running, its hooks from the next
    request on, with the ``--set`` values kept; a broken edit keeps the
    last good addon and logs one line.
    """
    addon = write_addon(tmp_path, "v1")
    log = tmp_path / "events.txt"
    child, port = await start_twistd(
        tmp_path, "--addon", str(addon), "--set", f"events_file={log}", "--set", "stamp=s")
    try:
        await until(lambda: "running v1" in events(log), "running")
        addon.write_text(ADDON.format(version="v2"))
        bump(addon)
        await until(lambda: "running v2" in events(log), "the reload")
        client = await connect(port)
        get(client, trickling, "/fast")
        await until(lambda: client.data.endswith(b"ok"), "the response")
        assert b"X-Stamp: v2:s" in client.data
        addon.write_text("def broken(:\n")
        bump(addon)
        await output_contains(child, "not reloaded, its old addons stay", timeout=10)
        again = await connect(port)
        get(again, trickling, "/fast")
        await until(lambda: again.data.endswith(b"ok"), "the response after the broken edit")
        assert b"X-Stamp: v2:s" in again.data
    finally:
        await child.stop()
    assert events(log)[:5] == [
        "configure events_file,repeat,stamp stamp=s",
        "running v1",
        "configure events_file,repeat,stamp stamp=s",
        "done v1",
        "running v2",
    ], child.output
    lines = [line for line in child.output.splitlines() if "not reloaded" in line]
    assert len(lines) == 1 and "recorder.py:1: syntax error" in lines[0], child.output
    assert "Traceback" not in child.output


def bump(path: Path) -> None:
    """Move *path*'s modification time on by a second, so that a quick edit shows."""
    status = path.stat()
    os.utime(path, ns=(status.st_atime_ns, status.st_mtime_ns + 10**9))
