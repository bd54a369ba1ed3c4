"""
Tests for L{regproxy.proxy.brokered} through the whole site: a real regproxy
L{Site} in broker mode fed raw HTTP bytes, relaying to an in-memory
upstream registry (open, Basic or Bearer, L{regproxy.testing.fakeregistry}) and
resolving fleet names through the fake balena API, all in memory.

Each test asserts what a client sees, and what reached the upstream on
the client's behalf.
"""

from __future__ import annotations

import base64
import json
from typing import cast
from urllib.parse import parse_qs, quote, urlencode

from hypothesis import given, settings
from hypothesis import strategies as st
from treq.testing import RequestTraversalAgent, StubTreq
from twisted.internet.testing import MemoryReactorClock
from twisted.logger import ILogObserver, Logger, formatEvent, globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase

from regproxy import app
from regproxy.app import makeSite
from regproxy.auth.tokenresource import MAX_SCOPES
from regproxy.config import Config
from regproxy.proxy.caching import STALE_WARNING
from regproxy.resolve.cache import DEFAULT_MISS_TTL
from regproxy.resolve.digests import manifestDigests
from regproxy.resolve.remembered import MemoryResolutionMemory
from regproxy.server.request import MAX_BODY
from regproxy.testing.fakebalena import (
    ALICE_KEY,
    BOB_KEY,
    DRAFT_VERSION,
    FakeBalenaAPI,
    defaultFixture,
)
from regproxy.testing.fakeregistry import (
    BASIC,
    BEARER,
    OPEN,
    UPSTREAM,
    FakeRegistry,
    digestOf,
    layerFor,
    manifestFor,
)
from tests.httpclient import RawClient, RawResponse

PUBLIC = b"http://proxy.example:8080"
CHALLENGE = b'Bearer realm="http://proxy.example:8080/token",service="regproxy"'
REPO = "lib/app"
USERS = {"alice": "alice-secret", "bob": "bob-secret"}
GRANTS: dict[str | None, dict[str, tuple[str, ...]]] = {
    "alice": {"*": ("pull", "push")},
    "bob": {REPO: ("pull",)},
    None: {"public/app": ("pull",)},
}
API = "http://api.example"
SERVER_KEY = "server-api-token-1234"


def basic(username: str, password: str) -> bytes:
    return b"Basic " + base64.b64encode(f"{username}:{password}".encode())


def jwtPart(token: str, index: int) -> dict:
    segment = token.split(".")[index]
    return json.loads(base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4)))


def errorCodes(response: RawResponse) -> list[str]:
    return [e["code"] for e in json.loads(response.body)["errors"]]


class BrokerTestCase(SynchronousTestCase):
    """
    A regproxy in broker mode in front of a L{FakeRegistry}.
    """

    mode = BASIC

    def setUp(self) -> None:
        self.reactor = MemoryReactorClock()
        self.registry = FakeRegistry(
            self.mode, users=USERS, grants=GRANTS, clock=self.reactor
        )
        self.registry.addImage(REPO)
        self.registry.addImage("public/app")
        self.registry.addImage("lib/other")
        self.api: StubTreq | None = None
        self.stateDir = self.mktemp()
        self.site = self.makeSite()

    def makeSite(self, stateDir: str | None = None, **config):
        self.agent = RequestTraversalAgent(self.registry)
        return makeSite(
            Config(
                upstream=UPSTREAM,
                listen=(),
                state_dir=stateDir or self.stateDir,
                **config,
            ),
            self.reactor,
            agent=self.agent,
            apiClient=self.api,
        )

    def exchange(self, method, path, headers=(), body=None, site=None) -> RawResponse:
        client = RawClient(site or self.site)
        client.request(method, path, list(headers), body)

        def flush() -> None:
            self.agent.flush()
            if self.api is not None:
                self.api.flush()

        response = client.responseAfter(flush, head=method == b"HEAD")
        assert response is not None, client.transport.value()
        return response

    def get(self, path: bytes, authorization: bytes | None = None, **kw) -> RawResponse:
        headers = [(b"Authorization", authorization)] if authorization else []
        return self.exchange(b"GET", path, headers, **kw)

    def tokenResponse(
        self, scopes=(), credentials: bytes | None = None, site=None, **params
    ) -> RawResponse:
        query = [("service", "regproxy")] + [("scope", s) for s in scopes]
        query += list(params.items())
        return self.get(b"/token?" + urlencode(query).encode(), credentials, site=site)

    def token(self, scopes=(), credentials: bytes | None = None, site=None) -> str:
        response = self.tokenResponse(scopes, credentials, site=site)
        self.assertEqual(response.status, 200, response.body)
        return json.loads(response.body)["token"]

    def bearer(self, scopes=(), credentials: bytes | None = None, site=None) -> bytes:
        return b"Bearer " + self.token(scopes, credentials, site).encode()

    def post(self, form: dict) -> RawResponse:
        return self.exchange(
            b"POST",
            b"/token",
            [(b"Content-Type", b"application/x-www-form-urlencoded")],
            urlencode(form).encode(),
        )

    def assertChallenge(
        self, response: RawResponse, scope: str | None = None, error: str | None = None
    ) -> None:
        """
        A 401 with our exact challenge, the API version header and a
        registry JSON body.
        """
        self.assertEqual(response.status, 401, response.body)
        expected = CHALLENGE
        if scope is not None:
            expected += b',scope="' + scope.encode() + b'"'
        if error is not None:
            expected += b',error="' + error.encode() + b'"'
        self.assertEqual(response.all(b"www-authenticate"), [expected])
        self.assertEqual(
            response.all(b"docker-distribution-api-version"), [b"registry/2.0"]
        )
        self.assertEqual(errorCodes(response), ["UNAUTHORIZED"])

    def upstreamAuthorizations(self) -> list[bytes | None]:
        return [r.header(b"authorization") for r in self.registry.received]


class ChallengeTests(BrokerTestCase):
    """
    C{/v2/} without one of our tokens gets our own challenge.
    """

    def test_ping(self) -> None:
        """
        C{/v2/} without a token: 401, a quoted absolute realm on our own
        host, our service name, and a registry JSON body.
        """
        response = self.get(b"/v2/")
        self.assertChallenge(response)
        contentType = response.header(b"content-type")
        assert contentType is not None
        self.assertTrue(contentType.startswith(b"application/json"))

    def test_sameForEveryClient(self) -> None:
        """
        No User-Agent sniffing: docker, podman, skopeo, containerd and curl
        all get the same challenge.
        """
        agents = [
            b"docker/24.0.7 go/go1.20.10 git-commit/311b9ff os/linux arch/amd64",
            b"containers/5.24.1 (github.com/containers/image)",
            b"skopeo/1.9.3",
            b"containerd/v1.7.2",
            b"curl/8.5.0",
        ]
        for agent in agents:
            response = self.exchange(b"GET", b"/v2/", [(b"User-Agent", agent)])
            self.assertChallenge(response)

    def test_repositoryChallengeHasScope(self) -> None:
        """
        A repository request without a token says which scope to ask for.
        """
        response = self.get(b"/v2/lib/app/manifests/latest")
        self.assertChallenge(response, "repository:lib/app:pull")
        self.assertEqual(self.registry.received, [])

    def test_publicURL(self) -> None:
        """
        C{--public-url} is the realm, whatever the Host header says.
        """
        self.site = self.makeSite(public_url="https://proxy.local:5000")
        response = self.get(b"/v2/")
        self.assertEqual(
            response.all(b"www-authenticate"),
            [b'Bearer realm="https://proxy.local:5000/token",service="regproxy"'],
        )

    def test_serviceName(self) -> None:
        """
        C{--service-name} is the service in the challenge.
        """
        self.site = self.makeSite(service_name="my-proxy")
        response = self.get(b"/v2/")
        self.assertEqual(
            response.all(b"www-authenticate"),
            [b'Bearer realm="http://proxy.example:8080/token",service="my-proxy"'],
        )

    def test_pingWithToken(self) -> None:
        """
        C{/v2/} with our token (even an anonymous one) is a 200 with C{{}}.
        """
        response = self.get(b"/v2/", self.bearer())
        self.assertEqual(response.status, 200)
        self.assertEqual(json.loads(response.body), {})
        self.assertEqual(
            response.all(b"docker-distribution-api-version"), [b"registry/2.0"]
        )


