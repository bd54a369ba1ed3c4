# -*- test-case-name: tests.unit.test_streaming -*-
"""
The request class every regproxy request is: its body is handed over as it
arrives (L{RequestBodyStream}) instead of being spooled to a temporary file,
so an upload streams to the upstream with backpressure.
"""

from __future__ import annotations

from io import BytesIO
from typing import IO, cast

from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.interfaces import IConsumer, IPushProducer
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.iweb import UNKNOWN_LENGTH, IBodyProducer
from twisted.web.server import Request
from zope.interface import implementer

from regproxy.server.errors import UpstreamError, errorBody

# How much of a request body we hold before the upstream is ready for it.
_UPLOAD_BUFFER = 256 * 1024

#: The largest body read whole before the request is handled (anything
#: outside C{/v2/}, whose bodies stream): a C{/token} form is a few hundred
#: bytes.
MAX_BODY = 64 * 1024


@implementer(IBodyProducer)
class RequestBodyStream:
    """
    A client's request body, produced to the upstream as it arrives.

    The client's transport is paused while the upstream cannot take more
    (its transport calls L{pauseProducing}) and while the body waits for
    the upstream connection, so an upload never piles up in memory.
    """

    def __init__(self, length: int | object, clientTransport: IPushProducer) -> None:
        self.length = length
        self._client = clientTransport
        self._consumer: IConsumer | None = None
        self._pending: list[bytes] = []
        self._pendingSize = 0
        self._complete = False
        self._failed: Failure | None = None
        self._discarding = False
        self._clientPaused = False
        self._done: Deferred[None] | None = None
        self.received = 0

    # Called by the request as the client sends.

    def dataReceived(self, data: bytes) -> None:
        self.received += len(data)
        if self._discarding:
            return
        if self._consumer is not None:
            self._consumer.write(data)
            return
        self._pending.append(data)
        self._pendingSize += len(data)
        if self._pendingSize > _UPLOAD_BUFFER:
            self._pauseClient()

    def allDataReceived(self) -> None:
        self._complete = True
        if self._consumer is not None and self._done is not None:
            done, self._done = self._done, None
            done.callback(None)

    def connectionLost(self, reason: Failure) -> None:
        """
        The client went away before the body was complete.
        """
        if self._complete:
            return
        self._failed = reason
        if self._done is not None:
            done, self._done = self._done, None
            done.errback(reason)

    def discard(self) -> None:
        """
        Nobody wants the rest of the body (the response went out early):
        read and drop it so the connection can be closed cleanly.
        """
        self._discarding = True
        self._pending = []
        self._resumeClient()

    @property
    def complete(self) -> bool:
        return self._complete

    # IBodyProducer, called by the upstream connection.

    def startProducing(self, consumer: IConsumer) -> Deferred[None]:
        if self._failed is not None:
            return fail(self._failed)
        self._consumer = consumer
        pending, self._pending, self._pendingSize = self._pending, [], 0
        for chunk in pending:
            consumer.write(chunk)
        self._resumeClient()
        if self._complete:
            return succeed(None)
        self._done = Deferred()
        return self._done

    def pauseProducing(self) -> None:
        self._pauseClient()

    def resumeProducing(self) -> None:
        self._resumeClient()

    def stopProducing(self) -> None:
        # The upstream request was cancelled; the response path reports it.
        self._consumer = None
        self._done = None
        self.discard()

    def _pauseClient(self) -> None:
        if not self._clientPaused:
            self._clientPaused = True
            self._client.pauseProducing()

    def _resumeClient(self) -> None:
        if self._clientPaused:
            self._clientPaused = False
            self._client.resumeProducing()


