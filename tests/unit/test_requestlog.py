"""
Tests for the one log line per request (L{regproxy.server.site}) in its
text and JSON forms (L{regproxy.server.logformat}).
"""

from __future__ import annotations

import io
import json

from twisted.internet.testing import MemoryReactorClock
from twisted.logger import Logger, formatEvent
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from regproxy.server.logformat import REQUEST_FIELDS, JSONLineObserver, jsonRecord
from regproxy.server.site import RegproxySite
from regproxy.testing.fakebalena import ALICE_KEY
from tests.httpclient import RawClient
from tests.unit.test_broker import FleetTestCase, basic
from tests.unit.test_metrics import (
    bodyProtocol,
    metricsOf,
    observer,
    passthroughSite,
    scrape,
)
from tests.unit.test_streaming import FakeAgent, FakeResponse


class BrokeredLogTests(FleetTestCase):
    """
    A fleet pull through the broker, as its log line and scrape show it.
    """

    def setUp(self) -> None:
        super().setUp()
        self.events: list[dict] = []
        self.site._log = Logger(observer=observer(self.events))

    def requestEvents(self) -> list[dict]:
        return [e for e in self.events if e.get("regproxy_request")]

    def test_fleetPull(self) -> None:
        """
        The line names the client, the account, the name asked for and the
        repository it became, status, bytes, duration and upstream status;
        never the API key the client logged in with.
        """
        repository = self.fixture.repository("acme/public-app", "1.2.3+rev2")
        response = self.pull("acme/public-app", "1.2.3", basic("alice", ALICE_KEY))
        self.assertEqual(response.status, 200)
        token, pull = self.requestEvents()
        self.assertEqual(token["path"], "/token")
        self.assertEqual(token["account"], "alice")
        text = formatEvent(pull)
        self.assertEqual(
            text,
            f"127.0.0.1 alice GET /v2/acme/public-app/manifests/1.2.3 -> 200 "
            f"{len(response.body)}B 0.000s name=acme/public-app "
            f"repository={repository} upstream=200 cache=-",
        )
        for event in self.events:
            self.assertNotIn(ALICE_KEY, formatEvent(event))
            self.assertNotIn(ALICE_KEY, json.dumps(jsonRecord(event), default=str))

        record = jsonRecord(pull)
        self.assertEqual(
            {k: record[k] for k in REQUEST_FIELDS},
            {
                "client": "127.0.0.1",
                "account": "alice",
                "method": "GET",
                "path": "/v2/acme/public-app/manifests/1.2.3",
                "name": "acme/public-app",
                "repository": repository,
                "code": 200,
                "bytes": len(response.body),
                "duration": 0.0,
                "upstream": 200,
                "cache": None,
                "aborted": False,
                "received": 0,
            },
        )

    def test_countedInScrape(self) -> None:
        """
        The same pull moves the resolver, balena API and token counters;
        a wrong password moves the refused logins.
        """
        self.pull("acme/public-app", "1.2.3", basic("alice", ALICE_KEY))
        samples = scrape(metricsOf(self.site))
        self.assertEqual(samples[("regproxy_tokens_issued_total", ())], 1.0)
        self.assertGreater(samples[("regproxy_balena_api_requests_total", ())], 0)
        self.assertEqual(
            samples[("regproxy_resolver_lookups_total", (("result", "miss"),))], 1.0
        )
        self.assertEqual(samples[("regproxy_logins_refused_total", ())], 0.0)
        response = self.tokenResponse([], basic("alice", "wrong"))
        self.assertEqual(response.status, 401)
        samples = scrape(metricsOf(self.site))
        self.assertEqual(samples[("regproxy_logins_refused_total", ())], 1.0)


def loggedSite(reactor=None) -> tuple[FakeAgent, RegproxySite, list[dict]]:
    """
    A passthrough site in front of a L{FakeAgent}, and the events it logs.
    """
    agent = FakeAgent()
    site = passthroughSite(agent, reactor or MemoryReactorClock())
    events: list[dict] = []
    site._log = Logger(observer=observer(events))
    return agent, site, events


class AbortedLogTests(SynchronousTestCase):
    def test_clientCutsDownload(self) -> None:
        """
        A download the client cuts is logged, once, with the bytes sent
        until then, and counted in the scrape.
        """
        reactor = MemoryReactorClock()
        agent, site, events = loggedSite(reactor)
        client = RawClient(site)
        client.request(b"GET", b"/v2/lib/app/blobs/sha256:" + b"a" * 64)
        response = FakeResponse(200, {}, 1000)
        agent.sent[-1].deferred.callback(response)
        bodyProtocol(response).dataReceived(b"x" * 300)
        reactor.advance(2)
        client.disconnect()
        from twisted.web.client import ResponseDone

        bodyProtocol(response).connectionLost(Failure(ResponseDone()))
        (event,) = events
        self.assertTrue(event["aborted"])
        self.assertEqual(event["bytes"], 300)
        self.assertEqual(event["code"], 200)
        self.assertTrue(formatEvent(event).endswith(" aborted"))
        self.assertIn("-> 200 300B 2.000s", formatEvent(event))
        samples = scrape(metricsOf(site))
        self.assertEqual(samples[("regproxy_response_bytes_total", ())], 300.0)
        self.assertEqual(samples[("regproxy_requests_in_flight", ())], 0.0)

    def test_cutBeforeAnswer(self) -> None:
        """
        A request cut before any answer is logged as 499.
        """
        agent, site, events = loggedSite()
        client = RawClient(site)
        client.request(b"GET", b"/v2/lib/app/manifests/1")
        client.disconnect()
        (event,) = events
        self.assertEqual(
            (event["code"], event["bytes"], event["aborted"]), (499, 0, True)
        )


class JSONObserverTests(SynchronousTestCase):
    def test_oneObjectPerLine(self) -> None:
        """
        Each event is one line of JSON; events other than requests carry
        their formatted message.
        """
        out = io.StringIO()
        log = Logger(observer=JSONLineObserver(out))
        log.info("listening on {where}", where="tcp:80")
        log.info(
            "x",
            regproxy_request=True,
            client="192.0.2.1",
            method="GET",
            code=200,
            duration=0.25,
            upstream="-",
        )
        first, second = (json.loads(line) for line in out.getvalue().splitlines())
        self.assertEqual(first["message"], "listening on tcp:80")
        self.assertEqual(first["level"], "info")
        self.assertTrue(first["time"].endswith("Z"))
        self.assertEqual(second["event"], "request")
        self.assertEqual(second["client"], "192.0.2.1")
        self.assertEqual(second["duration"], 0.25)
        self.assertIsNone(second["upstream"])

    def test_failure(self) -> None:
        out = io.StringIO()
        log = Logger(observer=JSONLineObserver(out))
        try:
            raise ZeroDivisionError("for the test")
        except ZeroDivisionError:
            log.failure("oops")
        (record,) = (json.loads(line) for line in out.getvalue().splitlines())
        self.assertEqual(record["level"], "critical")
        self.assertIn("ZeroDivisionError", record["traceback"])


class PassthroughLogTests(SynchronousTestCase):
    def test_nameInPassthrough(self) -> None:
        """
        In passthrough mode the name asked for is the repository upstream.
        """
        agent, site, events = loggedSite()
        client = RawClient(site)
        client.request(b"HEAD", b"/v2/lib/app/manifests/1")
        agent.sent[-1].deferred.callback(FakeResponse(404, {}, 0))
        (event,) = events
        self.assertEqual((event["name"], event["repository"]), ("lib/app", "lib/app"))
        self.assertEqual((event["code"], event["upstream"]), (404, 404))
