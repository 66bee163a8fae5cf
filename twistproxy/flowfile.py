# -*- test-case-name: tests.test_flowfile,tests.test_har -*-
"""
Flow files: flows saved as JSON lines.

**The format** holds one flow per line, a JSON object::

    {"version":1,"type":"http","id":"...","request":{"headers":[["Host","example.com"]],
     "content":"aGVsbG8=",...},"response":{...},...}

It is :meth:`HTTPFlow.get_state <twistproxy.http.HTTPFlow.get_state>` made
JSON-safe by a schema that knows every field: header names and values and
the TLS ALPN protocol (short protocol bytes) are latin-1 strings, which map
each byte to one character and so keep any byte; bodies (``content``) are
base64 strings, or ``null`` when the body was not captured; tuples are lists;
every other field is written as it is.  Lines are ASCII (other characters
are ``\\u`` escapes), end with ``\\n`` and contain no other newline, so log
pipelines can ship them line by line and old files stay readable: every line
carries :data:`FORMAT_VERSION`, and older lines are upgraded on reading.

:class:`FlowWriter` appends flows (flushing each), :func:`read_flows` streams
them back; :func:`dump_flows` and :func:`load_flows` are shortcuts
(:func:`load_flows` also reads HAR files, with :func:`read_har` and
:func:`twistproxy.har.from_har`).

**The command** ``python -m twistproxy.flowfile export-har IN OUT`` and
``import-har IN OUT`` converts between flow files and HAR 1.2 files (see
:func:`main` and :mod:`twistproxy.har`); ``export-curl IN``,
``export-httpie IN`` and ``export-raw IN`` write a flow file's flows (those
``--filter EXPR`` matches) as commands or HTTP/1 bytes on standard output
(:mod:`twistproxy.export`).

This is core code: it reads no clock (flows take a ``now`` callable), opens
no sockets, and does I/O only through the file objects (or, for
:func:`load_flows` and :func:`main`, the paths) it is given.

Errors are :exc:`~twistproxy.errors.FlowFileError`.  The schema of a line
is :mod:`twistproxy._flowschema`; its error helpers live in
:mod:`twistproxy._flowerror`, which HAR's reading half
(:mod:`twistproxy._har_read`) imports too; this module imports
:mod:`twistproxy.har`, never the other way round.
"""

from __future__ import annotations

import argparse
import errno
import json
import os
import stat
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from typing import IO, Any

from twistproxy import __version__
from twistproxy import export as _export
from twistproxy import har as _har
from twistproxy._flowerror import Invalid as _Invalid
from twistproxy._flowerror import describe_value as _describe_value
from twistproxy._flowerror import nesting_over as _nesting_over
from twistproxy._flowschema import FLOW
from twistproxy._headers import check_messages as _check_messages
from twistproxy.errors import FlowFileError, InvalidMessage
from twistproxy.filters import FilterError
from twistproxy.filters import parse as _parse_filter
from twistproxy.flow import FLOW_STATE_VERSION, Flow
from twistproxy.http import HTTPFlow

FORMAT_VERSION: int = 6
"""
The version of a flow file line, written as its ``"version"`` key.

It is bumped on every change to what a line holds: the shape of the flow
state (:data:`~twistproxy.flow.FLOW_STATE_VERSION`) or how the state is
written as JSON.  It is not the flow state version itself: a line holds the
state without the state's own ``"version"`` key, and a line of the current
format holds a state of the current ``FLOW_STATE_VERSION``.  So a bump of
``FLOW_STATE_VERSION`` comes with a bump of this number and an entry in
:data:`_UPGRADES` (a test pins the pair to make sure).  Both are 6 today:
version 2 added messages' ``body_size`` and ``trailers``, version 3 an
HTTP flow's ``"websocket"`` (its messages and close), version 4 its
``"interim"`` responses, version 5 the client connection's
``"proxy_mode"``, version 6 the server connection's ``"certificate"``.
"""

