# -*- test-case-name: tests.unit.test_broker -*-
"""
Where a digest lives for a name: the real repository a client's blob or
child manifest must be fetched from when the tag it came by is gone from
the request.
"""

from __future__ import annotations

import json
from collections import OrderedDict

import attrs

_MAX_REMEMBERED_DIGESTS = 65536


@attrs.define
class DigestLocations:
    """
    Which real repository a digest was last seen in, per client name.

    A client that pulls C{org/fleet:1.2.3} asks for that release's blobs
    (and, for a multi-platform index, its child manifests) as
    C{org/fleet/blobs/<digest>}: the tag is gone from the request.  The
    manifest we relayed named those digests, so we remember where they live.
    """

    maxSize: int = _MAX_REMEMBERED_DIGESTS
    _where: OrderedDict[tuple[str, str], str] = attrs.field(factory=OrderedDict)

    def remember(self, name: str, digests: list[str], repository: str) -> None:
        for digest in digests:
            key = (name, digest)
            self._where[key] = repository
            self._where.move_to_end(key)
        while len(self._where) > self.maxSize:
            self._where.popitem(last=False)

    def find(self, name: str, digest: str) -> str | None:
        return self._where.get((name, digest))


def manifestDigests(body: bytes) -> list[str]:
    """
    The digests a manifest or index refers to.
    """
    try:
        document = json.loads(body)
    except ValueError:
        return []
    found = []
    if isinstance(document, dict):
        for key in ("config",):
            entry = document.get(key)
            if isinstance(entry, dict) and isinstance(entry.get("digest"), str):
                found.append(entry["digest"])
        for key in ("layers", "manifests", "blobs"):
            entries = document.get(key)
            for entry in entries if isinstance(entries, list) else []:
                if isinstance(entry, dict) and isinstance(entry.get("digest"), str):
                    found.append(entry["digest"])
    return found
