# Replay: the same requests are answered from session.jsonl, nothing else goes out.
twistd -n twistproxy --port 8080 --server-replay session.jsonl --replay-unmatched 404
