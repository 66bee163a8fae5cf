# server_replay.py: a proxy on 8080 that answers from flows.jsonl
from twisted.internet import reactor

from twistproxy.flowfile import load_flows
from twistproxy.proxy import ProxyFactory
from twistproxy.replay import ServerReplay
from twistproxy.service import ProxyService

replay = ServerReplay(
    load_flows("flows.jsonl"),
    ignore_params=["_"],
    match_headers=["Accept"],
    unmatched="404",
    now=reactor.seconds,
)
factory = ProxyFactory(reactor=reactor, addons=[replay], connection_strategy="lazy")
ProxyService("tcp:8080:interface=127.0.0.1", factory).startService()
reactor.run()
