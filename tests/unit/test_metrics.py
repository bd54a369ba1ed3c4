"""
Tests for L{regproxy.metrics} and L{regproxy.proxy.measured}: what a
Prometheus scrape of a site shows before and after requests.
"""

from __future__ import annotations

from typing import Any, cast

from hypothesis import given
from hypothesis import strategies as st
from OpenSSL.SSL import Error as TLSError
from prometheus_client.parser import text_string_to_metric_families
from treq.testing import RequestTraversalAgent, StubTreq
from twisted.internet import error as netError
from twisted.internet.defer import fail
from twisted.internet.testing import MemoryReactorClock
from twisted.logger import ILogObserver
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.client import ResponseDone, ResponseNeverReceived
from twisted.web.iweb import IAgent

from regproxy.app import makeSite
from regproxy.config import Config
from regproxy.metrics import ROUTES, Metrics, MetricsSite, routeOf
from regproxy.proxy.measured import upstreamErrorCause
from regproxy.resolve.cache import CoalescingCache
from regproxy.resolve.interfaces import NameUnknown, ResolverUnavailable
from regproxy.server.site import RegproxySite
from tests.httpclient import RawClient
from tests.unit.test_streaming import FakeAgent, FakeResponse


def agentFor(agent: FakeAgent) -> IAgent:
    return cast(IAgent, agent)


def bodyProtocol(response: FakeResponse) -> Any:
    """
    The protocol regproxy gave C{response}'s body to.
    """
    assert response.protocol is not None
    return response.protocol


def metricsOf(site: RegproxySite) -> Metrics:
    assert site.metrics is not None
    return site.metrics


def observer(events: list[dict]) -> ILogObserver:
    return cast(ILogObserver, events.append)


def passthroughSite(agent: FakeAgent, reactor, **settings: Any) -> RegproxySite:
    """
    A passthrough regproxy in front of a L{FakeAgent}.
    """
    settings.setdefault("auth", "passthrough")
    config = Config(upstream="http://upstream.example", listen=(), **settings)
    return makeSite(config, reactor, agent=agentFor(agent))


REQUIRED = {
    "regproxy_requests_total": "counter",
    "regproxy_request_duration_seconds": "histogram",
    "regproxy_upstream_requests_total": "counter",
    "regproxy_upstream_errors_total": "counter",
    "regproxy_upstream_duration_seconds": "histogram",
    "regproxy_response_bytes_total": "counter",
    "regproxy_requests_in_flight": "gauge",
    "regproxy_resolver_lookups_total": "counter",
    "regproxy_balena_api_requests_total": "counter",
    "regproxy_tokens_issued_total": "counter",
    "regproxy_logins_refused_total": "counter",
    "regproxy_logins_throttled_total": "counter",
    "regproxy_cache_requests_total": "counter",
    "regproxy_cache_bytes_total": "counter",
    "regproxy_cache_size_bytes": "gauge",
    "regproxy_cache_evictions_total": "counter",
}


def scrape(metrics: Metrics) -> dict[tuple[str, tuple], float]:
    """
    Every sample of a scrape: (name, sorted labels) to value, parsed from
    the text format as Prometheus reads it.
    """
    text = metrics.exposition().decode("utf-8")
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def families(metrics: Metrics) -> dict[str, str]:
    """
    Every metric family of a scrape, by its exposed name, to its type.
    """
    text = metrics.exposition().decode("utf-8")
    return {
        family.name + ("_total" if family.type == "counter" else ""): family.type
        for family in text_string_to_metric_families(text)
    }


