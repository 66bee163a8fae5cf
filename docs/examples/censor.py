# censor.py: twistd -n twistproxy --addon censor.py
from twistproxy.websocket import inject


class Censor:
    def websocket_start(self, flow):
        print("WebSocket open:", flow.request.url)

    def websocket_message(self, flow):
        message = flow.websocket.messages[-1]
        if not message.is_text:
            return
        if message.from_client and message.text == "status?":
            message.drop()                      # the origin never sees it
            inject(flow, "status: proxied", to_client=True)
        else:
            message.text = message.text.replace("secret", "******")

    def websocket_end(self, flow):
        ws = flow.websocket
        print(f"closed {ws.close_code} after {len(ws.messages)} messages")


addons = [Censor()]
