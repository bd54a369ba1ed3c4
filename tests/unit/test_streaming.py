"""
Tests for streaming and failure handling in L{regproxy.proxy.relay}: bodies
move a piece at a time with backpressure, disconnects reach the other
side, and upstream failures become registry-format errors.
"""

from __future__ import annotations

import json
from typing import cast

import attrs
from twisted.internet import error as netError
from twisted.internet import tcp
from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred
from twisted.internet.protocol import Protocol
from twisted.internet.testing import MemoryReactor, MemoryReactorClock, StringTransport
from twisted.logger import ILogObserver, LogLevel, formatEvent, globalLogPublisher
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.client import (
    RequestGenerationFailed,
    ResponseDone,
    ResponseNeverReceived,
)
from twisted.web.http_headers import Headers
from twisted.web.iweb import UNKNOWN_LENGTH, IBodyProducer, IResponse
from zope.interface import implementer

from regproxy.app import makeSite
from regproxy.config import Config
from tests.httpclient import RawClient


@attrs.define
class SentRequest:
    method: bytes
    uri: bytes
    headers: Headers
    bodyProducer: object
    deferred: Deferred
    cancelled: bool = False


class FakeAgent:
    """
    An upstream whose every move the test makes by hand.
    """

    def __init__(self) -> None:
        self.sent: list[SentRequest] = []

    def request(self, method, uri, headers=None, bodyProducer=None):
        def cancel(d):
            sent.cancelled = True

        sent = SentRequest(method, uri, headers, bodyProducer, Deferred(cancel))
        self.sent.append(sent)
        return sent.deferred


class UpstreamBodyTransport(StringTransport):
    """
    The upstream connection as the relay sees it: records pause, resume
    and stop.
    """

    def __init__(self) -> None:
        super().__init__()
        self.stopped = False

    def stopProducing(self) -> None:
        self.stopped = True


@implementer(IResponse)
class FakeResponse:
    version = (b"HTTP", 1, 1)
    request = None
    previousResponse = None

    def __init__(self, code=200, headers=None, length=UNKNOWN_LENGTH) -> None:
        self.code = code
        self.phrase = b"OK"
        self.headers = Headers(headers or {})
        self.length = length
        self.protocol = None
        self.transport = UpstreamBodyTransport()

    def deliverBody(self, protocol) -> None:
        self.protocol = protocol
        protocol.makeConnection(self.transport)

    def setPreviousResponse(self, response) -> None:
        pass


class RecordingConsumer:
    def __init__(self) -> None:
        self.data: list[bytes] = []

    def write(self, data: bytes) -> None:
        self.data.append(data)


class StreamingTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.agent = FakeAgent()
        self.reactor = MemoryReactorClock()
        self.site = makeSite(
            Config(
                upstream="http://upstream.example",
                listen=(),
                response_timeout=30,
                auth="passthrough",
            ),
            self.reactor,
            agent=self.agent,
        )

    def startDownload(self, length=UNKNOWN_LENGTH):
        client = RawClient(self.site)
        client.request(b"GET", b"/v2/lib/app/blobs/sha256:" + b"a" * 64)
        response = FakeResponse(
            200, {b"Content-Type": [b"application/octet-stream"]}, length
        )
        self.agent.sent[-1].deferred.callback(response)
        return client, response

    def test_downloadStreams(self) -> None:
        """
        Each piece of the upstream body reaches the client as it arrives,
        and the response completes when the upstream's does.
        """
        client, response = self.startDownload(length=6)
        response.protocol.dataReceived(b"abc")
        self.assertTrue(client.transport.value().endswith(b"\r\n\r\nabc"))
        response.protocol.dataReceived(b"def")
        response.protocol.connectionLost(Failure(ResponseDone()))
        received = client.response()
        self.assertEqual(received.body, b"abcdef")
        self.assertEqual(received.header(b"content-length"), b"6")
        self.assertFalse(client.transport.disconnecting)

    def test_backpressureReachesUpstream(self) -> None:
        """
        When the client's connection cannot take more, the upstream
        transport is paused; when it can again, resumed.
        """
        client, response = self.startDownload()
        response.protocol.dataReceived(b"x" * 1000)
        client.protocol.pauseProducing()  # what a full socket buffer does
        self.assertEqual(response.transport.producerState, "paused")
        client.protocol.resumeProducing()
        self.assertEqual(response.transport.producerState, "producing")

    def test_clientDisconnectStopsUpstreamBody(self) -> None:
        """
        A client that goes away mid-layer stops the upstream transfer.
        """
        client, response = self.startDownload()
        response.protocol.dataReceived(b"x" * 1000)
        client.disconnect()
        self.assertTrue(response.transport.stopped)

    def test_clientDisconnectCancelsPendingRequest(self) -> None:
        """
        A client that goes away before the upstream answered cancels the
        upstream request.
        """
        client = RawClient(self.site)
        client.request(b"GET", b"/v2/lib/app/manifests/latest")
        client.disconnect()
        self.assertTrue(self.agent.sent[-1].cancelled)

    def test_truncatedUpstreamBody(self) -> None:
        """
        When the upstream breaks off mid-body, the client connection is
        closed so the client sees a truncated body, not a complete one.
        """
        client, response = self.startDownload()
        response.protocol.dataReceived(b"partial")
        response.protocol.connectionLost(Failure(netError.ConnectionLost()))
        self.assertTrue(client.transport.disconnecting)
        self.assertFalse(client.transport.value().endswith(b"0\r\n\r\n"))

    def test_uploadStreamsBeforeBodyEnds(self) -> None:
        """
        A chunked PATCH reaches the upstream as soon as its headers do, and
        its body flows through piece by piece, with no Content-Length.
        """
        client = RawClient(self.site)
        client.send(
            b"PATCH /v2/lib/app/blobs/uploads/u-1?_state=s HTTP/1.1\r\n"
            b"Host: proxy\r\nTransfer-Encoding: chunked\r\n"
            b"Content-Type: application/octet-stream\r\n\r\n"
            b"5\r\nhello\r\n"
        )
        self.assertEqual(len(self.agent.sent), 1)
        sent = self.agent.sent[0]
        self.assertEqual(sent.method, b"PATCH")
        self.assertEqual(
            sent.uri, b"http://upstream.example/v2/lib/app/blobs/uploads/u-1?_state=s"
        )
        producer = sent.bodyProducer
        self.assertIs(producer.length, UNKNOWN_LENGTH)
        self.assertFalse(sent.headers.hasHeader(b"transfer-encoding"))
        consumer = RecordingConsumer()
        finished = producer.startProducing(consumer)
        self.assertEqual(consumer.data, [b"hello"])
        client.send(b"6\r\n world\r\n")
        self.assertEqual(b"".join(consumer.data), b"hello world")
        self.assertNoResult(finished)
        client.send(b"0\r\n\r\n")
        self.successResultOf(finished)
        sent.deferred.callback(
            FakeResponse(
                202, {b"Location": [b"/v2/lib/app/blobs/uploads/u-1?_state=t"]}, 0
            )
        )
        received = client.response()
        self.assertEqual(received.status, 202)
        self.assertEqual(
            received.header(b"location"),
            b"http://proxy/v2/lib/app/blobs/uploads/u-1?_state=t",
        )

    def test_uploadKnownLength(self) -> None:
        """
        A PUT with a Content-Length goes up with the same length.
        """
        client = RawClient(self.site)
        client.send(
            b"PUT /v2/lib/app/blobs/uploads/u-1?digest=sha256:0 HTTP/1.1\r\n"
            b"Host: proxy\r\nContent-Length: 10\r\n\r\n01234"
        )
        producer = self.agent.sent[0].bodyProducer
        self.assertEqual(producer.length, 10)
        consumer = RecordingConsumer()
        finished = producer.startProducing(consumer)
        client.send(b"56789")
        self.successResultOf(finished)
        self.assertEqual(b"".join(consumer.data), b"0123456789")

    def test_uploadBackpressure(self) -> None:
        """
        When the upstream cannot take more of an upload, the client's
        connection is paused, and resumed when it can; a body that arrives
        before the upstream connection is ready is held back the same way.
        """
        client = RawClient(self.site)
        client.send(
            b"PATCH /v2/lib/app/blobs/uploads/u-1 HTTP/1.1\r\n"
            b"Host: proxy\r\nContent-Length: 1000000\r\n\r\n" + b"x" * 300000
        )
        self.assertEqual(client.transport.producerState, "paused")
        producer = self.agent.sent[0].bodyProducer
        consumer = RecordingConsumer()
        producer.startProducing(consumer)
        self.assertEqual(client.transport.producerState, "producing")
        self.assertEqual(sum(map(len, consumer.data)), 300000)
        producer.pauseProducing()
        self.assertEqual(client.transport.producerState, "paused")
        producer.resumeProducing()
        self.assertEqual(client.transport.producerState, "producing")

    def test_uploadClientDisconnect(self) -> None:
        """
        A client that goes away mid-upload fails the upstream body, which
        makes the HTTP client abort the upstream request.
        """
        client = RawClient(self.site)
        client.send(
            b"PATCH /v2/lib/app/blobs/uploads/u-1 HTTP/1.1\r\n"
            b"Host: proxy\r\nContent-Length: 100\r\n\r\n" + b"x" * 10
        )
        producer = self.agent.sent[0].bodyProducer
        finished = producer.startProducing(RecordingConsumer())
        client.disconnect()
        self.failureResultOf(finished)

    def test_uploadAbortLoggedAsOneLine(self) -> None:
        """
        A client aborting an upload is an ordinary event: one info line
        naming the request, no critical event and no traceback, even when
        the HTTP client reports it as a failure to send the request.
        """
        events: list[dict] = []
        observer = cast(ILogObserver, events.append)
        globalLogPublisher.addObserver(observer)
        self.addCleanup(globalLogPublisher.removeObserver, observer)
        client = RawClient(self.site)
        client.send(
            b"PATCH /v2/lib/app/blobs/uploads/u-1?_state=secret HTTP/1.1\r\n"
            b"Host: proxy\r\nContent-Length: 100\r\n\r\n" + b"x" * 10
        )
        sent = self.agent.sent[0]
        finished = cast(IBodyProducer, sent.bodyProducer).startProducing(
            RecordingConsumer()
        )
        # What HTTP11ClientProtocol does when the body producer fails.
        finished.addErrback(
            lambda f: sent.deferred.errback(RequestGenerationFailed([f]))
        )
        client.disconnect()
        self.assertEqual(
            [e for e in events if e.get("log_level") == LogLevel.critical], []
        )
        lines = [formatEvent(e) for e in events if "abort" in formatEvent(e)]
        self.assertEqual(len(lines), 1, lines)
        self.assertIn("PATCH /v2/lib/app/blobs/uploads/u-1", lines[0])
        self.assertIn("10", lines[0])
        self.assertNotIn("secret", lines[0])
        self.assertNotIn("\n", lines[0])

    def test_earlyAnswerToUpload(self) -> None:
        """
        When the upstream answers before the upload is complete (a 401),
        the client gets the answer, and the connection is finished only
        once the rest of the body has been read, so it is never parsed as
        a new request.
        """
        client = RawClient(self.site)
        client.send(
            b"PATCH /v2/lib/app/blobs/uploads/u-1 HTTP/1.1\r\n"
            b"Host: proxy\r\nContent-Length: 20\r\n\r\n" + b"x" * 10
        )
        self.agent.sent[0].deferred.callback(FakeResponse(401, {}, 0))
        self.assertEqual(client.response().status, 401)
        client.send(b"GET /_health HTTP/1.1\r\n")  # the body's last 10 bytes + 13
        self.assertEqual(len(self.agent.sent), 1)

    def assertUnavailable(self, client: RawClient, status: int) -> dict:
        received = client.response()
        self.assertEqual(received.status, status)
        body = json.loads(received.body)
        self.assertEqual(body["errors"][0]["code"], "UNAVAILABLE")
        self.assertEqual(
            received.header(b"docker-distribution-api-version"), b"registry/2.0"
        )
        return body

    def test_upstreamRefused(self) -> None:
        """
        An upstream that refuses connections gives 502 in registry JSON.
        """
        client = RawClient(self.site)
        client.request(b"GET", b"/v2/")
        self.agent.sent[-1].deferred.errback(netError.ConnectionRefusedError())
        self.assertUnavailable(client, 502)

    def test_upstreamDNS(self) -> None:
        client = RawClient(self.site)
        client.request(b"GET", b"/v2/")
        self.agent.sent[-1].deferred.errback(
            netError.DNSLookupError("upstream.example")
        )
        self.assertUnavailable(client, 502)

    def test_upstreamClosedWithoutAnswer(self) -> None:
        client = RawClient(self.site)
        client.request(b"GET", b"/v2/")
        self.agent.sent[-1].deferred.errback(
            ResponseNeverReceived([Failure(netError.ConnectionLost())])
        )
        self.assertUnavailable(client, 502)

    def test_upstreamConnectTimeout(self) -> None:
        client = RawClient(self.site)
        client.request(b"GET", b"/v2/")
        self.agent.sent[-1].deferred.errback(netError.TimeoutError())
        self.assertUnavailable(client, 504)

    def test_upstreamResponseTimeout(self) -> None:
        """
        An upstream that does not answer within --response-timeout gives
        504, and the upstream request is cancelled.
        """
        client = RawClient(self.site)
        client.request(b"GET", b"/v2/")
        self.reactor.advance(29)
        self.assertIsNone(client.response())
        self.reactor.advance(1)
        self.assertTrue(self.agent.sent[-1].cancelled)
        self.assertUnavailable(client, 504)

    def test_unexpectedErrorIsNotATraceback(self) -> None:
        """
        A bug on our side gives a registry-format 500 with no traceback,
        and the next request is served.
        """
        client = RawClient(self.site)
        client.request(b"GET", b"/v2/")
        self.agent.sent[-1].deferred.errback(ZeroDivisionError("oops"))
        received = client.response()
        self.assertEqual(received.status, 500)
        self.assertNotIn(b"Traceback", received.body)
        self.assertNotIn(b"oops", received.body)
        self.assertEqual(len(self.flushLoggedErrors(ZeroDivisionError)), 1)
        client.request(b"GET", b"/v2/")
        self.assertEqual(len(self.agent.sent), 2)


