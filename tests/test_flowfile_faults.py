"""
Tests for :mod:`twistproxy.flowfile` under faults: the ``live`` flag of
saved flows, opening a file for appending (mode, a partial last line),
short and failing writes, and reading what a crash, a full disk or a
hostile writer leaves (skipping bad lines, size and depth limits).
"""

from __future__ import annotations

import errno
import io
import json
import os
import stat
from typing import Any

from twisted.trial.unittest import SynchronousTestCase

from tests.test_flowfile import encode, failed_flow, first_record, line_of, make_flow, temp_dir
from twistproxy import flowfile
from twistproxy.errors import FlowFileError
from twistproxy.flowfile import FlowWriter, load_flows, read_flows


class RawFile(io.RawIOBase):
    """
    An unbuffered file whose ``write`` takes at most *step* bytes a call,
    and raises *error* once *budget* bytes were taken; it keeps what it got.
    """

    def __init__(self, step: int = 1 << 30, budget: int = 1 << 30,
                 error: OSError | None = None) -> None:
        super().__init__()
        self.data = bytearray()
        self.step = step
        self.budget = budget
        self.error = error or OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        self.calls = 0

    def writable(self) -> bool:
        return True

    def write(self, data: Any) -> int:
        """Take up to ``step`` bytes of *data* while the budget lasts."""
        self.calls += 1
        if self.budget <= 0:
            raise self.error
        taken = bytes(data[: min(self.step, self.budget)])
        self.budget -= len(taken)
        self.data += taken
        return len(taken)


class LiveFlagTests(SynchronousTestCase):
    """
    ``live`` says whether a process is working on a flow: files hold
    records, which are never live.
    """

    def test_written_not_live(self) -> None:
        """
        A flow written while live (as ``--save`` writes it from the
        ``response`` hook) is written ``"live": false`` and read back not
        live, and stays live in this process.
        """
        flow = make_flow()
        flow.live = True
        data = encode(flow)
        self.assertIs(json.loads(data)["live"], False)
        self.assertTrue(flow.live)
        [read] = read_flows(io.BytesIO(data))
        self.assertFalse(read.live)

    def test_old_live_lines_read_not_live(self) -> None:
        """
        A line an older twistproxy wrote with ``"live": true`` is read back
        not live (so client replay takes it).
        """
        record = first_record()
        record["live"] = True
        [read] = read_flows(io.BytesIO(line_of(record)))
        self.assertFalse(read.live)


class AppendToTests(SynchronousTestCase):
    """
    Tests for `FlowWriter.append_to`.
    """

    def setUp(self) -> None:
        self.path = os.path.join(temp_dir(self), "flows.jsonl")

    def test_new_file_owner_only(self) -> None:
        """
        A new file is made ``0600`` whatever the umask lets through; an
        existing one keeps its mode.
        """
        old = os.umask(0)
        self.addCleanup(os.umask, old)
        with FlowWriter.append_to(self.path) as writer:
            writer.add(make_flow())
        self.assertEqual(stat.S_IMODE(os.stat(self.path).st_mode), 0o600)
        os.chmod(self.path, 0o640)
        with FlowWriter.append_to(self.path) as writer:
            writer.add(make_flow())
        self.assertEqual(stat.S_IMODE(os.stat(self.path).st_mode), 0o640)
        self.assertEqual(len(load_flows(self.path)), 2)

    def test_appends_after_whole_lines(self) -> None:
        """
        A file that ends in a newline (or is empty) is appended to as it is.
        """
        flow = failed_flow()
        for before in (b"", encode(make_flow())):
            with open(self.path, "wb") as f:
                f.write(before)
            with FlowWriter.append_to(self.path) as writer:
                self.assertEqual(writer.partial_line, 0)
                writer.add(flow)
            with open(self.path, "rb") as f:
                self.assertEqual(f.read(), before + encode(flow))

    def test_partial_last_line_ended(self) -> None:
        """
        A file ending in a partial line (a crash mid-write) gets a newline
        at once, and its length is told; new flows start on their own
        line, so only the cut line is lost.
        """
        first, long, after = make_flow(), failed_flow(), failed_flow()
        long.comment = "x" * 100_000
        whole = encode(first)
        cut = encode(long)[:70000]  # longer than one backwards read
        with open(self.path, "wb") as f:
            f.write(whole + cut)
        writer = FlowWriter.append_to(self.path)
        self.assertEqual(writer.partial_line, len(cut))
        with open(self.path, "rb") as f:
            self.assertEqual(f.read(), whole + cut + b"\n")
        writer.add(after)
        writer.close()
        errors: list[FlowFileError] = []
        flows = load_flows(self.path, on_error=errors.append)
        self.assertEqual([f.id for f in flows], [first.id, after.id])
        [error] = errors
        self.assertTrue(str(error).startswith("line 2: not valid JSON"), error)

    def test_unopenable(self) -> None:
        """A directory, or a missing parent, is an ``OSError``."""
        self.assertRaises(IsADirectoryError, FlowWriter.append_to, os.path.dirname(self.path))
        self.assertRaises(FileNotFoundError, FlowWriter.append_to,
                          os.path.join(self.path, "x", "y"))


