"""
Tests for how regproxy waits on an upstream and says why it failed: every
wait honours C{--response-timeout}, a stalled body or upload is given up
on, and a failure names its cause and the upstream's host, in the error
body and in the request's log line.
"""

from __future__ import annotations

import json

from hypothesis import given, settings
from hypothesis import strategies as st
from OpenSSL import SSL
from twisted.internet import error as netError
from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.defer import TimeoutError as DeferredTimeoutError
from twisted.internet.testing import MemoryReactorClock
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.client import ResponseDone, ResponseFailed, ResponseNeverReceived
from twisted.web.http import PotentialDataLoss
from twisted.web.iweb import UNKNOWN_LENGTH

from regproxy.app import makeSite
from regproxy.config import Config
from regproxy.proxy.failures import asUpstreamError, classifyFailure, upstreamHost
from regproxy.proxy.relay import Forwarder
from regproxy.server.errors import UPSTREAM_CAUSES, UpstreamError
from tests.httpclient import RawClient
from tests.unit.test_streaming import FakeAgent, FakeResponse, RecordingConsumer

TIMEOUT = 30
BLOB = b"/v2/lib/app/blobs/sha256:" + b"a" * 64


class SiteTestCase(SynchronousTestCase):
    """
    A regproxy in front of an upstream whose every move the test makes,
    with its log lines kept.
    """

    auth = "passthrough"

    def setUp(self) -> None:
        self.agent = FakeAgent()
        self.reactor = MemoryReactorClock()
        self.events: list[dict] = []
        self.site = self.makeSite(response_timeout=TIMEOUT, auth=self.auth)

    def makeSite(self, **settings):
        settings = {"upstream": "http://upstream.example", "listen": (), **settings}
        site = makeSite(
            Config(state_dir=self.mktemp(), **settings), self.reactor, agent=self.agent
        )
        site._log = Logger(observer=self.events.append)
        return site

    def logged(self, key: str) -> list[object]:
        return [event[key] for event in self.events if key in event]

    def errorEntry(self, client: RawClient, status: int) -> dict:
        received = client.response()
        self.assertIsNotNone(received, "no answer yet")
        self.assertEqual(received.status, status)
        return json.loads(received.body)["errors"][0]


