"""
Tests for how the modules of :mod:`twistproxy` are laid out, read from
their source: how they import one another (with :mod:`ast`: every
``import`` and ``from ... import`` of a ``twistproxy`` module counts, at
module level, inside a function or under ``if TYPE_CHECKING:``, absolute or
relative), and the ``test-case-name`` header that names each one's tests.
"""

from __future__ import annotations

import ast
import importlib.util
import re
from collections.abc import Mapping
from pathlib import Path

from twisted.trial.unittest import SynchronousTestCase

import twistproxy

PACKAGE = Path(twistproxy.__file__).resolve().parent


def package_modules(package: Path = PACKAGE) -> dict[str, Path]:
    """
    Every module of the package at *package*, by dotted name (a package by
    the name of its ``__init__.py``'s directory).
    """
    modules = {}
    for path in sorted(package.rglob("*.py")):
        parts = path.relative_to(package.parent).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        modules[".".join(parts)] = path
    return modules


def imports_of(
    source: str, name: str, is_package: bool, modules: Mapping[str, object]
) -> dict[str, int]:
    """
    The modules of *modules* that the module *name* imports, wherever in its
    *source* the import is.

    ``from a import b`` counts as importing ``a.b`` when that is a module
    of *modules*, else as importing ``a``; relative imports are resolved
    against *name* (a package when *is_package*).

    :returns: Each imported module, with the line of its first import.
    """
    top = name.partition(".")[0]
    package = name if is_package else name.rpartition(".")[0]
    found: dict[str, int] = {}

    def add(module: str, line: int) -> None:
        if module in modules and module != name:
            found[module] = min(line, found.get(module, line))

    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.partition(".")[0] == top:
                    add(alias.name, node.lineno)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                parts = package.split(".")
                base = parts[: len(parts) - node.level + 1]
                module = ".".join([*base, *([node.module] if node.module else [])])
            else:
                module = node.module or ""
            if module.partition(".")[0] != top:
                continue
            for alias in node.names:
                submodule = f"{module}.{alias.name}"
                add(submodule if submodule in modules else module, node.lineno)
    return dict(sorted(found.items(), key=lambda item: item[1]))


def import_graph(package: Path = PACKAGE) -> dict[str, dict[str, int]]:
    """
    Which module of the package at *package* imports which (see
    :func:`imports_of`).
    """
    modules = package_modules(package)
    return {
        name: imports_of(
            path.read_text(encoding="utf-8"), name, path.name == "__init__.py", modules
        )
        for name, path in modules.items()
    }


def find_cycle(graph: Mapping[str, Mapping[str, int]]) -> list[str] | None:
    """
    A cycle of *graph*, as the modules along it with the first one
    repeated at the end, or ``None`` if it has none.
    """
    done: set[str] = set()
    path: list[str] = []
    on_path: set[str] = set()

    def visit(node: str) -> list[str] | None:
        path.append(node)
        on_path.add(node)
        for target in graph.get(node, {}):
            if target in on_path:
                return [*path[path.index(target) :], target]
            if target not in done:
                cycle = visit(target)
                if cycle is not None:
                    return cycle
        on_path.discard(path.pop())
        done.add(node)
        return None

    for node in sorted(graph):
        if node not in done:
            cycle = visit(node)
            if cycle is not None:
                return cycle
    return None


def describe_cycle(cycle: list[str], graph: Mapping[str, Mapping[str, int]]) -> str:
    """
    *cycle* as one line, with the line of each import along it:
    ``a (line 3) -> b (line 7) -> a``.
    """
    steps = [f"{a} (line {graph[a][b]})" for a, b in zip(cycle, cycle[1:], strict=False)]
    return " -> ".join([*steps, cycle[-1]])


class ImportCycleTests(SynchronousTestCase):
    """
    The modules of :mod:`twistproxy` import one another without a cycle.
    """

    def test_no_cycle(self) -> None:
        """
        The import graph of :mod:`twistproxy` has no cycle; a failure names
        one, module by module.
        """
        graph = import_graph()
        self.assertIn("twistproxy.flowfile", graph)
        cycle = find_cycle(graph)
        if cycle is not None:
            self.fail(f"import cycle: {describe_cycle(cycle, graph)}")

    def test_flowfile_and_har(self) -> None:
        """
        :mod:`twistproxy.flowfile` imports :mod:`twistproxy.har` and both
        import their shared error from :mod:`twistproxy._flowerror` (HAR
        through its reading half, :mod:`twistproxy._har_read`); neither HAR
        module imports the flow file module.
        """
        graph = import_graph()
        self.assertIn("twistproxy.har", graph["twistproxy.flowfile"])
        self.assertIn("twistproxy._har_read", graph["twistproxy.har"])
        for har in ("twistproxy.har", "twistproxy._har_read"):
            self.assertNotIn("twistproxy.flowfile", graph[har])
        self.assertIn("twistproxy._flowerror", graph["twistproxy._har_read"])
        self.assertIn("twistproxy._flowerror", graph["twistproxy.flowfile"])


