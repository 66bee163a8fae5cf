"""
Hooks end to end: addons and ProxyRequest subclasses changing, answering,
holding and killing real traffic.
"""

from __future__ import annotations

import gzip
import json
import time
from typing import Any

import pytest
import pytest_twisted
from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.task import deferLater

from tests.e2e.conftest import Running, parse_responses, raw
from tests.e2e.test_http_e2e import echoed, get
from twistproxy.hooks import Addon
from twistproxy.http import HTTPFlow, Response
from twistproxy.proxy import ProxyRequest

pytestmark = pytest.mark.e2e


class Ends(Addon):
    """Records each flow's terminal hook, to check there is exactly one."""

    def __init__(self) -> None:
        self.ends: dict[str, list[str]] = {}
        self.flows: list[HTTPFlow] = []

    def response(self, flow: HTTPFlow) -> None:
        self.ends.setdefault(flow.id, []).append("response")
        self.flows.append(flow)

    def error(self, flow: HTTPFlow) -> None:
        self.ends.setdefault(flow.id, []).append("error")
        self.flows.append(flow)

    def check_one_each(self) -> None:
        assert all(len(events) == 1 for events in self.ends.values()), self.ends


@pytest_twisted.ensureDeferred
async def test_request_hook_answers_without_origin(origin: Running, start_proxy: Any) -> None:
    """A ``request`` hook that sets flow.response answers; the origin sees nothing."""

    class Answer(Addon):
        def request(self, flow: HTTPFlow) -> None:
            flow.response = Response.make(418, "short and stout", {"X-Answered": "yes"})

    ends = Ends()
    proxy = await start_proxy(addons=[Answer(), ends])
    body = b"x" * 5000
    [parsed] = parse_responses(await raw(proxy.port, get(
        origin, method="POST", headers=f"Content-Length: {len(body)}\r\n", body=body)))
    assert (parsed.status, parsed.body) == (418, b"short and stout")
    assert parsed.header(b"x-answered") == b"yes"
    assert origin.factory.received == []
    ends.check_one_each()
    assert list(ends.ends.values()) == [["response"]]


@pytest_twisted.ensureDeferred
async def test_deferred_and_coroutine_hooks_are_awaited(origin: Running,
                                                        start_proxy: Any) -> None:
    """
    A hook returning a Deferred and an ``async def`` hook are both waited
    for, in order, and their changes reach the origin and the client.
    """
    order: list[str] = []

    class Slow(Addon):
        def request(self, flow: HTTPFlow) -> Deferred[None]:
            def change() -> None:
                order.append("slow")
                flow.request.headers["X-Slow"] = "1"

            return deferLater(reactor, 0.05, change)

    class Async(Addon):
        async def request(self, flow: HTTPFlow) -> None:
            await deferLater(reactor, 0.01, lambda: None)
            order.append("async")
            flow.request.headers["X-Async"] = "after " + flow.request.headers["X-Slow"]

        async def response(self, flow: HTTPFlow) -> None:
            await deferLater(reactor, 0.01, lambda: None)
            flow.response.headers["X-Seen"] = "yes"

    proxy = await start_proxy(addons=[Slow(), Async()])
    response = await raw(proxy.port, get(origin))
    report = echoed(response)
    assert order == ["slow", "async"]
    assert ["X-Async", "after 1"] in report["headers"]
    assert parse_responses(response)[0].header(b"x-seen") == b"yes"


@pytest_twisted.ensureDeferred
async def test_response_hook_changes_content(origin: Running, start_proxy: Any) -> None:
    """
    A ``response`` hook sees the decoded body of a gzip response and may
    replace it; the client gets the new body, re-encoded, with its length.
    """
    seen: list[bytes] = []

    class Shout(Addon):
        def response(self, flow: HTTPFlow) -> None:
            seen.append(flow.response.content)
            flow.response.content = flow.response.content.upper()

    proxy = await start_proxy(addons=[Shout()])
    [parsed] = parse_responses(await raw(proxy.port, get(origin, "/gzip")))
    assert seen == [b"hello, compressed world"]
    assert gzip.decompress(parsed.body) == b"HELLO, COMPRESSED WORLD"
    assert int(parsed.header(b"content-length")) == len(parsed.body)


@pytest_twisted.ensureDeferred
async def test_subclass_hooks_run_first(origin: Running, start_proxy: Any) -> None:
    """The ProxyRequest subclass's own hooks run before the addons'."""
    order: list[str] = []

    class Mine(ProxyRequest):
        def request(self, flow: HTTPFlow) -> Deferred[None]:
            order.append("subclass")
            return deferLater(reactor, 0.01, lambda: None)

    class Later(Addon):
        def request(self, flow: HTTPFlow) -> None:
            order.append("addon")

    proxy = await start_proxy(request_factory=Mine, addons=[Later()])
    echoed(await raw(proxy.port, get(origin)))
    assert order == ["subclass", "addon"]


