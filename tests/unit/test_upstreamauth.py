"""
Tests for L{regproxy.proxy.upstreamauth}: the credential regproxy sends upstream
for a client, found by following the upstream's own challenge, against an
in-memory registry reached through a real Twisted HTTP client.
"""

from __future__ import annotations

import base64
import json
from urllib.parse import parse_qs

from hypothesis import given, settings
from hypothesis import strategies as st
from treq.testing import RequestTraversalAgent
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.http_headers import Headers
from twisted.web.iweb import IAgent
from twisted.web.resource import Resource
from twisted.web.server import Request
from zope.interface.verify import verifyObject

from regproxy.auth.credentials import BasicCredentials
from regproxy.names.scope import Scope
from regproxy.proxy.upstreamauth import (
    UpstreamAccess,
    UpstreamAuthAgent,
    UpstreamAuthenticator,
    _parseTokenResponse,
)
from regproxy.server.errors import RegistryError
from regproxy.server.urls import Origin
from regproxy.testing.fakeregistry import (
    BASIC,
    BEARER,
    OPEN,
    TOKEN_PATH,
    TOKEN_SERVICE,
    UPSTREAM,
    FakeRegistry,
)

ALICE = BasicCredentials("alice", "alice-secret")
BOB = BasicCredentials("bob", "bob-secret")
REPO = "lib/app"


def makeRegistry(mode: str, clock: Clock, **kwargs) -> FakeRegistry:
    return FakeRegistry(
        mode,
        users={"alice": "alice-secret", "bob": "bob-secret"},
        grants={"alice": {"*": ("pull", "push")}, "bob": {REPO: ("pull",)}},
        clock=clock,
        **kwargs,
    )


class AuthenticatorMixin:
    def setUpAuthenticator(self, registry: Resource) -> None:
        self.clock = Clock()
        self.agent = RequestTraversalAgent(registry)
        self.authenticator = UpstreamAuthenticator(
            self.agent, Origin.fromURL(UPSTREAM), self.clock
        )

    def settle(self, coroutine):
        d = Deferred.fromCoroutine(coroutine)
        for _ in range(10):
            if d.called:
                break
            self.agent.flush()
        return d


class SchemeTests(AuthenticatorMixin, SynchronousTestCase):
    """
    The upstream's own C{/v2/} challenge says how to authenticate.
    """

    def test_open(self) -> None:
        """
        An upstream that answers C{/v2/} with 200 needs no credentials:
        nothing is sent, whoever the client is.
        """
        clock = Clock()
        self.setUpAuthenticator(makeRegistry(OPEN, clock))
        self.assertIsNone(
            self.successResultOf(
                self.settle(self.authenticator.authorization(ALICE, REPO, ("pull",)))
            )
        )
        self.assertIsNone(
            self.successResultOf(
                self.settle(self.authenticator.authorization(None, REPO, ("pull",)))
            )
        )

    def test_basic(self) -> None:
        """
        A C{Basic} upstream gets the client's own credentials; an anonymous
        client sends none.
        """
        self.setUpAuthenticator(makeRegistry(BASIC, Clock()))
        header = self.successResultOf(
            self.settle(self.authenticator.authorization(ALICE, REPO, ("pull",)))
        )
        self.assertEqual(header, b"Basic " + base64.b64encode(b"alice:alice-secret"))
        self.assertIsNone(
            self.successResultOf(
                self.settle(self.authenticator.authorization(None, REPO, ("pull",)))
            )
        )

    def test_schemeAskedOnce(self) -> None:
        """
        The upstream's C{/v2/} is asked once, not on every request.
        """
        registry = makeRegistry(BASIC, Clock())
        self.setUpAuthenticator(registry)
        for _ in range(3):
            self.successResultOf(
                self.settle(self.authenticator.authorization(ALICE, REPO, ("pull",)))
            )
        self.assertEqual([r.path for r in registry.received], [b"/v2/"])

    def test_learnNewRealm(self) -> None:
        """
        When a relayed answer names another token realm, the scheme is
        discovered again.
        """
        registry = makeRegistry(BEARER, Clock())
        self.setUpAuthenticator(registry)
        self.successResultOf(self.settle(self.authenticator.scheme()))
        self.authenticator.learn(
            [b'Bearer realm="http://elsewhere.example/token",service="x"']
        )
        self.successResultOf(self.settle(self.authenticator.scheme()))
        self.assertEqual([r.path for r in registry.received], [b"/v2/", b"/v2/"])

    def test_learnSameRealm(self) -> None:
        """
        A challenge with the known realm (an ordinary 401) keeps what we
        know, and garbage is ignored.
        """
        registry = makeRegistry(BEARER, Clock())
        self.setUpAuthenticator(registry)
        self.successResultOf(self.settle(self.authenticator.scheme()))
        self.authenticator.learn(
            [registry.challenge("repository:a:pull"), b"\x00 garbage ,,"]
        )
        self.successResultOf(self.settle(self.authenticator.scheme()))
        self.assertEqual([r.path for r in registry.received], [b"/v2/"])


