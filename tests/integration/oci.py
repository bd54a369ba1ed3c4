# -*- test-case-name: tests.integration.test_forward_open -*-
"""
Write OCI image layouts in Python: no docker, no internet.

Layers are uncompressed tars holding one file of deterministic bytes (from
a seed), streamed to disk in chunks while their digest is computed, so a
256 MiB layer never sits in memory.  Every function returns the digests it
wrote so tests can check what comes back through a registry.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import tarfile
from collections.abc import Sequence

import attrs

OCI_LAYOUT = {"imageLayoutVersion": "1.0.0"}
MEDIA_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
MEDIA_INDEX = "application/vnd.oci.image.index.v1+json"
MEDIA_CONFIG = "application/vnd.oci.image.config.v1+json"
MEDIA_LAYER = "application/vnd.oci.image.layer.v1.tar"
REF_NAME = "org.opencontainers.image.ref.name"
CHUNK = 1 << 20
CREATED = "2024-01-01T00:00:00Z"


@attrs.frozen
class Blob:
    """
    A blob in a layout: its descriptor's fields.
    """

    mediaType: str
    digest: str
    size: int

    def descriptor(self, **extra: object) -> dict:
        return {
            "mediaType": self.mediaType,
            "digest": self.digest,
            "size": self.size,
            **extra,
        }

    @property
    def hex(self) -> str:
        return self.digest.split(":", 1)[1]


@attrs.frozen
class Image:
    """
    One single-platform image written to a layout.

    @ivar reference: C{oci:LAYOUT:TAG}, for skopeo.
    """

    layout: str
    tag: str
    manifest: Blob
    config: Blob
    layers: tuple[Blob, ...]
    platform: tuple[str, str]

    @property
    def reference(self) -> str:
        return f"oci:{self.layout}:{self.tag}"

    @property
    def digest(self) -> str:
        return self.manifest.digest


@attrs.frozen
class Index:
    """
    A multi-platform image index written to a layout.
    """

    layout: str
    tag: str
    index: Blob
    images: tuple[Image, ...]

    @property
    def reference(self) -> str:
        return f"oci:{self.layout}:{self.tag}"

    @property
    def digest(self) -> str:
        return self.index.digest


def blobPath(layout: str, digest: str) -> str:
    algorithm, hexdigest = digest.split(":", 1)
    return os.path.join(layout, "blobs", algorithm, hexdigest)


def _ensureLayout(layout: str) -> None:
    os.makedirs(os.path.join(layout, "blobs", "sha256"), exist_ok=True)
    marker = os.path.join(layout, "oci-layout")
    if not os.path.exists(marker):
        with open(marker, "w") as f:
            json.dump(OCI_LAYOUT, f)
    if not os.path.exists(os.path.join(layout, "index.json")):
        _writeIndexJSON(layout, {"schemaVersion": 2, "manifests": []})


def _writeIndexJSON(layout: str, document: dict) -> None:
    path = os.path.join(layout, "index.json")
    with open(path + ".tmp", "w") as f:
        json.dump(document, f)
    os.replace(path + ".tmp", path)


def writeBytesBlob(layout: str, mediaType: str, data: bytes) -> Blob:
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    with open(blobPath(layout, digest), "wb") as f:
        f.write(data)
    return Blob(mediaType, digest, len(data))


def writeJSONBlob(layout: str, mediaType: str, document: dict) -> Blob:
    return writeBytesBlob(
        layout,
        mediaType,
        json.dumps(document, sort_keys=True, separators=(",", ":")).encode(),
    )


def deterministicChunks(seed: object, size: int):
    """
    C{size} bytes that depend only on C{seed}, in chunks of at most 1 MiB.
    """
    generator = random.Random(repr(seed))
    remaining = size
    while remaining > 0:
        n = min(CHUNK, remaining)
        yield generator.randbytes(n)
        remaining -= n


def writeLayer(layout: str, size: int, seed: object, name: str = "data") -> Blob:
    """
    Stream an uncompressed tar holding one C{size}-byte file to the layout.
    """
    info = tarfile.TarInfo(name)
    info.size = size
    info.mode = 0o644
    info.mtime = 0
    info.uname = info.gname = "root"
    hasher = hashlib.sha256()
    total = 0
    temporary = os.path.join(layout, "blobs", f".layer-{os.getpid()}-{id(info)}.tmp")
    with open(temporary, "wb") as f:

        def write(data: bytes) -> None:
            nonlocal total
            hasher.update(data)
            f.write(data)
            total += len(data)

        write(info.tobuf(format=tarfile.PAX_FORMAT))
        for chunk in deterministicChunks(seed, size):
            write(chunk)
        padding = -size % tarfile.BLOCKSIZE
        write(b"\0" * padding + b"\0" * (2 * tarfile.BLOCKSIZE))
    digest = "sha256:" + hasher.hexdigest()
    os.replace(temporary, blobPath(layout, digest))
    return Blob(MEDIA_LAYER, digest, total)


def _tagLayout(layout: str, tag: str, blob: Blob) -> None:
    with open(os.path.join(layout, "index.json")) as f:
        document = json.load(f)
    manifests = [
        m
        for m in document.get("manifests", [])
        if m.get("annotations", {}).get(REF_NAME) != tag
    ]
    manifests.append(blob.descriptor(annotations={REF_NAME: tag}))
    document["manifests"] = manifests
    _writeIndexJSON(layout, document)


def _buildImage(
    layout: str,
    tag: str,
    layerSizes: Sequence[int],
    seed: object,
    platform: tuple[str, str],
) -> Image:
    _ensureLayout(layout)
    layers = tuple(
        writeLayer(layout, size, (seed, platform, i))
        for i, size in enumerate(layerSizes)
    )
    os_, architecture = platform
    config = writeJSONBlob(
        layout,
        MEDIA_CONFIG,
        {
            "created": CREATED,
            "architecture": architecture,
            "os": os_,
            "config": {"Labels": {"regproxy.test.seed": repr(seed)}},
            "rootfs": {
                "type": "layers",
                "diff_ids": [layer.digest for layer in layers],
            },
            "history": [{"created": CREATED, "created_by": "tests.integration.oci"}],
        },
    )
    manifest = writeJSONBlob(
        layout,
        MEDIA_MANIFEST,
        {
            "schemaVersion": 2,
            "mediaType": MEDIA_MANIFEST,
            "config": config.descriptor(),
            "layers": [layer.descriptor() for layer in layers],
        },
    )
    return Image(layout, tag, manifest, config, layers, platform)


def writeImage(
    layout: str,
    tag: str,
    layerSizes: Sequence[int],
    seed: object = 0,
    platform: tuple[str, str] = ("linux", "amd64"),
) -> Image:
    """
    Write a single-platform image with one layer per entry of
    C{layerSizes} (the size of the file inside each layer) and tag it.
    """
    image = _buildImage(layout, tag, layerSizes, seed, platform)
    _tagLayout(layout, tag, image.manifest)
    return image


def writeIndex(
    layout: str,
    tag: str,
    layerSizes: Sequence[int] = (4096, 65536),
    seed: object = 0,
    platforms: Sequence[tuple[str, str]] = (("linux", "amd64"), ("linux", "arm64")),
) -> Index:
    """
    Write one image per platform (different layer contents each) and an
    image index over them, and tag the index.
    """
    images = tuple(
        _buildImage(layout, f"{tag}-{arch}", layerSizes, seed, (os_, arch))
        for os_, arch in platforms
    )
    index = writeJSONBlob(
        layout,
        MEDIA_INDEX,
        {
            "schemaVersion": 2,
            "mediaType": MEDIA_INDEX,
            "manifests": [
                image.manifest.descriptor(
                    platform={
                        "os": image.platform[0],
                        "architecture": image.platform[1],
                    }
                )
                for image in images
            ],
        },
    )
    _tagLayout(layout, tag, index)
    return Index(layout, tag, index, images)


def readIndexJSON(layout: str) -> dict:
    with open(os.path.join(layout, "index.json")) as f:
        return json.load(f)


def sha256File(path: str) -> str:
    """
    The digest of a file, read in chunks.
    """
    hasher = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            hasher.update(chunk)
    return "sha256:" + hasher.hexdigest()
