# -*- test-case-name: tests.test_web_api,tests.e2e.test_web_api_e2e -*-
"""
Syntax highlighting of bodies for the web UI's flow view, by Pygments:
HTML, XML, CSS and JavaScript bodies become a list of ``[class, text]``
tokens that the page puts in ``<span>`` elements as text (never as
markup), so a recorded page cannot run in the UI's origin.

The work is bounded: bodies over :data:`HIGHLIGHT_LIMIT` bytes are not
highlighted, and at most :data:`MAX_TOKENS` tokens are made (the rest of
the text follows as one plain token).  :meth:`Highlight.steps` lexes a few
hundred tokens a step, so that a ``Cooperator`` on the reactor can spread
the work over turns (0.5 to 0.9 s of lexing for 256 KiB of HTML, CSS or
JavaScript, measured on a shared 2-core machine).
"""

from __future__ import annotations

from collections.abc import Iterator
from functools import cache, lru_cache
from typing import Any

from pygments.lexer import Lexer
from pygments.lexers import get_lexer_by_name
from pygments.token import Token

from twistproxy._body import charset_codec, content_type_params

HIGHLIGHT_LIMIT = 256 * 1024
"""The largest body (bytes, decoded) that is highlighted; larger ones are shown as plain text."""

MAX_TOKENS = 50_000
"""The most tokens one body is cut into; the rest of it follows as one plain token."""

STEP = 500
"""Tokens lexed in one step of :meth:`Highlight.steps`."""

_LANGUAGES = {
    "text/html": "html",
    "application/xhtml+xml": "html",
    "text/xml": "xml",
    "application/xml": "xml",
    "text/css": "css",
    "text/javascript": "javascript",
    "application/javascript": "javascript",
    "application/x-javascript": "javascript",
    "application/ecmascript": "javascript",
    "text/ecmascript": "javascript",
}

# Pygments' token types, coarsely: the page styles these few classes.  The
# first entry a type is (or descends from) names its class; others are plain.
_CLASSES: list[tuple[Any, str]] = [
    (Token.Comment, "c"),
    (Token.Keyword, "k"),
    (Token.Name.Tag, "t"),
    (Token.Name.Attribute, "a"),
    (Token.Name.Entity, "e"),
    (Token.Name.Builtin, "b"),
    (Token.Name.Function, "f"),
    (Token.Name.Class, "f"),
    (Token.Literal.String, "s"),
    (Token.Literal.Number, "m"),
    (Token.Operator, "o"),
    (Token.Punctuation, "p"),
]

CLASSES = frozenset(name for _, name in _CLASSES) | {""}
"""Every class a token can have (``""``: plain text)."""


def language_of(content_type: str | None) -> str | None:
    """
    The language a body of *content_type* is highlighted as (``"html"``,
    ``"xml"``, ``"css"``, ``"javascript"``), or ``None`` for any other
    type (JSON is pretty-printed by the page instead).
    """
    if not content_type:
        return None
    media_type = content_type_params(content_type)[0].lower()
    language = _LANGUAGES.get(media_type)
    if language is None and media_type.endswith("+xml") and not media_type.startswith("image/"):
        language = "xml"
    return language


def body_text(content: bytes, content_type: str | None) -> str:
    """*content* as text in *content_type*'s charset (UTF-8 by default), bad bytes replaced."""
    return content.decode(charset_codec(content_type), "replace")


@cache
def _lexer(language: str) -> Lexer:
    return get_lexer_by_name(language, stripnl=False, ensurenl=False)


@lru_cache(maxsize=512)
def _class_of(ttype: Any) -> str:
    for parent, name in _CLASSES:
        if ttype in parent:
            return name
    return ""


class Highlight:
    """
    One text cut into highlighted tokens, in steps.

    :ivar language: The language it is lexed as.
    :ivar tokens: ``[class, text]`` pairs (adjacent ones of the same class
        merged); once :meth:`steps` is done, their texts joined are the
        text.
    :ivar complete: Whether every token was made (``False``: past
        :data:`MAX_TOKENS`, the rest of the text is the last, plain token).
    """

    def __init__(self, text: str, language: str, *, max_tokens: int = MAX_TOKENS,
                 step: int = STEP) -> None:
        self.language = language
        self.tokens: list[list[str]] = []
        self.complete = True
        self._text = text
        self._max_tokens = max_tokens
        self._step = step

    def steps(self) -> Iterator[None]:
        """Lex the text, :data:`STEP` tokens a step (run it to its end)."""
        tokens = self.tokens
        text = self._text
        made = 0
        end = 0
        for index, ttype, value in _lexer(self.language).get_tokens_unprocessed(text):
            if made == self._max_tokens:
                self.complete = False
                break
            name = _class_of(ttype)
            if tokens and tokens[-1][0] == name:
                tokens[-1][1] += value
            else:
                tokens.append([name, value])
            end = index + len(value)
            made += 1
            if made % self._step == 0:
                yield None
        if end < len(text):  # past the token limit, or what a lexer left (none should)
            tokens.append(["", text[end:]])

    def run(self) -> Highlight:
        """Make every token now (for tests and small texts); returns itself."""
        for _ in self.steps():
            pass
        return self
