# client_requests.py: Python requests through the proxy, trusting its CA
import os

import requests

ca = os.path.expanduser("~/.twistproxy/twistproxy-ca-cert.pem")
proxies = {"http": "http://127.0.0.1:8080", "https": "http://127.0.0.1:8080"}
response = requests.get("https://example.com/", proxies=proxies, verify=ca)
print(response.status_code)
