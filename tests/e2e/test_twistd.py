"""
``twistd twistproxy`` end to end: the plugin run as a child process, with a
client (curl) and an origin on 127.0.0.1.

Every child is bounded in time and killed in a ``finally``; the reactor is
never blocked (processes are spawned with ``reactor.spawnProcess``).
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import stat
import sys
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import TCP4ClientEndpoint
from twisted.internet.error import ConnectError, ProcessDone
from twisted.internet.protocol import Factory, ProcessProtocol, Protocol
from twisted.internet.task import deferLater
from twisted.python.failure import Failure

from tests.e2e.origin import OriginFactory
from twistproxy.connection import Client, Server
from twistproxy.flowfile import dump_flows
from twistproxy.http import HTTPFlow, Request, Response
from twistproxy.options import Options

pytestmark = pytest.mark.e2e

REPO = Path(__file__).resolve().parents[2]
CURL = shutil.which("curl")
needs_curl = pytest.mark.skipif(CURL is None, reason="curl is not installed")

START_TIMEOUT = 15.0  # seconds for twistd to accept connections
RUN_TIMEOUT = 20.0  # seconds for a short-lived child to exit
HINT = "Run 'twistd twistproxy --help' for the options."


def twistd_command() -> list[str]:
    """
    The command that runs twistd with this interpreter: the ``twistd``
    script beside it, or the same entry point through ``-c``.
    """
    script = Path(sys.executable).parent / "twistd"
    if script.is_file():
        return [sys.executable, str(script)]
    return [sys.executable, "-c", "from twisted.scripts.twistd import run; run()"]


def free_port() -> int:
    """
    A port on 127.0.0.1 that was free a moment ago (bound, then closed).
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


class Child(ProcessProtocol):
    """
    A child process: collects its output and fires :attr:`ended` with its
    exit code.
    """

    def __init__(self) -> None:
        self.out = b""
        self.err = b""
        self.ended: Deferred[int | None] = Deferred()
        self.code: int | None = None
        self.signal: int | None = None
        self.done = False

    def outReceived(self, data: bytes) -> None:
        self.out += data

    def errReceived(self, data: bytes) -> None:
        self.err += data

    def processEnded(self, reason: Failure) -> None:
        self.done = True
        self.code = 0 if reason.check(ProcessDone) else getattr(reason.value, "exitCode", None)
        self.signal = getattr(reason.value, "signal", None)  # what ended it, if a signal did
        self.ended.callback(self.code)

    @property
    def output(self) -> str:
        """Everything the child wrote, stdout then stderr."""
        return (self.out + self.err).decode("utf-8", "replace")

    async def wait(self, timeout: float) -> int | None:
        """
        Wait at most *timeout* seconds for the child to exit.

        :returns: Its exit code.
        :raises AssertionError: if it is still running.
        """
        for _ in range(int(timeout * 10)):
            if self.done:
                return self.code
            await sleep(0.1)
        raise AssertionError(f"the child did not exit in {timeout} s:\n{self.output}")

    async def stop(self) -> None:
        """
        End the child: SIGTERM, then SIGKILL if it lingers; bounded.
        """
        for sig, grace in ((signal.SIGTERM, 5.0), (signal.SIGKILL, 5.0)):
            if self.done:
                return
            try:
                self.transport.signalProcess(sig)  # type: ignore[union-attr]
            except Exception:
                return  # already gone
            for _ in range(int(grace * 10)):
                if self.done:
                    return
                await sleep(0.1)


def sleep(seconds: float) -> Deferred[None]:
    """A Deferred that fires after *seconds*, without blocking the reactor."""
    return deferLater(reactor, seconds, lambda: None)


def spawn(args: Sequence[str], cwd: Path) -> Child:
    """
    Start *args* in *cwd*, with the repository on ``PYTHONPATH``.
    """
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(
        p for p in (str(REPO), env.get("PYTHONPATH", "")) if p
    )
    env["PYTHONUNBUFFERED"] = "1"
    env["HOME"] = str(cwd)  # the default --ca-dir (~/.twistproxy) lands in the test's directory
    child = Child()
    reactor.spawnProcess(child, args[0], list(args), env=env, path=str(cwd))
    return child


