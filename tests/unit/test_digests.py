"""
Tests for L{regproxy.resolve.digests}: where a digest lives for a name, in
memory, in SQLite shared by instances, and layered.
"""

from __future__ import annotations

import os
import sqlite3
import threading

from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase, TestCase
from zope.interface.verify import verifyObject

from regproxy.resolve.digests import (
    IDigestLocations,
    LayeredDigestLocations,
    MemoryDigestLocations,
    SeveralDigestLocations,
    SQLiteDigestLocations,
    ThreadRunner,
    runNow,
)

DIGESTS = ["sha256:" + c * 64 for c in "abc"]


class CountingBack(MemoryDigestLocations):
    """
    A back that counts what is asked of it.
    """

    def __init__(self) -> None:
        super().__init__()
        self.finds = 0

    def find(self, name: str, digest: str) -> Deferred[str | None]:
        self.finds += 1
        return super().find(name, digest)


class DigestLocationsTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.path = os.path.join(self.mktemp(), "digests.sqlite3")
        os.makedirs(os.path.dirname(self.path))

    def sqlite(self) -> SQLiteDigestLocations:
        locations = SQLiteDigestLocations(self.path, runNow, self.clock)
        self.addCleanup(locations.close)
        return locations

    def test_interfaces(self) -> None:
        for locations in (
            MemoryDigestLocations(),
            self.sqlite(),
            LayeredDigestLocations(MemoryDigestLocations(), MemoryDigestLocations()),
        ):
            self.assertTrue(verifyObject(IDigestLocations, locations))

    def test_memory(self) -> None:
        """
        What is remembered for a name is found for that name only, and the
        oldest goes first beyond the bound.
        """
        locations = MemoryDigestLocations(maxSize=2)
        self.successResultOf(locations.remember("a/b", DIGESTS, "v2/x"))
        self.assertIsNone(self.successResultOf(locations.find("a/b", DIGESTS[0])))
        self.assertEqual(
            self.successResultOf(locations.find("a/b", DIGESTS[2])), "v2/x"
        )
        self.assertIsNone(self.successResultOf(locations.find("a/c", DIGESTS[2])))

    def test_sharedBetweenInstances(self) -> None:
        """
        What one instance remembers, another on the same file finds, and a
        later answer replaces an earlier one.
        """
        one, two = self.sqlite(), self.sqlite()
        self.successResultOf(one.remember("a/b", DIGESTS, "v2/x"))
        self.assertEqual(self.successResultOf(two.find("a/b", DIGESTS[1])), "v2/x")
        self.assertIsNone(self.successResultOf(two.find("a/c", DIGESTS[1])))
        self.successResultOf(two.remember("a/b", DIGESTS[:1], "v2/y"))
        self.assertEqual(self.successResultOf(one.find("a/b", DIGESTS[0])), "v2/y")
        self.assertEqual(os.stat(self.path).st_mode & 0o777, 0o600)

    def test_oldRowsDropped(self) -> None:
        """
        Rows not remembered again for a week are dropped on the next write.
        """
        locations = self.sqlite()
        self.successResultOf(locations.remember("a/b", DIGESTS[:1], "v2/x"))
        self.clock.advance(8 * 24 * 3600)
        self.successResultOf(locations.remember("a/b", DIGESTS[1:2], "v2/x"))
        self.assertIsNone(self.successResultOf(locations.find("a/b", DIGESTS[0])))
        self.assertEqual(
            self.successResultOf(locations.find("a/b", DIGESTS[1])), "v2/x"
        )

    def test_brokenDatabase(self) -> None:
        """
        A database that cannot be used costs a miss, never a failed
        request; the failure is logged.
        """
        with open(self.path, "wb") as f:
            f.write(b"not a database" * 100)
        locations = self.sqlite()
        self.assertIsNone(self.successResultOf(locations.remember("a/b", DIGESTS, "r")))
        self.assertIsNone(self.successResultOf(locations.find("a/b", DIGESTS[0])))
        self.assertEqual(len(self.flushLoggedErrors(sqlite3.DatabaseError)), 2)

    def test_layered(self) -> None:
        """
        The front answers what this instance learnt; what only the back
        knows is asked once and then kept in front.
        """
        back = CountingBack()
        layered = LayeredDigestLocations(MemoryDigestLocations(), back)
        self.successResultOf(layered.remember("a/b", DIGESTS[:1], "v2/x"))
        self.assertEqual(self.successResultOf(layered.find("a/b", DIGESTS[0])), "v2/x")
        self.assertEqual(back.finds, 0)
        self.successResultOf(back.remember("a/b", DIGESTS[1:2], "v2/y"))
        for _ in range(2):
            self.assertEqual(
                self.successResultOf(layered.find("a/b", DIGESTS[1])), "v2/y"
            )
        self.assertEqual(back.finds, 1)
        self.assertIsNone(self.successResultOf(layered.find("a/b", DIGESTS[2])))

    def test_layeredWritesBehindOnce(self) -> None:
        """
        Remembering never waits for the back (a slow disk), and the same
        locations told again are written to the back only once per
        C{rewriteAfter} seconds.
        """
        clock = Clock()
        writes: list[tuple[str, tuple[str, ...], str]] = []

        class SlowBack(MemoryDigestLocations):
            def remember(self, name, digests, repository):
                writes.append((name, tuple(digests), repository))
                return Deferred()

        layered = LayeredDigestLocations(
            MemoryDigestLocations(), SlowBack(), clock=clock, rewriteAfter=60.0
        )
        for _ in range(3):
            self.successResultOf(layered.remember("a/b", DIGESTS[:2], "v2/x"))
        self.assertEqual(writes, [("a/b", tuple(DIGESTS[:2]), "v2/x")])
        self.assertEqual(self.successResultOf(layered.find("a/b", DIGESTS[1])), "v2/x")
        self.successResultOf(layered.remember("a/b", DIGESTS[:2], "v2/y"))
        clock.advance(61)
        self.successResultOf(layered.remember("a/b", DIGESTS[:2], "v2/x"))
        self.assertEqual(len(writes), 3)

    def test_several(self) -> None:
        """
        Several backs each remember; a digest is found in the first that
        knows it, in any of them.
        """
        first, second = MemoryDigestLocations(), MemoryDigestLocations()
        several = SeveralDigestLocations((first, second))
        verifyObject(IDigestLocations, several)
        self.successResultOf(several.remember("a/b", DIGESTS[:1], "v2/x"))
        self.assertEqual(first.findNow("a/b", DIGESTS[0]), "v2/x")
        self.assertEqual(second.findNow("a/b", DIGESTS[0]), "v2/x")
        second.rememberNow("a/b", DIGESTS[1:2], "v2/y")
        self.assertEqual(self.successResultOf(several.find("a/b", DIGESTS[1])), "v2/y")
        first.rememberNow("a/b", DIGESTS[1:2], "v2/z")
        self.assertEqual(self.successResultOf(several.find("a/b", DIGESTS[1])), "v2/z")
        self.assertIsNone(self.successResultOf(several.find("a/b", DIGESTS[2])))


class ThreadRunnerTests(TestCase):
    """
    L{ThreadRunner} with the real reactor: the SQLite work runs on another
    thread, and the pool stops.
    """

    async def test_offReactorThread(self) -> None:
        runner = ThreadRunner(reactor)
        self.addCleanup(runner.stop)
        path = os.path.join(self.mktemp(), "d.sqlite3")
        os.makedirs(os.path.dirname(path))
        locations = SQLiteDigestLocations(path, runner, reactor)
        await locations.remember("a/b", DIGESTS, "v2/x")
        self.assertEqual(await locations.find("a/b", DIGESTS[2]), "v2/x")
        where = await runner(threading.current_thread)
        self.assertIsNot(where, threading.current_thread())
        await runner(locations.close)
