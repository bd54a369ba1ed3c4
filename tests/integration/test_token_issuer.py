# -*- test-case-name: tests.integration.test_token_issuer -*-
"""
Our ES256 token issuer (L{regproxy.auth.jwt}) against a real distribution
registry in token mode, whose C{rootcertbundle} is the certificate that
L{regproxy.auth.jwt.generateIssuerKeyAndCertificate} made.

This is the proof that the header (C{kid}, C{x5c}), the claims (string
C{aud}, C{exp}, C{access}) and the raw signature are what the registry
accepts, and that it refuses what it should; and, with skopeo, that a
token endpoint made of our users, access rules and issuer holds: good
credentials push and pull, a bad password gets 401, a repository outside
the rules is denied, the anonymous rule is honoured.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import tempfile
import tomllib

from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.trial.unittest import TestCase
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET

from regproxy.auth.access import AccessRules, parseAccessRules
from regproxy.auth.htpasswd import HtpasswdUsers, ThreadPoolRunner
from regproxy.auth.issuerkeys import generateIssuerKeyAndCertificate
from regproxy.auth.jwt import TokenIssuer, tokenResponseBody
from regproxy.names.scope import Scope, parseScopes
from regproxy.tls.pem import certificatePEM

from .clients import ClientFailed, Skopeo, httpClient
from .forwarding import OneImageClient, temporaryDirectory
from .oci import writeImage
from .registry import registryProgram, writeHtpasswd
from .tokenregistry import TokenAuth, startTokenModeRegistry
from .tokenserver import serveTokenResource

ISSUER = "regproxy-issuer.test"
SERVICE = "registry.test"


class KidOnlyIssuer(TokenIssuer):
    """
    Leaves C{x5c} out, so the registry must find the key by C{kid} alone.
    """

    def header(self) -> dict:
        header = super().header()
        del header["x5c"]
        return header


class WrongKidIssuer(KidOnlyIssuer):
    """
    Names the key by a C{kid} that is not its libtrust fingerprint.
    """

    def header(self) -> dict:
        header = super().header()
        header["kid"] = "AAAA:" + header["kid"][5:]
        return header


class IssuerTokenResource(Resource):
    """
    A token endpoint that asks our issuer to sign whatever is requested:
    the registry's checks are under test here, not a grant policy.
    """

    isLeaf = True

    def __init__(self, issuer: TokenIssuer) -> None:
        super().__init__()
        self.issuer = issuer
        self.requests = 0

    def render_GET(self, request) -> bytes:
        self.requests += 1
        scopes = parseScopes(v.decode() for v in request.args.get(b"scope", []))
        service = request.args.get(b"service", [SERVICE.encode()])[0].decode()
        issued = self.issuer.issue(None, service, scopes)
        request.setHeader(b"content-type", b"application/json")
        return tokenResponseBody(issued)


class UsersTokenResource(Resource):
    """
    A token endpoint built only from regproxy's modules: Basic credentials
    checked by L{HtpasswdUsers} (bcrypt on a capped pool), the grant
    decided by L{AccessRules}, the token signed by L{TokenIssuer}.  It is
    the shape regproxy's C{/token} takes, without the site around it.
    """

    isLeaf = True

    def __init__(
        self, issuer: TokenIssuer, users: HtpasswdUsers, rules: AccessRules
    ) -> None:
        super().__init__()
        self.issuer = issuer
        self.users = users
        self.rules = rules
        self.answers: list[tuple[str | None, int, tuple[str, ...]]] = []

    def render_GET(self, request) -> int:
        Deferred.fromCoroutine(self._answer(request))
        return NOT_DONE_YET

    async def _answer(self, request) -> None:
        user: str | None = None
        header = request.getHeader(b"authorization")
        if header is not None:
            scheme, _, value = header.partition(b" ")
            try:
                user, _, password = (
                    base64.b64decode(value).decode("utf-8").partition(":")
                )
            except (ValueError, UnicodeDecodeError):
                user, password = "", ""
            if scheme.lower() != b"basic" or not await self.users.checkPassword(
                user, password
            ):
                self.answers.append((user, 401, ()))
                request.setResponseCode(401)
                request.setHeader(b"content-type", b"application/json")
                request.write(
                    json.dumps(
                        {
                            "errors": [
                                {
                                    "code": "UNAUTHORIZED",
                                    "message": "authentication required",
                                }
                            ]
                        }
                    ).encode()
                )
                request.finish()
                return
        scopes = parseScopes(v.decode() for v in request.args.get(b"scope", []))
        granted = self.rules.grant(user, scopes)
        service = request.args.get(b"service", [SERVICE.encode()])[0].decode()
        self.answers.append((user, 200, tuple(map(str, granted))))
        request.setHeader(b"content-type", b"application/json")
        request.write(tokenResponseBody(self.issuer.issue(user, service, granted)))
        request.finish()


async def startTokenRegistry(
    testCase, tokens: Resource, certificatePEMBytes: bytes, reactor
):
    """
    Serve C{tokens} as the token endpoint and start a registry that trusts
    C{certificatePEMBytes}; both live until C{testCase} ends.

    @return: The registry's base URL, C{tokens} and the registry process.
    """
    registryProgram()
    directory = tempfile.mkdtemp(prefix="registry-issuer-")
    testCase.addCleanup(shutil.rmtree, directory, True)
    bundle = os.path.join(directory, f"{ISSUER}.crt")
    with open(bundle, "wb") as f:
        f.write(certificatePEMBytes)

    realm = serveTokenResource(testCase, tokens, reactor) + "/token"

    registry = await startTokenModeRegistry(
        testCase, TokenAuth(realm, SERVICE, ISSUER, bundle), reactor
    )
    return registry.url, tokens, registry.process


class TokenIssuerRegistryTests(TestCase):
    """
    A distribution 2.8 registry in token mode, trusting our certificate.
    """

    timeout = 60

    async def setUp(self) -> None:
        from twisted.internet import reactor

        self.reactor = reactor
        self.key, self.certificate = generateIssuerKeyAndCertificate(ISSUER)
        self.issuer = TokenIssuer(ISSUER, self.key, [self.certificate], reactor)
        self.url, self.tokens, self.process = await startTokenRegistry(
            self,
            IssuerTokenResource(self.issuer),
            certificatePEM(self.certificate),
            reactor,
        )
        self.http = httpClient(self)

    async def _tagsList(self, token: str | None, name: str = "foo"):
        headers = {} if token is None else {"Authorization": f"Bearer {token}"}
        response = await self.http.get(
            f"{self.url}/v2/{name}/tags/list", headers=headers
        )
        body = await response.content()
        return response, body

    def _token(
        self, *scopes: Scope, issuer: TokenIssuer | None = None, audience: str = SERVICE
    ) -> str:
        return (issuer or self.issuer).issue("alice", audience, scopes).token

    def _pullPush(self, name: str) -> Scope:
        return Scope("repository", None, name, ("pull", "push"))

    async def test_grantedTokenPasses(self) -> None:
        """
        A token our issuer signed for C{repository:foo:pull,push} lets a
        tags list through: the registry answers that the (empty) repository
        is unknown instead of asking for authentication.
        """
        response, body = await self._tagsList(self._token(self._pullPush("foo")))
        self.assertEqual(response.code, 404, (body, self.process.output()))
        self.assertEqual(json.loads(body)["errors"][0]["code"], "NAME_UNKNOWN")

    async def test_grantedTokenPushes(self) -> None:
        """
        The same token starts a blob upload (push), which the registry
        accepts with 202.
        """
        token = self._token(self._pullPush("foo"))
        response = await self.http.post(
            f"{self.url}/v2/foo/blobs/uploads/",
            headers={"Authorization": f"Bearer {token}"},
        )
        await response.content()
        self.assertEqual(response.code, 202)

    async def test_challengeAndTokenEndpoint(self) -> None:
        """
        Without a token the registry challenges with our realm; following
        the challenge to the token endpoint gives a token that works.
        """
        response, _ = await self._tagsList(None)
        self.assertEqual(response.code, 401)
        challenge = response.headers.getRawHeaders("www-authenticate")[0]
        self.assertIn('scope="repository:foo:pull"', challenge)
        realm = challenge.split('realm="')[1].split('"')[0]
        answer = await self.http.get(
            realm, params={"service": SERVICE, "scope": "repository:foo:pull"}
        )
        body = json.loads(await answer.content())
        self.assertEqual(
            set(body), {"token", "access_token", "expires_in", "issued_at"}
        )
        self.assertRegex(body["issued_at"], r"\A\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ\Z")
        response, body = await self._tagsList(body["token"])
        self.assertEqual(response.code, 404, body)

    async def test_kidAlone(self) -> None:
        """
        Without C{x5c} the registry finds our key by its libtrust C{kid}
        among the keys of its C{rootcertbundle}: the kid is right.
        """
        issuer = KidOnlyIssuer(ISSUER, self.key, [self.certificate], self.reactor)
        response, body = await self._tagsList(
            self._token(self._pullPush("foo"), issuer=issuer)
        )
        self.assertEqual(response.code, 404, (body, self.process.output()))

    async def test_wrongKid(self) -> None:
        """
        Without C{x5c}, a kid that is not the libtrust fingerprint gets 401
        (so L{test_kidAlone} shows the kid is checked).
        """
        issuer = WrongKidIssuer(ISSUER, self.key, [self.certificate], self.reactor)
        response, body = await self._tagsList(
            self._token(self._pullPush("foo"), issuer=issuer)
        )
        self.assertEqual(response.code, 401, body)

    async def test_otherRepository(self) -> None:
        """
        A token for another repository gets 401.
        """
        response, body = await self._tagsList(self._token(self._pullPush("bar")))
        self.assertEqual(response.code, 401, body)

    async def test_pushOnlyDoesNotPull(self) -> None:
        """
        A token for push alone does not allow a pull.
        """
        token = self._token(Scope("repository", None, "foo", ("push",)))
        response, body = await self._tagsList(token)
        self.assertEqual(response.code, 401, body)

    async def test_otherKey(self) -> None:
        """
        A token with the right issuer name, signed by a key whose
        certificate the registry does not trust, gets 401.
        """
        key, certificate = generateIssuerKeyAndCertificate(ISSUER)
        stranger = TokenIssuer(ISSUER, key, [certificate], self.reactor)
        response, body = await self._tagsList(
            self._token(self._pullPush("foo"), issuer=stranger)
        )
        self.assertEqual(response.code, 401, body)

    async def test_otherAudience(self) -> None:
        """
        A token for another service gets 401.
        """
        response, body = await self._tagsList(
            self._token(self._pullPush("foo"), audience="elsewhere")
        )
        self.assertEqual(response.code, 401, body)

    async def test_expired(self) -> None:
        """
        A token that expired longer ago than the registry's leeway (60 s)
        gets 401.
        """
        past = Clock()
        past.advance(self.reactor.seconds() - 3600)
        old = TokenIssuer(ISSUER, self.key, [self.certificate], past)
        response, body = await self._tagsList(
            self._token(self._pullPush("foo"), issuer=old)
        )
        self.assertEqual(response.code, 401, body)


RULES = """
[[rule]]
users = ["alice"]
repositories = ["team/**", "public/*"]
actions = ["pull", "push"]

