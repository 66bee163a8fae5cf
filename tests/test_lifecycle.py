"""
Tests for the addons' lifecycle and options: :mod:`twistproxy.addonopts`,
:mod:`twistproxy.lifecycle` and :mod:`twistproxy.ctx`.
"""

from __future__ import annotations

import typing
from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.testing import MemoryReactorClock
from twisted.trial.unittest import SynchronousTestCase

from twistproxy import ctx
from twistproxy.addonopts import AddonOptions, Loader, OptionsError
from twistproxy.errors import AddonError
from twistproxy.hooks import Addon
from twistproxy.lifecycle import AddonManager
from twistproxy.proxy import ProxyFactory


class Recorder:
    """
    An addon that declares options and records its lifecycle hooks in a
    list shared with others.
    """

    def __init__(self, events: list[str], name: str = "r", *, option: str = "greeting") -> None:
        self.events = events
        self.name = name
        self.option = option
        self.pending: Deferred[None] | None = None

    def load(self, loader: Loader) -> None:
        self.events.append(f"{self.name}.load")
        loader.add_option(self.option, str, "hello", "What to say.")

    def configure(self, updated: set[str]) -> None:
        self.events.append(f"{self.name}.configure {','.join(sorted(updated))}")

    def running(self) -> None:
        self.events.append(f"{self.name}.running")

    def done(self) -> Deferred[None] | None:
        self.events.append(f"{self.name}.done")
        return self.pending

    def request(self, flow: Any) -> None:
        pass


class OptionTests(SynchronousTestCase):
    """
    Tests for `AddonOptions`: declaring, reading and setting options.
    """

    def setUp(self) -> None:
        self.options = AddonOptions()
        add = self.options.add_option
        add("flag", bool, False, "A flag.")
        add("name", str, "x", "A name.")
        add("count", int, 3, "A count.")
        add("ratio", float, 0.5, "A ratio.")
        add("maybe", typing.Optional[str], None, "Maybe a text.")  # noqa: UP045 -- as addons write it
        add("hosts", typing.Sequence[str], [], "Some hosts.")  # noqa: UP006

    def test_defaults(self) -> None:
        """
        A declared option reads as its default, as an attribute.
        """
        o = self.options
        self.assertEqual((o.flag, o.name, o.count, o.ratio, o.maybe, o.hosts),
                         (False, "x", 3, 0.5, None, []))
        self.assertEqual(o.keys(), {"flag", "name", "count", "ratio", "maybe", "hosts"})
        self.assertIn("count", o)

    def test_set_texts(self) -> None:
        """
        ``set`` reads ``NAME=VALUE`` as mitmproxy's ``--set`` does: ``NAME``
        alone is true for a bool and None for an optional; a sequence takes
        every value given; an int is accepted for a float.
        """
        self.options.set("flag", "count=7", "ratio=2", "maybe=yes", "hosts=a", "hosts=b")
        o = self.options
        self.assertEqual((o.flag, o.count, o.ratio, o.maybe, o.hosts),
                         (True, 7, 2.0, "yes", ["a", "b"]))
        self.options.set("flag=false", "maybe")
        self.assertEqual((o.flag, o.maybe), (False, None))
        self.options.set("flag=toggle")
        self.assertTrue(o.flag)

    def test_bad_texts(self) -> None:
        """
        A text that is not of the option's type, an unknown name, or two
        values for a single option is a one-line `OptionsError` naming the
        option; nothing is set.
        """
        cases = {
            ("count=many",): "count: 'many' is not an int",
            ("ratio=fast",): "ratio: 'fast' is not a float",
            ("flag=maybe",): "flag: 'maybe' is not a bool (true, false or toggle)",
            ("count",): "count: needs a value (int)",
            ("count=1", "count=2"): "count: given 2 values, takes one",
            ("colour=red",): "unknown option 'colour' (declared: count, flag, hosts, maybe, "
                             "name, ratio)",
        }
        for specs, message in cases.items():
            with self.subTest(specs=specs):
                with self.assertRaises(OptionsError) as caught:
                    self.options.set("name=changed", *specs)
                self.assertEqual(str(caught.exception), message)
                self.assertEqual(self.options.name, "x")

    def test_update_checks_types(self) -> None:
        """
        ``update`` (and assigning an attribute) checks the value's type.
        """
        with self.assertRaises(OptionsError):
            self.options.update(count="3")
        with self.assertRaises(OptionsError):
            self.options.count = True
        with self.assertRaises(OptionsError):
            self.options.hosts = "a"
        self.options.count = 4
        self.assertEqual(self.options.count, 4)

    def test_declaration_checked(self) -> None:
        """
        An unsupported type, a default not of the type, or a name that is
        not an identifier or is one of the options' methods, is refused.
        """
        add = self.options.add_option
        self.assertRaises(OptionsError, add, "d", dict, {}, "A dict.")
        self.assertRaises(OptionsError, add, "n", int, "3", "A number.")
        self.assertRaises(OptionsError, add, "not-python", int, 3, "Dashes.")
        self.assertRaises(OptionsError, add, "keys", int, 3, "Shadows keys().")
        self.assertRaises(OptionsError, add, "c", str, "z", "Chosen.", ["x", "y"])

    def test_declared_again(self) -> None:
        """
        Declaring an option again the same way keeps its value (a reload);
        another way resets it to the new default.
        """
        self.options.count = 9
        self.options.add_option("count", int, 3, "A count.")
        self.assertEqual(self.options.count, 9)
        self.options.add_option("count", int, 5, "A count, now 5.")
        self.assertEqual(self.options.count, 5)

    def test_subscriber_refuses(self) -> None:
        """
        A subscriber is told which options changed; if it raises, the old
        values are put back and the change fails.
        """
        told: list[set[str]] = []
        self.options.subscribe(told.append)
        self.options.update(count=3, name="y")
        self.assertEqual(told, [{"name"}])

        def refuse(updated: set[str]) -> None:
            raise ValueError("no odd counts")

        self.options.subscribe(refuse)
        with self.assertRaises(OptionsError) as caught:
            self.options.update(count=5)
        self.assertEqual(str(caught.exception), "count: ValueError: no odd counts")
        self.assertEqual(self.options.count, 3)

    def test_listing(self) -> None:
        """
        The listing has each option's name, type, default and help.
        """
        listing = self.options.listing()
        self.assertIn("count (int, default: 3)\n    A count.\n", listing)
        self.assertIn("maybe (optional str, default: None)\n", listing)
        self.assertIn("hosts (sequence of str, default: [])\n", listing)
        self.assertEqual(AddonOptions().listing(), "No addon declares an option.\n")


