"""
WebSockets through the proxy, end to end on 127.0.0.1: the ``websockets``
library as the origin (and as the client, through CONNECT), and a
hand-written client (wsproto on a raw socket) for the absolute-form upgrade
most libraries never send to a proxy.
"""

from __future__ import annotations

import base64
import hashlib
import os
import re
import socket
import ssl
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from cryptography.hazmat.primitives import serialization
from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.protocol import Protocol
from twisted.internet.task import deferLater
from twisted.internet.threads import deferToThread
from twisted.web.resource import Resource
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect
from websockets.sync.server import Server, ServerConnection, serve
from wsproto import ConnectionType, WSConnection
from wsproto.events import (
    AcceptConnection,
    BytesMessage,
    CloseConnection,
    Message,
    Ping,
    Pong,
    Request,
    TextMessage,
)
from wsproto.extensions import PerMessageDeflate

from tests.e2e.conftest import Running
from twistproxy.hooks import Addon
from twistproxy.http import HTTPFlow
from twistproxy.limits import Limits
from twistproxy.websocket import inject

pytestmark = pytest.mark.e2e

TIMEOUT = 10.0
FLOOD = 160  # messages of NOISE (incompressible): 40 MiB
NOISE = os.urandom(256 * 1024)


class Origin:
    """
    A ``websockets`` server in a thread: it echoes each message back with
    ``echo:`` (text) or ``b"echo:"`` (binary) in front; ``frag`` is answered
    with a message in three fragments, ``close`` with a close (4001, "bye"),
    ``big`` with a 3 MB message.
    """

    def __init__(self, tls: ssl.SSLContext | None = None) -> None:
        self.received: list[str | bytes] = []
        self.extensions: list[str | None] = []
        self.flooded = 0
        self.server: Server = serve(self._handle, "127.0.0.1", 0, ssl=tls, max_size=None)
        self.port = self.server.socket.getsockname()[1]
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self._thread.start()

    def _handle(self, ws: ServerConnection) -> None:
        assert ws.request is not None
        self.extensions.append(ws.request.headers.get("Sec-WebSocket-Extensions"))
        try:
            for message in ws:
                self.received.append(message)
                if message == "frag":
                    ws.send(["one,", "two,", "three"])
                elif message == "close":
                    ws.close(4001, "bye")
                elif message == "big":
                    ws.send(b"x" * 3_000_000)
                elif message == "flood":
                    for _ in range(FLOOD):
                        ws.send(NOISE)
                        self.flooded += 1
                elif isinstance(message, str):
                    ws.send("echo:" + message)
                else:
                    ws.send(b"echo:" + message)
        except ConnectionClosed:
            pass

    def stop(self) -> None:
        self.server.shutdown()
        self._thread.join(TIMEOUT)


@pytest.fixture
def ws_origin() -> Iterator[Origin]:
    """A plain ``ws://`` origin on 127.0.0.1."""
    origin = Origin()
    yield origin
    origin.stop()


class Flows(Addon):
    """Keeps every flow that reached ``websocket_end``, and any hook's work."""

    def __init__(self) -> None:
        self.ended: list[HTTPFlow] = []
        self.started: list[HTTPFlow] = []
        self.connects: list[HTTPFlow] = []
        self.done: Deferred[HTTPFlow] = Deferred()

    def http_connect(self, flow: HTTPFlow) -> None:
        self.connects.append(flow)

    def websocket_start(self, flow: HTTPFlow) -> None:
        self.started.append(flow)

    def websocket_end(self, flow: HTTPFlow) -> None:
        self.ended.append(flow)
        if not self.done.called:
            self.done.callback(flow)


