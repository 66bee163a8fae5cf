"""
Tests for :mod:`twistproxy.addons.script`: loading addons from Python files
with :func:`~twistproxy.addons.script.load_addons`.  The ``--addon`` option
that calls it is tested in :mod:`tests.test_tap`.
"""

from __future__ import annotations

import builtins
import os
import sys
from typing import Any

from twisted.internet.task import Clock
from twisted.internet.testing import MemoryReactorClock
from twisted.logger import formatEvent, globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase

from tests.fakes import write_temp_file
from twistproxy.addons.script import AddonFile, AddonFileWatcher, load_addons
from twistproxy.errors import AddonError
from twistproxy.lifecycle import AddonManager
from twistproxy.proxy import ProxyFactory

TWO_ADDONS = """\
from twistproxy.hooks import Addon


class AddHeader(Addon):
    def response(self, flow):
        flow.response.headers["X-Added"] = "yes"


class Plain:
    def request(self, flow):
        pass


addons = [AddHeader(), Plain()]
"""


class LoadAddonsTests(SynchronousTestCase):
    """
    Tests for `load_addons`.
    """

    def setUp(self) -> None:
        self.addCleanup(sys.path.__setitem__, slice(None), list(sys.path))

    def write(self, name: str, source: str) -> str:
        """
        Write *source* to a file called *name* in a new directory.

        :returns: The file's path.
        """
        return write_temp_file(self, source.encode("utf-8"), name)

    def assert_refused(self, path: str) -> str:
        """
        Loading *path* fails with a one-line `AddonError` naming the file.

        :returns: The error message.
        """
        with self.assertRaises(AddonError) as caught:
            load_addons(path)
        message = str(caught.exception)
        self.assertTrue(message.startswith(path), message)
        self.assertNotIn("\n", message)
        return message

    def test_loads_addons(self) -> None:
        """
        A file defining ``addons`` gives its addons, in order.
        """
        addons = load_addons(self.write("good.py", TWO_ADDONS))
        self.assertEqual([type(addon).__name__ for addon in addons], ["AddHeader", "Plain"])

    def test_missing_file(self) -> None:
        """
        A file that does not exist is refused.
        """
        path = os.path.join(os.path.dirname(self.write("x.py", "")), "missing.py")
        message = self.assert_refused(path)
        self.assertIn("no such file", message)

    def test_not_python(self) -> None:
        """
        A file Python cannot import as a module (not ``.py``) is refused.
        """
        message = self.assert_refused(self.write("addons.txt", TWO_ADDONS))
        self.assertIn("not a Python file", message)

    def test_syntax_error(self) -> None:
        """
        A file with a syntax error is refused, with the line number.
        """
        path = self.write("syntax.py", "x = 1\ndef broken(:\n")
        message = self.assert_refused(path)
        self.assertIn(f"{path}:2: syntax error", message)

    def test_raises_at_import(self) -> None:
        """
        A file that raises while it runs is refused, with the exception.
        """
        path = self.write("raises.py", "raise RuntimeError('no network here')\n")
        message = self.assert_refused(path)
        self.assertIn("RuntimeError: no network here", message)

    def test_no_addons(self) -> None:
        """
        A file without ``addons``, or whose ``addons`` is not a list, is
        refused.
        """
        for source in ("x = 1\n", "addons = 3\n"):
            with self.subTest(source=source):
                message = self.assert_refused(self.write("empty.py", source))
                self.assertIn("must define 'addons'", message)

    def test_misspelt_hook(self) -> None:
        """
        A file whose addon has a misspelt hook is refused, with the
        suggestion.
        """
        path = self.write(
            "misspelt.py",
            "class Typo:\n    def reqeust(self, flow):\n        pass\naddons = [Typo()]\n",
        )
        message = self.assert_refused(path)
        self.assertIn("reqeust", message)
        self.assertIn("'request'", message)

    def test_directory(self) -> None:
        """
        A directory given as the file is refused as one.
        """
        directory = os.path.dirname(self.write("x.py", ""))
        message = self.assert_refused(directory)
        self.assertIn("is a directory, not a Python file", message)

    def test_sys_exit(self) -> None:
        """
        A file that calls ``sys.exit()`` while it loads is refused (it does
        not end the process silently).
        """
        path = self.write("exits.py", "import sys\nsys.exit(3)\n")
        message = self.assert_refused(path)
        self.assertIn("called sys.exit(3) while loading", message)

    def test_not_addons(self) -> None:
        """
        Something in ``addons`` with no hook at all is refused, naming it:
        a value (a string, a number), or an object without a hook.
        """
        path = self.write("values.py", "addons = ['str', 42]\n")
        message = self.assert_refused(path)
        self.assertIn("addons[0]: 'str' is a str, not an addon object", message)
        path = self.write("hookless.py", "class A:\n    pass\n\naddons = [A()]\n")
        message = self.assert_refused(path)
        self.assertIn("addons[0] is a A object, which has no hook: not an addon", message)

    def test_module_is_the_addon(self) -> None:
        """
        A file without ``addons`` that defines hook functions (a mitmproxy
        script) is its own addon.
        """
        path = self.write("script.py", "def request(flow):\n    pass\n")
        [module] = load_addons(path)
        self.assertTrue(callable(module.request))  # type: ignore[attr-defined]

    def test_imports_beside_it(self) -> None:
        """
        The file can import a module from its own directory.
        """
        path = self.write("uses_helper.py", "import lifecycle_helper_x\n"
                          "class A:\n    def request(self, flow):\n        pass\n"
                          "    name = lifecycle_helper_x.NAME\naddons = [A()]\n")
        with open(os.path.join(os.path.dirname(path), "lifecycle_helper_x.py"), "w") as f:
            f.write("NAME = 'from beside'\n")
        self.addCleanup(sys.modules.pop, "lifecycle_helper_x", None)
        [addon] = load_addons(path)
        self.assertEqual(addon.name, "from beside")  # type: ignore[attr-defined]


