"""
The clients that measure: curl for one download, wrk and hey for many small
requests, each returning its figures as a value.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import re
import statistics
import subprocess
import time
from collections.abc import Callable, Sequence
from typing import Any
from urllib.parse import urlencode, urlsplit

import attrs
from _harness import LOOPBACK, BenchError
from _registry import MiB


def median(values: Sequence[float]) -> float | None:
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


# Clients that measure.


@attrs.frozen
class Fetch:
    """
    What curl saw fetching one URL.

    @ivar speed: Bytes per second, as curl's C{%{speed_download}}.
    """

    status: int
    size: int
    speed: float
    seconds: float


def curlFetch(
    url: str,
    timeout: float,
    headers: Sequence[str] = (),
    expectSize: int | None = None,
    output: str = "/dev/null",
) -> Fetch:
    """
    Fetch C{url} with curl, throw the body away, and return its figures.

    @raise BenchError: On a status other than 200, a short body, or timeout.
    """
    argv = ["curl", "-s", "-S", "-o", output, "--max-time", f"{timeout:g}"]
    for header in headers:
        argv += ["-H", header]
    argv += ["-w", "%{http_code} %{size_download} %{speed_download} %{time_total}"]
    argv.append(url)
    try:
        done = subprocess.run(
            argv, capture_output=True, text=True, timeout=timeout + 10
        )
    except subprocess.TimeoutExpired:
        raise BenchError(f"curl {url}: no answer within {timeout:g} s") from None
    if done.returncode != 0:
        raise BenchError(f"curl {url}: {done.stderr.strip() or done.returncode}")
    status, size, speed, seconds = done.stdout.split()
    fetch = Fetch(int(status), int(size), float(speed), float(seconds))
    if fetch.status != 200:
        raise BenchError(f"curl {url}: status {fetch.status}")
    if expectSize is not None and fetch.size != expectSize:
        raise BenchError(f"curl {url}: {fetch.size} bytes, expected {expectSize}")
    return fetch


def sha256Of(url: str, timeout: float, headers: Sequence[str] = ()) -> str:
    """
    The digest of what C{url} returns, read in chunks, within C{timeout}
    seconds in all.
    """
    deadline = time.monotonic() + timeout
    parts = urlsplit(url)
    conn = http.client.HTTPConnection(
        parts.hostname or LOOPBACK, parts.port or 80, timeout=timeout
    )
    try:
        conn.request(
            "GET",
            parts.path + ("?" + parts.query if parts.query else ""),
            headers=dict(h.split(": ", 1) for h in headers),
        )
        response = conn.getresponse()
        if response.status != 200:
            raise BenchError(f"GET {url}: status {response.status}")
        hasher = hashlib.sha256()
        while chunk := response.read(MiB):
            hasher.update(chunk)
            if time.monotonic() > deadline:
                raise BenchError(f"GET {url}: slower than {timeout:g} s")
    except (OSError, http.client.HTTPException) as e:
        raise BenchError(f"GET {url}: {e}") from None
    finally:
        conn.close()
    return "sha256:" + hasher.hexdigest()


def _get(url: str, timeout: float) -> http.client.HTTPResponse:
    parts = urlsplit(url)
    conn = http.client.HTTPConnection(
        parts.hostname or LOOPBACK, parts.port or 80, timeout=timeout
    )
    try:
        conn.request("GET", parts.path + ("?" + parts.query if parts.query else ""))
        response = conn.getresponse()
        response.content = response.read()  # type: ignore[attr-defined]
    except (OSError, http.client.HTTPException) as e:
        raise BenchError(f"GET {url}: {e}") from None
    finally:
        conn.close()
    return response


def parseChallenge(challenge: str) -> dict[str, str]:
    """
    The quoted parameters of a C{WWW-Authenticate} challenge, enough for
    the challenges registries send (C{Bearer realm="...",service="..."}).
    """
    return dict(re.findall(r'(\w+)="([^"\\]*)"', challenge))


def bearerToken(baseURL: str, repository: str, timeout: float = 30.0) -> str:
    """
    An anonymous pull token, got as docker does: from the realm and service
    of the C{Bearer} challenge that C{/v2/} answers with.
    """
    challenge = _get(baseURL + "/v2/", timeout).getheader("WWW-Authenticate") or ""
    if not challenge.lower().startswith("bearer "):
        raise BenchError(f"{baseURL}/v2/: no Bearer challenge ({challenge!r})")
    params = parseChallenge(challenge)
    if "realm" not in params:
        raise BenchError(f"{baseURL}/v2/: a challenge without a realm")
    query = urlencode(
        {"service": params.get("service", ""), "scope": f"repository:{repository}:pull"}
    )
    response = _get(f"{params['realm']}?{query}", timeout)
    if response.status != 200:
        raise BenchError(f"{params['realm']}: status {response.status}")
    try:
        answer = json.loads(response.content)  # type: ignore[attr-defined]
        return answer.get("token") or answer["access_token"]
    except (ValueError, KeyError, AttributeError):
        raise BenchError(f"{params['realm']}: no token in the answer") from None


_WRK_DONE = """
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'WRK-RESULT {"requests": %d, "duration_us": %d, "bytes": %d, '
    .. '"connect_errors": %d, "read_errors": %d, "write_errors": %d, '
    .. '"status_errors": %d, "timeouts": %d, "p50_us": %d, "p99_us": %d, '
    .. '"mean_us": %.1f, "max_us": %d}\\n',
    summary.requests, summary.duration, summary.bytes,
    e.connect, e.read, e.write, e.status, e.timeout,
    latency:percentile(50), latency:percentile(99), latency.mean, latency.max))
