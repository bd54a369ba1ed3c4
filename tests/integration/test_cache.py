# -*- test-case-name: tests.integration.test_cache -*-
"""
The LAN cache with the real registry and real clients: pulls through the
cache, pulls again with the registry stopped (fleet names with the balena
API stopped too), authorization kept on a token-auth registry, and one
upstream GET per blob for concurrent pulls.
"""

from __future__ import annotations

import hashlib
import json
import os
import re

import attrs
from twisted.internet.defer import Deferred, DeferredList, ensureDeferred
from twisted.logger import formatEvent, globalLogPublisher
from twisted.trial.unittest import TestCase

from .clients import ClientFailed, Podman, Skopeo, httpClient, runProcess
from .fleets import ALICE, BOB, PRIVATE, PUBLIC, TARGET_VERSION
from .forwarding import readBlob, temporaryDirectory
from .oci import Image, sha256File, writeImage
from .proxy import Proxy, startProxy
from .registry import Registry, registryConfig, serveRegistry, startRegistry
from .test_fleets import HTTPMixin, SkopeoMixin
from .testcase import MixinBase
from .tokenregistry import registryAt


async def startCountingRegistry(testCase) -> Registry:
    """
    An open registry whose access log is on, so a test can count the
    requests it served.
    """
    from twisted.internet import reactor

    directory = temporaryDirectory(testCase, "registry-counting-")

    def configFor(port: int) -> dict:
        config = registryConfig(directory, port, "open")
        config["log"]["accesslog"] = {"disabled": False}
        return config

    port, process = await serveRegistry(testCase, directory, configFor, reactor)
    return registryAt(port, "open", directory, process)


def blobGETs(registry: Registry, digest: str) -> list[str]:
    """
    The registry's access log lines for GETs of blob C{digest}.
    """
    pattern = re.compile(r'"GET /v2/[^ ]+/blobs/' + re.escape(digest) + r" HTTP")
    return [line for line in registry.output.splitlines() if pattern.search(line)]


class CacheTestsMixin(MixinBase):
    """
    Push one image through regproxy and read it back.
    """

    timeout = 300
    credentials: tuple[str, str] | None = None
    skopeo: Skopeo
    proxy: Proxy

    async def pushImage(self, repository: str, layerSizes=(300_000, 2_000_000)):
        self.layout = temporaryDirectory(self, "oci-src-")
        self.image = writeImage(self.layout, "v1", layerSizes, seed=repository)
        await self.skopeo.copy(
            self.image.reference,
            self.proxy.reference(repository, "v1"),
            destTLSVerify=False,
            destCreds=self.credentials,
        )

    async def pullTo(self, reference: str, creds=None) -> str:
        destination = temporaryDirectory(self, "pulled-")
        await self.skopeo.copy(
            reference,
            "dir:" + destination,
            srcTLSVerify=False,
            srcCreds=creds,
        )
        return destination

    def manifestBytes(self) -> bytes:
        return readBlob(self.layout, self.image.digest)

    def assertHoldsImage(self, directory: str) -> None:
        with open(os.path.join(directory, "manifest.json"), "rb") as f:
            self.assertEqual(f.read(), readBlob(self.layout, self.image.digest))
        for blob in (self.image.config, *self.image.layers):
            self.assertEqual(sha256File(os.path.join(directory, blob.hex)), blob.digest)

    async def stats(self):
        return await self.proxy.site.cache.index.stats()

    async def anonymousToken(self, http, repository: str) -> str:
        ping = await http.get(self.proxy.url + "/v2/")
        await ping.content()
        realm = re.search(
            r'realm="([^"]+)"', ping.headers.getRawHeaders("www-authenticate")[0]
        )
        assert realm is not None
        response = await http.get(
            realm.group(1), params={"scope": f"repository:{repository}:pull"}
        )
        return json.loads(await response.content())["token"]


