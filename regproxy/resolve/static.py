# -*- test-case-name: tests.unit.test_resolve_static -*-
"""
A resolver from a TOML file of friendly names, for registries without an
API to ask (openBalena offline, a LAN registry with ugly names).

The file (C{--resolver static:FILE})::

    # Names not listed are unknown (404 NAME_UNKNOWN), unless
    # passthrough = true, which sends them upstream unchanged.
    passthrough = false

    [names]
    # friendly name = upstream repository
    "acme/app" = "v2/9eaad9d708658bcdfc5b32c4e80074ad"
    # a release of a fleet, pulled as acme/app/1.2.3 or acme/app:1.2.3
    "acme/app/1.2.3" = "v2/0dee94d73571454bd4c327be78f206d3"
    # a table can also say which tag "latest" (or no tag) means upstream
    "tools/debug" = { repository = "library/busybox", tag = "1.36" }

Lookup: a client's tag other than C{latest} first selects C{name/tag} when
that is listed (as in fleet names), asked upstream as its C{tag} or
C{latest}; otherwise C{name} is looked up and the client's tag goes
upstream, except that C{latest} becomes the entry's C{tag} when it has one.
A digest always goes upstream unchanged.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import attrs
from twisted.internet.defer import Deferred, fail, succeed
from zope.interface import implementer

from regproxy.config import readTOML
from regproxy.names.reference import (
    DEFAULT_TAG,
    ImageReference,
    isRepositoryName,
    isTag,
)
from regproxy.resolve.interfaces import Credentials, IResolver, NameUnknown, Resolution


class StaticMapError(ValueError):
    """
    The map file cannot be used; the message says where.
    """


@attrs.frozen
class Entry:
    """
    One mapped name: the upstream repository, and the tag C{latest} means.
    """

    repository: str
    tag: str | None = None


def parseMap(
    document: Mapping[str, Any], source: str = "map"
) -> tuple[dict[str, Entry], bool]:
    """
    The entries and the C{passthrough} flag of a parsed map document.

    @raise StaticMapError: When something in it is not usable.
    """
    unknown = set(document) - {"names", "passthrough"}
    if unknown:
        raise StaticMapError(f"{source}: unknown keys {sorted(unknown)}")
    passthrough = document.get("passthrough", False)
    if not isinstance(passthrough, bool):
        raise StaticMapError(f"{source}: passthrough must be true or false")
    names = document.get("names", {})
    if not isinstance(names, Mapping):
        raise StaticMapError(f"{source}: [names] must be a table")
    entries = {}
    for name, value in names.items():
        if not isRepositoryName(name):
            raise StaticMapError(f"{source}: {name!r} is not a repository name")
        if isinstance(value, str):
            value = {"repository": value}
        if not isinstance(value, Mapping) or set(value) - {"repository", "tag"}:
            raise StaticMapError(
                f"{source}: {name!r} must map to a repository or "
                f"{{ repository = ..., tag = ... }}"
            )
        repository, tag = value.get("repository"), value.get("tag")
        if not isinstance(repository, str) or not isRepositoryName(repository):
            raise StaticMapError(
                f"{source}: {name!r}: {repository!r} is not a repository name"
            )
        if tag is not None and not (isinstance(tag, str) and isTag(tag)):
            raise StaticMapError(f"{source}: {name!r}: {tag!r} is not a tag")
        entries[name] = Entry(repository, tag)
    return entries, passthrough


@implementer(IResolver)
@attrs.frozen
class StaticResolver:
    """
    Resolve names from a fixed map (see the module docstring).
    """

    entries: Mapping[str, Entry]
    passthrough: bool = False

    @classmethod
    def fromFile(cls, path: str) -> StaticResolver:
        """
        @raise StaticMapError: When the file cannot be read or used.
        """
        try:
            document = readTOML(path)
        except ValueError as e:
            raise StaticMapError(str(e)) from None
        entries, passthrough = parseMap(document, path)
        return cls(entries, passthrough)

    def resolve(
        self, reference: ImageReference, credentials: Credentials
    ) -> Deferred[Resolution]:
        tag = reference.tag
        if tag is not None and tag != DEFAULT_TAG:
            release = self.entries.get(f"{reference.name}/{tag.lower()}")
            if release is not None:
                return succeed(
                    Resolution(release.repository, release.tag or DEFAULT_TAG)
                )
        entry = self.entries.get(reference.name)
        if entry is None:
            if self.passthrough:
                return succeed(Resolution(reference.name, reference.manifestReference))
            return fail(NameUnknown(f"{reference.name} is not a known name"))
        upstream = reference.manifestReference
        if tag == DEFAULT_TAG and entry.tag is not None:
            upstream = entry.tag
        return succeed(Resolution(entry.repository, upstream))

    def listReleases(
        self, reference: ImageReference, credentials: Credentials
    ) -> Deferred[list[str] | None]:
        return succeed(None)


@implementer(IResolver)
class StaticMapFile:
    """
    The resolver of a C{static:FILE} map, read again on L{reload} (SIGHUP).
    """

    def __init__(self, path: str) -> None:
        """
        @raise StaticMapError: The file cannot be used at start-up.
        """
        self.path = path
        self.current = StaticResolver.fromFile(path)

    def reload(self) -> int:
        """
        @return: How many names the map now holds.
        @raise StaticMapError: It cannot be used; the map read before stays.
        """
        self.current = StaticResolver.fromFile(self.path)
        return len(self.current.entries)

    def resolve(self, reference: ImageReference, credentials: Credentials) -> Deferred:
        return self.current.resolve(reference, credentials)

    def listReleases(
        self, reference: ImageReference, credentials: Credentials
    ) -> Deferred:
        return self.current.listReleases(reference, credentials)
