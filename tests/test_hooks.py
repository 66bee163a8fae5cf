"""
Tests for :mod:`twistproxy.hooks`, and through its :class:`HookChain` for
:mod:`twistproxy._chain`.
"""

from __future__ import annotations

import types
from typing import Any, cast

from twisted.internet.defer import CancelledError, Deferred, succeed
from twisted.internet.interfaces import IDelayedCall
from twisted.internet.task import Clock
from twisted.logger import ILogObserver, LogLevel, globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase
from zope.interface.verify import verifyObject

from twistproxy.errors import AddonError, HookFailed, HookTimeout
from twistproxy.hooks import (
    FLOW_HOOKS,
    HOOKS,
    LIFECYCLE_HOOKS,
    UNSUPPORTED_HOOKS,
    Addon,
    HookChain,
    IAddon,
    validate_addon,
)


class FakeFlow:
    """
    The parts of a flow the hook chain relies on, with the semantics of
    ``intercept``, ``resume`` and ``kill``.
    """

    def __init__(self, flow_id: str = "flow-1") -> None:
        self.id = flow_id
        self.response: object | None = None
        self.error: object | None = None
        self.intercepted = False
        self._killed = False
        self._resume_waiters: list[Deferred[None]] = []
        self.cancelled_waits: list[Deferred[None]] = []

    @property
    def killed(self) -> bool:
        """
        Whether :meth:`kill` was called.
        """
        return self._killed

    def intercept(self) -> None:
        """
        Hold the flow until :meth:`resume`.
        """
        self.intercepted = True

    def resume(self) -> None:
        """
        Release an intercepted flow.
        """
        self.intercepted = False
        waiters, self._resume_waiters = self._resume_waiters, []
        for waiter in waiters:
            if not waiter.called:
                waiter.callback(None)

    def kill(self) -> None:
        """
        Kill the flow, releasing it if it was intercepted.
        """
        self._killed = True
        self.resume()

    def wait_for_resume(self) -> Deferred[None]:
        """
        :returns: A Deferred that fires when the flow is resumed; already
            fired when it is not intercepted.
        """
        if not self.intercepted:
            return succeed(None)
        waiter: Deferred[None] = Deferred(self.cancelled_waits.append)
        self._resume_waiters.append(waiter)
        return waiter


class ConnectionRecord:
    """
    A connection record: it has an id and nothing a flow has.
    """

    def __init__(self, record_id: str = "conn-1") -> None:
        self.id = record_id


class Recorder(Addon):
    """
    An addon that records, in a shared log, each ``request`` and ``response``
    hook it runs, and then does what ``action`` says.
    """

    def __init__(self, name: str, log: list[str], action: Any = None) -> None:
        self.name = name
        self.log = log
        self.action = action

    def _record(self, hook: str, flow: Any) -> object:
        self.log.append(f"{self.name}.{hook}")
        if self.action is not None:
            return self.action(flow)
        return None

    def request(self, flow: Any) -> object:
        """
        Record the call, then do ``action``.
        """
        return self._record("request", flow)

    def response(self, flow: Any) -> object:
        """
        Record the call, then do ``action``.
        """
        return self._record("response", flow)


class Boom(Exception):
    """
    The exception hooks raise in these tests.
    """


def _raise(flow: Any) -> object:
    raise Boom("hook exploded")


class HookChainTests(SynchronousTestCase):
    """
    Tests for the order of :class:`HookChain` calls and what it returns.
    """

    def test_addons_run_in_order(self) -> None:
        """
        Every addon's hook is called with the flow, in registration order.
        """
        log: list[str] = []
        chain = HookChain([Recorder("a", log), Recorder("b", log), Recorder("c", log)])
        chain.run("request", FakeFlow())
        self.assertEqual(log, ["a.request", "b.request", "c.request"])

    def test_subject_passed(self) -> None:
        """
        The hook receives the subject given to ``run``.
        """
        seen: list[object] = []
        flow = FakeFlow()
        chain = HookChain([Recorder("a", [], seen.append)])
        chain.run("response", flow)
        self.assertEqual(seen, [flow])

    def test_sync_fast_path_returns_none(self) -> None:
        """
        When every hook returns synchronously, ``run`` returns ``None`` rather
        than a Deferred.
        """
        log: list[str] = []
        chain = HookChain([Recorder("a", log, lambda flow: 42), Recorder("b", log)])
        self.assertIsNone(chain.run("request", FakeFlow()))
        self.assertEqual(log, ["a.request", "b.request"])

    def test_nothing_to_run_returns_none(self) -> None:
        """
        A hook no addon implements returns ``None`` and calls nothing.
        """
        chain = HookChain([Recorder("a", [])])
        self.assertIsNone(chain.run("error", FakeFlow()))

    def test_addons_attribute(self) -> None:
        """
        ``addons`` is the registered addons as a read-only tuple.
        """
        first, second = Recorder("a", []), Recorder("b", [])
        chain = HookChain([first, second])
        self.assertEqual(chain.addons, (first, second))
        with self.assertRaises(AttributeError):
            chain.addons = ()  # type: ignore[misc]

    def test_unknown_hook(self) -> None:
        """
        Running a hook that does not exist raises ``KeyError``.
        """
        chain = HookChain([Recorder("a", [])])
        self.assertRaises(KeyError, chain.run, "reqeust", FakeFlow())
        self.assertRaises(KeyError, chain.has, "reqeust")

    def test_connection_hook(self) -> None:
        """
        Connection hooks receive a connection record, which has no
        ``killed``, ``response`` or ``intercepted`` attributes.
        """
        seen: list[object] = []

        class Connections:
            def client_connected(self, client: object) -> None:
                seen.append(("connected", client))

            def client_disconnected(self, client: object) -> None:
                seen.append(("disconnected", client))

        record = ConnectionRecord()
        chain = HookChain([Connections()])
        self.assertIsNone(chain.run("client_connected", record))
        self.assertIsNone(chain.run("client_disconnected", record))
        self.assertEqual(seen, [("connected", record), ("disconnected", record)])

    def test_module_addon(self) -> None:
        """
        A module with hook functions is an addon, described by its ``repr``
        in errors.
        """
        module = types.ModuleType("my_addon")
        module.request = _raise  # type: ignore[attr-defined]
        chain = HookChain([module])
        failure = self.failureResultOf(chain.run("request", FakeFlow()), HookFailed)
        self.assertEqual(failure.value.addon, repr(module))
        self.flushLoggedErrors(Boom)


