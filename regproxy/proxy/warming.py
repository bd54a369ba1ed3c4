# -*- test-case-name: tests.unit.test_warming -*-
"""
C{--warm-fleet org/fleet}: follow each fleet's target release through the
balena API and fetch its images into the LAN cache when it changes, so the
first device to update pulls from the LAN.

The warmer fetches as regproxy itself (with C{--api-token} for private
fleets), through the same L{CachingForwarder} as every client: the bytes
are linked to the release's repository, and the authorization it records
is its own.  A device is still served only once the upstream has allowed
the device's own credentials on that repository.
"""

from __future__ import annotations

import json
from typing import Any

import attrs
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.web.client import readBody
from twisted.web.http_headers import Headers

from regproxy.auth.credentials import BasicCredentials
from regproxy.names.reference import ImageReference
from regproxy.proxy.cachedresponse import StreamedResponse
from regproxy.proxy.caching import CachingForwarder
from regproxy.proxy.upstreamauth import (
    UpstreamAccess,
    UpstreamAuthAgent,
    UpstreamAuthenticator,
)
from regproxy.resolve.interfaces import (
    Credentials,
    IResolver,
    Resolution,
    ServiceRequired,
)
from regproxy.server.urls import Origin

MANIFEST_ACCEPT = [
    b"application/vnd.oci.image.index.v1+json",
    b"application/vnd.docker.distribution.manifest.list.v2+json",
    b"application/vnd.oci.image.manifest.v1+json",
    b"application/vnd.docker.distribution.manifest.v2+json",
]


@attrs.define(slots=False)
class WarmRequest:
    """
    What L{CachingForwarder.send} needs of a request, for a fetch no client
    asked for: it never finishes early, because nobody goes away.
    """

    method: bytes = b"GET"
    requestHeaders: Headers = attrs.Factory(Headers)

    def notifyFinish(self) -> Deferred[None]:
        return Deferred()


@attrs.define
class FleetWarmer:
    """
    Keeps the target releases of C{fleets} in the cache.

    @ivar fleets: C{org/fleet} slugs.
    @ivar apiToken: regproxy's own API key: resolves private fleets and
        pulls their images.
    """

    resolver: IResolver
    forwarder: CachingForwarder
    upstreamAuth: UpstreamAuthenticator
    upstream: Origin
    fleets: tuple[str, ...]
    apiToken: str | None
    clock: IReactorTime
    _warmed: dict[str, tuple[str, ...]] = attrs.Factory(dict)

    _log = Logger()

    async def warmAll(self) -> None:
        """
        Look at every fleet once; fetch what changed.  Failures are logged,
        never raised: the next round tries again.
        """
        for slug in self.fleets:
            try:
                await self.warmFleet(slug)
            except Exception:
                self._log.failure("Could not warm fleet {fleet}", fleet=slug)

    async def warmFleet(self, slug: str) -> bool:
        """
        Fetch C{slug}'s target release if it is not the one warmed last.

        @return: Whether anything was fetched.
        """
        images = await self._targetImages(slug)
        key = tuple(
            sorted(f"{r.repository}@{r.contentHash or r.reference}" for r in images)
        )
        if self._warmed.get(slug) == key:
            return False
        for resolution in images:
            await self._fetchImage(resolution)
        self._warmed[slug] = key
        self._log.info(
            "warmed fleet {fleet}: {count} image(s)", fleet=slug, count=len(images)
        )
        return True

    async def _targetImages(self, slug: str) -> list[Resolution]:
        credentials = Credentials.choose(None, self.apiToken)
        try:
            return [await self.resolver.resolve(ImageReference(slug), credentials)]
        except ServiceRequired as e:
            services = e.detail["services"]
        return [
            await self.resolver.resolve(
                ImageReference(f"{slug}/latest/{service}"), credentials
            )
            for service in services
        ]

    def _credentials(self) -> BasicCredentials | None:
        if self.apiToken is None:
            return None
        return BasicCredentials("regproxy", self.apiToken)

    async def _get(self, repository: str, tail: str) -> Any:
        """
        GET through the cache, authenticated upstream as regproxy itself.
        """
        access = UpstreamAccess(self._credentials(), repository, ("pull",))
        forwarder = attrs.evolve(
            self.forwarder,
            agent=UpstreamAuthAgent(self.forwarder.agent, self.upstreamAuth, access),
        )
        headers = Headers({b"accept": MANIFEST_ACCEPT})
        url = self.upstream.base + f"/v2/{repository}/{tail}".encode("utf-8")
        return await forwarder.send(WarmRequest(), b"GET", url, headers, None)  # type: ignore[arg-type]

    async def _fetchImage(self, resolution: Resolution) -> None:
        reference = resolution.contentHash or resolution.reference or "latest"
        await self._fetchManifest(resolution.repository, reference)

    async def _fetchManifest(self, repository: str, reference: str) -> None:
        response = await self._get(repository, f"manifests/{reference}")
        body = await readBody(response)
        if response.code != 200:
            raise ValueError(f"{repository}:{reference}: upstream said {response.code}")
        document = json.loads(body)
        for child in document.get("manifests", []):
            await self._fetchManifest(repository, child["digest"])
        for blob in [document.get("config") or {}, *document.get("layers", [])]:
            if blob.get("digest"):
                await self._fetchBlob(repository, blob["digest"])

    async def _fetchBlob(self, repository: str, digest: str) -> None:
        response = await self._get(repository, f"blobs/{digest}")
        if isinstance(response, StreamedResponse) and response.fill is not None:
            await response.fill.done()
        elif not isinstance(response, StreamedResponse):
            # Not kept (an upstream redirect, an error): read and drop it.
            await readBody(response)
