# -*- test-case-name: tests.unit.test_forward -*-
"""
Upstream authentication passed through: the client authenticates to the
upstream itself, through us.

Basic credentials travel unchanged.  An upstream Bearer challenge is
relayed with its realm pointed at our C{/token}, which forwards to the
upstream's real token service; clients that only talk to one host (a LAN
device that lists regproxy as an insecure registry) then never need to
reach the upstream's token host themselves.

This is one piece so that the broker (our own tokens) can replace it.
"""

from __future__ import annotations

import attrs
from twisted.internet.protocol import Protocol
from twisted.web.http_headers import Headers
from twisted.web.resource import Resource
from twisted.web.server import Request

from regproxy.names.challenge import (
    ChallengeParseError,
    parseChallenges,
    serializeChallenges,
)
from regproxy.names.reference import InvalidReference, parsePath
from regproxy.proxy.fetch import (
    HeaderRewriter,
    IRegistryFetcher,
    UpstreamFetch,
    UpstreamFetcher,
)
from regproxy.proxy.relay import BytesProducer, Forwarder, forwardedRequestHeaders
from regproxy.server.errors import API_VERSION, API_VERSION_HEADER, RegistryError
from regproxy.server.rendering import TokenEndpoint, renderLater
from regproxy.server.request import StreamingRequest
from regproxy.server.urls import Origin, publicBase

# An OAuth2 token form is a few hundred bytes; refuse to read more.
MAX_TOKEN_FORM = 64 * 1024


def rewriteRealms(
    values: list[bytes], tokenURL: bytes
) -> tuple[list[bytes], str | None]:
    """
    Point every Bearer challenge's realm at C{tokenURL}.

    @return: The new header values and the upstream realm that was
        replaced (the last one seen), if any.  A value we cannot parse is
        passed on unchanged.
    """
    rewritten = []
    seen = None
    for value in values:
        try:
            challenges = parseChallenges(value.decode("latin-1"))
        except ChallengeParseError:
            rewritten.append(value)
            continue
        for index, challenge in enumerate(challenges):
            if challenge.scheme.lower() == "bearer" and challenge.get("realm"):
                seen = challenge.get("realm")
                challenges[index] = challenge.replace(
                    "realm", tokenURL.decode("latin-1")
                )
        rewritten.append(serializeChallenges(challenges).encode("latin-1"))
    return rewritten, seen


@attrs.define
class UpstreamRealm:
    """
    The upstream's token service URL, learnt from its challenges.

    Relayed challenges teach it for free; when a client comes to C{/token}
    before we have seen one, we ask the upstream's C{/v2/} once.
    """

    forwarder: Forwarder
    upstream: Origin
    realm: str | None = None

    def learn(self, realm: str | None) -> None:
        if realm and realm.startswith(("https://", "http://")):
            self.realm = realm

    async def discover(self, request: Request) -> str | None:
        if self.realm is not None:
            return self.realm
        response = await self.forwarder.send(
            request, b"GET", self.upstream.base + b"/v2/", Headers(), None
        )
        values = response.headers.getRawHeaders(b"www-authenticate", [])
        _, realm = rewriteRealms(values, b"")
        self.learn(realm)
        # The body is a small JSON error; read it so the connection is reused.
        response.deliverBody(_Discard())
        return self.realm


class _Discard(Protocol):
    """
    Reads a response body and drops it.
    """


class TokenPassthroughResource(TokenEndpoint):
    """
    C{/token}: forwards GET and POST to the upstream's token service with
    the query string byte for byte and the client's C{Authorization}.
    """

    isLeaf = True

    def __init__(self, forwarder: Forwarder, realm: UpstreamRealm) -> None:
        super().__init__()
        self._fetcher = UpstreamFetcher(forwarder)
        self._realm = realm

    def render_GET(self, request: StreamingRequest) -> object:
        return self._start(request)

    def render_POST(self, request: StreamingRequest) -> object:
        return self._start(request)

    def _start(self, request: StreamingRequest) -> object:
        return renderLater(
            request, self._forward(request), "the upstream token service"
        )

    async def _forward(self, request: StreamingRequest) -> None:
        realm = await self._realm.discover(request)
        if realm is None:
            raise RegistryError(
                404, "UNSUPPORTED", "the upstream registry has no token service"
            )
        url = realm.encode("utf-8")
        _, question, query = request.uri.partition(b"?")
        if question and query:
            url += (b"&" if b"?" in url else b"?") + query
        body = None
        if request.method == b"POST":
            request.content.seek(0)
            form = request.content.read(MAX_TOKEN_FORM + 1)
            if len(form) > MAX_TOKEN_FORM:
                raise RegistryError(413, "SIZE_INVALID", "token request too large")
            body = BytesProducer(form)
        headers = forwardedRequestHeaders(request.requestHeaders)
        fetch = UpstreamFetch(request.method, url, headers, body)
        response = await self._fetcher.send(request, fetch)
        await self._fetcher.deliver(request, response, None, registry=False)


def _nameOf(path: bytes) -> str | None:
    """
    The repository a passthrough request names (for the log), if any.
    """
    try:
        return parsePath(path).name
    except InvalidReference:
        return None


class RegistryResource(Resource):
    """
    Everything under C{/v2}: relayed to the upstream byte for byte.

    @param fetcher: The relay (by default straight to the upstream; a
        cache wraps or replaces it).
    """

    isLeaf = True

    def __init__(
        self,
        forwarder: Forwarder,
        upstream: Origin,
        publicURL: str | None,
        realm: UpstreamRealm,
        fetcher: IRegistryFetcher | None = None,
    ) -> None:
        super().__init__()
        self._fetcher = fetcher or UpstreamFetcher(forwarder)
        self._upstream = upstream
        self._publicURL = publicURL
        self._realm = realm

    def render(self, request: StreamingRequest) -> object:
        request.responseHeaders.setRawHeaders(API_VERSION_HEADER, [API_VERSION])
        return renderLater(request, self._forward(request))

    async def _forward(self, request: StreamingRequest) -> None:
        public = publicBase(request, self._publicURL)
        request.imageName = request.upstreamRepository = _nameOf(request.path)
        fetch = UpstreamFetch(
            request.method,
            self._upstream.base + request.uri,
            forwardedRequestHeaders(request.requestHeaders),
            getattr(request, "bodyStream", None),
        )

        def challenges(values: list[bytes]) -> list[bytes]:
            values, realm = rewriteRealms(values, public + b"/token")
            self._realm.learn(realm)
            return values

        rewrite = HeaderRewriter(self._upstream, public, challenges=challenges)
        await self._fetcher.fetch(request, fetch, rewrite)
