"""
Tests for L{regproxy.server.urls}: where the upstream is, where clients reach us,
and upload C{Location}s rewritten from the one to the other.
"""

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet.address import IPv4Address, IPv6Address
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.server import Request
from twisted.web.test.requesthelper import DummyChannel

from regproxy.server.urls import Origin, publicBase, rewriteLocation
from regproxy.testing.strategies import (
    hostInURL,
    hosts,
    locationPaths,
    locationQueries,
    ports,
)

_examples = settings(max_examples=200, deadline=None)

PUBLIC = b"http://proxy.local:8080"


def makeRequest(
    host: bytes | None = None,
    secure: bool = False,
    address: IPv4Address | IPv6Address | None = None,
) -> Request:
    """
    A request as the server sees it: a C{Host} header (or none), over TLS
    or not, received on C{address}.
    """
    channel = DummyChannel()
    channel.transport = DummyChannel.SSL() if secure else DummyChannel.TCP()
    if address is not None:
        channel.transport.getHost = lambda: address  # type: ignore[method-assign]
    request = Request(channel)
    if host is not None:
        request.requestHeaders.setRawHeaders(b"host", [host])
    return request


class OriginTests(SynchronousTestCase):
    """
    L{Origin.fromURL} reads the upstream URL the user configured.
    """

    def test_httpsDefaultPort(self) -> None:
        """
        An https URL without a port is on port 443.
        """
        self.assertEqual(
            Origin.fromURL("https://registry2.balena-cloud.com"),
            Origin(b"https", b"registry2.balena-cloud.com", 443),
        )

    def test_httpDefaultPort(self) -> None:
        """
        An http URL without a port is on port 80.
        """
        self.assertEqual(
            Origin.fromURL("http://registry.local"),
            Origin(b"http", b"registry.local", 80),
        )

    def test_explicitPort(self) -> None:
        """
        An explicit port is kept, and appears in the authority and base.
        """
        origin = Origin.fromURL("http://127.0.0.1:5000")
        self.assertEqual(origin, Origin(b"http", b"127.0.0.1", 5000))
        self.assertEqual(origin.authority, b"127.0.0.1:5000")
        self.assertEqual(origin.base, b"http://127.0.0.1:5000")

    def test_explicitDefaultPort(self) -> None:
        """
        A port equal to the scheme's default is left out of the authority.
        """
        origin = Origin.fromURL("https://registry.example:443")
        self.assertEqual(origin.port, 443)
        self.assertEqual(origin.base, b"https://registry.example")

    def test_ipv6(self) -> None:
        """
        An IPv6 literal is stored without brackets and written with them.
        """
        origin = Origin.fromURL("http://[::1]:5000")
        self.assertEqual(origin, Origin(b"http", b"::1", 5000))
        self.assertEqual(origin.base, b"http://[::1]:5000")
        self.assertEqual(
            Origin.fromURL("https://[2001:db8::1]").base, b"https://[2001:db8::1]"
        )

    def test_prefix(self) -> None:
        """
        A path on the upstream URL is a prefix, kept without its trailing
        slash.
        """
        origin = Origin.fromURL("https://registry.example/mirror/")
        self.assertEqual(origin.prefix, b"/mirror")
        self.assertEqual(origin.base, b"https://registry.example/mirror")
        self.assertEqual(
            Origin.fromURL("https://registry.example:8443/a/b").prefix, b"/a/b"
        )

    def test_rootIsNoPrefix(self) -> None:
        """
        A URL ending in C{/} has no prefix.
        """
        self.assertEqual(Origin.fromURL("https://registry.example/").prefix, b"")

    def test_internationalHost(self) -> None:
        """
        An internationalised host name is held as the ASCII form that goes
        on the wire.
        """
        self.assertEqual(
            Origin.fromURL("http://b\u00fccher.example").host, b"xn--bcher-kva.example"
        )

    @_examples
    @given(st.sampled_from(["http", "https"]), hosts, st.one_of(st.none(), ports))
    def test_baseRoundTrip(self, scheme: str, host: str, port: int | None) -> None:
        """
        The base of any origin read from a URL reads back as the same origin.
        """
        url = f"{scheme}://{hostInURL(host)}" + ("" if port is None else f":{port}")
        origin = Origin.fromURL(url)
        self.assertEqual(Origin.fromURL(origin.base.decode("ascii")), origin)


