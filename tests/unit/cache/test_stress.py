"""
A stress check (not a timed test): twenty clients reading one fill at
different paces each get every byte, and what is buffered stays bounded by
one read per client, not by the blob's size.
"""

from __future__ import annotations

import hashlib
import tracemalloc

from twisted.trial.unittest import SynchronousTestCase

from regproxy.cache.streaming import FOLLOW_READ_SIZE
from tests.unit.cache.helpers import (
    Client,
    ClientTransport,
    MiB,
    ServeResource,
    makeStore,
)

READERS = 20
BLOB = 48 * MiB
LIMIT = 128 * 1024


class HashingTransport(ClientTransport):
    """
    A client that hashes the body it receives instead of keeping it.
    """

    def __init__(self, limit: int) -> None:
        super().__init__(limit)
        self.head = b""
        self.hasher = hashlib.sha256()
        self.bodyLength = 0

    def drain(self) -> int:
        data = self.value()
        self.clear()
        if self.head is not None:
            self.head += data
            top, separator, data = self.head.partition(b"\r\n\r\n")
            if not separator:
                return len(top)
            self.head = None
        self.hasher.update(data)
        self.bodyLength += len(data)
        if self.serverPaused:
            self.serverPaused = False
            self.producer.resumeProducing()
        return len(data)


class StressTests(SynchronousTestCase):
    def test_twentyReadersOneFill(self) -> None:
        """
        Twenty readers, the slowest reading a quarter as often as the
        fastest, all receive the whole blob; no client ever has more than
        one read waiting beyond what its transport takes, and the memory
        the whole thing allocates is a few reads per client.
        """
        store = makeStore(self, maxSize=BLOB * 2)
        piece = hashlib.sha256(b"seed").digest() * (MiB // 32)
        body = hashlib.sha256()
        for n in range(BLOB // MiB):
            body.update(bytes([n]) + piece[1:])
        digest = "sha256:" + body.hexdigest()

        tracemalloc.start()
        fill = store.fill(digest, BLOB)
        clients = []
        for n in range(READERS):
            resource = ServeResource(store.fill(digest, BLOB).serveTo, BLOB)
            client = Client(resource, transport=HashingTransport(LIMIT))
            clients.append((client, resource, n % 4 + 1))

        def drainSome(round: int) -> bool:
            moved = False
            for client, _, every in clients:
                if round % every == 0:
                    moved = client.transport.drain() > 0 or moved
            return moved

        for n in range(BLOB // MiB):
            fill.write(bytes([n]) + piece[1:])
            drainSome(n)
        kept = fill.finish()
        round = 0
        while drainSome(round) or round % 4:
            round += 1
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()

        self.assertTrue(self.successResultOf(kept))
        for client, resource, _ in clients:
            self.assertEqual(resource.outcomes, [BLOB])
            self.assertEqual(client.transport.bodyLength, BLOB)
            self.assertEqual("sha256:" + client.transport.hasher.hexdigest(), digest)
            self.assertLessEqual(client.transport.most, LIMIT + FOLLOW_READ_SIZE + 1024)
        self.assertLess(peak, READERS * 3 * FOLLOW_READ_SIZE + 8 * MiB)
