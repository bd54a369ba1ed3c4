#!/usr/bin/env python3
"""
What the LAN cache costs and gives, beside the registry fetched directly
(the cache issue's Benchmark).

    python bench/bench_cache.py [--runs 3] [--blob-mib 1024] [--clients 20] [--json FILE]

Starts a distribution registry and regproxy (plain and TLS listeners, the
cache on) on loopback, pushes a 1 GiB blob and an image made of it, then,
C{--runs} times, each with a fresh regproxy (a cold cache):

  - the blob through regproxy cold (a miss: the fill), then again (a hit),
    plain and through the TLS listener; the plain hit and the registry
    directly are fetched in turns, twice each, and the faster of each
    counts; speed, the server's CPU seconds per GiB and its peak RSS;
  - C{--clients} concurrent clients on one cold blob: aggregate throughput,
    the bytes the upstream sent (regproxy's own count, which the registry's
    matches), and regproxy's peak RSS;
  - a warm repeat C{skopeo copy} of the image through regproxy against the
    same copy from the registry directly.

Prints medians, ratios and the issue's targets, met or not.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import os
import shutil
import subprocess
import sys
import time
from typing import Any

from _clients import curlFetch, median
from _harness import BenchError, Harness, MemoryWatch, Server, freePort
from _registry import Blob, MiB, RegistryClient

REPOSITORY = "bench/cache"
TAG = "big"
GiB = 1024 * MiB

# The targets.
MIN_HIT_OVER_DIRECT = 1.0
MIN_SKOPEO_OVER_DIRECT = 0.95
MAX_RSS_CONCURRENT = 80e6

# Plain hits and direct fetches, taken in turns.
HIT_TURNS = 2


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def parseArgs(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--blob-mib", type=int, default=1024)
    parser.add_argument("--clients", type=int, default=20)
    parser.add_argument("--json", metavar="FILE")
    parser.add_argument("--tmpdir")
    parser.add_argument("--keep", action="store_true")
    parser.add_argument("--no-skopeo", action="store_true")
    return parser.parse_args(argv)


class Bench:
    def __init__(self, harness: Harness, args: argparse.Namespace) -> None:
        self.harness = harness
        self.args = args
        self.blob = Blob(args.blob_mib * MiB, seed=7)
        self.digest = ""
        self.registry: Server | None = None
        self.timeout = max(120.0, self.blob.size / 20e6)
        self.tlsPort = 0
        self.proxy: Server | None = None

    def prepare(self) -> None:
        self.registry = self.harness.startRegistry()
        client = RegistryClient(self.registry.url, timeout=120)
        self.digest = self.blob.digest()
        client.pushBlob(
            REPOSITORY,
            self.blob.chunks(),
            self.blob.size,
            self.digest,
            deadline=time.monotonic() + self.timeout * 2,
        )
        client.pushImage(REPOSITORY, TAG, [(self.digest, self.blob.size)])
        log(f"pushed {self.blob.size / MiB:g} MiB {self.digest[:19]}...")

    def startProxy(self, name: str) -> Server:
        assert self.registry is not None
        self.tlsPort = freePort()
        self.proxy = self.harness.startRegproxy(
            self.registry.url,
            name=name,
            extraArgs=[
                "--auth",
                "passthrough",
                "--listen",
                f"regproxy-tls:{self.tlsPort}:interface=127.0.0.1",
                "--cache-size",
                f"{3 * self.blob.size}",
                "--cache-min-free",
                "1GiB",
            ],
        )
        return self.proxy

    def stopProxy(self) -> None:
        if self.proxy is not None:
            self.harness.stop(self.proxy)
            self.proxy = None

    def blobURL(self, base: str) -> str:
        return f"{base}/v2/{REPOSITORY}/blobs/{self.digest}"

    def tlsBase(self) -> str:
        return f"https://127.0.0.1:{self.tlsPort}"

    def fetch(self, url: str, server: Server) -> dict[str, float]:
        """
        One fetch of the blob: its speed, the server's CPU seconds per GiB
        and its peak RSS meanwhile.
        """
        before = server.process.cpuSeconds()
        with MemoryWatch(server.process) as watch:
            if url.startswith("https"):
                fetch = self._curlTLS(url)
            else:
                fetch = curlFetch(url, self.timeout, expectSize=self.blob.size)
        cpu = server.process.cpuSeconds() - before
        return {
            "speed": fetch.speed,
            "cpu_per_gib": cpu / (self.blob.size / GiB),
            "peak_rss": watch.peak,
        }

    def _curlTLS(self, url: str):
        from _clients import Fetch

        argv = [
            "curl",
            "-s",
            "-S",
            "-k",
            "-o",
            "/dev/null",
            "--max-time",
            f"{self.timeout:g}",
            "-w",
            "%{http_code} %{size_download} %{speed_download} %{time_total}",
            url,
        ]
        done = subprocess.run(argv, capture_output=True, text=True)
        if done.returncode != 0:
            raise BenchError(f"curl {url}: {done.stderr.strip()}")
        status, size, speed, seconds = done.stdout.split()
        if int(status) != 200 or int(size) != self.blob.size:
            raise BenchError(f"curl {url}: {status}, {size} bytes")
        return Fetch(int(status), int(size), float(speed), float(seconds))

    # One run.

    def run(self, number: int) -> dict[str, Any]:
        assert self.registry is not None
        figures: dict[str, Any] = {"run": number}
        registryURL = self.blobURL(self.registry.url)
        for listener in ("plain", "tls"):
            proxy = self.startProxy(f"regproxy-{listener}-{number}")
            url = self.blobURL(proxy.url if listener == "plain" else self.tlsBase())
            try:
                figures[f"miss_{listener}"] = self.fetch(url, proxy)
                if listener == "tls":
                    figures["hit_tls"] = self.fetch(url, proxy)
                    continue
                # Hits and direct fetches in turns, the best of each: load
                # from elsewhere on the machine falls on both alike.
                hits, direct = [], []
                for _ in range(HIT_TURNS):
                    hits.append(self.fetch(url, proxy))
                    direct.append(self.fetch(registryURL, self.registry))
            finally:
                self.stopProxy()
            figures["hit_plain"] = max(hits, key=lambda fetch: fetch["speed"])
            figures["direct"] = max(direct, key=lambda fetch: fetch["speed"])
        figures["hit_over_direct"] = (
            figures["hit_plain"]["speed"] / figures["direct"]["speed"]
        )
        figures["concurrent"] = self.concurrent(number)
        if not self.args.no_skopeo and shutil.which("skopeo"):
            figures["skopeo"] = self.skopeo(number)
        log(f"run {number}: {json.dumps(figures)}")
        return figures

    def concurrent(self, number: int) -> dict[str, float]:
        """
        C{--clients} curls at once on one cold blob.
        """
        proxy = self.startProxy(f"regproxy-concurrent-{number}")
        url = self.blobURL(proxy.url)
        before = proxy.process.cpuSeconds()
        started = time.monotonic()
        try:
            with MemoryWatch(proxy.process) as watch:
                with concurrent.futures.ThreadPoolExecutor(self.args.clients) as pool:
                    fetches = list(
                        pool.map(
                            lambda _: curlFetch(
                                url, self.timeout * 4, expectSize=self.blob.size
                            ),
                            range(self.args.clients),
                        )
                    )
            elapsed = time.monotonic() - started
            cpu = proxy.process.cpuSeconds() - before
        finally:
            stateDir = self.harness.path(f"regproxy-concurrent-{number}-state")
            self.stopProxy()
        upstream = self.upstreamBytes(stateDir)
        return {
            "aggregate_speed": sum(f.size for f in fetches) / elapsed,
            "upstream_bytes": upstream,
            "peak_rss": watch.peak,
            "cpu_per_gib_served": cpu / (len(fetches) * self.blob.size / GiB),
        }

    def upstreamBytes(self, stateDir: str) -> int:
        """
        What regproxy counted as fetched upstream (its index, written out
        when it stopped).
        """
        env = dict(
            os.environ,
            PYTHONPATH=os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
        )
        code = (
            "import json, sys, os\n"
            "from twisted.internet.task import react\n"
            "from twisted.internet.defer import Deferred\n"
            "from regproxy.cache.index import CacheIndex\n"
            "async def main(reactor):\n"
            f"    index = CacheIndex.open({os.path.join(stateDir, 'cache', 'index.sqlite')!r}, reactor)\n"
            "    stats = await index.stats()\n"
            "    print(stats.bytesFromUpstream)\n"
            "    await index.close()\n"
            "react(lambda r: Deferred.fromCoroutine(main(r)))\n"
        )
        done = subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, env=env
        )
        if done.returncode != 0:
            raise BenchError(f"reading the cache's stats: {done.stderr[-500:]}")
        return int(done.stdout.split()[-1])

    def skopeo(self, number: int) -> dict[str, float]:
        """
        A warm repeat pull through regproxy against a pull from the
        registry directly, each into a fresh directory.
        """
        assert self.registry is not None
        proxy = self.startProxy(f"regproxy-skopeo-{number}")
        try:
            self._skopeo(proxy.url, "cold")
            direct = self._skopeo(self.registry.url, "direct")
            warm = self._skopeo(proxy.url, "warm")
        finally:
            self.stopProxy()
        return {"direct_s": direct, "warm_s": warm, "ratio": direct / warm}

    def _skopeo(self, base: str, name: str) -> float:
        host = base.split("://", 1)[1]
        target = self.harness.path(f"skopeo-{name}")
        shutil.rmtree(target, ignore_errors=True)
        policy = self.harness.path("policy.json")
        with open(policy, "w") as f:
            f.write('{"default": [{"type": "insecureAcceptAnything"}]}')
        started = time.monotonic()
        subprocess.run(
            [
                "skopeo",
                "--policy",
                policy,
                "copy",
                "--src-tls-verify=false",
                f"docker://{host}/{REPOSITORY}:{TAG}",
                f"dir:{target}",
            ],
            check=True,
            capture_output=True,
            timeout=self.timeout * 4,
        )
        elapsed = time.monotonic() - started
        shutil.rmtree(target, ignore_errors=True)
        return elapsed


def report(runs: list[dict[str, Any]], blobSize: int) -> str:
    def med(*path: str) -> float:
        values = []
        for run in runs:
            value: Any = run
            for key in path:
                value = value.get(key) if isinstance(value, dict) else None
            if value is not None:
                values.append(value)
        result = median(values)
        return float("nan") if result is None else result

    lines = [f"medians of {len(runs)} run(s), {blobSize / GiB:g} GiB blob", ""]
    lines.append(f"{'path':22} {'GB/s':>7} {'CPU s/GiB':>10} {'peak RSS MB':>12}")
    for key, title in (
        ("direct", "registry direct"),
        ("miss_plain", "regproxy miss"),
        ("hit_plain", "regproxy hit"),
        ("miss_tls", "regproxy miss (TLS)"),
        ("hit_tls", "regproxy hit (TLS)"),
    ):
        lines.append(
            f"{title:22} {med(key, 'speed') / 1e9:7.2f} "
            f"{med(key, 'cpu_per_gib'):10.2f} {med(key, 'peak_rss') / 1e6:12.1f}"
        )
    hitRatio = med("hit_over_direct")
    lines += [
        "",
        f"hit / direct (median of each run's ratio): {hitRatio:.2f}x (target >= {MIN_HIT_OVER_DIRECT}x: "
        f"{'met' if hitRatio >= MIN_HIT_OVER_DIRECT else 'NOT met'})",
        f"concurrent clients on one cold blob: aggregate "
        f"{med('concurrent', 'aggregate_speed') / 1e9:.2f} GB/s, upstream sent "
        f"{med('concurrent', 'upstream_bytes') / GiB:.2f} GiB, peak RSS "
        f"{med('concurrent', 'peak_rss') / 1e6:.1f} MB (target <= "
        f"{MAX_RSS_CONCURRENT / 1e6:.0f} MB: "
        f"{'met' if med('concurrent', 'peak_rss') <= MAX_RSS_CONCURRENT else 'NOT met'})"
        f", CPU {med('concurrent', 'cpu_per_gib_served'):.2f} s per GiB served",
    ]
    if any("skopeo" in run for run in runs):
        ratio = med("skopeo", "ratio")
        lines.append(
            f"skopeo warm repeat pull: {med('skopeo', 'warm_s'):.1f} s vs direct "
            f"{med('skopeo', 'direct_s'):.1f} s = {ratio:.2f}x (target >= "
            f"{MIN_SKOPEO_OVER_DIRECT}x: "
            f"{'met' if ratio >= MIN_SKOPEO_OVER_DIRECT else 'NOT met'})"
        )
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    args = parseArgs(argv)
    with Harness(tmpRoot=args.tmpdir, keep=args.keep) as harness:
        bench = Bench(harness, args)
        try:
            bench.prepare()
            runs = [bench.run(number) for number in range(1, args.runs + 1)]
        except BenchError as e:
            print(f"bench_cache: {e}", file=sys.stderr)
            return 1
    print(report(runs, bench.blob.size))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(runs, f, indent=2)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
