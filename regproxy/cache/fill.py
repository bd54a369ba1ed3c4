# -*- test-case-name: tests.unit.cache.test_fill -*-
"""
One upstream download shared by every client that asks for the same digest
while it runs.

The download is written to a temporary file and hashed as it arrives (on
the disk threads, L{OrderedWriter}); each reader follows that file at its
own pace and waits on a L{Deferred} for the
next write when it catches up.  The last byte is held back from readers
until the digest has been checked, so no client ever receives a whole body
that did not match.  The file absorbs slow readers; the download goes on
when they drop.
"""

from __future__ import annotations

import collections
import hmac
import os
from collections.abc import Awaitable
from typing import Protocol

from twisted.internet.defer import Deferred, succeed
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.server import Request

from regproxy.cache import files
from regproxy.cache.direct import stream
from regproxy.cache.streaming import (
    FOLLOW_READ_SIZE,
    FileHandle,
    SourceFailed,
    readAt,
)
from regproxy.cache.threads import Runner, deferred
from regproxy.cache.writer import OrderedWriter

# How much of a download that is not being kept (too big for the cache, or
# the disk is short of space) is held in memory for readers that lag.
MEMORY_WINDOW = 8 * 1024 * 1024


class Keeper(Protocol):
    """
    What a download needs from its store.
    """

    run: Runner
    durable: bool
    zeroCopy: bool

    def kept(self, download: Download) -> Awaitable[None]:
        """
        The download is now an entry: index it and link it.
        """

    def grow(self, download: Download, size: int) -> bool:
        """
        Reserve C{size} more bytes for C{download}; whether they fit.
        """

    def ended(self, download: Download) -> None:
        """
        The download is over (kept or not): release what it reserved.
        """


