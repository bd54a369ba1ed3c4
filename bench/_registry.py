"""
Content for benchmarks: deterministic blobs of any size, and a client that
puts blobs and images into a registry through its HTTP API, streaming.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import random
import struct
import time
from collections.abc import Iterable, Iterator, Sequence
from typing import Any
from urllib.parse import quote, urlsplit

import attrs
from _harness import LOOPBACK, BenchError

# The media types docker and skopeo ask for when they HEAD a manifest.
MANIFEST_TYPES = (
    "application/vnd.oci.image.manifest.v1+json",
    "application/vnd.oci.image.index.v1+json",
    "application/vnd.docker.distribution.manifest.v2+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
)
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_CONFIG = "application/vnd.docker.container.image.v1+json"
DOCKER_LAYER = "application/vnd.docker.image.rootfs.diff.tar"

MiB = 1024 * 1024


# Deterministic content.


@attrs.frozen
class Blob:
    """
    Deterministic content of a given size: the same C{seed} and C{size} give
    the same bytes every time, so the digest can be computed in one pass and
    the body streamed in another, and neither holds the whole blob.
    """

    size: int
    seed: int = 0
    chunkSize: int = MiB

    def chunks(self) -> Iterator[bytes]:
        """
        The content, chunk by chunk: a random block made from the seed, with
        each chunk's number written over its first 8 bytes so that no two
        chunks are the same.
        """
        block = random.Random(self.seed).randbytes(self.chunkSize)
        left = self.size
        number = 0
        while left > 0:
            chunk = struct.pack(">Q", number) + block[8:]
            if left < len(chunk):
                chunk = chunk[:left]
            yield chunk
            left -= len(chunk)
            number += 1

    def digest(self) -> str:
        hasher = hashlib.sha256()
        for chunk in self.chunks():
            hasher.update(chunk)
        return "sha256:" + hasher.hexdigest()


# Talking to a registry.


class RegistryClient:
    """
    Puts content into a registry through its HTTP API (no auth), streaming
    bodies from generators.
    """

    def __init__(self, url: str, timeout: float = 60.0) -> None:
        parts = urlsplit(url)
        self.url = url.rstrip("/")
        self.host = parts.hostname or LOOPBACK
        self.port = parts.port or 80
        self.timeout = timeout

    def _connection(self) -> http.client.HTTPConnection:
        return http.client.HTTPConnection(self.host, self.port, timeout=self.timeout)

    def _call(
        self,
        method: str,
        path: str,
        body: Any = None,
        headers: dict[str, str] | None = None,
        expect: Iterable[int] = (200,),
    ) -> http.client.HTTPResponse:
        conn = self._connection()
        try:
            conn.request(method, path, body=body, headers=headers or {})
            response = conn.getresponse()
            content = response.read()
        except (OSError, http.client.HTTPException) as e:
            raise BenchError(f"{method} {self.url}{path}: {e}") from None
        finally:
            conn.close()
        if response.status not in expect:
            raise BenchError(
                f"{method} {self.url}{path}: {response.status} "
                f"{content[:300].decode('utf-8', 'replace')}"
            )
        response.content = content  # type: ignore[attr-defined]
        return response

    def _pathOf(self, location: str) -> str:
        parts = urlsplit(location)
        return parts.path + ("?" + parts.query if parts.query else "")

    def pushBlob(
        self,
        repository: str,
        chunks: Iterable[bytes],
        size: int,
        digest: str,
        deadline: float | None = None,
    ) -> str:
        """
        A monolithic upload: C{POST} for an upload session, then one C{PUT}
        of the whole body with its digest, streamed from C{chunks}.

        @param deadline: A C{time.monotonic()} value after which the upload
            is abandoned.
        @return: The digest the registry stored it under.
        """
        started = self._call(
            "POST", f"/v2/{repository}/blobs/uploads/", body=b"", expect=(202,)
        )
        location = started.getheader("Location")
        if not location:
            raise BenchError(f"{self.url}: upload session without a Location")
        path = self._pathOf(location)
        path += ("&" if "?" in path else "?") + "digest=" + quote(digest, safe="")

        def timed() -> Iterator[bytes]:
            for chunk in chunks:
                if deadline is not None and time.monotonic() > deadline:
                    raise BenchError(f"uploading {digest} took too long")
                yield chunk

        done = self._call(
            "PUT",
            path,
            body=timed(),
            headers={
                "Content-Length": str(size),
                "Content-Type": "application/octet-stream",
            },
            expect=(201,),
        )
        stored = done.getheader("Docker-Content-Digest") or digest
        if stored != digest:
            raise BenchError(f"registry stored {stored}, we sent {digest}")
        return stored

    def pushBytes(self, repository: str, content: bytes) -> str:
        digest = "sha256:" + hashlib.sha256(content).hexdigest()
        return self.pushBlob(repository, [content], len(content), digest)

    def pushManifest(
        self, repository: str, reference: str, manifest: bytes, mediaType: str
    ) -> str:
        done = self._call(
            "PUT",
            f"/v2/{repository}/manifests/{reference}",
            body=manifest,
            headers={"Content-Type": mediaType},
            expect=(201,),
        )
        return done.getheader("Docker-Content-Digest") or (
            "sha256:" + hashlib.sha256(manifest).hexdigest()
        )

    def pushImage(self, repository: str, tag: str, layers: Sequence[tuple[str, int]]):
        """
        A small Docker image manifest: a config blob made here, and layers
        already pushed, given as (digest, size).

        @return: The manifest's digest.
        """
        config = json.dumps(
            {
                "architecture": "amd64",
                "os": "linux",
                "config": {},
                "rootfs": {"type": "layers", "diff_ids": [d for d, _ in layers]},
            },
            sort_keys=True,
        ).encode()
        configDigest = self.pushBytes(repository, config)
        manifest = json.dumps(
            {
                "schemaVersion": 2,
                "mediaType": DOCKER_MANIFEST,
                "config": {
                    "mediaType": DOCKER_CONFIG,
                    "size": len(config),
                    "digest": configDigest,
                },
                "layers": [
                    {"mediaType": DOCKER_LAYER, "size": size, "digest": digest}
                    for digest, size in layers
                ],
            },
            indent=3,
        ).encode()
        return self.pushManifest(repository, tag, manifest, DOCKER_MANIFEST)
