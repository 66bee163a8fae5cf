#!/usr/bin/env python3
"""
twistproxy's performance benchmark: one command, ``python bench/run.py``.

Starts an nginx origin (HTTP and HTTPS) on 127.0.0.1, then runs the scenarios
of bench/README.md for each proxy (twistproxy, proxy.py, mitmproxy's
mitmdump, the stock ``twisted.web.proxy``) with the proxy pinned to core 0 and
nginx, wrk, curl, socat and the idle clients pinned to core 1.  In the wrk
scenarios the proxies run side by side: all started at once, then round after
round one measured run per proxy in turn (the order reversed every other
round), so that the machine's drift in speed hits them alike; the notes give
the paired ratio twistproxy/peer per round.  Prints a table of the median of
the runs of each figure with the ratio twistproxy/peer, and writes it to
bench/RESULTS.md (a full run) or bench/out/RESULTS-*.md (--quick or --only)
with the date, the machine, the versions and the commands run.

Every process it starts runs in its own process group and is killed when the
run ends, however it ends.  Only 127.0.0.1 is used; every load is bounded in
time.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import http.client
import json
import math
import os
import platform
import re
import resource
import select
import shlex
import shutil
import signal
import socket
import ssl
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
OUT = BENCH / "out"
LOGS = OUT / "logs"
VENV = BENCH / ".venv"  # mitmproxy's
PROXYPY_VENV = BENCH / ".venv-proxypy"
PROXYPY_REQUIREMENT = "proxy.py==2.4.10"  # the version the targets name
RESULTS = BENCH / "RESULTS.md"
ANALYSIS = BENCH / "ANALYSIS.md"  # written by hand; copied into RESULTS.md

PROXY_CORE = "0"
LOAD_CORE = "1"
SMALL = "1k.bin"
MEDIUM = "64k.bin"
BIG = "512m.bin"
BIG_SIZE = 512 * 1024 * 1024

TOOLS = {
    # command: Debian package that provides it
    "wrk": "wrk",
    "nginx": "nginx",
    "socat": "socat",
    "curl": "curl",
    "taskset": "util-linux",
}


# -- settings -------------------------------------------------------------------


@dataclass(frozen=True)
class Settings:
    """How long and how often: the full run, or --quick."""

    runs: int  # measured runs per figure (the median is reported)
    duration: int  # seconds per wrk run
    warmup: int  # seconds of the discarded warm-up wrk run
    connections: int  # wrk connections
    slow_seconds: int  # (d): how long the slow reader reads
    slow_rate: str  # (d): curl --limit-rate
    idle: int  # (g): idle keep-alive connections
    download_seconds: int  # (c): curl --max-time; a download cut there is not repeated
    echo_connections: int = 10  # (w): WebSocket connections, each echoing in turn
    echo_size: int = 100  # (w): bytes per message


FULL = Settings(runs=3, duration=6, warmup=2, connections=50, slow_seconds=10,
                slow_rate="2M", idle=1000, download_seconds=60)
QUICK = Settings(runs=1, duration=2, warmup=1, connections=50, slow_seconds=3,
                 slow_rate="2M", idle=200, download_seconds=30)


# -- figures --------------------------------------------------------------------


@dataclass(frozen=True)
class Figure:
    key: str
    label: str
    unit: str
    better: str  # "higher" or "lower"
    digits: int = 0


@dataclass(frozen=True)
class Scenario:
    key: str
    title: str
    figures: tuple[Figure, ...]


def _rps(key: str) -> Figure:
    return Figure(key, "requests/s", "req/s", "higher")


def _p99(key: str) -> Figure:
    return Figure(key, "p99 latency", "ms", "lower", 2)


# The proxy's CPU time (user and system, all its processes) per request: what
# the proxy spends on a request whatever the machine's speed that minute.
_CPU_US = Figure("cpu_us", "proxy CPU per request", "µs", "lower", 0)


SCENARIOS: dict[str, Scenario] = {s.key: s for s in [
    Scenario("a", "a. HTTP keep-alive, 1 KiB, 50 conns", (_rps("rps"), _p99("p99"), _CPU_US)),
    Scenario("a64", "a′. HTTP keep-alive, 64 KiB, 50 conns", (_rps("rps"), _p99("p99"), _CPU_US)),
    Scenario("a10", "(a) with 10 conns", (_rps("rps"), _p99("p99"), _CPU_US)),
    Scenario("a200", "(a) with 200 conns", (_rps("rps"), _p99("p99"), _CPU_US)),
    Scenario("b", "b. HTTP `Connection: close`, 1 KiB, 50 conns",
             (_rps("rps"), _p99("p99"), _CPU_US)),
    Scenario("c", "c. 512 MiB download", (
        Figure("mbps", "throughput", "MB/s", "higher", 0),
        Figure("peak", "proxy peak RSS", "MiB", "lower", 1),
    )),
    Scenario("d", "d. slow reader (2 MiB/s, 10 s) of the 512 MiB download", (
        Figure("growth", "proxy RSS growth", "MiB", "lower", 1),
    )),
    Scenario("e", "e. HTTPS intercepted, keep-alive, 1 KiB, 50 conns",
             (_rps("rps"), _p99("p99"), _CPU_US)),
    Scenario("f", "f. HTTPS intercepted, `Connection: close` (handshakes/s)", (
        Figure("rps", "TLS handshakes/s", "req/s", "higher"), _p99("p99"),
        Figure("per_cpu", "handshakes per proxy CPU-second", "1/CPU-s", "higher"), _CPU_US)),
    Scenario("g", "g. (a) with 1,000 idle keep-alive conns held open", (
        _rps("rps"),
        Figure("rss", "proxy RSS (max)", "MiB", "lower", 1), _CPU_US,
    )),
    Scenario("w", "w. WebSocket echo, 100-byte messages, 10 conns", (
        Figure("msgs", "echoed messages/s", "msg/s", "higher"), _p99("p99"))),
    Scenario("a-addon", "(a) with one trivial addon", (_rps("rps"), _p99("p99"), _CPU_US)),
    Scenario("e-addon", "(e) with one trivial addon", (_rps("rps"), _p99("p99"), _CPU_US)),
    Scenario("a-workers", "(a) with `--workers 2`, unpinned", (_rps("rps"), _p99("p99"), _CPU_US)),
    Scenario("e-workers", "(e) with `--workers 2`, unpinned", (_rps("rps"), _p99("p99"), _CPU_US)),
]}


@dataclass(frozen=True)
class WrkSetup:
    """How a wrk scenario loads the proxies."""

    https: bool  # through each proxy's CONNECT shim
    close: bool  # `Connection: close`
    addon: bool = False
    workers: int | None = None  # twistproxy's --workers, unpinned
    idle: bool = False  # (g): idle keep-alive connections held during each run
    path: str = SMALL  # what each request fetches
    connections: int | None = None  # wrk connections, if not the settings'


WRK_SCENARIOS: dict[str, WrkSetup] = {
    "a": WrkSetup(https=False, close=False),
    "a64": WrkSetup(https=False, close=False, path=MEDIUM),
    "a10": WrkSetup(https=False, close=False, connections=10),
    "a200": WrkSetup(https=False, close=False, connections=200),
    "b": WrkSetup(https=False, close=True),
    "e": WrkSetup(https=True, close=False),
    "f": WrkSetup(https=True, close=True),
    "g": WrkSetup(https=False, close=False, idle=True),
    "a-addon": WrkSetup(https=False, close=False, addon=True),
    "e-addon": WrkSetup(https=True, close=False, addon=True),
    "a-workers": WrkSetup(https=False, close=False, workers=2),
    "e-workers": WrkSetup(https=True, close=False, workers=2),
}


@dataclass
class Cell:
    """One proxy's figures in one scenario: runs per figure, or why there are none."""

    runs: dict[str, list[float]] = field(default_factory=dict)
    na: str | None = None
    mark: str | None = None  # shown after each of its figures in the table
    notes: list[str] = field(default_factory=list)
    details: list[dict[str, Any]] = field(default_factory=list)

    def median(self, key: str) -> float | None:
        values = self.runs.get(key)
        return statistics.median(values) if values else None


# -- processes ------------------------------------------------------------------


class Commands:
    """The distinct command lines run, in the order they were first run."""

    def __init__(self) -> None:
        self.lines: dict[str, None] = {}

    def add(self, argv: list[str]) -> None:
        line = shlex.join(_show(a) for a in argv)
        self.lines.setdefault(line, None)


def _show(arg: str) -> str:
    """An argument with the repository's path made relative, for RESULTS.md."""
    return arg.replace(str(REPO) + "/", "")


COMMANDS = Commands()
CHILDREN: list[Child] = []
OURS: set[int] = {os.getpgid(0)}  # process groups this harness started (and its own)


