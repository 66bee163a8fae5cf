# tunnel_policy.py: twistd -n twistproxy --addon tunnel_policy.py
from twistproxy.hooks import Addon
from twistproxy.http import Response


class TunnelPolicy(Addon):
    def http_connect(self, flow):
        if flow.request.port != 443:
            flow.response = Response.make(403, "HTTPS on port 443 only\n")
        elif flow.request.host.endswith(".internal.example"):
            flow.passthrough = True


addons = [TunnelPolicy()]
