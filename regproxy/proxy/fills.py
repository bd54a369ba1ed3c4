# -*- test-case-name: tests.integration.test_cache -*-
"""
The one upstream download of a digest, as the cache's policy sees it:
clients that ask while it starts wait for it (L{RunningFill}), and the
upstream body is written into the store's L{Fill} at the upstream's pace
(L{FillWriter}), under the relay's response timeout.  At shutdown the
fills running get the drain's grace to finish (L{RunningFills}).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, cast

from twisted.internet.defer import Deferred, DeferredList, succeed
from twisted.internet.interfaces import IPushProducer, IReactorTime
from twisted.internet.protocol import Protocol, connectionDone
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.client import ResponseDone
from twisted.web.http import PotentialDataLoss

from regproxy.cache.store import Fill
from regproxy.cache.streaming import SourceFailed
from regproxy.proxy.deadline import IdleWatch, abortUpstream
from regproxy.proxy.relay import _readLarger


class RunningFill:
    """
    A fill being started, or running: clients that ask meanwhile wait for
    it to start, then follow it.
    """

    def __init__(self) -> None:
        self._waiting: list[Deferred[tuple[Fill, int] | None]] = []
        self.running: tuple[Fill, int] | None = None
        self.writer: FillWriter | None = None
        self.kept: bool | None = None
        self._ended: list[Deferred[bool]] = []
        self._started = False
        # The upstream is done with: its body is all in and being checked
        # and kept (at shutdown such a fill is let finish), or it was cut or
        # failed.  New readers still join while its bytes are there (see
        # Fill.joinable).
        self.ending = False

    def wait(self) -> Deferred[tuple[Fill, int] | None]:
        if self._started:
            return succeed(self.running)
        waiting: Deferred[tuple[Fill, int] | None] = Deferred()
        self._waiting.append(waiting)
        return waiting

    def started(self, running: tuple[Fill, int] | None) -> None:
        self.running, self._started = running, True
        waiting, self._waiting = self._waiting, []
        for each in waiting:
            each.callback(running)

    def whenEnded(self) -> Deferred[bool]:
        """
        Fires with whether the fill was kept, once the cache has recorded
        it (so the index may close after).
        """
        if self.kept is not None:
            return succeed(self.kept)
        ended: Deferred[bool] = Deferred()
        self._ended.append(ended)
        return ended

    def ended(self, kept: bool) -> None:
        self.kept = kept
        ended, self._ended = self._ended, []
        for each in ended:
            each.callback(kept)


class RunningFills(dict[str, RunningFill]):
    """
    The fills running, by digest.
    """

    _log = Logger()

    def settled(self, ending: bool = False) -> Deferred[list[tuple[bool, bool]]]:
        """
        Fires once every fill running now has ended (kept or not).

        @param ending: Only those whose upstream body is all in (being
            checked and kept), as at shutdown: they end in a moment.
        """
        return self._settled(
            [running for running in self.values() if running.ending or not ending]
        )

    def _settled(self, fills: list[RunningFill]) -> Deferred[list[tuple[bool, bool]]]:
        return DeferredList(
            [each.whenEnded() for each in fills if each.running is not None],
            consumeErrors=True,
        )

    def drain(self, clock: IReactorTime, grace: float) -> Deferred[None]:
        """
        At shutdown: let the fills running finish (a download half done is
        worth keeping), for at most C{grace} seconds; then cut the rest, and
        wait no longer (not even for one being flushed: a disk that hangs
        must not hang the shutdown, and its temporary file is no entry).
        """
        over: Deferred[None] = Deferred()

        def graceEnds() -> None:
            self.cut(f"after {grace:g}s")
            over.callback(None)

        timer = clock.callLater(grace, graceEnds)

        async def drained() -> None:
            waited: set[RunningFill] = set()
            # Fills that start meanwhile (their headers were on the way)
            # are waited for too, each once.
            while timer.active():
                fills = [each for each in self.values() if each not in waited]
                fills = [each for each in fills if each.running is not None]
                if not fills:
                    timer.cancel()
                    return
                waited.update(fills)
                settled: Deferred[Any] = self._settled(fills)
                await DeferredList(
                    [settled, over], fireOnOneCallback=True, consumeErrors=True
                )

        return Deferred.fromCoroutine(drained())

    def cut(self, why: str) -> None:
        """
        Give up every fill still downloading now (at shutdown).
        """
        writers = [
            running.writer
            for running in self.values()
            if running.writer is not None and not running.ending
        ]
        if writers:
            self._log.warn(
                "Stopping: cutting {count} cache fills still downloading {why}",
                count=len(writers),
                why=why,
            )
        for writer in writers:
            writer.cut(SourceFailed(f"regproxy stopped {why}"))


class FillWriter(Protocol):
    """
    Writes an upstream body into a L{Fill}, at the upstream's pace (or the
    disk's, if slower): readers follow the file, so a slow or departed
    client never holds it up.

    An upstream silent for C{timeout} seconds (the relay's response
    timeout) is dropped and the fill fails: its readers' connections are
    closed, so they see a truncated body, and the next request for the
    digest starts a new fill.  C{stalled} is told first (the request that
    started the fill says so on its log line).
    """

    _log = Logger()

    def __init__(
        self,
        fill: Fill,
        running: RunningFill,
        done: Callable[[bool], None],
        clock: IReactorTime,
        timeout: float,
        digest: str = "-",
        host: str = "-",
        stalled: Callable[[], None] = lambda: None,
    ) -> None:
        self._fill = fill
        self._stalled = stalled
        self._running = running
        self._done = done
        self._clock = clock
        self._timeout = timeout
        self._digest = digest
        self._host = host
        self._received = 0
        self._ended = False
        self._diskBehind = False
        self._watch: IdleWatch | None = None
        running.writer = self

    def connectionMade(self) -> None:
        # As the relay does: 1 MiB per read, a sixteenth of the calls.
        _readLarger(self.transport)
        self._watch = IdleWatch(self._clock, self._timeout, self._idle)

    def dataReceived(self, data: bytes) -> None:
        if self._ended:
            return
        self._received += len(data)
        if self._watch is not None:
            self._watch.moved()
        self._fill.write(data)
        if self._fill.failed:
            # The bytes cannot be held (the cache's disk failed, or the
            # upstream sent more than it said): reading on is no use.
            self._giveUp()
            return
        caughtUp = self._fill.belowBacklog()
        if not caughtUp.called:
            # The disk is behind: read no more until it catches up.
            self._diskBehind = True
            self._producer().pauseProducing()
            caughtUp.addCallback(self._resume)

    def _producer(self) -> IPushProducer:
        """
        The body's transport: the HTTP client's producer proxy.
        """
        return cast(IPushProducer, self.transport)

    def _resume(self, _: object) -> None:
        self._diskBehind = False
        if self._ended:
            return
        if self._watch is not None:
            self._watch.moved()
        self._producer().resumeProducing()

    def _idle(self) -> bool:
        if self._diskBehind:
            # Our own disk held the upstream back, not the upstream us.
            return True
        self._log.warn(
            "{host} sent no body data for {timeout}s after {received}B; "
            "cut the cache fill of {digest}",
            host=self._host,
            timeout=self._timeout,
            received=self._received,
            digest=self._digest,
        )
        self._stalled()
        self.cut(SourceFailed("the upstream body stalled"))
        return False

    def cut(self, reason: Exception) -> None:
        """
        Give the download up now (it stalled, or regproxy is stopping):
        drop the upstream connection, fail the fill, close its readers.
        """
        if not self._ended:
            self._fill.fail(reason)
            self._giveUp()

    def _stop(self) -> None:
        self._ended = True
        self._running.ending = True
        if self._watch is not None:
            self._watch.stop()

    def _giveUp(self) -> None:
        # The connection closes a moment after the abort; connectionLost
        # then finds the fill ended.
        self._stop()
        abortUpstream(self.transport)
        self._finished(False)

    def _finished(self, kept: bool) -> None:
        self._done(kept)
        self._running.ended(kept)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        if self._ended:
            return
        self._stop()
        if reason.check(ResponseDone, PotentialDataLoss):
            self._fill.finish().addCallbacks(self._finished, self._broken)
        else:
            self._fill.fail(reason)
            self._finished(False)

    def _broken(self, failure: Failure) -> None:
        FillWriter._log.failure("Could not keep a fill", failure=failure)
        self._finished(False)
