# -*- test-case-name: tests.unit.test_metrics -*-
"""
regproxy's Prometheus metrics: one L{Metrics} per site, each with its own
L{CollectorRegistry}, so tests and several sites in one process never see
each other's numbers.

Every metric exists from the start, with its fixed labels pre-declared, so
a scrape of a regproxy that has served nothing already shows every series
at zero.  Parts that measure something take a L{Metrics} (a private one by
default, which nobody scrapes), so their counting is one C{.inc()} call
without an C{if}.
"""

from __future__ import annotations

from typing import Any

import attrs
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest
from twisted.web.resource import Resource
from twisted.web.server import Request, Site

ROUTES = ("ping", "manifest", "blob", "upload", "tags", "token", "other")
UPSTREAM_ERROR_CAUSES = ("refused", "dns", "tls", "timeout", "reset", "other")
RESOLVER_RESULTS = ("hit", "miss", "stale", "error")
CACHE_RESULTS = ("hit", "miss", "coalesced", "stale")
CACHE_SOURCES = ("cache", "upstream")
# Any other method a client sends is counted as "other": the label set
# must stay small whatever clients send.
METHODS = frozenset({b"GET", b"HEAD", b"POST", b"PUT", b"PATCH", b"DELETE", b"OPTIONS"})

# Registry answers take milliseconds; a big layer minutes.
DURATION_BUCKETS = (
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
    60.0,
    300.0,
    float("inf"),
)


def routeOf(path: bytes) -> str:
    """
    Which kind of registry request C{path} is, for the C{route} label (a
    small fixed set: never the repository name, which would make a series
    per image).
    """
    if path == b"/token" or path.startswith(b"/token?"):
        return "token"
    if not path.startswith(b"/v2/"):
        return "other"
    if path == b"/v2/":
        return "ping"
    if b"/blobs/uploads/" in path or path.endswith(b"/blobs/uploads"):
        return "upload"
    if b"/manifests/" in path:
        return "manifest"
    if b"/blobs/" in path:
        return "blob"
    if path.endswith(b"/tags/list"):
        return "tags"
    return "other"


def _counter(registry, name, doc, labels=(), values=()) -> Counter:
    counter = Counter(name, doc, labels, registry=registry)
    for value in values:
        counter.labels(value)
    return counter


class Metrics:
    """
    Every metric regproxy exports, registered in L{registry} (a new one by
    default).

    Counter names are given without C{_total}: prometheus-client adds it.
    """

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = r = registry or CollectorRegistry()
        self.requests = Counter(
            "regproxy_requests",
            "Client requests answered, by method, kind of request and status.",
            ("method", "route", "code"),
            registry=r,
        )
        self.requestDuration = Histogram(
            "regproxy_request_duration_seconds",
            "Time from a request's headers to its last byte, by kind of request.",
            ("route",),
            buckets=DURATION_BUCKETS,
            registry=r,
        )
        for route in ROUTES:
            self.requestDuration.labels(route)
        self.responseBytes = Counter(
            "regproxy_response_bytes",
            "Response body bytes sent to clients.",
            registry=r,
        )
        self.inFlight = Gauge(
            "regproxy_requests_in_flight",
            "Client requests being answered now.",
            registry=r,
        )
        self.upstreamRequests = Counter(
            "regproxy_upstream_requests",
            "Requests to the upstream registry that got an answer, by status.",
            ("code",),
            registry=r,
        )
        self.upstreamErrors = _counter(
            r,
            "regproxy_upstream_errors",
            "Requests to the upstream registry that got no answer, by cause.",
            ("cause",),
            UPSTREAM_ERROR_CAUSES,
        )
        self.upstreamDuration = Histogram(
            "regproxy_upstream_duration_seconds",
            "Time until the upstream's response headers.",
            buckets=DURATION_BUCKETS,
            registry=r,
        )
        self.resolverLookups = _counter(
            r,
            "regproxy_resolver_lookups",
            "Name lookups by the resolver cache, by outcome.",
            ("result",),
            RESOLVER_RESULTS,
        )
        self.balenaAPIRequests = _counter(
            r, "regproxy_balena_api_requests", "Requests sent to the balena API."
        )
        self.tokensIssued = _counter(
            r, "regproxy_tokens_issued", "Tokens signed at our /token."
        )
        self.loginsRefused = _counter(
            r, "regproxy_logins_refused", "Logins refused at our /token."
        )
        self.loginsThrottled = _counter(
            r,
            "regproxy_logins_throttled",
            "Logins turned away at our /token for too many failures.",
        )
        self._cacheMetrics(r)

    def _cacheMetrics(self, r: CollectorRegistry) -> None:
        self.cacheRequests = _counter(
            r,
            "regproxy_cache_requests",
            "Requests the LAN cache was asked, by outcome.",
            ("result",),
            CACHE_RESULTS,
        )
        self.cacheBytes = _counter(
            r,
            "regproxy_cache_bytes",
            "Bytes the LAN cache served, by where they came from.",
            ("source",),
            CACHE_SOURCES,
        )
        self.cacheSize = Gauge(
            "regproxy_cache_size_bytes", "Bytes held by the LAN cache.", registry=r
        )
        self.cacheEvictions = _counter(
            r, "regproxy_cache_evictions", "Entries evicted from the LAN cache."
        )

    def observeRequest(
        self, method: bytes, path: bytes, code: int, sent: int, duration: float
    ) -> None:
        """
        Count one finished client request: called once per request, never
        per chunk.
        """
        route = routeOf(path)
        methodLabel = method.decode("ascii") if method in METHODS else "other"
        self.requests.labels(methodLabel, route, str(code)).inc()
        self.requestDuration.labels(route).observe(duration)
        if sent:
            self.responseBytes.inc(sent)

    def exposition(self) -> bytes:
        """
        The Prometheus text format of every metric.
        """
        return generate_latest(self.registry)


class MetricsResource(Resource):
    """
    A scrape target: C{GET} any path for the text format.
    """

    isLeaf = True

    def __init__(self, metrics: Metrics) -> None:
        super().__init__()
        self._metrics = metrics

    def render_GET(self, request: Request) -> bytes:
        request.setHeader(b"Content-Type", CONTENT_TYPE_LATEST.encode("ascii"))
        return self._metrics.exposition()


class MetricsSite(Site):
    """
    The C{--metrics} listener: every path is the scrape, and scrapes are
    not logged (one line every few seconds would drown the request log).
    """

    noisy = False

    def __init__(self, metrics: Metrics, reactor=None) -> None:
        super().__init__(MetricsResource(metrics), reactor=reactor)

    def log(self, request) -> None:
        pass


@attrs.frozen
class CountedClient:
    """
    A treq-like client (C{get} only, as the balena resolver uses) that
    counts the requests it sends.
    """

    client: Any
    counter: Counter

    def get(self, *args: Any, **kwargs: Any) -> Any:
        self.counter.inc()
        return self.client.get(*args, **kwargs)
