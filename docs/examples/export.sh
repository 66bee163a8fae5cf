python -m twistproxy.flowfile export-curl flows.jsonl --filter '~d example.com & ~m POST'
python -m twistproxy.flowfile export-httpie flows.jsonl
python -m twistproxy.flowfile export-raw flows.jsonl --filter '~c 500' > failures.txt
