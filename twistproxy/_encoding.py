# -*- test-case-name: tests.test_encoding -*-
"""
Content-Encoding codecs for message bodies.

:func:`decode` and :func:`encode` turn a body into and out of the coding
named by a ``Content-Encoding`` value: ``identity``, ``gzip`` (and its alias
``x-gzip``), ``deflate``, ``br`` and ``zstd``.  ``br`` needs the optional
``brotli`` package and ``zstd`` the optional ``zstandard`` package;
:func:`available` says which codings this process can handle.

A value may list several codings (``"gzip, br"``), in the order they were
applied, as RFC 9110 section 8.4 allows.  Names are case-insensitive and
surrounding whitespace is ignored.  Every failure (an unknown or unavailable
coding, or a body that does not decode) is reported as :exc:`ValueError`.
"""

from __future__ import annotations

import gzip
import zlib
from collections.abc import Callable

try:
    import brotli
except ImportError:  # pragma: no cover - depends on the installation
    _HAVE_BROTLI = False
else:
    _HAVE_BROTLI = True

try:
    import zstandard
except ImportError:  # pragma: no cover - depends on the installation
    _HAVE_ZSTANDARD = False
else:
    _HAVE_ZSTANDARD = True


class DecodedTooLarge(ValueError):
    """A body decodes to more than the limit :func:`decode` was given."""


def _identity(data: bytes) -> bytes:
    return data


def _too_large(size: int | None, limit: int | None) -> None:
    if limit is not None and size is not None and size > limit:
        raise DecodedTooLarge(f"the body decodes to more than {limit:,} bytes")


def _zlib_stream(data: bytes, wbits: int, limit: int | None, what: str) -> bytes:
    """Every member of a zlib/gzip stream, *limit* bytes out at most."""
    out: list[bytes] = []
    size = 0
    while True:
        decompressor = zlib.decompressobj(wbits)
        room = 0 if limit is None else limit - size + 1
        chunk = decompressor.decompress(data, room)
        size += len(chunk)
        _too_large(size, limit)
        out.append(chunk)
        if decompressor.unconsumed_tail:  # stopped at the limit's byte: more follows
            raise DecodedTooLarge(f"the body decodes to more than {limit:,} bytes")
        if not decompressor.eof:
            raise ValueError(f"invalid {what} body: truncated")
        data = decompressor.unused_data
        if wbits != _GZIP or not data.strip(b"\0"):  # gzip: members follow (zero padding ends)
            return b"".join(out)


_GZIP = 16 + zlib.MAX_WBITS


def _decode_gzip(data: bytes, limit: int | None = None) -> bytes:
    if limit is None:
        try:
            return gzip.decompress(data)
        except (OSError, EOFError, zlib.error) as e:
            raise ValueError(f"invalid gzip body: {e}") from e
    try:
        return _zlib_stream(data, _GZIP, limit, "gzip")
    except zlib.error as e:
        raise ValueError(f"invalid gzip body: {e}") from e


def _encode_gzip(data: bytes) -> bytes:
    # mtime=0 keeps the output reproducible (and reads no clock).
    return gzip.compress(data, compresslevel=6, mtime=0)


def _decode_deflate(data: bytes, limit: int | None = None) -> bytes:
    # RFC 9110 says "deflate" is zlib-wrapped, but many servers send a raw
    # deflate stream; accept both.
    try:
        return _zlib_stream(data, zlib.MAX_WBITS, limit, "deflate")
    except zlib.error:
        pass
    try:
        return _zlib_stream(data, -zlib.MAX_WBITS, limit, "deflate")
    except zlib.error as e:
        raise ValueError(f"invalid deflate body: {e}") from e


def _encode_deflate(data: bytes) -> bytes:
    return zlib.compress(data, 6)


def _decode_br(data: bytes, limit: int | None = None) -> bytes:
    if limit is None:
        try:
            result: bytes = brotli.decompress(data)
        except brotli.error as e:
            raise ValueError(f"invalid br body: {e}") from e
        return result
    decompressor = brotli.Decompressor()
    try:
        out = [decompressor.process(data, output_buffer_limit=limit + 1)]
        size = len(out[0])
        _too_large(size, limit)
        while not decompressor.can_accept_more_data():
            out.append(decompressor.process(b"", output_buffer_limit=limit + 1 - size))
            size += len(out[-1])
            _too_large(size, limit)
    except brotli.error as e:
        raise ValueError(f"invalid br body: {e}") from e
    if not decompressor.is_finished():
        raise ValueError("invalid br body: truncated")
    return b"".join(out)