class WriteFaultTests(SynchronousTestCase):
    """
    Short writes are completed; failed ones spoil at most their own line.
    """

    def test_short_writes_completed(self) -> None:
        """
        A file that takes 7 bytes a call still gets whole lines.
        """
        out = RawFile(step=7)
        writer = FlowWriter(out)
        flows = make_flow(), failed_flow()
        for flow in flows:
            writer.add(flow)
        self.assertEqual(bytes(out.data), encode(*flows))
        self.assertGreater(out.calls, 100)

    def test_write_of_nothing_reported(self) -> None:
        """
        A ``write`` that takes nothing (0, or ``None`` from a file that
        would block) is an ``OSError``, not a loop.
        """
        for result in (0, None):
            out = RawFile()
            out.write = lambda data, result=result: result  # type: ignore[method-assign]
            with self.assertRaises(OSError) as caught:
                FlowWriter(out).add(make_flow())
            self.assertIn("short write", str(caught.exception))

    def test_failure_part_way(self) -> None:
        """
        A write failing part-way (a full disk) raises and leaves a partial
        line; the next flow written starts with a newline, so reading
        (skipping bad lines) gets every flow but the one that failed.
        """
        first = make_flow()
        out = RawFile(budget=len(encode(first)) + 50)
        writer = FlowWriter(out)
        writer.add(first)
        self.assertRaises(OSError, writer.add, failed_flow())
        self.assertRaises(OSError, writer.add, failed_flow())  # still full: nothing written
        out.budget = 1 << 30
        second = make_flow()
        second.id = "second"
        writer.add(second)
        errors: list[FlowFileError] = []
        flows = list(read_flows(io.BytesIO(bytes(out.data)), on_error=errors.append))
        self.assertEqual([f.id for f in flows], [first.id, "second"])
        self.assertEqual(len(errors), 1)
        self.assertTrue(str(errors[0]).startswith("line 2: "))


class ReadFaultTests(SynchronousTestCase):
    """
    Reading what crashes and hostile writers leave.
    """

    def test_skips_and_counts_when_asked(self) -> None:
        """
        With *on_error*, each unreadable line is handed over (named by its
        number) and skipped; the flows after it are read.  Without it, the
        first one stops the reading.
        """
        good = encode(make_flow())
        data = good + b"garbage\n" + good[:50] + b"\n" + good + b'{"version": 99}\n'
        errors: list[FlowFileError] = []
        flows = list(read_flows(io.BytesIO(data), on_error=errors.append))
        self.assertEqual(len(flows), 2)
        self.assertEqual([str(e).split(":")[0] for e in errors], ["line 2", "line 3", "line 5"])
        self.assertIn("newer than this twistproxy", str(errors[2]))
        with self.assertRaises(FlowFileError) as caught:
            list(read_flows(io.BytesIO(data)))
        self.assertTrue(str(caught.exception).startswith("line 2: not valid JSON"))

    def test_giant_line(self) -> None:
        """
        A line longer than *max_line* is one error naming it, read past in
        pieces (from a file) rather than held; the next line is read.
        """
        good = encode(make_flow())
        giant = b'{"version": 4, "comment": "' + b"x" * 300_000 + b'"}\n'
        for source in (io.BytesIO(giant + good), [giant, good]):
            errors: list[FlowFileError] = []
            flows = list(read_flows(source, on_error=errors.append, max_line=len(good) + 10))
            self.assertEqual(len(flows), 1)
            self.assertEqual([str(e) for e in errors],
                             [f"line 1: longer than {len(good) + 10} bytes"])

    def test_giant_line_read_in_pieces(self) -> None:
        """A file's long line is never read whole."""
        sizes: list[int] = []

        class Source(io.BytesIO):
            def readline(self, size: int | None = -1) -> bytes:
                line = super().readline(size)
                sizes.append(len(line))
                return line

        list(read_flows(Source(b"x" * 1_000_000 + b"\n"), on_error=lambda e: None,
                        max_line=1000))
        self.assertLessEqual(max(sizes), 65536)

    def test_deep_nesting(self) -> None:
        """
        A line nested 200,000 levels deep, or metadata nested past
        :data:`MAX_DEPTH`, is a one-line error, not a ``RecursionError``.
        """
        deep = b"[" * 200_000 + b"]" * 200_000 + b"\n"
        record = first_record()
        nested: Any = "end"
        for _ in range(flowfile.MAX_DEPTH):
            nested = {"n": nested}
        record["metadata"] = nested
        for line in (deep, line_of(record)):
            with self.assertRaises(FlowFileError) as caught:
                list(read_flows(io.BytesIO(line)))
            self.assertEqual(str(caught.exception),
                             f"line 1: lists and objects nest more than {flowfile.MAX_DEPTH} deep")
        record["metadata"] = {"n": {"n": {"n": [1, [2]]}}}
        self.assertEqual(len(list(read_flows(io.BytesIO(line_of(record))))), 1)

    def test_har_limits(self) -> None:
        """
        A HAR file nested 200,000 deep, or larger than
        :data:`MAX_HAR_SIZE`, is a one-line error.
        """
        path = os.path.join(temp_dir(self), "deep.har")
        with open(path, "wb") as f:
            f.write(b'{"log": ' + b"[" * 200_000 + b"]" * 200_000 + b"}")
        with self.assertRaises(FlowFileError) as caught:
            load_flows(path)
        self.assertEqual(str(caught.exception), "not a HAR file: lists and objects nest more "
                                                f"than {flowfile.MAX_DEPTH} deep")
        self.patch(flowfile, "MAX_HAR_SIZE", 100)
        with open(path, "wb") as f:
            f.write(b'{"log": {"entries": []}}' + b" " * 100)
        with self.assertRaises(FlowFileError) as caught:
            load_flows(path)
        self.assertEqual(str(caught.exception), "not read: larger than 100 bytes")