async def run(args: Sequence[str], cwd: Path) -> tuple[int | None, str]:
    """
    Run a short-lived child to its end (bounded).

    :returns: Its exit code and everything it wrote.
    """
    child = spawn(args, cwd)
    try:
        code = await child.wait(RUN_TIMEOUT)
    finally:
        await child.stop()
    return code, child.output


async def accepting(port: int, child: Child) -> None:
    """
    Wait (at most ``START_TIMEOUT``) until 127.0.0.1:*port* accepts a
    connection; fail at once if *child* exits meanwhile.
    """
    endpoint = TCP4ClientEndpoint(reactor, "127.0.0.1", port, timeout=1)
    for _ in range(int(START_TIMEOUT * 10)):
        if child.done:
            raise AssertionError(f"twistd exited with {child.code}:\n{child.output}")
        try:
            connected: Any = await endpoint.connect(Factory.forProtocol(Protocol))
        except ConnectError:
            await sleep(0.1)
            continue
        connected.transport.loseConnection()
        return
    raise AssertionError(f"twistd did not listen on {port}:\n{child.output}")


async def output_contains(child: Child, text: str, timeout: float = 5.0) -> None:
    """
    Wait (bounded) until *child*'s output contains *text*.
    """
    for _ in range(int(timeout * 10)):
        if text in child.output:
            return
        await sleep(0.1)
    raise AssertionError(f"{text!r} not in the output:\n{child.output}")


async def curl(*args: str, cwd: Path) -> tuple[int | None, str]:
    """
    Run curl with *args* (bounded by ``--max-time``).

    :returns: Its exit code and everything it wrote.
    """
    assert CURL is not None
    return await run([CURL, "--silent", "--show-error", "--max-time", "10", *args], cwd)


@pytest_twisted.async_yield_fixture
async def origin_port() -> AsyncIterator[int]:
    """An origin on 127.0.0.1; yields its port."""
    port: Any = reactor.listenTCP(0, OriginFactory(), interface="127.0.0.1")
    yield port.getHost().port
    await port.stopListening()


async def start_twistd(cwd: Path, *options: str) -> tuple[Child, int]:
    """
    Start ``twistd -n twistproxy`` on a free port with *options* and wait
    until it accepts connections.  The caller stops the child.
    """
    port = free_port()
    args = [*twistd_command(), "-n", "--pidfile=", "twistproxy", "--port", str(port), *options]
    return await spawn_listening(args, cwd, port), port


async def spawn_listening(args: Sequence[str], cwd: Path, port: int) -> Child:
    """
    :func:`spawn` *args* and wait until it accepts connections on *port*;
    stopped again if it does not.  The caller stops the child.
    """
    child = spawn(args, cwd)
    try:
        await accepting(port, child)
    except BaseException:
        await child.stop()
        raise
    return child


def assert_usage_error(code: int | None, output: str, *expected: str) -> None:
    """
    twistd refused its options: non-zero exit, no traceback, the short hint,
    and one line holding every one of *expected*.
    """
    assert code not in (0, None), output
    assert "Traceback" not in output, output
    assert HINT in output, output
    assert any(all(text in line for text in expected) for line in output.splitlines()), output


# -- a running proxy ----------------------------------------------------------


@needs_curl
@pytest_twisted.ensureDeferred
async def test_proxies_and_logs_one_line(tmp_path: Path, origin_port: int) -> None:
    """
    ``twistd -n twistproxy`` proxies curl's request to the origin and logs
    exactly one flow line for it.
    """
    child, port = await start_twistd(tmp_path)
    try:
        url = f"http://127.0.0.1:{origin_port}/echo"
        code, body = await curl("-x", f"http://127.0.0.1:{port}", url, cwd=tmp_path)
        assert code == 0, body
        assert '"target": "/echo"' in body
        line = f"GET {url} -> 200"
        await output_contains(child, line)
        flow_lines = [text for text in child.output.splitlines() if " -> " in text]
        assert len(flow_lines) == 1, child.output
        assert line in flow_lines[0]
        assert f"listening on 127.0.0.1:{port}" in child.output
    finally:
        await child.stop()
    assert child.done


