from twistproxy.filters import FilterError, parse
from twistproxy.flowfile import load_flows

wanted = parse("~d example.com & !~c 304")
print([flow.request.url for flow in load_flows("flows.jsonl") if wanted(flow)])
# ['http://example.com/hello']

try:
    parse("~d example.com & (~c 304")
except FilterError as e:
    print(e.position, e.reason)  # 17 '(' is never closed
    print(e)
    # '(' is never closed at column 18
    # ~d example.com & (~c 304
    #                  ^
