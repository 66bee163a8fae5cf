"""
The trivial addon for mitmproxy, one response header:
``mitmdump -s bench/addons/mitmproxy_stamp.py``.
"""


class Stamp:
    """Add a header to every response."""

    def response(self, flow):
        flow.response.headers["X-Bench"] = "1"


addons = [Stamp()]
