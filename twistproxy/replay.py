# -*- test-case-name: tests.test_replay -*-
"""
Replaying recorded flows.

:class:`ClientReplay` sends recorded requests again, through the proxy's own
upstream pool and the same ``request``/``response``/``error`` hooks as live
traffic, and records the new response on the flow (its old state is kept by
``flow.backup()``).  Flows wait in one ``DeferredQueue``; *concurrency*
workers take them, so one slow (long-polling) request does not hold up the
others when there are several workers.

:class:`ServerReplay` is an addon that answers requests from recordings
instead of contacting the server.
"""

from __future__ import annotations

import hashlib
import time
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl

from twisted.application.service import Service
from twisted.internet.abstract import isIPAddress, isIPv6Address
from twisted.internet.defer import CancelledError, Deferred, DeferredQueue, succeed
from twisted.logger import Logger
from twisted.python.failure import Failure

from twistproxy import _headers
from twistproxy._framing import forwarded_request, request_framing
from twistproxy._headers import check_request
from twistproxy._upstream import UpstreamExchange
from twistproxy.connection import Server
from twistproxy.flow import Error
from twistproxy.headers import Headers
from twistproxy.hooks import Addon
from twistproxy.http import HTTPFlow, Response

if TYPE_CHECKING:
    from twistproxy.proxy import ProxyFactory

_log = Logger(namespace="twistproxy.replay")

UNMATCHED = ("forward", "kill", "404")
"""What :class:`ServerReplay` does with a request no recording matches."""


