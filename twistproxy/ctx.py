# -*- test-case-name: tests.test_lifecycle -*-
"""
The addons' context, as mitmproxy's ``ctx``: an addon written for
mitmproxy reads its options the same way after one changed import::

    from twistproxy import ctx          # was: from mitmproxy import ctx

    class Counter:
        def load(self, loader):
            loader.add_option("count_header", str, "X-Count", "Header to count in.")

        def response(self, flow):
            flow.response.headers[ctx.options.count_header] = "1"

:data:`options` is the :class:`~twistproxy.addonopts.AddonOptions` of the
proxy's addons: the :class:`~twistproxy.lifecycle.AddonManager` made last
(``twistd twistproxy`` makes one). A process running several proxies with
different options should have their addons keep ``loader.options`` from
``load`` instead. Read it as ``ctx.options`` each time (``from
twistproxy.ctx import options`` would keep the options of the moment).
mitmproxy's ``ctx.log`` and ``ctx.master`` are not provided: log with
``twisted.logger.Logger`` (or ``logging``).
"""

from __future__ import annotations

from twistproxy.addonopts import AddonOptions

__all__ = ["options", "use"]

options: AddonOptions = AddonOptions()
"""The options addons read; :func:`use` replaces them."""


def use(new: AddonOptions) -> None:
    """Make *new* the options ``ctx.options`` refers to."""
    global options
    options = new
