"""
twistproxy: an intercepting HTTP/HTTPS proxy built on Twisted.

Public names live in the module that defines them, for example
``from twistproxy.proxy import ProxyRequest``; this package holds only the
version.
"""

__version__ = "0.1.0.dev0"