@pytest_twisted.ensureDeferred
async def test_hook_exception_is_500_and_proxy_goes_on(
    origin: Running, start_proxy: Any
) -> None:
    """
    A hook that raises is answered with a 500 naming the failed hook, the
    flow records the error, and the next request is served normally.
    """

    class Broken(Addon):
        def request(self, flow: HTTPFlow) -> None:
            if "boom" in flow.request.path:
                raise ZeroDivisionError("kaboom")

    ends = Ends()
    proxy = await start_proxy(addons=[Broken(), ends])
    [parsed] = parse_responses(await raw(proxy.port, get(origin, "/echo?boom")))
    assert parsed.status == 500
    assert b"hook 'request'" in parsed.body and b"kaboom" in parsed.body
    echoed(await raw(proxy.port, get(origin, "/echo?fine")))
    ends.check_one_each()
    failed = [flow for flow in ends.flows if flow.error is not None]
    assert len(failed) == 1 and "kaboom" in failed[0].error.msg
    assert [r.target for r in origin.factory.received] == [b"/echo?fine"]


@pytest_twisted.ensureDeferred
async def test_kill_closes_client_without_answer(origin: Running, start_proxy: Any) -> None:
    """``flow.kill()`` in a hook closes the client connection; no origin request."""

    class Killer(Addon):
        def requestheaders(self, flow: HTTPFlow) -> None:
            flow.kill()

    proxy = await start_proxy(addons=[Killer()])
    assert await raw(proxy.port, get(origin)) == b""
    assert origin.factory.received == []


@pytest_twisted.ensureDeferred
async def test_intercept_holds_until_resume(origin: Running, start_proxy: Any) -> None:
    """An intercepted flow waits for ``resume()`` before reaching the origin."""
    held: list[HTTPFlow] = []

    class Hold(Addon):
        def request(self, flow: HTTPFlow) -> None:
            flow.intercept()
            held.append(flow)

    proxy = await start_proxy(addons=[Hold()])
    answer = raw(proxy.port, get(origin))
    await deferLater(reactor, 0.2, lambda: None)
    assert len(held) == 1 and origin.factory.received == []
    held[0].request.headers["X-Edited"] = "while held"
    held[0].resume()
    report = echoed(await answer)
    assert ["X-Edited", "while held"] in report["headers"]


@pytest_twisted.ensureDeferred
async def test_stream_flag_from_responseheaders(origin: Running, start_proxy: Any) -> None:
    """
    ``flow.response.stream = True`` in ``responseheaders`` streams a small
    body, although a ``response`` hook reads bodies whole: the client gets
    all of it as it comes (chunked: the origin sends it a piece at a time),
    and the hook sees what was recorded (all of it: it is under the limit).
    """
    contents: list[object] = []

    class Stream(Addon):
        def responseheaders(self, flow: HTTPFlow) -> None:
            flow.response.stream = True

        def response(self, flow: HTTPFlow) -> None:
            contents.append(flow.response.raw_content)
            ends_sizes.append(flow.response.body_size)

    ends_sizes: list[int | None] = []
    proxy = await start_proxy(addons=[Stream()])
    [parsed] = parse_responses(await raw(proxy.port, get(origin, "/trickle/5/20")))
    trickled = b"".join(b"piece-%d\n" % i for i in range(5))
    assert parsed.body == trickled
    assert parsed.header(b"transfer-encoding") == b"chunked"
    assert contents == [trickled]
    assert ends_sizes == [len(trickled)]


@pytest_twisted.ensureDeferred
async def test_stream_flag_from_requestheaders(origin: Running, start_proxy: Any) -> None:
    """A request streamed by ``requestheaders`` reaches the origin whole."""

    class Stream(Addon):
        def requestheaders(self, flow: HTTPFlow) -> None:
            flow.request.stream = True

        def request(self, flow: HTTPFlow) -> None:
            assert flow.request.raw_content is None

    proxy = await start_proxy(addons=[Stream()])
    body = b"y" * 100_000
    report = echoed(await raw(proxy.port, get(
        origin, method="PUT", headers=f"Content-Length: {len(body)}\r\n", body=body)))
    assert report["length"] == len(body)


