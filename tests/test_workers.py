# -*- test-case-name: tests.test_workers -*-
"""
Tests for :mod:`twistproxy.workers` and the ``--workers`` options.
"""

from __future__ import annotations

import os
import shutil
import socket
import tempfile

from twisted.python import usage
from twisted.trial.unittest import SynchronousTestCase

from tests.options import parse
from twistproxy.tap import Options, _without_workers
from twistproxy.workers import bind


class BindTests(SynchronousTestCase):
    """
    Tests for :func:`bind`.
    """

    def test_tcp_with_interface(self) -> None:
        """A tcp endpoint is bound on its interface, listening and non-blocking."""
        listening = bind("tcp:0:interface=127.0.0.1")
        self.addCleanup(listening.close)
        self.assertEqual(listening.family, socket.AF_INET)
        self.assertEqual(listening.getsockname()[0], "127.0.0.1")
        self.assertFalse(listening.getblocking())

    def test_positional_interface(self) -> None:
        """Twisted's positional form (``tcp:PORT:INTERFACE``) names the interface too."""
        listening = bind("tcp:0:127.0.0.1")
        self.addCleanup(listening.close)
        self.assertEqual(listening.getsockname()[0], "127.0.0.1")

    def test_tcp6_escaped_interface(self) -> None:
        """An IPv6 interface with escaped colons gives an IPv6 socket."""
        try:
            listening = bind(r"tcp6:0:interface=\:\:1")
        except OSError:
            self.skipTest("no IPv6 loopback here")
        self.addCleanup(listening.close)
        self.assertEqual(listening.family, socket.AF_INET6)

    def test_refusals(self) -> None:
        """Other endpoint kinds and a missing port are ValueErrors."""
        for description in ("unix:/tmp/x", "ssl:443", "tcp:interface=127.0.0.1"):
            with self.subTest(description=description), self.assertRaises(ValueError):
                bind(description)


class WorkerOptionTests(SynchronousTestCase):
    """
    Tests for ``--workers`` parsing.
    """

    def parse(self, *args: str) -> Options:
        return parse(*args)

    def test_auto_is_the_core_count(self) -> None:
        """``--workers auto`` is one worker per core."""
        self.assertEqual(self.parse("--workers", "auto")["workers"], os.cpu_count() or 1)
        self.assertEqual(self.parse()["workers"], 1)

    def test_bad_counts(self) -> None:
        """Zero, negative and non-numbers are usage errors."""
        for value in ("0", "-2", "many"):
            with self.subTest(value=value), self.assertRaises(usage.UsageError):
                self.parse("--workers", value)

    def test_client_replay_needs_one_process(self) -> None:
        """--client-replay with several workers is refused (it would run N times)."""
        directory = tempfile.mkdtemp()
        self.addCleanup(shutil.rmtree, directory)
        recording = os.path.join(directory, "r.jsonl")
        with open(recording, "w"):
            pass
        with self.assertRaises(usage.UsageError) as caught:
            self.parse("--workers", "2", "--client-replay", recording)
        self.assertIn("--workers 1", str(caught.exception))

    def test_worker_arguments(self) -> None:
        """
        The workers get the same arguments without the workers options and
        the port (the supervisor gives them the concrete one).
        """
        self.assertEqual(
            _without_workers(["--port", "9", "--workers", "2", "--workers=3", "--quiet",
                              "-p", "8", "--port=7", "--worker", "--addon", "a.py"]),
            ["--quiet", "--addon", "a.py"],
        )
