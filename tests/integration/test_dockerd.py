# -*- test-case-name: tests.integration.test_dockerd -*-
"""
The Docker CLI's story: registries without a token flow, and regproxy's
own users, with skopeo, a plain HTTP client and the real Docker daemon.

A registry such as Zot with anonymous read answers the C{/v2/} ping with
401 and a Basic challenge while its repositories are readable without
credentials; the Docker daemon then wants a login it cannot get.  regproxy
in front (default broker, no users of its own) answers every client with
a Bearer challenge and anonymous tokens, and reads the repositories
anonymously.  L{tests.integration.zotfront} plays Zot, in front of an open
distribution registry that the tests push to directly.
"""

from __future__ import annotations

import base64
import json
import os

from twisted.trial.unittest import TestCase

from regproxy.names.challenge import parseChallenges

from .clients import ClientFailed, Skopeo, httpClient
from .dockerd import startDockerd
from .forwarding import readBlob, temporaryDirectory
from .oci import blobPath, writeImage
from .proxy import startProxy
from .registry import startRegistry, writeHtpasswd
from .zotfront import startZotFront

RULES = """
[[rule]]
users = ["alice"]
repositories = ["team/**"]
actions = ["pull", "push"]
"""


class ZotTestCase(TestCase):
    """
    An open registry holding one image, the Zot-like front before it, and
    regproxy before the front.
    """

    timeout = 240

    async def setUp(self) -> None:
        self.registry = await startRegistry(self, mode="open")
        self.zot = startZotFront(self, self.registry)
        self.proxy = startProxy(self, self.zot)
        self.skopeo = Skopeo(self)
        self.layout = temporaryDirectory(self, "oci-")
        self.image = writeImage(self.layout, "v1", [2000, 40000], seed="zot")
        await self.skopeo.copy(
            self.image.reference,
            f"docker://{self.registry.host}/lib/app:v1",
            destTLSVerify=False,
        )

    def manifestBytes(self) -> bytes:
        return readBlob(self.layout, self.image.digest)


class NoTokenFlowTests(ZotTestCase):
    """
    skopeo and a plain HTTP client through regproxy before a registry
    without a token flow.
    """

    async def test_frontLooksLikeZot(self) -> None:
        """
        The front itself answers the ping with a Basic challenge and serves
        manifests without credentials, as Zot with anonymous read does.
        """
        http = httpClient(self)
        response = await http.get(self.zot.url + "/v2/")
        await response.content()
        self.assertEqual(response.code, 401)
        self.assertEqual(
            response.headers.getRawHeaders("www-authenticate"), ['Basic realm="zot"']
        )
        response = await http.get(
            self.zot.url + "/v2/lib/app/manifests/v1",
            headers={"Accept": ["application/vnd.oci.image.manifest.v1+json"]},
        )
        self.assertEqual(await response.content(), self.manifestBytes())

    async def test_skopeoPullsAnonymously(self) -> None:
        """
        skopeo without credentials copies the image through regproxy; the
        front only ever sees anonymous requests.
        """
        destination = temporaryDirectory(self, "oci-pulled-")
        await self.skopeo.copy(
            self.proxy.reference("lib/app", "v1"),
            f"oci:{destination}:v1",
            srcTLSVerify=False,
            srcCreds=None,
            extra=["--src-no-creds"],
        )
        for blob in [self.image.manifest, self.image.config, *self.image.layers]:
            self.assertTrue(os.path.exists(blobPath(destination, blob.digest)))
        repositoryRequests = [s for s in self.zot.seen if s.path != b"/v2/"]
        self.assertTrue(repositoryRequests)
        self.assertEqual({s.authorization for s in repositoryRequests}, {None})
        self.assertEqual({s.code for s in repositoryRequests}, {200})

    async def test_bearerChallengeAndAnonymousToken(self) -> None:
        """
        A plain client sees our Bearer challenge on C{/v2/}, gets an
        anonymous token from the realm it names, and reads the manifest
        with it.
        """
        http = httpClient(self)
        response = await http.get(self.proxy.url + "/v2/")
        await response.content()
        self.assertEqual(response.code, 401)
        (value,) = response.headers.getRawHeaders("www-authenticate")
        (challenge,) = parseChallenges(value)
        self.assertEqual(challenge.scheme.lower(), "bearer")
        self.assertEqual(challenge.get("realm"), self.proxy.url + "/token")

        answer = await http.get(
            challenge.get("realm"),
            params={
                "service": challenge.get("service"),
                "scope": "repository:lib/app:pull",
            },
        )
        body = json.loads(await answer.content())
        self.assertEqual(answer.code, 200, body)
        token = body["token"]

        response = await http.get(
            self.proxy.url + "/v2/",
            headers={"Authorization": [f"Bearer {token}"]},
        )
        await response.content()
        self.assertEqual(response.code, 200)
        response = await http.get(
            self.proxy.url + "/v2/lib/app/manifests/v1",
            headers={
                "Authorization": [f"Bearer {token}"],
                "Accept": ["application/vnd.oci.image.manifest.v1+json"],
            },
        )
        self.assertEqual(await response.content(), self.manifestBytes())
        self.assertEqual(response.code, 200)
        self.assertEqual(
            response.headers.getRawHeaders("docker-content-digest"),
            [self.image.digest],
        )