@pytest_twisted.ensureDeferred
async def test_connection_hooks(origin: Running, start_proxy: Any) -> None:
    """Client and server connection hooks fire with their connection records."""
    events: list[tuple[str, Any]] = []

    class Connections(Addon):
        def client_connected(self, client: Any) -> None:
            events.append(("client_connected", client.peername[0]))

        def client_disconnected(self, client: Any) -> None:
            events.append(("client_disconnected", client.timestamp_end is not None))

        def server_connected(self, server: Any) -> None:
            events.append(("server_connected", server.address))

    proxy = await start_proxy(addons=[Connections()])
    echoed(await raw(proxy.port, get(origin)))
    await deferLater(reactor, 0.05, lambda: None)
    assert events == [
        ("client_connected", "127.0.0.1"),
        ("server_connected", ("127.0.0.1", origin.port)),
        ("client_disconnected", True),
    ]


@pytest_twisted.ensureDeferred
async def test_request_hook_sees_whole_body(origin: Running, start_proxy: Any) -> None:
    """Below the limit, the ``request`` hook sees the whole body and may change it."""

    class Rewrite(Addon):
        def request(self, flow: HTTPFlow) -> None:
            data = json.loads(flow.request.content)
            flow.request.content = json.dumps({"count": data["count"] + 1}).encode()

    proxy = await start_proxy(addons=[Rewrite()])
    body = b'{"count": 41}'
    request = get(origin, method="POST",
                  headers=f"Content-Length: {len(body)}\r\nContent-Type: application/json\r\n",
                  body=body)
    report = echoed(await raw(proxy.port, request))
    assert report["length"] == len(b'{"count": 42}')


@pytest_twisted.ensureDeferred
async def test_killed_flow_ends_with_error_hook(origin: Running, start_proxy: Any) -> None:
    """A killed flow runs the ``error`` hook once, with the killed message."""

    class Killer(Addon):
        def request(self, flow: HTTPFlow) -> None:
            flow.kill()

    ends = Ends()
    proxy = await start_proxy(addons=[Killer(), ends])
    assert await raw(proxy.port, get(origin)) == b""
    await deferLater(reactor, 0.05, lambda: None)
    assert list(ends.ends.values()) == [["error"]]
    assert ends.flows[0].error.msg == "Connection killed."


@pytest_twisted.ensureDeferred
async def test_failing_error_hook_still_answers(start_proxy: Any) -> None:
    """
    When the ``error`` hook itself raises, the client still gets the page
    for the original failure instead of hanging.
    """
    import socket as socket_module

    class BrokenError(Addon):
        def error(self, flow: HTTPFlow) -> None:
            raise RuntimeError("error hook broke")

    proxy = await start_proxy(addons=[BrokenError()])
    with socket_module.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    request = (f"GET http://127.0.0.1:{port}/ HTTP/1.1\r\n"
               "Connection: close\r\n\r\n").encode()
    [parsed] = parse_responses(await raw(proxy.port, request, timeout=5))
    assert parsed.status == 502 and b"connection refused" in parsed.body


@pytest_twisted.ensureDeferred
async def test_answer_from_hook_has_timestamps(origin: Running, start_proxy: Any) -> None:
    """A response made by a hook gets timestamps, so its flow has a duration."""

    class Answer(Addon):
        def request(self, flow: HTTPFlow) -> None:
            flow.response = Response.make(200, b"made")

    ends = Ends()
    proxy = await start_proxy(addons=[Answer(), ends])
    await raw(proxy.port, get(origin))
    response = ends.flows[0].response
    assert response.timestamp_start is not None and response.timestamp_end is not None


# -- deadlines ------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_failing_client_connected_still_serves(origin: Running,
                                                     start_proxy: Any) -> None:
    """
    A ``client_connected`` hook that raises, or whose Deferred outlives the
    hook deadline, is logged and the client is served as if it were absent
    (it used to drop every client without an answer).
    """

    class Raises(Addon):
        def client_connected(self, client: Any) -> None:
            raise RuntimeError("connection hook bug")

    class Slow(Addon):
        def client_connected(self, client: Any) -> Deferred[None]:
            return Deferred()

    for addon, timeout in ((Raises(), 60.0), (Slow(), 0.3)):
        proxy = await start_proxy(addons=[addon], hook_timeout=timeout)
        assert echoed(await raw(proxy.port, get(origin)))["method"] == "GET"


class Stuck(Addon):
    """A ``request`` hook whose Deferred never fires; records its cancellation."""

    def __init__(self) -> None:
        self.cancelled: list[Deferred[None]] = []

    def request(self, flow: HTTPFlow) -> Deferred[None]:
        return Deferred(self.cancelled.append)


class HoldForever(Addon):
    """Intercepts every flow in ``request`` and keeps it, to resume or not."""

    def __init__(self) -> None:
        self.held: list[HTTPFlow] = []

    def request(self, flow: HTTPFlow) -> None:
        flow.intercept()
        self.held.append(flow)


