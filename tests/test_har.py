# -*- test-case-name: tests.test_har -*-
"""
Tests for :mod:`twistproxy.har`, HAR 1.2 export and import, and for the
command that converts between flow files and HAR files
(:func:`twistproxy.flowfile.main`).
"""

from __future__ import annotations

import base64
import copy
import gzip
import io
import json
import os
import sys
from datetime import datetime
from typing import Any

from twisted.trial.unittest import SynchronousTestCase

from tests.test_flowfile import ALL_BYTES, DATA, encode, failed_flow, make_flow, temp_dir
from twistproxy import flowfile, har
from twistproxy._headers import check_request, check_response
from twistproxy.connection import Client, Server
from twistproxy.errors import FlowFileError
from twistproxy.flow import Error
from twistproxy.flowfile import dump_flows, load_flows, main, read_flows
from twistproxy.har import from_har, to_har
from twistproxy.headers import Headers
from twistproxy.http import HTTPFlow, Request, Response

_NUM = (int, float)
_HAR_REQUIRED: dict[str, dict[str, Any]] = {
    "log": {"version": str, "creator": dict, "entries": list},
    "creator": {"name": str, "version": str},
    "entry": {
        "startedDateTime": str,
        "time": _NUM,
        "request": dict,
        "response": dict,
        "cache": dict,
        "timings": dict,
    },
    "request": {
        "method": str,
        "url": str,
        "httpVersion": str,
        "cookies": list,
        "headers": list,
        "queryString": list,
        "headersSize": int,
        "bodySize": int,
    },
    "response": {
        "status": int,
        "statusText": str,
        "httpVersion": str,
        "cookies": list,
        "headers": list,
        "content": dict,
        "redirectURL": str,
        "headersSize": int,
        "bodySize": int,
    },
    "content": {"size": int, "mimeType": str},
    "postData": {"mimeType": str},
    "timings": {"send": _NUM, "wait": _NUM, "receive": _NUM},
    "pair": {"name": str, "value": str},
    "cookie": {"name": str, "value": str},
    "cache": {},
}
_HAR_OPTIONAL: dict[str, dict[str, Any]] = {
    "log": {"browser": dict, "pages": list, "comment": str},
    "creator": {"comment": str},
    "entry": {"pageref": str, "serverIPAddress": str, "connection": str, "comment": str},
    "request": {"postData": dict, "comment": str},
    "response": {"comment": str},
    "content": {"compression": int, "text": str, "encoding": str, "comment": str},
    "postData": {"params": list, "text": str, "comment": str},
    "timings": {"blocked": _NUM, "dns": _NUM, "connect": _NUM, "ssl": _NUM, "comment": str},
    "pair": {"comment": str},
    "cookie": {
        "path": str,
        "domain": str,
        "expires": str,
        "httpOnly": bool,
        "secure": bool,
        "comment": str,
    },
    "cache": {
        "beforeRequest": (dict, type(None)),
        "afterRequest": (dict, type(None)),
        "comment": str,
    },
}


def check_har(test: SynchronousTestCase, har: Any) -> None:
    """
    Check *har* against the HAR 1.2 object model: each object has its
    required keys with the right types, optional keys have the right
    types, other keys are custom (start with ``_``), timings are ``-1`` or
    non-negative and ``time`` is their sum, dates are ISO 8601 with a
    timezone.
    """

    def check(kind: str, obj: Any, where: str) -> None:
        test.assertIsInstance(obj, dict, where)
        required, optional = _HAR_REQUIRED[kind], _HAR_OPTIONAL.get(kind, {})
        for key in required:
            test.assertIn(key, obj, f"{where} lacks {key}")
        for key, value in obj.items():
            if key.startswith("_"):
                continue
            types = required.get(key, optional.get(key))
            test.assertIsNotNone(types, f"{where}.{key} is not a HAR 1.2 field")
            test.assertIsInstance(value, types, f"{where}.{key}")
            if bool not in (types if isinstance(types, tuple) else (types,)):
                test.assertFalse(isinstance(value, bool), f"{where}.{key}")

    def check_date(value: str, where: str) -> None:
        test.assertIsNotNone(datetime.fromisoformat(value).tzinfo, where)

    test.assertEqual(list(har), ["log"])
    log = har["log"]
    check("log", log, "log")
    test.assertEqual(log["version"], "1.2")
    check("creator", log["creator"], "log.creator")
    for i, entry in enumerate(log["entries"]):
        where = f"log.entries[{i}]"
        check("entry", entry, where)
        check_date(entry["startedDateTime"], where)
        request, response = entry["request"], entry["response"]
        check("request", request, f"{where}.request")
        check("response", response, f"{where}.response")
        check("content", response["content"], f"{where}.response.content")
        if "encoding" in response["content"]:
            test.assertEqual(response["content"]["encoding"], "base64")
            base64.b64decode(response["content"]["text"], validate=True)
        if "postData" in request:
            check("postData", request["postData"], f"{where}.request.postData")
            for param in request["postData"].get("params", []):
                check("pair", param, f"{where}.request.postData.params")
        for key in ("headers", "queryString"):
            for pair in request[key]:
                check("pair", pair, f"{where}.request.{key}")
        for pair in response["headers"]:
            check("pair", pair, f"{where}.response.headers")
        for cookie in request["cookies"] + response["cookies"]:
            check("cookie", cookie, f"{where} cookie")
            if "expires" in cookie:
                check_date(cookie["expires"], f"{where} cookie")
        check("cache", entry["cache"], f"{where}.cache")
        timings = entry["timings"]
        check("timings", timings, f"{where}.timings")
        for key in ("blocked", "dns", "connect", "send", "wait", "receive", "ssl"):
            if key in timings:
                test.assertTrue(timings[key] == -1 or timings[key] >= 0, f"{where}.{key}")
        total = sum(
            timings[k]
            for k in ("blocked", "dns", "connect", "send", "wait", "receive")
            if timings.get(k, -1) >= 0
        )
        test.assertAlmostEqual(entry["time"], total, places=2)
    json.dumps(har, ensure_ascii=False).encode("utf-8")  # valid Unicode throughout


