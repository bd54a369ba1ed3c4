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

from collections.abc import Callable, Iterator
from typing import Any

import attrs
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.registry import Collector
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request, Site

from regproxy.server.errors import methodNotAllowed

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


@attrs.frozen
class ReadMetric:
    """
    A metric whose value another part keeps (see L{Metrics.read}).
    """

    kind: str  # "counter" or "gauge"
    help: str
    label: str | None = None
    values: tuple[str, ...] = ()


#: Read at scrape time; names given without C{_total} (the exposition adds
#: it to counters).
READ_METRICS = {
    "regproxy_resolver_lookups": ReadMetric(
        "counter",
        "Name lookups by the resolver cache, by outcome.",
        "result",
        RESOLVER_RESULTS,
    ),
    "regproxy_tokens_issued": ReadMetric("counter", "Tokens signed at our /token."),
    "regproxy_logins_refused": ReadMetric(
        "counter", "Logins refused at our /token for wrong credentials."
    ),
    "regproxy_logins_throttled": ReadMetric(
        "counter", "Logins turned away (429) at our /token for too many failures."
    ),
    "regproxy_cache_requests": ReadMetric(
        "counter",
        "Requests the LAN cache answered, by outcome.",
        "result",
        CACHE_RESULTS,
    ),
    "regproxy_cache_bytes": ReadMetric(
        "counter",
        "Bytes the LAN cache served, by where they came from.",
        "source",
        CACHE_SOURCES,
    ),
    "regproxy_cache_size_bytes": ReadMetric("gauge", "Bytes held by the LAN cache."),
    "regproxy_cache_evictions": ReadMetric(
        "counter", "Entries evicted from the LAN cache."
    ),
}


class _Readings(Collector):
    """
    Yields every L{READ_METRICS} entry from its source, zero without one.
    """

    def __init__(self) -> None:
        self.sources: dict[str, Callable[[], Any]] = {}

    def collect(self) -> Iterator[Metric]:
        for name, spec in READ_METRICS.items():
            source = self.sources.get(name)
            value = source() if source is not None else None
            family: Metric
            if spec.kind == "counter":
                labels = [spec.label] if spec.label else None
                family = CounterMetricFamily(name, spec.help, labels=labels)
            else:
                family = GaugeMetricFamily(name, spec.help)
            if spec.label is None:
                family.add_metric([], float(value or 0))
            else:
                for label in spec.values:
                    family.add_metric([label], float((value or {}).get(label, 0)))
            yield family


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
        self.balenaAPIRequests = _counter(
            r, "regproxy_balena_api_requests", "Requests sent to the balena API."
        )
        self._readings = _Readings()
        r.register(self._readings)

    def read(self, name: str, source: Callable[[], Any]) -> None:
        """
        Read metric C{name} (one of L{READ_METRICS}) from C{source} at each
        scrape: the counters other parts keep as plain numbers (the token
        issuer, the login throttle, the LAN cache), so that counting costs
        them nothing.  C{source} returns a number, or for a labelled metric
        a mapping of label value to number.
        """
        if name not in READ_METRICS:
            raise KeyError(name)
        self._readings.sources[name] = source

    def readCache(self, counters: Any) -> None:
        """
        Read the LAN cache's metrics from its counters: the attributes
        C{hits}, C{misses}, C{coalesced}, C{stale}, C{bytesFromCache},
        C{bytesFromUpstream}, C{sizeBytes} and C{evictions}.
        """
        self.read(
            "regproxy_cache_requests",
            lambda: {
                "hit": counters.hits,
                "miss": counters.misses,
                "coalesced": counters.coalesced,
                "stale": counters.stale,
            },
        )
        self.read(
            "regproxy_cache_bytes",
            lambda: {
                "cache": counters.bytesFromCache,
                "upstream": counters.bytesFromUpstream,
            },
        )
        self.read("regproxy_cache_size_bytes", lambda: counters.sizeBytes)
        self.read("regproxy_cache_evictions", lambda: counters.evictions)

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

    def render(self, request: Request) -> object:
        if request.method not in (b"GET", b"HEAD"):
            methodNotAllowed(request, (b"GET",))
            return NOT_DONE_YET
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