class TokenGetTests(BrokerTestCase):
    """
    C{GET /token}: the Docker token flow.
    """

    def test_anonymous(self) -> None:
        """
        No Authorization: an anonymous token, in the shape every client
        reads (C{token} and C{access_token}, integer C{expires_in},
        C{issued_at} in UTC ending in C{Z}), not to be cached by proxies.
        """
        response = self.tokenResponse(["repository:public/app:pull"])
        self.assertEqual(response.status, 200)
        body = json.loads(response.body)
        self.assertEqual(body["token"], body["access_token"])
        self.assertIsInstance(body["expires_in"], int)
        self.assertGreater(body["expires_in"], 0)
        self.assertEqual(body["issued_at"], "1970-01-01T00:00:00Z")
        self.assertNotIn("refresh_token", body)
        self.assertEqual(response.header(b"cache-control"), b"no-store")
        self.assertEqual(jwtPart(body["token"], 1)["sub"], "")

    def test_jwtHeader(self) -> None:
        """
        Our tokens are ES256 JWTs naming their key with a libtrust C{kid}
        and a certificate chain in C{x5c}.
        """
        header = jwtPart(self.token(), 0)
        self.assertEqual(header["alg"], "ES256")
        self.assertRegex(header["kid"], r"^([A-Z2-7]{4}:){11}[A-Z2-7]{4}$")
        self.assertIsInstance(header["x5c"], list)
        self.assertGreaterEqual(len(header["x5c"]), 1)
        base64.b64decode(header["x5c"][0], validate=True)

    def test_claims(self) -> None:
        """
        The token is for our service, and an account's token names it.
        """
        claims = jwtPart(self.token([], basic("alice", "alice-secret")), 1)
        self.assertEqual(claims["aud"], "regproxy")
        self.assertEqual(claims["sub"], "alice")

    def test_scopes(self) -> None:
        """
        Repeated C{scope} parameters and space-separated scopes are all
        granted.
        """
        token = self.token(
            ["repository:lib/app:pull", "repository:lib/a:pull repository:lib/b:push"]
        )
        access = {
            entry["name"]: entry["actions"] for entry in jwtPart(token, 1)["access"]
        }
        self.assertEqual(
            access, {"lib/app": ["pull"], "lib/a": ["pull"], "lib/b": ["push"]}
        )

    def test_scopesUsable(self) -> None:
        """
        Each scope granted in one token works on its repository.
        """
        token = self.bearer(
            ["repository:lib/app:pull repository:lib/other:pull"],
            basic("alice", "alice-secret"),
        )
        self.assertEqual(self.get(b"/v2/lib/app/manifests/latest", token).status, 200)
        self.assertEqual(self.get(b"/v2/lib/other/manifests/latest", token).status, 200)

    def test_otherParameters(self) -> None:
        """
        C{account} and C{client_id} (sent by docker and podman) are
        accepted.
        """
        response = self.tokenResponse(
            ["repository:lib/app:pull"],
            basic("alice", "alice-secret"),
            account="alice",
            client_id="docker",
        )
        self.assertEqual(response.status, 200, response.body)

    def test_offlineToken(self) -> None:
        """
        C{offline_token=true} with a login gives a C{refresh_token} too.
        """
        response = self.tokenResponse(
            [], basic("alice", "alice-secret"), offline_token="true"
        )
        body = json.loads(response.body)
        self.assertIsInstance(body["refresh_token"], str)
        self.assertNotIn("alice-secret", body["refresh_token"])

    def test_offlineTokenAnonymous(self) -> None:
        """
        Without a login there is nothing to refresh.
        """
        response = self.tokenResponse([], offline_token="true")
        self.assertEqual(response.status, 200)
        self.assertNotIn("refresh_token", json.loads(response.body))

    def test_wrongCredentials(self) -> None:
        """
        Credentials the upstream refuses get a 401 in registry JSON, and
        the body does not echo them.
        """
        response = self.tokenResponse(
            ["repository:lib/app:pull"], basic("alice", "wrong-password")
        )
        self.assertEqual(response.status, 401)
        self.assertEqual(errorCodes(response), ["UNAUTHORIZED"])
        self.assertNotIn(b"wrong-password", response.body)

    def test_login(self) -> None:
        """
        No scope with good credentials is a C{docker login}: it succeeds,
        and the upstream was asked whether the login is good.
        """
        response = self.tokenResponse([], basic("alice", "alice-secret"))
        self.assertEqual(response.status, 200, response.body)
        self.assertIn("token", json.loads(response.body))
        self.assertIn(
            basic("alice", "alice-secret"),
            self.upstreamAuthorizations()
            + [r.header(b"authorization") for r in self.registry.tokenRequests],
        )

    def test_malformedBasic(self) -> None:
        """
        An Authorization header that is not well-formed Basic credentials
        (no colon, bad base64, empty, another scheme) is a failed login: a
        401 in registry JSON, never an anonymous token that would make
        C{docker login} report success.
        """
        for header in (
            b"Basic " + base64.b64encode(b"alice"),
            b"Basic !!not-base64!!",
            b"Basic ",
            b"Basic",
            b"Bearer abc",
        ):
            response = self.tokenResponse([], header)
            self.assertEqual(response.status, 401, header)
            self.assertEqual(errorCodes(response), ["UNAUTHORIZED"])
            self.assertNotIn("token", json.loads(response.body))

    def test_emptyAuthorization(self) -> None:
        """
        An empty Authorization header is refused too; only a request with
        no Authorization header at all is an anonymous login.
        """
        response = self.exchange(
            b"GET", b"/token?service=regproxy", [(b"Authorization", b"")]
        )
        self.assertEqual(response.status, 401, response.body)
        self.assertEqual(errorCodes(response), ["UNAUTHORIZED"])
        self.assertEqual(self.tokenResponse([]).status, 200)

    def test_malformedScopeIgnored(self) -> None:
        """
        A malformed scope is dropped, not an error.
        """
        token = self.token(["nonsense", "repository:lib/app:pull"])
        self.assertEqual([e["name"] for e in jwtPart(token, 1)["access"]], ["lib/app"])


class BearerLoginTests(BrokerTestCase):
    """
    Logins against a Bearer upstream are checked with its token service.
    """

    mode = BEARER

    def test_login(self) -> None:
        """
        A C{docker login} with good credentials succeeds.
        """
        response = self.tokenResponse([], basic("alice", "alice-secret"))
        self.assertEqual(response.status, 200, response.body)
        self.assertEqual(
            self.registry.tokenRequests[-1].header(b"authorization"),
            basic("alice", "alice-secret"),
        )

    def test_wrongCredentials(self) -> None:
        """
        Credentials the upstream's token service refuses get a 401 in
        registry JSON.
        """
        response = self.tokenResponse([], basic("alice", "nope"))
        self.assertEqual(response.status, 401)
        self.assertEqual(errorCodes(response), ["UNAUTHORIZED"])


class TokenPostTests(BrokerTestCase):
    """
    C{POST /token}: the OAuth2 form, as containerd and buildkit use it.
    """

    def passwordGrant(self, **extra) -> RawResponse:
        form = {
            "grant_type": "password",
            "username": "alice",
            "password": "alice-secret",
            "scope": "repository:lib/app:pull",
            "service": "regproxy",
            "client_id": "containerd",
        }
        form.update(extra)
        return self.post(form)

    def test_password(self) -> None:
        """
        The password grant gives a token for the scope asked, which pulls.
        """
        response = self.passwordGrant()
        self.assertEqual(response.status, 200, response.body)
        body = json.loads(response.body)
        self.assertNotIn("refresh_token", body)
        self.assertEqual(
            jwtPart(body["access_token"], 1)["access"][0]["name"], "lib/app"
        )
        pulled = self.get(
            b"/v2/lib/app/manifests/latest", b"Bearer " + body["access_token"].encode()
        )
        self.assertEqual(pulled.status, 200)
        self.assertEqual(
            self.upstreamAuthorizations()[-1], basic("alice", "alice-secret")
        )

    def test_wrongPassword(self) -> None:
        """
        A password the upstream refuses is a 401.
        """
        response = self.passwordGrant(password="nope")
        self.assertEqual(response.status, 401)
        self.assertEqual(errorCodes(response), ["UNAUTHORIZED"])

    def test_offline(self) -> None:
        """
        C{access_type=offline} adds a refresh token, which the refresh grant
        turns into a new working token with the client's credentials.
        """
        first = json.loads(self.passwordGrant(access_type="offline").body)
        refresh = first["refresh_token"]
        response = self.post(
            {
                "grant_type": "refresh_token",
                "refresh_token": refresh,
                "scope": "repository:lib/other:pull",
                "service": "regproxy",
            }
        )
        self.assertEqual(response.status, 200, response.body)
        token = json.loads(response.body)["access_token"]
        self.assertEqual(jwtPart(token, 1)["sub"], "alice")
        pulled = self.get(
            b"/v2/lib/other/manifests/latest", b"Bearer " + token.encode()
        )
        self.assertEqual(pulled.status, 200)
        self.assertEqual(
            self.upstreamAuthorizations()[-1], basic("alice", "alice-secret")
        )

    def test_refreshTampered(self) -> None:
        """
        A refresh token changed by one character is refused with a 401.
        """
        refresh = json.loads(self.passwordGrant(access_type="offline").body)[
            "refresh_token"
        ]
        middle = len(refresh) // 2
        tampered = (
            refresh[:middle]
            + ("A" if refresh[middle] != "A" else "B")
            + refresh[middle + 1 :]
        )
        for bad in (tampered, "", "garbage", refresh + "x"):
            response = self.post({"grant_type": "refresh_token", "refresh_token": bad})
            self.assertEqual(response.status, 401, bad)
            self.assertEqual(errorCodes(response), ["UNAUTHORIZED"])

    def test_refreshForeign(self) -> None:
        """
        A refresh token from a regproxy with other keys is refused.
        """
        other = self.makeSite(stateDir=self.mktemp())
        self.site, mine = other, self.site
        refresh = json.loads(self.passwordGrant(access_type="offline").body)[
            "refresh_token"
        ]
        self.site = mine
        response = self.post({"grant_type": "refresh_token", "refresh_token": refresh})
        self.assertEqual(response.status, 401)

    def test_refreshExpired(self) -> None:
        """
        A refresh token is good for 30 days, not for ever.
        """
        refresh = json.loads(self.passwordGrant(access_type="offline").body)[
            "refresh_token"
        ]
        self.reactor.advance(31 * 24 * 3600)
        response = self.post({"grant_type": "refresh_token", "refresh_token": refresh})
        self.assertEqual(response.status, 401)

    def test_unknownGrant(self) -> None:
        """
        An unknown or missing grant type is a 400.
        """
        for form in ({"grant_type": "client_credentials"}, {}):
            response = self.post(form)
            self.assertEqual(response.status, 400, form)
            self.assertEqual(len(errorCodes(response)), 1)


