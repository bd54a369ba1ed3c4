"""
How fast regproxy answers hot manifest requests for fleet names (issue 3),
beside the registry's own rate for the same manifest, in one run.

    python bench/bench_manifests.py [--runs 3] [--duration 10] [--concurrency 16]

A release (by version or commit) and a digest are immutable, so regproxy
answers them from memory for a client whose own credentials already fetched
them.  This starts a real distribution registry (open mode), the fake balena
API (the one faked part; see bench/_fakeapi.py) and regproxy with its
default broker and the balena resolver, pushes an image into the
repository the fake API names for acme/public-app 2.0.0, takes an anonymous
token from regproxy the way docker does, and loads, at the given
concurrency with hey, HEAD and GET of that manifest:

  - directly: /v2/<v2/hash>/manifests/latest and .../manifests/<digest>;
  - through regproxy: /v2/acme/public-app/2.0.0/manifests/latest (by
    version), /v2/acme/public-app/<commit>/manifests/latest (by commit) and
    /v2/acme/public-app/2.0.0/manifests/<digest> (by digest).

It prints medians of --runs and the ratio to the direct rate, with the
issue's target (at least 1.5x) marked met or not.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from _clients import Load, bearerToken, median, runHey
from _harness import BenchError, Harness, freePort, waitForQuiet
from _registry import MANIFEST_TYPES, Blob, RegistryClient

TARGET = 1.5


def parseArgs(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--duration", type=float, default=10.0)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--quiet-timeout", type=float, default=60.0)
    parser.add_argument("--json", help="write the raw figures here")
    parser.add_argument("--tmpdir")
    return parser.parse_args(argv)


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def load(
    url: str, method: str, headers: dict[str, str], args: argparse.Namespace
) -> Load:
    result = runHey(url, method, headers, args.duration, args.concurrency)
    if result.errors:
        raise BenchError(f"{method} {url}: {result.errors} errors")
    return result


def main(argv: list[str] | None = None) -> int:
    args = parseArgs(sys.argv[1:] if argv is None else argv)
    accept = {"Accept": ", ".join(MANIFEST_TYPES)}
    runs: list[dict[str, Any]] = []
    with Harness(tmpRoot=args.tmpdir) as harness:
        registry = harness.startRegistry()
        registryHost = registry.url.split("://", 1)[1]
        apiPort = freePort()
        api = harness.spawn(
            "fakeapi",
            [sys.executable, harness_script("_fakeapi.py"), str(apiPort), registryHost],
        )
        api.waitForLine(r"listening on", harness.startTimeout)
        fixture = json.loads(api.waitForLine(r"^(\{.*\})$", 1.0).group(1))
        repository = fixture["repository"]
        client = RegistryClient(registry.url)
        layer = Blob(1024 * 1024, seed=3)
        layerDigest = client.pushBlob(
            repository, layer.chunks(), layer.size, layer.digest()
        )
        digest = client.pushImage(repository, "latest", [(layerDigest, layer.size)])
        proxy = harness.startRegproxy(
            registry.url,
            extraArgs=[
                "--auth",
                "broker",
                "--balena-api",
                f"http://127.0.0.1:{apiPort}",
            ],
        )
        byVersion = f"{fixture['slug']}/{fixture['version']}"
        byCommit = f"{fixture['slug']}/{fixture['commit']}"
        paths = {
            "direct by tag": (registry.url, f"/v2/{repository}/manifests/latest", None),
            "direct by digest": (
                registry.url,
                f"/v2/{repository}/manifests/{digest}",
                None,
            ),
            "regproxy by version": (
                proxy.url,
                f"/v2/{byVersion}/manifests/latest",
                byVersion,
            ),
            "regproxy by commit": (
                proxy.url,
                f"/v2/{byCommit}/manifests/latest",
                byCommit,
            ),
            "regproxy by digest": (
                proxy.url,
                f"/v2/{byVersion}/manifests/{digest}",
                byVersion,
            ),
        }
        headers: dict[str, dict[str, str]] = {}
        for name, (base, path, scope) in paths.items():
            headers[name] = dict(accept)
            if scope is not None:
                headers[name]["Authorization"] = "Bearer " + bearerToken(
                    proxy.url, scope
                )
            # Warm: the first GET fills regproxy's caches; check the digest.
            warm = runHey(base + path, "GET", headers[name], 0.5, 1)
            if warm.errors or not warm.requests:
                raise BenchError(f"{name}: the warm-up GET failed")
        for run in range(args.runs):
            busy = waitForQuiet(maxBusy=0.15, timeout=args.quiet_timeout)
            log(f"run {run + 1}/{args.runs} (machine busy {busy:.0%} before)")
            figures: dict[str, Any] = {}
            for name, (base, path, _) in paths.items():
                for method in ("HEAD", "GET"):
                    result = load(base + path, method, headers[name], args)
                    figures[f"{name} {method}"] = {
                        "rps": result.rps,
                        "p50": result.p50,
                        "p99": result.p99,
                    }
                    log(f"  {name} {method}: {result.rps:.0f} req/s")
            figures["regproxy rss MB"] = proxy.process.rss() / 1e6
            runs.append(figures)
    medians = {
        key: {
            field: median(
                [run[key][field] for run in runs if run[key][field] is not None]
            )
            for field in ("rps", "p50", "p99")
        }
        for key in runs[0]
        if isinstance(runs[0][key], dict)
    }
    print(
        f"hot manifests for fleet names: medians of {args.runs} run(s); hey, "
        f"concurrency {args.concurrency}, {args.duration:g} s each; loopback, 2 CPUs\n"
    )
    print(
        f"{'':26}{'HEAD req/s':>12}{'vs direct':>11}{'GET req/s':>12}{'vs direct':>11}{'GET p99 ms':>12}"
    )
    met = []
    for name in paths:
        row = f"{name:26}"
        for method in ("HEAD", "GET"):
            value = medians[f"{name} {method}"]["rps"]
            directKey = "direct by digest" if "digest" in name else "direct by tag"
            direct = medians[f"{directKey} {method}"]["rps"]
            ratio = value / direct if direct else 0.0
            row += f"{value:12.0f}{ratio:10.2f}x"
            if name.startswith("regproxy"):
                met.append((f"{name} {method}", ratio))
        p99 = medians[f"{name} GET"]["p99"]
        row += f"{p99 * 1e3:12.1f}" if p99 is not None else f"{'-':>12}"
        print(row)
    print(
        f"\nregproxy RSS after the load: {median([r['regproxy rss MB'] for r in runs]):.1f} MB\n"
    )
    print(
        f"target (issue 3): at least {TARGET}x the registry's direct rate at concurrency {args.concurrency}"
    )
    for name, ratio in met:
        print(f"  {name:34} {ratio:5.2f}x   {'met' if ratio >= TARGET else 'NOT met'}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"runs": runs, "medians": medians}, f, indent=2)
    return 0


def harness_script(name: str) -> str:
    import os

    return os.path.join(os.path.dirname(os.path.abspath(__file__)), name)


if __name__ == "__main__":
    raise SystemExit(main())
