# In a second terminal, while twistd -n twistproxy runs:
curl -x http://127.0.0.1:8080 http://example.com/
curl --cacert ~/.twistproxy/twistproxy-ca-cert.pem -x http://127.0.0.1:8080 https://example.com/