class Download:
    """
    The state of one download; L{Fill} is each caller's handle on it.

    @ivar keeping: Whether the bytes will become an entry.  A download that
        is not kept still streams to its readers (from a temporary file, or
        from memory when C{temporary} is L{None}).
    """

    _log = Logger()

    def __init__(
        self,
        keeper: Keeper,
        digest: str,
        size: int | None,
        final: str,
        temporary: tuple[str, int] | None,
        keeping: bool,
    ) -> None:
        self.digest = digest
        self.size = size
        self.keeping = keeping and temporary is not None
        self.written = 0
        self.verified = False
        self.failure: Failure | None = None
        self._keeper = keeper
        self._final = final
        self._temporary = temporary
        self._hasher = files.hasherFor(digest)
        self._waiters: list[Deferred[None]] = []
        self._finishing = False
        self._result: bool | None = None
        self._finished: list[Deferred[bool]] = []
        self.links: list[tuple[str, str]] = []
        self._window: collections.deque[bytes] = collections.deque()
        self._windowStart = 0
        # Handed to write(); written counts what is hashed and on disk.
        self.received = 0
        self._writer = OrderedWriter(
            keeper.run,
            self._hasher,
            temporary[1] if temporary is not None else None,
            self._wrote,
            self._writeFailed,
        )

    @property
    def over(self) -> bool:
        return self.verified or self.failure is not None

    # The writer's side.

    def write(self, data: bytes) -> None:
        if self.over or not data:
            return
        self.received += len(data)
        if self.size is not None and self.received > self.size:
            self.fail(Failure(SourceFailed("the upstream sent more than its length")))
            return
        if self.keeping and self.size is None:
            # No length to reserve up front: reserve as it comes, and stop
            # keeping (the file still serves its readers) once it cannot fit.
            self.keeping = self._keeper.grow(self, len(data))
        self._writer.add(data)

    def belowBacklog(self) -> Deferred[None]:
        """
        Fires once the disk has caught up enough to take more.
        """
        return self._writer.belowBacklog()

    def _wrote(self, batch: list[bytes]) -> None:
        if self.over:
            return
        for data in batch:
            if self._temporary is None:
                self._remember(data)
            self.written += len(data)
        self._wake()

    def _writeFailed(self, failure: Failure) -> None:
        error = failure.value
        if isinstance(error, OSError):
            self._diskFailed(error)
        else:
            self._log.failure(
                "Writing the cache fill of {digest}", failure, digest=self.digest
            )
            self.fail(failure)

    def _diskFailed(self, error: OSError) -> None:
        """
        The cache's disk took no more (full, or failing): the bytes cannot
        be kept, and readers that follow the file cannot be given the rest,
        so the download fails cleanly (its file removed, its readers' answers
        cut short) and the daemon goes on.
        """
        self._log.warn(
            "Gave up the cache fill of {digest} after {written}B: "
            "the cache disk failed ({error})",
            digest=self.digest,
            written=self.written,
            error=error.strerror or error.__class__.__name__,
        )
        self.fail(Failure(SourceFailed("the cache disk failed")))

    @property
    def onDisk(self) -> bool:
        """
        Whether the bytes go to a temporary file (so take disk space).
        """
        return self._temporary is not None

    def joinable(self) -> bool:
        """
        Whether a new reader can have every byte (see L{Fill.joinable}).
        """
        if self.failure is not None:
            return False
        if self.onDisk:
            return True
        if self.verified:
            # Renamed into place, or (not kept) gone.
            return self.keeping
        return self._windowStart == 0

    def _remember(self, data: bytes) -> None:
        self._window.append(data)
        held = self.written + len(data) - self._windowStart
        while held - len(self._window[0]) >= MEMORY_WINDOW:
            dropped = self._window.popleft()
            self._windowStart += len(dropped)
            held -= len(dropped)

    def finish(self) -> Deferred[bool]:
        if not self._finishing:
            self._finishing = True
            Deferred.fromCoroutine(self._finish()).addBoth(self._report)
        return self.done()

    async def _finish(self) -> bool:
        await self._writer.idle()
        if self.failure is not None:
            return False
        if self.size is not None and self.written != self.size:
            self.fail(Failure(SourceFailed("the upstream body was cut short")))
            return False
        expected = files.parseDigest(self.digest)[1]
        if not hmac.compare_digest(self._hasher.hexdigest(), expected):
            self._log.warn(
                "Dropped {digest}: its bytes do not match", digest=self.digest
            )
            self.fail(Failure(SourceFailed("the bytes do not match their digest")))
            return False
        self.verified = True
        self._wake()
        if not self.keeping or self._temporary is None:
            self._discard()
            return False
        path, fd = self._temporary
        try:
            await self._keeper.run(
                files.keep, fd, path, self._final, self._keeper.durable
            )
        except Exception:
            self._log.failure("Keeping {digest}", digest=self.digest)
            self._discard()
            return False
        self._closeTemporary(unlink=False)
        await self._keeper.kept(self)
        return True

    def _report(self, result: bool | Failure) -> None:
        if isinstance(result, Failure):
            self._log.failure("Indexing {digest}", result, digest=self.digest)
        self._result = result is True
        self._keeper.ended(self)
        finished, self._finished = self._finished, []
        for d in finished:
            d.callback(self._result)

    def fail(self, reason: Failure) -> None:
        if self.over:
            return
        self.failure = reason
        self._discard()
        self._wake()
        if not self._finishing:
            self._finishing = True
            self._report(False)

    def _discard(self) -> None:
        self._window.clear()
        self._closeTemporary(unlink=True)

    def _closeTemporary(self, unlink: bool) -> None:
        if self._temporary is not None:
            path, fd = self._temporary
            self._temporary = None

            def close(_: object) -> None:
                os.close(fd)
                if unlink:
                    files.removeFile(path)

            # Never while a disk thread may still write to it.
            self._writer.stop().addCallback(close)

    def done(self) -> Deferred[bool]:
        """
        Fires with whether the download became an entry.
        """
        if self._result is not None:
            return succeed(self._result)
        d: Deferred[bool] = Deferred()
        self._finished.append(d)
        return d

    def link(self, upstream: str, repository: str) -> None:
        self.links.append((upstream, repository))

    # The readers' side.

    def _wake(self) -> None:
        waiters, self._waiters = self._waiters, []
        for d in waiters:
            d.callback(None)

    def whenMore(self) -> Deferred[None]:
        d: Deferred[None] = Deferred()
        if self.over:
            d.callback(None)
        else:
            self._waiters.append(d)
        return d

    def readable(self) -> int:
        """
        What readers may have: all once verified, else all but the last byte
        (which waits for the digest check).
        """
        if self.verified:
            return self.written
        if self.size is not None and self.written < self.size:
            return self.written
        return max(self.written - 1, 0)

    def source(self) -> _Reader:
        """
        A new reader; it holds its own descriptor on the file, so it can
        finish after the file is renamed or removed.
        """
        if self._temporary is not None:
            return _Reader(self, os.dup(self._temporary[1]))
        if not self.over:
            return _Reader(self, None)
        if self.verified and self.keeping:
            # Renamed into place already: read the entry.
            try:
                return _Reader(self, os.open(self._final, os.O_RDONLY))
            except FileNotFoundError:
                pass
        raise SourceFailed("this download is over and its bytes are not held")

    def readWindow(self, offset: int, length: int) -> bytes:
        if offset < self._windowStart:
            raise SourceFailed("this reader fell too far behind the download")
        pieces, start = [], self._windowStart
        for piece in self._window:
            end = start + len(piece)
            if end > offset:
                pieces.append(piece[max(offset - start, 0) : offset + length - start])
                if end >= offset + length:
                    break
            start = end
        return b"".join(pieces)


