# listeners.py: a regular proxy on 8080 and a reverse proxy to 127.0.0.1:5000 on 8081
from twisted.application.service import MultiService
from twisted.internet import reactor
from twisted.internet.endpoints import serverFromString

from twistproxy.modes import parse_mode
from twistproxy.proxy import ProxyFactory
from twistproxy.service import ProxyService

top = MultiService()
addons: list[object] = []  # shared by every listener
for text in ("regular@8080", "reverse:http://127.0.0.1:5000@8081"):
    mode = parse_mode(text)
    factory = ProxyFactory(reactor=reactor, addons=addons, mode=mode)
    ProxyService(serverFromString(reactor, mode.endpoint()), factory).setServiceParent(top)
top.startService()
reactor.run()
