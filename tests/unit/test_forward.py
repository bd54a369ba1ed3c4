"""
Tests for L{regproxy.proxy.relay} through the whole site: a real regproxy
L{Site} fed raw HTTP bytes, relaying to an in-memory upstream registry
reached through a real Twisted HTTP client (L{RequestTraversalAgent}).
"""

from __future__ import annotations

import hashlib
import json

from treq.testing import RequestTraversalAgent
from twisted.internet.testing import MemoryReactorClock
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.resource import Resource
from twisted.web.server import Request

from regproxy.app import makeSite
from regproxy.config import Config
from regproxy.proxy.fetch import HeaderRewriter
from regproxy.server.urls import Origin
from tests.httpclient import RawClient

UPSTREAM = "http://upstream.example:5000"
MANIFEST = json.dumps(
    {"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json"}
).encode()
MANIFEST_DIGEST = b"sha256:" + hashlib.sha256(MANIFEST).hexdigest().encode()
BLOB = bytes(range(256)) * 64
BLOB_DIGEST = b"sha256:" + hashlib.sha256(BLOB).hexdigest().encode()


class FakeRegistry(Resource):
    """
    Just enough of a registry to relay: it records what it was sent.
    """

    isLeaf = True

    def __init__(self, challenge: bytes | None = None) -> None:
        super().__init__()
        self.received: list[tuple[bytes, bytes, dict[bytes, list[bytes]], bytes]] = []
        self.challenge = challenge

    def render(self, request: Request) -> bytes:
        headers = {
            name.lower(): list(values)
            for name, values in request.requestHeaders.getAllRawHeaders()
        }
        self.received.append(
            (request.method, request.uri, headers, request.content.read())
        )
        path = request.path
        request.setHeader(b"Docker-Distribution-Api-Version", b"registry/2.0")
        if path == b"/v2/":
            if self.challenge is not None and not request.getHeader(b"authorization"):
                request.setResponseCode(401)
                request.setHeader(b"WWW-Authenticate", self.challenge)
                return b'{"errors":[{"code":"UNAUTHORIZED","message":"authentication required"}]}'
            return b"{}"
        if path == b"/v2/lib/app/manifests/v1":
            request.setHeader(
                b"Content-Type", b"application/vnd.oci.image.manifest.v1+json"
            )
            request.setHeader(b"Docker-Content-Digest", MANIFEST_DIGEST)
            request.responseHeaders.addRawHeader(b"X-Repeated", b"one")
            request.responseHeaders.addRawHeader(b"X-Repeated", b"two")
            if request.method == b"HEAD":
                request.setHeader(b"Content-Length", b"%d" % len(MANIFEST))
                return b""
            return MANIFEST
        if path == b"/v2/lib/app/blobs/" + BLOB_DIGEST:
            ranged = request.getHeader(b"range")
            if ranged:
                start, end = (int(n) for n in ranged.split(b"=")[1].split(b"-"))
                request.setResponseCode(206)
                request.setHeader(
                    b"Content-Range", b"bytes %d-%d/%d" % (start, end, len(BLOB))
                )
                return BLOB[start : end + 1]
            return BLOB
        if path == b"/v2/lib/app/blobs/uploads/":
            request.setResponseCode(202)
            request.setHeader(
                b"Location",
                UPSTREAM.encode()
                + b"/v2/lib/app/blobs/uploads/u-1?_state=a%2Fb%3D%3D&x=1",
            )
            request.setHeader(b"Docker-Upload-UUID", b"u-1")
            return b""
        if path == b"/v2/lib/redirected/blobs/" + BLOB_DIGEST:
            request.setResponseCode(307)
            request.setHeader(
                b"Location", b"https://storage.example/bucket/blob?sig=x%2By"
            )
            return b""
        request.setResponseCode(404)
        request.setHeader(b"Content-Type", b"application/json")
        return b'{"errors":[{"code":"MANIFEST_UNKNOWN","message":"manifest unknown"}]}'


