# -*- test-case-name: tests.unit.test_forward -*-
"""
The one relay both modes use: send a client's request upstream, rewrite the
response headers for the client, stream the body back.

Passthrough and broker mode differ only in what they hand it: the broker
says who the upstream must see (an L{UpstreamAccess}, turned into an
C{Authorization} by L{UpstreamAuthAgent}) and how names map; passthrough
sends the client's own headers.  The seam is L{IRegistryFetcher.fetch}:
"fetch this blob or manifest for this repository with these upstream
credentials and stream it to this request" is one call, which a cache can
wrap or replace.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import attrs
from twisted.internet.defer import Deferred
from twisted.web.http_headers import Headers
from twisted.web.iweb import IBodyProducer, IResponse
from zope.interface import Interface, implementer

from regproxy.proxy.relay import Forwarder, relayHeaders
from regproxy.proxy.upstreamauth import (
    UpstreamAccess,
    UpstreamAuthAgent,
    UpstreamAuthenticator,
)
from regproxy.server.errors import API_VERSION, API_VERSION_HEADER
from regproxy.server.request import StreamingRequest
from regproxy.server.urls import Origin, rewriteLocation

# A body read whole to look inside it (a manifest) is small: the spec caps
# manifests at 4 MiB.
MAX_INSPECTED = 4 * 1024 * 1024

#: Looks at a small response body (a manifest) before it is written.
Inspector = Callable[[IResponse, bytes], Awaitable[None]]


class UpstreamRefused(Exception):
    """
    The upstream refused the credentials we sent for a client (401 or 403);
    the resource decides what the client is told.
    """

    def __init__(self, status: int) -> None:
        super().__init__(status)
        self.status = status


@attrs.frozen
class HeaderRewriter:
    """
    How the upstream's response headers are rewritten for the client.

    @ivar upstream: Absolute C{Location}s on this origin point at us.
    @ivar public: Our public base URL for this request.
    @ivar prefixes: The real repository's C{/v2/<repository>/} and the
        client's C{/v2/<name>/}, when they differ: swapped in C{Location}
        and C{Link}.
    @ivar challenges: What becomes of C{WWW-Authenticate} values; L{None}
        drops them (the broker answers with its own challenges).
    """

    upstream: Origin
    public: bytes
    prefixes: tuple[bytes, bytes] | None = None
    challenges: Callable[[list[bytes]], list[bytes]] | None = None

    def __call__(self, name: bytes, values: list[bytes]) -> list[bytes]:
        if name == b"www-authenticate":
            return self.challenges(values) if self.challenges is not None else []
        if self.prefixes is not None and name in (b"location", b"link"):
            real, client = self.prefixes
            values = [value.replace(real, client) for value in values]
        if name == b"location":
            values = [rewriteLocation(v, self.upstream, self.public) for v in values]
        return values


@attrs.frozen
class UpstreamFetch:
    """
    One request to make upstream for a client.

    @ivar url: The absolute upstream URL, query string byte for byte.
    @ivar headers: What to send (already without hop-by-hop headers).
    @ivar access: Who the upstream must see, for the broker; L{None} sends
        C{headers} as they are (passthrough: the client's own
        C{Authorization}).
    """

    method: bytes
    url: bytes
    headers: Headers
    body: IBodyProducer | None = None
    access: UpstreamAccess | None = None


class IRegistryFetcher(Interface):
    """
    Fetches from the upstream for a client and streams the answer to it.
    """

    def fetch(
        request: StreamingRequest,
        fetch: UpstreamFetch,
        rewrite: HeaderRewriter,
        inspect: Inspector | None = None,
    ) -> Deferred[IResponse]:
        """
        Send C{fetch}, copy the status and rewritten headers onto
        C{request}, stream the body and finish; fire with the upstream's
        response once done.  With C{inspect}, a small C{GET} answered 200
        is read whole and shown to it before it is written.

        @raise UpstreamRefused: When C{fetch.access} was refused (nothing
            is written to the request).
        """


@implementer(IRegistryFetcher)
@attrs.frozen
class UpstreamFetcher:
    """
    The relay to the upstream registry itself.

    @ivar authenticator: Turns an L{UpstreamAccess} into credentials
        (broker mode only).
    """

    forwarder: Forwarder
    authenticator: UpstreamAuthenticator | None = None

    async def send(self, request: StreamingRequest, fetch: UpstreamFetch) -> IResponse:
        """
        Send C{fetch} and wait for the response headers.

        @raise UpstreamRefused: See L{IRegistryFetcher.fetch}.
        """
        forwarder = self.forwarder
        if fetch.access is not None:
            assert self.authenticator is not None, "no upstream authenticator"
            agent = UpstreamAuthAgent(forwarder.agent, self.authenticator, fetch.access)
            forwarder = attrs.evolve(forwarder, agent=agent)
        response = await forwarder.send(
            request, fetch.method, fetch.url, fetch.headers, fetch.body
        )
        request.upstreamStatus = response.code
        if fetch.access is not None and response.code in (401, 403):
            await forwarder.readBody(response)
            raise UpstreamRefused(response.code)
        return response

    def fetch(
        self,
        request: StreamingRequest,
        fetch: UpstreamFetch,
        rewrite: HeaderRewriter,
        inspect: Inspector | None = None,
    ) -> Deferred[IResponse]:
        return Deferred.fromCoroutine(self._fetch(request, fetch, rewrite, inspect))

    async def _fetch(
        self,
        request: StreamingRequest,
        fetch: UpstreamFetch,
        rewrite: HeaderRewriter,
        inspect: Inspector | None,
    ) -> IResponse:
        response = await self.send(request, fetch)
        await self.deliver(request, response, rewrite, inspect)
        return response

    async def deliver(
        self,
        request: StreamingRequest,
        response: IResponse,
        rewrite: Callable[[bytes, list[bytes]], list[bytes]] | None,
        inspect: Inspector | None = None,
        registry: bool = True,
    ) -> None:
        """
        Copy C{response} onto C{request}: status, rewritten headers, body.

        @param registry: Whether this is a registry API answer, which
            carries C{Docker-Distribution-Api-Version} whatever the
            upstream sent (a token service's answer does not).
        """
        relayHeaders(request, response, rewrite)
        if registry:
            request.responseHeaders.setRawHeaders(API_VERSION_HEADER, [API_VERSION])
        if (
            inspect is not None
            and request.method == b"GET"
            and response.code == 200
            and isinstance(response.length, int)
            and response.length <= MAX_INSPECTED
        ):
            body = await self.forwarder.readBody(response)
            await inspect(response, body)
            request.write(body)
            request.finish()
            return
        await self.forwarder.relayBody(request, response)