class OfflineTests(CacheTestsMixin, TestCase):
    """
    Pull through the cache, stop the registry, pull again.
    """

    async def setUp(self) -> None:
        self.registry = await startRegistry(self, mode="open")
        self.proxy = startProxy(self, self.registry)
        self.skopeo = Skopeo(self)

    async def test_pullWithRegistryStopped(self) -> None:
        """
        skopeo and podman pull an image through the cache; once the
        registry is stopped, they pull it again by tag (the last known
        manifest, marked stale) and by digest.
        """
        podman = Podman(self)
        await podman.check()
        await self.pushImage("offline/app")
        byTag = self.proxy.reference("offline/app", "v1")
        byDigest = f"docker://{self.proxy.host}/offline/app@{self.image.digest}"
        self.assertHoldsImage(await self.pullTo(byTag))
        await podman.pull(byTag.removeprefix("docker://"), tlsVerify=False)
        before = await self.stats()
        self.assertGreater(before.hits, 0)

        await self.registry.process.stop()

        self.assertHoldsImage(await self.pullTo(byTag))
        self.assertHoldsImage(await self.pullTo(byDigest))
        offline = Podman(self)
        await offline.pull(byTag.removeprefix("docker://"), tlsVerify=False)
        await offline.pull(byDigest.removeprefix("docker://"), tlsVerify=False)
        self.assertEqual(
            await offline.imageDigest(byTag.removeprefix("docker://")),
            self.image.digest,
        )
        after = await self.stats()
        self.assertGreater(after.stale, before.stale)

        # What a client sees of a stale answer, and what the log says.
        http = httpClient(self)
        token = await self.anonymousToken(http, "offline/app")
        lines: list[str] = []

        def observe(event: dict) -> None:
            if "cache" in event and event.get("path", "").endswith("/v1"):
                lines.append(formatEvent(event))

        globalLogPublisher.addObserver(observe)  # type: ignore[arg-type]
        self.addCleanup(globalLogPublisher.removeObserver, observe)  # type: ignore[arg-type]
        response = await http.get(
            f"{self.proxy.url}/v2/offline/app/manifests/v1",
            headers={
                "Authorization": [f"Bearer {token}"],
                "Accept": [self.image.manifest.mediaType],
            },
        )
        self.assertEqual(await response.content(), self.manifestBytes())
        self.assertEqual(
            response.headers.getRawHeaders("warning"), ['110 - "Response is Stale"']
        )
        self.assertIn("cache=stale", lines[-1])


class HeadThenDigestTests(CacheTestsMixin, TestCase):
    """
    The containerd way: HEAD the tag, then GET the manifest by digest.
    """

    async def setUp(self) -> None:
        self.registry = await startRegistry(self, mode="open")
        self.proxy = startProxy(self, self.registry, auth="passthrough")
        self.skopeo = Skopeo(self)

    async def test_headedTagServedOffline(self) -> None:
        """
        A tag only ever HEADed (its manifest fetched by digest) is answered
        with the upstream's own headers, and remembered: once the registry
        is stopped, a GET of the tag gets that manifest, marked stale.
        """
        await self.pushImage("head/app")
        http = httpClient(self)
        base = f"{self.proxy.url}/v2/head/app/manifests"
        accept = {"Accept": [self.image.manifest.mediaType]}
        head = await http.head(f"{base}/v1", headers=accept)
        direct = await http.head(
            f"{self.registry.url}/v2/head/app/manifests/v1", headers=accept
        )
        for name in ("docker-content-digest", "content-type", "content-length"):
            self.assertEqual(
                head.headers.getRawHeaders(name), direct.headers.getRawHeaders(name)
            )
        self.assertEqual(
            head.headers.getRawHeaders("docker-content-digest"), [self.image.digest]
        )
        byDigest = await http.get(f"{base}/{self.image.digest}", headers=accept)
        self.assertEqual(await byDigest.content(), self.manifestBytes())
        cache = self.proxy.site.cache
        tag = await cache.index.getTag(self.registry.url.rstrip("/"), "head/app", "v1")
        self.assertEqual(
            (tag.digest, tag.size), (self.image.digest, len(self.manifestBytes()))
        )

        await self.registry.process.stop()

        stale = await http.get(f"{base}/v1", headers=accept)
        self.assertEqual(stale.code, 200)
        self.assertEqual(await stale.content(), self.manifestBytes())
        self.assertEqual(
            stale.headers.getRawHeaders("warning"), ['110 - "Response is Stale"']
        )


