# -*- test-case-name: tests.unit.test_cors -*-
"""
CORS for browser registry UIs: answer preflights, and let scripts from the
allowed origins read the headers a registry UI needs.
"""

from __future__ import annotations

import attrs
from twisted.web.server import Request

_METHODS = b"GET, HEAD, POST, PUT, PATCH, DELETE, OPTIONS"
_ALLOWED_HEADERS = b"Authorization, Accept, Content-Type, Range, If-None-Match"
_EXPOSED = (
    b"Docker-Content-Digest, WWW-Authenticate, Link, Content-Length, "
    b"Content-Range, Location, Docker-Upload-UUID, Docker-Distribution-Api-Version"
)
_MAX_AGE = b"600"


@attrs.frozen
class CORSPolicy:
    """
    The origins allowed to call us from a browser; C{*} allows any.
    """

    origins: tuple[str, ...] = ()

    def allows(self, origin: bytes) -> bool:
        if not self.origins:
            return False
        text = origin.decode("latin-1")
        return "*" in self.origins or text in self.origins

    def apply(self, request: Request) -> bool:
        """
        Add CORS headers to C{request}'s response when its origin is
        allowed.

        @return: Whether the request was a preflight, now answered.
        """
        if not self.origins:
            return False
        headers = request.responseHeaders
        # The answer depends on Origin whenever CORS is on: caches must know.
        headers.addRawHeader(b"Vary", b"Origin")
        origin = request.getHeader(b"origin")
        if origin is None or not self.allows(origin):
            return False
        if origin.decode("latin-1") in self.origins:
            # A listed origin may send the browser's own credentials.
            headers.setRawHeaders(b"Access-Control-Allow-Origin", [origin])
            headers.setRawHeaders(b"Access-Control-Allow-Credentials", [b"true"])
        else:
            # "*": any page may call us with an explicit Authorization
            # header, but never with the browser's credentials.
            headers.setRawHeaders(b"Access-Control-Allow-Origin", [b"*"])
        if request.method == b"OPTIONS" and request.getHeader(
            b"access-control-request-method"
        ):
            headers.setRawHeaders(b"Access-Control-Allow-Methods", [_METHODS])
            headers.setRawHeaders(b"Access-Control-Allow-Headers", [_ALLOWED_HEADERS])
            headers.setRawHeaders(b"Access-Control-Max-Age", [_MAX_AGE])
            headers.setRawHeaders(b"Content-Length", [b"0"])
            request.setResponseCode(204)
            request.finish()
            return True
        headers.setRawHeaders(b"Access-Control-Expose-Headers", [_EXPOSED])
        return False
