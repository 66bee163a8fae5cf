"""
Writing to a TCP transport without waiting for the reactor's next turn.

Twisted's ``write`` only queues: the bytes go out when the reactor next
finds the socket writable, which costs two ``epoll_ctl`` calls and one
more trip through the event loop per write.  On a proxy's hot path every
exchange writes twice (the request upstream, the response to the client),
so :func:`send_now` tries ``send`` at once when nothing is queued ahead of
the bytes, and hands whatever the kernel did not take to ``write`` as usual
(so ordering, producers and connection loss behave exactly as before).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from twisted.internet import tcp

# Exactly these classes: a subclass (a TLS wrapper, a test transport) may
# have its own idea of write().
_PLAIN: frozenset[type] = frozenset({tcp.Server, tcp.Client})


def send_now(transport: Any, data: Sequence[bytes]) -> None:
    """
    Write *data* (pieces, in order) to *transport*: straight to the socket
    when it is a plain TCP transport with nothing queued, otherwise, and for
    whatever the socket did not take, through ``writeSequence``.
    """
    if (
        type(transport) not in _PLAIN
        or transport._tempDataLen
        or transport.offset != len(transport.dataBuffer)
        or not transport.connected
        or transport.disconnecting
        or transport._writeDisconnecting
    ):
        transport.writeSequence(data)
        return
    joined = data[0] if len(data) == 1 else b"".join(data)
    if not joined:
        return
    try:
        sent = transport.socket.send(joined)
    except OSError:
        # Would block, or the connection is gone: Twisted's own write path
        # finds out which on its next turn and acts on it.
        sent = 0
    if sent < len(joined):
        transport.write(joined[sent:] if sent else joined)
