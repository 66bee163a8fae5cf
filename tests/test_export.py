"""
Tests for :mod:`twistproxy.export` and the ``export-*`` commands of
``python -m twistproxy.flowfile``.  The curl commands are run against an
origin in ``tests/e2e/test_export_e2e.py``.
"""

from __future__ import annotations

import io
import os
import shlex
import subprocess
import sys

from twisted.trial.unittest import SynchronousTestCase

from tests.test_flowfile import temp_dir
from twistproxy.connection import Client, Server
from twistproxy.export import ExportError, to_curl, to_httpie, to_raw
from twistproxy.flow import Flow
from twistproxy.flowfile import dump_flows, main
from twistproxy.headers import Headers
from twistproxy.http import HTTPFlow, Request, Response


def _flow(request: Request | None, response: Response | None = None) -> HTTPFlow:
    """:returns: An HTTP flow of *request* and *response*."""
    flow = HTTPFlow(Client(), Server(), now=lambda: 0.0)
    flow.request = request
    flow.response = response
    return flow


def _post(body: bytes, headers: dict[str, str] | None = None) -> HTTPFlow:
    """:returns: A flow of a POST to ``http://example.com/p`` with *body*."""
    return _flow(Request.make("POST", "http://example.com/p", body, headers or {}))


def _sh(command: str) -> bytes:
    """:returns: What ``/bin/sh`` writes running *command*."""
    return subprocess.run(["/bin/sh", "-c", command], capture_output=True, check=True,
                          timeout=10).stdout


class CurlTests(SynchronousTestCase):
    """
    Tests for :func:`to_curl`.
    """

    def test_get(self) -> None:
        """
        A GET is ``curl`` with its headers and URL; the Host header the URL
        gives is left out, an empty header is written ``Name;``.
        """
        request = Request.make("GET", "http://example.com:8080/a?b=1", headers={"X-E": ""})
        request.headers.add("X-Twice", "1")
        request.headers.add("X-Twice", "2")
        self.assertEqual(
            shlex.split(to_curl(_flow(request))),
            ["curl", "-H", "X-E;", "-H", "X-Twice: 1", "-H", "X-Twice: 2",
             "http://example.com:8080/a?b=1"],
        )

    def test_text_body(self) -> None:
        """
        A text body is written in the command with ``--data-raw`` (no ``@``
        file reading), quoted for the shell; Content-Length is left to
        curl, and a Content-Type curl would add is suppressed.
        """
        body = "@/etc/passwd 'it''s' $HOME é".encode()
        command = to_curl(_post(body))
        self.assertEqual(
            shlex.split(command),
            ["curl", "-H", "Content-Type:", "http://example.com/p", "--data-raw", body.decode()],
        )
        self.assertNotIn("\n", command)

    def test_binary_body(self) -> None:
        """
        Another body is piped in by ``printf`` and read with
        ``--data-binary @-``; the shell gives back every byte.
        """
        body = b"-" + bytes(range(256)) + b"%s%%\\'\"\n"
        command = to_curl(_post(body, {"Content-Type": "application/x"}))
        pipe, _, curl = command.partition(" | ")
        self.assertEqual(_sh(pipe), body)
        self.assertEqual(shlex.split(curl)[-2:], ["--data-binary", "@-"])
        self.assertEqual(shlex.split(curl)[1:3], ["-H", "Content-Type: application/x"])
        self.assertNotIn("\n", command)

    def test_methods(self) -> None:
        """
        ``-X`` is given when curl would choose another method; HEAD is
        ``--head``; an empty body keeps its ``Content-Length: 0``.
        """
        cases = {
            ("GET", b""): ["curl"],
            ("POST", b"x"): ["curl"],
            ("GET", b"x"): ["curl", "-X", "GET"],
            ("PUT", b"x"): ["curl", "-X", "PUT"],
            ("HEAD", b""): ["curl", "--head"],
            ("DELETE", b""): ["curl", "-X", "DELETE"],
        }
        for (method, body), start in cases.items():
            argv = shlex.split(to_curl(_flow(Request.make(method, "http://e.x/", body))))
            self.assertEqual(argv[: len(start)], start, method)
            self.assertNotIn("-X", argv[len(start) :], method)
        argv = shlex.split(to_curl(_flow(Request.make("POST", "http://e.x/"))))
        self.assertEqual(argv, ["curl", "-X", "POST", "-H", "Content-Length: 0", "http://e.x/"])

    def test_url_from_host_header(self) -> None:
        """
        The URL is built from the Host header; brackets in it turn off
        curl's globbing; HTTP/1.0 is asked for again.
        """
        request = Request.make("GET", "http://10.0.0.1/x?a=[1]", headers={"Host": "example.com"})
        request.http_version = "HTTP/1.0"
        self.assertEqual(
            shlex.split(to_curl(_flow(request))),
            ["curl", "--http1.0", "--globoff", "http://example.com/x?a=[1]"],
        )

    def test_encoded_body_sent_as_recorded(self) -> None:
        """
        A gzip body is sent as recorded, with its Content-Encoding.
        """
        flow = _post(b"hello", {"Content-Encoding": "gzip", "Content-Type": "text/plain"})
        assert flow.request is not None
        raw = flow.request.raw_content
        assert raw is not None
        pipe, _, curl = to_curl(flow).partition(" | ")
        self.assertEqual(_sh(pipe), raw)
        self.assertIn("Content-Encoding: gzip", shlex.split(curl))

    def test_cannot_export(self) -> None:
        """
        A flow without a request, a CONNECT, a body not recorded in full and
        a header that is not UTF-8 are refused with :class:`ExportError`.
        """
        not_captured = _post(b"")
        assert not_captured.request is not None
        not_captured.request.raw_content = None
        truncated = _post(b"abc")
        assert truncated.request is not None
        truncated.request.body_size = 10
        bad_header = _flow(Request.make("GET", "http://e.x/", headers=[(b"X-B", b"\xff")]))
        cases = {
            "the flow has no request": [_flow(None), Flow(Client(), Server())],
            "a CONNECT request cannot be sent again this way": [
                _flow(Request("e.x", 443, "CONNECT", "", "e.x:443", "", "HTTP/1.1", Headers(),
                              b""))
            ],
            "the request body was not recorded in full": [not_captured, truncated],
            "header 'X-B' is not UTF-8 text": [bad_header],
        }
        for message, flows in cases.items():
            for flow in flows:
                for export in (to_curl, to_httpie):
                    error = self.assertRaises(ExportError, export, flow)
                    self.assertEqual(str(error), message)


