"""
Tests for L{regproxy.server.forwarded}: the C{Forwarded} grammar, and
what a request says about its client through trusted proxies only.
"""

from __future__ import annotations

import json
from typing import cast

from hypothesis import given
from hypothesis import strategies as st
from treq.testing import RequestTraversalAgent
from twisted.internet.address import IPv4Address
from twisted.internet.testing import MemoryReactorClock
from twisted.logger import Logger
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.http_headers import Headers
from twisted.web.iweb import IRequest
from twisted.web.test.requesthelper import DummyRequest

from regproxy.app import makeSite
from regproxy.config import Config
from regproxy.proxy.relay import forwardedRequestHeaders
from regproxy.server.forwarded import (
    ForwardedParseError,
    TrustedProxies,
    nodeAddress,
    parseForwarded,
    serializeForwarded,
)
from tests.httpclient import RawClient
from tests.unit.test_forward import FakeRegistry
from tests.unit.test_metrics import observer

TOKEN_CHARS = (
    "!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
)
names = st.text(TOKEN_CHARS, min_size=1, max_size=10)
values = st.binary(max_size=30).filter(
    # A quoted-string holds visible ASCII, space and tab.
    lambda v: all(c == 9 or 32 <= c < 127 for c in v)
)
elements = st.dictionaries(names.map(str.lower), values, min_size=1, max_size=4)


class ParseTests(SynchronousTestCase):
    def test_rfcExamples(self) -> None:
        """
        The examples of RFC 7239 section 4 and 7.
        """
        self.assertEqual(parseForwarded([b'for="_gazonk"']), [{"for": b"_gazonk"}])
        self.assertEqual(
            parseForwarded([b'For="[2001:db8:cafe::17]:4711"']),
            [{"for": b"[2001:db8:cafe::17]:4711"}],
        )
        self.assertEqual(
            parseForwarded([b"for=192.0.2.60;proto=http;by=203.0.113.43"]),
            [{"for": b"192.0.2.60", "proto": b"http", "by": b"203.0.113.43"}],
        )
        self.assertEqual(
            parseForwarded([b"for=192.0.2.43, for=198.51.100.17"]),
            [{"for": b"192.0.2.43"}, {"for": b"198.51.100.17"}],
        )

    def test_severalLines(self) -> None:
        """
        Repeated header lines are one list, in order.
        """
        self.assertEqual(
            parseForwarded([b"for=a", b"for=b;host=x"]),
            [{"for": b"a"}, {"for": b"b", "host": b"x"}],
        )

    def test_quotedEscapes(self) -> None:
        self.assertEqual(parseForwarded([rb'host="a\"b\\c"']), [{"host": b'a"b\\c'}])

    def test_malformed(self) -> None:
        for value in [
            b"for",
            b"for=",
            b"for=a;",
            b"for=a,",
            b'for="unterminated',
            b"for=a b",
            b"for=a;for=b",
            b"=a",
        ]:
            self.assertRaises(ForwardedParseError, parseForwarded, [value])

    @given(st.lists(elements, min_size=1, max_size=4))
    def test_roundTrip(self, parsed: list[dict[str, bytes]]) -> None:
        """
        What we serialize parses back to the same elements.
        """
        self.assertEqual(parseForwarded([serializeForwarded(parsed)]), parsed)

    @given(st.lists(st.binary(max_size=60), max_size=3))
    def test_garbage(self, lines: list[bytes]) -> None:
        """
        Any bytes parse or raise L{ForwardedParseError}, nothing else.
        """
        try:
            parsed = parseForwarded(lines)
        except ForwardedParseError:
            return
        for element in parsed:
            self.assertTrue(element)

    def test_nodeAddress(self) -> None:
        self.assertEqual(str(nodeAddress(b"192.0.2.1:8080")), "192.0.2.1")
        self.assertEqual(str(nodeAddress(b"[2001:db8::1]:443")), "2001:db8::1")
        self.assertEqual(str(nodeAddress(b"2001:db8::1")), "2001:db8::1")
        self.assertIsNone(nodeAddress(b"unknown"))
        self.assertIsNone(nodeAddress(b"_hidden"))


class UpstreamHeadersTests(SynchronousTestCase):
    def test_neverUpstream(self) -> None:
        """
        None of the forwarding headers go upstream, whoever sent them.
        """
        incoming = Headers(
            {
                b"Forwarded": [b"for=1.2.3.4"],
                b"X-Forwarded-For": [b"1.2.3.4"],
                b"X-Forwarded-Proto": [b"https"],
                b"X-Forwarded-Host": [b"evil.example"],
                b"X-Real-IP": [b"1.2.3.4"],
                b"Accept": [b"a", b"b"],
            }
        )
        outgoing = forwardedRequestHeaders(incoming)
        self.assertEqual(
            sorted(name.lower() for name, _ in outgoing.getAllRawHeaders()),
            [b"accept"],
        )


