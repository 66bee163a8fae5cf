# web_and_proxy.tac: twistd -ny web_and_proxy.tac
# An existing service (a web site on 8000) with a proxy (on 8080) added to it.
from twisted.application.internet import StreamServerEndpointService
from twisted.application.service import Application
from twisted.internet import reactor
from twisted.internet.endpoints import serverFromString
from twisted.web.resource import Resource
from twisted.web.server import Site
from twisted.web.static import Data

from twistproxy.addons.flowlog import FlowLog
from twistproxy.proxy import ProxyFactory
from twistproxy.service import ProxyService

application = Application("site and proxy")

root = Resource()
root.putChild(b"", Data(b"the site\n", "text/plain"))
site = StreamServerEndpointService(
    serverFromString(reactor, "tcp:8000:interface=127.0.0.1"), Site(root)
)
site.setServiceParent(application)

proxy = ProxyFactory(reactor=reactor, addons=[FlowLog()])
ProxyService("tcp:8080:interface=127.0.0.1", proxy).setServiceParent(application)