class HookChainHasTests(SynchronousTestCase):
    """
    Tests for :meth:`HookChain.has`.
    """

    def test_implemented(self) -> None:
        """
        ``has`` is true for a hook an addon overrides, false otherwise.
        """
        chain = HookChain([Recorder("a", [])])
        self.assertTrue(chain.has("request"))
        self.assertTrue(chain.has("response"))
        self.assertFalse(chain.has("requestheaders"))
        self.assertFalse(chain.has("error"))

    def test_no_overrides(self) -> None:
        """
        An ``Addon`` subclass that overrides nothing implements no hook, and
        running a hook calls nothing and creates no Deferred.
        """

        class Nothing(Addon):
            pass

        chain = HookChain([Nothing(), Addon()])
        for hook in HOOKS:
            self.assertFalse(chain.has(hook), hook)
            self.assertIsNone(chain.run(hook, FakeFlow()))

    def test_instance_override(self) -> None:
        """
        A hook set on an ``Addon`` instance overrides the no-op.
        """
        log: list[str] = []
        addon = Addon()
        addon.error = lambda flow: log.append("error")  # type: ignore[method-assign]
        chain = HookChain([addon])
        self.assertTrue(chain.has("error"))
        chain.run("error", FakeFlow())
        self.assertEqual(log, ["error"])

    def test_plain_object(self) -> None:
        """
        An object that is not an ``Addon`` implements the hooks it has.
        """

        class Plain:
            def response(self, flow: object) -> None:
                pass

        chain = HookChain([Plain()])
        self.assertTrue(chain.has("response"))
        self.assertFalse(chain.has("request"))

    def test_first(self) -> None:
        """
        ``has`` is true for a hook only ``first`` implements.
        """

        class Base:
            def request(self, flow: object) -> None:
                pass

        class Mine(Base):
            def response(self, flow: object) -> None:
                pass

        chain = HookChain([], first_base=Base)
        self.assertTrue(chain.has("response", Mine()))
        self.assertFalse(chain.has("request", Mine()))
        self.assertFalse(chain.has("response"))


class HookChainAsyncTests(SynchronousTestCase):
    """
    Tests for hooks that return a Deferred or a coroutine.
    """

    def test_deferred_waited_for(self) -> None:
        """
        A hook's Deferred is waited for: the next addon is not called and the
        chain's Deferred has no result until it fires.
        """
        log: list[str] = []
        pending: Deferred[None] = Deferred()
        chain = HookChain([Recorder("a", log, lambda flow: pending), Recorder("b", log)])
        result = chain.run("request", FakeFlow())
        assert result is not None
        self.assertNoResult(result)
        self.assertEqual(log, ["a.request"])
        pending.callback(None)
        self.assertIsNone(self.successResultOf(result))
        self.assertEqual(log, ["a.request", "b.request"])

    def test_deferred_later_in_chain(self) -> None:
        """
        A Deferred returned by a later hook is waited for too, after the
        synchronous hooks before it ran.
        """
        log: list[str] = []
        pending: Deferred[str] = Deferred()
        chain = HookChain(
            [Recorder("a", log), Recorder("b", log, lambda flow: pending), Recorder("c", log)]
        )
        result = chain.run("response", FakeFlow())
        assert result is not None
        self.assertEqual(log, ["a.response", "b.response"])
        pending.callback("ignored")
        self.assertIsNone(self.successResultOf(result))
        self.assertEqual(log, ["a.response", "b.response", "c.response"])

    def test_fired_deferred(self) -> None:
        """
        An already-fired Deferred still makes ``run`` return a Deferred, which
        has fired once the chain ran to the end.
        """
        log: list[str] = []
        chain = HookChain([Recorder("a", log, lambda flow: succeed(1)), Recorder("b", log)])
        result = chain.run("request", FakeFlow())
        assert result is not None
        self.assertIsNone(self.successResultOf(result))
        self.assertEqual(log, ["a.request", "b.request"])

    def test_coroutine(self) -> None:
        """
        An ``async def`` hook runs to completion, awaiting a Deferred, before
        the next addon is called.
        """
        log: list[str] = []

        class Async(Addon):
            async def request(self, flow: Any) -> None:
                log.append("async start")
                value = await succeed("value")
                log.append(f"async got {value}")

        chain = HookChain([Async(), Recorder("b", log)])
        result = chain.run("request", FakeFlow())
        assert result is not None
        self.assertIsNone(self.successResultOf(result))
        self.assertEqual(log, ["async start", "async got value", "b.request"])

    def test_coroutine_waits(self) -> None:
        """
        A coroutine awaiting an unfired Deferred holds the chain until it
        fires.
        """
        log: list[str] = []
        pending: Deferred[None] = Deferred()

        class Async(Addon):
            async def response(self, flow: Any) -> None:
                await pending
                log.append("async done")

        chain = HookChain([Async(), Recorder("b", log)])
        result = chain.run("response", FakeFlow())
        assert result is not None
        self.assertNoResult(result)
        self.assertEqual(log, [])
        pending.callback(None)
        self.successResultOf(result)
        self.assertEqual(log, ["async done", "b.response"])


