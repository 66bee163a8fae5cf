"""
Sphinx directives that generate parts of twistproxy's documentation from
the code, so that they are not written twice:

``.. twistproxy-hooks:: NAME ...``
    The named hooks of :class:`twistproxy.hooks.IAddon`, each a
    ``py:method`` of ``IAddon`` with its signature and its docstring, in the
    order given. A name ``IAddon`` does not have is an error.

``.. twistproxy-iaddon::``
    :class:`twistproxy.hooks.IAddon` itself (a zope.interface ``Interface``,
    which autodoc does not document): its docstring, its attributes, and a
    reference to each of its hooks.

``.. twistproxy-data:: MODULE NAME ...``
    Module-level names of the current module that are defined in *MODULE*
    (a private one) and re-exported: each a ``py:data`` with the docstring
    written under its assignment there (autodoc skips imported data).

``.. twistproxy-options::``
    The options of ``twistd twistproxy`` (:class:`twistproxy.options.Options`)
    as ``std:option`` entries of the program ``twistproxy``, read from the
    help text twistd prints (``--help``): names, short forms, whether each
    takes a value, its help and its default; the help's description first.
"""

from __future__ import annotations

import inspect
import re
from typing import Any

from docutils import nodes
from docutils.parsers.rst import Directive
from docutils.statemachine import StringList
from sphinx.application import Sphinx
from sphinx.util.nodes import nested_parse_with_titles

_OPTION_LINE = re.compile(
    r"^\s+(?:-(?P<short>\w), )?--(?P<long>[\w-]+)(?P<value>=?)\s+(?P<help>.*)$"
)


def _escape(text: str) -> str:
    """*text* as reStructuredText that shows it as it is (every mark escaped)."""
    return re.sub(r"([^\w\s])", r"\\\1", text)


class _Generated(Directive):
    """A directive whose content is reStructuredText it generates."""

    def generated(self) -> list[str]:
        """The lines to parse in place of the directive."""
        raise NotImplementedError

    def run(self) -> list[nodes.Node]:
        lines = self.generated()
        source = self.state.document.current_source or "<twistproxy_sphinx>"
        container = nodes.section()
        container.document = self.state.document
        nested_parse_with_titles(
            self.state, StringList(lines, source=source), container
        )
        return list(container.children)


class HooksDirective(_Generated):
    """``.. twistproxy-hooks:: NAME ...``: hooks of ``IAddon``, from its docstrings."""

    required_arguments = 1
    final_argument_whitespace = True

    def generated(self) -> list[str]:
        from twistproxy.hooks import IAddon

        lines = [".. py:currentmodule:: twistproxy.hooks", ""]
        for name in self.arguments[0].split():
            if name not in IAddon.names() or name == "stream_bodies":
                raise self.error(f"IAddon has no hook {name!r}")
            method = IAddon[name]
            lines.append(f".. py:method:: IAddon.{name}{method.getSignatureString()}")
            lines.append("")
            lines.extend(
                "   " + line if line else ""
                for line in inspect.cleandoc(method.getDoc() or "").splitlines()
            )
            lines.append("")
        return lines


class IAddonDirective(_Generated):
    """``.. twistproxy-iaddon::``: the ``IAddon`` interface, its attributes and its hooks."""

    def generated(self) -> list[str]:
        from zope.interface.interface import Method

        from twistproxy.hooks import IAddon

        def indented(text: str, by: str) -> list[str]:
            return [by + line if line else "" for line in inspect.cleandoc(text).splitlines()]

        lines = [".. py:currentmodule:: twistproxy.hooks", "", ".. py:class:: IAddon", ""]
        lines += indented(IAddon.__doc__ or "", "   ") + [""]
        hooks = []
        for name in IAddon.names():
            attribute = IAddon[name]
            if isinstance(attribute, Method):
                hooks.append(f":meth:`{name}`")
                continue
            lines += [f"   .. py:attribute:: {name}", ""]
            lines += indented(attribute.getDoc() or "", "      ") + [""]
        lines += ["   Its hooks, described in :doc:`/hooks`: " + ", ".join(hooks) + ".", ""]
        return lines


class DataDirective(_Generated):
    """``.. twistproxy-data:: MODULE NAME ...``: re-exported constants, their docstrings."""

    required_arguments = 1
    final_argument_whitespace = True

    def generated(self) -> list[str]:
        from sphinx.pycode import ModuleAnalyzer

        module, *names = self.arguments[0].split()
        docs = ModuleAnalyzer.for_module(module).find_attr_docs()
        lines = []
        for name in names:
            doc = docs.get(("", name))
            if doc is None:
                raise self.error(f"{module}.{name} has no docstring")
            lines += [f".. py:data:: {name}", ""]
            lines += ["   " + line if line else "" for line in doc] + [""]
        return lines


class OptionsDirective(_Generated):
    """``.. twistproxy-iaddon::``
    :class:`twistproxy.hooks.IAddon` itself (a zope.interface ``Interface``,
    which autodoc does not document): its docstring, its attributes, and a
    reference to each of its hooks.

``.. twistproxy-options::``: ``twistd twistproxy``'s options, from its help."""

    def generated(self) -> list[str]:
        from twistproxy.options import Options

        lines = [_escape(" ".join(Options.longdesc.split())), "", ".. program:: twistproxy", ""]
        count = 0
        for line in Options().getUsage(width=100_000).splitlines():
            match = _OPTION_LINE.match(line)
            if match is None:
                continue
            count += 1
            value = " <VALUE>" if match["value"] else ""
            names = [f"--{match['long']}{value}"]
            if match["short"]:
                names.insert(0, f"-{match['short']}{value}")
            lines.append(f".. option:: {', '.join(names)}")
            lines.append("")
            lines.append("   " + _escape(match["help"]))
            lines.append("")
        if not count:
            raise self.error("no option found in twistd twistproxy's help")
        return lines


def setup(app: Sphinx) -> dict[str, Any]:
    """Register the directives."""
    app.add_directive("twistproxy-hooks", HooksDirective)
    app.add_directive("twistproxy-data", DataDirective)
    app.add_directive("twistproxy-iaddon", IAddonDirective)
    app.add_directive("twistproxy-options", OptionsDirective)
    return {"parallel_read_safe": True, "parallel_write_safe": True, "version": "1"}