def _upgrade_1(record: dict[str, Any]) -> dict[str, Any]:
    """
    Version 1 to 2: messages gained ``body_size``, set when a streamed body
    was recorded only in part (version 1 recorded streamed bodies as
    ``null`` content, and kept no size), and ``trailers`` (version 1 kept
    none).
    """
    for key in ("request", "response"):
        message = record.get(key)
        if isinstance(message, dict):
            message.setdefault("body_size", None)
            message.setdefault("trailers", None)
    return record


def _upgrade_2(record: dict[str, Any]) -> dict[str, Any]:
    """Version 2 to 3: version 2 had no WebSockets; every flow gets ``"websocket": null``."""
    return {**record, "websocket": None}


def _upgrade_3(record: dict[str, Any]) -> dict[str, Any]:
    """Version 3 to 4: version 3 kept no interim responses; every flow gets ``"interim": []``."""
    return {**record, "interim": []}


def _upgrade_4(record: dict[str, Any]) -> dict[str, Any]:
    """
    Version 4 to 5: version 4 had one mode; every client connection gets
    ``"proxy_mode": "regular"``.
    """
    client = record.get("client_conn")
    if isinstance(client, dict):
        client.setdefault("proxy_mode", "regular")
    return record


def _upgrade_5(record: dict[str, Any]) -> dict[str, Any]:
    """
    Version 5 to 6: version 5 kept no certificate; every server connection
    gets ``"certificate": null``.
    """
    server = record.get("server_conn")
    if isinstance(server, dict):
        server.setdefault("certificate", None)
    return record


_UPGRADES: dict[int, Callable[[dict[str, Any]], dict[str, Any]]] = {
    1: _upgrade_1,
    2: _upgrade_2,
    3: _upgrade_3,
    4: _upgrade_4,
    5: _upgrade_5,
}
"""
The upgrade chain: ``_UPGRADES[n]`` turns a line record of format version
``n`` (without its ``"version"`` key) into one of version ``n + 1``.
Reading applies them in turn until a record reaches :data:`FORMAT_VERSION`.
"""


def upgrade_record(record: dict[str, Any], version: int) -> dict[str, Any]:
    """
    Bring a flow record of an older format up to :data:`FORMAT_VERSION`,
    through each upgrade of the chain in turn: a flow file line, or a row
    of the web UI's flow store.

    :param record: The record, without its ``"version"`` key; it may be
        changed in place.
    :param version: The format *record* was written in, at most
        :data:`FORMAT_VERSION`.
    :returns: The record in the current format (not checked yet: that is
        the schema's job, :data:`twistproxy._flowschema.FLOW`).
    :raises ValueError: if *version* is not one this twistproxy knows.
    """
    while version < FORMAT_VERSION:
        upgrade = _UPGRADES.get(version)
        if upgrade is None:
            raise _Invalid("version", f"flow format version {version} is unknown")
        record = upgrade(record)
        version += 1
    return record


MAX_LINE_SIZE: int = 128 * 1024 * 1024
"""
The longest line :func:`read_flows` reads by default, in bytes (128 MiB): a
line holds both bodies in base64, each at most the body limit when the
proxy wrote it, so this fits a ``--body-limit`` up to about 40 MiB.  A
longer line is an error (or skipped) without being held in memory.
"""

MAX_HAR_SIZE: int = 512 * 1024 * 1024
"""The largest HAR file :func:`load_flows` and ``import-har`` read (512 MiB)."""

MAX_DEPTH: int = 100
"""
How deep lists and objects may nest in a flow file line or a HAR document.
A flow line nests 5 deep (a header is ``request.headers[i][j]``), more only
inside ``metadata``; browsers' HAR files well under 50 (their initiator
stacks).  Deeper input is refused with one line, not a ``RecursionError``.
"""



# -- JSON lines ----------------------------------------------------------------


def _encode_flow(flow: HTTPFlow) -> bytes:
    """
    :returns: *flow* as one line of the current format, ending in ``\\n``,
        with ``"live": false``: whether a flow is live describes it in the
        process that holds it, not in a file.
    :raises FlowFileError: if the flow holds something JSON cannot: its
        metadata must be JSON data (dicts, lists, strings, numbers, booleans
        and ``None``; tuples are read back as lists, non-string keys as
        strings).
    """
    state = flow.get_state()
    del state["version"]
    state["live"] = False  # a line is a record: the flow is live in a process, never in a file
    try:
        record = {"version": FORMAT_VERSION, **FLOW.encode(state)}
        line = json.dumps(record, ensure_ascii=True, allow_nan=False, separators=(",", ":"))
    except (TypeError, ValueError) as e:
        raise FlowFileError(f"flow {flow.id} cannot be written: {e}") from e
    return line.encode("ascii") + b"\n"