class TokenLimitsTests(BrokerTestCase):
    """
    C{/token} bounds what it reads: the body and the number of scopes, so
    that nobody can make it build a huge token (or hold a huge body)
    without even logging in.
    """

    def scopes(self, count: int) -> list[str]:
        return [f"repository:lib/app{i}:pull" for i in range(count)]

    def test_tooManyScopesInQuery(self) -> None:
        """
        More than 64 scopes in the query, counted across values and within
        space-separated values, get a 400 in registry JSON; 64 are fine.
        """
        response = self.tokenResponse(self.scopes(MAX_SCOPES))
        self.assertEqual(response.status, 200, response.body)
        for scopes in (
            self.scopes(MAX_SCOPES + 1),
            [" ".join(self.scopes(MAX_SCOPES + 1))],
        ):
            response = self.tokenResponse(scopes)
            self.assertEqual(response.status, 400, response.body)
            self.assertEqual(errorCodes(response), ["BAD_REQUEST"])

    def test_tooManyScopesInForm(self) -> None:
        """
        The same holds for the POST form.
        """
        response = self.post(
            {
                "grant_type": "password",
                "username": "alice",
                "password": "alice-secret",
                "scope": " ".join(self.scopes(MAX_SCOPES + 1)),
            }
        )
        self.assertEqual(response.status, 400, response.body)
        self.assertEqual(errorCodes(response), ["BAD_REQUEST"])

    def test_bodyTooLarge(self) -> None:
        """
        A POST announcing a body over the cap is answered with 413 as soon
        as its headers are in, before the body is read, and the connection
        is closed rather than drained.
        """
        client = RawClient(self.site)
        client.send(
            b"POST /token HTTP/1.1\r\nHost: proxy.example:8080\r\n"
            b"Content-Type: application/x-www-form-urlencoded\r\n"
            b"Content-Length: %d\r\n\r\n" % (8 * 1024 * 1024,)
        )
        client.send(b"scope=repository:a:pull&" * 100)
        response = client.response()
        self.assertIsNotNone(response)
        assert response is not None
        self.assertEqual(response.status, 413, response.body)
        self.assertEqual(errorCodes(response), ["SIZE_INVALID"])
        self.assertTrue(client.transport.disconnecting)

    def test_bodyTooLargeExpectingContinue(self) -> None:
        """
        A client that waits for C{100 Continue} before sending its body
        (curl does) gets the 413 alone, never an invitation to send.
        """
        client = RawClient(self.site)
        client.send(
            b"POST /token HTTP/1.1\r\nHost: proxy.example:8080\r\n"
            b"Expect: 100-continue\r\n"
            b"Content-Length: %d\r\n\r\n" % (MAX_BODY + 1,)
        )
        self.assertTrue(client.transport.value().startswith(b"HTTP/1.1 413 "))
        self.assertNotIn(b"100 Continue", client.transport.value())
        self.assertTrue(client.transport.disconnecting)

    def test_chunkedBodyTooLarge(self) -> None:
        """
        A chunked body gets its 413 once it passes the cap, not before.
        """
        client = RawClient(self.site)
        client.send(
            b"POST /token HTTP/1.1\r\nHost: proxy.example:8080\r\n"
            b"Content-Type: application/x-www-form-urlencoded\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n"
        )
        chunk = b"scope=repository:a:pull&" * 600
        sent = 0
        while sent + len(chunk) <= MAX_BODY:
            client.send(b"%x\r\n%s\r\n" % (len(chunk), chunk))
            sent += len(chunk)
        self.assertIsNone(client.response())
        client.send(b"%x\r\n%s\r\n" % (len(chunk), chunk))
        response = client.response()
        self.assertIsNotNone(response)
        assert response is not None
        self.assertEqual(response.status, 413, response.body)
        self.assertTrue(client.transport.disconnecting)

    def test_bodyAtCap(self) -> None:
        """
        A body of exactly the cap is read and answered as usual.
        """
        form = urlencode(
            {"grant_type": "password", "username": "alice", "password": "nope"}
        ).encode()
        body = form + b"&pad=" + b"x" * (MAX_BODY - len(form) - 5)
        self.assertEqual(len(body), MAX_BODY)
        response = self.exchange(
            b"POST",
            b"/token",
            [(b"Content-Type", b"application/x-www-form-urlencoded")],
            body,
        )
        self.assertEqual(response.status, 401, response.body)


class ForwardingTests(BrokerTestCase):
    """
    Requests with our token go upstream with the upstream's own credential
    for the client, never with our token.
    """

    def assertNeverOurToken(self, token: bytes) -> None:
        raw = token.partition(b" ")[2]
        for received in self.registry.received + self.registry.tokenRequests:
            for values in received.headers.values():
                for value in values:
                    self.assertNotIn(raw, value)
            self.assertNotIn(raw, received.uri)

    def test_basicUpstream(self) -> None:
        """
        A Basic upstream gets the client's own Basic credentials.
        """
        token = self.bearer(["repository:lib/app:pull"], basic("bob", "bob-secret"))
        response = self.get(b"/v2/lib/app/manifests/latest", token)
        self.assertEqual(response.status, 200, response.body)
        self.assertEqual(response.body, manifestFor(REPO))
        self.assertEqual(
            self.registry.received[-1].uri, b"/v2/lib/app/manifests/latest"
        )
        self.assertEqual(self.upstreamAuthorizations()[-1], basic("bob", "bob-secret"))
        self.assertEqual(
            response.all(b"docker-distribution-api-version"), [b"registry/2.0"]
        )
        self.assertNeverOurToken(token)

    def test_basicStraightToV2(self) -> None:
        """
        Basic credentials sent straight to C{/v2} (no token dance) work too.
        """
        response = self.get(b"/v2/lib/app/manifests/latest", basic("bob", "bob-secret"))
        self.assertEqual(response.status, 200, response.body)
        self.assertEqual(self.upstreamAuthorizations()[-1], basic("bob", "bob-secret"))
        ping = self.get(b"/v2/", basic("bob", "bob-secret"))
        self.assertEqual(ping.status, 200)

    def test_wrongBasicStraightToV2(self) -> None:
        """
        Wrong Basic credentials straight to C{/v2} get our challenge.
        """
        response = self.get(b"/v2/lib/app/manifests/latest", basic("bob", "nope"))
        self.assertEqual(response.status, 401)
        challenge = response.header(b"www-authenticate")
        assert challenge is not None
        self.assertEqual(challenge.split(b",")[:2], CHALLENGE.split(b","))
        self.assertNotIn(b"nope", response.body)

    def test_otherRepository(self) -> None:
        """
        A token for another repository: 401 C{insufficient_scope} with the
        scope needed in the challenge, and nothing sent upstream.
        """
        token = self.bearer(
            ["repository:lib/other:pull"], basic("alice", "alice-secret")
        )
        before = len(self.registry.received)
        response = self.get(b"/v2/lib/app/manifests/latest", token)
        self.assertChallenge(response, "repository:lib/app:pull", "insufficient_scope")
        self.assertEqual(len(self.registry.received), before)

    def test_pullTokenForPush(self) -> None:
        """
        A pull-only token used for a PUT: 401 C{insufficient_scope} asking
        for pull and push.
        """
        token = self.bearer(["repository:lib/app:pull"], basic("alice", "alice-secret"))
        response = self.exchange(
            b"PUT",
            b"/v2/lib/app/manifests/v2",
            [
                (b"Authorization", token),
                (b"Content-Type", b"application/vnd.oci.image.manifest.v1+json"),
            ],
            manifestFor("x"),
        )
        self.assertChallenge(
            response, "repository:lib/app:pull,push", "insufficient_scope"
        )
        self.assertNotIn(("lib/app", "v2"), self.registry.manifests)

    def test_push(self) -> None:
        """
        A push token pushes, with the client's credentials upstream.
        """
        token = self.bearer(
            ["repository:lib/app:pull,push"], basic("alice", "alice-secret")
        )
        response = self.exchange(
            b"PUT",
            b"/v2/lib/app/manifests/v2",
            [
                (b"Authorization", token),
                (b"Content-Type", b"application/vnd.oci.image.manifest.v1+json"),
            ],
            manifestFor("x"),
        )
        self.assertEqual(response.status, 201, response.body)
        self.assertEqual(self.registry.manifests[("lib/app", "v2")], manifestFor("x"))
        self.assertEqual(
            response.header(b"location"),
            PUBLIC + b"/v2/lib/app/manifests/" + digestOf(manifestFor("x")).encode(),
        )

    def test_badToken(self) -> None:
        """
        A token that is not ours, or was changed: 401 C{invalid_token}.
        """
        good = self.token(["repository:lib/app:pull"])
        tampered = good[:-3] + ("AAA" if good[-3:] != "AAA" else "BBB")
        for bad in ("garbage", "a.b.c", tampered, good + "x"):
            response = self.get(
                b"/v2/lib/app/manifests/latest", b"Bearer " + bad.encode()
            )
            self.assertChallenge(response, "repository:lib/app:pull", "invalid_token")
        response = self.get(b"/v2/", b"Bearer garbage")
        self.assertChallenge(response, None, "invalid_token")
        self.assertEqual(self.registry.received, [])

    def test_expiredToken(self) -> None:
        """
        A token past its expiry (beyond the leeway): 401 C{invalid_token}.
        """
        token = self.bearer(["repository:lib/app:pull"])
        expiresIn = json.loads(self.tokenResponse([]).body)["expires_in"]
        self.reactor.advance(expiresIn + 31)
        response = self.get(b"/v2/lib/app/manifests/latest", token)
        self.assertChallenge(response, "repository:lib/app:pull", "invalid_token")

    def test_foreignKey(self) -> None:
        """
        A token signed by another regproxy's key: 401 C{invalid_token}.
        """
        other = self.makeSite(stateDir=self.mktemp())
        token = self.bearer(["repository:lib/app:pull"], site=other)
        response = self.get(b"/v2/lib/app/manifests/latest", token)
        self.assertChallenge(response, "repository:lib/app:pull", "invalid_token")

    def test_sharedStateDir(self) -> None:
        """
        A token issued by one regproxy is served by another on the same
        state directory, credentials and all: no server-side session.
        """
        token = self.bearer(["repository:lib/app:pull"], basic("bob", "bob-secret"))
        second = self.makeSite()
        response = self.get(b"/v2/lib/app/manifests/latest", token, site=second)
        self.assertEqual(response.status, 200, response.body)
        self.assertEqual(self.upstreamAuthorizations()[-1], basic("bob", "bob-secret"))

    def test_upstreamRefusesAnonymous(self) -> None:
        """
        An anonymous client the upstream refuses is told to log in: our
        challenge with the scope, never the upstream's.
        """
        token = self.bearer(["repository:lib/app:pull"])
        response = self.get(b"/v2/lib/app/manifests/latest", token)
        self.assertChallenge(response, "repository:lib/app:pull", "insufficient_scope")

    def test_upstreamRefusesUser(self) -> None:
        """
        A logged-in client the upstream refuses gets a 403 DENIED.
        """
        token = self.bearer(["repository:lib/other:pull"], basic("bob", "bob-secret"))
        response = self.get(b"/v2/lib/other/manifests/latest", token)
        self.assertEqual(response.status, 403)
        self.assertEqual(errorCodes(response), ["DENIED"])
        self.assertEqual(response.all(b"www-authenticate"), [])

    def test_uploadLocation(self) -> None:
        """
        An upload's absolute upstream Location points at us, query kept.
        """
        token = self.bearer(
            ["repository:lib/app:pull,push"], basic("alice", "alice-secret")
        )
        response = self.exchange(
            b"POST", b"/v2/lib/app/blobs/uploads/", [(b"Authorization", token)], b""
        )
        self.assertEqual(response.status, 202, response.body)
        self.assertEqual(
            response.header(b"location"),
            PUBLIC + b"/v2/lib/app/blobs/uploads/u-1?_state=a%2Fb%3D%3D",
        )

    def test_foreignAudience(self) -> None:
        """
        A token signed with our key but for another service name (another
        regproxy sharing the state directory): 401 C{invalid_token}.
        """
        other = self.makeSite(service_name="another-proxy")
        token = self.bearer(["repository:lib/app:pull"], site=other)
        response = self.get(b"/v2/lib/app/manifests/latest", token)
        self.assertChallenge(response, "repository:lib/app:pull", "invalid_token")

    def test_unknownPath(self) -> None:
        """
        A C{/v2/} path that is no registry API path gets 404 C{NOT_FOUND} in
        registry JSON, as distribution answers 404 for it; nothing goes
        upstream.
        """
        token = self.bearer(["repository:lib/app:pull"], basic("bob", "bob-secret"))
        before = len(self.registry.received)
        for path in (b"/v2/foo/bar/baz", b"/v2/lib/app/manifests", b"/v2/nothing"):
            response = self.get(path, token)
            self.assertEqual(response.status, 404, path)
            self.assertEqual(errorCodes(response), ["NOT_FOUND"])
            self.assertEqual(
                response.all(b"docker-distribution-api-version"), [b"registry/2.0"]
            )
        self.assertEqual(len(self.registry.received), before)

    def test_tagsRelayed(self) -> None:
        """
        Without fleet names, C{tags/list} is the upstream's own list.
        """
        token = self.bearer(["repository:lib/app:pull"], basic("bob", "bob-secret"))
        response = self.get(b"/v2/lib/app/tags/list?n=5", token)
        self.assertEqual(response.status, 200, response.body)
        self.assertEqual(
            json.loads(response.body), {"name": "lib/app", "tags": ["latest"]}
        )
        self.assertEqual(self.registry.received[-1].uri, b"/v2/lib/app/tags/list?n=5")

    def test_head(self) -> None:
        """
        HEAD on a manifest keeps its length and digest.
        """
        token = self.bearer(["repository:lib/app:pull"], basic("bob", "bob-secret"))
        response = self.exchange(
            b"HEAD", b"/v2/lib/app/manifests/latest", [(b"Authorization", token)]
        )
        self.assertEqual(response.status, 200)
        self.assertEqual(
            response.header(b"content-length"), b"%d" % len(manifestFor(REPO))
        )
        self.assertEqual(
            response.header(b"docker-content-digest"),
            digestOf(manifestFor(REPO)).encode(),
        )


