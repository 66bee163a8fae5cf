# -*- test-case-name: tests.test_proxy -*-
"""
The client side: :class:`Proxy` channels, their :class:`ProxyRequest` objects
and the :class:`ProxyFactory` that ties them to hooks and the upstream pool.

Twisted's ``HTTPChannel`` frames the client's requests and queues them, so
pipelined requests are answered in order.  Each :class:`ProxyRequest` builds
an :class:`~twistproxy.http.HTTPFlow` as soon as its headers are in, runs the
hooks, and relays the exchange through a
:class:`~twistproxy.client.ProxyClient`: bodies up to a limit are buffered
so hooks see them whole, larger ones stream with backpressure both ways.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import attrs
from OpenSSL import SSL
from twisted.internet.abstract import isIPAddress, isIPv6Address
from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.endpoints import (
    HostnameEndpoint,
    TCP4ClientEndpoint,
    TCP6ClientEndpoint,
)
from twisted.internet.interfaces import IHandshakeListener, IPushProducer, IReactorTime
from twisted.internet.protocol import Protocol, connectionDone
from twisted.logger import Logger
from twisted.protocols.tls import TLSMemoryBIOFactory
from twisted.python.failure import Failure
from twisted.web.http import (
    HTTPChannel,
    HTTPFactory,
    Request,
    _ChunkedTransferDecoder,
    _MalformedChunkedDataError,
)
from zope.interface import alsoProvides, implementer

from twistproxy import _headers
from twistproxy._switch import hand_over, take_buffered
from twistproxy._target import (
    Target,
    authority_for,
    check_host,
    parse_absolute_form,
    parse_authority,
)
from twistproxy._timer import Deadline
from twistproxy._tls import (
    InterceptingServerTLS,
    ServerContexts,
    UpstreamTLS,
    describe_tls_failure,
)
from twistproxy._tunnel import Relay, RelayFactory
from twistproxy.client import (
    ConnectionPool,
    EndpointFactory,
    PoolKey,
    ProxyClient,
    host_and_port,
)
from twistproxy.errors import (
    AddonError,
    BadRequestTarget,
    FlowKilled,
    HookFailed,
    LoopDetected,
    UpstreamConnectionLost,
    UpstreamTimeout,
    error_status,
    upstream_error,
)
from twistproxy.flow import Client, Error, Server
from twistproxy.hooks import HookChain
from twistproxy.http import Headers, HTTPFlow, Response
from twistproxy.http import Request as RequestModel
from twistproxy.limits import Limits

if TYPE_CHECKING:
    from twisted.internet.interfaces import IAddress

    from twistproxy.certs import CertificateStore

_log = Logger()

DEFAULT_BODY_LIMIT = 1024 * 1024
"""Bodies up to this many bytes are buffered for the hooks; larger ones stream."""

_WAITING, _BUFFER, _STREAM, _DISCARD, _TUNNEL = range(5)  # what happens to request body bytes
_NO_BODY_STATUS = frozenset({204, 304})
_TERMINAL_HOOKS = frozenset({"response", "error"})
_BARE_LF = re.compile(rb"(?<!\r)\n")
_CONTROL = re.compile(rb"[\x00-\x08\x0a-\x1f\x7f]")
_VISIBLE = re.compile(rb"[\x21-\x7e]+\Z")
_CONNECTION_HOOKS = ("client_connected", "client_disconnected", "server_disconnected")
_HIGH_WATER = 64 * 1024  # buffered request bytes before the client is paused
_STREAM_BUFFER = 512 * 1024  # client write buffer before a streamed origin is paused



class ProxyRequest(Request):
    """
    One proxied request and its flow.

    Subclass it to intercept traffic: methods named after the flow hooks
    (``requestheaders``, ``request``, ``responseheaders``, ``response``,
    ``error``, ``server_connected``) run before every addon's, take the flow
    and may return a Deferred or be coroutines.

    :ivar flow: The request's flow, once its headers are parsed (``None`` for
        a request whose target cannot be proxied).
    """

    flow: HTTPFlow | None = None
    channel: Any  # the Proxy channel; Twisted deletes it once finished
    _upstream: ProxyClient | None = None
    _pending: Deferred[Any] | None = None
    _body_done = False  # the whole request body has been read
    _head_sent = False  # the response head went to the client
    _ended = False  # the flow reached response or error
    _finish_waits = False  # finish() is owed once the request body is read
    _producing = False  # the client transport produces for the upstream one
    _paused = False  # the client transport is paused by this request
    _request_chunked = False
    _reused = False
    _retried = False
    _upstream_done = False
    _response_mode = _WAITING
    _response_framing = _headers.NO_BODY
    _answer: Failure | None = None
    _server_name: str | None = None  # the TLS name for the origin inside a tunnel
    _failure: Failure | None = None  # why the flow failed, for the error page
    _watching = False  # the channel's silence deadline runs for this request
    _throttle: _Throttle | None = None
    _terminal = False  # the response or error hook chain has started
    _own_response = False  # the response was made here (a hook), not by an origin
    _aborted = False  # the client connection is being aborted
    _length: int | None = None

    def __init__(self, channel: Proxy, queued: object = None) -> None:
        super().__init__(channel)
        self._factory: ProxyFactory = channel.factory
        self._raw_headers: list[tuple[bytes, bytes]] = []
        self._body: list[bytes] = []
        self._body_size = 0
        self._mode = _WAITING
        self._response_body: list[bytes] = []
        self._response_size = 0
        self._silence: Deadline = channel.upstream_silence

    # -- Twisted's Request interface -----------------------------------

    def gotLength(self, length: int | None) -> None:
        """Remember the declared body length; the body is kept by this class."""
        self._length = length

    def handleContentChunk(self, data: bytes) -> None:
        """A piece of the request body (transfer coding removed)."""
        mode = self._mode
        if mode == _STREAM and self._upstream is not None:
            self._upstream.write_body(self._encode_body(data))
            return
        if mode == _DISCARD:
            return
        self._body.append(data)
        self._body_size += len(data)
        if mode == _BUFFER and self._body_size > self._factory.body_limit:
            # Too big to buffer after all: stream it, without the body.
            assert self.flow is not None and self.flow.request is not None
            self.flow.request.stream = True
            self._mode = _STREAM
            self._run("request", self._forward)
        elif self._body_size > _HIGH_WATER and mode != _BUFFER:
            self._pause_client()

    def parseCookies(self) -> None:
        """Twisted parses ``Cookie`` for every request; a proxy relays it untouched."""

    def requestReceived(self, command: bytes, path: bytes, version: bytes) -> None:
        """The whole request is in: set Twisted's attributes and process it."""
        self.method, self.uri, self.clientproto = command, path, version
        self.path = path.split(b"?", 1)[0]
        self.args = {}
        self.process()

    def process(self) -> None:
        """The request body is complete: go on with whatever stage waits for it."""
        self._body_done = True
        self._resume_client()
        if self._finish_waits:
            self.finish()
        elif self._ended or self._pending is not None:
            return  # a stage in progress looks at _body_done when it ends
        elif self._mode == _DISCARD:
            self._answer_early()
        elif self._mode == _BUFFER:
            self._buffered_request_done()
        elif self._mode == _STREAM and self._upstream is not None:
            self._end_upstream_body()
        elif self._mode == _TUNNEL:
            self._run("http_connect", self._open_tunnel)

    def connectionLost(self, reason: Failure) -> None:
        """The client went away: stop the exchange and close its upstream."""
        super().connectionLost(reason)
        self._unwatch_upstream()
        pending, self._pending = self._pending, None
        if pending is not None:
            pending.cancel()
        upstream, self._upstream = self._upstream, None
        if upstream is not None:
            upstream.abandon()
        flow = self.flow
        if flow is not None and not self._ended:
            self._ended = True
            flow.error = Error("client disconnected", self._now())
            flow.live = False
            if not self._terminal:
                self._run("error", _nothing)

    # -- the request ---------------------------------------------------

    def _now(self) -> float:
        return self._factory.reactor.seconds()

    def headers_received(
        self, command: bytes, uri: bytes, version: bytes, length: int | None
    ) -> None:
        """
        Called by :class:`Proxy` when the request's head is parsed: build the
        flow and run the ``requestheaders`` hook.
        """
        self.method, self.uri, self.clientproto = command, uri, version
        channel: Proxy = self.channel
        tunnel = channel.tunnel
        try:
            if not _VISIBLE.match(uri):
                # Twisted lets bytes 0x7f-0xb0 through (it compares with 176
                # where it meant octal 0o176); origins would not agree.
                raise BadRequestTarget("the request-target has invalid characters")
            if command == b"CONNECT":
                if tunnel is not None:
                    raise BadRequestTarget("CONNECT inside an intercepted tunnel")
                self._connect_received(uri, version)
                return
            if tunnel is not None and uri[:1] == b"/":
                target = tunnel.target(uri)
                self._server_name = channel.tls_server_name()
                host = None  # not needed: the client's Host is kept
            else:
                target = parse_absolute_form(uri)
                host = check_host(self._raw_headers, target)
            self._check_via()
        except (BadRequestTarget, LoopDetected) as e:
            self._mode = _DISCARD
            self._answer = Failure(e)
            return
        factory = self._factory
        now = factory.reactor.seconds()
        headers = Headers(self._raw_headers)
        if tunnel is None:
            if host != target.authority:
                headers["Host"] = target.authority
        elif headers.get_raw(b"host") is None:
            headers["Host"] = target.authority
        flow = HTTPFlow(
            self.channel.client_conn,
            Server(address=(target.host, target.port)),
            live=True,
            now=factory.reactor.seconds,
        )
        flow.request = RequestModel(
            target.host,
            target.port,
            command,
            target.scheme,
            target.authority,
            target.path,
            version,
            headers,
            None,
            timestamp_start=now,
        )
        self.flow = flow
        self._request_chunked = length is None
        if length is not None and length > factory.body_limit:
            flow.request.stream = True
        self._run("requestheaders", self._after_requestheaders)

    def _check_via(self) -> None:
        """
        :raises LoopDetected: if the request already passed this proxy.
        """
        token = self._factory.via.split(b" ", 1)[1]
        for name, value in self._raw_headers:
            if len(name) == 3 and name.lower() == b"via" and token in value:
                raise LoopDetected("the request came back to this proxy (Via)")

    def _points_here(self, transport: Any) -> bool:
        """
        Whether an upstream connection reached this proxy itself: the port a
        client reached the proxy on, at that address or at the upstream
        connection's own local address (a name resolving to this machine).
        """
        peer = transport.getPeer()
        ours = self.channel.transport.getHost()
        if getattr(peer, "port", None) != getattr(ours, "port", None):
            return False
        return peer.host in (ours.host, transport.getHost().host)

    def _after_requestheaders(self) -> None:
        flow = self.flow
        assert flow is not None and flow.request is not None
        if flow.killed:
            self._kill()
        elif flow.response is not None:
            self._discard_body()
        elif flow.request.stream:
            self._mode = _STREAM
            self._run("request", self._forward)
        else:
            self._mode = _BUFFER
            if self._body_done:
                self._buffered_request_done()

    def _buffered_request_done(self) -> None:
        flow = self.flow
        assert flow is not None and flow.request is not None
        body, self._body = self._body, []
        flow.request.raw_content = _joined(body)
        flow.request.timestamp_end = self._now()
        self._run("request", self._forward)

    def _discard_body(self) -> None:
        """The answer is settled: drop the body, answer once it is read."""
        self._mode = _DISCARD
        self._body = []
        if self._body_done:
            self._answer_early()

    def _answer_early(self) -> None:
        """Answer a request whose fate was settled before its body was read."""
        if self.flow is None:
            assert self._answer is not None
            self._send_error_page(self._answer)
            self.finish()
        else:
            self._respond_from_hook()

    # -- CONNECT ---------------------------------------------------------

    @property
    def _tunnel_host(self) -> str | None:
        tunnel = self.channel.tunnel if self.channel is not None else None
        return tunnel.host if tunnel is not None else None

    def _connect_received(self, uri: bytes, version: bytes) -> None:
        """A ``CONNECT host:port``: make its flow; the tunnel opens once it is read."""
        host, port = parse_authority(uri, 0)
        if port == 0:
            raise BadRequestTarget("CONNECT needs host:port")
        factory = self._factory
        flow = HTTPFlow(
            self.channel.client_conn,
            Server(address=(host, port)),
            live=True,
            now=factory.reactor.seconds,
        )
        flow.request = RequestModel(
            host, port, b"CONNECT", b"", uri, b"", version, Headers(self._raw_headers), None,
            timestamp_start=factory.reactor.seconds(),
        )
        # Decided by configuration before the hook, which sees it and may change it.
        flow.passthrough = factory.contexts is None or factory.ignores(host, port)
        self.flow = flow
        self._mode = _TUNNEL

    def _open_tunnel(self) -> None:
        """After ``http_connect``: answer, kill, pass through or intercept."""
        flow = self.flow
        assert flow is not None and flow.request is not None
        if flow.killed:
            self._kill()
        elif flow.response is not None:
            self._respond_from_hook()
        elif flow.passthrough or self._factory.contexts is None:
            flow.passthrough = True
            relay = Relay(on_close=self._factory.server_closed)
            endpoint = self._factory.pool.endpoint_factory("tcp", flow.request.host,
                                                           flow.request.port)
            self._pending = d = endpoint.connect(RelayFactory(relay))
            d.addErrback(upstream_error)
            d.addCallbacks(self._passthrough_connected, self._upstream_failed)
        else:
            self._tunnel_ready(None)

    def _passthrough_connected(self, relay: Relay) -> None:
        self._pending = None
        flow = self.flow
        assert flow is not None
        transport = relay.transport
        server = Server(
            address=flow.server_conn.address,
            peername=host_and_port(transport.getPeer()),
            sockname=host_and_port(transport.getHost()),
            timestamp_start=self._now(),
        )
        relay.server = server
        flow.server_conn = server
        if self._disconnected:
            transport.loseConnection()
            return
        if self._points_here(transport):
            transport.loseConnection()
            self._fail(Failure(LoopDetected("the tunnel names this proxy itself")),
                       run_hook=True)
            return
        chain = self._factory.chain
        if chain.has("server_connected", self):
            d = chain.run("server_connected", server, first=self)
            if d is not None:
                self._pending = d
                d.addCallbacks(lambda _: self._tunnel_ready(relay), self._server_hook_failed,
                               errbackArgs=(relay,))
                return
        self._tunnel_ready(relay)

    def _tunnel_ready(self, relay: Relay | None) -> None:
        """The tunnel can open: the CONNECT flow's response is ``200``."""
        self._pending = None
        flow = self.flow
        assert flow is not None
        now = self._now()
        flow.response = Response(
            b"HTTP/1.1", 200, b"Connection established", Headers(), b"",
            timestamp_start=now, timestamp_end=now,
        )
        self._run("response", lambda: self._switch(relay))

    def _switch(self, relay: Relay | None) -> None:
        """
        Answer ``200 Connection established`` and hand the connection to the
        tunnel: a raw relay to *relay*, or TLS interception when it is None.
        """
        flow = self.flow
        assert flow is not None and flow.request is not None
        if flow.killed or self._disconnected:
            if relay is not None:
                relay.transport.loseConnection()
            if flow.killed:
                self._kill()
            return
        if relay is not None and relay.lost:
            self._fail(
                Failure(UpstreamConnectionLost("the server closed before the tunnel opened")),
                run_hook=True,
            )
            return
        assert flow.response is not None
        if flow.response.status_code != 200:
            # A response hook answered otherwise: send that, open no tunnel.
            if relay is not None:
                relay.transport.loseConnection()
            self._ended = False
            self._respond()
            return
        channel: Proxy = self.channel
        factory = self._factory
        if relay is None:
            try:
                # Mint now, while a failure can still be answered.
                factory.intercept_context(flow.request.host)
            except Exception:
                _log.failure("no certificate for {host}", host=flow.request.host)
                self._fail(Failure(), run_hook=False)
                return
        channel.transport.write(b"HTTP/1.1 200 Connection established\r\n\r\n")
        buffered = take_buffered(channel)
        self._ended = True
        flow.live = False
        self._head_sent = True
        self.startedWriting = 1
        channel.persistent = True  # the tunnel outlives this request
        self.finish()
        protocol: Any
        if relay is None:
            protocol = factory.intercepting_protocol(
                channel, Tunnel(flow.request.host, flow.request.port)
            )
        else:
            protocol = Relay(on_close=channel.relay_closed)
        hand_over(channel, protocol, buffered)
        channel._stop_deadlines()
        if relay is not None:
            protocol.join(relay)

    # -- hooks ---------------------------------------------------------

    def _run(self, hook: str, then: Callable[[], object]) -> None:
        """
        Run *hook* on the flow, then call *then*; a failing hook fails the
        flow instead.  No Deferred is made when nothing implements the hook.
        """
        if hook in _TERMINAL_HOOKS:
            self._terminal = True
        chain = self._factory.chain
        if not chain.has(hook, self):
            then()
            return
        d = chain.run(hook, self.flow, first=self)
        if d is None:
            then()
            return
        self._pending = d
        self._pause_client()
        d.addCallbacks(self._hook_done, self._hook_failed, callbackArgs=(then,))

    def _hook_done(self, _: object, then: Callable[[], object]) -> None:
        self._pending = None
        self._resume_client()
        then()

    def _hook_failed(self, reason: Failure) -> None:
        self._pending = None
        if reason.check(CancelledError):
            return
        self._resume_client()
        hook = getattr(reason.value, "hook", None)
        if hook == "error":
            # The error hook itself failed: still answer, with the first failure.
            self._send_failure(self._failure or reason)
        elif self._ended:
            # A response hook after a streamed response was relayed: record it.
            if self.flow is not None:
                self.flow.error = Error(_describe(reason), self._now())
        else:
            # A failing request hook still owes the flow its error hook; the
            # response hook already was the flow's last event.
            self._fail(reason, run_hook=hook != "response")

    # -- upstream ------------------------------------------------------

    def _forward(self) -> None:
        """After the request hooks: answer, kill, or send the request upstream."""
        flow = self.flow
        assert flow is not None and flow.request is not None
        if flow.killed:
            self._kill()
        elif flow.response is not None:
            self._discard_body()
        else:
            self._connect()

    def _connect(self) -> None:
        assert self.flow is not None and self.flow.request is not None
        request = self.flow.request
        server_name = None
        if request.scheme == "https":
            tunnel = self._tunnel_host
            server_name = self._server_name if request.host == tunnel else request.host
        key = PoolKey(request.scheme, request.host, request.port, server_name)
        pool = self._factory.pool
        client = pool.take_idle(key)
        if client is not None:
            self._send(client)
            return
        self._pending = d = pool.connect(key)
        d.addCallbacks(self._connected, self._upstream_failed)

    def _connected(self, client: ProxyClient) -> None:
        self._pending = None
        if self._disconnected or self._ended:
            client.abandon()
            return
        if self._points_here(client.transport):
            client.abandon()
            self._fail(Failure(LoopDetected("the request names this proxy itself")),
                       run_hook=True)
            return
        chain = self._factory.chain
        if chain.has("server_connected", self):
            d = chain.run("server_connected", client.server, first=self)
            if d is not None:
                self._pending = d
                d.addCallbacks(self._server_ready, self._server_hook_failed,
                               callbackArgs=(client,), errbackArgs=(client,))
                return
        self._send(client)

    def _server_ready(self, _: object, client: ProxyClient) -> None:
        self._pending = None
        self._send(client)

    def _server_hook_failed(self, reason: Failure, client: ProxyClient | Relay) -> None:
        self._pending = None
        if isinstance(client, Relay):
            client.transport.loseConnection()
        else:
            client.abandon()
        if not reason.check(CancelledError):
            self._fail(reason, run_hook=True)

    def _send(self, client: ProxyClient) -> None:
        """Write the request to *client*: whole, or its head and the body so far."""
        flow = self.flow
        assert flow is not None and flow.request is not None
        request = flow.request
        self._upstream = client
        self._reused = client.reused
        if client.server is not None:
            flow.server_conn = client.server
        streaming = self._mode == _STREAM
        if streaming:
            body, self._body = self._body, []
            self._body_size = 0
            if self._body_done:
                framing = sum(map(len, body))
                self._request_chunked = False
            elif self._length is not None:
                framing = self._length
            else:
                framing = _headers.CHUNKED
        else:
            content = request.raw_content or b""
            body = [content] if content else []
            had_body = content or self._length or self._length is None
            framing = len(content) if had_body else _headers.NO_BODY
            self._request_chunked = False
        self._request_chunked = framing == _headers.CHUNKED
        data = [_headers.request_head(request, framing, self._factory.via)]
        for piece in body:
            data.extend(self._encode_body(piece))
        complete = not streaming or self._body_done
        if streaming and complete:
            data.extend(self._body_end())
            request.timestamp_end = self._now()
        client.send(self, data, head=request.method == "HEAD", complete=complete)
        if complete:
            self._watch_upstream()
        if not complete and client.transport is not None:
            client.transport.registerProducer(self.channel.transport, True)
            self._producing = True
            self._resume_client()

    def _encode_body(self, data: bytes) -> Sequence[bytes]:
        if self._request_chunked:
            return (b"%x\r\n" % len(data), data, b"\r\n")
        return (data,)

    def _body_end(self) -> Sequence[bytes]:
        return (b"0\r\n\r\n",) if self._request_chunked else ()

    def _end_upstream_body(self) -> None:
        upstream = self._upstream
        assert upstream is not None
        self._stop_producing()
        upstream.end_body(self._body_end())
        self._watch_upstream()
        if self.flow is not None and self.flow.request is not None:
            self.flow.request.timestamp_end = self._now()

    def _stop_producing(self) -> None:
        if self._producing:
            self._producing = False
            upstream = self._upstream
            if upstream is not None and upstream.transport is not None:
                upstream.transport.unregisterProducer()

    def _upstream_failed(self, reason: Failure) -> None:
        self._pending = None
        if not reason.check(CancelledError):
            self._fail(reason, run_hook=True)

    # -- the origin's silence ---------------------------------------------

    def _watch_upstream(self) -> None:
        """(Re)start the clock on the origin's silence."""
        self._watching = True
        self._silence.start(self._factory.limits.upstream_timeout, self._upstream_silent)

    def _unwatch_upstream(self) -> None:
        if self._watching:
            self._watching = False
            self._silence.stop()

    def _upstream_silent(self) -> None:
        """The origin said nothing for ``upstream_timeout`` seconds."""
        self._watching = False
        throttle = self._throttle
        if self._pending is not None or (throttle is not None and throttle.paused):
            self._watch_upstream()  # we hold the origin back: not its silence
            return
        timeout = self._factory.limits.upstream_timeout
        self._fail(Failure(UpstreamTimeout(f"the server sent nothing for {timeout:g} s")),
                   run_hook=True)

    # -- IResponseReceiver: the response, as the upstream reports it ----

    def response_started(
        self, status: int, reason: bytes, version: bytes, fields: list[tuple[bytes, bytes]]
    ) -> None:
        """The origin's response head arrived: run ``responseheaders``."""
        self._watch_upstream()
        flow = self.flow
        assert flow is not None and flow.request is not None
        response = Response(
            version, status, reason, Headers(fields), None, timestamp_start=self._now()
        )
        flow.response = response
        if self.method == b"HEAD" or status in _NO_BODY_STATUS:
            self._response_framing = _headers.NO_BODY
        else:
            # The client reporting this response read its framing already.
            assert self._upstream is not None
            chunked, length = self._upstream.response_framing
            if chunked:
                self._response_framing = _headers.CHUNKED
            elif length is None:
                self._response_framing = _headers.UNTIL_CLOSE
            else:
                self._response_framing = length
                response.stream = length > self._factory.body_limit
        self._response_mode = _WAITING
        if self._factory.chain.has("responseheaders", self):
            self._set_upstream_paused(True)
        self._run("responseheaders", self._after_responseheaders)

    def _after_responseheaders(self) -> None:
        flow = self.flow
        assert flow is not None and flow.response is not None
        self._set_upstream_paused(False)
        if flow.killed:
            self._kill()
            return
        if flow.response.stream and self._response_framing != _headers.NO_BODY:
            self._start_streaming()
        else:
            self._response_mode = _BUFFER
        if self._upstream_done:
            self._response_complete()

    def response_data(self, data: bytes) -> None:
        """A piece of the response body."""
        if self._watching:
            self._silence.start(self._factory.limits.upstream_timeout)
        self._response_size += len(data)
        if self._response_mode == _STREAM:
            self.write(data)
            return
        self._response_body.append(data)
        if self._response_mode == _BUFFER and self._response_size > self._factory.body_limit:
            assert self.flow is not None and self.flow.response is not None
            self.flow.response.stream = True
            self._start_streaming()

    def response_ended(self) -> None:
        """The origin's response is complete."""
        self._unwatch_upstream()
        self._stop_producing()
        self._upstream = None
        self._upstream_done = True
        if self._mode == _STREAM:
            self._mode = _DISCARD  # the origin answered before the upload ended
        if self._response_mode != _WAITING:
            self._response_complete()

    def response_failed(self, reason: Failure) -> None:
        """The exchange with the origin failed."""
        self._unwatch_upstream()
        self._stop_producing()
        self._upstream = None
        if (
            self._reused
            and not self._retried
            and self._mode == _BUFFER
            and self.flow is not None
            and self.flow.response is None
        ):
            # A kept-alive connection the server closed meanwhile: once more
            # on a new connection.
            self._retried = True
            self._reused = False
            self._connect()
            return
        self._fail(reason, run_hook=True)

    def _start_streaming(self) -> None:
        """Send the response head and what body is buffered; relay the rest."""
        flow = self.flow
        assert flow is not None and flow.response is not None
        self._response_mode = _STREAM
        framing = self._response_framing
        if framing == _headers.UNTIL_CLOSE or framing == _headers.CHUNKED:
            framing = _headers.CHUNKED if self.clientproto == b"HTTP/1.1" else _headers.UNTIL_CLOSE
        body, self._response_body = self._response_body, []
        self._write_head(flow.response, framing, ())
        for piece in body:
            self.write(piece)
        upstream = self._upstream
        if upstream is not None and upstream.transport is not None and not self._disconnected:
            # Let a few reads queue before the client's buffer pauses the
            # origin: at Twisted's 64 KiB every read paused and resumed it.
            transport = self.channel.transport
            if getattr(transport, "bufferSize", _STREAM_BUFFER) < _STREAM_BUFFER:
                transport.bufferSize = _STREAM_BUFFER
            self._throttle = _Throttle(upstream.transport)
            self.registerProducer(self._throttle, True)

    def _response_complete(self) -> None:
        flow = self.flow
        assert flow is not None and flow.response is not None
        flow.response.timestamp_end = self._now()
        if self._response_mode == _STREAM:
            flow.response.body_size = self._response_size
            if self.producer is not None and not self._disconnected:
                self.unregisterProducer()
            self._finish_flow()
            self._run("response", _nothing)
            return
        body, self._response_body = self._response_body, []
        flow.response.raw_content = _joined(body)
        self._run("response", self._respond)

    def _respond(self) -> None:
        """Send the (buffered, perhaps modified) response and finish."""
        flow = self.flow
        assert flow is not None and flow.response is not None
        if flow.killed:
            self._kill()
            return
        response = flow.response
        content = response.raw_content or b""
        if response.status_code in _NO_BODY_STATUS or response.status_code < 200:
            self._write_head(response, _headers.NO_BODY, ())
        else:
            self._write_head(response, len(content), (content,) if content else ())
        self._finish_flow()

    def _respond_from_hook(self) -> None:
        """Send the response a request hook set, without contacting the origin."""
        self._upstream_done = True
        self._own_response = True
        response = self.flow.response  # type: ignore[union-attr]
        assert response is not None
        now = self._now()
        if response.timestamp_start is None:
            response.timestamp_start = now
        if response.timestamp_end is None:
            response.timestamp_end = now
        self._run("response", self._respond)

    # -- writing to the client -----------------------------------------

    def _write_head(self, response: Response, framing: int, body: Sequence[bytes]) -> None:
        if self._disconnected or self._head_sent:
            return
        self._head_sent = True
        self.code = response.status_code
        self.code_message = response.reason.encode("utf-8", "surrogateescape")
        self.startedWriting = 1
        if self.method == b"HEAD":
            framing = _headers.NO_BODY
            body = ()
            self.write = _discard  # type: ignore[method-assign]
        elif framing == _headers.UNTIL_CLOSE:
            self.channel.persistent = False
        self.chunked = 1 if framing == _headers.CHUNKED else 0
        fields = _headers.response_fields(
            response.headers.fields, framing=framing, close=not self.channel.persistent,
            own=self._own_response,
        )
        head = [self.clientproto, b" %d " % (self.code,), self.code_message, b"\r\n"]
        for name, value in fields:
            head += (name, b": ", value, b"\r\n")
        head.append(b"\r\n")
        # One joined head: Twisted checks and buffers each written piece.
        self.sentLength = sum(map(len, body))
        self.channel.writeSequence([b"".join(head), *body])

    def _send_error_page(self, reason: Failure) -> None:
        status, phrase = error_status(reason)
        text = (
            f"{status} {phrase.decode('ascii')}\n\ntwistproxy: {_describe(reason)}\n"
        ).encode("utf-8", "replace")
        response = Response.make(status, text, {"Content-Type": "text/plain; charset=utf-8"})
        response.reason = phrase.decode("ascii")
        self._write_head(response, len(text), (text,))

    # -- endings -------------------------------------------------------

    def _finish_flow(self) -> None:
        """The response is written: finish the client's request."""
        self._ended = True
        if self.flow is not None:
            self.flow.live = False
        self._finish()

    def _finish(self) -> None:
        """
        Finish the client's request, once its body is read: HTTPChannel
        cannot end a request whose body is still arriving, so the answer
        goes out at once and the connection closes after the body.
        """
        if self._disconnected or self.finished:
            return
        if self._body_done:
            self.finish()
        else:
            self.channel.persistent = False
            self._mode = _DISCARD
            self._finish_waits = True
            self._resume_client()

    def _fail(self, reason: Failure, *, run_hook: bool) -> None:
        """
        Fail the flow: an error page when nothing was sent yet, otherwise an
        aborted connection, so a truncated body never looks complete.
        """
        if self._ended:
            return
        self._ended = True
        self._failure = reason
        self._unwatch_upstream()
        upstream, self._upstream = self._upstream, None
        if upstream is not None:
            upstream.abandon()
        flow = self.flow
        if flow is not None:
            flow.error = Error(_describe(reason), self._now())
        if flow is not None and run_hook:
            self._run("error", self._send_first_failure)
        else:
            self._send_failure(reason)

    def _send_first_failure(self) -> None:
        assert self._failure is not None
        self._send_failure(self._failure)

    def _send_failure(self, reason: Failure) -> None:
        if self.flow is not None:
            self.flow.live = False
        if self._disconnected or self._aborted:
            return
        if self._head_sent:
            self._abort_client()
            return
        self._send_error_page(reason)
        self._finish()

    def _kill(self) -> None:
        """
        The flow was killed: close the client connection without an answer,
        then run the ``error`` hook (unless the flow's last hook already ran).
        """
        self._ended = True
        self._unwatch_upstream()
        upstream, self._upstream = self._upstream, None
        if upstream is not None:
            upstream.abandon()
        if self.flow is not None:
            self.flow.live = False
        self._abort_client()
        if not self._terminal:
            self._run("error", _nothing)

    def _abort_client(self) -> None:
        if not self._disconnected and not self._aborted:
            self._aborted = True
            self.channel.transport.abortConnection()

    # -- flow control --------------------------------------------------

    def _pause_client(self) -> None:
        if not self._paused and not self._body_done and not self._disconnected:
            self._paused = True
            self.channel.transport.pauseProducing()

    def _resume_client(self) -> None:
        if self._paused:
            self._paused = False
            if not self._disconnected:
                self.channel.transport.resumeProducing()

    def _set_upstream_paused(self, paused: bool) -> None:
        upstream = self._upstream
        if upstream is not None and upstream.transport is not None:
            if paused:
                upstream.transport.pauseProducing()
            else:
                upstream.transport.resumeProducing()