class ScrapeTests(SynchronousTestCase):
    def test_everyMetricFromStart(self) -> None:
        """
        A fresh scrape already lists every metric the issue asks for, with
        its type, and the fixed label values at zero.
        """
        metrics = Metrics()
        found = families(metrics)
        for name, kind in REQUIRED.items():
            self.assertEqual(found.get(name), kind, name)
        samples = scrape(metrics)
        for cause in ("refused", "dns", "tls", "timeout", "reset"):
            key = ("regproxy_upstream_errors_total", (("cause", cause),))
            self.assertEqual(samples[key], 0.0)
        for result in ("hit", "miss", "stale", "error"):
            key = ("regproxy_resolver_lookups_total", (("result", result),))
            self.assertEqual(samples[key], 0.0)
        for result in ("hit", "miss", "coalesced", "stale"):
            key = ("regproxy_cache_requests_total", (("result", result),))
            self.assertEqual(samples[key], 0.0)
        for source in ("cache", "upstream"):
            key = ("regproxy_cache_bytes_total", (("source", source),))
            self.assertEqual(samples[key], 0.0)

    def test_registriesAreSeparate(self) -> None:
        """
        Two L{Metrics} (two sites in one process) count apart.
        """
        one, two = Metrics(), Metrics()
        one.balenaAPIRequests.inc()
        one.read("regproxy_tokens_issued", lambda: 4)
        for name, value in [
            ("regproxy_balena_api_requests_total", 1.0),
            ("regproxy_tokens_issued_total", 4.0),
        ]:
            self.assertEqual(scrape(one)[(name, ())], value)
            self.assertEqual(scrape(two)[(name, ())], 0.0)

    def test_readAtScrape(self) -> None:
        """
        A metric another part counts is read from its counters at each
        scrape: the LAN cache's, for instance.
        """

        class Counters:
            hits, misses, coalesced, stale = 5, 2, 1, 0
            bytesFromCache, bytesFromUpstream = 1000, 300
            sizeBytes, evictions = 4096, 3

        metrics = Metrics()
        counters = Counters()
        metrics.readCache(counters)
        counters.hits = 6
        samples = scrape(metrics)
        for key, value in [
            (("regproxy_cache_requests_total", (("result", "hit"),)), 6.0),
            (("regproxy_cache_requests_total", (("result", "coalesced"),)), 1.0),
            (("regproxy_cache_bytes_total", (("source", "upstream"),)), 300.0),
            (("regproxy_cache_size_bytes", ()), 4096.0),
            (("regproxy_cache_evictions_total", ()), 3.0),
        ]:
            self.assertEqual(samples[key], value, key)
        self.assertEqual(families(metrics)["regproxy_cache_size_bytes"], "gauge")
        self.assertRaises(KeyError, metrics.read, "regproxy_no_such", lambda: 0)

    def test_metricsSite(self) -> None:
        """
        The C{--metrics} listener answers any path with the text format.
        """
        metrics = Metrics()
        metrics.balenaAPIRequests.inc(3)
        client = cast(Any, StubTreq(MetricsSite(metrics).resource))
        response = self.successResultOf(client.get("http://metrics/metrics"))
        self.assertEqual(response.code, 200)
        self.assertIn(b"text/plain", response.headers.getRawHeaders(b"content-type")[0])
        body = self.successResultOf(response.content())
        self.assertIn(b"regproxy_balena_api_requests_total 3.0", body)
        refused = self.successResultOf(client.post("http://metrics/metrics"))
        self.assertEqual(refused.code, 405)


class RouteTests(SynchronousTestCase):
    def test_routes(self) -> None:
        cases = {
            b"/v2/": "ping",
            b"/v2/org/fleet/manifests/1.2.3": "manifest",
            b"/v2/lib/app/blobs/sha256:abc": "blob",
            b"/v2/lib/app/blobs/uploads/": "upload",
            b"/v2/lib/app/blobs/uploads/u-1": "upload",
            b"/v2/lib/app/tags/list": "tags",
            b"/token": "token",
            b"/_health": "other",
            b"/v2/_catalog": "other",
        }
        for path, route in cases.items():
            self.assertEqual(routeOf(path), route, path)

    @given(st.binary(max_size=200))
    def test_anyPathHasARoute(self, path: bytes) -> None:
        """
        Whatever path a client sends, the route is one of the fixed few.
        """
        self.assertIn(routeOf(path), ROUTES)


