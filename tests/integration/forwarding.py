# -*- test-case-name: tests.integration.test_forward_open -*-
"""
The issue-2 forwarding checks, shared by the three registry modes: each
C{test_forward_*} module runs L{ForwardingTests} against one mode and adds
what is specific to it.

Every test starts a fresh registry and regproxy (both take well under a
second), pushes its images through regproxy with skopeo, and checks what
comes back through regproxy against the digests L{tests.integration.oci}
computed while writing.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import tempfile

import attrs
from twisted.trial.unittest import SkipTest

from regproxy.names.challenge import parseChallenges

from .clients import Podman, Skopeo, httpClient
from .oci import Image, blobPath, readIndexJSON, sha256File, writeImage, writeIndex
from .proxy import Proxy, startProxy
from .registry import Registry, startRegistry
from .testcase import MixinBase

MiB = 1 << 20
API_VERSION = "registry/2.0"
MANIFEST_ACCEPT = [
    "application/vnd.oci.image.manifest.v1+json",
    "application/vnd.oci.image.index.v1+json",
    "application/vnd.docker.distribution.manifest.v2+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
]


def temporaryDirectory(testCase, prefix: str = "regproxy-it-") -> str:
    directory = tempfile.mkdtemp(prefix=prefix)
    testCase.addCleanup(shutil.rmtree, directory, True)
    return directory


def readBlob(layout: str, digest: str) -> bytes:
    with open(blobPath(layout, digest), "rb") as f:
        return f.read()


class OneImageClient(MixinBase):
    """
    Push C{self.image} (from C{self.layout}) with C{self.skopeo}, as alice
    unless told otherwise, to C{self.reference(repository)}, and read its
    manifest back.
    """

    skopeo: Skopeo
    image: Image
    layout: str

    def reference(self, repository: str) -> str:
        raise NotImplementedError()

    async def push(self, repository: str, creds=("alice", "wonderland")):
        return await self.skopeo.copy(
            self.image.reference,
            self.reference(repository),
            destTLSVerify=False,
            destCreds=creds,
        )

    async def inspectRaw(self, repository: str, creds=("alice", "wonderland")) -> bytes:
        return await self.skopeo.inspectRaw(
            self.reference(repository), tlsVerify=False, creds=creds
        )

    def manifestBytes(self) -> bytes:
        return readBlob(self.layout, self.image.digest)


def authSettings(auth: str) -> dict[str, str]:
    """
    The L{Config} fields that choose how regproxy handles auth.  Issue 2's
    behaviour (credentials and challenges passed through) is
    C{auth="passthrough"} since the broker arrived; a regproxy without the
    C{auth} setting only has that behaviour.
    """
    from regproxy.config import Config

    if "auth" not in attrs.fields_dict(Config):
        if auth != "passthrough":
            raise SkipTest(f"this regproxy has no auth setting, so no {auth!r} mode")
        return {}
    return {"auth": auth}


class ForwardingTests(MixinBase):
    """
    Push and pull through regproxy, for a L{twisted.trial.unittest.TestCase}
    that sets C{mode}.
    """

    mode: str
    auth = "passthrough"
    timeout = 300
    credentials: tuple[str, str] | None = ("alice", "wonderland")

    registry: Registry
    proxy: Proxy
    skopeo: Skopeo
    layout: str

    async def setUp(self) -> None:
        self.registry = await startRegistry(
            self,
            mode=self.mode,
            users=dict([self.credentials or ("alice", "wonderland")]),
        )
        self.proxy = startProxy(self, self.registry, **authSettings(self.auth))
        self.skopeo = Skopeo(self)
        self.layout = temporaryDirectory(self, "oci-src-")
        if self.mode == "open":
            self.credentials = None

    # Helpers.

    async def push(self, image, repository: str, tag: str, all: bool = False) -> None:
        await self.skopeo.copy(
            image.reference,
            self.proxy.reference(repository, tag),
            destTLSVerify=False,
            destCreds=self.credentials,
            all=all,
        )

    async def pull(
        self, repository: str, tag: str, destination: str, all: bool = False
    ):
        await self.skopeo.copy(
            self.proxy.reference(repository, tag),
            destination,
            srcTLSVerify=False,
            srcCreds=self.credentials,
            all=all,
        )

    async def inspectRaw(self, repository: str, tag: str) -> bytes:
        return await self.skopeo.inspectRaw(
            self.proxy.reference(repository, tag),
            tlsVerify=False,
            creds=self.credentials,
        )

    async def authorization(self, http, repository: str) -> dict[str, list[str]]:
        """
        The C{Authorization} header a plain HTTP client needs to read
        C{repository} through regproxy, found as a client finds it: ping
        C{/v2/}, then answer the challenge (none, Basic, or a Bearer token
        from the realm the challenge names, with our credentials if any).
        """
        ping = await http.get(self.proxy.url + "/v2/")
        await ping.content()
        if ping.code == 200:
            return {}
        self.assertEqual(ping.code, 401)
        (challenge,) = parseChallenges(
            ping.headers.getRawHeaders("www-authenticate")[0]
        )
        basic = {}
        if self.credentials is not None:
            basic = {
                "Authorization": [
                    "Basic "
                    + base64.b64encode(":".join(self.credentials).encode()).decode()
                ]
            }
        if challenge.scheme.lower() == "basic":
            return basic
        response = await http.get(
            challenge.get("realm"),
            params={
                "service": challenge.get("service"),
                "scope": f"repository:{repository}:pull",
            },
            headers=basic,
        )
        body = await response.content()
        self.assertEqual(response.code, 200, body)
        return {"Authorization": ["Bearer " + json.loads(body)["token"]]}

    def assertDirHolds(
        self, directory: str, image: Image, manifest: bytes | None = None
    ) -> None:
        """
        A skopeo C{dir:} copy of C{image} holds its manifest and every blob,
        byte-exact.
        """
        with open(os.path.join(directory, "manifest.json"), "rb") as f:
            self.assertEqual(f.read(), manifest or readBlob(image.layout, image.digest))
        for blob in (image.config, *image.layers):
            self.assertEqual(sha256File(os.path.join(directory, blob.hex)), blob.digest)

    def assertLayoutHolds(self, layout: str, tag: str, digest: str, blobs) -> None:
        """
        An C{oci:} copy is tagged with C{digest} and holds every blob
        byte-exact.
        """
        (entry,) = [
            m
            for m in readIndexJSON(layout)["manifests"]
            if m.get("annotations", {}).get("org.opencontainers.image.ref.name") == tag
        ]
        self.assertEqual(entry["digest"], digest)
        for blob in blobs:
            self.assertEqual(sha256File(blobPath(layout, blob.digest)), blob.digest)

    # Tests.

    async def test_pushAndPullImage(self) -> None:
        """
        An image pushed through regproxy comes back through regproxy
        byte-exact: the raw manifest, and every blob in C{dir:} and
        C{oci:} copies.
        """
        image = writeImage(self.layout, "v1", [1000, 3 * MiB, 17], seed=self.mode)
        await self.push(image, "fleet/app", "1.0")

        raw = await self.inspectRaw("fleet/app", "1.0")
        self.assertEqual(raw, readBlob(self.layout, image.digest))
        info = await self.skopeo.inspect(
            self.proxy.reference("fleet/app", "1.0"),
            tlsVerify=False,
            creds=self.credentials,
        )
        self.assertEqual(info["Digest"], image.digest)
        self.assertEqual(info["Layers"], [layer.digest for layer in image.layers])

        directory = temporaryDirectory(self, "dir-")
        await self.pull("fleet/app", "1.0", f"dir:{directory}")
        self.assertDirHolds(directory, image)

        layout = temporaryDirectory(self, "oci-dst-")
        await self.pull("fleet/app", "1.0", f"oci:{layout}:copy")
        self.assertLayoutHolds(
            layout, "copy", image.digest, (image.manifest, image.config, *image.layers)
        )

    async def test_twoPlatformIndex(self) -> None:
        """
        A two-platform index goes up and comes back whole (C{--all}), and a
        client asking for one platform gets that platform's manifest.
        """
        index = writeIndex(self.layout, "multi", seed=self.mode)
        await self.push(index, "fleet/multi", "2.0", all=True)

        raw = await self.inspectRaw("fleet/multi", "2.0")
        self.assertEqual(raw, readBlob(self.layout, index.digest))

        layout = temporaryDirectory(self, "oci-dst-")
        await self.pull("fleet/multi", "2.0", f"oci:{layout}:copy", all=True)
        blobs = [index.index]
        for image in index.images:
            blobs += [image.manifest, image.config, *image.layers]
        self.assertLayoutHolds(layout, "copy", index.digest, blobs)

        for image in index.images:
            info = await self.skopeo.inspect(
                self.proxy.reference("fleet/multi", "2.0"),
                tlsVerify=False,
                creds=self.credentials,
                extra=[
                    "--override-os",
                    image.platform[0],
                    "--override-arch",
                    image.platform[1],
                ],
            )
            # "Digest" is the index's; the platform shows in what was chosen.
            self.assertEqual(info["Digest"], index.digest)
            self.assertEqual(info["Architecture"], image.platform[1])
            self.assertEqual(info["Layers"], [layer.digest for layer in image.layers])

        directory = temporaryDirectory(self, "dir-")
        await self.pull("fleet/multi", "2.0", f"dir:{directory}", all=True)
        with open(os.path.join(directory, "manifest.json"), "rb") as f:
            self.assertEqual(f.read(), readBlob(self.layout, index.digest))

    async def test_bigLayer(self) -> None:
        """
        A 256 MiB layer goes up through regproxy and comes back byte-exact
        (one push, one pull).
        """
        image = writeImage(self.layout, "big", [256 * MiB], seed=self.mode)
        await self.push(image, "fleet/big", "1")
        directory = temporaryDirectory(self, "dir-")
        await self.pull("fleet/big", "1", f"dir:{directory}")
        self.assertDirHolds(directory, image)

    async def test_plainHTTP(self) -> None:
        """
        An HTTP client sees through regproxy what the registry serves:
        HEAD of a manifest with its length and digest, a blob, a byte range,
        a registry-format 404, and the API version header on each.
        """
        image = writeImage(self.layout, "v1", [5000], seed=(self.mode, "http"))
        await self.push(image, "fleet/http", "1.0")
        manifest = readBlob(self.layout, image.digest)
        layer = image.layers[0]
        layerBytes = readBlob(self.layout, layer.digest)

        http = httpClient(self)
        headers = await self.authorization(http, "fleet/http")
        base = self.proxy.url + "/v2/fleet/http"

        head = await http.head(
            base + "/manifests/1.0", headers={**headers, "Accept": MANIFEST_ACCEPT}
        )
        await head.content()
        self.assertEqual(head.code, 200)
        self.assertEqual(
            head.headers.getRawHeaders("content-length"), [str(len(manifest))]
        )
        self.assertEqual(
            head.headers.getRawHeaders("docker-content-digest"), [image.digest]
        )
        self.assertEqual(
            head.headers.getRawHeaders("docker-distribution-api-version"), [API_VERSION]
        )

        get = await http.get(
            base + "/manifests/" + image.digest,
            headers={**headers, "Accept": MANIFEST_ACCEPT},
        )
        self.assertEqual(await get.content(), manifest)

        blob = await http.get(base + "/blobs/" + layer.digest, headers=headers)
        body = await blob.content()
        self.assertEqual(blob.code, 200)
        self.assertEqual(body, layerBytes)
        self.assertEqual(
            blob.headers.getRawHeaders("docker-distribution-api-version"), [API_VERSION]
        )

        ranged = await http.get(
            base + "/blobs/" + layer.digest,
            headers={**headers, "Range": ["bytes=10-19"]},
        )
        body = await ranged.content()
        self.assertEqual(ranged.code, 206)
        self.assertEqual(
            ranged.headers.getRawHeaders("content-range"), [f"bytes 10-19/{layer.size}"]
        )
        self.assertEqual(body, layerBytes[10:20])

        missing = await http.get(
            base + "/manifests/no-such-tag",
            headers={**headers, "Accept": MANIFEST_ACCEPT},
        )
        body = json.loads(await missing.content())
        self.assertEqual(missing.code, 404)
        self.assertEqual(body["errors"][0]["code"], "MANIFEST_UNKNOWN")
        self.assertEqual(
            missing.headers.getRawHeaders("docker-distribution-api-version"),
            [API_VERSION],
        )

    async def test_podmanPull(self) -> None:
        """
        podman pulls through regproxy and gets the manifest digest that was
        pushed (skipped where podman cannot run).
        """
        podman = Podman(self)
        await podman.check()
        image = writeImage(self.layout, "v1", [2000, 40000], seed=(self.mode, "podman"))
        await self.push(image, "fleet/podman", "1.0")
        reference = f"{self.proxy.host}/fleet/podman:1.0"
        await podman.pull(reference, tlsVerify=False, creds=self.credentials)
        self.assertEqual(await podman.imageDigest(reference), image.digest)
