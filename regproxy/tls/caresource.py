# -*- test-case-name: tests.unit.test_tls -*-
"""
C{/_ca.crt}: our generated certificate, for clients to fetch and install as
their C{ca.crt} (after checking the fingerprint the daemon logs).
"""

from __future__ import annotations

from twisted.logger import Logger
from twisted.web.resource import Resource
from twisted.web.server import Request

from regproxy.tls.certificates import SelfSignedPaths


class CACertificateResource(Resource):
    """
    Serves the certificate file as it is now, so a regenerated certificate is
    served without a restart.  Only the certificate is public; the key next
    to it never is.
    """

    isLeaf = True
    _log = Logger()

    def __init__(self, path: str) -> None:
        super().__init__()
        self._path = path

    @classmethod
    def inStateDir(cls, stateDir: str) -> CACertificateResource:
        return cls(SelfSignedPaths.inStateDir(stateDir).certificate)

    def render_GET(self, request: Request) -> bytes:
        try:
            with open(self._path, "rb") as f:
                body = f.read()
        except OSError:
            request.setResponseCode(404)
            request.setHeader(b"content-type", b"text/plain; charset=utf-8")
            return (
                b"No generated certificate here: this regproxy has no "
                b"self-signed TLS listener.\n"
            )
        request.setHeader(b"content-type", b"application/x-pem-file")
        request.setHeader(b"content-disposition", b'attachment; filename="ca.crt"')
        request.setHeader(b"cache-control", b"no-cache")
        return body

    def render_HEAD(self, request: Request) -> bytes:
        return self.render_GET(request)
