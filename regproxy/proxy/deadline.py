# -*- test-case-name: tests.unit.test_upstreamfailures -*-
"""
One wait on an upstream, bounded by C{--response-timeout}, that ends in
the answer or in an L{UpstreamError} saying why not.

A timeout cancels the request; the Twisted HTTP client may then fail it
with a closed connection instead of the cancellation (it aborts the
connection to cancel).  We remember that it was our timer, so the client
is told 504 "did not answer in time", never 502 "closed the connection".
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar, cast

from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.error import AlreadyCalled, AlreadyCancelled
from twisted.internet.interfaces import IDelayedCall, IPushProducer, IReactorTime
from twisted.internet.protocol import Protocol, connectionDone
from twisted.python.failure import Failure
from twisted.web.client import ResponseDone
from twisted.web.http import PotentialDataLoss
from twisted.web.iweb import IResponse

from regproxy.proxy.failures import asUpstreamError, upstreamHost
from regproxy.server.errors import UpstreamError

T = TypeVar("T")


def abortUpstream(transport: object) -> None:
    """
    Drop the upstream connection under a response body's C{transport}
    (the HTTP client's producer proxy) at once: closing a TLS connection
    politely waits for a peer that may be the one that went silent.
    """
    underlying = getattr(transport, "_producer", None)
    abort = getattr(underlying, "abortConnection", None) or getattr(
        transport, "abortConnection", None
    )
    if abort is not None:
        abort()
    elif transport is not None:
        cast(IPushProducer, transport).stopProducing()


class IdleWatch:
    """
    The response timeout on an upstream body that is being read: the relay
    to a client and the cache's fill both use it, so a silent upstream
    holds neither for longer than C{timeout} seconds.

    C{onIdle} is called once nothing arrived for C{timeout} seconds; it
    returns whether to wait another C{timeout} (when our side held the
    upstream back, not the upstream us).
    """

    def __init__(
        self, clock: IReactorTime, timeout: float, onIdle: Callable[[], bool]
    ) -> None:
        self._clock = clock
        self._timeout = timeout
        self._onIdle = onIdle
        self._timer: IDelayedCall | None = clock.callLater(timeout, self._idle)

    def moved(self) -> None:
        """
        A piece of the body arrived: start the wait again.
        """
        if self._timer is not None and self._timer.active():
            self._timer.reset(self._timeout)

    def stop(self) -> None:
        """
        The body ended (or was given up): no more waiting.
        """
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None

    def _idle(self) -> None:
        self._timer = None
        if self._onIdle():
            self._timer = self._clock.callLater(self._timeout, self._idle)


class _WholeBody(Protocol):
    def __init__(self, done: Deferred[bytes]) -> None:
        self._done = done
        self._pieces: list[bytes] = []

    def dataReceived(self, data: bytes) -> None:
        self._pieces.append(data)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        if self._done.called:
            return  # cancelled
        if reason.check(ResponseDone, PotentialDataLoss):
            self._done.callback(b"".join(self._pieces))
        else:
            self._done.errback(reason)


def readWholeBody(response: IResponse) -> Deferred[bytes]:
    """
    Like L{twisted.web.client.readBody}, but safe to cancel on a real
    connection: C{readBody}'s own Deferred fails a second time (an
    C{AlreadyCalledError}) when the connection it aborted closes later.
    A body that ends with its connection (no length) is complete.
    """
    done: Deferred[bytes] = Deferred(lambda _: abortUpstream(protocol.transport))
    protocol = _WholeBody(done)
    response.deliverBody(protocol)
    return done


class UpstreamDeadline:
    """
    A timer for one upstream request to C{url}, started when made.

    @param what: What the upstream is, for the error's message.
    """

    def __init__(
        self,
        clock: IReactorTime,
        timeout: float,
        url: bytes | str,
        what: str | None = None,
    ) -> None:
        self._timeout = timeout
        self._url = url
        self._what = what
        self._waiting: Deferred[object] | None = None
        self.expired = False
        self._timer = clock.callLater(timeout, self._expire)

    def reset(self) -> None:
        """
        The request made progress (the upstream took a piece of an
        upload): start the wait again.
        """
        try:
            self._timer.reset(self._timeout)
        except (AlreadyCalled, AlreadyCancelled):
            pass

    def _expire(self) -> None:
        self.expired = True
        if self._waiting is not None:
            self._waiting.cancel()

    async def wait(self, waiting: Deferred[T]) -> T:
        """
        The result of C{waiting}, cancelled when the deadline passes.

        @raise UpstreamError: When the upstream could not be reached,
            failed, or did not answer in time (cause C{timeout}).
        @raise CancelledError: When someone else cancelled C{waiting} (the
            client went away).
        """
        self._waiting = waiting  # type: ignore[assignment]
        try:
            return await waiting
        except Exception as e:
            if self.expired:
                raise UpstreamError(
                    "timeout", upstreamHost(self._url), "no answer in time", self._what
                ) from None
            error = (
                None
                if isinstance(e, CancelledError)
                else asUpstreamError(e, self._url, self._what)
            )
            if error is None:
                raise
            raise error from None
        finally:
            self._waiting = None
            if self._timer.active():
                self._timer.cancel()