def _nothing() -> None:
    pass



def _joined(pieces: list[bytes]) -> bytes:
    """The buffered *pieces* of a body as one bytes object, copied only when needed."""
    return pieces[0] if len(pieces) == 1 else b"".join(pieces)


def _discard(data: bytes) -> None:
    pass


def _ignore_cancel(reason: Failure) -> None:
    reason.trap(CancelledError, HookFailed)


def _describe(reason: Failure) -> str:
    error = reason.value
    if isinstance(error, FlowKilled):
        return Error.KILLED_MESSAGE
    text = str(error)
    return text or type(error).__name__


class _BoundedChunks(_ChunkedTransferDecoder):
    """Twisted's chunked decoder, refusing chunk sizes beyond 2**63 - 1 (as llhttp)."""

    def _dataReceived_CHUNK_LENGTH(self) -> bool:
        done: bool = super()._dataReceived_CHUNK_LENGTH()
        if done and self.length > _MAX_CHUNK:
            raise _MalformedChunkedDataError("chunk size out of range")
        return done


_MAX_CHUNK = 2**63 - 1


class _Busy(Protocol):
    """Answers a connection beyond ``max_connections`` with 503, then closes."""

    def connectionMade(self) -> None:
        body = b"503 Service Unavailable\n\ntwistproxy: too many connections\n"
        self.transport.write(  # type: ignore[union-attr]
            b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: text/plain\r\n"
            b"Content-Length: %d\r\nConnection: close\r\nRetry-After: 1\r\n\r\n%s"
            % (len(body), body)
        )
        self.transport.loseConnection()  # type: ignore[union-attr]