class RawClient:
    """
    A WebSocket client on a raw socket with wsproto, sending the
    absolute-form upgrade a proxy client may send (blocking; run it in a
    thread).
    """

    def __init__(self, proxy_port: int, target: str, host: str, *,
                 deflate: bool = True) -> None:
        self.sock = socket.create_connection(("127.0.0.1", proxy_port), timeout=TIMEOUT)
        self.ws = WSConnection(ConnectionType.CLIENT)
        extensions = [PerMessageDeflate()] if deflate else []
        self.sock.sendall(self.ws.send(Request(host=host, target=target,
                                               extensions=extensions)))
        self.accepted: AcceptConnection | None = None
        self.rest: list[Any] = []
        deadline = time.monotonic() + TIMEOUT
        while self.accepted is None and time.monotonic() < deadline:
            self._read()

    def _read(self) -> None:
        data = self.sock.recv(65536)
        self.ws.receive_data(data or None)
        for event in self.ws.events():
            if isinstance(event, AcceptConnection):
                self.accepted = event
            else:
                self.rest.append(event)
        if not data:
            raise ConnectionError("closed")

    def send(self, event: Any) -> None:
        self.sock.sendall(self.ws.send(event))

    def next(self) -> Any:
        """The next event: a whole message (fragments joined), a ping, a pong, a close."""
        pieces: list[Any] = []
        deadline = time.monotonic() + TIMEOUT
        while time.monotonic() < deadline:
            while self.rest:
                event = self.rest.pop(0)
                if isinstance(event, Message):
                    pieces.append(event.data)
                    if event.message_finished:
                        kind = type(event)
                        data = "".join(pieces) if kind is TextMessage else b"".join(pieces)
                        return kind(data=data)
                    continue
                return event
            self._read()
        raise TimeoutError("no event")

    def close(self) -> None:
        self.sock.close()


def _thread(function: Callable[..., Any], *args: Any) -> Deferred[Any]:
    return deferToThread(function, *args)


@pytest_twisted.ensureDeferred
async def test_absolute_form_messages_both_ways(ws_origin: Origin, start_proxy: Any) -> None:
    """
    An absolute-form upgrade through the proxy: the 101 reaches the client
    with permessage-deflate negotiated end to end; text, binary, a
    fragmented message from each side, a ping and a close with its code and
    reason go through, and the flow holds every message uncompressed, in
    order, with its direction.
    """
    flows = Flows()
    proxy: Running = await start_proxy(addons=[flows])
    port = ws_origin.port

    def client() -> list[Any]:
        c = RawClient(proxy.port, f"http://127.0.0.1:{port}/chat", f"127.0.0.1:{port}")
        assert c.accepted is not None
        assert any(isinstance(e, PerMessageDeflate) for e in c.accepted.extensions)
        got = []
        c.send(TextMessage(data="hello " * 100))
        got.append(c.next())
        c.send(BytesMessage(data=b"\x00\x01\x02"))
        got.append(c.next())
        c.send(TextMessage(data="fr", message_finished=False))
        c.send(TextMessage(data="ag", message_finished=True))
        got.append(c.next())
        c.send(Ping(payload=b"p1"))
        got.append(c.next())
        c.send(TextMessage(data="close"))
        got.append(c.next())
        c.send(got[-1].response())
        c.close()
        return got

    got = await _thread(client)
    assert isinstance(got[0], TextMessage) and got[0].data == "echo:" + "hello " * 100
    assert isinstance(got[1], BytesMessage) and got[1].data == b"echo:\x00\x01\x02"
    assert isinstance(got[2], TextMessage) and got[2].data == "one,two,three"
    assert isinstance(got[3], Pong) and got[3].payload == b"p1"
    assert isinstance(got[4], CloseConnection)
    assert (got[4].code, got[4].reason) == (4001, "bye")
    assert ws_origin.received == ["hello " * 100, b"\x00\x01\x02", "frag", "close"]
    assert ws_origin.extensions[0] is not None and "permessage-deflate" in ws_origin.extensions[0]

    flow = await flows.done.addTimeout(TIMEOUT, reactor)
    assert flow.response is not None and flow.response.status_code == 101
    data = flow.websocket
    assert data is not None
    assert [(m.from_client, m.content) for m in data.messages] == [
        (True, b"hello " * 100), (False, b"echo:" + b"hello " * 100),
        (True, b"\x00\x01\x02"), (False, b"echo:\x00\x01\x02"),
        (True, b"frag"), (False, b"one,two,three"),
        (True, b"close"),
    ]
    assert [m.is_text for m in data.messages] == [True, True, False, False, True, True, True]
    assert (data.close_code, data.close_reason, data.closed_by_client) == (4001, "bye", False)
    assert data.timestamp_end is not None and not flow.live
    assert flows.started == [flow]
    assert proxy.factory.connections == 0  # the relay's end closed the client's record
    assert flow.client_conn.timestamp_end is not None
    assert flow.server_conn.timestamp_end is not None


