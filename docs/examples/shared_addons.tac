# shared_addons.tac: twistd -ny shared_addons.tac
# Two listeners, 8080 and 8081, sharing the addons of stamp.py (beside this file).
import sys
from pathlib import Path

from twisted.application.service import Application
from twisted.internet import reactor

from twistproxy.lifecycle import AddonManager
from twistproxy.proxy import ProxyFactory
from twistproxy.service import ProxyService

sys.path.insert(0, str(Path(__file__).resolve().parent))
from stamp import Stamp  # noqa: E402

application = Application("proxies")
manager = AddonManager([Stamp()])
manager.options.set("stamp=mine")
for port in (8080, 8081):
    factory = ProxyFactory(reactor=reactor, addons=manager)
    ProxyService(f"tcp:{port}:interface=127.0.0.1", factory).setServiceParent(application)
