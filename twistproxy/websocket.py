# -*- test-case-name: tests.test_websocket -*-
"""
The WebSocket part of a flow: :class:`WebSocketData` (``flow.websocket``)
and its :class:`WebSocketMessage` list, as mitmproxy has them, and
:func:`inject`, to send a message of one's own down a live WebSocket.

A flow whose request asked for a WebSocket and whose origin answered
``101`` gets a :class:`WebSocketData` when the ``101`` arrives; once the
``101`` is written the proxy relays the messages both ways
(:mod:`twistproxy._websocket`), appending each one to
:attr:`WebSocketData.messages` and running the ``websocket_message`` hook on
it.  Plain data: no I/O here but what :func:`inject` hands to the relay.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any, ClassVar, Protocol

from wsproto.frame_protocol import Opcode

__all__ = ["WebSocketData", "WebSocketMessage", "inject"]


class _Relay(Protocol):
    def inject(self, message: WebSocketMessage, to_client: bool) -> None: ...


def _check_keys(state: Mapping[str, Any], keys: frozenset[str], what: str) -> None:
    if not isinstance(state, Mapping):
        raise ValueError(f"{what} must be a dict, not {state!r}")
    missing = keys - state.keys()
    unknown = state.keys() - keys
    if missing or unknown:
        raise ValueError(
            f"{what} has missing keys {sorted(missing)} and unknown keys {sorted(unknown)}"
        )


def _timestamp(value: object, what: str, optional: bool = False) -> float | None:
    if value is None and optional:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"{what} must be a number of seconds, not {value!r}")
    return float(value)


class WebSocketMessage:
    """
    One WebSocket message, reassembled from its frames and uncompressed.

    :ivar type: ``Opcode.TEXT`` or ``Opcode.BINARY``
        (``wsproto.frame_protocol.Opcode``, an ``IntEnum``: 1 or 2).
    :ivar from_client: Sent by the client (else by the origin).
    :ivar content: The payload (a text message's UTF-8 bytes).
    :ivar timestamp: When its last frame arrived.
    :ivar dropped: It was dropped (:meth:`drop`) and not relayed.
    :ivar injected: Sent by :func:`inject`, not by either end.
    """

    __slots__ = ("type", "from_client", "content", "timestamp", "dropped", "injected")

    _keys: ClassVar[frozenset[str]] = frozenset(
        {"type", "from_client", "content", "timestamp", "dropped", "injected"}
    )

    def __init__(
        self,
        type: int,
        from_client: bool,
        content: bytes,
        timestamp: float,
        *,
        dropped: bool = False,
        injected: bool = False,
    ) -> None:
        """
        :raises ValueError: if *type* is neither text (1) nor binary (2).
        """
        if type not in (Opcode.TEXT, Opcode.BINARY):
            raise ValueError(f"a WebSocket message is text (1) or binary (2), not {type!r}")
        self.type = Opcode(type)
        self.from_client = from_client
        self.content = content
        self.timestamp = timestamp
        self.dropped = dropped
        self.injected = injected

    def __repr__(self) -> str:
        direction = "client ->" if self.from_client else "<- server"
        what = repr(self.text) if self.is_text else f"{len(self.content)} bytes"
        return f"<WebSocketMessage {direction} {what}{' dropped' if self.dropped else ''}>"

    @property
    def is_text(self) -> bool:
        """Whether it is a text message."""
        return self.type is Opcode.TEXT

    @property
    def text(self) -> str:
        """
        The content as text (UTF-8; bytes that are not are replaced).
        Setting it sets :attr:`content`.
        """
        return self.content.decode("utf-8", "replace")

    @text.setter
    def text(self, value: str) -> None:
        self.content = value.encode("utf-8")

    def drop(self) -> None:
        """Do not relay this message (in a ``websocket_message`` hook)."""
        self.dropped = True

    def get_state(self) -> dict[str, Any]:
        """This message as plain data."""
        return {
            "type": int(self.type),
            "from_client": self.from_client,
            "content": self.content,
            "timestamp": self.timestamp,
            "dropped": self.dropped,
            "injected": self.injected,
        }

    @classmethod
    def from_state(cls, state: Mapping[str, Any]) -> WebSocketMessage:
        """
        A message from :meth:`get_state`'s dict.

        :raises ValueError: naming the first field that is not as
            :meth:`get_state` writes it.
        """
        _check_keys(state, cls._keys, "a WebSocket message")
        content = state["content"]
        if not isinstance(content, bytes):
            raise ValueError(f"a WebSocket message's content must be bytes, not {content!r}")
        for flag in ("from_client", "dropped", "injected"):
            if not isinstance(state[flag], bool):
                raise ValueError(f"a WebSocket message's {flag} must be true or false")
        kind = state["type"]
        if isinstance(kind, bool) or not isinstance(kind, int):
            raise ValueError(f"a WebSocket message's type must be 1 or 2, not {kind!r}")
        timestamp = _timestamp(state["timestamp"], "a WebSocket message's timestamp")
        assert timestamp is not None
        return cls(
            kind, state["from_client"], content, timestamp,
            dropped=state["dropped"], injected=state["injected"],
        )


class WebSocketData:
    """
    A flow's WebSocket: its messages, in the order they were relayed, and
    how it closed.

    :ivar messages: Every :class:`WebSocketMessage` so far; in a
        ``websocket_message`` hook the newest, ``messages[-1]``, is the one
        the hook is for.
    :ivar closed_by_client: ``True`` if the client closed it, ``False`` if
        the origin did, ``None`` while it is open (or when the proxy closed
        it, past the message limit say).
    :ivar close_code: The close code (1000 normal, 1001 going away, 1006
        the connection was lost without a close, 1009 a message too big...).
    :ivar close_reason: The close reason, if one was given.
    :ivar timestamp_end: When it closed.
    """

    __slots__ = ("messages", "closed_by_client", "close_code", "close_reason",
                 "timestamp_end", "_relay")

    _keys: ClassVar[frozenset[str]] = frozenset(
        {"messages", "closed_by_client", "close_code", "close_reason", "timestamp_end"}
    )

    def __init__(self) -> None:
        self.messages: list[WebSocketMessage] = []
        self.closed_by_client: bool | None = None
        self.close_code: int | None = None
        self.close_reason: str | None = None
        self.timestamp_end: float | None = None
        self._relay: _Relay | None = None

    def __repr__(self) -> str:
        closed = "open" if self.timestamp_end is None else f"closed {self.close_code}"
        return f"<WebSocketData {len(self.messages)} messages, {closed}>"

    def get_state(self) -> dict[str, Any]:
        """The WebSocket as plain data, its messages included."""
        return {
            "messages": [message.get_state() for message in self.messages],
            "closed_by_client": self.closed_by_client,
            "close_code": self.close_code,
            "close_reason": self.close_reason,
            "timestamp_end": self.timestamp_end,
        }

    @classmethod
    def from_state(cls, state: Mapping[str, Any]) -> WebSocketData:
        """
        The WebSocket :meth:`get_state` described (not live).

        :raises ValueError: naming the first field that is not as
            :meth:`get_state` writes it.
        """
        _check_keys(state, cls._keys, "a flow's websocket")
        messages = state["messages"]
        if not isinstance(messages, list):
            raise ValueError(f"a flow's websocket messages must be a list, not {messages!r}")
        data = cls()
        data.messages = [WebSocketMessage.from_state(message) for message in messages]
        closed_by_client = state["closed_by_client"]
        if closed_by_client is not None and not isinstance(closed_by_client, bool):
            raise ValueError("a flow's websocket closed_by_client must be true, false or null")
        code = state["close_code"]
        if code is not None and (isinstance(code, bool) or not isinstance(code, int)):
            raise ValueError(f"a flow's websocket close_code must be a number, not {code!r}")
        reason = state["close_reason"]
        if reason is not None and not isinstance(reason, str):
            raise ValueError(f"a flow's websocket close_reason must be text, not {reason!r}")
        data.closed_by_client = closed_by_client
        data.close_code = code
        data.close_reason = reason
        data.timestamp_end = _timestamp(
            state["timestamp_end"], "a flow's websocket timestamp_end", optional=True
        )
        return data


def inject(flow: Any, content: bytes | str, *, to_client: bool) -> WebSocketMessage:
    """
    Send a message of one's own down *flow*'s live WebSocket, towards the
    client (*to_client*) or the origin, at once (ahead of a message a hook
    still holds back).  A ``str`` is sent as a text message, ``bytes`` as a
    binary one.  It is recorded in ``flow.websocket.messages`` (``injected``
    set); no ``websocket_message`` hook runs for it.

    :returns: The message recorded.
    :raises ValueError: if *flow* has no WebSocket open now.
    """
    data: WebSocketData | None = getattr(flow, "websocket", None)
    relay = data._relay if data is not None else None
    if data is None or relay is None:
        raise ValueError("the flow has no open WebSocket to inject into")
    if isinstance(content, str):
        message = WebSocketMessage(Opcode.TEXT, not to_client, content.encode("utf-8"), 0.0,
                                   injected=True)
    else:
        message = WebSocketMessage(Opcode.BINARY, not to_client, bytes(content), 0.0,
                                   injected=True)
    relay.inject(message, to_client)
    return message