def _tls_origin(pki: Any, tmp_path: Any) -> Origin:
    cert = tmp_path / "origin.pem"
    key = tmp_path / "origin.key"
    cert.write_bytes(pki.good.certificate.public_bytes(serialization.Encoding.PEM))
    key.write_bytes(pki.good.key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption()))
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(str(cert), str(key))
    return Origin(context)


def _through(proxy: Running, uri: str, cafile: Any, script: Callable[[Any], Any]) -> Any:
    """Blocking: run *script* on a ``websockets`` client connected through the proxy."""
    context = None
    if uri.startswith("wss:"):
        context = ssl.create_default_context(cafile=str(cafile))
    with connect(uri, proxy=f"http://127.0.0.1:{proxy.port}", ssl=context,
                 open_timeout=TIMEOUT, close_timeout=TIMEOUT, ping_interval=None,
                 max_size=None) as ws:
        return script(ws)


def _chat(ws: Any) -> list[Any]:
    got = []
    ws.send("hi")
    got.append(ws.recv(TIMEOUT))
    ws.send(b"\xff\x00")
    got.append(ws.recv(TIMEOUT))
    ws.send(["a", "b", "c"])  # fragmented
    got.append(ws.recv(TIMEOUT))
    ws.send("frag")
    got.append(ws.recv(TIMEOUT))
    ws.ping(b"x").wait(TIMEOUT)
    ws.close(1000, "done")
    got.append((ws.close_code, ws.close_reason))
    return got


_CHAT = ["echo:hi", b"echo:\xff\x00", "echo:abc", "one,two,three", (1000, "done")]


@pytest_twisted.ensureDeferred
async def test_intercepted_wss(pki: Any, tmp_path: Any, start_https_proxy: Any) -> None:
    """
    A ``websockets`` client opening wss:// through the proxy (CONNECT, then
    TLS intercepted with the proxy's CA) to a wss origin: messages both
    ways, compressed, fragmented, a ping and the client's close; the flow
    inside the tunnel is an https flow with every message.
    """
    origin = _tls_origin(pki, tmp_path)
    try:
        flows = Flows()
        proxy = await start_https_proxy(addons=[flows])
        got = await _thread(_through, proxy, f"wss://localhost:{origin.port}/x",
                            pki.proxy_ca_pem, _chat)
        assert got == _CHAT
        flow = await flows.done.addTimeout(TIMEOUT, reactor)
        assert flow.request is not None and flow.request.scheme == "https"
        assert flow.websocket is not None
        assert [m.content for m in flow.websocket.messages] == [
            b"hi", b"echo:hi", b"\xff\x00", b"echo:\xff\x00", b"abc", b"echo:abc",
            b"frag", b"one,two,three"]
        assert (flow.websocket.close_code, flow.websocket.closed_by_client) == (1000, True)
        assert origin.extensions[0] is not None
        assert proxy.factory.connections == 0
    finally:
        origin.stop()


@pytest_twisted.ensureDeferred
async def test_passthrough_tunnel(ws_origin: Origin, start_https_proxy: Any) -> None:
    """
    ``websockets`` through an intercepting proxy told to leave the origin
    alone (``--ignore-hosts``): its CONNECT to the ws:// origin is a raw
    tunnel, and the WebSocket works through it (no WebSocket flow: the
    proxy never sees the messages).
    """
    flows = Flows()
    proxy = await start_https_proxy(addons=[flows],
                                    ignore_hosts=[rf"^127\.0\.0\.1:{ws_origin.port}$"])
    got = await _thread(_through, proxy, f"ws://127.0.0.1:{ws_origin.port}/", None, _chat)
    assert got == _CHAT
    assert flows.ended == []
    assert [flow.passthrough for flow in flows.connects] == [True]


