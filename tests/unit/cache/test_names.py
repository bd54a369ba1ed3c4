"""
Tests for what the cache index keeps for pulling fleet names offline
(L{regproxy.cache.database}, L{regproxy.cache.index}): resolver answers per
name and asker, and digest locations per name, across a restart, from an
index made before these tables existed, and against a model.
"""

from __future__ import annotations

import os
import sqlite3

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet.testing import MemoryReactorClock
from twisted.trial.unittest import SynchronousTestCase

from regproxy.cache.database import IndexDatabase, connect
from regproxy.cache.index import CacheIndex
from tests.unit.cache.helpers import openIndex

DIGEST = "sha256:" + "a" * 64
OTHER = "sha256:" + "b" * 64
DAY = 86400.0

# The index as it was before it kept anything for fleet names.
_OLD_SCHEMA = """
CREATE TABLE entries (digest TEXT PRIMARY KEY, size INTEGER NOT NULL,
    usedAt REAL NOT NULL);
CREATE TABLE links (upstream TEXT NOT NULL, repository TEXT NOT NULL,
    digest TEXT NOT NULL, PRIMARY KEY (upstream, repository, digest));
INSERT INTO entries VALUES ('sha256:aaaa', 3, 1.0);
"""


class NamesIndexTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.directory = self.mktemp()
        os.makedirs(self.directory)
        self.reactor = MemoryReactorClock()
        self.reactor.advance(1000)
        self.index = openIndex(self, self.directory, self.reactor)

    def reopen(self) -> CacheIndex:
        self.successResultOf(self.index.close())
        self.index = openIndex(self, self.directory, self.reactor)
        return self.index

    def test_resolutionSurvivesRestart(self) -> None:
        """
        A resolution is found after a restart, with when it was resolved,
        for the same name and asker only.
        """
        self.successResultOf(
            self.index.setResolution("acme/app:1.2.3", "fp-a", '{"x":1}', 990.0, DAY)
        )
        index = self.reopen()
        self.assertEqual(
            self.successResultOf(index.getResolution("acme/app:1.2.3", "fp-a")),
            ('{"x":1}', 990.0),
        )
        self.assertIsNone(
            self.successResultOf(index.getResolution("acme/app:1.2.3", "fp-b"))
        )
        self.assertIsNone(
            self.successResultOf(index.getResolution("acme/app:2.0.0", "fp-a"))
        )

    def test_resolutionReplaced(self) -> None:
        """
        The newest answer for a name and asker replaces the one before.
        """
        self.successResultOf(self.index.setResolution("n", "a", "old", 990.0, DAY))
        self.successResultOf(self.index.setResolution("n", "a", "new", 995.0, DAY))
        self.assertEqual(
            self.successResultOf(self.index.getResolution("n", "a")), ("new", 995.0)
        )

    def test_oldResolutionsDropped(self) -> None:
        """
        Answers older than the stale window go when another is written.
        """
        self.successResultOf(self.index.setResolution("n", "a", "x", 1000.0, DAY))
        self.reactor.advance(DAY + 1)
        self.successResultOf(
            self.index.setResolution("m", "a", "y", self.reactor.seconds(), DAY)
        )
        self.assertIsNone(self.successResultOf(self.index.getResolution("n", "a")))
        self.assertIsNotNone(self.successResultOf(self.index.getResolution("m", "a")))

    def test_locationsSurviveRestart(self) -> None:
        """
        Where a name's digests live is found after a restart.
        """
        self.successResultOf(
            self.index.setLocations("acme/app", [DIGEST, OTHER], "v2/abc", DAY)
        )
        index = self.reopen()
        self.assertEqual(
            self.successResultOf(index.getLocation("acme/app", DIGEST)), "v2/abc"
        )
        self.assertEqual(
            self.successResultOf(index.getLocation("acme/app", OTHER)), "v2/abc"
        )
        self.assertIsNone(self.successResultOf(index.getLocation("acme/other", DIGEST)))

    def test_oldLocationsDropped(self) -> None:
        self.successResultOf(self.index.setLocations("n", [DIGEST], "v2/old", DAY))
        self.reactor.advance(DAY + 1)
        self.successResultOf(self.index.setLocations("n", [OTHER], "v2/new", DAY))
        self.assertIsNone(self.successResultOf(self.index.getLocation("n", DIGEST)))
        self.assertEqual(
            self.successResultOf(self.index.getLocation("n", OTHER)), "v2/new"
        )

    def test_olderIndexGainsTables(self) -> None:
        """
        An index written before these tables existed opens, keeps what it
        held, and keeps resolutions and locations from then on.
        """
        path = self.mktemp() + ".sqlite"
        old = sqlite3.connect(path)
        old.executescript(_OLD_SCHEMA)
        old.commit()
        old.close()
        database = IndexDatabase(connect(path))
        self.addCleanup(database.close)
        self.assertEqual(database.entries(), [("sha256:aaaa", 3)])
        database.setResolution(("n", "a"), "x", 5.0, 0.0)
        database.setLocations("n", [DIGEST], "v2/r", 5.0, 0.0)
        self.assertEqual(database.getResolution(("n", "a")), ("x", 5.0))
        self.assertEqual(database.getLocation("n", DIGEST), "v2/r")


NAMES = ["acme/app", "acme/app:1.2.3", "acme/app@" + DIGEST]
ASKERS = ["anonymous-fp", "alice-fp"]
DIGESTS = [DIGEST, OTHER, "sha256:" + "c" * 64]
names = st.sampled_from(NAMES)
askers = st.sampled_from(ASKERS)
digests = st.sampled_from(DIGESTS)
repositories = st.sampled_from(["v2/one", "v2/two"])
operations = st.lists(
    st.one_of(
        st.tuples(st.just("resolve"), names, askers, st.text(max_size=20)),
        st.tuples(
            st.just("locate"), names, st.lists(digests, max_size=3), repositories
        ),
    ),
    max_size=30,
)


class NamesModelTests(SynchronousTestCase):
    @settings(max_examples=60, deadline=None)
    @given(operations)
    def test_lastWordStands(self, steps: list[tuple]) -> None:
        """
        Whatever was written, in any order, each (name, asker) reads back
        its last answer and each (name, digest) its last repository, and
        nothing else reads back anything.
        """
        database = IndexDatabase(connect(":memory:"))
        self.addCleanup(database.close)
        answers: dict[tuple[str, str], tuple[str, float]] = {}
        where: dict[tuple[str, str], str] = {}
        for at, step in enumerate(steps):
            if step[0] == "resolve":
                _, name, asker, answer = step
                database.setResolution((name, asker), answer, float(at), 0.0)
                answers[name, asker] = (answer, float(at))
            else:
                _, name, found, repository = step
                database.setLocations(name, found, repository, float(at), 0.0)
                where.update({(name, digest): repository for digest in found})
        for name in NAMES:
            for asker in ASKERS:
                self.assertEqual(
                    database.getResolution((name, asker)), answers.get((name, asker))
                )
            for digest in DIGESTS:
                self.assertEqual(
                    database.getLocation(name, digest), where.get((name, digest))
                )