def _preexec() -> None:
    """Raise the soft descriptor limit to the hard one."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and (hard == resource.RLIM_INFINITY or soft < hard):
        wanted = 65536 if hard == resource.RLIM_INFINITY else hard
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))


class Child:
    """A background process in its own process group, killed by :meth:`stop`."""

    def __init__(self, argv: list[str], log: Path, *, stdin: Any = subprocess.DEVNULL,
                 stdout_pipe: bool = False, env: dict[str, str] | None = None) -> None:
        COMMANDS.add(argv)
        self.argv = argv
        self.log = log
        log.parent.mkdir(parents=True, exist_ok=True)
        self._log_file = open(log, "ab")
        self.proc = subprocess.Popen(
            argv, stdin=stdin,
            stdout=subprocess.PIPE if stdout_pipe else self._log_file,
            stderr=self._log_file, start_new_session=True,
            cwd=REPO, env=env,
        )
        CHILDREN.append(self)
        OURS.add(self.proc.pid)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc.poll() is None

    def stop(self, grace: float = 5.0) -> None:
        if self in CHILDREN:
            CHILDREN.remove(self)
        pgid = self.proc.pid
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pgid, signal.SIGTERM)
        try:
            self.proc.wait(grace)
        except subprocess.TimeoutExpired:
            pass
        # The group may hold more than the leader (socat's forks, nginx's worker).
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pgid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(grace)
        self._log_file.close()

    def tail(self, lines: int = 15) -> str:
        try:
            text = self.log.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])


def stop_all() -> None:
    for child in list(reversed(CHILDREN)):
        child.stop(grace=3.0)


def run(argv: list[str], *, timeout: float, check: bool = False,
        record: bool = True) -> subprocess.CompletedProcess[str]:
    """Run *argv* to its end (in its own process group, killed on timeout)."""
    if record:
        COMMANDS.add(argv)
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True, cwd=REPO)
    OURS.add(proc.pid)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        raise RuntimeError(f"timed out after {timeout:.0f} s: {shlex.join(argv)}") from None
    except BaseException:  # interrupted: leave nothing behind
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        raise
    result = subprocess.CompletedProcess(argv, proc.returncode, out, err)
    if check and proc.returncode != 0:
        raise RuntimeError(f"{shlex.join(argv)} exited {proc.returncode}: {err.strip()[-500:]}")
    return result


def pinned(core: str | None, argv: list[str]) -> list[str]:
    """*argv* run on *core*, or on every core when *core* is None (the harness itself
    is pinned to the load core, and its children would inherit that)."""
    if core is None:
        core = f"0-{(os.cpu_count() or 1) - 1}"
    return ["taskset", "-c", core, *argv]


def free_ports(count: int) -> list[int]:
    sockets = []
    try:
        for _ in range(count):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            sockets.append(s)
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def wait_listening(port: int, child: Child, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not child.alive():
            raise RuntimeError(f"{child.argv[0]} exited ({child.proc.returncode}):\n"
                               f"{child.tail()}")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.5):
            return
        time.sleep(0.1)
    raise RuntimeError(f"nothing listens on {port} after {timeout:.0f} s:\n{child.tail()}")


# -- /proc ----------------------------------------------------------------------

_TICK = os.sysconf("SC_CLK_TCK")


def _tree(pid: int) -> list[int]:
    """*pid* and its descendants."""
    parents: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        parents.setdefault(ppid, []).append(int(entry))
    found, todo = [], [pid]
    while todo:
        current = todo.pop()
        found.append(current)
        todo.extend(parents.get(current, []))
    return found


class ProcWatch:
    """RSS and CPU time of a process (and, with *tree*, its descendants)."""

    def __init__(self, pid: int, tree: bool = False) -> None:
        self.pid = pid
        self.tree = tree

    def pids(self) -> list[int]:
        return _tree(self.pid) if self.tree else [self.pid]

    def _status(self, name: str) -> float:
        total = 0
        for pid in self.pids():
            try:
                text = Path(f"/proc/{pid}/status").read_text()
            except OSError:
                continue
            match = re.search(rf"^{name}:\s+(\d+) kB", text, re.MULTILINE)
            if match:
                total += int(match.group(1))
        return total / 1024

    def rss(self) -> float:
        """Resident memory now, MiB."""
        return self._status("VmRSS")

    def hwm(self) -> float:
        """Peak resident memory, MiB."""
        return self._status("VmHWM")

    def memory_note(self) -> str:
        """For a proxy of several processes: its RSS per process and the sum of their
        PSS (which counts the pages they share once, where the RSS sum counts them
        in every process)."""
        rss, pss = [], 0.0
        for pid in self.pids():
            with contextlib.suppress(OSError):
                rss.append(f"{ProcWatch(pid).rss():.1f}")
                match = re.search(r"^Pss:\s+(\d+) kB",
                                  Path(f"/proc/{pid}/smaps_rollup").read_text(), re.MULTILINE)
                pss += int(match.group(1)) / 1024 if match else 0.0
        return (f"proxy RSS before the runs, per process: {' + '.join(rss)} MiB "
                f"(the RSS figures are that sum; the PSS sum, pages shared after the fork "
                f"counted once: {pss:.1f} MiB)")

    def cpu(self) -> float:
        """CPU seconds used so far (user + system)."""
        return sum(self.cpu_by_pid().values())

    def cpu_by_pid(self) -> dict[int, float]:
        """CPU seconds used so far, per process."""
        found = {}
        for pid in self.pids():
            try:
                fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            found[pid] = (int(fields[11]) + int(fields[12])) / _TICK
        return found


def _cpu_times() -> dict[str, tuple[int, int]]:
    """Per core: (total, idle) jiffies from /proc/stat."""
    times = {}
    with contextlib.suppress(OSError):
        for line in Path("/proc/stat").read_text().splitlines():
            name, *fields = line.split()
            if name.startswith("cpu") and name[3:].isdigit():
                values = [int(v) for v in fields]
                times[name[3:]] = (sum(values), values[3] + values[4])
    return times


def core_busy(before: dict[str, tuple[int, int]], core: str) -> float:
    """Percent of the time *core* was busy since *before*."""
    after = _cpu_times()
    if core not in before or core not in after:
        return float("nan")
    total = after[core][0] - before[core][0]
    idle = after[core][1] - before[core][1]
    return 100.0 * (total - idle) / total if total else float("nan")


def _all_cpu() -> dict[int, tuple[int, int]]:
    """Every user process: pid -> (process group, CPU ticks so far)."""
    found = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            fields = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        pgid = int(fields[2])
        if pgid:  # kernel threads (pgid 0) carry our own softirq work too: not counted
            found[int(entry)] = (pgid, int(fields[11]) + int(fields[12]))
    return found


class Foreign:
    """CPU used by processes this harness did not start, as % of one core."""

    def __init__(self) -> None:
        self.before = _all_cpu()
        self.t0 = time.monotonic()

    def percent(self) -> float:
        after = _all_cpu()
        ticks = 0
        for pid, (pgid, used) in after.items():
            if pgid in OURS or pid == os.getpid():
                continue
            ticks += used - self.before.get(pid, (pgid, 0))[1]
        elapsed = time.monotonic() - self.t0
        return 100.0 * ticks / _TICK / elapsed if elapsed > 0 else 0.0


def busy_others(seconds: float = 2.0) -> list[str]:
    """The processes other than ours that used CPU over *seconds*, busiest first."""
    before = _all_cpu()
    time.sleep(seconds)
    after = _all_cpu()
    busy = []
    for pid, (pgid, used) in after.items():
        if pgid in OURS or pid == os.getpid():
            continue
        percent = 100.0 * (used - before.get(pid, (pgid, 0))[1]) / _TICK / seconds
        if percent >= 5:
            try:
                args = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ")
            except OSError:
                args = b"?"
            busy.append((percent, f"pid {pid} {percent:.0f}%: "
                                  f"{args.decode(errors='replace').strip()[:100]}"))
    return [text for _, text in sorted(busy, reverse=True)]


def wait_quiet(budget: list[float], threshold: float = 10.0) -> float:
    """
    Wait (taking from *budget*, seconds) until processes other than ours use
    less than *threshold* % of a core over a second; returns the last figure.
    """
    while True:
        sample = Foreign()
        time.sleep(0.5)
        busy = sample.percent()
        budget[0] -= 0.5
        if busy < threshold or budget[0] <= 0:
            return busy
        print(f"  other processes use {busy:.0f}% of a core; waiting for a quiet machine "
              f"({budget[0]:.0f} s of waiting left)", flush=True)


@contextlib.contextmanager
def sampling(watch: ProcWatch, interval: float = 0.05) -> Iterator[dict[str, float]]:
    """Sample RSS in a thread while the block runs; yields {'max': MiB, 'before': MiB}."""
    result = {"before": watch.rss(), "max": 0.0}
    result["max"] = result["before"]
    done = threading.Event()

    def loop() -> None:
        while not done.wait(interval):
            result["max"] = max(result["max"], watch.rss())

    thread = threading.Thread(target=loop, daemon=True)
    thread.start()
    try:
        yield result
    finally:
        done.set()
        thread.join()
        result["max"] = max(result["max"], watch.rss())


# -- the origin -----------------------------------------------------------------


def _valid_for_a_day(cert_pem: Path) -> bool:
    """Whether the certificate in *cert_pem* exists and is valid for one more day."""
    from cryptography import x509

    if not cert_pem.exists():
        return False
    cert = x509.load_pem_x509_certificate(cert_pem.read_bytes())
    return cert.not_valid_after_utc > datetime.datetime.now(datetime.UTC) + datetime.timedelta(
        days=1)


def _write_key(key: Any, path: Path) -> None:
    from cryptography.hazmat.primitives import serialization

    path.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                       serialization.PrivateFormat.PKCS8,
                                       serialization.NoEncryption()))
    path.chmod(0o600)


def make_ca(common_name: str, cert_pem: Path, key_pem: Path) -> tuple[Any, Any]:
    """
    A new self-signed CA (EC P-256, one year), written to *cert_pem* and
    *key_pem*; returns (certificate, private key) as ``cryptography`` objects.
    """
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name).issuer_name(ca_name).public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=365))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(x509.KeyUsage(True, False, False, False, False, True, True, False,
                                     False), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), False)
        .sign(ca_key, hashes.SHA256())
    )
    cert_pem.parent.mkdir(parents=True, exist_ok=True)
    cert_pem.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    _write_key(ca_key, key_pem)
    return ca, ca_key


def make_origin_pki(directory: Path) -> tuple[Path, Path, Path]:
    """A CA and a certificate for 127.0.0.1/localhost; returns (ca, cert, key) paths."""
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    ca_pem, cert_pem, key_pem = (directory / n for n in
                                 ("origin-ca.pem", "origin-cert.pem", "origin-key.pem"))
    if ca_pem.exists() and key_pem.exists() and _valid_for_a_day(cert_pem):
        return ca_pem, cert_pem, key_pem
    now = datetime.datetime.now(datetime.UTC)
    ca, ca_key = make_ca("twistproxy bench origin CA", ca_pem, directory / "origin-ca-key.pem")
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")]))
        .issuer_name(ca.subject).public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=300))
        .add_extension(x509.SubjectAlternativeName([
            x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
                       False)
        .sign(ca_key, hashes.SHA256())
    )
    cert_pem.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    _write_key(key, key_pem)
    return ca_pem, cert_pem, key_pem


NGINX_CONF = """\
{user}worker_processes 1;
worker_rlimit_nofile 65536;
pid {out}/nginx/nginx.pid;
error_log {out}/nginx/error.log warn;
events {{
    worker_connections 16384;
}}
http {{
    access_log off;
    sendfile on;
    tcp_nopush on;
    tcp_nodelay on;
    keepalive_requests 10000000;
    keepalive_timeout 300s;
    default_type application/octet-stream;
    client_body_temp_path {out}/nginx/client_body;
    proxy_temp_path {out}/nginx/proxy;
    fastcgi_temp_path {out}/nginx/fastcgi;
    uwsgi_temp_path {out}/nginx/uwsgi;
    scgi_temp_path {out}/nginx/scgi;
    server {{
        listen 127.0.0.1:{http_port};
        root {out}/www;
    }}
    server {{
        listen 127.0.0.1:{https_port} ssl;
        ssl_certificate {cert};
        ssl_certificate_key {key};
        root {out}/www;
    }}
}}
"""


def start_origin(http_port: int, https_port: int, cert: Path, key: Path) -> Child:
    www = OUT / "www"
    www.mkdir(parents=True, exist_ok=True)
    small = www / SMALL
    if not small.exists() or small.stat().st_size != 1024:
        small.write_bytes(bytes(range(256)) * 4)
    medium = www / MEDIUM
    if not medium.exists() or medium.stat().st_size != 65536:
        medium.write_bytes(bytes(range(256)) * 256)
    big = www / BIG
    if not big.exists() or big.stat().st_size != BIG_SIZE:
        with open(big, "wb") as f:
            f.truncate(BIG_SIZE)  # sparse: nginx reads zeros from the page cache
    (OUT / "nginx").mkdir(parents=True, exist_ok=True)
    conf = OUT / "nginx" / "nginx.conf"
    conf.write_text(NGINX_CONF.format(
        user="user root;\n" if os.geteuid() == 0 else "",
        out=OUT, http_port=http_port, https_port=https_port, cert=cert, key=key,
    ))
    argv = pinned(LOAD_CORE, ["nginx", "-e", str(OUT / "nginx" / "error.log"), "-p",
                              str(OUT / "nginx"), "-c", str(conf), "-g", "daemon off;"])
    child = Child(argv, LOGS / "nginx.log")
    wait_listening(http_port, child)
    wait_listening(https_port, child)
    return child


# -- proxies --------------------------------------------------------------------


class Proxy:
    """How to start one proxy and what it can do."""

    name = ""
    label = ""
    connect = True  # intercepts CONNECT (e, f)
    addons = True  # takes an addon file
    no_websockets: str | None = None  # why it cannot relay an absolute-form WebSocket (w)
    workers = False  # has --workers
    processes = False  # runs as several processes even without workers: watch the tree
    no_workers = "single process"  # why the --workers rows are n/a for it
    unavailable: str | None = None

    def argv(self, port: int, *, addon: bool, workers: int | None) -> list[str]:
        raise NotImplementedError

    def env(self, *, addon: bool) -> dict[str, str] | None:
        """The environment to start it in; None: the harness's own."""
        return None

    def ca_pem(self) -> Path:
        raise NotImplementedError

    def ca_name(self) -> str:
        from cryptography import x509
        from cryptography.x509.oid import NameOID
        cert = x509.load_pem_x509_certificate(self.ca_pem().read_bytes())
        return str(cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value)