class Rewrite(Addon):
    """
    Upper-cases ``up:`` messages, drops ``secret``, changes the origin's
    ``echo:2``, delays the first client message.
    """

    def __init__(self) -> None:
        self.first = True

    def websocket_message(self, flow: HTTPFlow) -> Any:
        assert flow.websocket is not None
        message = flow.websocket.messages[-1]
        if message.content.startswith(b"up:"):
            message.text = message.text.upper()
        if message.content == b"secret":
            message.drop()
        if message.content == b"echo:2":
            message.content = b"changed"
        if message.from_client and self.first:
            self.first = False
            return deferLater(reactor, 0.2, lambda: None)
        return None


@pytest_twisted.ensureDeferred
async def test_hooks_change_drop_and_keep_order(ws_origin: Origin, start_proxy: Any) -> None:
    """
    A ``websocket_message`` hook that changes one message and drops
    another; its Deferred holds the first message back, and the ones the
    client sent meanwhile arrive after it, in order.
    """
    flows = Flows()
    proxy = await start_proxy(addons=[Rewrite(), flows])
    port = ws_origin.port

    def client() -> list[Any]:
        c = RawClient(proxy.port, f"http://127.0.0.1:{port}/", f"127.0.0.1:{port}")
        for text in ("1", "secret", "2", "up:three"):
            c.send(TextMessage(data=text))
        got = [c.next().data for _ in range(3)]
        c.send(CloseConnection(code=1000))
        got.append(c.next())
        c.close()
        return got

    got = await _thread(client)
    assert got[:3] == ["echo:1", "changed", "echo:UP:THREE"]
    assert ws_origin.received == ["1", "2", "UP:THREE"]
    flow = await flows.done.addTimeout(TIMEOUT, reactor)
    assert flow.websocket is not None
    dropped = [m.content for m in flow.websocket.messages if m.dropped]
    assert dropped == [b"secret"]


@pytest_twisted.ensureDeferred
async def test_message_limit_closes_1009(ws_origin: Origin, start_proxy: Any) -> None:
    """
    A message beyond the limit closes the WebSocket both ways with 1009,
    and the flow says why.
    """
    flows = Flows()
    proxy = await start_proxy(addons=[flows], limits=Limits(max_websocket_message=1_000_000))
    port = ws_origin.port

    def client() -> Any:
        c = RawClient(proxy.port, f"http://127.0.0.1:{port}/", f"127.0.0.1:{port}")
        c.send(TextMessage(data="big"))
        event = c.next()
        c.close()
        return event

    event = await _thread(client)
    assert isinstance(event, CloseConnection) and event.code == 1009
    flow = await flows.done.addTimeout(TIMEOUT, reactor)
    assert flow.websocket is not None and flow.websocket.close_code == 1009
    assert "1000000 bytes" in (flow.websocket.close_reason or "")


class Injector(Addon):
    """Answers a client's ``inject`` by injecting a message each way."""

    def websocket_message(self, flow: HTTPFlow) -> None:
        assert flow.websocket is not None
        if flow.websocket.messages[-1].content == b"inject":
            flow.websocket.messages[-1].drop()
            inject(flow, "to-client", to_client=True)
            inject(flow, b"to-origin", to_client=False)


