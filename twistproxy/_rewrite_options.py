# -*- test-case-name: tests.test_rewrites_options -*-
"""
The twistd options of the built-in rewrites (``--map-local``,
``--map-remote``, ``--modify-headers``, ``--modify-body``, ``--block-list``,
``--anticache``, ``--stickycookie``), with mitmproxy's syntax:
:class:`RewriteOptions`, a base of :class:`twistproxy.options.Options`.

Each spec is read when its option is (a bad one is a one-line usage error
naming the option); :meth:`RewriteOptions.rewrite_addons` makes the addons,
in the order they run (mitmproxy's): block list, anticache, map_remote,
map_local, modify_body, modify_headers, stickycookie.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.python import usage

from twistproxy.addons.maplocal import MapLocal, parse_local_spec
from twistproxy.addons.rewrites import (
    AntiCache,
    BlockList,
    MapRemote,
    ModifyBody,
    ModifyHeaders,
    parse_block_spec,
    parse_body_spec,
    parse_header_spec,
    parse_remote_spec,
)
from twistproxy.addons.stickycookie import StickyCookie

__all__ = ["RewriteOptions"]

# Option name, the addon taking its specs: in the order the addons run.
_REPEATED: tuple[tuple[str, Callable[[list[Any]], object]], ...] = (
    ("block-list", BlockList),
    ("map-remote", MapRemote),
    ("map-local", MapLocal),
    ("modify-body", ModifyBody),
    ("modify-headers", ModifyHeaders),
)


def _read(option: str, spec: str, parse: Callable[[str], Any]) -> Any:
    """*spec* parsed, or a one-line usage error naming *option*."""
    try:
        return parse(spec)
    except ValueError as e:
        raise usage.UsageError(f"--{option} {spec!r}: {e}") from None


class RewriteOptions(usage.Options):
    """
    The rewrite options of ``twistd twistproxy`` (see the module docstring).
    """

    optFlags = [
        ["anticache", None,
         "Remove If-None-Match and If-Modified-Since from requests (no 304 answers)."],
    ]

    def _add(self, option: str, spec: str, parse: Callable[[str], Any]) -> None:
        self.setdefault(option, []).append(_read(option, spec, parse))

    def opt_map_local(self, spec: str) -> None:
        """Answer from disk: |[FILTER|]URL-REGEX|FILE-OR-DIR (see docs/rewrites.rst); repeatable."""
        self._add("map-local", spec, parse_local_spec)

    def opt_map_remote(self, spec: str) -> None:
        """Rewrite URLs: |[FILTER|]URL-REGEX|REPLACEMENT (the Host follows); repeatable."""
        self._add("map-remote", spec, parse_remote_spec)

    def opt_modify_headers(self, spec: str) -> None:
        """Set a header: |[FILTER|]NAME|[@]VALUE (empty VALUE: remove it); repeatable."""
        self._add("modify-headers", spec, parse_header_spec)

    def opt_modify_body(self, spec: str) -> None:
        """Replace in bodies: |[FILTER|]REGEX|[@]REPLACEMENT (buffers what matches); repeatable."""
        self._add("modify-body", spec, parse_body_spec)

    def opt_block_list(self, spec: str) -> None:
        """Block requests: |FILTER|STATUS (444: close without an answer); repeatable."""
        self._add("block-list", spec, parse_block_spec)

    def opt_stickycookie(self, flow_filter: str) -> None:
        """Remember servers' cookies and send them with the requests FILTER matches."""
        self["stickycookie"] = _read("stickycookie", flow_filter, StickyCookie)

    def rewrite_addons(self) -> list[object]:
        """The rewrite addons the options ask for, in the order they run."""
        addons: list[object] = []
        for option, addon in _REPEATED:
            if self.get(option):
                addons.append(addon(self[option]))
            if option == "block-list" and self.get("anticache"):
                addons.append(AntiCache())
        if self.get("stickycookie") is not None:
            addons.append(self["stickycookie"])
        return addons
