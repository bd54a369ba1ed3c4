#!/usr/bin/env python3
"""
How fast regproxy forwards, and how much memory it needs doing it, next to
the same registry fetched directly and through nginx (issue 2, Benchmark).

    python bench/bench_forward.py [--runs 3] [--blob-mib 1024] [--json FILE]

Starts a distribution registry, regproxy and (where installed) two nginx
reverse proxies on loopback, puts a 1 GiB blob, a 1 MiB blob and a small
image into the registry, then measures, C{--runs} times: the big blob's
download speed with curl through each path, regproxy's peak RSS while it
forwards the 1 MiB and the 1 GiB blob (a fresh regproxy for each), and
manifest HEADs per second at concurrency 16.  Prints medians, ratios and the
issue's targets, met or not.  See bench/README.md.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from typing import Any
from urllib.parse import urlsplit

from _clients import (
    Load,
    bearerToken,
    curlFetch,
    median,
    runAb,
    runHey,
    runWrk,
    sha256Of,
    wrkScript,
)
from _harness import (
    BenchError,
    ForeignLoad,
    Harness,
    MemoryWatch,
    Server,
    waitForQuiet,
)
from _registry import MANIFEST_TYPES, Blob, MiB, RegistryClient

REPOSITORY = "bench/forward"
TAG = "latest"

# The targets.
MIN_SPEED = 1.0e9  # bytes per second through regproxy
MIN_OVER_NGINX = 1.5  # times nginx with its default buffers
MAX_RSS = 80e6  # bytes, peak, for the small and for the big blob
SAME_RSS = 0.10  # the big blob's peak may exceed the small one's by this much
DISTURBED = 0.20  # other people's share of the CPUs that makes a figure unfair

PATHS = ("direct", "regproxy", "nginx-off", "nginx-default")
TITLES = {
    "direct": "direct",
    "regproxy": "regproxy",
    "nginx-off": "nginx(buf off)",
    "nginx-default": "nginx(default)",
}
SHORT = {"direct": "direct", "nginx-off": "ngx-off", "nginx-default": "ngx-def"}


def parseArgs(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Benchmark regproxy's forwarding against a direct "
        "registry and nginx, on loopback."
    )
    parser.add_argument("--runs", type=int, default=3, help="repetitions (3)")
    parser.add_argument(
        "--blob-mib", type=int, default=1024, help="big blob size in MiB (1024)"
    )
    parser.add_argument("--json", metavar="FILE", help="write the raw figures here")
    parser.add_argument(
        "--duration", type=float, default=10.0, help="seconds of HEAD load (10)"
    )
    parser.add_argument(
        "--concurrency", type=int, default=16, help="HEAD connections (16)"
    )
    parser.add_argument(
        "--loader",
        choices=("auto", "wrk", "hey", "ab"),
        default="auto",
        help="HEAD load generator; auto: wrk if it can finish a HEAD, else hey, else ab",
    )
    parser.add_argument(
        "--nginx-workers",
        type=int,
        default=1,
        help="nginx worker processes (1, like regproxy's one process)",
    )
    parser.add_argument(
        "--quiet-timeout",
        type=float,
        default=60.0,
        help="before each run, wait at most this long for an idle machine (60)",
    )
    parser.add_argument(
        "--retries",
        type=int,
        default=2,
        help="extra runs allowed to replace runs that other work disturbed "
        "(more than 20%% of the CPUs during a measurement) (2)",
    )
    parser.add_argument("--no-nginx", action="store_true", help="skip nginx")
    parser.add_argument(
        "--no-regproxy",
        action="store_true",
        help="skip regproxy (to try the harness on its own)",
    )
    parser.add_argument(
        "--auth",
        choices=("passthrough", "broker"),
        default="passthrough",
        help="regproxy's --auth: passthrough (the bare forwarder, default) or "
        "broker (clients fetch an anonymous token from regproxy first and "
        "send it on every request)",
    )
    parser.add_argument(
        "--regproxy-arg",
        action="append",
        default=[],
        metavar="ARG",
        help="extra argument for twistd regproxy (repeatable)",
    )
    parser.add_argument("--tmpdir", help="where the temporary directory goes")
    parser.add_argument(
        "--keep", action="store_true", help="keep the temporary directory (logs)"
    )
    args = parser.parse_args(argv)
    if args.runs < 1 or args.blob_mib < 1 or args.duration <= 0 or args.retries < 0:
        parser.error("--runs, --blob-mib, --duration (and --retries) must be positive")
    return args


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


class Bench:
    """
    One benchmark session: the servers, the content, and the measurements.
    """

    def __init__(self, harness: Harness, args: argparse.Namespace) -> None:
        self.harness = harness
        self.args = args
        self.big = Blob(args.blob_mib * MiB, seed=1)
        self.small = Blob(MiB, seed=2)
        self.servers: dict[str, Server] = {}
        self.digests: dict[Blob, str] = {}
        self.manifestDigest = ""
        self.headHeaders = {"Accept": ", ".join(MANIFEST_TYPES)}
        self.auth: dict[str, str] = {}
        self.loader = "hey"
        # Generous: a path slower than 20 MB/s is broken, not slow.
        self.fetchTimeout = max(60.0, self.big.size / 20e6)

    # Setting up.

    def prepare(self) -> None:
        registry = self.harness.startRegistry()
        self.servers["direct"] = registry
        log(f"registry at {registry.url}")
        client = RegistryClient(registry.url, timeout=60)
        for blob in (self.small, self.big):
            started = time.monotonic()
            digest = self.digests[blob] = blob.digest()
            client.pushBlob(
                REPOSITORY,
                blob.chunks(),
                blob.size,
                digest,
                deadline=started + self.fetchTimeout * 2,
            )
            log(
                f"pushed {blob.size / MiB:g} MiB blob {digest[:19]}... "
                f"in {time.monotonic() - started:.1f} s"
            )
        self.manifestDigest = client.pushImage(
            REPOSITORY, TAG, [(self.digests[self.small], self.small.size)]
        )
        log(f"pushed {REPOSITORY}:{TAG} {self.manifestDigest}")
        if not self.args.no_nginx:
            if shutil.which("nginx"):
                for name, buffering in (("nginx-off", False), ("nginx-default", True)):
                    self.servers[name] = self.harness.startNginx(
                        registry.url,
                        name=name,
                        buffering=buffering,
                        workers=self.args.nginx_workers,
                    )
                    log(f"{name} at {self.servers[name].url}")
            else:
                log("nginx is not installed: no nginx figures")
        self.loader = self.chooseLoader()

    def chooseLoader(self) -> str:
        haveWrk, haveHey = bool(shutil.which("wrk")), bool(shutil.which("hey"))
        if self.args.loader != "auto":
            return self.args.loader
        if haveWrk:
            try:
                self.loadHead("direct", loader="wrk", duration=1.0)
                return "wrk"
            except BenchError:
                log("this wrk cannot finish HEAD requests (it waits for a body)")
        if haveHey:
            log("using hey for the HEAD load")
            return "hey"
        if shutil.which("ab"):
            # HTTP/1.0, whose keep-alive Twisted does not do: each HEAD costs
            # regproxy a new connection, the registry and nginx none.
            log("using ab for the HEAD load (HTTP/1.0: regproxy's figures are low)")
            return "ab"
        raise BenchError(
            "no HEAD-capable load generator: apt-get install apache2-utils (ab)"
        )

    def regproxy(self) -> Server:
        server = self.harness.startRegproxy(
            self.servers["direct"].url,
            extraArgs=["--auth", self.args.auth, *self.args.regproxy_arg],
        )
        self.servers["regproxy"] = server
        self.auth = {}
        if self.args.auth == "broker":
            token = bearerToken(server.url, REPOSITORY, timeout=30)
            self.auth = {"Authorization": f"Bearer {token}"}
        return server

    def headers(self, name: str, extra: dict[str, str] | None = None) -> dict:
        """
        What a client sends to C{name}: C{extra}, and our token for regproxy.
        """
        return {**(extra or {}), **(self.auth if name == "regproxy" else {})}

    def headerLines(self, name: str) -> list[str]:
        return [f"{k}: {v}" for k, v in self.headers(name).items()]

    def stopRegproxy(self) -> None:
        server = self.servers.pop("regproxy", None)
        if server is not None:
            self.harness.stop(server)

    def paths(self) -> list[str]:
        names = ["direct", "nginx-off", "nginx-default"]
        if not self.args.no_regproxy:
            names.insert(1, "regproxy")
        return [n for n in names if n in self.servers or n == "regproxy"]

    # Checking that every path returns the right bytes.

    def verify(self) -> None:
        """
        Before measuring anything: the small blob's digest and the manifest's
        HEAD through every path, and the big blob's digest through regproxy
        (a fast proxy that returns the wrong bytes is not fast).
        """
        started = not self.args.no_regproxy
        if started:
            self.regproxy()
        try:
            for name in self.paths():
                got = sha256Of(
                    self.blobURL(name, self.small), 30, self.headerLines(name)
                )
                if got != self.digests[self.small]:
                    raise BenchError(f"{name}: small blob came back as {got}")
                self.checkHead(name)
            if started:
                got = sha256Of(
                    self.blobURL("regproxy", self.big),
                    self.fetchTimeout,
                    self.headerLines("regproxy"),
                )
                if got != self.digests[self.big]:
                    raise BenchError(f"regproxy: big blob came back as {got}")
            log("every path returns the right bytes and manifest headers")
        finally:
            self.stopRegproxy()

    def checkHead(self, name: str) -> None:
        url = urlsplit(self.manifestURL(name))
        conn = http.client.HTTPConnection(url.hostname, url.port, timeout=30)
        try:
            conn.request("HEAD", url.path, headers=self.headers(name, self.headHeaders))
            response = conn.getresponse()
            response.read()
        except (OSError, http.client.HTTPException) as e:
            raise BenchError(f"{name}: HEAD manifest: {e}") from None
        finally:
            conn.close()
        digest = response.getheader("Docker-Content-Digest")
        if response.status != 200 or digest != self.manifestDigest:
            raise BenchError(
                f"{name}: HEAD manifest gave {response.status}, digest {digest}"
            )
        if not response.getheader("Content-Length", "0").strip("0"):
            raise BenchError(f"{name}: HEAD manifest has no Content-Length")

    def blobURL(self, name: str, blob: Blob) -> str:
        return f"{self.servers[name].url}/v2/{REPOSITORY}/blobs/{self.digests[blob]}"

    def manifestURL(self, name: str) -> str:
        return f"{self.servers[name].url}/v2/{REPOSITORY}/manifests/{TAG}"

    # Measuring.

    def loadHead(
        self, name: str, loader: str | None = None, duration: float | None = None
    ) -> Load:
        loader = loader or self.loader
        duration = duration or self.args.duration
        url = self.manifestURL(name)
        if loader == "wrk":
            script = wrkScript(
                self.harness.path(f"head-{name}.lua"),
                "HEAD",
                self.headers(name, self.headHeaders),
            )
            return runWrk(url, script, duration, self.args.concurrency)
        run = runAb if loader == "ab" else runHey
        return run(
            url,
            "HEAD",
            self.headers(name, self.headHeaders),
            duration,
            self.args.concurrency,
        )

    def fetchBig(self, name: str, figures: dict[str, Any] | None = None) -> None:
        """
        Fetch the big blob from C{name}; record in C{figures} the speed and
        the CPU seconds the server (all its processes) spent on it.
        """
        process = self.servers[name].process
        before = process.cpuTimes(group=True)
        with ForeignLoad(self.harness) as foreign:
            fetch = curlFetch(
                self.blobURL(name, self.big),
                self.fetchTimeout,
                self.headerLines(name),
                expectSize=self.big.size,
            )
        if figures is not None:
            figures["speed"][name] = fetch.speed
            after = process.cpuTimes(group=True)
            figures["cpu"][name] = sum(after) - sum(before)
            figures["cpu_system"][name] = after[1] - before[1]
            figures["foreign"][f"{name} blob"] = foreign.fraction

    def measureHead(self, name: str, figures: dict[str, Any]) -> None:
        with ForeignLoad(self.harness) as foreign:
            load = self.loadHead(name)
        figures["head"][name] = {
            "rps": load.rps,
            "p50": load.p50,
            "p99": load.p99,
            "requests": load.requests,
            "errors": load.errors,
        }
        figures["foreign"][f"{name} HEAD"] = foreign.fraction

    def run(self, number: int) -> dict[str, Any]:
        busy = waitForQuiet(maxBusy=0.15, timeout=self.args.quiet_timeout)
        figures: dict[str, Any] = {
            "run": number,
            "busy_before": busy,
            "loadavg": os.getloadavg()[0],
            "speed": {},
            "cpu": {},
            "cpu_system": {},
            "head": {},
            "foreign": {},
        }
        if busy > 0.15:
            log(f"run {number}: the machine is {busy:.0%} busy with other work")
        for name in self.paths():
            if name == "regproxy":
                figures.update(self.measureRegproxy(figures))
                continue
            self.fetchBig(name, figures)
            self.measureHead(name, figures)
            log(
                f"run {number}: {name}: {figures['speed'][name] / 1e9:.2f} GB/s "
                f"({figures['cpu'][name]:.1f} CPU s), "
                f"{figures['head'][name]['rps']:.0f} HEAD/s; "
                f"{self.foreignNote(figures, name)}"
            )
        figures["disturbed"] = any(f > DISTURBED for f in figures["foreign"].values())
        return figures

    def measureRegproxy(self, figures: dict[str, Any]) -> dict[str, Any]:
        """
        A fresh regproxy for the small blob and another for the big one, so
        each peak is that fetch's own; then the HEAD load on the second.
        """
        rss: dict[str, Any] = {}
        server = self.regproxy()
        try:
            rss["idle"] = server.process.rss()
            with MemoryWatch(server.process) as watch:
                curlFetch(
                    self.blobURL("regproxy", self.small),
                    60,
                    self.headerLines("regproxy"),
                    expectSize=MiB,
                )
            rss["small_peak"] = watch.peak
        finally:
            self.stopRegproxy()
        server = self.regproxy()
        try:
            with MemoryWatch(server.process) as watch:
                self.fetchBig("regproxy", figures)
            rss["big_peak"] = watch.peak
            rss["big_samples"] = watch.samples
            self.measureHead("regproxy", figures)
            rss["after_head"] = server.process.rss()
        finally:
            self.stopRegproxy()
        log(
            f"run {figures['run']}: regproxy: "
            f"{figures['speed']['regproxy'] / 1e9:.2f} GB/s "
            f"({figures['cpu']['regproxy']:.1f} CPU s), "
            f"{figures['head']['regproxy']['rps']:.0f} HEAD/s, peak RSS "
            f"{rss['small_peak'] / 1e6:.1f} MB (1 MiB) / "
            f"{rss['big_peak'] / 1e6:.1f} MB (big); "
            f"{self.foreignNote(figures, 'regproxy')}"
        )
        return {"rss": rss}

    def foreignNote(self, figures: dict[str, Any], name: str) -> str:
        blob = figures["foreign"].get(f"{name} blob", 0.0)
        head = figures["foreign"].get(f"{name} HEAD", 0.0)
        return f"other work took {blob:.0%} / {head:.0%} of the CPUs"


# Reporting.


def summarize(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """
    The median of every figure over the runs.
    """
    names = sorted({n for r in runs for n in r["speed"]}, key=PATHS.index)
    out: dict[str, Any] = {
        "speed": {},
        "cpu": {},
        "cpu_system": {},
        "head": {},
        "rss": {},
    }
    for name in names:
        out["speed"][name] = median([r["speed"].get(name) for r in runs])
        out["cpu"][name] = median([r["cpu"].get(name) for r in runs])
        out["cpu_system"][name] = median([r["cpu_system"].get(name) for r in runs])
        out["head"][name] = {
            key: median([r["head"][name][key] for r in runs if name in r["head"]])
            for key in ("rps", "p50", "p99")
        }
        out["head"][name]["errors"] = sum(
            r["head"][name]["errors"] for r in runs if name in r["head"]
        )
    for key in ("idle", "small_peak", "big_peak", "after_head"):
        out["rss"][key] = median([r["rss"][key] for r in runs if "rss" in r])
    foreign = [f for r in runs for f in r["foreign"].values()]
    out["foreign"] = {
        "median": median(foreign),
        "max": max(foreign, default=None),
        "over": sum(1 for f in foreign if f > DISTURBED),
        "count": len(foreign),
    }
    return out


def ratio(a: float | None, b: float | None) -> str:
    return f"{a / b:.2f}x" if a and b else "-"


def table(
    summary: dict[str, Any], args: argparse.Namespace, loader: str, counted: str
) -> str:
    names = list(summary["speed"])
    rp = "regproxy" in names
    others = [n for n in ("direct", "nginx-off", "nginx-default") if n in names]
    head = f"{'':24}" + "".join(f"{TITLES[n]:>15}" for n in names)
    if rp:
        head += "".join(f"{'rp/' + SHORT[n]:>12}" for n in others)
    lines = [
        f"regproxy forwarding benchmark: {counted}; big blob "
        f"{args.blob_mib} MiB; HEAD manifest at concurrency {args.concurrency} "
        f"for {args.duration:g} s ({loader}); regproxy --auth {args.auth}; "
        f"loopback, {os.cpu_count()} CPUs",
        "",
        head,
    ]

    def row(label: str, values: dict[str, float | None], fmt: str) -> str:
        text = f"{label:24}" + "".join(
            f"{(fmt.format(values[n]) if values.get(n) is not None else '-'):>15}"
            for n in names
        )
        if rp:
            text += "".join(
                f"{ratio(values.get('regproxy'), values.get(n)):>12}" for n in others
            )
        return text

    speed = summary["speed"]
    hd = summary["head"]
    lines.append(
        row("blob download (GB/s)", {n: v / 1e9 for n, v in speed.items()}, "{:.2f}")
    )
    lines.append(
        row(
            "server CPU s per GiB",
            {n: v / (args.blob_mib / 1024) for n, v in summary["cpu"].items()},
            "{:.2f}",
        )
    )
    lines.append(
        row(
            "  of which kernel (sys)",
            {n: v / (args.blob_mib / 1024) for n, v in summary["cpu_system"].items()},
            "{:.2f}",
        )
    )
    lines.append(
        row("HEAD manifest (req/s)", {n: hd[n]["rps"] for n in names}, "{:.0f}")
    )
    lines.append(
        row("HEAD latency p50 (ms)", {n: hd[n]["p50"] * 1e3 for n in names}, "{:.2f}")
    )
    lines.append(
        row("HEAD latency p99 (ms)", {n: hd[n]["p99"] * 1e3 for n in names}, "{:.2f}")
    )
    errors = {n: hd[n]["errors"] for n in names if hd[n]["errors"]}
    if errors:
        lines.append(f"HEAD errors (all runs): {errors}")
    foreign = summary["foreign"]
    if foreign["count"]:
        lines.append(
            f"other people's work during the measurements: median "
            f"{foreign['median']:.0%}, max {foreign['max']:.0%} of the CPUs"
            + (
                f"; {foreign['over']} of {foreign['count']} measurements above "
                f"{DISTURBED:.0%}: the figures are disturbed, rerun on an idle "
                f"machine"
                if foreign["over"]
                else ""
            )
        )
    if not rp:
        return "\n".join(lines)
    rss = summary["rss"]
    lines += [
        "",
        f"regproxy RSS (MB = 10^6 bytes): idle after start {rss['idle'] / 1e6:.1f}, "
        f"peak during the 1 MiB fetch {rss['small_peak'] / 1e6:.1f}, "
        f"peak during the {args.blob_mib} MiB fetch {rss['big_peak'] / 1e6:.1f}, "
        f"after the HEAD load {rss['after_head'] / 1e6:.1f}",
        "",
        f"{'target (issue 2)':52}{'value':>14}   met",
    ]

    def target(label: str, value: str, met: bool | None) -> str:
        mark = "-" if met is None else ("yes" if met else "NO")
        return f"{label:52}{value:>14}   {mark}"

    rpSpeed = speed.get("regproxy")
    nginxDefault = speed.get("nginx-default")
    lines.append(
        target(
            "blob through regproxy >= 1.0 GB/s",
            f"{rpSpeed / 1e9:.2f} GB/s",
            rpSpeed >= MIN_SPEED,
        )
    )
    lines.append(
        target(
            "blob through regproxy >= 1.5x nginx default buffers",
            ratio(rpSpeed, nginxDefault),
            (rpSpeed >= MIN_OVER_NGINX * nginxDefault) if nginxDefault else None,
        )
    )
    small, big = rss["small_peak"], rss["big_peak"]
    lines.append(
        target(
            "peak RSS, 1 MiB blob <= 80 MB", f"{small / 1e6:.1f} MB", small <= MAX_RSS
        )
    )
    lines.append(
        target(
            f"peak RSS, {args.blob_mib} MiB blob <= 80 MB",
            f"{big / 1e6:.1f} MB",
            big <= MAX_RSS,
        )
    )
    lines.append(
        target(
            f"peak RSS same for both (big <= small + {SAME_RSS:.0%})",
            f"{(big - small) / small:+.1%}",
            big <= small * (1 + SAME_RSS),
        )
    )
    if args.blob_mib != 1024:
        lines.append("(the issue's targets are for a 1024 MiB blob)")
    return "\n".join(lines)


def versions() -> dict[str, str]:
    found = {"python": platform.python_version(), "kernel": platform.release()}
    for tool, argv in (
        ("docker-registry", ["docker-registry", "--version"]),
        ("nginx", ["nginx", "-v"]),
        ("curl", ["curl", "--version"]),
    ):
        try:
            done = subprocess.run(argv, capture_output=True, text=True, timeout=10)
            found[tool] = (done.stdout or done.stderr).splitlines()[0]
        except (OSError, subprocess.TimeoutExpired, IndexError):
            pass
    return found


def main(argv: list[str] | None = None) -> int:
    args = parseArgs(sys.argv[1:] if argv is None else argv)
    for tool in ("docker-registry", "curl"):
        if not shutil.which(tool):
            print(f"bench_forward: {tool} is not installed", file=sys.stderr)
            return 2
    runs: list[dict[str, Any]] = []
    try:
        with Harness(tmpRoot=args.tmpdir, keep=args.keep) as harness:
            bench = Bench(harness, args)
            bench.prepare()
            bench.verify()
            bench.fetchBig("direct")  # into the page cache; not measured
            for number in range(1, args.runs + args.retries + 1):
                runs.append(bench.run(number))
                if sum(not r["disturbed"] for r in runs) >= args.runs:
                    break
                if runs[-1]["disturbed"] and number < args.runs + args.retries:
                    log(f"run {number} was disturbed by other work; one more")
            loader = bench.loader
    except BenchError as e:
        print(f"bench_forward: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("bench_forward: interrupted; everything stopped", file=sys.stderr)
        return 130
    clean = [r for r in runs if not r["disturbed"]]
    used = clean or runs
    summary = summarize(used)
    counted = f"medians of {len(used)} run(s)"
    if clean and len(clean) < len(runs):
        counted += f" ({len(runs) - len(clean)} disturbed run(s) left out)"
    print(table(summary, args, loader, counted))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(
                {
                    "arguments": vars(args),
                    "versions": versions(),
                    "cpus": os.cpu_count(),
                    "loader": loader,
                    "runs": runs,
                    "medians": summary,
                    "medians_of_runs": [r["run"] for r in used],
                },
                f,
                indent=2,
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
