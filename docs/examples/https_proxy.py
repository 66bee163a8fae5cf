# https_proxy.py: python https_proxy.py; clients trust ~/.twistproxy/twistproxy-ca-cert.pem
import sys
from datetime import UTC, datetime
from pathlib import Path

from twisted.internet import reactor
from twisted.logger import globalLogBeginner, textFileLogObserver

from twistproxy.addons.flowlog import FlowLog
from twistproxy.certs import CertificateAuthority, CertificateStore
from twistproxy.proxy import ProxyFactory
from twistproxy.service import ProxyService


def now():
    return datetime.now(UTC)


globalLogBeginner.beginLoggingTo([textFileLogObserver(sys.stdout)])
authority, created = CertificateAuthority.load_or_create(
    Path("~/.twistproxy").expanduser(), now=now()
)
factory = ProxyFactory(
    reactor=reactor, addons=[FlowLog()],
    cert_store=CertificateStore(authority, now=now),
)
ProxyService("tcp:8080:interface=127.0.0.1", factory).startService()
reactor.run()
