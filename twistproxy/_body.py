# -*- test-case-name: tests.test_body -*-
"""
The body half of :class:`twistproxy.http.Message`: :class:`MessageBody`,
its base class, reads and writes the body through the Content-Encoding
(:mod:`twistproxy._encoding`) and the Content-Type's charset.

Nothing here runs when a message is built: a body is decoded only when
:attr:`MessageBody.content` or :attr:`MessageBody.text` is read, and the
last decoding is kept while neither the raw body nor the coding changes.
"""

from __future__ import annotations

import codecs

from twistproxy import _encoding
from twistproxy.headers import Headers


def content_type_params(content_type: str) -> tuple[str, dict[str, str]]:
    """
    Split a Content-Type value into its media type and its parameters
    (names lower-cased, quotes removed).
    """
    media_type, *params = content_type.split(";")
    parsed = {}
    for param in params:
        key, sep, value = param.partition("=")
        if sep:
            parsed[key.strip().lower()] = value.strip().strip('"')
    return media_type.strip(), parsed


def charset_codec(content_type: str | None) -> str:
    """
    The codec of a Content-Type's ``charset``: Python's name for it, or
    UTF-8 when there is none or Python does not know it.
    """
    if content_type:
        charset = content_type_params(content_type)[1].get("charset")
        if charset:
            try:
                return codecs.lookup(charset).name
            except LookupError:
                pass
    return "utf-8"


def joined(pieces: list[bytes]) -> bytes:
    """The *pieces* of a body as one bytes object, copied only when needed."""
    if len(pieces) == 1:
        return pieces[0]
    return b"".join(pieces)


def capped(pieces: list[bytes], limit: int) -> bytes:
    """The first *limit* bytes of the body in *pieces*: what is recorded of a streamed one."""
    body = joined(pieces)
    return body[:limit] if len(body) > limit else body


def _with_charset(content_type: str, charset: str) -> str:
    """
    Return *content_type* with its ``charset`` parameter set to *charset*.
    """
    parts = [p for p in content_type.split(";") if p.partition("=")[0].strip().lower() != "charset"]
    return "; ".join([parts[0].strip(), *(p.strip() for p in parts[1:]), f"charset={charset}"])