def har_flows() -> list[HTTPFlow]:
    """
    Flows of every kind HAR export must handle.
    """
    text = HTTPFlow(
        Client(),
        Server(address=("example.com", 80), peername=("93.184.216.34", 80), timestamp_start=99.0),
        now=lambda: 100.0,
    )
    text.request = Request.make(
        "GET",
        "http://example.com/search?q=caf%C3%A9&empty=&q=2",
        headers=[(b"Cookie", b"sid=abc; theme=dark"), (b"Cookie", b"lang=en")],
    )
    text.request.timestamp_start, text.request.timestamp_end = 100.0, 100.002
    text.response = Response.make(
        200,
        "h\u00e9llo \u2014 world",
        headers=[
            (b"Content-Encoding", b"gzip"),
            (b"Set-Cookie", b"sid=xyz; Path=/; Domain=example.com; HttpOnly; Secure"),
            (b"Set-Cookie", b"seen=1; Max-Age=60"),
            (b"Set-Cookie", b"old=; Expires=Thu, 01 Jan 1970 00:00:01 GMT"),
        ],
    )
    text.response.timestamp_start, text.response.timestamp_end = 100.25, 100.5
    text.comment = "the text flow"
    form = HTTPFlow(Client(), Server(), now=lambda: 200.0)
    form.request = Request.make(
        "POST",
        "https://example.com/login",
        b"user=a%40b.c&pw=x+y",
        {"Content-Type": "application/x-www-form-urlencoded"},
    )
    form.response = Response.make(302, b"", {"Location": "/home"})
    binary = make_flow()
    return [text, form, binary, failed_flow()]


def entries_of(flows: list[HTTPFlow]) -> list[dict[str, Any]]:
    """
    The HAR entries *flows* export to, checked against the model.
    """
    har = to_har(flows, creator_version="1.2.3")
    entries: list[dict[str, Any]] = har["log"]["entries"]
    return entries


