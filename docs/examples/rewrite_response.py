# rewrite_response.py: twistd -n twistproxy --addon rewrite_response.py
import json


class AddField:
    """Add a field to every JSON object an origin answers with."""

    def response(self, flow):
        if not flow.response.headers.get("content-type", "").startswith("application/json"):
            return
        data = json.loads(flow.response.text)
        if isinstance(data, dict):
            data["proxied"] = True
            flow.response.text = json.dumps(data)  # Content-Length follows


addons = [AddField()]