[[rule]]
users = ["<anonymous>"]
repositories = ["public/*"]
actions = ["pull"]
"""


class UsersAndRulesTests(OneImageClient, TestCase):
    """
    skopeo against the registry in token mode, with tokens from an endpoint
    made of our users, access rules and issuer.
    """

    timeout = 120

    async def setUp(self) -> None:
        from twisted.internet import reactor

        key, certificate = generateIssuerKeyAndCertificate(ISSUER)
        directory = temporaryDirectory(self, "issuer-users-")
        htpasswd = os.path.join(directory, "htpasswd")
        writeHtpasswd(htpasswd, {"alice": "wonderland"})
        runner = ThreadPoolRunner(reactor, threads=2)
        self.addCleanup(runner.stop)
        self.tokens = UsersTokenResource(
            TokenIssuer(ISSUER, key, [certificate], reactor),
            HtpasswdUsers(htpasswd, reactor, runner),
            parseAccessRules(tomllib.loads(RULES)),
        )
        url, _, self.process = await startTokenRegistry(
            self, self.tokens, certificatePEM(certificate), reactor
        )
        self.host = url.removeprefix("http://")
        self.skopeo = Skopeo(self)
        self.layout = temporaryDirectory(self, "oci-")
        self.image = writeImage(self.layout, "v1", [1000, 20000], seed="issuer")

    def reference(self, repository: str) -> str:
        return f"docker://{self.host}/{repository}:v1"

    async def test_pushAndPull(self) -> None:
        """
        alice pushes to and pulls from a repository her rule covers; the
        manifest comes back byte for byte.
        """
        await self.push("team/app")
        self.assertEqual(await self.inspectRaw("team/app"), self.manifestBytes())
        self.assertIn(
            ("alice", 200, ("repository:team/app:pull,push",)), self.tokens.answers
        )

    async def test_badPassword(self) -> None:
        """
        A wrong password gets 401 from our endpoint, and skopeo fails.
        """
        with self.assertRaises(ClientFailed) as e:
            await self.push("team/app", creds=("alice", "looking-glass"))
        self.assertIn("invalid username/password", str(e.exception))
        self.assertEqual({code for _, code, _ in self.tokens.answers}, {401})

    async def test_outsideRules(self) -> None:
        """
        A repository outside alice's rules gets an empty grant, which the
        registry refuses.
        """
        with self.assertRaises(ClientFailed) as e:
            await self.push("other/app")
        self.assertIn("requested access to the resource is denied", str(e.exception))
        self.assertIn(("alice", 200, ()), self.tokens.answers)

    async def test_anonymousRule(self) -> None:
        """
        Anonymous clients may pull what the anonymous rule allows, and not
        the rest.
        """
        await self.push("public/tool")
        await self.push("team/secret")
        self.assertEqual(
            await self.inspectRaw("public/tool", creds=None), self.manifestBytes()
        )
        with self.assertRaises(ClientFailed) as e:
            await self.inspectRaw("team/secret", creds=None)
        self.assertIn("unauthorized", str(e.exception).lower())
