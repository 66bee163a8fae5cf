# -*- test-case-name: tests.test_flow -*-
"""
The flow base model: one exchange through the proxy and its error, with
interception and a versioned plain-data state; the records of its
connections are in :mod:`twistproxy.connection`.

The semantics follow ``mitmproxy.flow``.  This module is core code: it reads
no clock of its own (the time comes from the ``now`` callable a :class:`Flow`
is given), opens no sockets and never touches the reactor.  The one piece of
Twisted it uses is :class:`~twisted.internet.defer.Deferred`, handed out by
:meth:`Flow.wait_for_resume`.
"""

from __future__ import annotations

import copy as _copy
import time
from collections.abc import Callable, Mapping
from typing import Any, ClassVar, Self

import attrs
from twisted.internet import defer

from twistproxy._state import LazyId, check_keys, new_id
from twistproxy.connection import Client, Server

FLOW_STATE_VERSION: int = 6
"""
Version of the dict returned by :meth:`Flow.get_state`, bumped on every
change of its shape (2: messages' ``body_size`` and ``trailers``; 3: an HTTP flow's
``"websocket"``; 4: an HTTP flow's ``"interim"``; 5: the client connection's
``"proxy_mode"``; 6: the server connection's ``"certificate"``).
"""


class FlowNotKillable(Exception):
    """
    :meth:`Flow.kill` was called on a flow that is not live, or was already
    killed.
    """


@attrs.define
class Error:
    """
    Why a flow failed.

    :ivar msg: A human-readable message.
    :ivar timestamp: When the error happened (seconds since the epoch).
    :ivar exception: The class of the exception that failed the flow, when
        the proxy failed it with one (what metrics count errors by); not
        part of the state, so ``None`` in a flow read from a file.
    :cvar KILLED_MESSAGE: The message of the error :meth:`Flow.kill` sets.
    """

    KILLED_MESSAGE: ClassVar[str] = "Connection killed."

    msg: str
    timestamp: float
    exception: type[BaseException] | None = attrs.field(default=None, eq=False, repr=False)

    def __str__(self) -> str:
        return self.msg

    def get_state(self) -> dict[str, Any]:
        """
        :returns: This error as plain data.
        """
        return {"msg": self.msg, "timestamp": self.timestamp}

    def set_state(self, state: Mapping[str, Any]) -> None:
        """
        Replace this error's fields with those of *state*.

        :param state: A dict from :meth:`get_state`.
        :raises ValueError: if *state* has unknown or missing keys.
        """
        check_keys(state, ("msg", "timestamp"), "error")
        self.msg = state["msg"]
        self.timestamp = state["timestamp"]
        self.exception = None

    @classmethod
    def from_state(cls, state: Mapping[str, Any]) -> Self:
        """
        Build an error from a dict made by :meth:`get_state`.

        :raises ValueError: if *state* has unknown or missing keys.
        """
        check_keys(state, ("msg", "timestamp"), "error")
        return cls(state["msg"], state["timestamp"])


