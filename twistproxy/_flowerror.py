# -*- test-case-name: tests.test_flowfile,tests.test_har -*-
"""
The helpers that say where in a document a value is wrong: shared by flow
files (:mod:`twistproxy.flowfile`) and HAR (:mod:`twistproxy.har`), which
both import it, so that neither imports the other's internals.

Both raise :exc:`~twistproxy.errors.FlowFileError`, and both limit how
deep the JSON they read may nest (:func:`nesting_over`).  This module does
no I/O.
"""

from __future__ import annotations


class Invalid(ValueError):
    """
    A value does not fit the schema of a flow file line or a HAR entry.

    :ivar where: The value's path, for example ``request.headers[2][0]``
        (empty for the whole record).
    :ivar reason: What is wrong with it.
    """

    def __init__(self, where: str, reason: str) -> None:
        super().__init__(f"{where}: {reason}" if where else reason)
        self.where = where
        self.reason = reason


def join_path(where: str, key: str) -> str:
    """
    The path of *key* inside the value at *where*: ``request.url`` for
    ``("request", "url")``; either part may be empty.
    """
    return f"{where}.{key}" if where and key else where or key


_JSON_NAMES = {
    dict: "an object",
    list: "a list",
    str: "a string",
    bool: "a boolean",
    int: "a number",
    float: "a number",
    type(None): "null",
}


def describe_value(value: object) -> str:
    """
    What kind of JSON value *value* is, for a message: ``"an object"``,
    ``"a string"``, ``"null"``...; a type that is not JSON by its name.
    """
    return _JSON_NAMES.get(type(value), type(value).__name__)


def nesting_over(value: object, limit: int) -> bool:
    """
    Whether the parsed JSON *value* nests lists and objects more than
    *limit* deep (a scalar is depth 0, ``[]`` depth 1).  Walks without
    recursion, so any depth is safe to ask about.
    """
    stack: list[tuple[object, int]] = [(value, 0)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict):
            item = list(item.values())
        elif not isinstance(item, list):
            continue
        depth += 1
        if depth > limit:
            return True
        stack.extend((child, depth) for child in item if isinstance(child, (dict, list)))
    return False
