# -*- test-case-name: tests.unit.test_broker -*-
"""
Manifests that cannot change, kept in memory and served to clients that
the upstream has already let see them.

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

DEFAULT_MAX_BYTES = 64 * 1024 * 1024
DEFAULT_TTL = 3600.0


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
    _entries: OrderedDict[tuple[str, str, str], tuple[CachedManifest, float]] = (
        attrs.field(factory=OrderedDict)
    )
    _size: int = 0

    def get(self, key: tuple[str, str, str]) -> CachedManifest | None:
        found = self._entries.get(key)
        if found is None:
            return None
        manifest, expires = found
        if expires <= self.clock.seconds():
            self._drop(key)
            return None
        self._entries.move_to_end(key)
        return manifest

    def put(self, key: tuple[str, str, str], manifest: CachedManifest) -> None:
        if len(manifest.body) > self.maxBytes:
            return
        if key in self._entries:
            self._drop(key)
        self._entries[key] = (manifest, self.clock.seconds() + self.ttl)
        self._size += len(manifest.body)
        while self._size > self.maxBytes:
            oldest = next(iter(self._entries))
            self._drop(oldest)

    def _drop(self, key: tuple[str, str, str]) -> None:
        manifest, _ = self._entries.pop(key)
        self._size -= len(manifest.body)

    def __len__(self) -> int:
        return len(self._entries)
