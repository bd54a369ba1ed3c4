# -*- test-case-name: tests.integration.test_token_server -*-
"""
regproxy as the token server of a distribution registry, set up the way
openBalena sets up its registry: C{regproxy gen-token-auth-cert ISSUER}
makes the key, certificate and kid; the registry runs in token mode with
that certificate as its C{rootcertbundle} and regproxy's C{/token} as its
realm; regproxy serves C{/token} with its own users and access rules.

Clients (skopeo) talk to the registry directly, never through regproxy:
only their token requests go to regproxy.  The same setup runs twice:
with the key given as files (C{token_key}, C{token_cert}), and with
openBalena's base64 C{REGISTRY_TOKEN_AUTH_*} variables.
"""

from __future__ import annotations

import base64
import json
import os
import sys
from urllib.parse import urlencode

import attrs
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from twisted.trial.unittest import TestCase

from .clients import ClientFailed, Skopeo, httpClient, runProcess
from .forwarding import OneImageClient, temporaryDirectory
from .oci import blobPath, writeImage
from .proxy import startProxy
from .registry import writeHtpasswd
from .tokenregistry import TokenAuth, startTokenModeRegistry

ISSUER = "api.regproxy.test"
SERVICE = "registry.regproxy.test"
PASSWORDS = {"alice": "wonderland", "bob": "builder", "frontdoor": "front-secret"}
RULES = """
[[rule]]
users = ["frontdoor"]
repositories = ["**"]
actions = ["pull", "push"]

[[rule]]
users = ["alice"]
repositories = ["team/**", "public/*"]
actions = ["pull", "push"]

[[rule]]
users = ["bob"]
repositories = ["team/app"]
actions = ["pull"]

[[rule]]
users = ["<anonymous>"]
repositories = ["public/*"]
actions = ["pull"]
"""
OPENBALENA_VARIABLES = (
    "REGISTRY_TOKEN_AUTH_CERT",
    "REGISTRY_TOKEN_AUTH_CERT_KEY",
    "REGISTRY_TOKEN_AUTH_CERT_KID",
    "REGISTRY_TOKEN_AUTH_CERT_ISSUER",
    "REGISTRY_TOKEN_AUTH_JWT_ALGO",
)
REPOSITORY_ROOT = os.path.dirname(
    os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
)


@attrs.frozen
class NoUpstream:
    """
    What regproxy forwards C{/v2} to in these tests: nothing listens there,
    because clients go to the registry directly.
    """

    url: str = "http://127.0.0.1:9"
    caFile: None = None


def jwtPart(token: str, index: int) -> dict:
    segment = token.split(".")[index]
    return json.loads(base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4)))


def writeUsers(directory: str) -> tuple[str, str]:
    """
    Write the htpasswd file (bcrypt, low cost for speed) and the rules.
    """
    htpasswd = os.path.join(directory, "htpasswd")
    writeHtpasswd(htpasswd, PASSWORDS)
    access = os.path.join(directory, "access.toml")
    with open(access, "w") as f:
        f.write(RULES)
    return htpasswd, access


async def genTokenAuthCert(directory: str) -> dict[str, str]:
    """
    Run C{regproxy gen-token-auth-cert} as a user would, and return the
    registry settings it printed.
    """
    result = await runProcess(
        [
            sys.executable,
            "-m",
            "regproxy.cli",
            "gen-token-auth-cert",
            ISSUER,
            "--out",
            directory,
            "--service",
            SERVICE,
        ],
        {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "HOME": directory,
            "PYTHONPATH": REPOSITORY_ROOT,
        },
        timeout=60,
    )
    printed = {}
    for line in result.stdout.decode().splitlines():
        name, sep, value = line.strip().partition("=")
        if sep and name.startswith("REGISTRY_AUTH"):
            printed[name] = value
    return printed