class OpenUpstreamTests(BrokerTestCase):
    """
    An open upstream needs no credentials.
    """

    mode = OPEN

    def test_noAuthorization(self) -> None:
        """
        Nothing is sent upstream as Authorization, even for a logged-in
        client; any login is good.
        """
        token = self.bearer(["repository:lib/app:pull"], basic("anyone", "anything"))
        response = self.get(b"/v2/lib/app/manifests/latest", token)
        self.assertEqual(response.status, 200)
        self.assertEqual(self.upstreamAuthorizations()[-1], None)
        anonymous = self.get(
            b"/v2/lib/app/manifests/latest", self.bearer(["repository:lib/app:pull"])
        )
        self.assertEqual(anonymous.status, 200)
        self.assertEqual(set(self.upstreamAuthorizations()), {None})


class BearerUpstreamTests(BrokerTestCase):
    """
    A Bearer upstream: a token from its token service, for the client.
    """

    mode = BEARER

    def test_upstreamToken(self) -> None:
        """
        The upstream gets a token from its own token service, asked with
        the client's credentials and the repository's scope; never ours.
        """
        token = self.bearer(["repository:lib/app:pull"], basic("bob", "bob-secret"))
        response = self.get(b"/v2/lib/app/manifests/latest", token)
        self.assertEqual(response.status, 200, response.body)
        request = self.registry.tokenRequests[-1]
        self.assertEqual(request.header(b"authorization"), basic("bob", "bob-secret"))
        self.assertIn(
            b"scope=" + quote("repository:lib/app:pull", safe="").encode(), request.uri
        )
        sent = self.upstreamAuthorizations()[-1]
        assert sent is not None
        self.assertTrue(sent.startswith(b"Bearer "))
        self.assertEqual(self.registry.tokens[sent[7:].decode()].user, "bob")
        self.assertNotEqual(sent, token)

    def test_cached(self) -> None:
        """
        A second request does not ask the token service again, until
        shortly before the upstream token expires.
        """
        token = self.bearer(["repository:lib/app:pull"], basic("bob", "bob-secret"))
        self.get(b"/v2/lib/app/manifests/latest", token)
        asked = len(self.registry.tokenRequests)
        self.reactor.advance(200)
        response = self.get(b"/v2/lib/app/manifests/latest", token)
        self.assertEqual(response.status, 200)
        self.assertEqual(len(self.registry.tokenRequests), asked)
        self.reactor.advance(80)
        response = self.get(b"/v2/lib/app/manifests/latest", token)
        self.assertEqual(response.status, 200, response.body)
        self.assertEqual(len(self.registry.tokenRequests), asked + 1)

    def test_anonymousUpstreamToken(self) -> None:
        """
        An anonymous client gets an anonymous upstream token for what
        anonymous may pull.
        """
        token = self.bearer(["repository:public/app:pull"])
        response = self.get(b"/v2/public/app/manifests/latest", token)
        self.assertEqual(response.status, 200, response.body)
        self.assertIsNone(self.registry.tokenRequests[-1].header(b"authorization"))

    def test_basicStraightToV2(self) -> None:
        """
        Basic credentials straight to C{/v2} work with a Bearer upstream.
        """
        response = self.get(b"/v2/lib/app/manifests/latest", basic("bob", "bob-secret"))
        self.assertEqual(response.status, 200, response.body)
        self.assertEqual(
            self.registry.tokenRequests[-1].header(b"authorization"),
            basic("bob", "bob-secret"),
        )

    def test_tokenServiceRefuses(self) -> None:
        """
        When the upstream's token service refuses the credentials sealed in
        our token (the password changed since), the client is told to log
        in again: a 401 with our challenge, so docker asks for a new token.
        """
        token = self.bearer(["repository:lib/app:pull"], basic("bob", "bob-secret"))
        self.registry.users["bob"] = "changed"
        response = self.get(b"/v2/lib/app/manifests/latest", token)
        self.assertEqual(response.status, 401, response.body)
        self.assertEqual(errorCodes(response), ["UNAUTHORIZED"])
        challenge = response.header(b"www-authenticate")
        assert challenge is not None
        self.assertEqual(challenge.split(b",")[:2], CHALLENGE.split(b","))

    def test_refusalRetriedOnce(self) -> None:
        """
        An upstream that keeps refusing is asked with a fresh token once,
        not again and again, and the client is denied.
        """
        token = self.bearer(["repository:lib/other:pull"], basic("bob", "bob-secret"))
        asked = len(self.registry.tokenRequests)
        sent = len(self.registry.received)
        response = self.get(b"/v2/lib/other/manifests/latest", token)
        self.assertEqual(response.status, 403, response.body)
        self.assertEqual(errorCodes(response), ["DENIED"])
        self.assertEqual(len(self.registry.tokenRequests) - asked, 2)
        self.assertEqual(len(self.registry.received) - sent, 2)

    def test_bodyNotSentTwice(self) -> None:
        """
        A refused request with a body (a manifest push) is not sent again:
        its body was streamed once.
        """
        token = self.bearer(
            ["repository:lib/app:pull,push"], basic("bob", "bob-secret")
        )
        response = self.exchange(
            b"PUT",
            b"/v2/lib/app/manifests/v2",
            [
                (b"Authorization", token),
                (b"Content-Type", b"application/vnd.oci.image.manifest.v1+json"),
            ],
            manifestFor("x"),
        )
        self.assertEqual(response.status, 403, response.body)
        puts = [r for r in self.registry.received if r.method == b"PUT"]
        self.assertEqual(len(puts), 1)
        self.assertEqual(puts[0].body, manifestFor("x"))

    def test_upstreamForgetsToken(self) -> None:
        """
        When the upstream stops accepting a cached token before it expires
        (its token service restarted with a new key), the next request
        gets a fresh one instead of a denial until the cached one runs out.
        """
        token = self.bearer(["repository:lib/app:pull"], basic("bob", "bob-secret"))
        self.assertEqual(self.get(b"/v2/lib/app/manifests/latest", token).status, 200)
        self.registry.tokens.clear()
        first = self.get(b"/v2/lib/app/manifests/latest", token)
        second = self.get(b"/v2/lib/app/manifests/latest", token)
        self.assertEqual((first.status, second.status), (200, 200), second.body)

    def mount(self, credentials: bytes) -> tuple[RawResponse, str]:
        """
        Mount C{lib/other}'s layer into C{lib/app} with a token for both.
        """
        token = self.bearer(
            ["repository:lib/app:pull,push", "repository:lib/other:pull"],
            credentials,
        )
        digest = digestOf(layerFor("lib/other"))
        response = self.exchange(
            b"POST",
            f"/v2/lib/app/blobs/uploads/?mount={digest}&from=lib/other".encode(),
            [(b"Authorization", token)],
            b"",
        )
        return response, digest

    def test_mountAcrossRepositories(self) -> None:
        """
        A cross-repository mount works as it does directly: the upstream
        token covers a push to the destination and a pull of the source,
        asked as two scopes, and the upstream mounts (201) instead of
        starting an upload.
        """
        response, digest = self.mount(basic("alice", "alice-secret"))
        self.assertEqual(response.status, 201, response.body)
        self.assertEqual(
            response.header(b"location"),
            PUBLIC + f"/v2/lib/app/blobs/{digest}".encode(),
        )
        self.assertEqual(
            self.registry.blobs[("lib/app", digest)], layerFor("lib/other")
        )
        scopes = parse_qs(self.registry.tokenRequests[-1].uri.partition(b"?")[2])
        self.assertEqual(
            scopes[b"scope"],
            [b"repository:lib/app:pull,push", b"repository:lib/other:pull"],
        )

    def test_mountSourceRefusedUpstream(self) -> None:
        """
        A source the upstream does not let the client pull: the upstream
        starts an ordinary upload (202), and nothing is copied.
        """
        self.registry.grants["bob"] = {"lib/app": ("pull", "push")}
        response, digest = self.mount(basic("bob", "bob-secret"))
        self.assertEqual(response.status, 202, response.body)
        self.assertNotIn(("lib/app", digest), self.registry.blobs)

    def test_deletedManifestForgotten(self) -> None:
        """
        After a DELETE of a manifest that the upstream accepted, neither
        GET nor HEAD of that digest answers from memory.
        """
        self.registry.grants["alice"] = {"*": ("pull", "push", "delete")}
        token = self.bearer(
            ["repository:lib/app:pull,delete"], basic("alice", "alice-secret")
        )
        digest = digestOf(manifestFor(REPO))
        path = f"/v2/lib/app/manifests/{digest}".encode()
        accept = (b"Accept", b"application/vnd.oci.image.manifest.v1+json")
        headers = [(b"Authorization", token), accept]
        for _ in range(2):
            self.assertEqual(self.exchange(b"GET", path, headers).status, 200)
        deleted = self.exchange(b"DELETE", path, headers)
        self.assertEqual(deleted.status, 202, deleted.body)
        for method in (b"GET", b"HEAD"):
            response = self.exchange(method, path, headers)
            self.assertEqual(response.status, 404, method)
        self.assertEqual(self.registry.received[-1].method, b"HEAD")


