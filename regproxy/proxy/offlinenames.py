# -*- test-case-name: tests.unit.test_offlinenames -*-
"""
What a fleet name needs to be pulled while the balena API cannot be asked,
kept in the LAN cache's index so that a restarted regproxy has it too: the
resolver's answers (L{IndexResolutions}) and where the digests a fleet
name's manifests name live (L{IndexDigestLocations}).

Both reach the index through the L{CachingForwarder}, which opens it when
the service starts; until then (and after it closes) they remember nothing
and recall nothing.  The asker is kept as the cache's keyed fingerprint of
its API key, never the key.
"""

from __future__ import annotations

from collections.abc import Sequence

import attrs
from twisted.internet.defer import Deferred, succeed
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from regproxy.names.reference import ImageReference
from regproxy.proxy.caching import CachingForwarder
from regproxy.resolve.digests import IDigestLocations
from regproxy.resolve.interfaces import Credentials, Resolution
from regproxy.resolve.remembered import (
    IResolutionMemory,
    Remembered,
    decodeResolution,
    encodeResolution,
)

#: Digest locations are kept a week: every manifest answer writes its own
#: again, and an outage longer than C{--cache-stale} serves nothing anyway.
KEEP_LOCATIONS = 7 * 24 * 3600.0

_log = Logger()


def _failed(failure: Failure, what: str) -> None:
    _log.failure("cannot {what} in the cache index", failure, what=what)
    return None


def asker(cache: CachingForwarder, credentials: Credentials) -> str:
    """
    Who asked the resolver, as the cache's fingerprint of the API key and
    where it came from (anonymous has no key); never the same as a
    fingerprint of upstream credentials.
    """
    return cache.store.credentialFingerprint(
        "resolver:" + credentials.source, credentials.apiKey
    )


@implementer(IResolutionMemory)
@attrs.frozen
class IndexResolutions:
    """
    Resolver answers in the cache's index, kept up to C{keepFor} seconds
    (C{--cache-stale}: nothing older is served).
    """

    cache: CachingForwarder
    keepFor: float

    async def _remember(
        self,
        reference: ImageReference,
        credentials: Credentials,
        resolution: Resolution,
        at: float,
    ) -> None:
        if not self.cache.isOpen:
            return
        await self.cache.index.setResolution(
            str(reference),
            asker(self.cache, credentials),
            encodeResolution(resolution),
            at,
            self.keepFor,
        )

    def remember(
        self,
        reference: ImageReference,
        credentials: Credentials,
        resolution: Resolution,
        at: float,
    ) -> Deferred[None]:
        d = Deferred.fromCoroutine(
            self._remember(reference, credentials, resolution, at)
        )
        return d.addErrback(_failed, "remember a resolution")

    def forget(
        self, reference: ImageReference, credentials: Credentials
    ) -> Deferred[None]:
        if not self.cache.isOpen:
            return succeed(None)
        d = self.cache.index.forgetResolution(
            str(reference), asker(self.cache, credentials)
        )
        return d.addErrback(_failed, "forget a resolution")

    async def _recall(
        self, reference: ImageReference, credentials: Credentials
    ) -> Remembered | None:
        if not self.cache.isOpen:
            return None
        row = await self.cache.index.getResolution(
            str(reference), asker(self.cache, credentials)
        )
        if row is None:
            return None
        answer, resolvedAt = row
        resolution = decodeResolution(answer)
        return None if resolution is None else Remembered(resolution, resolvedAt)

    def recall(
        self, reference: ImageReference, credentials: Credentials
    ) -> Deferred[Remembered | None]:
        d = Deferred.fromCoroutine(self._recall(reference, credentials))
        return d.addErrback(_failed, "recall a resolution")


@implementer(IDigestLocations)
@attrs.frozen
class IndexDigestLocations:
    """
    Digest locations per name in the cache's index.
    """

    cache: CachingForwarder

    async def _remember(
        self, name: str, digests: Sequence[str], repository: str
    ) -> None:
        if self.cache.isOpen and digests:
            await self.cache.index.setLocations(
                name, digests, repository, KEEP_LOCATIONS
            )

    def remember(
        self, name: str, digests: Sequence[str], repository: str
    ) -> Deferred[None]:
        d = Deferred.fromCoroutine(self._remember(name, digests, repository))
        return d.addErrback(_failed, "remember digest locations")

    async def _find(self, name: str, digest: str) -> str | None:
        if not self.cache.isOpen:
            return None
        return await self.cache.index.getLocation(name, digest)

    def find(self, name: str, digest: str) -> Deferred[str | None]:
        return Deferred.fromCoroutine(self._find(name, digest)).addErrback(
            _failed, "find digest locations"
        )
