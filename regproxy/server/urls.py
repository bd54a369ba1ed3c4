# -*- test-case-name: tests.unit.test_urls -*-
"""
Where regproxy is reached and where the upstream is, and the rewriting of
upstream URLs (upload C{Location}s) to our own.

Everything here works on bytes and keeps paths and query strings byte for
byte: a registry's upload state parameters are signed, and re-encoding
them breaks uploads.
"""

from __future__ import annotations

import re

import attrs
from hyperlink import URL
from twisted.web.iweb import IRequest

_DEFAULT_PORTS = {b"http": 80, b"https": 443}
_SCHEME = re.compile(rb"[A-Za-z][A-Za-z0-9+.-]*")


@attrs.frozen
class Origin:
    """
    A scheme, host and port, plus an optional path prefix (an upstream at
    C{https://host/prefix}).
    """

    scheme: bytes
    host: bytes
    port: int
    prefix: bytes = b""

    @classmethod
    def fromURL(cls, text: str) -> Origin:
        url = URL.from_text(text)
        scheme = url.scheme.encode("ascii")
        host = url.host.encode("idna")
        port = url.port or _DEFAULT_PORTS[scheme]
        prefix = ("/" + "/".join(url.path)).rstrip("/").encode("utf-8")
        return cls(scheme, host, port, prefix if prefix != b"/" else b"")

    @property
    def authority(self) -> bytes:
        host = b"[" + self.host + b"]" if b":" in self.host else self.host
        if self.port == _DEFAULT_PORTS.get(self.scheme):
            return host
        return host + b":%d" % (self.port,)

    @property
    def base(self) -> bytes:
        """
        The URL that paths are appended to, with no trailing slash.
        """
        return self.scheme + b"://" + self.authority + self.prefix

    def sameOrigin(self, scheme: bytes, authority: bytes) -> bool:
        scheme = scheme.lower()
        if scheme != self.scheme:
            return False
        host, port = _splitAuthority(authority, _DEFAULT_PORTS.get(scheme, 0))
        return host.lower() == self.host.lower() and port == self.port


def _splitAuthority(authority: bytes, defaultPort: int) -> tuple[bytes, int]:
    authority = authority.rpartition(b"@")[2]
    if authority.startswith(b"["):
        host, _, rest = authority[1:].partition(b"]")
        port = rest[1:] if rest.startswith(b":") else b""
    else:
        host, _, port = authority.partition(b":")
    try:
        return host, int(port) if port else defaultPort
    except ValueError:
        return host, -1


def publicBase(request: IRequest, configured: str | None) -> bytes:
    """
    The base URL clients use to reach us: C{--public-url} when given, else
    the scheme and host a trusted proxy says the client used (the
    request's C{clientView}, see L{regproxy.server.forwarded}), else the
    scheme and C{Host} of this request.
    """
    if configured is not None:
        return configured.encode("utf-8")
    view = getattr(request, "clientView", None)
    scheme = getattr(view, "scheme", None) or (
        b"https" if request.isSecure() else b"http"
    )
    host = getattr(view, "host", None) or request.getHeader(b"host")
    if not host or any(c in host for c in b"/\\ @?#"):
        address = request.getHost()
        hostText = getattr(address, "host", "localhost")
        if ":" in hostText:
            hostText = f"[{hostText}]"
        host = f"{hostText}:{getattr(address, 'port', 80)}".encode("ascii")
    return scheme + b"://" + host


def rewriteLocation(location: bytes, upstream: Origin, public: bytes) -> bytes:
    """
    Point an upstream C{Location} at us when it points at the upstream;
    leave any other origin (a blob redirect to object storage) alone.
    """
    scheme, separator, rest = location.partition(b"://")
    if separator and not _SCHEME.fullmatch(scheme):
        separator = b""
    if separator:
        authority, slash, pathAndQuery = rest.partition(b"/")
        if not upstream.sameOrigin(scheme, authority):
            return location
        path = slash + pathAndQuery
    elif location.startswith(b"/") and not location.startswith(b"//"):
        path = location
    else:
        return location
    if upstream.prefix and path.startswith(upstream.prefix + b"/"):
        path = path[len(upstream.prefix) :]
    return public + path
