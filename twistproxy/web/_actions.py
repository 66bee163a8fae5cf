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

from twistproxy._headers import check_request, check_response
from twistproxy.errors import InvalidMessage
from twistproxy.headers import Headers
from twistproxy.http import HTTPFlow, Request, Response
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



def edit_message(flow: HTTPFlow, side: str, edit: Any) -> None:
    """
    Apply the UI's edit of *flow*'s request or response (*side*): a held
    request (method, url, headers, content) or a held response
    (status_code, reason, headers, content), or either of a flow that is
    not live (a stored or duplicated one, to replay).  ``content`` is text,
    encoded in the Content-Type's charset and with the Content-Encoding;
    an existing Content-Length follows the new body.  The edit applies
    whole or not at all.

    :raises ApiError: 409 if the message cannot be edited now (live and not
        held, a request already sent, no response); 400 if the edit is not
        an object of those fields or would make a message that cannot be
        sent (a method or header name that is not a token, a CR or LF in a
        value or the reason, a status that is not three digits).
    """
    message = flow.request if side == "request" else flow.response
    if message is None:
        raise ApiError(409, f"the flow has no {side}")
    if flow.live and not flow.intercepted:
        raise ApiError(409, "only a held flow, or one that is not live, can be edited")
    if flow.live and side == "request" and flow.response is not None:
        raise ApiError(409, "the request was sent: edit the held response")
    fields = ("method", "url") if side == "request" else ("status_code", "reason")
    if not isinstance(edit, dict):
        raise ApiError(400, f"expected an object with {', '.join(fields)}, headers, content")
    edited: Request | Response
    try:
        if isinstance(message, Request):
            edited = Request.from_state(message.get_state())
            _edit_request_line(edited, edit)
        else:
            edited = Response.from_state(message.get_state())
            _edit_status_line(edited, edit)
        if "headers" in edit:
            edited.headers = Headers([(str(n).encode("utf-8"), str(v).encode("utf-8"))
                                      for n, v in edit["headers"]])
        if "content" in edit:
            edited.set_text(str(edit["content"]))
        if isinstance(edited, Request):
            check_request(edited)
        else:
            check_response(edited)
    except (ValueError, TypeError, InvalidMessage) as e:
        raise ApiError(400, f"cannot edit the {side}: {e}") from None
    message.set_state(edited.get_state())


def _edit_request_line(request: Request, edit: dict[str, Any]) -> None:
    if "method" in edit:
        method = str(edit["method"]).strip().upper()
        if not method.isalpha():
            raise ValueError(f"not a method: {method!r}")
        request.method = method
    if "url" in edit:
        request.url = str(edit["url"])


def _edit_status_line(response: Response, edit: dict[str, Any]) -> None:
    if "status_code" in edit:
        status = edit["status_code"]
        if isinstance(status, str) and status.strip().isdigit():
            status = int(status)
        if type(status) is not int or not 100 <= status <= 999:
            raise ValueError(f"not a status code: {status!r}")
        response.status_code = status
    if "reason" in edit:
        response.reason = str(edit["reason"])
