"""
Tests for :mod:`twistproxy.flow`.
"""

from __future__ import annotations

import hashlib
import json
import uuid
from typing import Any

from cryptography.hazmat.primitives.serialization import Encoding
from twisted.internet.defer import CancelledError
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from tests.e2e.pki import make_ca, make_leaf
from twistproxy.connection import Certificate, Client, Server
from twistproxy.flow import FLOW_STATE_VERSION, Error, Flow, FlowNotKillable


def make_flow(live: bool = True, clock: Clock | None = None) -> Flow:
    """
    A flow with filled-in connections, on *clock* (a new one by default).
    """
    clock = clock if clock is not None else Clock()
    clock.advance(1000)
    client = Client(peername=("127.0.0.1", 51000), sockname=("127.0.0.1", 8080))
    server = Server(
        address=("example.com", 443),
        peername=("93.184.216.34", 443),
        tls_established=True,
        sni="example.com",
        alpn=b"http/1.1",
        tls_version="TLSv1.3",
    )
    return Flow(client, server, live=live, now=clock.seconds)


_CA = make_ca("flow test CA")
_LEAF = make_leaf(_CA, ["localhost", "www.example", "127.0.0.1", "::1"]).certificate


class CertificateTests(SynchronousTestCase):
    """
    Tests for `Certificate`: the facts read from an X.509 certificate, and
    its state in a `Server` record.
    """

    def test_from_x509(self) -> None:
        """
        Subject and issuer as RFC 4514 strings, the DNS and IP names of the
        SAN apart and in order, the validity in epoch seconds, the serial in
        hex and the SHA-256 fingerprint of the DER bytes.
        """
        facts = Certificate.from_x509(_LEAF)
        self.assertEqual(facts.subject, "CN=localhost")
        self.assertEqual(facts.issuer, "CN=flow test CA")
        self.assertEqual(facts.dns_names, ("localhost", "www.example"))
        self.assertEqual(facts.ip_addresses, ("127.0.0.1", "::1"))
        self.assertEqual(facts.not_before, _LEAF.not_valid_before_utc.timestamp())
        self.assertEqual(facts.not_after, _LEAF.not_valid_after_utc.timestamp())
        self.assertLess(facts.not_before, facts.not_after)
        self.assertEqual(int(facts.serial, 16), _LEAF.serial_number)
        self.assertEqual(facts.serial, facts.serial.lower())
        der = _LEAF.public_bytes(Encoding.DER)
        self.assertEqual(facts.sha256, hashlib.sha256(der).hexdigest())

    def test_without_alternative_names(self) -> None:
        """A certificate without a SAN extension (a CA's) has no names."""
        facts = Certificate.from_x509(_CA[0])
        self.assertEqual((facts.dns_names, facts.ip_addresses), ((), ()))
        self.assertEqual(facts.subject, facts.issuer)

    def test_server_state_through_json(self) -> None:
        """
        A `Server` record's certificate becomes a dict in its state and
        comes back equal (name lists as tuples) after a trip through JSON.
        """
        server = Server(tls_established=True, certificate=Certificate.from_x509(_LEAF))
        state = server.get_state()
        self.assertEqual(state["certificate"]["dns_names"], ["localhost", "www.example"])
        restored = Server.from_state(json.loads(json.dumps(state)))
        self.assertEqual(restored.certificate, server.certificate)
        self.assertEqual(restored.get_state(), state)
        self.assertIsNone(Server.from_state(Server().get_state()).certificate)

    def test_server_state_needs_certificate_key(self) -> None:
        """
        The certificate is a key of a server's state, ``None`` without one;
        a certificate with an unknown key is refused, naming it.
        """
        state = Server().get_state()
        self.assertIsNone(state["certificate"])
        del state["certificate"]
        self.assertRaises(ValueError, Server.from_state, state)
        state = Server(certificate=Certificate.from_x509(_LEAF)).get_state()
        state["certificate"]["extra"] = 1
        with self.assertRaises(ValueError) as caught:
            Server.from_state(state)
        self.assertIn("extra", str(caught.exception))


class ErrorTests(SynchronousTestCase):
    """
    Tests for `Error`.
    """

    def test_str_is_message(self) -> None:
        """
        An error reads as its message.
        """
        self.assertEqual(str(Error("boom", 1.0)), "boom")

    def test_state_round_trip(self) -> None:
        """
        ``from_state(get_state())`` gives an equal error.
        """
        error = Error("boom", 12.5)
        self.assertEqual(Error.from_state(error.get_state()), error)

    def test_unknown_key(self) -> None:
        """
        A state with an unknown key is refused.
        """
        self.assertRaises(ValueError, Error.from_state, {"msg": "x", "timestamp": 1, "extra": 2})


