"""
regproxy in front of upstreams that fail for real, on loopback sockets: a
closed port, a name that does not resolve, a certificate nobody trusts, a
server that accepts and never answers, one that stalls mid-body.  Each
failure must reach the client as the right status with the cause and host
named, and reach the log line, in about the configured time.
"""

from __future__ import annotations

import hashlib
import ipaddress
import json
import socket
from typing import cast

import attrs
from twisted.internet import reactor, ssl
from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorSSL
from twisted.internet.protocol import Protocol, ServerFactory, connectionDone
from twisted.logger import ILogObserver, Logger, formatEvent, globalLogPublisher
from twisted.python.failure import Failure
from twisted.trial.unittest import TestCase
from twisted.web.client import Agent, HTTPConnectionPool, ResponseDone, readBody
from twisted.web.http_headers import Headers

from regproxy.server.site import RegproxySite
from regproxy.tls.hostnames import SubjectNames
from regproxy.tls.selfsigned import generateSelfSigned

from .proxy import startProxy

_LAYER = b"/v2/lib/app/blobs/sha256:" + b"a" * 64


@attrs.frozen
class Upstream:
    """
    Where the proxy forwards to: what L{startProxy} needs of a registry.
    """

    url: str
    caFile: str | None = None


def closedPort() -> int:
    """
    A loopback port nobody listens on.
    """
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Silent(Protocol):
    """
    Accepts a connection and never answers.
    """


class Stall(Protocol):
    """
    Answers the first request with the headers of a 10 MB body, sends
    100 KB of it, then nothing.
    """

    def dataReceived(self, data: bytes) -> None:
        assert self.transport is not None
        if not getattr(self, "answered", False) and b"\r\n\r\n" in data:
            self.answered = True
            self.transport.write(
                b"HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\n"
                b"Content-Length: 10000000\r\n\r\n" + b"x" * 100_000
            )


_BLOB = b"layer bytes " * 100_000
_BLOB_PATH = b"/v2/lib/app/blobs/sha256:" + hashlib.sha256(_BLOB).hexdigest().encode()


class StallFirst(Protocol):
    """
    Answers the first request on the first connection with 100 KB of
    L{_BLOB}, then nothing; later connections get it whole.
    """

    def dataReceived(self, data: bytes) -> None:
        assert self.transport is not None
        if getattr(self, "answered", False) or b"\r\n\r\n" not in data:
            return
        self.answered = True
        first = cast(TrackedFactory, self.factory).connections[0] is self
        self.transport.write(
            b"HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\n"
            b"Content-Length: %d\r\n\r\n"
            % (len(_BLOB),)
            + (_BLOB[:100_000] if first else _BLOB)
        )


class Collect(Protocol):
    """
    Counts a response body's bytes and says how it ended.
    """

    def __init__(self) -> None:
        self.received = 0
        self.reason: Failure | None = None
        self.done: Deferred[None] = Deferred()

    def dataReceived(self, data: bytes) -> None:
        self.received += len(data)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self.reason = reason
        self.done.callback(None)


class TrackedFactory(ServerFactory):
    """
    A server whose connections the test aborts at cleanup.
    """

    noisy = False

    def __init__(self, protocol: type[Protocol]) -> None:
        self.protocol = protocol
        self.connections: list[Protocol] = []

    def buildProtocol(self, addr):
        built = super().buildProtocol(addr)
        self.connections.append(built)
        return built


