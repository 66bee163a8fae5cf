# client_urllib.py: urllib reads the proxy from HTTPS_PROXY, and ssl's default
# context the CA from SSL_CERT_FILE:
#   export HTTPS_PROXY=http://127.0.0.1:8080
#   export SSL_CERT_FILE=~/.twistproxy/twistproxy-ca-cert.pem
#   python client_urllib.py
import urllib.request

with urllib.request.urlopen("https://example.com/") as response:
    print(response.status)
