"""
Tests for L{regproxy.server.site.RegproxyChannel}: the deadline for a
request's head, and closing gracefully at shutdown.
"""

from __future__ import annotations

import json
from typing import cast

from twisted.internet.error import ConnectionDone
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.logger import ILogObserver, formatEvent, globalLogPublisher
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request

from regproxy.server.drain import Connections
from regproxy.server.site import RegproxyChannel, RegproxySite, RootResource

HEAD = b"GET /held HTTP/1.1\r\nHost: proxy.local\r\n\r\n"


class Held(Resource):
    """
    Answers only when the test says so, to keep a request in flight.
    """

    isLeaf = True

    def __init__(self) -> None:
        super().__init__()
        self.waiting: list[Request] = []

    def render_GET(self, request: Request) -> object:
        self.waiting.append(request)
        return NOT_DONE_YET

    render_PUT = render_GET


def finish(request: Request, body: bytes = b"done") -> None:
    request.setHeader(b"Content-Length", b"%d" % len(body))
    request.write(body)
    request.finish()


class ChannelTestCase(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.held = Held()
        root = RootResource()
        root.putChild(b"held", self.held)
        self.site = RegproxySite(root, reactor=self.clock)
        self.site.headerTimeout = 30.0

    def connect(self) -> tuple[RegproxyChannel, StringTransport]:
        channel = cast(RegproxyChannel, self.site.buildProtocol(None))
        transport = StringTransport()
        channel.makeConnection(transport)
        return channel, transport

    def trickle(self, channel: RegproxyChannel, data: bytes, every: float) -> None:
        for i in range(len(data)):
            self.clock.advance(every)
            channel.dataReceived(data[i : i + 1])

    def assertTimedOut(self, transport: StringTransport) -> None:
        """
        The client was told 408 in the registry's error format, and the
        connection is closing.
        """
        value = transport.value()
        self.assertIn(b"HTTP/1.1 408 ", value)
        self.assertIn(b"Connection: close\r\n", value)
        body = json.loads(value.split(b"\r\n\r\n", 1)[1].split(b"HTTP/")[0])
        self.assertEqual(body["errors"][0]["code"], "BAD_REQUEST")
        self.assertTrue(transport.disconnecting)


class HeaderTimeoutTests(ChannelTestCase):
    """
    A connection that has not sent a whole request head within
    C{headerTimeout} seconds is closed, however it trickles.
    """

    def test_trickle(self) -> None:
        """
        One byte every 5 seconds resets no deadline: 30 seconds after the
        connection opened it gets a 408 and is closed.
        """
        channel, transport = self.connect()
        self.trickle(channel, HEAD[:5], 5.0)  # 25 s
        self.assertFalse(transport.disconnecting)
        self.clock.advance(5.0)
        self.assertTimedOut(transport)
        self.assertEqual(self.held.waiting, [])

    def test_silentConnection(self) -> None:
        """
        A new connection that sends nothing has 30 seconds for its first
        head too.
        """
        channel, transport = self.connect()
        self.clock.advance(29.9)
        self.assertFalse(transport.disconnecting)
        self.clock.advance(0.1)
        self.assertTimedOut(transport)

    def test_aborted(self) -> None:
        """
        A client that reads nothing of the 408 is cut off after the
        channel's abort timeout.
        """
        channel, transport = self.connect()
        self.clock.advance(30.0)
        self.assertFalse(transport.disconnected)
        self.clock.advance(channel.abortTimeout)
        self.assertTrue(transport.disconnected)

    def test_wholeHeadInTime(self) -> None:
        """
        A head that arrives in time, even slowly, is answered, and no
        deadline is left behind.
        """
        channel, transport = self.connect()
        self.trickle(channel, HEAD, 29.0 / len(HEAD))
        self.assertEqual(len(self.held.waiting), 1)
        finish(self.held.waiting[0])
        self.assertIn(b"HTTP/1.1 200 ", transport.value())
        self.assertFalse(transport.disconnecting)
        channel.connectionLost(Failure(ConnectionDone()))
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_bodyNotCovered(self) -> None:
        """
        A slow upload (a body) is not cut by the deadline.
        """
        channel, transport = self.connect()
        channel.dataReceived(
            b"PUT /held HTTP/1.1\r\nHost: proxy.local\r\nContent-Length: 20\r\n\r\n"
        )
        self.trickle(channel, b"x" * 20, 5.0)  # 100 s
        self.assertFalse(transport.disconnecting)
        self.assertEqual(len(self.held.waiting), 1)

    def test_slowResponseNotCovered(self) -> None:
        """
        A request that takes longer than the deadline to answer is not cut.
        """
        channel, transport = self.connect()
        channel.dataReceived(HEAD)
        self.clock.advance(120.0)
        self.assertFalse(transport.disconnecting)
        finish(self.held.waiting[0])
        self.assertIn(b"HTTP/1.1 200 ", transport.value())

    def test_keepAliveIdleNotCovered(self) -> None:
        """
        Waiting between requests on a kept-alive connection is not the
        head's time (the idle timeout covers that).
        """
        channel, transport = self.connect()
        channel.dataReceived(HEAD)
        finish(self.held.waiting[0])
        self.clock.advance(50.0)  # below the 60 s idle timeout
        self.assertFalse(transport.disconnecting)

    def test_everyHead(self) -> None:
        """
        The deadline applies to each head on a kept-alive connection: it
        starts with the head's first byte.
        """
        channel, transport = self.connect()
        channel.dataReceived(HEAD)
        finish(self.held.waiting[0])
        self.clock.advance(50.0)
        transport.clear()
        self.trickle(channel, HEAD[:7], 5.0)  # 30 s after the first byte
        self.assertTimedOut(transport)
        self.assertEqual(len(self.held.waiting), 1)

    def test_pipelined(self) -> None:
        """
        A head sent while the previous request is still being answered gets
        its deadline once it is read, and is answered.
        """
        channel, transport = self.connect()
        channel.dataReceived(HEAD + HEAD)
        self.clock.advance(100.0)
        finish(self.held.waiting[0])
        self.assertEqual(len(self.held.waiting), 2)
        self.clock.advance(100.0)
        self.assertFalse(transport.disconnecting)

    def test_pipelinedPartial(self) -> None:
        """
        Part of a head sent while the previous request is answered must be
        completed within the deadline once the channel reads it.
        """
        channel, transport = self.connect()
        channel.dataReceived(HEAD + HEAD[:10])
        self.clock.advance(100.0)
        finish(self.held.waiting[0])
        self.clock.advance(29.0)
        self.assertFalse(transport.disconnecting)
        self.clock.advance(1.0)
        self.assertIn(b"HTTP/1.1 408 ", transport.value())

    def test_off(self) -> None:
        """
        With no C{headerTimeout}, there is no deadline.
        """
        self.site.headerTimeout = None
        channel, transport = self.connect()
        self.trickle(channel, HEAD[:20], 5.0)
        self.assertFalse(transport.disconnecting)

    def test_logged(self) -> None:
        """
        The close is one log line naming the peer and the deadline.
        """
        events: list[dict] = []
        observer = cast(ILogObserver, events.append)
        globalLogPublisher.addObserver(observer)
        self.addCleanup(globalLogPublisher.removeObserver, observer)
        self.connect()
        self.clock.advance(30.0)

        lines = [formatEvent(e) for e in events if "head" in formatEvent(e)]
        self.assertEqual(len(lines), 1, lines)
        self.assertIn("30", lines[0])


class DrainTests(ChannelTestCase):
    """
    L{Connections.drain} stops a site gracefully: idle connections close
    at once, requests in flight finish within the grace period, and what
    is left then is cut.
    """

    def setUp(self) -> None:
        super().setUp()
        self.connections = self.site.connections = Connections()

    def test_idleClosesAtOnce(self) -> None:
        """
        A kept-alive connection with no request in flight is closed at
        once, and the drain is done when it is gone.
        """
        channel, transport = self.connect()
        channel.dataReceived(HEAD)
        finish(self.held.waiting[0])
        drained = self.connections.drain(self.clock, 30.0)
        self.assertTrue(transport.disconnecting)
        self.assertNoResult(drained)
        channel.connectionLost(Failure(ConnectionDone()))
        self.successResultOf(drained)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_inFlightFinishes(self) -> None:
        """
        A download in flight is not cut: its answer goes out whole, with
        C{Connection: close} when it had not started, and then the
        connection closes.
        """
        channel, transport = self.connect()
        channel.dataReceived(HEAD)
        drained = self.connections.drain(self.clock, 30.0)
        self.clock.advance(20.0)
        self.assertFalse(transport.disconnecting)
        finish(self.held.waiting[0], b"the whole body")
        self.assertIn(b"Connection: close\r\n", transport.value())
        self.assertTrue(transport.value().endswith(b"the whole body"))
        self.assertTrue(transport.disconnecting)
        self.assertFalse(transport.disconnected)
        channel.connectionLost(Failure(ConnectionDone()))
        self.successResultOf(drained)

    def test_streamingFinishes(self) -> None:
        """
        A response already streaming when the drain starts is finished,
        then the connection is closed.
        """
        channel, transport = self.connect()
        channel.dataReceived(HEAD)
        request = self.held.waiting[0]
        request.setHeader(b"Content-Length", b"10")
        request.write(b"12345")
        self.connections.drain(self.clock, 30.0)
        self.assertFalse(transport.disconnecting)
        request.write(b"67890")
        request.finish()
        self.assertTrue(transport.disconnecting)

    def test_graceEnds(self) -> None:
        """
        A request still in flight when the grace period ends is cut.
        """
        channel, transport = self.connect()
        channel.dataReceived(HEAD)
        drained = self.connections.drain(self.clock, 30.0)
        self.clock.advance(29.9)
        self.assertFalse(transport.disconnected)
        self.clock.advance(0.1)
        self.assertTrue(transport.disconnected)
        channel.connectionLost(Failure(ConnectionDone()))
        self.successResultOf(drained)

    def test_headArrivingDuringDrain(self) -> None:
        """
        A request whose head completes during the drain is answered with
        C{Connection: close}, and the connection closes after it.
        """
        channel, transport = self.connect()
        channel.dataReceived(HEAD[:25])  # the request line and a bit
        self.connections.drain(self.clock, 30.0)
        channel.dataReceived(HEAD[25:])
        finish(self.held.waiting[0])
        self.assertIn(b"Connection: close\r\n", transport.value())
        self.assertTrue(transport.disconnecting)

    def test_nothingOpen(self) -> None:
        """
        With no connection open the drain is done at once.
        """
        self.successResultOf(self.connections.drain(self.clock, 30.0))
        self.assertEqual(self.clock.getDelayedCalls(), [])


class FromConfigTests(SynchronousTestCase):
    """
    The site L{makeSite} builds takes its deadline from the configuration.
    """

    def test_headerTimeout(self) -> None:
        """
        C{--header-timeout} is the site's deadline for a request head.
        """
        from regproxy.app import makeSite
        from regproxy.config import Config

        clock = Clock()
        config = Config(
            upstream="http://127.0.0.1:9",
            auth="passthrough",
            state_dir=self.mktemp(),
            header_timeout=5.0,
        )
        site = makeSite(config, clock)
        channel = cast(RegproxyChannel, site.buildProtocol(None))
        transport = StringTransport()
        channel.makeConnection(transport)
        clock.advance(4.9)
        self.assertFalse(transport.disconnecting)
        clock.advance(0.1)
        self.assertIn(b"HTTP/1.1 408 ", transport.value())
