# -*- test-case-name: tests.unit.cache.test_sendfile -*-
"""
Serving a hit with C{sendfile(2)}: the kernel moves the file's pages to the
client's socket, and Python touches no byte of the body.

Only for a plain TCP connection (never TLS) and a response whose length is
set (so no chunked framing goes around the body).  Every call happens on
the reactor thread, between reactor turns, so the socket is never written
by anything else meanwhile and never closed under us; the wait for the
socket to drain uses the transport's own producer hand-shake: we tell the
transport its producer is paused and ask it to write, and it resumes us
when the kernel can take more.  A chunk not in the page cache is read on a
thread instead, so a cold disk never blocks the reactor.
"""

from __future__ import annotations

import os

import attrs
from twisted.internet import tcp
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IPushProducer
from twisted.python.failure import Failure
from twisted.web.server import Request
from zope.interface import implementer

from regproxy.cache import files
from regproxy.cache.streaming import SERVE_READ_SIZE, Source, SourceFailed, Streamer
from regproxy.cache.threads import Runner

# At most this much per sendfile call, so one client cannot hold the
# reactor for long; the socket's buffer usually takes less anyway.
SENDFILE_TURN = 4 * 1024 * 1024


def sendfileTransport(request: Request) -> tcp.Connection | None:
    """
    The TCP connection under C{request} when its body can go by
    C{sendfile}, else L{None}.
    """
    transport = getattr(request.channel, "transport", None)
    if not isinstance(transport, tcp.Connection) or getattr(transport, "TLS", False):
        return None
    if not hasattr(os, "sendfile") or request.method == b"HEAD":
        return None
    if not request.responseHeaders.hasHeader(b"content-length"):
        return None
    return transport


def _drained(transport: tcp.Connection) -> bool:
    return not transport._tempDataLen and transport.offset == len(transport.dataBuffer)


@implementer(IPushProducer)
@attrs.define(eq=False)
class SendfileStreamer:
    """
    Sends C{source}'s bytes C{offset} to C{end} (L{None}: to its end,
    whenever that comes) to C{request} over C{transport}; a fill's growing
    file is followed as L{regproxy.cache.streaming.Streamer} follows it.
    """

    _request: Request
    _transport: tcp.Connection
    _source: Source
    _offset: int
    _end: int | None
    _run: Runner
    _fd: int = attrs.field(init=False)
    _gone: bool = attrs.field(init=False, default=False)
    _waiting: Deferred[None] | None = attrs.field(init=False, default=None)

    def __attrs_post_init__(self) -> None:
        fd = self._source.fileno()
        assert fd is not None
        self._fd = fd

    def pauseProducing(self) -> None:
        pass

    def resumeProducing(self) -> None:
        self._wake(None)

    def stopProducing(self) -> None:
        self._clientGone(None)

    def _clientGone(self, reason: Failure | None) -> None:
        self._gone = True
        self._wake(None)

    def _wake(self, _: object) -> None:
        waiting, self._waiting = self._waiting, None
        if waiting is not None:
            waiting.callback(None)

    def _open(self) -> bool:
        return (
            not self._gone
            and bool(self._transport.connected)
            and not (self._transport.disconnecting)
        )

    async def _writable(self) -> None:
        """
        Wait until the transport's buffer is empty and the socket can take
        more (or the client went away).
        """
        waiting: Deferred[None] = Deferred()
        self._waiting = waiting
        self._transport.producerPaused = True
        self._transport.startWriting()
        await waiting

    async def _more(self) -> None:
        """
        Wait for the source to grow (or the client to go away).
        """
        waiting: Deferred[None] = Deferred()
        self._waiting = waiting
        self._source.whenMore().addCallback(self._wake)
        await waiting

    async def _sendCold(self, available: int) -> None:
        """
        Send the next chunk the ordinary way, read on a thread: its pages
        are not in memory, and sendfile would block the reactor on the disk.
        """
        length = min(SERVE_READ_SIZE, available - self._offset)
        data = await self._run(os.pread, self._fd, length, self._offset)
        if len(data) != length:
            raise SourceFailed("the file is shorter than it should be")
        if self._open():
            self._request.write(data)
            self._offset += length

    def _sendSome(self, available: int) -> None:
        count = min(SENDFILE_TURN, available - self._offset)
        try:
            sent = os.sendfile(self._transport.fileno(), self._fd, self._offset, count)
        except BlockingIOError:
            return
        except OSError:
            # The client went away; the reactor will see it too.
            self._gone = True
            return
        if sent == 0:
            raise SourceFailed("the file is shorter than it should be")
        self._offset += sent
        self._request.sentLength += sent
        resetTimeout = getattr(self._request.channel, "resetTimeout", None)
        if resetTimeout is not None:
            resetTimeout()

    def _available(self) -> int | None:
        """
        How far we may send now; L{None} when everything has been sent.
        """
        self._source.check()
        available = self._source.available()
        if self._end is not None:
            available = min(available, self._end)
        if available <= self._offset and self._source.complete():
            if self._end is None or self._offset >= self._end:
                return None
            raise SourceFailed("the bytes end before the range asked for")
        return available

    async def stream(self) -> int:
        """
        Send the bytes; fires with how many were sent.
        """
        start = self._offset
        self._request.notifyFinish().addErrback(self._clientGone)
        self._request.registerProducer(self, True)
        self._request.write(b"")
        try:
            while self._open():
                available = self._available()
                if available is None:
                    break
                if available <= self._offset:
                    await self._more()
                elif not _drained(self._transport):
                    await self._writable()
                elif files.readCached(self._fd, 1, available - 1) is None:
                    await self._sendCold(available)
                else:
                    self._sendSome(available)
                    if self._end is None or self._offset < self._end:
                        await self._writable()
        finally:
            self._source.release()
            if not getattr(self._request, "_disconnected", False):
                self._request.unregisterProducer()
        return self._offset - start


async def stream(
    request: Request,
    source: Source,
    start: int,
    end: int | None,
    run: Runner,
    zeroCopy: bool = True,
    readSize: int = SERVE_READ_SIZE,
) -> int:
    """
    Send C{source} to C{request} by sendfile where the connection allows,
    else by reads of C{readSize}; fires with the bytes sent.
    """
    transport = sendfileTransport(request) if zeroCopy else None
    if transport is not None and source.fileno() is not None:
        return await SendfileStreamer(
            request, transport, source, start, end, run
        ).stream()
    return await Streamer(request, source, start, end, readSize).stream()
