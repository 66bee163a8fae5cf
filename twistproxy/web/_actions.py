# -*- test-case-name: tests.test_web_api,tests.e2e.test_web_api_e2e -*-
"""
What the web UI's API does to flows beyond reading and listing them:
:class:`Actions` highlights a body, edits a held (or stored) request or
response, duplicates a flow, loads a flow file or HAR into the store and
replays several flows.  :class:`ApiError` is an API call refused, with its
HTTP status; :mod:`twistproxy.web.api` routes the calls here and answers.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Iterator
from itertools import islice
from typing import IO, Any

from twisted.internet.defer import Deferred, succeed
from twisted.internet.task import Cooperator

from twistproxy._encoding import DecodedTooLarge
from twistproxy._headers import check_request, check_response
from twistproxy.errors import FlowFileError, InvalidMessage
from twistproxy.flowfile import read_flows, read_har
from twistproxy.har import from_har
from twistproxy.headers import Headers
from twistproxy.http import HTTPFlow, Request, Response
from twistproxy.web._detail import flow_detail
from twistproxy.web._highlight import HIGHLIGHT_LIMIT, Highlight, body_text, language_of
from twistproxy.web.addon import WebRecorder
from twistproxy.web.store import View

MAX_IMPORT = 64 * 1024 * 1024
"""The largest flow file or HAR file the UI loads (bytes)."""

IMPORT_CHUNK = 100
"""Flows of a loaded file stored in one step (one transaction)."""

MAX_REPLAY = 1000
"""The most flows one call replays (they wait in the replay queue, bodies included)."""

MAX_ERRORS = 10
"""The problems of a loaded file named in the answer (the rest are counted)."""

_HAR_START = re.compile(rb'(?:\xef\xbb\xbf)?\s*\{\s*"log"\s*:')  # a BOM allowed


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

    def __init__(self, recorder: WebRecorder, cooperator: Cooperator,
                 replay: Callable[[HTTPFlow], str | None] | None = None) -> None:
        self._recorder = recorder
        self._store = recorder.store
        self._cooperator = cooperator
        self._replay = replay

    def _find(self, flow_id: str) -> HTTPFlow | None:
        live = self._recorder.live.get(flow_id)
        return live if live is not None else self._store.load(flow_id)

    def _store_flows(self, flows: list[HTTPFlow]) -> list[int]:
        written = self._store.write(flows)
        self._recorder.notify(written)
        return [seq for seq, _, _ in written]

    # -- duplicating ------------------------------------------------------------

    def duplicate(self, flow: HTTPFlow) -> dict[str, Any]:
        """
        Store a copy of *flow* with a new id, not live (``flow.copy()``).

        :returns: The copy, as the flow view shows it.
        """
        copy = flow.copy()
        [seq] = self._store_flows([copy])
        return flow_detail(copy, seq)

    # -- loading a file ---------------------------------------------------------

    def load(self, source: IO[bytes], name: str) -> Deferred[dict[str, Any]]:
        """
        Store the flows of a flow file or HAR file (*source*; a HAR when
        *name* ends in ``.har`` or the data starts ``{"log":``, after any
        BOM and white space), with new ids
        for those whose id is taken, :data:`IMPORT_CHUNK` flows a step.
        Lines (or entries) that cannot be read are skipped and named.

        :returns: ``{"loaded", "ids", "skipped", "errors"}``: how many
            flows were stored, their ids (the first :data:`MAX_REPLAY`), how
            many lines or entries were skipped, and the first
            :data:`MAX_ERRORS` reasons.
        :raises ApiError: 413 over :data:`MAX_IMPORT` bytes; 400 for an
            empty file, a HAR file that is not JSON or not HAR, or one in
            which nothing could be read (with the first reason).
        """
        size = source.seek(0, 2)
        source.seek(0)
        if size > MAX_IMPORT:
            raise ApiError(413, f"{name or 'the file'}: larger than "
                           f"{MAX_IMPORT // 1024 // 1024} MiB")
        if size == 0:
            raise ApiError(400, f"{name or 'the file'} is empty")
        errors: list[FlowFileError] = []
        is_har = name.lower().endswith(".har") or bool(_HAR_START.match(source.read(4096)))
        source.seek(0)
        flows: Iterable[HTTPFlow]
        if is_har:
            try:
                flows = from_har(read_har(source), on_error=errors.append)
            except FlowFileError as e:
                raise ApiError(400, f"{name or 'the file'}: {e}") from None
        else:
            flows = read_flows(source, on_error=errors.append)
        loaded: list[str] = []
        done = self._cooperator.cooperate(self._load_steps(iter(flows), loaded)).whenDone()

        def answer(_: object) -> dict[str, Any]:
            kind = "HAR file" if is_har else "flow file"
            if errors and not loaded:
                raise ApiError(400, f"{name or 'the file'}: not a {kind} twistproxy can read: "
                               f"{errors[0]}", skipped=len(errors))
            return {"loaded": len(loaded), "ids": loaded[:MAX_REPLAY], "skipped": len(errors),
                    "errors": [str(e) for e in errors[:MAX_ERRORS]]}

        return done.addCallback(answer)

    def _load_steps(self, flows: Iterator[HTTPFlow], loaded: list[str]) -> Iterator[None]:
        store, live = self._store, self._recorder.live
        seen: set[str] = set()  # the ids this file's flows were stored under
        while chunk := list(islice(flows, IMPORT_CHUNK)):
            fresh = []
            for flow in chunk:
                if flow.id in live or flow.id in seen or store.seq_of(flow.id) is not None:
                    flow = flow.copy()  # a new id: its own row, nothing overwritten
                seen.add(flow.id)
                flow.resume()  # a file's flow is not held (nor live)
                fresh.append(flow)
            self._store_flows(fresh)
            loaded.extend(f.id for f in fresh)
            yield None

    # -- replaying several ------------------------------------------------------

    def replay(self, view: View, body: dict[str, Any]) -> dict[str, Any]:
        """
        Replay the flows ``{"ids": [...]}`` names, or with ``{"matching":
        true}`` those of *view* (the filter's), through the proxy's client
        replay (one after another; each new response recorded on its flow).
        Flows that cannot be replayed (live, held, a body not recorded
        whole, gone) are skipped with their reason.

        :returns: ``{"queued", "skipped": [{"id", "reason"}, ...]}``.
        :raises ApiError: 409 without a proxy to replay through, or for
            more than :data:`MAX_REPLAY` flows; 400 for a body that is
            neither.
        """
        replay = self._replay
        if replay is None:
            raise ApiError(409, "replay is not available here")
        skipped: list[dict[str, str]] = []
        flows: Iterable[HTTPFlow]
        if isinstance(body.get("ids"), list):
            ids = [str(i) for i in body["ids"]]
            _check_count(len(ids), "flows are selected")
            found = []
            for flow_id in ids:
                flow = self._find(flow_id)
                if flow is None:
                    skipped.append({"id": flow_id, "reason": "no such flow"})
                else:
                    found.append(flow)
            flows = found
        elif body.get("matching") is True:
            _check_count(len(view), f"flows match {view.expression!r}" if view.expression
                         else "flows are stored")
            flows = self._store.flows(list(view.seqs))
        else:
            raise ApiError(400, 'expected {"ids": [...]} or {"matching": true}')
        queued = 0
        for flow in flows:
            reason = replay(flow)
            if reason is None:
                queued += 1
            else:
                skipped.append({"id": flow.id, "reason": reason})
        return {"queued": queued, "skipped": skipped}

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
        try:  # decoding no more than can be highlighted
            content = message.get_content(limit=HIGHLIGHT_LIMIT)
        except DecodedTooLarge:
            content = None
        except ValueError:  # shown as it was sent
            content = message.raw_content
        if content is None or len(content) > HIGHLIGHT_LIMIT:
            return succeed({"language": None, "reason": f"larger than {HIGHLIGHT_LIMIT // 1024} "
                         "KiB: shown as plain text"})
        highlight = Highlight(body_text(content, content_type), language)
        done = self._cooperator.cooperate(highlight.steps()).whenDone()
        return done.addCallback(lambda _: {"language": language, "tokens": highlight.tokens,
                                           "complete": highlight.complete})



def _check_count(count: int, what: str) -> None:
    if count > MAX_REPLAY:
        raise ApiError(409, f"{count} {what}: at most {MAX_REPLAY} are replayed at once")


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
