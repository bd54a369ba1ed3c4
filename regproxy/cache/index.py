# -*- test-case-name: tests.unit.cache.test_index -*-
"""
The cache index: which repository each digest was fetched through, what each
tag last named, which credential may read which repository, and the
counters.  SQLite, every query on one dedicated thread.

Authorizations and tags are asked and told on every request: the latest of
each is kept in memory too, and written behind (the one thread runs queries
in order, so a later read sees the write), and again only when it changed
or every L{REWRITE_AFTER} seconds, so no request waits for those writes.
"""

from __future__ import annotations

import collections
from collections.abc import Iterable
from typing import Any, Callable, TypeVar

import attrs
from cachetools import LRUCache
from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.python.threadpool import ThreadPool

from regproxy.cache.database import WHOLE_CACHE, IndexDatabase, connect
from regproxy.cache.threads import (
    Runner,
    deferred,
    poolRunner,
    startedPool,
    stopPool,
)

T = TypeVar("T")

OUTCOMES = ("hit", "miss", "coalesced", "stale")
SOURCES = ("cache", "upstream")

# How often the in-memory counters and access times reach the database.
FLUSH_INTERVAL = 10.0

# An authorization or tag told again unchanged is written at most this often
# (a restart then finds it at most this much older than it was).
REWRITE_AFTER = 60.0

# Authorizations and tags kept in memory, each.
RECENT_ROWS = 10_000


@attrs.frozen
class TagEntry:
    """
    What a tag (or fleet name) last resolved to upstream.
    """

    digest: str
    mediaType: str
    size: int
    fetchedAt: float


@attrs.frozen
class CacheStats:
    sizeBytes: int
    entries: int
    hits: int
    misses: int
    coalesced: int
    stale: int
    bytesFromCache: int
    bytesFromUpstream: int
    evictions: int
    perRepository: dict[str, dict[str, int]]


@attrs.define
class Counters:
    """
    The whole cache's counters, as plain attributes so metrics can read them
    on every scrape for nothing.  C{sizeBytes} and C{entries} are kept by
    the L{BlobStore}; the rest by L{CacheIndex.record}.
    """

    hits: int = 0
    misses: int = 0
    coalesced: int = 0
    stale: int = 0
    bytesFromCache: int = 0
    bytesFromUpstream: int = 0
    evictions: int = 0
    sizeBytes: int = 0
    entries: int = 0

    def add(self, name: str, value: int) -> None:
        setattr(self, name, getattr(self, name) + value)


_BYTES = {"cache": "bytesFromCache", "upstream": "bytesFromUpstream"}
_COUNTER_OF = {
    "hit": "hits",
    "miss": "misses",
    "coalesced": "coalesced",
    "stale": "stale",
}