class ToHARTests(SynchronousTestCase):
    """
    Tests for `to_har`.
    """

    def test_valid_har(self) -> None:
        """
        The export has the HAR 1.2 structure, with twistproxy as creator
        and no pages.
        """
        har = to_har(har_flows(), creator_version="1.2.3")
        check_har(self, har)
        self.assertEqual(har["log"]["creator"], {"name": "twistproxy", "version": "1.2.3"})
        self.assertEqual(har["log"]["pages"], [])
        self.assertEqual(len(har["log"]["entries"]), 4)
        self.assertNotIn("pageref", har["log"]["entries"][0])

    def test_request(self) -> None:
        """
        The request's method, URL, version and headers (in order, spelt as
        sent, repeats kept) are exported, with cookies and query string
        parsed.
        """
        request = entries_of(har_flows())[0]["request"]
        self.assertEqual(request["method"], "GET")
        self.assertEqual(request["url"], "http://example.com/search?q=caf%C3%A9&empty=&q=2")
        self.assertEqual(request["httpVersion"], "HTTP/1.1")
        self.assertEqual(
            request["headers"],
            [
                {"name": "Host", "value": "example.com"},
                {"name": "Cookie", "value": "sid=abc; theme=dark"},
                {"name": "Cookie", "value": "lang=en"},
            ],
        )
        self.assertEqual(
            request["cookies"],
            [
                {"name": "sid", "value": "abc"},
                {"name": "theme", "value": "dark"},
                {"name": "lang", "value": "en"},
            ],
        )
        self.assertEqual(
            request["queryString"],
            [
                {"name": "q", "value": "caf\u00e9"},
                {"name": "empty", "value": ""},
                {"name": "q", "value": "2"},
            ],
        )
        self.assertNotIn("postData", request)
        self.assertEqual((request["headersSize"], request["bodySize"]), (-1, 0))

    def test_text_content(self) -> None:
        """
        A text body is exported decoded (gzip undone) as text, with sizes.
        """
        flows = har_flows()
        response = entries_of(flows)[0]["response"]
        body = "h\u00e9llo \u2014 world".encode()
        self.assertEqual(response["content"]["text"], "h\u00e9llo \u2014 world")
        self.assertNotIn("encoding", response["content"])
        self.assertEqual(response["content"]["size"], len(body))
        self.assertEqual(response["content"]["mimeType"], "text/plain; charset=utf-8")
        assert flows[0].response is not None
        self.assertEqual(response["bodySize"], len(flows[0].response.raw_content or b""))
        self.assertEqual((response["status"], response["statusText"]), (200, "OK"))

    def test_charset_content(self) -> None:
        """
        A body in the Content-Type's charset is exported as text, decoded
        from that charset.
        """
        flow = make_flow()
        flow.response = Response.make(
            200, "caf\u00e9", {"Content-Type": "text/html; charset=ISO-8859-1"}
        )
        assert flow.response.raw_content == b"caf\xe9"
        content = entries_of([flow])[0]["response"]["content"]
        self.assertEqual((content["text"], content.get("encoding")), ("caf\u00e9", None))

    def test_binary_content(self) -> None:
        """
        A body that is not text in its charset is base64, and decodes to the
        exact bytes.
        """
        flow = make_flow()
        content = entries_of([flow])[0]["response"]["content"]
        self.assertEqual(content["encoding"], "base64")
        assert flow.response is not None
        self.assertEqual(base64.b64decode(content["text"]), flow.response.raw_content)
        self.assertEqual(content["size"], 259)

    def test_binary_post_data(self) -> None:
        """
        A binary request body is base64 in ``postData.text``, marked by the
        custom ``_encoding`` field (HAR 1.2 has none for requests).
        """
        post = entries_of([make_flow()])[0]["request"]["postData"]
        self.assertEqual(post["mimeType"], "application/octet-stream")
        self.assertEqual(post["_encoding"], "base64")
        self.assertEqual(base64.b64decode(post["text"]), ALL_BYTES)
        self.assertNotIn("params", post)

    def test_form_post_data(self) -> None:
        """
        A URL-encoded body is exported as text and as decoded params.
        """
        request = entries_of(har_flows())[1]["request"]
        self.assertEqual(
            request["postData"],
            {
                "mimeType": "application/x-www-form-urlencoded",
                "params": [{"name": "user", "value": "a@b.c"}, {"name": "pw", "value": "x y"}],
                "text": "user=a%40b.c&pw=x+y",
            },
        )
        self.assertEqual(request["bodySize"], 19)

    def test_response_cookies(self) -> None:
        """
        Set-Cookie headers become cookies with their attributes; Max-Age
        counts from the response's start.
        """
        cookies = entries_of(har_flows())[0]["response"]["cookies"]
        self.assertEqual(
            cookies,
            [
                {
                    "name": "sid",
                    "value": "xyz",
                    "path": "/",
                    "domain": "example.com",
                    "httpOnly": True,
                    "secure": True,
                },
                {
                    "name": "seen",
                    "value": "1",
                    "expires": "1970-01-01T00:02:40.250Z",
                    "httpOnly": False,
                    "secure": False,
                },
                {
                    "name": "old",
                    "value": "",
                    "expires": "1970-01-01T00:00:01.000Z",
                    "httpOnly": False,
                    "secure": False,
                },
            ],
        )

    def test_redirect_url(self) -> None:
        """
        ``redirectURL`` is the Location header, or empty.
        """
        entries = entries_of(har_flows())
        self.assertEqual(entries[1]["response"]["redirectURL"], "/home")
        self.assertEqual(entries[0]["response"]["redirectURL"], "")

    def test_timings(self) -> None:
        """
        send, wait and receive come from the timestamps (milliseconds) and
        ``time`` is their sum; what the proxy does not measure is -1.
        """
        entry = entries_of(har_flows())[0]
        self.assertEqual(entry["startedDateTime"], "1970-01-01T00:01:40.000Z")
        self.assertEqual(
            entry["timings"],
            {
                "blocked": -1,
                "dns": -1,
                "connect": -1,
                "send": 2.0,
                "wait": 248.0,
                "receive": 250.0,
                "ssl": -1,
            },
        )
        self.assertEqual(entry["time"], 500.0)

    def test_unknown_timings(self) -> None:
        """
        Missing timestamps give -1 timings, and the start falls back to the
        flow's creation time.
        """
        entry = entries_of(har_flows())[1]
        self.assertEqual(entry["startedDateTime"], "1970-01-01T00:03:20.000Z")
        timings = entry["timings"]
        self.assertEqual((timings["send"], timings["wait"], timings["receive"]), (-1, -1, -1))
        self.assertEqual(entry["time"], 0)

    def test_server_and_comment(self) -> None:
        """
        The server's IP address, the connection and the comment are
        exported when known.
        """
        flows = har_flows()
        entries = entries_of(flows)
        self.assertEqual(entries[0]["serverIPAddress"], "93.184.216.34")
        self.assertEqual(entries[0]["connection"], flows[0].server_conn.id)
        self.assertEqual(entries[0]["comment"], "the text flow")
        self.assertNotIn("serverIPAddress", entries[1])
        self.assertNotIn("connection", entries[1])

    def test_failed_flow(self) -> None:
        """
        A flow without a response is exported with status 0 and its error
        in ``_error``; wait runs until the error.
        """
        entry = entries_of([failed_flow()])[0]
        response = entry["response"]
        self.assertEqual((response["status"], response["_error"]), (0, "Connection refused"))
        self.assertEqual(response["headers"], [])
        self.assertEqual(entry["timings"]["wait"], 500.0)
        self.assertEqual(entry["timings"]["receive"], -1)

    def test_error_after_response(self) -> None:
        """
        A flow that failed after its response started keeps the response
        and gets ``_error`` too.
        """
        flow = make_flow()
        flow.error = Error("Connection lost", 1718183703.0)
        response = entries_of([flow])[0]["response"]
        self.assertEqual((response["status"], response["_error"]), (200, "Connection lost"))

    def test_connect_left_out(self) -> None:
        """
        CONNECT flows and flows without a request are not exported.
        """
        tunnel = HTTPFlow(Client(), Server(), now=lambda: 1.0)
        tunnel.request = Request(
            "example.com", 443, "CONNECT", "", "example.com:443", "", "HTTP/1.1", Headers(), b""
        )
        empty = HTTPFlow(Client(), Server(), now=lambda: 1.0)
        self.assertEqual(
            entries_of([tunnel, empty, failed_flow()])[0]["request"]["url"],
            "http://down.example.org/",
        )
        self.assertEqual(len(entries_of([tunnel, empty])), 0)

    def test_undecodable_text(self) -> None:
        """
        Bytes that are not UTF-8 in the path, reason and headers become
        valid Unicode: percent-escapes in the URL, latin-1 in headers,
        U+FFFD elsewhere.
        """
        flow = make_flow(path="/caf\udce9?x=\udcff")
        assert flow.response is not None
        flow.response.reason = "O\udcffK"
        har = to_har([flow], creator_version="1")
        check_har(self, har)
        entry = har["log"]["entries"][0]
        self.assertEqual(entry["request"]["url"], "https://example.com/caf%E9?x=%FF")
        self.assertEqual(entry["request"]["headers"][1]["value"], "caf\xe9 \xff\x7f")
        self.assertEqual(entry["request"]["headers"][3]["value"], "third \u00e9")
        self.assertEqual(entry["response"]["statusText"], "O\ufffdK")

    def test_undecoded_body(self) -> None:
        """
        A body that does not decode with its Content-Encoding is exported
        as it is, marked ``_undecoded``, and imported back unchanged.
        """
        flow = make_flow()
        assert flow.response is not None
        flow.response.headers["Content-Encoding"] = "gzip"
        content = entries_of([flow])[0]["response"]["content"]
        self.assertIs(content["_undecoded"], True)
        [restored] = from_har(to_har([flow], creator_version="1"))
        assert restored.response is not None
        self.assertEqual(restored.response.raw_content, flow.response.raw_content)