class ViewTests(SynchronousTestCase):
    """
    What a request through the whole site says about its client: the token
    realm regproxy answers with, and its log line's client.
    """

    def site(self, trusted=("10.0.0.0/8",)):
        site = makeSite(
            Config(
                upstream="http://upstream.example",
                listen=(),
                state_dir=self.mktemp(),
                trusted_proxy=trusted,
            ),
            MemoryReactorClock(),
            agent=RequestTraversalAgent(FakeRegistry()),
        )
        self.logged: list[dict] = []
        site._log = Logger(observer=observer(self.logged))
        return site

    def realm(self, site, peer: str, headers) -> bytes:
        client = RawClient(site, peer=peer)
        client.request(b"GET", b"/v2/", headers)
        challenge = client.completeResponse().header(b"www-authenticate")
        assert challenge is not None
        return challenge.split(b'realm="')[1].split(b'"')[0]

    def test_trustedXForwarded(self) -> None:
        """
        From a trusted proxy, X-Forwarded-Proto and -Host make the public
        URL, and X-Forwarded-For the client address.
        """
        site = self.site()
        headers = [
            (b"X-Forwarded-For", b"198.51.100.7"),
            (b"X-Forwarded-Proto", b"https"),
            (b"X-Forwarded-Host", b"device.balena-devices.com"),
        ]
        self.assertEqual(
            self.realm(site, "10.1.2.3", headers),
            b"https://device.balena-devices.com/token",
        )
        self.assertEqual(self.logged[-1]["client"], "198.51.100.7")

    def test_untrustedIgnored(self) -> None:
        """
        From anyone else the same headers change nothing.
        """
        site = self.site()
        headers = [
            (b"X-Forwarded-For", b"198.51.100.7"),
            (b"X-Forwarded-Proto", b"https"),
            (b"X-Forwarded-Host", b"evil.example"),
            (b"Forwarded", b"for=198.51.100.7;proto=https;host=evil.example"),
        ]
        self.assertEqual(
            self.realm(site, "192.0.2.9", headers), b"http://proxy.example:8080/token"
        )
        self.assertEqual(self.logged[-1]["client"], "192.0.2.9")

    def test_noTrustedProxies(self) -> None:
        site = self.site(trusted=())
        self.realm(site, "10.1.2.3", [(b"X-Forwarded-For", b"198.51.100.7")])
        self.assertEqual(self.logged[-1]["client"], "10.1.2.3")

    def test_forwardedWins(self) -> None:
        """
        C{Forwarded} is preferred to X-Forwarded-*; through a chain of
        trusted proxies the client is the nearest untrusted address, and
        its element gives the scheme and host.
        """
        site = self.site()
        headers = [
            (
                b"Forwarded",
                b'for=203.0.113.5, for=198.51.100.7;proto=https;host="pub.example:8443",'
                b" for=10.9.9.9;proto=http;host=inner",
            ),
            (b"X-Forwarded-Host", b"other.example"),
        ]
        self.assertEqual(
            self.realm(site, "10.1.2.3", headers), b"https://pub.example:8443/token"
        )
        self.assertEqual(self.logged[-1]["client"], "198.51.100.7")

    def test_spoofedChain(self) -> None:
        """
        A client that prepends its own X-Forwarded-For entry does not
        become someone else: the proxy's appended entry is the client.
        """
        site = self.site()
        headers = [(b"X-Forwarded-For", b"10.0.0.1, 198.51.100.7")]
        self.realm(site, "10.1.2.3", headers)
        self.assertEqual(self.logged[-1]["client"], "198.51.100.7")

    def test_badHostIgnored(self) -> None:
        """
        A host or scheme that cannot be in a URL is not used.
        """
        site = self.site()
        headers = [
            (b"X-Forwarded-Proto", b"javascript"),
            (b"X-Forwarded-Host", b"evil.example/path"),
        ]
        self.assertEqual(
            self.realm(site, "10.1.2.3", headers), b"http://proxy.example:8080/token"
        )

    def test_ipv4MappedPeer(self) -> None:
        proxies = TrustedProxies.fromStrings(["10.0.0.0/8"])
        self.assertTrue(proxies.trusts(nodeAddress(b"::ffff:10.0.0.1")))
        self.assertFalse(proxies.trusts(nodeAddress(b"11.0.0.1")))

    def test_logIsJSONSafe(self) -> None:
        site = self.site()
        self.realm(site, "10.1.2.3", [(b"X-Forwarded-For", b"\xff\xfe")])
        json.dumps(self.logged[-1]["client"])


addresses = st.ip_addresses(v=4).map(str)


class ViewPropertyTests(SynchronousTestCase):
    @given(
        peer=addresses,
        chain=st.lists(st.tuples(addresses, st.booleans()), max_size=5),
        trustPeer=st.booleans(),
    )
    def test_clientIsPeerOrInChain(
        self, peer: str, chain: list[tuple[str, bool]], trustPeer: bool
    ) -> None:
        """
        The client is our peer, or, when the peer is trusted, the nearest
        X-Forwarded-For entry that is not a trusted proxy (the oldest when
        all are); never anything else.
        """
        request = DummyRequest([b""])
        request.client = IPv4Address("TCP", peer, 1234)
        entries = [address for address, _ in chain]
        if entries:
            request.requestHeaders.setRawHeaders(
                b"x-forwarded-for", [", ".join(entries).encode()]
            )
        trusted = [address for address, trust in chain if trust]
        if trustPeer:
            trusted.append(peer)
        proxies = TrustedProxies.fromStrings(trusted)
        view = proxies.view(cast(IRequest, request))
        if peer not in trusted or not entries:
            self.assertEqual(view.address, peer)
            return
        untrusted = [a for a in entries if a not in trusted]
        expected = untrusted[-1] if untrusted else entries[0]
        self.assertEqual(view.address, expected)
