"""
The trivial addon for proxy.py, one *request* header:
``PYTHONPATH=bench/addons proxy --plugins proxypy_stamp.Stamp``.

The twistproxy and mitmproxy stamps add a response header, but proxy.py
hands its plugins a response only as the raw chunks read from the origin
(``handle_upstream_chunk``), with no parsed head per response; adding a
header there would mean parsing and rebuilding each response in the plugin.
So this stamp adds a header to each request instead, in
``handle_client_request``, the hook proxy.py calls for every request on a
connection, plain or intercepted (``before_upstream_connection`` runs only
once per connection and not for the requests inside an intercepted tunnel).
"""

from proxy.http.parser import HttpParser
from proxy.http.proxy import HttpProxyBasePlugin


class Stamp(HttpProxyBasePlugin):
    """Add a header to every request."""

    def handle_client_request(self, request: HttpParser) -> HttpParser | None:
        request.add_header(b"X-Bench", b"1")
        return request