class SiteMetricsTests(SynchronousTestCase):
    """
    What a site's scrape shows after requests through it.
    """

    def setUp(self) -> None:
        self.agent = FakeAgent()
        self.reactor = MemoryReactorClock()
        self.site = passthroughSite(self.agent, self.reactor, response_timeout=30)
        self.metrics = metricsOf(self.site)

    def sample(self, name: str, **labels: str) -> float:
        return scrape(self.metrics).get((name, tuple(sorted(labels.items()))), 0.0)

    def test_blobDownload(self) -> None:
        """
        A blob download counts one request by method, route and status,
        its bytes once, its duration, and one upstream request; while it
        runs it is in flight.
        """
        client = RawClient(self.site)
        client.request(b"GET", b"/v2/lib/app/blobs/sha256:" + b"a" * 64)
        self.assertEqual(self.sample("regproxy_requests_in_flight"), 1.0)
        self.reactor.advance(0.2)
        response = FakeResponse(200, {b"Content-Type": [b"x"]}, 6)
        self.agent.sent[-1].deferred.callback(response)
        bodyProtocol(response).dataReceived(b"abc")
        bodyProtocol(response).dataReceived(b"def")
        self.reactor.advance(0.3)
        bodyProtocol(response).connectionLost(Failure(ResponseDone()))
        self.assertEqual(client.completeResponse().body, b"abcdef")

        self.assertEqual(self.sample("regproxy_requests_in_flight"), 0.0)
        self.assertEqual(
            self.sample(
                "regproxy_requests_total", method="GET", route="blob", code="200"
            ),
            1.0,
        )
        self.assertEqual(self.sample("regproxy_response_bytes_total"), 6.0)
        self.assertEqual(
            self.sample("regproxy_request_duration_seconds_sum", route="blob"), 0.5
        )
        self.assertEqual(
            self.sample("regproxy_upstream_requests_total", code="200"), 1.0
        )
        self.assertEqual(self.sample("regproxy_upstream_duration_seconds_sum"), 0.2)

    def test_oddMethodIsOther(self) -> None:
        """
        A method we do not know is counted as C{other}: clients cannot
        make new series.
        """
        client = RawClient(self.site)
        client.request(b"BREW", b"/_health")
        code = str(client.completeResponse().status)
        self.assertEqual(
            self.sample(
                "regproxy_requests_total", method="other", route="other", code=code
            ),
            1.0,
        )
        self.assertNotIn("BREW", self.metrics.exposition().decode())

    def test_upstreamRefused(self) -> None:
        client = RawClient(self.site)
        client.request(b"GET", b"/v2/")
        self.agent.sent[-1].deferred.errback(netError.ConnectionRefusedError())
        self.assertEqual(client.completeResponse().status, 502)
        self.assertEqual(
            self.sample("regproxy_upstream_errors_total", cause="refused"), 1.0
        )
        self.assertEqual(
            self.sample(
                "regproxy_requests_total", method="GET", route="ping", code="502"
            ),
            1.0,
        )

    def test_upstreamResponseTimeout(self) -> None:
        """
        The response timeout counts as C{timeout}, once (not also as the
        cancellation it is done by).
        """
        client = RawClient(self.site)
        client.request(b"GET", b"/v2/")
        self.reactor.advance(30)
        self.assertEqual(client.completeResponse().status, 504)
        samples = scrape(self.metrics)
        errors = {
            labels: value
            for (name, labels), value in samples.items()
            if name == "regproxy_upstream_errors_total" and value
        }
        self.assertEqual(errors, {(("cause", "timeout"),): 1.0})

    def test_clientGoneIsNoUpstreamError(self) -> None:
        client = RawClient(self.site)
        client.request(b"GET", b"/v2/")
        client.disconnect()
        samples = scrape(self.metrics)
        self.assertFalse(
            [
                v
                for (name, _), v in samples.items()
                if name == "regproxy_upstream_errors_total" and v
            ]
        )
        self.assertEqual(self.sample("regproxy_requests_in_flight"), 0.0)


class CauseTests(SynchronousTestCase):
    def test_causes(self) -> None:
        cases = [
            (netError.ConnectionRefusedError(), "refused"),
            (netError.DNSLookupError("x"), "dns"),
            (netError.TimeoutError(), "timeout"),
            (ResponseNeverReceived([Failure(netError.ConnectionLost())]), "reset"),
            (ResponseNeverReceived([Failure(TLSError([]))]), "tls"),
            (ZeroDivisionError(), "other"),
        ]
        for error, cause in cases:
            self.assertEqual(upstreamErrorCause(Failure(error)), cause, error)


class ResolverLookupTests(SynchronousTestCase):
    """
    The resolver cache counts each lookup as a hit, a miss, a stale answer
    or an error.
    """

    def setUp(self) -> None:
        self.clock = MemoryReactorClock()
        self.metrics = Metrics()
        self.cache = CoalescingCache(self.clock, ttl=10)
        self.metrics.read("regproxy_resolver_lookups", lambda: self.cache.lookups)

    def lookups(self) -> dict[str, float]:
        samples = scrape(self.metrics)
        return {
            labels[0][1]: value
            for (name, labels), value in samples.items()
            if name == "regproxy_resolver_lookups_total"
        }

    def test_outcomes(self) -> None:
        self.successResultOf(self.cache.get("k", _ok))
        self.successResultOf(self.cache.get("k", _ok))
        self.clock.advance(11)
        unavailable = lambda: fail(ResolverUnavailable("down", 502))  # noqa: E731
        self.successResultOf(self.cache.get("k", unavailable))
        self.failureResultOf(self.cache.get("other", unavailable))
        self.failureResultOf(self.cache.get("gone", lambda: fail(NameUnknown("x"))))
        self.assertEqual(
            self.lookups(), {"hit": 1.0, "miss": 2.0, "stale": 1.0, "error": 1.0}
        )


def _ok():
    from twisted.internet.defer import succeed

    return succeed("answer")


class RequestTraversalSmoke(SynchronousTestCase):
    def test_tokenMetrics(self) -> None:
        """
        In broker mode a token from C{/token} counts as issued.
        """
        from tests.unit.test_forward import FakeRegistry

        registry = FakeRegistry()
        site = makeSite(
            Config(
                upstream="http://upstream.example", listen=(), state_dir=self.mktemp()
            ),
            MemoryReactorClock(),
            agent=RequestTraversalAgent(registry),
        )
        client = RawClient(site)
        client.request(b"GET", b"/token?service=regproxy")
        self.assertEqual(client.completeResponse().status, 200)
        self.assertEqual(
            scrape(metricsOf(site))[("regproxy_tokens_issued_total", ())], 1.0
        )
