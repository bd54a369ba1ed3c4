"""
Tests for L{regproxy.cache.index}: what the index remembers, across a
restart too, and the counters.
"""

from __future__ import annotations

import os

from twisted.internet.testing import MemoryReactorClock
from twisted.trial.unittest import SynchronousTestCase

from regproxy.cache.index import FLUSH_INTERVAL, REWRITE_AFTER, CacheIndex, TagEntry
from regproxy.cache.threads import runSynchronously, startedPool, stopPool
from tests.unit.cache.helpers import openIndex

DIGEST = "sha256:" + "a" * 64
OTHER = "sha256:" + "b" * 64


class IndexTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.directory = self.mktemp()
        os.makedirs(self.directory)
        self.reactor = MemoryReactorClock()
        self.index = openIndex(self, self.directory, self.reactor)

    def reopen(self) -> CacheIndex:
        self.successResultOf(self.index.close())
        self.index = openIndex(self, self.directory, self.reactor)
        return self.index

    def test_linkNeedsAnEntry(self) -> None:
        """
        A digest is linked to a repository only once it is held: no link
        vouches for bytes the cache does not have.
        """
        index = self.index
        self.successResultOf(index.link("up", "lib/app", DIGEST))
        self.assertFalse(self.successResultOf(index.isLinked("up", "lib/app", DIGEST)))
        self.successResultOf(index.addEntry(DIGEST, 10))
        self.successResultOf(index.link("up", "lib/app", DIGEST))
        self.assertTrue(self.successResultOf(index.isLinked("up", "lib/app", DIGEST)))
        self.assertFalse(
            self.successResultOf(index.isLinked("up", "lib/other", DIGEST))
        )
        self.assertFalse(self.successResultOf(index.isLinked("up2", "lib/app", DIGEST)))

    def test_removingAnEntryRemovesItsLinks(self) -> None:
        """
        Forgetting an entry forgets its links; it comes back unlinked.
        """
        index = self.index
        self.successResultOf(index.addEntry(DIGEST, 10))
        self.successResultOf(index.link("up", "lib/app", DIGEST))
        removed = self.successResultOf(index.removeEntries([DIGEST, OTHER]))
        self.assertEqual(removed, [(DIGEST, 10)])
        self.successResultOf(index.addEntry(DIGEST, 10))
        self.assertFalse(self.successResultOf(index.isLinked("up", "lib/app", DIGEST)))

    def test_surviveRestart(self) -> None:
        """
        Links, tags, authorizations and counters are still there after the
        index is closed and opened again.
        """
        index = self.index
        self.successResultOf(index.addEntry(DIGEST, 10))
        self.successResultOf(index.link("up", "lib/app", DIGEST))
        tag = TagEntry(DIGEST, "application/vnd.oci.image.index.v1+json", 10, 1234.5)
        self.successResultOf(index.setTag("up", "lib/app", "latest", tag))
        self.successResultOf(index.setAuthorization("fp", "up", "lib/app", True, 99.0))
        self.successResultOf(
            index.setAuthorization("fp2", "up", "lib/app", False, 98.0)
        )
        index.record("hit", "lib/app", 10, "cache")
        index = self.reopen()
        self.assertTrue(self.successResultOf(index.isLinked("up", "lib/app", DIGEST)))
        self.assertEqual(
            self.successResultOf(index.getTag("up", "lib/app", "latest")), tag
        )
        self.assertIsNone(self.successResultOf(index.getTag("up", "lib/app", "other")))
        self.assertEqual(
            self.successResultOf(index.getAuthorization("fp", "up", "lib/app")),
            (True, 99.0),
        )
        self.assertEqual(
            self.successResultOf(index.getAuthorization("fp2", "up", "lib/app")),
            (False, 98.0),
        )
        self.assertIsNone(
            self.successResultOf(index.getAuthorization("fp", "up", "lib/other"))
        )
        self.assertEqual((index.counters.hits, index.counters.bytesFromCache), (1, 10))
        self.assertEqual((index.counters.sizeBytes, index.counters.entries), (10, 1))

    def test_authorizationWrittenBehind(self) -> None:
        """
        The latest decision is answered at once from memory; told again
        unchanged it reaches the database only every L{REWRITE_AFTER}
        seconds, while a changed decision (a revoked credential) is written
        at once, and what was written survives a restart.
        """
        index, key = self.index, ("fp", "up", "lib/app")
        self.successResultOf(index.setAuthorization(*key, True, 100.0))
        self.successResultOf(index.setAuthorization(*key, True, 130.0))
        self.assertEqual(
            self.successResultOf(index.getAuthorization(*key)), (True, 130.0)
        )
        self.assertEqual(index._db.getAuthorization(key), (True, 100.0))
        self.successResultOf(index.setAuthorization(*key, True, 100.0 + REWRITE_AFTER))
        self.assertEqual(index._db.getAuthorization(key), (True, 100.0 + REWRITE_AFTER))
        self.successResultOf(index.setAuthorization(*key, False, 170.0))
        self.assertEqual(index._db.getAuthorization(key), (False, 170.0))
        self.assertEqual(
            self.successResultOf(self.reopen().getAuthorization(*key)), (False, 170.0)
        )

    def test_tagWrittenBehind(self) -> None:
        """
        A tag told again with the same manifest is answered from memory with
        its newest fetch time and rewritten only every L{REWRITE_AFTER}
        seconds; a tag that now names another manifest is written at once.
        """
        index = self.index
        first = TagEntry(DIGEST, "application/json", 10, 100.0)
        index.setTag("up", "lib/app", "v1", first)
        again = TagEntry(DIGEST, "application/json", 10, 120.0)
        index.setTag("up", "lib/app", "v1", again)
        self.assertEqual(
            self.successResultOf(index.getTag("up", "lib/app", "v1")), again
        )
        self.assertEqual(
            self.successResultOf(self.reopen().getTag("up", "lib/app", "v1")), first
        )
        moved = TagEntry(OTHER, "application/json", 11, 121.0)
        self.index.setTag("up", "lib/app", "v1", moved)
        self.assertEqual(
            self.successResultOf(self.reopen().getTag("up", "lib/app", "v1")), moved
        )

    def test_counters(self) -> None:
        """
        C{record} counts at once in plain attributes, and L{stats} reports
        the totals and each repository's share.
        """
        index = self.index
        index.record("hit", "lib/app", 100, "cache")
        index.record("miss", "lib/app", 1000, "upstream")
        index.record("coalesced", "lib/db", 1000, "cache")
        index.record("stale", "lib/db", 5, "cache")
        index.recordEvictions(2)
        self.assertEqual(
            (
                index.counters.hits,
                index.counters.misses,
                index.counters.coalesced,
                index.counters.stale,
                index.counters.bytesFromCache,
                index.counters.bytesFromUpstream,
                index.counters.evictions,
            ),
            (1, 1, 1, 1, 1105, 1000, 2),
        )
        self.successResultOf(index.addEntry(DIGEST, 7))
        stats = self.successResultOf(index.stats())
        self.assertEqual(
            (stats.hits, stats.misses, stats.coalesced, stats.stale, stats.evictions),
            (1, 1, 1, 1, 2),
        )
        self.assertEqual((stats.bytesFromCache, stats.bytesFromUpstream), (1105, 1000))
        self.assertEqual((stats.sizeBytes, stats.entries), (7, 1))
        self.assertEqual(
            stats.perRepository,
            {
                "lib/app": {
                    "hits": 1,
                    "misses": 1,
                    "bytesFromCache": 100,
                    "bytesFromUpstream": 1000,
                },
                "lib/db": {"coalesced": 1, "stale": 1, "bytesFromCache": 1005},
            },
        )

    def test_flushedNowAndThen(self) -> None:
        """
        Counters reach the database every L{FLUSH_INTERVAL} seconds, so a
        separate C{regproxy cache stats} process sees them.
        """
        self.index.record("hit", "lib/app", 100, "cache")
        reader = CacheIndex.open(
            os.path.join(self.directory, "index.sqlite"),
            self.reactor,
            runner=runSynchronously,
        )
        self.addCleanup(reader._db.close)
        reader._flusher.stop()
        self.assertEqual(self.successResultOf(reader.stats()).hits, 0)
        self.reactor.advance(FLUSH_INTERVAL)
        self.assertEqual(self.successResultOf(reader.stats()).hits, 1)

    def test_lastUseOrdersEviction(self) -> None:
        """
        Entries come out least recently used first; a touch moves an entry
        to the back.
        """
        index = self.index
        for n, digest in enumerate((DIGEST, OTHER)):
            self.reactor.advance(1)
            self.successResultOf(index.addEntry(digest, n + 1))
        order = self.successResultOf(index.evictionOrder(3600, []))
        self.assertEqual(order, [(DIGEST, 1, False), (OTHER, 2, False)])
        self.reactor.advance(1)
        index.touch(DIGEST)
        order = self.successResultOf(index.evictionOrder(3600, []))
        self.assertEqual(order, [(OTHER, 2, False), (DIGEST, 1, False)])

    def test_protection(self) -> None:
        """
        A tag pulled within the protection window protects its manifest and
        what the manifest names, recursively; once the window passes, the
        order is plain LRU again.
        """
        index = self.index
        indexDigest, manifest, layer = ("sha256:" + c * 64 for c in "cde")
        for digest in (layer, manifest, indexDigest, DIGEST):
            self.reactor.advance(1)
            self.successResultOf(index.addEntry(digest, 1))
        self.successResultOf(index.setReferences(indexDigest, [manifest, OTHER]))
        self.successResultOf(index.setReferences(manifest, [layer]))
        entry = TagEntry(indexDigest, "application/vnd.oci.image.index.v1+json", 1, 0.0)
        self.successResultOf(index.setTag("up", "lib/app", "latest", entry))
        order = self.successResultOf(index.evictionOrder(3600, []))
        self.assertEqual(
            [(d, p) for d, _, p in order],
            [(DIGEST, False), (layer, True), (manifest, True), (indexDigest, True)],
        )
        self.reactor.advance(3601)
        order = self.successResultOf(index.evictionOrder(3600, []))
        self.assertEqual([p for _, _, p in order], [False] * 4)
        self.successResultOf(index.touchTag("up", "lib/app", "latest"))
        order = self.successResultOf(index.evictionOrder(3600, [DIGEST]))
        self.assertEqual([p for _, _, p in order], [True] * 4)


class ThreadTests(SynchronousTestCase):
    def test_oneThread(self) -> None:
        """
        A started pool has its one thread and is stopped at reactor
        shutdown.
        """
        reactor = MemoryReactorClock()
        pool = startedPool(reactor, "test", 1)
        self.addCleanup(stopPool, pool)
        self.assertEqual((pool.started, pool.max), (True, 1))
        for f, args, kwargs in reactor.triggers["during"]["shutdown"]:
            f(*args, **kwargs)
        self.assertFalse(pool.started)
