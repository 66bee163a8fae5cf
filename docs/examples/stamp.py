# stamp.py: twistd -n twistproxy --addon stamp.py --set stamp=mine
import typing

from twistproxy import ctx  # was: from mitmproxy import ctx


class Stamp:
    def load(self, loader):
        loader.add_option("stamp", str, "twistproxy", "The X-Stamp of every response.")
        loader.add_option("skip", typing.Sequence[str], [], "Hosts left alone.")

    def configure(self, updated):
        if "stamp" in updated and not ctx.options.stamp:
            raise ValueError("stamp must not be empty")

    def response(self, flow):
        if flow.request.host not in ctx.options.skip:
            flow.response.headers["X-Stamp"] = ctx.options.stamp


addons = [Stamp()]
