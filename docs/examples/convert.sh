python -m twistproxy.flowfile export-har flows.jsonl flows.har
python -m twistproxy.flowfile import-har flows.har imported.jsonl