class CacheIndex:
    """
    The index; build it with L{open}.

    @ivar counters: The live totals (see L{Counters}).
    """

    _log = Logger()

    def __init__(
        self,
        database: IndexDatabase,
        reactor: IReactorTime,
        run: Runner,
        pool: ThreadPool | None = None,
    ) -> None:
        self._db = database
        self._reactor = reactor
        self._run = run
        self._pool = pool
        self.counters = Counters()
        self._pending: collections.Counter[tuple[str, str]] = collections.Counter()
        self._used: dict[str, float] = {}
        self._flusher = LoopingCall(self.flush)
        self._flusher.clock = reactor
        # key -> (value, when it was last written)
        self._authorizations: LRUCache[tuple, tuple[tuple[bool, float], float]] = (
            LRUCache(RECENT_ROWS)
        )
        self._tags: LRUCache[tuple, tuple[TagEntry, float]] = LRUCache(RECENT_ROWS)

    @classmethod
    def open(
        cls,
        path: str,
        reactor: Any,
        threadpool: ThreadPool | None = None,
        runner: Runner | None = None,
    ) -> CacheIndex:
        """
        Open the index at C{path}, creating its tables; what it held before a
        restart is still there.  This one call blocks (once, at start-up).

        @param threadpool: A one-thread pool to run queries on; one is made
            (and stopped at reactor shutdown) when not given.
        @param runner: Runs each query instead of a thread pool (tests pass
            L{regproxy.cache.threads.runSynchronously}).
        """
        database = IndexDatabase(connect(path))
        pool = None
        if runner is None:
            if threadpool is None:
                pool = threadpool = startedPool(reactor, "regproxy-cache-index", size=1)
            runner = poolRunner(reactor, threadpool)
        index = cls(database, reactor, runner, pool)
        index._loadCounters()
        index._flusher.start(FLUSH_INTERVAL, now=False)
        return index

    def _loadCounters(self) -> None:
        whole = self._db.counts().get(WHOLE_CACHE, {})
        for name in attrs.fields_dict(Counters):
            self.counters.add(name, whole.get(name, 0))
        self.counters.sizeBytes, self.counters.entries = self._db.totals()

    def _call(self, f: Callable[..., T], *args: Any) -> Deferred[T]:
        return self._run(f, *args)

    @deferred
    async def close(self) -> None:
        """
        Write what is pending and close the database (and the thread, if
        this index made it).
        """
        if self._flusher.running:
            self._flusher.stop()
        await self.flush()
        await self._call(self._db.close)
        if self._pool is not None:
            stopPool(self._pool)

    def flush(self) -> Deferred[None]:
        """
        Write the counters and access times gathered in memory.
        """
        pending, self._pending = self._pending, collections.Counter()
        used, self._used = self._used, {}

        def write() -> None:
            if pending:
                self._db.addCounts(pending)
            if used:
                self._db.touch(used)

        d = self._call(write)
        d.addErrback(lambda f: self._log.failure("Writing cache counters", f))
        return d

    # Entries (the store's side).

    def addEntry(self, digest: str, size: int) -> Deferred[None]:
        return self._call(self._db.addEntry, digest, size, self._reactor.seconds())

    def entrySize(self, digest: str) -> Deferred[int | None]:
        return self._call(self._db.entrySize, digest)

    def touch(self, digest: str) -> None:
        """
        Note that C{digest} was just used (for LRU); written with the
        counters, not at once.
        """
        self._used[digest] = self._reactor.seconds()

    def removeEntries(self, digests: Iterable[str]) -> Deferred[list[tuple[str, int]]]:
        digests = list(digests)
        for digest in digests:
            self._used.pop(digest, None)
        return self._call(self._db.removeEntries, digests)

    def entries(self) -> Deferred[list[tuple[str, int]]]:
        return self._call(self._db.entries)

    def evictionOrder(
        self, protectFor: float, pinned: Iterable[str]
    ) -> Deferred[list[tuple[str, int, bool]]]:
        """
        Every entry as (digest, size, protected), in eviction order, after
        writing pending access times so the order is current.
        """
        since = self._reactor.seconds() - protectFor
        used, self._used = self._used, {}
        pinned = list(pinned)

        def order() -> list[tuple[str, int, bool]]:
            if used:
                self._db.touch(used)
            return self._db.evictionOrder(since, pinned)

        return self._call(order)

    # Links, tags, authorizations, references (cache-wire's side).

    def link(self, upstream: str, repository: str, digest: str) -> Deferred[None]:
        """
        Record that C{digest} was fetched through, or confirmed in,
        C{repository}.  Only digests held get links (no link without an
        entry): link after the fill's C{finish()} fired C{True}, or use
        L{regproxy.cache.fill.Fill.link}.
        """
        return self._call(self._db.link, upstream, repository, digest)

    def isLinked(self, upstream: str, repository: str, digest: str) -> Deferred[bool]:
        return self._call(self._db.isLinked, upstream, repository, digest)

    def _writeBehind(self, f: Callable[..., Any], *args: Any) -> Deferred[None]:
        self._call(f, *args).addErrback(
            lambda failure: self._log.failure("Writing the cache index", failure)
        )
        return succeed(None)

    def setTag(
        self, upstream: str, repository: str, tag: str, entry: TagEntry
    ) -> Deferred[None]:
        """
        Record what C{tag} names now; it counts as pulled now (for
        protection from eviction).
        """
        key = (upstream, repository, tag)
        now = self._reactor.seconds()
        known = self._tags.get(key)
        if (
            known is not None
            and _sameTag(known[0], entry)
            and now - known[1] < REWRITE_AFTER
        ):
            self._tags[key] = (entry, known[1])
            return succeed(None)
        self._tags[key] = (entry, now)
        value = (entry.digest, entry.mediaType, entry.size, entry.fetchedAt)
        return self._writeBehind(self._db.setTag, key, value, now)

    def touchTag(self, upstream: str, repository: str, tag: str) -> Deferred[None]:
        """
        Note that C{tag} was pulled again without being fetched (served
        stale or offline), so what it names stays protected.
        """
        key = (upstream, repository, tag)
        return self._writeBehind(self._db.touchTag, key, self._reactor.seconds())

    @deferred
    async def getTag(self, upstream: str, repository: str, tag: str) -> TagEntry | None:
        key = (upstream, repository, tag)
        known = self._tags.get(key)
        if known is not None:
            return known[0]
        row = await self._call(self._db.getTag, key)
        return None if row is None else TagEntry(*row)

    def setAuthorization(
        self, fingerprint: str, upstream: str, repository: str, allowed: bool, at: float
    ) -> Deferred[None]:
        key = (fingerprint, upstream, repository)
        known = self._authorizations.get(key)
        if (
            known is not None
            and known[0][0] == allowed
            and at - known[1] < REWRITE_AFTER
        ):
            self._authorizations[key] = ((allowed, at), known[1])
            return succeed(None)
        self._authorizations[key] = ((allowed, at), at)
        return self._writeBehind(self._db.setAuthorization, key, allowed, at)

    def getAuthorization(
        self, fingerprint: str, upstream: str, repository: str
    ) -> Deferred[tuple[bool, float] | None]:
        key = (fingerprint, upstream, repository)
        known = self._authorizations.get(key)
        if known is not None:
            return succeed(known[0])
        return self._call(self._db.getAuthorization, key)

    def setReferences(self, manifestDigest: str, digests: list[str]) -> Deferred[None]:
        """
        Record the digests a manifest names (an index's platform manifests,
        an image manifest's config and layers), for eviction's protection.
        """
        return self._call(self._db.setReferences, manifestDigest, list(digests))

    # Fleet names offline (see L{regproxy.proxy.offlinenames}).

    def setResolution(
        self, name: str, asker: str, answer: str, at: float, keepFor: float
    ) -> Deferred[None]:
        """
        Record the resolver's C{answer} for C{name} (with its reference)
        asked by C{asker} (a fingerprint), resolved at C{at}; answers older
        than C{keepFor} seconds are dropped.
        """
        oldest = self._reactor.seconds() - keepFor
        return self._call(self._db.setResolution, (name, asker), answer, at, oldest)

    def forgetResolution(self, name: str, asker: str) -> Deferred[None]:
        """
        The API no longer gives C{asker} an answer for C{name}.
        """
        return self._call(self._db.forgetResolution, (name, asker))

    def getResolution(
        self, name: str, asker: str
    ) -> Deferred[tuple[str, float] | None]:
        """
        (the answer, when it was resolved) for C{name} and C{asker}.
        """
        return self._call(self._db.getResolution, (name, asker))

    def setLocations(
        self, name: str, digests: Iterable[str], repository: str, keepFor: float
    ) -> Deferred[None]:
        """
        C{digests}, named by a manifest fetched for C{name}, live in
        C{repository}; locations older than C{keepFor} seconds are dropped.
        """
        now = self._reactor.seconds()
        return self._call(
            self._db.setLocations, name, list(digests), repository, now, now - keepFor
        )

    def getLocation(self, name: str, digest: str) -> Deferred[str | None]:
        return self._call(self._db.getLocation, name, digest)

    # Counters.

    def record(self, outcome: str, repository: str, nbytes: int, source: str) -> None:
        """
        Count one request's outcome and the bytes it was sent, in memory;
        cheap enough for the reactor thread.

        @param outcome: One of L{OUTCOMES}.
        @param source: One of L{SOURCES}: where the bytes came from.
        """
        counter, bytesCounter = _COUNTER_OF[outcome], _BYTES[source]
        for name, value in ((counter, 1), (bytesCounter, nbytes)):
            self.counters.add(name, value)
            self._pending[WHOLE_CACHE, name] += value
            self._pending[repository, name] += value

    def recordEvictions(self, count: int) -> None:
        self.counters.evictions += count
        self._pending[WHOLE_CACHE, "evictions"] += count

    @deferred
    async def stats(self) -> CacheStats:
        """
        The counters as the database holds them (after writing what is
        pending), with the size and entry count, and per repository.
        """
        await self.flush()
        counts = await self._call(self._db.counts)
        size, entries = await self._call(self._db.totals)
        whole = counts.pop(WHOLE_CACHE, {})
        values = {name: whole.get(name, 0) for name in attrs.fields_dict(Counters)}
        values.update(sizeBytes=size, entries=entries)
        return CacheStats(perRepository=counts, **values)


def _sameTag(one: TagEntry, other: TagEntry) -> bool:
    """
    Whether two answers for a tag name the same manifest (whenever fetched).
    """
    return (one.digest, one.mediaType, one.size) == (
        other.digest,
        other.mediaType,
        other.size,
    )
