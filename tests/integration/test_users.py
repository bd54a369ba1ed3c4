# -*- test-case-name: tests.integration.test_users -*-
"""
regproxy's own users (bcrypt htpasswd) and access rules as the front door
of a real distribution registry, with skopeo as the client.

Three upstreams: an open registry (regproxy is the only lock), a registry
with its own Basic logins over HTTPS, and a registry in token mode with the
harness's token server.  The last two know only regproxy's service
account: clients authenticate to regproxy alone.
"""

from __future__ import annotations

import base64
import json
import os

from twisted.trial.unittest import TestCase
from zope.interface import directlyProvides, providedBy

from .clients import ClientFailed, Skopeo, httpClient
from .forwarding import OneImageClient, temporaryDirectory
from .oci import blobPath, writeImage
from .proxy import startProxy
from .registry import startRegistry, writeHtpasswd

PASSWORDS = {"alice": "wonderland", "bob": "builder"}
SERVICE_ACCOUNT = ("svc", "svc-secret")
RULES = """
[[rule]]
users = ["alice"]
repositories = ["team/**", "public/*", "shared/*"]
actions = ["pull", "push"]

[[rule]]
users = ["*"]
repositories = ["shared/*"]
actions = ["pull"]

[[rule]]
users = ["<anonymous>"]
repositories = ["public/*"]
actions = ["pull"]

[[rule]]
users = ["alice", "bob"]
catalog = true

[[rule]]
users = ["bob"]
repositories = ["bob/*"]
actions = ["pull", "push"]
"""


class ShiftedReactor:
    """
    The real reactor, with a clock the test can move forward: regproxy
    looks at its htpasswd file again only after a few seconds, and a test
    should not wait for them.
    """

    def __init__(self, reactor) -> None:
        self._reactor = reactor
        self.offset = 0.0
        directlyProvides(self, providedBy(reactor))

    def seconds(self) -> float:
        return self._reactor.seconds() + self.offset

    def advance(self, seconds: float) -> None:
        self.offset += seconds

    def __getattr__(self, name: str):
        return getattr(self._reactor, name)