def _encode_br(data: bytes) -> bytes:
    result: bytes = brotli.compress(data)
    return result


def _decode_zstd(data: bytes, limit: int | None = None) -> bytes:
    # A streaming decompressor copes with frames that do not record their
    # content size (``ZstdDecompressor.decompress`` refuses those); one
    # decompressor per frame so that a truncated last frame is noticed.
    decompressor = zstandard.ZstdDecompressor()
    if limit is not None:  # its size first, reading no more than the limit allows
        try:
            with decompressor.stream_reader(data, read_across_frames=True) as reader:
                _too_large(len(reader.read(limit + 1)), limit)
        except zstandard.ZstdError as e:
            raise ValueError(f"invalid zstd body: {e}") from e
    chunks: list[bytes] = []
    try:
        while data:
            obj = decompressor.decompressobj()
            chunks.append(obj.decompress(data))
            if not obj.eof:
                raise ValueError("invalid zstd body: truncated frame")
            data = obj.unused_data
    except zstandard.ZstdError as e:
        raise ValueError(f"invalid zstd body: {e}") from e
    return b"".join(chunks)


def _encode_zstd(data: bytes) -> bytes:
    result: bytes = zstandard.ZstdCompressor().compress(data)
    return result


_Codec = tuple[Callable[[bytes, int | None], bytes], Callable[[bytes], bytes]]

_CODECS: dict[str, _Codec] = {
    "identity": (lambda data, limit: data, _identity),
    "gzip": (_decode_gzip, _encode_gzip),
    "x-gzip": (_decode_gzip, _encode_gzip),
    "deflate": (_decode_deflate, _encode_deflate),
}
if _HAVE_BROTLI:
    _CODECS["br"] = (_decode_br, _encode_br)
if _HAVE_ZSTANDARD:
    _CODECS["zstd"] = (_decode_zstd, _encode_zstd)

_AVAILABLE = frozenset(_CODECS)

# Known codings whose support package is missing, for a clearer message.
_OPTIONAL = {"br": "brotli", "zstd": "zstandard"}


def available() -> frozenset[str]:
    """
    The Content-Encoding names this process can decode and encode.

    :returns: Lower-case coding names, always including ``identity``,
        ``gzip``, ``x-gzip`` and ``deflate``; ``br`` and ``zstd`` only when
        their packages are importable.
    """
    return _AVAILABLE


def _codecs(encoding: str) -> list[_Codec]:
    """
    Look up the codecs for a Content-Encoding value, in the order the
    codings were applied.

    :param encoding: A Content-Encoding value, possibly a comma-separated
        list.
    :returns: One codec per listed coding (``identity`` entries skipped).
    :raises ValueError: if a coding is unknown or unavailable.
    """
    codecs = []
    for name in encoding.split(","):
        name = name.strip().lower()
        if name == "identity":
            continue
        try:
            codecs.append(_CODECS[name])
        except KeyError:
            if name in _OPTIONAL:
                raise ValueError(
                    f"content encoding {name!r} needs the {_OPTIONAL[name]!r} package"
                ) from None
            raise ValueError(f"unknown content encoding {name!r}") from None
    return codecs


def decode(data: bytes, encoding: str, limit: int | None = None) -> bytes:
    """
    Undo the Content-Encoding *encoding* applied to *data*.

    :param data: The body as it travels on the wire.
    :param encoding: A Content-Encoding value, for example ``"gzip"`` or
        ``"gzip, br"``.
    :param limit: The most bytes the decoded body (and each step towards
        it) may have: a small body can decode to gigabytes (a
        "decompression bomb"), and with a limit no more than it is ever made.
    :returns: The decoded body.  An empty body decodes to ``b""`` under any
        known coding (HEAD responses and 204s carry the header but no body).
    :raises DecodedTooLarge: if the decoded body would pass *limit* (a
        :exc:`ValueError`).
    :raises ValueError: if a coding is unknown or unavailable, or *data* is
        not valid for it.
    """
    codecs = _codecs(encoding)
    if not data:
        return b""
    for decoder, _ in reversed(codecs):
        data = decoder(data, limit)
    return data


def encode(data: bytes, encoding: str) -> bytes:
    """
    Apply the Content-Encoding *encoding* to *data*.

    :param data: The plain body.
    :param encoding: A Content-Encoding value, for example ``"gzip"``;
        ``deflate`` produces the zlib-wrapped form.
    :returns: The encoded body.
    :raises ValueError: if a coding is unknown or unavailable.
    """
    for _, encoder in _codecs(encoding):
        data = encoder(data)
    return data
