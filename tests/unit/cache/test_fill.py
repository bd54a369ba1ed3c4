"""
Tests for L{regproxy.cache.fill}: one download, many readers, each at its
own pace, and nothing served whole that is not right.
"""

from __future__ import annotations

import os
from typing import cast

from twisted.logger import ILogObserver, formatEvent, globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase

from regproxy.cache import files
from regproxy.cache.fill import MEMORY_WINDOW
from regproxy.cache.streaming import FOLLOW_READ_SIZE, SourceFailed
from tests.unit.cache.helpers import (
    Client,
    Disk,
    MiB,
    ServeResource,
    digestOf,
    keep,
    makeStore,
)

BODY = bytes(range(256)) * 4096  # 1 MiB


class FillTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.disk = Disk()
        self.store = makeStore(self, disk=self.disk)
        self.digest = digestOf(BODY)

    def follow(self, fill, range=None, limit=None) -> tuple[Client, ServeResource]:
        length = len(BODY) if range is None else range[1] - range[0] + 1
        resource = ServeResource(lambda request: fill.serveTo(request, range), length)
        return Client(resource, limit), resource

    def temporaryFiles(self) -> list[str]:
        return os.listdir(os.path.join(self.store.root, "tmp"))

    def test_oneDownloadForMany(self) -> None:
        """
        Callers asking for a digest while its fill runs join it; every
        reader gets what has arrived (all but the last byte, which waits for
        the digest check), then the whole body, and the entry is kept.
        """
        fill = self.store.fill(self.digest, len(BODY))
        joined = self.store.fill(self.digest, len(BODY))
        self.assertEqual(
            (fill.existing, joined.existing, fill.keeping), (False, True, True)
        )
        early, _ = self.follow(fill)
        fill.write(BODY[:1000])
        late, resource = self.follow(joined)
        self.assertEqual(early.body(), BODY[:1000])
        self.assertEqual(late.body(), BODY[:1000])
        fill.write(BODY[1000:])
        self.assertEqual(early.body(), BODY[:-1])
        self.assertNoResult(joined.finish())
        kept = fill.finish()
        self.assertTrue(self.successResultOf(kept))
        self.assertTrue(self.successResultOf(joined.finish()))
        self.assertEqual(early.body(), BODY)
        self.assertEqual(late.body(), BODY)
        self.assertEqual(resource.outcomes, [len(BODY)])
        self.assertEqual(
            self.successResultOf(self.store.lookup(self.digest)), len(BODY)
        )
        self.assertEqual(self.temporaryFiles(), [])
        again = self.store.fill(self.digest, len(BODY))
        self.assertFalse(again.existing)
        again.fail()

    def test_joinAfterKept(self) -> None:
        """
        A reader that comes after the fill was kept reads the entry.
        """
        fill = self.store.fill(self.digest, len(BODY))
        fill.write(BODY)
        self.assertTrue(self.successResultOf(fill.finish()))
        client, resource = self.follow(fill)
        self.assertEqual(client.body(), BODY)
        self.assertEqual(resource.outcomes, [len(BODY)])

    def test_unknownSizeReservedAsItComes(self) -> None:
        """
        A fill without a length reserves room as its bytes arrive, and is
        not kept once they cannot fit; its readers still get them all.
        """
        self.store.maxSize = len(BODY) // 2
        fill = self.store.fill(self.digest, None)
        self.assertTrue(fill.keeping)
        client, _ = self.follow(fill)
        fill.write(BODY[: len(BODY) // 4])
        self.assertTrue(fill.keeping)
        fill.write(BODY[len(BODY) // 4 :])
        self.assertFalse(fill.keeping)
        self.assertFalse(self.successResultOf(fill.finish()))
        self.assertEqual(client.body(), BODY)
        self.assertEqual(self.temporaryFiles(), [])
        self.assertEqual(self.store._reserved, {})

    def test_readerWaitsWithoutPolling(self) -> None:
        """
        A reader that has caught up schedules nothing: it waits for the next
        write.
        """
        fill = self.store.fill(self.digest, len(BODY))
        client, _ = self.follow(fill)
        fill.write(BODY[:10])
        self.assertEqual(client.body(), BODY[:10])
        self.assertEqual(
            self.store.index._reactor.getDelayedCalls(),
            [self.store.index._flusher.call],
        )
        fill.write(BODY[10:20])
        self.assertEqual(client.body(), BODY[:20])
        fill.fail()

    def test_badDigestFailsReaders(self) -> None:
        """
        Bytes that do not match the digest are not kept, and readers lose
        their connection without the last byte: never a whole wrong body.
        """
        wrong = b"x" + BODY[1:]
        fill = self.store.fill(self.digest, len(BODY))
        client, resource = self.follow(fill)
        fill.write(wrong)
        self.assertFalse(self.successResultOf(fill.finish()))
        self.assertEqual(client.body(), wrong[:-1])
        self.assertTrue(client.transport.disconnecting)
        resource.failure().trap(SourceFailed)
        self.assertIsNone(self.successResultOf(self.store.lookup(self.digest)))
        self.assertEqual(self.temporaryFiles(), [])

    def test_shortBodyNotKept(self) -> None:
        """
        An upstream body that ends before its length is not kept.
        """
        fill = self.store.fill(self.digest, len(BODY))
        client, resource = self.follow(fill)
        fill.write(BODY[:-5])
        self.assertFalse(self.successResultOf(fill.finish()))
        resource.failure().trap(SourceFailed)
        self.assertIsNone(self.successResultOf(self.store.lookup(self.digest)))

    def test_longBodyNotKept(self) -> None:
        """
        An upstream that sends more than its length fails the fill.
        """
        fill = self.store.fill(self.digest, len(BODY))
        fill.write(BODY + b"extra")
        self.assertFalse(self.successResultOf(fill.finish()))
        self.assertEqual(self.temporaryFiles(), [])

    def test_upstreamBreaks(self) -> None:
        """
        When the upstream breaks off, the partial file goes and readers
        that are behind fail; a later fill starts afresh.
        """
        fill = self.store.fill(self.digest, len(BODY))
        client, resource = self.follow(fill)
        fill.write(BODY[:100])
        fill.fail(ConnectionError("gone"))
        self.assertFalse(self.successResultOf(fill.done()))
        resource.failure().trap(SourceFailed)
        self.assertEqual(client.body(), BODY[:100])
        self.assertEqual(self.temporaryFiles(), [])
        self.assertFalse(self.store.fill(self.digest, len(BODY)).existing)

    def test_downloadGoesOnWhenClientsDrop(self) -> None:
        """
        Readers that disconnect do not stop the fill.
        """
        fill = self.store.fill(self.digest, len(BODY))
        client, resource = self.follow(fill)
        fill.write(BODY[:100])
        client.body()
        client.disconnect()
        self.assertEqual(resource.outcomes, [100])
        fill.write(BODY[100:])
        self.assertTrue(self.successResultOf(fill.finish()))

    def test_slowReaderBounded(self) -> None:
        """
        A reader that reads slowly holds at most one read in its transport
        beyond what the transport takes; the fill runs ahead into the file.
        """
        body = os.urandom(8 * MiB)
        digest = digestOf(body)
        fill = self.store.fill(digest, len(body))
        resource = ServeResource(fill.serveTo, len(body))
        client = Client(resource, limit=64 * 1024)
        for offset in range(0, len(body), MiB):
            fill.write(body[offset : offset + MiB])
        self.assertTrue(self.successResultOf(fill.finish()))
        while client.transport.drain():
            pass
        self.assertEqual(client.body(), body)
        self.assertLessEqual(client.transport.most, 64 * 1024 + FOLLOW_READ_SIZE + 1024)

    def test_rangeFromPartialFile(self) -> None:
        """
        A range is answered from the file as soon as its bytes are there.
        """
        fill = self.store.fill(self.digest, len(BODY))
        client, resource = self.follow(fill, range=(100, 199))
        fill.write(BODY[:150])
        self.assertEqual(client.body(), BODY[100:150])
        fill.write(BODY[150:300])
        self.assertEqual(client.body(), BODY[100:200])
        self.assertEqual(resource.outcomes, [100])
        fill.fail()

    def test_lowDiskStreamsWithoutKeeping(self) -> None:
        """
        With less than C{minFree} left, a fill is not kept and writes no
        file, but still streams to its readers from memory.
        """
        self.store.minFree = 10 * MiB
        self.disk.free = 10 * MiB
        fill = self.store.fill(self.digest, len(BODY))
        self.assertFalse(fill.keeping)
        client, resource = self.follow(fill)
        fill.write(BODY[:500])
        self.assertEqual(self.temporaryFiles(), [])
        fill.write(BODY[500:])
        self.assertFalse(self.successResultOf(fill.finish()))
        self.assertEqual(client.body(), BODY)
        self.assertIsNone(self.successResultOf(self.store.lookup(self.digest)))

    def test_lowDiskReaderFallingBehind(self) -> None:
        """
        Without a file, a reader more than L{MEMORY_WINDOW} behind fails
        rather than holding the download in memory.
        """
        self.disk.free = 0
        self.store.minFree = 1
        body = os.urandom(MEMORY_WINDOW + 2 * MiB)
        fill = self.store.fill(digestOf(body), len(body))
        resource = ServeResource(fill.serveTo, len(body))
        client = Client(resource, limit=1024)
        for offset in range(0, len(body), MiB):
            fill.write(body[offset : offset + MiB])
        while client.transport.drain():
            pass
        resource.failure().trap(SourceFailed)
        self.assertLess(len(client.body()), len(body))

    def test_joinable(self) -> None:
        """
        A new reader may join a fill while every byte can still reach it:
        one on disk, and once checked while it is kept; one held in memory
        only until the start leaves the window; never a failed one, nor one
        checked and not kept (its bytes are gone).
        """
        onDisk = self.store.fill(self.digest, len(BODY))
        onDisk.write(BODY)
        self.assertTrue(onDisk.joinable)
        self.assertTrue(self.successResultOf(onDisk.finish()))
        self.assertTrue(onDisk.joinable)

        broken = self.store.fill(digestOf(b"broken"), 100)
        broken.write(b"x" * 10)
        broken.fail()
        self.assertFalse(broken.joinable)

        self.disk.free = 0
        self.store.minFree = 1
        body = os.urandom(MEMORY_WINDOW + 2 * MiB)
        inMemory = self.store.fill(digestOf(body), len(body))
        inMemory.write(body[:MiB])
        self.assertTrue(inMemory.joinable)
        for offset in range(MiB, len(body), MiB):
            inMemory.write(body[offset : offset + MiB])
        self.assertFalse(inMemory.joinable)
        self.assertFalse(self.successResultOf(inMemory.finish()))
        self.assertFalse(inMemory.joinable)

    def test_tooBigStreamsWithoutKeeping(self) -> None:
        """
        A blob bigger than the whole cache streams through and is not kept.
        """
        self.store.maxSize = len(BODY) - 1
        fill = self.store.fill(self.digest, len(BODY))
        self.assertFalse(fill.keeping)
        client, _ = self.follow(fill)
        fill.write(BODY)
        self.assertFalse(self.successResultOf(fill.finish()))
        self.assertEqual(client.body(), BODY)
        self.assertEqual(self.temporaryFiles(), [])

    def test_crashLeavesNoEntry(self) -> None:
        """
        A fill cut off by a crash leaves only a temporary file, which the
        next start removes: no entry looks complete.
        """
        fill = self.store.fill(self.digest, len(BODY))
        fill.write(BODY[:-1])
        self.assertEqual(len(self.temporaryFiles()), 1)
        # The process dies: its descriptor (and the lock on it) goes.
        temporary = fill._download._temporary
        assert temporary is not None
        os.close(temporary[1])
        store = makeStore(self, directory=self.store.root)
        self.assertEqual(os.listdir(os.path.join(store.root, "tmp")), [])
        self.assertIsNone(self.successResultOf(store.lookup(self.digest)))

    def test_secondProcessLeavesRunningFillsAlone(self) -> None:
        """
        A store opened on the same directory while a fill runs (as
        C{regproxy cache verify} beside the daemon) keeps its file: the fill
        is still kept.
        """
        fill = self.store.fill(self.digest, len(BODY))
        fill.write(BODY[:100])
        makeStore(self, directory=self.store.root)
        self.assertEqual(len(self.temporaryFiles()), 1)
        fill.write(BODY[100:])
        self.assertTrue(self.successResultOf(fill.finish()))

    def test_linkWhenKept(self) -> None:
        """
        L{Fill.link} links the digest once it is kept, and not if it is not.
        """
        fill = self.store.fill(self.digest, len(BODY))
        fill.link("up", "lib/app")
        fill.write(BODY)
        self.successResultOf(fill.finish())
        index = self.store.index
        self.assertTrue(
            self.successResultOf(index.isLinked("up", "lib/app", self.digest))
        )
        other = digestOf(b"other")
        fill = self.store.fill(other, 5)
        fill.link("up", "lib/app")
        fill.write(b"wrong")
        self.successResultOf(fill.finish())
        self.assertFalse(self.successResultOf(index.isLinked("up", "lib/app", other)))

    def test_badDigestRefused(self) -> None:
        """
        Only well-formed digests name files.
        """
        for digest in (
            "sha256:../../etc/passwd",
            "md5:" + "a" * 32,
            "sha256:" + "A" * 64,
        ):
            self.assertRaises(ValueError, self.store.fill, digest, 1)


class DiskFailureTests(SynchronousTestCase):
    """
    A fill on a disk that takes less than asked, or nothing (full, failing).
    """

    def setUp(self) -> None:
        self.disk = Disk()
        self.store = makeStore(self, maxSize=1024 * MiB, disk=self.disk)
        self.digest = digestOf(BODY)
        self.events: list[dict] = []
        observer = cast(ILogObserver, self.events.append)
        globalLogPublisher.addObserver(observer)
        self.addCleanup(globalLogPublisher.removeObserver, observer)

    def temporaryFiles(self) -> list[str]:
        return os.listdir(os.path.join(self.store.root, "tmp"))

    def test_shortWritesCompleted(self) -> None:
        """
        A disk that takes only part of each write still gets every byte:
        the entry is whole and kept.
        """
        realWrite = os.write
        self.patch(files.os, "write", lambda fd, data: realWrite(fd, data[:1000]))
        fill = self.store.fill(self.digest, len(BODY))
        resource = ServeResource(fill.serveTo, len(BODY))
        client = Client(resource)
        fill.write(BODY[:5000])
        fill.write(BODY[5000:])
        self.assertTrue(self.successResultOf(fill.finish()))
        self.assertEqual(client.body(), BODY)
        self.assertEqual(self.successResultOf(self.store.read(self.digest)), BODY)

    def test_fullDiskGivesUpCleanly(self) -> None:
        """
        A write the disk refuses (C{ENOSPC}) ends the fill cleanly: not
        kept, its file removed, its reader's answer cut short, one line
        logged, and the store goes on with the next fill.
        """
        fill = self.store.fill(self.digest, len(BODY))
        resource = ServeResource(fill.serveTo, len(BODY))
        client = Client(resource)
        fill.write(BODY[:1000])
        self.assertEqual(len(self.temporaryFiles()), 1)
        # The temporary file's descriptor now goes to a full disk.
        full = os.open("/dev/full", os.O_WRONLY)
        os.dup2(full, fill._download._temporary[1])  # type: ignore[index]
        os.close(full)
        fill.write(BODY[1000:2000])
        self.assertTrue(fill.failed)
        self.assertFalse(self.successResultOf(fill.finish()))
        resource.failure().trap(SourceFailed)
        self.assertTrue(client.transport.disconnecting)
        self.assertEqual(client.body(), BODY[:1000])
        self.assertEqual(self.temporaryFiles(), [])
        [line] = [formatEvent(e) for e in self.events if "disk" in formatEvent(e)]
        self.assertEqual(
            line,
            f"Gave up the cache fill of {self.digest} after 1000B: "
            "the cache disk failed (No space left on device)",
        )
        self.assertEqual(keep(self.store, b"next"), digestOf(b"next"))

    def test_minFreeCountsRunningFills(self) -> None:
        """
        The free space a fill needs left counts what the running fills have
        reserved and not yet written: two fills that each fit alone but not
        together are not both kept.
        """
        self.store.minFree = 10 * MiB
        self.disk.free = 100 * MiB
        first = self.store.fill(digestOf(b"first"), 60 * MiB)
        self.assertTrue(first.keeping)
        second = self.store.fill(digestOf(b"second"), 40 * MiB)
        self.assertFalse(second.keeping)
        first.write(b"x" * MiB)
        self.disk.free -= MiB
        third = self.store.fill(digestOf(b"third"), 30 * MiB)
        self.assertTrue(third.keeping)
        for each in (first, second, third):
            each.fail()
