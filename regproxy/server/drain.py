# -*- test-case-name: tests.unit.test_channel -*-
"""
The open connections of a site, so that stopping lets the requests in
flight finish (a download half done is worth finishing) within a grace
period, then cuts what is left.
"""

from __future__ import annotations

from typing import Any, Protocol

from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger


class Drainable(Protocol):
    """
    A connection that can stop after its request in flight.
    """

    def stopAfterRequest(self) -> None:
        """
        Close now if idle, else once the request in flight is answered.
        """

    def abort(self) -> None:
        """
        Close now, whatever it is doing.
        """


class Connections:
    """
    The connections open on a site.
    """

    _log = Logger()

    def __init__(self) -> None:
        self._open: set[Drainable] = set()
        self._empty: list[Deferred[None]] = []
        self.stopping = False

    def __len__(self) -> int:
        return len(self._open)

    def opened(self, connection: Drainable) -> None:
        self._open.add(connection)
        if self.stopping:
            connection.stopAfterRequest()

    def closed(self, connection: Drainable) -> None:
        self._open.discard(connection)
        if not self._open:
            waiting, self._empty = self._empty, []
            for d in waiting:
                d.callback(None)

    def _whenEmpty(self) -> Deferred[None]:
        if not self._open:
            return succeed(None)
        d: Deferred[None] = Deferred()
        self._empty.append(d)
        return d

    def cut(self, why: str) -> None:
        """
        Close every connection now, whatever it is doing.
        """
        if self._open:
            self._log.warn(
                "Stopping: cutting {count} connections still busy {why}",
                count=len(self._open),
                why=why,
            )
        for connection in list(self._open):
            connection.abort()

    def drain(self, clock: IReactorTime, grace: float) -> Deferred[None]:
        """
        Let every connection finish its request in flight, for at most
        C{grace} seconds; then abort the ones still open.

        @return: Fires once every connection is closed.
        """
        self.stopping = True
        started = clock.seconds()
        busy = len(self._open)
        self._log.info(
            "Stopping: no more new connections; waiting up to {grace:g}s for "
            "the requests in flight on {count} open connections",
            count=busy,
            grace=grace,
        )
        for connection in list(self._open):
            connection.stopAfterRequest()
        empty = self._whenEmpty()
        timer = clock.callLater(grace, self.cut, f"after {grace:g}s")

        def finished(result: Any) -> Any:
            if timer.active():
                timer.cancel()
                self._log.info(
                    "Stopping: every request finished after {elapsed:.1f}s",
                    elapsed=clock.seconds() - started,
                )
            return result

        return empty.addBoth(finished)
