# save_flows.py: a proxy on 8080 that saves the flows to example.com
from twisted.internet import reactor

from twistproxy.addons.save import SaveFlows
from twistproxy.filters import parse
from twistproxy.proxy import ProxyFactory
from twistproxy.service import ProxyService

saving = SaveFlows.open("saved.jsonl", flow_filter=parse("~d example.com"))
factory = ProxyFactory(reactor=reactor, addons=[saving])
service = ProxyService("tcp:8080:interface=127.0.0.1", factory)
service.startService()
reactor.addSystemEventTrigger("before", "shutdown", service.stopService)  # drains
reactor.addSystemEventTrigger("after", "shutdown", saving.close)
reactor.run()