def _parse_json(data: bytes) -> Any:
    """
    :returns: *data* parsed as JSON (UTF-8, a BOM allowed).
    :raises _Invalid: if it is not JSON, or nests more than
        :data:`MAX_DEPTH` deep.
    """
    try:
        value = json.loads(data)
    except ValueError as e:  # JSONDecodeError, or UnicodeDecodeError for bad UTF-8
        raise _Invalid("", f"not valid JSON: {e}") from None
    except RecursionError:  # deeper than Python's recursion limit
        value = None
        too_deep = True
    else:
        too_deep = _nesting_over(value, MAX_DEPTH)
    if too_deep:
        raise _Invalid("", f"lists and objects nest more than {MAX_DEPTH} deep")
    return value


def _decode_line(line: bytes, now: Callable[[], float]) -> HTTPFlow:
    """
    :returns: The flow on *line*, upgraded to the current format, not
        live.
    :raises ValueError: (often :exc:`_Invalid` or :exc:`FlowFileError`) if
        the line is not a flow this version understands.
    :raises InvalidMessage: if its request or response could not be
        written as it stands (a CR or LF in a path, a header or a reason, a
        method or header name that is not a token...).
    """
    try:
        record = _parse_json(line)
    except _Invalid as e:
        if line.endswith(b"\n"):
            raise
        raise _Invalid("", f"{e} (the file ends in the middle of this line)") from None
    if not isinstance(record, dict):
        raise _Invalid("", f"expected a JSON object, got {_describe_value(record)}")
    version = record.pop("version", None)
    if type(version) is not int:
        raise _Invalid("version", f"missing or not an integer: {version!r}")
    if version > FORMAT_VERSION:
        raise FlowFileError(
            f"flow format version {version} is newer than this twistproxy understands "
            f"({FORMAT_VERSION}); upgrade twistproxy"
        )
    state = FLOW.decode(upgrade_record(record, version), "")
    state["version"] = FLOW_STATE_VERSION
    state["live"] = False  # older twistproxy wrote the flag of the writing process
    flow = HTTPFlow.from_state(state, now=now)
    _check_messages(flow)
    return flow