@needs_curl
@pytest_twisted.ensureDeferred
async def test_addon_file(tmp_path: Path, origin_port: int) -> None:
    """
    An addon file given with ``--addon`` runs: its ``response`` hook's
    header reaches curl, and the flow is still logged.
    """
    addon = tmp_path / "header.py"
    addon.write_text(
        "class Stamp:\n"
        "    def response(self, flow):\n"
        "        flow.response.headers['X-Stamped-By'] = 'twistd-test'\n"
        "\n"
        "addons = [Stamp()]\n"
    )
    child, port = await start_twistd(tmp_path, "--addon", str(addon))
    try:
        code, output = await curl(
            "--include",
            "-x",
            f"http://127.0.0.1:{port}",
            f"http://127.0.0.1:{origin_port}/echo",
            cwd=tmp_path,
        )
        assert code == 0, output
        assert "x-stamped-by: twistd-test" in output.lower()
        await output_contains(child, f"GET http://127.0.0.1:{origin_port}/echo -> 200")
    finally:
        await child.stop()


# -- refusals -----------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_bad_port(tmp_path: Path) -> None:
    """
    An unusable ``--port`` ends twistd with the short hint and one line
    naming the option, not a traceback.
    """
    code, output = await run(
        [*twistd_command(), "-n", "--pidfile=", "twistproxy", "--port", "nonsense"], tmp_path
    )
    assert_usage_error(code, output, "--port nonsense")


@pytest_twisted.ensureDeferred
async def test_bad_hook_timeout(tmp_path: Path) -> None:
    """
    A ``--hook-timeout`` that is not a positive number of seconds ends
    twistd with the short hint and one line naming the option, not a
    traceback.
    """
    code, output = await run(
        [*twistd_command(), "-n", "--pidfile=", "twistproxy", "--hook-timeout", "0"], tmp_path
    )
    assert_usage_error(code, output, "--hook-timeout 0", "not a positive number of seconds")


@pytest_twisted.ensureDeferred
async def test_broken_addon(tmp_path: Path) -> None:
    """
    An addon file with a syntax error ends twistd with the short hint and
    one line naming the file, not a traceback.
    """
    (tmp_path / "broken.py").write_text("def broken(:\n")
    code, output = await run(
        [*twistd_command(), "-n", "--pidfile=", "twistproxy", "--addon", "broken.py"],
        tmp_path,
    )
    assert_usage_error(code, output, "broken.py", "syntax error")


@pytest_twisted.ensureDeferred
async def test_unwritable_recording(tmp_path: Path) -> None:
    """
    A ``--server-replay`` file holding a response that could not be
    written as it stands (a reason phrase with CR LF in it) ends twistd at
    start with the short hint and one line naming the file, the line and
    the field, not a traceback.
    """
    flows = []
    for reason in ("OK", "OK\r\nSet-Cookie: a=b"):
        flow = HTTPFlow(Client(), Server(address=("127.0.0.1", 9)), now=lambda: 1.0)
        flow.request = Request.make("GET", "http://127.0.0.1:9/")
        flow.response = Response.make(200, b"recorded")
        flow.response.reason = reason
        flows.append(flow)
    with open(tmp_path / "bad.jsonl", "wb") as out:
        dump_flows(flows, out)
    code, output = await run(
        [*twistd_command(), "-n", "--pidfile=", "twistproxy", "--port", str(free_port()),
         "--server-replay", "bad.jsonl"],
        tmp_path,
    )
    assert_usage_error(
        code,
        output,
        "--server-replay bad.jsonl: line 2: invalid response reason: "
        "'OK\\r\\nSet-Cookie: a=b' holds a CR, LF or control",
    )


