# -*- test-case-name: tests.integration.test_forward_open -*-
"""
Serve a test's own HTTP site (regproxy, the fake balena API, the Zot-like
front) on a free loopback port, and at cleanup wait for its connections
to close before it stops listening: trial fails a test that leaves a
connection or a port behind.

    port = serveOnLoopback(self, site, reactor, afterIdle=pool.closeCachedConnections)
"""

from __future__ import annotations

from collections.abc import Callable

from twisted.internet.defer import CancelledError, Deferred, TimeoutError, succeed
from twisted.protocols.policies import WrappingFactory

IDLE_TIMEOUT = 10.0


class TrackingFactory(WrappingFactory):
    """
    Know the open connections, to wait for the last one at cleanup.
    """

    noisy = False

    def __init__(self, wrappedFactory) -> None:
        super().__init__(wrappedFactory)
        self._idle: list[Deferred[None]] = []

    def unregisterProtocol(self, p) -> None:
        super().unregisterProtocol(p)
        if not self.protocols:
            waiting, self._idle = self._idle, []
            for d in waiting:
                if not d.called:  # a timed-out wait was cancelled
                    d.callback(None)

    def whenIdle(self) -> Deferred[None]:
        """
        Fire when no connection is open.
        """
        if not self.protocols:
            return succeed(None)
        d: Deferred[None] = Deferred()
        self._idle.append(d)
        return d

    def abortAll(self) -> None:
        for protocol in list(self.protocols):
            protocol.transport.abortConnection()


def serveOnLoopback(
    testCase,
    site,
    reactor,
    grace: float = IDLE_TIMEOUT,
    beforeWait: Callable[[], object] | None = None,
    afterIdle: Callable[[], object] | None = None,
) -> int:
    """
    Listen for C{site} on a free loopback port until C{testCase} ends.

    Cleanup calls C{beforeWait}, waits up to C{grace} seconds for the
    clients' connections to close (a client that keeps one open must not
    hang cleanup, so it is aborted then; with C{grace=0} at once), calls
    C{afterIdle} (which may return a L{Deferred}) and stops listening.

    @return: The port number.
    """
    factory = TrackingFactory(site)
    port = reactor.listenTCP(0, factory, interface="127.0.0.1")

    def stop() -> Deferred:
        if beforeWait is not None:
            beforeWait()
        if grace == 0:
            factory.abortAll()
            d = factory.whenIdle()
        else:

            def abortStragglers(failure):
                failure.trap(TimeoutError, CancelledError)
                factory.abortAll()
                return factory.whenIdle()

            d = factory.whenIdle()
            d.addTimeout(grace, reactor)
            d.addErrback(abortStragglers)
        if afterIdle is not None:
            d.addCallback(lambda _: afterIdle())
        d.addCallback(lambda _: port.stopListening())
        return d

    testCase.addCleanup(stop)
    return port.getHost().port
