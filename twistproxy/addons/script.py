# -*- test-case-name: tests.test_script -*-
"""
Loading addons from Python files: ``twistd twistproxy --addon myaddon.py``.

The file is run as a module of its own and must define ``addons``, a list of
addon objects.  Anything wrong (a missing file, a syntax error, an exception
while importing, no ``addons``, a misspelt hook) is reported as one
:class:`~twistproxy.errors.AddonError` naming the file.
"""

from __future__ import annotations

import importlib.util
import itertools
import sys
from pathlib import Path

from twistproxy.errors import AddonError
from twistproxy.hooks import validate_addon

_counter = itertools.count()


def load_addons(path: str) -> list[object]:
    """
    Run the Python file *path* and return its ``addons``.

    :raises AddonError: with a one-line reason when the file cannot be
        loaded or its addons are not valid.
    """
    file = Path(path)
    if not file.is_file():
        raise AddonError(f"{path}: no such file")
    name = f"_twistproxy_addon_{next(_counter)}_{file.stem}"
    spec = importlib.util.spec_from_file_location(name, file)
    if spec is None or spec.loader is None:
        raise AddonError(f"{path}: not a Python file")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except SyntaxError as e:
        del sys.modules[name]
        raise AddonError(f"{path}:{e.lineno}: syntax error: {e.msg}") from e
    except Exception as e:
        del sys.modules[name]
        raise AddonError(f"{path}: {type(e).__name__}: {e}") from e
    addons = getattr(module, "addons", None)
    if not isinstance(addons, (list, tuple)):
        raise AddonError(f"{path}: must define 'addons', a list of addon objects")
    for index, addon in enumerate(addons):
        try:
            validate_addon(addon)
        except AddonError as e:
            raise AddonError(f"{path}: addons[{index}]: {e}") from e
    return list(addons)
