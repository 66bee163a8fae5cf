"""
Tests for :mod:`twistproxy._twisted_compat`: every private Twisted name
twistproxy relies on is still there, and nothing else uses one.
"""

from __future__ import annotations

import ast
from pathlib import Path

from twisted.internet.testing import StringTransport
from twisted.python.reflect import namedAny
from twisted.trial.unittest import SynchronousTestCase
from twisted.web import http

import twisted
from twistproxy import _twisted_compat
from twistproxy._twisted_compat import PRIVATE_NAMES, take_buffered

PACKAGE = Path(_twisted_compat.__file__).parent


class PrivateNamesTests(SynchronousTestCase):
    """
    The private names listed in :data:`PRIVATE_NAMES` exist in the installed
    Twisted, and only ``_twisted_compat.py`` uses Twisted privates.
    """

    def test_every_name_exists(self) -> None:
        """
        Each listed name is found on its owner (on a connected channel for
        instance attributes); a release that renamed one fails here, naming it.
        """
        channel = http.HTTPChannel()
        channel.makeConnection(StringTransport())
        decoder = http._ChunkedTransferDecoder(lambda data: None, lambda rest: None)
        instances = {http.HTTPChannel: channel, http._ChunkedTransferDecoder: decoder}
        missing = []
        for owner, name in PRIVATE_NAMES:
            target = namedAny(owner)
            found = hasattr(target, name) or (
                target in instances and hasattr(instances[target], name)
            )
            if not found:
                missing.append(f"{owner}.{name}")
        self.assertEqual(
            missing, [],
            f"Twisted {twisted.__version__} no longer has {', '.join(missing)}: "
            "twistproxy/_twisted_compat.py must follow (and setup.cfg's Twisted range)",
        )

    def test_buffer_is_a_list_of_bytes(self) -> None:
        """
        ``HTTPChannel._dataBuffer`` holds the bytes read behind a request as a
        list, which :func:`take_buffered` empties.
        """
        channel = http.HTTPChannel()
        channel.makeConnection(StringTransport())
        self.assertEqual(channel._dataBuffer, [])
        channel._dataBuffer.append(b"tls")
        self.assertEqual(take_buffered(channel), b"tls")
        self.assertEqual(channel._dataBuffer, [])

    def test_no_other_module_uses_twisted_privates(self) -> None:
        """
        No twistproxy module but ``_twisted_compat.py`` imports a private
        Twisted name or touches one of :data:`PRIVATE_NAMES` as an attribute.
        """
        names = {name for _, name in PRIVATE_NAMES}
        offenders = []
        for path in sorted(PACKAGE.rglob("*.py")):
            if path.name == "_twisted_compat.py":
                continue
            tree = ast.parse(path.read_text(), str(path))
            for node in ast.walk(tree):
                if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("twisted"):
                    offenders += [f"{path.name}: {a.name}" for a in node.names
                                  if a.name.startswith("_") and a.name != "__future__"]
                elif isinstance(node, ast.Attribute) and node.attr in names:
                    offenders.append(f"{path.name}:{node.lineno}: .{node.attr}")
                elif isinstance(node, ast.FunctionDef) and node.name in names:
                    offenders.append(f"{path.name}:{node.lineno}: def {node.name}")
        self.assertEqual(offenders, [])
