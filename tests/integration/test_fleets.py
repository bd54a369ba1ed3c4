# -*- test-case-name: tests.integration.test_fleets -*-
"""
Fleet names end to end: skopeo, podman and an HTTP client pull
C{org/fleet[/release][/service]} through regproxy's broker from a real
registry in token mode, resolved by the fake balena API, and get exactly
the images that were pushed for those releases (digests checked).
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import tempfile

from twisted.internet.defer import Deferred, gatherResults
from twisted.trial.unittest import TestCase

from regproxy.challenge import parseChallenges

from .clients import ClientFailed, Podman, Skopeo, httpClient
from .fleets import (
    ALICE,
    BOB,
    DRAFT,
    INDEX_VERSION,
    MULTI,
    PRIVATE,
    PUBLIC,
    TARGET_VERSION,
    Fleets,
    startFleets,
)
from .oci import Index, blobPath, readIndexJSON, sha256File
from .proxy import Proxy, startProxy

REF_NAME = "org.opencontainers.image.ref.name"
MANIFEST_ACCEPT = [
    "application/vnd.oci.image.manifest.v1+json",
    "application/vnd.oci.image.index.v1+json",
    "application/vnd.docker.distribution.manifest.v2+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
]


def temporaryDirectory(testCase, prefix: str) -> str:
    directory = tempfile.mkdtemp(prefix=prefix)
    testCase.addCleanup(shutil.rmtree, directory, True)
    return directory


def basic(credentials: tuple[str, str]) -> str:
    return "Basic " + base64.b64encode(":".join(credentials).encode()).decode()


class FleetWorldMixin:
    """
    A fake balenaCloud (API and registry) and regproxy in front of it, for
    a L{TestCase}.
    """

    timeout = 300

    fleets: Fleets
    proxy: Proxy

    async def setUp(self) -> None:
        self.fleets = await startFleets(self)
        self.proxy = self.startProxy()

    def startProxy(self, **settings) -> Proxy:
        return startProxy(self, self.fleets.registry, balena_api=self.fleets.apiURL, **settings)

    def reference(self, name: str, proxy: Proxy | None = None) -> str:
        return f"docker://{(proxy or self.proxy).host}/{name}"


class SkopeoMixin(FleetWorldMixin):
    skopeo: Skopeo

    async def setUp(self) -> None:
        await super().setUp()
        self.skopeo = Skopeo(self)

    async def pull(
        self,
        name: str,
        creds: tuple[str, str] | None = None,
        all: bool = False,
        proxy: Proxy | None = None,
    ) -> str:
        """
        C{skopeo copy} C{name} (with its C{:tag} or C{@digest}, if any)
        from regproxy into an OCI layout, every blob checked by skopeo on
        the way; the digest of the manifest it copied.
        """
        layout = temporaryDirectory(self, "oci-pulled-")
        await self.skopeo.copy(
            self.reference(name, proxy),
            f"oci:{layout}:pulled",
            srcTLSVerify=False,
            srcCreds=creds,
            all=all,
        )
        self.layout = layout
        (entry,) = [
            m
            for m in readIndexJSON(layout)["manifests"]
            if m.get("annotations", {}).get(REF_NAME) == "pulled"
        ]
        return entry["digest"]


class SkopeoFleetPullTests(SkopeoMixin, TestCase):
    """
    skopeo pulls every kind of fleet name through regproxy.
    """

    async def test_fleet(self) -> None:
        """
        C{org/fleet} is the fleet's target release.
        """
        self.assertEqual(
            await self.pull(PUBLIC), self.fleets.digest(PUBLIC, TARGET_VERSION)
        )

    async def test_version(self) -> None:
        """
        C{org/fleet/1.2.3} is the highest revision of the final release
        1.2.3 (revision 2, not 0).
        """
        self.assertEqual(
            await self.pull(f"{PUBLIC}/1.2.3"), self.fleets.digest(PUBLIC, "1.2.3+rev2")
        )
        self.assertNotEqual(
            self.fleets.digest(PUBLIC, "1.2.3+rev2"), self.fleets.digest(PUBLIC, "1.2.3")
        )

    async def test_versionAsTag(self) -> None:
        """
        C{org/fleet:1.2.3} means C{org/fleet/1.2.3}.
        """
        self.assertEqual(
            await self.pull(f"{PUBLIC}:1.2.3"), self.fleets.digest(PUBLIC, "1.2.3+rev2")
        )

    async def test_commit(self) -> None:
        """
        C{org/fleet/<commit>} is the release with that commit, in full or
        by a unique prefix of seven characters.
        """
        commit = self.fleets.commit(PUBLIC, "1.2.3")
        self.assertEqual(
            await self.pull(f"{PUBLIC}/{commit}"), self.fleets.digest(PUBLIC, "1.2.3")
        )
        commit = self.fleets.commit(PUBLIC, TARGET_VERSION)
        self.assertEqual(
            await self.pull(f"{PUBLIC}/{commit[:7]}"),
            self.fleets.digest(PUBLIC, TARGET_VERSION),
        )

    async def test_draft(self) -> None:
        """
        A draft is pulled by its full raw version.
        """
        self.assertEqual(
            await self.pull(f"{PUBLIC}/{DRAFT}"), self.fleets.digest(PUBLIC, DRAFT)
        )

    async def test_service(self) -> None:
        """
        C{org/fleet/<release>/<service>} is that service's image of a
        two-service release.
        """
        for service in ("frontend", "backend"):
            self.assertEqual(
                await self.pull(f"{MULTI}/1.0.0/{service}"),
                self.fleets.digest(MULTI, "1.0.0", service),
            )
        self.assertEqual(
            await self.pull(f"{MULTI}/latest/backend"),
            self.fleets.digest(MULTI, "1.0.0", "backend"),
        )

    async def test_digest(self) -> None:
        """
        C{org/fleet@sha256:...} stays a digest: it gets that image, here
        one of a release that is not the target.
        """
        digest = self.fleets.digest(PUBLIC, "1.2.3")
        self.assertEqual(await self.pull(f"{PUBLIC}@{digest}"), digest)

    async def test_index(self) -> None:
        """
        A two-platform index pulled as C{org/fleet:<version>} comes back
        whole: its child manifests and their blobs, asked for by digest
        under the fleet's name, reach the release's repository.
        """
        index = self.fleets.image(PUBLIC, INDEX_VERSION)
        assert isinstance(index, Index)
        self.assertEqual(
            await self.pull(f"{PUBLIC}:{INDEX_VERSION}", all=True), index.digest
        )
        for image in index.images:
            for blob in (image.manifest, image.config, *image.layers):
                self.assertEqual(
                    sha256File(blobPath(self.layout, blob.digest)), blob.digest
                )
