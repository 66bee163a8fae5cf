from twistproxy.connection import Client, Server
from twistproxy.flowfile import FlowWriter, dump_flows
from twistproxy.http import HTTPFlow, Request, Response

flow = HTTPFlow(Client(), Server(address=("example.com", 80)))
flow.request = Request.make("GET", "http://example.com/hello")
flow.response = Response.make(200, "hi\n")

with FlowWriter(open("flows.jsonl", "ab")) as writer:
    writer.add(flow)                      # one line, flushed

with open("copy.jsonl", "wb") as out:
    print(dump_flows([flow, flow], out))  # 2
