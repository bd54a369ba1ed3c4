# -*- test-case-name: tests.unit.test_cachedresponse -*-
"""
Tests for L{regproxy.proxy.cachedresponse} and the request parsing of
L{regproxy.proxy.caching}: byte ranges, which upstream URLs the cache
answers, and whose request it is.
"""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.client import readBody
from twisted.web.http_headers import Headers
from twisted.web.test.requesthelper import DummyRequest

from regproxy.auth.credentials import BasicCredentials
from regproxy.proxy.cacheasks import CacheTarget, clientCredentials, unreachable
from regproxy.proxy.cachedresponse import BytesResponse, parseRange
from regproxy.proxy.upstreamauth import UpstreamAccess, UpstreamAuthAgent
from regproxy.server.errors import RegistryError

DIGEST = "sha256:" + "ab" * 32


def rangeHeaders(value: bytes) -> Headers:
    return Headers({b"range": [value]})


class ParseRangeTests(SynchronousTestCase):
    """
    L{parseRange} reads one C{Range: bytes=...} against an entry's size.
    """

    def test_none(self) -> None:
        """
        No header: the whole entry.
        """
        self.assertIsNone(parseRange(Headers(), 100))

    def test_forms(self) -> None:
        """
        C{first-last}, C{first-} and C{-suffix}, clipped to the size.
        """
        self.assertEqual(parseRange(rangeHeaders(b"bytes=0-9"), 100), (0, 9))
        self.assertEqual(parseRange(rangeHeaders(b"bytes=90-"), 100), (90, 99))
        self.assertEqual(parseRange(rangeHeaders(b"bytes=-10"), 100), (90, 99))
        self.assertEqual(parseRange(rangeHeaders(b"bytes=50-500"), 100), (50, 99))

    def test_unusable(self) -> None:
        """
        Several ranges, other units, a start past the end or a reversed
        range are answered with the whole entry.
        """
        for value in (b"bytes=0-1,5-6", b"items=0-1", b"bytes=100-", b"bytes=9-3"):
            self.assertIsNone(parseRange(rangeHeaders(value), 100), value)

    @given(st.binary(max_size=40), st.integers(min_value=0, max_value=10**12))
    def test_garbage(self, value: bytes, size: int) -> None:
        """
        Any header value gives the whole entry or a range inside it.
        """
        answer = parseRange(rangeHeaders(value), size)
        if answer is not None:
            first, last = answer
            self.assertTrue(0 <= first <= last < size)


class CacheTargetTests(SynchronousTestCase):
    """
    L{CacheTarget.fromURL} finds the upstream, repository, kind and
    reference of the requests the cache answers.
    """

    def test_blob(self) -> None:
        target = CacheTarget.fromURL(
            b"http://127.0.0.1:5000/v2/org/app/blobs/" + DIGEST.encode()
        )
        self.assertEqual(
            target, CacheTarget("http://127.0.0.1:5000", "org/app", "blobs", DIGEST)
        )
        assert target is not None
        self.assertTrue(target.byDigest)

    def test_tag(self) -> None:
        target = CacheTarget.fromURL(b"https://r.example/v2/a/b/c/manifests/v1")
        self.assertEqual(
            target, CacheTarget("https://r.example", "a/b/c", "manifests", "v1")
        )
        assert target is not None
        self.assertFalse(target.byDigest)

    def test_others(self) -> None:
        """
        Uploads, tag lists, a query string and the ping are not for the
        cache.
        """
        for url in (
            b"http://r/v2/a/blobs/uploads/",
            b"http://r/v2/a/tags/list",
            b"http://r/v2/a/manifests/v1?x=1",
            b"http://r/v2/",
            b"not a url",
        ):
            self.assertIsNone(CacheTarget.fromURL(url), url)

    @given(st.binary(max_size=200))
    def test_garbage(self, url: bytes) -> None:
        """
        Never a crash.
        """
        CacheTarget.fromURL(url)


class ClientCredentialsTests(SynchronousTestCase):
    """
    L{clientCredentials} says whose request it is.
    """

    def test_brokered(self) -> None:
        """
        In broker mode the relay's agent says whose request it is; the
        C{Authorization} header (an upstream token that changes) does not.
        """
        request = DummyRequest([b""])
        request.requestHeaders.setRawHeaders(b"authorization", [b"Bearer abc"])
        alice = UpstreamAccess(BasicCredentials("alice", "pw"), "org/app", ("pull",))
        agent = UpstreamAuthAgent(None, None, alice)  # type: ignore[arg-type]
        self.assertEqual(
            clientCredentials(
                request,  # type: ignore[arg-type]
                agent,
            ),
            ("alice", "pw"),
        )
        anonymous = UpstreamAuthAgent(
            None,  # type: ignore[arg-type]
            None,  # type: ignore[arg-type]
            UpstreamAccess(None, "org/app", ("pull",)),
        )
        self.assertEqual(
            clientCredentials(
                request,  # type: ignore[arg-type]
                anonymous,
            ),
            (None, None),
        )

    def test_passthrough(self) -> None:
        """
        Without it, Basic credentials or the whole header.
        """
        request = DummyRequest([b""])
        self.assertEqual(
            clientCredentials(
                request,  # type: ignore[arg-type]
                None,
            ),
            (None, None),
        )
        request.requestHeaders.setRawHeaders(
            b"authorization", [BasicCredentials("bob", "x").header()]
        )
        self.assertEqual(
            clientCredentials(
                request,  # type: ignore[arg-type]
                None,
            ),
            ("bob", "x"),
        )
        request.requestHeaders.setRawHeaders(b"authorization", [b"Bearer t0k"])
        self.assertEqual(
            clientCredentials(
                request,  # type: ignore[arg-type]
                None,
            ),
            (None, "Bearer t0k"),
        )


class BytesResponseTests(SynchronousTestCase):
    """
    A manifest held whole reads like an upstream response.
    """

    def test_readBody(self) -> None:
        response = BytesResponse.manifest(b'{"a": 1}', "application/x", DIGEST)
        self.assertEqual(self.successResultOf(readBody(response)), b'{"a": 1}')
        self.assertEqual(response.length, 8)
        self.assertEqual(response.mediaType, "application/x")
        self.assertEqual(
            response.headers.getRawHeaders(b"docker-content-digest"), [DIGEST.encode()]
        )


class UnreachableTests(SynchronousTestCase):
    """
    L{unreachable} tells an upstream that cannot be asked from one that
    answered.
    """

    def test_kinds(self) -> None:
        from twisted.internet.error import ConnectionRefusedError

        self.assertTrue(unreachable(ConnectionRefusedError()))
        self.assertTrue(unreachable(RegistryError(502, "UNAVAILABLE", "down")))
        self.assertTrue(unreachable(RegistryError(504, "UNAVAILABLE", "slow")))
        self.assertFalse(unreachable(RegistryError(401, "UNAUTHORIZED", "no")))
        self.assertFalse(unreachable(ValueError("bug")))