@pytest_twisted.ensureDeferred
async def test_inject_both_ways(ws_origin: Origin, start_proxy: Any) -> None:
    """Messages injected towards each side arrive there, and are recorded."""
    flows = Flows()
    proxy = await start_proxy(addons=[Injector(), flows])
    port = ws_origin.port

    def client() -> list[Any]:
        c = RawClient(proxy.port, f"http://127.0.0.1:{port}/", f"127.0.0.1:{port}")
        c.send(TextMessage(data="inject"))
        got = [c.next(), c.next()]
        c.send(CloseConnection(code=1000))
        c.close()
        return got

    got = await _thread(client)
    assert [type(e) for e in got] == [TextMessage, BytesMessage]
    assert (got[0].data, got[1].data) == ("to-client", b"echo:to-origin")
    assert ws_origin.received == [b"to-origin"]
    flow = await flows.done.addTimeout(TIMEOUT, reactor)
    assert flow.websocket is not None
    assert [(m.content, m.injected) for m in flow.websocket.messages[:3]] == [
        (b"inject", False), (b"to-client", True), (b"to-origin", True)]


@pytest_twisted.ensureDeferred
async def test_saved_and_logged(ws_origin: Origin, start_proxy: Any, tmp_path: Any) -> None:
    """
    With saving on (``--save``'s addon) and the flow log, a WebSocket flow
    is saved once, when it closes, with its messages, and read back; its
    log line says it was a WebSocket.
    """
    from twisted.logger import globalLogPublisher

    from twistproxy.addons.flowlog import FlowLog
    from twistproxy.addons.save import SaveFlows
    from twistproxy.filters import parse
    from twistproxy.flowfile import load_flows

    path = tmp_path / "flows.jsonl"
    save = SaveFlows(open(path, "ab"))
    flows = Flows()
    lines: list[str] = []

    def observe(event: dict[str, Any]) -> None:
        if event.get("log_namespace") == "twistproxy.flow":
            lines.append(event["line"])

    globalLogPublisher.addObserver(observe)
    try:
        proxy = await start_proxy(addons=[FlowLog(), save, flows])
        got = await _thread(_through_absolute, proxy.port, ws_origin.port)
        assert got == ["echo:saved", b"echo:\x01"]
        await flows.done.addTimeout(TIMEOUT, reactor)
    finally:
        globalLogPublisher.removeObserver(observe)
        save.close()
    [flow] = load_flows(path)
    assert flow.websocket is not None and parse("~websocket")(flow)
    assert [(m.from_client, m.content) for m in flow.websocket.messages] == [
        (True, b"saved"), (False, b"echo:saved"), (True, b"\x01"), (False, b"echo:\x01")]
    assert flow.websocket.close_code == 1000
    [line] = lines
    assert "-> 101 websocket: 4 messages, closed by the client (1000)" in line


def _through_absolute(proxy_port: int, port: int) -> list[Any]:
    c = RawClient(proxy_port, f"http://127.0.0.1:{port}/", f"127.0.0.1:{port}")
    c.send(TextMessage(data="saved"))
    got = [c.next().data]
    c.send(BytesMessage(data=b"\x01"))
    got.append(c.next().data)
    c.send(CloseConnection(code=1000))
    assert isinstance(c.next(), CloseConnection)
    c.close()
    return got


class _Wait(Resource):
    """An image that is answered once *ready* fires: the page's load waits for it."""

    isLeaf = True

    def __init__(self, ready: Deferred[None]) -> None:
        super().__init__()
        self.ready = ready

    def render_GET(self, request: Any) -> Any:
        from twisted.web.server import NOT_DONE_YET

        from tests.e2e.test_chromium_e2e import IMAGE

        def answer(_: object) -> None:
            request.setHeader(b"content-type", b"image/png")
            request.write(IMAGE)
            request.finish()

        self.ready.addCallback(answer)
        return NOT_DONE_YET


class _Browser(Flows):
    """
    Rewrites the origin's answer, and lets the page finish loading once the
    page reported (with a message of its own) what it received.
    """

    def __init__(self) -> None:
        super().__init__()
        self.reported: Deferred[None] = Deferred()

    def websocket_message(self, flow: HTTPFlow) -> None:
        assert flow.websocket is not None
        message = flow.websocket.messages[-1]
        if not message.from_client:
            message.text = "changed by the proxy"
        elif message.text.startswith("got ") and not self.reported.called:
            self.reported.callback(None)