class HookChainFailureTests(SynchronousTestCase):
    """
    Tests for hooks that raise.
    """

    def assert_hook_failed(self, result: Deferred[None] | None, hook: str, addon: str) -> None:
        """
        Assert that *result* failed with ``HookFailed`` naming *hook* and
        *addon* and caused by ``Boom``, and that exactly that was logged.
        """
        assert result is not None
        failure = self.failureResultOf(result, HookFailed)
        self.assertEqual(failure.value.hook, hook)
        self.assertEqual(failure.value.addon, addon)
        self.assertTrue(failure.value.cause.check(Boom))
        self.assertEqual(len(self.flushLoggedErrors(Boom)), 1)

    def test_sync_exception(self) -> None:
        """
        A hook that raises fails the returned Deferred with ``HookFailed``,
        is logged, is not raised out of ``run`` and stops the chain.
        """
        log: list[str] = []

        class Raising(Recorder):
            pass

        chain = HookChain([Recorder("a", log), Raising("b", log, _raise), Recorder("c", log)])
        self.assert_hook_failed(chain.run("request", FakeFlow()), "request", Raising.__qualname__)
        self.assertEqual(log, ["a.request", "b.request"])

    def test_sync_exception_after_wait(self) -> None:
        """
        A hook that raises after an earlier hook was waited for fails the
        chain the same way.
        """
        log: list[str] = []
        pending: Deferred[None] = Deferred()
        chain = HookChain(
            [
                Recorder("a", log, lambda flow: pending),
                Recorder("b", log, _raise),
                Recorder("c", log),
            ]
        )
        result = chain.run("response", FakeFlow())
        pending.callback(None)
        self.assert_hook_failed(result, "response", "Recorder")
        self.assertEqual(log, ["a.response", "b.response"])

    def test_deferred_failure(self) -> None:
        """
        A hook whose Deferred fails ends the chain with ``HookFailed``.
        """
        log: list[str] = []
        pending: Deferred[None] = Deferred()
        chain = HookChain([Recorder("a", log, lambda flow: pending), Recorder("b", log)])
        result = chain.run("request", FakeFlow())
        self.assertEqual(self.flushLoggedErrors(Boom), [])
        pending.errback(Boom("later"))
        self.assert_hook_failed(result, "request", "Recorder")
        self.assertEqual(log, ["a.request"])

    def test_coroutine_failure(self) -> None:
        """
        An ``async def`` hook that raises ends the chain with ``HookFailed``.
        """
        log: list[str] = []

        class Async(Addon):
            async def error(self, flow: Any) -> None:
                await succeed(None)
                raise Boom("async")

        class After(Addon):
            def error(self, flow: Any) -> None:
                log.append("after")

        chain = HookChain([Async(), After()])
        self.assert_hook_failed(chain.run("error", FakeFlow()), "error", Async.__qualname__)
        self.assertEqual(log, [])

    def test_log_names_hook_addon_and_flow(self) -> None:
        """
        The logged failure carries the hook name, the addon and the flow id.
        """
        events: list[dict[str, Any]] = []
        observer = cast(ILogObserver, events.append)
        globalLogPublisher.addObserver(observer)
        self.addCleanup(globalLogPublisher.removeObserver, observer)
        chain = HookChain([Recorder("a", [], _raise)])
        result = chain.run("request", FakeFlow("flow-42"))
        assert result is not None
        self.failureResultOf(result, HookFailed)
        self.flushLoggedErrors(Boom)
        [event] = [event for event in events if "log_failure" in event]
        self.assertEqual(
            (event["hook"], event["addon"], event["flow_id"]),
            ("request", "Recorder", "flow-42"),
        )

    def test_log_namespace(self) -> None:
        """
        A hook's failure is logged in the ``twistproxy.hooks`` namespace,
        whether the hook raised or its Deferred failed after a wait.
        """
        events: list[dict[str, Any]] = []
        observer = cast(ILogObserver, events.append)
        globalLogPublisher.addObserver(observer)
        self.addCleanup(globalLogPublisher.removeObserver, observer)
        pending: Deferred[None] = Deferred()
        raising = HookChain([Recorder("a", [], _raise)]).run("request", FakeFlow())
        waiting = HookChain([Recorder("b", [], lambda flow: pending)]).run("request", FakeFlow())
        pending.errback(Boom("later"))
        for result in (raising, waiting):
            assert result is not None
            self.failureResultOf(result, HookFailed)
        self.assertEqual(len(self.flushLoggedErrors(Boom)), 2)
        self.assertEqual(
            [event["log_namespace"] for event in events if "log_failure" in event],
            ["twistproxy.hooks", "twistproxy.hooks"],
        )


class HookChainShortCircuitTests(SynchronousTestCase):
    """
    Tests for the chain stopping once the flow is answered or killed.
    """

    def test_response_set_in_request(self) -> None:
        """
        A ``request`` hook that sets ``flow.response`` stops the chain.
        """
        log: list[str] = []

        def answer(flow: FakeFlow) -> None:
            flow.response = object()

        chain = HookChain([Recorder("a", log, answer), Recorder("b", log)])
        self.assertIsNone(chain.run("request", FakeFlow()))
        self.assertEqual(log, ["a.request"])

    def test_response_set_in_requestheaders(self) -> None:
        """
        A ``requestheaders`` hook that sets ``flow.response`` stops the
        chain.
        """
        log: list[str] = []

        class Answer(Addon):
            def requestheaders(self, flow: Any) -> None:
                log.append("answer")
                flow.response = object()

        class After(Addon):
            def requestheaders(self, flow: Any) -> None:
                log.append("after")

        HookChain([Answer(), After()]).run("requestheaders", FakeFlow())
        self.assertEqual(log, ["answer"])

    def test_already_answered(self) -> None:
        """
        A flow answered before the ``request`` chain starts calls nothing.
        """
        log: list[str] = []
        flow = FakeFlow()
        flow.response = object()
        self.assertIsNone(HookChain([Recorder("a", log)]).run("request", flow))
        self.assertEqual(log, [])

    def test_response_set_after_wait(self) -> None:
        """
        A response set by an asynchronous ``request`` hook stops the chain
        once it is done, and the chain succeeds.
        """
        log: list[str] = []
        pending: Deferred[None] = Deferred()

        def answer_later(flow: FakeFlow) -> Deferred[None]:
            def answer(ignored: None) -> None:
                flow.response = object()

            return pending.addCallback(answer)

        chain = HookChain([Recorder("a", log, answer_later), Recorder("b", log)])
        result = chain.run("request", FakeFlow())
        assert result is not None
        pending.callback(None)
        self.successResultOf(result)
        self.assertEqual(log, ["a.request"])

    def test_response_hook_not_short_circuited(self) -> None:
        """
        A flow with a response runs every ``response`` hook.
        """
        log: list[str] = []
        flow = FakeFlow()
        flow.response = object()
        HookChain([Recorder("a", log), Recorder("b", log)]).run("response", flow)
        self.assertEqual(log, ["a.response", "b.response"])

    def test_kill(self) -> None:
        """
        A hook that kills the flow stops the chain, whatever the hook.
        """
        for hook in ("request", "response"):
            log: list[str] = []
            chain = HookChain([Recorder("a", log, FakeFlow.kill), Recorder("b", log)])
            self.assertIsNone(chain.run(hook, FakeFlow()))
            self.assertEqual(log, [f"a.{hook}"])

    def test_already_killed(self) -> None:
        """
        A killed flow calls no hook.
        """
        log: list[str] = []
        flow = FakeFlow()
        flow.kill()
        self.assertIsNone(HookChain([Recorder("a", log)]).run("response", flow))
        self.assertEqual(log, [])


