# -*- test-case-name: tests.integration.test_cache -*-
"""
The one upstream download of a digest, as the cache's policy sees it:
clients that ask while it starts wait for it (L{RunningFill}), and the
upstream body is written into the store's L{Fill} at the upstream's pace
(L{FillWriter}).
"""

from __future__ import annotations

from collections.abc import Callable

from twisted.internet.defer import Deferred, succeed
from twisted.internet.protocol import Protocol, connectionDone
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.client import ResponseDone
from twisted.web.http import PotentialDataLoss

from regproxy.cache.store import Fill
from regproxy.proxy.relay import _readLarger


class RunningFill:
    """
    A fill being started, or running: clients that ask meanwhile wait for
    it to start, then follow it.
    """

    def __init__(self) -> None:
        self._waiting: list[Deferred[tuple[Fill, int] | None]] = []
        self.running: tuple[Fill, int] | None = None
        self._started = False
        # The upstream body is all in: the fill is being checked and kept,
        # and a new reader must wait for the entry instead of joining.
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


class FillWriter(Protocol):
    """
    Writes an upstream body into a L{Fill}, at the upstream's pace: readers
    follow the file, so a slow or departed client never holds it up.
    """

    _log = Logger()

    def __init__(
        self, fill: Fill, running: RunningFill, done: Callable[[bool], None]
    ) -> None:
        self._fill = fill
        self._running = running
        self._done = done

    def connectionMade(self) -> None:
        # As the relay does: 1 MiB per read, a sixteenth of the calls.
        _readLarger(self.transport)

    def dataReceived(self, data: bytes) -> None:
        self._fill.write(data)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self._running.ending = True
        if reason.check(ResponseDone, PotentialDataLoss):
            self._fill.finish().addCallbacks(self._done, self._broken)
        else:
            self._fill.fail(reason)
            self._done(False)

    def _broken(self, failure: Failure) -> None:
        FillWriter._log.failure("Could not keep a fill", failure=failure)
        self._done(False)