class BodyIdleTests(SiteTestCase):
    """
    A response body the upstream stops sending is given up on after
    C{--response-timeout} of silence.
    """

    def startDownload(self, length=10_000_000):
        client = RawClient(self.site)
        client.request(b"GET", BLOB)
        response = FakeResponse(200, {}, length)
        self.agent.sent[-1].deferred.callback(response)
        return client, response

    def test_stalledBodyClosesClient(self) -> None:
        """
        An upstream that promises 10 MB, sends 100 KB and then nothing:
        past the timeout the client's connection is closed (so it sees a
        short body and retries), the upstream connection is dropped, and a
        warning names the upstream.
        """
        from regproxy.proxy import relay

        warnings: list[dict] = []
        self.patch(relay._BodyRelay, "_log", Logger(observer=warnings.append))
        client, response = self.startDownload()
        response.protocol.dataReceived(b"x" * 100_000)
        self.reactor.advance(TIMEOUT - 1)
        self.assertFalse(client.transport.disconnecting)
        self.reactor.advance(1)
        self.assertTrue(client.transport.disconnecting)
        self.assertTrue(response.transport.disconnecting)
        [warning] = warnings
        self.assertEqual(warning["host"], "-")
        self.assertEqual(warning["timeout"], TIMEOUT)

    def test_eachPieceRestartsTheWait(self) -> None:
        """
        A slow upstream that keeps sending is never cut off.
        """
        client, response = self.startDownload()
        for _ in range(5):
            self.reactor.advance(TIMEOUT - 1)
            response.protocol.dataReceived(b"x" * 1000)
        self.assertFalse(client.transport.disconnecting)

    def test_slowClientIsNotAStall(self) -> None:
        """
        While the client holds the upstream paused (it reads slowly), the
        upstream's silence is ours, not its: no timeout; once resumed, the
        upstream has the whole timeout again.
        """
        client, response = self.startDownload()
        response.protocol.dataReceived(b"x" * 1000)
        client.protocol.pauseProducing()
        self.reactor.advance(TIMEOUT * 5)
        self.assertFalse(client.transport.disconnecting)
        client.protocol.resumeProducing()
        self.reactor.advance(TIMEOUT - 1)
        self.assertFalse(client.transport.disconnecting)
        self.reactor.advance(1)
        self.assertTrue(client.transport.disconnecting)

    def test_upstreamThatDoesNotCloseAfterClientLeft(self) -> None:
        """
        When the client leaves, the upstream is asked to stop; one that
        has still not closed a timeout later is dropped, without a
        warning about a stall nobody waits for.
        """
        from regproxy.proxy import relay

        warnings: list[dict] = []
        self.patch(relay._BodyRelay, "_log", Logger(observer=warnings.append))
        client, response = self.startDownload()
        response.protocol.dataReceived(b"x" * 1000)
        client.disconnect()
        self.assertTrue(response.transport.stopped)
        self.assertFalse(response.transport.disconnecting)
        self.reactor.advance(TIMEOUT)
        self.assertTrue(response.transport.disconnecting)
        self.assertEqual(warnings, [])

    def test_briefPauseStillTimesOut(self) -> None:
        """
        A client that paused the upstream only briefly gives it one more
        timeout at most: a stall after that is still found.
        """
        client, response = self.startDownload()
        response.protocol.dataReceived(b"x" * 1000)
        client.protocol.pauseProducing()
        client.protocol.resumeProducing()
        self.reactor.advance(TIMEOUT)
        self.assertFalse(client.transport.disconnecting)
        self.reactor.advance(TIMEOUT)
        self.assertTrue(client.transport.disconnecting)

    def test_stalledBodyWithoutLengthIsNotComplete(self) -> None:
        """
        A body of unknown length (sent chunked to the client) that stalls
        is never ended as if complete, even when the upstream connection's
        end arrives afterwards as a clean close.
        """
        client, response = self.startDownload(length=UNKNOWN_LENGTH)
        response.protocol.dataReceived(b"partial")
        self.reactor.advance(TIMEOUT)
        response.protocol.connectionLost(Failure(PotentialDataLoss()))
        self.assertTrue(client.transport.disconnecting)
        self.assertFalse(client.transport.value().endswith(b"0\r\n\r\n"))

    def test_completeBodyStopsTheClock(self) -> None:
        """
        Once the body is complete, nothing happens at the timeout.
        """
        from regproxy.proxy import relay

        warnings: list[dict] = []
        self.patch(relay._BodyRelay, "_log", Logger(observer=warnings.append))
        client, response = self.startDownload(length=3)
        response.protocol.dataReceived(b"abc")
        response.protocol.connectionLost(Failure(PotentialDataLoss()))
        self.reactor.advance(TIMEOUT)
        self.assertEqual(client.response().body, b"abc")
        self.assertFalse(client.transport.disconnecting)
        self.assertEqual(warnings, [])


class UploadWaitTests(SiteTestCase):
    """
    The response timeout counts from the last piece of an upload the
    upstream took, not from the start of the request.
    """

    def startUpload(self):
        client = RawClient(self.site)
        client.send(
            b"PATCH /v2/lib/app/blobs/uploads/u-1 HTTP/1.1\r\n"
            b"Host: proxy\r\nContent-Length: 1000000\r\n\r\n" + b"x" * 1000
        )
        consumer = RecordingConsumer()
        self.agent.sent[0].bodyProducer.startProducing(consumer)
        return client, consumer

    def test_longUploadIsNotCutShort(self) -> None:
        """
        An upload that takes longer than the timeout but keeps moving
        goes through.
        """
        client, consumer = self.startUpload()
        for _ in range(5):
            self.reactor.advance(TIMEOUT - 1)
            client.send(b"x" * 1000)
        self.assertFalse(self.agent.sent[0].cancelled)
        self.assertEqual(sum(map(len, consumer.data)), 6000)

    def test_stalledUploadTimesOut(self) -> None:
        """
        An upstream that stops reading an upload: after the timeout the
        upstream request is cancelled and the client gets 504.
        """
        client, consumer = self.startUpload()
        self.reactor.advance(TIMEOUT - 1)
        client.send(b"x" * 1000)
        self.reactor.advance(TIMEOUT - 1)
        self.assertFalse(self.agent.sent[0].cancelled)
        self.reactor.advance(1)
        self.assertTrue(self.agent.sent[0].cancelled)
        entry = self.errorEntry(client, 504)
        self.assertEqual(entry["detail"]["cause"], "timeout")


