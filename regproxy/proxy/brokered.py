# -*- test-case-name: tests.unit.test_broker -*-
"""
regproxy as an authentication broker.

Clients never see an upstream token.  Every C{/v2/} request without one of
our tokens gets our Bearer challenge; our C{/token} checks the client
(anonymous, or credentials an L{IAuthBackend} accepts), decides the grant
and signs our own JWT.  What we need to act for the client later, its
upstream credentials, travels sealed inside that token, so any regproxy
holding the same keys can serve the next request: no server-side session.

On each repository request we check our token, resolve the client's name to
the real upstream repository, get an upstream credential for that
repository with the client's own credentials, and forward.
"""

from __future__ import annotations

import json
from urllib.parse import quote

from twisted.logger import Logger
from twisted.web.client import readBody
from twisted.web.resource import Resource
from twisted.web.server import Request

from regproxy.auth.broker import Broker, requiredActions
from regproxy.auth.interfaces import Account
from regproxy.names.reference import (
    BASE,
    BLOBS,
    MANIFESTS,
    TAGS,
    UPLOADS,
    ImageReference,
    InvalidReference,
    RegistryPath,
    parsePath,
)
from regproxy.names.scope import Scope
from regproxy.proxy.caching import UNREACHABLE, canServeOffline, servesFor
from regproxy.proxy.manifests import CachedManifest, ManifestCache, acceptable
from regproxy.proxy.relay import Forwarder, forwardedRequestHeaders, relayHeaders
from regproxy.proxy.upstreamauth import UpstreamAuthenticator
from regproxy.resolve.digests import DigestLocations, manifestDigests
from regproxy.resolve.interfaces import (
    SERVER,
    Credentials,
    IResolver,
    NameUnknown,
    Resolution,
    ResolveError,
    ResolverUnavailable,
)
from regproxy.server.errors import (
    API_VERSION,
    API_VERSION_HEADER,
    RegistryError,
)
from regproxy.server.rendering import renderLater
from regproxy.server.request import StreamingRequest, firstArgument
from regproxy.server.urls import Origin, publicBase, rewriteLocation

# Manifests of fleet names are read whole to learn which real repository
# their blobs live in; a manifest is small (the spec caps them at 4 MiB).
MAX_MANIFEST = 4 * 1024 * 1024