class StreamingRequest(Request):
    """
    A request whose body is handed over as it arrives instead of being
    written to a temporary file first.

    twisted.web only calls C{process} once the whole body is in; for
    C{/v2/} requests with a body (blob uploads) we dispatch as soon as the
    headers are in, feed L{RequestBodyStream} from C{handleContentChunk}, and
    take the channel's end-of-body call as the end of the stream.
    """

    _log = Logger()
    bodyStream: RequestBodyStream | None = None
    # For the log line (regproxy.server.site), set where each is known: the
    # upstream's status, the account (a name, never a secret), the name the
    # client asked for, the upstream repository it became, and the LAN
    # cache's outcome (hit, miss, coalesced, stale).
    upstreamStatus: int | None = None
    accountName: str | None = None
    imageName: str | None = None
    upstreamRepository: str | None = None
    cacheOutcome: str | None = None
    # The answer stands on a remembered resolution (the resolver could not
    # be asked): the log says stale whatever the cache did.
    staleAnswer: bool = False
    # Why the upstream could not answer, when it could not: for the log
    # line and the upstream error count (its cause is a metric label).
    upstreamFailure: UpstreamError | None = None
    # twisted.web's stubs type this as None (its class default); it is the
    # body file once the headers are in.
    content: IO[bytes]  # type: ignore[assignment]
    #: The client's connection closed before the response was finished.
    clientGone = False
    _dispatchedEarly = False
    _finishWhenBodyDone = False
    _bodyRefused = False
    _bodyRead = 0

    def gotLength(self, length: int | None) -> None:
        channel = self.channel
        path = getattr(channel, "_path", b"")
        if not path.startswith(b"/v2/"):
            if length is not None and length > MAX_BODY:
                self._refuseBody()
                return
            super().gotLength(length)
            return
        if length == 0:
            super().gotLength(length)
            return
        self.content = BytesIO()
        # The channel's transport is the client's connection, which
        # HTTPChannel itself pauses and resumes as a push producer.
        self.bodyStream = RequestBodyStream(
            UNKNOWN_LENGTH if length is None else length,
            cast(IPushProducer, channel.transport),
        )
        self._dispatchedEarly = True
        Request.requestReceived(self, channel._command, path, channel._version)

    def _refuseBody(self) -> None:
        """
        Answer a body too large to read whole with a 413 now, and close the
        connection instead of reading the rest: twisted.web would otherwise
        hold all of it before the resource could say no.
        """
        self._bodyRefused = True
        path = getattr(self.channel, "_path", b"").split(b"?", 1)[0]
        self._log.info(
            "{method} {path} -> 413: body over {limit} bytes, not read",
            method=getattr(self.channel, "_command", b"").decode("latin-1"),
            path=path.decode("latin-1")[:300],
            limit=MAX_BODY,
        )
        # Nor invite the client to send it (HTTPChannel answers an
        # "Expect: 100-continue" once the headers are in).
        self.requestHeaders.removeHeader(b"expect")
        body = errorBody(
            "SIZE_INVALID", f"the request body is larger than {MAX_BODY} bytes"
        )
        transport = self.channel.transport
        assert transport is not None  # the headers just came through it
        transport.write(
            b"HTTP/1.1 413 Payload Too Large\r\n"
            b"Content-Type: application/json; charset=utf-8\r\n"
            b"Content-Length: %d\r\nConnection: close\r\n\r\n" % (len(body),) + body
        )
        self.channel.loseConnection()

    def handleContentChunk(self, data: bytes) -> None:
        if self._bodyRefused:
            return
        if self.bodyStream is not None:
            self.bodyStream.dataReceived(data)
            return
        self._bodyRead += len(data)
        if self._bodyRead > MAX_BODY:
            self._refuseBody()
            return
        super().handleContentChunk(data)

    def requestReceived(self, command: bytes, path: bytes, version: bytes) -> None:
        if self._bodyRefused:
            return
        if not self._dispatchedEarly:
            super().requestReceived(command, path, version)
            return
        assert self.bodyStream is not None
        self.bodyStream.allDataReceived()
        if self._finishWhenBodyDone:
            self._finishWhenBodyDone = False
            super().finish()

    def finish(self) -> None:
        if self.bodyStream is not None and not self.bodyStream.complete:
            # The channel must read the rest of this body before it can
            # parse another request; finish once it has, but send the
            # response now.
            if not self.startedWriting:
                self.write(b"")
            self._finishWhenBodyDone = True
            self.bodyStream.discard()
            return
        super().finish()

    def connectionLost(self, reason: Failure) -> None:
        self.clientGone = True
        if self.bodyStream is not None:
            self.bodyStream.connectionLost(reason)
        super().connectionLost(reason)


def firstArgument(request: Request, name: bytes) -> str | None:
    """
    The first value of query or form argument C{name}, if it is UTF-8.
    """
    # Twisted's stubs type args as None (its class default); it is a dict
    # on a request being served.
    values = request.args.get(name)  # type: ignore[attr-defined]
    if not values:
        return None
    try:
        return values[0].decode("utf-8")
    except UnicodeDecodeError:
        return None
