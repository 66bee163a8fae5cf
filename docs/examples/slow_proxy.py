# slow_proxy.py: python slow_proxy.py, then curl -x http://127.0.0.1:8080 http://example.com/
import sys

from twisted.internet import reactor
from twisted.internet.endpoints import TCP4ServerEndpoint
from twisted.internet.task import deferLater
from twisted.logger import globalLogBeginner, textFileLogObserver

from twistproxy.addons.flowlog import FlowLog
from twistproxy.proxy import ProxyFactory, ProxyRequest
from twistproxy.service import ProxyService


class SlowRequest(ProxyRequest):
    def request(self, flow):
        flow.request.headers["X-Held-For"] = "100ms"
        return deferLater(reactor, 0.1, lambda: None)

    def response(self, flow):
        flow.response.headers["X-Proxied-By"] = "twistproxy"


globalLogBeginner.beginLoggingTo([textFileLogObserver(sys.stdout)])
factory = ProxyFactory(reactor=reactor, request_factory=SlowRequest, addons=[FlowLog()])
endpoint = TCP4ServerEndpoint(reactor, 8080, interface="127.0.0.1")
ProxyService(endpoint, factory).startService()
reactor.run()