class TwistProxy(Proxy):
    name = "twistproxy"
    label = "twistproxy"

    def __init__(self, origin_ca: Path) -> None:
        self.origin_ca = origin_ca
        self.ca_dir = OUT / "twistproxy-ca"
        local = Path(sys.executable).parent / "twistd"
        self.twistd = [str(local)] if local.exists() else (
            [shutil.which("twistd")] if shutil.which("twistd") else
            [sys.executable, "-c", "from twisted.scripts.twistd import run; run()"])
        try:
            help_text = run([*self.twistd, "twistproxy", "--help"], timeout=60,
                            record=False).stdout
        except RuntimeError as e:
            help_text = ""
            self.unavailable = str(e)
        if "twistproxy" not in help_text and self.unavailable is None:
            self.unavailable = "twistd does not find the twistproxy plugin"
        self.workers = "--workers" in help_text

    def argv(self, port: int, *, addon: bool, workers: int | None) -> list[str]:
        argv = [*self.twistd, "-n", "--pidfile=", "twistproxy", "--port", str(port), "--quiet",
                "--ca-dir", str(self.ca_dir), "--upstream-ca", str(self.origin_ca)]
        if addon:
            argv += ["--addon", str(BENCH / "addons" / "twistproxy_stamp.py")]
        if workers:
            argv += ["--workers", str(workers)]
        return argv

    def ca_pem(self) -> Path:
        from twistproxy.certs import CA_CERT_PEM
        return self.ca_dir / CA_CERT_PEM


class MitmProxy(Proxy):
    name = "mitmproxy"
    label = "mitmproxy"

    def __init__(self, origin_ca: Path, install: bool) -> None:
        self.origin_ca = origin_ca
        self.confdir = OUT / "mitmproxy-conf"
        self.mitmdump = VENV / "bin" / "mitmdump"
        if not self.mitmdump.exists():
            if install:
                self.unavailable = install_venv(VENV, "mitmproxy", "pip-mitmproxy.log")
            else:
                self.unavailable = f"{_show(str(self.mitmdump))} missing (--no-install given)"
        if self.unavailable is None and not self.mitmdump.exists():
            self.unavailable = "mitmdump not found after installing"

    def argv(self, port: int, *, addon: bool, workers: int | None) -> list[str]:
        argv = [str(self.mitmdump), "--listen-host", "127.0.0.1", "-p", str(port), "-q",
                "--set", f"confdir={self.confdir}",
                "--set", f"ssl_verify_upstream_trusted_ca={self.origin_ca}"]
        if addon:
            argv += ["-s", str(BENCH / "addons" / "mitmproxy_stamp.py")]
        return argv

    def ca_pem(self) -> Path:
        return self.confdir / "mitmproxy-ca-cert.pem"


class StockProxy(Proxy):
    name = "stock"
    label = "twisted.web.proxy"
    connect = False
    addons = False
    no_websockets = "forwards the upgrade as HTTP/1.0: the origin answers 505"

    def argv(self, port: int, *, addon: bool, workers: int | None) -> list[str]:
        return [sys.executable, str(BENCH / "stock_proxy.py"), str(port)]


class ProxyPy(Proxy):
    """
    proxy.py (PyPI ``proxy.py``), the peer the issue's targets are stated
    against: one acceptor process on one core, threadless with its local
    executor (its default on Linux), intercepting TLS with a CA made here.
    """

    name = "proxypy"
    label = "proxy.py"
    # Seen here with 2.4.10, threadless or not: the 101 comes back, then no
    # frame is relayed either way (bench/ws_echo.py times out after 10 s).
    no_websockets = "answers an absolute-form upgrade 101, then relays no message"
    processes = True  # a main process and its acceptor process
    workers = True  # --num-acceptors N: N acceptor processes, each with its own event loop

    def __init__(self, origin_ca: Path, install: bool) -> None:
        self.origin_ca = origin_ca
        self.proxy = PROXYPY_VENV / "bin" / "proxy"
        self.ca_dir = OUT / "proxypy-ca"
        if not self._installed():
            if install:
                self.unavailable = install_venv(PROXYPY_VENV, PROXYPY_REQUIREMENT,
                                                "pip-proxypy.log")
            else:
                self.unavailable = (f"{_show(str(self.proxy))} missing or not "
                                    f"{PROXYPY_REQUIREMENT} (--no-install given)")
            if self.unavailable is None and not self._installed():
                self.unavailable = (f"{_show(str(self.proxy))} is not {PROXYPY_REQUIREMENT} "
                                    "after installing")
        if self.unavailable is None:
            self._make_ca()

    def _installed(self) -> bool:
        if not self.proxy.exists():
            return False
        try:
            version = run([str(self.proxy), "--version"], timeout=60, record=False).stdout
        except (RuntimeError, OSError):
            return False
        return version.strip() == PROXYPY_REQUIREMENT.split("==")[1]

    def _make_ca(self) -> None:
        """Its CA (certificate and key) and the one key of every leaf it signs, made
        once; the leaves it has minted (with openssl) go when the CA is new."""
        cert, key, signing = self.ca_pem(), self.ca_dir / "ca-key.pem", \
            self.ca_dir / "signing-key.pem"
        if _valid_for_a_day(cert) and key.exists() and signing.exists():
            return
        from cryptography.hazmat.primitives.asymmetric import ec

        make_ca("twistproxy bench proxy.py CA", cert, key)
        _write_key(ec.generate_private_key(ec.SECP256R1()), signing)
        shutil.rmtree(self.ca_dir / "certs", ignore_errors=True)

    def argv(self, port: int, *, addon: bool, workers: int | None) -> list[str]:
        (self.ca_dir / "certs").mkdir(parents=True, exist_ok=True)
        argv = [str(self.proxy), "--hostname", "127.0.0.1", "--port", str(port),
                "--threadless", "--local-executor", "1",
                "--num-acceptors", str(workers or 1), "--num-workers", "1",
                "--log-level", "WARNING", "--timeout", "60",
                "--ca-cert-file", str(self.ca_pem()),
                "--ca-key-file", str(self.ca_dir / "ca-key.pem"),
                "--ca-signing-key-file", str(self.ca_dir / "signing-key.pem"),
                "--ca-cert-dir", str(self.ca_dir / "certs"),
                "--ca-file", str(self.origin_ca),
                # what it would otherwise make in ~/.proxy (empty directories)
                "--data-dir", str(OUT / "proxypy-data"),
                "--cache-dir", str(OUT / "proxypy-data" / "cache")]
        if addon:
            argv += ["--plugins", "proxypy_stamp.Stamp"]
        return argv

    def env(self, *, addon: bool) -> dict[str, str] | None:
        if not addon:
            return None
        path = [str(BENCH / "addons"), *filter(None, [os.environ.get("PYTHONPATH")])]
        return {**os.environ, "PYTHONPATH": os.pathsep.join(path)}

    def ca_pem(self) -> Path:
        return self.ca_dir / "ca-cert.pem"


PROXIES = ("twistproxy", "proxypy", "mitmproxy", "stock")  # --proxies' default and order


