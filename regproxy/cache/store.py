# -*- test-case-name: tests.unit.cache.test_store -*-
"""
The blob store: content-addressed files under the cache directory, each a
whole, digest-checked copy, with the index as its guide.  It serves entries,
runs the one fill per digest, and evicts in the background to stay within
its size.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from typing import Any

import attrs
from twisted.internet.defer import Deferred, succeed
from twisted.logger import Logger
from twisted.web.server import Request

from regproxy.cache import files
from regproxy.cache.direct import stream
from regproxy.cache.eviction import chooseEvictions
from regproxy.cache.fill import Download, Fill
from regproxy.cache.index import CacheIndex
from regproxy.cache.streaming import FileHandle, SourceFailed, readAt
from regproxy.cache.threads import Runner, deferred, poolRunner, startedPool

DEFAULT_PROTECT = 7 * 24 * 3600.0


def filesystemFree(path: str) -> int:
    stat = os.statvfs(path)
    return stat.f_bavail * stat.f_frsize


class _EntrySource(FileHandle):
    """
    A complete entry, as a L{regproxy.cache.streaming.Source}.
    """

    def __init__(self, fd: int, size: int, run: Runner) -> None:
        super().__init__(fd)
        self._size = size
        self._run = run

    def available(self) -> int:
        return self._size

    def complete(self) -> bool:
        return True

    def whenMore(self) -> Deferred[None]:
        return succeed(None)

    def check(self) -> None:
        pass

    def read(self, offset: int, length: int) -> Deferred[bytes]:
        assert self._fd is not None
        return readAt(self._run, self._fd, length, offset)


# For callers that hold the key themselves (see CACHE_API.md).
credentialFingerprint = files.credentialFingerprint


@attrs.define(eq=False)
class BlobStore:
    """
    Blobs and manifests by digest under C{root}/blobs.

    @param maxSize: The most bytes of entries kept.
    @param minFree: Fills are not kept while the filesystem has less free.
    @param protectFor: Seconds a tag's newest manifest (and what it names)
        stays protected from eviction after it was last pulled.
    @param diskRunner: Runs blocking disk calls (reads, fsync, rename,
        hashing); a small thread pool when not given.
    @param freeSpace: Free bytes of the filesystem at a path (tests fake it).
    @param zeroCopy: Whether bytes for a client across a network go by
        C{sendfile} (see L{regproxy.cache.direct}).
    @param durable: Whether fills are flushed to the disk before they count
        as kept; only tests turn it off.
    """

    _log = Logger()

    root: str
    index: CacheIndex
    reactor: Any
    maxSize: int
    minFree: int
    protectFor: float = DEFAULT_PROTECT
    diskRunner: Runner | None = None
    _freeSpace: Callable[[str], int] = filesystemFree
    durable: bool = True
    zeroCopy: bool = True
    run: Runner = attrs.field(init=False)
    _fills: dict[str, Download] = attrs.field(init=False, factory=dict)
    _reserved: dict[Download, int] = attrs.field(init=False, factory=dict)
    _pinned: set[str] = attrs.field(init=False, factory=set)
    _evicting: bool = attrs.field(init=False, default=False)
    _evictAgain: bool = attrs.field(init=False, default=False)
    _key: bytes | None = attrs.field(init=False, default=None)

    def __attrs_post_init__(self) -> None:
        if self.diskRunner is None:
            pool = startedPool(self.reactor, "regproxy-cache-disk", 2)
            self.run = poolRunner(self.reactor, pool)
        else:
            self.run = self.diskRunner
        files.prepare(self.root)

    @property
    def counters(self) -> Any:
        return self.index.counters

    def _path(self, digest: str) -> str:
        return files.entryPath(self.root, digest)

    # Reading.

    @deferred
    async def lookup(self, digest: str) -> int | None:
        """
        The size of the complete entry for C{digest}, or L{None}.  An entry
        whose file is missing or has another size than it was kept with is
        dropped.
        """
        if digest in self._fills:
            return None
        size = await self.index.entrySize(digest)
        if size is None:
            return None
        if await self.run(files.sizeOnDisk, self._path(digest)) != size:
            await self._drop(digest)
            return None
        return size

    @deferred
    async def read(self, digest: str) -> bytes | None:
        """
        The whole entry (for manifests, which are small), or L{None} when it
        is not held whole.
        """
        size = await self.index.entrySize(digest)
        if size is None:
            return None
        body = await self.run(files.readEntry, self._path(digest), size)
        if body is None:
            await self._drop(digest)
            return None
        self.index.touch(digest)
        return body

    @deferred
    async def serve(
        self,
        request: Request,
        digest: str,
        size: int,
        range: tuple[int, int] | None = None,
    ) -> int:
        """
        Stream the entry to C{request} with backpressure, a large read at a
        time; fires with the bytes sent.  Headers and C{finish} are the
        caller's.

        @param range: (first, last) inclusive.
        @raise SourceFailed: The entry is gone or its size changed.
        """
        fd = await self.run(files.openEntry, self._path(digest), size)
        if fd is None:
            await self._drop(digest)
            raise SourceFailed(f"{digest} is no longer held whole")
        self.index.touch(digest)
        first, end = (0, size) if range is None else (range[0], range[1] + 1)
        source = _EntrySource(fd, size, self.run)
        return await stream(request, source, first, end, self.run, self.zeroCopy)

    # Filling.

    def fill(self, digest: str, size: int | None) -> Fill:
        """
        The one fill for C{digest}: joined when one is running, else started.
        It is kept only if it fits (within C{maxSize}, with C{minFree} left
        on the filesystem); otherwise it streams to its readers all the same.

        @raise ValueError: C{digest} is not a sha256 or sha512 digest.
        """
        running = self._fills.get(digest)
        if running is not None:
            return Fill(running, existing=True)
        final = self._path(digest)
        diskFree = (
            self._freeSpace(self.root) - (size or 0) - self._unwritten() >= self.minFree
        )
        reserved = sum(self._reserved.values())
        fits = size is None or size <= self.maxSize - reserved
        temporary = files.openTemporary(self.root) if diskFree else None
        download = Download(self, digest, size, final, temporary, diskFree and fits)
        self._fills[digest] = download
        if download.keeping and size:
            self._reserved[download] = size
            self._makeRoom()
        return Fill(download, existing=False)

    def _unwritten(self) -> int:
        """
        What the running fills of known size still have to write to the
        disk: the free space now does not show it yet.
        """
        return sum(
            max(download.size - download.written, 0)
            for download in self._fills.values()
            if download.onDisk and download.size is not None
        )

    async def kept(self, download: Download) -> None:
        """
        C{download} is now an entry: index it, link it, and make room.
        """
        self._reserved.pop(download, None)
        known = await self.index.entrySize(download.digest)
        await self.index.addEntry(download.digest, download.written)
        if known is None:
            self.counters.sizeBytes += download.written
            self.counters.entries += 1
        else:
            self.counters.sizeBytes += download.written - known
        for upstream, repository in download.links:
            await self.index.link(upstream, repository, download.digest)
        self._makeRoom()

    def grow(self, download: Download, size: int) -> bool:
        reserved = self._reserved.get(download, 0) + size
        others = sum(self._reserved.values()) - self._reserved.get(download, 0)
        if reserved > self.maxSize - others:
            self._reserved.pop(download, None)
            return False
        self._reserved[download] = reserved
        self._makeRoom()
        return True

    def ended(self, download: Download) -> None:
        self._reserved.pop(download, None)
        if self._fills.get(download.digest) is download:
            del self._fills[download.digest]

    # Eviction.

    def protect(self, digests: Iterable[str]) -> None:
        """
        Keep C{digests} (and what they name) with the protected entries, as
        if a tag named them, until L{unprotect}.
        """
        self._pinned.update(digests)

    def unprotect(self, digests: Iterable[str]) -> None:
        self._pinned.difference_update(digests)

    def _overLimit(self) -> bool:
        return self.counters.sizeBytes + sum(self._reserved.values()) > self.maxSize

    def _makeRoom(self) -> None:
        """
        Start evicting in the background if the store is over its size.
        """
        if not self._overLimit():
            return
        if self._evicting:
            self._evictAgain = True
            return
        self.evict().addErrback(lambda f: self._log.failure("Evicting", f))

    @deferred
    async def evict(self) -> None:
        """
        Evict until the entries and the running fills' reservations fit in
        C{maxSize}: least recently used first, protected entries last.
        """
        if self._evicting:
            self._evictAgain = True
            return
        self._evicting = True
        try:
            while True:
                self._evictAgain = False
                if self._overLimit():
                    await self._evictOnce()
                if not self._evictAgain:
                    break
        finally:
            self._evicting = False

    async def _evictOnce(self) -> None:
        order = await self.index.evictionOrder(self.protectFor, self._pinned)
        limit = self.maxSize - sum(self._reserved.values())
        chosen = chooseEvictions(order, limit, busy=set(self._fills))
        removed = await self._forget(chosen)
        self.index.recordEvictions(len(removed))
        if removed:
            self._log.info(
                "Evicted {count} cache entries ({size} bytes)",
                count=len(removed),
                size=sum(size for _, size in removed),
            )

    async def _forget(self, digests: list[str]) -> list[tuple[str, int]]:
        """
        Remove C{digests} from the index, then their files (the index first:
        a lookup meanwhile finds nothing rather than a missing file).
        """
        removed = await self.index.removeEntries(digests)
        for digest, size in removed:
            self.counters.sizeBytes -= size
            self.counters.entries -= 1
            if digest not in self._fills:
                await self.run(files.removeFile, self._path(digest))
        return removed

    async def _drop(self, digest: str) -> None:
        self._log.warn(
            "Dropped {digest}: its file is missing or damaged", digest=digest
        )
        await self._forget([digest])

    # Checking.

    @deferred
    async def verifyAll(self) -> tuple[int, int]:
        """
        Re-hash every entry, and every entry file the index does not know
        (left by a crash after the rename); drop what is wrong, adopt what
        is right.  Fires with (checked, dropped).  Evicts nothing: the
        command runs it on a store opened without a size.
        """
        checked = dropped = 0
        known = await self.index.entries()
        for digest, size in known:
            if digest in self._fills:
                continue
            checked += 1
            if not await self.run(self._isWhole, digest, size):
                await self._drop(digest)
                dropped += 1
        names = {digest for digest, _ in known}
        stray = await self.run(lambda: list(files.storedDigests(self.root)))
        for digest in stray:
            if digest in names or digest in self._fills:
                continue
            checked += 1
            size = await self.run(self._wholeSize, digest)
            if size >= 0:
                await self.index.addEntry(digest, size)
                self.counters.sizeBytes += size
                self.counters.entries += 1
            else:
                await self.run(files.removeFile, self._path(digest))
                dropped += 1
        return checked, dropped

    def _isWhole(self, digest: str, size: int) -> bool:
        path = self._path(digest)
        return files.sizeOnDisk(path) == size and files.hashesTo(path, digest)

    def _wholeSize(self, digest: str) -> int:
        """
        The size of the file for C{digest} if it hashes right, else -1.
        """
        path = self._path(digest)
        size = files.sizeOnDisk(path)
        return size if size is not None and files.hashesTo(path, digest) else -1

    def credentialFingerprint(self, username: str | None, password: str | None) -> str:
        """
        A keyed hash (HMAC-SHA256, key in the cache directory) naming a
        credential without holding it.
        """
        if self._key is None:
            self._key = files.fingerprintKey(self.root)
        return files.credentialFingerprint(self._key, username, password)
