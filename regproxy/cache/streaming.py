# -*- test-case-name: tests.unit.cache.test_streaming -*-
"""
Sending a cache file to one client: large reads off the reactor thread, one
read ahead, and the client's transport as the judge of when to send more.
The same loop serves a complete entry and follows a fill's growing file.
"""

from __future__ import annotations

import os
from typing import Protocol

from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IPushProducer
from twisted.python.failure import Failure
from twisted.web.server import Request
from zope.interface import implementer

from regproxy.cache import files
from regproxy.cache.threads import Runner

# Like the relay's RELAY_READ_SIZE: a sixteenth of the Python calls per byte
# of Twisted's 64 KiB, and one send call per read with _sendLarger.
SERVE_READ_SIZE = 1024 * 1024

# Readers of a fill go no faster than the upstream: smaller reads keep
# twenty of them on one blob well within the daemon's memory budget.
FOLLOW_READ_SIZE = 256 * 1024


class Source(Protocol):
    """
    The bytes a L{Streamer} sends: a complete file or a fill's growing one.
    """

    def available(self) -> int:
        """
        How many bytes from the start can be read now.
        """

    def complete(self) -> bool:
        """
        Whether every byte there will be is available.
        """

    def whenMore(self) -> Deferred[None]:
        """
        Fires when more is available, the source ended, or it failed.
        """

    def check(self) -> None:
        """
        Raise the source's failure, if it has failed.
        """

    def read(self, offset: int, length: int) -> Deferred[bytes]: ...

    def fileno(self) -> int | None:
        """
        The file the bytes are in, to send straight from; L{None} when in
        memory.
        """

    def release(self) -> None:
        """
        This reader is done: close what it holds.
        """


def readAt(run: Runner, fd: int, length: int, offset: int) -> Deferred[bytes]:
    """
    Read C{length} bytes at C{offset}: at once from the page cache when
    they are there (the common case for a hit, and always for readers of a
    fill), else the rest on C{run}'s threads, so a cold disk never blocks
    the reactor.
    """
    data = files.readCached(fd, length, offset)
    if data is not None:
        return succeed(data)
    return run(os.pread, fd, length, offset)


class FileHandle:
    """
    A reader's own descriptor on a cache file, closed when it is done.
    """

    def __init__(self, fd: int | None) -> None:
        self._fd = fd

    def fileno(self) -> int | None:
        return self._fd

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


class SourceFailed(Exception):
    """
    The bytes could not be sent whole (the fill broke off or did not match
    its digest, or the file was truncated under us).
    """


def sendLarger(request: Request) -> None:
    """
    Let the client's TCP connection hand the kernel a whole read per send.
    """
    transport = getattr(request.channel, "transport", None)
    if transport is not None and hasattr(transport, "SEND_LIMIT"):
        transport.SEND_LIMIT = SERVE_READ_SIZE


@implementer(IPushProducer)
class Streamer:
    """
    Streams C{source}'s bytes C{start} to C{end} (exclusive; L{None} for
    to the end, whenever that comes) to C{request},
    registered as its producer: paused while the client's transport is full,
    so at most one read is buffered per client.
    """

    def __init__(
        self,
        request: Request,
        source: Source,
        start: int,
        end: int | None,
        readSize: int = SERVE_READ_SIZE,
    ) -> None:
        self._request = request
        self._source = source
        self._offset = start
        self._end = end
        self._readSize = readSize
        self._paused: Deferred[None] | None = None
        self._gone = False
        self._wake: Deferred[None] | None = None

    def pauseProducing(self) -> None:
        if self._paused is None:
            self._paused = Deferred()

    def resumeProducing(self) -> None:
        paused, self._paused = self._paused, None
        if paused is not None:
            paused.callback(None)

    def stopProducing(self) -> None:
        self._clientGone(None)

    def _clientGone(self, reason: Failure | None) -> None:
        self._gone = True
        self.resumeProducing()
        self._woken(None)

    def _woken(self, _: object) -> None:
        wake, self._wake = self._wake, None
        if wake is not None:
            wake.callback(None)

    async def _nextRead(self) -> bytes | None:
        """
        The next piece to send, waiting for the source to grow if need be;
        L{None} once the client went away.
        """
        while not self._gone:
            self._source.check()
            available = self._source.available()
            if self._end is not None:
                available = min(available, self._end)
            if available > self._offset:
                length = min(self._readSize, available - self._offset)
                data = await self._source.read(self._offset, length)
                if len(data) != length:
                    raise SourceFailed("the file is shorter than it should be")
                return data
            if self._source.complete():
                if self._end is None:
                    return None
                raise SourceFailed("the bytes end before the range asked for")
            wake: Deferred[None] = Deferred()
            self._wake = wake
            self._source.whenMore().addCallback(self._woken)
            await wake
        return None

    async def stream(self) -> int:
        """
        Send the bytes; fires with how many were sent (fewer when the client
        went away).

        @raise SourceFailed: When the bytes could not be sent whole.
        """
        sendLarger(self._request)
        self._request.notifyFinish().addErrback(self._clientGone)
        self._request.registerProducer(self, True)
        sent = 0
        try:
            while self._end is None or self._offset < self._end:
                data = await self._nextRead()
                if data is None:
                    break
                self._offset += len(data)
                self._request.write(data)
                sent += len(data)
                if self._paused is not None:
                    await self._paused
        finally:
            self._source.release()
            if not getattr(self._request, "_disconnected", False):
                self._request.unregisterProducer()
        return sent
