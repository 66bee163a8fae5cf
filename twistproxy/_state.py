# -*- test-case-name: tests.test_flow -*-
"""
What the models' records share: their ids (:func:`new_id`, made when first
asked for by :class:`LazyId`) and the check of a state dict's keys
(:func:`check_keys`).
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from typing import Any, overload

_random = b""  # random bytes for ids, taken from the front
_ID_BATCH = 16 * 256


def _forget_random() -> None:
    global _random
    _random = b""


# A forked child must not hand out its parent's ids.
os.register_at_fork(after_in_child=_forget_random)


def new_id() -> str:
    """
    :returns: A random (version 4) UUID string, as ``str(uuid.uuid4())``
        gives, at a fraction of the cost: one is made for every flow, from
        random bytes read 256 ids at a time.
    """
    global _random
    if not _random:
        _random = os.urandom(_ID_BATCH)
    b = bytearray(_random[:16])
    _random = _random[16:]
    b[6] = (b[6] & 0x0F) | 0x40  # version 4
    b[8] = (b[8] & 0x3F) | 0x80  # RFC 4122 variant
    h = b.hex()
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


class LazyId:
    """
    A record's ``id`` attribute: a unique id (a UUID4 string, from
    :func:`new_id`), made when first asked for and kept in the record's
    ``_id`` (``None`` until then); setting it keeps the id given (a record
    read from a state dict).  Most records' ids are never read.
    """

    @overload
    def __get__(self, record: None, owner: type) -> LazyId: ...

    @overload
    def __get__(self, record: object, owner: type | None = None) -> str: ...

    def __get__(self, record: Any, owner: type | None = None) -> Any:
        if record is None:
            return self
        made = record._id
        if made is None:
            made = record._id = new_id()
        return made

    def __set__(self, record: Any, value: str) -> None:
        record._id = value


def check_keys(state: Mapping[str, Any], known: Iterable[str], what: str) -> None:
    """
    Refuse a state dict whose keys are not exactly *known*.

    :param state: The state dict to check.
    :param known: Every key the state must have.
    :param what: What the state describes, for the message.
    :raises ValueError: naming the unknown or missing keys.
    """
    keys = set(state)
    expected = set(known)
    unknown = keys - expected
    if unknown:
        raise ValueError(f"unknown keys in {what} state: {sorted(unknown)!r}")
    missing = expected - keys
    if missing:
        raise ValueError(f"missing keys in {what} state: {sorted(missing)!r}")