class FakeSocket:
    """
    The socket under a real L{tcp.Connection}: counts the calls Twisted
    makes, and how much each asks for or hands over.
    """

    def __init__(self, incoming: bytes = b"") -> None:
        self.incoming = incoming
        self.recvSizes: list[int] = []
        self.sendSizes: list[int] = []
        self.sent = 0

    def setblocking(self, flag: bool) -> None:
        pass

    def setsockopt(self, *args: object) -> None:
        pass

    def fileno(self) -> int:
        return 99

    def getsockname(self) -> tuple[str, int]:
        return ("127.0.0.1", 80)

    def getpeername(self) -> tuple[str, int]:
        return ("127.0.0.1", 40000)

    def recv(self, size: int) -> bytes:
        self.recvSizes.append(size)
        data, self.incoming = self.incoming[:size], self.incoming[size:]
        return data

    def send(self, data: memoryview) -> int:
        self.sendSizes.append(len(data))
        self.sent += len(data)
        return len(data)


class _ServerConnection(tcp.Connection):
    """
    A real TCP connection as a server sees it, over a L{FakeSocket}.
    """

    connected = 1

    def getPeer(self) -> IPv4Address:
        return IPv4Address("TCP", "127.0.0.1", 40000)

    def getHost(self) -> IPv4Address:
        return IPv4Address("TCP", "127.0.0.1", 80)