class UpstreamFailureTests(TestCase):
    timeout = 30

    def setUp(self) -> None:
        self.pool = HTTPConnectionPool(reactor, persistent=False)
        self.client = Agent(reactor, pool=self.pool)
        self.events: list[dict] = []

    def serve(self, protocol: type[Protocol], tls: bool = False) -> str:
        """
        Listen with C{protocol} on a loopback port until the test ends.
        """
        factory = TrackedFactory(protocol)
        if tls:
            certified = generateSelfSigned(
                SubjectNames(["localhost"], [ipaddress.ip_address("127.0.0.1")])
            )
            options = ssl.PrivateCertificate.loadPEM(
                certified.keyPEM() + certified.certificatePEM()
            ).options()
            port = cast(IReactorSSL, reactor).listenSSL(
                0, factory, options, interface="127.0.0.1"
            )
        else:
            port = reactor.listenTCP(0, factory, interface="127.0.0.1")

        def stop():
            for connection in factory.connections:
                # Under TLS, the TCP connection under the TLS one.
                tcp = getattr(connection.transport, "transport", connection.transport)
                if tcp is not None and tcp.connected:
                    tcp.abortConnection()
            return port.stopListening()

        self.addCleanup(stop)
        scheme = "https" if tls else "http"
        address = port.getHost()
        assert isinstance(address, IPv4Address)
        return f"{scheme}://127.0.0.1:{address.port}"

    def proxy(self, upstream: str, **settings):
        proxy = startProxy(
            self,
            Upstream(upstream),
            auth=settings.pop("auth", "passthrough"),
            # The relay's own waits, unless a test turns the cache on to
            # test its fills' (test_stalledBodyCacheOn).
            cache_size=settings.pop("cache_size", 0),
            **settings,
        )
        site = cast(RegproxySite, proxy.site)
        site._log = Logger(observer=cast(ILogObserver, self.events.append))
        return proxy

    async def get(self, proxy, path: bytes = b"/v2/lib/app/manifests/latest"):
        response = await self.client.request(
            b"GET", proxy.url.encode() + path, Headers({b"Accept": [b"*/*"]})
        )
        return response, await readBody(response)

    def upstreamErrors(self, proxy) -> dict[str, float]:
        """
        The non-zero C{regproxy_upstream_errors_total} counts, by cause.
        """
        registry = proxy.site.metrics.registry
        counts = {}
        for metric in registry.collect():
            for sample in metric.samples:
                if sample.name == "regproxy_upstream_errors_total" and sample.value:
                    counts[sample.labels["cause"]] = sample.value
        return counts

    def assertCause(self, response, body: bytes, status: int, cause: str, host: str):
        self.assertEqual(response.code, status, body)
        [entry] = json.loads(body)["errors"]
        self.assertEqual(entry["code"], "UNAVAILABLE")
        self.assertEqual(entry["detail"]["cause"], cause)
        self.assertEqual(entry["detail"]["upstream"], host)
        self.assertIn(host, entry["message"])
        logged = [event["upstream"] for event in self.events if "upstream" in event]
        self.assertEqual(logged, [f"{cause}@{host}"])
        return entry

    async def assertLoginTimesOut(self, proxy, upstream: str) -> None:
        """
        A C{docker login} through C{proxy} (run with C{--response-timeout
        1}) gets 504 naming C{upstream} within a few seconds.
        """
        started = reactor.seconds()
        response = await self.client.request(
            b"GET",
            proxy.url.encode() + b"/token?service=regproxy",
            Headers({b"Authorization": [b"Basic YWxpY2U6d29uZGVybGFuZA=="]}),
        )
        body = await readBody(response)
        self.assertLess(reactor.seconds() - started, 5)
        self.assertCause(
            response, body, 504, "timeout", upstream.removeprefix("http://")
        )

    async def test_refused(self) -> None:
        """
        A closed port: 502, cause C{refused}.
        """
        port = closedPort()
        proxy = self.proxy(f"http://127.0.0.1:{port}")
        response, body = await self.get(proxy)
        self.assertCause(response, body, 502, "refused", f"127.0.0.1:{port}")
        self.assertEqual(self.upstreamErrors(proxy), {"refused": 1.0})

    async def test_dns(self) -> None:
        """
        A name that cannot resolve (C{.invalid} never does): 502, cause
        C{dns}.
        """
        proxy = self.proxy("http://nonexistent.invalid")
        response, body = await self.get(proxy)
        self.assertCause(response, body, 502, "dns", "nonexistent.invalid:80")

    async def test_tls(self) -> None:
        """
        An upstream whose certificate we do not trust: 502, cause C{tls},
        and the reason says the certificate did not verify.
        """
        upstream = self.serve(Silent, tls=True)
        proxy = self.proxy(upstream)
        response, body = await self.get(proxy)
        host = upstream.removeprefix("https://")
        entry = self.assertCause(response, body, 502, "tls", host)
        self.assertEqual(self.upstreamErrors(proxy), {"tls": 1.0})
        self.assertIn("certificate verify failed", entry["detail"]["reason"])

    async def test_silent(self) -> None:
        """
        An upstream that accepts and never answers, with
        C{--response-timeout 1}: 504, cause C{timeout}, after about a second.
        """
        upstream = self.serve(Silent)
        proxy = self.proxy(upstream, response_timeout=1)
        started = reactor.seconds()
        response, body = await self.get(proxy)
        elapsed = reactor.seconds() - started
        self.assertCause(
            response, body, 504, "timeout", upstream.removeprefix("http://")
        )
        self.assertGreaterEqual(elapsed, 1)
        self.assertLess(elapsed, 5)
        # Counted once, as a timeout: the aborted connection under the
        # cancelled request is not also a reset.
        self.assertEqual(self.upstreamErrors(proxy), {"timeout": 1.0})

    async def test_silentBroker(self) -> None:
        """
        The same in broker mode, where the first wait is the probe of how
        the upstream authenticates (which once waited a fixed 30 s): a
        C{docker login} gets 504 after about a second.
        """
        upstream = self.serve(Silent)
        proxy = self.proxy(upstream, response_timeout=1, auth="broker")
        await self.assertLoginTimesOut(proxy, upstream)

    async def test_stalledProbeBody(self) -> None:
        """
        In broker mode, an upstream whose C{/v2/} answer stalls mid-body:
        a C{docker login} gets 504 after about a second, not never.
        """
        upstream = self.serve(Stall)
        proxy = self.proxy(upstream, response_timeout=1, auth="broker")
        await self.assertLoginTimesOut(proxy, upstream)

    async def test_stalledBody(self) -> None:
        """
        An upstream that promises 10 MB, sends 100 KB and stalls: with
        C{--response-timeout 1} the client's connection is closed about a
        second later, and the client sees a short body, never a whole one.
        """
        upstream = self.serve(Stall)
        proxy = self.proxy(upstream, response_timeout=1)
        await self.assertCutAfterStall(proxy, _LAYER, 10_000_000)
        self.assertEqual(self.upstreamErrors(proxy), {"timeout": 1})

    async def assertCutAfterStall(self, proxy, path: bytes, length: int) -> None:
        """
        A GET of C{path}, whose upstream stalls after 100 KB, gets a 200 of
        C{length}, then its connection closed after those 100 KB within a
        few seconds (C{--response-timeout 1}): a short body, never a whole
        one.
        """
        started = reactor.seconds()
        response = await self.client.request(b"GET", proxy.url.encode() + path)
        self.assertEqual((response.code, response.length), (200, length))
        collector = Collect()
        response.deliverBody(collector)
        await collector.done
        self.assertLess(reactor.seconds() - started, 5)
        self.assertEqual(collector.received, 100_000)
        assert collector.reason is not None
        self.assertFalse(collector.reason.check(ResponseDone), collector.reason)

    async def test_stalledBodyCacheOn(self) -> None:
        """
        With the LAN cache on, an upstream that stalls mid-body while the
        blob fills the cache: with C{--response-timeout 1} the client's
        connection is closed about a second later after a short body, the
        log (the request's line too) says why, nothing is kept, and the next
        request for the blob
        downloads it afresh and gets it whole.
        """
        lines: list[str] = []
        observer = cast(ILogObserver, lambda e: lines.append(formatEvent(e)))
        globalLogPublisher.addObserver(observer)
        self.addCleanup(globalLogPublisher.removeObserver, observer)
        upstream = self.serve(StallFirst)
        proxy = self.proxy(
            upstream, response_timeout=1, cache_size=64 * 1024**2, cache_min_free=0
        )
        await self.assertCutAfterStall(proxy, _BLOB_PATH, len(_BLOB))
        host = upstream.split("//", 1)[1]
        self.assertIn(
            f"{host} sent no body data for 1s after 100000B; cut the cache fill",
            "\n".join(lines),
        )
        # The request's own log line says why it was cut, as the relay's does.
        logged = [event["upstream"] for event in self.events if "upstream" in event]
        self.assertEqual(logged, [f"200,timeout@{host}"])
        self.assertEqual(self.upstreamErrors(proxy), {"timeout": 1})
        store = proxy.site.cache.store
        digest = _BLOB_PATH.rsplit(b"/", 1)[1].decode()
        self.assertIsNone(await store.lookup(digest))
        response, body = await self.get(proxy, _BLOB_PATH)
        self.assertEqual((response.code, body), (200, _BLOB))
        await proxy.site.cache.settled()
        self.assertEqual(await store.lookup(digest), len(_BLOB))
