# myaddons.py: twistd -n twistproxy --addon myaddons.py
from twisted.internet import reactor
from twisted.internet.task import deferLater

from twistproxy.hooks import Addon
from twistproxy.http import Response


class Block(Addon):
    """Answer requests to one host without contacting it."""

    def request(self, flow):
        if flow.request.host == "ads.example.com":
            flow.response = Response.make(403, "blocked by twistproxy\n")


class Slow(Addon):
    """Hold every request for half a second."""

    async def request(self, flow):
        await deferLater(reactor, 0.5, lambda: None)


class Stamp(Addon):
    """Add a header to every response."""

    def response(self, flow):
        flow.response.headers["X-Proxied-By"] = "twistproxy"


addons = [Block(), Slow(), Stamp()]
