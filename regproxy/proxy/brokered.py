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

from collections.abc import Callable

import attrs
from cachetools import TTLCache
from twisted.internet.defer import CancelledError
from twisted.logger import Logger
from twisted.web.iweb import IResponse
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
from regproxy.proxy.caching import STALE_WARNING
from regproxy.proxy.fetch import (
    HeaderRewriter,
    Inspector,
    IRegistryFetcher,
    UpstreamFetch,
    UpstreamFetcher,
    UpstreamRefused,
)
from regproxy.proxy.manifests import ManifestCache, ManifestKey, ManifestMemory
from regproxy.proxy.mounts import parseMount, withoutMount, withSource
from regproxy.proxy.refusals import Refusals
from regproxy.proxy.relay import Forwarder, forwardedRequestHeaders
from regproxy.proxy.tags import writeTags
from regproxy.proxy.upstreamauth import UpstreamAccess, UpstreamAuthenticator
from regproxy.resolve.cache import DEFAULT_MISS_TTL, DEFAULT_STALE_AGE
from regproxy.resolve.digests import IDigestLocations, MemoryDigestLocations
from regproxy.resolve.interfaces import (
    SERVER,
    Credentials,
    IResolver,
    NameUnknown,
    Resolution,
    ResolveError,
    ResolverUnavailable,
)
from regproxy.resolve.remembered import IResolutionMemory
from regproxy.server.errors import (
    API_VERSION,
    API_VERSION_HEADER,
    RegistryError,
    TranslatableError,
)
from regproxy.server.rendering import renderLater
from regproxy.server.request import StreamingRequest
from regproxy.server.urls import Origin, publicBase


def _parse(request: Request) -> RegistryPath:
    try:
        return parsePath(request.path)
    except InvalidReference as e:
        status = 404 if e.code == "NOT_FOUND" else 400
        raise RegistryError(status, e.code, str(e)) from None


def _writePing(request: Request) -> None:
    body = b"{}"
    request.setHeader(b"Content-Type", b"application/json")
    request.setHeader(b"Content-Length", b"%d" % (len(body),))
    request.write(body)
    request.finish()


def _upstreamPath(path: RegistryPath, resolution: Resolution) -> bytes:
    repository = resolution.repository
    if path.kind == MANIFESTS:
        tail = f"/manifests/{resolution.reference or path.reference}"
    elif path.kind == UPLOADS:
        tail = f"/blobs/uploads/{path.reference or ''}"
    elif path.kind == TAGS:
        tail = "/tags/list"
    else:
        tail = f"/{path.kind}/{path.reference}"
    return f"/v2/{repository}{tail}".encode("utf-8")


