"""
Tests for L{regproxy.proxy.offlinenames}: resolver answers and digest
locations kept in the LAN cache's index, found again by a new cache on the
same directory, per asker, and never holding an API key.
"""

from __future__ import annotations

import os

from twisted.internet.testing import MemoryReactorClock
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.client import Agent
from zope.interface.verify import verifyObject

from regproxy.names.reference import ImageReference
from regproxy.proxy.caching import CachingForwarder
from regproxy.proxy.offlinenames import IndexDigestLocations, IndexResolutions
from regproxy.resolve.digests import IDigestLocations
from regproxy.resolve.interfaces import Credentials, Resolution
from regproxy.resolve.remembered import IResolutionMemory, Remembered
from tests.unit.cache.helpers import makeStore

REFERENCE = ImageReference("acme/app", tag="1.2.3")
ANSWER = Resolution("v2/" + "a" * 32, "latest", commit="c" * 40, version="1.2.3")
KEY = "alice-api-key-very-secret"
DIGEST = "sha256:" + "d" * 64


class IndexResolutionsTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.directory = self.mktemp()
        os.makedirs(self.directory)
        self.reactor = MemoryReactorClock()
        self.reactor.advance(5000)

    def openCache(self) -> CachingForwarder:
        store = makeStore(self, directory=self.directory, reactor=self.reactor)
        cache = CachingForwarder(
            Agent(self.reactor), self.reactor, opener=lambda: (store, store.index)
        )
        cache.open()
        return cache

    def restart(self, cache: CachingForwarder) -> CachingForwarder:
        self.successResultOf(cache.close())
        return self.openCache()

    def test_interfaces(self) -> None:
        cache = self.openCache()
        verifyObject(IResolutionMemory, IndexResolutions(cache, 3600))
        verifyObject(IDigestLocations, IndexDigestLocations(cache))

    def test_resolutionAcrossRestart(self) -> None:
        """
        An answer remembered for an asker is recalled by a new cache on
        the same directory, with when it was resolved; not for another.
        """
        alice = Credentials.fromClient(KEY)
        cache = self.openCache()
        memory = IndexResolutions(cache, 3600)
        self.successResultOf(memory.remember(REFERENCE, alice, ANSWER, 4990.0))
        memory = IndexResolutions(self.restart(cache), 3600)
        self.assertEqual(
            self.successResultOf(memory.recall(REFERENCE, alice)),
            Remembered(ANSWER, 4990.0),
        )
        for other in (
            Credentials.anonymous(),
            Credentials.fromClient("bob-key"),
            Credentials.fromServer(KEY),
        ):
            self.assertIsNone(self.successResultOf(memory.recall(REFERENCE, other)))

    def test_forgottenAcrossRestart(self) -> None:
        """
        An answer forgotten (the API refused the asker since) is not
        recalled, by this cache or a restarted one; others' answers stay.
        """
        alice, bob = Credentials.fromClient(KEY), Credentials.fromClient("bob-key")
        cache = self.openCache()
        memory = IndexResolutions(cache, 3600)
        for who in (alice, bob):
            self.successResultOf(memory.remember(REFERENCE, who, ANSWER, 4990.0))
        self.successResultOf(memory.forget(REFERENCE, alice))
        self.assertIsNone(self.successResultOf(memory.recall(REFERENCE, alice)))
        memory = IndexResolutions(self.restart(cache), 3600)
        self.assertIsNone(self.successResultOf(memory.recall(REFERENCE, alice)))
        self.assertEqual(
            self.successResultOf(memory.recall(REFERENCE, bob)),
            Remembered(ANSWER, 4990.0),
        )

    def test_noKeyInClear(self) -> None:
        """
        The index never holds the API key the answer was asked with.
        """
        cache = self.openCache()
        memory = IndexResolutions(cache, 3600)
        self.successResultOf(
            memory.remember(REFERENCE, Credentials.fromClient(KEY), ANSWER, 4990.0)
        )
        self.successResultOf(cache.close())
        for name in os.listdir(self.directory):
            path = os.path.join(self.directory, name)
            if os.path.isfile(path):
                with open(path, "rb") as f:
                    self.assertNotIn(KEY.encode(), f.read(), name)

    def test_closed(self) -> None:
        """
        Before the cache opens (and after it closes) nothing is remembered
        and nothing recalled.
        """
        store = makeStore(self, directory=self.directory, reactor=self.reactor)
        cache = CachingForwarder(
            Agent(self.reactor), self.reactor, opener=lambda: (store, store.index)
        )
        memory = IndexResolutions(cache, 3600)
        locations = IndexDigestLocations(cache)
        self.successResultOf(memory.remember(REFERENCE, Credentials(), ANSWER, 1.0))
        self.successResultOf(locations.remember("acme/app", [DIGEST], "v2/r"))
        cache.open()
        self.assertIsNone(self.successResultOf(memory.recall(REFERENCE, Credentials())))
        self.assertIsNone(self.successResultOf(locations.find("acme/app", DIGEST)))

    def test_garbledRow(self) -> None:
        """
        A row that does not read as a resolution is no answer.
        """
        cache = self.openCache()
        memory = IndexResolutions(cache, 3600)
        self.successResultOf(memory.remember(REFERENCE, Credentials(), ANSWER, 1.0))
        cache.index._db.connection.execute("UPDATE resolutions SET answer = 'nope'")
        self.assertIsNone(self.successResultOf(memory.recall(REFERENCE, Credentials())))

    def test_locationsAcrossRestart(self) -> None:
        cache = self.openCache()
        locations = IndexDigestLocations(cache)
        self.successResultOf(locations.remember("acme/app", [DIGEST], "v2/r"))
        locations = IndexDigestLocations(self.restart(cache))
        self.assertEqual(
            self.successResultOf(locations.find("acme/app", DIGEST)), "v2/r"
        )
        self.assertIsNone(self.successResultOf(locations.find("acme/other", DIGEST)))
