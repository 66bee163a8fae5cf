# -*- test-case-name: tests.test_web_api,tests.e2e.test_web_api_e2e -*-
"""
What the web UI's API does to flows beyond reading and listing them:
:class:`Actions` highlights a body, edits a held (or stored) request or
response, duplicates a flow, loads a flow file or HAR into the store and
replays several flows.  :class:`ApiError` is an API call refused, with its
HTTP status; :mod:`twistproxy.web.api` routes the calls here and answers.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import Deferred, succeed
from twisted.internet.task import Cooperator

from twistproxy.http import HTTPFlow
from twistproxy.web._highlight import HIGHLIGHT_LIMIT, Highlight, body_text, language_of
from twistproxy.web.addon import WebRecorder


class ApiError(Exception):
    """
    An API call refused: answered with *code* and ``{"error": message,
    **extra}``.
    """

    def __init__(self, code: int, message: str, **extra: Any) -> None:
        super().__init__(message)
        self.code = code
        self.body = {"error": message, **extra}


class Actions:
    """
    The API's actions on the flows of *recorder*'s store.

    :param cooperator: Spreads long work (highlighting a body, loading a
        file) over reactor turns.
    """

    def __init__(self, recorder: WebRecorder, cooperator: Cooperator) -> None:
        self._recorder = recorder
        self._store = recorder.store
        self._cooperator = cooperator

    # -- highlighting ---------------------------------------------------------

    def highlight(self, flow: HTTPFlow, side: str) -> Deferred[dict[str, Any]]:
        """
        *side*'s body of *flow* as highlighted tokens: ``{"language",
        "tokens": [[class, text], ...], "complete"}``, or ``{"language":
        None, "reason"}`` when it is not highlighted (its type, its size).

        :raises ApiError: 404 if the body was not recorded.
        """
        message = flow.request if side == "request" else flow.response
        if message is None or message.raw_content is None:
            raise ApiError(404, f"the flow has no recorded {side} body")
        content_type = message.headers.get(b"content-type")
        language = language_of(content_type)
        if language is None:
            return succeed({"language": None, "reason": f"{content_type or 'no type'}: "
                         "not highlighted"})
        content = message.get_content(strict=False)
        if content is None:
            content = message.raw_content
        if len(content) > HIGHLIGHT_LIMIT:
            return succeed({"language": None, "reason": f"larger than {HIGHLIGHT_LIMIT // 1024} "
                         "KiB: shown as plain text"})
        highlight = Highlight(body_text(content, content_type), language)
        done = self._cooperator.cooperate(highlight.steps()).whenDone()
        return done.addCallback(lambda _: {"language": language, "tokens": highlight.tokens,
                                           "complete": highlight.complete})

