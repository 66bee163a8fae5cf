"""
Tests for the rewrite options of ``twistd twistproxy``
(:mod:`twistproxy._rewrite_options`) and where ``make_service`` puts the
addons they make.
"""

from __future__ import annotations

import os
import tempfile

from twisted.internet.testing import MemoryReactorClock
from twisted.python import usage
from twisted.trial.unittest import SynchronousTestCase

from tests.options import parse
from twistproxy.addons.rewrites import BlockList, ModifyHeaders
from twistproxy.addons.stickycookie import StickyCookie
from twistproxy.options import Options
from twistproxy.proxy import ProxyFactory
from twistproxy.tap import make_service

ADDON = "class Plain:\n    def request(self, flow):\n        pass\n\naddons = [Plain()]\n"


class RewriteOptionsTests(SynchronousTestCase):
    """Each option, repeated, makes its addon; bad specs are one-line usage errors."""

    def test_none(self) -> None:
        """Without rewrite options there are no rewrite addons."""
        self.assertEqual(parse().rewrite_addons(), [])

    def test_order_and_repeats(self) -> None:
        """The addons come in mitmproxy's order, each with all its option's specs."""
        directory = tempfile.mkdtemp()
        self.addCleanup(os.rmdir, directory)
        options = parse(
            "--stickycookie", "~d example",
            "--modify-headers", "|~q|X-A|1", "--modify-headers", "|~s|X-B|",
            "--modify-body", "|~s|a|b",
            "--map-local", f"|example.com/js|{directory}",
            "--map-remote", "|//a/|//b/",
            "--anticache",
            "--block-list", "|~d ads|444", "--block-list", "|~d track|404",
        )
        addons = options.rewrite_addons()
        self.assertEqual(
            [type(addon).__name__ for addon in addons],
            ["BlockList", "AntiCache", "MapRemote", "MapLocal", "ModifyBody", "ModifyHeaders",
             "StickyCookie"],
        )
        block, headers, sticky = addons[0], addons[5], addons[6]
        assert isinstance(block, BlockList) and isinstance(headers, ModifyHeaders)
        assert isinstance(sticky, StickyCookie)
        self.assertEqual([spec.status for spec in block.specs], [444, 404])
        self.assertEqual([spec.name for spec in headers.specs], [b"X-A", b"X-B"])
        self.assertEqual(sticky.filter.expression, "~d example")

    def test_errors_name_the_option(self) -> None:
        """A bad spec is a one-line error naming the option and the spec."""
        for option, spec, reason in [
            ("--map-local", "|x|/nonexistent/dir", "No such file"),
            ("--map-remote", "|~d api|https://elsewhere", "is a filter"),
            ("--modify-headers", "|~bad|X|v", "unknown operator"),
            ("--modify-body", "|[|x", "regex '['"),
            ("--block-list", "|~d ads|1000", "not a status"),
            ("--block-list", "|444", "expected |filter|status"),
            ("--stickycookie", "(~d a", "never closed at column 1"),
        ]:
            with self.assertRaises(usage.UsageError) as caught:
                Options().parseOptions([option, spec])
            message = str(caught.exception)
            self.assertTrue(message.startswith(f"{option} {spec!r}: "), message)
            self.assertIn(reason, message)
            self.assertNotIn("\n", message)

    def test_help(self) -> None:
        """--help lists every rewrite option."""
        text = Options().getUsage()
        for option in ("--map-local=", "--map-remote=", "--modify-headers=", "--modify-body=",
                       "--block-list=", "--anticache", "--stickycookie="):
            self.assertIn(option, text)


class WiringTests(SynchronousTestCase):
    """Where make_service puts the rewrites among the addons."""

    def test_after_the_flow_log_before_addon_files(self) -> None:
        """The rewrites run after the flow log and before the --addon files' addons."""
        with tempfile.NamedTemporaryFile("w", suffix=".py", delete=False) as f:
            f.write(ADDON)
        self.addCleanup(os.unlink, f.name)
        reactor = MemoryReactorClock()
        make_service(parse("--addon", f.name, "--anticache", "--block-list", "|~d a|403"),
                     reactor).startService()
        [(_, factory, _, _)] = reactor.tcpServers
        assert isinstance(factory, ProxyFactory)
        self.assertEqual([type(addon).__name__ for addon in factory.chain.addons],
                         ["CertPage", "FlowLog", "BlockList", "AntiCache", "Plain"])
