# -*- test-case-name: tests.integration.test_dockerd -*-
"""
A stand-in for Zot with anonymous read, in front of an open distribution
registry: the C{/v2/} ping answers 401 with a Basic challenge, while
repository paths are readable without credentials.  There is no token
flow, which is what makes the Docker CLI give up on such a registry unless
regproxy stands in between.

Reads (C{GET}, C{HEAD}) are relayed to the registry behind; writes get the
same Basic 401 (tests push to the registry behind directly).  Every request
is recorded, with the C{Authorization} header it carried, so tests can see
what regproxy sent.
"""

from __future__ import annotations

import json

import attrs
from twisted.internet.defer import Deferred
from twisted.web.client import Agent, HTTPConnectionPool, readBody
from twisted.web.http_headers import Headers
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request, Site

from .loopback import serveOnLoopback

CHALLENGE = b'Basic realm="zot"'
_RELAYED_REQUEST_HEADERS = (b"accept", b"range", b"if-none-match", b"user-agent")
_HOP_BY_HOP = {
    b"connection",
    b"keep-alive",
    b"transfer-encoding",
    b"te",
    b"trailer",
    b"upgrade",
    b"proxy-authenticate",
    b"proxy-authorization",
    b"content-length",
}


@attrs.frozen
class Seen:
    """
    One request the front received.
    """

    method: bytes
    path: bytes
    authorization: bytes | None
    code: int


class ZotFrontResource(Resource):
    """
    Answer the ping with a Basic challenge; relay reads to C{upstream}.

    @ivar seen: Every request, in order.
    """

    isLeaf = True

    def __init__(self, upstream: bytes, agent: Agent) -> None:
        super().__init__()
        self._upstream = upstream
        self._agent = agent
        self.seen: list[Seen] = []

    def _record(self, request: Request, code: int) -> None:
        self.seen.append(
            Seen(
                request.method,
                request.path,
                request.getHeader(b"authorization"),
                code,
            )
        )

    def _unauthorized(self, request: Request) -> bytes:
        self._record(request, 401)
        request.setResponseCode(401)
        request.setHeader(b"WWW-Authenticate", CHALLENGE)
        request.setHeader(b"Content-Type", b"application/json")
        request.setHeader(b"Docker-Distribution-Api-Version", b"registry/2.0")
        body = json.dumps(
            {"errors": [{"code": "UNAUTHORIZED", "message": "authentication required"}]}
        ).encode()
        request.setHeader(b"Content-Length", b"%d" % (len(body),))
        return body if request.method != b"HEAD" else b""

    def render(self, request: Request) -> object:
        if request.path in (b"/v2/", b"/v2"):
            return self._unauthorized(request)
        if request.method not in (b"GET", b"HEAD"):
            return self._unauthorized(request)
        Deferred.fromCoroutine(self._relay(request)).addErrback(self._failed, request)
        return NOT_DONE_YET

    def _failed(self, failure, request: Request) -> None:
        self._record(request, 502)
        request.setResponseCode(502)
        request.write(failure.getErrorMessage().encode("utf-8", "replace"))
        request.finish()

    async def _relay(self, request: Request) -> None:
        headers = Headers()
        for name in _RELAYED_REQUEST_HEADERS:
            values = request.requestHeaders.getRawHeaders(name)
            if values:
                headers.setRawHeaders(name, values)
        response = await self._agent.request(
            request.method, self._upstream + request.uri, headers
        )
        body = await readBody(response)
        self._record(request, response.code)
        request.setResponseCode(response.code)
        for name, values in response.headers.getAllRawHeaders():
            if name.lower() not in _HOP_BY_HOP:
                request.responseHeaders.setRawHeaders(name, values)
        if request.method == b"HEAD":
            length = response.headers.getRawHeaders(b"content-length")
            if length:
                request.responseHeaders.setRawHeaders(b"Content-Length", length[-1:])
        else:
            request.setHeader(b"Content-Length", b"%d" % (len(body),))
            request.write(body)
        request.finish()


@attrs.frozen
class ZotFront:
    """
    A running front.  It has the C{url} and C{caFile} that
    L{tests.integration.proxy.startProxy} reads from a registry, so
    regproxy can be put in front of it.

    @ivar registry: The open registry behind (push there directly).
    """

    url: str
    host: str
    port: int
    registry: object
    resource: ZotFrontResource
    caFile: None = None

    @property
    def seen(self) -> list[Seen]:
        return self.resource.seen


def startZotFront(testCase, registry, reactor=None) -> ZotFront:
    """
    Serve a Zot-like front before the open C{registry} on a free loopback
    port until C{testCase} ends.
    """
    if reactor is None:
        from twisted.internet import reactor as _reactor

        reactor = _reactor
    pool = HTTPConnectionPool(reactor, persistent=True)
    pool.retryAutomatically = False
    resource = ZotFrontResource(registry.url.encode("ascii"), Agent(reactor, pool=pool))
    site = Site(resource)
    site.noisy = False
    # Whoever talked to us (regproxy's pool) is closed by now, in cleanups
    # that ran before this one; abort any straggler at once.
    number = serveOnLoopback(
        testCase, site, reactor, grace=0, afterIdle=pool.closeCachedConnections
    )
    return ZotFront(
        f"http://127.0.0.1:{number}",
        f"127.0.0.1:{number}",
        number,
        registry,
        resource,
    )
