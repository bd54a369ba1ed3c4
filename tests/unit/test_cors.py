# -*- test-case-name: tests.unit.test_cors -*-
"""
Tests for L{regproxy.server.cors}: what a browser registry UI sees of regproxy,
through the whole site (raw HTTP bytes in, in-memory upstream behind).
"""

from __future__ import annotations

import json
from urllib.parse import urlencode

from hypothesis import given, settings
from hypothesis import strategies as st
from treq.testing import RequestTraversalAgent
from twisted.internet.testing import MemoryReactorClock
from twisted.trial.unittest import SynchronousTestCase

from regproxy.app import makeSite
from regproxy.config import Config
from regproxy.server.cors import CORSPolicy
from regproxy.testing.fakeregistry import OPEN, UPSTREAM, FakeRegistry, manifestFor
from tests.httpclient import RawClient, RawResponse

UI = b"https://ui.example"
OTHER = b"https://evil.example"
EXPOSED = {b"docker-content-digest", b"www-authenticate", b"link"}


def exposed(response: RawResponse) -> set[bytes]:
    return {
        name.strip().lower()
        for value in response.all(b"access-control-expose-headers")
        for name in value.split(b",")
    }


def corsHeaders(response: RawResponse) -> list[tuple[bytes, bytes]]:
    return [
        (name, value)
        for name, value in response.headers
        if name.lower().startswith(b"access-control-")
    ]


class CORSTestCase(SynchronousTestCase):
    origins: tuple[str, ...] = (UI.decode(),)

    def setUp(self) -> None:
        self.registry = FakeRegistry(OPEN)
        self.registry.addImage("lib/app")
        self.agent = RequestTraversalAgent(self.registry)
        self.site = makeSite(
            Config(
                upstream=UPSTREAM,
                listen=(),
                state_dir=self.mktemp(),
                cors_origin=self.origins,
            ),
            MemoryReactorClock(),
            agent=self.agent,
        )

    def exchange(self, method: bytes, path: bytes, headers=()) -> RawResponse:
        client = RawClient(self.site)
        client.request(method, path, list(headers))
        response = client.responseAfter(self.agent.flush, head=method == b"HEAD")
        assert response is not None, client.transport.value()
        return response

    def preflight(self, origin: bytes, path: bytes = b"/v2/lib/app/manifests/v1"):
        return self.exchange(
            b"OPTIONS",
            path,
            [
                (b"Origin", origin),
                (b"Access-Control-Request-Method", b"GET"),
                (b"Access-Control-Request-Headers", b"authorization, accept"),
            ],
        )

    def bearer(self, origin: bytes | None = None) -> tuple[bytes, RawResponse]:
        query = urlencode({"service": "regproxy", "scope": "repository:lib/app:pull"})
        headers = [(b"Origin", origin)] if origin else []
        response = self.exchange(b"GET", b"/token?" + query.encode(), headers)
        self.assertEqual(response.status, 200, response.body)
        return b"Bearer " + json.loads(response.body)["token"].encode(), response

    def manifest(self, origin: bytes) -> RawResponse:
        authorization, _ = self.bearer()
        response = self.exchange(
            b"GET",
            b"/v2/lib/app/manifests/v1",
            [(b"Origin", origin), (b"Authorization", authorization)],
        )
        self.assertEqual(response.status, 200, response.body)
        self.assertEqual(response.body, manifestFor("lib/app"))
        return response