class _Reader(FileHandle):
    """
    One reader's view of a L{Download}, as a L{regproxy.cache.streaming.Source}.
    """

    def __init__(self, download: Download, fd: int | None) -> None:
        super().__init__(fd)
        self._download = download

    def available(self) -> int:
        return self._download.readable()

    def complete(self) -> bool:
        return self._download.verified

    def whenMore(self) -> Deferred[None]:
        return self._download.whenMore()

    def check(self) -> None:
        failure = self._download.failure
        if failure is not None:
            raise SourceFailed(str(failure.value))

    def read(self, offset: int, length: int) -> Deferred[bytes]:
        if self._fd is None:
            return succeed(self._download.readWindow(offset, length))
        return readAt(self._download._keeper.run, self._fd, length, offset)


class Fill:
    """
    One caller's handle on the download of a digest.

    @ivar existing: Whether this caller joined a download already running
        (a coalesced request); only the caller that started it writes.
    """

    def __init__(self, download: Download, existing: bool) -> None:
        self._download = download
        self.existing = existing

    @property
    def keeping(self) -> bool:
        """
        Whether the bytes will be kept (else they only stream through).
        """
        return self._download.keeping

    @property
    def size(self) -> int | None:
        return self._download.size

    @property
    def whole(self) -> bool:
        """
        Whether every byte is in and matched the digest (it may still be
        being flushed and renamed into place).
        """
        return self._download.verified

    @property
    def failed(self) -> bool:
        """
        Whether the download failed (its readers fail too).
        """
        return self._download.failure is not None

    @property
    def joinable(self) -> bool:
        """
        Whether a new reader can still have every byte: the download has
        not failed, and its bytes are in its file or in their entry.
        """
        return self._download.joinable()

    def write(self, data: bytes) -> None:
        """
        More of the upstream body arrived.
        """
        self._download.write(data)

    def belowBacklog(self) -> Deferred[None]:
        """
        Fires once the disk can take more; the writer pauses its upstream
        until then.
        """
        return self._download.belowBacklog()

    def finish(self) -> Deferred[bool]:
        """
        The upstream body is complete: check its size and digest, flush it,
        and rename it into place.  Fires with whether it was kept; on a bad
        digest the bytes are dropped and readers fail.  Joiners get the same
        answer when the download ends.
        """
        if self.existing:
            return self._download.done()
        return self._download.finish()

    def fail(self, reason: Failure | Exception | None = None) -> None:
        """
        The upstream broke off: remove the file; readers that have not had
        every byte fail.
        """
        if not isinstance(reason, Failure):
            reason = Failure(reason or SourceFailed("the upstream broke off"))
        self._download.fail(reason)

    def done(self) -> Deferred[bool]:
        """
        Fires with whether the download became an entry, without ending it.
        """
        return self._download.done()

    def link(self, upstream: str, repository: str) -> None:
        """
        Link the digest to C{repository} when (and only if) it is kept.
        """
        self._download.link(upstream, repository)

    @deferred
    async def serveTo(
        self, request: Request, range: tuple[int, int] | None = None
    ) -> int:
        """
        Stream what has arrived and follow the download at the client's own
        pace; fires with the bytes sent.

        @param range: (first, last) inclusive, as in a C{Range} header: sent
            as those bytes arrive.
        @raise SourceFailed: The download failed or did not match.
        """
        first, end = (
            (0, self._download.size) if range is None else (range[0], range[1] + 1)
        )
        download = self._download
        return await stream(
            request,
            download.source(),
            first,
            end,
            download._keeper.run,
            download._keeper.zeroCopy,
            FOLLOW_READ_SIZE,
        )
