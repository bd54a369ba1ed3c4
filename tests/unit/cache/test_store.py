"""
Tests for L{regproxy.cache.store}: entries served whole or not at all,
checked on every read, evicted least recently used first with the fleet's
images protected, and kept across restarts.
"""

from __future__ import annotations

import os
import stat

from twisted.trial.unittest import SynchronousTestCase

from regproxy.cache import files
from regproxy.cache.index import TagEntry
from regproxy.cache.streaming import SERVE_READ_SIZE, SourceFailed
from tests.unit.cache.helpers import (
    Client,
    MiB,
    ServeResource,
    digestOf,
    keep,
    makeStore,
)

BODY = os.urandom(3 * MiB + 17)


class StoreTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.store = makeStore(self)
        self.digest = keep(self.store, BODY)

    def serve(
        self, digest, size, range=None, limit=None
    ) -> tuple[Client, ServeResource]:
        length = size if range is None else range[1] - range[0] + 1
        resource = ServeResource(
            lambda request: self.store.serve(request, digest, size, range), length
        )
        return Client(resource, limit), resource

    def test_entryLaidOutByDigest(self) -> None:
        """
        A kept entry is a file named by its digest, holding its bytes.
        """
        hexdigest = self.digest.split(":")[1]
        path = os.path.join(
            self.store.root, "blobs", "sha256", hexdigest[:2], hexdigest
        )
        with open(path, "rb") as f:
            self.assertEqual(f.read(), BODY)
        self.assertEqual(
            self.successResultOf(self.store.lookup(self.digest)), len(BODY)
        )
        self.assertEqual(
            (self.store.counters.sizeBytes, self.store.counters.entries), (len(BODY), 1)
        )

    def test_serveWhole(self) -> None:
        """
        A hit streams the whole file, in reads of L{SERVE_READ_SIZE}.
        """
        client, resource = self.serve(self.digest, len(BODY))
        self.assertEqual(client.body(), BODY)
        self.assertEqual(resource.outcomes, [len(BODY)])

    def test_serveRange(self) -> None:
        """
        A range (first, last inclusive) sends just those bytes.
        """
        client, resource = self.serve(self.digest, len(BODY), (MiB - 3, 2 * MiB + 5))
        self.assertEqual(client.body(), BODY[MiB - 3 : 2 * MiB + 6])

    def test_serveWithBackpressure(self) -> None:
        """
        A slow client holds at most one read beyond what its transport
        takes, and still gets every byte.
        """
        client, resource = self.serve(self.digest, len(BODY), limit=1024)
        self.assertLessEqual(
            len(client.transport.value()), 1024 + SERVE_READ_SIZE + 512
        )
        while client.transport.drain():
            pass
        self.assertEqual(client.body(), BODY)
        self.assertLessEqual(client.transport.most, 1024 + SERVE_READ_SIZE + 512)

    def test_clientGoneStopsReading(self) -> None:
        """
        A client that disconnects stops the serving, which reports what was
        sent.
        """
        client, resource = self.serve(self.digest, len(BODY), limit=1024)
        client.disconnect()
        self.assertEqual(resource.outcomes, [SERVE_READ_SIZE])

    def test_truncatedNeverServed(self) -> None:
        """
        A file truncated on disk is not a hit: lookup drops it, and serving
        it (if it was looked up before) fails instead of sending short.
        """
        os.truncate(files.entryPath(self.store.root, self.digest), 100)
        client, resource = self.serve(self.digest, len(BODY))
        resource.outcomes[0].trap(SourceFailed)
        self.assertEqual(client.body(), b"")
        self.assertIsNone(self.successResultOf(self.store.lookup(self.digest)))
        self.assertEqual(self.store.counters.entries, 0)

    def test_lookupDropsResizedFile(self) -> None:
        """
        A lookup that finds the file's size changed drops the entry.
        """
        with open(files.entryPath(self.store.root, self.digest), "ab") as f:
            f.write(b"more")
        self.assertIsNone(self.successResultOf(self.store.lookup(self.digest)))
        self.assertFalse(os.path.exists(files.entryPath(self.store.root, self.digest)))
        self.assertEqual(
            (self.store.counters.sizeBytes, self.store.counters.entries), (0, 0)
        )

    def test_read(self) -> None:
        """
        L{BlobStore.read} gives a small entry whole, or L{None}.
        """
        manifest = keep(self.store, b'{"schemaVersion": 2}')
        self.assertEqual(
            self.successResultOf(self.store.read(manifest)), b'{"schemaVersion": 2}'
        )
        self.assertIsNone(self.successResultOf(self.store.read(digestOf(b"absent"))))
        os.truncate(files.entryPath(self.store.root, manifest), 3)
        self.assertIsNone(self.successResultOf(self.store.read(manifest)))

    def test_verifyAll(self) -> None:
        """
        C{verifyAll} re-hashes every entry: an altered one (same size) is
        dropped, a stray right file adopted, a stray wrong one removed.
        """
        good = keep(self.store, b"good")
        with open(files.entryPath(self.store.root, self.digest), "r+b") as f:
            f.write(b"X")
        stray = b"left by a crash after the rename"
        strayPath = files.entryPath(self.store.root, digestOf(stray))
        os.makedirs(os.path.dirname(strayPath), exist_ok=True)
        with open(strayPath, "wb") as f:
            f.write(stray)
        wrongPath = files.entryPath(self.store.root, digestOf(b"wrong"))
        os.makedirs(os.path.dirname(wrongPath), exist_ok=True)
        with open(wrongPath, "wb") as f:
            f.write(b"not what the name says")
        self.assertEqual(self.successResultOf(self.store.verifyAll()), (4, 2))
        self.assertIsNone(self.successResultOf(self.store.lookup(self.digest)))
        self.assertEqual(self.successResultOf(self.store.lookup(good)), 4)
        self.assertEqual(
            self.successResultOf(self.store.lookup(digestOf(stray))), len(stray)
        )
        self.assertFalse(os.path.exists(wrongPath))
        self.assertEqual(self.store.counters.entries, 2)
        self.assertEqual(self.successResultOf(self.store.verifyAll()), (2, 0))

    def test_verifyWithoutSizeEvictsNothing(self) -> None:
        """
        C{regproxy cache verify} opens the store with no size; checking
        evicts nothing.
        """
        self.store.maxSize = 0
        self.assertEqual(self.successResultOf(self.store.verifyAll()), (1, 0))
        self.assertEqual(
            self.successResultOf(self.store.lookup(self.digest)), len(BODY)
        )

    def test_surviveRestart(self) -> None:
        """
        A new store and index on the same directory find the entry.
        """
        self.successResultOf(self.store.index.close())
        store = makeStore(self, directory=self.store.root)
        self.assertEqual(self.successResultOf(store.lookup(self.digest)), len(BODY))
        self.assertEqual(store.counters.sizeBytes, len(BODY))

    def test_credentialFingerprint(self) -> None:
        """
        Fingerprints are stable across restarts (the key is in the cache
        directory, readable by its owner only), differ per credential, and
        do not contain the secret.
        """
        first = self.store.credentialFingerprint("alice", "s3cret-password")
        again = makeStore(self, directory=self.store.root)
        self.assertEqual(again.credentialFingerprint("alice", "s3cret-password"), first)
        others = {
            self.store.credentialFingerprint("alice", "other"),
            self.store.credentialFingerprint("alic", "es3cret-password"),
            self.store.credentialFingerprint(None, None),
            first,
        }
        self.assertEqual(len(others), 4)
        self.assertNotIn("s3cret", first)
        mode = os.stat(os.path.join(self.store.root, "fingerprint.key")).st_mode
        self.assertEqual(stat.S_IMODE(mode), 0o600)
        elsewhere = makeStore(self)
        self.assertNotEqual(
            elsewhere.credentialFingerprint("alice", "s3cret-password"), first
        )


class EvictionTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.store = makeStore(self, maxSize=3000, protectFor=3600)
        self.reactor = self.store.index._reactor

    def keepAt(self, data: bytes) -> str:
        self.reactor.advance(1)
        return keep(self.store, data)

    def held(self, digests: list[str]) -> list[bool]:
        return [self.successResultOf(self.store.lookup(d)) is not None for d in digests]

    def test_leastRecentlyUsedFirst(self) -> None:
        """
        Over its size, the store evicts the least recently used entries
        until it fits again, and counts them.
        """
        a, b, c = (self.keepAt(bytes([n]) * 1000) for n in range(3))
        self.reactor.advance(1)
        client = Client(ServeResource(lambda r: self.store.serve(r, a, 1000), 1000))
        client.body()
        d = self.keepAt(b"d" * 1000)
        self.assertEqual(self.held([a, b, c, d]), [True, False, True, True])
        self.assertEqual(self.store.counters.evictions, 1)
        self.assertEqual(self.store.counters.sizeBytes, 3000)
        self.assertFalse(os.path.exists(files.entryPath(self.store.root, b)))

    def test_fillReservesRoom(self) -> None:
        """
        A fill of known size makes room when it starts, so the store never
        holds more than its size even while the fill is written.
        """
        a, b = (self.keepAt(bytes([n]) * 1000) for n in range(2))
        body = b"x" * 1500
        fill = self.store.fill(digestOf(body), len(body))
        self.assertEqual(self.held([a, b]), [False, True])
        fill.write(body)
        self.assertTrue(self.successResultOf(fill.finish()))
        self.assertLessEqual(self.store.counters.sizeBytes, 3000)

    def test_protectedOutliveUnprotected(self) -> None:
        """
        The newest manifest of a tag pulled within C{protectFor}, and what it
        names, go only after every unprotected entry, however old.
        """
        layer = self.keepAt(b"L" * 1000)
        manifest = self.keepAt(b'{"layers": "L"}')
        self.successResultOf(self.store.index.setReferences(manifest, [layer]))
        entry = TagEntry(manifest, "application/vnd.oci.image.manifest.v1+json", 15, 0)
        self.successResultOf(self.store.index.setTag("up", "lib/app", "v1", entry))
        others = [self.keepAt(bytes([n]) * 900) for n in range(2)]
        self.keepAt(b"n" * 900)
        self.assertEqual(
            self.held([layer, manifest] + others), [True, True, False, True]
        )
        self.reactor.advance(3601)
        self.keepAt(b"m" * 900)
        self.assertEqual(self.held([layer, manifest]), [False, True])

    def test_protectedGoWhenNothingElseCan(self) -> None:
        """
        Protected entries are still evicted when only they are left: the
        store never exceeds its size.
        """
        layer = self.keepAt(b"L" * 2000)
        self.store.protect([layer])
        self.keepAt(b"n" * 2000)
        self.assertEqual(self.held([layer]), [False])
        self.assertLessEqual(self.store.counters.sizeBytes, 3000)

    def test_protectAndUnprotect(self) -> None:
        """
        Pinned digests count as protected until unpinned.
        """
        a = self.keepAt(b"a" * 1000)
        self.store.protect([a])
        b, c = self.keepAt(b"b" * 1000), self.keepAt(b"c" * 1000)
        self.keepAt(b"d" * 1000)
        self.assertEqual(self.held([a, b, c]), [True, False, True])
        self.store.unprotect([a])
        self.keepAt(b"e" * 1000)
        self.assertEqual(self.held([a, c]), [False, True])
