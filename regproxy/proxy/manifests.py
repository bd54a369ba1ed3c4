# -*- test-case-name: tests.unit.test_broker -*-
"""
The manifest memory: manifests that cannot change, kept in memory and
served to clients that the upstream has already let see them, and where the
digests they name live.

A manifest asked for by digest is immutable by definition; a balena
release's image lives in a repository of its own that is pushed once, so
its manifest is immutable too.  Entries are keyed by who the upstream saw
(the hash of the upstream credentials, or anonymous) as well as the
repository and reference, so a client only ever gets from memory what its
own credentials already fetched.
"""

from __future__ import annotations

from collections import OrderedDict

import attrs
from twisted.internet.interfaces import IReactorTime
from twisted.web.http_headers import Headers
from twisted.web.iweb import IResponse
from twisted.web.server import Request

from regproxy.resolve.digests import IDigestLocations, manifestDigests

DEFAULT_MAX_BYTES = 64 * 1024 * 1024
DEFAULT_TTL = 3600.0

#: Who the upstream saw (a credential's cache key, or C{"anonymous"}), the
#: real repository and the reference.
ManifestKey = tuple[str, str, str]


@attrs.frozen
class CachedManifest:
    """
    @ivar references: The digests the manifest refers to, parsed once when
        it is cached rather than on every answer from memory.
    """

    body: bytes
    contentType: bytes
    digest: bytes | None
    references: tuple[str, ...] = ()


def acceptable(requestHeaders: Headers, contentType: bytes) -> bool:
    """
    Whether a client that sent these C{Accept} lines takes C{contentType}.
    A client that sends none gets what the registry would choose, which we
    cannot know: not acceptable.
    """
    wanted = contentType.split(b";")[0].strip().lower()
    for line in requestHeaders.getRawHeaders(b"accept", []):
        for item in line.split(b","):
            media = item.split(b";")[0].strip().lower()
            if media in (wanted, b"*/*"):
                return True
    return False


@attrs.define
class ManifestCache:
    """
    An LRU of immutable manifests, bounded in bytes, with an expiry so that
    a revoked credential stops being honoured.
    """

    clock: IReactorTime
    maxBytes: int = DEFAULT_MAX_BYTES
    ttl: float = DEFAULT_TTL
    _entries: OrderedDict[ManifestKey, tuple[CachedManifest, float]] = attrs.field(
        factory=OrderedDict
    )
    _size: int = 0

    def get(self, key: ManifestKey) -> CachedManifest | None:
        found = self._entries.get(key)
        if found is None:
            return None
        manifest, expires = found
        if expires <= self.clock.seconds():
            self._drop(key)
            return None
        self._entries.move_to_end(key)
        return manifest

    def put(self, key: ManifestKey, manifest: CachedManifest) -> None:
        if len(manifest.body) > self.maxBytes:
            return
        if key in self._entries:
            self._drop(key)
        self._entries[key] = (manifest, self.clock.seconds() + self.ttl)
        self._size += len(manifest.body)
        while self._size > self.maxBytes:
            oldest = next(iter(self._entries))
            self._drop(oldest)

    def forgetRepository(self, repository: str) -> None:
        """
        Drop everything kept from C{repository}.
        """
        for key in [key for key in self._entries if key[1] == repository]:
            self._drop(key)

    def _drop(self, key: ManifestKey) -> None:
        manifest, _ = self._entries.pop(key)
        self._size -= len(manifest.body)

    def __len__(self) -> int:
        return len(self._entries)


def writeManifest(request: Request, manifest: CachedManifest) -> None:
    request.setResponseCode(200)
    request.setHeader(b"Content-Type", manifest.contentType)
    if manifest.digest is not None:
        request.setHeader(b"Docker-Content-Digest", manifest.digest)
        request.setHeader(b"ETag", b'"' + manifest.digest + b'"')
    request.setHeader(b"Content-Length", b"%d" % (len(manifest.body),))
    if request.method != b"HEAD":
        request.write(manifest.body)
    request.finish()


@attrs.frozen
class ManifestMemory:
    """
    Everything this instance remembers about manifests, as one object: the
    immutable manifests it may answer with, and where the digests a
    manifest names live for the name a client used.

    A manifest a client changes (a C{PUT} or C{DELETE} that succeeded
    upstream) is forgotten, so that nothing remembered answers for it
    again.
    """

    cache: ManifestCache
    digests: IDigestLocations

    async def answer(
        self,
        request: Request,
        key: ManifestKey,
        name: str,
        repository: str,
        outcome: str | None = None,
    ) -> bool:
        """
        Answer C{request} from memory if a manifest for C{key} is kept and
        the client takes its media type.

        @param outcome: What the request's log line says the cache did
            (C{hit} while the LAN cache is on: this memory is its front).
        """
        cached = self.cache.get(key)
        if cached is None or not acceptable(request.requestHeaders, cached.contentType):
            return False
        # The same release may be asked for under another name
        # (org/fleet/1.2.3, then org/fleet:1.2.3): its blobs must be found
        # under this one too.
        if repository != name:
            await self.digests.remember(name, cached.references, repository)
        if outcome is not None:
            request.cacheOutcome = outcome  # type: ignore[attr-defined]
        writeManifest(request, cached)
        return True

    async def learn(
        self,
        key: ManifestKey | None,
        name: str,
        repository: str,
        response: IResponse,
        body: bytes,
    ) -> None:
        """
        A manifest fetched from C{repository} for C{name}: remember where
        its digests live, and keep it when it cannot change (C{key}).
        """
        references = tuple(manifestDigests(body))
        if repository != name:
            await self.digests.remember(name, references, repository)
        if key is None:
            return
        headers = response.headers
        contentType = headers.getRawHeaders(
            b"content-type", [b"application/octet-stream"]
        )
        digest = (headers.getRawHeaders(b"docker-content-digest") or [None])[-1]
        self.cache.put(key, CachedManifest(body, contentType[-1], digest, references))

    def forget(self, repository: str) -> None:
        """
        A manifest of C{repository} changed upstream.
        """
        self.cache.forgetRepository(repository)

    async def locate(self, name: str, digest: str) -> str | None:
        """
        The repository C{digest} lives in for C{name}, if known.
        """
        return await self.digests.find(name, digest)
