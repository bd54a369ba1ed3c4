# -*- test-case-name: tests.unit.cache.test_writer -*-
"""
A download's bytes hashed and written on the disk threads, in order.

Hashing a blob costs more CPU than anything else a miss does, and a write
to a disk that cannot keep up (the page cache full of dirty pages, a slow
SD card) blocks until the disk takes it: done on the reactor thread, either
would hold up every other client.  So each batch of what arrived goes to a
disk thread, one batch at a time (the hash and the file need the bytes in
order); the backlog is bounded, and the upstream is paused while it is
full, so a slow disk slows the download, never the reactor.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.internet.defer import Deferred, succeed
from twisted.python.failure import Failure

from regproxy.cache import files
from regproxy.cache.threads import Runner

# Bytes waiting for the disk before the upstream is paused.
WRITE_BACKLOG = 2 * 1024 * 1024


def hashAndWrite(hasher: Any, fd: int | None, chunks: list[bytes]) -> None:
    """
    Feed C{chunks} to C{hasher} and write them at the end of C{fd} (when
    there is a file): run on a disk thread; both let go of the GIL.
    """
    for chunk in chunks:
        hasher.update(chunk)
        if fd is not None:
            files.writeAll(fd, chunk)


class OrderedWriter:
    """
    Hashes and writes a download's bytes, a batch at a time, in order.

    @param wrote: Called on the reactor thread with each batch once it is
        hashed and on disk.
    @param failed: Called with the failure of a batch (a disk that took no
        more); nothing is written after it.
    """

    def __init__(
        self,
        run: Runner,
        hasher: Any,
        fd: int | None,
        wrote: Callable[[list[bytes]], None],
        failed: Callable[[Failure], None],
    ) -> None:
        self._run = run
        self._hasher = hasher
        self._fd = fd
        self._wrote = wrote
        self._failed = failed
        self._queue: list[bytes] = []
        self.queued = 0
        self._writing: Deferred[None] | None = None
        self._stopped = False
        self._below: list[Deferred[None]] = []
        self._idle: list[Deferred[None]] = []

    @property
    def backlogged(self) -> bool:
        return self.queued >= WRITE_BACKLOG and not self._stopped

    def add(self, data: bytes) -> None:
        if self._stopped:
            return
        self._queue.append(data)
        self.queued += len(data)
        self._next()

    def _next(self) -> None:
        if self._writing is not None or self._stopped or not self._queue:
            return
        batch, self._queue = self._queue, []
        writing = self._run(hashAndWrite, self._hasher, self._fd, batch)
        self._writing = writing
        writing.addCallbacks(self._batchDone, self._batchFailed, (batch,))

    def _batchDone(self, _: None, batch: list[bytes]) -> None:
        self._writing = None
        if not self._stopped:
            self.queued -= sum(len(chunk) for chunk in batch)
            self._wrote(batch)
        self._next()
        self._settle()

    def _batchFailed(self, failure: Failure) -> None:
        self._writing = None
        self._stopped = True
        self._queue, self.queued = [], 0
        self._failed(failure)
        self._settle()

    def _settle(self) -> None:
        if not self.backlogged:
            below, self._below = self._below, []
            for d in below:
                d.callback(None)
        if self._writing is None and (self._stopped or not self._queue):
            idle, self._idle = self._idle, []
            for d in idle:
                d.callback(None)

    def belowBacklog(self) -> Deferred[None]:
        """
        Fires once the backlog is below its bound (or writing stopped).
        """
        if not self.backlogged:
            return succeed(None)
        d: Deferred[None] = Deferred()
        self._below.append(d)
        return d

    def idle(self) -> Deferred[None]:
        """
        Fires once everything added is written (or writing stopped), with no
        batch on a thread.
        """
        if self._writing is None and (self._stopped or not self._queue):
            return succeed(None)
        d: Deferred[None] = Deferred()
        self._idle.append(d)
        return d

    def stop(self) -> Deferred[None]:
        """
        Write no more; fires once no batch is on a thread, so the file may
        be closed.
        """
        self._stopped = True
        self._queue, self.queued = [], 0
        idle = self.idle()
        self._settle()
        return idle
