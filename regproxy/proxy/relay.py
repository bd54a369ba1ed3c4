# -*- test-case-name: tests.unit.test_forward -*-
"""
The streaming relay: one client request out to the upstream, one upstream
response back, with backpressure both ways and nothing held whole in memory.

We use Twisted's L{Agent} here rather than treq: treq always decodes gzip,
keeps a shared cookie jar and re-encodes URLs, and a relay must do none of
that.  treq is still what regproxy uses where it is itself a client (the
balena API, upstream token services).
"""

from __future__ import annotations

from typing import Callable, cast

import attrs
from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import (
    IConsumer,
    IProducer,
    IPushProducer,
    IReactorTime,
)
from twisted.internet.protocol import Protocol, connectionDone
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.client import ResponseDone
from twisted.web.http import PotentialDataLoss
from twisted.web.http_headers import Headers
from twisted.web.iweb import UNKNOWN_LENGTH, IAgent, IBodyProducer, IResponse
from twisted.web.server import Request
from zope.interface import implementer

from regproxy.metrics import Metrics
from regproxy.proxy.deadline import (
    IdleWatch,
    UpstreamDeadline,
    abortUpstream,
    readWholeBody,
)
from regproxy.proxy.failures import upstreamHost
from regproxy.server.errors import UpstreamError

# RFC 9110 section 7.6.1, plus the old Proxy-Connection and Keep-Alive.
HOP_BY_HOP = frozenset(
    {
        b"connection",
        b"keep-alive",
        b"proxy-authenticate",
        b"proxy-authorization",
        b"proxy-connection",
        b"te",
        b"trailer",
        b"transfer-encoding",
        b"upgrade",
    }
)

# What a reverse proxy in front of us says about the client: believed only
# from a trusted proxy (regproxy.server.forwarded), never passed upstream.
FORWARDING = frozenset(
    {
        b"forwarded",
        b"x-forwarded-for",
        b"x-forwarded-host",
        b"x-forwarded-port",
        b"x-forwarded-prefix",
        b"x-forwarded-proto",
        b"x-real-ip",
    }
)

# Set by the Agent (Host, Content-Length from the body producer) or answered
# by us (Expect: 100-continue is handled by our own server).
_NOT_FORWARDED_UP = HOP_BY_HOP | FORWARDING | {b"host", b"content-length", b"expect"}

# twisted.web writes its own Date and Server; Content-Length is set from
# the response's length (see relayHeaders).
_NOT_FORWARDED_DOWN = HOP_BY_HOP | {b"content-length", b"date", b"server"}


@implementer(IBodyProducer)
@attrs.frozen
class BytesProducer:
    """
    A small body already in memory (a token request's form).
    """

    body: bytes

    @property
    def length(self) -> int:
        return len(self.body)

    def startProducing(self, consumer: IConsumer) -> Deferred[None]:
        consumer.write(self.body)
        return succeed(None)

    def pauseProducing(self) -> None:
        pass

    def resumeProducing(self) -> None:
        pass

    def stopProducing(self) -> None:
        pass


def _connectionTokens(headers: Headers) -> set[bytes]:
    tokens = set()
    for value in headers.getRawHeaders(b"connection", []):
        for token in value.split(b","):
            token = token.strip().lower()
            if token:
                tokens.add(token)
    return tokens


def forwardedRequestHeaders(incoming: Headers) -> Headers:
    """
    The headers to send upstream: every header the client sent, each
    repeated line kept (docker sends one C{Accept} line per media type),
    less the hop-by-hop ones and those that say who the client is.
    """
    drop = _NOT_FORWARDED_UP | _connectionTokens(incoming)
    outgoing = Headers()
    for name, values in incoming.getAllRawHeaders():
        if name.lower() not in drop:
            outgoing.setRawHeaders(name, list(values))
    return outgoing


def relayHeaders(
    request: Request,
    response: IResponse,
    rewrite: Callable[[bytes, list[bytes]], list[bytes]] | None = None,
) -> None:
    """
    Copy the upstream response's status and end-to-end headers onto
    C{request}.

    The Twisted client moves C{Content-Length} into C{response.length}
    (except for HEAD, where it stays a header), so we put it back from
    there: a HEAD on a manifest keeps the upstream's length and digest.

    @param rewrite: Called with each header name (lower case) and its
        values; returns the values to send (an empty list drops the header).
    """
    request.setResponseCode(response.code, response.phrase or None)
    drop = _NOT_FORWARDED_DOWN | _connectionTokens(response.headers)
    for name, values in response.headers.getAllRawHeaders():
        lowered = name.lower()
        if lowered in drop:
            if lowered == b"content-length" and request.method == b"HEAD":
                request.responseHeaders.setRawHeaders(name, list(values)[-1:])
            continue
        values = list(values)
        if rewrite is not None:
            values = rewrite(lowered, values)
        if values:
            request.responseHeaders.setRawHeaders(name, values)
    if request.method != b"HEAD" and response.length is not UNKNOWN_LENGTH:
        request.responseHeaders.setRawHeaders(
            b"Content-Length", [b"%d" % (response.length,)]
        )


