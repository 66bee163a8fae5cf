"""
Tests for :mod:`twistproxy.flowfile`: the JSON-lines format.  HAR and the
conversion command are tested in :mod:`tests.test_har`, which reuses the
flows built here.
"""

from __future__ import annotations

import base64
import gzip
import io
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from typing import Any

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from tests.e2e.pki import make_ca, make_leaf
from twistproxy import flowfile
from twistproxy.connection import Certificate, Client, Server
from twistproxy.errors import FlowFileError
from twistproxy.flow import FLOW_STATE_VERSION, Error
from twistproxy.flowfile import (
    FORMAT_VERSION,
    FlowWriter,
    dump_flows,
    load_flows,
    read_flows,
)
from twistproxy.headers import Headers
from twistproxy.http import HTTPFlow, Request, Response

DATA = os.path.join(os.path.dirname(__file__), "data")
ALL_BYTES = bytes(range(256))
VALUE_BYTES = bytes(b for b in ALL_BYTES if b not in b"\r\n\x00")


CERTIFICATE = Certificate.from_x509(
    make_leaf(make_ca("flowfile test CA"), ["example.com", "93.184.216.34"]).certificate
)


def make_flow(**request_overrides: Any) -> HTTPFlow:
    """
    A finished flow with everything the format must keep: binary bodies,
    repeated and non-UTF-8 headers in their original case, TLS details,
    a mark, replay marker, metadata, a comment and timestamps.
    """
    clock = Clock()
    clock.advance(1718183702.25)
    flow = HTTPFlow(
        Client(
            peername=("127.0.0.1", 50412),
            sockname=("127.0.0.1", 8080),
            timestamp_start=1718183702.0,
        ),
        Server(
            address=("example.com", 443),
            peername=("93.184.216.34", 443),
            sockname=("10.0.0.2", 41822),
            timestamp_start=1718183702.1,
            tls_established=True,
            sni="example.com",
            alpn=b"h\xff",
            tls_version="TLSv1.3",
            certificate=CERTIFICATE,
        ),
        now=clock.seconds,
    )
    fields = [
        (b"Host", b"example.com"),
        (b"X-Odd", b"caf\xe9 \xff\x7f"),
        (b"x-odd", b"second"),
        (b"X-ODD", b"third \xc3\xa9"),
        (b"Content-Type", b"application/octet-stream"),
    ]
    flow.request = Request(
        "example.com",
        443,
        "POST",
        "https",
        "",
        "/up?a=1&b=%C3%A9",
        "HTTP/1.1",
        Headers(fields),
        ALL_BYTES,
        timestamp_start=1718183702.3,
        timestamp_end=1718183702.4,
    )
    for name, value in request_overrides.items():
        setattr(flow.request, name, value)
    flow.response = Response(
        "HTTP/1.1",
        200,
        "OK",
        Headers([(b"Content-Type", b"image/x-bytes")]),
        ALL_BYTES[::-1] + b"\r\n\n",
        timestamp_start=1718183702.5,
        timestamp_end=1718183702.75,
    )
    flow.marked = ":star:"
    flow.is_replay = "response"
    flow.metadata = {"tags": ["a", "b"], "nested": {"n": 1, "x": None, "f": 0.5}}
    flow.comment = "line one\nline two"
    return flow


def failed_flow() -> HTTPFlow:
    """
    A flow whose upstream connection failed: an error, no response.
    """
    flow = HTTPFlow(
        Client(), Server(address=("down.example.org", 80), error="refused"), now=lambda: 1000.0
    )
    flow.request = Request.make("GET", "http://down.example.org/")
    flow.request.timestamp_start = flow.request.timestamp_end = 1000.0
    flow.error = Error("Connection refused", 1000.5)
    return flow


def encode(*flows: HTTPFlow) -> bytes:
    """
    The flow file *flows* make.
    """
    out = io.BytesIO()
    dump_flows(flows, out)
    return out.getvalue()


def first_record() -> dict[str, Any]:
    """
    The JSON record of :func:`make_flow`'s line.
    """
    record: dict[str, Any] = json.loads(encode(make_flow()))
    return record


def line_of(record: dict[str, Any]) -> bytes:
    """
    *record* as a flow file line.
    """
    return json.dumps(record).encode("ascii") + b"\n"


def temp_dir(test: SynchronousTestCase) -> str:
    """
    A new directory, removed when *test* ends.
    """
    path = tempfile.mkdtemp()
    test.addCleanup(shutil.rmtree, path)
    return path