class ConcurrencyTests(CacheTestsMixin, TestCase):
    """
    Concurrent pulls share one upstream download.
    """

    async def setUp(self) -> None:
        self.registry = await startCountingRegistry(self)
        self.proxy = startProxy(self, self.registry)
        self.skopeo = Skopeo(self)

    async def test_concurrentPullsOneGETPerBlob(self) -> None:
        """
        Ten clients pulling a fresh image at once cause one upstream GET per
        blob, counted in the registry's own access log.
        """
        await self.pushImage("fresh/app", layerSizes=(3_000_000, 6_000_000))
        reference = self.proxy.reference("fresh/app", "v1")
        pulls = [ensureDeferred(self.pullTo(reference)) for _ in range(10)]
        results = await DeferredList(pulls, consumeErrors=True)
        for ok, result in results:
            self.assertTrue(ok, result)
            self.assertHoldsImage(result)
        await self.proxy.site.cache.settled()
        for blob in (self.image.config, *self.image.layers):
            self.assertEqual(len(blobGETs(self.registry, blob.digest)), 1, blob)
        # Ten clients times three blobs, three of them fetched: the rest
        # came from the cache, joining the fill or after it.
        stats = await self.stats()
        self.assertGreaterEqual(stats.hits + stats.coalesced, 27)


class FlushTests(CacheTestsMixin, TestCase):
    """
    A blob whose bytes are all in is served while it is flushed to disk.
    """

    async def setUp(self) -> None:
        self.registry = await startCountingRegistry(self)
        self.proxy = startProxy(self, self.registry, auth="passthrough")
        self.skopeo = Skopeo(self)

    async def test_hitWhileFlushing(self) -> None:
        """
        A second GET of a blob whose fill has every byte, checked, but is
        still being flushed and renamed into place (seconds for a big blob
        on a slow disk) gets the whole blob from the fill's file at once,
        as a hit, without a second upstream GET.
        """
        from regproxy.cache import files

        await self.pushImage("flush/app", layerSizes=(2_000_000,))
        layer = self.image.layers[0]
        store = self.proxy.site.cache.store
        run = store.run
        flushing: Deferred[None] = Deferred()
        flushed: Deferred[None] = Deferred()

        def heldKeep(f, *args):
            if f is not files.keep:
                return run(f, *args)
            flushing.callback(None)
            return flushed.addCallback(lambda _: run(f, *args))

        store.run = heldKeep
        http = httpClient(self)
        url = f"{self.proxy.url}/v2/flush/app/blobs/{layer.digest}"
        first = await http.get(url)
        self.assertEqual(hashlib.sha256(await first.content()).hexdigest(), layer.hex)
        await flushing
        second = await http.get(url)
        self.assertEqual(second.code, 200)
        self.assertEqual(hashlib.sha256(await second.content()).hexdigest(), layer.hex)
        self.assertFalse(flushed.called)
        flushed.callback(None)
        await self.proxy.site.cache.settled()
        self.assertEqual(len(blobGETs(self.registry, layer.digest)), 1)
        stats = await self.stats()
        self.assertEqual((stats.misses, stats.hits), (1, 1))


class AuthorizationTests(CacheTestsMixin, TestCase):
    """
    On a token-auth registry, cached content goes only to clients the
    registry allows.
    """

    credentials = ("alice", "wonderland")

    async def setUp(self) -> None:
        self.registry = await startRegistry(
            self, mode="token", users={"alice": "wonderland"}, anonymous="none"
        )
        self.proxy = startProxy(self, self.registry)
        self.skopeo = Skopeo(self)

    async def test_otherClientRefused(self) -> None:
        """
        alice pulls (so everything is cached); a client without her
        credentials is refused the manifest by tag and by digest, and the
        blobs, although all of it is on disk.
        """
        await self.pushImage("private/app")
        reference = self.proxy.reference("private/app", "v1")
        self.assertHoldsImage(await self.pullTo(reference, creds=self.credentials))
        # The client has every byte a moment before the file is renamed.
        await self.proxy.site.cache.settled()
        store = self.proxy.site.cache.store
        for blob in (self.image.config, *self.image.layers):
            self.assertIsNotNone(await store.lookup(blob.digest))
        byDigest = f"docker://{self.proxy.host}/private/app@{self.image.digest}"
        for ref in (reference, byDigest):
            with self.assertRaises(ClientFailed):
                await self.pullTo(ref)
            with self.assertRaises(ClientFailed):
                await self.pullTo(ref, creds=("alice", "wrong"))
        # And the blobs themselves, asked for with an anonymous token.
        http = httpClient(self)
        token = await self.anonymousToken(http, "private/app")
        for blob in (self.image.config, *self.image.layers):
            response = await http.get(
                f"{self.proxy.url}/v2/private/app/blobs/{blob.digest}",
                headers={"Authorization": [f"Bearer {token}"]},
            )
            body = await response.content()
            self.assertIn(response.code, (401, 403, 404), body[:200])
            self.assertNotIn(b"\x1f\x8b", body[:2])


