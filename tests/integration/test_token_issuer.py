# -*- test-case-name: tests.integration.test_token_issuer -*-
"""
Our ES256 token issuer (L{regproxy.tokens}) against a real distribution
registry in token mode, whose C{rootcertbundle} is the certificate that
L{regproxy.tokens.generateIssuerKeyAndCertificate} made.

This is the proof that the header (C{kid}, C{x5c}), the claims (string
C{aud}, C{exp}, C{access}) and the raw signature are what the registry
accepts, and that it refuses what it should.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile

from twisted.internet.task import Clock
from twisted.trial.unittest import SkipTest, TestCase
from twisted.web.resource import Resource
from twisted.web.server import Site

from regproxy.scope import Scope, parseScopes
from regproxy.tokens import (
    TokenIssuer,
    certificatePEM,
    generateIssuerKeyAndCertificate,
    tokenResponseBody,
)

from .clients import httpClient
from .registry import STARTUP_TIMEOUT, RegistryFailed, RegistryProcess, freePort

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


async def startTokenRegistry(testCase, issuer: TokenIssuer, certificatePEMBytes: bytes, reactor):
    """
    Start a token endpoint backed by C{issuer} and a registry that trusts
    C{certificatePEMBytes}; both live until C{testCase} ends.

    @return: The registry's base URL and the token resource.
    """
    if shutil.which("docker-registry") is None:
        raise SkipTest("docker-registry is not installed (apt-get install docker-registry)")
    directory = tempfile.mkdtemp(prefix="registry-issuer-")
    testCase.addCleanup(shutil.rmtree, directory, True)
    bundle = os.path.join(directory, f"{ISSUER}.crt")
    with open(bundle, "wb") as f:
        f.write(certificatePEMBytes)

    tokens = IssuerTokenResource(issuer)
    root = Resource()
    root.putChild(b"token", tokens)
    site = Site(root)
    site.noisy = False
    listening = reactor.listenTCP(0, site, interface="127.0.0.1")
    testCase.addCleanup(listening.stopListening)
    realm = f"http://127.0.0.1:{listening.getHost().port}/token"

    for attempt in range(3):
        port = freePort()
        config = {
            "version": 0.1,
            "log": {"level": "info", "formatter": "text", "accesslog": {"disabled": True}},
            "storage": {
                "filesystem": {"rootdirectory": os.path.join(directory, "storage")},
                "maintenance": {"uploadpurging": {"enabled": False}},
            },
            "http": {"addr": f"127.0.0.1:{port}", "secret": "issuer-test"},
            "auth": {
                "token": {
                    "realm": realm,
                    "service": SERVICE,
                    "issuer": ISSUER,
                    "rootcertbundle": bundle,
                }
            },
        }
        configFile = os.path.join(directory, "config.yml")
        with open(configFile, "w") as f:
            json.dump(config, f)  # JSON is YAML
        process = RegistryProcess()
        program = shutil.which("docker-registry")
        reactor.spawnProcess(
            process,
            program,
            [program, "serve", configFile],
            env={"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": directory},
        )
        timeout = reactor.callLater(
            STARTUP_TIMEOUT,
            lambda p=process: p.listening.called
            or p.listening.errback(RegistryFailed("registry did not listen:\n" + p.output())),
        )
        try:
            await process.listening
        except RegistryFailed:
            await process.stop()
            if "address already in use" in process.output() and attempt < 2:
                continue
            raise
        finally:
            if timeout.active():
                timeout.cancel()
        testCase.addCleanup(process.stop)
        return f"http://127.0.0.1:{port}", tokens, process
    raise AssertionError("unreachable")


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
            self, self.issuer, certificatePEM(self.certificate), reactor
        )
        self.http = httpClient(self)

    async def _tagsList(self, token: str | None, name: str = "foo"):
        headers = {} if token is None else {"Authorization": f"Bearer {token}"}
        response = await self.http.get(f"{self.url}/v2/{name}/tags/list", headers=headers)
        body = await response.content()
        return response, body

    def _token(self, *scopes: Scope, issuer: TokenIssuer | None = None, audience: str = SERVICE) -> str:
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
            f"{self.url}/v2/foo/blobs/uploads/", headers={"Authorization": f"Bearer {token}"}
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
        self.assertEqual(set(body), {"token", "access_token", "expires_in", "issued_at"})
        self.assertRegex(body["issued_at"], r"\A\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ\Z")
        response, body = await self._tagsList(body["token"])
        self.assertEqual(response.code, 404, body)

    async def test_kidAlone(self) -> None:
        """
        Without C{x5c} the registry finds our key by its libtrust C{kid}
        among the keys of its C{rootcertbundle}: the kid is right.
        """
        issuer = KidOnlyIssuer(ISSUER, self.key, [self.certificate], self.reactor)
        response, body = await self._tagsList(self._token(self._pullPush("foo"), issuer=issuer))
        self.assertEqual(response.code, 404, (body, self.process.output()))

    async def test_wrongKid(self) -> None:
        """
        Without C{x5c}, a kid that is not the libtrust fingerprint gets 401
        (so L{test_kidAlone} shows the kid is checked).
        """
        issuer = WrongKidIssuer(ISSUER, self.key, [self.certificate], self.reactor)
        response, body = await self._tagsList(self._token(self._pullPush("foo"), issuer=issuer))
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
        response, body = await self._tagsList(self._token(self._pullPush("foo"), issuer=stranger))
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
        response, body = await self._tagsList(self._token(self._pullPush("foo"), issuer=old))
        self.assertEqual(response.code, 401, body)