@pytest_twisted.ensureDeferred
async def test_chromium_websocket_through_interception(
    tmp_path: Path, pki: Any, start_https_proxy: Any
) -> None:
    """
    Headless Chromium, trusting the proxy's CA, loads an HTTPS page whose
    script opens a wss:// WebSocket through the intercepting proxy; the
    message hook's change reaches the page, and the flow holds the messages
    both ways.
    """
    from tests.e2e.test_chromium_e2e import (
        CERTUTIL,
        CHROMIUM,
        Bytes,
        dump_dom,
        nss_database,
    )

    if CHROMIUM is None or CERTUTIL is None:
        pytest.skip("chromium and certutil (libnss3-tools) are not both installed")
    from twisted.protocols.tls import TLSMemoryBIOFactory
    from twisted.web.server import Site

    from tests.e2e.pki import OriginTLS

    ws = _tls_origin(pki, tmp_path)
    browser = _Browser()
    page = f"""<!doctype html>
<html><head><meta charset="utf-8"><title>not yet</title></head><body>
<p id="ws">waiting</p>
<script>
var ws = new WebSocket("wss://localhost:{ws.port}/chat");
ws.onopen = function () {{ ws.send("hello from chromium"); }};
ws.onmessage = function (event) {{
  document.getElementById("ws").textContent = "got " + event.data;
  ws.send("got " + event.data);
}};
</script>
<img src="/wait" width="1" height="1" alt="">
</body></html>
""".encode()
    root = Resource()
    root.putChild(b"", Bytes(page, "text/html; charset=utf-8"))
    root.putChild(b"wait", _Wait(browser.reported))
    site = Site(root)
    listening = reactor.listenTCP(0, TLSMemoryBIOFactory(OriginTLS(pki.good), False, site),
                                  interface="127.0.0.1")
    try:
        proxy = await start_https_proxy(addons=[browser])
        await nss_database(tmp_path, pki.proxy_ca_pem)
        code, dom, err = await dump_dom(
            tmp_path, proxy, f"https://localhost:{listening.getHost().port}/")
        assert code == 0, err[-3000:]
        assert '<p id="ws">got changed by the proxy</p>' in dom, (dom, err[-3000:])
        flow = await browser.done.addTimeout(TIMEOUT, reactor)
        assert flow.request is not None and flow.request.scheme == "https"
        assert flow.websocket is not None
        assert [(m.from_client, m.text) for m in flow.websocket.messages][:3] == [
            (True, "hello from chromium"), (False, "changed by the proxy"),
            (True, "got changed by the proxy")]
        assert ws.received[:2] == ["hello from chromium", "got changed by the proxy"]
    finally:
        await listening.stopListening()
        ws.stop()


@pytest_twisted.ensureDeferred
async def test_slow_reader_holds_the_origin_back(ws_origin: Origin, start_proxy: Any) -> None:
    """
    A client that stops reading while the origin floods it: the proxy stops
    reading from the origin (it has relayed, and so recorded, a few MiB at
    most, out of 40), and everything arrives once the client reads again.
    """
    flows = Flows()
    proxy = await start_proxy(addons=[flows])
    port = ws_origin.port
    stalled = threading.Event()
    go_on = threading.Event()

    def client() -> int:
        c = RawClient(proxy.port, f"http://127.0.0.1:{port}/", f"127.0.0.1:{port}",
                                 deflate=False)
        c.send(TextMessage(data="flood"))
        stalled.set()
        go_on.wait(TIMEOUT)
        total = 0
        for _ in range(FLOOD):
            total += len(c.next().data)
        c.send(CloseConnection(code=1000))
        c.close()
        return total

    result = _thread(client)
    await deferToThread(stalled.wait, TIMEOUT)
    await deferLater(reactor, 1.0, lambda: None)
    relayed = sum(len(m.content) for m in flows.started[0].websocket.messages)  # type: ignore[union-attr]
    flooded = ws_origin.flooded
    go_on.set()
    total = await result
    assert total == FLOOD * len(NOISE)
    assert relayed < 12 * 1024 * 1024, relayed
    assert flooded < FLOOD, flooded