def browser_har() -> dict[str, Any]:
    """
    The committed browser export.
    """
    with open(os.path.join(DATA, "browser.har"), encoding="utf-8") as f:
        har: dict[str, Any] = json.load(f)
    return har


def har_with(entry: dict[str, Any]) -> dict[str, Any]:
    """
    A HAR document holding *entry* after the first entry of the browser
    export.
    """
    har = browser_har()
    har["log"]["entries"][1:] = [entry]
    return har


def minimal_entry() -> dict[str, Any]:
    """
    An entry with only what import needs.
    """
    return {
        "startedDateTime": "2024-06-12T11:15:02.500+02:00",
        "request": {"method": "GET", "url": "http://example.com/x"},
    }


class FromHARTests(SynchronousTestCase):
    """
    Tests for `from_har`.
    """

    def test_browser_export_matches(self) -> None:
        """
        Each entry of a browser's export becomes a flow whose request and
        response match the file: HTTP/2 pseudo-headers are dropped and a
        Host header added where there is none.
        """
        har = browser_har()
        flows = list(from_har(har))
        self.assertEqual(len(flows), len(har["log"]["entries"]))
        for flow, entry in zip(flows, har["log"]["entries"], strict=True):
            request, response = flow.request, flow.response
            assert request is not None
            self.assertEqual(request.method, entry["request"]["method"])
            self.assertEqual(request.url, entry["request"]["url"])
            expected = [
                (h["name"].encode(), h["value"].encode())
                for h in entry["request"]["headers"]
                if not h["name"].startswith(":")
            ]
            if not any(name.lower() == b"host" for name, _ in expected):
                expected.insert(0, (b"Host", request.host.encode()))
            self.assertEqual(list(request.headers.fields), expected)
            self.assertFalse(flow.live)
            if entry["response"]["status"] == 0:
                self.assertIsNone(response)
                continue
            assert response is not None
            self.assertEqual(response.status_code, entry["response"]["status"])
            self.assertEqual(response.reason, entry["response"]["statusText"])
            self.assertEqual(
                list(response.headers.fields),
                [(h["name"].encode(), h["value"].encode()) for h in entry["response"]["headers"]],
            )

    def test_http2_document(self) -> None:
        """
        The gzip'd HTTP/2 document: version normalised, body decoded from
        the text and encoded again with gzip, server address, timestamps
        from the timings.
        """
        har = browser_har()
        entry = har["log"]["entries"][0]
        flow = next(from_har(har))
        assert flow.request is not None and flow.response is not None
        request, response = flow.request, flow.response
        self.assertEqual(
            (request.scheme, request.host, request.port, request.path),
            ("https", "shop.example.com", 443, "/?q=shoes&page=2"),
        )
        self.assertEqual(request.http_version, "HTTP/2.0")
        self.assertEqual(request.headers.fields[0], (b"Host", b"shop.example.com"))
        self.assertEqual(request.raw_content, b"")
        self.assertEqual(response.content, entry["response"]["content"]["text"].encode())
        self.assertEqual(gzip.decompress(response.raw_content or b""), response.content)
        self.assertEqual(response.headers["content-encoding"], "gzip")
        self.assertEqual(flow.server_conn.address, ("shop.example.com", 443))
        self.assertEqual(flow.server_conn.peername, ("2001:db8::10", 443))
        started = datetime.fromisoformat("2024-06-12T09:15:02.118+00:00").timestamp()
        self.assertEqual(flow.timestamp_created, started)
        self.assertAlmostEqual(request.timestamp_start or 0, started + 0.07395, places=6)
        self.assertAlmostEqual(request.timestamp_end or 0, started + 0.07436, places=6)
        self.assertAlmostEqual(response.timestamp_start or 0, started + 0.17917, places=6)
        self.assertAlmostEqual(response.timestamp_end or 0, started + 0.18742, places=6)

    def test_base64_image(self) -> None:
        """
        A base64 body is decoded to its bytes; a non-ASCII header value is
        UTF-8.
        """
        flow = list(from_har(browser_har()))[1]
        assert flow.response is not None
        body = flow.response.raw_content or b""
        self.assertTrue(body.startswith(b"\x89PNG\r\n\x1a\n"))
        self.assertEqual(len(body), 79)
        self.assertEqual(flow.response.headers.get_raw(b"x-served-by"), b"cache-fra\xc3\xbc-1")

    def test_form_post(self) -> None:
        """
        A POST keeps its body (from ``postData.text``) and Content-Length;
        the redirect keeps its Location and cookies.
        """
        flow = list(from_har(browser_har()))[3]
        assert flow.request is not None and flow.response is not None
        self.assertEqual(
            flow.request.raw_content, b"user=alice%40example.com&password=s3cr%C3%A9t&remember=on"
        )
        self.assertEqual(flow.request.headers["Content-Length"], "57")
        self.assertEqual(flow.response.status_code, 302)
        self.assertEqual(flow.response.headers["Location"], "/account")
        self.assertEqual(len(flow.response.headers.get_all("set-cookie")), 2)
        self.assertEqual(flow.response.raw_content, b"")

    def test_failed_request(self) -> None:
        """
        An entry with status 0 and ``_error`` becomes a flow with that
        error and no response.
        """
        flow = list(from_har(browser_har()))[4]
        self.assertIsNone(flow.response)
        assert flow.error is not None and flow.request is not None
        self.assertEqual(flow.error.msg, "net::ERR_CONNECTION_REFUSED")
        self.assertEqual(flow.request.http_version, "HTTP/1.1")
        self.assertIsNone(flow.server_conn.peername)

    def test_minimal_entry(self) -> None:
        """
        Optional fields may be missing: no headers, no response, no timings.
        """
        [flow] = from_har({"log": {"entries": [minimal_entry()]}})
        assert flow.request is not None
        self.assertEqual(flow.request.headers.fields, ((b"Host", b"example.com"),))
        self.assertEqual(flow.request.raw_content, b"")
        self.assertEqual(
            flow.timestamp_created,
            datetime.fromisoformat("2024-06-12T09:15:02.5+00:00").timestamp(),
        )
        self.assertIsNone(flow.response)
        self.assertEqual(flow.error, Error("no response", flow.timestamp_created))

    def test_response_without_text(self) -> None:
        """
        A response without ``text`` has no captured body, unless its size
        is 0.
        """
        entry = minimal_entry()
        entry["response"] = {"status": 200, "content": {"size": 10, "mimeType": "text/plain"}}
        [flow] = from_har({"log": {"entries": [entry]}})
        assert flow.response is not None
        self.assertIsNone(flow.response.raw_content)
        entry["response"] = {
            "status": 304,
            "content": {"size": 0},
            "headers": [{"name": "Content-Encoding", "value": "gzip"}],
        }
        [flow] = from_har({"log": {"entries": [entry]}})
        assert flow.response is not None
        self.assertEqual(flow.response.raw_content, b"")

    def test_params_only_form(self) -> None:
        """
        A URL-encoded POST given as params only is rebuilt from them;
        params of another type cannot be.
        """
        entry = minimal_entry()
        entry["request"]["method"] = "POST"
        entry["request"]["postData"] = {
            "mimeType": "application/x-www-form-urlencoded",
            "params": [{"name": "a b", "value": "\u00e9"}, {"name": "c"}],
        }
        [flow] = from_har({"log": {"entries": [entry]}})
        assert flow.request is not None
        self.assertEqual(flow.request.raw_content, b"a+b=%C3%A9&c=")
        entry["request"]["postData"]["mimeType"] = "multipart/form-data; boundary=x"
        with self.assertRaises(FlowFileError) as caught:
            list(from_har({"log": {"entries": [entry]}}))
        self.assertIn(
            "log.entries[0].request.postData: has params but no text", str(caught.exception)
        )

    def test_charset_text(self) -> None:
        """
        A text body is encoded in its Content-Type's charset.
        """
        entry = minimal_entry()
        entry["response"] = {
            "status": 200,
            "headers": [{"name": "Content-Type", "value": "text/plain; charset=iso-8859-1"}],
            "content": {"size": 4, "mimeType": "text/plain", "text": "caf\u00e9"},
        }
        [flow] = from_har({"log": {"entries": [entry]}})
        assert flow.response is not None
        self.assertEqual(flow.response.raw_content, b"caf\xe9")

    def assert_malformed(self, har: Any, message: str) -> None:
        """
        Importing *har* fails with a `FlowFileError` containing *message*.
        """
        with self.assertRaises(FlowFileError) as caught:
            list(from_har(har))
        self.assertIn(message, str(caught.exception))

    def test_not_har(self) -> None:
        """
        A document without ``log.entries``, or of HAR version 2, is refused
        at once.
        """
        self.assertRaises(FlowFileError, from_har, {"entries": []})
        self.assertRaises(FlowFileError, from_har, [])
        self.assertRaises(FlowFileError, from_har, {"log": {"entries": {}}})
        with self.assertRaises(FlowFileError) as caught:
            from_har({"log": {"version": "2.0", "entries": []}})
        self.assertIn("'2.0' is not supported", str(caught.exception))

    def test_malformed_entries(self) -> None:
        """
        A malformed entry is reported with its index and what is wrong,
        after the good entries before it.
        """
        cases: list[tuple[str, Any, str]] = [
            ("request.url", None, "log.entries[1].request: missing 'url'"),
            ("request.url", "/relative", "log.entries[1].request.url: not an absolute URL"),
            ("request.method", "GE T", "log.entries[1].request.method: not a valid method"),
            ("request.headers", {}, "log.entries[1].request.headers: unexpected an object"),
            (
                "request.headers",
                [{"name": "X-A", "value": "a\r\nInjected: 1"}],
                "log.entries[1].request.headers[0]: invalid header value",
            ),
            ("request.headers", [{"value": "v"}], "log.entries[1].request.headers[0]: missing"),
            ("startedDateTime", "yesterday", "log.entries[1].startedDateTime: not an ISO 8601"),
            ("timings", {"send": "1"}, "log.entries[1].timings.send: unexpected a string"),
            ("response", {"status": "200"}, "log.entries[1].response.status: unexpected"),
            ("response", {"status": 42}, "log.entries[1].response.status: not an HTTP status"),
            (
                "response",
                {"status": 200, "content": {"text": "%%", "encoding": "base64"}},
                "log.entries[1].response.content.text: is not valid base64",
            ),
            (
                "response",
                {"status": 200, "content": {"text": "x", "encoding": "gzip"}},
                "log.entries[1].response.content.encoding: unsupported encoding 'gzip'",
            ),
        ]
        for path, value, message in cases:
            entry = copy.deepcopy(minimal_entry())
            target = entry
            *parents, last = path.split(".")
            for key in parents:
                target = target[key]
            if value is None:
                del target[last]
            else:
                target[last] = value
            flows = from_har(har_with(entry))
            self.assertIsInstance(next(flows), HTTPFlow)
            with self.assertRaises(FlowFileError, msg=path) as caught:
                next(flows)
            self.assertIn(message, str(caught.exception))
        self.assert_malformed({"log": {"entries": ["x"]}}, "log.entries[0]: expected an object")

    def assert_entry_refused(self, entry: dict[str, Any], expected: str) -> None:
        """
        A HAR of a good entry and then *entry* gives the good entry's flow,
        then fails with a one-line `FlowFileError` that is exactly
        *expected*.
        """
        flows = from_har(har_with(entry))
        self.assertIsInstance(next(flows), HTTPFlow)
        with self.assertRaises(FlowFileError) as caught:
            next(flows)
        message = str(caught.exception)
        self.assertEqual(message, expected)
        self.assertNotIn("\n", message)
        self.assertNotIn("\r", message)

    def test_response_reason_with_crlf(self) -> None:
        """
        A status text holding CR LF (a header smuggled into the status
        line) is refused, naming the entry and the field.
        """
        entry = minimal_entry()
        entry["response"] = {"status": 200, "statusText": "OK\r\nSet-Cookie: a=b"}
        self.assert_entry_refused(
            entry,
            "log.entries[1]: invalid response reason: 'OK\\r\\nSet-Cookie: a=b' holds a CR, "
            "LF or control",
        )

    def test_request_path_with_crlf(self) -> None:
        """
        A URL holding CR LF is refused (URL parsing would drop them unseen),
        as is one whose path holds a space.
        """
        entry = minimal_entry()
        entry["request"]["url"] = "http://example.com/a\r\nInjected: 1"
        self.assert_entry_refused(
            entry,
            "log.entries[1].request.url: 'http://example.com/a\\r\\nInjected: 1' holds a CR, "
            "LF or control",
        )
        entry["request"]["url"] = "http://example.com/a HTTP/1.1"
        self.assert_entry_refused(
            entry,
            "log.entries[1]: invalid request path: '/a HTTP/1.1' is not a path starting with "
            "'/' without spaces or controls",
        )

    def test_header_name_with_space(self) -> None:
        """
        A header name with a space in it, which is not a token, is refused,
        naming the header.
        """
        entry = minimal_entry()
        entry["request"]["headers"] = [{"name": "X Bad", "value": "v"}]
        self.assert_entry_refused(
            entry, "log.entries[1].request.headers[0]: invalid header name b'X Bad'"
        )

    def test_header_value_with_lf(self) -> None:
        """
        A header value holding a bare LF is refused, naming the header.
        """
        entry = minimal_entry()
        entry["response"] = {
            "status": 200,
            "headers": [{"name": "X-Split", "value": "a\nInjected: 1"}],
        }
        self.assert_entry_refused(
            entry,
            "log.entries[1].response.headers[0]: invalid header value b'a\\nInjected: 1' "
            "for b'X-Split'",
        )

    def test_browser_export_checked(self) -> None:
        """
        Every entry of the committed browser export imports into a flow
        that could be written as it stands: its HTTP/2 pseudo-header fields
        (``:authority``, ``:method``, ``:path``, ``:scheme``), which are not
        HTTP/1 fields, are dropped.
        """
        har = browser_har()
        names = {
            h["name"] for e in har["log"]["entries"] for h in e["request"]["headers"]
        }
        self.assertTrue({":authority", ":method", ":path", ":scheme"} <= names)
        flows = list(from_har(har))
        self.assertEqual(len(flows), len(har["log"]["entries"]))
        for flow in flows:
            for message in (flow.request, flow.response):
                if message is not None:
                    self.assertEqual(
                        [name for name, _ in message.headers.fields if name.startswith(b":")],
                        [],
                    )
            assert flow.request is not None
            check_request(flow.request)
            if flow.response is not None:
                check_response(flow.response)

    def test_har_flows_har(self) -> None:
        """
        HAR -> flows -> HAR keeps methods, URLs, statuses, headers (but
        pseudo-headers) and bodies.
        """
        original = browser_har()
        exported = to_har(from_har(original), creator_version="1")
        check_har(self, exported)
        pairs = zip(original["log"]["entries"], exported["log"]["entries"], strict=True)
        for before, after in pairs:
            for key in ("method", "url"):
                self.assertEqual(after["request"][key], before["request"][key])
            self.assertEqual(after["response"]["status"], before["response"]["status"])
            headers = [h for h in before["request"]["headers"] if not h["name"].startswith(":")]
            if not any(h["name"].lower() == "host" for h in headers):
                headers.insert(
                    0, {"name": "Host", "value": after["request"]["headers"][0]["value"]}
                )
            self.assertEqual(after["request"]["headers"], headers)
            self.assertEqual(after["response"]["headers"], before["response"]["headers"])
            for key in ("text", "encoding"):  # an empty body gains an empty text
                self.assertEqual(
                    after["response"]["content"].get(key) or None,
                    before["response"]["content"].get(key),
                )
            self.assertEqual(
                after["request"].get("postData", {}).get("text"),
                before["request"].get("postData", {}).get("text"),
            )
            self.assertEqual(after["response"].get("_error"), before["response"]["_error"])
        again = to_har(from_har(exported), creator_version="1")
        self.assertEqual(again, exported)

    def test_flows_har_flows(self) -> None:
        """
        flows -> HAR -> flows keeps methods, URLs, statuses, headers, bodies
        (binary ones too) and errors.
        """
        flows = har_flows()
        restored = list(from_har(to_har(flows, creator_version="1")))
        self.assertEqual(len(restored), len(flows))
        for before, after in zip(flows, restored, strict=True):
            assert before.request is not None and after.request is not None
            self.assertEqual(after.request.url, before.request.url)
            self.assertEqual(after.request.method, before.request.method)
            self.assertEqual(after.request.content, before.request.content)
            if before.response is None:
                self.assertIsNone(after.response)
                self.assertEqual(after.error, before.error)
                continue
            assert after.response is not None
            self.assertEqual(after.response.status_code, before.response.status_code)
            self.assertEqual(after.response.content, before.response.content)
            self.assertEqual(after.response.headers, before.response.headers)
        assert restored[2].request is not None
        self.assertEqual(
            restored[2].request.headers.get_all_raw(b"x-odd"),
            [b"caf\xc3\xa9 \xc3\xbf\x7f", b"second", b"third \xc3\xa9"],
        )


