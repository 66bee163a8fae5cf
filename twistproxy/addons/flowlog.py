# -*- test-case-name: tests.test_flowlog -*-
"""
One log line per completed flow: client, method, URL, status, size and time.
"""

from __future__ import annotations

from twisted.logger import Logger

from twistproxy.hooks import Addon
from twistproxy.http import HTTPFlow

_log = Logger(namespace="twistproxy.flow")


class FlowLog(Addon):
    """
    Logs each flow once, when it ends, at level info::

        127.0.0.1:50312 GET http://example.com/ -> 200 1.2 KiB 14 ms (first byte 9 ms)

    The time is from the request's first byte to the response's last; the
    first byte is the response's, which is what a streamed response (a
    feed of server-sent events, say) is waited for.  A failed flow logs its
    error instead of a status.  A WebSocket is logged when it closes, with
    its messages and how it closed::

        127.0.0.1:50312 GET http://example.com/chat -> 101 websocket: 12 messages,
        closed by the client (1000) 8.3 s

    The twistd plugin loads
    this addon unless ``--quiet`` is given; embedding applications add it to
    their addons when they want the lines.

    :ivar log: The logger the lines go to (namespace ``twistproxy.flow``).
    """

    stream_bodies = True  # it needs what is recorded of a body, not all of it

    log = _log

    def response(self, flow: HTTPFlow) -> None:
        """Log a flow that ended with a response (a WebSocket's, once it closes)."""
        if not _switching(flow):
            _log.info("{line}", line=format_flow(flow), flow_id=flow.id)

    def websocket_end(self, flow: HTTPFlow) -> None:
        """Log a WebSocket flow, closed."""
        _log.info("{line}", line=format_flow(flow), flow_id=flow.id)

    def error(self, flow: HTTPFlow) -> None:
        """Log a flow that ended with an error."""
        _log.info("{line}", line=format_flow(flow), flow_id=flow.id)


def format_flow(flow: HTTPFlow) -> str:
    """
    The log line for *flow*: who asked for what, and how it ended.
    """
    client = flow.client_conn.peername
    who = f"{client[0]}:{client[1]}" if client else "-"
    request = flow.request
    what = f"{request.method} {request.url}" if request is not None else "-"
    response = flow.response
    start = request.timestamp_start if request is not None else None
    end: float | None
    websocket = flow.websocket
    if flow.error is not None:
        outcome = f"<< {flow.error.msg}"
        end = flow.error.timestamp
    elif websocket is not None and response is not None and websocket.timestamp_end is not None:
        count = len(websocket.messages)
        closer = websocket.closed_by_client
        by = "" if closer is None else " by the client" if closer else " by the server"
        reason = f" {websocket.close_reason}" if websocket.close_reason else ""
        outcome = (f"{response.status_code} websocket: {count} message{'s' * (count != 1)}, "
                   f"closed{by} ({websocket.close_code}{reason})")
        end = websocket.timestamp_end
    elif response is not None:
        outcome = f"{response.status_code} {_size(response.body_size)}"
        end = response.timestamp_end
    else:
        outcome, end = "-", None
    took = f" {(end - start) * 1000:.0f} ms" if start is not None and end is not None else ""
    if took and flow.error is None and response is not None:
        first = response.timestamp_start
        if first is not None:
            took += f" (first byte {(first - start) * 1000:.0f} ms)"  # type: ignore[operator]
    return f"{who} {what} -> {outcome}{took}"


def _switching(flow: HTTPFlow) -> bool:
    """Whether *flow*'s response switches it to a WebSocket (logged when that closes)."""
    response = flow.response
    return flow.websocket is not None and response is not None and response.status_code == 101


def _size(size: int | None) -> str:
    if size is None:
        return "-"
    if size < 1024:
        return f"{size} B"
    if size < 1024 * 1024:
        return f"{size / 1024:.1f} KiB"
    return f"{size / (1024 * 1024):.1f} MiB"