class DockerdZotTests(ZotTestCase):
    """
    The real Docker daemon pulls anonymously through regproxy from the
    registry without a token flow.
    """

    async def test_pull(self) -> None:
        """
        C{docker pull} straight from the front fails (the daemon wants a
        login after the Basic ping); through regproxy it succeeds, and the
        image has the digest we pushed and our config as its ID.
        """
        docker = await startDockerd(self, [self.proxy.host, self.zot.host])
        with self.assertRaises(ClientFailed) as caught:
            await docker.run("pull", f"{self.zot.host}/lib/app:v1", timeout=120)
        self.assertIn("no basic auth credentials", str(caught.exception))
        reference = f"{self.proxy.host}/lib/app:v1"
        try:
            await docker.run("pull", reference, timeout=180)
        except ClientFailed as e:
            self.fail(f"{e}\ndockerd:\n{docker.output[-3000:]}")
        await assertImage(self, docker, reference, self.image)


async def assertImage(testCase, docker, reference: str, image) -> None:
    """
    The daemon holds C{reference} with C{image}'s manifest digest, and its
    config as the image ID.
    """
    result = await docker.run(
        "image", "inspect", "--format", "{{json .}}", reference, timeout=60
    )
    inspected = json.loads(result.stdout)
    repository = reference.rpartition(":")[0]
    testCase.assertIn(f"{repository}@{image.digest}", inspected["RepoDigests"])
    testCase.assertEqual(inspected["Id"], image.config.digest)


class DockerdUsersTests(TestCase):
    """
    The real Docker daemon logs in to regproxy's own users and pulls.
    """

    timeout = 240

    async def setUp(self) -> None:
        self.registry = await startRegistry(self, mode="open")
        directory = temporaryDirectory(self, "users-")
        htpasswd = os.path.join(directory, "htpasswd")
        writeHtpasswd(htpasswd, {"alice": "wonderland"})
        access = os.path.join(directory, "access.toml")
        with open(access, "w") as f:
            f.write(RULES)
        self.proxy = startProxy(self, self.registry, htpasswd=htpasswd, access=access)
        self.skopeo = Skopeo(self)
        layout = temporaryDirectory(self, "oci-")
        self.image = writeImage(layout, "v1", [3000], seed="dockerd-users")
        await self.skopeo.copy(
            self.image.reference,
            f"docker://{self.registry.host}/team/app:v1",
            destTLSVerify=False,
        )
        self.docker = await startDockerd(self, [self.proxy.host])

    async def test_loginAndPull(self) -> None:
        """
        Without a login the pull is refused; C{docker login} with a wrong
        password fails; with the right one it succeeds, docker keeps our
        refresh token rather than the password, and the pull gets the
        image.
        """
        reference = f"{self.proxy.host}/team/app:v1"
        with self.assertRaises(ClientFailed) as caught:
            await self.docker.run("pull", reference, timeout=120)
        self.assertIn("may require 'docker login'", str(caught.exception))
        with self.assertRaises(ClientFailed) as caught:
            await self.docker.run(
                "login", "-u", "alice", "-p", "looking-glass", self.proxy.host
            )
        self.assertIn("unauthorized", str(caught.exception).lower())
        result = await self.docker.run(
            "login", "-u", "alice", "-p", "wonderland", self.proxy.host
        )
        self.assertIn(b"Login Succeeded", result.stdout)
        # regproxy answered the login with a refresh token, which docker
        # keeps instead of the password and trades for access tokens (the
        # OAuth2 refresh_token grant) on the pull below.
        with open(os.path.join(self.docker.env["DOCKER_CONFIG"], "config.json")) as f:
            saved = json.load(f)["auths"][self.proxy.host]
        self.assertTrue(saved.get("identitytoken"))
        self.assertNotIn(b"wonderland", base64.b64decode(saved.get("auth", "")))
        try:
            await self.docker.run("pull", reference, timeout=180)
        except ClientFailed as e:
            self.fail(f"{e}\ndockerd:\n{self.docker.output[-3000:]}")
        await assertImage(self, self.docker, reference, self.image)
