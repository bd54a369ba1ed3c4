# -*- test-case-name: tests.integration.test_cache_disk -*-
"""
The LAN cache's files under real use: a truncated or corrupted entry is
never served, C{kill -9} in the middle of a download leaves nothing
corrupt behind, and eviction under a small C{--cache-size} keeps the
protected release.
"""

from __future__ import annotations

import hashlib
import os
import sys

from twisted.internet.defer import Deferred
from twisted.trial.unittest import TestCase

from regproxy.cache.files import entryPath

from .clients import httpClient, runProcess
from .forwarding import temporaryDirectory
from .oci import writeImage
from .proxy import startProxy
from .registry import ListeningProcess, RegistryFailed, freePort, startRegistry
from .test_cache import CacheTestsMixin

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def regproxyCommand(*args: str) -> list[str]:
    """
    The C{regproxy} command of this source tree, run by this interpreter.
    """
    return [
        sys.executable,
        "-c",
        "import sys; from regproxy.cli import main; sys.exit(main())",
        *args,
    ]


def childEnvironment() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("REGPROXY_")}
    env["PYTHONPATH"] = ROOT
    return env


class DiskTests(CacheTestsMixin, TestCase):
    """
    Entries damaged on disk.
    """

    async def setUp(self) -> None:
        from .clients import Skopeo

        self.registry = await startRegistry(self, mode="open")
        self.cacheDir = temporaryDirectory(self, "cache-")
        self.proxy = startProxy(self, self.registry, cache_dir=self.cacheDir)
        self.skopeo = Skopeo(self)

    async def test_truncationDetected(self) -> None:
        """
        A layer cut short on disk is not served: it is dropped and fetched
        again, and the client gets the right bytes.
        """
        await self.pushImage("disk/app")
        reference = self.proxy.reference("disk/app", "v1")
        self.assertHoldsImage(await self.pullTo(reference))
        await self.proxy.site.cache.settled()
        layer = self.image.layers[-1]
        path = entryPath(self.cacheDir, layer.digest)
        with open(path, "r+b") as f:
            f.truncate(os.path.getsize(path) // 2)
        misses = self.proxy.site.cache.index.counters.misses
        self.assertHoldsImage(await self.pullTo(reference))
        self.assertGreater(self.proxy.site.cache.index.counters.misses, misses)

    async def test_verifyDropsCorruption(self) -> None:
        """
        A byte changed on disk (same size, so only a re-hash sees it) is
        dropped by C{regproxy cache verify}, which says so and fails; a
        second run finds nothing wrong.
        """
        await self.pushImage("disk/verify")
        self.assertHoldsImage(
            await self.pullTo(self.proxy.reference("disk/verify", "v1"))
        )
        await self.proxy.site.cache.settled()
        path = entryPath(self.cacheDir, self.image.layers[0].digest)
        with open(path, "r+b") as f:
            first = f.read(1)
            f.seek(0)
            f.write(bytes([first[0] ^ 0xFF]))
        verify = regproxyCommand("cache", "verify", "--cache-dir", self.cacheDir)
        result = await runProcess(verify, childEnvironment(), 120, check=False)
        self.assertEqual(result.code, 1, result.stderr)
        self.assertIn(b"dropped 1 bad", result.stdout)
        self.assertFalse(os.path.exists(path))
        result = await runProcess(verify, childEnvironment(), 120, check=False)
        self.assertEqual(result.code, 0, result.stderr)
        self.assertIn(b"dropped 0 bad", result.stdout)


class EvictionTests(CacheTestsMixin, TestCase):
    """
    A small C{--cache-size}.
    """

    async def setUp(self) -> None:
        from .clients import Skopeo

        self.registry = await startRegistry(self, mode="open")
        self.proxy = startProxy(self, self.registry, cache_size=3_500_000)
        self.skopeo = Skopeo(self)

    async def test_protectedReleaseKept(self) -> None:
        """
        The release pulled by tag stays when later images, pulled by digest
        only, need the room: those are evicted instead, least recently used
        first, and the tag is still served once the registry is gone.
        """
        await self.pushImage("evict/release", layerSizes=(1_500_000,))
        release, releaseLayout = self.image, self.layout
        self.assertHoldsImage(
            await self.pullTo(self.proxy.reference("evict/release", "v1"))
        )
        others = []
        for name in ("evict/a", "evict/b"):
            await self.pushImage(name, layerSizes=(1_500_000,))
            others.append(self.image)
            self.assertHoldsImage(
                await self.pullTo(
                    f"docker://{self.proxy.host}/{name}@{self.image.digest}"
                )
            )
            await self.proxy.site.cache.settled()
        store = self.proxy.site.cache.store
        await store.evict()
        self.assertIsNone(await store.lookup(others[0].layers[0].digest))
        for blob in (release.config, *release.layers):
            self.assertIsNotNone(await store.lookup(blob.digest), blob)
        self.assertLessEqual(store.counters.sizeBytes, 3_500_000)

        await self.registry.process.stop()
        self.image, self.layout = release, releaseLayout
        self.assertHoldsImage(
            await self.pullTo(self.proxy.reference("evict/release", "v1"))
        )


class RegproxyProcess(ListeningProcess):
    """
    C{twistd -n regproxy} as a child process.
    """

    ready = b"starting on "

    def exitedEarly(self, reason) -> Exception:
        return RegistryFailed(f"regproxy exited ({reason.value}):\n{self.output()}")

    def tooSlow(self, seconds: float) -> Exception:
        return RegistryFailed(f"regproxy did not start in {seconds}s")


class KillTests(TestCase):
    """
    C{kill -9} in the middle of a download.
    """

    timeout = 300

    async def startRegproxy(self, stateDir: str, upstream: str) -> RegproxyProcess:
        from twisted.internet import reactor

        self.port = freePort()
        process = RegproxyProcess()
        twistd = os.path.join(os.path.dirname(sys.executable), "twistd")
        argv = [
            sys.executable,
            twistd,
            "-n",
            "--pidfile=",
            "--logfile=-",
            "regproxy",
            "--listen",
            f"tcp:{self.port}:interface=127.0.0.1",
            "--upstream",
            upstream,
            "--state-dir",
            stateDir,
            "--auth",
            "passthrough",
        ]
        reactor.spawnProcess(process, sys.executable, argv, env=childEnvironment())
        self.addCleanup(process.stop)
        timeout = reactor.callLater(60, process.giveUp, 60)
        try:
            await process.listening
        finally:
            if timeout.active():
                timeout.cancel()
        return process

    async def test_killMidDownload(self) -> None:
        """
        regproxy killed with SIGKILL while it fills a 64 MiB layer leaves
        no entry for it; restarted on the same state dir, it serves the
        layer whole and right, and C{regproxy cache verify} finds nothing
        wrong.
        """
        from .clients import Skopeo

        registry = await startRegistry(self, mode="open")
        layout = temporaryDirectory(self, "oci-")
        image = writeImage(layout, "v1", (64 * 1024 * 1024,), seed="kill")
        stateDir = temporaryDirectory(self, "state-")
        process = await self.startRegproxy(stateDir, registry.url)
        await Skopeo(self).copy(
            image.reference,
            f"docker://127.0.0.1:{self.port}/kill/app:v1",
            destTLSVerify=False,
        )
        layer = image.layers[0]
        url = f"http://127.0.0.1:{self.port}/v2/kill/app/blobs/{layer.digest}"
        http = httpClient(self)
        killed: Deferred[None] = Deferred()
        response = await http.get(url, unbuffered=True)
        self.assertEqual(response.code, 200)
        seen = []

        def collect(data: bytes) -> None:
            seen.append(len(data))
            if sum(seen) > 1024 * 1024 and not killed.called:
                process.signal("KILL")
                killed.callback(None)

        reading = response.collect(collect)
        await killed
        await process.ended
        try:
            await reading
        except Exception:
            pass
        self.assertLess(sum(seen), layer.size)

        restarted = await self.startRegproxy(stateDir, registry.url)
        url = f"http://127.0.0.1:{self.port}/v2/kill/app/blobs/{layer.digest}"
        response = await http.get(url, unbuffered=True)
        digest = hashlib.sha256()
        await response.collect(digest.update)
        self.assertEqual("sha256:" + digest.hexdigest(), layer.digest)
        # The killed fill left no entry: the restarted regproxy fetched the
        # layer again rather than serve what the first one had written (its
        # counters, written out when it stops, say so).
        await restarted.stop()
        stats = regproxyCommand("cache", "stats", "--state-dir", stateDir)
        result = await runProcess(stats, childEnvironment(), 120)
        self.assertIn(b"(hit 0, miss 1,", result.stdout)
        verify = regproxyCommand(
            "cache", "verify", "--cache-dir", os.path.join(stateDir, "cache")
        )
        result = await runProcess(verify, childEnvironment(), 120, check=False)
        self.assertEqual(result.code, 0, result.stdout + result.stderr)
