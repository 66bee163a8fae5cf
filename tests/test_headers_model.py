"""
Tests for :mod:`twistproxy.headers`.
"""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from twistproxy.headers import Headers, _make_headers

WIRE = [
    (b"Host", b"example.com"),
    (b"Set-Cookie", b"a=1"),
    (b"X-Thing", b"x"),
    (b"set-cookie", b"b=2"),
]


class HeadersTests(SynchronousTestCase):
    """
    Tests for `Headers`.
    """

    def test_order_case_and_repeats_kept(self) -> None:
        """
        The wire form keeps every field, in order, with its original case.
        """
        headers = Headers(WIRE)
        self.assertEqual(headers.fields, tuple(WIRE))
        self.assertEqual(list(headers), ["Host", "Set-Cookie", "X-Thing"])
        self.assertEqual(len(headers), 3)

    def test_constructor_copies(self) -> None:
        """
        Changing the list given to the constructor does not change the
        headers.
        """
        wire = list(WIRE)
        headers = Headers(wire)
        wire.append((b"X-Late", b"1"))
        self.assertNotIn("X-Late", headers)

    def test_case_insensitive_lookup(self) -> None:
        """
        Names are looked up in any case, as str or bytes; repeated fields
        are joined with ", ".
        """
        headers = Headers(WIRE)
        self.assertEqual(headers["HOST"], "example.com")
        self.assertEqual(headers[b"set-COOKIE"], "a=1, b=2")
        self.assertEqual(headers.get_all("Set-Cookie"), ["a=1", "b=2"])
        self.assertEqual(headers.get_raw(b"SET-COOKIE"), b"a=1")
        self.assertEqual(headers.get_all_raw(b"set-cookie"), [b"a=1", b"b=2"])
        self.assertIn("x-thing", headers)
        self.assertIn(b"X-THING", headers)
        self.assertNotIn("missing", headers)
        self.assertNotIn(42, headers)
        self.assertIsNone(headers.get("missing"))
        self.assertEqual(headers.get("missing", "dflt"), "dflt")
        self.assertIsNone(headers.get_raw(b"missing"))
        self.assertRaises(KeyError, headers.__getitem__, "missing")

    def test_setitem_in_place(self) -> None:
        """
        Setting a name replaces its first field in place, keeping its case,
        and removes the later ones.
        """
        headers = Headers(WIRE)
        headers["SET-COOKIE"] = "c=3"
        self.assertEqual(
            headers.fields,
            ((b"Host", b"example.com"), (b"Set-Cookie", b"c=3"), (b"X-Thing", b"x")),
        )

    def test_setitem_appends(self) -> None:
        """
        Setting a new name appends a field.
        """
        headers = Headers(WIRE)
        headers["Via"] = "1.1 twistproxy"
        self.assertEqual(headers.fields[-1], (b"Via", b"1.1 twistproxy"))

    def test_setitem_refuses_injection(self) -> None:
        """
        The str API refuses values with CR or LF and names that are not
        tokens, so no header can split the message.
        """
        headers = Headers()
        self.assertRaises(ValueError, headers.__setitem__, "X-A", "a\r\nEvil: 1")
        self.assertRaises(ValueError, headers.add, "X A", "1")
        self.assertRaises(ValueError, headers.insert, 0, "X:A", "1")
        self.assertEqual(headers.fields, ())

    def test_delete(self) -> None:
        """
        Deleting a name removes all its fields; deleting a missing name
        raises KeyError.
        """
        headers = Headers(WIRE)
        del headers["set-cookie"]
        self.assertEqual(headers.fields, ((b"Host", b"example.com"), (b"X-Thing", b"x")))
        with self.assertRaises(KeyError):
            del headers["set-cookie"]

    def test_set_all(self) -> None:
        """
        ``set_all`` replaces every field of a name at the place of the first
        one, or appends; no values removes the name.
        """
        headers = Headers(WIRE)
        headers.set_all("set-cookie", ["c=3", b"d=4"])
        self.assertEqual(
            headers.fields,
            (
                (b"Host", b"example.com"),
                (b"Set-Cookie", b"c=3"),
                (b"Set-Cookie", b"d=4"),
                (b"X-Thing", b"x"),
            ),
        )
        headers.set_all("Accept", ["a", "b"])
        self.assertEqual(headers.fields[-2:], ((b"Accept", b"a"), (b"Accept", b"b")))
        headers.set_all("set-cookie", [])
        self.assertNotIn("Set-Cookie", headers)

    def test_add_insert(self) -> None:
        """
        ``add`` appends a field even if the name exists; ``insert`` puts one
        at a position.
        """
        headers = Headers(WIRE)
        headers.add("Host", "other")
        headers.insert(0, "X-First", "1")
        self.assertEqual(headers.fields[0], (b"X-First", b"1"))
        self.assertEqual(headers.fields[-1], (b"Host", b"other"))
        self.assertEqual(headers.get_all("host"), ["example.com", "other"])

    def test_keyword_fields(self) -> None:
        """
        Keyword arguments become fields with ``_`` turned into ``-``.
        """
        headers = Headers([(b"Host", b"h")], content_type="text/plain", x_b=b"2")
        self.assertEqual(
            headers.fields,
            ((b"Host", b"h"), (b"content-type", b"text/plain"), (b"x-b", b"2")),
        )

    def test_non_utf8_round_trip(self) -> None:
        """
        Bytes that are not UTF-8 survive a trip through the str API.
        """
        headers = Headers([(b"X-Bin", b"\xff\xfe caf\xe9")])
        value = headers["x-bin"]
        headers["X-Copy"] = value
        self.assertEqual(headers.get_raw(b"x-copy"), b"\xff\xfe caf\xe9")
        self.assertEqual(headers.items(multi=True)[0], ("X-Bin", value))

    def test_items(self) -> None:
        """
        ``items()`` gives one joined entry per name; ``items(multi=True)``
        every field.
        """
        headers = Headers(WIRE)
        self.assertEqual(
            list(headers.items()),
            [("Host", "example.com"), ("Set-Cookie", "a=1, b=2"), ("X-Thing", "x")],
        )
        self.assertEqual(len(headers.items(multi=True)), 4)
        self.assertEqual(list(headers.keys()), ["Host", "Set-Cookie", "X-Thing"])

    def test_equality_and_copy(self) -> None:
        """
        Headers are equal when their fields are; a copy is equal and
        independent.
        """
        headers = Headers(WIRE)
        copy = headers.copy()
        self.assertEqual(copy, headers)
        copy["Host"] = "other"
        self.assertNotEqual(copy, headers)
        self.assertNotEqual(Headers([(b"A", b"1")]), Headers([(b"a", b"1")]))
        self.assertEqual(headers.get_raw(b"host"), b"example.com")

    def test_fields_setter(self) -> None:
        """
        Setting ``fields`` replaces every field.
        """
        headers = Headers(WIRE)
        headers.fields = [(b"A", b"1"), ("B", "2")]
        self.assertEqual(headers.fields, ((b"A", b"1"), (b"B", b"2")))

    def test_fields_setter_checks(self) -> None:
        """
        Setting ``fields`` refuses a field that could split a message, and
        leaves the fields as they were.
        """
        headers = Headers(WIRE)
        for fields in ([(b"A", b"1\r\nB: 2")], [(b"A B", b"1")], [(b"A", b"\x00")]):
            with self.assertRaises(ValueError):
                headers.fields = fields
        self.assertEqual(headers.fields, tuple(WIRE))

    def test_repr(self) -> None:
        """
        The repr shows the fields.
        """
        self.assertEqual(repr(Headers([(b"A", b"1")])), "Headers([(b'A', b'1')])")

    def test_state(self) -> None:
        """
        The state is a list of byte pairs and builds equal headers; a bad
        entry is refused.
        """
        headers = Headers(WIRE)
        state = headers.get_state()
        self.assertEqual(state[0], [b"Host", b"example.com"])
        self.assertEqual(Headers.from_state(state), headers)
        self.assertRaises(ValueError, Headers.from_state, [["Host", "x"]])
        self.assertRaises(ValueError, Headers.from_state, [[b"Host"]])


class MakeHeadersTests(SynchronousTestCase):
    """
    Tests for `_make_headers`, which builds the headers of the ``make``
    constructors.
    """

    def test_copies_headers(self) -> None:
        """
        A `Headers` is copied: equal, but changing the result leaves it be.
        """
        headers = Headers(WIRE)
        made = _make_headers(headers)
        self.assertEqual(made, headers)
        made["X-New"] = "1"
        self.assertNotIn("X-New", headers)

    def test_mapping_and_pairs(self) -> None:
        """
        A mapping or an iterable of pairs becomes fields in order, str or
        bytes alike.
        """
        self.assertEqual(
            _make_headers({"X-A": "1", "x-b": "2"}).fields, ((b"X-A", b"1"), (b"x-b", b"2"))
        )
        pairs = [(b"A", b"1"), (b"a", b"2")]
        self.assertEqual(_make_headers(pairs).fields, tuple(pairs))

    def test_checked(self) -> None:
        """
        Unlike the `Headers` constructor, every field is checked.
        """
        self.assertRaises(ValueError, _make_headers, {"X-A": "1\r\nEvil: 1"})
        self.assertRaises(ValueError, _make_headers, [(b"Bad Name", b"1")])
