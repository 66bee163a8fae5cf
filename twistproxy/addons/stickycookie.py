# -*- test-case-name: tests.test_rewrites -*-
"""
Sticky cookies (mitmproxy's ``stickycookie``): :class:`StickyCookie`
remembers the cookies servers set and sends them with the requests a
filter matches, so that a client without a cookie jar (curl, a replayed
request) carries a session.
"""

from __future__ import annotations

import email.utils
import time
from collections.abc import Callable
from http import cookiejar
from typing import Any

from twistproxy.filters import Filter, FilterError
from twistproxy.filters import parse as parse_filter
from twistproxy.hooks import Addon

__all__ = ["StickyCookie", "parse_set_cookie"]

_Origin = tuple[str, int, str]  # domain, port, path


def parse_set_cookie(value: str) -> tuple[str, str, dict[str, str]] | None:
    """
    Read a ``Set-Cookie`` value: its name, its value and its attributes
    (names lower-cased; a flag such as ``Secure`` has the value ``""``).

    :returns: ``None`` if it has no ``name=value``.
    """
    pair, *attributes = value.split(";")
    name, equals, cookie = pair.partition("=")
    name = name.strip()
    if not equals or not name:
        return None
    attrs: dict[str, str] = {}
    for attribute in attributes:
        key, _, attribute_value = attribute.partition("=")
        if key.strip():
            attrs[key.strip().lower()] = attribute_value.strip()
    return name, cookie.strip(), attrs


def _expired(attrs: dict[str, str], now: float) -> bool:
    """Whether a cookie with *attrs* is expired (``Max-Age`` first, then ``Expires``)."""
    max_age = attrs.get("max-age")
    if max_age is not None:
        try:
            return int(max_age) <= 0
        except ValueError:
            pass
    expires = attrs.get("expires")
    if expires:
        try:
            return email.utils.parsedate_to_datetime(expires).timestamp() <= now
        except (TypeError, ValueError):
            return False
    return False


def _domain_match(host: str, domain: str) -> bool:
    return bool(cookiejar.domain_match(host, domain)  # type: ignore[attr-defined]
                or cookiejar.domain_match(host, domain.strip(".")))  # type: ignore[attr-defined]


class StickyCookie(Addon):
    """
    Record every cookie servers set (in ``responseheaders``), keyed by
    domain (the ``Domain`` attribute or the request's host), port and path
    (the ``Path`` attribute or ``/``); an expired one is forgotten.  A
    request the filter matches (in ``requestheaders``) gets a ``Cookie``
    header, replacing its own, with the recorded cookies whose domain
    matches its host, port its port and path a prefix of its path; the
    flow's ``metadata["stickycookie"]`` is then ``True``.

    The jar is in memory, one per addon (with ``--workers``, one per
    worker process).
    """

    def __init__(self, flow_filter: str | Filter, *, now: Callable[[], float] = time.time
                 ) -> None:
        """
        :param flow_filter: Which requests get the cookies (mitmproxy's
            ``stickycookie`` option), as text or parsed.
        :param now: The clock ``Expires`` is compared with.
        :raises ValueError: if the filter cannot be read (one line).
        """
        if isinstance(flow_filter, str):
            try:
                flow_filter = parse_filter(flow_filter)
            except FilterError as e:
                raise ValueError(f"{e.reason} at column {e.position + 1}") from None
        self.filter = flow_filter
        self._now = now
        self.jar: dict[_Origin, dict[str, str]] = {}

    def responseheaders(self, flow: Any) -> None:
        """Record the cookies *flow*'s response sets."""
        request = flow.request
        for value in flow.response.headers.get_all(b"set-cookie"):
            parsed = parse_set_cookie(value)
            if parsed is None:
                continue
            name, cookie, attrs = parsed
            origin = (attrs.get("domain") or request.host, request.port, attrs.get("path") or "/")
            if not _domain_match(request.host, origin[0]):
                continue
            if _expired(attrs, self._now()):
                cookies = self.jar.get(origin, {})
                cookies.pop(name, None)
                if not cookies:
                    self.jar.pop(origin, None)
            else:
                self.jar.setdefault(origin, {})[name] = cookie

    def requestheaders(self, flow: Any) -> None:
        """Send the recorded cookies with *flow*'s request, if the filter matches it."""
        if flow.response is not None or not self.filter(flow):
            return
        request = flow.request
        pairs = [
            f"{name}={value}"
            for (domain, port, path), cookies in self.jar.items()
            if _domain_match(request.host, domain) and request.port == port
            and request.path.startswith(path)
            for name, value in cookies.items()
        ]
        if pairs:
            flow.metadata["stickycookie"] = True
            request.headers[b"Cookie"] = "; ".join(pairs)
