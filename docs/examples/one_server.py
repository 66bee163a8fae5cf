# one_server.py: every request goes to the server on 127.0.0.1:8000
from twisted.internet import reactor
from twisted.internet.endpoints import TCP4ClientEndpoint

from twistproxy.proxy import ProxyFactory
from twistproxy.service import ProxyService


def to_test_server(scheme, host, port):
    return TCP4ClientEndpoint(reactor, "127.0.0.1", 8000)


factory = ProxyFactory(reactor=reactor, endpoint_factory=to_test_server)
ProxyService("tcp:8080:interface=127.0.0.1", factory).startService()
reactor.run()
