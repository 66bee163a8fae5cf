# -*- test-case-name: tests.test_exchange -*-
"""
One exchange's life, decided without I/O.
"""

from __future__ import annotations

IDEMPOTENT_METHODS = frozenset({b"GET", b"HEAD", b"OPTIONS", b"TRACE", b"PUT", b"DELETE"})
"""
The methods a proxy may send again on its own (RFC 9110 section 9.2.2):
sending one twice has the effect of sending it once.
"""


def may_retry(
    method: bytes, *, reused: bool, complete: bool, answered: bool, lost: bool, attempts: int
) -> bool:
    """
    The one retry rule: whether a request that failed upstream is sent once
    more, on a new connection, without telling anyone.

    Only when the failure is the one a kept-alive connection meets when the
    origin closed it meanwhile: an idempotent request (RFC 9110 section
    9.2.2: a proxy must not retry any other), written whole, on a reused
    connection, lost before a single byte of response, and only once.

    :param method: The request's method.
    :param reused: The connection had carried an exchange before.
    :param complete: The whole request was written (and is still in hand).
    :param answered: A byte of a response (even an interim one) arrived.
    :param lost: The failure is the connection closing or resetting.
    :param attempts: How many times the request was sent so far.
    """
    return (
        attempts == 1
        and reused
        and complete
        and lost
        and not answered
        and method in IDEMPOTENT_METHODS
    )