class FleetTestCase(BrokerTestCase):
    """
    Fleet names resolved through the fake balena API, in front of a Bearer
    registry holding the fixture's images, whose token service grants
    anonymous clients the public fleets' images and alice (a member of
    acme, logging in with her API key) everything.
    """

    mode = BEARER
    apiToken: str | None = None
    api: StubTreq

    def setUp(self) -> None:
        self.reactor = MemoryReactorClock()
        self.fixture = defaultFixture()
        self.balena = FakeBalenaAPI(self.fixture)
        self.api = StubTreq(self.balena)
        public = {}
        everything = {}
        for image in self.fixture.tables["image"].values():
            repository = image["is_stored_at__image_location"].split("/", 1)[1]
            everything[repository] = ("pull", "push")
            if self.fixture.visible("image", image, None):
                public[repository] = ("pull",)
        self.registry = FakeRegistry(
            self.mode,
            users={"alice": ALICE_KEY, "bob": BOB_KEY},
            grants={None: public, "bob": public, "alice": everything},
            clock=self.reactor,
        )
        for repository in everything:
            self.registry.addImage(repository)
        self.stateDir = self.mktemp()
        self.site = self.makeSite()

    def makeSite(self, stateDir: str | None = None, **config):
        config.setdefault("balena_api", API)
        if self.apiToken is not None:
            config.setdefault("api_token", self.apiToken)
        return super().makeSite(stateDir, **config)

    def pull(
        self, name: str, reference: str = "latest", credentials: bytes | None = None
    ) -> RawResponse:
        token = self.bearer([f"repository:{name}:pull"], credentials)
        return self.get(f"/v2/{name}/manifests/{reference}".encode(), token)

    def assertLooksMissing(self, name: str, path: str, missing: str = "acme/nothing"):
        """
        C{path} (with C{{}} for the fleet) answers for C{name} exactly as for
        a fleet that does not exist.
        """
        token = self.bearer([f"repository:{name}:pull"])
        seen = self.get(path.format(name).encode(), token)
        token = self.bearer([f"repository:{missing}:pull"])
        expected = self.get(path.format(missing).encode(), token)
        self.assertEqual(expected.status, 404)
        self.assertEqual(errorCodes(expected), ["NAME_UNKNOWN"])
        self.assertEqual(seen.status, expected.status)
        self.assertEqual(
            seen.body.replace(name.encode(), b"NAME"),
            expected.body.replace(missing.encode(), b"NAME"),
        )
        self.assertEqual(
            sorted(k.lower() for k, _ in seen.headers if k.lower() != b"date"),
            sorted(k.lower() for k, _ in expected.headers if k.lower() != b"date"),
        )


class FleetNameTests(FleetTestCase):
    """
    C{org/fleet[/release][/service]} reaches the right image upstream.
    """

    def test_releaseByTag(self) -> None:
        """
        C{acme/public-app:1.2.3} is the final 1.2.3 with the highest
        revision: asked upstream as C{/v2/v2/<hash>/manifests/latest}.
        """
        repository = self.fixture.repository("acme/public-app", "1.2.3+rev2")
        response = self.pull("acme/public-app", "1.2.3")
        self.assertEqual(response.status, 200, response.body)
        self.assertEqual(response.body, manifestFor(repository))
        self.assertEqual(
            self.registry.received[-1].uri,
            f"/v2/{repository}/manifests/latest".encode(),
        )
        self.assertTrue(repository.startswith("v2/"))

    def test_releaseInPath(self) -> None:
        """
        C{acme/public-app/<draft>} is the draft with that full version.
        """
        repository = self.fixture.repository("acme/public-app", DRAFT_VERSION)
        response = self.pull(f"acme/public-app/{DRAFT_VERSION}")
        self.assertEqual(response.status, 200, response.body)
        self.assertEqual(
            self.registry.received[-1].path,
            f"/v2/{repository}/manifests/latest".encode(),
        )

    def test_target(self) -> None:
        """
        The fleet alone is its target release.
        """
        repository = self.fixture.repository("acme/public-app", "2.0.0")
        response = self.pull("acme/public-app")
        self.assertEqual(response.body, manifestFor(repository))

    def test_service(self) -> None:
        """
        A fourth segment picks the service of a multi-service release.
        """
        repository = self.fixture.repository("acme/multi", "1.0.0", "backend")
        response = self.pull("acme/multi/1.0.0/backend")
        self.assertEqual(response.status, 200, response.body)
        self.assertEqual(response.body, manifestFor(repository))

    def test_upstreamTokenForRealRepository(self) -> None:
        """
        The upstream token is asked for the real repository, with the
        client's own credentials.
        """
        repository = self.fixture.repository("acme/private-app", "1.0.0")
        response = self.pull("acme/private-app", credentials=basic("alice", ALICE_KEY))
        self.assertEqual(response.status, 200, response.body)
        request = self.registry.tokenRequests[-1]
        self.assertIn(
            b"scope=" + quote(f"repository:{repository}:pull", safe="").encode(),
            request.uri,
        )
        self.assertEqual(request.header(b"authorization"), basic("alice", ALICE_KEY))

    def test_blobFromManifest(self) -> None:
        """
        A blob named by a release's manifest is fetched from that release's
        repository, though the client names only the fleet.
        """
        repository = self.fixture.repository("acme/public-app", "1.2.3+rev2")
        self.pull("acme/public-app", "1.2.3")
        layer = json.loads(manifestFor(repository))["layers"][0]["digest"]
        token = self.bearer(["repository:acme/public-app:pull"])
        response = self.get(f"/v2/acme/public-app/blobs/{layer}".encode(), token)
        self.assertEqual(response.status, 200, response.body)
        self.assertEqual(
            self.registry.received[-1].path,
            f"/v2/{repository}/blobs/{layer}".encode(),
        )

    def test_blobThroughSecondInstance(self) -> None:
        """
        A blob of a release pulled by tag is found by another regproxy on
        the same state directory (behind a load balancer, or after a
        restart between the manifest and the blobs).
        """
        repository = self.fixture.repository("acme/public-app", "1.2.3+rev2")
        self.assertEqual(self.pull("acme/public-app", "1.2.3").status, 200)
        layer = json.loads(manifestFor(repository))["layers"][0]["digest"]
        token = self.bearer(["repository:acme/public-app:pull"])
        second = self.makeSite()
        response = self.get(
            f"/v2/acme/public-app/blobs/{layer}".encode(), token, site=second
        )
        self.assertEqual(response.status, 200, response.body)

    def test_roundRobin(self) -> None:
        """
        Two instances on one state directory, taking a client's requests
        in turn (a load balancer without stickiness), serve every selector
        a client can pull: the tag form, the path form, the target, a
        service, a draft.
        """
        sites = [self.site, self.makeSite()]
        turn = iter(range(1000))
        pulls = [
            ("acme/public-app", "1.2.3", "1.2.3+rev2", "main"),
            ("acme/public-app/1.2.3", "latest", "1.2.3+rev2", "main"),
            ("acme/public-app", "latest", "2.0.0", "main"),
            ("acme/public-app", DRAFT_VERSION, DRAFT_VERSION, "main"),
            ("acme/multi/1.0.0/backend", "latest", "1.0.0", "backend"),
        ]
        for name, tag, version, service in pulls:
            slug = "/".join(name.split("/")[:2])
            repository = self.fixture.repository(slug, version, service)
            token = self.bearer([f"repository:{name}:pull"])
            manifest = self.get(
                f"/v2/{name}/manifests/{tag}".encode(),
                token,
                site=sites[next(turn) % 2],
            )
            self.assertEqual(manifest.body, manifestFor(repository), (name, tag))
            for layer in json.loads(manifest.body)["layers"]:
                response = self.get(
                    f"/v2/{name}/blobs/{layer['digest']}".encode(),
                    token,
                    site=sites[next(turn) % 2],
                )
                self.assertEqual(response.status, 200, (name, tag, response.body))
                self.assertEqual(response.body, layerFor(repository))

    def test_pushedManifestForgotten(self) -> None:
        """
        A release's manifest is kept in memory as one that cannot change;
        once a manifest PUT to it succeeds upstream, the new one is served.
        """
        name = "acme/public-app/1.2.3"
        credentials = basic("alice", ALICE_KEY)
        token = self.bearer([f"repository:{name}:pull,push"], credentials)
        accept = (b"Accept", b"application/vnd.oci.image.manifest.v1+json")
        path = f"/v2/{name}/manifests/latest".encode()
        first = self.exchange(b"GET", path, [(b"Authorization", token), accept])
        self.assertEqual(first.status, 200, first.body)
        pushed = self.exchange(
            b"PUT",
            path,
            [
                (b"Authorization", token),
                (b"Content-Type", b"application/vnd.oci.image.manifest.v1+json"),
            ],
            manifestFor("replacement"),
        )
        self.assertEqual(pushed.status, 201, pushed.body)
        again = self.exchange(b"GET", path, [(b"Authorization", token), accept])
        self.assertEqual(again.body, manifestFor("replacement"))

    def test_oddManifestRelayed(self) -> None:
        """
        A manifest the upstream serves is relayed as it is, even one whose
        fields are not what a manifest's should be.
        """
        repository = self.fixture.repository("acme/public-app", "2.0.0")
        odd = b'{"schemaVersion": 2, "layers": 1}'
        self.registry.manifests[(repository, "latest")] = odd
        response = self.pull("acme/public-app")
        self.assertEqual(self.flushLoggedErrors(), [])
        self.assertEqual(response.status, 200, response.body)
        self.assertEqual(response.body, odd)

    def test_uploadLocation(self) -> None:
        """
        Upload Locations from the upstream name the client's repository,
        not the real one.
        """
        token = self.bearer(
            ["repository:acme/public-app:pull,push"], basic("alice", ALICE_KEY)
        )
        response = self.exchange(
            b"POST",
            b"/v2/acme/public-app/blobs/uploads/",
            [(b"Authorization", token)],
            b"",
        )
        self.assertEqual(response.status, 202, response.body)
        self.assertEqual(
            response.header(b"location"),
            PUBLIC + b"/v2/acme/public-app/blobs/uploads/u-1?_state=a%2Fb%3D%3D",
        )
        repository = self.fixture.repository("acme/public-app", "2.0.0")
        for _, value in response.headers:
            self.assertNotIn(repository.split("/")[1].encode(), value)

    def test_digest(self) -> None:
        """
        C{acme/public-app@sha256:...} goes upstream as that digest, never
        replaced by C{latest}, in the repository of the release holding it.
        """
        repository = self.fixture.repository("acme/public-app", "1.2.3+rev2")
        digest = digestOf(manifestFor(repository))
        self.fixture.images("acme/public-app", "1.2.3+rev2")["main"]["content_hash"] = (
            digest
        )
        response = self.pull("acme/public-app", digest)
        self.assertEqual(response.status, 200, response.body)
        self.assertEqual(response.header(b"docker-content-digest"), digest.encode())
        self.assertEqual(
            self.registry.received[-1].path,
            f"/v2/{repository}/manifests/{digest}".encode(),
        )

    def test_head(self) -> None:
        """
        HEAD of a release keeps Content-Length and the digest, whether it
        is asked before or after a GET.
        """
        repository = self.fixture.repository("acme/public-app", "1.2.3+rev2")
        manifest = manifestFor(repository)
        token = self.bearer(["repository:acme/public-app:pull"])
        for method in (b"HEAD", b"GET", b"HEAD"):
            response = self.exchange(
                method,
                b"/v2/acme/public-app/manifests/1.2.3",
                [(b"Authorization", token)],
            )
            self.assertEqual(response.status, 200, method)
            self.assertEqual(response.header(b"content-length"), b"%d" % len(manifest))
            self.assertEqual(
                response.header(b"docker-content-digest"), digestOf(manifest).encode()
            )
            if method == b"GET":
                self.assertEqual(response.body, manifest)

    def test_releaseTags(self) -> None:
        """
        A release's own repository lists the one tag it is pulled by.
        """
        token = self.bearer(["repository:acme/public-app/1.2.3:pull"])
        response = self.get(b"/v2/acme/public-app/1.2.3/tags/list", token)
        self.assertEqual(response.status, 200, response.body)
        self.assertEqual(json.loads(response.body)["tags"], ["latest"])