class HookChainInterceptTests(SynchronousTestCase):
    """
    Tests for a hook intercepting the flow.
    """

    def test_intercept_holds_chain(self) -> None:
        """
        A hook that intercepts the flow holds the chain until it is resumed.
        """
        log: list[str] = []
        flow = FakeFlow()
        chain = HookChain([Recorder("a", log, FakeFlow.intercept), Recorder("b", log)])
        result = chain.run("request", flow)
        assert result is not None
        self.assertNoResult(result)
        self.assertEqual(log, ["a.request"])
        flow.resume()
        self.successResultOf(result)
        self.assertEqual(log, ["a.request", "b.request"])

    def test_intercept_last_hook(self) -> None:
        """
        An intercept in the last hook still holds the chain's result.
        """
        flow = FakeFlow()
        result = HookChain([Recorder("a", [], FakeFlow.intercept)]).run("response", flow)
        assert result is not None
        self.assertNoResult(result)
        flow.resume()
        self.successResultOf(result)

    def test_intercept_after_deferred(self) -> None:
        """
        A hook that intercepts the flow from its Deferred holds the chain
        after the Deferred fires, until the flow is resumed.
        """
        log: list[str] = []
        flow = FakeFlow()
        pending: Deferred[None] = Deferred()
        pending.addCallback(lambda ignored: flow.intercept())
        chain = HookChain([Recorder("a", log, lambda flow: pending), Recorder("b", log)])
        result = chain.run("request", flow)
        assert result is not None
        pending.callback(None)
        self.assertNoResult(result)
        self.assertEqual(log, ["a.request"])
        flow.resume()
        self.successResultOf(result)
        self.assertEqual(log, ["a.request", "b.request"])

    def test_kill_while_intercepted(self) -> None:
        """
        Killing an intercepted flow releases the chain, which calls no
        further hook.
        """
        log: list[str] = []
        flow = FakeFlow()
        chain = HookChain([Recorder("a", log, FakeFlow.intercept), Recorder("b", log)])
        result = chain.run("response", flow)
        assert result is not None
        flow.kill()
        self.successResultOf(result)
        self.assertEqual(log, ["a.response"])


class HookChainCancelTests(SynchronousTestCase):
    """
    Tests for cancelling the chain's Deferred.
    """

    def test_cancel_cancels_hook_deferred(self) -> None:
        """
        Cancelling the chain cancels the hook's Deferred, runs no further
        hook, fails with ``CancelledError`` and logs nothing.
        """
        log: list[str] = []
        cancelled: list[Deferred[None]] = []
        pending: Deferred[None] = Deferred(cancelled.append)
        chain = HookChain([Recorder("a", log, lambda flow: pending), Recorder("b", log)])
        result = chain.run("request", FakeFlow())
        assert result is not None
        result.cancel()
        self.assertEqual(cancelled, [pending])
        self.failureResultOf(result, CancelledError)
        self.assertEqual(log, ["a.request"])
        self.assertEqual(self.flushLoggedErrors(), [])

    def test_cancel_hook_fires_anyway(self) -> None:
        """
        A hook whose canceller fires its Deferred successfully does not make
        the cancelled chain go on.
        """
        log: list[str] = []
        pending: Deferred[None] = Deferred(lambda d: d.callback(None))
        chain = HookChain([Recorder("a", log, lambda flow: pending), Recorder("b", log)])
        result = chain.run("response", FakeFlow())
        assert result is not None
        result.cancel()
        self.failureResultOf(result, CancelledError)
        self.assertEqual(log, ["a.response"])

    def cancel_from_second_hook(self, second: Any) -> list[str]:
        """
        Run a chain of three addons whose first hook waits and whose second
        cancels the chain's Deferred and returns what ``second(flow)``
        returns; assert the chain failed with ``CancelledError`` without
        logging anything.

        :returns: The hooks that ran.
        """
        log: list[str] = []
        waiting: Deferred[None] = Deferred()
        results: list[Deferred[None]] = []

        def cancel_chain(flow: object) -> object:
            results[0].cancel()
            return second(flow)

        chain = HookChain(
            [
                Recorder("a", log, lambda flow: waiting),
                Recorder("b", log, cancel_chain),
                Recorder("c", log),
            ]
        )
        result = chain.run("request", FakeFlow())
        assert result is not None
        results.append(result)
        waiting.callback(None)
        self.failureResultOf(result, CancelledError)
        self.assertEqual(self.flushLoggedErrors(), [])
        return log

    def test_hook_cancels_chain_and_returns_deferred(self) -> None:
        """
        A hook that cancels the chain itself, synchronously, ends it: the
        Deferred it returns is cancelled and no further hook runs.
        """
        cancelled: list[Deferred[None]] = []
        returned: Deferred[None] = Deferred(cancelled.append)
        log = self.cancel_from_second_hook(lambda flow: returned)
        self.assertEqual(cancelled, [returned])
        self.assertEqual(log, ["a.request", "b.request"])

    def test_hook_cancels_chain_and_returns_coroutine(self) -> None:
        """
        A hook that cancels the chain itself and returns a coroutine: the
        coroutine is closed without running and no further hook runs.
        """
        ran: list[object] = []

        async def hook(flow: object) -> None:
            ran.append(flow)

        log = self.cancel_from_second_hook(hook)
        self.assertEqual(ran, [])
        self.assertEqual(log, ["a.request", "b.request"])

    def test_cancel_coroutine(self) -> None:
        """
        Cancelling the chain cancels the Deferred a coroutine hook awaits.
        """
        cancelled: list[Deferred[None]] = []
        pending: Deferred[None] = Deferred(cancelled.append)
        log: list[str] = []

        class Async(Addon):
            async def request(self, flow: Any) -> None:
                await pending
                log.append("not reached")

        result = HookChain([Async()]).run("request", FakeFlow())
        assert result is not None
        result.cancel()
        self.assertEqual(cancelled, [pending])
        self.failureResultOf(result, CancelledError)
        self.assertEqual(log, [])
        self.assertEqual(self.flushLoggedErrors(), [])

    def test_cancel_while_intercepted(self) -> None:
        """
        Cancelling the chain while the flow is intercepted cancels the wait
        for it to resume; resuming later calls no hook.
        """
        log: list[str] = []
        flow = FakeFlow()
        chain = HookChain([Recorder("a", log, FakeFlow.intercept), Recorder("b", log)])
        result = chain.run("request", flow)
        assert result is not None
        [waiter] = flow._resume_waiters
        result.cancel()
        self.assertEqual(flow.cancelled_waits, [waiter])
        self.failureResultOf(result, CancelledError)
        flow.resume()
        self.assertEqual(log, ["a.request"])


