# -*- test-case-name: tests.test_web_api,tests.e2e.test_web_api_e2e -*-
"""
:class:`WebUI`: the web UI's parts (store, addons, token) and the service
that serves it (``twistd twistproxy --web``).
"""

from __future__ import annotations

import ipaddress
import os
import sqlite3
from functools import partial
from typing import Any

from twisted.application.service import Service
from twisted.internet.error import CannotListenError
from twisted.internet.interfaces import IListeningPort
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger
from twisted.web.server import Site

from twistproxy.http import HTTPFlow
from twistproxy.web._guard import Guard, new_token
from twistproxy.web.addon import WebIntercept, WebRecorder
from twistproxy.web.api import WebRoot
from twistproxy.web.store import FlowStore

_log = Logger(namespace="twistproxy.web")

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8081


def _is_loopback(host: str) -> bool:
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class WebUI:
    """
    The web UI of one proxy: its flow store, its addons (add
    :attr:`addons` last to the proxy's) and its service.

    :param reactor: The reactor (listening, the store's batch timer, its thread
        pool for sorting).
    :param host: The address to listen on.
    :param port: The port (0: any free one).
    :param store: The SQLite file (``None``: a temporary one).
    :param token: The token (``None``: a new random one).
    """

    def __init__(self, *, reactor: Any, host: str = DEFAULT_HOST, port: int = DEFAULT_PORT,
                 store: str | os.PathLike[str] | None = None, token: str | None = None) -> None:
        self.reactor = reactor
        self.host = host
        self.port = port
        # Sorting reads every row: in the reactor's thread pool, not its thread.
        self.store = FlowStore(store, in_thread=partial(
            deferToThreadPool, reactor, reactor.getThreadPool()))
        self.recorder = WebRecorder(self.store, clock=reactor)
        self.intercept = WebIntercept(self.recorder)
        names = frozenset() if _is_loopback(host) or _is_address(host) else {host}
        self.guard = Guard(token or new_token(), port, frozenset(names))
        self.replay: Any = None  # a ClientReplay, for the UI's replays

    @classmethod
    def from_options(cls, options: Any, reactor: Any) -> WebUI | None:
        """
        The web UI the twistd options ask for (``--web``), else ``None``.

        :raises SystemExit: with one line if ``--web-store`` cannot be opened.
        """
        if not options["web"]:
            return None
        try:
            return cls(reactor=reactor, host=options["web-host"], port=options["web-port"],
                       store=options["web-store"])
        except (OSError, sqlite3.Error) as e:
            raise SystemExit(f"twistproxy: --web-store {options['web-store']}: {e}") from e

    @property
    def addons(self) -> list[object]:
        """The addons to run last: the intercept filter, then the recorder."""
        return [self.intercept, self.recorder]

    @property
    def url(self) -> str:
        """The URL to open, token included."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        if self.host in ("0.0.0.0", "::"):
            host = "127.0.0.1"
        return f"http://{host}:{self.guard.port}/?token={self.guard.token}"

    def _replay(self, flow: HTTPFlow) -> str | None:
        replay = self.replay
        if replay is None:
            return "no proxy to replay through"
        reason: str | None = replay.check(flow)
        if reason is None:
            replay.start_replay([flow])
        return reason

    def site(self) -> Site:
        """The twisted.web site serving the UI."""
        root = WebRoot(self.guard, self.recorder, self.intercept, self._replay)
        site = Site(root)
        site.displayTracebacks = False
        return site

    def service(self, *, closes_store: bool = True) -> Service:
        """
        The service listening with :meth:`site` while running.

        :param closes_store: Whether stopping it also closes (:meth:`close`) the
            store.  Pass ``False`` when the proxy's flows may still end after
            it stops (its drain), and call :meth:`close` once they ended:
            ``twistd twistproxy --web`` closes the store after the drain.
        """
        return _WebService(self, closes_store)

    def close(self) -> None:
        """Write the flows still pending to the store and close it."""
        self.recorder.close()
        self.store.close()


def _is_address(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


class _WebService(Service):
    """
    Listens for the UI; when stopped, stops listening and (with
    *closes_store*) writes what is pending and closes the store.
    """

    def __init__(self, ui: WebUI, closes_store: bool = True) -> None:
        self._ui = ui
        self._closes_store = closes_store
        self.port: IListeningPort | None = None

    def startService(self) -> None:
        ui = self._ui
        try:
            self.port = ui.reactor.listenTCP(ui.port, ui.site(), interface=ui.host)
        except CannotListenError as e:
            raise SystemExit(f"twistproxy: --web cannot listen on {ui.host}:{ui.port}: "
                             f"{e.socketError}") from e
        super().startService()
        ui.guard.port = self.port.getHost().port  # type: ignore[union-attr]  # a TCP port
        _log.info("web UI: {url}", url=ui.url)
        if not _is_loopback(ui.host):
            _log.warn(
                "the web UI listens on {host}: whoever can reach this port and learns the "
                "token sees every flow (cookies, credentials) and can change them. Listen on "
                "loopback (--web-host 127.0.0.1) and use an SSH tunnel to reach it.",
                host=ui.host)

    def stopService(self) -> Any:
        super().stopService()
        port, self.port = self.port, None
        if self._closes_store:
            self._ui.close()
        if port is not None:
            return port.stopListening()
        return None
