"""
Tests for L{regproxy.server.health}: C{/_ready} through the whole site.
"""

from __future__ import annotations

import json

from twisted.internet import error as netError
from twisted.internet.testing import MemoryReactorClock
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.client import ResponseDone

from regproxy.server.health import ReadyResource, UpstreamProbe
from tests.httpclient import RawClient
from tests.unit.test_metrics import agentFor, bodyProtocol, passthroughSite
from tests.unit.test_streaming import FakeAgent, FakeResponse


class ReadyTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.agent = FakeAgent()
        self.reactor = MemoryReactorClock()
        self.site = passthroughSite(self.agent, self.reactor)

    def ask(self) -> RawClient:
        client = RawClient(self.site)
        client.request(b"GET", b"/_ready")
        return client

    def answer(self, code: int) -> None:
        response = FakeResponse(code, {}, 2)
        self.agent.sent[-1].deferred.callback(response)
        bodyProtocol(response).dataReceived(b"{}")
        bodyProtocol(response).connectionLost(Failure(ResponseDone()))

    def body(self, client: RawClient) -> tuple[int, dict]:
        response = client.completeResponse()
        return response.status, json.loads(response.body)

    def test_upstreamAnswers(self) -> None:
        """
        An upstream whose C{/v2/} answers (a 401 too) makes us ready.
        """
        client = self.ask()
        self.assertEqual(self.agent.sent[-1].uri, b"http://upstream.example/v2/")
        self.answer(401)
        status, body = self.body(client)
        self.assertEqual(status, 200)
        self.assertEqual(body["status"], "ready")
        self.assertEqual(body["reason"], "the upstream answered 401")

    def test_upstreamDown(self) -> None:
        """
        An upstream that refuses connections: 503 with the reason.
        """
        client = self.ask()
        self.agent.sent[-1].deferred.errback(netError.ConnectionRefusedError())
        status, body = self.body(client)
        self.assertEqual(status, 503)
        self.assertEqual(body["status"], "unavailable")
        self.assertIn("ConnectionRefusedError", body["reason"])

    def test_upstreamError(self) -> None:
        client = self.ask()
        self.answer(503)
        status, body = self.body(client)
        self.assertEqual(status, 503)
        self.assertEqual(body["reason"], "the upstream answered 503")

    def test_timeout(self) -> None:
        """
        An upstream that does not answer within the probe's few seconds
        is unavailable, whatever the response timeout of clients is.
        """
        client = self.ask()
        self.reactor.advance(3)
        status, body = self.body(client)
        self.assertEqual(status, 503)
        self.assertTrue(self.agent.sent[-1].cancelled)

    def test_rememberedForAFewSeconds(self) -> None:
        """
        Polling C{/_ready} asks the upstream at most once per five seconds,
        and polls during a probe share it.
        """
        first, second = self.ask(), self.ask()
        self.assertEqual(len(self.agent.sent), 1)
        self.answer(200)
        self.assertEqual(self.body(first)[0], 200)
        self.assertEqual(self.body(second)[0], 200)
        self.reactor.advance(4)
        self.assertEqual(self.body(self.ask())[0], 200)
        self.assertEqual(len(self.agent.sent), 1)
        self.reactor.advance(1)
        self.ask()
        self.assertEqual(len(self.agent.sent), 2)

    def test_clientRequestsDoNotProbe(self) -> None:
        """
        Clients' requests never make a probe.
        """
        RawClient(self.site).request(b"GET", b"/v2/")
        self.assertEqual(
            [s.uri for s in self.agent.sent], [b"http://upstream.example/v2/"]
        )

    def test_cacheCanServe(self) -> None:
        """
        With the upstream down, a cache that can serve keeps us ready.
        """
        probe = UpstreamProbe(
            agentFor(self.agent), b"http://upstream.example/v2/", self.reactor
        )
        self.site.resource.putChild(b"_ready", ReadyResource(probe, lambda: True))
        client = self.ask()
        self.agent.sent[-1].deferred.errback(netError.ConnectionRefusedError())
        status, body = self.body(client)
        self.assertEqual(status, 200)
        self.assertFalse(body["upstream"]["reachable"])
        self.assertIn("the cache can serve", body["reason"])

    def test_onlyGET(self) -> None:
        """
        Another method gets a registry-format 405, and no probe.
        """
        client = RawClient(self.site)
        client.request(b"POST", b"/_ready", body=b"")
        response = client.completeResponse()
        self.assertEqual(response.status, 405)
        self.assertEqual(json.loads(response.body)["errors"][0]["code"], "UNSUPPORTED")
        self.assertEqual(self.agent.sent, [])