@pytest_twisted.ensureDeferred
async def test_port_taken(tmp_path: Path) -> None:
    """
    A port that is taken ends twistd with one line saying so, not a
    traceback.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        code, output = await run(
            [*twistd_command(), "-n", "--pidfile=", "twistproxy", "--port", str(port)],
            tmp_path,
        )
    assert code not in (0, None), output
    assert "Traceback" not in output, output
    assert f"cannot listen on tcp:{port}:interface=127.0.0.1" in output, output


@pytest_twisted.ensureDeferred
async def test_help_lists_every_option(tmp_path: Path) -> None:
    """
    ``twistd twistproxy --help`` succeeds and lists every option.
    """
    code, output = await run([*twistd_command(), "twistproxy", "--help"], tmp_path)
    assert code == 0, output
    options = [name.rstrip("=") for name in Options().longOpt]
    assert {"port", "addon", "body-limit", "timeout", "connect-timeout", "quiet", "ca-dir", "ca",
            "ignore-hosts", "upstream-ca", "insecure", "no-intercept"} <= set(options)
    for name in options:
        assert f"--{name}" in output, (name, output)



# -- HTTPS --------------------------------------------------------------------


def _ca_files(home: Path) -> dict[str, Path]:
    directory = home / ".twistproxy"
    return {
        "directory": directory,
        "key": directory / "twistproxy-ca.pem",
        "pem": directory / "twistproxy-ca-cert.pem",
        "der": directory / "twistproxy-ca-cert.cer",
    }


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@needs_curl
@pytest_twisted.ensureDeferred
async def test_https_with_the_default_ca(tmp_path: Path, pki: Any,
                                         start_tls_origin: Any) -> None:
    """
    On its first start twistd makes a CA in ``~/.twistproxy`` (the
    directory 0700, the key file 0600) and logs where; through the proxy,
    ``http://twistproxy/cert/pem`` is that CA's certificate, and curl
    trusting only that certificate reaches an HTTPS origin the proxy
    verifies with ``--upstream-ca``.  A second start reuses the same CA.
    """
    from cryptography import x509

    origin = start_tls_origin(pki.good)
    files = _ca_files(tmp_path)
    upstream = ("--upstream-ca", str(pki.origin_ca_pem))
    child, port = await start_twistd(tmp_path, *upstream)
    try:
        assert _mode(files["directory"]) == 0o700
        assert _mode(files["key"]) == 0o600
        assert files["der"].is_file()
        pem = files["pem"].read_bytes()
        der_cert = x509.load_der_x509_certificate(files["der"].read_bytes())
        assert der_cert == x509.load_pem_x509_certificate(pem)
        await output_contains(child, f"created a CA for intercepting HTTPS in {files['directory']}")
        proxy = f"http://127.0.0.1:{port}"
        code, served = await curl("-x", proxy, "http://twistproxy/cert/pem", cwd=tmp_path)
        assert code == 0, served
        assert served.encode() == pem
        url = f"https://127.0.0.1:{origin.port}/echo?through=twistd"
        code, body = await curl("--cacert", str(files["pem"]), "-x", proxy, url, cwd=tmp_path)
        assert code == 0, body
        assert '"target": "/echo?through=twistd"' in body
        await output_contains(child, f"GET {url} -> 200")
    finally:
        await child.stop()

    child, port = await start_twistd(tmp_path, *upstream)
    try:
        proxy = f"http://127.0.0.1:{port}"
        code, served = await curl("-x", proxy, "http://twistproxy/cert/pem", cwd=tmp_path)
        assert code == 0, served
        assert served.encode() == pem
        assert files["pem"].read_bytes() == pem
        code, body = await curl("--cacert", str(files["pem"]), "-x", proxy,
                                f"https://127.0.0.1:{origin.port}/echo", cwd=tmp_path)
        assert code == 0, body
        assert "created a CA" not in child.output
    finally:
        await child.stop()


@pytest_twisted.ensureDeferred
async def test_malformed_ca_file(tmp_path: Path) -> None:
    """
    A ``--ca`` file that is not a CA in PEM ends twistd with one line naming
    the file and the reason, not a traceback, and no CA is made in the home
    directory instead.
    """
    (tmp_path / "broken-ca.pem").write_text("-----BEGIN CERTIFICATE-----\nnot base64\n")
    code, output = await run(
        [*twistd_command(), "-n", "--pidfile=", "twistproxy", "--port", str(free_port()),
         "--ca", "broken-ca.pem"],
        tmp_path,
    )
    assert code not in (0, None), output
    assert "Traceback" not in output, output
    lines = [line for line in output.splitlines() if "broken-ca.pem" in line]
    assert len(lines) == 1, output
    assert "malformed PEM" in lines[0], output
    assert not (tmp_path / ".twistproxy").exists()


@pytest_twisted.ensureDeferred
async def test_ignore_hosts_not_a_regex(tmp_path: Path) -> None:
    """
    ``--ignore-hosts`` with something that is not a regular expression is
    a usage error naming the option.
    """
    code, output = await run(
        [*twistd_command(), "-n", "--pidfile=", "twistproxy", "--ignore-hosts", "("],
        tmp_path,
    )
    assert_usage_error(code, output, "--ignore-hosts", "not a regular expression")