class FlowWriter:
    """
    Writes flows to a flow file, one line each.

    Each :meth:`add` writes a whole line and flushes it, so a crash of the
    process loses at most the flows not yet added (the operating system may
    still hold the bytes: nothing is fsync'd).  A short write is completed
    by writing the rest; a write that fails part-way leaves a partial line,
    which the next :meth:`add` ends with a newline before its own line, so
    one failure spoils at most that one line.  Made for an unbuffered file
    (what :meth:`append_to` opens): with a buffered one, a failing flush
    keeps the bytes in the buffer for the next.

    The writer owns *out*: :meth:`close` closes it.  It is also a context
    manager that closes on exit.

    :ivar partial_line: For a writer from :meth:`append_to`, the length in
        bytes of the partial line the file ended in (a crash or a full disk
        cut it short), which opening ended with a newline; else 0.
    """

    def __init__(self, out: IO[bytes]) -> None:
        """
        :param out: A binary file object opened for writing (or appending).
        """
        self._out: IO[bytes] | None = out
        self._broken = False  # the last line was written only in part
        self.partial_line = 0

    @classmethod
    def append_to(cls, path: str | os.PathLike[str]) -> FlowWriter:
        """
        Open the flow file at *path* for appending, unbuffered: a new file
        is created readable and writable by its owner alone (``0600``); an
        existing one keeps its mode.  If it ends in a partial line, a
        newline ends that line first, so that new flows start on a line of
        their own (:attr:`partial_line` says how long the partial line was;
        reading it back is an error or, when asked, skipped).  If that
        newline cannot be written now, the first :meth:`add` writes it.

        :raises OSError: if the file cannot be opened.
        """
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            out = os.fdopen(fd, "ab", buffering=0)
        except BaseException:
            os.close(fd)
            raise
        writer = cls(out)
        status = os.fstat(fd)
        if stat.S_ISREG(status.st_mode) and status.st_size:
            try:
                with open(path, "rb") as source:
                    writer.partial_line = _partial_line(source, status.st_size)
            except OSError:
                pass  # a file we may write but not read: its end cannot be checked
        if writer.partial_line:
            try:
                writer._write(b"\n")
            except OSError:
                writer._broken = True  # the first add() writes the newline, or fails as it would
        return writer

    def add(self, flow: HTTPFlow) -> None:
        """
        Append *flow* and flush.

        :raises FlowFileError: if the flow cannot be written (see the
            module docstring); nothing is written then.
        :raises OSError: if writing fails (a full disk, an I/O error).
        :raises ValueError: if the writer is closed.
        """
        if self._out is None:
            raise ValueError("FlowWriter.add() after close()")
        line = _encode_flow(flow)
        self._write(b"\n" + line if self._broken else line)
        self._out.flush()

    def _write(self, data: bytes) -> None:
        """
        Write all of *data*, however many ``write`` calls it takes.

        :raises OSError: if a write fails, or writes nothing.
        """
        out = self._out
        assert out is not None
        view = memoryview(data)
        try:
            while view:
                written = out.write(view)
                if not written:  # 0, or None from a non-blocking file that would block
                    raise OSError(errno.EIO, f"short write: {len(view)} bytes not written")
                view = view[written:]
                self._broken = len(view) > 0
        finally:
            view.release()
        self._broken = False

    def close(self) -> None:
        """
        Close the file; later calls do nothing.
        """
        out, self._out = self._out, None
        if out is not None:
            out.close()

    def __enter__(self) -> FlowWriter:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def _partial_line(source: IO[bytes], size: int) -> int:
    """
    :returns: The length of the partial line the *size* bytes of *source*
        end in (0 when they end in a newline), reading backwards.
    """
    source.seek(size - 1)
    if source.read(1) == b"\n":
        return 0
    end = size
    while end > 0:
        start = max(0, end - 65536)
        source.seek(start)
        newline = source.read(end - start).rfind(b"\n")
        if newline >= 0:
            return size - (start + newline + 1)
        end = start
    return size


def _lines(source: Iterable[bytes], limit: int) -> Iterator[bytes | None]:
    """
    The lines of *source*, each ``None`` when it is longer than *limit*
    bytes; a file object's long line is read past, never held whole.
    """
    readline = getattr(source, "readline", None)
    if readline is None:
        for line in source:
            yield None if len(line.rstrip(b"\n")) > limit else line
        return
    while line := readline(limit + 1):
        if len(line) <= limit or line.endswith(b"\n"):
            yield line
            continue
        while (rest := readline(65536)) and not rest.endswith(b"\n"):
            pass
        yield None


def read_flows(
    source: Iterable[bytes],
    *,
    now: Callable[[], float] = time.time,
    on_error: Callable[[FlowFileError], object] | None = None,
    max_line: int = MAX_LINE_SIZE,
) -> Iterator[HTTPFlow]:
    """
    Read flows from a flow file, lazily: one line is read and parsed per
    flow yielded, so a file of any size is never held whole.  Blank lines
    are skipped; lines of an older format are upgraded.

    :param source: A binary file object, or any iterable of lines.
    :param now: The clock the flows get (see :class:`~twistproxy.flow.Flow`).
    :param on_error: Called with the error of each line that cannot be
        read, which is then skipped; without it (the default), the first
        such line ends the reading with its error.
    :param max_line: The longest line read, in bytes; a longer one is an
        error (and is not held in memory).
    :returns: An iterator of the flows, not live.
    :raises FlowFileError: unless *on_error* is given, when the iteration
        reaches a line that is not valid JSON, is longer than *max_line*,
        nests deeper than :data:`MAX_DEPTH`, has keys or types the format
        does not have, comes from a newer format version, or holds a
        request or response that could not be written as it stands
        (``line 2: invalid response reason: 'OK\\r\\nSet-Cookie: a=b'
        holds a CR, LF or control``, the field named as
        :exc:`~twistproxy.errors.InvalidMessage` names it); the message is
        one line and starts ``line N:``.
    """
    for lineno, line in enumerate(_lines(source, max_line), start=1):
        try:
            if line is None:
                raise _Invalid("", f"longer than {max_line} bytes")
            if not line.strip():
                continue
            flow = _decode_line(line, now)
        except (ValueError, TypeError, KeyError, InvalidMessage) as e:
            error = FlowFileError(f"line {lineno}: {e}")
            if on_error is None:
                raise error from e
            on_error(error)
            continue
        yield flow


