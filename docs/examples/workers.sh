# One proxy per core on port 8080, /healthz and /metrics on 9101.
twistd -n twistproxy --port 8080 --workers auto --metrics-port 9101 --drain-delay 5