class RelayTests(SynchronousTestCase):
    """
    What a client sees of the upstream through regproxy.
    """

    def setUp(self) -> None:
        self.registry = FakeRegistry()
        self.agent = RequestTraversalAgent(self.registry)
        self.reactor = MemoryReactorClock()
        self.site = makeSite(
            Config(upstream=UPSTREAM, listen=(), auth="passthrough"),
            self.reactor,
            agent=self.agent,
        )

    def exchange(self, method, path, headers=(), body=None):
        client = RawClient(self.site)
        client.request(method, path, list(headers), body)
        # Each flush moves one exchange; /token may need two upstream ones.
        for _ in range(3):
            self.agent.flush()
        response = client.response(head=method == b"HEAD")
        self.assertIsNotNone(response, client.transport.value())
        return response

    def test_getManifest(self) -> None:
        """
        A manifest comes back byte for byte with its type, digest and the
        registry API version header.
        """
        response = self.exchange(b"GET", b"/v2/lib/app/manifests/v1")
        self.assertEqual(response.status, 200)
        self.assertEqual(response.body, MANIFEST)
        self.assertEqual(response.header(b"docker-content-digest"), MANIFEST_DIGEST)
        self.assertEqual(
            response.header(b"content-type"),
            b"application/vnd.oci.image.manifest.v1+json",
        )
        self.assertEqual(
            response.all(b"docker-distribution-api-version"), [b"registry/2.0"]
        )
        self.assertEqual(response.header(b"content-length"), b"%d" % len(MANIFEST))

    def test_headKeepsLengthAndDigest(self) -> None:
        """
        HEAD on a manifest keeps the upstream's Content-Length and digest,
        which clients use to decide whether to pull.
        """
        response = self.exchange(b"HEAD", b"/v2/lib/app/manifests/v1")
        self.assertEqual(response.status, 200)
        self.assertEqual(response.header(b"content-length"), b"%d" % len(MANIFEST))
        self.assertEqual(response.header(b"docker-content-digest"), MANIFEST_DIGEST)

    def test_repeatedHeadersBothWays(self) -> None:
        """
        Every Accept line reaches the upstream, and repeated response
        headers reach the client, each as sent.
        """
        accepts = [
            (b"Accept", b"application/vnd.oci.image.manifest.v1+json"),
            (b"Accept", b"application/vnd.docker.distribution.manifest.v2+json"),
            (b"Accept", b"application/vnd.oci.image.index.v1+json"),
        ]
        response = self.exchange(b"GET", b"/v2/lib/app/manifests/v1", accepts)
        _, _, headers, _ = self.registry.received[-1]
        self.assertEqual(headers[b"accept"], [value for _, value in accepts])
        self.assertEqual(response.all(b"x-repeated"), [b"one", b"two"])

    def test_pathAndQueryByteExact(self) -> None:
        """
        The path and query reach the upstream exactly as the client sent
        them, percent-encodings and all.
        """
        path = b"/v2/lib/app/tags/list?n=10&last=a%2Fb%3D&x=%7e"
        self.exchange(b"GET", path)
        _, uri, _, _ = self.registry.received[-1]
        self.assertEqual(uri, path)

    def test_hopByHopDropped(self) -> None:
        """
        Connection-scoped headers, and those the Connection header names,
        stay on our side; end-to-end ones go through.
        """
        self.exchange(
            b"GET",
            b"/v2/lib/app/manifests/v1",
            [
                (b"Connection", b"keep-alive, X-Hop"),
                (b"X-Hop", b"secret-to-this-hop"),
                (b"Proxy-Authorization", b"Basic eDp5"),
                (b"Authorization", b"Basic dXNlcjpwYXNz"),
                (b"If-None-Match", b'"abc"'),
            ],
        )
        _, _, headers, _ = self.registry.received[-1]
        self.assertNotIn(b"x-hop", headers)
        self.assertNotIn(b"proxy-authorization", headers)
        self.assertEqual(headers[b"authorization"], [b"Basic dXNlcjpwYXNz"])
        self.assertEqual(headers[b"if-none-match"], [b'"abc"'])
        self.assertEqual(headers[b"host"], [b"upstream.example:5000"])

    def test_range(self) -> None:
        """
        A Range request gets the upstream's 206, Content-Range and bytes.
        """
        response = self.exchange(
            b"GET", b"/v2/lib/app/blobs/" + BLOB_DIGEST, [(b"Range", b"bytes=10-19")]
        )
        self.assertEqual(response.status, 206)
        self.assertEqual(response.body, BLOB[10:20])
        self.assertEqual(
            response.header(b"content-range"), b"bytes 10-19/%d" % len(BLOB)
        )

    def test_uploadLocationRewritten(self) -> None:
        """
        An absolute upload Location on the upstream points at us instead,
        with the query (the registry's signed state) kept byte for byte.
        """
        response = self.exchange(b"POST", b"/v2/lib/app/blobs/uploads/", body=b"")
        self.assertEqual(response.status, 202)
        self.assertEqual(
            response.header(b"location"),
            b"http://proxy.example:8080/v2/lib/app/blobs/uploads/u-1?_state=a%2Fb%3D%3D&x=1",
        )
        self.assertEqual(response.header(b"docker-upload-uuid"), b"u-1")

    def test_publicURLConfigured(self) -> None:
        """
        With --public-url, rewritten URLs use it whatever the Host header.
        """
        self.site = makeSite(
            Config(
                upstream=UPSTREAM,
                public_url="https://regproxy.lan:5000",
                listen=(),
                auth="passthrough",
            ),
            self.reactor,
            agent=self.agent,
        )
        response = self.exchange(b"POST", b"/v2/lib/app/blobs/uploads/", body=b"")
        self.assertTrue(
            response.header(b"location").startswith(
                b"https://regproxy.lan:5000/v2/lib/app/blobs/uploads/u-1?"
            )
        )

    def test_redirectPassedThrough(self) -> None:
        """
        A blob redirect to object storage reaches the client untouched; we
        do not follow it, so no credentials go to another origin.
        """
        response = self.exchange(
            b"GET",
            b"/v2/lib/redirected/blobs/" + BLOB_DIGEST,
            [(b"Authorization", b"Basic dXNlcjpwYXNz")],
        )
        self.assertEqual(response.status, 307)
        self.assertEqual(
            response.header(b"location"),
            b"https://storage.example/bucket/blob?sig=x%2By",
        )
        self.assertEqual(len(self.registry.received), 1)

    def test_upstreamErrorRelayed(self) -> None:
        """
        The upstream's own errors reach the client as they are.
        """
        response = self.exchange(b"GET", b"/v2/lib/app/manifests/missing")
        self.assertEqual(response.status, 404)
        self.assertEqual(
            json.loads(response.body)["errors"][0]["code"], "MANIFEST_UNKNOWN"
        )

    def test_bearerChallengeRealmRewritten(self) -> None:
        """
        The upstream's Bearer challenge points clients at our /token, with
        its other parameters kept.
        """
        self.registry.challenge = b'Bearer realm="https://auth.upstream.example/token",service="upstream.example"'
        response = self.exchange(b"GET", b"/v2/")
        self.assertEqual(response.status, 401)
        self.assertEqual(
            response.header(b"www-authenticate"),
            b'Bearer realm="http://proxy.example:8080/token",service="upstream.example"',
        )

    def test_tokenForwardedToUpstreamRealm(self) -> None:
        """
        Our /token forwards to the realm the upstream named, with the query
        string byte for byte and the client's Authorization.
        """
        self.registry.challenge = (
            b'Bearer realm="http://upstream.example:5000/auth/token",service="svc"'
        )
        self.exchange(b"GET", b"/v2/")
        query = (
            b"?scope=repository%3Alib%2Fapp%3Apull&scope=repository:x:pull&service=svc"
        )
        self.exchange(
            b"GET", b"/token" + query, [(b"Authorization", b"Basic dXNlcjpwYXNz")]
        )
        method, uri, headers, _ = self.registry.received[-1]
        self.assertEqual((method, uri), (b"GET", b"/auth/token" + query))
        self.assertEqual(headers[b"authorization"], [b"Basic dXNlcjpwYXNz"])

    def test_tokenDiscoversRealm(self) -> None:
        """
        A client that goes to /token first (it remembers the challenge from
        an earlier run) is still forwarded: we ask the upstream's /v2/.
        """
        self.registry.challenge = (
            b'Bearer realm="http://upstream.example:5000/auth/token",service="svc"'
        )
        response = self.exchange(
            b"POST", b"/token", body=b"grant_type=password&username=u"
        )
        paths = [uri for _, uri, _, _ in self.registry.received]
        self.assertEqual(paths, [b"/v2/", b"/auth/token"])
        self.assertEqual(
            self.registry.received[-1][3], b"grant_type=password&username=u"
        )
        self.assertEqual(response.status, 404)  # the fake has no token service