class BearerTests(AuthenticatorMixin, SynchronousTestCase):
    """
    A C{Bearer} upstream: a token from its own token service, asked with the
    client's credentials for the real repository.
    """

    def setUp(self) -> None:
        self.registry = makeRegistry(BEARER, Clock())
        self.setUpAuthenticator(self.registry)
        self.registry.clock = self.clock

    def authorize(self, credentials, repository=REPO, actions=("pull",)):
        return self.settle(
            self.authenticator.authorization(credentials, repository, actions)
        )

    def test_tokenForRepository(self) -> None:
        """
        The token service is asked with the upstream's service name, the
        scope of the repository and actions asked for, and the client's own
        Basic credentials; the token it gives is what we send.
        """
        header = self.successResultOf(self.authorize(ALICE, "v2/abc", ("pull", "push")))
        [request] = self.registry.tokenRequests
        query = parse_qs(request.uri.decode().partition("?")[2])
        self.assertEqual(
            query,
            {"service": [TOKEN_SERVICE], "scope": ["repository:v2/abc:pull,push"]},
        )
        self.assertEqual(request.header(b"authorization"), ALICE.header())
        self.assertEqual(request.path, TOKEN_PATH)
        token = header.partition(b" ")[2].decode()
        self.assertTrue(header.startswith(b"Bearer "))
        self.assertEqual(
            self.registry.tokens[token].access, {"v2/abc": ("pull", "push")}
        )

    def test_anonymous(self) -> None:
        """
        An anonymous client gets an anonymous upstream token: no
        Authorization to the token service.
        """
        self.successResultOf(self.authorize(None))
        [request] = self.registry.tokenRequests
        self.assertIsNone(request.header(b"authorization"))

    def test_cachedUntilShortlyBeforeExpiry(self) -> None:
        """
        A second request for the same client and repository reuses the
        token; shortly before it expires (within 30 s) a new one is asked.
        """
        first = self.successResultOf(self.authorize(ALICE))
        self.clock.advance(260)
        self.assertEqual(self.successResultOf(self.authorize(ALICE)), first)
        self.assertEqual(len(self.registry.tokenRequests), 1)
        self.clock.advance(15)
        second = self.successResultOf(self.authorize(ALICE))
        self.assertEqual(len(self.registry.tokenRequests), 2)
        self.assertNotEqual(second, first)

    def test_cachedPerClientAndScope(self) -> None:
        """
        Another client, another repository or other actions get their own
        token: one client's token is never handed to another.
        """
        alice = self.successResultOf(self.authorize(ALICE))
        bob = self.successResultOf(self.authorize(BOB))
        anonymous = self.successResultOf(self.authorize(None))
        other = self.successResultOf(self.authorize(ALICE, "lib/other"))
        push = self.successResultOf(self.authorize(ALICE, REPO, ("pull", "push")))
        self.assertEqual(len({alice, bob, anonymous, other, push}), 5)
        self.assertEqual(len(self.registry.tokenRequests), 5)
        users = {
            self.registry.tokens[h.partition(b" ")[2].decode()].user
            for h in (alice, bob, anonymous)
        }
        self.assertEqual(users, {"alice", "bob", None})

    def test_samePasswordOtherUser(self) -> None:
        """
        The cache tells users apart even when their passwords are equal.
        """
        self.registry.users["carol"] = "alice-secret"
        self.successResultOf(self.authorize(ALICE))
        self.successResultOf(self.authorize(BasicCredentials("carol", "alice-secret")))
        self.assertEqual(len(self.registry.tokenRequests), 2)

    def test_refused(self) -> None:
        """
        Credentials the token service refuses are a 401 for the client, and
        the error does not echo the password.
        """
        failure = self.failureResultOf(
            self.authorize(BasicCredentials("alice", "wrong")), RegistryError
        )
        self.assertEqual(failure.value.status, 401)
        self.assertEqual(failure.value.code, "UNAUTHORIZED")
        self.assertNotIn(b"wrong", failure.value.body())

    def test_refusalNotCached(self) -> None:
        """
        A refusal is not remembered as a token.
        """
        self.failureResultOf(
            self.authorize(BasicCredentials("alice", "wrong")), RegistryError
        )
        self.failureResultOf(
            self.authorize(BasicCredentials("alice", "wrong")), RegistryError
        )
        self.assertEqual(len(self.registry.tokenRequests), 2)

    def test_checkLogin(self) -> None:
        """
        A login is good when the upstream's token service accepts it.
        """
        self.assertTrue(
            self.successResultOf(self.settle(self.authenticator.checkLogin(ALICE)))
        )
        self.assertFalse(
            self.successResultOf(
                self.settle(
                    self.authenticator.checkLogin(BasicCredentials("alice", "x"))
                )
            )
        )
        self.assertNotIn(b"scope=", self.registry.tokenRequests[-1].uri)


