# -*- test-case-name: tests.test_script -*-
"""
Loading addons from Python files: ``twistd twistproxy --addon myaddon.py``,
and reloading them when they change.

The file is run as a module of its own and defines ``addons``, a list of
addon objects; a file without ``addons`` whose module has hook functions
(``def request(flow): ...``, as mitmproxy scripts often are) is its own
addon. The file's directory is put on ``sys.path`` (at the front, once), so
that it can import a module beside it. Anything wrong (a missing file, a
directory, a syntax error, an exception or ``sys.exit()`` while importing,
no ``addons``, something in ``addons`` that is no addon, a misspelt hook)
is reported as one :class:`~twistproxy.errors.AddonError` naming the file.

:class:`AddonFile` is a loaded file; :class:`AddonFileWatcher` polls the
files' modification times and, when one changed, loads it again and puts
its new addons in place of the old ones in the
:class:`~twistproxy.lifecycle.AddonManager` (the old ones get ``done``,
the new ones ``load``, ``configure`` and ``running``); if the new version
cannot be loaded, the old addons stay and one line is logged. Modules the
file imports are not reloaded.
"""

from __future__ import annotations

import importlib.util
import itertools
import os
import sys
from pathlib import Path
from types import ModuleType

from twisted.application.service import Service
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import LoopingCall
from twisted.logger import Logger

from twistproxy.errors import AddonError
from twistproxy.hooks import HOOKS, LIFECYCLE_HOOKS, validate_addon
from twistproxy.lifecycle import AddonManager

__all__ = ["POLL_INTERVAL", "AddonFile", "AddonFileWatcher", "load_addons"]

POLL_INTERVAL = 1.0
"""Seconds between two looks at the addon files' modification times."""

_counter = itertools.count()
_log = Logger(namespace="twistproxy")


def load_addons(path: str) -> list[object]:
    """
    Run the Python file *path* and return its ``addons``.

    :raises AddonError: with a one-line reason when the file cannot be
        loaded or its addons are not valid.
    """
    file = Path(path)
    if file.is_dir():
        raise AddonError(f"{path}: is a directory, not a Python file")
    if not file.is_file():
        raise AddonError(f"{path}: no such file")
    name = f"_twistproxy_addon_{next(_counter)}_{file.stem}"
    spec = importlib.util.spec_from_file_location(name, file)
    if spec is None or spec.loader is None:
        raise AddonError(f"{path}: not a Python file")
    module = importlib.util.module_from_spec(spec)
    directory = str(file.resolve().parent)
    if directory not in sys.path:
        sys.path.insert(0, directory)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except SyntaxError as e:
        del sys.modules[name]
        raise AddonError(f"{path}:{e.lineno}: syntax error: {e.msg}") from e
    except SystemExit as e:
        del sys.modules[name]
        raise AddonError(f"{path}: called sys.exit({e.code!r}) while loading") from None
    except Exception as e:
        del sys.modules[name]
        raise AddonError(f"{path}: {type(e).__name__}: {e}") from e
    return _addons_of(path, module)


def _addons_of(path: str, module: ModuleType) -> list[object]:
    """
    The addons the loaded *module* of *path* defines: its ``addons``, or
    itself if it has hook functions instead.
    """
    addons = getattr(module, "addons", None)
    if addons is None and _has_hooks(module):
        addons = [module]
    if not isinstance(addons, (list, tuple)):
        raise AddonError(f"{path}: must define 'addons', a list of addon objects")
    for index, addon in enumerate(addons):
        try:
            validate_addon(addon)
        except AddonError as e:
            raise AddonError(f"{path}: addons[{index}]: {e}") from e
        if not _has_hooks(addon):
            raise AddonError(
                f"{path}: addons[{index}] is {_short(addon)}, which has no hook: not an addon"
            )
    return list(addons)


def _has_hooks(addon: object) -> bool:
    """Whether *addon* has a callable hook or lifecycle hook."""
    return any(callable(getattr(addon, hook, None)) for hook in (*HOOKS, *LIFECYCLE_HOOKS))


def _short(value: object) -> str:
    """*value* in an error: a built-in value and its short ``repr``, or its class."""
    if type(value).__module__ != "builtins":
        return f"a {type(value).__qualname__} object"
    text = repr(value)
    return f"{type(value).__name__} {text if len(text) <= 40 else text[:37] + '...'}"


def _stamp(path: str) -> tuple[int, int] | None:
    """What tells that *path* changed: its modification time and size, or ``None``."""
    try:
        status = os.stat(path)
    except OSError:
        return None
    return status.st_mtime_ns, status.st_size


class AddonFile:
    """
    An addon file and the addons it gave when it was last loaded.

    :param path: The file, as given to ``--addon``.
    :raises AddonError: if it cannot be loaded (:func:`load_addons`).
    :ivar addons: Its addons.
    """

    def __init__(self, path: str) -> None:
        self.path = path
        self._stamp = _stamp(path)
        self.addons = load_addons(path)

    def reload_if_changed(self, manager: AddonManager) -> bool:
        """
        If the file changed since it was loaded, load it again and put its
        new addons in place of the old ones in *manager*; if that fails,
        keep the old ones and log why in one line.

        :returns: Whether new addons took the old ones' place.
        """
        stamp = _stamp(self.path)
        if stamp == self._stamp:
            return False
        self._stamp = stamp
        try:
            addons = load_addons(self.path)
            manager.replace(self.addons, addons)
        except AddonError as e:
            _log.error("twistproxy: --addon {path} not reloaded, its old addons stay: {error}",
                       path=self.path, error=str(e))
            return False
        self.addons = addons
        _log.info("twistproxy: --addon {path} reloaded ({count} addons)",
                  path=self.path, count=len(addons))
        return True


class AddonFileWatcher(Service):
    """
    While running, looks at the addon files every *interval* seconds and
    reloads those that changed (:meth:`AddonFile.reload_if_changed`).

    :param clock: Schedules the looks.
    :param manager: Holds the files' addons.
    :param files: The addon files.
    """

    def __init__(
        self,
        clock: IReactorTime,
        manager: AddonManager,
        files: list[AddonFile],
        interval: float = POLL_INTERVAL,
    ) -> None:
        self._manager = manager
        self._files = files
        self._interval = interval
        self._loop = LoopingCall(self.poll)
        self._loop.clock = clock

    def poll(self) -> None:
        """Reload the files that changed."""
        for file in self._files:
            file.reload_if_changed(self._manager)

    def startService(self) -> None:
        """Start looking (the first look after one interval)."""
        super().startService()
        self._loop.start(self._interval, now=False)

    def stopService(self) -> None:
        """Stop looking."""
        super().stopService()
        if self._loop.running:
            self._loop.stop()
