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
(:func:`load_flows` also reads HAR files, with :func:`twistproxy.har.from_har`).

**The command** ``python -m twistproxy.flowfile export-har IN OUT`` and
``import-har IN OUT`` converts between flow files and HAR 1.2 files (see
:func:`main` and :mod:`twistproxy.har`).

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
import json
import os
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from typing import IO, Any

from twistproxy import __version__
from twistproxy import har as _har
from twistproxy._flowerror import Invalid as _Invalid
from twistproxy._flowerror import describe_value as _describe_value
from twistproxy._flowschema import FLOW
from twistproxy._headers import check_messages as _check_messages
from twistproxy.errors import FlowFileError, InvalidMessage
from twistproxy.flow import FLOW_STATE_VERSION
from twistproxy.http import HTTPFlow

FORMAT_VERSION: int = 5
"""
The version of a flow file line, written as its ``"version"`` key.

It is bumped on every change to what a line holds: the shape of the flow
state (:data:`~twistproxy.flow.FLOW_STATE_VERSION`) or how the state is
written as JSON.  It is not the flow state version itself: a line holds the
state without the state's own ``"version"`` key, and a line of the current
format holds a state of the current ``FLOW_STATE_VERSION``.  So a bump of
``FLOW_STATE_VERSION`` comes with a bump of this number and an entry in
:data:`_UPGRADES` (a test pins the pair to make sure).  Both are 5 today:
version 2 added messages' ``body_size`` and ``trailers``, version 3 an
HTTP flow's ``"websocket"`` (its messages and close), version 4 its
``"interim"`` responses, version 5 the client connection's
``"proxy_mode"``.
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


_UPGRADES: dict[int, Callable[[dict[str, Any]], dict[str, Any]]] = {
    1: _upgrade_1,
    2: _upgrade_2,
    3: _upgrade_3,
    4: _upgrade_4,
}
"""
The upgrade chain: ``_UPGRADES[n]`` turns a line record of format version
``n`` (without its ``"version"`` key) into one of version ``n + 1``.
Reading applies them in turn until a record reaches :data:`FORMAT_VERSION`.
"""



# -- JSON lines ----------------------------------------------------------------


def _encode_flow(flow: HTTPFlow) -> bytes:
    """
    :returns: *flow* as one line of the current format, ending in ``\\n``.
    :raises FlowFileError: if the flow holds something JSON cannot: its
        metadata must be JSON data (dicts, lists, strings, numbers, booleans
        and ``None``; tuples are read back as lists, non-string keys as
        strings).
    """
    state = flow.get_state()
    del state["version"]
    try:
        record = {"version": FORMAT_VERSION, **FLOW.encode(state)}
        line = json.dumps(record, ensure_ascii=True, allow_nan=False, separators=(",", ":"))
    except (TypeError, ValueError) as e:
        raise FlowFileError(f"flow {flow.id} cannot be written: {e}") from e
    return line.encode("ascii") + b"\n"


def _decode_line(line: bytes, now: Callable[[], float]) -> HTTPFlow:
    """
    :returns: The flow on *line*, upgraded to the current format.
    :raises ValueError: (often :exc:`_Invalid` or :exc:`FlowFileError`) if
        the line is not a flow this version understands.
    :raises InvalidMessage: if its request or response could not be
        written as it stands (a CR or LF in a path, a header or a reason, a
        method or header name that is not a token...).
    """
    try:
        record = json.loads(line)
    except ValueError as e:  # JSONDecodeError, or UnicodeDecodeError for bad UTF-8
        hint = "" if line.endswith(b"\n") else " (the file ends in the middle of this line)"
        raise _Invalid("", f"not valid JSON: {e}{hint}") from None
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
    while version < FORMAT_VERSION:
        upgrade = _UPGRADES.get(version)
        if upgrade is None:
            raise _Invalid("version", f"flow format version {version} is unknown")
        record = upgrade(record)
        version += 1
    state = FLOW.decode(record, "")
    state["version"] = FLOW_STATE_VERSION
    flow = HTTPFlow.from_state(state, now=now)
    _check_messages(flow)
    return flow


class FlowWriter:
    """
    Writes flows to a flow file, one line each.

    Each :meth:`add` writes a whole line in one ``write`` and flushes it,
    so a crash of the process loses at most the flows not yet added (the
    operating system may still hold the bytes: nothing is fsync'd).  The
    writer owns *out*: :meth:`close` closes it.  It is also a context
    manager that closes on exit.
    """

    def __init__(self, out: IO[bytes]) -> None:
        """
        :param out: A binary file object opened for writing (or appending).
        """
        self._out: IO[bytes] | None = out

    def add(self, flow: HTTPFlow) -> None:
        """
        Append *flow* and flush.

        :raises FlowFileError: if the flow cannot be written (see the
            module docstring); nothing is written then.
        :raises ValueError: if the writer is closed.
        """
        if self._out is None:
            raise ValueError("FlowWriter.add() after close()")
        self._out.write(_encode_flow(flow))
        self._out.flush()

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


def read_flows(
    source: Iterable[bytes], *, now: Callable[[], float] = time.time
) -> Iterator[HTTPFlow]:
    """
    Read flows from a flow file, lazily: one line is read and parsed per
    flow yielded, so a file of any size is never held whole.  Blank lines
    are skipped; lines of an older format are upgraded.

    :param source: A binary file object, or any iterable of lines.
    :param now: The clock the flows get (see :class:`~twistproxy.flow.Flow`).
    :returns: An iterator of the flows, not live unless saved live.
    :raises FlowFileError: when the iteration reaches a line that is not
        valid JSON, has keys or types the format does not have, comes from
        a newer format version, or holds a request or response that could
        not be written as it stands (``line 2: invalid response reason:
        'OK\\r\\nSet-Cookie: a=b' holds a CR, LF or control``, the field
        named as :exc:`~twistproxy.errors.InvalidMessage` names it); the
        message is one line and starts ``line N:``.
    """
    for lineno, line in enumerate(source, start=1):
        if not line.strip():
            continue
        try:
            flow = _decode_line(line, now)
        except (ValueError, TypeError, KeyError, InvalidMessage) as e:
            raise FlowFileError(f"line {lineno}: {e}") from e
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


def load_flows(path: str | os.PathLike[str]) -> list[HTTPFlow]:
    """
    Read every flow of the flow file at *path*, or of the HAR file when
    *path* ends in ``.har``.  Use :func:`read_flows` for large files.

    :raises FlowFileError: as :func:`read_flows` or
        :func:`twistproxy.har.from_har` do, or when a HAR file is not JSON.
    :raises OSError: if the file cannot be read.
    """
    with open(path, "rb") as source:
        if os.fspath(path).lower().endswith(".har"):
            try:
                har = json.load(source)
            except ValueError as e:
                raise FlowFileError(f"not a HAR file: {e}") from e
            return list(_har.from_har(har))
        return list(read_flows(source))


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


def _import_har(args: argparse.Namespace) -> None:
    source = _open_input(args.input)
    try:
        data = source.read()
    finally:
        if source is not sys.stdin.buffer:
            source.close()
    try:
        har = json.loads(data.decode("utf-8-sig"))  # HAR is UTF-8; a BOM is allowed
        flows = list(_har.from_har(har))
    except ValueError as e:  # FlowFileError, JSONDecodeError, UnicodeDecodeError
        raise FlowFileError(f"{args.input}: {e}") from e
    _write_output(args.output, lambda out: dump_flows(flows, out))


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=_PROG,
        description="Convert between twistproxy flow files (JSON lines, as twistproxy saves "
        "flows) and HAR 1.2 files (as browsers' developer tools export them).",
        epilog="Use - for standard input or output.  On failure a one-line message goes to "
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
    return parser


def main(argv: list[str] | None = None) -> int:
    """
    Run the command line: ``export-har IN.jsonl OUT.har`` or ``import-har
    IN.har OUT.jsonl`` (``-h`` for help).

    :param argv: The arguments, without the program name; ``sys.argv[1:]``
        by default.
    :returns: The exit status: 0 on success, 1 on failure (after a one-line
        message on standard error), 2 for a usage error (argparse's
        convention, with the usage on standard error).
    """
    try:
        args = _parser().parse_args(argv)
    except SystemExit as e:  # -h, or a usage error argparse has reported
        return e.code if isinstance(e.code, int) else 2
    try:
        args.run(args)
    except OSError as e:
        what = f"{e.filename}: {e.strerror}" if e.filename and e.strerror else str(e)
        print(f"{_PROG}: error: {what}", file=sys.stderr)
        return 1
    except ValueError as e:  # FlowFileError, or text that cannot be written
        print(f"{_PROG}: error: {' '.join(str(e).split())}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