class ClientReplay:
    """
    Re-sends recorded requests.

    :param factory: The proxy whose hooks and upstream pool replays use.
    :param concurrency: How many flows are replayed at once.
    """

    def __init__(self, factory: ProxyFactory, *, concurrency: int = 1) -> None:
        if concurrency < 1:
            raise ValueError("concurrency must be at least 1")
        self._factory = factory
        self._queue: DeferredQueue[HTTPFlow] = DeferredQueue()
        self._in_flight = 0
        self._workers: list[Deferred[None]] = []
        self._drained: list[Deferred[None]] = []
        self._concurrency = concurrency

    # -- the queue ------------------------------------------------------------

    def check(self, flow: HTTPFlow) -> str | None:
        """
        Why *flow* cannot be replayed, or ``None`` when it can.
        """
        request = flow.request
        if flow.live:
            return "the flow is live"
        if flow.intercepted:
            return "the flow is intercepted"
        if request is None:
            return "the flow has no request"
        if request.method == "CONNECT":
            return "a CONNECT flow opens a tunnel; replay the requests inside it"
        if request.raw_content is None:
            return "the request body was not recorded"
        if request.truncated:
            return (f"only the first {len(request.raw_content)} of the request body's "
                    f"{request.body_size} bytes were recorded (it streamed past the body limit)")
        return None

    def start_replay(self, flows: Iterable[HTTPFlow]) -> int:
        """
        Queue *flows* for replay, skipping (with a warning) those
        :meth:`check` refuses; starts the workers if need be.

        :returns: How many flows were queued.
        """
        queued = 0
        for flow in flows:
            reason = self.check(flow)
            if reason is not None:
                url = flow.request.url if flow.request is not None else flow.id
                _log.warn("not replaying {url}: {reason}", url=url, reason=reason)
                continue
            self._queue.put(flow)
            queued += 1
        self._start_workers()
        return queued

    def count(self) -> int:
        """How many flows are waiting or being replayed."""
        return len(self._queue.pending) + self._in_flight

    def stop(self) -> None:
        """Drop the flows still waiting; those being replayed finish."""
        self._queue.pending.clear()
        self._maybe_drained()

    def when_drained(self) -> Deferred[None]:
        """A Deferred firing once no flow is waiting or being replayed."""
        if self.count() == 0:
            return succeed(None)
        d: Deferred[None] = Deferred()
        self._drained.append(d)
        return d

    def close(self) -> None:
        """Stop the queue and the idle workers (those replaying finish first)."""
        self.stop()
        workers, self._workers = self._workers, []
        for worker in workers:
            worker.cancel()

    def _start_workers(self) -> None:
        while len(self._workers) < self._concurrency:
            worker = Deferred.fromCoroutine(self._work())
            worker.addErrback(lambda f: f.trap(CancelledError))
            self._workers.append(worker)

    async def _work(self) -> None:
        while True:
            flow = await self._queue.get()
            self._in_flight += 1
            try:
                await self.replay(flow)
            finally:
                self._in_flight -= 1
                self._maybe_drained()

    def _maybe_drained(self) -> None:
        if self.count() == 0:
            drained, self._drained = self._drained, []
            for d in drained:
                d.callback(None)

    # -- one flow ---------------------------------------------------------------

    async def replay(self, flow: HTTPFlow) -> HTTPFlow:
        """
        Replay *flow* now: ``request`` hooks, the request sent upstream, the
        new response recorded and the ``response`` hooks run (``error``
        hooks on failure).  The old state stays in ``flow.backup()``.
        """
        factory = self._factory
        chain = factory.chain
        now = factory.reactor.seconds
        flow.backup()
        flow.is_replay = "request"
        flow.response = None
        flow.error = None
        flow.live = True
        assert flow.request is not None
        flow.request.timestamp_start = now()
        try:
            await _wait(chain.run("request", flow) if chain.has("request") else None)
            if flow.killed:
                return flow
            if flow.response is None:
                flow.response = await self._send(flow)
            await _wait(chain.run("response", flow) if chain.has("response") else None)
        except Exception as e:
            if flow.error is None:
                flow.error = Error(str(e) or type(e).__name__, now())
            _log.info("replaying {url} failed: {error}", url=flow.request.url, error=flow.error.msg)
            try:
                await _wait(chain.run("error", flow) if chain.has("error") else None)
            except Exception:
                pass  # logged by the chain
        finally:
            flow.live = False
        return flow

    async def _send(self, flow: HTTPFlow) -> Response:
        """
        Send *flow*'s request through the pool's one upstream path, as live
        requests go: ``server_connected`` for a new connection, the loop and
        silence checks, the one retry rule.

        :raises InvalidMessage: if the request holds a field that cannot be
            written (before anything is sent).
        """
        request = flow.request
        assert request is not None
        check_request(request)
        factory = self._factory
        content = request.raw_content or b""
        framing = forwarded_request(request_framing(request.headers.fields), len(content))
        pool = factory.pool
        key = pool.key_for(request.scheme, request.host, request.port, _server_name(flow))
        data = [_headers.request_head(request, framing, factory.via, proxy=pool.proxy_fields(key))]
        if content:
            data.append(content)
        chain = factory.chain
        collector = _Collector(flow, data, factory.reactor.seconds)
        upstream = UpstreamExchange(
            pool,
            key,
            collector,
            method=request.method.encode("ascii"),
            timeout=factory.limits.upstream_timeout,
            on_connected=(
                (lambda server: chain.run("server_connected", server))
                if chain.has("server_connected")
                else None
            ),
        )
        collector.upstream = upstream
        upstream.open()
        return await collector.done


