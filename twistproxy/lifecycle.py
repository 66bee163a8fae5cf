# -*- test-case-name: tests.test_lifecycle -*-
"""
The addons' lifecycle, as mitmproxy's: :class:`AddonManager` holds the
addons of a proxy (of all its listeners) and calls, once per addon,

- ``load(loader)`` when the addon is registered: the manager is made, or
  the addon added (an addon file loaded or reloaded);
- ``configure(updated)`` with every option's name when the proxy starts
  (or :meth:`AddonManager.configure` is called; ``twistd`` does after
  ``--set``), then with the names of the options that change;
- ``running()`` once every listener sharing the manager listens: each
  ``ProxyFactory`` given the manager has started (Twisted's
  ``Factory.doStart``, when a port listens with it);
- ``done()`` once every such factory has stopped, after the last flow: a
  :class:`~twistproxy.service.ProxyService` keeps its factory started until
  its connections are drained; or when the addon is removed.

A ``ProxyFactory`` given a plain list of addons makes a manager of its own;
several factories (listeners) share one by being given the same manager.
"""

from __future__ import annotations

import inspect
from collections.abc import Iterable, Sequence
from typing import Any, Protocol

from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from twistproxy import ctx
from twistproxy._addoncheck import addon_name, validate_addon
from twistproxy.addonopts import AddonOptions, Loader, OptionsError
from twistproxy.errors import AddonError
from twistproxy.hooks import HookChain

__all__ = ["DONE_TIMEOUT", "AddonManager"]

DONE_TIMEOUT = 30.0
"""Seconds the ``done`` hooks, together, may take at shutdown."""


class _Listener(Protocol):
    """What the manager needs of a ``ProxyFactory`` (without importing it)."""

    reactor: Any
    chain: HookChain


