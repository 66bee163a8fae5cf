# -*- test-case-name: tests.test_modes -*-
"""
:class:`ReverseRewrite`: a reverse proxy's origin speaks of itself in its
answers (a ``Location`` to ``https://api.internal/login``, a cookie for
``Domain=api.internal``); this addon makes those answers name the proxy the
client reached instead (``--reverse-rewrite``).
"""

from __future__ import annotations

import re

from twistproxy._request import CLIENT_HOST
from twistproxy._target import authority_text, join_host_port
from twistproxy.http import HTTPFlow
from twistproxy.modes import Mode, parse_mode

_DOMAIN = re.compile(r";\s*domain\s*=\s*\.?([^;\s]*)\s*(?=;|$)", re.IGNORECASE)


class ReverseRewrite:
    """
    For flows of a ``reverse`` listener: a ``Location`` (and
    ``Content-Location``) naming the origin is rewritten to the scheme and
    host the client used, and a ``Set-Cookie`` whose ``Domain`` is the
    origin's host loses that attribute (the cookie then belongs to the host
    the client reached).  Flows of other modes are left alone.
    """

    def __init__(self) -> None:
        self._modes: dict[str, Mode | None] = {}

    def responseheaders(self, flow: HTTPFlow) -> None:
        """Rewrite the response's self-references, before anything is sent."""
        response, request = flow.response, flow.request
        if response is None or request is None:
            return
        mode = self._reverse(flow.mode)
        if mode is None:
            return
        assert mode.scheme is not None and mode.host is not None and mode.port is not None
        here = flow.metadata.get(CLIENT_HOST) or request.headers.get("host")
        if here is None:  # an HTTP/1.0 client without Host: the address it reached
            sockname = flow.client_conn.sockname
            if sockname is None:
                return
            here = join_host_port(*sockname)
        scheme = "https" if flow.client_conn.tls_established else "http"
        origins = {
            f"{mode.scheme}://{authority_text(mode.scheme, mode.host, mode.port)}".lower(),
            f"{mode.scheme}://{join_host_port(mode.host, mode.port)}".lower(),
        }
        headers = response.headers
        for name in ("Location", "Content-Location"):
            value = headers.get(name)
            if value is None:
                continue
            for origin in origins:
                rest = value[len(origin):]
                if value[:len(origin)].lower() == origin and rest[:1] in ("", "/", "?", "#"):
                    headers[name] = f"{scheme}://{here}{rest}"
                    break
        cookies = headers.get_all("Set-Cookie")
        if cookies:
            host = mode.host.lower()
            kept = [_DOMAIN.sub(lambda m: "" if m.group(1).lower() == host else m.group(0), c)
                    for c in cookies]
            if kept != cookies:
                headers.set_all("Set-Cookie", kept)

    def _reverse(self, text: str) -> Mode | None:
        """The reverse mode spelt *text*, or ``None`` for another mode."""
        if not text.startswith("reverse:"):
            return None
        if text not in self._modes:
            self._modes[text] = parse_mode(text)
        return self._modes[text]