class RecordingFile(io.BytesIO):
    """
    A file that records every ``write`` and ``flush`` in order.
    """

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[str] = []

    def write(self, data: Any) -> int:
        """Record a write."""
        self.calls.append("write")
        return super().write(data)

    def flush(self) -> None:
        """Record a flush."""
        self.calls.append("flush")
        super().flush()


class FlowWriterTests(SynchronousTestCase):
    """
    Tests for `FlowWriter`, `dump_flows` and the line format.
    """

    def test_round_trip(self) -> None:
        """
        A flow with binary bodies, odd headers (a value holding every byte
        but the CR, LF and NUL that no value may hold), TLS details, marks,
        metadata and timestamps reads back with an equal state.
        """
        flow = make_flow()
        assert flow.request is not None
        flow.request.headers.fields += ((b"X-Raw", VALUE_BYTES),)
        [restored] = read_flows(io.BytesIO(encode(flow)))
        self.assertIsInstance(restored, HTTPFlow)
        self.assertEqual(restored.get_state(), flow.get_state())
        assert restored.request is not None
        self.assertEqual(restored.request.raw_content, ALL_BYTES)
        self.assertEqual(
            restored.request.headers.get_all_raw(b"x-odd"),
            [b"caf\xe9 \xff\x7f", b"second", b"third \xc3\xa9"],
        )
        self.assertEqual(restored.request.headers.get_raw(b"x-raw"), VALUE_BYTES)
        self.assertEqual(restored.is_replay, "response")
        self.assertEqual(restored.marked, ":star:")

    def test_round_trip_truncated_body_and_trailers(self) -> None:
        """
        A response recorded in part (its whole length kept) and trailers on
        both messages read back as they were.
        """
        flow = make_flow()
        assert flow.request is not None and flow.response is not None
        flow.request.trailers = Headers([(b"X-Checksum", b"1\xe9")])
        flow.response.raw_content = b"the start"
        flow.response.body_size = 5000
        flow.response.trailers = Headers([(b"grpc-status", b"0")])
        flow.interim = (Response(b"HTTP/1.1", 103, b"Early Hints", [(b"Link", b"</a.css>")],
                                 None, timestamp_start=1.0, timestamp_end=1.0),)
        [restored] = read_flows(io.BytesIO(encode(flow)))
        self.assertEqual(restored.get_state(), flow.get_state())
        assert restored.response is not None and restored.request is not None
        self.assertTrue(restored.response.truncated)
        self.assertEqual(restored.response.body_size, 5000)
        self.assertEqual(restored.request.trailers, flow.request.trailers)
        self.assertEqual([r.status_code for r in restored.interim], [103])

    def test_round_trip_failed_flow(self) -> None:
        """
        A flow with an error and no response round-trips.
        """
        flow = failed_flow()
        [restored] = read_flows(io.BytesIO(encode(flow)))
        self.assertEqual(restored.get_state(), flow.get_state())
        self.assertIsNone(restored.response)
        self.assertEqual(restored.error, Error("Connection refused", 1000.5))

    def test_round_trip_bare_flow(self) -> None:
        """
        A flow without request, response or captured bodies round-trips:
        ``null`` stays ``null``.
        """
        flow = HTTPFlow(Client(), Server(), now=lambda: 5.0)
        flow.response = Response("HTTP/1.1", 204, "No Content", Headers(), None)
        [restored] = read_flows(io.BytesIO(encode(flow)))
        self.assertEqual(restored.get_state(), flow.get_state())
        assert restored.response is not None
        self.assertIsNone(restored.response.raw_content)

    def test_fields_are_latin1_and_base64(self) -> None:
        """
        Header names and values and the ALPN protocol are latin-1 strings,
        bodies base64, addresses lists, and the version comes first.
        """
        line = encode(make_flow())
        record = json.loads(line)
        self.assertTrue(line.startswith(b'{"version":%d,' % FORMAT_VERSION))
        self.assertEqual(record["request"]["headers"][1], ["X-Odd", "caf\xe9 \xff\x7f"])
        self.assertEqual(record["request"]["headers"][3], ["X-ODD", "third \xc3\xa9"])
        self.assertEqual(base64.b64decode(record["request"]["content"]), ALL_BYTES)
        self.assertEqual(record["server_conn"]["alpn"], "h\xff")
        self.assertEqual(record["server_conn"]["peername"], ["93.184.216.34", 443])
        certificate = record["server_conn"]["certificate"]
        self.assertEqual(certificate["subject"], "CN=example.com")
        self.assertEqual(certificate["dns_names"], ["example.com"])
        self.assertEqual(certificate["ip_addresses"], ["93.184.216.34"])
        self.assertEqual(certificate["sha256"], CERTIFICATE.sha256)
        self.assertEqual(record["version"], FORMAT_VERSION)
        self.assertNotIn("version", record["request"])
        self.assertEqual(record["metadata"]["tags"], ["a", "b"])

    def test_one_line_per_flow(self) -> None:
        """
        Each flow is one ASCII line ending in a newline, with no other
        newline, even when bodies, headers and comments hold newlines.
        """
        data = encode(make_flow(), failed_flow(), make_flow())
        lines = data.split(b"\n")
        self.assertEqual(lines[-1], b"")
        self.assertEqual(len(lines), 4)
        for line in lines[:-1]:
            self.assertIsInstance(json.loads(line), dict)
            line.decode("ascii")
            self.assertNotIn(b"\r", line)

    def test_flushes_each_flow(self) -> None:
        """
        The writer writes each flow in one call and flushes it at once.
        """
        out = RecordingFile()
        writer = FlowWriter(out)
        writer.add(make_flow())
        self.assertEqual(out.calls, ["write", "flush"])
        writer.add(failed_flow())
        self.assertEqual(out.calls, ["write", "flush", "write", "flush"])
        self.assertEqual(out.getvalue().count(b"\n"), 2)

    def test_close(self) -> None:
        """
        ``close`` closes the file; adding afterwards fails, closing again
        does nothing.
        """
        out = io.BytesIO()
        writer = FlowWriter(out)
        writer.close()
        self.assertTrue(out.closed)
        self.assertRaises(ValueError, writer.add, make_flow())
        writer.close()

    def test_context_manager(self) -> None:
        """
        Leaving a ``with`` block closes the writer's file.
        """
        out = io.BytesIO()
        with FlowWriter(out) as writer:
            writer.add(make_flow())
            self.assertFalse(out.closed)
        self.assertTrue(out.closed)

    def test_unwritable_metadata(self) -> None:
        """
        Metadata JSON cannot hold is refused, naming the flow, and nothing
        is written.
        """
        flow = make_flow()
        flow.metadata["raw"] = b"bytes"
        out = RecordingFile()
        with self.assertRaises(FlowFileError) as caught:
            FlowWriter(out).add(flow)
        self.assertIn(flow.id, str(caught.exception))
        self.assertEqual(out.calls, [])

    def test_dump_and_load(self) -> None:
        """
        ``dump_flows`` writes a file ``load_flows`` reads back, and returns
        the count.
        """
        path = os.path.join(temp_dir(self), "flows.jsonl")
        flows = [make_flow(), failed_flow()]
        with open(path, "wb") as out:
            self.assertEqual(dump_flows(flows, out), 2)
        loaded = load_flows(path)
        self.assertEqual([f.get_state() for f in loaded], [f.get_state() for f in flows])


