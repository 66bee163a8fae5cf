# holdposts.py: twistd -n twistproxy --addon holdposts.py
from twisted.internet import reactor


class HoldPosts:
    def __init__(self):
        self.held = []

    def request(self, flow):
        if flow.request.method == "POST":
            flow.intercept()
            self.held.append(flow)
            # Here a timer resumes them a second later; a user interface could.
            reactor.callLater(1, self.release_all)

    def release_all(self):  # call from anywhere in the reactor thread
        held, self.held = self.held, []
        for flow in held:
            flow.resume()


addons = [HoldPosts()]