class CountingClock(Clock):
    """
    A :class:`Clock` that counts the calls it was asked to schedule,
    cancelled ones included.
    """

    def __init__(self) -> None:
        super().__init__()
        self.scheduled = 0

    def callLater(self, delay: float, callable: Any, *args: Any, **kw: Any) -> IDelayedCall:
        """
        Count the call, then schedule it.
        """
        self.scheduled += 1
        return super().callLater(delay, callable, *args, **kw)


class SlowAddon(Addon):
    """
    An addon whose ``request`` hook returns a Deferred that fires only when
    the test says so, recording its cancellation.
    """

    def __init__(self) -> None:
        self.pending: list[Deferred[None]] = []
        self.cancelled: list[Deferred[None]] = []

    def request(self, flow: Any) -> Deferred[None]:
        """
        :returns: A new Deferred, kept in ``pending``.
        """
        d: Deferred[None] = Deferred(self.cancelled.append)
        self.pending.append(d)
        return d


class HookChainDeadlineTests(SynchronousTestCase):
    """
    Tests for the deadlines of :class:`HookChain`: ``timeout`` for what a
    hook returns, ``intercept_timeout`` for an intercepted flow.
    """

    def setUp(self) -> None:
        self.clock = CountingClock()

    def chain(self, addons: list[object], **kwargs: Any) -> HookChain:
        """
        A chain of *addons* on the test clock, with a 0.5 s hook deadline
        unless *kwargs* say otherwise.
        """
        kwargs.setdefault("timeout", 0.5)
        return HookChain(addons, clock=self.clock, **kwargs)

    def assert_timed_out(self, result: Deferred[None] | None) -> HookTimeout:
        """
        Assert that *result* failed with ``HookTimeout``, that exactly that
        was logged, and that no timer is left.

        :returns: The ``HookTimeout``.
        """
        assert result is not None
        failure = self.failureResultOf(result, HookTimeout)
        self.assertEqual(len(self.flushLoggedErrors(HookTimeout)), 1)
        self.assertEqual(self.clock.getDelayedCalls(), [])
        return failure.value

    def test_deferred_never_fires(self) -> None:
        """
        A hook whose Deferred never fires fails the chain with
        ``HookTimeout`` exactly ``timeout`` seconds after the call returned;
        its Deferred is cancelled, no further hook runs, and the message
        names the hook and the addon.
        """
        log: list[str] = []
        slow = SlowAddon()
        result = self.chain([slow, Recorder("b", log)]).run("request", FakeFlow())
        assert result is not None
        self.clock.advance(0.499)
        self.assertNoResult(result)
        self.assertEqual(slow.cancelled, [])
        self.clock.advance(0.001)
        error = self.assert_timed_out(result)
        self.assertEqual(slow.cancelled, slow.pending)
        self.assertEqual(log, [])
        self.assertEqual((error.hook, error.addon, error.seconds), ("request", "SlowAddon", 0.5))
        self.assertFalse(error.intercepted)
        self.assertEqual(str(error), "hook 'request' of SlowAddon timed out after 0.5 s")

    def test_coroutine_never_finishes(self) -> None:
        """
        An ``async def`` hook that is still awaiting at the deadline is
        cancelled: the Deferred it awaits is cancelled, ``CancelledError``
        is raised inside it, and the chain fails with ``HookTimeout``.
        """
        cancelled: list[Deferred[None]] = []
        pending: Deferred[None] = Deferred(cancelled.append)
        seen: list[str] = []

        class Async(Addon):
            async def request(self, flow: Any) -> None:
                try:
                    await pending
                except CancelledError:
                    seen.append("cancelled")
                    raise

        result = self.chain([Async()], timeout=2).run("request", FakeFlow())
        assert result is not None
        self.clock.advance(1.999)
        self.assertNoResult(result)
        self.clock.advance(0.001)
        error = self.assert_timed_out(result)
        self.assertEqual(cancelled, [pending])
        self.assertEqual(seen, ["cancelled"])
        self.assertEqual(error.addon, Async.__qualname__)

    def test_finishes_just_in_time(self) -> None:
        """
        A hook whose Deferred fires just before the deadline passes: the
        chain goes on, succeeds, and its timer is cancelled.
        """
        log: list[str] = []
        slow = SlowAddon()
        result = self.chain([slow, Recorder("b", log)]).run("request", FakeFlow())
        assert result is not None
        self.assertEqual(len(self.clock.getDelayedCalls()), 1)
        self.clock.advance(0.499)
        slow.pending[0].callback(None)
        self.assertIsNone(self.successResultOf(result))
        self.assertEqual(log, ["b.request"])
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.assertEqual(self.flushLoggedErrors(), [])

    def test_deadline_per_call(self) -> None:
        """
        Each hook call has its own deadline, counted from when it returned:
        two hooks that each take most of it pass, though together they
        take longer.
        """
        first, second = SlowAddon(), SlowAddon()
        result = self.chain([first, second]).run("request", FakeFlow())
        assert result is not None
        self.clock.advance(0.4)
        first.pending[0].callback(None)
        self.assertEqual(len(second.pending), 1)
        self.clock.advance(0.4)
        self.assertNoResult(result)
        second.pending[0].callback(None)
        self.successResultOf(result)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_cancellation_consumed(self) -> None:
        """
        The ``CancelledError`` a timed-out hook's Deferred fails with is
        consumed by the chain, not left unhandled; only the timeout is
        logged.
        """
        pending: Deferred[None] = Deferred()
        chain = self.chain([Recorder("a", [], lambda flow: pending)])
        result = chain.run("request", FakeFlow())
        self.clock.advance(0.5)
        self.assert_timed_out(result)
        left: list[object] = []
        pending.addBoth(left.append)
        self.assertEqual(left, [None])
        self.assertEqual(self.flushLoggedErrors(), [])

    def test_canceller_fires_successfully(self) -> None:
        """
        A hook whose canceller fires its Deferred successfully does not make
        the timed-out chain go on.
        """
        log: list[str] = []
        pending: Deferred[None] = Deferred(lambda d: d.callback(None))
        chain = self.chain([Recorder("a", log, lambda flow: pending), Recorder("b", log)])
        result = chain.run("response", FakeFlow())
        self.clock.advance(0.5)
        self.assert_timed_out(result)
        self.assertEqual(log, ["a.response"])

    def test_canceller_cancels_chain(self) -> None:
        """
        A hook whose canceller cancels the chain itself (say, by closing the
        client connection) leaves the chain failed with ``CancelledError``;
        the timeout is still logged.
        """
        results: list[Deferred[None]] = []
        pending: Deferred[None] = Deferred(lambda d: results[0].cancel())
        result = self.chain([Recorder("a", [], lambda flow: pending)]).run("request", FakeFlow())
        assert result is not None
        results.append(result)
        self.clock.advance(0.5)
        self.failureResultOf(result, CancelledError)
        self.assertEqual(len(self.flushLoggedErrors(HookTimeout)), 1)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_synchronous_hooks_cost_no_timer(self) -> None:
        """
        Hooks that return synchronously schedule nothing, whether the chain
        never has to wait or they run after a hook that was waited for; an
        already-fired Deferred schedules nothing either.
        """
        log: list[str] = []
        flow = FakeFlow()
        self.assertIsNone(
            self.chain([Recorder("a", log), Recorder("b", log)]).run("request", flow)
        )
        fired = self.chain([Recorder("a", log, lambda flow: succeed(None)), Recorder("b", log)])
        self.successResultOf(fired.run("response", flow))
        self.assertEqual(self.clock.scheduled, 0)
        slow = SlowAddon()
        waiting = self.chain([slow, Recorder("c", log), Recorder("d", log)])
        result = waiting.run("request", flow)
        slow.pending[0].callback(None)
        self.successResultOf(result)
        self.assertEqual(self.clock.scheduled, 1)
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.assertEqual(
            log, ["a.request", "b.request", "a.response", "b.response", "c.request", "d.request"]
        )

    def test_intercept_has_no_deadline(self) -> None:
        """
        Without ``intercept_timeout``, a flow a hook intercepted waits for
        ``resume()`` far beyond the hook deadline, with no timer at all.
        """
        log: list[str] = []
        flow = FakeFlow()
        chain = self.chain([Recorder("a", log, FakeFlow.intercept), Recorder("b", log)])
        result = chain.run("request", flow)
        assert result is not None
        self.clock.advance(3600)
        self.assertNoResult(result)
        self.assertEqual(self.clock.scheduled, 0)
        flow.resume()
        self.successResultOf(result)
        self.assertEqual(log, ["a.request", "b.request"])
        self.assertEqual(self.flushLoggedErrors(), [])

    def test_intercept_after_deferred(self) -> None:
        """
        A hook whose Deferred intercepts the flow is held to the hook
        deadline until the Deferred fires; the wait for ``resume()`` then
        has no deadline without ``intercept_timeout``.
        """
        flow = FakeFlow()
        pending: Deferred[None] = Deferred()
        pending.addCallback(lambda ignored: flow.intercept())
        result = self.chain([Recorder("a", [], lambda flow: pending)]).run("request", flow)
        assert result is not None
        self.clock.advance(0.4)
        pending.callback(None)
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.clock.advance(10)
        self.assertNoResult(result)
        flow.resume()
        self.successResultOf(result)

    def test_intercept_timeout(self) -> None:
        """
        With ``intercept_timeout``, a flow still held when it passes fails
        the chain with ``HookTimeout``: the wait for ``resume()`` is
        cancelled, and resuming later calls no further hook.
        """
        log: list[str] = []
        flow = FakeFlow()
        chain = self.chain(
            [Recorder("a", log, FakeFlow.intercept), Recorder("b", log)], intercept_timeout=30
        )
        result = chain.run("request", flow)
        assert result is not None
        [waiter] = flow._resume_waiters
        self.clock.advance(29.9)
        self.assertNoResult(result)
        self.clock.advance(0.1)
        error = self.assert_timed_out(result)
        self.assertEqual(flow.cancelled_waits, [waiter])
        self.assertTrue(error.intercepted)
        self.assertEqual((error.hook, error.addon, error.seconds), ("request", "Recorder", 30))
        self.assertEqual(
            str(error),
            "intercept() timed out: the flow was held for 30 s after hook 'request' of "
            "Recorder without being resumed",
        )
        flow.resume()
        self.assertEqual(log, ["a.request"])

    def test_intercept_timeout_without_hook_timeout(self) -> None:
        """
        ``intercept_timeout`` works alone: a hook's Deferred then has no
        deadline, the intercepted flow has.
        """
        flow = FakeFlow()
        slow = SlowAddon()
        hold = Recorder("hold", [], FakeFlow.intercept)
        result = self.chain([slow, hold], timeout=None, intercept_timeout=5).run("request", flow)
        assert result is not None
        self.clock.advance(100)
        self.assertEqual(self.clock.scheduled, 0)
        slow.pending[0].callback(None)
        self.clock.advance(4.9)
        flow.resume()
        self.successResultOf(result)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_resumed_in_time(self) -> None:
        """
        A flow resumed before ``intercept_timeout`` goes on, and the timer is
        cancelled.
        """
        flow = FakeFlow()
        chain = self.chain([Recorder("a", [], FakeFlow.intercept)], intercept_timeout=30)
        result = chain.run("response", flow)
        assert result is not None
        self.clock.advance(29)
        flow.resume()
        self.successResultOf(result)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_cancel_cancels_timer(self) -> None:
        """
        Cancelling the chain (the client went away) cancels the hook's
        Deferred and its timer; nothing is logged.
        """
        slow = SlowAddon()
        result = self.chain([slow]).run("request", FakeFlow())
        assert result is not None
        result.cancel()
        self.failureResultOf(result, CancelledError)
        self.assertEqual(slow.cancelled, slow.pending)
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.clock.advance(1)
        self.assertEqual(self.flushLoggedErrors(), [])

    def test_cancel_with_slow_cleanup(self) -> None:
        """
        Cancelling the chain cancels the timer even when the hook's Deferred
        does not get to the chain's callback at once (the hook's own errback
        waits for a cleanup that never ends): no timeout comes later.
        """
        cleanup: Deferred[None] = Deferred()
        pending: Deferred[None] = Deferred()
        pending.addErrback(lambda reason: cleanup)
        result = self.chain([Recorder("a", [], lambda flow: pending)]).run("request", FakeFlow())
        assert result is not None
        result.cancel()
        self.failureResultOf(result, CancelledError)
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.clock.advance(1)
        self.assertEqual(self.flushLoggedErrors(), [])

    def test_cancel_while_intercepted_cancels_timer(self) -> None:
        """
        Cancelling the chain while the flow is held cancels the wait for
        ``resume()`` and the intercept timer.
        """
        flow = FakeFlow()
        chain = self.chain([Recorder("a", [], FakeFlow.intercept)], intercept_timeout=30)
        result = chain.run("request", flow)
        assert result is not None
        result.cancel()
        self.failureResultOf(result, CancelledError)
        self.assertEqual(len(flow.cancelled_waits), 1)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_connection_hook(self) -> None:
        """
        A connection hook (``client_connected``) has the same deadline; the
        log names the connection record's id.
        """
        events: list[dict[str, Any]] = []
        observer = cast(ILogObserver, events.append)
        globalLogPublisher.addObserver(observer)
        self.addCleanup(globalLogPublisher.removeObserver, observer)
        cancelled: list[Deferred[None]] = []

        class Connections(Addon):
            def client_connected(self, client: Any) -> Deferred[None]:
                return Deferred(cancelled.append)

        result = self.chain([Connections()]).run("client_connected", ConnectionRecord("conn-7"))
        self.clock.advance(0.5)
        error = self.assert_timed_out(result)
        self.assertEqual(error.hook, "client_connected")
        self.assertEqual(len(cancelled), 1)
        [event] = [event for event in events if "log_failure" in event]
        self.assertEqual(
            (event["hook"], event["addon"], event["flow_id"], event["log_level"]),
            ("client_connected", Connections.__qualname__, "conn-7", LogLevel.error),
        )

    def test_first_object(self) -> None:
        """
        The ``first`` object's own hook has the deadline too, and is named by
        its class.
        """

        class Mine:
            def request(self, flow: object) -> Deferred[None]:
                return Deferred()

        result = self.chain([]).run("request", FakeFlow(), first=Mine())
        self.clock.advance(0.5)
        self.assertEqual(self.assert_timed_out(result).addon, Mine.__qualname__)

    def test_timeout_needs_clock(self) -> None:
        """
        A deadline without a clock to schedule it on is a ``ValueError``.
        """
        for kwargs in ({"timeout": 1.0}, {"intercept_timeout": 1.0}):
            with self.subTest(**kwargs), self.assertRaises(ValueError) as caught:
                HookChain([], **kwargs)
            self.assertIn("clock", str(caught.exception))

    def test_timeout_positive(self) -> None:
        """
        A deadline that is not a positive finite number of seconds is a
        ``ValueError`` naming the parameter.
        """
        for name in ("timeout", "intercept_timeout"):
            for seconds in (0, -1.0, float("nan"), float("inf")):
                with self.subTest(name=name, seconds=seconds):
                    with self.assertRaises(ValueError) as caught:
                        HookChain([], clock=self.clock, **{name: seconds})
                    self.assertIn(name, str(caught.exception))


