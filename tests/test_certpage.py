"""
Tests for :mod:`twistproxy.addons.certpage`.
"""

from __future__ import annotations

from datetime import UTC, datetime

from cryptography import x509
from twisted.trial.unittest import SynchronousTestCase

from twistproxy.addons.certpage import CertPage
from twistproxy.certs import CertificateAuthority
from twistproxy.connection import Client, Server
from twistproxy.http import HTTPFlow, Request, Response

NOW = datetime(2026, 3, 1, 12, 0, 0, tzinfo=UTC)

_CA = CertificateAuthority.generate(now=NOW, common_name="certpage test CA")


def _flow(url: str, method: str = "GET") -> HTTPFlow:
    """A flow whose request for *url* has just had its headers read."""
    request = Request.make(method, url)
    flow = HTTPFlow(Client(), Server(address=(request.host, request.port)), live=True,
                    now=lambda: 0.0)
    flow.request = request
    return flow


class CertPageTests(SynchronousTestCase):
    """
    Tests for :class:`CertPage`.
    """

    def setUp(self) -> None:
        self.page = CertPage(_CA)

    def _answer(self, url: str) -> Response:
        flow = _flow(url)
        self.page.requestheaders(flow)
        response = flow.response
        self.assertIsNotNone(response, url)
        assert response is not None
        return response

    def test_index_page(self) -> None:
        """
        ``http://twistproxy/`` is answered with an HTML page linking to both
        downloads.
        """
        response = self._answer("http://twistproxy/")
        self.assertEqual(response.status_code, 200)
        self.assertEqual(response.headers["Content-Type"], "text/html; charset=utf-8")
        text = response.text
        assert text is not None
        self.assertIn('href="/cert/pem"', text)
        self.assertIn('href="/cert/cer"', text)

    def test_other_name_and_case(self) -> None:
        """
        ``twistproxy.cert`` is answered too, and the host is matched without
        regard to case; a query string does not matter.
        """
        self.assertEqual(self._answer("http://twistproxy.cert/?x=1").status_code, 200)
        flow = _flow("http://twistproxy/cert/pem")
        assert flow.request is not None
        flow.request.host = "TwistProxy"  # as a hook or a parser might leave it
        self.page.requestheaders(flow)
        assert flow.response is not None
        self.assertEqual(flow.response.content, _CA.certificate_pem())

    def test_pem(self) -> None:
        """
        ``/cert/pem`` is the CA certificate in PEM, as a PEM file download.
        """
        response = self._answer("http://twistproxy/cert/pem")
        self.assertEqual(response.status_code, 200)
        self.assertEqual(response.content, _CA.certificate_pem())
        self.assertEqual(response.headers["Content-Type"], "application/x-pem-file")
        self.assertIn("twistproxy-ca-cert.pem", response.headers["Content-Disposition"])
        self.assertEqual(response.headers["Content-Length"], str(len(_CA.certificate_pem())))
        content = response.content
        assert content is not None
        self.assertEqual(x509.load_pem_x509_certificate(content), _CA.certificate)

    def test_der(self) -> None:
        """
        ``/cert/cer`` (and ``/cert/der``) is the CA certificate in DER, with
        the content type systems install CA certificates from.
        """
        for path in ("/cert/cer", "/cert/der"):
            response = self._answer("http://twistproxy" + path)
            self.assertEqual(response.status_code, 200)
            self.assertEqual(response.content, _CA.certificate_der())
            self.assertEqual(response.headers["Content-Type"], "application/x-x509-ca-cert")
            self.assertIn("twistproxy-ca-cert.cer", response.headers["Content-Disposition"])

    def test_unknown_path(self) -> None:
        """Any other path on the proxy's own host is a 404."""
        response = self._answer("http://twistproxy/nope")
        self.assertEqual(response.status_code, 404)

    def test_other_hosts_pass_by(self) -> None:
        """Requests for any other host are left alone."""
        for url in ("http://example.com/", "http://example.com/cert/pem",
                    "http://twistproxy.example/", "http://nottwistproxy/"):
            flow = _flow(url)
            self.page.requestheaders(flow)
            self.assertIsNone(flow.response, url)

    def test_https_passes_by(self) -> None:
        """
        An ``https`` request for the proxy's name (inside an intercepted
        tunnel) is left alone: the page is only served over plain HTTP.
        """
        flow = _flow("https://twistproxy/cert/pem")
        self.page.requestheaders(flow)
        self.assertIsNone(flow.response)

    def test_no_request(self) -> None:
        """A flow without a request is left alone."""
        flow = HTTPFlow(Client(), Server(), now=lambda: 0.0)
        self.page.requestheaders(flow)
        self.assertIsNone(flow.response)