class LoadFlowsTests(SynchronousTestCase):
    """
    Tests for :func:`twistproxy.flowfile.load_flows` on ``.har`` files, and
    for where the HAR names live.
    """

    def test_har_file(self) -> None:
        """
        A path ending in ``.har`` (in any case) is read as HAR, one flow per
        entry.
        """
        path = os.path.join(temp_dir(self), "Export.HAR")
        with open(path, "w", encoding="utf-8") as f:
            json.dump(browser_har(), f)
        flows = load_flows(path)
        self.assertEqual(
            [f.request.url for f in flows if f.request is not None],
            [e["request"]["url"] for e in browser_har()["log"]["entries"]],
        )

    def test_har_file_not_json(self) -> None:
        """
        A ``.har`` file that is not JSON is a `FlowFileError`, as is one
        with a malformed entry (named by its index).
        """
        path = os.path.join(temp_dir(self), "bad.har")
        with open(path, "w", encoding="utf-8") as f:
            f.write("{not json")
        with self.assertRaises(FlowFileError) as caught:
            load_flows(path)
        self.assertIn("not a HAR file", str(caught.exception))
        with open(path, "w", encoding="utf-8") as f:
            json.dump({"log": {"entries": [{"request": {}}]}}, f)
        with self.assertRaises(FlowFileError) as caught:
            load_flows(path)
        self.assertIn("log.entries[0]", str(caught.exception))

    def test_one_import_path(self) -> None:
        """
        ``to_har`` and ``from_har`` live in :mod:`twistproxy.har` only, even
        after :mod:`twistproxy.flowfile` has used them.
        """
        load_flows(os.path.join(DATA, "browser.har"))
        for name in ("to_har", "from_har"):
            self.assertTrue(hasattr(har, name))
            self.assertFalse(hasattr(flowfile, name))