class ReadFlowsTests(SynchronousTestCase):
    """
    Tests for `read_flows`: laziness, errors, versions.
    """

    def assert_refused(self, data: bytes, *expected: str) -> str:
        """
        Reading *data* fails with a `FlowFileError` whose message contains
        each of *expected*.

        :returns: The message.
        """
        with self.assertRaises(FlowFileError) as caught:
            list(read_flows(io.BytesIO(data)))
        message = str(caught.exception)
        for part in expected:
            self.assertIn(part, message)
        return message

    def test_blank_lines_skipped(self) -> None:
        """
        Blank lines (and CRLF line ends) are skipped; line numbers still
        count them.
        """
        line = encode(make_flow())
        flows = list(
            read_flows(io.BytesIO(b"\n" + line + b"  \r\n" + line.replace(b"\n", b"\r\n")))
        )
        self.assertEqual(len(flows), 2)
        self.assert_refused(b"\n\n{\n", "line 3: ")

    def test_lazy(self) -> None:
        """
        Flows are yielded as their lines are read: a source that fails on
        its third line has already given the first two flows.
        """
        line = encode(make_flow())

        def source() -> Iterator[bytes]:
            yield line
            yield line
            raise OSError("disk gone")

        flows = read_flows(source())
        self.assertIsInstance(next(flows), HTTPFlow)
        self.assertIsInstance(next(flows), HTTPFlow)
        self.assertRaises(OSError, next, flows)

    def test_corrupt_json(self) -> None:
        """
        A line that is not JSON is reported with its number, after the good
        flows before it.
        """
        line = encode(make_flow())
        flows = read_flows(io.BytesIO(line + line + b'{"version": 1, "type"\n' + line))
        next(flows)
        next(flows)
        with self.assertRaises(FlowFileError) as caught:
            next(flows)
        self.assertTrue(str(caught.exception).startswith("line 3: not valid JSON"))

    def test_truncated_last_line(self) -> None:
        """
        A last line cut short (no newline, invalid JSON) says so.
        """
        line = encode(make_flow())
        self.assert_refused(line + line[:100], "line 2: ", "ends in the middle of this line")

    def test_not_utf8(self) -> None:
        """
        A line that is not UTF-8 is refused.
        """
        self.assert_refused(b'{"version": 1, "type": "\xff"}\n', "line 1: not valid JSON")

    def test_not_an_object(self) -> None:
        """
        A line holding JSON other than an object is refused.
        """
        self.assert_refused(b"[1, 2]\n", "line 1: expected a JSON object, got a list")

    def test_wrong_type(self) -> None:
        """
        A field of the wrong type is refused, naming the field.
        """
        record = first_record()
        record["request"]["port"] = "443"
        self.assert_refused(line_of(record), "line 1: request.port: expected an integer")
        record = first_record()
        record["live"] = 1
        self.assert_refused(line_of(record), "line 1: live: expected true or false")
        record = first_record()
        record["request"]["headers"][2] = ["x-odd"]
        self.assert_refused(line_of(record), "request.headers[2]: expected a list of two items")

    def test_missing_key(self) -> None:
        """
        A record without a key of the format is refused.
        """
        record = first_record()
        del record["response"]["reason"]
        self.assert_refused(line_of(record), "line 1: response: missing keys ['reason']")

    def test_unknown_key(self) -> None:
        """
        A record with a key the format does not have is refused.
        """
        record = first_record()
        record["udp_messages"] = None
        self.assert_refused(line_of(record), "line 1: unknown keys ['udp_messages']")
        record = first_record()
        record["client_conn"]["cipher"] = "x"
        self.assert_refused(line_of(record), "client_conn: unknown keys ['cipher']")

    def test_bad_base64(self) -> None:
        """
        A body that is not base64 is refused.
        """
        record = first_record()
        record["response"]["content"] = "not base64!"
        self.assert_refused(line_of(record), "line 1: response.content: is not valid base64")

    def test_header_beyond_latin1(self) -> None:
        """
        A header with a character no byte stands for is refused.
        """
        record = first_record()
        record["request"]["headers"][0][1] = "\u20ac"
        self.assert_refused(line_of(record), "request.headers[0][1]: has characters above U+00FF")

    def test_other_flow_type(self) -> None:
        """
        A flow of another type is refused.
        """
        record = first_record()
        record["type"] = "tcp"
        self.assert_refused(line_of(record), "line 1: ", "'tcp'")

    def test_newer_version(self) -> None:
        """
        A line from a newer format version is refused with a hint to
        upgrade.
        """
        record = first_record()
        record["version"] = 99
        message = self.assert_refused(line_of(record))
        self.assertEqual(
            message,
            "line 1: flow format version 99 is newer than this twistproxy understands "
            f"({FORMAT_VERSION}); upgrade twistproxy",
        )

    def test_bad_version(self) -> None:
        """
        A missing or non-integer version, or one that never existed, is
        refused.
        """
        for version in (None, "1", True, 1.0):
            record = first_record()
            record["version"] = version
            self.assert_refused(line_of(record), "line 1: version: missing or not an integer")
        record = first_record()
        record["version"] = 0
        self.assert_refused(line_of(record), "line 1: version: flow format version 0 is unknown")

    def test_upgrade_chain(self) -> None:
        """
        An older record goes through each upgrade in turn before it is
        read.
        """
        calls = []

        def v0_to_v1(record: dict[str, Any]) -> dict[str, Any]:
            calls.append(sorted(record)[:2])
            return {**record, "comment": "upgraded"}

        self.patch(flowfile, "_UPGRADES", {**flowfile._UPGRADES, 0: v0_to_v1})
        record = first_record()
        record["version"] = 0
        del record["comment"]
        for message in ("request", "response"):  # version 1 had no body_size
            if record[message] is not None:
                del record[message]["body_size"]
        [flow] = read_flows(io.BytesIO(line_of(record)))
        self.assertEqual(flow.comment, "upgraded")
        self.assertEqual(calls, [["client_conn", "error"]])

    def test_versions_pinned(self) -> None:
        """
        The file format encodes the current flow state version.  When
        ``FLOW_STATE_VERSION`` changes, bump ``FORMAT_VERSION``, add an
        upgrade to ``_UPGRADES`` and update this pair.
        """
        self.assertEqual((FORMAT_VERSION, FLOW_STATE_VERSION), (6, 6))

    def test_certificate_round_trip(self) -> None:
        """
        The server's certificate is kept by a file: written and read back,
        it is equal, and a flow without one reads back without one.
        """
        [restored] = read_flows(io.BytesIO(encode(make_flow())))
        self.assertEqual(restored.server_conn.certificate, CERTIFICATE)
        bare = HTTPFlow(Client(), Server(), now=lambda: 5.0)
        [restored] = read_flows(io.BytesIO(encode(bare)))
        self.assertIsNone(restored.server_conn.certificate)

    def test_certificate_checked(self) -> None:
        """
        A certificate with a field of the wrong type is refused, naming it.
        """
        record = json.loads(encode(make_flow()))
        record["server_conn"]["certificate"]["dns_names"] = "example.com"
        with self.assertRaises(ValueError) as caught:
            list(read_flows(io.BytesIO(line_of(record))))
        self.assertIn("server_conn.certificate.dns_names", str(caught.exception))

    def test_v5_sample_loads(self) -> None:
        """
        The committed version 5 sample (written before certificates were
        kept) loads: its TLS facts as written, no certificate.
        """
        [flow] = load_flows(os.path.join(DATA, "flows-v5.jsonl"))
        self.assertEqual(flow.id, "5b2e7c1a-0d4f-4a6b-9e21-3c8f0a7d6e55")
        server = flow.server_conn
        self.assertTrue(server.tls_established)
        self.assertEqual((server.sni, server.alpn, server.tls_version),
                         ("shop.example.com", b"http/1.1", "TLSv1.3"))
        self.assertIsNone(server.certificate)
        assert flow.response is not None
        self.assertEqual(flow.response.content, b"<p>cart</p>\n")
        self.assertEqual(flow.comment, "written by format version 5")

    def test_v1_sample_loads(self) -> None:
        """
        The committed version 1 sample still loads, whole.
        """
        flows = load_flows(os.path.join(DATA, "flows-v1.jsonl"))
        self.assertEqual(len(flows), 3)
        first, second, third = flows
        self.assertEqual(first.id, "3f1d2c4b-5a69-4e7f-8a1b-9c0d1e2f3a41")
        assert first.request is not None and first.response is not None
        self.assertEqual(first.request.url, "https://shop.example.com/search?q=caf%C3%A9")
        self.assertEqual(first.request.headers.get_all_raw(b"x-trace"), [b"a", b"b"])
        self.assertEqual(first.request.headers.get_raw(b"x-latin1"), b"caf\xe9 \xff")
        self.assertEqual(first.response.text, "<p>caf\u00e9 \u2014 r\u00e9sultats</p>\n")
        self.assertEqual(gzip.decompress(first.response.raw_content or b""), first.response.content)
        self.assertEqual(first.server_conn.alpn, b"http/1.1")
        self.assertEqual(first.mode, "regular")  # version 5 added the mode
        self.assertIsNone(first.server_conn.certificate)  # version 6 the certificate
        self.assertEqual((first.marked, first.comment), (":star:", "first flow"))
        self.assertEqual(first.metadata, {"tags": ["sample", "v1"], "score": 0.5})
        self.assertEqual(first.response.timestamp_end, 1718183702.35)
        assert second.request is not None and second.response is not None
        self.assertEqual(second.request.content, ALL_BYTES)
        self.assertEqual(second.response.content, b"\x00\x01\xfe\xff")
        self.assertEqual(second.is_replay, "request")
        self.assertIsNone(third.response)
        self.assertEqual(
            third.error, Error("Connection refused: down.example.org:443", 1718183704.25)
        )


