# -*- test-case-name: tests.unit.cache.test_direct -*-
"""
Serving cache bytes straight to a plain TCP client's socket, bypassing the
transport's buffer: Python never holds more than one read of the body.

Only for a plain TCP connection (never TLS) and a response whose length is
set (so no chunked framing goes around the body).  Every send happens on
the reactor thread, between reactor turns, once the transport's own buffer
is empty, so the socket is never written by anything else meanwhile and
never closed under us; the wait for the socket to drain uses the
transport's producer hand-shake: we tell the transport its producer is
paused and ask it to write, and it resumes us when the kernel can take
more.  Pages not in the page cache are read on a thread, so a cold disk
never blocks the reactor.

Two ways to move the bytes, by where the client is:

  - to a client on this machine (loopback), a read into one reused buffer
    and a C{send} from it: on loopback no network card takes the pages,
    and this measured 1.3x as fast as C{sendfile(2)} (the kernel then
    copies each page to the reader anyway, one fragment at a time);
  - to a client across a network, C{sendfile(2)}: the kernel hands the
    file's pages to the network card, and Python touches no byte.
"""

from __future__ import annotations

import ipaddress
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

# At most this much per reactor turn, so one client cannot hold the reactor
# for long; the socket's buffer usually takes less anyway.
SEND_TURN = 4 * 1024 * 1024

# The most one copy moves.  Measured on loopback (a 1 GiB hit, in turns with
# the registry): 512 KiB went 1.15-1.2x as fast as 1 MiB, and faster than
# 256 or 384 KiB; the buffer and what the kernel copies it into stay in the
# core's cache.
COPY_SIZE = 512 * 1024


def directTransport(request: Request) -> tcp.Connection | None:
    """
    The TCP connection under C{request} when its body can be sent straight
    to the socket, else L{None}.
    """
    transport = getattr(request.channel, "transport", None)
    if not isinstance(transport, tcp.Connection) or getattr(transport, "TLS", False):
        return None
    if request.method == b"HEAD":
        return None
    if not request.responseHeaders.hasHeader(b"content-length"):
        return None
    return transport


def onThisMachine(transport: tcp.Connection) -> bool:
    """
    Whether the client is on loopback.
    """
    try:
        return ipaddress.ip_address(transport.getPeer().host).is_loopback
    except (AttributeError, ValueError):
        return False


def _drained(transport: tcp.Connection) -> bool:
    return not transport._tempDataLen and transport.offset == len(transport.dataBuffer)


@implementer(IPushProducer)
@attrs.define(eq=False)
class DirectStreamer:
    """
    Sends C{source}'s bytes C{offset} to C{end} (L{None}: to its end,
    whenever that comes) to C{request} over C{transport}; a fill's growing
    file is followed as L{regproxy.cache.streaming.Streamer} follows it.

    @ivar _zeroCopy: Whether to send by C{sendfile} rather than by copying
        through C{_buffer}.
    @ivar _pending: Read from the file at C{_offset}, not yet sent.
    """

    _request: Request
    _transport: tcp.Connection
    _source: Source
    _offset: int
    _end: int | None
    _run: Runner
    _zeroCopy: bool
    _readSize: int = SERVE_READ_SIZE
    _fd: int = attrs.field(init=False)
    _gone: bool = attrs.field(init=False, default=False)
    _waiting: Deferred[None] | None = attrs.field(init=False, default=None)
    _buffer: bytearray | None = attrs.field(init=False, default=None)
    _pending: memoryview | None = attrs.field(init=False, default=None)

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
        Wait for the source to grow (or the client to go away), holding no
        buffer meanwhile: a reader that caught up with a fill costs nothing.
        """
        self._buffer = None
        waiting: Deferred[None] = Deferred()
        self._waiting = waiting
        self._source.whenMore().addCallback(self._wake)
        await waiting

    # Copying.

    async def _read(self, available: int) -> None:
        """
        Read the next piece into the buffer: at once from the page cache,
        the rest on a thread.
        """
        if self._buffer is None:
            self._buffer = bytearray(self._readSize)
        count = min(len(self._buffer), available - self._offset)
        view = memoryview(self._buffer)[:count]
        got = files.readIntoNoWait(self._fd, view, self._offset)
        if got < count:
            got += await self._run(
                os.preadv, self._fd, [view[got:]], self._offset + got
            )
        if got != count:
            raise SourceFailed("the file is shorter than it should be")
        self._pending = view

    def _sendPending(self) -> int:
        """
        Send what was read; how much went (0 when the socket is full).
        """
        assert self._pending is not None
        try:
            sent = self._transport.socket.send(self._pending)
        except BlockingIOError:
            return 0
        except OSError:
            # The client went away; the reactor will see it too.
            self._gone = True
            return 0
        self._pending = self._pending[sent:] if sent < len(self._pending) else None
        return sent

    async def _copySome(self, available: int) -> None:
        budget = SEND_TURN
        while budget > 0 and self._open():
            if self._pending is None:
                if self._offset >= available:
                    return
                await self._read(available)
                continue
            sent = self._sendPending()
            self._sent(sent)
            budget -= sent
            if self._pending is not None:
                return

    # Sending by sendfile.

    async def _sendfileSome(self, available: int) -> None:
        if files.readCached(self._fd, 1, available - 1) is None:
            # Not in memory: sendfile would block the reactor on the disk.
            await self._read(available)
            if self._open():
                self._sent(self._sendPending())
            return
        count = min(SEND_TURN, available - self._offset)
        try:
            sent = os.sendfile(self._transport.fileno(), self._fd, self._offset, count)
        except BlockingIOError:
            return
        except OSError:
            self._gone = True
            return
        if sent == 0:
            raise SourceFailed("the file is shorter than it should be")
        self._sent(sent)

    def _sent(self, sent: int) -> None:
        self._offset += sent
        self._request.sentLength += sent

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
        resetTimeout = getattr(self._request.channel, "resetTimeout", None)
        self._request.notifyFinish().addErrback(self._clientGone)
        self._request.registerProducer(self, True)
        self._request.write(b"")
        try:
            while self._open():
                available = self._available()
                if available is None:
                    break
                if available <= self._offset and self._pending is None:
                    await self._more()
                    continue
                if _drained(self._transport):
                    if self._zeroCopy and self._pending is None:
                        await self._sendfileSome(available)
                    else:
                        await self._copySome(available)
                    # Sending is activity: the connection is not idle.
                    if resetTimeout is not None:
                        resetTimeout()
                    if self._end is not None and self._offset >= self._end:
                        break
                    if not self._open():
                        # The client left while a read was on a thread.
                        break
                await self._writable()
        finally:
            self._buffer = self._pending = None
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
    Send C{source} to C{request} straight to its socket where the
    connection allows (by sendfile to a client across a network, when
    C{zeroCopy}), else through the transport by reads of C{readSize}; fires
    with the bytes sent.
    """
    transport = directTransport(request)
    if transport is not None and source.fileno() is not None:
        return await DirectStreamer(
            request,
            transport,
            source,
            start,
            end,
            run,
            zeroCopy and hasattr(os, "sendfile") and not onThisMachine(transport),
            min(readSize, COPY_SIZE),
        ).stream()
    return await Streamer(request, source, start, end, readSize).stream()