class RewriteLocationTests(SynchronousTestCase):
    """
    L{rewriteLocation} points upstream upload URLs at us and leaves the rest.
    """

    upstream = Origin.fromURL("https://registry.example")

    def test_sameOrigin(self) -> None:
        """
        An absolute upstream URL becomes ours, its path and query byte for
        byte: percent-encoded bytes, C{=} and C{&} included.
        """
        location = (
            b"https://registry.example/v2/org/app/blobs/uploads/"
            b"0d1c6e3e-4b5a?_state=eyJOYW1lIjoib3JnL2FwcCJ9%3D%3D&"
            b"digest=sha256%3Aabc&x=%2F%2f%7E"
        )
        self.assertEqual(
            rewriteLocation(location, self.upstream, PUBLIC),
            PUBLIC + b"/v2/org/app/blobs/uploads/0d1c6e3e-4b5a?_state="
            b"eyJOYW1lIjoib3JnL2FwcCJ9%3D%3D&digest=sha256%3Aabc&x=%2F%2f%7E",
        )

    def test_otherOrigin(self) -> None:
        """
        A URL on another host (a blob redirect to object storage) is left
        alone.
        """
        location = (
            b"https://s3.eu-west-1.amazonaws.com/bucket/docker/registry/v2/"
            b"blobs/sha256/ab/abcd/data?X-Amz-Signature=1%2B2&X-Amz-Expires=1200"
        )
        self.assertEqual(rewriteLocation(location, self.upstream, PUBLIC), location)

    def test_otherPortOrScheme(self) -> None:
        """
        The same host on another port or scheme is another origin.
        """
        for location in [
            b"https://registry.example:5000/v2/a/blobs/uploads/1",
            b"http://registry.example/v2/a/blobs/uploads/1",
        ]:
            self.assertEqual(rewriteLocation(location, self.upstream, PUBLIC), location)

    def test_hostInPath(self) -> None:
        """
        Another origin whose path mentions the upstream is still another
        origin.
        """
        location = b"https://evil.example/https://registry.example/v2/"
        self.assertEqual(rewriteLocation(location, self.upstream, PUBLIC), location)

    def test_relativePath(self) -> None:
        """
        An absolute path (distribution sends these) keeps its path and
        query byte for byte under our base.
        """
        self.assertEqual(
            rewriteLocation(
                b"/v2/a/blobs/uploads/1?_state=a%2Bb%3D&x=1", self.upstream, PUBLIC
            ),
            PUBLIC + b"/v2/a/blobs/uploads/1?_state=a%2Bb%3D&x=1",
        )

    def test_otherRelativeForms(self) -> None:
        """
        A scheme-relative or path-relative reference is left as it is.
        """
        for location in [b"//other.example/v2/", b"uploads/1"]:
            self.assertEqual(rewriteLocation(location, self.upstream, PUBLIC), location)

    def test_prefixStripped(self) -> None:
        """
        An upstream with a path prefix has that prefix taken off, whether
        the location is absolute or a path.
        """
        upstream = Origin.fromURL("https://registry.example/mirror")
        self.assertEqual(
            rewriteLocation(
                b"https://registry.example/mirror/v2/a/blobs/uploads/1?x=%41",
                upstream,
                PUBLIC,
            ),
            PUBLIC + b"/v2/a/blobs/uploads/1?x=%41",
        )
        self.assertEqual(
            rewriteLocation(b"/mirror/v2/a/blobs/uploads/1", upstream, PUBLIC),
            PUBLIC + b"/v2/a/blobs/uploads/1",
        )

    def test_hostCaseInsensitive(self) -> None:
        """
        Host names and schemes match whatever their case.
        """
        upstream = Origin.fromURL("https://Registry.Example")
        self.assertEqual(
            rewriteLocation(b"HTTPS://REGISTRY.example/v2/x", upstream, PUBLIC),
            PUBLIC + b"/v2/x",
        )

    def test_defaultPortEquivalent(self) -> None:
        """
        C{host} and C{host:443} are the same https origin, both ways round.
        """
        self.assertEqual(
            rewriteLocation(
                b"https://registry.example:443/v2/x", self.upstream, PUBLIC
            ),
            PUBLIC + b"/v2/x",
        )
        explicit = Origin.fromURL("https://registry.example:443")
        self.assertEqual(
            rewriteLocation(b"https://registry.example/v2/x", explicit, PUBLIC),
            PUBLIC + b"/v2/x",
        )
        http = Origin.fromURL("http://registry.local")
        self.assertEqual(
            rewriteLocation(b"http://registry.local:80/v2/x", http, PUBLIC),
            PUBLIC + b"/v2/x",
        )

    def test_ipv6Upstream(self) -> None:
        """
        An IPv6 upstream matches its bracketed authority.
        """
        upstream = Origin.fromURL("http://[::1]:5000")
        self.assertEqual(
            rewriteLocation(b"http://[::1]:5000/v2/x?y", upstream, PUBLIC),
            PUBLIC + b"/v2/x?y",
        )
        self.assertEqual(
            rewriteLocation(b"http://[::2]:5000/v2/x", upstream, PUBLIC),
            b"http://[::2]:5000/v2/x",
        )

    def test_userinfo(self) -> None:
        """
        Userinfo in the location does not hide the upstream's host, nor does
        it pass as another host.
        """
        self.assertEqual(
            rewriteLocation(
                b"https://u:p@registry.example/v2/x", self.upstream, PUBLIC
            ),
            PUBLIC + b"/v2/x",
        )
        self.assertEqual(
            rewriteLocation(
                b"https://registry.example@evil.example/v2/x", self.upstream, PUBLIC
            ),
            b"https://registry.example@evil.example/v2/x",
        )

    @_examples
    @given(
        st.sampled_from(
            [
                "https://registry.example",
                "https://registry.example:443",
                "http://127.0.0.1:5000",
                "http://[::1]:5000",
            ]
        ),
        locationPaths,
        locationQueries,
    )
    def test_pathAndQueryKept(self, url: str, path: bytes, query: bytes) -> None:
        """
        For any path and query bytes, a same-origin location keeps them byte
        for byte, written absolute or as a path.
        """
        upstream = Origin.fromURL(url)
        self.assertEqual(
            rewriteLocation(upstream.base + path + query, upstream, PUBLIC),
            PUBLIC + path + query,
        )
        if not path.startswith(b"//"):
            self.assertEqual(
                rewriteLocation(path + query, upstream, PUBLIC), PUBLIC + path + query
            )

    @_examples
    @given(locationPaths, locationQueries)
    def test_prefixedPathAndQueryKept(self, path: bytes, query: bytes) -> None:
        """
        Under an upstream prefix, what follows the prefix is kept byte for
        byte.
        """
        upstream = Origin.fromURL("https://registry.example/mirror")
        self.assertEqual(
            rewriteLocation(upstream.base + path + query, upstream, PUBLIC),
            PUBLIC + path + query,
        )

    @_examples
    @given(locationPaths, locationQueries)
    def test_otherOriginUntouched(self, path: bytes, query: bytes) -> None:
        """
        Any location on another origin comes back unchanged.
        """
        location = b"https://storage.example" + path + query
        self.assertEqual(
            rewriteLocation(
                location, Origin.fromURL("https://registry.example"), PUBLIC
            ),
            location,
        )


