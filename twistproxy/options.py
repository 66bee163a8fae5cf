# -*- test-case-name: tests.test_tap -*-
"""
The options of ``twistd twistproxy``: :class:`Options`, what each option
means, how its value is read and checked, and which combinations are
refused (one line each, never a traceback).

The converters the options use are in :mod:`twistproxy._options`; what the
parsed options build (the listeners, the addons, the services) is
:mod:`twistproxy.tap`'s.
"""

from __future__ import annotations

import re
import resource
import sys
from typing import Any

from twisted.internet.endpoints import serverFromString
from twisted.python import usage

from twistproxy._options import (
    at_least_one,
    ca_directory,
    host_pattern,
    positive,
    proxy_auth,
    read_recordings,
    regex,
    seconds,
    whole,
    worker_count,
)
from twistproxy._rewrite_options import RewriteOptions
from twistproxy._tls import GivenCertificate, UpstreamTLS
from twistproxy._upstream_proxy import check_upstream_auth
from twistproxy.addonopts import OptionsError
from twistproxy.addons.access import HostPolicy, parse_user
from twistproxy.addons.script import AddonFile
from twistproxy.errors import AddonError
from twistproxy.filters import FilterError
from twistproxy.filters import parse as parse_filter
from twistproxy.lifecycle import AddonManager
from twistproxy.limits import DEFAULT_BACKLOG, Limits
from twistproxy.modes import REGULAR, Mode, parse_mode
from twistproxy.proxy import CONNECTION_STRATEGIES, DEFAULT_BODY_LIMIT
from twistproxy.proxyprotocol import PREFIX, split_prefix
from twistproxy.replay import UNMATCHED
from twistproxy.service import DEFAULT_SHUTDOWN_TIMEOUT

_SIZE = re.compile(r"(\d+)\s*([kmg]?)i?b?\Z", re.IGNORECASE)
_UNITS = {"": 1, "k": 1024, "m": 1024**2, "g": 1024**3}


def parse_size(text: str) -> int:
    """
    Parse a byte count such as ``1048576``, ``512k``, ``1m`` or ``2GiB``.

    :raises ValueError: if *text* is not such a size.
    """
    match = _SIZE.match(text.strip())
    if match is None:
        raise ValueError(f"{text!r} is not a size (examples: 65536, 512k, 1m)")
    return int(match.group(1)) * _UNITS[match.group(2).lower()]


