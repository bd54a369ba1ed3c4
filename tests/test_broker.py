"""
Tests for L{regproxy.broker} through the whole site: a real regproxy
L{Site} in broker mode fed raw HTTP bytes, relaying to an in-memory
upstream registry (open, Basic or Bearer, L{tests.fakeregistry}) and
resolving fleet names through the fake balena API, all in memory.

Each test asserts what a client sees, and what reached the upstream on
the client's behalf.
"""

from __future__ import annotations

import base64
import json
from urllib.parse import quote, urlencode

from treq.testing import RequestTraversalAgent
from twisted.internet.testing import MemoryReactorClock
from twisted.trial.unittest import SynchronousTestCase

from regproxy.config import Config
from regproxy.site import makeSite
from tests.fakeregistry import (
    BASIC,
    BEARER,
    OPEN,
    UPSTREAM,
    FakeRegistry,
    digestOf,
    manifestFor,
)
from tests.httpclient import RawClient, RawResponse

PUBLIC = b"http://proxy.example:8080"
CHALLENGE = b'Bearer realm="http://proxy.example:8080/token",service="regproxy"'
REPO = "lib/app"
USERS = {"alice": "alice-secret", "bob": "bob-secret"}
GRANTS = {
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
        self.api = None
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
        for _ in range(20):
            response = client.response(head=method == b"HEAD")
            if response is not None:
                break
            self.agent.flush()
            if self.api is not None:
                self.api.flush()
        self.assertIsNotNone(response, client.transport.value())
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
        self.assertTrue(
            response.header(b"content-type").startswith(b"application/json")
        )

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
        self.assertEqual(
            response.header(b"www-authenticate").split(b",")[:2], CHALLENGE.split(b",")
        )
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