class FleetTagsTests(FleetTestCase):
    """
    C{tags/list} of a fleet lists its successful releases.
    """

    def tags(self, query: bytes = b"", name: str = "acme/public-app") -> RawResponse:
        token = self.bearer([f"repository:{name}:pull"])
        return self.get(f"/v2/{name}/tags/list".encode() + query, token)

    def test_list(self) -> None:
        """
        Finals by version, drafts by their full version; failed releases
        and releases with a failed image are left out.
        """
        response = self.tags()
        self.assertEqual(response.status, 200, response.body)
        self.assertEqual(
            json.loads(response.body),
            {"name": "acme/public-app", "tags": ["1.2.3", DRAFT_VERSION, "2.0.0"]},
        )
        self.assertIsNone(response.header(b"link"))

    def test_paginated(self) -> None:
        """
        C{n} limits the page and a C{Link} header points at the next one;
        C{last} starts after a tag.
        """
        response = self.tags(b"?n=2")
        self.assertEqual(json.loads(response.body)["tags"], ["1.2.3", DRAFT_VERSION])
        self.assertEqual(
            response.header(b"link"),
            f"</v2/acme/public-app/tags/list?n=2&last={DRAFT_VERSION}>; "
            f'rel="next"'.encode(),
        )
        response = self.tags(f"?n=2&last={DRAFT_VERSION}".encode())
        self.assertEqual(json.loads(response.body)["tags"], ["2.0.0"])
        self.assertIsNone(response.header(b"link"))

    def test_badPageSize(self) -> None:
        """
        A page size that is not a number is a 400 in registry JSON.
        """
        response = self.tags(b"?n=many")
        self.assertEqual(response.status, 400)
        self.assertEqual(errorCodes(response), ["PAGINATION_NUMBER_INVALID"])

    def test_emptyFleet(self) -> None:
        """
        A fleet without releases has an empty list.
        """
        response = self.tags(name="acme/empty")
        self.assertEqual(response.status, 200, response.body)
        self.assertEqual(json.loads(response.body)["tags"], [])


class FleetErrorTests(FleetTestCase):
    """
    Denials that say what happened.
    """

    def test_unknownFleet(self) -> None:
        """
        A fleet that does not exist: 404 NAME_UNKNOWN.
        """
        response = self.pull("acme/nothing")
        self.assertEqual(response.status, 404)
        self.assertEqual(errorCodes(response), ["NAME_UNKNOWN"])
        self.assertEqual(
            response.all(b"docker-distribution-api-version"), [b"registry/2.0"]
        )

    def test_vPrefix(self) -> None:
        """
        C{v1.2.3}: 404 MANIFEST_UNKNOWN, "did you mean 1.2.3?".
        """
        response = self.pull("acme/public-app", "v1.2.3")
        self.assertEqual(response.status, 404)
        self.assertEqual(errorCodes(response), ["MANIFEST_UNKNOWN"])
        self.assertIn(
            "did you mean 1.2.3?", json.loads(response.body)["errors"][0]["message"]
        )

    def test_draftHint(self) -> None:
        """
        A version that exists only as a draft: the hint gives the draft's
        full version.
        """
        response = self.pull("acme/public-app", "1.3.0")
        self.assertEqual(response.status, 404)
        self.assertEqual(errorCodes(response), ["MANIFEST_UNKNOWN"])
        self.assertIn(
            f"drafts need their full version, e.g. {DRAFT_VERSION}",
            json.loads(response.body)["errors"][0]["message"],
        )

    def test_serviceRequired(self) -> None:
        """
        A multi-service release without a service: 400 naming the services.
        """
        response = self.pull("acme/multi")
        self.assertEqual(response.status, 400)
        self.assertIn(b"backend", response.body)
        self.assertIn(b"frontend", response.body)

    def test_apiDown(self) -> None:
        """
        The balena API answering 503: the client gets a 503 UNAVAILABLE in
        registry JSON.
        """
        token = self.bearer(["repository:acme/public-app:pull"])
        self.balena.stop("503")
        response = self.get(b"/v2/acme/public-app/manifests/1.2.3", token)
        self.assertEqual(response.status, 503, response.body)
        self.assertEqual(errorCodes(response), ["UNAVAILABLE"])

    def test_apiHangs(self) -> None:
        """
        The balena API never answering: a 504 once C{--response-timeout}
        (60 s by default) passes.
        """
        token = self.bearer(["repository:acme/public-app:pull"])
        self.balena.stop("hang")
        client = RawClient(self.site)
        client.request(
            b"GET", b"/v2/acme/public-app/manifests/1.2.3", [(b"Authorization", token)]
        )
        self.api.flush()
        self.reactor.advance(59)
        self.api.flush()
        self.assertIsNone(client.response())
        self.reactor.advance(1)
        self.api.flush()
        response = client.completeResponse()
        self.assertEqual(response.status, 504, response.body)
        self.assertEqual(errorCodes(response), ["UNAVAILABLE"])

    def test_apiDownAfterWarmCache(self) -> None:
        """
        While the API is down, a name resolved before still pulls.
        """
        self.assertEqual(self.pull("acme/public-app", "1.2.3").status, 200)
        self.balena.stop("503")
        self.reactor.advance(600)
        response = self.pull("acme/public-app", "1.2.3")
        self.assertEqual(response.status, 200, response.body)

    def test_privateFleetAnonymous(self) -> None:
        """
        Without API_TOKEN, a private fleet asked for anonymously looks
        missing.
        """
        self.assertLooksMissing("acme/private-app", "/v2/{}/manifests/latest")

    def test_privateFleetTagsAnonymous(self) -> None:
        """
        Nor does its tag list tell it apart.
        """
        self.assertLooksMissing("acme/private-app", "/v2/{}/tags/list")
        self.assertLooksMissing("acme/private-app", "/v2/{}/manifests/9.9.9")

    def test_privateFleetOtherUser(self) -> None:
        """
        A user of another organization cannot tell a private fleet from a
        missing one.
        """
        name = "acme/private-app"
        seen = self.pull(name, credentials=basic("bob", BOB_KEY))
        expected = self.pull("acme/nothing", credentials=basic("bob", BOB_KEY))
        self.assertEqual((seen.status, errorCodes(seen)), (404, ["NAME_UNKNOWN"]))
        self.assertEqual(
            seen.body.replace(name.encode(), b"N"),
            expected.body.replace(b"acme/nothing", b"N"),
        )

    def test_privateFleetMember(self) -> None:
        """
        A member of the fleet's organization pulls it with her own key.
        """
        repository = self.fixture.repository("acme/private-app", "1.0.0")
        response = self.pull("acme/private-app", credentials=basic("alice", ALICE_KEY))
        self.assertEqual(response.status, 200, response.body)
        self.assertEqual(response.body, manifestFor(repository))

    def test_upstreamRefusesFleet(self) -> None:
        """
        When the upstream refuses the client's credentials on a fleet's
        repository, the answer is the NAME_UNKNOWN of a missing fleet.
        """
        self.registry.grants[None] = {}
        self.assertLooksMissing("acme/public-app", "/v2/{}/manifests/latest")

    def test_tokenServiceRefusesFleet(self) -> None:
        """
        When the upstream's token service refuses the client's credentials
        for a fleet's repository, the answer is also that of a missing
        fleet.
        """
        token = self.bearer(
            ["repository:acme/public-app:pull"], basic("alice", ALICE_KEY)
        )
        self.registry.users["alice"] = "changed"
        seen = self.get(b"/v2/acme/public-app/manifests/latest", token)
        self.assertEqual((seen.status, errorCodes(seen)), (404, ["NAME_UNKNOWN"]))

    def test_upstreamRefusesFleetBlob(self) -> None:
        """
        The same for a blob request.
        """
        self.registry.grants[None] = {}
        self.assertLooksMissing("acme/public-app", "/v2/{}/blobs/sha256:" + "0" * 64)