class MessageBody:
    """
    The body of a message, as :class:`twistproxy.http.Message` (its only
    subclass) has it: the raw body, with the Content-Encoding undone by
    :attr:`content` and the charset applied by :attr:`text`.  The subclass
    provides ``headers`` (Content-Encoding, Content-Type and Content-Length
    are read and updated there) and sets every attribute in its
    constructor.

    :ivar raw_content: The body as it travels on the wire (still
        Content-Encoded), or ``None`` if it was streamed and not captured.
    """

    __slots__ = ("raw_content", "_decoded", "_streamed_size")

    # A slot of the subclass, which sets it.
    headers: Headers
    raw_content: bytes | None
    # (raw_content, content-encoding, decoded): the last decoding, reused
    # while neither the raw body (by identity) nor the coding changes.
    _decoded: tuple[bytes, str, bytes] | None
    _streamed_size: int | None

    @property
    def body_size(self) -> int | None:
        """
        How many body bytes the message had on the wire (transfer coding
        removed): the length of :attr:`raw_content`, or for a streamed body
        recorded only in part (:attr:`truncated`) the count the proxy
        relayed; ``None`` when unknown.  Setting the body forgets a count
        that was set.
        """
        size = self._streamed_size
        if size is not None:
            return size
        raw = self.raw_content
        return None if raw is None else len(raw)

    @body_size.setter
    def body_size(self, size: int | None) -> None:
        self._streamed_size = size

    @property
    def truncated(self) -> bool:
        """
        Whether :attr:`raw_content` holds only the start of the body: a
        streamed body longer than the body limit is recorded up to the
        limit, and :attr:`body_size` says how long it was.
        """
        size = self._streamed_size
        raw = self.raw_content
        return size is not None and raw is not None and size > len(raw)

    def _content_encoding(self) -> str | None:
        """
        :returns: The Content-Encoding value (all fields joined), or
            ``None`` if there is none.
        """
        values = self.headers.get_all_raw(b"content-encoding")
        if not values:
            return None
        return b",".join(values).decode("latin-1")

    def _update_content_length(self) -> None:
        """
        Set an existing Content-Length header to the raw body's length.
        """
        if self.raw_content is not None and b"content-length" in self.headers:
            self.headers[b"Content-Length"] = str(len(self.raw_content))

    def get_content(self, strict: bool = True, limit: int | None = None) -> bytes | None:
        """
        The body with its Content-Encoding undone.

        :param strict: Raise if the body does not decode; otherwise return
            the raw body in that case.
        :param limit: The most bytes the decoded body may have (a small
            compressed body can decode to gigabytes): past it, the body is
            not decoded (not even in part) and counts as not decoding.
        :returns: The decoded body, or ``None`` if the body was not captured.
        :raises ValueError: if *strict* and the coding is unknown or the body
            is corrupt (:exc:`~twistproxy._encoding.DecodedTooLarge` past
            *limit*).
        """
        raw = self.raw_content
        if raw is None:
            return None
        encoding = self._content_encoding()
        if not encoding:
            return raw
        cached = self._decoded
        if cached is not None and cached[0] is raw and cached[1] == encoding:
            if limit is None or len(cached[2]) <= limit:
                return cached[2]
            if strict:
                raise _encoding.DecodedTooLarge(
                    f"the body decodes to more than {limit:,} bytes")
            return raw
        try:
            decoded = _encoding.decode(raw, encoding, limit)
        except ValueError:
            if strict:
                raise
            return raw
        self._decoded = (raw, encoding, decoded)
        return decoded

    def set_content(self, value: bytes | None) -> None:
        """
        Replace the body, encoding it with the current Content-Encoding.  If
        that coding cannot be applied, the Content-Encoding header is removed
        and the body is stored as given.  An existing Content-Length header
        is updated to the new raw length.

        :param value: The plain body, or ``None`` for "not captured".
        :raises TypeError: if *value* is a ``str`` (use :attr:`text`).
        """
        self._streamed_size = None
        if value is None:
            self.raw_content = None
            return
        if isinstance(value, str):
            raise TypeError("message content must be bytes, not str; use .text instead")
        value = bytes(value)
        encoding = self._content_encoding()
        raw = value
        if encoding:
            try:
                raw = _encoding.encode(value, encoding)
            except ValueError:
                del self.headers[b"content-encoding"]
            else:
                self._decoded = (raw, encoding, value)
        self.raw_content = raw
        self._update_content_length()

    @property
    def content(self) -> bytes | None:
        """
        The body with its Content-Encoding undone, or ``None`` if it was not
        captured; reading raises :exc:`ValueError` if it does not decode
        (see :meth:`get_content`).  Setting it encodes the new body (see
        :meth:`set_content`).
        """
        return self.get_content()

    @content.setter
    def content(self, value: bytes | None) -> None:
        self.set_content(value)

    def _charset(self) -> str:
        """
        :returns: The codec for :attr:`text`: the Content-Type charset if
            Python knows it (GB2312 and GBK read as their superset GB18030),
            else UTF-8.
        """
        content_type = self.headers.get_raw(b"content-type")
        name = charset_codec(content_type.decode("latin-1") if content_type else None)
        return "gb18030" if name in ("gb2312", "gbk") else name

    def get_text(self, strict: bool = True) -> str | None:
        """
        The decoded body as text, in the Content-Type's charset (UTF-8 if
        there is none or Python does not know it), undecodable bytes kept as
        surrogate escapes.

        :param strict: As for :meth:`get_content`.
        :returns: The text, or ``None`` if the body was not captured.
        :raises ValueError: as :meth:`get_content` does.
        """
        content = self.get_content(strict)
        if content is None:
            return None
        return content.decode(self._charset(), "surrogateescape")

    def set_text(self, value: str | None) -> None:
        """
        Replace the body with *value* in the Content-Type's charset (as for
        :meth:`get_text`).  If that charset cannot encode it, UTF-8 is used
        and the Content-Type's charset changed to ``utf-8``.

        :param value: The text, or ``None`` for "not captured".
        :raises ValueError: if even UTF-8 cannot encode *value* (lone
            surrogates other than escapes).
        """
        if value is None:
            self.set_content(None)
            return
        charset = self._charset()
        try:
            content = value.encode(charset, "surrogateescape")
        except UnicodeEncodeError:
            if charset == "utf-8":
                raise
            content = value.encode("utf-8", "surrogateescape")
            content_type = self.headers.get(b"content-type")
            if content_type is not None:
                self.headers[b"Content-Type"] = _with_charset(content_type, "utf-8")
        self.set_content(content)

    @property
    def text(self) -> str | None:
        """
        The decoded body as text (see :meth:`get_text`); setting it encodes
        the text (see :meth:`set_text`).
        """
        return self.get_text()

    @text.setter
    def text(self, value: str | None) -> None:
        self.set_text(value)

    def decode(self, strict: bool = True) -> None:
        """
        Undo the Content-Encoding for good: store the decoded body as the
        raw body and remove the Content-Encoding header (updating an
        existing Content-Length).  Does nothing if the body was not captured
        or is not encoded.

        :param strict: Raise if the body does not decode; otherwise leave the
            message unchanged in that case.
        :raises ValueError: if *strict* and the body does not decode.
        """
        if self.raw_content is None or not self._content_encoding():
            return
        try:
            decoded = self.get_content(strict=True)
        except ValueError:
            if strict:
                raise
            return
        del self.headers[b"content-encoding"]
        self.raw_content = decoded
        self._update_content_length()

    def encode(self, encoding: str) -> None:
        """
        Encode the body with *encoding* (replacing any existing coding, which
        is undone first) and set the Content-Encoding header; ``identity``
        removes it.  An existing Content-Length is updated.

        :param encoding: A coding :func:`twistproxy._encoding.available`
            lists.
        :raises ValueError: if the coding is unknown or unavailable, the
            current body does not decode, or the body was not captured.
        """
        content = self.get_content(strict=True)
        if content is None:
            raise ValueError("cannot encode a body that was not captured")
        raw = _encoding.encode(content, encoding)
        encoding = encoding.strip()
        if encoding.lower() == "identity":
            if b"content-encoding" in self.headers:
                del self.headers[b"content-encoding"]
        else:
            self.headers[b"Content-Encoding"] = encoding
            self._decoded = (raw, encoding, content)
        self.raw_content = raw
        self._update_content_length()
