# -*- test-case-name: tests.test_errors -*-
"""
Every failure twistproxy reports on purpose, one class per failure.

Each class carries the HTTP status and reason phrase the proxy answers with
when that failure ends a request before any response byte was sent.
Transport errors (refused connections, DNS failures, timeouts) are translated
into this vocabulary in one place, :func:`upstream_error`, and a failure is
turned into a status line by :func:`error_status`.
"""

from __future__ import annotations

from collections.abc import Sequence

from twisted.internet import error as _ierror
from twisted.python.failure import Failure


class TwistProxyError(Exception):
    """
    Base class for every exception twistproxy raises on purpose.

    :cvar status: The status code the proxy answers with (a class's own;
        :class:`UpstreamProxyRefused` carries the upstream proxy's).
    :cvar phrase: The reason phrase of that status line.
    """

    status: int = 500
    phrase: bytes = b"Internal Server Error"


class BadRequestTarget(TwistProxyError):
    """
    The client's request-target cannot be proxied: it is not in absolute
    form, names an unsupported scheme, or has no usable host or port.
    """

    status, phrase = 400, b"Bad Request"


class BadFraming(TwistProxyError):
    """
    The client's request is framed in a way the proxy will not relay: a
    transfer coding other than ``chunked`` (or any in HTTP/1.0), or a
    ``Content-Length`` that is not a number in range.  Two parsers could
    disagree about where such a body ends, which is how requests are
    smuggled.
    """

    status, phrase = 400, b"Bad Request"


class RequestBodyTimeout(TwistProxyError):
    """
    The client sent its request body too slowly (below the minimum pace of
    :class:`~twistproxy.limits.Limits`): the proxy stops reading it.
    """

    status, phrase = 408, b"Request Timeout"


class UpstreamConnectFailed(TwistProxyError):
    """
    No connection could be made to the origin server (refused, unreachable).
    """

    status, phrase = 502, b"Bad Gateway"


class UpstreamNameNotResolved(UpstreamConnectFailed):
    """
    The origin's host name could not be resolved.
    """


class UpstreamTimeout(TwistProxyError):
    """
    The origin did not accept the connection, or did not answer, in time.
    """

    status, phrase = 504, b"Gateway Timeout"


class UpstreamConnectionLost(TwistProxyError):
    """
    The connection to the origin closed or was reset before its response was
    complete.
    """

    status, phrase = 502, b"Bad Gateway"


class UpstreamTLSFailed(TwistProxyError):
    """
    The TLS handshake with the origin failed, or its certificate was refused.
    """

    status, phrase = 502, b"Bad Gateway"


class UpstreamProtocolError(TwistProxyError):
    """
    The origin sent something that is not a valid HTTP/1.x response.
    """

    status, phrase = 502, b"Bad Gateway"


class UpstreamProxyRefused(TwistProxyError):
    """
    The upstream proxy (upstream mode) refused a ``CONNECT``: the client is
    answered with the upstream proxy's own status and reason (``407``,
    ``403``, ``502``...), not a generic 502.

    :param message: What was refused, and how.
    :param status: The upstream proxy's status code.
    :param phrase: Its reason phrase.
    """

    def __init__(self, message: str, status: int, phrase: bytes) -> None:
        super().__init__(message)
        self.status, self.phrase = status, phrase


class LoopDetected(TwistProxyError):
    """
    The request would come back to this proxy: it names the proxy's own
    address, or it already passed through this proxy (its ``Via`` header).
    """

    status, phrase = 508, b"Loop Detected"


class HookFailed(TwistProxyError):
    """
    An addon's hook raised an exception.

    :ivar hook: The name of the hook that failed.
    :ivar addon: A description of the addon whose hook failed.
    :ivar cause: The failure the hook raised.
    """

    status, phrase = 500, b"Internal Server Error"

    def __init__(self, hook: str, addon: str, cause: Failure) -> None:
        super().__init__(f"hook {hook!r} of {addon} failed: {cause.getErrorMessage()}")
        self.hook = hook
        self.addon = addon
        self.cause = cause

    def __str__(self) -> str:
        cause = self.cause.value
        return (
            f"hook {self.hook!r} of {self.addon} failed: "
            f"{type(cause).__name__}: {cause}"
        )


class HookTimeout(HookFailed):
    """
    An addon's hook did not finish in time: the Deferred, coroutine or other
    awaitable it returned had not finished within the hook deadline, or the
    flow it held with ``intercept()`` was not resumed within the intercept
    deadline. What the hook returned, or the wait for the flow to be
    resumed, was cancelled.

    :ivar seconds: The deadline that passed, in seconds.
    :ivar intercepted: ``True`` if it was the wait for ``flow.resume()``
        after the hook that timed out, ``False`` if it was the hook itself.
    :ivar cause: A failure wrapping a :class:`TimeoutError` with the same
        message (nothing was raised by the hook).
    """

    status, phrase = 500, b"Internal Server Error"

    def __init__(self, hook: str, addon: str, seconds: float, *, intercepted: bool = False) -> None:
        if intercepted:
            message = (
                f"intercept() timed out: the flow was held for {seconds:g} s after hook "
                f"{hook!r} of {addon} without being resumed"
            )
        else:
            message = f"hook {hook!r} of {addon} timed out after {seconds:g} s"
        super().__init__(hook, addon, Failure(TimeoutError(message)))
        self.args = (message,)
        self.seconds = seconds
        self.intercepted = intercepted

    def __str__(self) -> str:
        return str(self.args[0])