def install_venv(venv: Path, requirement: str, log_name: str) -> str | None:
    """
    Make the virtualenv *venv* (if missing) and pip install *requirement* into
    it, logging pip's output to bench/out/logs/*log_name*; None, or why it failed.
    """
    print(f"installing {requirement} into {_show(str(venv))} (once; may take a minute "
          "or two) ...", flush=True)
    LOGS.mkdir(parents=True, exist_ok=True)
    try:
        if not (venv / "bin" / "python").exists():
            run([sys.executable, "-m", "venv", str(venv)], timeout=300, check=True)
        result = run([str(venv / "bin" / "pip"), "install", "--disable-pip-version-check",
                      requirement], timeout=900)
        (LOGS / log_name).write_text(result.stdout + result.stderr)
        if result.returncode != 0:
            last = (result.stderr.strip().splitlines() or ["?"])[-1]
            return f"pip install {requirement} failed: {last}"
    except (RuntimeError, OSError) as e:
        return f"cannot install {requirement}: {e}"
    return None


def launch(proxy: Proxy, port: int, *, addon: bool = False, workers: int | None = None,
           tag: str = "") -> Child:
    """Start *proxy* on *port* (pinned to the proxy core unless it has workers);
    returns at once, before it listens."""
    core = None if workers else PROXY_CORE
    return Child(pinned(core, proxy.argv(port, addon=addon, workers=workers)),
                 LOGS / f"{proxy.name}{tag}.log", env=proxy.env(addon=addon))


@contextlib.contextmanager
def started(proxy: Proxy, port: int, *, addon: bool = False, workers: int | None = None,
            tag: str = "") -> Iterator[ProcWatch]:
    child = launch(proxy, port, addon=addon, workers=workers, tag=tag)
    try:
        wait_listening(port, child)
        yield ProcWatch(child.pid, tree=bool(workers) or proxy.processes)
        if not child.alive():
            raise RuntimeError(f"{proxy.label} died during the run:\n{child.tail()}")
    finally:
        child.stop()


# -- checks ---------------------------------------------------------------------


def check_http(proxy_port: int, origin_port: int) -> None:
    """One absolute-form GET through the proxy must give the 1 KiB file."""
    conn = http.client.HTTPConnection("127.0.0.1", proxy_port, timeout=10)
    try:
        conn.request("GET", f"http://127.0.0.1:{origin_port}/{SMALL}",
                     headers={"Host": f"127.0.0.1:{origin_port}"})
        response = conn.getresponse()
        body = response.read()
    finally:
        conn.close()
    if response.status != 200 or len(body) != 1024:
        raise RuntimeError(f"GET through the proxy: {response.status}, {len(body)} bytes")


# OpenSSL's verify codes for a certificate that does not name the host (or IP address)
_NAME_MISMATCH = {62, 64}  # X509_V_ERR_HOSTNAME_MISMATCH, X509_V_ERR_IP_ADDRESS_MISMATCH


def check_certificate(shim_port: int, proxy: Proxy) -> list[str]:
    """
    Through the CONNECT shim, the certificate must verify with the proxy's
    CA (and so not be the origin's), and the GET inside the tunnel must
    work; returns notes for the report: the issuer's common name, and whether
    the certificate verified only once the host-name check was left out
    (wrk itself checks neither).
    """
    try:
        issuer, san = _get_through_tunnel(shim_port, proxy, check_hostname=True)
    except ssl.SSLCertVerificationError as e:
        if e.verify_code not in _NAME_MISMATCH:
            raise
        issuer, san = _get_through_tunnel(shim_port, proxy, check_hostname=False)
        return [f"certificate seen through the shim verified with the proxy's CA, issuer "
                f"CN={issuer!r}, but only without the host-name check: {e.verify_message} "
                f"(its subjectAltName: {san}); a client that checks host names rejects it"]
    return [f"certificate seen through the shim verified with the proxy's CA, issuer "
            f"CN={issuer!r}"]


def _get_through_tunnel(shim_port: int, proxy: Proxy, *, check_hostname: bool
                        ) -> tuple[str, str]:
    """One GET through the shim; returns the certificate's issuer CN and its SAN."""
    context = ssl.create_default_context(cafile=str(proxy.ca_pem()))
    context.check_hostname = check_hostname
    with socket.create_connection(("127.0.0.1", shim_port), 10) as raw, \
            context.wrap_socket(raw, server_hostname="127.0.0.1") as tls:
        cert: dict[str, Any] = dict(tls.getpeercert() or {})
        tls.sendall(b"GET /" + SMALL.encode() + b" HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                    b"Connection: close\r\n\r\n")
        data = b""
        while chunk := tls.recv(65536):
            data += chunk
    issuer = "?"
    for rdn in cert.get("issuer", ()):
        for attribute, value in rdn:
            if attribute == "commonName":
                issuer = value
    san = ", ".join(f"{kind}:{value}" for kind, value in cert.get("subjectAltName", ()))
    if not data.startswith(b"HTTP/1.1 200"):
        raise RuntimeError(f"GET inside the tunnel: {data[:80]!r}")
    if issuer != proxy.ca_name():
        raise RuntimeError(f"certificate issued by {issuer!r}, not {proxy.ca_name()!r}")
    return issuer, san or "none"


# -- load tools -----------------------------------------------------------------

_UNITS = {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60000.0, "h": 3600000.0}


def parse_wrk(text: str) -> dict[str, float]:
    rps = re.search(r"^Requests/sec:\s+([\d.]+)", text, re.MULTILINE)
    p99 = re.search(r"^\s+99%\s+([\d.]+)(us|ms|s|m|h)\b", text, re.MULTILINE)
    total = re.search(r"^\s+(\d+) requests in", text, re.MULTILINE)
    if not rps or not p99 or not total:
        raise RuntimeError(f"cannot read wrk's output:\n{text}")
    result = {"rps": float(rps.group(1)),
              "p99": float(p99.group(1)) * _UNITS[p99.group(2)],
              "requests": float(total.group(1)), "errors": 0.0, "non2xx": 0.0}
    socket_errors = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), "
                              r"timeout (\d+)", text)
    if socket_errors:
        result["errors"] = float(sum(int(n) for n in socket_errors.groups()))
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", text)
    if non2xx:
        result["non2xx"] = float(non2xx.group(1))
    return result


def write_lua(name: str, *, path: str, host: str, close: bool) -> Path:
    lines = [
        "-- written by bench/run.py",
        'wrk.method = "GET"',
        f'wrk.path = "{path}"',
        f'wrk.headers["Host"] = "{host}"',
    ]
    if close:
        lines.append('wrk.headers["Connection"] = "close"')
    lua = OUT / "lua" / f"{name}.lua"
    lua.parent.mkdir(parents=True, exist_ok=True)
    lua.write_text("\n".join(lines) + "\n")
    return lua


def wrk(url: str, lua: Path, seconds: int, connections: int) -> dict[str, float]:
    argv = pinned(LOAD_CORE, ["wrk", "-t1", f"-c{connections}", f"-d{seconds}s",
                              "--timeout", "10s", "--latency", "-s", str(lua), url])
    result = run(argv, timeout=seconds + 60)
    if result.returncode != 0:
        raise RuntimeError(f"wrk exited {result.returncode}: {result.stderr.strip()}")
    return parse_wrk(result.stdout)


def settle(watch: ProcWatch, limit: float = 5.0) -> None:
    """Wait (*limit* seconds at most) until the process is idle: at most one clock
    tick (10 ms) of CPU time over 0.2 s."""
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        before = watch.cpu()
        time.sleep(0.2)
        if watch.cpu() - before <= 1.0 / _TICK:
            return


# -- scenarios ------------------------------------------------------------------


MAX_OTHER = 15.0  # % of a core other processes may use during a run before it is repeated
RETRIES = 2
# what a proxy's failure in a scenario raises; the others go on
MEASURE_ERRORS = (RuntimeError, OSError, ValueError, KeyError)


@dataclass
class Lane:
    """One proxy in an interleaved wrk scenario: its processes, its target, its runs."""

    proxy: Proxy
    port: int
    child: Child | None = None
    watch: ProcWatch | None = None
    shim: Child | None = None
    url: str = ""
    lua: Path | None = None
    cell: Cell = field(default_factory=Cell)
    failed: bool = False
    idle_ready: list[int] = field(default_factory=list)  # (g), per run
    idle_rss: list[float] = field(default_factory=list)
    idle_alive: list[str] = field(default_factory=list)

    def stop(self) -> None:
        """Stop its shim and its proxy; once only."""
        for child in (self.shim, self.child):
            if child is not None:
                child.stop()
        self.shim = self.child = None


def _by_round(cell: Cell, key: str) -> dict[int, float]:
    """A wrk cell's figure *key* per round (its details and runs are in step)."""
    return {d["round"]: v for d, v in zip(cell.details, cell.runs.get(key, []), strict=False)}