class HttpieTests(SynchronousTestCase):
    """
    Tests for :func:`to_httpie`.
    """

    def test_get(self) -> None:
        """
        A GET is ``http GET URL`` and ``Name:value`` items; an empty header
        is ``Name;``.
        """
        request = Request.make("GET", "http://example.com/a", headers={"X-A": "1", "X-E": ""})
        self.assertEqual(
            shlex.split(to_httpie(_flow(request))),
            ["http", "GET", "http://example.com/a", "X-A:1", "X-E;"],
        )

    def test_bodies(self) -> None:
        """
        A body is piped in by ``printf``; HTTPie's own Content-Type is
        suppressed when the request had none.
        """
        for body in (b"plain 'text' $x", bytes(range(256))):
            pipe, _, command = to_httpie(_post(body)).partition(" | ")
            self.assertEqual(_sh(pipe), body)
            self.assertEqual(shlex.split(command), ["http", "POST", "http://example.com/p",
                                                    "Content-Type:"])


class RawTests(SynchronousTestCase):
    """
    Tests for :func:`to_raw`.
    """

    def test_request_and_response(self) -> None:
        """
        The request then the response, as recorded, an empty line between.
        """
        request = Request.make("POST", "http://example.com/p?q", b"hi", {"X-A": "1"})
        response = Response.make(201, b"made", {"X-B": "2"})
        self.assertEqual(
            to_raw(_flow(request, response)),
            b"POST /p?q HTTP/1.1\r\nHost: example.com\r\nX-A: 1\r\nContent-Length: 2\r\n\r\nhi"
            b"\r\n\r\n"
            b"HTTP/1.1 201 Created\r\nX-B: 2\r\nContent-Length: 4\r\n\r\nmade",
        )
        self.assertEqual(to_raw(_flow(request)).count(b"HTTP/1.1"), 1)

    def test_chunked_with_trailers(self) -> None:
        """
        A chunked body is written as one chunk, the last chunk and the
        trailers.
        """
        response = Response(
            "HTTP/1.1", 200, "OK", Headers([(b"Transfer-Encoding", b"chunked")]), b"hello",
            trailers=Headers([(b"X-Sum", b"abc")]),
        )
        raw = to_raw(_flow(Request.make("GET", "http://e.x/"), response))
        self.assertTrue(raw.endswith(b"\r\n\r\n5\r\nhello\r\n0\r\nX-Sum: abc\r\n\r\n"), raw)

    def test_response_not_recorded(self) -> None:
        """
        A response whose body was not recorded is refused.
        """
        response = Response("HTTP/1.1", 200, "OK", Headers(), None)
        error = self.assertRaises(
            ExportError, to_raw, _flow(Request.make("GET", "http://e.x/"), response)
        )
        self.assertEqual(str(error), "the response body was not recorded in full")


