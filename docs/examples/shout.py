# shout.py: twistd -n twistproxy --addon shout.py
from twistproxy.hooks import Addon


class Shout(Addon):
    stream_bodies = True  # the response hook below needs no whole body

    def responseheaders(self, flow):
        if flow.response.headers.get("content-type", "").startswith("text/plain"):
            flow.response.stream = lambda data: data.upper()

    def response(self, flow):
        print(flow.request.url, flow.response.body_size, flow.response.truncated)


addons = [Shout()]