class ConnectionTests(SynchronousTestCase):
    """
    Tests for `Client` and `Server`.
    """

    def test_defaults(self) -> None:
        """
        Records are built from keywords alone, each with its own UUID4 id.
        """
        a, b = Client(), Server()
        self.assertEqual(uuid.UUID(a.id).version, 4)
        self.assertEqual(str(uuid.UUID(a.id)), a.id)
        self.assertNotEqual(a.id, b.id)
        self.assertIsNone(b.address)
        self.assertFalse(a.tls_established)

    def test_state_through_json(self) -> None:
        """
        After a trip through JSON (tuples become lists) ``from_state`` gives
        the addresses back as tuples.
        """
        server = Server(address=("example.com", 80), peername=("::1", 80), sockname=None)
        state = json.loads(json.dumps(server.get_state()))
        restored = Server.from_state(state)
        self.assertEqual(restored.address, ("example.com", 80))
        self.assertEqual(restored.peername, ("::1", 80))
        self.assertIsNone(restored.sockname)
        self.assertEqual(restored.get_state(), server.get_state())

    def test_state_is_plain_data(self) -> None:
        """
        ``get_state`` uses lists, not tuples, for addresses.
        """
        state = Client(peername=("127.0.0.1", 1)).get_state()
        self.assertEqual(state["peername"], ["127.0.0.1", 1])

    def test_client_refuses_server_keys(self) -> None:
        """
        A server's state (with ``address``) is not a client's state.
        """
        self.assertRaises(ValueError, Client.from_state, Server().get_state())