class TokenServerTests(OneImageClient):
    """
    skopeo against a registry in token mode whose token server is
    regproxy; for a L{TestCase} that says how regproxy gets its key.
    """

    timeout = 180

    async def setUp(self) -> None:
        self.directory = temporaryDirectory(self, "token-server-")
        self.printed = await genTokenAuthCert(self.directory)
        self.files = {
            ext: os.path.join(self.directory, f"{ISSUER}.{ext}")
            for ext in ("crt", "pem", "kid")
        }
        self.htpasswd, self.access = writeUsers(self.directory)
        self.proxy = self.startIssuer(htpasswd=self.htpasswd, access=self.access)
        self.registry = await startTokenModeRegistry(
            self,
            TokenAuth(
                realm=self.proxy.url + "/token",
                service=self.printed["REGISTRY_AUTH_TOKEN_SERVICE"],
                issuer=self.printed["REGISTRY_AUTH_TOKEN_ISSUER"],
                bundleFile=self.printed["REGISTRY_AUTH_TOKEN_ROOTCERTBUNDLE"],
            ),
        )
        self.skopeo = Skopeo(self)
        self.layout = temporaryDirectory(self, "oci-")
        self.image = writeImage(self.layout, "v1", [1000, 20000], seed="token-server")

    def startIssuer(self, **settings):
        raise NotImplementedError()

    # Helpers.

    def reference(self, repository: str) -> str:
        return f"docker://{self.registry.host}/{repository}:v1"

    def failureText(self, failure: ClientFailed) -> str:
        return str(failure) + "\nregistry:\n" + self.registry.output[-3000:]

    # Tests.

    def test_gencertPrintsRegistrySettings(self) -> None:
        """
        The command wrote the three files and printed the registry settings
        these tests use (issuer, service and the certificate bundle).
        """
        self.assertEqual(
            self.printed["REGISTRY_AUTH_TOKEN_ROOTCERTBUNDLE"], self.files["crt"]
        )
        self.assertEqual(self.printed["REGISTRY_AUTH_TOKEN_ISSUER"], ISSUER)
        self.assertEqual(self.printed["REGISTRY_AUTH_TOKEN_SERVICE"], SERVICE)
        self.assertEqual(self.printed["REGISTRY_AUTH"], "token")
        for path in self.files.values():
            self.assertTrue(os.path.isfile(path), path)

    async def test_pushAndPull(self) -> None:
        """
        alice pushes to a repository her rule covers and pulls it back:
        the manifest byte for byte, the image into a new layout.
        """
        await self.push("team/app")
        self.assertEqual(await self.inspectRaw("team/app"), self.manifestBytes())
        destination = temporaryDirectory(self, "oci-pulled-")
        await self.skopeo.copy(
            self.reference("team/app"),
            f"oci:{destination}:v1",
            srcTLSVerify=False,
            srcCreds=("alice", "wonderland"),
        )
        for blob in [self.image.manifest, self.image.config, *self.image.layers]:
            self.assertTrue(os.path.exists(blobPath(destination, blob.digest)))

    async def test_pullOnlyUser(self) -> None:
        """
        bob, whose rule only allows pulls, pulls alice's image and cannot
        push.
        """
        await self.push("team/app")
        self.assertEqual(
            await self.inspectRaw("team/app", creds=("bob", "builder")),
            self.manifestBytes(),
        )
        with self.assertRaises(ClientFailed) as caught:
            await self.push("team/app", creds=("bob", "builder"))
        self.assertIn("denied", str(caught.exception).lower())

    async def test_badPassword(self) -> None:
        """
        A wrong password gets 401 from regproxy, and skopeo fails saying so.
        """
        with self.assertRaises(ClientFailed) as caught:
            await self.push("team/app", creds=("alice", "looking-glass"))
        self.assertIn("invalid username/password", self.failureText(caught.exception))

    async def test_outsideRules(self) -> None:
        """
        A repository outside alice's rules is denied: regproxy grants
        nothing for it, and the registry refuses.
        """
        with self.assertRaises(ClientFailed) as caught:
            await self.push("other/app")
        self.assertIn(
            "requested access to the resource is denied",
            self.failureText(caught.exception),
        )

    async def test_anonymousRule(self) -> None:
        """
        Without credentials, C{public/*} can be pulled and nothing else.
        """
        await self.push("public/tool")
        await self.push("team/secret")
        self.assertEqual(
            await self.inspectRaw("public/tool", creds=None), self.manifestBytes()
        )
        with self.assertRaises(ClientFailed) as caught:
            await self.inspectRaw("team/secret", creds=None)
        self.assertIn("unauthorized", str(caught.exception).lower())

    async def test_login(self) -> None:
        """
        C{skopeo login} (the registry's challenge answered with a token
        request without a scope) succeeds with good credentials and fails
        with a wrong password.
        """
        result = await self.skopeo.run(
            "login",
            "--tls-verify=false",
            "--username",
            "alice",
            "--password",
            "wonderland",
            self.registry.host,
        )
        self.assertIn(b"Login Succeeded", result.stdout)
        with self.assertRaises(ClientFailed):
            await self.skopeo.run(
                "login",
                "--tls-verify=false",
                "--username",
                "alice",
                "--password",
                "looking-glass",
                self.registry.host,
            )

    async def test_tokenShape(self) -> None:
        """
        The token regproxy signs for the registry: ES256, the kid the
        command wrote, our certificate as the C{x5c} leaf; C{iss}, C{sub},
        C{aud} (the registry's service, a string), C{exp}, C{nbf}, C{iat},
        a unique C{jti}, and the granted C{access}.
        """
        http = httpClient(self)
        query = urlencode(
            {"service": SERVICE, "scope": "repository:team/app:pull,push,delete"}
        )
        credentials = base64.b64encode(b"alice:wonderland").decode()
        tokens = []
        for _ in range(2):
            response = await http.get(
                f"{self.proxy.url}/token?{query}",
                headers={"Authorization": [f"Basic {credentials}"]},
            )
            body = json.loads(await response.content())
            self.assertEqual(response.code, 200, body)
            tokens.append(body["token"])
        header, claims = jwtPart(tokens[0], 0), jwtPart(tokens[0], 1)
        with open(self.files["kid"]) as f:
            kid = f.read().strip()
        with open(self.files["crt"], "rb") as f:
            certificate = x509.load_pem_x509_certificate(f.read())
        self.assertEqual(header["alg"], "ES256")
        self.assertEqual(header["kid"], kid)
        self.assertEqual(
            base64.b64decode(header["x5c"][0]),
            certificate.public_bytes(serialization.Encoding.DER),
        )
        self.assertEqual(claims["iss"], ISSUER)
        self.assertEqual(claims["sub"], "alice")
        self.assertEqual(claims["aud"], SERVICE)
        self.assertLessEqual(claims["nbf"], claims["iat"])
        self.assertGreater(claims["exp"], claims["iat"])
        self.assertEqual(
            claims["access"],
            [{"type": "repository", "name": "team/app", "actions": ["pull", "push"]}],
        )
        self.assertNotEqual(claims["jti"], jwtPart(tokens[1], 1)["jti"])
        self.assertEqual(
            len(base64.urlsafe_b64decode(tokens[0].split(".")[2] + "==")), 64
        )

    async def test_frontDoorToTheSameRegistry(self) -> None:
        """
        A second regproxy, with the same users and rules, as the front door
        of this registry: it logs in upstream as its own account (at the
        first regproxy's C{/token}); clients log in to it.  alice pushes and
        pulls through it, the image is in the registry, an anonymous client
        pulls only C{public/*} through it.
        """
        front = startProxy(
            self,
            self.registry,
            htpasswd=self.htpasswd,
            access=self.access,
            upstream_user="frontdoor",
            upstream_password=PASSWORDS["frontdoor"],
        )
        for repository in ["team/app", "public/tool"]:
            await self.skopeo.copy(
                self.image.reference,
                front.reference(repository, "v1"),
                destTLSVerify=False,
                destCreds=("alice", "wonderland"),
            )
        self.assertEqual(
            await self.skopeo.inspectRaw(
                front.reference("team/app", "v1"),
                tlsVerify=False,
                creds=("alice", "wonderland"),
            ),
            self.manifestBytes(),
        )
        self.assertEqual(await self.inspectRaw("team/app"), self.manifestBytes())
        self.assertEqual(
            await self.skopeo.inspectRaw(
                front.reference("public/tool", "v1"), tlsVerify=False
            ),
            self.manifestBytes(),
        )
        with self.assertRaises(ClientFailed):
            await self.skopeo.inspectRaw(
                front.reference("team/app", "v1"), tlsVerify=False
            )

    async def test_refreshTokenGrant(self) -> None:
        """
        The OAuth2 password grant with C{access_type=offline} gives a
        refresh token; the refresh grant gives an access token the registry
        accepts.
        """
        http = httpClient(self)
        form = {
            "grant_type": "password",
            "username": "alice",
            "password": "wonderland",
            "service": SERVICE,
            "client_id": "regproxy-tests",
            "access_type": "offline",
            "scope": "repository:team/app:pull",
        }
        response = await http.post(f"{self.proxy.url}/token", data=form)
        body = json.loads(await response.content())
        self.assertEqual(response.code, 200, body)
        refresh = body["refresh_token"]
        response = await http.post(
            f"{self.proxy.url}/token",
            data={
                "grant_type": "refresh_token",
                "refresh_token": refresh,
                "service": SERVICE,
                "client_id": "regproxy-tests",
                "scope": "repository:team/app:pull",
            },
        )
        body = json.loads(await response.content())
        self.assertEqual(response.code, 200, body)
        response = await http.get(
            f"{self.registry.url}/v2/team/app/tags/list",
            headers={"Authorization": [f"Bearer {body['access_token']}"]},
        )
        answer = json.loads(await response.content())
        # The repository is empty: the registry let us in and found nothing.
        self.assertEqual(response.code, 404, (answer, self.registry.output[-2000:]))
        self.assertEqual(answer["errors"][0]["code"], "NAME_UNKNOWN")