def unwritable(**changes: Any) -> HTTPFlow:
    """
    :func:`make_flow`'s flow with *changes* applied: each keyword names a
    message and one of its attributes (``response_reason="..."``) to set,
    or ``request_fields``/``response_fields``, header fields to add.
    """
    flow = make_flow()
    for key, value in changes.items():
        message = getattr(flow, key.partition("_")[0])
        attribute = key.partition("_")[2]
        if attribute == "fields":  # past the setter's checks, as a file could hold them
            message.headers = Headers([*message.headers.fields, *value])
        else:
            setattr(message, attribute, value)
    return flow


class CheckedRecordingTests(SynchronousTestCase):
    """
    Tests for the check `read_flows` makes of every flow: a request or
    response that could not be written as it stands (as replay would write
    it) is refused where it is read, naming the line and the field.
    """

    def assert_refused(self, flow: HTTPFlow, expected: str) -> None:
        """
        A flow file of a good flow and then *flow* gives the good flow, then
        fails with a one-line `FlowFileError` that is exactly *expected*.
        """
        flows = read_flows(io.BytesIO(encode(make_flow(), flow)))
        self.assertIsInstance(next(flows), HTTPFlow)
        with self.assertRaises(FlowFileError) as caught:
            next(flows)
        message = str(caught.exception)
        self.assertEqual(message, expected)
        self.assertNotIn("\n", message)
        self.assertNotIn("\r", message)

    def test_response_reason_with_crlf(self) -> None:
        """
        A recorded reason phrase holding CR LF (a header smuggled into the
        status line) is refused.
        """
        self.assert_refused(
            unwritable(response_reason="OK\r\nSet-Cookie: a=b"),
            "line 2: invalid response reason: 'OK\\r\\nSet-Cookie: a=b' holds a CR, LF "
            "or control",
        )

    def test_request_path_with_crlf(self) -> None:
        """
        A recorded request path holding CR LF is refused.
        """
        self.assert_refused(
            unwritable(request_path="/a HTTP/1.1\r\nHost: evil\r\n\r\nGET /b"),
            "line 2: invalid request path: '/a HTTP/1.1\\r\\nHost: evil\\r\\n\\r\\nGET /b' "
            "is not a path starting with '/' without spaces or controls",
        )

    def test_header_name_with_space(self) -> None:
        """
        A header name with a space in it, which is not a token, is refused.
        """
        self.assert_refused(
            unwritable(request_fields=[(b"X Bad", b"v")]),
            "line 2: invalid request header name: b'X Bad' is not a token",
        )

    def test_header_value_with_lf(self) -> None:
        """
        A header value holding a bare LF is refused.
        """
        self.assert_refused(
            unwritable(response_fields=[(b"X-Split", b"a\nInjected: 1")]),
            "line 2: invalid response header value: b'X-Split' holds a CR, LF or NUL",
        )

    def test_other_fields(self) -> None:
        """
        A method that is not a token, a scheme that is not HTTP and a
        status out of range are refused too.
        """
        cases = [
            (unwritable(request_method="GET /x"), "invalid request method: "),
            (unwritable(request_scheme="ftp"), "invalid request scheme: "),
            (unwritable(request_host="exa mple.com"), "invalid request host: "),
            (unwritable(response_status_code=1000), "invalid response status: "),
        ]
        for flow, expected in cases:
            with self.subTest(expected=expected):
                with self.assertRaises(FlowFileError) as caught:
                    list(read_flows(io.BytesIO(encode(flow))))
                self.assertTrue(str(caught.exception).startswith(f"line 1: {expected}"))

    def test_request_without_response(self) -> None:
        """
        A flow without a response has only its request checked.
        """
        [flow] = read_flows(io.BytesIO(encode(failed_flow())))
        self.assertIsNone(flow.response)
        bad = failed_flow()
        assert bad.request is not None
        bad.request.path = "/\n"
        with self.assertRaises(FlowFileError) as caught:
            list(read_flows(io.BytesIO(encode(bad))))
        self.assertTrue(str(caught.exception).startswith("line 1: invalid request path: "))

    def test_load_flows(self) -> None:
        """
        `load_flows` refuses such a file as `read_flows` does.
        """
        path = os.path.join(temp_dir(self), "bad.jsonl")
        with open(path, "wb") as out:
            dump_flows([make_flow(), unwritable(response_reason="OK\n")], out)
        with self.assertRaises(FlowFileError) as caught:
            load_flows(path)
        self.assertTrue(str(caught.exception).startswith("line 2: invalid response reason: "))