class MainTests(SynchronousTestCase):
    """
    Tests for the command line, :func:`twistproxy.flowfile.main`, run
    in-process.
    """

    def setUp(self) -> None:
        """
        Capture standard error and make a scratch directory.
        """
        self.stderr = io.StringIO()
        self.patch(sys, "stderr", self.stderr)
        self.dir = temp_dir(self)

    def path(self, name: str) -> str:
        """
        A path in the scratch directory.
        """
        return os.path.join(self.dir, name)

    def test_export_har(self) -> None:
        """
        ``export-har`` writes a HAR of the flow file's flows.
        """
        with open(self.path("in.jsonl"), "wb") as out:
            dump_flows(har_flows(), out)
        self.assertEqual(main(["export-har", self.path("in.jsonl"), self.path("out.har")]), 0)
        self.assertEqual(self.stderr.getvalue(), "")
        with open(self.path("out.har"), encoding="utf-8") as f:
            har = json.load(f)
        check_har(self, har)
        self.assertEqual(har["log"]["creator"]["name"], "twistproxy")
        self.assertEqual(len(har["log"]["entries"]), 4)

    def test_import_har(self) -> None:
        """
        ``import-har`` writes a flow file of the HAR's entries.
        """
        source = os.path.join(DATA, "browser.har")
        self.assertEqual(main(["import-har", source, self.path("out.jsonl")]), 0)
        self.assertEqual(self.stderr.getvalue(), "")
        flows = load_flows(self.path("out.jsonl"))
        self.assertEqual(
            [f.request.url for f in flows if f.request is not None],
            [e["request"]["url"] for e in browser_har()["log"]["entries"]],
        )

    def test_import_har_to_stdout(self) -> None:
        """
        ``-`` as output writes to standard output.
        """
        stdout = io.TextIOWrapper(io.BytesIO())
        self.patch(sys, "stdout", stdout)
        self.assertEqual(main(["import-har", os.path.join(DATA, "browser.har"), "-"]), 0)
        data = stdout.buffer.getvalue()  # type: ignore[attr-defined]
        self.assertEqual(len(list(read_flows(io.BytesIO(data)))), 5)

    def assert_fails(self, argv: list[str], *expected: str) -> None:
        """
        Running *argv* exits with status 1 and one line on standard error
        containing each of *expected*.
        """
        self.assertEqual(main(argv), 1)
        message = self.stderr.getvalue()
        self.assertEqual(message.count("\n"), 1, message)
        self.assertTrue(message.endswith("\n"))
        self.assertTrue(message.startswith("python -m twistproxy.flowfile: error: "))
        for part in expected:
            self.assertIn(part, message)

    def test_missing_input(self) -> None:
        """
        A missing input file is one line on standard error and status 1; no
        output is written.
        """
        self.assert_fails(
            ["export-har", self.path("nope.jsonl"), self.path("out.har")],
            "nope.jsonl",
            "No such file or directory",
        )
        self.assertFalse(os.path.exists(self.path("out.har")))

    def test_corrupt_flow_file(self) -> None:
        """
        A corrupt flow file names the file and the line.
        """
        with open(self.path("in.jsonl"), "wb") as out:
            out.write(encode(make_flow()) + b"{oops\n")
        self.assert_fails(
            ["export-har", self.path("in.jsonl"), self.path("out.har")],
            "in.jsonl: line 2: not valid JSON",
        )
        self.assertFalse(os.path.exists(self.path("out.har")))

    def test_bad_har(self) -> None:
        """
        A file that is not JSON, or not HAR, is one line and status 1.
        """
        with open(self.path("in.har"), "w") as f:
            f.write("{not json")
        self.assert_fails(["import-har", self.path("in.har"), self.path("out.jsonl")], "in.har: ")
        self.assertFalse(os.path.exists(self.path("out.jsonl")))

    def test_unwritable_recordings(self) -> None:
        """
        A flow file or a HAR holding a message that could not be written
        as it stands is one line naming the file, the line or entry, and
        the field; nothing is written.
        """
        bad = make_flow()
        assert bad.response is not None
        bad.response.reason = "OK\r\nSet-Cookie: a=b"
        with open(self.path("in.jsonl"), "wb") as out:
            out.write(encode(make_flow(), bad))
        self.assert_fails(
            ["export-har", self.path("in.jsonl"), self.path("out.har")],
            "in.jsonl: line 2: invalid response reason: 'OK\\r\\nSet-Cookie: a=b'",
        )
        self.assertFalse(os.path.exists(self.path("out.har")))
        self.stderr.truncate(0)
        self.stderr.seek(0)
        entry = minimal_entry()
        entry["response"] = {"status": 200, "statusText": "OK\nX: y"}
        with open(self.path("in.har"), "w", encoding="utf-8") as f:
            json.dump(har_with(entry), f)
        self.assert_fails(
            ["import-har", self.path("in.har"), self.path("out.jsonl")],
            "in.har: log.entries[1]: invalid response reason: 'OK\\nX: y'",
        )
        self.assertFalse(os.path.exists(self.path("out.jsonl")))

    def test_usage(self) -> None:
        """
        ``-h`` exits 0 after printing help; a missing argument is a usage
        error (argparse's status 2).
        """
        stdout = io.StringIO()
        self.patch(sys, "stdout", stdout)
        self.assertEqual(main(["-h"]), 0)
        self.assertIn("export-har", stdout.getvalue())
        self.assertIn("import-har", stdout.getvalue())
        self.assertEqual(main(["export-har"]), 2)
        self.assertIn("usage:", self.stderr.getvalue())