class _OpaqueOrigin(Protocol):
    """
    A WebSocket origin that negotiates an extension nobody else knows
    (``x-opaque``) and then echoes raw bytes with ``echo:`` in front (or,
    with *hang_up*, closes right after its 101, with no extension).
    """

    extension = b"\r\nSec-WebSocket-Extensions: x-opaque"
    hang_up = False

    def __init__(self) -> None:
        self.head = b""
        self.switched = False

    def dataReceived(self, data: bytes) -> None:
        if self.switched:
            self.transport.write(b"echo:" + data)  # type: ignore[union-attr]
            return
        self.head += data
        if b"\r\n\r\n" not in self.head:
            return
        head, rest = self.head.split(b"\r\n\r\n", 1)
        found = re.search(rb"(?im)^sec-websocket-key: *(\S+)", head)
        assert found is not None
        accept = base64.b64encode(hashlib.sha1(
            found.group(1) + b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11").digest())
        self.transport.write(  # type: ignore[union-attr]
            b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
            b"Connection: Upgrade\r\nSec-WebSocket-Accept: " + accept
            + self.extension + b"\r\n\r\n")
        self.switched = True
        if self.hang_up:
            self.transport.loseConnection()  # type: ignore[union-attr]
            return
        if rest:
            self.dataReceived(rest)


@pytest_twisted.ensureDeferred
async def test_unknown_extension_relayed_raw(start_proxy: Any) -> None:
    """
    A WebSocket whose 101 negotiated an extension the proxy cannot read is
    relayed as raw bytes (no messages recorded), and its flow still ends
    with websocket_end.
    """
    from twisted.internet.protocol import Factory

    listening = reactor.listenTCP(0, Factory.forProtocol(_OpaqueOrigin), interface="127.0.0.1")
    port = listening.getHost().port
    flows = Flows()
    try:
        proxy = await start_proxy(addons=[flows])

        def client() -> bytes:
            with socket.create_connection(("127.0.0.1", proxy.port), timeout=TIMEOUT) as sock:
                sock.sendall(
                    b"GET http://127.0.0.1:%d/ HTTP/1.1\r\nHost: 127.0.0.1:%d\r\n"
                    b"Connection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13"
                    b"\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
                    b"Sec-WebSocket-Extensions: x-opaque\r\n\r\n" % (port, port))
                received = b""
                while b"\r\n\r\n" not in received:
                    received += sock.recv(4096)
                assert received.startswith(b"HTTP/1.1 101 "), received
                assert b"x-opaque" in received
                sock.sendall(b"\x81\x85opaque")
                reply = b""
                while len(reply) < 11:
                    reply += sock.recv(4096)
                return reply

        assert await _thread(client) == b"echo:\x81\x85opaque"
        flow = await flows.done.addTimeout(TIMEOUT, reactor)
        assert flow.websocket is not None and flow.websocket.messages == []
        assert flows.started == []
    finally:
        await listening.stopListening()


@pytest_twisted.ensureDeferred
async def test_request_subclass_hooks_run_first(ws_origin: Origin, start_proxy: Any) -> None:
    """
    A ProxyRequest subclass's websocket_message runs before the addons', as
    every other hook of its does.
    """
    from twistproxy.proxy import ProxyRequest

    order: list[str] = []

    class Sub(ProxyRequest):
        def websocket_message(self, flow: HTTPFlow) -> None:
            order.append("request class")

    class Later(Flows):
        def websocket_message(self, flow: HTTPFlow) -> None:
            order.append("addon")

    flows = Later()
    proxy = await start_proxy(addons=[flows], request_factory=Sub)
    got = await _thread(_through_absolute, proxy.port, ws_origin.port)
    assert got == ["echo:saved", b"echo:\x01"]
    await flows.done.addTimeout(TIMEOUT, reactor)
    assert order == ["request class", "addon"] * 4


class _HangUp(_OpaqueOrigin):
    extension = b""
    hang_up = True


class _SlowResponse(Flows):
    """Holds the 101 in its response hook for a moment."""

    def response(self, flow: HTTPFlow) -> Deferred[None]:
        return deferLater(reactor, 0.3, lambda: None)


@pytest_twisted.ensureDeferred
async def test_origin_gone_before_the_switch(start_proxy: Any) -> None:
    """
    An origin that closes right after its 101, while the response hook
    still runs: the client gets the 101, then its connection ends (no
    close frame came from anywhere: 1006), and the flow ends.
    """
    from twisted.internet.protocol import Factory

    listening = reactor.listenTCP(0, Factory.forProtocol(_HangUp), interface="127.0.0.1")
    port = listening.getHost().port
    flows = _SlowResponse()
    try:
        proxy = await start_proxy(addons=[flows])

        def client() -> Any:
            c = RawClient(proxy.port, f"http://127.0.0.1:{port}/", f"127.0.0.1:{port}",
                          deflate=False)
            assert c.accepted is not None
            try:
                event = c.next()
            except ConnectionError:  # the end, once wsproto has seen it
                event = c.rest[-1] if c.rest else None
            c.close()
            return event

        event = await _thread(client)
        assert isinstance(event, CloseConnection) and event.code == 1006
        flow = await flows.done.addTimeout(TIMEOUT, reactor)
        assert flow.websocket is not None and flow.websocket.close_code == 1006
        assert not flow.live
    finally:
        await listening.stopListening()


@pytest_twisted.ensureDeferred
async def test_twistd_save_filter_limit_and_log(ws_origin: Origin, tmp_path: Path) -> None:
    """
    ``twistd twistproxy --save F --save-filter ~websocket
    --max-websocket-message 1m``: the WebSocket flows are saved with their
    messages (and read back), a message over 1 MiB closes its WebSocket
    with 1009, and each WebSocket's log line says so.
    """
    from tests.e2e.test_twistd import output_contains, start_twistd
    from twistproxy.flowfile import load_flows

    saved = tmp_path / "flows.jsonl"
    child, port = await start_twistd(tmp_path, "--save", str(saved), "--save-filter",
                                     "~websocket", "--max-websocket-message", "1m")
    try:
        got = await _thread(_through_absolute, port, ws_origin.port)
        assert got == ["echo:saved", b"echo:\x01"]

        def too_big() -> Any:
            c = RawClient(port, f"http://127.0.0.1:{ws_origin.port}/",
                          f"127.0.0.1:{ws_origin.port}")
            c.send(TextMessage(data="big"))
            event = c.next()
            c.close()
            return event

        event = await _thread(too_big)
        assert isinstance(event, CloseConnection) and event.code == 1009
        await output_contains(child, "101 websocket: 4 messages, closed by the client (1000)")
        await output_contains(child, "101 websocket: 1 message, closed (1009 message over "
                                     "1048576 bytes)")
    finally:
        await child.stop()
    flows = load_flows(saved)
    assert [[m.content for m in f.websocket.messages] for f in flows] == [  # type: ignore[union-attr]
        [b"saved", b"echo:saved", b"\x01", b"echo:\x01"], [b"big"]]


@pytest_twisted.ensureDeferred
async def test_ws_inside_an_intercepted_plain_tunnel(ws_origin: Origin,
                                                     start_https_proxy: Any) -> None:
    """
    ``websockets`` opening ws:// through an intercepting proxy: its CONNECT
    tunnel carries plain HTTP (the proxy detects it), and the upgrade inside
    is relayed with the message hooks like any other.
    """
    flows = Flows()
    proxy = await start_https_proxy(addons=[flows])
    got = await _thread(_through, proxy, f"ws://127.0.0.1:{ws_origin.port}/plain", None, _chat)
    assert got == _CHAT
    flow = await flows.done.addTimeout(TIMEOUT, reactor)
    assert flow.request is not None and flow.request.scheme == "http"
    assert flow.request.path == "/plain"
    assert flow.websocket is not None
    assert [m.content for m in flow.websocket.messages][:2] == [b"hi", b"echo:hi"]
    assert [f.passthrough for f in flows.connects] == [False]
