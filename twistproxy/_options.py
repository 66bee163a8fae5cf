# -*- test-case-name: tests.test_tap,tests.test_tap_access,tests.test_tap_limits -*-
"""
Reading the values of the twistd plugin's options, for
:class:`twistproxy.options.Options`.

The converters (:func:`positive`, :func:`whole`, :func:`at_least_one`,
:func:`worker_count`, :func:`seconds`, :func:`ca_directory`) are ``optParameters`` coerce
functions: they raise :class:`ValueError`, which ``usage.Options`` reports
with the option's name. The checks and loaders used while parsing
(:func:`regex`, :func:`host_pattern`, :func:`read_recordings`,
:func:`proxy_auth`) raise :class:`~twisted.python.usage.UsageError` in one
line naming the option themselves.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Callable
from pathlib import Path

from twisted.logger import Logger
from twisted.python import usage

from twistproxy.addons.access import ProxyAuth, load_users, parse_host_pattern, parse_user
from twistproxy.errors import FlowFileError
from twistproxy.flowfile import load_flows
from twistproxy.http import HTTPFlow

_log = Logger(namespace="twistproxy")


def worker_count(text: str) -> int:
    """
    The value of ``--workers``: ``auto`` (one per core) or a whole number of
    at least 1.

    :raises ValueError: naming the option, if *text* is neither.
    """
    if text == "auto":
        return os.cpu_count() or 1
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise ValueError(f"--workers {text}: not 'auto' or a whole number of at least 1")
    return value


def ca_directory(text: str) -> str:
    """
    Check the value of ``--ca-dir``: an existing directory, or one that can
    be made there, in a directory that exists (only the last level is
    created, with mode 0700, on the first start; a mistyped path is not
    made with all its parents).

    :returns: *text*.
    :raises ValueError: in one line naming the option, if it is not.
    """
    directory = Path(text).expanduser()
    if directory.exists():
        if not directory.is_dir():
            raise ValueError(f"--ca-dir {text}: not a directory")
    elif not directory.parent.is_dir():
        problem = "is not a directory" if directory.parent.exists() else "does not exist"
        raise ValueError(
            f"--ca-dir {text}: {directory.parent} {problem} (only the last level is created)"
        )
    return text


def whole(text: str) -> int:
    """
    A whole number, 0 included.

    :raises ValueError: if *text* is not one.
    """
    value = int(text)
    if value < 0:
        raise ValueError(f"{text!r} is not a whole number")
    return value


def at_least_one(text: str) -> int:
    """
    A whole number of at least 1.

    :raises ValueError: if *text* is not one.
    """
    value = int(text)
    if value < 1:
        raise ValueError(f"{text!r} is not a whole number of at least 1")
    return value


def positive(text: str) -> float:
    """
    A positive number of seconds.

    :raises ValueError: if *text* is not one.
    """
    value = float(text)
    if not value > 0:
        raise ValueError(f"{text!r} is not a positive number of seconds")
    return value


def seconds(option: str, *, zero: bool = False) -> Callable[[str], float]:
    """
    The coerce function of *option*, a positive finite number of seconds
    (or 0 too, with *zero*); its error names the option.
    """

    def coerce(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            value = math.nan
        if not ((value > 0 or (zero and value == 0)) and math.isfinite(value)):
            what = "a number of seconds, 0 or more" if zero else "a positive number of seconds"
            raise ValueError(f"{option} {text}: not {what}")
        return value

    return coerce


def regex(option: str, pattern: str) -> str:
    """
    Check that *pattern*, given with *option*, is a regular expression.

    :returns: *pattern*.
    :raises usage.UsageError: in one line, if it is not.
    """
    try:
        re.compile(pattern)
    except re.error as e:
        raise usage.UsageError(f"{option} {pattern!r}: not a regular expression ({e})") from e
    return pattern


def host_pattern(option: str, pattern: str) -> str:
    """Check *pattern* for *option*; a usage error in one line if it is invalid."""
    try:
        parse_host_pattern(pattern)
    except ValueError as e:
        raise usage.UsageError(f"{option} {e}") from None
    return pattern


def read_recordings(option: str, paths: list[str], *, skip_invalid: bool = False) -> list[HTTPFlow]:
    """
    The flows of the files *paths* name, or a usage error naming what is
    wrong.  With *skip_invalid*, a line (or HAR entry) that cannot be read
    is skipped instead, and one warning per file counts them and names the
    first.
    """
    flows: list[HTTPFlow] = []
    for path in paths:
        skipped: list[FlowFileError] = []
        try:
            flows.extend(load_flows(Path(path).expanduser(),
                                    on_error=skipped.append if skip_invalid else None))
        except OSError as e:
            raise usage.UsageError(f"{option} {path}: {e.strerror}") from e
        except FlowFileError as e:
            raise usage.UsageError(f"{option} {path}: {e}") from e
        if skipped:
            _log.warn("{option} {path}: skipped {count} unreadable flows (first: {first})",
                      option=option, path=path, count=len(skipped), first=str(skipped[0]))
    return flows


def proxy_auth(credentials: list[str], path: str | None) -> ProxyAuth | None:
    """
    The proxy authentication addon for the ``--proxy-auth`` *credentials*
    (``USER:PASS`` each, already checked) and the ``--proxy-auth-file``
    *path*, or ``None`` if neither gives a user.

    :raises usage.UsageError: in one line, if a user is given twice or the
        file cannot be read, is malformed or holds no user.
    """
    users: dict[str, str] = {}
    for given in credentials:
        user, password = parse_user(given)
        if user in users:
            raise usage.UsageError(f"--proxy-auth: the user {user!r} is given twice")
        users[user] = password
    if path is not None:
        try:
            from_file = load_users(Path(path).expanduser())
        except OSError as e:
            raise usage.UsageError(f"--proxy-auth-file {path}: {e.strerror or e}") from e
        except ValueError as e:
            raise usage.UsageError(f"--proxy-auth-file {e}") from None
        if not from_file:
            raise usage.UsageError(f"--proxy-auth-file {path}: no users in the file")
        for user, password in from_file.items():
            if user in users:
                raise usage.UsageError(
                    f"--proxy-auth-file {path}: the user {user!r} is also given "
                    "with --proxy-auth"
                )
            users[user] = password
    return ProxyAuth(users) if users else None