class FrontDoorTests(OneImageClient):
    """
    Push and pull through regproxy with its own users, for a L{TestCase}
    that starts the registry (C{startRegistry}) and regproxy's settings.
    """

    timeout = 180

    async def setUp(self) -> None:
        from twisted.internet import reactor

        self.reactor = ShiftedReactor(reactor)
        self.directory = temporaryDirectory(self, "users-")
        self.htpasswd = os.path.join(self.directory, "htpasswd")
        writeHtpasswd(self.htpasswd, PASSWORDS)
        self.access = os.path.join(self.directory, "access.toml")
        with open(self.access, "w") as f:
            f.write(RULES)
        self.registry = await self.startRegistry()
        self.proxy = startProxy(
            self,
            self.registry,
            reactor=self.reactor,
            htpasswd=self.htpasswd,
            access=self.access,
            **self.proxySettings(),
        )
        self.skopeo = Skopeo(self)
        self.layout = temporaryDirectory(self, "oci-")
        self.image = writeImage(self.layout, "v1", [1000, 30000], seed="users")

    async def startRegistry(self):
        raise NotImplementedError()

    def proxySettings(self) -> dict:
        return {}

    # Helpers.

    def reference(self, repository: str) -> str:
        return self.proxy.reference(repository, "v1")

    # Tests.

    async def test_pushAndPull(self) -> None:
        """
        alice pushes through regproxy and pulls back: the manifest byte for
        byte, and every blob into a new layout.
        """
        await self.push("team/app")
        self.assertEqual(await self.inspectRaw("team/app"), self.manifestBytes())
        destination = temporaryDirectory(self, "oci-pulled-")
        await self.skopeo.copy(
            self.proxy.reference("team/app", "v1"),
            f"oci:{destination}:v1",
            srcTLSVerify=False,
            srcCreds=("alice", "wonderland"),
        )
        for blob in [self.image.manifest, self.image.config, *self.image.layers]:
            self.assertTrue(os.path.exists(blobPath(destination, blob.digest)))

    async def test_badPassword(self) -> None:
        """
        A wrong password: skopeo fails, and C{/token} answers 401 in
        registry JSON.
        """
        with self.assertRaises(ClientFailed) as caught:
            await self.push("team/app", creds=("alice", "looking-glass"))
        self.assertIn("invalid username/password", str(caught.exception))

        http = httpClient(self)
        response = await http.get(
            self.proxy.url + "/token",
            params={"service": "regproxy", "scope": "repository:team/app:pull"},
            headers={
                "Authorization": [
                    "Basic " + base64.b64encode(b"alice:looking-glass").decode()
                ]
            },
        )
        body = json.loads(await response.content())
        self.assertEqual(response.code, 401)
        self.assertEqual(body["errors"][0]["code"], "UNAUTHORIZED")

    async def test_outsideRules(self) -> None:
        """
        A repository outside the user's rules is denied, for pushes and
        pulls.
        """
        with self.assertRaises(ClientFailed) as caught:
            await self.push("other/app")
        self.assertIn(
            "requested access to the resource is denied", str(caught.exception)
        )
        await self.push("team/app")
        with self.assertRaises(ClientFailed):
            await self.inspectRaw("team/app", creds=("bob", "builder"))

    async def test_anonymousRule(self) -> None:
        """
        Anonymous clients pull C{public/*} and nothing else.
        """
        await self.push("public/tool")
        await self.push("team/secret")
        self.assertEqual(
            await self.inspectRaw("public/tool", creds=None), self.manifestBytes()
        )
        with self.assertRaises(ClientFailed) as caught:
            await self.inspectRaw("team/secret", creds=None)
        self.assertIn("unauthorized", str(caught.exception).lower())

    async def catalog(self, user: str, query: str = "") -> tuple[int, dict, list]:
        """
        What C{user} gets for C{/v2/_catalog}: status, body, C{Link}.
        """
        http = httpClient(self)
        credentials = f"{user}:{PASSWORDS[user]}".encode()
        response = await http.get(
            self.proxy.url + "/token",
            params={"service": "regproxy", "scope": "registry:catalog:*"},
            headers={
                "Authorization": ["Basic " + base64.b64encode(credentials).decode()]
            },
        )
        token = json.loads(await response.content())["token"]
        response = await http.get(
            self.proxy.url + "/v2/_catalog" + query,
            headers={"Authorization": ["Bearer " + token]},
        )
        body = json.loads(await response.content())
        return response.code, body, response.headers.getRawHeaders("link", [])

    async def test_catalog(self) -> None:
        """
        The real registry's catalog, filtered by the rules: alice lists
        what she may pull, bob (shared/* and the anonymous public/*) less,
        a page at a time with the Link distribution sends.
        """
        for repository in ("team/app", "shared/tool", "public/tool"):
            await self.push(repository)
        code, body, _ = await self.catalog("alice")
        self.assertEqual(code, 200, body)
        self.assertEqual(
            body["repositories"], ["public/tool", "shared/tool", "team/app"]
        )
        code, body, link = await self.catalog("bob", "?n=1")
        self.assertEqual((code, body["repositories"]), (200, ["public/tool"]))
        self.assertEqual(link, ['</v2/_catalog?n=1&last=public%2Ftool>; rel="next"'])
        code, body, link = await self.catalog("bob", "?n=1&last=public%2Ftool")
        self.assertEqual((body["repositories"], link), (["shared/tool"], []))

    async def test_mountNeedsPull(self) -> None:
        """
        bob may push to C{bob/*} but not pull C{team/secret}: a mount of
        one of its layers into his repository starts an ordinary upload
        (202) instead of copying it (201), and the layer is not his to
        download.
        """
        await self.push("team/secret")
        layer = self.image.layers[0].digest
        http = httpClient(self)
        response = await http.get(
            self.proxy.url + "/token",
            params=[
                ("service", "regproxy"),
                ("scope", "repository:bob/x:pull,push"),
                ("scope", "repository:team/secret:pull"),
            ],
            headers={
                "Authorization": ["Basic " + base64.b64encode(b"bob:builder").decode()]
            },
        )
        self.assertEqual(response.code, 200)
        bearer = "Bearer " + json.loads(await response.content())["token"]
        mount = await http.post(
            self.proxy.url + f"/v2/bob/x/blobs/uploads/?mount={layer}&from=team/secret",
            headers={"Authorization": [bearer]},
        )
        await mount.content()
        self.assertEqual(mount.code, 202)
        blob = await http.get(
            self.proxy.url + f"/v2/bob/x/blobs/{layer}",
            headers={"Authorization": [bearer]},
        )
        body = json.loads(await blob.content())
        self.assertEqual(blob.code, 404)
        self.assertEqual(body["errors"][0]["code"], "BLOB_UNKNOWN")

    async def test_newUserPickedUp(self) -> None:
        """
        A user added to the htpasswd file while regproxy runs can log in
        once regproxy looks at the file again (a few seconds; the test moves
        regproxy's clock instead of waiting), without a restart.
        """
        await self.push("shared/tool")
        with self.assertRaises(ClientFailed) as caught:
            await self.inspectRaw("shared/tool", creds=("carol", "chess"))
        self.assertIn("invalid username/password", str(caught.exception))
        writeHtpasswd(self.htpasswd, {**PASSWORDS, "carol": "chess"})
        self.reactor.advance(30)
        self.assertEqual(
            await self.inspectRaw("shared/tool", creds=("carol", "chess")),
            self.manifestBytes(),
        )