def dump_flows(flows: Iterable[HTTPFlow], out: IO[bytes]) -> int:
    """
    Write *flows* to *out* as a flow file (flushed at the end; *out* is left
    open).

    :returns: How many flows were written.
    :raises FlowFileError: as :meth:`FlowWriter.add` does.
    """
    count = 0
    for flow in flows:
        out.write(_encode_flow(flow))
        count += 1
    out.flush()
    return count


def read_har(source: IO[bytes]) -> Any:
    """
    Read a HAR document for :func:`twistproxy.har.from_har`.

    :returns: The HAR document in *source*, parsed.
    :raises FlowFileError: if it is larger than :data:`MAX_HAR_SIZE`, not
        JSON, or nests deeper than :data:`MAX_DEPTH`.
    """
    data = source.read(MAX_HAR_SIZE + 1)
    if len(data) > MAX_HAR_SIZE:
        raise FlowFileError(f"not read: larger than {MAX_HAR_SIZE} bytes")
    try:
        return _parse_json(data)
    except _Invalid as e:
        raise FlowFileError(f"not a HAR file: {e}") from e


def load_flows(
    path: str | os.PathLike[str],
    *,
    on_error: Callable[[FlowFileError], object] | None = None,
) -> list[HTTPFlow]:
    """
    Read every flow of the flow file at *path*, or of the HAR file when
    *path* ends in ``.har``.  Use :func:`read_flows` for large files.

    :param on_error: Called with the error of each line (or HAR entry) that
        cannot be read, which is then skipped, as :func:`read_flows` does.
    :raises FlowFileError: as :func:`read_flows` or
        :func:`twistproxy.har.from_har` do, or when a HAR file is not JSON,
        is larger than :data:`MAX_HAR_SIZE` or nests deeper than
        :data:`MAX_DEPTH` (whether or not *on_error* is given).
    :raises OSError: if the file cannot be read.
    """
    with open(path, "rb") as source:
        if os.fspath(path).lower().endswith(".har"):
            return list(_har.from_har(read_har(source), on_error=on_error))
        return list(read_flows(source, on_error=on_error))


# -- The command ---------------------------------------------------------------

_PROG = "python -m twistproxy.flowfile"


def _open_input(name: str) -> IO[bytes]:
    return sys.stdin.buffer if name == "-" else open(name, "rb")


def _write_output(name: str, write: Callable[[IO[bytes]], object]) -> None:
    if name == "-":
        write(sys.stdout.buffer)
        sys.stdout.buffer.flush()
    else:
        with open(name, "wb") as out:
            write(out)


def _export_har(args: argparse.Namespace) -> None:
    source = _open_input(args.input)
    try:
        flows = list(read_flows(source))
    except FlowFileError as e:
        raise FlowFileError(f"{args.input}: {e}") from e
    finally:
        if source is not sys.stdin.buffer:
            source.close()
    document = _har.to_har(flows, creator_version=__version__)
    data = json.dumps(document, indent=2, ensure_ascii=False).encode("utf-8") + b"\n"
    _write_output(args.output, lambda out: out.write(data))


def _export_as(args: argparse.Namespace) -> int:
    try:
        wanted = _parse_filter(args.filter) if args.filter is not None else None
    except FilterError as e:
        where = f"at column {e.position + 1}"
        raise ValueError(f"--filter {args.filter!r}: {e.reason} {where}") from None
    source = _open_input(args.input)
    try:
        flows = [flow for flow in read_flows(source) if wanted is None or wanted(flow)]
    except FlowFileError as e:
        raise FlowFileError(f"{args.input}: {e}") from e
    finally:
        if source is not sys.stdin.buffer:
            source.close()
    skipped = []

    def skip(flow: Flow, error: _export.ExportError) -> None:
        skipped.append(flow)
        print(f"{_PROG}: flow {flow.id} skipped: {error}", file=sys.stderr)

    _write_output("-", lambda out: _export.export_flows(flows, args.export, out, skip))
    return 1 if skipped else 0


