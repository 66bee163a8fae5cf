"""
Parsing twistd options in tests: the CA goes to a temporary directory unless
the arguments say otherwise, never to the home directory.
"""

from __future__ import annotations

import atexit
import shutil
import tempfile

from twistproxy.options import Options

CA_DIR = tempfile.mkdtemp(prefix="twistproxy-test-ca-")
"""The CA directory every test shares (removed when the interpreter exits)."""
atexit.register(shutil.rmtree, CA_DIR, True)


def parse(*args: str) -> Options:
    """
    Parse *args* with a new :class:`Options`, with ``--ca-dir`` set to
    :data:`CA_DIR` unless *args* name a CA themselves.
    """
    options = Options()
    if "--ca-dir" not in args and "--ca" not in args:
        args = ("--ca-dir", CA_DIR, *args)
    options.parseOptions(list(args))
    return options
