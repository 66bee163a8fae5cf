from twistproxy.errors import FlowFileError
from twistproxy.flowfile import load_flows, read_flows

with open("flows.jsonl", "rb") as source:
    for flow in read_flows(source):
        print(flow.request.method, flow.request.url, flow.response.status_code)
        # GET http://example.com/hello 200

flows = load_flows("copy.jsonl")
print(len(flows))  # 2

with open("broken.jsonl", "wb") as out:
    out.write(b'{"version": 1}\n')
try:
    load_flows("broken.jsonl")
except FlowFileError as e:
    print(e)  # line 1: missing keys ['type', 'id', 'error', ...]