class _Sink(Protocol):
    def __init__(self) -> None:
        self.received = 0

    def dataReceived(self, data: bytes) -> None:
        self.received += len(data)


FOUR_MIB = 4 * 1024 * 1024


class RelayTuningTests(SynchronousTestCase):
    """
    What the relay's tuning does to a real Twisted TCP connection: a 4 MiB
    body crosses it in a handful of system calls, not dozens.
    """

    def test_upstreamReadsLarger(self) -> None:
        """
        Once the relay has tuned the upstream connection under the HTTP
        client's producer proxy, 4 MiB arrive in 4 reads (Twisted's default
        takes 64).
        """
        from twisted.web._newclient import TransportProxyProducer

        from regproxy.proxy.relay import _readLarger

        def reads(tune: bool) -> int:
            skt = FakeSocket(b"x" * FOUR_MIB)
            sink = _Sink()
            connection = tcp.Connection(skt, sink, MemoryReactor())  # type: ignore[arg-type]
            if tune:
                _readLarger(TransportProxyProducer(connection))
            while sink.received < FOUR_MIB:
                connection.doRead()
            return len(skt.recvSizes)

        self.assertEqual(reads(tune=False), 64)
        self.assertEqual(reads(tune=True), 4)

    def test_clientSendsLarger(self) -> None:
        """
        A 4 MiB blob relayed to a client on a real TCP connection leaves in
        4 sends of 1 MiB (Twisted's default limit makes it 32).
        """
        agent = FakeAgent()
        reactor = MemoryReactorClock()
        site = makeSite(
            Config(upstream="http://upstream.example", listen=(), auth="passthrough"),
            reactor,
            agent=agent,
        )
        skt = FakeSocket()
        protocol = site.buildProtocol(IPv4Address("TCP", "127.0.0.1", 40000))
        assert protocol is not None
        connection = _ServerConnection(skt, protocol, reactor)  # type: ignore[arg-type]
        protocol.makeConnection(connection)
        protocol.dataReceived(
            b"GET /v2/lib/app/blobs/sha256:" + b"a" * 64 + b" HTTP/1.1\r\n"
            b"Host: proxy.example\r\n\r\n"
        )
        response = FakeResponse(200, {}, FOUR_MIB)
        agent.sent[-1].deferred.callback(response)
        assert response.protocol is not None
        for _ in range(16):
            response.protocol.dataReceived(b"x" * (FOUR_MIB // 16))
        before = skt.sent
        while connection.dataBuffer or connection._tempDataBuffer:
            connection.doWrite()
        bodySends = [size for size in skt.sendSizes if size > 1024]
        self.assertGreaterEqual(skt.sent - before, FOUR_MIB)
        self.assertEqual(len(bodySends), 4, skt.sendSizes)
