"""
The trivial addon for twistproxy, one response header:
``twistd twistproxy --addon bench/addons/twistproxy_stamp.py``.
"""

from twistproxy.hooks import Addon


class Stamp(Addon):
    """Add a header to every response."""

    def response(self, flow):
        flow.response.headers["X-Bench"] = "1"


addons = [Stamp()]