class AuthAgentTests(AuthenticatorMixin, SynchronousTestCase):
    """
    L{UpstreamAuthAgent}: an agent wrapper that authenticates each request
    for one client, repository and set of scopes.
    """

    def setUp(self) -> None:
        self.registry = makeRegistry(BEARER, Clock())
        self.setUpAuthenticator(self.registry)
        self.registry.clock = self.clock
        self.registry.addImage(REPO)

    def send(self, access: UpstreamAccess, method=b"GET", headers=None, body=None):
        agent = UpstreamAuthAgent(self.agent, self.authenticator, access)
        url = UPSTREAM.encode() + b"/v2/lib/app/manifests/latest"

        async def request():
            return await agent.request(method, url, headers, body)

        return self.successResultOf(self.settle(request()))

    def test_interface(self) -> None:
        agent = UpstreamAuthAgent(
            self.agent, self.authenticator, UpstreamAccess(ALICE, REPO, ("pull",))
        )
        self.assertTrue(verifyObject(IAgent, agent))

    def test_replacesAuthorization(self) -> None:
        """
        The client's own C{Authorization} never goes upstream: the token
        for the access asked for does.
        """
        headers = Headers({b"authorization": [b"Bearer ours"], b"accept": [b"a", b"b"]})
        response = self.send(UpstreamAccess(BOB, REPO, ("pull",)), headers=headers)
        self.assertEqual(response.code, 200)
        sent = self.registry.received[-1]
        authorization = sent.header(b"authorization") or b""
        self.assertTrue(authorization.startswith(b"Bearer "))
        self.assertNotEqual(authorization, b"Bearer ours")
        self.assertEqual(self.registry.tokens[authorization[7:].decode()].user, "bob")
        self.assertEqual(sent.headers[b"accept"], [b"a", b"b"])
        self.assertEqual(headers.getRawHeaders(b"authorization"), [b"Bearer ours"])

    def test_severalScopes(self) -> None:
        """
        Further scopes are asked of the token service as repeated C{scope}
        parameters, and the token is kept for that set.
        """
        access = UpstreamAccess(
            ALICE,
            REPO,
            ("pull", "push"),
            (Scope("repository", None, "lib/x", ("pull",)),),
        )
        for _ in range(2):
            self.send(access)
        [request] = self.registry.tokenRequests
        query = parse_qs(request.uri.decode().partition("?")[2])
        self.assertEqual(
            query["scope"], ["repository:lib/app:pull,push", "repository:lib/x:pull"]
        )

    def test_staleTokenRetriedOnce(self) -> None:
        """
        A cached token the upstream stopped honouring is replaced once, for
        a request without a body; a refusal that stands comes back as it
        is.
        """
        access = UpstreamAccess(BOB, REPO, ("pull",))
        self.send(access)
        self.registry.tokens.clear()
        self.assertEqual(self.send(access).code, 200)
        self.assertEqual(len(self.registry.tokenRequests), 2)
        refused = UpstreamAccess(BOB, "lib/other", ("pull",))
        self.assertEqual(self.send(refused).code, 401)
        self.assertEqual(len(self.registry.tokenRequests), 4)


