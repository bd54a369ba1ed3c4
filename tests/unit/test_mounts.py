"""
Tests for L{regproxy.proxy.mounts}: reading a mount out of an upload's
query string, and dropping or re-pointing it with the rest kept byte for
byte.
"""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from regproxy.proxy.mounts import Mount, parseMount, withoutMount, withSource

DIGEST = "sha256:" + "a" * 64


class MountTests(SynchronousTestCase):
    def test_parse(self) -> None:
        """
        C{mount} and C{from} name the digest and the source repository,
        percent-encoding undone.
        """
        self.assertEqual(
            parseMount(f"mount={DIGEST.replace(':', '%3A')}&from=lib%2Fapp".encode()),
            Mount(DIGEST, "lib/app"),
        )

    def test_incomplete(self) -> None:
        """
        A mount without a source, a source without a mount, a bad digest or
        a bad repository name: no mount.
        """
        for query in (
            f"mount={DIGEST}",
            "from=lib/app",
            "mount=sha256:xyz&from=lib/app",
            f"mount={DIGEST}&from=Lib/App",
            f"mount={DIGEST}&from=%ff",
            "",
        ):
            self.assertIsNone(parseMount(query.encode()), query)

    def test_withoutMount(self) -> None:
        """
        Dropping a mount keeps every other parameter, in order, byte for
        byte.
        """
        self.assertEqual(
            withoutMount(f"digest=x%2By&mount={DIGEST}&from=a%2Fb&z".encode()),
            b"digest=x%2By&z",
        )

    def test_withSource(self) -> None:
        """
        The source can be re-pointed at the real repository.
        """
        self.assertEqual(
            withSource(f"mount={DIGEST}&from=org%2Ffleet".encode(), "v2/abc"),
            f"mount={DIGEST}&from=v2/abc".encode(),
        )

    @given(st.binary(max_size=200))
    def test_neverCrashes(self, query: bytes) -> None:
        """
        Any query string parses to a mount or to none, and dropping the
        mount leaves a query that asks for none.
        """
        found = parseMount(query)
        self.assertTrue(found is None or isinstance(found, Mount))
        self.assertIsNone(parseMount(withoutMount(query)))