@implementer(IPushProducer)
class _Throttle:
    """
    The upstream transport as the client channel's producer, remembering
    whether the client's backpressure paused it.
    """

    paused = False

    def __init__(self, transport: Any) -> None:
        self._transport = transport

    def pauseProducing(self) -> None:
        self.paused = True
        self._transport.pauseProducing()

    def resumeProducing(self) -> None:
        self.paused = False
        self._transport.resumeProducing()

    def stopProducing(self) -> None:
        self._transport.stopProducing()


@attrs.frozen
class Tunnel:
    """
    Where an intercepted CONNECT tunnel goes.

    :ivar host: The CONNECT host.
    :ivar port: The CONNECT port.
    """

    host: str
    port: int

    def target(self, path: bytes) -> Target:
        """The target of an origin-form request for *path* inside the tunnel."""
        return Target(
            scheme="https", host=self.host, port=self.port, path=path,
            authority=authority_for("https", self.host, self.port),
        )


class Proxy(HTTPChannel):
    """
    An HTTP/1.1 connection from a proxy client.

    Twisted's channel parses and queues the requests; this subclass keeps
    every header field's original name and order for its request, tells
    the request when its head is complete, and records the client
    connection for the flows.

    :ivar client_conn: The connection record shared by this channel's flows.
    :ivar tunnel: For a channel inside an intercepted tunnel, where the
        tunnel goes; its requests are in origin form and go there over TLS.
    :ivar upstream_silence: The deadline on the origin's silence, started
        by the channel's current request once it has sent its request.
    """

    requestFactory = ProxyRequest  # type: ignore[assignment]
    client_conn: Client
    tunnel: Tunnel | None = None
    # A TCP (or TLS) transport: ITransport, IPushProducer and IConsumer.
    transport: Any
    _tls_recorded = False

    def adopt(self, client_conn: Client, tunnel: Tunnel) -> None:
        """
        Serve the requests inside an intercepted tunnel: the flows share the
        outer connection's *client_conn*, whose connection hooks already ran.
        """
        self.client_conn = client_conn
        self.tunnel = tunnel

    def tls_server_name(self) -> str:
        """
        The name to present to the origin inside the tunnel: the client's
        SNI, else the tunnel's host.  The first call records the TLS details
        (version, SNI, ALPN) on :attr:`client_conn`.
        """
        tunnel = self.tunnel
        assert tunnel is not None
        client = self.client_conn
        if not self._tls_recorded:
            self._tls_recorded = True
            handle = self.transport.getHandle()
            sni = handle.get_servername()
            client.tls_established = True
            client.sni = sni.decode("ascii", "replace") if sni else None
            client.alpn = handle.get_alpn_proto_negotiated() or None
            client.tls_version = handle.get_protocol_version_name()
        return client.sni or tunnel.host

    def handshakeCompleted(self) -> None:
        """
        ``IHandshakeListener``: inside an intercepted tunnel, the client's
        TLS handshake is done; record its details on :attr:`client_conn`.
        """
        self.tls_server_name()

    def relay_closed(self, relay: Relay) -> None:
        """The client's side of a passthrough tunnel closed."""
        self._disconnected()

    # -- the request head: limits and strict framing ---------------------

    _head_lines = 0  # lines of the request head read so far
    _head_bytes = 0

    _last_byte = b""

    def dataReceived(self, data: bytes) -> None:
        """
        Start the head timer when a request's first byte arrives, and refuse
        a head whose lines end in a bare LF (parsers that accept it and
        parsers that do not would see different requests).
        """
        if self.line_mode:
            if not self._head_deadline.active():
                self._head_deadline.start(self.factory.limits.header_timeout)
            # Every LF behind a CR (two counts in C) is the common case.
            if data.count(b"\n") != data.count(b"\r\n") and self._bare_lf(data):
                self._refuse(400, b"Bad Request", "lines must end with CRLF, not a bare LF")
                return
            self._last_byte = data[-1:]
        super().dataReceived(data)

    def _bare_lf(self, data: bytes) -> bool:
        """
        Whether the head in *data* has a line ending in a bare LF.  Only the
        head is looked at (a body or a ClientHello may follow it in the same
        read); the previous read's last byte is context for a CRLF split in
        two.
        """
        last = self._last_byte
        text = last + data
        end = text.find(b"\r\n\r\n")
        return _BARE_LF.search(text, len(last), len(text) if end == -1 else end + 4) is not None

    def _head_timed_out(self) -> None:
        self._refuse(408, b"Request Timeout", "the request head took too long to arrive")

    def lineReceived(self, line: bytes) -> None:
        """Enforce the head's limits and refuse folded header lines."""
        limits = self.factory.limits
        if self._head_lines == 0:
            if not line:
                super().lineReceived(line)  # Twisted eats one stray empty line
                return
            if len(line) > limits.max_request_line:
                self._refuse(414, b"URI Too Long", "the request line is too long")
                return
        elif line and line[0] in (0x20, 0x09):
            self._refuse(400, b"Bad Request", "folded header lines (obs-fold) are not accepted")
            return
        self._head_bytes += len(line) + 2
        if self._head_bytes > limits.max_header_size:
            self._refuse(431, b"Request Header Fields Too Large", "the request head is too large")
            return
        if line:
            self._head_lines += 1
            if self._head_lines > limits.max_header_count + 1:
                self._refuse(431, b"Request Header Fields Too Large", "too many header fields")
                return
        super().lineReceived(line)

    def lineLengthExceeded(self, line: bytes) -> None:
        """A line longer than any limit allows, still without its end."""
        if self._head_lines == 0:
            self._refuse(414, b"URI Too Long", "the request line is too long")
        else:
            self._refuse(431, b"Request Header Fields Too Large", "a header line is too long")

    def _respondToBadRequestAndDisconnect(self) -> None:
        """Twisted's one place for a malformed request: answer with a reason."""
        self._refuse(400, b"Bad Request", "malformed request")

    def _refuse(self, status: int, phrase: bytes, reason: str) -> None:
        """Answer a request that cannot be read any further, and close."""
        self._head_deadline.stop()
        if self.transport is None or self.transport.disconnecting:
            return
        body = f"{status} {phrase.decode('ascii')}\n\ntwistproxy: {reason}\n".encode()
        self.transport.write(
            b"HTTP/1.1 %d %s\r\nContent-Type: text/plain; charset=utf-8\r\n"
            b"Content-Length: %d\r\nConnection: close\r\n\r\n%s"
            % (status, phrase, len(body), body)
        )
        self.loseConnection()

    def connectionMade(self) -> None:
        """Record the client and run the ``client_connected`` hook."""
        clock = self.factory.reactor
        self._idle_deadline = Deadline(clock, self.timeoutConnection)
        self._head_deadline = Deadline(clock, self._head_timed_out)
        self.upstream_silence = Deadline(clock, _nothing)
        super().connectionMade()
        limits = self.factory.limits
        # Twisted's own checks answer 400; ours come first with 414/431.
        self.totalHeadersSize = limits.max_header_size + 1
        self.maxHeaders = limits.max_header_count + 1
        self.MAX_LENGTH = max(limits.max_request_line, limits.max_header_size)
        if self.tunnel is not None:
            return  # adopted: the outer connection did this
        factory: ProxyFactory = self.factory
        self.client_conn = Client(
            peername=host_and_port(self.getPeer()),
            sockname=host_and_port(self.getHost()),
            timestamp_start=factory.reactor.seconds(),
        )
        if factory.chain.has("client_connected"):
            d = factory.chain.run("client_connected", self.client_conn)
            if d is not None:
                self.transport.pauseProducing()
                d.addBoth(self._client_hook_done)

    def _client_hook_done(self, result: object) -> None:
        if isinstance(result, Failure) and not result.check(CancelledError):
            self.transport.abortConnection()
        elif self.transport is not None:
            self.transport.resumeProducing()

    def headerReceived(self, line: bytes) -> bool:
        """Let Twisted validate the field, then keep its original form."""
        name, colon, value = line.partition(b":")
        if _CONTROL.search(value):
            # Twisted refuses NUL, CR and LF only; origins may refuse the rest.
            self._refuse(400, b"Bad Request", "control characters in a header value")
            return False
        if len(name) == 14 and name.lower() == b"content-length":
            digits = value.strip(b" \t")
            if digits.isdigit() and int(digits) > _MAX_CHUNK:
                self._refuse(400, b"Bad Request", "Content-Length out of range")
                return False
        if len(name) == 17 and name.lower() == b"transfer-encoding":
            # Only exactly "chunked", and only in HTTP/1.1: anything else is
            # a way to make two parsers disagree about where a body ends.
            if value.strip(b" \t").lower() != b"chunked" or self._version != b"HTTP/1.1":
                self._refuse(400, b"Bad Request", "unsupported Transfer-Encoding")
                return False
        if not super().headerReceived(line):
            return False
        self.requests[-1]._raw_headers.append((name, value.strip(b" \t")))
        return True

    _host: Any = None
    _peer: Any = None

    def getHost(self) -> Any:
        """The local address, asked of the transport once (Twisted asks per request)."""
        host = self._host
        if host is None:
            host = self._host = self.transport.getHost()
        return host

    def getPeer(self) -> Any:
        """The client's address, asked of the transport once."""
        peer = self._peer
        if peer is None:
            peer = self._peer = self.transport.getPeer()
        return peer

    # -- timeouts: Twisted's TimeoutMixin interface, on a Deadline ---------

    def setTimeout(self, period: float | None) -> float | None:
        """
        ``TimeoutMixin.setTimeout``: change the idle timeout (``None``: none).
        Twisted stops and restarts it around every request; a
        :class:`~twistproxy._timer.Deadline` makes that cost no timer.
        """
        previous: float | None = self.timeOut
        self.timeOut = period  # type: ignore[assignment]
        if period is None:
            self._idle_deadline.stop()
        else:
            self._idle_deadline.start(period)
        return previous

    def resetTimeout(self) -> None:
        """``TimeoutMixin.resetTimeout``: restart a running idle timeout."""
        if self.timeOut is not None and self._idle_deadline.active():
            self._idle_deadline.start(self.timeOut)

    def _stop_deadlines(self) -> None:
        """Cancel every timer of the connection (it closed or changed hands)."""
        self._idle_deadline.cancel()
        self._head_deadline.cancel()
        self.upstream_silence.cancel()

    def _maybeChooseTransferDecoder(self, header: bytes, data: bytes) -> bool:
        """
        Twisted's choice of body decoder, with chunk sizes bounded: its own
        chunked decoder takes any number of hex digits.
        """
        ok: bool = super()._maybeChooseTransferDecoder(header, data)
        decoder = self._transferDecoder
        if ok and type(decoder) is _ChunkedTransferDecoder:
            self._transferDecoder = _BoundedChunks(decoder.dataCallback, decoder.finishCallback)
        return ok

    def checkPersistence(self, request: ProxyRequest, version: bytes) -> bool:
        """
        Whether the connection stays open after this request: HTTP/1.1
        without a ``close`` token.  Twisted's own check splits ``Connection``
        on spaces and misses ``close`` in ``Connection: close, X-Foo``.
        """
        if version != b"HTTP/1.1":
            return False
        return b"close" not in _headers.connection_tokens(request._raw_headers)

    def allHeadersReceived(self) -> None:
        """The head is complete: the request builds its flow and runs hooks."""
        self._head_lines = self._head_bytes = 0
        self._head_deadline.stop()
        super().allHeadersReceived()
        request = self.requests[-1]
        request.headers_received(self._command, self._path, self._version, self.length)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        """Tell the requests, then run the ``client_disconnected`` hook."""
        super().connectionLost(reason)
        self._stop_deadlines()
        if self.tunnel is not None and not self._tls_recorded and reason.check(SSL.Error):
            peer = self.client_conn.peername
            _log.info(
                "TLS with client {client} for {host} failed: {why} "
                "(does the client trust the twistproxy CA?)",
                client=f"{peer[0]}:{peer[1]}" if peer else "?", host=self.tunnel.host,
                why=describe_tls_failure(reason, None, None),
            )
        self._disconnected()

    def _disconnected(self) -> None:
        client = getattr(self, "client_conn", None)
        factory: ProxyFactory | None = getattr(self, "factory", None)
        if client is None or factory is None:
            return
        client.timestamp_end = factory.reactor.seconds()
        factory.connections -= 1
        factory.run_detached("client_disconnected", client)


