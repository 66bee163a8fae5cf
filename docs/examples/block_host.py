# block_host.py: twistd -n twistproxy --addon block_host.py
from twistproxy.http import Response

BLOCKED = {"ads.example.com", "tracker.example.net"}


class BlockHosts:
    def http_connect(self, flow):  # HTTPS: refuse the tunnel itself
        if flow.request.host in BLOCKED:
            flow.response = Response.make(403, "blocked by twistproxy\n")

    def requestheaders(self, flow):  # plain HTTP, and requests inside tunnels
        if flow.request.pretty_host in BLOCKED:
            flow.response = Response.make(403, "blocked by twistproxy\n")


addons = [BlockHosts()]