class ReadBodyTests(SynchronousTestCase):
    """
    L{Forwarder.readBody}, for the small bodies read whole (a manifest to
    cache, an error), gives up after the response timeout.
    """

    def setUp(self) -> None:
        self.clock = MemoryReactorClock()
        self.forwarder = Forwarder(FakeAgent(), self.clock, TIMEOUT)

    def test_body(self) -> None:
        response = FakeResponse(200, {}, 6)
        reading = Deferred.fromCoroutine(self.forwarder.readBody(response))
        response.protocol.dataReceived(b"abcdef")
        response.protocol.connectionLost(Failure(ResponseDone()))
        self.assertEqual(self.successResultOf(reading), b"abcdef")

    def test_stalledBody(self) -> None:
        """
        A body that stops coming fails as a timeout once the response
        timeout has passed, and the upstream connection is dropped.
        """
        response = FakeResponse(200, {}, 100)
        reading = Deferred.fromCoroutine(self.forwarder.readBody(response))
        response.protocol.dataReceived(b"abc")
        self.clock.advance(TIMEOUT - 1)
        self.assertNoResult(reading)
        self.clock.advance(1)
        failure = self.failureResultOf(reading, UpstreamError)
        self.assertEqual(failure.value.cause, "timeout")
        self.assertTrue(response.transport.disconnecting)


class CauseTests(SiteTestCase):
    """
    A failed upstream request is answered with its cause and the
    upstream's host, in the body and on the log line.
    """

    def failWith(self, failure: BaseException) -> RawClient:
        client = RawClient(self.site)
        client.request(b"GET", b"/v2/lib/app/manifests/latest")
        self.agent.sent[-1].deferred.errback(failure)
        return client

    def assertCause(
        self, client: RawClient, status: int, cause: str, words: str
    ) -> dict:
        entry = self.errorEntry(client, status)
        self.assertEqual(entry["code"], "UNAVAILABLE")
        self.assertEqual(entry["detail"]["cause"], cause)
        self.assertEqual(entry["detail"]["upstream"], "upstream.example:80")
        self.assertIn("upstream.example:80", entry["message"])
        self.assertIn(words, entry["message"])
        self.assertEqual(self.logged("upstream"), [f"{cause}@upstream.example:80"])
        return entry

    def test_refused(self) -> None:
        client = self.failWith(netError.ConnectionRefusedError())
        self.assertCause(client, 502, "refused", "could not be connected to")

    def test_dns(self) -> None:
        client = self.failWith(netError.DNSLookupError("upstream.example"))
        self.assertCause(client, 502, "dns", "cannot resolve")

    def test_tls(self) -> None:
        alert = SSL.Error([("SSL routines", "", "certificate verify failed")])
        client = self.failWith(ResponseNeverReceived([Failure(alert)]))
        entry = self.assertCause(client, 502, "tls", "TLS")
        self.assertEqual(entry["detail"]["reason"], "certificate verify failed")

    def test_reset(self) -> None:
        client = self.failWith(
            ResponseNeverReceived([Failure(netError.ConnectionLost())])
        )
        self.assertCause(client, 502, "reset", "closed the connection")

    def test_connectTimeout(self) -> None:
        """
        C{--connect-timeout} running out (the agent's TimeoutError) is a
        504 like any other timeout.
        """
        client = self.failWith(netError.TimeoutError())
        self.assertCause(client, 504, "timeout", "did not answer in time")

    def test_responseTimeout(self) -> None:
        """
        No response headers within C{--response-timeout}: 504, whatever
        the cancelled request failed with.
        """
        client = RawClient(self.site)
        client.request(b"GET", b"/v2/lib/app/manifests/latest")
        self.reactor.advance(TIMEOUT)
        self.assertTrue(self.agent.sent[-1].cancelled)
        self.assertCause(client, 504, "timeout", "did not answer in time")

    def test_timeoutWhatever(self) -> None:
        """
        A cancelled request whose connection answers the cancellation with
        a close (as a TLS connection does) still times out as a timeout,
        not as a closed connection.
        """
        client = RawClient(self.site)
        client.request(b"GET", b"/v2/lib/app/manifests/latest")
        sent = self.agent.sent[-1]
        sent.deferred._canceller = lambda d: d.errback(
            ResponseNeverReceived([Failure(netError.ConnectionAborted())])
        )
        self.reactor.advance(TIMEOUT)
        self.assertCause(client, 504, "timeout", "did not answer in time")

    def test_clientLeftIsNoUpstreamFailure(self) -> None:
        """
        A client that leaves before the upstream answered cancels the
        upstream request; its log line blames no upstream, however the
        HTTP client reports the cancellation.
        """
        client = RawClient(self.site)
        client.request(b"GET", b"/v2/lib/app/manifests/latest")
        self.agent.sent[-1].deferred._canceller = lambda d: d.errback(
            ResponseNeverReceived([Failure(CancelledError())])
        )
        client.disconnect()
        self.assertTrue(self.agent.sent[-1].deferred.called)
        self.assertEqual(self.logged("upstream"), ["-"])

    def test_successLogsStatus(self) -> None:
        """
        A request the upstream answered logs its status, as before.
        """
        client = RawClient(self.site)
        client.request(b"GET", b"/v2/lib/app/manifests/latest")
        self.agent.sent[-1].deferred.callback(FakeResponse(404, {}, 0))
        self.assertEqual(client.response().status, 404)
        self.assertEqual(self.logged("upstream"), [404])


