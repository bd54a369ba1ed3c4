# -*- test-case-name: tests.unit.test_cachedresponse -*-
"""
What one upstream request asks of the LAN cache: which blob or manifest
of which repository on which upstream (L{CacheTarget}), whose request it
is (L{clientCredentials}), and whether a failure means the upstream cannot
be reached (L{unreachable}), when a cached answer may stand in.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable

import attrs
from twisted.internet import error as netError
from twisted.web.client import ResponseFailed
from twisted.web.iweb import IResponse
from twisted.web.server import Request

from regproxy.auth.credentials import BasicCredentials
from regproxy.proxy.upstreamauth import UpstreamAuthAgent
from regproxy.server.errors import RegistryError, UpstreamError, UpstreamTimeout

# What "the upstream cannot be reached" looks like.
UNREACHABLE = (
    netError.ConnectError,
    netError.DNSLookupError,
    netError.TimeoutError,
    UpstreamTimeout,
    ResponseFailed,
)


class Unreachable(Exception):
    """
    The upstream could not be asked (the reason is the cause); a cached
    answer may stand in.
    """


_PATH = re.compile(
    rb"^/v2/(?P<repository>.+)/(?P<kind>blobs|manifests)/(?P<reference>[^/?]+)$"
)
DIGEST = re.compile(r"^sha256:[0-9a-f]{64}$")


@attrs.frozen
class CacheTarget:
    """
    What one upstream request asks for, as the cache sees it.
    """

    upstream: str
    repository: str
    kind: str
    reference: str

    @property
    def byDigest(self) -> bool:
        return DIGEST.match(self.reference) is not None

    @classmethod
    def fromURL(cls, url: bytes) -> CacheTarget | None:
        scheme, sep, rest = url.partition(b"://")
        host, slash, path = rest.partition(b"/")
        if not sep or not slash or b"?" in path:
            return None
        match = _PATH.match(b"/" + path)
        if match is None:
            return None
        try:
            return cls(
                (scheme + sep + host).decode("ascii"),
                match.group("repository").decode("utf-8"),
                match.group("kind").decode("ascii"),
                match.group("reference").decode("utf-8"),
            )
        except UnicodeDecodeError:
            return None


def clientCredentials(request: Request, agent: object) -> tuple[str | None, str | None]:
    """
    Whose request this is, as a user name and secret to fingerprint.

    In broker mode the relay's agent authenticates as the client's
    upstream credentials (L{UpstreamAuthAgent}; none is anonymous);
    otherwise the client's own C{Authorization} header is what the
    upstream judges.
    """
    if isinstance(agent, UpstreamAuthAgent):
        credentials = agent.access.credentials
        if credentials is None:
            return None, None
        return credentials.username, credentials.password
    values = request.requestHeaders.getRawHeaders(b"authorization")
    if not values:
        return None, None
    basic = BasicCredentials.fromHeader(values[-1])
    if basic is not None:
        return basic.username, basic.password
    return None, values[-1].decode("latin-1")


def unreachable(error: BaseException) -> bool:
    """
    Whether C{error} says the upstream (or its token service, the balena
    API) cannot be reached, rather than answering.
    """
    if isinstance(error, UpstreamError):
        return True
    if isinstance(error, RegistryError):
        return error.status in (502, 503, 504)
    return isinstance(error, UNREACHABLE)


Sender = Callable[[bytes], Awaitable[IResponse]]


@attrs.frozen
class CacheAsk:
    """
    One request the cache may answer: the client's request, what it asks
    the upstream for, whose it is (a fingerprint), and how to ask the
    upstream with the client's own authorization.
    """

    request: Request
    target: CacheTarget
    fingerprint: str
    upstream: Sender
