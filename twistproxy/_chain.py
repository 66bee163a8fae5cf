# -*- test-case-name: tests.test_hooks -*-
"""
The part of a hook chain's run that has to wait, for
:class:`twistproxy.hooks.HookChain`.

:meth:`HookChain.run <twistproxy.hooks.HookChain.run>` calls hooks one after
the other for as long as each returns synchronously, creating no Deferred.
Once a hook returns a Deferred, a coroutine or another awaitable, or leaves
its subject intercepted, it hands the rest of the run to a
:class:`PendingChain`, which waits (up to the chain's deadlines), resumes,
fails or is cancelled. The helpers both of them use, :func:`settled` and
:func:`hook_failed`, are here too.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger, LogLevel
from twisted.python.failure import Failure

from twistproxy._events import Event
from twistproxy.errors import HookFailed, HookTimeout

# Under the public module's name, where the hooks' failures were always logged.
_log = Logger(namespace="twistproxy.hooks")

HookCall = tuple[str, Callable[[Any], object]]
"""
One call of a chain: the description of the addon (for logs and errors) and
its bound hook method.
"""

# Hooks after which a flow with a response needs no further hooks: a hook
# answered the request, so the origin is not contacted.
_ANSWERING_HOOKS = frozenset({"http_connect", "requestheaders", "request"})


class PendingChain:
    """
    The rest of one run of a hook chain, once it has had to wait.

    While it waits for what a hook returned, or for the subject to be
    resumed, at most one timer is armed (``_timer``): that wait's deadline,
    if the chain has one. It is cancelled when the wait ends; when it comes
    due instead, it cancels the wait and fails :attr:`result` with
    :class:`HookTimeout`.

    :ivar result: Fires when the chain is done; cancelling it cancels
        ``_waiting`` and ``_timer``.
    """

    def __init__(
        self,
        hook: str,
        subject: Any,
        calls: tuple[HookCall, ...],
        *,
        clock: IReactorTime | None,
        timeout: float | None,
        intercept_timeout: float | None,
    ) -> None:
        """
        :param hook: The hook being run.
        :param subject: The flow or connection record passed to every call.
        :param calls: Every call of this run, in order.
        :param clock: Where the deadlines are scheduled; not ``None`` if
            either deadline is given.
        :param timeout: The chain's hook deadline, in seconds, or ``None``.
        :param intercept_timeout: The chain's intercept deadline, in
            seconds, or ``None``.
        """
        self._clock = clock
        self._timeout = timeout
        self._intercept_timeout = intercept_timeout
        self._hook = hook
        self._subject = subject
        self._calls = calls
        self._waiting: Deferred[Any] | None = None
        self._timer: IDelayedCall | None = None
        # Cancelled or timed out: no further hook runs, late results are dropped.
        self._stopped = False
        self.result: Deferred[None] = Deferred(self._cancel)

    def start(self, index: int, returned: object) -> Deferred[None]:
        """
        Go on from the call at *index*, which returned *returned*.

        :returns: :attr:`result`.
        """
        self._called(index, returned)
        return self.result

    def _called(self, index: int, returned: object) -> None:
        """
        Wait for what the call at *index* returned, if it is awaitable.
        """
        if isinstance(returned, Deferred):
            waiting: Deferred[Any] = returned
        elif inspect.iscoroutine(returned):
            waiting = Deferred.fromCoroutine(returned)
        elif inspect.isawaitable(returned):
            waiting = Deferred.fromCoroutine(_await(returned))
        else:
            self._hook_done(None, index)
            return
        self._wait(waiting, self._hook_done, self._hook_raised, index, intercepted=False)

    def _wait(
        self,
        waiting: Deferred[Any],
        done: Callable[[object, int], None],
        failed: Callable[[Failure, int], None],
        index: int,
        *,
        intercepted: bool,
    ) -> None:
        """
        Go on with *done* or *failed* once *waiting* fires; until then,
        cancelling :attr:`result` cancels *waiting*, and so does the
        deadline, if there is one: the intercept deadline if *intercepted*
        (*waiting* is the wait for the subject to be resumed), otherwise the
        hook deadline.
        """
        self._waiting = waiting
        waiting.addCallbacks(done, failed, callbackArgs=(index,), errbackArgs=(index,))
        seconds = self._intercept_timeout if intercepted else self._timeout
        if seconds is not None and self._waiting is waiting:
            # Not fired already: the deadline starts now.
            assert self._clock is not None  # checked by HookChain
            self._timer = self._clock.callLater(
                seconds, self._expired, index, seconds, intercepted
            )

    def _waited(self) -> None:
        """
        The wait is over: forget it and cancel its deadline.
        """
        self._waiting = None
        timer, self._timer = self._timer, None
        if timer is not None:
            timer.cancel()

    def _hook_done(self, ignored: object, index: int) -> None:
        """
        The call at *index* has finished: hold the chain while the subject is
        intercepted, then go on with the next call.
        """
        self._waited()
        if self._stopped:
            return
        if getattr(self._subject, "intercepted", False):
            self._wait(
                self._subject.wait_for_resume(),
                self._resumed,
                self._resume_failed,
                index,
                intercepted=True,
            )
        else:
            self._call_from(index + 1)

    def _resumed(self, ignored: object, index: int) -> None:
        """
        The subject was resumed after the call at *index*: go on with the
        next call.
        """
        self._waited()
        if not self._stopped:
            self._call_from(index + 1)

    def _call_from(self, start: int) -> None:
        """
        Call the hooks from *start* on, until one has to be waited for or
        the chain is over.
        """
        subject = self._subject
        for index in range(start, len(self._calls)):
            if settled(subject, self._hook):
                break
            description, call = self._calls[index]
            try:
                returned = call(subject)
            except Exception:
                failed = hook_failed(self._hook, description, subject, Failure())
                if not self._stopped:
                    self.result.errback(failed)
                return
            if self._stopped:
                # The hook cancelled the chain itself, say by closing the
                # client connection: abandon whatever it started.
                _abandon(returned)
                return
            if must_wait(returned, subject):
                self._called(index, returned)
                return
        self.result.callback(None)

    def _hook_raised(self, reason: Failure, index: int) -> None:
        """
        The Deferred or coroutine of the call at *index* failed: end the
        chain with :class:`HookFailed`, unless the chain was stopped.
        """
        self._waited()
        if self._stopped:
            return
        description = self._calls[index][0]
        self.result.errback(hook_failed(self._hook, description, self._subject, reason))

    def _resume_failed(self, reason: Failure, index: int) -> None:
        """
        Waiting for the subject to be resumed failed other than by
        cancellation: log it and end the chain with that failure.
        """
        self._waited()
        if self._stopped:
            return
        _log.failure(
            "Waiting for flow {flow_id} to be resumed after hook {hook!r} of {addon} failed",
            reason,
            level=LogLevel.error,
            hook=self._hook,
            addon=self._calls[index][0],
            flow_id=getattr(self._subject, "id", "?"),
        )
        self.result.errback(reason)

    def _expired(self, index: int, seconds: float, intercepted: bool) -> None:
        """
        The deadline of the wait after the call at *index* passed: run no
        further hook, cancel the wait, and fail :attr:`result` with
        :class:`HookTimeout`.
        """
        self._timer = None
        self._stopped = True
        waiting, self._waiting = self._waiting, None
        failure = _hook_timed_out(
            self._hook, self._calls[index][0], self._subject, seconds, intercepted
        )
        if waiting is not None:
            waiting.cancel()
        # Unless cancelling the wait cancelled the chain too (a canceller
        # that closed the client connection, say).
        if not self.result.called:
            self.result.errback(failure)

    def _cancel(self, result: Deferred[None]) -> None:
        """
        Cancel whatever the chain is waiting for, and its deadline, and run
        no further hook; :attr:`result` then fails with ``CancelledError``.
        """
        self._stopped = True
        waiting, self._waiting = self._waiting, None
        timer, self._timer = self._timer, None
        if timer is not None:
            timer.cancel()
        if waiting is not None:
            waiting.cancel()


def _abandon(returned: object) -> None:
    """
    Cancel a Deferred, or close a coroutine, that a hook returned after the
    chain was cancelled.
    """
    if isinstance(returned, Deferred):
        returned.addErrback(_ignore_cancellation)
        returned.cancel()
    elif inspect.iscoroutine(returned):
        returned.close()


def _ignore_cancellation(reason: Failure) -> None:
    """
    Swallow the ``CancelledError`` of a Deferred :func:`_abandon` cancelled;
    any other failure stays unhandled, to be logged as such.
    """
    reason.trap(CancelledError)


async def _await(awaitable: Any) -> object:
    """
    Await an awaitable that is neither a Deferred nor a coroutine, so that
    :meth:`Deferred.fromCoroutine` can drive it.
    """
    return await awaitable


def settled(subject: Any, hook: str) -> bool:
    """
    Whether the chain should stop before its next call: *subject* was killed
    (except for ``error``, which a killed flow ends with) or, for an
    answering hook, has a response.
    """
    if hook != "error" and getattr(subject, "killed", False):
        return True
    return hook in _ANSWERING_HOOKS and getattr(subject, "response", None) is not None


def must_wait(returned: object, subject: Any) -> bool:
    """
    Whether the chain waits after a hook call: it returned a Deferred, a
    coroutine or another awaitable, or left *subject* intercepted.
    """
    # Most hooks return None: no need to ask whether that is awaitable.
    if returned is not None and inspect.isawaitable(returned):
        return True
    return getattr(subject, "intercepted", False)


def _hook_timed_out(
    hook: str, description: str, subject: object, seconds: float, intercepted: bool
) -> Failure:
    """
    Log that the wait after *hook* of the addon *description* outlived its
    deadline of *seconds* (the wait for *subject* to be resumed if
    *intercepted*) and make the :class:`HookTimeout` failure saying so.
    """
    failure = Failure(HookTimeout(hook, description, seconds, intercepted=intercepted))
    if intercepted:
        message = (
            "Flow {flow_id} was held by intercept() after hook {hook!r} of {addon} "
            "for {seconds} s without being resumed"
        )
    else:
        message = "Hook {hook!r} of {addon} timed out after {seconds} s for flow {flow_id}"
    _log.failure(
        message,
        failure,
        level=LogLevel.error,
        hook=hook,
        addon=description,
        flow_id=getattr(subject, "id", "?"),
        seconds=seconds,
    )
    return failure


def hook_failed(hook: str, description: str, subject: object, reason: Failure) -> Failure:
    """
    Log that *hook* of the addon *description* failed with *reason* and turn
    it into a :class:`HookFailed` failure.
    """
    flow_id = getattr(subject, "id", "?")
    _log.failure(
        "Hook {hook!r} of {addon} failed for flow {flow_id}",
        reason,
        level=LogLevel.error,
        hook=hook,
        addon=description,
        flow_id=flow_id,
    )
    return Failure(HookFailed(hook, description, reason))


class HookWaiter:
    """
    What a shell that drives an exchange (a request, a SOCKS5 or transparent
    tunnel's opening) does with a hook chain's Deferred: keep it as the one
    waited for, hand its end to the exchange as ``HOOK_DONE`` or
    ``HOOK_FAILED``, and cancel it on ``CANCEL_HOOK``; a chain that ends
    after it was cancelled, or replaced, reports nothing.
    """

    _pending: Deferred[Any] | None = None  # the hook chain being waited for
    _event: Callable[[Event, Any], None]  # the shell's: hand an event to its exchange

    def _wait_for_hook(self, d: Deferred[Any]) -> bool:
        """Wait for the chain *d*: whether it is still running (``HOOK_PENDING`` is due)."""
        self._pending = d
        d.addCallbacks(self._hook_ended, self._hook_ended,
                       callbackArgs=(d, Event.HOOK_DONE), errbackArgs=(d, Event.HOOK_FAILED))
        return self._pending is d

    def _hook_ended(self, result: object, d: Deferred[Any], event: Event) -> None:
        """The chain *d* fired (a Failure for ``HOOK_FAILED``), unless it was cancelled."""
        if d is self._pending:
            self._pending = None
            self._event(event, result)

    def _cancel_hook(self, _: object) -> None:
        """``CANCEL_HOOK``: cancel the chain waited for, if any."""
        d, self._pending = self._pending, None
        if d is not None:
            d.cancel()