class HookChainFirstTests(SynchronousTestCase):
    """
    Tests for the ``first`` object, whose own hook methods run before the
    addons'.
    """

    def test_first_runs_first(self) -> None:
        """
        A method a subclass of ``first_base`` defines runs before the addons;
        ``first_base``'s own hook-named methods are not hooks.
        """
        log: list[str] = []

        class BaseRequest:
            def request(self, flow: object) -> None:
                log.append("base.request")

            def response(self, flow: object) -> None:
                log.append("base.response")

        class MyRequest(BaseRequest):
            def request(self, flow: object) -> None:
                log.append("mine.request")

        chain = HookChain([Recorder("a", log)], first_base=BaseRequest)
        chain.run("request", FakeFlow(), first=MyRequest())
        chain.run("response", FakeFlow(), first=MyRequest())
        chain.run("response", FakeFlow(), first=BaseRequest())
        self.assertEqual(log, ["mine.request", "a.request", "a.response", "a.response"])

    def test_first_intermediate_and_mixin(self) -> None:
        """
        Hooks defined by an intermediate subclass or a mixin outside
        ``first_base`` count; those of ``first_base``'s bases do not.
        """
        log: list[str] = []

        class Root:
            def error(self, flow: object) -> None:
                log.append("root.error")

        class BaseRequest(Root):
            pass

        class Mixin:
            def response(self, flow: object) -> None:
                log.append("mixin.response")

        class Middle(BaseRequest):
            def request(self, flow: object) -> None:
                log.append("middle.request")

        class Leaf(Mixin, Middle):
            pass

        chain = HookChain([], first_base=BaseRequest)
        for hook in ("request", "response", "error"):
            chain.run(hook, FakeFlow(), first=Leaf())
        self.assertEqual(log, ["middle.request", "mixin.response"])

    def test_first_without_base(self) -> None:
        """
        Without ``first_base``, every hook-named method of ``first`` counts.
        """
        log: list[str] = []

        class Anything:
            def response(self, flow: object) -> None:
                log.append("anything.response")

        chain = HookChain([Recorder("a", log)])
        chain.run("response", FakeFlow(), first=Anything())
        self.assertEqual(log, ["anything.response", "a.response"])

    def test_first_short_circuits(self) -> None:
        """
        ``first`` answering the request stops the chain before the addons.
        """
        log: list[str] = []

        class Answering:
            def request(self, flow: FakeFlow) -> None:
                flow.response = object()

        HookChain([Recorder("a", log)]).run("request", FakeFlow(), first=Answering())
        self.assertEqual(log, [])

    def test_first_failure_names_class(self) -> None:
        """
        ``first``'s failing hook is reported with its class name.
        """

        class Failing:
            def request(self, flow: object) -> None:
                raise Boom("first")

        result = HookChain([]).run("request", FakeFlow(), first=Failing())
        assert result is not None
        addon = self.failureResultOf(result, HookFailed).value.addon
        self.assertEqual(addon, Failing.__qualname__)
        self.flushLoggedErrors(Boom)

    def test_first_class_validated(self) -> None:
        """
        A misspelt hook on ``first``'s class raises ``AddonError``; names the
        base class defines are not checked.
        """

        class BaseRequest:
            def requests(self) -> None:
                pass

        class Fine(BaseRequest):
            pass

        class Misspelt(BaseRequest):
            def reqeust(self, flow: object) -> None:
                pass

        chain = HookChain([], first_base=BaseRequest)
        self.assertIsNone(chain.run("request", FakeFlow(), first=Fine()))
        self.assertRaises(AddonError, chain.run, "request", FakeFlow(), first=Misspelt())
        self.assertRaises(AddonError, chain.has, "request", Misspelt())

    def test_first_class_inspected_once(self) -> None:
        """
        A class is inspected once: a hook added to it later is not seen.
        """
        log: list[str] = []

        class Mine:
            pass

        chain = HookChain([])
        chain.run("error", FakeFlow(), first=Mine())
        Mine.error = lambda self, flow: log.append("error")  # type: ignore[attr-defined]
        chain.run("error", FakeFlow(), first=Mine())
        self.assertEqual(log, [])
        HookChain([]).run("error", FakeFlow(), first=Mine())
        self.assertEqual(log, ["error"])