class FleetWithServerKeyTests(FleetTestCase):
    """
    With regproxy's own API_TOKEN configured (a key that sees the private
    fleet), anonymous clients still learn nothing about private fleets.
    """

    apiToken = ALICE_KEY

    def test_manifest(self) -> None:
        """
        The private fleet's target looks exactly like a missing fleet.
        """
        self.assertLooksMissing("acme/private-app", "/v2/{}/manifests/latest")

    def test_unknownRelease(self) -> None:
        """
        So does an unknown release of the private fleet (no
        MANIFEST_UNKNOWN that would reveal it exists).
        """
        self.assertLooksMissing("acme/private-app", "/v2/{}/manifests/9.9.9")
        self.assertLooksMissing("acme/private-app", "/v2/{}/manifests/v1.0.0")

    def test_knownRelease(self) -> None:
        """
        And so does a release that exists.
        """
        self.assertLooksMissing("acme/private-app", "/v2/{}/manifests/1.0.0")

    def test_tags(self) -> None:
        """
        Its release list is not shown either.
        """
        self.assertLooksMissing("acme/private-app", "/v2/{}/tags/list")

    def test_publicTags(self) -> None:
        """
        A public fleet's releases are listed for anonymous clients.
        """
        token = self.bearer(["repository:acme/public-app:pull"])
        response = self.get(b"/v2/acme/public-app/tags/list", token)
        self.assertEqual(response.status, 200, response.body)
        self.assertEqual(
            json.loads(response.body)["tags"], ["1.2.3", DRAFT_VERSION, "2.0.0"]
        )

    def test_memberTags(self) -> None:
        """
        A member lists the private fleet's releases with her own key.
        """
        token = self.bearer(
            ["repository:acme/private-app:pull"], basic("alice", ALICE_KEY)
        )
        response = self.get(b"/v2/acme/private-app/tags/list", token)
        self.assertEqual(response.status, 200, response.body)
        self.assertEqual(json.loads(response.body)["tags"], ["1.0.0"])

    def test_publicFleet(self) -> None:
        """
        Public fleets still resolve for anonymous clients.
        """
        response = self.pull("acme/public-app", "1.2.3")
        self.assertEqual(response.status, 200, response.body)

    def test_afterMember(self) -> None:
        """
        What a member pulled is not handed to an anonymous client
        afterwards (from a cache of resolutions, upstream tokens or
        manifests): the private fleet still looks missing to it.
        """
        for reference in ("latest", "1.0.0"):
            response = self.pull(
                "acme/private-app", reference, credentials=basic("alice", ALICE_KEY)
            )
            self.assertEqual(response.status, 200, response.body)
        self.assertLooksMissing("acme/private-app", "/v2/{}/manifests/latest")
        self.assertLooksMissing("acme/private-app", "/v2/{}/manifests/1.0.0")

    def test_memberStillWorks(self) -> None:
        """
        A member logging in with her own key pulls the private fleet.
        """
        response = self.pull("acme/private-app", credentials=basic("alice", ALICE_KEY))
        self.assertEqual(response.status, 200, response.body)


class RememberedFleetTests(FleetTestCase):
    """
    Fleet names while the balena API cannot be asked, from answers
    remembered beyond the process (what the LAN cache's index keeps; here
    in memory) or from the resolver's own in-memory cache: served, marked
    stale, for the same asker only, and a private fleet still looks missing.
    """

    def setUp(self) -> None:
        self.remembered = MemoryResolutionMemory()
        self.patch(
            app, "offlineNames", lambda config, forwarder: (self.remembered, None)
        )
        self.events: list[dict] = []
        super().setUp()

    def makeSite(self, stateDir: str | None = None, **config):
        config.setdefault("cache_stale", 3600.0)
        site = super().makeSite(stateDir, **config)
        site._log = Logger(observer=cast(ILogObserver, self.events.append))
        return site

    def restart(self) -> None:
        """
        A new regproxy on the same state: nothing in its memory but what
        the remembered answers hold.
        """
        self.site = self.makeSite()

    def cacheFields(self) -> list[str]:
        return [e["cache"] for e in self.events if e.get("regproxy_request")]

    def assertLooksMissingOffline(
        self, name: str, credentials: bytes | None = None, missing: str = "acme/nothing"
    ) -> RawResponse:
        """
        C{name}'s manifest answers exactly as a missing fleet's does: status,
        body and every header but the date.
        """
        seen = self.pull(name, credentials=credentials)
        expected = self.pull(missing, credentials=credentials)

        def shown(response: RawResponse, which: str) -> tuple:
            headers = sorted(
                (k.lower(), v) for k, v in response.headers if k.lower() != b"date"
            )
            return response.status, response.body.replace(which.encode(), b"N"), headers

        self.assertEqual(shown(seen, name), shown(expected, missing))
        return seen

    def test_restartedWhileAPIDown(self) -> None:
        """
        A name pulled before a restart pulls while the API is down, from
        the answer remembered for this asker, marked stale in the answer
        and in the log.
        """
        before = self.pull("acme/public-app", "1.2.3")
        self.assertEqual(before.status, 200, before.body)
        self.assertIsNone(before.header(b"warning"))
        self.restart()
        self.balena.stop("503")
        response = self.pull("acme/public-app", "1.2.3")
        self.assertEqual(response.status, 200, response.body)
        self.assertEqual(response.body, before.body)
        self.assertEqual(response.all(b"warning"), [STALE_WARNING])
        self.assertEqual(self.cacheFields()[-1], "stale")

    def test_blobAfterRestart(self) -> None:
        """
        Its blobs are found through the manifest answered from the
        remembered resolution.
        """
        repository = self.fixture.repository("acme/public-app", "1.2.3+rev2")
        self.assertEqual(self.pull("acme/public-app", "1.2.3").status, 200)
        self.restart()
        self.balena.stop("503")
        self.assertEqual(self.pull("acme/public-app", "1.2.3").status, 200)
        digest = digestOf(layerFor(repository))
        token = self.bearer(["repository:acme/public-app:pull"])
        blob = self.get(f"/v2/acme/public-app/blobs/{digest}".encode(), token)
        self.assertEqual(blob.status, 200, blob.body)
        self.assertEqual(blob.body, layerFor(repository))

    def test_tooOld(self) -> None:
        """
        An answer older than C{--cache-stale} is not served: the client
        hears why the API failed, unmarked.
        """
        self.assertEqual(self.pull("acme/public-app", "1.2.3").status, 200)
        self.restart()
        self.balena.stop("503")
        self.reactor.advance(3601)
        response = self.pull("acme/public-app", "1.2.3")
        self.assertEqual(response.status, 503, response.body)
        self.assertEqual(errorCodes(response), ["UNAVAILABLE"])
        self.assertIsNone(response.header(b"warning"))
        self.assertEqual(self.cacheFields()[-1], "-")

    def test_otherAskers(self) -> None:
        """
        What a member pulled is remembered for her: after a restart with
        the API down she pulls it again, while anonymous clients and other
        users find the private fleet exactly as they find a missing one.
        """
        alice = basic("alice", ALICE_KEY)
        self.assertEqual(self.pull("acme/private-app", credentials=alice).status, 200)
        self.restart()
        self.balena.stop("503")
        self.assertEqual(self.pull("acme/private-app", credentials=alice).status, 200)
        seen = self.assertLooksMissingOffline("acme/private-app")
        self.assertEqual(seen.status, 503)
        self.assertLooksMissingOffline("acme/private-app", basic("bob", BOB_KEY))

    def test_inMemoryStaleMarked(self) -> None:
        """
        An answer the resolver's own cache serves stale is marked the same
        way, and a fresh one is not once the API is back.
        """
        self.assertEqual(self.pull("acme/public-app", "1.2.3").status, 200)
        self.balena.stop("503")
        self.reactor.advance(600)
        response = self.pull("acme/public-app", "1.2.3")
        self.assertEqual(response.status, 200, response.body)
        self.assertEqual(response.all(b"warning"), [STALE_WARNING])
        self.assertEqual(self.cacheFields()[-1], "stale")
        self.balena.start()
        self.reactor.advance(600)
        response = self.pull("acme/public-app", "1.2.3")
        self.assertIsNone(response.header(b"warning"))
        self.assertNotEqual(self.cacheFields()[-1], "stale")

    def test_memoryAnswerIsAHit(self) -> None:
        """
        A fleet release's manifest answered from the manifest memory logs
        C{hit} while the LAN cache is on, and counts as one (with the bytes
        sent), C{-} while it is off.
        """
        registry = self.site.resource.children[b"v2"]
        token = self.bearer(["repository:acme/public-app:pull"])
        headers = [
            (b"Authorization", token),
            (b"Accept", b"application/vnd.oci.image.manifest.v1+json"),
        ]
        path = b"/v2/acme/public-app/manifests/1.2.3"
        self.assertEqual(self.exchange(b"GET", path, headers).status, 200)
        hits: list[tuple[str, int]] = []
        registry._recordHit = lambda repository, nbytes: hits.append(
            (repository, nbytes)
        )
        for cacheOn, expected in ((False, "-"), (True, "hit")):
            registry._cacheOpen = lambda on=cacheOn: on
            answer = self.exchange(b"GET", path, headers)
            self.assertEqual(answer.status, 200)
            [event] = [e for e in self.events if e.get("regproxy_request")][-1:]
            self.assertEqual((event["upstream"], event["cache"]), ("-", expected))
        self.assertEqual(hits, [(event["repository"], len(answer.body))])


class RememberedServerKeyTests(RememberedFleetTests):
    """
    The same with regproxy's own API key: an anonymous client resolves the
    private fleet with it (and the upstream refuses it), so an answer is
    remembered for that asker; offline, it still gets nothing more than a
    missing fleet gets.
    """

    apiToken = ALICE_KEY

    def test_privateRememberedForServerKey(self) -> None:
        self.assertLooksMissing("acme/private-app", "/v2/{}/manifests/latest")
        self.restart()
        self.balena.stop("503")
        seen = self.assertLooksMissingOffline("acme/private-app")
        self.assertEqual(seen.status, 503)
        self.assertIsNone(seen.header(b"warning"))


