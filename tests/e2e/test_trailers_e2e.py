"""
Trailers, end to end: the fields after a chunked body reach the other side
and the flow, both ways, whether the body streamed or was buffered.
"""

from __future__ import annotations

from typing import Any

import pytest
import pytest_twisted

from tests.e2e.conftest import Running, parse_responses, raw
from tests.e2e.test_hooks_e2e import Ends
from tests.e2e.test_http_e2e import echoed, get

pytestmark = pytest.mark.e2e


def _trailer_block(response: bytes) -> bytes:
    """What follows the last chunk of a single chunked response."""
    head, _, body = response.partition(b"\r\n\r\n")
    assert b"transfer-encoding: chunked" in head.lower(), head
    _, last, trailers = body.rpartition(b"0\r\n")
    assert last, body
    return trailers


@pytest_twisted.ensureDeferred
async def test_response_trailers_relayed_and_recorded(origin: Running, start_proxy: Any) -> None:
    """
    An origin's trailers reach the client after the body, whether the
    response was buffered for a hook (it came at once), written whole
    (nobody needs it), or streamed (the trailers came later); a field no
    trailer may carry is dropped; the flow holds them.
    """
    for addons, delay in (([Ends()], 0), ([], 0), ([], 100), ([Ends()], 100)):
        proxy = await start_proxy(addons=addons)
        response = await raw(proxy.port, get(origin, f"/trailers/{delay}"))
        [parsed] = parse_responses(response)
        assert parsed.complete and parsed.body == b"hello", response
        trailers = _trailer_block(response)
        assert trailers == b"X-Sum: abc\r\n\r\n", (addons, delay, response)
        for addon in addons:
            [flow] = addon.flows
            assert flow.response.trailers is not None
            recorded = list(flow.response.trailers.fields)
            assert recorded == [(b"X-Sum", b"abc"), (b"Host", b"elsewhere")]


@pytest_twisted.ensureDeferred
async def test_request_trailers_forwarded(origin: Running, start_proxy: Any) -> None:
    """
    A chunked upload's trailers reach the origin after its body, buffered
    for a hook or streamed, and the flow holds them; a line that is not a
    field is dropped.
    """
    body = b"5\r\nhello\r\n0\r\nX-Checksum: 123\r\nnot a field\r\nHost: evil\r\n\r\n"
    for addons in ([Ends()], []):
        proxy = await start_proxy(addons=addons)
        report = echoed(await raw(proxy.port, get(
            origin, method="POST", headers="Transfer-Encoding: chunked\r\n", body=body)))
        assert report["length"] == 5
        names = [name for name, _ in report["headers"]]
        assert names[-1] == "X-Checksum" and names.count("Host") == 1, names
        for addon in addons:
            [flow] = addon.flows
            assert list(flow.request.trailers.fields) == [(b"X-Checksum", b"123")]
