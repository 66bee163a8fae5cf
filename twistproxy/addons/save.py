# -*- test-case-name: tests.test_save -*-
"""
Saving flows as they complete: ``twistd twistproxy --save flows.jsonl``.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Callable
from typing import BinaryIO

from twisted.logger import Logger

from twistproxy.errors import FlowFileError
from twistproxy.flowfile import FlowWriter
from twistproxy.hooks import Addon
from twistproxy.http import HTTPFlow

_log = Logger(namespace="twistproxy.save")


class SaveFlows(Addon):
    """
    Writes every flow that ends (with a response or an error) to a flow
    file, one line each, flushed as it is written: a crash loses at most the
    flows still in flight.  CONNECT flows are not saved (the requests inside
    an intercepted tunnel are); replayed flows are, with their new response.
    A WebSocket flow is saved when it closes, with its messages.

    Saving never changes what clients get: a flow that cannot be written is
    counted in :attr:`lost`, never raised into the hooks.  A file that
    cannot be written (a full disk, an I/O error) is logged once, when
    writing first fails; when writing works again, and when the file is
    closed, one line says how many flows were lost.  A flow whose metadata
    cannot be written as JSON is logged with its id.

    :param out: Where the flow file is written: a binary file object, or a
        :class:`~twistproxy.flowfile.FlowWriter` (see :meth:`open`).
    :param flow_filter: Saves only the flows it accepts (``--save-filter``).
    :param name: The file's name in log lines; *out*'s ``name`` by default.
    :ivar saved: How many flows were written.
    :ivar lost: How many flows that should have been written were not.
    """

    stream_bodies = True  # it needs what is recorded of a body, not all of it

    def __init__(
        self,
        out: BinaryIO | FlowWriter,
        *,
        flow_filter: Callable[[HTTPFlow], bool] | None = None,
        name: str | None = None,
    ) -> None:
        self._writer = out if isinstance(out, FlowWriter) else FlowWriter(out)
        self._name = name if name is not None else str(getattr(out, "name", "the flow file"))
        self._filter = flow_filter
        self._failing = False  # writing failed, and has not worked since
        self._closed = False
        self._late = 0  # flows that ended after close()
        self.saved = 0
        self.lost = 0

    @classmethod
    def open(
        cls, path: str | os.PathLike[str], *, flow_filter: Callable[[HTTPFlow], bool] | None = None
    ) -> SaveFlows:
        """
        Save to the flow file at *path*, appending
        (:meth:`FlowWriter.append_to <twistproxy.flowfile.FlowWriter.append_to>`:
        a new file is made ``0600``, a partial last line is ended with a
        newline).  One warning each says that the file ended in a partial
        line, and that an existing file is readable by other users (its mode
        is left as it is).

        :raises OSError: if the file cannot be opened.
        """
        writer = FlowWriter.append_to(path)
        name = os.fspath(path)
        if writer.partial_line:
            _log.warn(
                "--save {path}: the file ended in a partial line ({size} bytes, cut short by "
                "a crash or a full disk); a newline now ends it, so new flows start on a "
                "line of their own (reading the file skips it only when told to)",
                path=name, size=writer.partial_line,
            )
        mode = os.stat(path).st_mode
        if stat.S_ISREG(mode) and stat.S_IMODE(mode) & 0o077:
            _log.warn(
                "--save {path}: the file is open to other users (mode {mode}) and will "
                "hold the traffic's cookies and credentials; chmod 600 it",
                path=name, mode=f"{stat.S_IMODE(mode):04o}",
            )
        return cls(writer, flow_filter=flow_filter, name=name)

    def response(self, flow: HTTPFlow) -> None:
        """Save a flow that ended with a response (a WebSocket's once it closes)."""
        response = flow.response
        if flow.websocket is None or response is None or response.status_code != 101:
            self._save(flow)

    def websocket_end(self, flow: HTTPFlow) -> None:
        """Save a WebSocket flow, closed."""
        self._save(flow)

    def error(self, flow: HTTPFlow) -> None:
        """Save a flow that ended with an error."""
        self._save(flow)

    def _save(self, flow: HTTPFlow) -> None:
        if flow.request is None or flow.request.method == "CONNECT":
            return
        if self._filter is not None and not self._filter(flow):
            return
        if self._closed:
            self.lost += 1
            self._late += 1
            if self._late == 1:
                _log.warn("--save {path}: a flow ended after the file was closed; not saved",
                          path=self._name)
            return
        try:
            self._writer.add(flow)
        except FlowFileError as e:
            self.lost += 1
            _log.warn("--save {path}: {error}", path=self._name, error=str(e))
            return
        except OSError as e:
            self.lost += 1
            if not self._failing:
                self._failing = True
                _log.error(
                    "--save {path}: cannot write flows: {error}; flows are not saved until "
                    "writing works again (the proxy goes on)",
                    path=self._name, error=e.strerror or str(e),
                )
            return
        self.saved += 1
        if self._failing:
            self._failing = False
            _log.info("--save {path}: writing flows again; {lost} flows were lost so far",
                      path=self._name, lost=self.lost)

    def close(self) -> None:
        """
        Close the flow file (once: later calls do nothing), saying how many
        flows were lost if any were.  Flows that end afterwards are counted
        as lost.
        """
        if self._closed:
            return
        self._closed = True
        try:
            self._writer.close()
        except OSError as e:  # the last bytes could not be written out
            _log.error("--save {path}: closing: {error}", path=self._name,
                       error=e.strerror or str(e))
        if self.lost:
            _log.warn("--save {path}: {lost} flows were not saved ({saved} were)",
                      path=self._name, lost=self.lost, saved=self.saved)
