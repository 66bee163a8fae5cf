# rewrites_addons.py: the built-in rewrites as addons, on a proxy on 8080
from twisted.internet import reactor

from twistproxy.addons.maplocal import MapLocal
from twistproxy.addons.rewrites import AntiCache, BlockList, MapRemote, ModifyBody, ModifyHeaders
from twistproxy.addons.stickycookie import StickyCookie
from twistproxy.proxy import ProxyFactory
from twistproxy.service import ProxyService

factory = ProxyFactory(reactor=reactor, addons=[
    BlockList(["|~d ads.example|444"]),
    AntiCache(),
    MapLocal(["|example.com/js|./js"]),  # a directory that exists
    MapRemote(["|~d api.example|//api.example|//staging.example"]),
    ModifyHeaders(["|~q|X-Name|value"]),
    ModifyBody([r"|~s & ~t html|<title>|<title>[proxied] "]),
    StickyCookie("~d example.com"),
])
ProxyService("tcp:8080:interface=127.0.0.1", factory).startService()
reactor.run()
