# delay.py: twistd -n twistproxy --addon delay.py
from twisted.internet import reactor
from twisted.internet.task import deferLater


class Delay:
    def __init__(self, reactor, seconds):
        self.reactor, self.seconds = reactor, seconds

    def request(self, flow):
        return deferLater(self.reactor, self.seconds, lambda: None)

    async def response(self, flow):
        await deferLater(self.reactor, self.seconds, lambda: None)
        flow.response.headers["X-Delayed"] = str(self.seconds)


addons = [Delay(reactor, 0.5)]
