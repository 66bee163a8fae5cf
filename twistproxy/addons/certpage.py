# -*- test-case-name: tests.test_certpage -*-
"""
The proxy's own page: ``http://twistproxy/`` (or ``http://twistproxy.cert/``)
asked through the proxy serves its CA certificate, so a phone or a browser
can fetch what it has to trust.
"""

from __future__ import annotations

from twistproxy.certs import CertificateAuthority
from twistproxy.hooks import Addon
from twistproxy.http import HTTPFlow, Response

NAMES = frozenset({"twistproxy", "twistproxy.cert"})
"""The host names the proxy answers for itself."""

_PAGE = """<!doctype html>
<html><head><meta charset="utf-8"><title>twistproxy CA</title></head>
<body>
<h1>twistproxy</h1>
<p>To let this proxy intercept HTTPS, trust its certificate authority:</p>
<ul>
<li><a href="/cert/pem">twistproxy-ca-cert.pem</a> (PEM: curl, Python, Linux, Firefox)</li>
<li><a href="/cert/cer">twistproxy-ca-cert.cer</a> (DER: Windows, macOS, Android, iOS)</li>
</ul>
<p>Trust it only on devices whose traffic you mean to inspect.</p>
</body></html>
"""


class CertPage(Addon):
    """
    Answers requests for :data:`NAMES` with the CA certificate; every other
    request passes by.  The twistd plugin adds it when it intercepts HTTPS.

    :param authority: The CA whose certificate is served.
    """

    def __init__(self, authority: CertificateAuthority) -> None:
        self._pem = authority.certificate_pem()
        self._der = authority.certificate_der()

    def requestheaders(self, flow: HTTPFlow) -> None:
        """Answer a request for the proxy's own page."""
        request = flow.request
        if request is None or request.scheme != "http" or request.host.lower() not in NAMES:
            return
        path = request.path.split("?", 1)[0]
        if path == "/":
            flow.response = Response.make(200, _PAGE, {"Content-Type": "text/html; charset=utf-8"})
        elif path in ("/cert/pem", "/cert/pem/"):
            flow.response = Response.make(200, self._pem, {
                "Content-Type": "application/x-pem-file",
                "Content-Disposition": 'attachment; filename="twistproxy-ca-cert.pem"',
            })
        elif path in ("/cert/cer", "/cert/der", "/cert/cer/"):
            flow.response = Response.make(200, self._der, {
                "Content-Type": "application/x-x509-ca-cert",
                "Content-Disposition": 'attachment; filename="twistproxy-ca-cert.cer"',
            })
        else:
            flow.response = Response.make(404, "not found: try http://twistproxy/\n")