# Twisted reads 64 KiB per recv and sends at most 128 KiB per send; a layer
# relayed 1 MiB at a time costs a sixteenth of the Python calls and an
# eighth of the send calls per byte (bench/bench_forward.py, 1 GiB blob:
# 0.62 -> 1.48 GB/s).  Memory stays bounded: one read is in flight per
# relayed body, and the client's transport pauses the upstream as before.
RELAY_READ_SIZE = 1024 * 1024


def _readLarger(transport: object) -> None:
    """
    Let the upstream connection under C{transport} (the HTTP client's
    producer proxy) read up to L{RELAY_READ_SIZE} at a time.
    """
    underlying = getattr(transport, "_producer", None)
    if underlying is not None and hasattr(underlying, "bufferSize"):
        underlying.bufferSize = RELAY_READ_SIZE


def _sendLarger(transport: object) -> None:
    """
    Let the client's TCP connection hand the kernel up to
    L{RELAY_READ_SIZE} per C{send} (Twisted's default is 128 KiB), so a
    1 MiB read goes out in one call instead of eight.
    """
    if transport is not None and hasattr(transport, "SEND_LIMIT"):
        transport.SEND_LIMIT = RELAY_READ_SIZE


@implementer(IBodyProducer)
class _WatchedBody:
    """
    An upload that holds off the response timeout while it moves: each
    piece the upstream takes restarts the deadline, so a long upload is never
    cut short, and one the upstream stops reading times out.
    """

    def __init__(self, body: IBodyProducer, deadline: UpstreamDeadline) -> None:
        self._body = body
        self._deadline = deadline
        self.length = body.length

    def startProducing(self, consumer: IConsumer) -> Deferred[None]:
        self._consumer = consumer
        return self._body.startProducing(cast(IConsumer, self))

    def write(self, data: bytes) -> None:
        self._deadline.reset()
        self._consumer.write(data)

    def registerProducer(self, producer: IProducer, streaming: bool) -> None:
        self._consumer.registerProducer(producer, streaming)

    def unregisterProducer(self) -> None:
        self._consumer.unregisterProducer()

    def pauseProducing(self) -> None:
        self._body.pauseProducing()

    def resumeProducing(self) -> None:
        self._body.resumeProducing()

    def stopProducing(self) -> None:
        self._body.stopProducing()


@implementer(IPushProducer)
class _BodyRelay(Protocol):
    """
    Writes an upstream response body to the client, as the producer of the
    client's request: when the client reads slowly, the upstream socket is
    paused.

    An upstream silent for C{timeout} seconds while we wait on it is
    dropped, and so is the client's connection, which then sees a truncated
    body and can retry.  A client that paused the upstream in that time
    gives the upstream another C{timeout} (a stall is then found within
    twice the timeout).
    """

    _log = Logger()

    def __init__(
        self,
        request: Request,
        done: Deferred[bool],
        clock: IReactorTime,
        timeout: float,
        host: str = "-",
        stalled: Callable[[], None] = lambda: None,
    ) -> None:
        self._request = request
        self._done = done
        self._clock = clock
        self._timeout = timeout
        self._host = host
        self._stalled = stalled
        self._clientGone = False
        self._paused = self._pausedLately = False
        self._watch: IdleWatch | None = None

    def connectionMade(self) -> None:
        _readLarger(self.transport)
        _sendLarger(getattr(self._request.channel, "transport", None))
        self._watch = IdleWatch(self._clock, self._timeout, self._idle)
        self._request.registerProducer(self, True)

    def dataReceived(self, data: bytes) -> None:
        if not self._clientGone:
            cast(IdleWatch, self._watch).moved()
            self._request.write(data)

    # IPushProducer, for the client's connection.

    # A fast client pauses and resumes us once or more per piece: no timer
    # work here, only a note that _idle reads.

    def pauseProducing(self) -> None:
        self._paused = self._pausedLately = True
        cast(IPushProducer, self.transport).pauseProducing()

    def resumeProducing(self) -> None:
        self._paused = False
        cast(IPushProducer, self.transport).resumeProducing()

    def stopProducing(self) -> None:
        self.clientGone()

    def _idle(self) -> bool:
        if self._clientGone:
            # The client left and the upstream has not closed since we
            # asked it to (a TLS close waits for the silent peer): drop it.
            abortUpstream(self.transport)
            self._finish(False)
            return False
        if self._paused or self._pausedLately:
            # The client held the upstream back, not the upstream us: give
            # it the whole timeout again.
            self._pausedLately = False
            return True
        self._log.warn(
            "{host} sent no body data for {timeout}s after {sent}B; "
            "closed the client connection",
            host=self._host,
            timeout=self._timeout,
            sent=self._request.sentLength,
        )
        self._request.upstreamFailure = UpstreamError(  # type: ignore[attr-defined]
            "timeout", self._host, "the body stalled"
        )
        self._stalled()
        self._clientGone = True
        self._request.unregisterProducer()
        abortUpstream(self.transport)
        self._finish(False)
        return False

    def clientGone(self) -> None:
        """
        The client disconnected: stop reading from the upstream, which
        closes that connection instead of returning it to the pool.
        """
        if not self._clientGone:
            self._clientGone = True
            if self.transport is not None:
                # deliverBody connects us to a TransportProxyProducer.
                cast(IPushProducer, self.transport).stopProducing()

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        complete = bool(reason.check(ResponseDone, PotentialDataLoss))
        if not self._clientGone:
            self._clientGone = True
            self._request.unregisterProducer()
        self._finish(complete)

    def _finish(self, complete: bool) -> None:
        if self._watch is not None:
            self._watch.stop()
        if not self._done.called:
            self._done.callback(complete)