class InvalidMessage(TwistProxyError):
    """
    A request or response cannot be written as it stands: a field holds
    bytes that would break the message on the wire (a CR or LF in a path,
    a header value or a reason phrase, a method or header name that is not
    a token, an unknown scheme).  Raised before a byte of it is written, by
    whoever set the field (a hook, a flow file, a HAR file, a replay).

    :ivar field: Which field is at fault, as the message names it (for
        example ``"request path"`` or ``"response header value"``).
    :ivar detail: What is wrong with it.
    """

    status, phrase = 500, b"Internal Server Error"

    def __init__(self, field: str, detail: str) -> None:
        super().__init__(f"invalid {field}: {detail}")
        self.field = field
        self.detail = detail


class ShuttingDown(TwistProxyError):
    """
    The proxy shut down before the exchange was over: it outlived the
    shutdown deadline (``--shutdown-timeout``).
    """

    status, phrase = 503, b"Service Unavailable"

    def __init__(self, message: str = "the proxy shut down before the exchange was over") -> None:
        super().__init__(message)


class AddonError(TwistProxyError):
    """
    An addon cannot be registered or loaded: a misspelt hook name, a hook
    that is not callable, or an addon file that cannot be imported.
    """


class FlowKilled(TwistProxyError):
    """
    A hook killed the flow; the client connection is closed without an answer.
    """

    status, phrase = 502, b"Bad Gateway"


class CertificateAuthorityError(TwistProxyError):
    """
    The certificate authority cannot be created, loaded or used: its file is
    missing, unreadable or malformed, its key does not match its certificate,
    it is not a CA, or it is not valid at the time of use.
    """

    status, phrase = 500, b"Internal Server Error"


class FlowFileError(ValueError):
    """
    A flow file or HAR is malformed, from a newer twistproxy, or holds a
    request or response that could not be sent as it stands; or a flow
    cannot be written to a flow file.  The message says where: ``line 3:
    ...`` for a flow file, ``log.entries[2].request: ...`` for a HAR.  Not
    an answer to a client: it is raised to whoever reads or writes the file.
    """


def upstream_error(reason: Failure) -> Failure:
    """
    Translate a transport failure on the upstream side into twistproxy's
    vocabulary; a failure that already is a :class:`TwistProxyError`, or that
    is not a transport failure, comes back unchanged.

    :param reason: The failure an endpoint or a connection reported.
    :returns: A failure wrapping a :class:`TwistProxyError` where one fits.
    """
    error = reason.value
    if isinstance(error, TwistProxyError):
        return reason
    translated: TwistProxyError
    if isinstance(error, _ierror.DNSLookupError):
        translated = UpstreamNameNotResolved(f"name not resolved: {_detail(error)}")
    elif isinstance(error, _ierror.ConnectionRefusedError):
        translated = UpstreamConnectFailed("connection refused")
    elif isinstance(error, _ierror.TimeoutError):
        translated = UpstreamTimeout("timed out connecting to the server")
    elif isinstance(error, (_ierror.NoRouteError, _ierror.ConnectError)):
        translated = UpstreamConnectFailed(f"could not connect: {_detail(error)}")
    elif isinstance(error, _ierror.ConnectionLost):
        translated = UpstreamConnectionLost("connection reset by the server")
    elif isinstance(error, _ierror.ConnectionDone):
        translated = UpstreamConnectionLost("connection closed by the server")
    elif isinstance(error, ValueError) and str(error).startswith("invalid hostname"):
        # HostnameEndpoint refuses a name IDNA cannot encode ("a_b", "-a").
        translated = UpstreamNameNotResolved(f"name not resolved: {error}")
    else:
        return reason
    return Failure(translated)


def _detail(error: BaseException) -> str:
    """
    The most useful text of a Twisted connection error, without its class
    boilerplate.
    """
    osError = getattr(error, "osError", None)
    if osError:
        return str(osError)
    return " ".join(str(arg) for arg in error.args if arg) or type(error).__name__


def error_response(
    status: int,
    phrase: bytes,
    detail: str,
    *,
    version: bytes = b"HTTP/1.1",
    close: bool = True,
    head: bool = False,
    fields: Sequence[tuple[bytes, bytes]] = (),
) -> bytes:
    """
    The proxy's own answer to a request it cannot serve, whole: the status
    line, the header fields and a short plain-text page saying why.  Every
    error the proxy answers with is written by this one function.

    :param status: The status code.
    :param phrase: Its reason phrase.
    :param detail: Why, in one line, for the page.
    :param version: The status line's HTTP version (the client's).
    :param close: Add ``Connection: close``: the connection ends after it.
    :param head: The request was ``HEAD``: the fields, without the page.
    :param fields: Further header fields (``Retry-After``, say).
    """
    page = f"{status} {phrase.decode('ascii')}\n\ntwistproxy: {detail}\n".encode(
        "utf-8", "replace"
    )
    lines = [
        b"%s %d %s\r\n" % (version, status, phrase),
        b"Content-Type: text/plain; charset=utf-8\r\n",
        b"Content-Length: %d\r\n" % len(page),
    ]
    lines += [name + b": " + value + b"\r\n" for name, value in fields]
    if close:
        lines.append(b"Connection: close\r\n")
    lines.append(b"\r\n")
    if not head:
        lines.append(page)
    return b"".join(lines)


def describe(failure: Failure) -> str:
    """
    What went wrong, in one line, for ``flow.error`` and the error page: the
    exception's message, or its class name when it has none.
    """
    error = failure.value
    return str(error) or type(error).__name__


def error_status(failure: Failure) -> tuple[int, bytes]:
    """
    Choose the status line the proxy sends when *failure* ends a request.

    :returns: The status code and reason phrase; 500 for anything that is not
        a :class:`TwistProxyError`.
    """
    error = failure.value
    if isinstance(error, TwistProxyError):
        return error.status, error.phrase
    return 500, b"Internal Server Error"