RELOADED = """\
class Hello:
    def load(self, loader):
        loader.add_option("word", str, "hello", "The word.")

    def request(self, flow):
        pass

    def done(self):
        EVENTS.append("{version}.done")

    def running(self):
        EVENTS.append("{version}.running")

EVENTS = __import__("builtins").lifecycle_test_events
addons = [Hello()]
"""


class ReloadTests(SynchronousTestCase):
    """
    Tests for `AddonFile` and `AddonFileWatcher`: reloading changed files.
    """

    def setUp(self) -> None:
        self.addCleanup(sys.path.__setitem__, slice(None), list(sys.path))
        self.events: list[str] = []
        builtins.lifecycle_test_events = self.events  # type: ignore[attr-defined]
        self.addCleanup(delattr, builtins, "lifecycle_test_events")
        self.path = write_temp_file(self, RELOADED.format(version="v1").encode(), "hello.py")
        self.file = AddonFile(self.path)
        self.manager = AddonManager(self.file.addons)
        self.manager.configure()
        self.factory = ProxyFactory(reactor=MemoryReactorClock(), addons=self.manager)
        self.factory.doStart()

    def edit(self, source: str) -> None:
        """Write *source* to the file, with a later modification time."""
        with open(self.path, "w") as f:
            f.write(source)
        stat = os.stat(self.path)
        os.utime(self.path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))

    def test_unchanged(self) -> None:
        """
        An unchanged file is not loaded again.
        """
        self.assertFalse(self.file.reload_if_changed(self.manager))
        self.assertEqual(self.events, ["v1.running"])

    def test_changed(self) -> None:
        """
        A changed file's new addons take the old ones' place: ``done`` for
        the old, ``running`` for the new, and the chain runs the new.
        """
        old = self.file.addons
        self.edit(RELOADED.format(version="v2"))
        self.assertTrue(self.file.reload_if_changed(self.manager))
        self.assertEqual(self.events, ["v1.running", "v1.done", "v2.running"])
        self.assertEqual(self.factory.chain.addons, tuple(self.file.addons))
        self.assertIsNot(self.file.addons[0], old[0])

    def test_broken_keeps_old(self) -> None:
        """
        A changed file that cannot be loaded leaves the old addons, and one
        line is logged; it is not tried again until it changes again.
        """
        old = self.file.addons
        self.edit("def broken(:\n")
        logged: list[dict[str, Any]] = []
        globalLogPublisher.addObserver(logged.append)
        self.addCleanup(globalLogPublisher.removeObserver, logged.append)
        self.assertFalse(self.file.reload_if_changed(self.manager))
        self.assertFalse(self.file.reload_if_changed(self.manager))
        self.assertEqual(self.factory.chain.addons, tuple(old))
        lines = [formatEvent(e) for e in logged if "not reloaded" in formatEvent(e)]
        self.assertEqual(len(lines), 1, lines)
        self.assertIn("hello.py:1: syntax error", lines[0])
        self.assertNotIn("\n", lines[0])
        self.assertEqual(self.events, ["v1.running"])

    def test_watcher_polls(self) -> None:
        """
        The watcher looks every interval while it runs, and not after.
        """
        clock = Clock()
        watcher = AddonFileWatcher(clock, self.manager, [self.file], interval=1.0)
        watcher.startService()
        self.edit(RELOADED.format(version="v2"))
        self.assertEqual(self.events, ["v1.running"])
        clock.advance(1.0)
        self.assertEqual(self.events, ["v1.running", "v1.done", "v2.running"])
        watcher.stopService()
        self.edit(RELOADED.format(version="v3"))
        clock.advance(5.0)
        self.assertNotIn("v3.running", self.events)