def _import_har(args: argparse.Namespace) -> None:
    source = _open_input(args.input)
    try:
        flows = list(_har.from_har(read_har(source)))
    except FlowFileError as e:
        raise FlowFileError(f"{args.input}: {e}") from e
    finally:
        if source is not sys.stdin.buffer:
            source.close()
    _write_output(args.output, lambda out: dump_flows(flows, out))


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=_PROG,
        description="Convert between twistproxy flow files (JSON lines, as twistproxy saves "
        "flows) and HAR 1.2 files (as browsers' developer tools export them), or write a flow "
        "file's requests as curl or HTTPie commands or raw HTTP.",
        epilog="Use - for standard input or output (the export-* commands write to standard "
        "output).  On failure a one-line message goes to "
        "standard error and the exit status is 1; the output file is written only once the "
        "whole input has been read.",
    )
    commands = parser.add_subparsers(title="commands", required=True, metavar="COMMAND")
    export = commands.add_parser(
        "export-har",
        help="flow file -> HAR",
        description="Write the flows of a flow file as a HAR file.",
    )
    export.add_argument("input", metavar="IN.jsonl", help="the flow file to read")
    export.add_argument("output", metavar="OUT.har", help="the HAR file to write")
    export.set_defaults(run=_export_har)
    imp = commands.add_parser(
        "import-har",
        help="HAR -> flow file",
        description="Write the entries of a HAR file as a flow file.",
    )
    imp.add_argument("input", metavar="IN.har", help="the HAR file to read")
    imp.add_argument("output", metavar="OUT.jsonl", help="the flow file to write")
    imp.set_defaults(run=_import_har)
    for name, to_format in _export.FORMATS.items():
        command = commands.add_parser(
            f"export-{name}",
            help=f"flow file -> {_EXPORT_HELP[name]}",
            description=f"Write the flows of a flow file as {_EXPORT_HELP[name]} on standard "
            "output. A flow that cannot be exported (no request, a body not recorded in full) is "
            "named on standard error and skipped, and the exit status is 1.",
        )
        command.add_argument("input", metavar="IN.jsonl", help="the flow file to read")
        command.add_argument(
            "--filter", metavar="EXPR", help="only the flows this filter expression matches"
        )
        command.set_defaults(run=_export_as, export=to_format)
    return parser


_EXPORT_HELP = {
    "curl": "curl commands, one a line",
    "httpie": "HTTPie commands, one a line",
    "raw": "HTTP/1 requests and responses",
}


def main(argv: list[str] | None = None) -> int:
    """
    Run the command line: ``export-har IN.jsonl OUT.har``, ``import-har
    IN.har OUT.jsonl``, or ``export-curl``, ``export-httpie``,
    ``export-raw IN.jsonl [--filter EXPR]`` (``-h`` for help).

    :param argv: The arguments, without the program name; ``sys.argv[1:]``
        by default.
    :returns: The exit status: 0 on success, 1 on failure (after a one-line
        message on standard error) or when an export skipped a flow (one
        line each), 2 for a usage error (argparse's
        convention, with the usage on standard error).
    """
    try:
        args = _parser().parse_args(argv)
    except SystemExit as e:  # -h, or a usage error argparse has reported
        return e.code if isinstance(e.code, int) else 2
    try:
        status = args.run(args)
    except OSError as e:
        what = f"{e.filename}: {e.strerror}" if e.filename and e.strerror else str(e)
        print(f"{_PROG}: error: {what}", file=sys.stderr)
        return 1
    except ValueError as e:  # FlowFileError, or text that cannot be written
        print(f"{_PROG}: error: {' '.join(str(e).split())}", file=sys.stderr)
        return 1
    return status or 0


if __name__ == "__main__":
    raise SystemExit(main())