end
"""


def wrkScript(
    path: str, method: str = "GET", headers: dict[str, str] | None = None
) -> str:
    """
    Write a wrk Lua script that sends C{method} with C{headers} and prints
    its figures as one JSON line; return its path.
    """
    lines = [f"wrk.method = {json.dumps(method)}"]
    for name, value in (headers or {}).items():
        lines.append(f"wrk.headers[{json.dumps(name)}] = {json.dumps(value)}")
    with open(path, "w") as f:
        f.write("\n".join(lines) + "\n" + _WRK_DONE)
    return path


@attrs.frozen
class Load:
    """
    What wrk saw: requests per second and latencies in seconds.
    """

    requests: int
    rps: float
    p50: float
    p99: float
    mean: float
    errors: int
    raw: dict[str, Any]


def _runLoad(
    argv: list[str], url: str, duration: float, parse: Callable[[str], Load]
) -> Load:
    """
    Run a load generator for C{duration} seconds and parse its report.

    @raise BenchError: If it fails, runs over time or completes nothing.
    """
    tool = argv[0]
    try:
        done = subprocess.run(
            argv, capture_output=True, text=True, timeout=duration + 30
        )
    except subprocess.TimeoutExpired:
        raise BenchError(
            f"{tool} {url}: still running after {duration + 30:g} s"
        ) from None
    if done.returncode != 0:
        raise BenchError(f"{tool} {url}: {done.stderr.strip() or done.stdout[-500:]}")
    try:
        return parse(done.stdout)
    except BenchError as e:
        raise BenchError(f"{tool} {url}: {e}") from None


def runWrk(
    url: str,
    script: str,
    duration: float = 10.0,
    connections: int = 16,
    threads: int = 2,
) -> Load:
    """
    Load C{url} with wrk for C{duration} seconds over C{connections}
    keep-alive connections.

    @raise BenchError: If wrk fails, runs over time or completes nothing.
    """
    argv = [
        "wrk",
        f"-t{min(threads, connections)}",
        f"-c{connections}",
        f"-d{duration:g}s",
        "--timeout",
        "5s",
        "-s",
        script,
        url,
    ]
    return _runLoad(argv, url, duration, parseWrk)


def parseWrk(out: str) -> Load:
    """
    The figures that L{wrkScript}'s C{done} function prints as one JSON line.

    @raise BenchError: If the line is missing or no request completed.
    """
    match = re.search(r"^WRK-RESULT (\{.*\})$", out, re.M)
    try:
        raw = json.loads(match.group(1)) if match else None
        if not isinstance(raw, dict):
            raise ValueError("not an object")
        requests = int(raw["requests"])
        seconds = int(raw["duration_us"]) / 1e6
        errors = sum(
            int(raw[k])
            for k in (
                "connect_errors",
                "read_errors",
                "write_errors",
                "status_errors",
                "timeouts",
            )
        )
        p50, p99, mean = (float(raw[k]) / 1e6 for k in ("p50_us", "p99_us", "mean_us"))
    except (ValueError, KeyError, TypeError, OverflowError):
        raise BenchError(f"no figures in its output:\n{out[-800:]}") from None
    if requests <= 0 or seconds <= 0:
        raise BenchError("no request completed")
    return Load(
        requests=requests,
        rps=requests / seconds,
        p50=p50,
        p99=p99,
        mean=mean,
        errors=errors,
        raw=raw,
    )


def runHey(
    url: str,
    method: str = "GET",
    headers: dict[str, str] | None = None,
    duration: float = 10.0,
    connections: int = 16,
) -> Load:
    """
    Load C{url} with hey (keep-alive, no compression) for C{duration}
    seconds with C{connections} workers.  wrk 4.1 (Debian 12) never finishes
    a C{HEAD} whose answer has a C{Content-Length}: it waits for the body.
    hey knows HEAD has none.

    @raise BenchError: If hey fails, runs over time or completes nothing.
    """
    argv = [
        "hey",
        "-z",
        f"{duration:g}s",
        "-c",
        str(connections),
        "-m",
        method,
        "-t",
        "5",
        "-disable-compression",
        "-disable-redirects",
    ]
    for name, value in (headers or {}).items():
        argv += ["-H", f"{name}: {value}"]
    argv.append(url)
    return _runLoad(argv, url, duration, parseHey)


def parseHey(out: str) -> Load:
    """
    The figures in hey's summary: requests per second, the 50% and 99%
    latencies, and as errors every answer of 400 or more plus every request
    that got no answer ("Error distribution").

    @raise BenchError: If a figure is missing or no request completed.
    """

    def figure(pattern: str) -> float:
        match = re.search(pattern, out)
        if not match:
            raise BenchError(f"no /{pattern}/ in its output:\n{out[-800:]}")
        return float(match.group(1))

    statuses: dict[int, int] = {}
    for code, count in re.findall(r"\[(\d+)\]\s+(\d+) responses", out):
        statuses[int(code)] = statuses.get(int(code), 0) + int(count)
    failures = 0
    if "Error distribution:" in out:
        tail = out.split("Error distribution:", 1)[1]
        failures = sum(int(n) for n in re.findall(r"^\s+\[(\d+)\]\s", tail, re.M))
    requests = sum(statuses.values())
    if requests == 0:
        raise BenchError(f"no request completed:\n{out[-800:]}")
    return Load(
        requests=requests,
        rps=figure(r"Requests/sec:\s+(\d+(?:\.\d+)?)"),
        p50=figure(r"50% in (\d+(?:\.\d+)?) secs"),
        p99=figure(r"99% in (\d+(?:\.\d+)?) secs"),
        mean=figure(r"Average:\s+(\d+(?:\.\d+)?) secs"),
        errors=failures + sum(n for code, n in statuses.items() if code >= 400),
        raw={"statuses": statuses, "failures": failures, "tool": "hey"},
    )


def runAb(
    url: str,
    method: str = "HEAD",
    headers: dict[str, str] | None = None,
    duration: float = 10.0,
    connections: int = 16,
) -> Load:
    """
    Load C{url} with ApacheBench (Debian's apache2-utils; keep-alive) for
    C{duration} seconds with C{connections} at once.  Only C{HEAD} (ab's
    C{-i}): it is what wrk 4.1 cannot do, and ab knows a HEAD has no body.

    @raise BenchError: If ab fails, runs over time or completes nothing.
    """
    if method != "HEAD":
        raise BenchError("ab is used for HEAD only")
    argv = ["ab", "-i", "-k", "-q", "-s", "5", "-c", str(connections)]
    # -t implies -n 50000; a larger -n after it lets the time decide.
    argv += ["-t", f"{duration:g}", "-n", "100000000"]
    for name, value in (headers or {}).items():
        argv += ["-H", f"{name}: {value}"]
    argv.append(url)
    return _runLoad(argv, url, duration, parseAb)


def parseAb(out: str) -> Load:
    """
    The figures in ab's report: requests per second, the 50% and 99%
    latencies (ab gives whole milliseconds) and the mean, in seconds, and as
    errors the failed requests plus the answers other than 2xx.

    @raise BenchError: If a figure is missing or no request completed.
    """

    def figure(pattern: str) -> float:
        match = re.search(pattern, out, re.M)
        if not match:
            raise BenchError(f"no /{pattern}/ in its output:\n{out[-800:]}")
        return float(match.group(1))

    requests = int(figure(r"^Complete requests:\s+(\d+)"))
    if requests == 0:
        raise BenchError(f"no request completed:\n{out[-800:]}")
    failed = int(figure(r"^Failed requests:\s+(\d+)"))
    non2xx = re.search(r"^Non-2xx responses:\s+(\d+)", out, re.M)
    return Load(
        requests=requests,
        rps=figure(r"^Requests per second:\s+(\d+(?:\.\d+)?)"),
        p50=figure(r"^\s+50%\s+(\d+)") / 1000,
        p99=figure(r"^\s+99%\s+(\d+)") / 1000,
        mean=figure(r"^Time per request:\s+(\d+(?:\.\d+)?) \[ms\] \(mean\)") / 1000,
        errors=failed + (int(non2xx.group(1)) if non2xx else 0),
        raw={"failed": failed, "tool": "ab"},
    )