class PublicBaseTests(SynchronousTestCase):
    """
    L{publicBase} says how clients reach us.
    """

    def test_configuredWins(self) -> None:
        """
        C{--public-url} wins over the request.
        """
        request = makeRequest(b"other.example", secure=False)
        self.assertEqual(
            publicBase(request, "https://proxy.example:5000"),
            b"https://proxy.example:5000",
        )

    def test_hostHeader(self) -> None:
        """
        Without C{--public-url}, the C{Host} header gives the authority.
        """
        self.assertEqual(
            publicBase(makeRequest(b"proxy.local:8080"), None),
            b"http://proxy.local:8080",
        )
        self.assertEqual(
            publicBase(makeRequest(b"[fd00::2]:8080"), None), b"http://[fd00::2]:8080"
        )

    def test_secure(self) -> None:
        """
        A request over TLS gives an https base.
        """
        self.assertEqual(
            publicBase(makeRequest(b"proxy.local:5000", secure=True), None),
            b"https://proxy.local:5000",
        )

    def test_hostileHost(self) -> None:
        """
        A C{Host} header that would change the URL's path or authority
        (C{/}, C{@}) falls back to the address the request came in on.
        """
        address = IPv4Address("TCP", "192.168.1.10", 8080)
        for host in [
            b"evil.example/x",
            b"user@evil.example",
            b"evil.example\\x",
            b"evil.example?x",
            b"evil.example#x",
            b"evil example",
        ]:
            self.assertEqual(
                publicBase(makeRequest(host, address=address), None),
                b"http://192.168.1.10:8080",
            )

    def test_noHost(self) -> None:
        """
        A request without a C{Host} (HTTP/1.0) uses the socket's address,
        IPv6 in brackets.
        """
        self.assertEqual(
            publicBase(makeRequest(address=IPv4Address("TCP", "10.0.0.1", 80)), None),
            b"http://10.0.0.1:80",
        )
        self.assertEqual(
            publicBase(
                makeRequest(secure=True, address=IPv6Address("TCP", "::1", 5000)), None
            ),
            b"https://[::1]:5000",
        )

    @_examples
    @given(st.binary(min_size=1, max_size=40), st.booleans())
    def test_anyHost(self, host: bytes, secure: bool) -> None:
        """
        Whatever the C{Host} header holds, the base is a scheme and an
        authority with no path, userinfo, query or fragment.
        """
        base = publicBase(
            makeRequest(host, secure, IPv4Address("TCP", "10.0.0.1", 80)), None
        )
        scheme, separator, authority = base.partition(b"://")
        self.assertEqual(separator, b"://")
        self.assertEqual(scheme, b"https" if secure else b"http")
        for forbidden in [b"/", b"@", b"?", b"#", b"\\", b" "]:
            self.assertNotIn(forbidden, authority)
