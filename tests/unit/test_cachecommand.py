# -*- test-case-name: tests.unit.test_cachecommand -*-
"""
Tests for C{regproxy cache} (L{regproxy.commands.cache}) and its puller
(L{regproxy.commands.warmpull}).
"""

from __future__ import annotations

import io

from hypothesis import given
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from regproxy.cache.index import CacheStats
from regproxy.commands.cache import formatStats, main
from regproxy.commands.warmpull import _wanted, splitReference


class SplitReferenceTests(SynchronousTestCase):
    """
    L{splitReference} reads C{name:tag}, C{name@digest} and C{name}.
    """

    def test_forms(self) -> None:
        self.assertEqual(splitReference("host:5000/a/b:v1"), ("host:5000/a/b", "v1"))
        self.assertEqual(splitReference("a/b@sha256:00"), ("a/b", "sha256:00"))
        self.assertEqual(splitReference("host:5000/a"), ("host:5000/a", "latest"))

    @given(st.text(max_size=60))
    def test_garbage(self, text: str) -> None:
        """
        Never a crash, and the parts rebuild the reference.
        """
        name, ref = splitReference(text)
        self.assertIn(text, (f"{name}:{ref}", f"{name}@{ref}", name))


class PlatformTests(SynchronousTestCase):
    def test_variant(self) -> None:
        """
        C{linux/arm64} takes C{linux/arm64/v8}, not C{linux/arm}.
        """
        self.assertTrue(_wanted("linux/arm64/v8", ("linux/arm64",)))
        self.assertTrue(_wanted("linux/arm64", ("linux/arm64",)))
        self.assertFalse(_wanted("linux/arm/v7", ("linux/arm64",)))


class StatsTests(SynchronousTestCase):
    """
    C{regproxy cache stats} prints what the index counted.
    """

    def test_format(self) -> None:
        stats = CacheStats(
            sizeBytes=3 * 1024**3,
            entries=12,
            hits=6,
            misses=2,
            coalesced=1,
            stale=1,
            bytesFromCache=5 * 1024**3,
            bytesFromUpstream=1024**3,
            evictions=4,
            perRepository={"org/app": {"hits": 6, "misses": 2}},
        )
        text = formatStats(stats)
        self.assertIn("3.0 GiB", text)
        self.assertIn("hit ratio         80.0%", text)
        self.assertIn("from the cache    5.0 GiB", text)
        self.assertIn("evictions         4", text)
        self.assertIn("org/app", text)

    def test_noCache(self) -> None:
        """
        A state dir without a cache is said so, with a failing status.
        """
        err = io.StringIO()
        code = main(["stats", "--state-dir", self.mktemp()], {}, io.StringIO(), err)
        self.assertEqual(code, 1)
        self.assertIn("no cache in", err.getvalue())
