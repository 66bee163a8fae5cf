"""
Tests for the small trips of issue 13 that need no running proxy:
``--workers`` and ``--ca-dir`` errors, ``--version``, addon values that
are not addons, and ``docs/embedding.rst``'s ``ProxyFactory`` signature.
(``tests/e2e/test_trips_e2e.py`` runs twistd for the others.)
"""

from __future__ import annotations

import ast
import inspect
import io
import re
import sys
from pathlib import Path

from twisted.internet.testing import MemoryReactorClock
from twisted.python import usage
from twisted.trial.unittest import SynchronousTestCase

from tests.options import parse
from tests.test_flowfile import temp_dir
from twistproxy import __version__
from twistproxy.addons.script import load_addons
from twistproxy.certs import CA_FILE
from twistproxy.errors import AddonError
from twistproxy.options import Options
from twistproxy.proxy import ProxyFactory
from twistproxy.tap import make_service

REPO = Path(__file__).resolve().parents[1]


class OptionTests(SynchronousTestCase):
    """
    Tests for the messages of ``--workers``, ``--ca-dir`` and ``--version``.
    """

    def test_workers_not_a_number(self) -> None:
        """
        ``--workers zero`` (or 0, or -1) is a usage error naming the option
        and what it takes, not Python's ``int()`` message.
        """
        for value in ("zero", "0", "-1", "1.5"):
            error = self.assertRaises(usage.UsageError, parse, "--workers", value)
            self.assertIn(f"--workers {value}: not 'auto' or a whole number of at least 1",
                          str(error))
            self.assertNotIn("int()", str(error))

    def test_ca_dir_parent_missing(self) -> None:
        """
        A ``--ca-dir`` whose parent does not exist is a usage error naming
        the option, and nothing is created.
        """
        base = Path(temp_dir(self)) / "base"
        directory = base / "a" / "ca"
        error = self.assertRaises(usage.UsageError, parse, "--ca-dir", str(directory))
        self.assertIn(
            f"--ca-dir {directory}: {directory.parent} does not exist (only the last level is "
            "created)",
            str(error),
        )
        self.assertFalse(base.exists())

    def test_ca_dir_not_a_directory(self) -> None:
        """
        A ``--ca-dir`` that is a file, or under one, is a usage error naming
        the option.
        """
        file = Path(temp_dir(self)) / "file"
        file.write_text("x")
        error = self.assertRaises(usage.UsageError, parse, "--ca-dir", str(file))
        self.assertIn(f"--ca-dir {file}: not a directory", str(error))
        error = self.assertRaises(usage.UsageError, parse, "--ca-dir", str(file / "ca"))
        self.assertIn(f"--ca-dir {file / 'ca'}: {file} is not a directory", str(error))

    def test_ca_dir_unreadable_names_the_option(self) -> None:
        """
        A CA file in ``--ca-dir`` that cannot be read stops twistd with one
        line naming the option and the file.
        """
        directory = Path(temp_dir(self)) / "ca"
        (directory / CA_FILE).mkdir(parents=True)
        with self.assertRaises(SystemExit) as caught:
            make_service(parse("--ca-dir", str(directory)), MemoryReactorClock())
        message = caught.exception.code
        assert isinstance(message, str)
        self.assertTrue(
            message.startswith(f"twistproxy: --ca-dir {directory}: CA file {directory / CA_FILE}"),
            message,
        )
        self.assertNotIn("\n", message)

    def test_version(self) -> None:
        """
        ``--version`` prints twistproxy's version, and Twisted's, and exits 0.
        """
        from twisted.copyright import version as twisted_version

        out = io.StringIO()
        self.patch(sys, "stdout", out)
        with self.assertRaises(SystemExit) as caught:
            Options().parseOptions(["--version"])
        self.assertEqual(caught.exception.code, 0)
        self.assertTrue(
            out.getvalue().startswith(f"twistproxy {__version__} (Twisted {twisted_version}, "),
            out.getvalue(),
        )


class AddonValueTests(SynchronousTestCase):
    """
    Values that are not addons are refused.
    """

    def test_addon_file(self) -> None:
        """
        ``addons = ["str", 42]`` in an addon file is refused, naming the
        file, the item and what it is.
        """
        path = Path(temp_dir(self)) / "addon.py"
        path.write_text('addons = ["str", 42]\n')
        error = self.assertRaises(AddonError, load_addons, str(path))
        self.assertEqual(str(error), f"{path}: addons[0]: 'str' is a str, not an addon object")
        path.write_text("class A:\n    def request(self, flow):\n        pass\n\n"
                        "addons = [A(), 42]\n")
        error = self.assertRaises(AddonError, load_addons, str(path))
        self.assertEqual(str(error), f"{path}: addons[1]: 42 is a int, not an addon object")

    def test_factory(self) -> None:
        """
        ``ProxyFactory(addons=[None])`` is refused too.
        """
        error = self.assertRaises(
            AddonError, ProxyFactory, reactor=MemoryReactorClock(), addons=[None]
        )
        self.assertIn("None is a NoneType, not an addon object", str(error))


class EmbeddingDocTests(SynchronousTestCase):
    """
    ``docs/embedding.rst`` shows ``ProxyFactory`` as it is.
    """

    def test_signature(self) -> None:
        """
        The signature block lists every parameter of
        ``ProxyFactory.__init__``, in order, with its default.
        """
        text = (REPO / "docs" / "embedding.rst").read_text(encoding="utf-8")
        block = text.split("    ProxyFactory(\n", 1)[1].split("\n    )\n", 1)[0]
        shown = re.findall(r"^        (\w+)(?:=([^\s#]+(?: \* [^\s#]+)*))?,", block, re.M)
        parameters = list(inspect.signature(ProxyFactory.__init__).parameters.values())[1:]
        self.assertEqual([name for name, _ in shown], [p.name for p in parameters])
        for (name, default), parameter in zip(shown, parameters, strict=True):
            if parameter.default is inspect.Parameter.empty:
                self.assertEqual(default, "", name)
            elif name not in ("request_factory", "mode", "body_limit"):
                self.assertEqual(ast.literal_eval(default), parameter.default, name)