@dataclass
class Bench:
    settings: Settings
    ports: dict[str, int]
    proxies: list[Proxy]
    origin_ca: Path
    wait_budget: list[float]  # seconds left for waiting for a quiet machine, whole run
    results: dict[str, dict[str, Cell]] = field(default_factory=dict)
    disturbed: int = 0  # runs kept although other processes were busy

    def guarded(self, measure: Callable[[], Any],
                repeatable: Callable[[Any], bool] = lambda value: True) -> tuple[Any, float]:
        """
        Run *measure* on a quiet machine: wait for one first, and repeat the
        run (at most RETRIES times) when other processes used more than
        MAX_OTHER % of a core during it, unless *repeatable* says no for its
        value.  Returns its value and that figure.
        """
        for attempt in range(RETRIES + 1):
            wait_quiet(self.wait_budget)
            foreign = Foreign()
            value = measure()
            other = foreign.percent()
            if other <= MAX_OTHER:
                return value, other
            if attempt == RETRIES or self.wait_budget[0] <= 0 or not repeatable(value):
                self.disturbed += 1
                return value, other
            print(f"  other processes used {other:.0f}% of a core during the run; "
                  "repeating it", flush=True)
        raise AssertionError("unreachable")

    # wrk-based: a, b, e, f, g and the addon and workers variants, the proxies interleaved

    def wrk_scenario(self, key: str, proxies: list[Proxy], workers_ok: bool,
                     errors: list[str]) -> dict[str, Cell]:
        """
        The wrk scenario *key* for every proxy, side by side: all of them started
        at once (each on its own port, with HTTPS each behind its own shim, all on
        the proxy core), each checked and warmed up, then in each round one
        measured run per proxy in turn, in *proxies*' order in odd rounds and the
        reverse in even ones (no proxy always goes first), so that drift in the
        machine's speed hits them alike; then all are stopped.  A proxy that fails
        is stopped and drops out (its cell says so, *errors* why); the others go on.
        """
        setup = WRK_SCENARIOS[key]
        cells: dict[str, Cell] = {}
        lanes: list[Lane] = []
        with contextlib.ExitStack() as stack:  # stops every lane's processes, however it ends
            for proxy in proxies:
                why = self.not_applicable(key, proxy, workers_ok)
                if why:
                    cells[proxy.name] = Cell(na=why)
                    continue
                lane = Lane(proxy, self.ports[proxy.name])
                stack.callback(lane.stop)
                lanes.append(lane)
                try:
                    lane.child = launch(proxy, lane.port, addon=setup.addon,
                                        workers=setup.workers, tag=f"-{key}")
                except MEASURE_ERRORS as e:
                    self._fail(lane, key, e, errors)
            # All started at once; every one listens before any is loaded.
            for lane in lanes:
                if lane.child is not None:
                    try:
                        wait_listening(lane.port, lane.child)
                        lane.watch = ProcWatch(lane.child.pid,
                                               tree=bool(setup.workers) or lane.proxy.processes)
                    except MEASURE_ERRORS as e:
                        self._fail(lane, key, e, errors)
            for lane in lanes:
                if not lane.failed:
                    try:
                        self._prepare(lane, key, setup)
                    except MEASURE_ERRORS as e:
                        self._fail(lane, key, e, errors)
            for round_ in range(1, self.settings.runs + 1):
                for lane in lanes if round_ % 2 else lanes[::-1]:
                    if lane.failed:
                        continue
                    idle_peers = [other.watch for other in lanes
                                  if other is not lane and not other.failed and other.watch]
                    try:
                        self._measured_run(lane, setup, round_, idle_peers)
                    except MEASURE_ERRORS as e:
                        child = lane.child
                        if child is not None and not child.alive() and "died" not in str(e):
                            e = RuntimeError(f"{lane.proxy.label} died ({child.proc.returncode})"
                                             f" during the runs: {e}\n{child.tail()}")
                        self._fail(lane, key, e, errors)
        for lane in lanes:
            cells[lane.proxy.name] = (Cell(na="failed, see Failures") if lane.failed
                                      else self._finish(lane, setup))
        self._paired(key, cells)
        return {p.name: cells[p.name] for p in proxies}

    def _fail(self, lane: Lane, key: str, error: BaseException, errors: list[str]) -> None:
        message = f"{key}, {lane.proxy.label}: {error}"
        print(f"  FAILED: {message}", flush=True)
        errors.append(message.splitlines()[0])
        lane.failed = True
        lane.stop()  # a broken proxy must not take the proxy core from the others

    def _prepare(self, lane: Lane, key: str, setup: WrkSetup) -> None:
        """The proxy's check (and the certificate check through its own shim for
        HTTPS), then its discarded warm-up run."""
        proxy, port, watch, s = lane.proxy, lane.port, lane.watch, self.settings
        assert watch is not None
        http_port, https_port = self.ports["http"], self.ports["https"]
        check_http(port, http_port)
        if proxy.processes and not setup.workers:
            lane.cell.notes.append(watch.memory_note())
        if setup.https:
            target = f"127.0.0.1:{https_port}"
            lane.lua = write_lua(f"{key}-{proxy.name}", path=f"/{setup.path}", host=target,
                                 close=setup.close)
            shim_port = self.ports[f"shim-{proxy.name}"]
            lane.shim = Child(pinned(LOAD_CORE, [
                "socat", f"TCP-LISTEN:{shim_port},bind=127.0.0.1,fork,reuseaddr,backlog=1024",
                f"PROXY:127.0.0.1:{target},proxyport={port}"]),
                LOGS / f"socat-{key}-{proxy.name}.log")
            wait_listening(shim_port, lane.shim)
            lane.cell.notes += check_certificate(shim_port, proxy)
            lane.url = f"https://127.0.0.1:{shim_port}"
        else:
            target = f"127.0.0.1:{http_port}"
            lane.lua = write_lua(f"{key}-{proxy.name}", path=f"http://{target}/{setup.path}",
                                 host=target, close=setup.close)
            lane.url = f"http://127.0.0.1:{port}"
        wrk(lane.url, lane.lua, s.warmup, setup.connections or s.connections)  # warm-up

    def _measured_run(self, lane: Lane, setup: WrkSetup, round_: int,
                      idle_peers: list[ProcWatch]) -> None:
        """One measured wrk run against *lane*'s proxy (repeated when disturbed), with
        (g)'s idle connections opened just before it and closed just after it."""
        s, watch, lua, cell = self.settings, lane.watch, lane.lua, lane.cell
        assert watch is not None and lua is not None

        def once() -> tuple[dict[str, Any], dict[str, float], float, float, float, float]:
            peers0 = sum(w.cpu() for w in idle_peers)
            by_pid, t0, cores = watch.cpu_by_pid(), time.monotonic(), _cpu_times()
            with sampling(watch) as rss:
                figures: dict[str, Any] = wrk(lane.url, lua, s.duration,
                                              setup.connections or s.connections)
            load = core_busy(cores, LOAD_CORE)
            proxy_core = core_busy(cores, PROXY_CORE)
            elapsed = time.monotonic() - t0
            after = watch.cpu_by_pid()
            peers = (sum(w.cpu() for w in idle_peers) - peers0) / elapsed * 100
            shares = {pid: (used - by_pid.get(pid, 0.0)) / elapsed * 100
                      for pid, used in after.items()}
            if watch.tree:  # each process's share: are the workers balanced,
                # which of proxy.py's processes works?
                figures = {**figures, "cpu%_by_process": "/".join(
                    f"{v:.0f}" for _, v in sorted(shares.items()))}
            return figures, rss, load, proxy_core, sum(shares.values()), peers

        holder = None
        if setup.idle:
            holder = self._hold_idle(lane.port, s.idle, lane.proxy)
            lane.idle_ready.append(holder[1])
            lane.idle_rss.append(watch.rss())
        try:
            (figures, rss, load, proxy_core, cpu, peers), other = self.guarded(once)
        finally:
            if holder is not None:
                lane.idle_alive.append(self._release_idle(holder[0]))
                settle(watch)  # its closing of them is over before the next proxy's run
        cell.runs.setdefault("rps", []).append(figures["rps"])
        cell.runs.setdefault("p99", []).append(figures["p99"])
        cell.runs.setdefault("rss", []).append(rss["max"])
        cell.runs.setdefault("per_cpu", []).append(
            figures["rps"] / (cpu / 100) if cpu > 0 else float("nan"))
        cell.runs.setdefault("cpu_us", []).append(
            cpu / 100 * 1e6 / figures["rps"] if figures["rps"] else float("nan"))
        detail = {"round": round_, **figures, "cpu%": cpu, "load_core%": load,
                  "proxy_core%": proxy_core, "other%": other, "rss_max": rss["max"]}
        if idle_peers:
            detail["idle_peers_cpu%"] = peers
        cell.details.append(detail)
        if figures["errors"] or figures["non2xx"]:
            cell.notes.append(f"wrk saw {int(figures['errors'])} socket errors and "
                              f"{int(figures['non2xx'])} non-2xx responses in a run")
        print(f"  round {round_}, {lane.proxy.label}: {figures['rps']:,.0f} req/s, p99 "
              f"{figures['p99']:.2f} ms, proxy CPU {cpu:.0f}%", flush=True)
        if setup.idle and lane.proxy.name == "twistproxy":
            # The target is (g) against our own (a): measured in the same minute, right
            # after, without the idle connections, since (a) itself ran minutes earlier.
            (without, *_), _ = self.guarded(once)
            cell.runs.setdefault("rps_without_idle", []).append(without["rps"])
            print(f"  round {round_}, {lane.proxy.label} without the idle connections: "
                  f"{without['rps']:,.0f} req/s", flush=True)
        if lane.child is not None and not lane.child.alive():
            raise RuntimeError(f"{lane.proxy.label} died during the run:\n{lane.child.tail()}")

    def _finish(self, lane: Lane, setup: WrkSetup) -> Cell:
        """The notes summing up *lane*'s runs."""
        cell = lane.cell
        if setup.idle:
            cell.notes.append(
                f"{'/'.join(str(n) for n in dict.fromkeys(lane.idle_ready))} idle connections "
                "opened just before each of its runs and closed just after it; proxy RSS "
                f"with them and no load: {', '.join(f'{v:.1f}' for v in lane.idle_rss)} MiB")
            cell.notes.append("idle connections still open after each run: "
                              + "; ".join(lane.idle_alive))
            without = cell.runs.get("rps_without_idle")
            if without:
                ratios = [g / a for g, a in zip(cell.runs["rps"], without, strict=False)]
                cell.notes.append(
                    "the same load without the idle connections, right after each run: "
                    + ", ".join(f"{v:,.0f}" for v in without) + " req/s; (g)/(a) per round: "
                    + ", ".join(f"{r:.2f}" for r in ratios)
                    + f" (median {statistics.median(ratios):.2f})")
        others = [d["other%"] for d in cell.details]
        if max(others) > MAX_OTHER:
            cell.notes.append(f"DISTURBED: other processes used up to {max(others):.0f}% of a "
                              "core during a kept run")
        cpus = [d["cpu%"] for d in cell.details]
        loads = [d["load_core%"] for d in cell.details]
        idle_peers = [d["idle_peers_cpu%"] for d in cell.details if "idle_peers_cpu%" in d]
        peers = (f"; the other proxies, idle meanwhile: at most {max(idle_peers):.1f}% of a core"
                 if idle_peers else "")
        cell.notes.append(f"proxy CPU during the runs: {statistics.median(cpus):.0f}% of one "
                          f"core; load core {LOAD_CORE} busy {statistics.median(loads):.0f}% "
                          f"(medians){peers}")
        return cell

    def _paired(self, key: str, cells: dict[str, Cell]) -> None:
        """For each peer, the notes' paired ratios: twistproxy's figure over the peer's
        in the same round, per round, and their median."""
        ours = cells.get("twistproxy")
        if ours is None or not ours.runs:
            return
        labels = {p.name: p.label for p in self.proxies}
        for name, cell in cells.items():
            if name == "twistproxy" or not cell.runs:
                continue
            parts = []
            for figure in SCENARIOS[key].figures:
                mine, theirs = _by_round(ours, figure.key), _by_round(cell, figure.key)
                ratios = [mine[r] / theirs[r] for r in sorted(mine)
                          if r in theirs and theirs[r]]
                ratios = [v for v in ratios if math.isfinite(v)]
                if ratios:
                    parts.append(f"{figure.label} {', '.join(f'{v:.2f}' for v in ratios)} "
                                 f"(median {statistics.median(ratios):.2f})")
            if parts:
                cell.notes.append(f"paired ratio twistproxy/{labels.get(name, name)} per "
                                  f"round: {'; '.join(parts)}")

    def _hold_idle(self, port: int, count: int, proxy: Proxy) -> tuple[Child, int]:
        argv = pinned(LOAD_CORE, [sys.executable, str(BENCH / "idle_clients.py"),
                                  "--port", str(port), "--count", str(count), "--url",
                                  f"http://127.0.0.1:{self.ports['http']}/{SMALL}",
                                  "--max-seconds", "300"])
        child = Child(argv, LOGS / f"idle-{proxy.name}.log", stdin=subprocess.PIPE,
                      stdout_pipe=True)
        line = _read_line(child, 120)
        match = re.match(r"ready (\d+) (\d+)", line)
        if not match:
            child.stop()
            raise RuntimeError(f"idle clients: {line!r}\n{child.tail()}")
        ready, failed = int(match.group(1)), int(match.group(2))
        if failed:
            child.stop()
            raise RuntimeError(f"idle clients: {failed} of {count} connections failed\n"
                               f"{child.tail()}")
        return child, ready

    def _release_idle(self, child: Child) -> str:
        with contextlib.suppress(OSError):
            child.proc.send_signal(signal.SIGTERM)
        line = _read_line(child, 30)
        child.stop()
        return line.removeprefix("alive ").strip() if line else "unknown"

    # c: the big download

    def download(self, proxy: Proxy) -> Cell:
        cell = Cell()
        url = f"http://127.0.0.1:{self.ports['http']}/{BIG}"
        port = self.ports[proxy.name]
        limit = self.settings.download_seconds
        argv = pinned(LOAD_CORE, ["curl", "-sS", "-x", f"http://127.0.0.1:{port}",
                                  "-o", "/dev/null", "--max-time", str(limit), "-w",
                                  "%{http_code} %{size_download} %{speed_download} "
                                  "%{time_total}", url])

        def once() -> tuple[float, float, float, float, int]:
            # A fresh proxy each run, so that its peak RSS is this download's.
            with started(proxy, port, tag="-c") as watch:
                check_http(port, self.ports["http"])
                base = watch.rss()
                cpu0 = watch.cpu()
                result = run(argv, timeout=limit + 60)
                fields = result.stdout.split()
                # curl's 28 is its --max-time: a download still going then is cut and
                # reported as such (proxy.py 2.4.10 takes many minutes for 512 MiB).
                if result.returncode not in (0, 28) or len(fields) != 4 \
                        or fields[0] != "200" or (result.returncode == 0) != (
                            int(fields[1]) == BIG_SIZE):
                    raise RuntimeError(f"download: curl exit {result.returncode}, "
                                       f"{result.stdout!r}: {result.stderr.strip()}")
                speed = float(fields[2]) / 1e6
                cpu = (watch.cpu() - cpu0) / float(fields[3]) * 100
                return speed, watch.hwm(), base, cpu, int(fields[1])

        # The origin alone, twice: warms the page cache (the first read of the sparse
        # file is slower) and gives a reference figure, the second.
        for _ in range(2):
            direct = run(pinned(LOAD_CORE, ["curl", "-sS", "-o", "/dev/null", "--max-time",
                                            "180", "-w", "%{speed_download}", url]),
                         timeout=240)
        if direct.returncode == 0:
            cell.notes.append(f"the origin alone, without a proxy: "
                              f"{float(direct.stdout) / 1e6:,.0f} MB/s")
        for i in range(self.settings.runs):
            (speed, peak, base, cpu, received), other = self.guarded(
                once, repeatable=lambda value: value[4] == BIG_SIZE)
            cell.runs.setdefault("mbps", []).append(speed)
            cell.runs.setdefault("peak", []).append(peak)
            cell.details.append({"run": i + 1, "MB/s": speed, "peak_rss": peak,
                                 "rss_at_start": base, "cpu%": cpu, "other%": other,
                                 "received_MiB": received / 2**20})
            if received != BIG_SIZE:
                cell.mark = f"cut at {limit} s"
                cell.notes.append(
                    f"UNFINISHED: the download was cut by curl --max-time {limit} after "
                    f"{received / 2**20:,.0f} of {BIG_SIZE // 2**20} MiB; the MB/s figure is "
                    "the average over what arrived, the peak RSS the peak until then; not "
                    "repeated")
                break
        if max(d["other%"] for d in cell.details) > MAX_OTHER:
            cell.notes.append("DISTURBED: other processes used more than "
                              f"{MAX_OTHER:.0f}% of a core during a kept run")
        cell.notes.append(f"proxy CPU during the download: "
                          f"{statistics.median(d['cpu%'] for d in cell.details):.0f}% of one "
                          "core (median)")
        return cell

    # d: the slow reader

    def slow_reader(self, proxy: Proxy) -> Cell:
        s = self.settings
        cell = Cell()
        url = f"http://127.0.0.1:{self.ports['http']}/{BIG}"
        port = self.ports[proxy.name]
        argv = pinned(LOAD_CORE, ["curl", "-sS", "-x", f"http://127.0.0.1:{port}",
                                  "-o", "/dev/null", "--limit-rate", s.slow_rate,
                                  "--max-time", str(s.slow_seconds), "-w",
                                  "%{http_code} %{size_download}", url])

        def once() -> tuple[dict[str, float], int]:
            # A fresh proxy each run, so that the growth is this reader's.
            with started(proxy, port, tag="-d") as watch:
                check_http(port, self.ports["http"])
                time.sleep(0.3)
                with sampling(watch) as rss:
                    result = run(argv, timeout=s.slow_seconds + 30)
                # curl ends with 28 (timeout) after slow_seconds: expected; so is no
                # response at all yet (000) from a proxy that buffers the whole body.
                fields = result.stdout.split()
                if result.returncode not in (0, 28) or len(fields) != 2 \
                        or fields[0] not in ("200", "000"):
                    raise RuntimeError(f"slow reader: curl exit {result.returncode}, "
                                       f"{result.stdout!r} {result.stderr.strip()}")
                return rss, int(fields[1])

        for i in range(s.runs):
            (rss, received), other = self.guarded(once)
            growth = rss["max"] - rss["before"]
            cell.runs.setdefault("growth", []).append(growth)
            cell.details.append({"run": i + 1, "rss_before": rss["before"],
                                 "rss_max": rss["max"], "growth": growth,
                                 "client_received_MiB": received / 2**20, "other%": other})
        if max(d["other%"] for d in cell.details) > MAX_OTHER:
            cell.notes.append("DISTURBED: other processes used more than "
                              f"{MAX_OTHER:.0f}% of a core during a kept run")
        return cell

    # w: WebSocket echo

    def websocket_echo(self, proxy: Proxy) -> Cell:
        """
        (w): a WebSocket echo origin (``bench/ws_echo.py``, on the load core)
        and connections upgraded through the proxy in absolute form, each
        sending a message and waiting for its echo, over and over.
        """
        s = self.settings
        cell = Cell()
        port = self.ports[proxy.name]
        origin_port = self.ports["ws"]
        origin = Child(pinned(LOAD_CORE, [sys.executable, str(BENCH / "ws_echo.py"), "origin",
                                          "--port", str(origin_port)]),
                       LOGS / "ws-origin.log")
        load = pinned(LOAD_CORE, [sys.executable, str(BENCH / "ws_echo.py"), "load",
                                  "--proxy-port", str(port), "--origin-port", str(origin_port),
                                  "--connections", str(s.echo_connections),
                                  "--size", str(s.echo_size)])
        try:
            wait_listening(origin_port, origin)
            with started(proxy, port, tag="-w") as watch:
                check_http(port, self.ports["http"])
                warm = run([*load, "--seconds", str(s.warmup)], timeout=s.warmup + 60)
                if json.loads(warm.stdout or "{}").get("errors", 1):
                    raise RuntimeError(f"WebSocket echo through the proxy failed: "
                                       f"{warm.stdout.strip()} {warm.stderr.strip()[-300:]}")

                def once() -> tuple[dict[str, Any], float]:
                    cpu0 = watch.cpu()
                    result = run([*load, "--seconds", str(s.duration)],
                                 timeout=s.duration + 60)
                    cpu = (watch.cpu() - cpu0) / s.duration * 100
                    return json.loads(result.stdout), cpu

                for i in range(s.runs):
                    (figures, cpu), other = self.guarded(once)
                    if figures["errors"]:
                        cell.notes.append(f"{figures['errors']} connections failed in a run: "
                                          f"{figures['first_error']}")
                    cell.runs.setdefault("msgs", []).append(figures["msgs"])
                    cell.runs.setdefault("p99", []).append(figures["p99"])
                    cell.details.append({"run": i + 1, **figures, "cpu%": cpu,
                                         "other%": other})
        finally:
            origin.stop()
        if max(d["other%"] for d in cell.details) > MAX_OTHER:
            cell.notes.append("DISTURBED: other processes used more than "
                              f"{MAX_OTHER:.0f}% of a core during a kept run")
        cell.notes.append(f"proxy CPU during the runs: "
                          f"{statistics.median(d['cpu%'] for d in cell.details):.0f}% of one "
                          "core (median)")
        return cell

    # dispatch

    def not_applicable(self, key: str, proxy: Proxy, workers_ok: bool) -> str | None:
        """Why *proxy* has no figures in scenario *key*, or None."""
        if proxy.unavailable:
            return proxy.unavailable
        if key in ("e", "f", "e-addon", "e-workers") and not proxy.connect:
            return "no CONNECT"
        if key.endswith("-addon") and not proxy.addons:
            return "no addons"
        if key == "w" and proxy.no_websockets:
            return proxy.no_websockets
        if key.endswith("-workers"):
            if not proxy.workers:
                return proxy.no_workers
            if proxy.name == "twistproxy" and not workers_ok:
                return "no --workers in `twistd twistproxy --help`"
        return None

    def measure(self, key: str, proxy: Proxy, workers_ok: bool) -> Cell:
        """(c), (d) or (w) for one proxy; the wrk scenarios run all proxies at once
        (:meth:`wrk_scenario`)."""
        why = self.not_applicable(key, proxy, workers_ok)
        if why:
            return Cell(na=why)
        if key == "c":
            return self.download(proxy)
        if key == "d":
            return self.slow_reader(proxy)
        if key == "w":
            return self.websocket_echo(proxy)
        raise AssertionError(key)