class ValidateAddonTests(SynchronousTestCase):
    """
    Tests for :func:`validate_addon` and the validation of addons given to
    :class:`HookChain`.
    """

    def test_misspellings(self) -> None:
        """
        A public method whose name resembles a hook's is rejected with an
        error naming the method and the hook it resembles.
        """
        cases = {
            "reqeust": "request",
            "Request": "request",
            "errror": "error",
            "request_headers": "requestheaders",
            "response_headers": "responseheaders",
            "client_connect": "client_connected",
            "server_disconnect": "server_disconnected",
            "on_request": "request",
            "onResponse": "response",
        }
        for name, hook in cases.items():
            addon_class = type("Misspelt", (Addon,), {name: lambda self, flow: None})
            with self.assertRaises(AddonError) as caught:
                validate_addon(addon_class())
            self.assertEqual(
                str(caught.exception), f"Misspelt.{name} is not a hook; did you mean {hook!r}?"
            )

    def test_chain_validates(self) -> None:
        """
        ``HookChain`` rejects an addon with a misspelt hook.
        """

        class Misspelt:
            def respnse(self, flow: object) -> None:
                pass

        self.assertRaises(AddonError, HookChain, [Misspelt()])

    def test_unrelated_methods_accepted(self) -> None:
        """
        Public methods unrelated to hooks, attributes that are not callable
        and private methods are accepted.
        """

        class Configurable(Addon):
            requests = 3
            response_time = 0.5

            def load(self, loader: object) -> None:
                pass

            def configure(self, updated: object) -> None:
                pass

            def done(self) -> None:
                pass

            def running(self) -> None:
                pass

            def save(self) -> None:
                pass

            def response_body(self, flow: object) -> None:
                pass

            def _reqeust(self, flow: object) -> None:
                pass

            def request(self, flow: object) -> None:
                pass

        validate_addon(Configurable())
        self.assertEqual(HookChain([Configurable()]).addons[0].__class__, Configurable)

    def test_uncallable_hook_rejected(self) -> None:
        """
        An attribute named like a hook that is not callable is rejected.
        """

        class NotCallable:
            request = "yes please"

        with self.assertRaises(AddonError) as caught:
            validate_addon(NotCallable())
        self.assertIn("NotCallable.request", str(caught.exception))

    def test_ignore(self) -> None:
        """
        Names in ``ignore`` are not checked.
        """

        class Misspelt:
            def reqeust(self, flow: object) -> None:
                pass

            response = None

        validate_addon(Misspelt(), ignore=["reqeust", "response"])

    def test_unsupported_mitmproxy_hooks(self) -> None:
        """
        A method named after a mitmproxy hook twistproxy does not implement
        is refused with a message that says so (``server_connect`` is no
        longer taken for a misspelt ``server_connected``); an attribute of
        that name that is not callable is no hook and passes.
        """
        for name in ("tls_clienthello", "server_connect", "update", "tcp_message",
                     "http_connect_upstream"):
            addon_class = type("Mitm", (), {name: lambda self, data: None})
            with self.assertRaises(AddonError) as caught:
                validate_addon(addon_class())
            self.assertEqual(
                str(caught.exception),
                f"Mitm.{name}: mitmproxy's {name!r} hook is not implemented by twistproxy, "
                "so it would never be called",
            )
        self.assertIn("socks5_auth", UNSUPPORTED_HOOKS)
        validate_addon(type("Data", (), {"update": 3})())

    def test_lifecycle_misspellings(self) -> None:
        """
        A misspelt lifecycle hook is refused like any other; helpers whose
        names only resemble the short lifecycle names pass.
        """
        for name, hook in {"configur": "configure", "runing": "running",
                           "on_load": "load", "Done": "done"}.items():
            addon_class = type("Misspelt", (), {name: lambda self, *args: None})
            with self.assertRaises(AddonError) as caught:
                validate_addon(addon_class())
            self.assertIn(f"did you mean {hook!r}", str(caught.exception))
        for name in ("reload", "download", "run", "configuration"):
            validate_addon(type("Fine", (), {name: lambda self: None})())

    def test_uncallable_lifecycle_name(self) -> None:
        """
        An attribute named like a lifecycle hook that is not callable
        (``self.running = True``) is state, not a hook: it passes.
        """
        validate_addon(type("Stateful", (), {"done": object(), "running": True})())

    def test_class_named_in_error(self) -> None:
        """
        Validating a class names the class itself in the error.
        """

        class MyRequest:
            def on_error(self, flow: object) -> None:
                pass

        with self.assertRaises(AddonError) as caught:
            validate_addon(MyRequest)
        self.assertEqual(
            str(caught.exception),
            f"{MyRequest.__qualname__}.on_error is not a hook; did you mean 'error'?",
        )


