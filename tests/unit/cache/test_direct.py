"""
Tests for L{regproxy.cache.direct}, over a real loopback TCP connection
(sending straight to the socket needs a real one): the body arrives whole
and right, by copying (a client on this machine) or by sendfile (a client
across a network), with threaded reads for pages not in memory, and a
client that goes away mid-body stops the sending.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any, TypeVar, cast

from twisted.internet import reactor
from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.interfaces import ITCPTransport
from twisted.internet.protocol import Protocol, connectionDone
from twisted.internet.task import deferLater
from twisted.python.failure import Failure
from twisted.trial.unittest import TestCase
from twisted.web.server import Site

from regproxy.cache import direct, files
from tests.integration.testcase import MixinBase
from tests.unit.cache.helpers import MiB, ServeResource, digestOf, keep, makeStore

T = TypeVar("T")

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
        assert self.transport is not None
        self.transport.write(b"GET /blob HTTP/1.1\r\nHost: cache\r\n\r\n")

    def dataReceived(self, data: bytes) -> None:
        self.data += data
        body = self.data.partition(b"\r\n\r\n")[2]
        # A TCP connection, which can be aborted.
        transport = cast(ITCPTransport, self.transport)
        if self.stopAfter is not None and len(body) >= self.stopAfter:
            transport.abortConnection()
        elif len(body) >= len(BODY):
            transport.loseConnection()

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self.done.callback(self.data.partition(b"\r\n\r\n")[2])


class LoopbackMixin(MixinBase):
    """
    A store holding L{BODY}, served on a loopback port, counting sendfile
    calls and direct sends.

    @ivar remote: Whether the client is taken for one across a network.
    """

    remote = False

    def setUp(self) -> None:
        self.store = makeStore(self, reactor=None)
        self.digest = keep(self.store, BODY)
        self.resource = ServeResource(
            lambda request: self.store.serve(request, self.digest, len(BODY)), len(BODY)
        )
        site = Site(self.resource)
        # Site is a ServerFactory; Twisted's generic ServerFactory[P] in
        # listenTCP does not accept the HTTPChannel it builds.
        self.port = reactor.listenTCP(0, site, interface="127.0.0.1")  # type: ignore[arg-type]
        self.addCleanup(self.port.stopListening)
        self.calls = 0
        real = os.sendfile

        def counting(*args: int) -> int:
            self.calls += 1
            return real(*args)

        self.patch(direct.os, "sendfile", counting)
        self.sends = 0
        realSend = direct.DirectStreamer._sendPending

        def countingSend(streamer: direct.DirectStreamer) -> int:
            self.sends += 1
            return realSend(streamer)

        self.patch(direct.DirectStreamer, "_sendPending", countingSend)
        if self.remote:
            self.patch(direct, "onThisMachine", lambda transport: False)

    async def fetchCold(self) -> tuple[bytes, list[Callable[..., object]]]:
        """
        Fetch with the entry's pages dropped from the page cache: the body,
        and what ran on the disk runner.
        """
        fd = os.open(files.entryPath(self.store.root, self.digest), os.O_RDONLY)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        os.close(fd)
        reads: list[Callable[..., object]] = []
        run = self.store.run

        def recording(f: Callable[..., T], *args: Any) -> Deferred[T]:
            reads.append(f)
            return run(f, *args)

        self.store.run = recording
        return await self.fetch(Reader()), reads

    async def goneDuringColdRead(self) -> None:
        """
        A client that hangs up while the next piece is read on a thread
        (nothing is in the page cache) ends the serving quietly: how much
        was sent is reported, not a failure.
        """
        self.patch(files, "readIntoNoWait", lambda fd, buffer, offset: 0)
        self.patch(files, "readCached", lambda fd, length, offset: None)
        reader = Reader()
        run = self.store.run
        # Fires once the server has seen the client go.
        seen: Deferred[None] = Deferred()
        clientGone = direct.DirectStreamer._clientGone

        def noticed(streamer: direct.DirectStreamer, reason: object) -> None:
            clientGone(streamer, None)
            if not seen.called:
                seen.callback(None)

        self.patch(direct.DirectStreamer, "_clientGone", noticed)

        reads: list[object] = []

        def afterTheClientLeft(f: Callable[..., T], *args: Any) -> Deferred[T]:
            if f is os.preadv:
                reads.append(f)
            if len(reads) != 2 or f is not os.preadv:
                return run(f, *args)
            # The client hangs up while the second read is on its thread;
            # the read ends after the server has closed the connection (a
            # reactor turn after it noticed, as a real thread's would).
            cast(ITCPTransport, reader.transport).abortConnection()
            return seen.addCallback(lambda _: deferLater(reactor, 0, run, f, *args))

        self.store.run = afterTheClientLeft
        body = await self.fetch(reader)
        while not self.resource.outcomes:
            d: Deferred[None] = Deferred()
            reactor.callLater(0, d.callback, None)
            await d
        [sent] = self.resource.outcomes
        self.assertIsInstance(sent, int)
        self.assertLess(len(body), len(BODY))
        self.assertEqual(body, BODY[: len(body)])

    async def fetch(self, reader: Reader) -> bytes:
        address = self.port.getHost()
        assert isinstance(address, IPv4Address)
        endpoint = TCP4ClientEndpoint(reactor, "127.0.0.1", address.port)
        await connectProtocol(endpoint, reader)
        return await reader.done


class CopyTests(LoopbackMixin, TestCase):
    """
    A client on this machine: the body is copied through one buffer.
    """

    async def test_goneDuringColdRead(self) -> None:
        await self.goneDuringColdRead()

    async def test_cachedByCopy(self) -> None:
        """
        A hit whose pages are cached goes out whole, sent straight to the
        socket, never by sendfile.
        """
        body = await self.fetch(Reader())
        self.assertEqual(body, BODY)
        self.assertGreater(self.sends, 0)
        self.assertEqual(self.calls, 0)
        self.assertEqual(self.resource.outcomes, [len(BODY)])

    async def test_coldReadOnThreads(self) -> None:
        """
        Pages dropped from the page cache are read on the disk runner
        rather than on the reactor thread, which would wait for the disk.
        """
        body, reads = await self.fetchCold()
        self.assertEqual(body, BODY)
        self.assertIn(os.preadv, reads)

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
        self.assertLess(self.resource.sent(), len(BODY))

    def test_notForStringTransports(self) -> None:
        """
        Only a real TCP connection is written to directly.
        """
        from tests.unit.cache.helpers import Client

        client = Client(self.resource)
        self.addCleanup(client.disconnect)
        self.assertEqual(client.body(), BODY)
        self.assertEqual((self.calls, self.sends), (0, 0))


class SendfileTests(LoopbackMixin, TestCase):
    """
    A client across a network: the body goes by sendfile.
    """

    remote = True

    async def test_goneDuringColdRead(self) -> None:
        await self.goneDuringColdRead()

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
        Pages not in memory are read on the disk runner and copied, rather
        than sent by a sendfile that would wait for the disk.
        """
        body, reads = await self.fetchCold()
        self.assertEqual(body, BODY)
        self.assertIn(os.preadv, reads)


class FollowTests(LoopbackMixin, TestCase):
    """
    Readers of a fill on plain TCP follow the growing file straight to the
    socket too.
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

    async def test_followed(self) -> None:
        """
        A reader gets every byte of the fill as it arrives.
        """
        self.digest = digestOf(BODY)
        self.fill = self.store.fill(self.digest, len(BODY))
        self.resource.serve = self.fill.serveTo
        reading = Deferred.fromCoroutine(self.fetch(Reader()))
        await self.writeSlowly(BODY)
        self.assertTrue(await self.fill.finish())
        self.assertEqual(await reading, BODY)
        self.assertGreater(self.sends if not self.remote else self.calls, 0)

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
        self.assertGreater(self.sends if not self.remote else self.calls, 0)


class SendfileFollowTests(FollowTests):
    """
    ... and by sendfile to a client across a network.
    """

    remote = True
