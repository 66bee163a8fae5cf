# -*- test-case-name: tests.test_hooks -*-
"""
The hooks' names, and the check of an addon at registration
(:func:`validate_addon`, public as :func:`twistproxy.hooks.validate_addon`):
a misspelt hook, a hook-named attribute that is not callable, or a
mitmproxy hook that twistproxy does not implement is refused, instead of
being ignored silently.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable
from types import ModuleType

from twistproxy.errors import AddonError

HOOKS: tuple[str, ...] = (
    "client_connected",
    "client_disconnected",
    "server_connected",
    "server_disconnected",
    "http_connect",
    "requestheaders",
    "request",
    "responseheaders",
    "response",
    "error",
    "websocket_start",
    "websocket_message",
    "websocket_end",
)
"""Every flow and connection hook name, in the order a proxied request meets them."""

LIFECYCLE_HOOKS: tuple[str, ...] = ("load", "configure", "running", "done")
"""
The lifecycle hooks, in the order an addon meets them; run by the
:class:`~twistproxy.lifecycle.AddonManager`, not by the hook chain.
"""

UNSUPPORTED_HOOKS: frozenset[str] = frozenset({
    # Connections and CONNECT.
    "server_connect", "server_connect_error",
    "http_connect_upstream", "http_connected", "http_connect_error",
    # TLS.
    "tls_clienthello", "tls_start_client", "tls_start_server",
    "tls_established_client", "tls_established_server",
    "tls_failed_client", "tls_failed_server",
    # Other protocols.
    "dns_request", "dns_response", "dns_error",
    "tcp_start", "tcp_message", "tcp_end", "tcp_error",
    "udp_start", "udp_message", "udp_end", "udp_error",
    "quic_start_client", "quic_start_server",
    "socks5_auth",
    # Advanced lifecycle.
    "next_layer", "update", "add_log",
})
"""
mitmproxy's hooks that twistproxy does not call (mitmproxy's event list):
an addon defining one is refused, since it would never run.
"""


def addon_name(addon: object) -> str:
    """
    Name *addon* in logs and errors: its class's qualified name, or the
    ``repr`` of a module.
    """
    if isinstance(addon, ModuleType):
        return repr(addon)
    return type(addon).__qualname__


_ALL_HOOKS = (*HOOKS, *LIFECYCLE_HOOKS)


def _normalise(name: str) -> str:
    """
    Reduce a method name to compare it with the hooks' names: without a
    leading ``on``/``on_``, without underscores, lowercase.
    """
    if name.startswith("on_"):
        name = name[3:]
    elif name.startswith("on") and name[2:3].isupper():
        name = name[2:]
    return name.replace("_", "").lower()


_NORMALISED_HOOKS: dict[str, str] = {_normalise(hook): hook for hook in _ALL_HOOKS}


def _resembled_hook(name: str) -> str | None:
    """
    The hook *name* looks like a misspelling of, if any.
    """
    close = difflib.get_close_matches(name, HOOKS, n=1, cutoff=0.8)
    if close:
        return close[0]
    # The lifecycle hooks' names are short words: ``reload`` is no typo.
    close = difflib.get_close_matches(name, LIFECYCLE_HOOKS, n=1, cutoff=0.85)
    if close:
        return close[0]
    normal = _normalise(name)
    if normal in _NORMALISED_HOOKS:
        return _NORMALISED_HOOKS[normal]
    # Stricter than for the name as written: normalising shortens it, and
    # helpers such as ``response_time`` or ``response_body`` must pass.
    close = difflib.get_close_matches(normal, _NORMALISED_HOOKS, n=1, cutoff=0.85)
    if close:
        return _NORMALISED_HOOKS[close[0]]
    return None


_NOT_ADDONS = (str, bytes, bytearray, int, float, complex, list, tuple, dict, set, frozenset,
               type(None))
"""Values that are data, never addons: ``addons = ["str", 42]`` is refused."""


def validate_addon(addon: object, *, ignore: Iterable[str] = ()) -> None:
    """
    Check that *addon* has no misspelt hook, that its hooks are callable,
    and that it defines no mitmproxy hook twistproxy does not implement.

    A public method (a callable attribute whose name does not start with
    ``_``) whose name is close to a hook's name but is not one is taken for
    a misspelling: ``reqeust``, ``Request``, ``request_headers``,
    ``client_connect``, ``on_request``. Unrelated public methods are
    accepted; name a helper that looks like a hook (``respond``) with a
    leading underscore. A method named after one of
    :data:`UNSUPPORTED_HOOKS` (``tls_clienthello``, ``update``...) is
    refused: it would never be called. An attribute named like a lifecycle
    hook that is not callable (``self.running = True``) is no hook, and
    passes.

    :param addon: The addon, or a class whose instances are to be used as
        hooks.
    :param ignore: Attribute names not to check, such as those of a base
        class the addon is not responsible for.
    :raises AddonError: naming the attribute and the hook it resembles (or
        saying twistproxy does not implement it), if *addon* has a misspelt
        or unimplemented hook or a hook-named attribute that is not
        callable; or if *addon* is a value such as a string or a number.
    """
    if isinstance(addon, _NOT_ADDONS):
        raise AddonError(f"{addon!r} is a {type(addon).__name__}, not an addon object")
    skipped = frozenset(ignore)
    for name in dir(addon):
        if name.startswith("_") or name in skipped:
            continue
        if name in _ALL_HOOKS or name in UNSUPPORTED_HOOKS:
            suggestion: str | None = name
        else:
            suggestion = _resembled_hook(name)
            if suggestion is None:
                continue
        try:
            value = getattr(addon, name)
        except AttributeError:
            continue
        if name in UNSUPPORTED_HOOKS:
            if callable(value):
                raise AddonError(
                    f"{_name_of(addon)}.{name}: mitmproxy's {name!r} hook is not "
                    "implemented by twistproxy, so it would never be called"
                )
        elif name == suggestion:
            # ``self.running = True`` or ``self.done = Deferred()`` is state,
            # not a lifecycle hook: those short words are common names.
            if not callable(value) and name not in LIFECYCLE_HOOKS:
                raise AddonError(
                    f"{_name_of(addon)}.{name} is named like a hook but is not callable"
                )
        elif callable(value):
            raise AddonError(
                f"{_name_of(addon)}.{name} is not a hook; did you mean {suggestion!r}?"
            )


def _name_of(addon: object) -> str:
    """
    Name *addon* in a validation error: a class by its own name, anything
    else as :func:`addon_name` does.
    """
    if isinstance(addon, type):
        return addon.__qualname__
    return addon_name(addon)
