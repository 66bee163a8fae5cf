# proxy.tac: twistd -ny proxy.tac
from twisted.application.service import Application
from twisted.internet import reactor

from twistproxy.addons.flowlog import FlowLog
from twistproxy.proxy import ProxyFactory
from twistproxy.service import ProxyService

application = Application("proxy")
factory = ProxyFactory(reactor=reactor, addons=[FlowLog()])
ProxyService("tcp:8080:interface=127.0.0.1", factory).setServiceParent(application)
