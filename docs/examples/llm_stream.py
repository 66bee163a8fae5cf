# llm_stream.py: twistd -n twistproxy --addon llm_stream.py --save llm.jsonl
class ShowStream:
    """Print a streamed (server-sent events) response as it passes, untouched."""

    stream_bodies = True  # never hold a body back for the response hook

    def responseheaders(self, flow):
        if flow.response.headers.get("content-type", "").startswith("text/event-stream"):
            url = flow.request.pretty_url

            def show(data):
                if data:
                    print(f"{url}: {data!r}")
                return data

            flow.response.stream = show

    def response(self, flow):
        if flow.response.headers.get("content-type", "").startswith("text/event-stream"):
            print(f"{flow.request.pretty_url}: {flow.response.body_size} bytes, "
                  f"truncated: {flow.response.truncated}")


addons = [ShowStream()]
