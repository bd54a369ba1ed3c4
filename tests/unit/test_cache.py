"""
Tests for L{regproxy.resolve.cache}.
"""

from __future__ import annotations

from functools import partial
from typing import Any, cast

from treq.testing import StubTreq
from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.task import Clock
from twisted.logger import ILogObserver, LogLevel, globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase
from zope.interface.verify import verifyObject

from regproxy.names.reference import ImageReference
from regproxy.resolve.balena import BalenaResolver
from regproxy.resolve.cache import CachingResolver, CoalescingCache
from regproxy.resolve.interfaces import (
    Credentials,
    IResolver,
    NameUnknown,
    Resolution,
    ResolverUnavailable,
)
from regproxy.testing.fakebalena import ALICE_KEY, FakeBalenaAPI

ANONYMOUS = Credentials.anonymous()
ALICE = Credentials.fromClient(ALICE_KEY)


class Calls:
    """
    A computation whose results the test decides, counting calls.
    """

    def __init__(self) -> None:
        self.pending: list[Deferred] = []

    def __call__(self) -> Deferred:
        d: Deferred = Deferred()
        self.pending.append(d)
        return d


class CoalescingCacheTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.cache = CoalescingCache(self.clock, ttl=300, missTTL=10, staleAge=3600)
        self.calls = Calls()

    def test_concurrentMissesShareOneCall(self) -> None:
        waiters = [self.cache.get("k", self.calls) for _ in range(100)]
        self.assertEqual(len(self.calls.pending), 1)
        self.calls.pending[0].callback("answer")
        self.assertEqual([self.successResultOf(w) for w in waiters], ["answer"] * 100)

    def test_cancelOneWaiter(self) -> None:
        """
        A waiter that gives up gets L{CancelledError}; the call goes on and
        the others get the answer.
        """
        first = self.cache.get("k", self.calls)
        second = self.cache.get("k", self.calls)
        first.cancel()
        self.failureResultOf(first, CancelledError)
        self.assertFalse(self.calls.pending[0].called)
        self.calls.pending[0].callback("answer")
        self.assertEqual(self.successResultOf(second), "answer")

    def test_answersKeptForTTL(self) -> None:
        self.cache.get("k", self.calls)
        self.calls.pending[0].callback("answer")
        self.clock.advance(299)
        self.assertEqual(
            self.successResultOf(self.cache.get("k", self.calls)), "answer"
        )
        self.assertEqual(len(self.calls.pending), 1)
        self.clock.advance(1)
        d = self.cache.get("k", self.calls)
        self.assertEqual(len(self.calls.pending), 2)
        self.calls.pending[1].callback("new")
        self.assertEqual(self.successResultOf(d), "new")

    def test_missesKeptBriefly(self) -> None:
        self.cache.get("k", self.calls).addErrback(lambda f: None)
        self.calls.pending[0].errback(NameUnknown("no fleet acme/x"))
        self.clock.advance(9)
        self.failureResultOf(self.cache.get("k", self.calls), NameUnknown)
        self.assertEqual(len(self.calls.pending), 1)
        self.clock.advance(1)
        self.cache.get("k", self.calls)
        self.assertEqual(len(self.calls.pending), 2)

    def test_missTTLBounded(self) -> None:
        self.assertRaises(ValueError, CoalescingCache, self.clock, missTTL=31)

    def test_transportErrorsNeverKept(self) -> None:
        d = self.cache.get("k", self.calls)
        self.calls.pending[0].errback(ResolverUnavailable("down", 503))
        self.failureResultOf(d, ResolverUnavailable)
        self.cache.get("k", self.calls)
        self.assertEqual(len(self.calls.pending), 2)

    def test_staleServedWhenDown(self) -> None:
        """
        Once expired, an answer is still served while the source is down,
        up to the stale age, and a warning says so.
        """
        events: list[dict[str, Any]] = []
        observer = cast(ILogObserver, events.append)
        globalLogPublisher.addObserver(observer)
        self.addCleanup(globalLogPublisher.removeObserver, observer)
        self.cache.get("k", self.calls, "acme/app")
        self.calls.pending[0].callback("answer")
        self.clock.advance(3600)
        d = self.cache.get("k", self.calls, "acme/app")
        self.calls.pending[1].errback(ResolverUnavailable("down", 503))
        self.assertEqual(self.successResultOf(d), "answer")
        [warning] = [e for e in events if e.get("log_level") == LogLevel.warn]
        self.assertEqual(warning["label"], "acme/app")
        self.clock.advance(1)
        d = self.cache.get("k", self.calls)
        self.calls.pending[2].errback(ResolverUnavailable("down", 503))
        self.failureResultOf(d, ResolverUnavailable)

    def test_lru(self) -> None:
        cache = CoalescingCache(self.clock, maxSize=2)
        for key in "abc":
            cache.get(key, partial(_fromCoroutine, key))
        self.assertEqual(len(cache), 2)