class AllowedOriginTests(CORSTestCase):
    """
    With C{cors_origin} set, that origin may use the registry API from a
    browser.
    """

    def setUp(self) -> None:
        super().setUp()
        self.registry.addImage("lib/app", "v1")

    def test_preflight(self) -> None:
        """
        A preflight from the allowed origin is answered at once with 204,
        that origin alone, the methods and the headers a registry UI sends;
        the upstream is not asked.
        """
        response = self.preflight(UI)
        self.assertEqual(response.status, 204)
        self.assertEqual(response.all(b"access-control-allow-origin"), [UI])
        methods = response.header(b"access-control-allow-methods")
        for method in [b"GET", b"HEAD", b"DELETE"]:
            self.assertIn(method, methods)
        allowed = response.header(b"access-control-allow-headers").lower()
        self.assertIn(b"authorization", allowed)
        self.assertIn(b"accept", allowed)
        self.assertIn(b"Origin", response.header(b"vary"))
        self.assertEqual(self.registry.received, [])

    def test_exposedOnResponses(self) -> None:
        """
        A normal response to the allowed origin names it and exposes
        C{Docker-Content-Digest}, C{WWW-Authenticate} and C{Link}.
        """
        response = self.manifest(UI)
        self.assertEqual(response.all(b"access-control-allow-origin"), [UI])
        self.assertLessEqual(EXPOSED, exposed(response))
        self.assertIsNotNone(response.header(b"docker-content-digest"))

    def test_challengeReadable(self) -> None:
        """
        The 401 challenge is readable from the allowed origin, so a UI can
        find our token endpoint.
        """
        response = self.exchange(b"GET", b"/v2/", [(b"Origin", UI)])
        self.assertEqual(response.status, 401)
        self.assertEqual(response.all(b"access-control-allow-origin"), [UI])
        self.assertIn(b"www-authenticate", exposed(response))
        self.assertIsNotNone(response.header(b"www-authenticate"))

    def test_tokenEndpoint(self) -> None:
        """
        Our token endpoint answers the allowed origin too.
        """
        _, response = self.bearer(UI)
        self.assertEqual(response.all(b"access-control-allow-origin"), [UI])

    def test_otherOriginPreflight(self) -> None:
        """
        A preflight from another origin gets no CORS headers at all.
        """
        response = self.preflight(OTHER)
        self.assertNotEqual(response.status, 204)
        self.assertEqual(corsHeaders(response), [])

    def test_otherOriginResponse(self) -> None:
        """
        A normal response to another origin carries no CORS headers (the
        browser then hides it from the page).
        """
        self.assertEqual(corsHeaders(self.manifest(OTHER)), [])

    def test_noOrigin(self) -> None:
        """
        Clients that are not browsers send no C{Origin} and see no CORS
        headers.
        """
        authorization, response = self.bearer()
        self.assertEqual(corsHeaders(response), [])


class NoOriginsTests(CORSTestCase):
    """
    By default no origin is allowed.
    """

    origins = ()

    def test_preflight(self) -> None:
        """
        A preflight is not answered as one, and carries no CORS headers.
        """
        response = self.preflight(UI)
        self.assertNotEqual(response.status, 204)
        self.assertEqual(corsHeaders(response), [])

    def test_response(self) -> None:
        """
        Normal responses carry no CORS headers.
        """
        self.registry.addImage("lib/app", "v1")
        self.assertEqual(corsHeaders(self.manifest(UI)), [])


class AnyOriginTests(CORSTestCase):
    """
    C{*} allows every origin, without the browser's credentials (browsers
    refuse credentials with a wildcard, and a page from anywhere must not
    get them).
    """

    origins = ("*",)

    def test_preflight(self) -> None:
        response = self.preflight(OTHER)
        self.assertEqual(response.status, 204)
        self.assertEqual(response.all(b"access-control-allow-origin"), [b"*"])
        self.assertEqual(response.all(b"access-control-allow-credentials"), [])


class PolicyTests(SynchronousTestCase):
    """
    L{CORSPolicy.allows} on any origin a client may send.
    """

    @settings(max_examples=200, deadline=None)
    @given(
        origins=st.lists(st.text(min_size=1, max_size=30), max_size=4),
        origin=st.binary(max_size=60),
    )
    def test_allowsExactlyTheListed(self, origins: list[str], origin: bytes) -> None:
        """
        An origin is allowed when it is listed (compared as latin-1 text,
        as HTTP headers are), or when C{*} is; never a crash.
        """
        policy = CORSPolicy(tuple(origins))
        expected = "*" in origins or origin.decode("latin-1") in origins
        self.assertEqual(policy.allows(origin), expected)