class FleetTimingTests(FleetTestCase):
    """
    With regproxy's own API key, an outsider must not tell a private fleet
    from a missing one by how long the answer takes: once warm, both are
    answered from remembered decisions, with no call to the balena API,
    the registry or its token service, and no lookup in the digest
    database shared with other instances (which in the daemon is a round
    trip to a thread of its own).
    """

    apiToken = ALICE_KEY

    def setUp(self) -> None:
        super().setUp()
        self.sharedLookups: list[tuple[str, str]] = []
        self.sharedAnswers: list[str | None] = []
        registry = self.site.resource.children[b"v2"]
        shared = registry.memory.digests.back
        find = shared.find

        def answered(repository: str | None) -> str | None:
            self.sharedAnswers.append(repository)
            return repository

        def countedFind(name: str, digest: str):
            self.sharedLookups.append((name, digest))
            return find(name, digest).addCallback(answered)

        shared.find = countedFind

    def outsideCalls(self) -> int:
        return (
            len(self.balena.calls)
            + len(self.registry.received)
            + len(self.registry.tokenRequests)
            + len(self.sharedLookups)
        )

    def callsFor(self, path: str, name: str, times: int = 20, warm=True) -> int:
        """
        The calls C{times} anonymous requests for C{path} make, after one
        to warm up when C{warm}.
        """
        token = self.bearer([f"repository:{name}:pull"])
        if warm:
            self.get(path.format(name).encode(), token)
        before = self.outsideCalls()
        for _ in range(times):
            response = self.get(path.format(name).encode(), token)
            self.assertEqual(response.status, 404)
        return self.outsideCalls() - before

    def test_manifest(self) -> None:
        """
        Repeated anonymous manifest requests for the private fleet make as
        many calls (none) as those for a missing fleet.
        """
        path = "/v2/{}/manifests/latest"
        private = self.callsFor(path, "acme/private-app")
        missing = self.callsFor(path, "acme/nothing")
        self.assertEqual((private, missing), (0, 0))

    def test_blobAfterMember(self) -> None:
        """
        So do anonymous blob requests for a digest of the private fleet a
        member has pulled, against one for a missing fleet.
        """
        response = self.pull("acme/private-app", "1.0.0", basic("alice", ALICE_KEY))
        self.assertEqual(response.status, 200, response.body)
        digest = manifestDigests(response.body)[-1]
        path = "/v2/{}/blobs/" + digest
        private = self.callsFor(path, "acme/private-app")
        missing = self.callsFor(path, "acme/nothing")
        self.assertEqual((private, missing), (0, 0))
        self.assertLooksMissing("acme/private-app", path)

    def test_decisionsExpire(self) -> None:
        """
        Both kinds of decision are remembered for the same short time, then
        asked again: a member added to the fleet gets in after that.
        """
        path = "/v2/{}/manifests/latest"
        self.callsFor(path, "acme/private-app", 1)
        self.callsFor(path, "acme/nothing", 1)
        self.reactor.advance(DEFAULT_MISS_TTL + 1)
        self.assertGreater(self.callsFor(path, "acme/private-app", 1, False), 0)
        self.assertGreater(self.callsFor(path, "acme/nothing", 1, False), 0)

    def test_sharedMissesExpire(self) -> None:
        """
        What the shared digest memory did not know is asked of it again
        after as short a time as a missing name is: by then another
        instance on the same state directory may have learnt it.
        """
        alice = basic("alice", ALICE_KEY)
        elsewhere = self.makeSite(stateDir=self.mktemp())
        token = self.bearer(["repository:acme/private-app:pull"], alice, elsewhere)
        manifest = self.get(
            b"/v2/acme/private-app/manifests/1.0.0", token, site=elsewhere
        )
        self.assertEqual(manifest.status, 200, manifest.body)
        digest = manifestDigests(manifest.body)[-1]
        blob = f"/v2/acme/private-app/blobs/{digest}".encode()
        token = self.bearer(["repository:acme/private-app:pull"], alice)
        self.assertEqual(self.get(blob, token).status, 200)
        self.assertEqual(self.sharedAnswers, [None])
        other = self.makeSite(stateDir=self.stateDir)
        manifest = self.get(b"/v2/acme/private-app/manifests/1.0.0", token, site=other)
        self.assertEqual(manifest.status, 200, manifest.body)
        self.assertEqual(self.get(blob, token).status, 200)
        self.assertEqual(self.sharedAnswers, [None])
        self.reactor.advance(DEFAULT_MISS_TTL + 1)
        self.assertEqual(self.get(blob, token).status, 200)
        learnt = other.resource.children[b"v2"].memory.digests.front
        self.assertEqual(
            self.sharedAnswers, [None, learnt.findNow("acme/private-app", digest)]
        )
        self.assertIsNotNone(self.sharedAnswers[-1])


class SecretsTests(FleetTestCase):
    """
    Passwords, API keys and tokens never show in answers or logs.
    """

    apiToken = "server-api-token-1234"

    def setUp(self) -> None:
        super().setUp()
        self.fixture.addUser("server", self.apiToken, ["acme"])
        self.events: list[dict] = []
        observer = cast(ILogObserver, self.events.append)
        globalLogPublisher.addObserver(observer)
        self.addCleanup(globalLogPublisher.removeObserver, observer)

    def test_secretsStayHidden(self) -> None:
        """
        After logins (good and bad), token requests, pulls, denials and
        errors, no response body other than a token answer holds a
        password, API key or token, and no logged event does.
        """
        responses = []
        ours = []
        for credentials in (basic("alice", ALICE_KEY), None):
            body = json.loads(
                self.tokenResponse(
                    ["repository:acme/private-app:pull"],
                    credentials,
                    offline_token="true",
                ).body
            )
            ours.append(body["token"])
            if "refresh_token" in body:
                ours.append(body["refresh_token"])
            token = b"Bearer " + body["token"].encode()
            for path in (
                b"/v2/acme/private-app/manifests/latest",
                b"/v2/acme/private-app/manifests/v1.0.0",
                b"/v2/acme/private-app/tags/list",
                b"/v2/acme/public-app/manifests/9.9.9",
                b"/v2/acme/multi/manifests/latest",
            ):
                responses.append(self.get(path, token))
        responses.append(self.tokenResponse([], basic("alice", "wrong-" + ALICE_KEY)))
        responses.append(
            self.get(b"/v2/acme/public-app/tags/list", basic("alice", "x" + ALICE_KEY))
        )
        responses.append(
            self.post(
                {
                    "grant_type": "password",
                    "username": "alice",
                    "password": "p4ss-" + ALICE_KEY,
                }
            )
        )
        self.balena.stop()
        self.reactor.advance(400)
        responses.append(self.pull("acme/public-app", "2.0.0", basic("bob", BOB_KEY)))
        self.assertEqual(responses[0].status, 200)
        secrets = (
            [ALICE_KEY, BOB_KEY, self.apiToken] + ours + list(self.registry.tokens)
        )
        self.assertGreater(len(self.registry.tokens), 0)
        for response in responses:
            for secret in secrets:
                self.assertNotIn(secret.encode(), response.body)
                for _, value in response.headers:
                    self.assertNotIn(secret.encode(), value)
        for received in self.registry.received + self.registry.tokenRequests:
            for values in received.headers.values():
                for value in values:
                    for token in ours:
                        self.assertNotIn(token.encode(), value)
        self.assertGreater(len(self.events), 0)
        for event in self.events:
            text = formatEvent(event) + repr(event)
            failure = event.get("log_failure")
            if failure is not None:
                text += failure.getTraceback()
            for secret in secrets:
                self.assertNotIn(secret, text)


class PropertyTests(BrokerTestCase):
    """
    Whatever a client sends, it gets a registry answer, never a crash.
    """

    @settings(max_examples=50, deadline=None)
    @given(st.lists(st.text(max_size=40), max_size=4))
    def test_anyScopes(self, scopes: list[str]) -> None:
        """
        Any C{scope} values give an anonymous token granting only
        well-formed scopes.
        """
        response = self.tokenResponse(scopes)
        self.assertEqual(response.status, 200, response.body)
        for entry in jwtPart(json.loads(response.body)["token"], 1)["access"]:
            self.assertTrue(all(entry[k] for k in ("type", "name")))

    @settings(max_examples=50, deadline=None)
    @given(st.binary(max_size=60))
    def test_anyAuthorization(self, value: bytes) -> None:
        """
        Any Authorization header gets a 401 with our challenge (or is a
        login the upstream accepts), never a 500.
        """
        # Control characters are refused by the HTTP parser before we see
        # them; keep what a header can carry.
        value = bytes(b for b in value if b >= 0x20 and b != 0x7F).strip()
        for header in (value, b"Bearer " + value, b"Basic " + value):
            response = self.get(b"/v2/lib/app/manifests/latest", header or None)
            self.assertIn(response.status, (200, 401), header)
            self.assertEqual(
                json.loads(response.body).keys() >= {"errors"}, response.status == 401
            )

    @settings(max_examples=50, deadline=None)
    @given(st.binary(max_size=60))
    def test_anyTokenAuthorization(self, value: bytes) -> None:
        """
        Any Authorization header on C{/token} is a 401 in registry JSON
        unless it names a user the upstream accepts: never an anonymous
        token, never a 500.
        """
        value = bytes(b for b in value if b >= 0x20 and b != 0x7F).strip()
        for header in (value, b"Basic " + value, b"Basic " + base64.b64encode(value)):
            response = self.exchange(
                b"GET", b"/token?service=regproxy", [(b"Authorization", header)]
            )
            if response.status == 200:
                self.assertNotEqual(
                    jwtPart(json.loads(response.body)["token"], 1)["sub"], ""
                )
            else:
                self.assertEqual(response.status, 401, header)
                self.assertEqual(errorCodes(response), ["UNAUTHORIZED"])

    @settings(max_examples=50, deadline=None)
    @given(st.text(max_size=80))
    def test_anyRefreshToken(self, value: str) -> None:
        """
        Any refresh token we did not make is a 401.
        """
        response = self.post({"grant_type": "refresh_token", "refresh_token": value})
        self.assertEqual(response.status, 401)
        self.assertEqual(errorCodes(response), ["UNAUTHORIZED"])

    @settings(max_examples=200, deadline=None)
    @given(
        st.binary(max_size=200)
        | st.recursive(
            st.none() | st.integers() | st.text(max_size=10),
            lambda inner: (
                st.lists(inner, max_size=3)
                | st.dictionaries(
                    st.sampled_from(
                        ["config", "layers", "manifests", "blobs", "digest"]
                    ),
                    inner,
                    max_size=4,
                )
            ),
            max_leaves=10,
        ).map(lambda v: json.dumps(v).encode())
    )
    def test_manifestDigestsNeverCrash(self, body: bytes) -> None:
        """
        Any manifest body gives a list of digest strings.
        """
        digests = manifestDigests(body)
        self.assertTrue(all(isinstance(d, str) for d in digests))

    def test_manifestDigests(self) -> None:
        """
        A manifest's config and layers are its digests.
        """
        manifest = json.loads(manifestFor("x"))
        self.assertEqual(
            manifestDigests(manifestFor("x")),
            [manifest["config"]["digest"], manifest["layers"][0]["digest"]],
        )