class AddonManagerTests(SynchronousTestCase):
    """
    Tests for `AddonManager` and its factories.
    """

    def setUp(self) -> None:
        self.events: list[str] = []
        self.reactor = MemoryReactorClock()

    def factory(self, manager: AddonManager) -> ProxyFactory:
        """A proxy factory running *manager*'s addons."""
        return ProxyFactory(reactor=self.reactor, addons=manager)

    def test_load_at_registration(self) -> None:
        """
        ``load`` runs once per addon when the manager is made, with a loader
        whose options become ``ctx.options``.
        """
        manager = AddonManager([Recorder(self.events, "a"), Recorder(self.events, "b", option="o")])
        self.assertEqual(self.events, ["a.load", "b.load"])
        self.assertIs(ctx.options, manager.options)
        self.assertEqual(ctx.options.greeting, "hello")

    def test_configure_then_changes(self) -> None:
        """
        ``configure`` runs once with every option's name, then with the
        names of the options that change.
        """
        manager = AddonManager([Recorder(self.events)])
        manager.options.set("greeting=hi")  # before configure: part of the start
        manager.configure()
        manager.configure()
        manager.options.update(greeting="bye")
        self.assertEqual(self.events, ["r.load", "r.configure greeting", "r.configure greeting"])

    def test_configure_refuses(self) -> None:
        """
        A ``configure`` that raises is an `OptionsError` naming the addon.
        """

        class Picky:
            def configure(self, updated: set[str]) -> None:
                raise ValueError("greeting must be polite")

        manager = AddonManager([Recorder(self.events), Picky()])
        with self.assertRaises(OptionsError) as caught:
            manager.configure()
        self.assertTrue(str(caught.exception).endswith(
            "Picky.configure: ValueError: greeting must be polite"), caught.exception)

    def test_load_refuses(self) -> None:
        """
        A ``load`` that raises refuses the addon, naming it.
        """

        class Broken:
            def load(self, loader: Loader) -> None:
                loader.add_option("x", list, [], "Not a supported type.")

        with self.assertRaises(AddonError) as caught:
            AddonManager([Broken()])
        self.assertIn("Broken.load: option x: type <class 'list'> is not supported",
                      str(caught.exception))

    def test_running_and_done_once_for_all_listeners(self) -> None:
        """
        With two factories sharing the manager, ``running`` runs once both
        started and ``done`` once both stopped: once per addon, not per
        listener. Without a ``configure`` call before, the start configures.
        """
        manager = AddonManager([Recorder(self.events)])
        first, second = self.factory(manager), self.factory(manager)
        first.doStart()
        self.assertEqual(self.events, ["r.load"])
        second.doStart()
        self.assertEqual(self.events, ["r.load", "r.configure greeting", "r.running"])
        first.doStop()
        self.assertEqual(self.events[-1], "r.running")
        second.doStop()
        self.assertEqual(self.events[-1], "r.done")
        self.assertEqual(self.events.count("r.done"), 1)

    def test_done_waited_for(self) -> None:
        """
        A ``done`` that returns a Deferred is waited for: ``when_done``
        fires after it, and the next addon's ``done`` runs after it.
        """
        slow = Recorder(self.events, "a")
        slow.pending = Deferred()
        manager = AddonManager([slow, Recorder(self.events, "b", option="o")])
        factory = self.factory(manager)
        factory.doStart()
        factory.doStop()
        finished = manager.when_done()
        self.assertNoResult(finished)
        self.assertEqual(self.events[-1], "a.done")
        slow.pending.callback(None)
        self.assertEqual(self.events[-1], "b.done")
        self.successResultOf(finished)

    def test_done_deadline(self) -> None:
        """
        ``done`` hooks that take longer than ``done_timeout`` are given up
        (logged), and ``when_done`` fires.
        """
        slow = Recorder(self.events)
        slow.pending = Deferred()
        manager = AddonManager([slow], done_timeout=5)
        factory = self.factory(manager)
        factory.doStart()
        factory.doStop()
        finished = manager.when_done()
        self.reactor.advance(5)
        self.successResultOf(finished)
        self.assertEqual(len(self.flushLoggedErrors()), 1)

    def test_failing_running_logged(self) -> None:
        """
        A ``running`` that raises is logged; the next addon's still runs.
        """

        class Fails:
            def running(self) -> None:
                raise RuntimeError("boom")

        manager = AddonManager([Fails(), Recorder(self.events)])
        self.factory(manager).doStart()
        self.assertEqual(self.events[-1], "r.running")
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)

    def test_replace(self) -> None:
        """
        Replacing addons (a reload) loads and configures the new ones, puts
        them in the old ones' place in every factory's chain, calls the old
        ones' ``done`` and, when running, the new ones' ``running``; the
        options keep their values.
        """
        old = Recorder(self.events, "old")
        manager = AddonManager([old])
        factory = self.factory(manager)
        factory.doStart()
        manager.options.greeting = "set before"
        del self.events[:]
        new = Recorder(self.events, "new")
        manager.replace([old], [new])
        self.assertEqual(self.events, ["new.load", "new.configure greeting", "old.done",
                                       "new.running"])
        self.assertEqual(factory.chain.addons, (new,))
        self.assertEqual(manager.options.greeting, "set before")

    def test_replace_refused(self) -> None:
        """
        If a new addon is refused (its ``load`` or ``configure`` raises, or
        a misspelt hook), the old ones stay.
        """

        class BadConfigure:
            def configure(self, updated: set[str]) -> None:
                raise ValueError("no")

        class Typo:
            def reqeust(self, flow: object) -> None:
                pass

        old = Recorder(self.events, "old")
        manager = AddonManager([old])
        manager.configure()
        factory = self.factory(manager)
        for bad in (BadConfigure(), Typo()):
            with self.subTest(bad=bad):
                self.assertRaises(AddonError, manager.replace, [old], [bad])
                self.assertEqual(manager.addons, (old,))
                self.assertEqual(factory.chain.addons, (old,))
        self.assertNotIn("old.done", self.events)

    def test_add_and_remove(self) -> None:
        """
        ``add`` puts addons at a position; ``remove`` calls ``done``.
        """
        first = Recorder(self.events, "first")
        manager = AddonManager([first])
        factory = self.factory(manager)
        other = Recorder(self.events, "other", option="o")
        manager.add(other, at=0)
        self.assertEqual(factory.chain.addons, (other, first))
        manager.remove(other)
        self.assertEqual(factory.chain.addons, (first,))
        self.assertEqual(self.events[-1], "other.done")
        self.assertRaises(AddonError, manager.remove, other)

    def test_state_named_like_hooks(self) -> None:
        """
        An addon whose ``running`` and ``done`` are attributes, not methods
        (overriding `Addon`'s), is accepted and they are not called.
        """

        class Stateful(Addon):
            def __init__(self) -> None:
                self.running = False  # type: ignore[assignment]
                self.done: Deferred[None] = Deferred()  # type: ignore[assignment]

        factory = ProxyFactory(reactor=self.reactor, addons=[Stateful()])
        factory.doStart()
        factory.doStop()
        self.successResultOf(factory.addons.when_done())
        self.assertEqual(self.flushLoggedErrors(), [])

    def test_plain_list(self) -> None:
        """
        A factory given a plain list makes a manager of its own, which
        calls ``load`` at once and ``running`` when the factory starts.
        """
        factory = ProxyFactory(reactor=self.reactor, addons=[Recorder(self.events)])
        self.assertEqual(self.events, ["r.load"])
        factory.doStart()
        self.assertEqual(self.events[-1], "r.running")
        self.assertTrue(factory.addons.running)
