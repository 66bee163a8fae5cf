# map_remote.py: twistd -n twistproxy --addon map_remote.py
STAGING = ("staging.example.com", 8000)


class ToStaging:
    """Send the requests for api.example.com to the staging server."""

    def request(self, flow):
        if flow.request.pretty_host == "api.example.com":
            flow.request.host, flow.request.port = STAGING  # the Host header follows


addons = [ToStaging()]