def _read_line(child: Child, timeout: float) -> str:
    assert child.proc.stdout is not None
    deadline = time.monotonic() + timeout
    data = b""
    fd = child.proc.stdout.fileno()
    while time.monotonic() < deadline and not data.endswith(b"\n"):
        ready, _, _ = select.select([fd], [], [], max(0.0, deadline - time.monotonic()))
        if not ready:
            break
        chunk = os.read(fd, 1)
        if not chunk:
            break
        data += chunk
    return data.decode(errors="replace").strip()


# -- the report -----------------------------------------------------------------


def _fmt(value: float | None, digits: int) -> str:
    if value is None:
        return "–"
    return f"{value:,.{digits}f}"


def _summary(key: str, cell: Cell) -> str:
    """One line for the console: the medians, or why there are none."""
    if cell.runs:
        return ", ".join(f"{f.label} {_fmt(cell.median(f.key), f.digits)} {f.unit}"
                         for f in SCENARIOS[key].figures)
    return f"n/a: {cell.na}"


def table(bench: Bench, keys: list[str]) -> str:
    names = [p.name for p in bench.proxies]
    labels = {p.name: p.label for p in bench.proxies}
    peers = [n for n in names if n != "twistproxy"]
    head = ["scenario", "figure", "better", *[labels[n] for n in names],
            *[f"twistproxy/{labels[n]}" for n in peers]]
    rows = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for key in keys:
        scenario = SCENARIOS[key]
        cells = bench.results.get(key, {})
        for figure in scenario.figures:
            values = []
            medians = {}
            for n in names:
                cell = cells.get(n)
                if cell is None:
                    values.append("not run")
                elif cell.na:
                    values.append(f"n/a ({cell.na})")
                else:
                    medians[n] = cell.median(figure.key)
                    values.append(_fmt(medians[n], figure.digits)
                                  + (f" ({cell.mark})" if cell.mark else ""))
            ratios = []
            for n in peers:
                tp, peer = medians.get("twistproxy"), medians.get(n)
                cut = any(cells[m].mark for m in ("twistproxy", n) if m in cells)
                ratios.append(f"{tp / peer:.2f}{' (cut)' if cut else ''}"
                              if tp is not None and peer else "n/a")
            rows.append("| " + " | ".join([scenario.title, f"{figure.label} ({figure.unit})",
                                           figure.better, *values, *ratios]) + " |")
    return "\n".join(rows)


