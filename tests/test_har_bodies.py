"""
Tests for :mod:`twistproxy.har` on bodies the proxy did not record whole: a
body not recorded stays apart from an empty one, both ways, and so does one
recorded only in part; a ``mimeType`` no header gives back is kept.  And
for skipping unreadable entries.
"""

from __future__ import annotations

import gzip
from typing import Any

from twisted.trial.unittest import SynchronousTestCase

from tests.test_har import check_har, minimal_entry
from twistproxy.connection import Client, Server
from twistproxy.errors import FlowFileError
from twistproxy.har import from_har, to_har
from twistproxy.headers import Headers
from twistproxy.http import HTTPFlow, Request, Response


def flow_with(request_body: bytes | None, response_body: bytes | None, *,
              request_size: int | None = None, response_size: int | None = None,
              headers: dict[str, str] | None = None) -> HTTPFlow:
    """
    A POST flow whose request and response bodies are *request_body* and
    *response_body* as recorded (``None``: not recorded), with the sizes
    the proxy counted when they streamed past the body limit.
    """
    flow = HTTPFlow(Client(), Server(), now=lambda: 1.0)
    flow.request = Request.make("POST", "http://example.com/up", b"",
                                {"Content-Type": "text/plain"})
    flow.request.raw_content = request_body
    flow.request.body_size = request_size
    flow.response = Response.make(200, b"", headers or {"Content-Type": "text/plain"})
    flow.response.raw_content = response_body
    flow.response.body_size = response_size
    return flow


def round_trip(test: SynchronousTestCase, flow: HTTPFlow) -> tuple[dict[str, Any], HTTPFlow]:
    """*flow* exported (checked against HAR 1.2) and imported back."""
    har = to_har([flow], creator_version="1")
    check_har(test, har)
    [back] = from_har(har)
    return har["log"]["entries"][0], back


class NotRecordedTests(SynchronousTestCase):
    """
    "Not recorded" and "empty" stay apart.
    """

    def test_flows_har_flows(self) -> None:
        """
        A body not recorded (size known or not) is exported without
        ``text``, marked ``_notRecorded``, and read back not recorded, with
        its size; an empty body stays empty.
        """
        for size in (None, 5000):
            with self.subTest(size=size):
                entry, back = round_trip(self, flow_with(None, None, request_size=size,
                                                         response_size=size))
                self.assertIs(entry["response"]["content"]["_notRecorded"], True)
                self.assertNotIn("text", entry["response"]["content"])
                self.assertIs(entry["request"]["postData"]["_notRecorded"], True)
                assert back.request is not None and back.response is not None
                for message in (back.request, back.response):
                    self.assertIsNone(message.raw_content)
                    self.assertEqual(message.body_size, size)
        entry, back = round_trip(self, flow_with(b"", b""))
        self.assertEqual(entry["response"]["content"]["text"], "")
        self.assertNotIn("postData", entry["request"])
        assert back.request is not None and back.response is not None
        self.assertEqual((back.request.raw_content, back.response.raw_content), (b"", b""))

    def test_har_flows_har(self) -> None:
        """
        A browser's entry without ``text`` (size 12) is read as not
        recorded and exported again so, never as an empty body; one of size
        0 is empty.  A request with a ``bodySize`` but no ``postData`` was
        not recorded either.
        """
        entry = minimal_entry()
        entry["request"]["bodySize"] = 30
        entry["response"] = {"status": 200, "bodySize": -1,
                             "content": {"size": 12, "mimeType": "text/html"}}
        [flow] = from_har({"log": {"entries": [entry]}})
        assert flow.request is not None and flow.response is not None
        self.assertEqual((flow.request.raw_content, flow.request.body_size), (None, 30))
        self.assertEqual((flow.response.raw_content, flow.response.body_size), (None, 12))
        again = to_har([flow], creator_version="1")["log"]["entries"][0]
        self.assertEqual(again["response"]["content"],
                         {"size": 12, "mimeType": "text/html", "_notRecorded": True})
        [flow] = from_har({"log": {"entries": [again]}})
        assert flow.response is not None
        self.assertIsNone(flow.response.raw_content)
        entry["response"]["content"] = {"size": 0, "mimeType": "text/html"}
        del entry["request"]["bodySize"]
        [flow] = from_har({"log": {"entries": [entry]}})
        assert flow.request is not None and flow.response is not None
        self.assertEqual((flow.request.raw_content, flow.response.raw_content), (b"", b""))


