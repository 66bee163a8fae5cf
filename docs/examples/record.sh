# Record: every flow the proxy carries is appended to session.jsonl.
twistd -n twistproxy --port 8080 --save session.jsonl
