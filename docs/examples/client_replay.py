# client_replay.py: send the requests of flows.jsonl again, print what came back
from twisted.internet import reactor

from twistproxy.flowfile import load_flows
from twistproxy.proxy import ProxyFactory
from twistproxy.replay import ClientReplay

factory = ProxyFactory(reactor=reactor)
replay = ClientReplay(factory, concurrency=4)
flows = load_flows("flows.jsonl")


def start():
    replay.start_replay(flows)
    replay.when_drained().addCallback(lambda _: reactor.stop())


reactor.callWhenRunning(start)
reactor.run()
for flow in flows:
    print(flow.is_replay, flow.request.url, flow.response or flow.error)