class CheckLoginTests(AuthenticatorMixin, SynchronousTestCase):
    """
    C{docker login} checks against open and Basic upstreams.
    """

    def test_open(self) -> None:
        """
        An open upstream accepts any login.
        """
        self.setUpAuthenticator(makeRegistry(OPEN, Clock()))
        self.assertTrue(
            self.successResultOf(
                self.settle(self.authenticator.checkLogin(BasicCredentials("x", "y")))
            )
        )

    def test_basic(self) -> None:
        """
        A Basic upstream decides with its own C{/v2/}.
        """
        registry = makeRegistry(BASIC, Clock())
        self.setUpAuthenticator(registry)
        self.assertTrue(
            self.successResultOf(self.settle(self.authenticator.checkLogin(ALICE)))
        )
        self.assertFalse(
            self.successResultOf(
                self.settle(
                    self.authenticator.checkLogin(BasicCredentials("alice", "x"))
                )
            )
        )
        self.assertEqual(
            registry.received[-1].header(b"authorization"),
            BasicCredentials("alice", "x").header(),
        )


class TokenService(Resource):
    """
    A Bearer upstream whose token service answers what the test says.
    """

    isLeaf = True

    def __init__(self, code: int, body: bytes) -> None:
        super().__init__()
        self.code = code
        self.body = body
        self.asked = 0

    def render(self, request: Request) -> bytes:
        if request.path == b"/v2/":
            request.setResponseCode(401)
            request.setHeader(
                b"WWW-Authenticate", b'Bearer realm="http://auth.example/t",service="s"'
            )
            return b"{}"
        self.asked += 1
        request.setResponseCode(self.code)
        return self.body


class TokenServiceAnswerTests(AuthenticatorMixin, SynchronousTestCase):
    """
    What the token service answers, and what the client is told.
    """

    def authorize(self, code: int, body: bytes):
        self.service = TokenService(code, body)
        self.setUpAuthenticator(self.service)
        return self.settle(self.authenticator.authorization(ALICE, REPO, ("pull",)))

    def test_serverError(self) -> None:
        """
        A token service failing is a 502 UNAVAILABLE for the client.
        """
        failure = self.failureResultOf(self.authorize(500, b"oops"), RegistryError)
        self.assertEqual(
            (failure.value.status, failure.value.code), (502, "UNAVAILABLE")
        )

    def test_nonsense(self) -> None:
        """
        An answer without a token is UNAVAILABLE, not a crash.
        """
        for body in [
            b"not json",
            b"[]",
            b'{"token": 5}',
            b'{"token": "\xc3\xa9"}',
            b"{}",
        ]:
            failure = self.failureResultOf(self.authorize(200, body), RegistryError)
            self.assertEqual(failure.value.code, "UNAVAILABLE", body)

    def test_accessToken(self) -> None:
        """
        The OAuth2 name C{access_token} works as well as C{token}.
        """
        header = self.successResultOf(self.authorize(200, b'{"access_token": "abc"}'))
        self.assertEqual(header, b"Bearer abc")

    def test_defaultLifetime(self) -> None:
        """
        Without C{expires_in} a token is taken to last 60 s (the token
        spec's default): kept for less than that, asked again after.
        """
        self.successResultOf(self.authorize(200, b'{"token": "abc"}'))
        self.clock.advance(20)
        self.successResultOf(
            self.settle(self.authenticator.authorization(ALICE, REPO, ("pull",)))
        )
        self.assertEqual(self.service.asked, 1)
        self.clock.advance(41)
        self.successResultOf(
            self.settle(self.authenticator.authorization(ALICE, REPO, ("pull",)))
        )
        self.assertEqual(self.service.asked, 2)

    def test_timeout(self) -> None:
        """
        A token service that never answers is given up on after the
        timeout.
        """

        class Hang(TokenService):
            def render(self, request):
                if request.path == b"/v2/":
                    return super().render(request)
                from twisted.web.server import NOT_DONE_YET

                return NOT_DONE_YET

        self.setUpAuthenticator(Hang(200, b""))
        d = self.settle(self.authenticator.authorization(ALICE, REPO, ("pull",)))
        self.assertNoResult(d)
        self.clock.advance(31)
        self.failureResultOf(d)


