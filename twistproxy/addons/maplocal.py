# -*- test-case-name: tests.test_rewrites -*-
"""
map_local: answer requests with files from disk (mitmproxy's ``map_local``),
with :class:`MapLocal`.

A spec is ``SEP[filterSEP]url-regexSEPpath`` (see
:mod:`twistproxy.addons.rewrites` for the separator and the filter):
``|example.com/js|~/js`` serves ``https://example.com/js/app.js`` from
``~/js/app.js``.
"""

from __future__ import annotations

import mimetypes
import re
import urllib.parse
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import attrs
from twisted.logger import Logger

from twistproxy.addons.rewrites import _acting, _compile, _matches, _specs, split_spec
from twistproxy.filters import Filter
from twistproxy.hooks import Addon
from twistproxy.http import Response

__all__ = ["LocalSpec", "MapLocal", "file_candidates", "parse_local_spec"]

_log = Logger(namespace="twistproxy.rewrites")

_UNSAFE = re.compile(r"[^0-9a-zA-Z\-_.=(),/]")


@attrs.frozen
class LocalSpec:
    """
    One map_local rule.

    :ivar filter: Which requests it applies to (``None``: all).
    :ivar pattern: Searched in the request's URL (``pretty_url``); it must
        match for the rule to apply.
    :ivar path: The file served, or the directory files are served from
        (absolute, resolved when the rule was read).
    """

    filter: Filter | None
    pattern: re.Pattern[str]
    path: Path


def parse_local_spec(option: str) -> LocalSpec:
    """
    Read a map_local spec such as ``|~u example.com/js|/path/dir`` or
    ``|example.com/main.js|~/main.js``.

    :raises ValueError: with a one-line reason, also when the path does not
        exist.
    """
    flow_filter, (regex, path) = split_spec(option, ["url-regex", "path"])
    pattern = _compile("url-regex", regex)
    try:
        resolved = Path(path).expanduser().resolve(strict=True)
    except (OSError, RuntimeError) as e:
        raise ValueError(f"{path}: {getattr(e, 'strerror', None) or e}") from None
    return LocalSpec(flow_filter, pattern, resolved)


def _safe_join(root: Path, untrusted: str) -> Path | None:
    """
    *untrusted* (a relative ``/``-separated path) under *root*, or ``None``
    if it would leave *root* (a ``..`` segment) or holds a NUL.
    """
    parts = [part for part in untrusted.split("/") if part not in ("", ".")]
    if "\0" in untrusted or ".." in parts:
        return None
    return root.joinpath(*parts)


def file_candidates(url: str, spec: LocalSpec) -> list[Path] | None:
    """
    The files that may answer *url* (which *spec*'s pattern matches) under
    *spec*'s directory, best first (mitmproxy's rule): the part of the URL
    after the match, or the pattern's first group if it has one (the query
    string then kept), percent-decoded; then that with ``/index.html``;
    then both with characters other than ``[0-9a-zA-Z-_.=(),/]`` made
    ``_``.  Nothing after the match: ``index.html``.

    :returns: The candidates, or ``None`` if the request's path would leave
        the directory (``..``).
    """
    match = spec.pattern.search(url)
    assert match is not None
    if match.groups():
        suffix = match.group(1) or ""
    else:
        suffix = url[match.end():].split("?", 1)[0]
    suffix = suffix.strip("/")
    if not suffix:
        return [spec.path / "index.html"]
    decoded = urllib.parse.unquote(suffix, errors="surrogateescape")
    names = [decoded, f"{decoded}/index.html"]
    escaped = _UNSAFE.sub("_", decoded)
    if escaped != decoded:
        names += [escaped, f"{escaped}/index.html"]
    joined = [_safe_join(spec.path, name) for name in names]
    if any(path is None for path in joined):
        return None
    return [path for path in joined if path is not None]


class MapLocal(Addon):
    """
    Answer requests from local files, in ``requestheaders`` (the origin is
    not contacted; a request body is discarded).

    For the first rule whose filter and URL regex match: a file rule serves
    its file; a directory rule serves the first of
    :func:`file_candidates` that is a file, its ``Content-Type`` guessed
    from its name.  When rules matched but none had a file, the answer is
    ``404``; a request path that would leave a rule's directory (``..``,
    also percent-encoded) is ``404`` too, and is logged.  Files are read
    whole, each time (no caching: changes show at once).
    """

    def __init__(self, specs: Iterable[str | LocalSpec]) -> None:
        """
        :param specs: Rules as text (:func:`parse_local_spec`) or parsed.
        :raises ValueError: for a rule that cannot be read.
        """
        self.specs = _specs(specs, parse_local_spec)

    def requestheaders(self, flow: Any) -> None:
        """Answer *flow* from a file if a rule matches."""
        if not _acting(flow):
            return
        url = flow.request.pretty_url
        tried: list[Path] = []
        for spec in self.specs:
            if not (_matches(spec.filter, flow) and spec.pattern.search(url)):
                continue
            if spec.path.is_file():
                candidates: list[Path] | None = [spec.path]
            else:
                candidates = file_candidates(url, spec)
            if candidates is None:
                _log.warn("map_local: {url} leaves {directory}; answered 404",
                          url=url, directory=str(spec.path), flow_id=flow.id)
                flow.response = Response.make(404)
                return
            tried.extend(candidates)
            for candidate in candidates:
                if not candidate.is_file():
                    continue
                try:
                    content = candidate.read_bytes()
                except OSError as e:
                    _log.warn("map_local: cannot read {path}: {error}", path=str(candidate),
                              error=e.strerror or str(e), flow_id=flow.id)
                    continue
                headers = {}
                media_type, _ = mimetypes.guess_type(candidate.name)
                if media_type:
                    headers["Content-Type"] = media_type
                flow.response = Response.make(200, content, headers)
                return
        if tried:
            _log.info("map_local: none of {paths} is a file; answered 404",
                      paths=", ".join(map(str, tried)), flow_id=flow.id)
            flow.response = Response.make(404)