def _version(argv: list[str], pattern: str = r"(.+)") -> str:
    try:
        result = run(argv, timeout=60, record=False)
    except (RuntimeError, OSError) as e:
        return f"unavailable ({e})"
    text = (result.stdout + result.stderr).strip()
    match = re.search(pattern, text)
    return match.group(1).strip() if match else text.splitlines()[0] if text else "?"


def environment(bench: Bench) -> list[str]:
    cpu = "?"
    with contextlib.suppress(OSError):
        match = re.search(r"^model name\s*:\s*(.+)$", Path("/proc/cpuinfo").read_text(),
                          re.MULTILINE)
        cpu = match.group(1) if match else "?"
    mem = "?"
    with contextlib.suppress(OSError):
        match = re.search(r"^MemTotal:\s+(\d+) kB", Path("/proc/meminfo").read_text(),
                          re.MULTILINE)
        mem = f"{int(match.group(1)) / 2**20:.1f} GiB" if match else "?"
    import twisted
    commit = _version(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"])
    dirty = run(["git", "-C", str(REPO), "status", "--porcelain", "--untracked-files=no"],
                timeout=60, record=False).stdout.strip()

    def peer_version(name: str, argv: list[str], pattern: str) -> str:
        proxy = next((p for p in bench.proxies if p.name == name), None)
        if proxy is None:
            return "not run"
        return f"n/a ({proxy.unavailable})" if proxy.unavailable else _version(argv, pattern)

    mitm_version = peer_version("mitmproxy", [str(VENV / "bin" / "mitmdump"), "--version"],
                                r"Mitmproxy:\s*(\S+)")
    proxypy_version = peer_version("proxypy", [str(PROXYPY_VENV / "bin" / "proxy"), "--version"],
                                   r"^v?(\S+)")
    tools = ", ".join([
        _version(["nginx", "-v"], r"nginx version: (.+)"),
        _version(["wrk", "-v"], r"^(wrk \S+)"),
        _version(["socat", "-V"], r"(socat version \S+)"),
        _version(["curl", "--version"], r"^(curl \S+)"),
        _version(["openssl", "version"], r"^(OpenSSL \S+)"),
    ])
    return [
        f"- machine: {os.cpu_count()} cores (nproc), {cpu}, {mem} memory; "
        f"Linux {platform.release()}",
        f"- Python {platform.python_version()}, Twisted {twisted.__version__}, "
        f"twistproxy {commit}{' + uncommitted changes' if dirty else ''}",
        f"- proxy.py {proxypy_version} (in bench/.venv-proxypy)",
        f"- mitmproxy {mitm_version} (in bench/.venv)",
        f"- {tools}",
    ]


def _analysis() -> str:
    """bench/ANALYSIS.md for RESULTS.md: without its title, its headings one level down."""
    text = ANALYSIS.read_text().strip().split("\n", 1)
    body = text[1] if text[0].startswith("# ") and len(text) > 1 else "\n".join(text)
    return "\n".join("#" + line if line.startswith("#") else line
                     for line in body.strip().splitlines())


def report(bench: Bench, keys: list[str], started_at: datetime.datetime, elapsed: float,
           argv: list[str], errors: list[str], others_at_start: list[str]) -> str:
    s = bench.settings
    lines = [
        "# twistproxy benchmark results",
        "",
        f"Written by `python bench/run.py{' ' + shlex.join(argv) if argv else ''}` on "
        f"{started_at:%Y-%m-%d %H:%M} UTC; the run took {elapsed / 60:.1f} minutes. "
        "In the wrk scenarios the proxies ran side by side, their runs interleaved round by "
        "round (below). See bench/README.md for what each scenario measures.",
        "",
        *environment(bench),
        "",
        f"Each figure is the median of {s.runs} run(s); wrk runs last {s.duration} s after "
        f"a discarded {s.warmup} s warm-up, with {s.connections} connections and one thread. "
        "The wrk scenarios run the proxies side by side, their runs interleaved: all the "
        "proxies of a scenario are started at once (each on its own port, all on the proxy "
        "core; an idle proxy uses next to no CPU), each is checked and warmed up, and then each "
        "round makes one measured run per proxy in turn, in the table's order in odd rounds "
        "and in reverse in even ones, so that the machine's drift in speed hits them alike; "
        "the notes give for each peer the paired ratio, twistproxy's figure over the peer's "
        "in the same round. (c) and (d) start a fresh proxy per run, one proxy after the "
        "other; (w) one per proxy, its runs after a warm-up. "
        f"The proxy is pinned to core {PROXY_CORE} (`taskset -c {PROXY_CORE}`); nginx, wrk, "
        f"curl, socat, the idle clients and the WebSocket origin and load to core {LOAD_CORE}, "
        "except in the `--workers 2` "
        "rows, where the proxy is not pinned. Ratios are twistproxy divided by the peer: "
        "above 1 is better for twistproxy where higher is better, below 1 where lower is "
        "better.",
        "",
        table(bench, keys),
        "",
        "## Notes",
        "",
        "- The HTTPS scenarios go through a CONNECT shim, `socat TCP-LISTEN:...,fork "
        "PROXY:...`: socat forks one process per connection, and those processes share "
        f"core {LOAD_CORE} with wrk and nginx. In (f) that is a fork per request, so (f) "
        "partly measures socat and the load core, and the proxy's CPU figure below tells "
        "whether the proxy was the bottleneck.",
        "- All three intercepting proxies verify the origin's certificate against the bench "
        "origin CA (twistproxy `--upstream-ca`, proxy.py `--ca-file`, mitmproxy "
        "`ssl_verify_upstream_trusted_ca`).",
        f"- proxy.py ({PROXYPY_REQUIREMENT}, the peer the issue's targets name) runs "
        "threadless with one acceptor process and its local executor (`--threadless "
        "--local-executor 1 --num-acceptors 1 --num-workers 1`: its default mode on Linux; "
        "`--num-workers` counts only with `--local-executor 0`), `--log-level WARNING` (its "
        "access log is an INFO line per connection), `--timeout 60` (its idle-client timeout "
        "is 10 s by default; 60 s is twistproxy's) and no plugin but the stamp in the addon "
        "rows. It is two processes, the main one (idle after start) and the acceptor that "
        "does the work: its RSS and CPU figures are their sums. It mints a leaf certificate "
        "per host by running `openssl` three times (on the first connection, before the "
        "warm-up) and names the host there as a DNS name even when it is an IP address "
        "(`DNS:127.0.0.1`), which a client checking host names rejects: the harness's check "
        "through the shim then verifies the chain only (wrk checks nothing). It does the "
        "TLS handshakes, with the client and with the origin, with the sockets in blocking "
        "mode. Its HTTP parser keeps a copy of each response body, grown by concatenation, "
        "so a long download slows down quadratically: (c) is cut at curl's `--max-time`. "
        "It reads the origin whatever the client's pace (no backpressure), which (d) shows. "
        "Its trivial addon adds a request header, not a response header: proxy.py hands "
        "plugins the response only as raw chunks (bench/addons/proxypy_stamp.py).",
        "- mitmproxy runs with its defaults apart from `-q`, its confdir and "
        "`ssl_verify_upstream_trusted_ca`. "
        "By default mitmproxy buffers whole bodies (`stream_large_bodies` unset), which shows "
        "in (c) and (d); twistproxy streams bodies larger than its `--body-limit`.",
        "- twistproxy runs with `--quiet` (no flow log line); its 'empty addon chain' still "
        "holds the built-in CA page addon. The trivial addon adds one response header "
        "(bench/addons/).",
        "- twisted.web.proxy opens a new upstream connection per request (HTTP/1.0, "
        "`Connection: close`) and has no CONNECT.",
        "- RSS is VmRSS/VmHWM from /proc/PID/status (summed over the worker processes "
        "with `--workers`, and over proxy.py's two processes). In (c) and (d) each run "
        "starts a fresh proxy.",
        *([f"- In (g) each proxy's {s.idle:,} idle connections are opened just before each "
           "of its runs and closed just after it (then the harness waits until the proxy is "
           "idle again), so that one proxy at a time holds idle connections: held by every "
           "proxy through the whole interleaved scenario, they would outlast the 60 s idle "
           "timeout of twistproxy and proxy.py in a full run, and proxy.py, idle but holding "
           "1,000 of them, uses about 15% of the proxy core (the others use none)."]
          if "g" in keys else []),
        "- Before every measured run the harness waits until processes it did not start use "
        f"less than 10% of a core, and it repeats (up to {RETRIES} times) a run during which "
        f"they used more than {MAX_OTHER:.0f}%; `other%` in the runs below is that figure. "
        f"Runs kept although disturbed: {bench.disturbed}.",
    ]
    if others_at_start:
        lines.append("- The machine was not idle when the run started: "
                     + "; ".join(f"`{o}`" for o in others_at_start))
    for key in keys:
        for name, cell in bench.results.get(key, {}).items():
            for note in dict.fromkeys(cell.notes):
                lines.append(f"- {key}, {name}: {note}")
    if ANALYSIS.exists():
        # The written account of the profile: its own title is replaced by ours.
        lines += ["", "## Where the time goes (bench/ANALYSIS.md)", "", _analysis()]
    if errors:
        lines += ["", "## Failures", ""] + [f"- {e}" for e in errors]
    lines += ["", "## Runs", "", "Every measured run (wrk runs: the round, requests/s, p99 "
              "ms, proxy CPU %, proxy max RSS MiB, socket errors, non-2xx; idle_peers_cpu% is "
              "the CPU the scenario's other proxies, idle, used during the run):", ""]
    for key in keys:
        for name, cell in bench.results.get(key, {}).items():
            if cell.details:
                shown = "; ".join(
                    ", ".join(f"{k}={v:.1f}" if isinstance(v, float) else f"{k}={v}"
                              for k, v in d.items() if k != "requests")
                    for d in cell.details)
                lines.append(f"- {key}, {name}: {shown}")
    lines += ["", "## Commands", "",
              "Every distinct command the harness ran, with the ports of this run "
              "(paths relative to the repository; bench/out/ is generated: nginx.conf from "
              "`NGINX_CONF` in bench/run.py):", "", "```"]
    lines += list(COMMANDS.lines)
    lines += ["```", "", "The wrk scripts for twistproxy (the others differ in nothing but "
              "the file name):", ""]
    for key in keys:
        lua = OUT / "lua" / f"{key}-twistproxy.lua"
        if key in ("a", "b", "e", "f") and lua.exists():
            lines += [f"`bench/out/lua/{lua.name}`:", "", "```lua", lua.read_text().strip(),
                      "```", ""]
    return "\n".join(lines)


# -- main -----------------------------------------------------------------------


def ensure_tools(install: bool) -> None:
    missing = [tool for tool in TOOLS if shutil.which(tool) is None]
    if not missing:
        return
    packages = sorted({TOOLS[t] for t in missing})
    command = ["apt-get", "install", "-y", *packages]
    if install and os.geteuid() == 0 and shutil.which("apt-get"):
        os.environ.setdefault("DEBIAN_FRONTEND", "noninteractive")
        print(f"installing {' '.join(packages)} with apt-get ...", flush=True)
        if run(command, timeout=600).returncode != 0:
            run(["apt-get", "update"], timeout=600)
            run(command, timeout=600)
    still = [tool for tool in TOOLS if shutil.which(tool) is None]
    if still:
        needed = ["apt-get", "install", "-y", *sorted({TOOLS[t] for t in still})]
        sys.exit(f"bench: missing {', '.join(still)}; install them with: "
                 f"sudo {shlex.join(needed)}")


def main() -> int:
    parser = argparse.ArgumentParser(
        description="twistproxy's benchmark against proxy.py, mitmproxy and "
        "twisted.web.proxy (see bench/README.md).")
    parser.add_argument("--quick", action="store_true",
                        help="a short smoke run: one run per figure, 2 s wrk runs")
    parser.add_argument("--only", default="",
                        help=f"comma-separated scenarios to run, of: {', '.join(SCENARIOS)}")
    parser.add_argument("--proxies", default=",".join(PROXIES),
                        help=f"comma-separated proxies, of: {', '.join(PROXIES)}")
    parser.add_argument("--no-install", action="store_true",
                        help="do not apt-get install missing tools nor pip install mitmproxy "
                        "and proxy.py")
    parser.add_argument("--max-wait", type=float, default=300.0,
                        help="seconds, over the whole run, to wait for other processes to "
                        "go quiet before runs (default: 300)")
    parser.add_argument("--output", type=Path, default=None,
                        help="where to write the results (default: bench/RESULTS.md for a "
                        "full run, bench/out/RESULTS-quick.md or -partial.md otherwise)")
    args = parser.parse_args()
    keys = [k.strip() for k in args.only.split(",") if k.strip()] or list(SCENARIOS)
    unknown = [k for k in keys if k not in SCENARIOS]
    if unknown:
        parser.error(f"unknown scenario {', '.join(unknown)}; choose from "
                     f"{', '.join(SCENARIOS)}")
    wanted = [p.strip() for p in args.proxies.split(",") if p.strip()]
    if bad := [p for p in wanted if p not in PROXIES]:
        parser.error(f"unknown proxy {', '.join(bad)}")
    settings = QUICK if args.quick else FULL
    output = args.output or (RESULTS if not args.quick and not args.only
                             and sorted(wanted) == sorted(PROXIES)
                             else OUT / f"RESULTS-{'quick' if args.quick else 'partial'}.md")

    _preexec()  # a high descriptor limit, inherited by every child (idle clients, proxies)
    started_at = datetime.datetime.now(datetime.UTC)
    t0 = time.monotonic()
    if (os.cpu_count() or 1) < 2:
        sys.exit("bench: needs at least 2 cores (the proxy on one, the load on the other)")
    ensure_tools(not args.no_install)
    OUT.mkdir(parents=True, exist_ok=True)
    LOGS.mkdir(parents=True, exist_ok=True)
    for old in [*LOGS.glob("*.log"), *(OUT / "lua").glob("*.lua")]:
        old.unlink()
    # The harness's own sampling threads stay off the proxy's core.
    with contextlib.suppress(OSError):
        os.sched_setaffinity(0, {int(LOAD_CORE)})

    def terminate(signum: int, frame: Any) -> None:
        raise SystemExit(f"bench: stopped by signal {signum}")

    signal.signal(signal.SIGTERM, terminate)
    signal.signal(signal.SIGHUP, terminate)
    signal.signal(signal.SIGINT, terminate)  # even when started in the background

    names = ["http", "https", "ws", *PROXIES, *(f"shim-{p}" for p in PROXIES)]
    ports = dict(zip(names, free_ports(len(names)), strict=True))
    origin_ca, cert, key = make_origin_pki(OUT / "pki")
    proxies: list[Proxy] = []
    for name in wanted:
        if name == "twistproxy":
            proxies.append(TwistProxy(origin_ca))
        elif name == "mitmproxy":
            proxies.append(MitmProxy(origin_ca, install=not args.no_install))
        elif name == "proxypy":
            proxies.append(ProxyPy(origin_ca, install=not args.no_install))
        else:
            proxies.append(StockProxy())
    twist = next((p for p in proxies if p.name == "twistproxy"), None)
    workers_ok = bool(twist and twist.workers)
    bench = Bench(settings, ports, proxies, origin_ca, wait_budget=[args.max_wait])
    others_at_start = busy_others()
    if others_at_start:
        print("bench: the machine is not idle; other processes using CPU:\n  "
              + "\n  ".join(others_at_start), flush=True)
    errors: list[str] = []
    try:
        origin = start_origin(ports["http"], ports["https"], cert, key)
        try:
            for key_ in keys:
                if key_ in WRK_SCENARIOS:  # all proxies at once, their runs interleaved
                    print(f"[{time.monotonic() - t0:6.0f} s] {SCENARIOS[key_].title} — "
                          f"{', '.join(p.label for p in proxies)}, interleaved", flush=True)
                    cells = bench.wrk_scenario(key_, proxies, workers_ok, errors)
                    bench.results[key_] = cells
                    for proxy in proxies:
                        print(f"  {proxy.label}: {_summary(key_, cells[proxy.name])}",
                              flush=True)
                else:  # one proxy after the other, a fresh proxy per run
                    for proxy in proxies:
                        print(f"[{time.monotonic() - t0:6.0f} s] {SCENARIOS[key_].title} — "
                              f"{proxy.label}", flush=True)
                        try:
                            cell = bench.measure(key_, proxy, workers_ok)
                        except MEASURE_ERRORS as e:
                            message = f"{key_}, {proxy.label}: {e}"
                            print(f"  FAILED: {message}", flush=True)
                            errors.append(message.splitlines()[0])
                            cell = Cell(na="failed, see Failures")
                        bench.results.setdefault(key_, {})[proxy.name] = cell
                        print(f"  {_summary(key_, cell)}", flush=True)
                if not origin.alive():
                    raise RuntimeError(f"nginx died:\n{origin.tail()}")
        finally:
            origin.stop()
    finally:
        stop_all()
    elapsed = time.monotonic() - t0
    text = report(bench, keys, started_at, elapsed, sys.argv[1:], errors, others_at_start)
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(text)
    print()
    print(table(bench, keys))
    print()
    print(f"total runtime {elapsed / 60:.1f} minutes; written to {_show(str(output))}")
    (OUT / "results.json").write_text(json.dumps({
        k: {n: {"runs": c.runs, "na": c.na, "notes": c.notes, "details": c.details}
            for n, c in v.items()} for k, v in bench.results.items()}, indent=1))
    return 1 if errors else 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    finally:
        stop_all()
