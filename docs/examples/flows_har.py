import json

from twistproxy.flowfile import load_flows
from twistproxy.har import from_har, to_har

har = to_har(load_flows("flows.jsonl"), creator_version="1.0")
with open("flows.har", "w", encoding="utf-8") as f:
    json.dump(har, f, indent=2, ensure_ascii=False)

with open("flows.har", encoding="utf-8") as f:
    for flow in from_har(json.load(f)):
        print(flow.request.url, flow.response.text)  # http://example.com/hello hi