@pytest_twisted.ensureDeferred
async def test_hook_timeout_answers_500(origin: Running, start_proxy: Any) -> None:
    """
    A ``request`` hook whose Deferred never fires is cancelled after
    ``hook_timeout``: the client gets a 500 naming the hook and saying it
    timed out, the flow ends with its ``error`` hook, and the origin sees
    nothing.
    """
    stuck, ends = Stuck(), Ends()
    proxy = await start_proxy(addons=[stuck, ends], hook_timeout=0.5)
    started = time.monotonic()
    [parsed] = parse_responses(await raw(proxy.port, get(origin), timeout=5))
    elapsed = time.monotonic() - started
    assert parsed.status == 500, parsed.body
    assert b"hook 'request' of Stuck timed out after 0.5 s" in parsed.body
    assert 0.5 <= elapsed < 3
    assert len(stuck.cancelled) == 1
    assert list(ends.ends.values()) == [["error"]]
    assert "timed out" in ends.flows[0].error.msg
    assert origin.factory.received == []


@pytest_twisted.ensureDeferred
async def test_intercept_timeout_answers_500(origin: Running, start_proxy: Any) -> None:
    """
    A flow intercepted and never resumed is given up after
    ``intercept_timeout``: the client gets a 500 naming the hook and saying
    it timed out, and the origin sees nothing.
    """
    hold = HoldForever()
    proxy = await start_proxy(addons=[hold], intercept_timeout=0.5)
    started = time.monotonic()
    [parsed] = parse_responses(await raw(proxy.port, get(origin), timeout=5))
    elapsed = time.monotonic() - started
    assert parsed.status == 500, parsed.body
    assert b"timed out" in parsed.body and b"intercept()" in parsed.body
    assert b"hook 'request' of HoldForever" in parsed.body
    assert 0.5 <= elapsed < 3
    assert len(hold.held) == 1
    assert origin.factory.received == []


@pytest_twisted.ensureDeferred
async def test_intercept_outlives_hook_timeout(origin: Running, start_proxy: Any) -> None:
    """
    Without ``intercept_timeout``, a held flow waits past ``hook_timeout``
    for a person: resumed after that deadline, it reaches the origin and
    the client gets the origin's answer.
    """
    hold = HoldForever()
    proxy = await start_proxy(addons=[hold], hook_timeout=0.2)
    answer = raw(proxy.port, get(origin), timeout=5)
    await deferLater(reactor, 0.6, lambda: None)
    assert len(hold.held) == 1 and not answer.called
    assert origin.factory.received == []
    hold.held[0].resume()
    report = echoed(await answer)
    assert report["target"] == "/echo"


@pytest_twisted.ensureDeferred
async def test_host_and_port_set_by_hook(origin: Running, start_proxy: Any) -> None:
    """
    A hook that points a request elsewhere by setting ``host`` and ``port``
    sends it there with a Host header that names the new place.
    """

    class Redirect(Addon):
        def requestheaders(self, flow: HTTPFlow) -> None:
            flow.request.host = "127.0.0.1"
            flow.request.port = origin.port

    proxy = await start_proxy(addons=[Redirect()])
    request = (
        b"GET http://app.invalid/echo HTTP/1.1\r\n"
        b"Host: app.invalid\r\nConnection: close\r\n\r\n"
    )
    report = echoed(await raw(proxy.port, request))
    assert [v for n, v in report["headers"] if n.lower() == "host"] == [
        f"127.0.0.1:{origin.port}"
    ]


@pytest_twisted.ensureDeferred
async def test_expect_continue_refused_by_hook(origin: Running, start_proxy: Any) -> None:
    """
    With ``Expect: 100-continue``, a ``requestheaders`` hook that refuses
    the upload answers at once: the client gets the 403 without a ``100
    Continue`` and without sending its body; the origin sees nothing.
    """
    import socket

    from twisted.internet.threads import deferToThread

    class Refuse(Addon):
        def requestheaders(self, flow: HTTPFlow) -> None:
            flow.response = Response.make(403, "too big")

    proxy = await start_proxy(addons=[Refuse()])

    def talk(port: int) -> bytes:
        with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
            sock.sendall(get(origin, method="POST", close=False,
                             headers="Content-Length: 1000000\r\nExpect: 100-continue\r\n"))
            received = b""
            while not any(p.complete for p in parse_responses(received)):
                piece = sock.recv(65536)
                if not piece:
                    break
                received += piece
            return received

    received = await deferToThread(talk, proxy.port)
    assert received.startswith(b"HTTP/1.1 403 "), received
    [parsed] = parse_responses(received)
    assert parsed.body == b"too big"
    assert parsed.header(b"connection") == b"close"
    assert origin.factory.received == []
