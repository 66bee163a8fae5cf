# -*- test-case-name: tests.test_web_api,tests.e2e.test_web_api_e2e -*-
"""
One flow as the web UI's flow view shows it: plain JSON data (headers,
timings, TLS facts, the error, WebSocket messages, what is known of each
body; the bodies themselves are fetched apart).
"""

from __future__ import annotations

import base64
from typing import Any

from twistproxy.connection import Connection
from twistproxy.headers import Headers
from twistproxy.http import HTTPFlow, Message

MAX_MESSAGES = 1000
"""WebSocket messages shown in a flow view (the first ones)."""

MESSAGE_PREVIEW = 4096
"""Bytes of each WebSocket message shown."""


def _text(value: bytes) -> str:
    return value.decode("utf-8", "replace")


def _headers(headers: Headers | None) -> list[list[str]] | None:
    if headers is None:
        return None
    return [[_text(name), _text(value)] for name, value in headers.fields]


def _connection(conn: Connection) -> dict[str, Any]:
    address = getattr(conn, "address", None)
    certificate = getattr(conn, "certificate", None)  # a server's, once its TLS is up
    return {
        "peername": list(conn.peername) if conn.peername else None,
        "sockname": list(conn.sockname) if conn.sockname else None,
        "address": list(address) if address else None,
        "timestamp_start": conn.timestamp_start,
        "timestamp_end": conn.timestamp_end,
        "tls": conn.tls_established,
        "sni": conn.sni,
        "alpn": None if conn.alpn is None else _text(conn.alpn),
        "tls_version": conn.tls_version,
        "certificate": None if certificate is None else certificate.get_state(),
        "error": conn.error,
    }


def _message(message: Message) -> dict[str, Any]:
    return {
        "http_version": message.http_version,
        "headers": _headers(message.headers),
        "trailers": _headers(message.trailers),
        "timestamp_start": message.timestamp_start,
        "timestamp_end": message.timestamp_end,
        "body": {
            "size": message.body_size,
            "captured": message.raw_content is not None or bool(message.body_size),
            "truncated": message.truncated,
            "content_type": message.headers.get(b"content-type"),
            "content_encoding": message.headers.get(b"content-encoding"),
        },
    }


def flow_detail(flow: HTTPFlow, seq: int | None) -> dict[str, Any]:
    """
    *flow* as the flow view shows it.

    :param seq: Its row in the store, if it has one yet.
    """
    request = flow.request
    response = flow.response
    detail: dict[str, Any] = {
        "id": flow.id,
        "seq": seq,
        "live": flow.live,
        "intercepted": flow.intercepted,
        "marked": flow.marked,
        "comment": flow.comment,
        "replay": flow.is_replay,
        "error": None if flow.error is None else {
            "msg": flow.error.msg, "timestamp": flow.error.timestamp},
        "timestamp_created": flow.timestamp_created,
        "client_conn": _connection(flow.client_conn),
        "server_conn": _connection(flow.server_conn),
        "mode": flow.mode,
        "request": None,
        "response": None,
        "interim": [{"status_code": r.status_code, "reason": r.reason,
                     "headers": _headers(r.headers)} for r in flow.interim],
        "websocket": None,
    }
    if request is not None:
        detail["request"] = {
            **_message(request), "method": request.method, "url": request.pretty_url,
            "scheme": request.scheme, "host": request.host, "port": request.port,
            "path": request.path,
        }
    if response is not None:
        detail["response"] = {
            **_message(response), "status_code": response.status_code,
            "reason": response.reason,
        }
    websocket = flow.websocket
    if websocket is not None:
        detail["websocket"] = {
            "count": len(websocket.messages),
            "messages": [
                {
                    "from_client": m.from_client,
                    "text": m.is_text,
                    "content": (_text(m.content[:MESSAGE_PREVIEW]) if m.is_text
                                else base64.b64encode(m.content[:MESSAGE_PREVIEW]).decode()),
                    "size": len(m.content),
                    "timestamp": m.timestamp,
                    "dropped": m.dropped,
                    "injected": m.injected,
                }
                for m in websocket.messages[:MAX_MESSAGES]
            ],
            "close_code": websocket.close_code,
            "close_reason": websocket.close_reason,
            "closed_by_client": websocket.closed_by_client,
            "timestamp_end": websocket.timestamp_end,
        }
    return detail
