"""
What the cache's unit tests share: an index and a store on a temporary
directory with every blocking call run at once, and clients that read
(slowly, if asked) from a real twisted.web L{Site} over L{StringTransport}.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable

from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request, Site

from regproxy.cache.index import CacheIndex
from regproxy.cache.store import BlobStore
from regproxy.cache.threads import runSynchronously

MiB = 1024 * 1024


def digestOf(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def openIndex(
    case: SynchronousTestCase, directory: str, reactor: MemoryReactorClock
) -> CacheIndex:
    index = CacheIndex.open(
        os.path.join(directory, "index.sqlite"), reactor, runner=runSynchronously
    )
    case.addCleanup(
        lambda: case.successResultOf(index.close()) if index._flusher.running else None
    )
    return index


class Disk:
    """
    A filesystem whose free space the test sets.
    """

    def __init__(self, free: int = 100 * 1024**3) -> None:
        self.free = free

    def __call__(self, path: str) -> int:
        return self.free


def makeStore(
    case: SynchronousTestCase,
    maxSize: int = 64 * MiB,
    minFree: int = 0,
    protectFor: float = 3600.0,
    disk: Disk | None = None,
    directory: str | None = None,
    reactor: MemoryReactorClock | None = None,
) -> BlobStore:
    """
    A store (and its index) in a temporary directory, all synchronous.
    """
    if directory is None:
        directory = case.mktemp()
        os.makedirs(directory)
    reactor = reactor or MemoryReactorClock()
    index = openIndex(case, directory, reactor)
    return BlobStore(
        directory,
        index,
        reactor,
        maxSize,
        minFree,
        protectFor=protectFor,
        diskRunner=runSynchronously,
        freeSpace=disk or Disk(),
    )


def keep(store: BlobStore, data: bytes) -> str:
    """
    Fill C{data} into C{store} in one write and return its digest.
    """
    digest = digestOf(data)
    fill = store.fill(digest, len(data))
    fill.write(data)
    kept = []
    fill.finish().addCallback(kept.append)
    assert kept == [True], kept
    return digest


class ClientTransport(StringTransport):
    """
    A client connection that takes at most C{limit} bytes before pausing the
    server (as a full socket buffer would) until the test drains it.

    @ivar most: The most bytes ever waiting in this transport.
    """

    def __init__(self, limit: int | None = None) -> None:
        super().__init__(
            hostAddress=IPv4Address("TCP", "127.0.0.1", 80),
            peerAddress=IPv4Address("TCP", "127.0.0.1", 40000),
        )
        self.limit = limit
        self.most = 0
        self.received = b""
        self.serverPaused = False

    def write(self, data: bytes) -> None:
        super().write(data)
        waiting = self.io.tell()
        self.most = max(self.most, waiting)
        if self.limit is not None and waiting > self.limit:
            if not self.serverPaused and self.producer is not None:
                self.serverPaused = True
                self.producer.pauseProducing()

    def drain(self) -> int:
        """
        Read what is waiting, resuming the server; the bytes read.
        """
        data = self.value()
        self.clear()
        self.received += data
        if self.serverPaused:
            self.serverPaused = False
            self.producer.resumeProducing()
        return len(data)


class ServeResource(Resource):
    """
    Answers every GET by calling C{serve(request)} (which writes the body
    and fires with the bytes sent), then finishes, or drops the connection
    if C{serve} failed: what a relay of a cached body does.
    """

    isLeaf = True

    def __init__(self, serve: Callable[[Request], Deferred[int]], length: int) -> None:
        super().__init__()
        self.serve = serve
        self.length = length
        self.outcomes: list[int | Failure] = []

    def render_GET(self, request: Request) -> object:
        request.setHeader(b"content-length", b"%d" % (self.length,))
        d = self.serve(request)

        def sent(count: int) -> None:
            self.outcomes.append(count)
            if not request._disconnected:
                request.finish()

        def failed(reason: Failure) -> None:
            self.outcomes.append(reason)
            request.loseConnection()

        d.addCallbacks(sent, failed)
        return NOT_DONE_YET


class Client:
    """
    One client connection asking C{resource} for one body.
    """

    def __init__(
        self,
        resource: Resource,
        limit: int | None = None,
        transport: ClientTransport | None = None,
    ) -> None:
        self.site = Site(resource, timeout=None)
        self.transport = transport or ClientTransport(limit)
        self.protocol = self.site.buildProtocol(self.transport.getPeer())
        self.protocol.makeConnection(self.transport)
        self.protocol.dataReceived(b"GET /blob HTTP/1.1\r\nHost: cache\r\n\r\n")

    def body(self) -> bytes:
        """
        Everything received so far after the response headers.
        """
        self.transport.drain()
        return self.transport.received.partition(b"\r\n\r\n")[2]

    def disconnect(self) -> None:
        from twisted.internet.error import ConnectionDone

        self.protocol.connectionLost(Failure(ConnectionDone()))