class BrokeredRegistryResource(Resource):
    """
    C{/v2/...} behind the broker: authorize, resolve, forward.
    """

    isLeaf = True
    _log = Logger()

    def __init__(
        self,
        broker: Broker,
        resolver: IResolver,
        upstreamAuth: UpstreamAuthenticator,
        forwarder: Forwarder,
        upstream: Origin,
        publicURL: str | None,
        serverAPIKey: str | None,
        fleetNames: bool,
    ) -> None:
        super().__init__()
        self._broker = broker
        self._resolver = resolver
        self._upstreamAuth = upstreamAuth
        self._forwarder = forwarder
        self._upstream = upstream
        self._publicURL = publicURL
        self._serverAPIKey = serverAPIKey
        self._fleetNames = fleetNames
        self.digests = DigestLocations()
        self.manifests = ManifestCache(broker.issuer.clock)

    def render(self, request: StreamingRequest) -> object:
        request.responseHeaders.setRawHeaders(API_VERSION_HEADER, [API_VERSION])
        return renderLater(request, self._handle(request))

    async def _handle(self, request: StreamingRequest) -> None:
        try:
            path = parsePath(request.path)
        except InvalidReference as e:
            raise RegistryError(
                404 if e.code == "NOT_FOUND" else 400, e.code, str(e)
            ) from None
        account = await self._broker.authorize(request, path)
        if path.kind == BASE:
            body = b"{}"
            request.setHeader(b"Content-Type", b"application/json")
            request.setHeader(b"Content-Length", b"%d" % (len(body),))
            request.write(body)
            request.finish()
            return
        reference = path.imageReference()
        assert path.name is not None  # imageReference raised otherwise
        credentials = self._resolverCredentials(account)
        if path.kind == TAGS:
            tags = await self._listReleases(reference, credentials, account)
            if tags is not None:
                self._writeTags(request, path.name, tags)
                return
        resolution = await self._resolve(path, reference, credentials, account)
        await self._forward(request, path, resolution, account)

    def _resolverCredentials(self, account: Account) -> Credentials:
        clientKey = account.upstream.password if account.upstream is not None else None
        return Credentials.choose(clientKey, self._serverAPIKey)

    async def _listReleases(
        self, reference: ImageReference, credentials: Credentials, account: Account
    ) -> list[str] | None:
        # A fleet's list of releases is for those who may see the fleet:
        # asked with the client's own credentials only, never our API key.
        own = Credentials.choose(
            account.upstream.password if account.upstream else None, None
        )
        return await self._resolver.listReleases(reference, own)

    async def _resolve(
        self,
        path: RegistryPath,
        reference: ImageReference,
        credentials: Credentials,
        account: Account,
    ) -> Resolution:
        assert path.name is not None
        digest = path.reference if path.kind in (BLOBS, MANIFESTS) else None
        if digest is not None and ":" in digest:
            known = self.digests.find(path.name, digest)
            if known is not None:
                return Resolution(known, digest)
        try:
            resolution = await self._resolver.resolve(reference, credentials)
        except ResolveError as e:
            await self._hideFromOutsiders(e, reference, credentials, account)
            raise
        return resolution

    async def _hideFromOutsiders(
        self,
        error: ResolveError,
        reference: ImageReference,
        credentials: Credentials,
        account: Account,
    ) -> None:
        """
        An answer found with our own API key may tell a client more than its
        own credentials would (that a private fleet exists, which releases
        it has): check with the client's own and answer as for a missing
        name when it may not see the fleet.
        """
        if credentials.source != SERVER or isinstance(
            error, (NameUnknown, ResolverUnavailable)
        ):
            return
        own = Credentials.choose(
            account.upstream.password if account.upstream else None, None
        )
        try:
            await self._resolver.resolve(reference, own)
        except NameUnknown as e:
            raise e from None
        except ResolveError:
            return

    def _upstreamPath(self, path: RegistryPath, resolution: Resolution) -> bytes:
        repository = resolution.repository
        if path.kind == MANIFESTS:
            ref = resolution.reference or path.reference
            tail = f"/manifests/{ref}"
        elif path.kind == BLOBS:
            tail = f"/blobs/{path.reference}"
        elif path.kind == UPLOADS:
            tail = f"/blobs/uploads/{path.reference or ''}"
        elif path.kind == TAGS:
            tail = "/tags/list"
        else:
            tail = f"/{path.kind}/{path.reference}"
        return f"/v2/{repository}{tail}".encode("utf-8")

    async def _forward(
        self,
        request: StreamingRequest,
        path: RegistryPath,
        resolution: Resolution,
        account: Account,
    ) -> None:
        assert path.name is not None
        actions = requiredActions(request.method, path.kind)
        upstreamCredentials = self._broker.backend.upstreamCredentials(account)
        servesFor(request, upstreamCredentials)  # whom the LAN cache answers
        cacheKey = None
        if (
            path.kind == MANIFESTS
            and request.method in (b"GET", b"HEAD")
            and self._immutable(path, resolution)
        ):
            cacheKey = (
                upstreamCredentials.cacheKey if upstreamCredentials else "anonymous",
                resolution.repository,
                resolution.reference or path.reference or "",
            )
            cached = self.manifests.get(cacheKey)
            if cached is not None and acceptable(
                request.requestHeaders, cached.contentType
            ):
                # The same release may be asked for under another name
                # (org/fleet/1.2.3, then org/fleet:1.2.3): its blobs must be
                # found under this one too.
                if resolution.repository != path.name:
                    self.digests.remember(
                        path.name, list(cached.references), resolution.repository
                    )
                self._writeManifest(request, cached)
                return
        _, question, query = request.uri.partition(b"?")
        url = self._upstream.base + self._upstreamPath(path, resolution)
        if question:
            url += b"?" + query
        body = getattr(request, "bodyStream", None)
        # A request without a body can be sent again: once, when the
        # upstream refuses a cached token it no longer honours (its token
        # service got a new key), with a fresh one.
        for attempt in (1, 2):
            try:
                authorization = await self._upstreamAuth.authorization(
                    upstreamCredentials, resolution.repository, actions
                )
            except RegistryError as e:
                if e.status != 401:
                    raise
                raise self._refused(request, path, account) from None
            except UNREACHABLE:
                if not canServeOffline(self._forwarder, request):
                    raise
                authorization = None
            headers = forwardedRequestHeaders(request.requestHeaders)
            headers.removeHeader(b"authorization")
            if authorization is not None:
                headers.setRawHeaders(b"authorization", [authorization])
            response = await self._forwarder.send(
                request, request.method, url, headers, body
            )
            request.upstreamStatus = response.code
            if response.code not in (401, 403):
                break
            await readBody(response)
            self._upstreamAuth.learn(
                response.headers.getRawHeaders(b"www-authenticate", [])
            )
            self._upstreamAuth.forget(
                upstreamCredentials, resolution.repository, actions
            )
            if attempt == 2 or body is not None or authorization is None:
                raise self._denied(request, path, account)
        public = publicBase(request, self._publicURL)
        realPrefix = f"/v2/{resolution.repository}/".encode("utf-8")
        clientPrefix = f"/v2/{path.name}/".encode("utf-8")

        def rewrite(name: bytes, values: list[bytes]) -> list[bytes]:
            if name == b"www-authenticate":
                return []
            if name in (b"location", b"link"):
                values = [v.replace(realPrefix, clientPrefix) for v in values]
            if name == b"location":
                values = [rewriteLocation(v, self._upstream, public) for v in values]
            return values

        relayHeaders(request, response, rewrite)
        request.responseHeaders.setRawHeaders(API_VERSION_HEADER, [API_VERSION])
        if (
            path.kind == MANIFESTS
            and request.method == b"GET"
            and response.code == 200
            and (cacheKey is not None or resolution.repository != path.name)
            and isinstance(response.length, int)
            and response.length <= MAX_MANIFEST
        ):
            body = await readBody(response)
            references = tuple(manifestDigests(body))
            if resolution.repository != path.name:
                self.digests.remember(
                    path.name, list(references), resolution.repository
                )
            if cacheKey is not None:
                self.manifests.put(
                    cacheKey,
                    CachedManifest(
                        body,
                        response.headers.getRawHeaders(
                            b"content-type", [b"application/octet-stream"]
                        )[-1],
                        (
                            response.headers.getRawHeaders(b"docker-content-digest")
                            or [None]
                        )[-1],
                        references,
                    ),
                )
            request.write(body)
            request.finish()
            return
        await self._forwarder.relayBody(request, response)

    def _immutable(self, path: RegistryPath, resolution: Resolution) -> bool:
        """
        Whether the manifest asked for can never change: a digest, or an
        image of a fleet release (each in a repository of its own).
        """
        reference = resolution.reference or path.reference or ""
        if ":" in reference:
            return True
        return self._fleetNames and resolution.repository != path.name

    def _writeManifest(self, request: Request, manifest: CachedManifest) -> None:
        request.setResponseCode(200)
        request.setHeader(b"Content-Type", manifest.contentType)
        if manifest.digest is not None:
            request.setHeader(b"Docker-Content-Digest", manifest.digest)
            request.setHeader(b"ETag", b'"' + manifest.digest + b'"')
        request.setHeader(b"Content-Length", b"%d" % (len(manifest.body),))
        if request.method != b"HEAD":
            request.write(manifest.body)
        request.finish()

    def _refused(
        self, request: Request, path: RegistryPath, account: Account
    ) -> RegistryError:
        """
        The upstream's token service refused the client's credentials
        (changed since the client logged in): for a fleet name, the same as
        a missing fleet; otherwise a 401 with our challenge, so the client
        logs in again.
        """
        assert path.name is not None
        fleet = path.imageReference().fleetName() if self._fleetNames else None
        if fleet is not None:
            return NameUnknown(f"no fleet {fleet.slug}").toRegistryError()
        needed = Scope(
            "repository", None, path.name, requiredActions(request.method, path.kind)
        )
        return self._broker.unauthorized(
            request, "the upstream registry refused these credentials", needed
        )

    def _denied(
        self, request: Request, path: RegistryPath, account: Account
    ) -> RegistryError:
        """
        The upstream refused the client's own credentials.  For a fleet
        name, that must look exactly like a missing fleet.
        """
        assert path.name is not None
        reference = path.imageReference()
        fleet = reference.fleetName() if self._fleetNames else None
        if fleet is not None:
            return NameUnknown(f"no fleet {fleet.slug}").toRegistryError()
        if account.name is None:
            needed = Scope(
                "repository",
                None,
                path.name,
                requiredActions(request.method, path.kind),
            )
            return self._broker.unauthorized(
                request, "authentication required", needed, "insufficient_scope"
            )
        return RegistryError(
            403, "DENIED", "requested access to the resource is denied"
        )

    def _writeTags(self, request: Request, name: str, tags: list[str]) -> None:
        """
        Answer C{tags/list} ourselves, paginated with C{n} and C{last} as
        the distribution spec says.
        """
        tags = sorted(set(tags))
        last = firstArgument(request, b"last")
        if last is not None:
            tags = [tag for tag in tags if tag > last]
        limit = firstArgument(request, b"n")
        if limit is not None:
            try:
                count = int(limit)
            except ValueError:
                raise RegistryError(
                    400, "PAGINATION_NUMBER_INVALID", "n must be a number"
                ) from None
            if count < 0:
                raise RegistryError(
                    400, "PAGINATION_NUMBER_INVALID", "n must not be negative"
                )
            if len(tags) > count:
                tags = tags[:count]
                if tags:
                    nextURL = f"/v2/{name}/tags/list?n={count}&last={quote(tags[-1])}"
                    request.setHeader(
                        b"Link", f'<{nextURL}>; rel="next"'.encode("utf-8")
                    )
        body = json.dumps({"name": name, "tags": tags}).encode("utf-8")
        request.setHeader(b"Content-Type", b"application/json")
        request.setHeader(b"Content-Length", b"%d" % (len(body),))
        if request.method != b"HEAD":
            request.write(body)
        request.finish()
