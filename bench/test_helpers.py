"""
Tests for the benchmark helpers (not benchmarks, and not part of the suite
in tests/):

    python -m twisted.trial bench/test_helpers.py

They check what the benchmark's figures rest on: deterministic blobs whose
digest matches their bytes, the parsers of hey's, ab's and wrk's output, and that
the peak-RSS watch sees a short spike in a real process and that the harness
cleans up after itself.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import sys

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from _clients import parseAb, parseChallenge, parseHey, parseWrk  # noqa: E402
from _harness import BenchError, Harness, MemoryWatch  # noqa: E402
from _registry import Blob  # noqa: E402

HEY_OUTPUT = """
Summary:
  Total:\t2.0882 secs
  Slowest:\t0.3180 secs
  Fastest:\t0.0009 secs
  Average:\t0.0660 secs
  Requests/sec:\t236.5720

  Total data:\t255892 bytes
  Size/request:\t518 bytes

Latency distribution:
  10% in 0.0071 secs
  25% in 0.0211 secs
  50% in 0.0480 secs
  75% in 0.0925 secs
  90% in 0.1407 secs
  95% in 0.1715 secs
  99% in 0.3175 secs

Status code distribution:
  [200]\t490 responses
  [404]\t4 responses

Error distribution:
  [3]\tGet "http://127.0.0.1:1/v2/": dial tcp 127.0.0.1:1: connection refused
