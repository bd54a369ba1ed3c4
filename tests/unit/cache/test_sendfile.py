"""
Tests for L{regproxy.cache.sendfile}, over a real loopback TCP connection
(sendfile needs a real socket): the body arrives whole and right, by
sendfile when the pages are cached and by threaded reads when they are not,
and a client that goes away mid-body stops the sending.
"""

from __future__ import annotations

import os

from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.protocol import Protocol
from twisted.trial.unittest import TestCase
from twisted.web.server import Site

from regproxy.cache import files, sendfile
from tests.unit.cache.helpers import MiB, ServeResource, digestOf, keep, makeStore

BODY = os.urandom(12 * MiB + 3)


class Reader(Protocol):
    """
    Sends one GET and collects the response; can stop reading or hang up
    after C{stopAfter} body bytes.
    """

    def __init__(self, stopAfter: int | None = None) -> None:
        self.data = b""
        self.stopAfter = stopAfter
        self.done: Deferred[bytes] = Deferred()

    def connectionMade(self) -> None:
        self.transport.write(b"GET /blob HTTP/1.1\r\nHost: cache\r\n\r\n")

    def dataReceived(self, data: bytes) -> None:
        self.data += data
        body = self.data.partition(b"\r\n\r\n")[2]
        if self.stopAfter is not None and len(body) >= self.stopAfter:
            self.transport.abortConnection()
        elif len(body) >= len(BODY):
            self.transport.loseConnection()

    def connectionLost(self, reason: object) -> None:
        self.done.callback(self.data.partition(b"\r\n\r\n")[2])


class LoopbackMixin:
    """
    A store holding L{BODY}, served on a loopback port, counting sendfile
    calls.
    """

    def setUp(self) -> None:
        self.store = makeStore(self, reactor=None)
        self.digest = keep(self.store, BODY)
        self.resource = ServeResource(
            lambda request: self.store.serve(request, self.digest, len(BODY)), len(BODY)
        )
        self.port = reactor.listenTCP(0, Site(self.resource), interface="127.0.0.1")
        self.addCleanup(self.port.stopListening)
        self.calls = 0
        real = os.sendfile

        def counting(*args: int) -> int:
            self.calls += 1
            return real(*args)

        self.patch(sendfile.os, "sendfile", counting)

    async def fetch(self, reader: Reader) -> bytes:
        endpoint = TCP4ClientEndpoint(reactor, "127.0.0.1", self.port.getHost().port)
        await connectProtocol(endpoint, reader)
        return await reader.done


class SendfileTests(LoopbackMixin, TestCase):
    async def test_cachedBySendfile(self) -> None:
        """
        A hit whose pages are cached goes out by sendfile, whole.
        """
        body = await self.fetch(Reader())
        self.assertEqual(body, BODY)
        self.assertGreater(self.calls, 0)
        self.assertEqual(self.resource.outcomes, [len(BODY)])

    async def test_coldReadOnThreads(self) -> None:
        """
        Pages dropped from the page cache are read the ordinary way (on the
        disk runner) rather than by a sendfile that would wait for the disk.
        """
        fd = os.open(files.entryPath(self.store.root, self.digest), os.O_RDONLY)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        os.close(fd)
        reads = []
        run = self.store.run
        self.store.run = lambda f, *args: (reads.append(f), run(f, *args))[1]
        body = await self.fetch(Reader())
        self.assertEqual(body, BODY)
        self.assertIn(os.pread, reads)

    async def test_clientGoesAway(self) -> None:
        """
        A client that hangs up mid-body stops the serving, which reports
        fewer bytes than the body.
        """
        body = await self.fetch(Reader(stopAfter=MiB))
        self.assertLess(len(body), len(BODY))
        while not self.resource.outcomes:
            d: Deferred[None] = Deferred()
            reactor.callLater(0, d.callback, None)
            await d
        self.assertLess(self.resource.outcomes[0], len(BODY))

    def test_notForStringTransports(self) -> None:
        """
        Only a real TCP connection gets sendfile.
        """
        from tests.unit.cache.helpers import Client

        client = Client(self.resource)
        self.addCleanup(client.disconnect)
        self.assertEqual(client.body(), BODY)
        self.assertEqual(self.calls, 0)


class SendfileFillTests(LoopbackMixin, TestCase):
    """
    Readers of a fill on plain TCP follow the growing file by sendfile too.
    """

    def setUp(self) -> None:
        super().setUp()
        self.digest = digestOf(BODY + b"!")
        self.fill = self.store.fill(self.digest, len(BODY))
        self.resource.serve = self.fill.serveTo

    async def writeSlowly(self, body: bytes) -> None:
        for offset in range(0, len(body), MiB):
            self.fill.write(body[offset : offset + MiB])
            d: Deferred[None] = Deferred()
            reactor.callLater(0, d.callback, None)
            await d

    async def test_followedBySendfile(self) -> None:
        """
        A reader gets every byte of the fill as it arrives, by sendfile.
        """
        self.digest = digestOf(BODY)
        self.fill = self.store.fill(self.digest, len(BODY))
        self.resource.serve = self.fill.serveTo
        reading = Deferred.fromCoroutine(self.fetch(Reader()))
        await self.writeSlowly(BODY)
        self.assertTrue(await self.fill.finish())
        self.assertEqual(await reading, BODY)
        self.assertGreater(self.calls, 0)

    async def test_badDigest(self) -> None:
        """
        Bytes that do not match their digest never reach the reader whole.
        """
        reading = Deferred.fromCoroutine(self.fetch(Reader()))
        await self.writeSlowly(BODY)
        self.assertFalse(await self.fill.finish())
        body = await reading
        self.assertEqual(body, BODY[: len(body)])
        self.assertLess(len(body), len(BODY))
        self.assertGreater(self.calls, 0)