class FleetTests(SkopeoMixin, TestCase):
    """
    Fleet names through the cache, and again from a restarted regproxy
    while the registry is stopped.
    """

    async def test_fleetNameWithRegistryStopped(self) -> None:
        """
        A fleet name, a version of it and a digest pulled once are pulled
        again by a new regproxy on the same cache directory after the
        registry has stopped: the new instance has nothing in memory, so
        every byte comes from the disk cache.
        """
        cacheDir = temporaryDirectory(self, "shared-cache-")
        first = self.startProxy(cache_dir=cacheDir)
        target = self.fleets.digest(PUBLIC, TARGET_VERSION)
        names = (PUBLIC, f"{PUBLIC}/1.2.3", f"{PUBLIC}@{target}")
        expected = [await self.pull(name, proxy=first) for name in names]
        await first.site.cache.settled()

        await self.fleets.registry.process.stop()
        second = self.startProxy(cache_dir=cacheDir)
        counters = second.site.cache.index.counters
        before = attrs.asdict(counters)
        again = [await self.pull(name, proxy=second) for name in names]
        self.assertEqual(again, expected)
        self.assertEqual(again[0], target)
        self.assertEqual(counters.misses, before["misses"])
        self.assertGreater(counters.stale, before["stale"])
        self.assertGreater(counters.hits, before["hits"])

    async def test_warmFleet(self) -> None:
        """
        C{--warm-fleet} fetches the fleet's target release into the cache
        (once: a second look at an unchanged release fetches nothing); a
        device pulling it afterwards gets every blob from the cache, after
        the registry confirms the device may pull it.
        """
        proxy = self.startProxy(warm_fleet=(PUBLIC,))
        warmer = proxy.site.warmer
        self.assertTrue(await warmer.warmFleet(PUBLIC))
        self.assertFalse(await warmer.warmFleet(PUBLIC))
        await proxy.site.cache.settled()
        counters = proxy.site.cache.index.counters
        misses, hits = counters.misses, counters.hits
        self.assertEqual(
            await self.pull(PUBLIC, proxy=proxy),
            self.fleets.digest(PUBLIC, TARGET_VERSION),
        )
        self.assertEqual(counters.misses, misses)
        self.assertGreater(counters.hits, hits)


class OfflineFleetTests(HTTPMixin, SkopeoMixin, TestCase):
    """
    Fleet names from a restarted regproxy while both the balena API and the
    registry are down: the cache's index remembers what the API answered.
    """

    async def outsiderSees(self, proxy: Proxy, name: str, token: str):
        """
        What a client with C{token} sees of C{name}'s manifest: status,
        body with the name taken out, header names and values but the date.
        """
        response, body = await self.manifest(name, proxy=proxy, token=token)
        headers = sorted(
            (key.lower(), tuple(values))
            for key, values in response.headers.getAllRawHeaders()
            if key.lower() != b"date"
        )
        return response.code, body.replace(name.encode(), b"NAME"), headers

    async def test_fleetNameWithAPIAndRegistryStopped(self) -> None:
        """
        A fleet name, a version of it and a digest, pulled once, pull again
        from a new regproxy on the same cache directory with the API and
        the registry stopped (a blob of the fleet name too, before any
        manifest); the answer to the fleet name says it is stale, and so
        does the log.  A private fleet a member pulled looks
        exactly like a missing one to others, offline too.
        """
        missing = "acme/nothing"
        cacheDir = temporaryDirectory(self, "shared-cache-")
        first = self.startProxy(cache_dir=cacheDir)
        target = self.fleets.digest(PUBLIC, TARGET_VERSION)
        names = (PUBLIC, f"{PUBLIC}/1.2.3", f"{PUBLIC}@{target}")
        expected = [await self.pull(name, proxy=first) for name in names]
        self.assertEqual(
            await self.pull(PRIVATE, creds=ALICE, proxy=first),
            self.fleets.digest(PRIVATE, "1.0.0"),
        )
        await first.site.cache.settled()
        # The new regproxy, with nothing in memory; the outsiders' tokens
        # from it are made while their logins can still be checked (the
        # token endpoint resolves no names).
        second = self.startProxy(cache_dir=cacheDir)
        tokens = {
            who: {
                name: await self.token(name, creds, second)
                for name in (PRIVATE, missing, PUBLIC)
            }
            for who, creds in (("anonymous", None), ("bob", BOB))
        }

        self.fleets.api.stop("drop")
        await self.fleets.registry.process.stop()
        # A blob asked for by the fleet name before any manifest: where it
        # lives comes from the cache's index.
        image = self.fleets.image(PUBLIC, TARGET_VERSION)
        assert isinstance(image, Image)
        layer = image.layers[0]
        response = await self.http.get(
            f"{second.url}/v2/{PUBLIC}/blobs/{layer.digest}",
            headers={"Authorization": ["Bearer " + tokens["anonymous"][PUBLIC]]},
        )
        body = await response.content()
        self.assertEqual(response.code, 200, body[:200])
        self.assertEqual("sha256:" + hashlib.sha256(body).hexdigest(), layer.digest)

        again = [await self.pull(name, proxy=second) for name in names]
        self.assertEqual(again, expected)
        self.assertEqual(again[0], target)

        lines: list[str] = []

        def observe(event: dict) -> None:
            if event.get("regproxy_request") and event.get("name") == PUBLIC:
                lines.append(formatEvent(event))

        globalLogPublisher.addObserver(observe)  # type: ignore[arg-type]
        self.addCleanup(globalLogPublisher.removeObserver, observe)  # type: ignore[arg-type]
        response, body = await self.manifest(
            PUBLIC, proxy=second, token=tokens["anonymous"][PUBLIC]
        )
        self.assertEqual(response.code, 200, body)
        self.assertEqual(
            response.headers.getRawHeaders("warning"), ['110 - "Response is Stale"']
        )
        self.assertEqual(
            response.headers.getRawHeaders("docker-content-digest"), [target]
        )
        self.assertIn("cache=stale", lines[-1])

        for who, mine in tokens.items():
            seen = await self.outsiderSees(second, PRIVATE, mine[PRIVATE])
            nothing = await self.outsiderSees(second, missing, mine[missing])
            self.assertEqual(seen, nothing, who)
            self.assertGreaterEqual(seen[0], 400, seen)