class Flow:
    """
    One exchange through the proxy.

    A flow is *live* while the proxy is still working on it.  A hook may
    :meth:`intercept` it (the proxy then holds it, see
    :meth:`wait_for_resume`), :meth:`resume` it, or :meth:`kill` it.

    :ivar id: A unique id (a UUID4 string).
    :ivar client_conn: The client connection.
    :ivar server_conn: The server connection.
    :ivar error: Why the flow failed, or ``None``.
    :ivar intercepted: Whether the flow is being held.
    :ivar marked: A user marker (an emoji or a character); empty when unmarked.
    :ivar is_replay: ``"request"`` or ``"response"`` when the flow is a
        replay of that side, else ``None``.
    :ivar live: Whether the proxy is still working on the flow.
    :ivar timestamp_created: When the flow was made, from ``now``.
    :ivar metadata: Free-form data addons attach to the flow.
    :ivar comment: A user comment.
    :cvar type: The flow's kind, stored in its state.
    """

    __slots__ = (
        "_id",
        "client_conn",
        "server_conn",
        "error",
        "intercepted",
        "marked",
        "is_replay",
        "live",
        "timestamp_created",
        "metadata",
        "comment",
        "_now",
        "_backup",
        "_resume_waiters",
    )

    type: ClassVar[str] = "flow"

    _state_keys: ClassVar[frozenset[str]] = frozenset(
        {
            "version",
            "type",
            "id",
            "error",
            "client_conn",
            "server_conn",
            "intercepted",
            "marked",
            "is_replay",
            "live",
            "timestamp_created",
            "metadata",
            "comment",
        }
    )

    client_conn: Client
    server_conn: Server
    error: Error | None
    intercepted: bool
    marked: str
    is_replay: str | None
    live: bool
    timestamp_created: float
    metadata: dict[str, Any]
    comment: str

    def __init__(
        self,
        client_conn: Client,
        server_conn: Server,
        live: bool = False,
        *,
        now: Callable[[], float] = time.time,
    ) -> None:
        """
        :param client_conn: The client connection.
        :param server_conn: The server connection.
        :param live: Whether the proxy is working on this flow.
        :param now: The clock: returns the current time in seconds since the
            epoch.  It stamps :attr:`timestamp_created` and the error
            :meth:`kill` sets.
        """
        self._now = now
        self._id: str | None = None  # made when first asked for
        self.client_conn = client_conn
        self.server_conn = server_conn
        self.error = None
        self.intercepted = False
        self.marked = ""
        self.is_replay = None
        self.live = live
        self.timestamp_created = now()
        self.metadata = {}
        self.comment = ""
        self._backup: dict[str, Any] | None = None
        self._resume_waiters: list[defer.Deferred[None]] = []

    id = LazyId()

    @property
    def mode(self) -> str:
        """
        The mode of the listener that carried the flow
        (``client_conn.proxy_mode``): ``"regular"``,
        ``"reverse:https://api.internal@8443"``...
        """
        return self.client_conn.proxy_mode

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.id}>"

    # State

    def get_state(self) -> dict[str, Any]:
        """
        This flow as plain data (str, int, float, bool, ``None``, bytes,
        lists and dicts), for saving, backups and copies.

        :returns: A new dict; ``"version"`` is :data:`FLOW_STATE_VERSION`.
        """
        return {
            "version": FLOW_STATE_VERSION,
            "type": self.type,
            "id": self.id,
            "error": self.error.get_state() if self.error is not None else None,
            "client_conn": self.client_conn.get_state(),
            "server_conn": self.server_conn.get_state(),
            "intercepted": self.intercepted,
            "marked": self.marked,
            "is_replay": self.is_replay,
            "live": self.live,
            "timestamp_created": self.timestamp_created,
            "metadata": _copy.deepcopy(self.metadata) if self.metadata else {},
            "comment": self.comment,
        }

    def set_state(self, state: Mapping[str, Any]) -> None:
        """
        Replace this flow's state with *state*.

        Every key is checked before anything changes.  If *state* ends an
        interception, the flow is resumed (waiters fire); if it starts one,
        the flow is intercepted.

        :param state: A dict made by :meth:`get_state` of this flow's class.
        :raises ValueError: if the version or type differs, or a key is
            unknown or missing.
        """
        version = state.get("version")
        if version != FLOW_STATE_VERSION:
            raise ValueError(
                f"unsupported flow state version {version!r} (expected {FLOW_STATE_VERSION})"
            )
        if state.get("type") != self.type:
            raise ValueError(
                f"flow state of type {state.get('type')!r} given to a {self.type!r} flow"
            )
        check_keys(state, self._state_keys, "flow")
        self._apply_state(dict(state))

    def _apply_state(self, state: dict[str, Any]) -> None:
        """
        Set this flow's attributes from a checked state dict.  Subclasses
        build their own parts first, then call this, then assign theirs, so
        that a conversion error leaves the flow unchanged.

        :param state: A copy of the state, with every key present.
        """
        error = Error.from_state(state["error"]) if state["error"] is not None else None
        client_conn = Client.from_state(state["client_conn"])
        server_conn = Server.from_state(state["server_conn"])
        self.id = state["id"]
        self.error = error
        self.client_conn = client_conn
        self.server_conn = server_conn
        self.marked = state["marked"]
        self.is_replay = state["is_replay"]
        self.live = state["live"]
        self.timestamp_created = state["timestamp_created"]
        self.metadata = _copy.deepcopy(state["metadata"])
        self.comment = state["comment"]
        if state["intercepted"]:
            self.intercept()
        else:
            self.resume()

    @classmethod
    def from_state(cls, state: Mapping[str, Any], *, now: Callable[[], float] = time.time) -> Self:
        """
        Build a flow (not live) from a dict made by :meth:`get_state`.

        :param state: The state.
        :param now: The clock for the new flow, as for :class:`Flow`.
        :raises ValueError: as :meth:`set_state` does.
        """
        flow = cls(Client(), Server(), now=now)
        flow.set_state(state)
        return flow

    def copy(self) -> Self:
        """
        Make an independent copy of this flow.

        :returns: A flow with the same state and clock but a new id, not
            live, not intercepted, with no resume waiters and deep-copied
            metadata.
        """
        state = self.get_state()
        state["id"] = new_id()
        state["live"] = False
        state["intercepted"] = False
        return type(self).from_state(state, now=self._now)

    # Backups

    def backup(self, force: bool = False) -> None:
        """
        Remember the current state so that :meth:`revert` can return to it.

        :param force: Replace an existing backup; without it, an existing
            backup is kept.
        """
        if self._backup is None or force:
            self._backup = self.get_state()

    def revert(self) -> None:
        """
        Return to the backed-up state, if there is one, and drop the backup.
        """
        if self._backup is not None:
            backup, self._backup = self._backup, None
            self.set_state(backup)

    def modified(self) -> bool:
        """
        :returns: Whether there is a backup and the flow differs from it.
        """
        return self._backup is not None and self._backup != self.get_state()

    # Control

    @property
    def killable(self) -> bool:
        """
        Whether :meth:`kill` may be called: the flow is live and not killed.
        """
        return self.live and not self.killed

    @property
    def killed(self) -> bool:
        """
        Whether the flow was killed (its error is the kill error).
        """
        return self.error is not None and self.error.msg == Error.KILLED_MESSAGE

    def kill(self) -> None:
        """
        Kill the flow: set the kill :class:`Error` (stamped by ``now``) and,
        if it is intercepted, resume it so that whoever waits sees the kill.
        :attr:`live` is left as it is; the proxy clears it when the flow ends.

        :raises FlowNotKillable: if the flow is not :attr:`killable`.
        """
        if not self.killable:
            raise FlowNotKillable(f"flow {self.id} is not killable")
        self.error = Error(Error.KILLED_MESSAGE, self._now())
        self.resume()

    def intercept(self) -> None:
        """
        Hold the flow until :meth:`resume` (or :meth:`kill`); does nothing if
        it is already intercepted.
        """
        if not self.intercepted:
            self.intercepted = True

    def resume(self) -> None:
        """
        Release an intercepted flow and fire every Deferred from
        :meth:`wait_for_resume`; does nothing if it is not intercepted.
        """
        if not self.intercepted:
            return
        self.intercepted = False
        waiters, self._resume_waiters = self._resume_waiters, []
        for waiter in waiters:
            waiter.callback(None)

    def wait_for_resume(self) -> defer.Deferred[None]:
        """
        Wait until the flow is no longer intercepted.

        :returns: A Deferred that fires with ``None`` when the flow is
            resumed or killed; already fired if it is not intercepted.
            Cancelling it stops the wait (it fails with
            :exc:`~twisted.internet.defer.CancelledError`) and forgets it.
        """
        if not self.intercepted:
            return defer.succeed(None)
        waiter: defer.Deferred[None] = defer.Deferred(self._forget_waiter)
        self._resume_waiters.append(waiter)
        return waiter

    def _forget_waiter(self, waiter: defer.Deferred[None]) -> None:
        """
        The canceller of :meth:`wait_for_resume`'s Deferreds.
        """
        if waiter in self._resume_waiters:
            self._resume_waiters.remove(waiter)