class LocalAnswersTests(SynchronousTestCase):
    """
    What regproxy answers itself, without the upstream.
    """

    def setUp(self) -> None:
        self.registry = FakeRegistry()
        self.agent = RequestTraversalAgent(self.registry)
        self.site = makeSite(
            Config(upstream=UPSTREAM, listen=(), auth="passthrough"),
            MemoryReactorClock(),
            agent=self.agent,
        )

    def test_health(self) -> None:
        """
        /_health answers 200 without asking the upstream.
        """
        client = RawClient(self.site)
        client.request(b"GET", b"/_health")
        response = client.response()
        self.assertEqual(response.status, 200)
        self.assertEqual(self.registry.received, [])

    def test_unknownPath(self) -> None:
        """
        Paths outside /v2 get a registry-format 404.
        """
        for path in (b"/", b"/v1/_ping", b"/nothing/here"):
            client = RawClient(self.site)
            client.request(b"GET", path)
            response = client.response()
            self.assertEqual(response.status, 404, path)
            self.assertEqual(
                json.loads(response.body)["errors"][0]["code"], "NOT_FOUND"
            )

    def test_tlsOnPlainPort(self) -> None:
        """
        A TLS ClientHello on the plain listener is refused at once, so an
        insecure-registry client falls back to HTTP without waiting.
        """
        client = RawClient(self.site)
        client.send(b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + b"\x00" * 40)
        response = client.response()
        self.assertEqual(response.status, 400)
        self.assertEqual(json.loads(response.body)["errors"][0]["code"], "BAD_REQUEST")
        self.assertTrue(client.transport.disconnecting)

    def test_hugeHeaders(self) -> None:
        """
        Headers beyond the server's limit get a registry-format 400 and the
        connection is closed; the next connection is served.
        """
        client = RawClient(self.site)
        client.send(
            b"GET /v2/ HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 70000 + b"\r\n\r\n"
        )
        response = client.response()
        self.assertEqual(response.status, 431)
        self.assertEqual(json.loads(response.body)["errors"][0]["code"], "BAD_REQUEST")
        self.assertTrue(client.transport.disconnecting)
        self.test_health()

    def test_tooManyHeaders(self) -> None:
        """
        Many small headers past the total limit get a registry-format 400.
        """
        client = RawClient(self.site)
        lines = b"".join(b"X-H%d: %s\r\n" % (i, b"v" * 100) for i in range(300))
        client.send(b"GET /v2/ HTTP/1.1\r\nHost: x\r\n" + lines + b"\r\n")
        response = client.response()
        self.assertEqual(response.status, 400)
        self.assertTrue(client.transport.disconnecting)


