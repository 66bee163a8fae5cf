"""
The stock ``twisted.web.proxy`` as a benchmark peer: ``python bench/stock_proxy.py PORT``.

``twisted.web.proxy.Proxy`` on an ``HTTPFactory``, listening on 127.0.0.1,
on the epoll reactor (what twistd picks on Linux).  Twisted's access log is
switched off, as it is in twistproxy and in ``mitmdump -q``.  It has no
CONNECT, so it takes no part in the HTTPS scenarios.

Importing ``twisted.web.proxy`` emits a DeprecationWarning (it uses the
deprecated ``HTTPClient``): fine here, it is the thing being measured.
"""

from __future__ import annotations

import sys

from twisted.internet import epollreactor

epollreactor.install()

from twisted.internet import reactor  # noqa: E402
from twisted.web import http, proxy  # noqa: E402


class QuietHTTPFactory(http.HTTPFactory):
    """An ``HTTPFactory`` for ``twisted.web.proxy.Proxy`` without an access log."""

    protocol = proxy.Proxy

    def log(self, request: object) -> None:
        """No access log line."""


def main(argv: list[str]) -> None:
    port = int(argv[1])
    reactor.listenTCP(port, QuietHTTPFactory(), interface="127.0.0.1")
    reactor.run()


if __name__ == "__main__":
    main(sys.argv)