class AddonTests(SynchronousTestCase):
    """
    Tests for :class:`IAddon`, :class:`Addon` and the hook names.
    """

    def test_verify_object(self) -> None:
        """
        ``Addon`` provides ``IAddon``.
        """
        self.assertTrue(verifyObject(IAddon, Addon()))

    def test_interface_lists_hooks(self) -> None:
        """
        ``IAddon`` has exactly one method per hook and lifecycle hook, and
        the ``stream_bodies`` attribute.
        """
        every = [*HOOKS, *LIFECYCLE_HOOKS]
        self.assertEqual(sorted(IAddon.names()), sorted([*every, "stream_bodies"]))
        methods = [name for name in IAddon.names()
                   if callable(getattr(IAddon[name], "getSignatureInfo", None))]
        self.assertEqual(sorted(methods), sorted(every))

    def test_no_op_hooks(self) -> None:
        """
        Every ``Addon`` hook returns ``None``.
        """
        addon = Addon()
        for hook in HOOKS:
            self.assertIsNone(getattr(addon, hook)(FakeFlow()), hook)

    def test_flow_hooks(self) -> None:
        """
        ``FLOW_HOOKS`` is every hook except the client connection hooks.
        """
        self.assertEqual(FLOW_HOOKS, set(HOOKS) - {"client_connected", "client_disconnected"})
