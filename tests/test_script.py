"""
Tests for :mod:`twistproxy.addons.script`: loading addons from Python files
with :func:`~twistproxy.addons.script.load_addons`.  The ``--addon`` option
that calls it is tested in :mod:`tests.test_tap`.
"""

from __future__ import annotations

import os

from twisted.trial.unittest import SynchronousTestCase

from tests.fakes import write_temp_file
from twistproxy.addons.script import load_addons
from twistproxy.errors import AddonError

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
