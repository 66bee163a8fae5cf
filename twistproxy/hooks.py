# -*- test-case-name: tests.test_hooks -*-
"""
The hook contract between the proxy and its addons, and the chain that runs
the hooks.

:class:`IAddon` lists every hook and says when it fires and what it may
change; :class:`Addon` is a do-nothing base class to subclass. Subclassing is
optional: any object with some of the hook methods is an addon.
:class:`HookChain` calls the hooks of a fixed list of addons in order, waits
for any hook that returns a Deferred or a coroutine (up to a deadline, if it
is given one), holds the chain while a hook has intercepted the flow, and
stops early once a hook has answered or killed it; its addons can be
replaced while it runs (an addon file reloaded). :func:`validate_addon`
rejects a misspelt hook, or a mitmproxy hook twistproxy does not implement,
at registration instead of letting it be ignored silently.

The lifecycle hooks (``load``, ``configure``, ``running``, ``done``) are
documented here and run by :class:`twistproxy.lifecycle.AddonManager`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from time import perf_counter
from typing import Any

from twisted.internet.defer import Deferred, fail
from twisted.internet.interfaces import IReactorTime
from twisted.python.failure import Failure
from zope.interface import Attribute, Interface, implementer

from twistproxy._addoncheck import (
    HOOKS,
    LIFECYCLE_HOOKS,
    UNSUPPORTED_HOOKS,
    validate_addon,
)
from twistproxy._addoncheck import addon_name as _addon_name
from twistproxy._chain import HookCall, PendingChain, hook_failed, must_wait, settled

__all__ = [
    "FLOW_HOOKS",
    "HOOKS",
    "LIFECYCLE_HOOKS",
    "UNSUPPORTED_HOOKS",
    "WHOLE_BODY_HOOKS",
    "Addon",
    "HookChain",
    "IAddon",
    "validate_addon",
]

WHOLE_BODY_HOOKS: frozenset[str] = frozenset({"request", "response"})
"""
The hooks that see a message with its body: the proxy buffers a body for
them, unless every addon implementing the hook says it does not need the
body whole (``stream_bodies``).
"""

FLOW_HOOKS: frozenset[str] = frozenset(HOOKS) - {"client_connected", "client_disconnected"}
"""
The hooks that run while a request is being proxied, so that the proxy has a
flow (and its per-request object) at hand. ``server_connected`` and
``server_disconnected`` are among them: they receive the flow's server
connection record, but happen during a request.
"""


class IAddon(Interface):
    """
    The hooks the proxy calls, each with a flow or a connection record.

    Every hook may return ``None`` (or any other plain value, which is
    ignored), a :class:`~twisted.internet.defer.Deferred` or a coroutine; the
    proxy waits for it before calling the next addon, up to the proxy's hook
    deadline (``ProxyFactory(hook_timeout=...)``). A hook that calls
    ``flow.intercept()`` holds the flow until ``flow.resume()``, with no
    deadline unless the proxy was given an intercept deadline; a hook that
    calls ``flow.kill()`` ends the flow and no further hook of the chain
    runs. A hook that raises, or outlives its deadline, is logged with the
    flow's id and the client is answered 500.

    The lifecycle hooks, first (:meth:`load`, :meth:`configure`,
    :meth:`running`, :meth:`done`), are called by the
    :class:`~twistproxy.lifecycle.AddonManager` once per addon, however
    many listeners share it.
    """

    stream_bodies = Attribute(
        """
        ``True`` when this addon's :meth:`request` and :meth:`response`
        hooks do not need bodies whole (a logger, a recorder): bodies then
        flow through as they arrive unless another addon needs them whole,
        and these hooks see what was recorded of them (up to the body
        limit; ``flow.response.truncated`` says if that is not all of it).
        Missing or ``False``: bodies up to the body limit are buffered for
        this addon's hooks.
        """
    )

    def load(loader: Any) -> object:
        """
        The addon was registered (given to a
        :class:`~twistproxy.lifecycle.AddonManager`, a ``ProxyFactory``, or
        loaded from an addon file, or loaded again because that file
        changed); called once, first. Declare options here with
        ``loader.add_option(name, typespec, default, help)``
        (:class:`~twistproxy.addonopts.Loader`; an optional ``choices``
        list, too). The types are mitmproxy's: ``bool``, ``str``, ``int``,
        ``float``, ``typing.Optional[str]`` (and ``[int]``, ``[float]``),
        ``typing.Sequence[str]``. An exception refuses the addon.

        :param loader: The :class:`~twistproxy.addonopts.Loader`.
        """

    def configure(updated: Any) -> object:
        """
        Options changed: at start with every option's name (after
        ``--set``), then with the names of those that change (an addon file
        reloaded, or code that sets ``ctx.options.NAME = value``);
        ``ctx.options`` holds the new values. An exception refuses the
        change: at start, the proxy does not start (twistd stops with one
        line); later, the old values are put back.

        :param updated: The set of the changed options' names.
        """

    def running() -> object:
        """
        The proxy is up: every listener sharing the addons listens. A
        Deferred or coroutine returned is waited for before the next addon's
        ``running``; a failure is logged.
        """

    def done() -> object:
        """
        The proxy stopped, after its last flow: when twistd gets
        ``SIGTERM`` it drains its connections first (``--shutdown-timeout``),
        and ``done`` comes after the flows that ended meanwhile. Also when
        the addon is removed (its addon file reloaded). The addon's last
        hook. The ``done`` hooks run one after the other; a Deferred or
        coroutine returned is waited for before the next addon's ``done``,
        all of them together within the manager's deadline (30 s by
        default).
        """

    def client_connected(client: Any) -> object:
        """
        A client has connected to the proxy. While this hook is being
        waited for, nothing is read from the client. If it fails (or times
        out), the failure is logged and the client is served as if the hook
        were absent: a hook that looks at connections must not be able to
        take the proxy down for everyone.

        :param client: The client connection record
            (:class:`~twistproxy.connection.Client`: ``peername``, ``sockname``,
            ``timestamp_start``); it may be inspected but there is nothing
            to change yet.
        """

    def client_disconnected(client: Any) -> object:
        """
        A client connection has closed, for whatever reason.

        :param client: The client connection record, for bookkeeping only.
        """

    def server_connected(server: Any) -> object:
        """
        The proxy has connected to an origin server on behalf of a flow,
        before the request is sent to it. It does not run when a kept-alive
        connection is reused. For a ``CONNECT`` it runs before the client
        gets its ``200``, intercepted or not (unless an intercepted one
        connects lazily: ``--connection-strategy lazy``); the first request
        inside an intercepted tunnel reuses that connection, so it does not
        run again for it.

        :param server: The flow's server connection record, for inspection.
        """

    def server_disconnected(server: Any) -> object:
        """
        A connection to an origin server has closed.

        :param server: The server connection record, for bookkeeping only.
        """

    def http_connect(flow: Any) -> object:
        """
        A client asked for a tunnel with ``CONNECT host:port``
        (``flow.request.method == "CONNECT"``, its host and port set); it
        runs once the request is read, instead of :meth:`requestheaders`
        and :meth:`request`.

        The hook may answer instead of opening the tunnel by setting
        ``flow.response`` (a 403, say); ``flow.passthrough`` says whether the
        tunnel's bytes will be relayed untouched (set from ``ignore_hosts``,
        or because the proxy has no CA) and the hook may change it; kill or
        intercept the flow. Otherwise the proxy answers
        ``200 Connection established`` and, when it has a certificate store,
        intercepts the TLS inside: the requests in the tunnel then make flows
        of their own (``https``, or ``http`` when the client speaks plain
        HTTP inside; a tunnel carrying anything else is relayed raw). When
        the tunnel opens, the :meth:`response` hooks see the ``200
        Connection established``.

        :param flow: The CONNECT request's flow.
        """

    def requestheaders(flow: Any) -> object:
        """
        The request line and headers have been read; the body has not.

        The hook may change ``flow.request``'s method, target and headers;
        set ``flow.request.stream = True`` to pass the body through as it
        arrives instead of buffering it for :meth:`request`; answer the
        client by setting ``flow.response`` (the body is then discarded, no
        further hook of this chain runs and the origin is not contacted);
        kill or intercept the flow.

        :param flow: The flow being proxied.
        """

    def request(flow: Any) -> object:
        """
        The whole request has been read: its body is buffered in
        ``flow.request`` unless it is being streamed, in which case this
        runs at once, before the body is read, with none of it
        (``flow.request.raw_content`` is ``None``).

        The hook may change ``flow.request`` in any way; answer the client
        by setting ``flow.response`` (the origin is not contacted and no
        further hook of this chain runs); kill or intercept the flow.

        :param flow: The flow being proxied.
        """

    def responseheaders(flow: Any) -> object:
        """
        The origin's status line and headers have been read into
        ``flow.response``; the body has not.

        The hook may change the status and headers, or set
        ``flow.response.stream = True`` to pass the body to the client as it
        arrives instead of buffering it for :meth:`response` (or to a
        function of ``bytes`` to ``bytes`` that changes each piece on its
        way); it may kill or intercept the flow. Reading from the origin
        waits while it runs.

        :param flow: The flow being proxied.
        """

    def response(flow: Any) -> object:
        """
        The whole response has been read; its body is buffered in
        ``flow.response``.  A streamed body has already been relayed to the
        client: ``flow.response`` holds what was recorded of it (up to the
        body limit, ``truncated`` past it).

        The hook may change a buffered ``flow.response`` in any way before
        it is sent to the client; it may kill or intercept the flow. For a
        streamed response it runs once the response was sent, for
        inspection only.

        :param flow: The flow being proxied.
        """

    def error(flow: Any) -> object:
        """
        The flow failed: ``flow.error`` says why (``flow.error.msg``). This
        hook is called instead of :meth:`response`, for inspection and
        logging; the outcome cannot be changed any more.

        :param flow: The flow that failed.
        """

    def websocket_start(flow: Any) -> object:
        """
        The origin switched the flow's request to a WebSocket: its ``101``
        went through ``responseheaders`` and ``response`` (where
        ``flow.websocket`` is already set, so a hook can tell) and was
        written to the client, and ``flow.websocket`` is ready for messages.
        Nothing is relayed until the hook is done.

        :param flow: The flow (``flow.websocket`` is a
            :class:`~twistproxy.websocket.WebSocketData`).
        """

    def websocket_message(flow: Any) -> object:
        """
        A WebSocket message arrived whole (reassembled from its frames and
        uncompressed): it is ``flow.websocket.messages[-1]``, with
        ``from_client``, ``type``, ``content`` and ``text``.

        The hook may change its ``content`` (or ``text``), or ``drop()`` it
        so that it is not relayed; it may send messages of its own with
        :func:`twistproxy.websocket.inject`, or kill the flow (both
        connections close).  While a Deferred or coroutine it returned is
        waited for, nothing more is read from that side, so messages keep
        their order.  A hook that raises or outlives its deadline closes
        both sides with ``1011`` (internal error).

        :param flow: The flow.
        """

    def websocket_end(flow: Any) -> object:
        """
        The flow's WebSocket closed: ``flow.websocket`` says how
        (``close_code``, ``close_reason``, ``closed_by_client``) and holds
        every message.  This is the flow's last hook.

        :param flow: The flow.
        """


@implementer(IAddon)
class Addon:
    """
    An addon whose hooks all do nothing. Subclass it and override the hooks
    you need, as plain methods or as ``async def`` methods; the hooks left
    alone cost nothing, because :class:`HookChain` does not call them.

    :cvar stream_bodies: See :attr:`IAddon.stream_bodies`; ``False`` here.
    """

    stream_bodies = False

    def load(self, loader: Any) -> object:
        """
        Do nothing; see :meth:`IAddon.load`.
        """
        return None

    def configure(self, updated: Any) -> object:
        """
        Do nothing; see :meth:`IAddon.configure`.
        """
        return None

    def running(self) -> object:
        """
        Do nothing; see :meth:`IAddon.running`.
        """
        return None

    def done(self) -> object:
        """
        Do nothing; see :meth:`IAddon.done`.
        """
        return None

    def client_connected(self, client: Any) -> object:
        """
        Do nothing; see :meth:`IAddon.client_connected`.
        """
        return None

    def client_disconnected(self, client: Any) -> object:
        """
        Do nothing; see :meth:`IAddon.client_disconnected`.
        """
        return None

    def server_connected(self, server: Any) -> object:
        """
        Do nothing; see :meth:`IAddon.server_connected`.
        """
        return None

    def server_disconnected(self, server: Any) -> object:
        """
        Do nothing; see :meth:`IAddon.server_disconnected`.
        """
        return None

    def http_connect(self, flow: Any) -> object:
        """
        Do nothing; see :meth:`IAddon.http_connect`.
        """
        return None

    def requestheaders(self, flow: Any) -> object:
        """
        Do nothing; see :meth:`IAddon.requestheaders`.
        """
        return None

    def request(self, flow: Any) -> object:
        """
        Do nothing; see :meth:`IAddon.request`.
        """
        return None

    def responseheaders(self, flow: Any) -> object:
        """
        Do nothing; see :meth:`IAddon.responseheaders`.
        """
        return None

    def response(self, flow: Any) -> object:
        """
        Do nothing; see :meth:`IAddon.response`.
        """
        return None

    def error(self, flow: Any) -> object:
        """
        Do nothing; see :meth:`IAddon.error`.
        """
        return None

    def websocket_start(self, flow: Any) -> object:
        """
        Do nothing; see :meth:`IAddon.websocket_start`.
        """
        return None

    def websocket_message(self, flow: Any) -> object:
        """
        Do nothing; see :meth:`IAddon.websocket_message`.
        """
        return None

    def websocket_end(self, flow: Any) -> object:
        """
        Do nothing; see :meth:`IAddon.websocket_end`.
        """
        return None


# Addon's own functions, to recognise a hook inherited unchanged.
_NO_OP_HOOKS: dict[str, object] = {hook: vars(Addon)[hook] for hook in HOOKS}


class HookChain:
    """
    Runs each hook of a fixed list of addons, in order.

    Which addons really implement which hook is worked out once, here, so
    that asking about or running a hook nobody implements costs a dictionary
    look-up and creates no Deferred.

    A chain may have deadlines: one for each hook call that returns
    something to wait for (*timeout*), and one for each wait for an
    intercepted flow to be resumed (*intercept_timeout*). A hook that
    returns synchronously costs no timer.

    :ivar addons: The addons, in the order their hooks run.
    """

    def __init__(
        self,
        addons: Sequence[object] = (),
        first_base: type | None = None,
        *,
        clock: IReactorTime | None = None,
        timeout: float | None = None,
        intercept_timeout: float | None = None,
    ) -> None:
        """
        :param addons: The addons; each is checked with
            :func:`validate_addon`.
        :param first_base: The base class of the objects passed as ``first``
            to :meth:`run` (the proxy's per-request class). A ``first``
            object's hooks are the hook-named methods its class defines
            outside ``first_base`` and ``first_base``'s own bases, so that
            the base class may define hook-named methods of its own without
            their being called as hooks. ``None`` means every hook-named
            method of a ``first`` object is a hook.
        :param clock: Where the deadlines are scheduled; needed if either
            timeout is given.
        :param timeout: Seconds a hook call's Deferred, coroutine or other
            awaitable may take, counted from when the call returned; once
            they pass it is cancelled and the chain fails with
            :class:`~twistproxy.errors.HookTimeout`. ``None``: no deadline.
        :param intercept_timeout: Seconds a flow intercepted by a hook may
            stay held before the chain gives up on its being resumed and fails
            with :class:`~twistproxy.errors.HookTimeout`. ``None`` (the
            default): it waits for as long as it takes, since a person
            usually resumes it.
        :raises AddonError: if an addon has a misspelt or uncallable hook.
        :raises ValueError: if a timeout is given without a *clock*, or is
            not a positive finite number (``None`` is the way to say no
            deadline).
        """
        for name, seconds in (("timeout", timeout), ("intercept_timeout", intercept_timeout)):
            if seconds is None:
                continue
            if not (seconds > 0 and math.isfinite(seconds)):
                raise ValueError(f"{name} must be a positive number of seconds, not {seconds!r}")
            if clock is None:
                raise ValueError(f"{name} needs a clock to schedule it on")
        self._clock = clock
        self._timeout = timeout
        self._intercept_timeout = intercept_timeout
        self._first_base = first_base
        self._first_ignore: frozenset[str] = (
            frozenset() if first_base is None else frozenset(dir(first_base))
        )
        self._first_hooks: dict[type, frozenset[str]] = {}
        self.replace(addons)

    def replace(self, addons: Sequence[object]) -> None:
        """
        Run the hooks of *addons* from now on, instead of the present ones
        (an addon file was reloaded). A hook chain already running goes on
        with the addons it started with.

        :raises AddonError: if an addon has a misspelt or uncallable hook;
            the addons are then left as they were.
        """
        for addon in addons:
            validate_addon(addon)
        self._addons = tuple(addons)
        self._for_first: dict[type, tuple[frozenset[str], frozenset[str]]] = {}
        self._whole = frozenset(
            hook
            for hook in WHOLE_BODY_HOOKS
            for addon in self._addons
            if _implementation(addon, hook) is not None and not _streams_bodies(addon)
        )
        self._calls: dict[str, tuple[HookCall, ...]] = {
            hook: tuple(
                (_addon_name(addon), method)
                for addon in self._addons
                if (method := _implementation(addon, hook)) is not None
            )
            for hook in HOOKS
        }

    @property
    def addons(self) -> tuple[object, ...]:
        """
        The addons, in the order their hooks run.
        """
        return self._addons

    def time_hooks(self, observe: Callable[[str, float], object]) -> None:
        """
        From now on, time every :meth:`run`: *observe* is called with the
        hook's name and the seconds from the call to the end of the chain
        (its Deferred's, when it waits), however it ends.  For metrics: an
        untimed chain pays nothing for this.
        """
        untimed = self.run

        def run(hook: str, subject: object, *, first: object | None = None
                ) -> Deferred[None] | None:
            start = perf_counter()
            d = untimed(hook, subject, first=first)
            if d is None:
                observe(hook, perf_counter() - start)
                return None

            def ended(result: object) -> object:
                observe(hook, perf_counter() - start)
                return result

            return d.addBoth(ended)

        self.run = run  # type: ignore[method-assign]

    def has(self, hook: str, first: object | None = None) -> bool:
        """
        Tell whether running *hook* would call anything.

        :param hook: One of :data:`HOOKS`.
        :param first: The object that would be passed as ``first`` to
            :meth:`run`, if any.
        :returns: ``True`` if an addon, or *first*'s class, implements *hook*.
        :raises KeyError: if *hook* is not one of :data:`HOOKS`.
        :raises AddonError: if *first*'s class, seen for the first time, has
            a misspelt or uncallable hook.
        """
        if self._calls[hook]:
            return True
        return first is not None and hook in self._hooks_of(type(first))

    def run(
        self, hook: str, subject: object, *, first: object | None = None
    ) -> Deferred[None] | None:
        """
        Call *hook* of *first* (if its class implements it) and then of every
        addon that implements it, each with *subject*, one after the other.

        A hook returning a Deferred or a coroutine is waited for before the
        next one is called; so is a hook that leaves *subject* intercepted,
        until it is resumed. The chain stops early, successfully, once
        *subject* is killed (for every hook but ``error``, which a killed
        flow ends with) or, for ``requestheaders`` and ``request``, once
        ``subject.response`` is set; this is checked before every call, the
        first one included.

        :param hook: One of :data:`HOOKS`.
        :param subject: The flow or connection record passed to every hook.
        :param first: The per-request object whose own method named *hook*
            runs before every addon's; see ``first_base`` in the constructor.
        :returns: ``None`` when every hook called returned synchronously
            without intercepting *subject* (nothing to wait for).
            Otherwise a Deferred that fires with ``None`` when the chain is
            done. It fails with :class:`~twistproxy.errors.HookFailed` if a
            hook raised (synchronously or through its Deferred or
            coroutine), which ends the chain and is logged; with
            :class:`~twistproxy.errors.HookTimeout` (logged the same way) if
            what a hook returned had not finished ``timeout`` seconds after
            the call returned, or *subject* was still intercepted
            ``intercept_timeout`` seconds after a hook, in which case what
            the hook returned, or the wait for *subject* to be resumed, is
            cancelled and no further hook runs; with whatever
            ``subject.wait_for_resume()`` failed with, if it did; and with
            :class:`~twisted.internet.defer.CancelledError` when it is
            cancelled, which cancels whatever the chain was waiting for, and
            its deadline, and runs no further hook.
        :raises KeyError: if *hook* is not one of :data:`HOOKS`.
        :raises AddonError: if *first*'s class, seen for the first time, has
            a misspelt or uncallable hook.
        """
        calls = self._calls[hook]
        if first is not None and hook in self._hooks_of(type(first)):
            calls = ((_addon_name(first), getattr(first, hook)), *calls)
        if not calls:
            return None
        for index, (description, call) in enumerate(calls):
            if settled(subject, hook):
                return None
            try:
                returned = call(subject)
            except Exception:
                return fail(hook_failed(hook, description, subject, Failure()))
            if must_wait(returned, subject):
                pending = PendingChain(
                    hook,
                    subject,
                    calls,
                    clock=self._clock,
                    timeout=self._timeout,
                    intercept_timeout=self._intercept_timeout,
                )
                return pending.start(index, returned)
        return None

    def whole_bodies(self, first: type | None = None) -> frozenset[str]:
        """
        Of :data:`WHOLE_BODY_HOOKS`, those for which somebody needs bodies
        whole: an addon, or the ``first`` class *first*, that implements the
        hook and does not set ``stream_bodies`` (:attr:`IAddon.stream_bodies`).

        :raises AddonError: if *first*, seen for the first time, has a
            misspelt or uncallable hook.
        """
        if first is None or _streams_bodies(first):
            return self._whole
        return self._whole | (self._hooks_of(first) & WHOLE_BODY_HOOKS)

    def hooks_for(self, cls: type) -> tuple[frozenset[str], frozenset[str]]:
        """
        The hooks the addons or the ``first`` class *cls* implement, and of
        those :meth:`whole_bodies`; worked out once per class (until
        :meth:`replace`).

        :raises AddonError: if *cls*, seen for the first time, has a
            misspelt or uncallable hook.
        """
        known = self._for_first.get(cls)
        if known is None:
            hooks = frozenset(hook for hook in HOOKS if self._calls[hook]) | self._hooks_of(cls)
            known = self._for_first[cls] = (hooks, self.whole_bodies(cls))
        return known

    def first_hooks(self, cls: type) -> frozenset[str]:
        """
        The hooks a ``first`` object of class *cls* implements, validating
        *cls* the first time it is seen (call it up front to fail early).

        :raises AddonError: if *cls* has a misspelt or uncallable hook.
        """
        return self._hooks_of(cls)

    def _hooks_of(self, cls: type) -> frozenset[str]:
        """
        The hooks a ``first`` object of class *cls* implements, validating
        *cls* the first time it is seen.

        :raises AddonError: if *cls* has a misspelt or uncallable hook.
        """
        hooks = self._first_hooks.get(cls)
        if hooks is None:
            validate_addon(cls, ignore=self._first_ignore)
            base = self._first_base
            if base is None:
                hooks = frozenset(hook for hook in HOOKS if callable(getattr(cls, hook, None)))
            else:
                inherited = set(base.__mro__)
                hooks = frozenset(
                    hook
                    for klass in cls.__mro__
                    if klass not in inherited
                    for hook in HOOKS
                    if hook in vars(klass)
                )
            self._first_hooks[cls] = hooks
        return hooks


def _streams_bodies(addon: object) -> bool:
    """Whether *addon* (or a ``first`` class) says its hooks need no whole bodies."""
    return getattr(addon, "stream_bodies", False) is True


def _implementation(addon: object, hook: str) -> Callable[[Any], object] | None:
    """
    The bound method *addon* implements *hook* with, or ``None`` if it lacks
    one or only inherits :class:`Addon`'s no-op.
    """
    method = getattr(addon, hook, None)
    if method is None:
        return None
    if getattr(type(addon), hook, None) is _NO_OP_HOOKS[hook] and hook not in getattr(
        addon, "__dict__", {}
    ):
        return None
    return method