class FlowTests(SynchronousTestCase):
    """
    Tests for `Flow`.
    """

    def test_created_from_clock(self) -> None:
        """
        ``timestamp_created`` comes from the injected clock.
        """
        clock = Clock()
        clock.advance(42)
        flow = Flow(Client(), Server(), now=clock.seconds)
        self.assertEqual(flow.timestamp_created, 42)
        self.assertEqual(flow.type, "flow")
        self.assertFalse(flow.live)

    def test_copy(self) -> None:
        """
        A copy has a new id, the same state otherwise, is not live and has
        its own metadata.
        """
        flow = make_flow()
        flow.metadata["tags"] = ["a"]
        flow.comment = "hi"
        copy = flow.copy()
        self.assertIsInstance(copy, Flow)
        self.assertNotEqual(copy.id, flow.id)
        self.assertFalse(copy.live)
        self.assertTrue(flow.live)
        self.assertEqual(copy.comment, "hi")
        self.assertEqual(copy.client_conn.get_state(), flow.client_conn.get_state())
        self.assertIsNot(copy.client_conn, flow.client_conn)
        copy.metadata["tags"].append("b")
        self.assertEqual(flow.metadata["tags"], ["a"])

    def test_copy_not_intercepted(self) -> None:
        """
        A copy of an intercepted flow is not intercepted, and resuming the
        copy does not fire the original's waiters.
        """
        flow = make_flow()
        flow.intercept()
        waiting = flow.wait_for_resume()
        copy = flow.copy()
        self.assertFalse(copy.intercepted)
        copy.intercept()
        copy.resume()
        self.assertNoResult(waiting)
        self.assertTrue(flow.intercepted)

    def test_backup_revert(self) -> None:
        """
        ``revert`` returns to the backed-up state and drops the backup;
        ``modified`` tells whether the flow changed since the backup.
        """
        flow = make_flow()
        self.assertFalse(flow.modified())
        flow.backup()
        self.assertFalse(flow.modified())
        flow.comment = "changed"
        flow.metadata["x"] = 1
        self.assertTrue(flow.modified())
        flow.revert()
        self.assertEqual(flow.comment, "")
        self.assertEqual(flow.metadata, {})
        self.assertFalse(flow.modified())
        flow.comment = "again"
        flow.revert()
        self.assertEqual(flow.comment, "again")

    def test_backup_kept_unless_forced(self) -> None:
        """
        A second ``backup`` keeps the first unless forced.
        """
        flow = make_flow()
        flow.backup()
        flow.comment = "one"
        flow.backup()
        flow.revert()
        self.assertEqual(flow.comment, "")
        flow.comment = "one"
        flow.backup()
        flow.comment = "two"
        flow.backup(force=True)
        flow.comment = "three"
        flow.revert()
        self.assertEqual(flow.comment, "two")

    def test_kill(self) -> None:
        """
        Killing a live flow sets the kill error, stamped by the clock, and
        leaves ``live`` alone; it cannot be killed twice.
        """
        clock = Clock()
        flow = make_flow(clock=clock)
        clock.advance(5)
        self.assertTrue(flow.killable)
        self.assertFalse(flow.killed)
        flow.kill()
        self.assertEqual(flow.error, Error(Error.KILLED_MESSAGE, 1005))
        self.assertTrue(flow.killed)
        self.assertTrue(flow.live)
        self.assertFalse(flow.killable)
        self.assertRaises(FlowNotKillable, flow.kill)

    def test_not_killable_when_not_live(self) -> None:
        """
        A flow that is not live cannot be killed.
        """
        flow = make_flow(live=False)
        self.assertFalse(flow.killable)
        self.assertRaises(FlowNotKillable, flow.kill)
        self.assertIsNone(flow.error)

    def test_other_error_still_killable(self) -> None:
        """
        A live flow with some other error can still be killed.
        """
        flow = make_flow()
        flow.error = Error("upstream reset", 1.0)
        self.assertTrue(flow.killable)

    def test_kill_resumes(self) -> None:
        """
        Killing an intercepted flow resumes it, so whoever waits sees the
        kill.
        """
        flow = make_flow()
        flow.intercept()
        waiting = flow.wait_for_resume()
        self.assertNoResult(waiting)
        flow.kill()
        self.assertIsNone(self.successResultOf(waiting))
        self.assertFalse(flow.intercepted)
        self.assertTrue(flow.killed)

    def test_wait_when_not_intercepted(self) -> None:
        """
        Waiting on a flow that is not intercepted succeeds at once.
        """
        self.assertIsNone(self.successResultOf(make_flow().wait_for_resume()))

    def test_intercept_resume(self) -> None:
        """
        Waiters fire only on ``resume``, each once; intercepting twice or
        resuming a flow that is not intercepted does nothing.
        """
        flow = make_flow()
        flow.resume()
        flow.intercept()
        first = flow.wait_for_resume()
        flow.intercept()
        second = flow.wait_for_resume()
        self.assertTrue(flow.intercepted)
        self.assertNoResult(first)
        self.assertNoResult(second)
        flow.resume()
        self.assertFalse(flow.intercepted)
        self.assertIsNone(self.successResultOf(first))
        self.assertIsNone(self.successResultOf(second))
        flow.resume()
        flow.intercept()
        third = flow.wait_for_resume()
        self.assertNoResult(third)
        flow.resume()
        self.successResultOf(third)

    def test_cancel_wait(self) -> None:
        """
        Cancelling a wait fails it with CancelledError and forgets it; the
        other waiters still fire on resume.
        """
        flow = make_flow()
        flow.intercept()
        cancelled = flow.wait_for_resume()
        kept = flow.wait_for_resume()
        cancelled.cancel()
        self.failureResultOf(cancelled, CancelledError)
        self.assertTrue(flow.intercepted)
        flow.resume()
        self.successResultOf(kept)

    def test_state_round_trip(self) -> None:
        """
        ``from_state(get_state())`` rebuilds an equal flow, also after a trip
        through JSON.
        """
        flow = make_flow()
        flow.error = Error("boom", 3.0)
        flow.marked = ":star:"
        flow.is_replay = "request"
        flow.metadata = {"k": [1, 2]}
        flow.comment = "note"
        state = flow.get_state()
        self.assertEqual(state["version"], FLOW_STATE_VERSION)
        self.assertEqual(state["type"], "flow")
        restored = Flow.from_state(state)
        self.assertEqual(restored.get_state(), state)
        self.assertEqual(restored.id, flow.id)
        flow.server_conn.alpn = None  # the one bytes value; JSON has no bytes
        state = flow.get_state()
        restored = Flow.from_state(json.loads(json.dumps(state)))
        self.assertEqual(restored.get_state(), state)

    def test_state_does_not_share(self) -> None:
        """
        Changing a flow after ``get_state`` does not change the state.
        """
        flow = make_flow()
        flow.metadata["list"] = [1]
        state = flow.get_state()
        flow.metadata["list"].append(2)
        self.assertEqual(state["metadata"], {"list": [1]})

    def test_version_mismatch(self) -> None:
        """
        A state of another version is refused, and the flow is unchanged.
        """
        flow = make_flow()
        state = flow.get_state()
        state["version"] = FLOW_STATE_VERSION + 1
        state["comment"] = "new"
        with self.assertRaises(ValueError) as caught:
            flow.set_state(state)
        self.assertIn("version", str(caught.exception))
        self.assertEqual(flow.comment, "")

    def test_unknown_key(self) -> None:
        """
        A state with an unknown key is refused, naming the key, and the flow
        is unchanged.
        """
        flow = make_flow()
        state = flow.get_state()
        state["comment"] = "new"
        state["surprise"] = 1
        with self.assertRaises(ValueError) as caught:
            flow.set_state(state)
        self.assertIn("surprise", str(caught.exception))
        self.assertEqual(flow.comment, "")

    def test_missing_key(self) -> None:
        """
        A state without a key is refused.
        """
        state = make_flow().get_state()
        del state["comment"]
        self.assertRaises(ValueError, Flow.from_state, state)

    def test_wrong_type(self) -> None:
        """
        A state of another flow type is refused.
        """
        state: dict[str, Any] = make_flow().get_state()
        state["type"] = "http"
        self.assertRaises(ValueError, Flow.from_state, state)

    def test_set_state_resumes(self) -> None:
        """
        Setting a state that is not intercepted on an intercepted flow
        resumes it, so no waiter is left hanging.
        """
        flow = make_flow()
        flow.backup()
        flow.intercept()
        waiting = flow.wait_for_resume()
        flow.revert()
        self.assertFalse(flow.intercepted)
        self.successResultOf(waiting)