class OpenRegistryTests(FrontDoorTests, TestCase):
    """
    In front of an open registry, regproxy is the only lock.
    """

    async def startRegistry(self):
        return await startRegistry(self, mode="open")

    def test_nonBcryptRefused(self) -> None:
        """
        An htpasswd file with an entry of another scheme stops start-up with
        a message naming the line and the scheme.
        """
        path = os.path.join(self.directory, "mixed")
        with open(self.htpasswd, "rb") as f:
            good = f.read()
        with open(path, "wb") as f:
            f.write(good + b"carol:{SHA}W6ph5Mm5Pz8GgiULbPgzG37mj9g=\n")
        with self.assertRaises(ValueError) as caught:
            startProxy(self, self.registry, htpasswd=path)
        message = str(caught.exception)
        self.assertIn("line 3", message)
        self.assertIn("{SHA}", message)
        self.assertIn("only bcrypt", message)
        self.assertNotIn("W6ph5Mm5Pz8GgiULbPgzG37mj9g", message)


class TokenRegistryTests(FrontDoorTests, TestCase):
    """
    In front of a registry in token mode whose token server knows only
    regproxy's service account: clients log in to regproxy, regproxy logs
    in upstream for them.
    """

    async def startRegistry(self):
        return await startRegistry(
            self, mode="token", users=dict([SERVICE_ACCOUNT]), anonymous="none"
        )

    def proxySettings(self) -> dict:
        passwordFile = os.path.join(self.directory, "upstream-password")
        with open(passwordFile, "w") as f:
            f.write(SERVICE_ACCOUNT[1] + "\n")
        return {
            "upstream_user": SERVICE_ACCOUNT[0],
            "upstream_password_file": passwordFile,
        }

    async def test_onlyServiceAccountUpstream(self) -> None:
        """
        The registry's token server only ever sees regproxy's service
        account, never the clients' own logins.
        """
        await self.push("team/app")
        await self.inspectRaw("team/app")
        accounts = {request.account for request in self.registry.tokenServer.requests}
        self.assertEqual(accounts, {SERVICE_ACCOUNT[0]})

    async def test_registryRefusesAnonymous(self) -> None:
        """
        The registry itself refuses anonymous pulls, so the anonymous rule
        is regproxy's doing.
        """
        await self.push("public/tool")
        with self.assertRaises(ClientFailed):
            await self.skopeo.inspectRaw(
                f"docker://{self.registry.host}/public/tool:v1",
                tlsVerify=False,
                creds=None,
            )
        self.assertEqual(
            await self.inspectRaw("public/tool", creds=None), self.manifestBytes()
        )


class BasicRegistryTests(FrontDoorTests, TestCase):
    """
    In front of a registry with its own htpasswd logins over HTTPS, which
    knows only regproxy's service account.
    """

    async def startRegistry(self):
        return await startRegistry(
            self, mode="htpasswd-tls", users=dict([SERVICE_ACCOUNT])
        )

    def proxySettings(self) -> dict:
        return {
            "upstream_user": SERVICE_ACCOUNT[0],
            "upstream_password": SERVICE_ACCOUNT[1],
        }

    async def test_registryDoesNotKnowAlice(self) -> None:
        """
        alice's login works only at regproxy: the registry itself refuses
        it, so everything she did went up as the service account.
        """
        await self.push("team/app")
        with self.assertRaises(ClientFailed) as caught:
            await self.skopeo.inspectRaw(
                f"docker://{self.registry.host}/team/app:v1",
                certDir=self.registry.certDir,
                creds=("alice", "wonderland"),
            )
        self.assertIn("unauthorized", str(caught.exception).lower())
        self.assertEqual(await self.inspectRaw("team/app"), self.manifestBytes())