class ClientReplayService(Service):
    """
    Replays *flows* once the service starts (twistd's ``--client-replay``),
    and logs a line counting the answered and failed replays when they are
    done.  With nothing it can replay it says so: with *stop* (twistd's
    ``--exit-after-replay``) :meth:`startService` raises ``SystemExit``
    with that line (twistd exits with status 1), else it is a warning.

    :param replay: The client replay to queue the flows on.
    :param flows: The recorded flows.
    :param reactor: Runs *stop* once it is running.
    :param stop: Called once every flow was replayed (or failed), if given.
    """

    def __init__(
        self,
        replay: ClientReplay,
        flows: list[HTTPFlow],
        *,
        reactor: Any,
        stop: Callable[[], object] | None,
    ) -> None:
        self._reactor = reactor
        self._replay = replay
        self._flows = flows
        self._stop = stop

    def startService(self) -> None:
        """Queue the flows; see the class docstring."""
        super().startService()
        queued = self._replay.start_replay(self._flows)
        if not queued:
            message = (f"--client-replay: nothing to replay: none of the {len(self._flows)} "
                       "recorded flows can be replayed (see the warnings above)")
            if self._stop is not None:
                raise SystemExit(f"twistproxy: {message}")
            _log.warn(message)
            return
        _log.info("replaying {count} recorded requests", count=queued)
        drained = self._replay.when_drained().addCallback(self._report)
        if self._stop is not None:
            stop = self._stop
            # Drained at once happens before the reactor runs: stop it once it does.
            drained.addCallback(lambda _: self._reactor.callWhenRunning(stop))

    def _report(self, _: object) -> None:
        replayed = [f for f in self._flows if f.is_replay == "request"]
        failed = sum(1 for f in replayed if f.response is None)
        _log.info("replayed {count} recorded requests: {answered} answered, {failed} failed",
                  count=len(replayed), answered=len(replayed) - failed, failed=failed)

    def stopService(self) -> None:
        """Stop the replay: flows waiting are dropped."""
        super().stopService()
        self._replay.close()


def _server_name(flow: HTTPFlow) -> str | None:
    """The TLS name for *flow*'s origin: the host, or the recorded SNI for an IP."""
    request = flow.request
    assert request is not None
    if request.scheme != "https":
        return None
    if isIPAddress(request.host) or isIPv6Address(request.host):
        return flow.client_conn.sni or request.host
    return request.host


async def _wait(d: Deferred[Any] | None) -> None:
    if d is not None:
        await d


class _Collector:
    """
    Sends one replayed request when its connection is ready and buffers the
    response (an ``IUpstreamReceiver``).

    :ivar done: Fires with the response, or fails with why there is none;
        cancelling it abandons the exchange.
    """

    upstream: UpstreamExchange

    def __init__(self, flow: HTTPFlow, data: list[bytes], now: Any) -> None:
        self._flow = flow
        self._data = data
        self._now = now
        self.done: Deferred[Response] = Deferred(lambda _: self.upstream.abandon())
        self._response: Response | None = None
        self._body: list[bytes] = []

    def upstream_ready(self, server: Server | None) -> None:
        if server is not None:
            self._flow.server_conn = server
        self.upstream.send(self._data, complete=True)
        assert self._flow.request is not None
        self._flow.request.timestamp_end = self._now()

    def response_started(
        self,
        status: int,
        reason: bytes,
        version: bytes,
        fields: list[tuple[bytes, bytes]],
        framing: int,
    ) -> None:
        server = self.upstream.server
        if server is not None:
            self._flow.server_conn = server
        self._response = Response(version, status, reason, Headers(fields), None,
                                  timestamp_start=self._now())

    def response_data(self, data: bytes) -> None:
        self._body.append(data)

    def read_done(self) -> None:
        pass  # the body is kept whole

    def response_interim(
        self, status: int, reason: bytes, fields: list[tuple[bytes, bytes]]
    ) -> None:
        pass  # a replay records the final response

    def response_trailers(self, fields: list[tuple[bytes, bytes]]) -> None:
        assert self._response is not None
        self._response.trailers = Headers(fields)

    def response_ended(self) -> None:
        response = self._response
        assert response is not None
        response.raw_content = b"".join(self._body)
        response.timestamp_end = self._now()
        self.done.callback(response)

    def response_failed(self, reason: Failure) -> None:
        self.done.errback(reason)