"""

# The line wrkScript's Lua prints, in Python: the round trip of the tests.
WRK_LINE = (
    'WRK-RESULT {{"requests": {requests}, "duration_us": {duration}, '
    '"bytes": {bytes}, "connect_errors": {connect}, "read_errors": {read}, '
    '"write_errors": {write}, "status_errors": {status}, "timeouts": {timeout}, '
    '"p50_us": {p50}, "p99_us": {p99}, "mean_us": {mean:.1f}, "max_us": {max}}}'
)

quick = settings(max_examples=200, deadline=None)


class BlobTests(SynchronousTestCase):
    @quick
    @given(
        size=st.integers(0, 5000),
        seed=st.integers(0, 2**32),
        chunkSize=st.integers(8, 700),
    )
    def test_digestMatchesBytes(self, size: int, seed: int, chunkSize: int) -> None:
        """
        The chunks add up to C{size} bytes, none longer than C{chunkSize},
        and C{digest()} is their SHA-256, the same every time.
        """
        blob = Blob(size, seed, chunkSize)
        chunks = list(blob.chunks())
        content = b"".join(chunks)
        self.assertEqual(len(content), size)
        self.assertTrue(all(0 < len(c) <= chunkSize for c in chunks))
        expected = "sha256:" + hashlib.sha256(content).hexdigest()
        self.assertEqual(blob.digest(), expected)
        self.assertEqual(b"".join(blob.chunks()), content)

    def test_chunksDiffer(self) -> None:
        """
        No two chunks are the same, and another seed gives other bytes.
        """
        chunks = list(Blob(64 * 100, seed=1, chunkSize=64).chunks())
        self.assertEqual(len(set(chunks)), 100)
        self.assertNotEqual(Blob(4096, seed=1).digest(), Blob(4096, seed=2).digest())


class ParseHeyTests(SynchronousTestCase):
    def test_summary(self) -> None:
        """
        Requests per second, the median and p99 latency in seconds, and as
        errors the answers of 400 or more plus the requests with no answer.
        """
        load = parseHey(HEY_OUTPUT)
        self.assertEqual(
            (load.requests, load.rps, load.p50, load.p99, load.errors),
            (494, 236.572, 0.048, 0.3175, 7),
        )

    def test_nothingCompleted(self) -> None:
        """
        Output with no answered request is an error, not zero figures.
        """
        self.assertRaises(BenchError, parseHey, "Summary:\n  Requests/sec:\t0\n")

    @quick
    @given(st.text())
    def test_garbage(self, text: str) -> None:
        """
        Any text gives figures or a L{BenchError}, nothing else.
        """
        try:
            parseHey(text)
        except BenchError:
            pass


AB_OUTPUT = """
Concurrency Level:      16
Time taken for tests:   1.000 seconds
Complete requests:      1202
Failed requests:        3
Non-2xx responses:      4
Keep-Alive requests:    1202
Requests per second:    1201.61 [#/sec] (mean)
Time per request:       13.315 [ms] (mean)
Time per request:       0.832 [ms] (mean, across all concurrent requests)

Percentage of the requests served within a certain time (ms)
  50%      3
  66%      4
  99%      7
 100%     20 (longest request)
"""


class ParseAbTests(SynchronousTestCase):
    def test_report(self) -> None:
        """
        Requests per second, the median and p99 latency and the mean in
        seconds, and as errors the failed requests plus the answers other
        than 2xx.
        """
        load = parseAb(AB_OUTPUT)
        self.assertEqual(
            (load.requests, load.rps, load.p50, load.p99, load.errors),
            (1202, 1201.61, 0.003, 0.007, 7),
        )
        self.assertAlmostEqual(load.mean, 0.013315)

    def test_nothingCompleted(self) -> None:
        """
        A report with no completed request is an error, not zero figures.
        """
        self.assertRaises(
            BenchError,
            parseAb,
            AB_OUTPUT.replace("requests:      1202", "requests:      0"),
        )

    @quick
    @given(st.text())
    def test_garbage(self, text: str) -> None:
        """
        Any text gives figures or a L{BenchError}, nothing else.
        """
        try:
            parseAb(text)
        except BenchError:
            pass


class ParseWrkTests(SynchronousTestCase):
    @quick
    @given(
        requests=st.integers(1, 10**9),
        duration=st.integers(1, 10**9),
        errors=st.lists(st.integers(0, 10**6), min_size=5, max_size=5),
        latencies=st.lists(st.integers(0, 10**8), min_size=3, max_size=3),
    )
    def test_roundTrip(self, requests, duration, errors, latencies) -> None:
        """
        What the Lua C{done} function prints comes back as the same figures.
        """
        connect, read, write, status, timeout = errors
        p50, p99, maximum = sorted(latencies)
        line = WRK_LINE.format(
            requests=requests,
            duration=duration,
            bytes=requests * 100,
            connect=connect,
            read=read,
            write=write,
            status=status,
            timeout=timeout,
            p50=p50,
            p99=p99,
            mean=p50 + 0.5,
            max=maximum,
        )
        load = parseWrk("Running 10s test @ http://x\n" + line + "\n")
        self.assertEqual(load.requests, requests)
        self.assertAlmostEqual(load.rps, requests / (duration / 1e6))
        self.assertEqual((load.p50, load.p99), (p50 / 1e6, p99 / 1e6))
        self.assertEqual(load.errors, sum(errors))

    def test_nothingCompleted(self) -> None:
        """
        wrk's HEAD problem: it ran, but finished no request.
        """
        line = WRK_LINE.format(
            requests=0, duration=10**7, bytes=738, connect=0, read=0, write=0,
            status=0, timeout=0, p50=0, p99=0, mean=0, max=0,
        )  # fmt: skip
        self.assertRaises(BenchError, parseWrk, line)

    @quick
    @given(st.one_of(st.text(), st.text().map(lambda t: "WRK-RESULT " + t)))
    def test_garbage(self, text: str) -> None:
        try:
            parseWrk(text)
        except BenchError:
            pass

    @quick
    @given(st.dictionaries(st.sampled_from(["requests", "duration_us", "p50_us"]),
                           st.one_of(st.none(), st.integers(), st.text())))  # fmt: skip
    def test_wrongShapes(self, raw) -> None:
        try:
            parseWrk("WRK-RESULT " + json.dumps(raw))
        except BenchError:
            pass


class ParseChallengeTests(SynchronousTestCase):
    @quick
    @given(
        st.dictionaries(
            st.from_regex(r"[A-Za-z_]\w{0,10}", fullmatch=True),
            st.text(st.characters(exclude_characters='"\\\r\n'), max_size=40),
            min_size=1,
        )
    )
    def test_roundTrip(self, params: dict[str, str]) -> None:
        """
        The parameters of a challenge written the way registries write them
        come back unchanged.
        """
        header = "Bearer " + ",".join(f'{k}="{v}"' for k, v in params.items())
        self.assertEqual(parseChallenge(header), params)


class ProcessTests(SynchronousTestCase):
    # A child that, on SIGUSR1, holds 100 MB for a moment and lets go.
    SPIKE = (
        "import signal, sys, threading\n"
        "done = threading.Event()\n"
        "def spike(*a):\n"
        "    block = bytearray(100 * 1000 * 1000)\n"
        "    for i in range(0, len(block), 4096): block[i] = 1\n"
        "    del block\n"
        "    print('freed', flush=True)\n"
        "signal.signal(signal.SIGUSR1, spike)\n"
        "print('ready', flush=True)\n"
        "done.wait(60)\n"
    )

    def test_peakOfShortSpike(self) -> None:
        """
        L{MemoryWatch} reports a 100 MB allocation made and freed while it
        watched, even though it was gone before the watch ended.
        """
        with Harness() as harness:
            child = harness.spawn("spike", [sys.executable, "-c", self.SPIKE])
            child.waitForLine("ready", 30)
            before = child.rss()
            with MemoryWatch(child) as watch:
                os.kill(child.pid, signal.SIGUSR1)
                child.waitForLine("freed", 30)
            self.assertGreater(watch.peak - before, 95e6)
            self.assertLess(child.rss() - before, 50e6)

    def test_cleanUp(self) -> None:
        """
        Leaving the harness stops its processes and removes its directory.
        """
        with Harness() as harness:
            child = harness.spawn("spike", [sys.executable, "-c", self.SPIKE])
            child.waitForLine("ready", 30)
            directory = harness.dir
        self.assertFalse(child.running())
        self.assertFalse(os.path.exists(directory))

    def test_exitBeforeLine(self) -> None:
        """
        A process that exits before it is ready is reported with its last
        words, at once, not after the timeout.
        """
        with Harness() as harness:
            child = harness.spawn(
                "early", [sys.executable, "-c", "print('bad config')"]
            )
            error = self.assertRaises(BenchError, child.waitForLine, "listening", 600)
        self.assertIn("bad config", str(error))
        self.assertIn("early exited", str(error))
