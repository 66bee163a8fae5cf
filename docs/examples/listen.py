# listen.py: a ProxyFactory is an ordinary protocol factory
from twisted.internet import reactor
from twisted.internet.endpoints import TCP4ServerEndpoint

from twistproxy.proxy import ProxyFactory

factory = ProxyFactory(reactor=reactor)
endpoint = TCP4ServerEndpoint(reactor, 8080, interface="127.0.0.1")
d = endpoint.listen(factory)   # fires with the IListeningPort
d.addCallback(lambda port: print("listening on", port.getHost().port))
reactor.run()