class CommandTests(SynchronousTestCase):
    """
    Tests for ``export-curl``, ``export-httpie`` and ``export-raw``, run
    in-process.
    """

    def setUp(self) -> None:
        """
        Capture standard output and error; write a flow file of a GET, a
        POST and a CONNECT.
        """
        self.stderr = io.StringIO()
        self.patch(sys, "stderr", self.stderr)
        self.stdout = io.TextIOWrapper(io.BytesIO())
        self.patch(sys, "stdout", self.stdout)
        self.path = os.path.join(temp_dir(self), "flows.jsonl")
        self.flows = [
            _flow(Request.make("GET", "http://example.com/a"), Response.make(200, b"ok")),
            _post(b"body"),
            _flow(Request("e.x", 443, "CONNECT", "", "e.x:443", "", "HTTP/1.1", Headers(), b"")),
        ]
        with open(self.path, "wb") as out:
            dump_flows(self.flows, out)

    def output(self) -> bytes:
        """:returns: What was written to standard output."""
        return self.stdout.buffer.getvalue()  # type: ignore[attr-defined]

    def test_curl_filtered(self) -> None:
        """
        ``--filter`` chooses the flows; one command a line.
        """
        self.assertEqual(main(["export-curl", self.path, "--filter", "~m POST"]), 0)
        self.assertEqual(self.output().decode(), to_curl(self.flows[1]) + "\n")
        self.assertEqual(self.stderr.getvalue(), "")

    def test_skipped(self) -> None:
        """
        A flow that cannot be exported is named on standard error in one
        line and skipped; the exit status is 1, the others are written.
        """
        self.assertEqual(main(["export-httpie", self.path]), 1)
        expected = "".join(to_httpie(flow) + "\n" for flow in self.flows[:2])
        self.assertEqual(self.output().decode(), expected)
        self.assertEqual(
            self.stderr.getvalue(),
            f"python -m twistproxy.flowfile: flow {self.flows[2].id} skipped:"
            " a CONNECT request cannot be sent again this way\n",
        )

    def test_raw(self) -> None:
        """
        ``export-raw`` writes the flows' bytes, an empty line between.
        """
        self.assertEqual(main(["export-raw", self.path, "--filter", "!~m CONNECT"]), 0)
        self.assertEqual(
            self.output(), to_raw(self.flows[0]) + b"\r\n\r\n" + to_raw(self.flows[1])
        )

    def test_bad_filter(self) -> None:
        """
        A bad ``--filter`` is one line naming it and where the problem is.
        """
        self.assertEqual(main(["export-curl", self.path, "--filter", "~c x"]), 1)
        self.assertEqual(
            self.stderr.getvalue(),
            "python -m twistproxy.flowfile: error: --filter '~c x': expected a status code"
            " at column 4\n",
        )
        self.assertEqual(self.output(), b"")