class TruncatedTests(SynchronousTestCase):
    """
    A body recorded only in part never reads back as a whole one.
    """

    def test_round_trip(self) -> None:
        """
        The recorded start is exported as it travelled (a gzip'd start is
        not decoded), marked ``_truncated``, with the whole size as
        ``bodySize``; read back it is the same start, truncated.
        """
        start = gzip.compress(b"x" * 10_000)[:40]
        flow = flow_with(b"the start", start, request_size=900, response_size=5000,
                         headers={"Content-Type": "text/plain", "Content-Encoding": "gzip"})
        entry, back = round_trip(self, flow)
        content = entry["response"]["content"]
        self.assertIs(content["_truncated"], True)
        self.assertIs(content["_undecoded"], True)
        self.assertEqual(entry["response"]["bodySize"], 5000)
        self.assertEqual(entry["request"]["postData"]["text"], "the start")
        assert back.request is not None and back.response is not None
        self.assertEqual((back.response.raw_content, back.response.body_size), (start, 5000))
        self.assertEqual((back.request.raw_content, back.request.body_size), (b"the start", 900))
        self.assertTrue(back.response.truncated and back.request.truncated)

    def test_unknown_size_not_recorded(self) -> None:
        """
        A ``_truncated`` body whose whole size is not given (or not larger
        than the text) is read as not recorded.
        """
        entry = minimal_entry()
        for size in (-1, 3):
            entry["response"] = {"status": 200, "bodySize": size,
                                 "content": {"size": 3, "mimeType": "text/plain",
                                             "text": "abc", "_truncated": True}}
            [flow] = from_har({"log": {"entries": [entry]}})
            assert flow.response is not None
            self.assertIsNone(flow.response.raw_content)


class MimeTypeTests(SynchronousTestCase):
    """
    A ``mimeType`` without a Content-Type header survives import and export.
    """

    def test_kept_without_header(self) -> None:
        """
        With no Content-Type header, the entry's ``mimeType`` (request and
        response) is kept in ``flow.metadata["har"]`` and exported again;
        with one, the header gives it (and nothing is kept).
        """
        entry = minimal_entry()
        entry["request"]["method"] = "POST"
        entry["request"]["postData"] = {"mimeType": "application/json", "text": "{}"}
        entry["response"] = {"status": 200, "headers": [],
                             "content": {"size": 2, "mimeType": "text/html", "text": "hi"}}
        [flow] = from_har({"log": {"entries": [entry]}})
        self.assertEqual(flow.metadata["har"], {"request_mime_type": "application/json",
                                                "response_mime_type": "text/html"})
        again = to_har([flow], creator_version="1")["log"]["entries"][0]
        self.assertEqual(again["response"]["content"]["mimeType"], "text/html")
        self.assertEqual(again["request"]["postData"]["mimeType"], "application/json")
        entry["response"]["headers"] = [{"name": "Content-Type", "value": "text/plain"}]
        [flow] = from_har({"log": {"entries": [entry]}})
        self.assertNotIn("response_mime_type", flow.metadata["har"])
        again = to_har([flow], creator_version="1")["log"]["entries"][0]
        self.assertEqual(again["response"]["content"]["mimeType"], "text/plain")


class SkipEntryTests(SynchronousTestCase):
    """
    Tests for ``from_har``'s *on_error*.
    """

    def test_skips_and_counts(self) -> None:
        """
        With *on_error*, each malformed entry is handed over (named) and
        skipped; without it the first one ends the reading.
        """
        entries = [minimal_entry(), {"request": {}}, minimal_entry(), 7]
        errors: list[FlowFileError] = []
        flows = list(from_har({"log": {"entries": entries}}, on_error=errors.append))
        self.assertEqual(len(flows), 2)
        self.assertEqual([str(e).split(":")[0] for e in errors],
                         ["log.entries[1]", "log.entries[3]"])
        self.assertRaises(FlowFileError, list, from_har({"log": {"entries": entries}}))


class TrailerTests(SynchronousTestCase):
    """Trailers go into HAR as ``_trailers`` (HAR 1.2 has none) and come back."""

    def test_round_trip(self) -> None:
        """Both messages' trailers, in order and case; none stays none."""
        flow = flow_with(b"up", b"down")
        assert flow.request is not None and flow.response is not None
        flow.request.trailers = Headers([(b"X-Checksum", b"abc")])
        flow.response.trailers = Headers([(b"grpc-status", b"0"), (b"grpc-message", b"ok")])
        entry, back = round_trip(self, flow)
        self.assertEqual(entry["response"]["_trailers"],
                         [{"name": "grpc-status", "value": "0"},
                          {"name": "grpc-message", "value": "ok"}])
        assert back.request is not None and back.response is not None
        self.assertEqual(back.request.trailers, flow.request.trailers)
        self.assertEqual(back.response.trailers, flow.response.trailers)
        entry, plain = round_trip(self, flow_with(b"up", b"down"))
        assert plain.response is not None
        self.assertNotIn("_trailers", entry["response"])
        self.assertIsNone(plain.response.trailers)

    def test_bad_trailers_refused(self) -> None:
        """A trailer entry that is not a header is refused, naming where."""
        entry = minimal_entry()
        entry["response"] = {"status": 200, "_trailers": [{"value": "no name"}]}
        with self.assertRaisesRegex(FlowFileError, r"response\._trailers"):
            list(from_har({"log": {"version": "1.2", "entries": [entry]}}))
