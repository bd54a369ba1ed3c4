# -*- test-case-name: tests.unit.test_caching -*-
"""
The LAN cache's policy: which GET or HEAD of a blob or manifest is answered
from the cache, for whom, and what the log line says about it.

L{CachingForwarder} stands where a L{Forwarder} does: the brokered and the
pass-through resources send every upstream request through it and never
know whether the answer came from the upstream or from disk.  It keeps
authorization as the upstream decides it (L{CacheAuthorizations}).

A tag is revalidated with a C{HEAD} on every request; its body comes from
the cache when the digest it names is held.  While the upstream cannot be
reached, a tag is answered with its last known manifest (up to
C{staleFor} seconds old) and a C{Warning} header.

Each answer sets C{request.cacheOutcome} (hit, miss, coalesced or stale)
for the request's log line.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from typing import Any

import attrs
from twisted.internet.defer import Deferred, DeferredList
from twisted.logger import Logger
from twisted.web.client import readBody
from twisted.web.http_headers import Headers
from twisted.web.iweb import IBodyProducer, IResponse
from twisted.web.server import Request

from regproxy.cache.index import CacheIndex, TagEntry
from regproxy.cache.store import BlobStore
from regproxy.proxy.cacheasks import (
    DIGEST,
    CacheAsk,
    CacheTarget,
    Sender,
    Unreachable,
    clientCredentials,
    unreachable,
)
from regproxy.proxy.cacheauth import CacheAuthorizations
from regproxy.proxy.cachedresponse import (
    BytesResponse,
    StreamedResponse,
    manifestMediaType,
    parseRange,
)
from regproxy.proxy.failures import upstreamHost
from regproxy.proxy.fills import FillWriter, RunningFill, RunningFills
from regproxy.proxy.manifests import acceptable
from regproxy.proxy.relay import Forwarder
from regproxy.resolve.digests import manifestDigests
from regproxy.server.errors import UpstreamError

# Manifests are read whole (the spec caps them at 4 MiB).
MAX_MANIFEST = 4 * 1024 * 1024

STALE_WARNING = b'110 - "Response is Stale"'

# The longest the cache's close waits for fills being flushed to the disk.
CLOSE_WAIT = 10.0


@attrs.define
class CachingForwarder(Forwarder):
    """
    A L{Forwarder} with the LAN cache in front of it.

    @ivar opener: Opens the store and the index (at start-up: they run
        threads and timers, which a service starts, not a constructor).
    @ivar store: The bytes, once open; until then requests go upstream.
    @ivar index: Links, tags, authorizations, counters, once open.
    @ivar authTTL: Seconds an upstream's decision on a client and a
        repository holds while the upstream is reachable.
    @ivar offlineGrace: ... while it is not.
    @ivar staleFor: Oldest tag answer served while it is not.
    """

    opener: Callable[[], tuple[BlobStore, CacheIndex]] = attrs.field(kw_only=True)
    _store: BlobStore | None = attrs.field(default=None, kw_only=True)
    _index: CacheIndex | None = attrs.field(default=None, kw_only=True)
    authTTL: float = attrs.field(default=300.0, kw_only=True)
    offlineGrace: float = attrs.field(default=86400.0, kw_only=True)
    staleFor: float = attrs.field(default=86400.0, kw_only=True)
    fills: RunningFills = attrs.field(factory=RunningFills, kw_only=True)

    _log = Logger()

    def settled(self, ending: bool = False) -> Deferred[list[tuple[bool, bool]]]:
        """
        Fires once every fill running now has ended (kept or not).
        """
        return self.fills.settled(ending)

    @property
    def store(self) -> BlobStore:
        assert self._store is not None, "the cache is not open"
        return self._store

    @property
    def index(self) -> CacheIndex:
        assert self._index is not None, "the cache is not open"
        return self._index

    @property
    def authorizations(self) -> CacheAuthorizations:
        return CacheAuthorizations(
            self.index, self.clock, self.authTTL, self.offlineGrace
        )

    @property
    def isOpen(self) -> bool:
        return self._store is not None and self._index is not None

    def open(self) -> None:
        """
        Open the store and the index; from now on the cache answers.
        """
        if self._store is None:
            self._store, self._index = self.opener()
            self.metrics.readCache(self._index.counters)
            self._log.info(
                "LAN cache in {root}, up to {size:.1f} GiB",
                root=self._store.root,
                size=self._store.maxSize / 1024**3,
            )

    async def _close(self) -> None:
        # Fills being flushed end in a moment; a disk that hangs does not
        # hold the shutdown (their temporary files are never entries).
        waited: Deferred[None] = Deferred()
        timer = self.clock.callLater(CLOSE_WAIT, waited.callback, None)
        settled: Deferred[Any] = self.settled(ending=True)
        await DeferredList([settled, waited], fireOnOneCallback=True)
        if timer.active():
            timer.cancel()
        index, self._store, self._index = self._index, None, None
        if index is not None:
            await index.close()

    def close(self) -> Deferred[None]:
        """
        Let fills that are being kept finish, write the counters out and
        close the index (at shutdown, once L{RunningFills.drain} has let
        the fills finish or cut them).  A fill still downloading is left:
        its temporary file is never taken for an entry.
        """
        return Deferred.fromCoroutine(self._close())

    async def send(
        self,
        request: Request,
        method: bytes,
        url: bytes,
        headers: Headers,
        body: IBodyProducer | None,
    ) -> IResponse:
        """
        Like L{Forwarder.send}; a cached answer comes back as a response
        that L{relayBody} streams from disk.
        """
        target = CacheTarget.fromURL(url) if body is None else None
        if target is None or method not in (b"GET", b"HEAD") or self._store is None:
            return await Forwarder.send(self, request, method, url, headers, body)

        async def upstream(verb: bytes) -> IResponse:
            try:
                return await Forwarder.send(self, request, verb, url, headers, None)
            except Exception as e:
                if unreachable(e):
                    raise Unreachable(e) from e
                raise

        fingerprint = self.store.credentialFingerprint(
            *clientCredentials(request, self.agent)
        )
        ask = CacheAsk(request, target, fingerprint, upstream)
        try:
            if target.kind == "blobs":
                return await self._blob(ask)
            return await self._manifest(ask)
        except Unreachable as e:
            # Nothing cached could stand in: the client hears why.
            assert e.__cause__ is not None
            raise e.__cause__ from None

    async def relayBody(self, request: Request, response: IResponse) -> bool:
        """
        Like L{Forwarder.relayBody}, streaming cached answers from disk.
        """
        if isinstance(response, StreamedResponse):
            return await response.relay(request)
        return await Forwarder.relayBody(self, request, response)

    # Blobs

    async def _blob(self, ask: CacheAsk) -> IResponse:
        request, target, upstream = ask.request, ask.target, ask.upstream
        digest = target.reference
        running = self.fills.get(digest) if target.byDigest else None
        size = None
        if running is None and target.byDigest:
            size = await self.store.lookup(digest)
            # Another client may have started a fill while we looked.
            running = self.fills.get(digest) if size is None else None
        if size is None and running is None:
            return await self._blobMiss(ask)
        allowed, refusal = await self.authorizations.servable(
            target, ask.fingerprint, digest, upstream
        )
        if refusal is not None:
            return refusal
        if not allowed:
            return await self._blobMiss(ask)
        if running is not None:
            started = await running.wait()
            # A fill serves from its file until it is kept, and after its
            # bytes are all in and checked too, while it is flushed to the
            # disk (seconds, for a big blob) and renamed into place.
            if started is not None and started[0].joinable:
                fill, fillSize = started
                outcome = "hit" if fill.whole else "coalesced"
                self._outcome(request, outcome, target, fillSize)
                return StreamedResponse.forFill(fill, digest, fillSize)
            # It did not start, failed, or cannot give this client every
            # byte (a download held only in memory, past its window): the
            # entry if it was kept meanwhile, else straight from upstream,
            # never a wait for someone else's download to end.
            size = await self.store.lookup(digest)
            if size is None:
                return await self._blobMiss(ask)
        assert size is not None
        return self._blobHit(request, target, digest, size)

    def _blobHit(
        self, request: Request, target: CacheTarget, digest: str, size: int
    ) -> IResponse:
        wanted = parseRange(request.requestHeaders, size)
        response = StreamedResponse.forEntry(self.store, digest, size, wanted)
        self._outcome(request, "hit", target, response.length)
        return response

    async def _blobMiss(self, ask: CacheAsk) -> IResponse:
        """
        Fetch the blob; a whole GET by digest also fills the cache, and
        clients asking for it meanwhile are streamed from that one fill.
        """
        request, target, upstream = ask.request, ask.target, ask.upstream
        fills = (
            target.byDigest
            and request.method == b"GET"
            and not request.requestHeaders.hasHeader(b"range")
            and target.reference not in self.fills
        )
        if not fills:
            return await upstream(request.method)
        pending = self.fills[target.reference] = RunningFill()
        try:
            response = await upstream(b"GET")
        except BaseException:
            self.fills.pop(target.reference, None)
            pending.started(None)
            raise
        await self.authorizations.remember(ask.fingerprint, target, response.code)
        if response.code != 200 or not isinstance(response.length, int):
            self.fills.pop(target.reference, None)
            pending.started(None)
            return response
        fill = self.store.fill(target.reference, response.length)
        host = upstreamHost(target.upstream)

        def stalled() -> None:
            # As the relay says of a body that stalls, on this request's line.
            request.upstreamFailure = UpstreamError(  # type: ignore[attr-defined]
                "timeout", host, "the body stalled"
            )
            self.bodyStalled()

        response.deliverBody(
            FillWriter(
                fill,
                pending,
                self._filled(target, response.length),
                self.clock,
                self.responseTimeout,
                target.reference,
                host,
                stalled,
            )
        )
        pending.started((fill, response.length))
        request.cacheOutcome = "miss"  # type: ignore[attr-defined]
        return StreamedResponse.forFill(
            fill, target.reference, response.length, response
        )

    def _filled(self, target: CacheTarget, size: int) -> Callable[[bool], None]:
        def done(kept: bool) -> None:
            self.fills.pop(target.reference, None)
            if self._index is None:
                # The cache closed under a fill cut at shutdown: nothing to
                # record, and nothing was kept.
                return
            self.index.record("miss", target.repository, size, "upstream")
            if kept:
                self.index.link(target.upstream, target.repository, target.reference)

        return done

    # Manifests

    async def _manifest(self, ask: CacheAsk) -> IResponse:
        request, target, upstream = ask.request, ask.target, ask.upstream
        if target.byDigest:
            return await self._manifestByDigest(ask)
        try:
            response = await upstream(b"HEAD")
        except Unreachable as e:
            return await self._staleTag(request, target, ask.fingerprint, e)
        await self.authorizations.remember(ask.fingerprint, target, response.code)
        digest = (response.headers.getRawHeaders(b"docker-content-digest") or [b""])[
            -1
        ].decode("latin-1")
        if response.code != 200 or DIGEST.match(digest) is None:
            return await self._other(request, response, upstream)
        mediaType = (response.headers.getRawHeaders(b"content-type") or [b""])[-1]
        if request.method == b"HEAD":
            # The upstream's own answer is the answer; what the tag names
            # is remembered for offline answers and protection (a client
            # such as containerd HEADs the tag, then GETs by digest).
            # A HEAD's length is in its header (Twisted says 0 for the body).
            length = (response.headers.getRawHeaders(b"content-length") or [b""])[-1]
            if length.isdigit():
                self._rememberTag(
                    target, digest, mediaType.decode("latin-1"), int(length)
                )
            request.cacheOutcome = "miss"  # type: ignore[attr-defined]
            return response
        cached = await self._cachedManifest(
            request, digest, mediaType.decode("latin-1") or None
        )
        if cached is None:
            return await self._manifestMiss(request, target, upstream)
        self._rememberTag(target, digest, cached.mediaType, len(cached.body))
        self._outcome(request, "hit", target, cached.length)
        return cached

    async def _other(
        self, request: Request, response: IResponse, upstream: Sender
    ) -> IResponse:
        """
        An answer to a revalidating C{HEAD} the cache does not use: a
        client's HEAD gets it as it is; a GET is sent on.
        """
        if request.method == b"HEAD" or response.code in (401, 403):
            return response
        return await upstream(b"GET")

    async def _manifestByDigest(self, ask: CacheAsk) -> IResponse:
        request, target, upstream = ask.request, ask.target, ask.upstream
        digest = target.reference
        if await self.store.lookup(digest) is not None:
            allowed, refusal = await self.authorizations.servable(
                target, ask.fingerprint, digest, upstream
            )
            if refusal is not None:
                return refusal
            cached = await self._cachedManifest(request, digest) if allowed else None
            if cached is not None:
                self._outcome(request, "hit", target, cached.length)
                return cached
        return await self._manifestMiss(request, target, upstream)

    async def _staleTag(
        self,
        request: Request,
        target: CacheTarget,
        fingerprint: str,
        error: Unreachable,
    ) -> IResponse:
        entry = await self.index.getTag(
            target.upstream, target.repository, target.reference
        )
        if (
            entry is None
            or self.clock.seconds() - entry.fetchedAt > self.staleFor
            or not await self.authorizations.allowed(fingerprint, target, offline=True)
        ):
            raise error
        cached = await self._cachedManifest(request, entry.digest, entry.mediaType)
        if cached is None:
            raise error
        cached.headers.setRawHeaders(b"warning", [STALE_WARNING])
        self._outcome(request, "stale", target, cached.length)
        self._log.info(
            "stale answer for {repository}:{tag} ({age:.0f}s old)",
            repository=target.repository,
            tag=target.reference,
            age=self.clock.seconds() - entry.fetchedAt,
        )
        return cached

    async def _cachedManifest(
        self, request: Request, digest: str, mediaType: str | None = None
    ) -> BytesResponse | None:
        """
        The held manifest C{digest} as a response, if it is held whole and
        the client accepts its media type (the upstream's word for it when
        known, else the manifest's own C{mediaType}).
        """
        body = await self.store.read(digest)
        if body is None or hashlib.sha256(body).hexdigest() != digest[7:]:
            return None
        mediaType = mediaType or manifestMediaType(body)
        if not acceptable(request.requestHeaders, mediaType.encode("latin-1")):
            return None
        return BytesResponse.manifest(body, mediaType, digest)

    async def _manifestMiss(
        self, request: Request, target: CacheTarget, upstream: Sender
    ) -> IResponse:
        response = await upstream(request.method)
        if (
            request.method != b"GET"
            or response.code != 200
            or not isinstance(response.length, int)
            or response.length > MAX_MANIFEST
        ):
            return response
        body = await readBody(response)
        digest = "sha256:" + hashlib.sha256(body).hexdigest()
        mediaType = (response.headers.getRawHeaders(b"content-type") or [b""])[
            -1
        ].decode("latin-1")
        fill = self.store.fill(digest, len(body))
        fill.write(body)
        if await fill.finish():
            entry = TagEntry(digest, mediaType, len(body), self.clock.seconds())
            await self.index.link(target.upstream, target.repository, digest)
            await self.index.setReferences(digest, manifestDigests(body))
            if not target.byDigest:
                await self.index.setTag(
                    target.upstream, target.repository, target.reference, entry
                )
        self._outcome(request, "miss", target, len(body), "upstream")
        return BytesResponse(response.code, response.phrase, response.headers, body)

    def _rememberTag(
        self, target: CacheTarget, digest: str, mediaType: str, size: int
    ) -> None:
        """
        What the tag names now (written behind: nothing waits for it).
        """
        entry = TagEntry(digest, mediaType, size, self.clock.seconds())
        self.index.setTag(target.upstream, target.repository, target.reference, entry)

    def _outcome(
        self,
        request: Request,
        outcome: str,
        target: CacheTarget,
        nbytes: int,
        source: str = "cache",
    ) -> None:
        """
        Say on the request (for its log line) how the cache answered it,
        and count it: a HEAD counts nothing, it sent no bytes.
        """
        request.cacheOutcome = outcome  # type: ignore[attr-defined]
        if request.method == b"GET":
            self.index.record(outcome, target.repository, nbytes, source)
