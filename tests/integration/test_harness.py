# -*- test-case-name: tests.integration.test_harness -*-
"""
The harness itself, checked directly against a real registry (no
regproxy): when a forwarding test fails, these say whether the harness or
regproxy is to blame.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import tempfile

from twisted.internet import defer
from twisted.trial.unittest import TestCase

from .clients import ClientFailed, Skopeo, httpClient
from .oci import blobPath, sha256File, writeImage, writeIndex
from .registry import startRegistry
from .tokenserver import parseScope


def _tempdir(testCase) -> str:
    directory = tempfile.mkdtemp(prefix="oci-")
    testCase.addCleanup(shutil.rmtree, directory, True)
    return directory


class OCILayoutTests(TestCase):
    """
    L{writeImage} and L{writeIndex} write layouts whose blobs match their
    digests.
    """

    def test_blobsMatchDigests(self) -> None:
        """
        Every blob file's sha256 is its name, and sizes are right.
        """
        layout = _tempdir(self)
        image = writeImage(layout, "one", [10, 5000], seed=1)
        for blob in (image.manifest, image.config, *image.layers):
            path = blobPath(layout, blob.digest)
            self.assertEqual(sha256File(path), blob.digest)
            self.assertEqual(os.path.getsize(path), blob.size)

    def test_deterministic(self) -> None:
        """
        The same seed writes the same image; another seed another one.
        """
        a = writeImage(_tempdir(self), "t", [1000], seed=7)
        b = writeImage(_tempdir(self), "t", [1000], seed=7)
        c = writeImage(_tempdir(self), "t", [1000], seed=8)
        self.assertEqual(a.digest, b.digest)
        self.assertNotEqual(a.digest, c.digest)

    def test_indexPlatforms(self) -> None:
        """
        The index lists one manifest per platform, with its platform.
        """
        layout = _tempdir(self)
        index = writeIndex(layout, "multi")
        with open(blobPath(layout, index.digest)) as f:
            document = json.load(f)
        self.assertEqual(
            [(m["digest"], m["platform"]["architecture"]) for m in document["manifests"]],
            [(i.digest, i.platform[1]) for i in index.images],
        )
        self.assertEqual([i.platform[1] for i in index.images], ["amd64", "arm64"])


class TokenScopeTests(TestCase):
    def test_parseScope(self) -> None:
        self.assertEqual(
            parseScope("repository:127.0.0.1:5000/a/b:pull,push"),
            ("repository", "127.0.0.1:5000/a/b", ("pull", "push")),
        )
        self.assertEqual(parseScope("registry:catalog:*"), ("registry", "catalog", ("*",)))
        self.assertIsNone(parseScope("garbage"))


class DirectRegistryTests(TestCase):
    """
    skopeo pushes to and pulls from the registry directly, in each mode.
    """

    timeout = 120

    async def _roundTrip(self, mode: str, **flags) -> None:
        registry = await startRegistry(self, mode=mode)
        skopeo = Skopeo(self)
        layout = _tempdir(self)
        image = writeImage(layout, "v1", [1000, 200000], seed=mode)
        user = next(iter(registry.users.items()))
        creds = user if mode != "open" else None
        tls = dict(destTLSVerify=False) if mode != "htpasswd-tls" else dict(destCertDir=registry.certDir)
        await skopeo.copy(
            image.reference, f"docker://{registry.host}/test/image:v1", destCreds=creds, **tls
        )
        stls = dict(tlsVerify=False) if mode != "htpasswd-tls" else dict(certDir=registry.certDir)
        raw = await skopeo.inspect(
            f"docker://{registry.host}/test/image:v1", raw=True, creds=creds, **stls
        )
        with open(blobPath(layout, image.digest), "rb") as f:
            self.assertEqual(raw, f.read())
        return registry

    async def test_open(self) -> None:
        await self._roundTrip("open")

    async def test_htpasswdTLS(self) -> None:
        registry = await self._roundTrip("htpasswd-tls")
        skopeo = Skopeo(self)
        with self.assertRaises(ClientFailed) as e:
            await skopeo.inspect(
                f"docker://{registry.host}/test/image:v1",
                certDir=registry.certDir,
                creds=("alice", "wrong"),
            )
        self.assertIn("unauthorized", str(e.exception).lower())

    async def test_token(self) -> None:
        registry = await self._roundTrip("token")
        http = httpClient(self)
        self.assertTrue(
            any(r.code == 200 and r.account == "alice" for r in registry.tokenServer.requests)
        )
        # Without credentials the token server grants nothing: 401.
        response = await http.get(
            registry.tokenServer.realm,
            params={"service": registry.tokenServer.service, "scope": "repository:test/image:pull"},
        )
        body = json.loads(await response.content())
        manifest = await http.get(
            registry.url + "/v2/test/image/manifests/v1",
            headers={"Authorization": "Bearer " + body["token"]},
        )
        self.assertEqual(manifest.code, 401)
        await manifest.content()
        bad = await http.get(
            registry.tokenServer.realm,
            headers={"Authorization": "Basic " + base64.b64encode(b"alice:nope").decode()},
        )
        self.assertEqual(bad.code, 401)
        await bad.content()