@attrs.define
class Forwarder:
    """
    Sends requests upstream and streams the responses back.

    @ivar agent: Speaks HTTP to the upstream; a pooled L{Agent} in
        production, a L{RequestTraversalAgent} or similar in tests.
    @ivar clock: For the timeouts.
    @ivar responseTimeout: Seconds to wait for response headers once the
        request is sent, for each piece of an upload, and for each piece
        of a response body.
    @ivar metrics: Counts response timeouts (the agent, cancelled, cannot
        tell them from a client going away).
    """

    agent: IAgent
    clock: IReactorTime
    responseTimeout: float = 60.0
    metrics: Metrics = attrs.field(factory=Metrics)

    _log = Logger()

    async def send(
        self,
        request: Request,
        method: bytes,
        url: bytes,
        headers: Headers,
        body: IBodyProducer | None,
    ) -> IResponse:
        """
        Send one request upstream and wait for its response headers.

        The upstream request is cancelled when the client disconnects
        first.

        @raise UpstreamError: When the upstream could not be reached or
            gave no response headers in time (cause C{timeout}).
        @raise CancelledError: When the client went away.
        """
        deadline = UpstreamDeadline(self.clock, self.responseTimeout, url)
        if body is not None:
            body = _WatchedBody(body, deadline)
        sending = self.agent.request(method, url, headers, body)
        gone = request.notifyFinish()
        gone.addErrback(lambda _: sending.cancel())
        try:
            return await deadline.wait(sending)
        except UpstreamError:
            if deadline.expired:
                self.metrics.upstreamErrors.labels("timeout").inc()
            raise

    def bodyStalled(self) -> None:
        """
        An upstream body went silent for the response timeout: counted as
        a timeout, as a wait for headers that ran out is.
        """
        self.metrics.upstreamErrors.labels("timeout").inc()

    async def readBody(self, response: IResponse) -> bytes:
        """
        The whole body of C{response} (a manifest, an error), which must
        come within the response timeout.

        @raise UpstreamError: When it did not (cause C{timeout}) or the
            upstream broke off.
        """
        url = getattr(getattr(response, "request", None), "absoluteURI", None)
        deadline = UpstreamDeadline(self.clock, self.responseTimeout, url or b"")
        return await deadline.wait(readWholeBody(response))

    async def relayBody(self, request: Request, response: IResponse) -> bool:
        """
        Stream C{response}'s body to the client and finish the request.

        @return: Whether the whole body was relayed; when it was not (the
            upstream or the client broke off, or the upstream was silent
            for the response timeout), the client connection is closed so
            the client sees a truncated response, never a short one that
            looks complete.
        """
        if request.method == b"HEAD" or response.length == 0:
            request.finish()
            return True
        done: Deferred[bool] = Deferred()
        sent = getattr(response, "request", None)
        host = upstreamHost(getattr(sent, "absoluteURI", None) or b"")
        relay = _BodyRelay(
            request, done, self.clock, self.responseTimeout, host, self.bodyStalled
        )
        clientGone = []

        def onClientGone(reason: Failure) -> None:
            clientGone.append(True)
            relay.clientGone()

        request.notifyFinish().addErrback(onClientGone)
        response.deliverBody(relay)
        complete = await done
        if clientGone:
            return False
        if complete:
            request.finish()
        else:
            request.loseConnection()
        return complete
