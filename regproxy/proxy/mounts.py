# -*- test-case-name: tests.unit.test_mounts -*-
"""
Cross-repository blob mounts: C{POST /v2/<dst>/blobs/uploads/?mount=<digest>&from=<src>}.

A mount copies a blob out of C{src} into C{dst} without uploading it again:
to the upstream it is a push to C{dst} I{and a pull of C{src}}.  So the
client must be allowed to pull C{src} by our rules, and the upstream
credential we get must cover both repositories.  A mount that may not
happen is dropped, leaving an ordinary upload (202), which is what
distribution itself does when it cannot mount.
"""

from __future__ import annotations

from urllib.parse import quote, unquote_to_bytes

import attrs

from regproxy.names.reference import Digest, InvalidReference, isRepositoryName

_MOUNT_PARAMETERS = (b"mount", b"from")


@attrs.frozen
class Mount:
    """
    A mount a client asked for.

    @ivar digest: The blob to mount.
    @ivar source: The repository it comes from, as the client names it.
    """

    digest: str
    source: str


def _parameters(query: bytes) -> list[tuple[bytes, bytes]]:
    found = []
    for part in query.split(b"&"):
        name, _, value = part.partition(b"=")
        found.append((unquote_to_bytes(name), unquote_to_bytes(value)))
    return found


def parseMount(query: bytes) -> Mount | None:
    """
    The mount a query string asks for, or L{None} when it asks for none or
    names a digest or repository that does not follow the grammar (a
    registry would not mount that either).
    """
    values = dict(_parameters(query)) if query else {}
    digest, source = values.get(b"mount"), values.get(b"from")
    if digest is None or source is None:
        return None
    try:
        digestText = str(Digest.parse(digest.decode("ascii")))
        sourceText = source.decode("ascii")
    except (InvalidReference, UnicodeDecodeError):
        return None
    if not isRepositoryName(sourceText):
        return None
    return Mount(digestText, sourceText)


def withoutMount(query: bytes) -> bytes:
    """
    C{query} without its C{mount} and C{from} parameters, the others kept
    byte for byte.
    """
    kept = [
        part
        for part in query.split(b"&")
        if unquote_to_bytes(part.partition(b"=")[0]) not in _MOUNT_PARAMETERS
    ]
    return b"&".join(kept)


def withSource(query: bytes, repository: str) -> bytes:
    """
    C{query} with C{from} naming C{repository} (the real upstream
    repository behind the client's name), the others kept byte for byte.
    """
    replaced = []
    for part in query.split(b"&"):
        if unquote_to_bytes(part.partition(b"=")[0]) == b"from":
            part = b"from=" + quote(repository, safe="/").encode("ascii")
        replaced.append(part)
    return b"&".join(replaced)