def default_max_connections() -> int:
    """
    How many client connections fit in this process's file-descriptor limit:
    each takes two descriptors (the client's and the server's), and some are
    kept for listening sockets, logs and files.
    """
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        return 0
    return max(16, (soft - 64) // 2)


class Options(RewriteOptions):
    """
    Command-line options for ``twistd twistproxy`` (the rewrites' are
    :class:`~twistproxy._rewrite_options.RewriteOptions`').
    """

    synopsis = "[twistproxy options]"
    longdesc = (
        "Run an intercepting HTTP/HTTPS proxy. Point clients at it "
        "(curl -x http://127.0.0.1:8080 http://example.com/); every flow passes "
        "through the addons given with --addon and is logged in one line. HTTPS "
        "is intercepted with a CA made in --ca-dir on first start: clients must "
        "trust its certificate (http://twistproxy/ through the proxy serves it). "
        "Listening beyond 127.0.0.1, require a password with --proxy-auth (which shows "
        "in the process list) or --proxy-auth-file: the CA page too is behind it. "
        "--allow-hosts and --block-hosts patterns are host names (example.com: the domain "
        "and its subdomains), regular expressions that must match a whole host name or "
        "domain, optionally with :port (case-insensitive), or filter expressions when "
        "they start with ~ or ! or are one in parentheses (~d matches whole host names "
        "there too); "
        "they apply to CONNECT and to every request, inside intercepted tunnels too. "
        "Modes (--mode, repeatable, one listener each, on 127.0.0.1:8080 unless "
        "@[ADDRESS:]PORT follows): regular (the default; --port is its short form), "
        "reverse:http[s]://HOST[:PORT] (in front of that origin; clients may speak "
        "TLS, answered with a certificate from the CA), upstream:http[s]://HOST[:PORT] "
        "(a regular proxy sending everything through that proxy: plain HTTP in absolute "
        "form, the rest through CONNECT, still intercepted here; --upstream-auth USER:PASS "
        "logs in to it), socks5 (a SOCKS5 server, port "
        "1080 by default; with --proxy-auth it requires a username/password login), "
        "transparent (Linux: connections redirected here by iptables/nftables REDIRECT "
        "go where they were going). Through socks5 and transparent listeners, TLS is "
        "intercepted and HTTP served as flows as inside a CONNECT tunnel, and "
        "--allow-hosts/--block-hosts apply to the destination. "
        "Addon files are reloaded when they change; the options their addons declare are "
        "set with --set NAME=VALUE and listed by --options."
    )
    optParameters = [
        [
            "body-limit",
            None,
            DEFAULT_BODY_LIMIT,
            "Bodies up to this size (bytes, or with k/m/g) are buffered so hooks "
            "see them whole; larger ones stream through.",
            parse_size,
        ],
        [
            "timeout",
            None,
            60.0,
            "Seconds an idle client connection is kept open.",
            positive,
        ],
        [
            "connect-timeout",
            None,
            30.0,
            "Seconds to wait for a connection to a server (then 504).",
            positive,
        ],
        [
            "ca-dir",
            None,
            "~/.twistproxy",
            "Directory of the CA that signs intercepted HTTPS; created (0700) on first start, "
            "in a directory that must exist.",
            ca_directory,
        ],
        ["ca", None, None, "Use this CA instead (one PEM file holding its key and certificate)."],
        [
            "upstream-ca",
            None,
            None,
            "Trust the CA certificates in this PEM file for servers, not the system's.",
        ],
        [
            "upstream-auth",
            None,
            None,
            "Upstream mode: log in to the upstream proxy as USER:PASS (Basic; shows in "
            "the process list).",
        ],
        [
            "proxy-auth-file",
            None,
            None,
            "Require proxy authentication (Basic) for the user:password lines of this "
            "file ('#' comments allowed).",
        ],
        ["save", "w", None, "Append every completed flow to this flow file (JSON lines)."],
        ["save-filter", None, None, "Save only the flows this filter expression accepts."],
        [
            "replay-unmatched",
            None,
            "forward",
            "Server replay: forward, kill or 404 requests no recording matches.",
        ],
        [
            "replay-concurrency",
            None,
            1,
            "Client replay: how many flows are replayed at once.",
            at_least_one,
        ],
        [
            "max-connections",
            None,
            None,
            "Client connections served at once; more get 503 (0: no limit). "
            "[default: what the file-descriptor limit allows]",
            whole,
        ],
        [
            "header-timeout",
            None,
            30.0,
            "Seconds a client may take to send a request head (then 408).",
            positive,
        ],
        [
            "upstream-timeout",
            None,
            120.0,
            "Seconds a server may stay silent (then 504, or an aborted response).",
            positive,
        ],
        [
            "connection-strategy",
            None,
            None,
            "eager: an intercepted CONNECT connects to its target before it is "
            "answered (an unreachable target is its 502/504); lazy: only when a "
            "request inside needs it. [default: eager; lazy with --server-replay and "
            "--replay-unmatched kill or 404]",
        ],
        [
            "sniff-timeout",
            None,
            3.0,
            "Seconds an intercepted tunnel waits for the client's first bytes "
            "(TLS or HTTP) before relaying it raw.",
            positive,
        ],
        [
            "hook-timeout",
            None,
            60.0,
            "Seconds a hook's Deferred or coroutine may take (then 500).",
            seconds("--hook-timeout"),
        ],
        [
            "intercept-timeout",
            None,
            None,
            "Seconds an intercepted flow waits for resume() (then 500). [default: no limit]",
            seconds("--intercept-timeout"),
        ],
        [
            "max-header-size",
            None,
            64 * 1024,
            "Bytes in a request head (then 431) or a response's headers (then 502).",
            parse_size,
        ],
        [
            "max-request-line",
            None,
            8 * 1024,
            "Bytes in a request line (then 414).",
            parse_size,
        ],
        [
            "max-websocket-message",
            None,
            10 * 1024 * 1024,
            "Bytes in one WebSocket message, uncompressed (then the WebSocket closes with 1009).",
            parse_size,
        ],
        [
            "shutdown-timeout",
            None,
            DEFAULT_SHUTDOWN_TIMEOUT,
            "Seconds the exchanges in flight may take to finish when the proxy stops "
            "(SIGTERM); then they are answered 503 or aborted. 0: at once.",
            seconds("--shutdown-timeout", zero=True),
        ],
        [
            "body-timeout",
            None,
            30.0,
            "Seconds over which a request body's pace is measured: each such window "
            "must bring --body-min-rate bytes a second on average (then 408, or an "
            "aborted connection once an answer started).",
            seconds("--body-timeout"),
        ],
        [
            "body-min-rate",
            None,
            500,
            "Bytes per second a request body must keep up over each --body-timeout "
            "window (0: one byte per window).",
            whole,
        ],
        [
            "backlog",
            None,
            DEFAULT_BACKLOG,
            "Connections the kernel queues for each listener before they are accepted "
            "(capped by net.core.somaxconn).",
            at_least_one,
        ],
        [
            "workers",
            None,
            1,
            "Worker processes serving the port ('auto': one per core); a dead one restarts, "
            "later each time it fails again within 10 s of starting.",
            worker_count,
        ],
        [
            "restart-limit",
            None,
            5,
            "--workers: give up (stop, exit 1) when a worker failed this many times in a row "
            "within 10 s of starting.",
            at_least_one,
        ],
        ["web-host", None, "127.0.0.1", "--web: the address the web UI listens on."],
        ["web-port", None, 8081, "--web: the web UI's port (0: any free one).", whole],
        ["web-store", None, None, "--web: keep the UI's flows in this SQLite file "
         "(kept after exit). [default: a temporary file]"],
        [
            "metrics-port",
            None,
            None,
            "Serve Prometheus metrics (/metrics) and a health check (/healthz: 200 once "
            "the CA is loaded and the listeners are up, 503 while stopping) on this port "
            "(on 127.0.0.1) or endpoint. [default: off]",
        ],
        [
            "drain-delay",
            None,
            0.0,
            "Seconds the listeners keep accepting after SIGTERM while /healthz says 503, "
            "so a load balancer stops sending first; then the drain starts.",
            seconds("--drain-delay", zero=True),
        ],
        ["metrics-dir", None, None, "(internal) --workers' shared metrics directory."],
        ["worker-number", None, 0, "(internal) Which of --workers' processes this is.", whole],
    ]
    optFlags = [
        ["quiet", "q", "Do not log a line for every flow."],
        ["options", None, "List the options the --addon files' addons declare (name, type, "
         "default, help) and exit."],
        ["no-intercept", None, "Pass every CONNECT tunnel through untouched (no CA needed)."],
        [
            "keep-host-header",
            None,
            "Reverse mode: send the client's Host to the origin, not the origin's own.",
        ],
        [
            "reverse-rewrite",
            None,
            "Reverse mode: rewrite the origin's Location headers and cookie Domains that "
            "name it to the host the client reached.",
        ],
        ["insecure", None, "Do not verify servers' certificates (testing only)."],
        ["replay-ignore-content", None, "Server replay: do not match request bodies."],
        ["exit-after-replay", None, "Stop once every --client-replay flow was replayed "
         "(exit status 1 when there is nothing to replay)."],
        [
            "skip-invalid-flows",
            None,
            "Replay: skip (and count) the lines or HAR entries of --client-replay and "
            "--server-replay files that cannot be read, instead of refusing the file.",
        ],
        ["web", None, "Serve the web UI (see docs/web.rst); its URL, with a token, is logged "
         "at start."],
        [
            "proxy-protocol",
            None,
            "Every listener expects the PROXY protocol (v1 or v2, HAProxy's send-proxy) "
            "and serves each connection as the client its header names; a connection "
            "without one is closed. (Or prefix --port's endpoint with haproxy:.)",
        ],
        ["worker", None, "(internal) Run as one of --workers' processes."],
    ]

    _failed = False

    def __init__(self) -> None:
        super().__init__()
        self["port"] = None
        self["mode"] = []
        self["certs"] = []
        self["addon"] = []
        self["addons"] = []
        self["set"] = []
        self["ignore-hosts"] = []
        self["proxy-auth"] = []
        self["allow-hosts"] = []
        self["block-hosts"] = []
        self["server-replay"] = []
        self["client-replay"] = []
        self["replay-ignore-param"] = []
        self["replay-match-header"] = []

    def opt_port(self, port: str) -> None:
        """Where to listen: a port (on 127.0.0.1) or an endpoint (tcp:8080:interface=0.0.0.0)."""
        if self["port"] is not None:
            raise usage.UsageError(
                f"--port given twice ({self['port']}, {port}): to listen on several "
                "ports, give --mode regular@PORT once for each")
        self["port"] = port

    opt_p = opt_port

    def opt_mode(self, text: str) -> None:
        """Listen in MODE[:URL][@[ADDRESS:]PORT] (see docs/modes.rst); repeatable."""
        try:
            mode = parse_mode(text)
        except ValueError as e:
            raise usage.UsageError(f"--mode {e}") from None
        self["mode"].append(mode)

    def opt_certs(self, spec: str) -> None:
        """Present this PEM (key, certificate, chain) for names matching DOMAIN: [DOMAIN=]PATH."""
        pattern, sep, path = spec.partition("=")
        if not sep:
            pattern, path = "*", spec
        try:
            self["certs"].append(GivenCertificate(pattern, path))
        except ValueError as e:
            raise usage.UsageError(f"--certs {e}") from None

    def opt_server_replay(self, path: str) -> None:
        """Answer requests from the flows recorded in this file (or .har); repeatable."""
        self["server-replay"].append(path)

    def opt_client_replay(self, path: str) -> None:
        """Re-send the requests recorded in this file (or .har) at start; repeatable."""
        self["client-replay"].append(path)

    def opt_replay_ignore_param(self, name: str) -> None:
        """Server replay: leave this query parameter out of matching; repeatable."""
        self["replay-ignore-param"].append(name)

    def opt_replay_match_header(self, name: str) -> None:
        """Server replay: match this request header too (none by default); repeatable."""
        self["replay-match-header"].append(name)

    def opt_addon(self, path: str) -> None:
        """Load addons from a Python file defining 'addons = [...]'; repeatable."""
        self["addon"].append(path)

    def opt_set(self, spec: str) -> None:
        """Set an addon's option: NAME=VALUE (NAME alone: true); repeatable. See --options."""
        self["set"].append(spec)

    def opt_ignore_hosts(self, pattern: str) -> None:
        """Pass tunnels whose host:port matches this regex through untouched; repeatable."""
        self["ignore-hosts"].append(regex("--ignore-hosts", pattern))

    def opt_proxy_auth(self, credentials: str) -> None:
        """Require Basic proxy authentication; accept this USER:PASS. Repeatable."""
        try:
            parse_user(credentials)
        except ValueError as e:
            raise usage.UsageError(f"--proxy-auth: {e} (expected USER:PASS)") from None
        self["proxy-auth"].append(credentials)

    def opt_allow_hosts(self, pattern: str) -> None:
        """Refuse (403) destinations that no such pattern matches. Repeatable."""
        self["allow-hosts"].append(host_pattern("--allow-hosts", pattern))

    def opt_block_hosts(self, pattern: str) -> None:
        """Refuse (403) destinations this pattern matches, even if allowed. Repeatable."""
        self["block-hosts"].append(host_pattern("--block-hosts", pattern))

    def opt_version(self) -> None:
        """Print twistproxy's version (and Twisted's and Python's) and exit."""
        import platform

        from twisted.copyright import version as twisted_version

        from twistproxy import __version__

        print(f"twistproxy {__version__} (Twisted {twisted_version}, "
              f"Python {platform.python_version()})")
        sys.exit(0)

    raw_args: list[str] = []

    def parseOptions(self, options: Any = None) -> None:
        """Parse *options*; on an error, :meth:`getUsage` shrinks to a hint."""
        self.raw_args = list(sys.argv[1:] if options is None else options)
        try:
            super().parseOptions(options)
        except usage.UsageError:
            self._failed = True
            raise

    def getUsage(self, width: int | None = None) -> str:
        """The full help, or after a bad option only a hint where to find it."""
        if self._failed:
            # twistd has printed its own "Usage:" line just before this.
            return "Run 'twistd twistproxy --help' for the options.\n"
        return super().getUsage(width)

    def postOptions(self) -> None:
        """Check the listening addresses and load the addon files."""
        self["listeners"] = _listeners(self["port"], self["mode"])
        if self["proxy-protocol"] or any(split_prefix(d)[1] for _, d in self["listeners"]):
            self["proxy-protocol"] = True
            self["listeners"] = [(mode, PREFIX + split_prefix(description)[0])
                                 for mode, description in self["listeners"]]
        self["metrics-endpoint"] = _metrics_endpoint(self["metrics-port"])
        self["endpoint"] = self["listeners"][0][1]
        self._addon_options()
        try:
            self["upstream-tls"] = UpstreamTLS(
                ca_file=self["upstream-ca"], insecure=self["insecure"]
            )
        except ValueError as e:
            raise usage.UsageError(f"--upstream-ca {e}") from e
        if self["replay-unmatched"] not in UNMATCHED:
            raise usage.UsageError(
                f"--replay-unmatched {self['replay-unmatched']}: "
                f"choose one of {', '.join(UNMATCHED)}"
            )
        self["proxy-auth-addon"] = proxy_auth(self["proxy-auth"], self["proxy-auth-file"])
        if self["proxy-auth-addon"] is not None and any(
                mode.kind == "transparent" for mode in self["mode"]):
            raise usage.UsageError(
                "--mode transparent with proxy authentication: redirected clients do not "
                "know there is a proxy to log in to; run the transparent listener in another "
                "twistproxy")
        self["host-policy"] = None
        if self["allow-hosts"] or self["block-hosts"]:
            self["host-policy"] = HostPolicy(allow=self["allow-hosts"], block=self["block-hosts"])
        self["save-filter-parsed"] = None
        if self["save-filter"] is not None:
            try:
                self["save-filter-parsed"] = parse_filter(self["save-filter"])
            except FilterError as e:
                raise usage.UsageError(f"--save-filter: {e}") from e
        skip = self["skip-invalid-flows"]
        self["server-replay-flows"] = read_recordings(
            "--server-replay", self["server-replay"], skip_invalid=skip)
        self["client-replay-flows"] = read_recordings(
            "--client-replay", self["client-replay"], skip_invalid=skip)
        if skip and not (self["server-replay"] or self["client-replay"]):
            raise usage.UsageError("--skip-invalid-flows needs --client-replay or --server-replay")
        if self["exit-after-replay"] and not self["client-replay"]:
            raise usage.UsageError("--exit-after-replay needs --client-replay")
        if self["save-filter"] is not None and self["save"] is None:
            raise usage.UsageError("--save-filter needs --save")
        replay_only = [
            name for name, value in (
                ("--replay-ignore-param", self["replay-ignore-param"]),
                ("--replay-match-header", self["replay-match-header"]),
                ("--replay-ignore-content", self["replay-ignore-content"]),
                ("--replay-unmatched", self["replay-unmatched"] != "forward"),
            ) if value
        ]
        if replay_only and not self["server-replay"]:
            raise usage.UsageError(f"{', '.join(replay_only)} needs --server-replay")
        strategy = self["connection-strategy"]
        if strategy is None:
            # Replaying without forwarding may well be offline: connect only
            # for what is not answered from the recordings.
            offline = self["server-replay"] and self["replay-unmatched"] != "forward"
            strategy = self["connection-strategy"] = "lazy" if offline else "eager"
        if strategy not in CONNECTION_STRATEGIES:
            raise usage.UsageError(
                f"--connection-strategy {strategy}: "
                f"choose one of {', '.join(CONNECTION_STRATEGIES)}"
            )
        if self["workers"] > 1 and self["client-replay"]:
            raise usage.UsageError("--client-replay runs in one process: use --workers 1")
        web_only = [f"--{name}" for name in ("web-host", "web-port", "web-store")
                    if self[name] != self.defaults[name]]
        if web_only and not self["web"]:
            raise usage.UsageError(f"{', '.join(web_only)} needs --web")
        if self["web-port"] > 65535:
            raise usage.UsageError(f"--web-port {self['web-port']}: not a port number")
        if self["workers"] > 1 and self["web"]:
            raise usage.UsageError("--web runs in one process: use --workers 1")
        if self["workers"] > 1 and self["mode"]:
            raise usage.UsageError("--workers serves one --port listener: no --mode with it yet")
        if self["certs"] and self["no-intercept"]:
            raise usage.UsageError("--certs presents certificates where the proxy speaks "
                                   "TLS to clients: not with --no-intercept")
        for flag in ("keep-host-header", "reverse-rewrite"):
            if self[flag] and not any(m.kind == "reverse" for m in self["mode"]):
                raise usage.UsageError(f"--{flag} needs a --mode reverse:...")
        try:
            check_upstream_auth(self["upstream-auth"], self["mode"])
        except ValueError as e:
            raise usage.UsageError(f"--upstream-auth {e}") from None
        maximum = self["max-connections"]
        try:
            self["limits"] = Limits(
                max_request_line=self["max-request-line"],
                max_header_size=self["max-header-size"],
                max_response_header_size=self["max-header-size"],
                header_timeout=self["header-timeout"],
                upstream_timeout=self["upstream-timeout"],
                sniff_timeout=self["sniff-timeout"],
                max_connections=default_max_connections() if maximum is None else maximum,
                max_websocket_message=self["max-websocket-message"],
                body_timeout=self["body-timeout"],
                body_min_rate=self["body-min-rate"],
            )
        except ValueError as e:
            raise usage.UsageError(str(e)) from e


    def _addon_options(self) -> None:
        """
        Load the addon files (their addons' ``load`` declares their
        options), list the options for ``--options``, apply ``--set`` and
        configure the addons (not in a ``--workers`` supervisor, which runs
        none).
        """
        try:
            self["addon-files"] = files = [AddonFile(path) for path in self["addon"]]
            manager = AddonManager([addon for file in files for addon in file.addons])
        except AddonError as e:
            raise usage.UsageError(f"--addon {e}") from e
        self["addon-manager"] = manager
        self["addons"] = list(manager.addons)
        if self["options"]:
            sys.stdout.write(manager.options.listing())
            raise SystemExit(0)
        try:
            manager.options.set(*self["set"])
        except OptionsError as e:
            raise usage.UsageError(f"--set {e}") from e
        if self["workers"] <= 1 or self["worker"]:
            try:
                manager.configure()
            except AddonError as e:
                raise usage.UsageError(f"--addon {e}") from e


def _endpoint(option: str, text: str) -> str:
    """
    The server endpoint description *text* gives *option* (``--port``): a
    port number listens on 127.0.0.1, anything else is an endpoint.

    :raises usage.UsageError: for a bad port or endpoint.
    """
    description = text
    if text.isdigit():
        if not 0 <= int(text) < 65536:
            raise usage.UsageError(f"{option} {text}: not a port number")
        description = f"tcp:{text}:interface=127.0.0.1"
    try:
        serverFromString(None, description)
    except Exception as e:  # parsers raise anything: ValueError, OSError for ssl: files...
        raise usage.UsageError(f"{option} {text}: not a port or endpoint ({e})") from e
    return description


def _metrics_endpoint(port: str | None) -> str | None:
    """
    The server endpoint description of ``--metrics-port`` *port* (a port
    number listens on 127.0.0.1), or ``None`` without one.

    :raises usage.UsageError: for a bad *port*.
    """
    if port is None:
        return None
    description = _endpoint("--metrics-port", port)
    if split_prefix(description)[1]:
        raise usage.UsageError(f"--metrics-port {port}: the PROXY protocol is for --port")
    return description


def _listeners(port: str | None, modes: list[Mode]) -> list[tuple[Mode, str]]:
    """
    Each listener's mode and server endpoint description: *port* (the
    short form of one regular listener) or the *modes*.

    :raises usage.UsageError: for a bad *port*, both, or two listeners on
        one port.
    """
    if port is not None and modes:
        raise usage.UsageError(
            "--port and --mode: --port is the short form of --mode regular@PORT; "
            "with --mode, give each listener's port after its @")
    if not modes:
        return [(REGULAR, _endpoint("--port", "8080" if port is None else port))]
    listeners = [(mode, mode.endpoint()) for mode in modes]
    seen: dict[int, Mode] = {}
    for mode, _ in listeners:
        listen_port = mode.listen_port if mode.listen_port is not None else mode.default_port
        if listen_port in seen and listen_port != 0:
            raise usage.UsageError(
                f"--mode {seen[listen_port]} and --mode {mode} both listen on port "
                f"{listen_port}: give one of them another with @PORT")
        seen[listen_port] = mode
    return listeners


