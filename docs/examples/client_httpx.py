# client_httpx.py: httpx through the proxy (verify= takes an ssl.SSLContext)
import os
import ssl

import httpx

ca = os.path.expanduser("~/.twistproxy/twistproxy-ca-cert.pem")
client = httpx.Client(proxy="http://127.0.0.1:8080", verify=ssl.create_default_context(cafile=ca))
print(client.get("https://example.com/").status_code)