class ImportGraphCheckerTests(SynchronousTestCase):
    """
    Tests for the checker itself: :func:`imports_of` and :func:`find_cycle`.
    """

    MODULES = dict.fromkeys(["pkg", "pkg.a", "pkg.b", "pkg.sub", "pkg.sub.c"])

    def test_every_kind_of_import(self) -> None:
        """
        Module-level, function-level, ``TYPE_CHECKING``, ``from`` and
        relative imports all count, resolved to the module they load; other
        packages and the module itself do not.
        """
        source = (
            "import os\n"
            "import pkg.b\n"
            "from typing import TYPE_CHECKING\n"
            "if TYPE_CHECKING:\n"
            "    from pkg import sub\n"
            "def f():\n"
            "    from .. import a\n"
            "    from . import c\n"
            "    from .c import name\n"
            "    from pkg.sub.c import other\n"
            "    from pkg import __version__\n"
        )
        self.assertEqual(
            imports_of(source, "pkg.sub.c", False, self.MODULES),
            {"pkg.b": 2, "pkg.sub": 5, "pkg.a": 7, "pkg": 11},
        )
        self.assertEqual(
            imports_of("from . import a\nfrom .sub import c\n", "pkg", True, self.MODULES),
            {"pkg.a": 1, "pkg.sub.c": 2},
        )

    def test_finds_a_cycle(self) -> None:
        """
        A cycle is found and described with the line of each import along
        it; a graph without one gives ``None``.
        """
        graph = {"x": {"y": 3}, "y": {"z": 4, "w": 1}, "z": {"x": 9}, "w": {}}
        cycle = find_cycle(graph)
        assert cycle is not None
        self.assertEqual(cycle, ["x", "y", "z", "x"])
        self.assertEqual(
            describe_cycle(cycle, graph), "x (line 3) -> y (line 4) -> z (line 9) -> x"
        )
        self.assertIsNone(find_cycle({"x": {"y": 1}, "y": {}, "z": {"y": 2}}))
        self.assertEqual(find_cycle({"x": {"x": 1}}), ["x", "x"])


_HEADER = re.compile(r"# -\*- test-case-name: *(?P<names>[^ ].*?) *-\*-\Z")


def named_test_modules(source: str) -> list[str] | None:
    """
    The test modules the ``# -*- test-case-name: tests.test_x -*-`` header
    on the first line of *source* names (several are separated by commas),
    or ``None`` without one.
    """
    first = source.partition("\n")[0]
    match = _HEADER.match(first)
    if match is None:
        return None
    return [name.strip() for name in match.group("names").split(",")]


def module_exists(name: str) -> bool:
    """
    Whether the module *name* can be found (without importing it, though
    its parent packages are).
    """
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):  # a parent that does not exist; an empty name
        return False


class TestCaseNameTests(SynchronousTestCase):
    """
    Every module of :mod:`twistproxy` names the test modules that test it.
    """

    def test_every_module_names_existing_tests(self) -> None:
        """
        Every module but the packages' ``__init__.py`` starts with a
        ``test-case-name`` header, and each test module it names exists.
        """
        problems = []
        for name, path in package_modules().items():
            if path.name == "__init__.py":
                continue
            names = named_test_modules(path.read_text(encoding="utf-8"))
            if names is None:
                problems.append(f"{name}: no '# -*- test-case-name: ... -*-' first line")
                continue
            for test in names:
                if not module_exists(test):
                    problems.append(f"{name}: names {test!r}, which does not exist")
        self.assertEqual(problems, [])

    def test_header(self) -> None:
        """
        The header gives one or more names, and must be the first line.
        """
        self.assertEqual(
            named_test_modules("# -*- test-case-name: tests.test_a -*-\n"), ["tests.test_a"]
        )
        self.assertEqual(
            named_test_modules('# -*- test-case-name: tests.test_a,tests.test_b -*-\n"""x"""'),
            ["tests.test_a", "tests.test_b"],
        )
        self.assertIsNone(named_test_modules('"""x"""\n# -*- test-case-name: tests.test_a -*-\n'))
        self.assertIsNone(named_test_modules("# -*- coding: utf-8 -*-\n"))

    def test_module_exists(self) -> None:
        """
        An existing test module is found; one that is missing, in a missing
        package or empty, is not.
        """
        self.assertTrue(module_exists("tests.test_imports"))
        for name in ("tests.test_nothing_here", "no_such_package.test_x", ""):
            with self.subTest(name=name):
                self.assertFalse(module_exists(name))