class BrokeredRegistryResource(Resource):
    """
    C{/v2/...} behind the broker: authorize, resolve, forward.

    @param digests: Where digests live for a name (by default in this
        process only).
    @param fetcher: The relay (by default straight to the upstream,
        authenticated by C{upstreamAuth}; a cache wraps or replaces it).
    @param remembered: Resolver answers kept beyond this process, recalled
        (up to C{staleFor} seconds old) while the resolver cannot answer.
    @param cacheOpen: Whether the LAN cache answers now: what the manifest
        memory answers then counts as a cache hit, told to C{recordHit}
        (the real repository, the bytes sent).
    @ivar memory: What this instance remembers about manifests.
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
        digests: IDigestLocations | None = None,
        fetcher: IRegistryFetcher | None = None,
        remembered: IResolutionMemory | None = None,
        staleFor: float = DEFAULT_STALE_AGE,
        cacheOpen: Callable[[], bool] = lambda: False,
        recordHit: Callable[[str, int], None] = lambda repository, nbytes: None,
    ) -> None:
        super().__init__()
        self._broker = broker
        self._resolver = resolver
        self._fetcher = fetcher or UpstreamFetcher(forwarder, upstreamAuth)
        self._upstream = upstream
        self._publicURL = publicURL
        self._serverAPIKey = serverAPIKey
        self._fleetNames = fleetNames
        self._refusals = Refusals(broker, fleetNames)
        self._remembered = remembered
        self._staleFor = staleFor
        self._cacheOpen = cacheOpen
        self._recordHit = recordHit
        self.memory = ManifestMemory(
            ManifestCache(broker.issuer.clock), digests or MemoryDigestLocations()
        )
        # Upstream refusals of a fleet's repository, remembered as long as
        # a missing name is, so that an outsider gets both answers from
        # memory alike and cannot tell them apart by time.
        self.denials: TTLCache[tuple, bool] = TTLCache(
            4096, DEFAULT_MISS_TTL, timer=broker.issuer.clock.seconds
        )

    def render(self, request: StreamingRequest) -> object:
        request.responseHeaders.setRawHeaders(API_VERSION_HEADER, [API_VERSION])
        return renderLater(request, self._handle(request))

    async def _handle(self, request: StreamingRequest) -> None:
        path = _parse(request)
        request.imageName = path.name
        account = await self._broker.authorize(request, path)
        request.accountName = account.name
        if path.kind == BASE:
            return _writePing(request)
        assert path.name is not None  # every other kind has one
        if path.kind == TAGS:
            tags = await self._resolver.listReleases(
                path.imageReference(), self._ownCredentials(account)
            )
            if tags is not None:
                return writeTags(request, path.name, tags)
        resolution = await self._resolve(path, account)
        request.upstreamRepository = resolution.repository
        if resolution.staleBecause is None:
            return await self._serve(request, path, resolution, account)
        # A remembered answer: marked stale, and when it gets the client
        # nothing, the client hears what the API's failure says, exactly as
        # for a name nobody remembers (a private fleet looks missing).
        before = request.responseHeaders.copy(), request.code
        request.responseHeaders.setRawHeaders(b"warning", [STALE_WARNING])
        request.staleAnswer = True
        try:
            await self._serve(request, path, resolution, account)
        except CancelledError:
            raise
        except Exception as e:
            if request.startedWriting:
                raise
            if not isinstance(e, (RegistryError, TranslatableError)):
                # Not an answer of the upstream's or ours: a fault, seen.
                self._log.failure("Answering {name} from memory", name=path.name)
            # Nothing of the attempt shows: the answer is the API's failure
            # alone, as for a name nobody remembers.
            request.responseHeaders, request.code = before
            request.staleAnswer = False
            raise resolution.staleBecause from None

    async def _serve(
        self,
        request: StreamingRequest,
        path: RegistryPath,
        resolution: Resolution,
        account: Account,
    ) -> None:
        """
        Answer for C{resolution}: from memory, or relayed.
        """
        assert path.name is not None
        access = self._access(request, path, resolution, account)
        # A remembered refusal is answered before anything else is done for
        # the request, as a remembered missing name is (in _resolve).
        denial = self._denialKey(path, access)
        if denial is not None and denial in self.denials:
            raise self._refusals.denied(request, path, account)
        fetch = await self._upstreamFetch(request, path, resolution, account, access)
        key = self._memoryKey(request, path, resolution, fetch)
        outcome = "hit" if self._cacheOpen() else None
        if key is not None and await self.memory.answer(
            request, key, path.name, resolution.repository, outcome
        ):
            if outcome is not None and request.method == b"GET":
                self._recordHit(resolution.repository, request.sentLength)
            return
        response = await self._relay(request, path, resolution, fetch, key, account)
        if (
            path.kind == MANIFESTS
            and request.method in (b"PUT", b"DELETE")
            and 200 <= response.code < 300
        ):
            self.memory.forget(resolution.repository)

    # Resolving

    def _ownCredentials(self, account: Account) -> Credentials:
        """
        The client's own credentials for the resolver, never our API key:
        what only those who may see a fleet may learn (its releases).
        """
        own = account.upstream.password if account.upstream is not None else None
        return Credentials.choose(own, None)

    async def _resolve(self, path: RegistryPath, account: Account) -> Resolution:
        """
        The real repository for the request: where a digest named by a
        manifest we relayed lives, else the resolver's answer.
        """
        assert path.name is not None
        digest = path.reference if path.kind in (BLOBS, MANIFESTS) else None
        if digest is not None and ":" in digest:
            known = await self.memory.locate(path.name, digest)
            if known is not None:
                return Resolution(known, digest)
        reference = path.imageReference()
        clientKey = account.upstream.password if account.upstream else None
        credentials = Credentials.choose(clientKey, self._serverAPIKey)
        try:
            return await self._resolver.resolve(reference, credentials)
        except ResolverUnavailable as e:
            remembered = await self._recall(reference, credentials, e)
            if remembered is None:
                raise
            return remembered
        except ResolveError as e:
            await self._hideFromOutsiders(e, reference, credentials, account)
            raise

    async def _recall(
        self,
        reference: ImageReference,
        credentials: Credentials,
        error: ResolverUnavailable,
    ) -> Resolution | None:
        """
        The answer remembered for this name and this same asker, while it
        is at most C{staleFor} seconds old, marked stale.
        """
        if self._remembered is None:
            return None
        found = await self._remembered.recall(reference, credentials)
        if found is None:
            return None
        age = self._broker.issuer.clock.seconds() - found.resolvedAt
        if age > self._staleFor:
            return None
        self._log.info(
            "stale answer for {name} ({age:.0f}s old): {why}",
            name=str(reference),
            age=age,
            why=error.message,
        )
        return found.resolution.asStale(error)

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
        try:
            await self._resolver.resolve(reference, self._ownCredentials(account))
        except NameUnknown as e:
            raise e from None
        except ResolveError:
            return

    # Forwarding

    def _access(
        self,
        request: Request,
        path: RegistryPath,
        resolution: Resolution,
        account: Account,
    ) -> UpstreamAccess:
        """
        The access the upstream must see: the client's own upstream
        credentials, for the real repository.
        """
        return UpstreamAccess(
            self._broker.backend.upstreamCredentials(account),
            resolution.repository,
            requiredActions(request.method, path.kind),
        )

    async def _upstreamFetch(
        self,
        request: StreamingRequest,
        path: RegistryPath,
        resolution: Resolution,
        account: Account,
        access: UpstreamAccess,
    ) -> UpstreamFetch:
        """
        What to send upstream: the real repository's path with the client's
        query, the client's headers, and C{access} (with the source of a
        mount).
        """
        _, question, query = request.uri.partition(b"?")
        if path.kind == UPLOADS and request.method == b"POST":
            query, also = await self._mount(query, account)
            access = attrs.evolve(access, also=also)
        url = self._upstream.base + _upstreamPath(path, resolution)
        if question:
            url += b"?" + query
        headers = forwardedRequestHeaders(request.requestHeaders)
        body = getattr(request, "bodyStream", None)
        return UpstreamFetch(request.method, url, headers, body, access)

    async def _mount(
        self, query: bytes, account: Account
    ) -> tuple[bytes, tuple[Scope, ...]]:
        """
        A mount copies a blob out of its C{from} repository: that is a pull
        of it, which our rules must allow, or the mount is dropped and an
        ordinary upload starts.  The upstream credential must then cover a
        pull of the real source repository too.
        """
        mount = parseMount(query)
        if mount is None:
            return withoutMount(query), ()
        needed = Scope("repository", None, mount.source, ("pull",))
        granted = self._broker.backend.grant(account, (needed,))
        if not any(
            scope.name == mount.source and "pull" in scope.actions for scope in granted
        ):
            return withoutMount(query), ()
        source = await self.memory.locate(mount.source, mount.digest) or mount.source
        if source != mount.source:
            query = withSource(query, source)
        return query, (Scope("repository", None, source, ("pull",)),)

    def _memoryKey(
        self,
        request: Request,
        path: RegistryPath,
        resolution: Resolution,
        fetch: UpstreamFetch,
    ) -> ManifestKey | None:
        """
        Where a manifest that cannot change is kept: by who the upstream
        sees, so a client only ever gets from memory what its own
        credentials already fetched.
        """
        if not (
            path.kind == MANIFESTS
            and request.method in (b"GET", b"HEAD")
            and self._immutable(path, resolution)
        ):
            return None
        assert fetch.access is not None
        credentials = fetch.access.credentials
        return (
            credentials.cacheKey if credentials else "anonymous",
            resolution.repository,
            resolution.reference or path.reference or "",
        )

    def _immutable(self, path: RegistryPath, resolution: Resolution) -> bool:
        """
        Whether the manifest asked for can never change: a digest, or an
        image of a fleet release (each in a repository of its own).
        """
        reference = resolution.reference or path.reference or ""
        if ":" in reference:
            return True
        return self._fleetNames and resolution.repository != path.name

    async def _relay(
        self,
        request: StreamingRequest,
        path: RegistryPath,
        resolution: Resolution,
        fetch: UpstreamFetch,
        key: ManifestKey | None,
        account: Account,
    ) -> IResponse:
        assert path.name is not None
        name, repository = path.name, resolution.repository
        rewrite = HeaderRewriter(
            self._upstream,
            publicBase(request, self._publicURL),
            (f"/v2/{repository}/".encode(), f"/v2/{name}/".encode()),
        )
        inspect: Inspector | None = None
        if path.kind == MANIFESTS and (key is not None or repository != name):

            async def inspect(response: IResponse, body: bytes) -> None:
                await self.memory.learn(key, name, repository, response, body)

        try:
            return await self._fetcher.fetch(request, fetch, rewrite, inspect)
        except RegistryError as e:
            if e.status != 401:
                raise
            self._rememberDenial(path, fetch)
            raise self._refusals.refused(request, path) from None
        except UpstreamRefused:
            self._rememberDenial(path, fetch)
            raise self._refusals.denied(request, path, account) from None

    def _rememberDenial(self, path: RegistryPath, fetch: UpstreamFetch) -> None:
        assert fetch.access is not None
        key = self._denialKey(path, fetch.access)
        if key is not None:
            self.denials[key] = True

    def _denialKey(self, path: RegistryPath, access: UpstreamAccess) -> tuple | None:
        """
        Who asked what of which real repository, for a fleet name: only a
        fleet's refusals are remembered.
        """
        if not self._fleetNames or path.imageReference().fleetName() is None:
            return None
        credentials = access.credentials
        who = credentials.cacheKey if credentials else "anonymous"
        return (who, access.repository, access.actions)
