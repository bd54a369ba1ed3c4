# -*- test-case-name: tests.unit.test_tls -*-
"""
C{/_ca.crt}: the local CA's certificate, for clients to fetch and install
as their C{ca.crt} (after checking the fingerprint the daemon logs).
"""

from __future__ import annotations

from twisted.web.resource import Resource
from twisted.web.server import Request

from regproxy.tls.localca import SelfSignedPaths


class CACertificateResource(Resource):
    """
    Serves the CA certificate file as it is now (the server certificates
    it signs come and go without clients noticing).  Only the certificate
    is public; the key next to it never is.
    """

    isLeaf = True

    def __init__(self, path: str) -> None:
        super().__init__()
        self._path = path

    @classmethod
    def inStateDir(cls, stateDir: str) -> CACertificateResource:
        return cls(SelfSignedPaths.inStateDir(stateDir).ca)

    def render_GET(self, request: Request) -> bytes:
        try:
            with open(self._path, "rb") as f:
                body = f.read()
        except OSError:
            request.setResponseCode(404)
            request.setHeader(b"content-type", b"text/plain; charset=utf-8")
            return (
                b"No local CA here: this regproxy has no TLS listener "
                b"with a certificate of its own.\n"
            )
        request.setHeader(b"content-type", b"application/x-pem-file")
        request.setHeader(b"content-disposition", b'attachment; filename="ca.crt"')
        request.setHeader(b"cache-control", b"no-cache")
        return body

    def render_HEAD(self, request: Request) -> bytes:
        return self.render_GET(request)