class ServerReplay(Addon):
    """
    Answers requests from recorded flows without contacting the server.

    A request matches a recording with the same method, scheme, host, port,
    path, query (the parameters in *ignore_params* left out, order not
    counting) and body (unless *ignore_content*), and the same values of the
    headers named in *match_headers* (no header counts unless named).
    Several recordings of one request are served in recorded order; each
    once.  A request nothing matches (any more) is forwarded, killed, or
    answered 404, as *unmatched* says; with ``"kill"`` or ``"404"`` no
    request, and no passthrough tunnel, ever reaches a server.

    :param flows: The recordings; those whose response body was not
        recorded whole (streamed past the body limit, or a HAR entry without
        its text) are never served: a request for one is unmatched, with a
        warning naming it (and one at start counting them).  WebSocket flows
        are left out too (a request that asks for a WebSocket goes to the
        origin).
    :param now: The clock stamping served responses.
    """

    def __init__(
        self,
        flows: Iterable[HTTPFlow],
        *,
        ignore_params: Sequence[str] = (),
        ignore_content: bool = False,
        match_headers: Sequence[str] = (),
        unmatched: str = "forward",
        now: Callable[[], float] = time.time,
    ) -> None:
        if unmatched not in UNMATCHED:
            raise ValueError(f"unmatched must be one of {', '.join(UNMATCHED)}")
        self.unmatched = unmatched
        self._now = now
        self._ignore_params = frozenset(name for name in ignore_params)
        self._ignore_content = ignore_content
        self._match_headers = tuple(name.lower().encode("latin-1") for name in match_headers)
        self._recorded: dict[tuple[Any, ...], deque[HTTPFlow]] = {}
        # Requests whose recordings lack a whole response body: not served.
        self._bodiless: set[tuple[Any, ...]] = set()
        example = None
        for flow in flows:
            if flow.request is None or flow.response is None:
                continue
            if flow.websocket is not None:  # a 101 cannot be answered without its WebSocket
                continue
            if flow.response.raw_content is None or flow.response.truncated:
                self._bodiless.add(self._key(flow))
                example = example or flow.request.url
                continue
            self._recorded.setdefault(self._key(flow), deque()).append(flow)
        if example is not None:
            _log.warn(
                "{count} recorded response(s) have no whole body (not recorded, or recorded "
                "only in part) and are never served; a request for one is unmatched "
                "(first: {url})",
                count=len(self._bodiless), url=example,
            )

    def count(self) -> int:
        """How many recorded responses are left to serve."""
        return sum(len(queue) for queue in self._recorded.values())

    def _key(self, flow: HTTPFlow) -> tuple[Any, ...]:
        request = flow.request
        assert request is not None
        path, _, query = request.path.partition("?")
        params = sorted(
            (name, value)
            for name, value in parse_qsl(query, keep_blank_values=True)
            if name not in self._ignore_params
        )
        body = b"" if self._ignore_content else hashlib.sha256(
            request.get_content(strict=False) or b""
        ).digest()
        headers = tuple(
            tuple(request.headers.get_all_raw(name)) for name in self._match_headers
        )
        return (request.method.upper(), request.scheme, request.host.lower(), request.port,
                path, tuple(params), body, headers)

    def http_connect(self, flow: HTTPFlow) -> None:
        """With ``kill`` or ``404``, a tunnel that would pass through is refused."""
        if flow.passthrough and self.unmatched != "forward":
            self._refuse(flow)

    def request(self, flow: HTTPFlow) -> None:
        """Answer from the first unused recording that matches, or apply *unmatched*."""
        if flow.request is None or flow.response is not None:
            return
        key = self._key(flow)
        queue = self._recorded.get(key)
        if not queue and key in self._bodiless:
            _log.warn(
                "the recorded response for {url} has no whole body; not served, so the "
                "request is unmatched ({unmatched})",
                url=flow.request.url, unmatched=self.unmatched,
            )
        if queue:
            recorded = queue.popleft()
            assert recorded.response is not None
            response = Response.from_state(recorded.response.get_state())
            response.timestamp_start = response.timestamp_end = self._now()
            flow.response = response
            flow.is_replay = "response"
        elif self.unmatched != "forward":
            self._refuse(flow)

    def _refuse(self, flow: HTTPFlow) -> None:
        if self.unmatched == "kill":
            flow.kill()
        else:
            flow.response = Response.make(404, "twistproxy: no recorded response matches\n")