class AddonManager:
    """
    The addons of a proxy, and their lifecycle (see the module's
    docstring).

    :param addons: The addons, in the order their hooks run; each is
        validated and its ``load`` called at once.
    :param options: Where the options are declared; by default new ones,
        which become ``ctx.options``.
    :param done_timeout: Seconds the ``done`` hooks may take together at
        shutdown; then they are cancelled.
    :raises AddonError: if an addon is refused (a misspelt hook, its
        ``load`` raised).
    :ivar options: The addons' options.
    """

    log = Logger(namespace="twistproxy")

    def __init__(
        self,
        addons: Iterable[object] = (),
        *,
        options: AddonOptions | None = None,
        done_timeout: float = DONE_TIMEOUT,
    ) -> None:
        if options is None:
            options = AddonOptions()
            ctx.use(options)
        self.options = options
        self.options.subscribe(self._options_changed)
        self._addons: list[object] = []
        self._factories: list[_Listener] = []
        self._started: set[int] = set()
        self._configured = False
        self._running = False
        self._done_timeout = done_timeout
        self._stopping: Deferred[None] | None = None
        self.add(*addons)

    @classmethod
    def of(cls, addons: Sequence[object] | AddonManager) -> AddonManager:
        """*addons* if it is a manager, else a new manager of them."""
        return addons if isinstance(addons, AddonManager) else cls(addons)

    @property
    def addons(self) -> tuple[object, ...]:
        """The addons, in the order their hooks run."""
        return tuple(self._addons)

    @property
    def running(self) -> bool:
        """Whether ``running`` has been called and ``done`` not yet."""
        return self._running

    def add(self, *addons: object, at: int | None = None) -> None:
        """
        Register *addons*: validate each and call its ``load``; then, if the
        proxy is configured already, its ``configure`` with every option, and
        if it is running, its ``running``.

        :param at: Where in the order to put them; by default at the end.
        :raises AddonError: if one is refused (or its ``configure`` raised);
            none of *addons* is added.
        """
        self._prepare(addons)
        index = len(self._addons) if at is None else at
        self._addons[index:index] = addons
        self._refresh()
        if self._running:
            self._call_each("running", addons)

    def replace(self, old: Sequence[object], new: Sequence[object]) -> None:
        """
        Put *new* where *old* is (an addon file reloaded): *new* are loaded
        and configured first (if one is refused or its ``configure`` raises,
        nothing changes), then *old* get ``done`` and, if the proxy runs,
        *new* ``running``.

        :raises AddonError: if one of *new* is refused, or *old* are not
            all addons of this manager.
        """
        positions = [self._index(addon) for addon in old]
        at = positions[0] if positions else len(self._addons)
        if positions != list(range(at, at + len(positions))):
            raise AddonError("the addons to replace must be consecutive, in their order")
        self._prepare(new)
        self._addons[at:at + len(old)] = new
        self._refresh()
        self._call_each("done", old)
        if self._running:
            self._call_each("running", new)

    def remove(self, *addons: object) -> None:
        """
        Remove *addons* and call their ``done``.

        :raises AddonError: if one is not an addon of this manager.
        """
        for addon in addons:
            del self._addons[self._index(addon)]
        self._refresh()
        self._call_each("done", addons)

    def configure(self) -> None:
        """
        Call every addon's ``configure`` with every option's name, once:
        later calls do nothing (changes are passed on as they happen).

        :raises OptionsError: if an addon's ``configure`` raised, naming it.
        """
        if self._configured:
            return
        self._configure(self._addons, self.options.keys())
        self._configured = True

    def attach(self, factory: _Listener) -> None:
        """
        *factory* (a listener) runs these addons: its hook chain follows
        changes, and ``running`` waits for it to start.
        """
        self._factories.append(factory)

    def started(self, factory: _Listener) -> None:
        """
        *factory* started: once every attached factory has, configure the
        addons if that was not done and call ``running``.
        """
        self._started.add(id(factory))
        if self._running or not all(id(f) in self._started for f in self._factories):
            return
        ctx.use(self.options)
        if not self._configured:
            try:
                self.configure()
            except AddonError as e:
                self.log.error("twistproxy: addons not configured: {error}", error=str(e))
        self._running = True
        self._call_each("running", self._addons)

    def stopped(self, factory: _Listener) -> Deferred[None]:
        """
        *factory* stopped: once no attached factory is started, call
        ``done`` (if ``running`` was called).

        :returns: A Deferred that fires once the ``done`` hooks are done
            (:meth:`when_done`).
        """
        self._started.discard(id(factory))
        if self._running and not any(id(f) in self._started for f in self._factories):
            self._running = False
            self._stopping = self._call_each("done", self._addons, clock=factory.reactor)
        return self.when_done()

    def when_done(self) -> Deferred[None]:
        """A Deferred that fires once the ``done`` hooks of the last stop are done."""
        stopping = self._stopping
        if stopping is None or stopping.called:
            return succeed(None)
        d: Deferred[None] = Deferred()

        def fire(result: object) -> object:
            d.callback(None)
            return result

        stopping.addBoth(fire)
        return d

    def _index(self, addon: object) -> int:
        for index, mine in enumerate(self._addons):
            if mine is addon:
                return index
        raise AddonError(f"{addon_name(addon)} is not one of the addons")

    def _prepare(self, addons: Sequence[object]) -> None:
        """
        Validate *addons*, call their ``load`` hooks and, if the others are
        configured, their ``configure`` with every option.
        """
        for addon in addons:
            validate_addon(addon)
        loader = Loader(self.options)
        for addon in addons:
            load = getattr(addon, "load", None)
            if not callable(load):
                continue
            try:
                load(loader)
            except AddonError as e:
                raise type(e)(f"{addon_name(addon)}.load: {e}") from e
            except Exception as e:
                raise AddonError(f"{addon_name(addon)}.load: {type(e).__name__}: {e}") from e
        if self._configured:
            self._configure(addons, self.options.keys())

    def _refresh(self) -> None:
        """Give every attached factory's hook chain the addons as they are now."""
        for factory in self._factories:
            factory.chain.replace(self._addons)

    def _options_changed(self, updated: set[str]) -> None:
        if self._configured:
            self._configure(self._addons, updated)

    def _configure(self, addons: Sequence[object], updated: set[str]) -> None:
        """
        Call the ``configure`` hook of *addons* with *updated*.

        :raises OptionsError: naming the addon, if one raised.
        """
        for addon in addons:
            configure = getattr(addon, "configure", None)
            if not callable(configure):
                continue
            try:
                configure(set(updated))
            except Exception as e:
                reason = str(e) if isinstance(e, OptionsError) else f"{type(e).__name__}: {e}"
                raise OptionsError(f"{addon_name(addon)}.configure: {reason}") from e

    def _call_each(
        self, hook: str, addons: Sequence[object], clock: IReactorTime | None = None
    ) -> Deferred[None]:
        """
        Call *hook* (``running`` or ``done``) of each of *addons* in turn,
        waiting for what it returns; a failure is logged and the next addon
        called. With a *clock*, the whole is cancelled after
        ``done_timeout`` seconds.
        """
        async def each() -> None:
            for addon in list(addons):
                method = getattr(addon, hook, None)
                if not callable(method):
                    continue
                try:
                    result: Any = method()
                    if inspect.isawaitable(result):
                        await result
                except Exception:
                    self.log.failure("{addon}.{hook} failed", addon=addon_name(addon), hook=hook)

        d = Deferred.fromCoroutine(each())
        if clock is not None:
            d.addTimeout(self._done_timeout, clock)
            d.addErrback(lambda f: self.log.failure("{hook} hooks gave up", f, hook=hook))
        return d
