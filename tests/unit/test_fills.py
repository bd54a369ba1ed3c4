"""
Tests for L{regproxy.proxy.fills}: a cache fill is bounded by the relay's
response timeout, and at shutdown the fills running get the grace to finish.
"""

from __future__ import annotations

from typing import Any, cast

from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.logger import ILogObserver, formatEvent, globalLogPublisher
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.client import ResponseDone

from regproxy.cache.streaming import SourceFailed
from regproxy.proxy.fills import FillWriter, RunningFill, RunningFills
from tests.unit.cache.helpers import Client, ServeResource, digestOf, makeStore

BODY = bytes(range(256)) * 4096  # 1 MiB
OTHER = b"another blob" * 1000
HOST = "registry.example:443"


class FillWriterTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.store = makeStore(self)
        self.fills = RunningFills()
        self.events: list[dict[str, Any]] = []
        observer = cast(ILogObserver, self.events.append)
        globalLogPublisher.addObserver(observer)
        self.addCleanup(globalLogPublisher.removeObserver, observer)

    def start(
        self, body: bytes = BODY, timeout: float = 60.0
    ) -> tuple[FillWriter, StringTransport, list[bool], Client, ServeResource]:
        """
        A fill of C{body} from an upstream connection, as
        L{regproxy.proxy.caching.CachingForwarder} starts one, and a client
        reading it.
        """
        digest = digestOf(body)
        fill = self.store.fill(digest, len(body))
        running = self.fills[digest] = RunningFill()
        results: list[bool] = []

        def done(kept: bool) -> None:
            self.fills.pop(digest, None)
            results.append(kept)

        writer = FillWriter(fill, running, done, self.clock, timeout, digest, HOST)
        upstream = StringTransport()
        writer.makeConnection(upstream)
        running.started((fill, len(body)))
        resource = ServeResource(fill.serveTo, len(body))
        return writer, upstream, results, Client(resource), resource

    def lines(self, containing: str) -> list[str]:
        return [formatEvent(e) for e in self.events if containing in formatEvent(e)]

    def test_stalledUpstreamCut(self) -> None:
        """
        An upstream that sends nothing for the response timeout is dropped:
        the fill fails and is not kept, the reader's connection is closed
        after the bytes that came (a truncated answer), one line says so,
        and the next fill of the digest starts afresh.
        """
        writer, upstream, results, client, resource = self.start()
        writer.dataReceived(BODY[:1000])
        self.clock.advance(59)
        self.assertEqual(results, [])
        self.assertFalse(upstream.disconnecting)
        self.clock.advance(1)
        self.assertEqual(results, [False])
        self.assertTrue(upstream.disconnected)
        resource.failure().trap(SourceFailed)
        self.assertTrue(client.transport.disconnecting)
        self.assertEqual(client.body(), BODY[:1000])
        [line] = self.lines("sent no body data")
        self.assertEqual(
            line,
            f"{HOST} sent no body data for 60.0s after 1000B; "
            f"cut the cache fill of {digestOf(BODY)}",
        )
        self.assertEqual(self.fills, {})
        self.assertIsNone(self.successResultOf(self.store.lookup(digestOf(BODY))))
        again = self.store.fill(digestOf(BODY), len(BODY))
        self.assertFalse(again.existing)
        again.fail()

    def test_movingUpstreamNotCut(self) -> None:
        """
        Each piece restarts the wait: a slow upstream that keeps sending is
        never cut, and its fill is kept.
        """
        writer, upstream, results, client, resource = self.start()
        for offset in range(0, len(BODY), len(BODY) // 4):
            self.clock.advance(59)
            writer.dataReceived(BODY[offset : offset + len(BODY) // 4])
        self.clock.advance(59)
        writer.connectionLost(Failure(ResponseDone()))
        self.assertEqual(results, [True])
        self.assertFalse(upstream.disconnecting)
        self.assertEqual(client.body(), BODY)
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.assertEqual(
            self.successResultOf(self.store.lookup(digestOf(BODY))), len(BODY)
        )

    def test_slowDiskPausesUpstream(self) -> None:
        """
        While the disk is more than the backlog behind, the upstream is
        paused (so the reactor never waits on the disk, and memory stays
        bounded) and not taken for stalled; once it catches up the upstream
        resumes, and the fill is kept whole.
        """
        from tests.unit.cache.test_writer import HeldRunner

        held = HeldRunner()
        self.store.run = held
        body = bytes(range(256)) * (4096 * 6)  # 6 MiB
        writer, upstream, results, client, _ = self.start(body)
        piece = len(body) // 6
        for offset in range(0, len(body), piece):
            writer.dataReceived(body[offset : offset + piece])
        self.assertEqual(upstream.producerState, "paused")
        # Not on disk yet: the reader has nothing.
        self.assertEqual(client.body(), b"")
        # However long our disk takes, the upstream is not taken for stalled.
        self.clock.advance(600)
        self.assertEqual(results, [])
        held.runAll()
        self.assertEqual(upstream.producerState, "producing")
        writer.connectionLost(Failure(ResponseDone()))
        held.runAll()
        self.assertEqual(results, [True])
        self.assertEqual(client.body(), body)

    def test_lateCloseAfterCut(self) -> None:
        """
        The upstream connection closing after the fill was cut (as an
        aborted connection does, a moment later) changes nothing.
        """
        writer, _, results, _, _ = self.start()
        self.clock.advance(60)
        writer.dataReceived(BODY[:10])
        writer.connectionLost(Failure(ResponseDone()))
        self.assertEqual(results, [False])

    def test_drainKeepsWhatFinishes(self) -> None:
        """
        At shutdown a fill that finishes within the grace is kept; one
        still downloading after it is cut, its reader's answer truncated.
        """
        writer, _, results, client, _ = self.start()
        slow, slowUpstream, slowResults, slowClient, slowResource = self.start(
            OTHER, timeout=3600.0
        )
        drained = self.fills.drain(self.clock, 30.0)
        writer.dataReceived(BODY)
        self.clock.advance(10)
        writer.connectionLost(Failure(ResponseDone()))
        self.assertEqual(results, [True])
        self.assertEqual(client.body(), BODY)
        self.assertNoResult(drained)
        slow.dataReceived(OTHER[:100])
        self.clock.advance(20)
        self.successResultOf(drained)
        self.assertEqual(slowResults, [False])
        self.assertTrue(slowUpstream.disconnected)
        slowResource.failure().trap(SourceFailed)
        self.assertEqual(slowClient.body(), OTHER[:100])
        self.assertEqual(
            self.lines("Stopping"),
            ["Stopping: cutting 1 cache fills still downloading after 30s"],
        )
        self.assertEqual(
            self.successResultOf(self.store.lookup(digestOf(BODY))), len(BODY)
        )
        self.assertIsNone(self.successResultOf(self.store.lookup(digestOf(OTHER))))

    def flushHangs(self) -> list[bool]:
        """
        Start a fill whose bytes all arrive but whose flush to the disk
        (C{files.keep}) never ends, as on a disk that hangs; its results.
        """
        from tests.unit.cache.test_writer import HeldRunner

        held = HeldRunner()
        self.store.run = held
        writer, _, results, _, _ = self.start()
        writer.dataReceived(BODY)
        held.runAll()
        writer.connectionLost(Failure(ResponseDone()))
        self.assertEqual(len(held.held), 1)
        return results

    def test_drainBoundedByGrace(self) -> None:
        """
        A fill whose bytes are all in but whose flush to the disk hangs does
        not hold the shutdown past the grace.
        """
        results = self.flushHangs()
        drained = self.fills.drain(self.clock, 30.0)
        self.clock.advance(29)
        self.assertNoResult(drained)
        self.clock.advance(1)
        self.successResultOf(drained)
        self.assertEqual(results, [])

    def test_closeBounded(self) -> None:
        """
        The cache's close waits for a fill being flushed, but not for one
        whose disk hangs: after L{CLOSE_WAIT} it closes the index anyway.
        """
        from twisted.internet.testing import MemoryReactorClock
        from twisted.web.client import Agent

        from regproxy.proxy.caching import CLOSE_WAIT, CachingForwarder

        cache = CachingForwarder(
            Agent(MemoryReactorClock()),
            self.clock,
            opener=lambda: (self.store, self.store.index),
            fills=self.fills,
        )
        cache.open()
        self.flushHangs()
        closed = cache.close()
        self.clock.advance(CLOSE_WAIT - 1)
        self.assertNoResult(closed)
        self.clock.advance(1)
        self.successResultOf(closed)
        self.assertFalse(cache.isOpen)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_drainWithNothingRunning(self) -> None:
        """
        With no fill running the drain is over at once, and leaves no timer.
        """
        self.successResultOf(self.fills.drain(self.clock, 30.0))
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_settledOnceRecorded(self) -> None:
        """
        C{settled} fires only after the cache has heard how the fill ended
        (so the index, closed after it at shutdown, records the miss).
        """
        writer, _, results, _, _ = self.start()
        seen: list[list[bool]] = []
        self.fills.settled().addCallback(lambda _: seen.append(list(results)))
        writer.dataReceived(BODY)
        writer.connectionLost(Failure(ResponseDone()))
        self.assertEqual(seen, [[True]])