class HeaderRewriterTests(SynchronousTestCase):
    """
    L{HeaderRewriter}, the one header rewriter both modes use.
    """

    upstream = Origin.fromURL("https://registry.example:5000")

    def assertRewrites(self, rewrite: HeaderRewriter, cases) -> None:
        for name, value, expected in cases:
            self.assertEqual(rewrite(name, [value]), [expected], (name, value))

    def test_location(self) -> None:
        """
        An absolute upstream C{Location} points at our public URL, query
        kept byte for byte; another origin's (object storage) is kept.
        """
        rewrite = HeaderRewriter(self.upstream, b"http://proxy.example")
        self.assertRewrites(
            rewrite,
            [
                (
                    b"location",
                    b"https://registry.example:5000/v2/a/b?x=%2F",
                    b"http://proxy.example/v2/a/b?x=%2F",
                ),
                (
                    b"location",
                    b"https://s3.example/blob?sig=1",
                    b"https://s3.example/blob?sig=1",
                ),
            ],
        )

    def test_prefixes(self) -> None:
        """
        The real repository's path becomes the client's name in
        C{Location} (made absolute, as every relayed C{Location} is) and
        C{Link}, and nowhere else.
        """
        rewrite = HeaderRewriter(
            self.upstream, b"http://proxy.example", (b"/v2/v2/abc/", b"/v2/org/fleet/")
        )
        self.assertRewrites(
            rewrite,
            [
                (
                    b"link",
                    b'</v2/v2/abc/tags/list?n=1>; rel="next"',
                    b'</v2/org/fleet/tags/list?n=1>; rel="next"',
                ),
                (
                    b"location",
                    b"/v2/v2/abc/blobs/uploads/u",
                    b"http://proxy.example/v2/org/fleet/blobs/uploads/u",
                ),
                (b"etag", b"/v2/v2/abc/", b"/v2/v2/abc/"),
            ],
        )

    def test_challenges(self) -> None:
        """
        C{WWW-Authenticate} is dropped unless a function for it is given.
        """
        dropped = HeaderRewriter(self.upstream, b"http://p")
        self.assertEqual(dropped(b"www-authenticate", [b"Bearer realm=x"]), [])
        kept = HeaderRewriter(self.upstream, b"http://p", challenges=lambda v: v[::-1])
        self.assertEqual(kept(b"www-authenticate", [b"a", b"b"]), [b"b", b"a"])