class ParsingTests(SynchronousTestCase):
    """
    Property tests for the small grammars of this module.
    """

    @settings(max_examples=200, deadline=None)
    @given(
        st.text(
            st.characters(blacklist_characters=":", blacklist_categories=("Cs",)),
            min_size=0,
            max_size=30,
        ),
        st.text(st.characters(blacklist_categories=("Cs",)), max_size=40),
    )
    def test_basicRoundTrip(self, username: str, password: str) -> None:
        """
        A header we make parses back to the same credentials (a password
        may hold colons; a user name cannot).
        """
        credentials = BasicCredentials(username, password)
        self.assertEqual(BasicCredentials.fromHeader(credentials.header()), credentials)

    @settings(max_examples=200, deadline=None)
    @given(st.binary(max_size=80))
    def test_fromHeaderNeverCrashes(self, value: bytes) -> None:
        """
        Any header is either Basic credentials or L{None}.
        """
        for header in (value, b"Basic " + value, b"Basic " + base64.b64encode(value)):
            result = BasicCredentials.fromHeader(header)
            self.assertTrue(result is None or isinstance(result, BasicCredentials))

    @settings(max_examples=200, deadline=None)
    @given(
        st.recursive(
            st.none()
            | st.booleans()
            | st.integers()
            | st.floats(allow_nan=False)
            | st.text(max_size=10),
            lambda inner: (
                st.lists(inner, max_size=3)
                | st.dictionaries(
                    st.sampled_from(["token", "access_token", "expires_in", "x"]),
                    inner,
                    max_size=4,
                )
            ),
            max_leaves=8,
        )
    )
    def test_tokenResponseNeverCrashes(self, document) -> None:
        """
        Any JSON answer gives a token and a positive lifetime, or an
        UNAVAILABLE error.
        """
        try:
            token, lifetime = _parseTokenResponse(json.dumps(document).encode())
        except RegistryError as e:
            self.assertEqual(e.code, "UNAVAILABLE")
        else:
            self.assertIsInstance(token, str)
            self.assertGreater(lifetime, 0)

    def test_reprHidesPassword(self) -> None:
        """
        Credentials never show their password in a repr.
        """
        self.assertNotIn("alice-secret", repr(ALICE))


class TokenLifetimeTests(SynchronousTestCase):
    """
    How long an upstream token is kept when its service does not say.
    """

    @staticmethod
    def jwt(claims: dict) -> str:
        import base64

        def segment(value: dict) -> str:
            raw = json.dumps(value).encode()
            return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()

        return segment({"alg": "ES256"}) + "." + segment(claims) + ".c2ln"

    def test_expFromJWT(self) -> None:
        """
        balenaCloud sends only C{{"token": ...}}: the JWT's own C{exp} says
        how long it is good for.
        """
        token = self.jwt({"exp": 1000 + 3600})
        body = json.dumps({"token": token}).encode()
        self.assertEqual(_parseTokenResponse(body, 1000.0), (token, 3600))

    def test_expiresInWins(self) -> None:
        token = self.jwt({"exp": 1000 + 3600})
        body = json.dumps({"token": token, "expires_in": 120}).encode()
        self.assertEqual(_parseTokenResponse(body, 1000.0), (token, 120))

    def test_opaqueTokenDefault(self) -> None:
        """
        A token that is not a JWT, or one already expired, gets the token
        spec's default of 60 seconds.
        """
        for token in ("opaque", self.jwt({"exp": 10}), self.jwt({"exp": "soon"})):
            body = json.dumps({"token": token}).encode()
            self.assertEqual(_parseTokenResponse(body, 1000.0), (token, 60))