class KeyFilesTests(TokenServerTests, TestCase):
    """
    regproxy given C{token_issuer}, C{token_key} and C{token_cert}.
    """

    def startIssuer(self, **settings):
        return startProxy(
            self,
            NoUpstream(),
            token_issuer=ISSUER,
            token_key=self.files["pem"],
            token_cert=self.files["crt"],
            **settings,
        )


def openBalenaVariables(files: dict[str, str]) -> dict[str, str]:
    """
    The variables openBalena sets for its API, from the command's files
    (C{base64 -w0 FILE}).
    """

    def encoded(path: str) -> str:
        with open(path, "rb") as f:
            return base64.b64encode(f.read()).decode("ascii")

    return {
        "REGISTRY_TOKEN_AUTH_CERT": encoded(files["crt"]),
        "REGISTRY_TOKEN_AUTH_CERT_KEY": encoded(files["pem"]),
        "REGISTRY_TOKEN_AUTH_CERT_KID": encoded(files["kid"]),
        "REGISTRY_TOKEN_AUTH_CERT_ISSUER": ISSUER,
        "REGISTRY_TOKEN_AUTH_JWT_ALGO": "ES256",
    }


def startWithEnvironment(testCase, variables: dict[str, str], **settings):
    """
    Start regproxy with C{variables} in its environment, as a container
    given openBalena's variables starts it.  They are read once, when the
    site is made, and taken out again at once so nothing else sees them.
    """
    saved = {name: os.environ.get(name) for name in OPENBALENA_VARIABLES}
    os.environ.update(variables)
    try:
        return startProxy(testCase, NoUpstream(), **settings)
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