class ChainTests(CacheTestsMixin, TestCase):
    """
    A site's regproxy with a region's regproxy as its upstream.
    """

    async def setUp(self) -> None:
        self.registry = await startCountingRegistry(self)
        self.region = startProxy(self, self.registry)
        regionAsUpstream = attrs.evolve(self.registry, url=self.region.url)
        self.sites = [
            startProxy(self, regionAsUpstream, auth="passthrough") for _ in range(2)
        ]
        self.proxy = self.sites[0]
        self.skopeo = Skopeo(self)

    async def test_twoSitesOneRegion(self) -> None:
        """
        An image pushed and pulled through one site is in that site's cache
        and the region's; a second site pulling it is served by the region
        (the registry still sent each blob once), and keeps its own copy.
        """
        await self.pushImage("chain/app")
        blobs = (self.image.config, *self.image.layers)
        for site in self.sites:
            self.assertHoldsImage(await self.pullTo(site.reference("chain/app", "v1")))
            await site.site.cache.settled()
            await self.region.site.cache.settled()
            for blob in blobs:
                self.assertIsNotNone(await site.site.cache.store.lookup(blob.digest))
        for blob in blobs:
            self.assertIsNotNone(await self.region.site.cache.store.lookup(blob.digest))
            self.assertEqual(len(blobGETs(self.registry, blob.digest)), 1, blob)
        self.assertGreaterEqual(self.region.site.cache.index.counters.hits, len(blobs))


class WarmCommandTests(CacheTestsMixin, TestCase):
    """
    C{regproxy cache warm} pulls through the running regproxy.
    """

    async def setUp(self) -> None:
        self.registry = await startRegistry(self, mode="open")
        self.proxy = startProxy(self, self.registry)
        self.skopeo = Skopeo(self)

    async def test_warm(self) -> None:
        """
        After C{regproxy cache warm --via URL REF} every blob of the image
        is in the cache, and a pull that follows is answered from it.
        """
        from .test_cache_disk import childEnvironment, regproxyCommand

        await self.pushImage("warm/app")
        command = regproxyCommand(
            "cache", "warm", "--via", self.proxy.url, "warm/app:v1"
        )
        result = await runProcess(command, childEnvironment(), 120)
        self.assertIn(b"warm/app:v1: 1 image(s)", result.stdout)
        await self.proxy.site.cache.settled()
        for blob in (self.image.config, *self.image.layers):
            self.assertIsNotNone(await self.proxy.site.cache.store.lookup(blob.digest))
        counters = self.proxy.site.cache.index.counters
        misses = counters.misses
        self.assertHoldsImage(await self.pullTo(self.proxy.reference("warm/app", "v1")))
        self.assertEqual(counters.misses, misses)