class BrokerWaitTests(SiteTestCase):
    """
    In broker mode the first question to the upstream (how it
    authenticates) honours C{--response-timeout} too.
    """

    auth = "broker"

    def test_schemeProbeTimeout(self) -> None:
        """
        A C{docker login} against an upstream that accepts and never
        answers gets 504 naming the upstream after C{--response-timeout},
        not after a fixed 30 s.
        """
        client = RawClient(self.makeSite(response_timeout=3))
        client.request(
            b"GET",
            b"/token?service=regproxy",
            [(b"Authorization", b"Basic YWxpY2U6d29uZGVybGFuZA==")],
        )
        self.assertEqual(len(self.agent.sent), 1)
        self.reactor.advance(2.9)
        self.assertIsNone(client.response())
        self.reactor.advance(0.1)
        entry = self.errorEntry(client, 504)
        self.assertEqual(entry["detail"]["cause"], "timeout")
        self.assertEqual(entry["detail"]["upstream"], "upstream.example:80")
        self.assertNotIn("d29uZGVybGFuZA", json.dumps(entry))


class ClassifyTests(SynchronousTestCase):
    """
    L{classifyFailure} and L{upstreamHost}, the words for what went wrong.
    """

    def test_shapes(self) -> None:
        """
        Each shape the HTTP client fails in has one cause.
        """
        cases = [
            (netError.ConnectionRefusedError(), "refused"),
            (netError.NoRouteError(), "refused"),
            (netError.DNSLookupError("x"), "dns"),
            (netError.TimeoutError(), "timeout"),
            (DeferredTimeoutError(), "timeout"),
            (ResponseFailed([Failure(netError.ConnectionLost())]), "reset"),
            (ResponseNeverReceived([Failure(netError.ConnectionDone())]), "reset"),
            (ResponseNeverReceived([Failure(SSL.Error([]))]), "tls"),
            (UpstreamError("dns", "h:1"), "dns"),
        ]
        for value, cause in cases:
            found = classifyFailure(Failure(value))
            self.assertIsNotNone(found, value)
            self.assertEqual(found[0], cause, value)
            self.assertIn(found[0], UPSTREAM_CAUSES)

    def test_notUpstream(self) -> None:
        """
        A bug is not an upstream failure, nor is a request we cancelled
        (however the HTTP client wraps the cancellation).
        """
        self.assertIsNone(classifyFailure(Failure(ZeroDivisionError())))
        self.assertIsNone(
            classifyFailure(Failure(ResponseNeverReceived([Failure(CancelledError())])))
        )
        self.assertIsNone(
            classifyFailure(Failure(netError.ConnectingCancelledError(None)))
        )
        self.assertIsNone(asUpstreamError(ZeroDivisionError(), b"http://h/"))

    def test_hostWithoutCredentials(self) -> None:
        """
        The host named never carries a user name or password from the URL.
        """
        self.assertEqual(
            upstreamHost(b"https://user:s3cret@auth.example/token?x=1"),
            "auth.example:443",
        )
        self.assertEqual(upstreamHost("http://[::1]:5000/v2/"), "[::1]:5000")
        self.assertEqual(upstreamHost(b""), "-")

    @settings(deadline=None)
    @given(st.text())
    def test_hostNeverCrashes(self, text: str) -> None:
        """
        Any text gives a host (or C{-}), never an exception.
        """
        self.assertIsInstance(upstreamHost(text), str)