class OpenBalenaVariablesTests(TokenServerTests, TestCase):
    """
    regproxy given openBalena's C{REGISTRY_TOKEN_AUTH_*} variables
    instead of files.
    """

    def startIssuer(self, **settings):
        return startWithEnvironment(self, openBalenaVariables(self.files), **settings)


class OpenBalenaVariablesRefusedTests(TestCase):
    """
    Variables that do not fit together stop start-up with a message that
    names the variable and never shows the key.
    """

    async def test_wrongKid(self) -> None:
        directory = temporaryDirectory(self, "token-server-")
        await genTokenAuthCert(directory)
        files = {
            ext: os.path.join(directory, f"{ISSUER}.{ext}")
            for ext in ("crt", "pem", "kid")
        }
        variables = openBalenaVariables(files)
        variables["REGISTRY_TOKEN_AUTH_CERT_KID"] = base64.b64encode(
            b"AAAA:BBBB:CCCC:DDDD:EEEE:FFFF:GGGG:HHHH:IIII:JJJJ:KKKK:LLLL"
        ).decode()
        htpasswd, access = writeUsers(directory)
        before = {name: os.environ.get(name) for name in OPENBALENA_VARIABLES}
        with self.assertRaises(ValueError) as caught:
            startWithEnvironment(self, variables, htpasswd=htpasswd, access=access)
        message = str(caught.exception)
        self.assertIn("REGISTRY_TOKEN_AUTH_CERT_KID", message)
        self.assertNotIn(variables["REGISTRY_TOKEN_AUTH_CERT_KEY"][:40], message)
        self.assertEqual(
            {name: os.environ.get(name) for name in OPENBALENA_VARIABLES}, before
        )