def _fromCoroutine(v: str) -> Deferred[str]:
    return Deferred.fromCoroutine(_value(v))


async def _value(v: str) -> str:
    return v


class CachingResolverTests(SynchronousTestCase):
    """
    The cache in front of the balena resolver and the fake API.
    """

    def setUp(self) -> None:
        self.api = FakeBalenaAPI()
        self.stub = StubTreq(self.api)
        self.clock = Clock()
        self.resolver = CachingResolver(
            BalenaResolver("https://api.example", self.stub, self.clock),
            self.clock,
        )

    def resolve(self, text: str, credentials: Credentials = ANONYMOUS) -> Deferred:
        d = self.resolver.resolve(ImageReference.parse(text), credentials)
        self.stub.flush()
        return d

    def test_interface(self) -> None:
        self.assertTrue(verifyObject(IResolver, self.resolver))

    def test_hundredConcurrentLookupsOneCall(self) -> None:
        """
        100 lookups of one name while the API is slow make one call; when it
        times out, all 100 fail with 504 and the failure is not kept.
        """
        self.api.stop("hang")
        waiters = [
            self.resolver.resolve(
                ImageReference.parse("acme/public-app:1.2.3"), ANONYMOUS
            )
            for _ in range(100)
        ]
        self.stub.flush()
        self.assertEqual(len(self.api.apiCalls), 1)
        self.clock.advance(30)
        for waiter in waiters:
            self.assertEqual(
                self.failureResultOf(waiter, ResolverUnavailable).value.status, 504
            )
        self.api.start()
        self.successResultOf(self.resolve("acme/public-app:1.2.3"))
        self.assertEqual(len(self.api.apiCalls), 2)

    def test_hundredConcurrentLookupsAnswered(self) -> None:
        waiters = [
            self.resolver.resolve(
                ImageReference.parse("acme/public-app:1.2.3"), ANONYMOUS
            )
            for _ in range(100)
        ]
        self.stub.flush()
        results = {self.successResultOf(w) for w in waiters}
        self.assertEqual(len(results), 1)
        self.assertIsInstance(results.pop(), Resolution)
        self.assertEqual(len(self.api.apiCalls), 1)

    def test_keyedByAsker(self) -> None:
        """
        A private fleet unknown to an anonymous client stays unknown to it
        after a member resolved it, and the other way round.
        """
        self.successResultOf(self.resolve("acme/private-app", ALICE))
        self.failureResultOf(self.resolve("acme/private-app"), NameUnknown)
        self.successResultOf(self.resolve("acme/private-app", ALICE))
        self.assertEqual(len(self.api.apiCalls), 2)

    def test_apiDownWarmCache(self) -> None:
        """
        With the API down, a name resolved before still resolves.
        """
        before = self.successResultOf(self.resolve("acme/public-app/1.2.3"))
        self.clock.advance(600)
        self.api.stop("503")
        self.assertEqual(
            self.successResultOf(self.resolve("acme/public-app/1.2.3")), before
        )
        self.api.stop("drop")
        self.assertEqual(
            self.successResultOf(self.resolve("acme/public-app/1.2.3")), before
        )

    def test_staleAnswerMarked(self) -> None:
        """
        A stale answer says it is stale, and carries the API's failure; a
        fresh one does not, before the outage or after it.
        """
        before = self.successResultOf(self.resolve("acme/public-app/1.2.3"))
        self.assertFalse(before.stale)
        self.clock.advance(600)
        self.api.stop("503")
        stale = self.successResultOf(self.resolve("acme/public-app/1.2.3"))
        self.assertTrue(stale.stale)
        self.assertIsInstance(stale.staleBecause, ResolverUnavailable)
        self.assertEqual(stale.staleBecause.status, 503)
        self.api.start()
        after = self.successResultOf(self.resolve("acme/public-app/1.2.3"))
        self.assertFalse(after.stale)
        self.assertEqual(after, before)

    def test_apiDownColdCache(self) -> None:
        self.api.stop("503")
        error = self.failureResultOf(
            self.resolve("acme/public-app/1.2.3"), ResolverUnavailable
        )
        self.assertEqual(error.value.status, 503)
        self.api.start()
        self.successResultOf(self.resolve("acme/public-app/1.2.3"))

    def test_tagsCached(self) -> None:
        for _ in range(3):
            d = self.resolver.listReleases(ImageReference("acme/public-app"), ANONYMOUS)
            self.stub.flush()
            self.assertIn("2.0.0", self.successResultOf(d))
        self.assertEqual(len(self.api.apiCalls), 1)
