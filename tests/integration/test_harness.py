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

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature
from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import TestCase

from .clients import ClientFailed, Skopeo, httpClient, runProcess
from .oci import blobPath, sha256File, writeImage, writeIndex
from .registry import Registry, startRegistry
from .tokenserver import SigningKey, parseScope


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
            [
                (m["digest"], m["platform"]["architecture"])
                for m in document["manifests"]
            ],
            [(i.digest, i.platform[1]) for i in index.images],
        )
        self.assertEqual([i.platform[1] for i in index.images], ["amd64", "arm64"])


class TokenScopeTests(TestCase):
    def test_parseScope(self) -> None:
        self.assertEqual(
            parseScope("repository:127.0.0.1:5000/a/b:pull,push"),
            ("repository", "127.0.0.1:5000/a/b", ("pull", "push")),
        )
        self.assertEqual(
            parseScope("registry:catalog:*"), ("registry", "catalog", ("*",))
        )
        self.assertIsNone(parseScope("garbage"))


class DirectRegistryTests(TestCase):
    """
    skopeo pushes to and pulls from the registry directly, in each mode.
    """

    timeout = 120

    async def _roundTrip(self, mode: str, **flags) -> Registry:
        registry = await startRegistry(self, mode=mode)
        skopeo = Skopeo(self)
        layout = _tempdir(self)
        image = writeImage(layout, "v1", [1000, 200000], seed=mode)
        user = next(iter(registry.users.items()))
        creds = user if mode != "open" else None
        tls = (
            dict(destTLSVerify=False)
            if mode != "htpasswd-tls"
            else dict(destCertDir=registry.certDir)
        )
        await skopeo.copy(
            image.reference,
            f"docker://{registry.host}/test/image:v1",
            destCreds=creds,
            **tls,
        )
        stls = (
            dict(tlsVerify=False)
            if mode != "htpasswd-tls"
            else dict(certDir=registry.certDir)
        )
        raw = await skopeo.inspectRaw(
            f"docker://{registry.host}/test/image:v1", creds=creds, **stls
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
        assert registry.tokenServer is not None
        http = httpClient(self)
        self.assertTrue(
            any(
                r.code == 200 and r.account == "alice"
                for r in registry.tokenServer.requests
            )
        )
        # Without credentials the token server grants nothing: 401.
        response = await http.get(
            registry.tokenServer.realm,
            params={
                "service": registry.tokenServer.service,
                "scope": "repository:test/image:pull",
            },
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
            headers={
                "Authorization": "Basic " + base64.b64encode(b"alice:nope").decode()
            },
        )
        self.assertEqual(bad.code, 401)
        await bad.content()


class TokenServerUnitTests(TestCase):
    """
    The token server's pieces, without a registry.
    """

    @settings(max_examples=200, deadline=None)
    @given(
        kind=st.text(st.characters(blacklist_characters=":"), min_size=1),
        name=st.text(min_size=1).filter(lambda n: not n.endswith(":")),
        actions=st.lists(st.sampled_from(["pull", "push", "delete", "*"]), min_size=1),
    )
    def test_scopeRoundTrip(self, kind: str, name: str, actions: list[str]) -> None:
        """
        A scope put together from its parts parses back into them.
        """
        self.assertEqual(
            parseScope(f"{kind}:{name}:{','.join(actions)}"),
            (kind, name, tuple(actions)),
        )

    @settings(max_examples=200, deadline=None)
    @given(st.text())
    def test_scopeNeverCrashes(self, text: str) -> None:
        result = parseScope(text)
        self.assertTrue(result is None or len(result) == 3)

    def test_signatureVerifies(self) -> None:
        """
        The JWT's raw r||s signature verifies with the certificate's key
        once turned back into DER, and the header names the key both ways.
        """
        key = SigningKey.generate()
        token = key.sign({"aud": "svc", "access": []})
        header, claims, signature = token.split(".")

        def decode(part: str) -> bytes:
            return base64.urlsafe_b64decode(part + "=" * (-len(part) % 4))

        raw = decode(signature)
        self.assertEqual(len(raw), 64)
        der = encode_dss_signature(
            int.from_bytes(raw[:32], "big"), int.from_bytes(raw[32:], "big")
        )
        public = key.certificate.public_key()
        assert isinstance(public, ec.EllipticCurvePublicKey)
        public.verify(der, f"{header}.{claims}".encode(), ec.ECDSA(hashes.SHA256()))
        fields = json.loads(decode(header))
        self.assertEqual(fields["alg"], "ES256")
        self.assertEqual(fields["kid"], key.kid)
        self.assertEqual(len(key.kid), 59)  # 12 groups of 4 and 11 colons
        self.assertEqual(json.loads(decode(claims))["aud"], "svc")


class RunProcessTests(TestCase):
    async def test_timeout(self) -> None:
        """
        A command that runs longer than its bound is killed and reported.
        """
        with self.assertRaises(ClientFailed) as caught:
            await runProcess(["/bin/sleep", "30"], {}, timeout=0.2)
        self.assertIn("timed out", str(caught.exception))

    async def test_failureCarriesStderr(self) -> None:
        with self.assertRaises(ClientFailed) as caught:
            await runProcess(["/bin/sh", "-c", "echo oops >&2; exit 3"], {})
        self.assertIn("exited with 3", str(caught.exception))
        self.assertIn("oops", str(caught.exception))


class RegistryStartupTests(TestCase):
    def test_unknownMode(self) -> None:
        self.assertRaises(
            ValueError, lambda: startRegistry(self, mode="nope").send(None)
        )