class ProxyFactory(HTTPFactory):
    """
    Builds :class:`Proxy` channels sharing one configuration: the hooks, the
    upstream pool and the limits.

    :param reactor: The reactor for timeouts, timestamps and, by default,
        upstream connections.
    :param addons: Addon objects, run in order after the request class's own
        hook methods.
    :param request_factory: The :class:`ProxyRequest` subclass to use.
    :raises AddonError: if an addon or *request_factory* has a misspelt hook,
        or *request_factory* defines a connection hook (those belong in
        addons: a request lives for one request).
    :param endpoint_factory: Makes the endpoint for an upstream connection
        from ``(scheme, host, port)``; by default a ``HostnameEndpoint``.
    :param body_limit: Bodies up to this many bytes are buffered for hooks.
    :param timeout: Seconds an idle client connection is kept open.
    :param connect_timeout: Seconds to wait for an upstream connection.
    :param pool: The upstream connection pool; by default a new one.
    :param cert_store: Mints the certificates for intercepted CONNECT
        tunnels; without one, every tunnel is passed through untouched.
    :param ignore_hosts: Regular expressions searched in ``host:port`` of a
        CONNECT: matching tunnels are passed through untouched.
    :param upstream_tls: TLS settings towards ``https`` origins (trust,
        ``--insecure``); by default verified against the system's store.
    :param limits: Sizes, counts and times the proxy enforces.
    :param hook_timeout: Seconds each hook's Deferred or coroutine may take;
        then it is cancelled and the flow fails with ``HookTimeout`` (500).
        ``None``: no deadline.
    :param intercept_timeout: Seconds a flow held with ``flow.intercept()``
        may wait for ``flow.resume()``; then it fails the same way. ``None``
        (the default): it waits for as long as it takes.
    :raises ValueError: if *hook_timeout* or *intercept_timeout* is not a
        positive finite number.
    :ivar contexts: The per-host TLS contexts for interception, or ``None``.
    :ivar connections: Client connections open now.
    :ivar via: This proxy's ``Via`` entry, unique to the process.
    """

    protocol = Proxy  # type: ignore[assignment]  # HTTPFactory types this as its H2 wrapper
    noisy = False

    def __init__(
        self,
        *,
        reactor: IReactorTime,
        addons: Sequence[object] = (),
        request_factory: type[ProxyRequest] = ProxyRequest,
        endpoint_factory: EndpointFactory | None = None,
        body_limit: int = DEFAULT_BODY_LIMIT,
        timeout: float = 60.0,
        connect_timeout: float = 30.0,
        pool: ConnectionPool | None = None,
        cert_store: CertificateStore | None = None,
        ignore_hosts: Sequence[str] = (),
        upstream_tls: UpstreamTLS | None = None,
        limits: Limits | None = None,
        hook_timeout: float | None = 60.0,
        intercept_timeout: float | None = None,
    ) -> None:
        super().__init__(timeout=timeout, reactor=reactor)
        self.limits = limits if limits is not None else Limits()
        self.connections = 0
        # A token of this process for Via: seeing it again means a loop.
        self.via = b"1.1 twistproxy-" + os.urandom(4).hex().encode("ascii")
        self.contexts = ServerContexts(cert_store) if cert_store is not None else None
        self._ignore_hosts = [re.compile(pattern, re.IGNORECASE) for pattern in ignore_hosts]
        self.request_factory = request_factory
        self.chain = HookChain(
            addons, first_base=ProxyRequest, clock=reactor,
            timeout=hook_timeout, intercept_timeout=intercept_timeout,
        )
        misplaced = self.chain.first_hooks(request_factory) & set(_CONNECTION_HOOKS)
        if misplaced:
            raise AddonError(
                f"{request_factory.__qualname__} defines {', '.join(sorted(misplaced))}: a "
                "ProxyRequest lives for one request, so connection hooks belong in an addon"
            )
        if endpoint_factory is None:
            endpoint_factory = _hostname_endpoints(reactor, connect_timeout)
        self.pool = pool if pool is not None else ConnectionPool(
            reactor=reactor, endpoint_factory=endpoint_factory, tls=upstream_tls,
            max_response_header_size=self.limits.max_response_header_size,
        )
        self.body_limit = body_limit
        self.pool.on_disconnect = self.server_closed

    def buildProtocol(self, addr: IAddress | None) -> Any:
        """
        Make a channel for a new client connection, or, beyond
        ``limits.max_connections``, a protocol that answers 503 and closes.
        """
        maximum = self.limits.max_connections
        if maximum and self.connections >= maximum:
            return _Busy()
        self.connections += 1
        return self._channel(addr)

    def _channel(self, addr: IAddress | None) -> Proxy:
        channel: Proxy = super().buildProtocol(addr)  # type: ignore[assignment]
        channel.requestFactory = self.request_factory
        return channel

    def ignores(self, host: str, port: int) -> bool:
        """Whether a CONNECT to *host*:*port* is passed through untouched."""
        hostport = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        return any(pattern.search(hostport) for pattern in self._ignore_hosts)

    def intercept_context(self, host: str) -> Any:
        """
        The TLS context presenting *host*'s certificate, minted if need be.

        :raises Exception: whatever minting raised (the CA expired, say).
        """
        assert self.contexts is not None
        return self.contexts.context_for(host)

    def intercepting_protocol(self, channel: Proxy, tunnel: Tunnel) -> Any:
        """
        The protocol that takes over *channel*'s connection to intercept the
        tunnel: TLS towards the client around a new :class:`Proxy` channel
        that adopts *channel*'s client record.
        """
        assert self.contexts is not None
        inner = self._channel(channel.transport.getPeer())
        inner.adopt(channel.client_conn, tunnel)
        alsoProvides(inner, IHandshakeListener)
        creator = InterceptingServerTLS(self.contexts, tunnel.host)
        tls_factory = TLSMemoryBIOFactory(creator, False, self, clock=self.reactor)
        return tls_factory.protocol(tls_factory, inner)

    def server_closed(self, owner: ProxyClient | Relay) -> None:
        """
        A connection to an origin (pooled, or a passthrough tunnel's) closed:
        stamp its record and run ``server_disconnected``.
        """
        server = owner.server
        if server is None:
            return
        if server.timestamp_end is None:
            server.timestamp_end = self.reactor.seconds()
        self.run_detached("server_disconnected", server)

    def run_detached(self, hook: str, subject: object) -> None:
        """
        Run a connection *hook* nobody waits for; its failure is logged by
        the chain and goes no further.
        """
        if self.chain.has(hook):
            d = self.chain.run(hook, subject)
            if d is not None:
                d.addErrback(_ignore_cancel)

    def startFactory(self) -> None:
        """Nothing to start: the flow log addon replaces Twisted's access log."""

    def stopFactory(self) -> None:
        """Close the idle upstream connections."""
        self.pool.close()

    def log(self, request: Request) -> None:
        """Twisted's access log is not written; see the flow log addon."""


def _hostname_endpoints(reactor: Any, connect_timeout: float) -> EndpointFactory:
    """
    Plain TCP endpoints for IP literals (no resolver round trip), and
    ``HostnameEndpoint`` (resolution, IPv4 and IPv6 attempts) for names.
    """

    def endpoint(scheme: str, host: str, port: int) -> Any:
        tcp: Any
        if isIPAddress(host):
            tcp = TCP4ClientEndpoint(reactor, host, port, timeout=connect_timeout)
        elif isIPv6Address(host):
            tcp = TCP6ClientEndpoint(reactor, host, port, timeout=connect_timeout)
        else:
            tcp = HostnameEndpoint(reactor, host, port, timeout=connect_timeout)
        return tcp

    return endpoint
