"""
Tests for L{regproxy.cache.writer}: a download's bytes are hashed and
written in order, a batch at a time, with a bounded backlog; a failed write
stops the rest; the file is never closed under a write in flight.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable
from typing import Any

from hypothesis import given
from hypothesis import strategies as st
from twisted.internet.defer import Deferred
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from regproxy.cache.writer import WRITE_BACKLOG, OrderedWriter, hashAndWrite


class HeldRunner:
    """
    A disk runner whose calls wait until the test lets them run, as calls
    on a real thread take their time.
    """

    def __init__(self) -> None:
        self.held: list[tuple[Deferred[Any], Callable[..., Any], tuple[Any, ...]]] = []

    def __call__(self, f: Callable[..., Any], *args: Any) -> Deferred[Any]:
        d: Deferred[Any] = Deferred()
        self.held.append((d, f, args))
        return d

    def runOne(self) -> None:
        d, f, args = self.held.pop(0)
        try:
            result = f(*args)
        except Exception:
            d.errback(Failure())
        else:
            d.callback(result)

    def runAll(self) -> None:
        while self.held:
            self.runOne()


class WriterTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.path = self.mktemp()
        self.fd: int | None = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        self.addCleanup(self.closeFile)
        self.disk = HeldRunner()
        self.hasher = hashlib.sha256()
        self.wrote: list[bytes] = []
        self.failures: list[Failure] = []
        self.writer = OrderedWriter(
            self.disk,
            self.hasher,
            self.fd,
            self.wrote.extend,
            self.failures.append,
        )

    def closeFile(self) -> None:
        if self.fd is not None:
            os.close(self.fd)

    def onDisk(self) -> bytes:
        with open(self.path, "rb") as f:
            return f.read()

    @given(st.lists(st.binary(min_size=1, max_size=64), max_size=20), st.data())
    def test_inOrder(self, pieces: list[bytes], data: st.DataObject) -> None:
        """
        However the writes and the disk interleave, the file and the hash
        get every byte in the order given, and each piece is reported
        written only once it is on disk.
        """
        fd = os.open(self.mktemp(), os.O_RDWR | os.O_CREAT, 0o644)
        self.addCleanup(os.close, fd)
        hasher = hashlib.sha256()
        wrote: list[bytes] = []
        run = HeldRunner()
        writer = OrderedWriter(run, hasher, fd, wrote.extend, self.failures.append)
        for piece in pieces:
            writer.add(piece)
            while run.held:
                if not data.draw(st.booleans()):
                    break
                run.runOne()
                self.assertEqual(os.pread(fd, 1 << 20, 0), b"".join(wrote))
        run.runAll()
        whole = b"".join(pieces)
        self.assertEqual(os.pread(fd, 1 << 20, 0), whole)
        self.assertEqual(b"".join(wrote), whole)
        self.assertEqual(hasher.digest(), hashlib.sha256(whole).digest())
        self.assertTrue(writer.idle().called)

    def test_oneBatchAtATime(self) -> None:
        """
        What arrives while a batch is on a thread waits, and goes as one
        batch after it.
        """
        self.writer.add(b"a")
        self.writer.add(b"b")
        self.writer.add(b"c")
        self.assertEqual(len(self.disk.held), 1)
        self.disk.runOne()
        self.assertEqual(self.wrote, [b"a"])
        self.assertEqual(len(self.disk.held), 1)
        self.disk.runOne()
        self.assertEqual(self.wrote, [b"a", b"b", b"c"])
        self.assertEqual(self.onDisk(), b"abc")

    def test_backlog(self) -> None:
        """
        Past the backlog's bound, L{OrderedWriter.belowBacklog} waits until
        the disk has caught up.
        """
        chunk = b"x" * (WRITE_BACKLOG // 2)
        self.assertTrue(self.writer.belowBacklog().called)
        for _ in range(3):
            self.writer.add(chunk)
        self.assertTrue(self.writer.backlogged)
        below = self.writer.belowBacklog()
        self.assertFalse(below.called)
        # The first piece is on disk; the two behind it are still the bound.
        self.disk.runOne()
        self.assertFalse(below.called)
        idle = self.writer.idle()
        self.disk.runOne()
        self.assertTrue(below.called)
        self.assertTrue(idle.called)
        self.assertEqual(len(self.onDisk()), 3 * len(chunk))

    def test_failureStops(self) -> None:
        """
        A batch the disk refuses is reported, nothing after it is written,
        and those waiting for the disk are let go.
        """
        assert self.fd is not None
        os.close(self.fd)
        self.fd = None
        for _ in range(3):
            self.writer.add(b"y" * (WRITE_BACKLOG // 2))
        below, idle = self.writer.belowBacklog(), self.writer.idle()
        self.disk.runOne()
        self.assertEqual(len(self.failures), 1)
        self.failures[0].trap(OSError)
        self.assertTrue(below.called)
        self.assertTrue(idle.called)
        self.writer.add(b"more")
        self.assertEqual(self.disk.held, [])
        self.assertEqual(self.wrote, [])

    def test_stopWaitsForTheBatchInFlight(self) -> None:
        """
        L{OrderedWriter.stop} fires only once the batch on a thread is
        done, so the file is never closed under a write; what was queued
        behind it is dropped.
        """
        self.writer.add(b"first")
        self.writer.add(b"second")
        stopped = self.writer.stop()
        self.assertFalse(stopped.called)
        self.disk.runOne()
        self.assertTrue(stopped.called)
        self.assertEqual(self.disk.held, [])
        self.assertEqual(self.onDisk(), b"first")
        self.assertEqual(self.wrote, [])


class HashAndWriteTests(SynchronousTestCase):
    def test_memoryOnly(self) -> None:
        """
        With no file, the bytes are only hashed.
        """
        hasher = hashlib.sha256()
        hashAndWrite(hasher, None, [b"a", b"bc"])
        self.assertEqual(hasher.digest(), hashlib.sha256(b"abc").digest())
