# -*- test-case-name: tests.unit.test_reference -*-
"""
Image names, as values: what a client asked for, parsed once at the edge.

Three grammars meet here:

  - the distribution specification's repository names (lower-case path
    components separated by C{/}), tags (C{[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}})
    and digests (C{algorithm:hex}), which every client already enforces;
  - fleet names, C{org/fleet[/release][/service]}, with slugs
    C{[a-z0-9_-]+} and releases C{[a-z0-9_.-]+};
  - the C{/v2/} request paths, C{/v2/<name>/manifests/<reference>} and
    friends, where the name may hold several segments (and even a segment
    called C{manifests}), so the path is split at the I{last} marker.

The release of a fleet name comes from the path if it has one; otherwise a
tag other than C{latest} selects it (C{org/fleet:1.2.3} means
C{org/fleet/1.2.3}).  A digest is always passed upstream as it is.
"""

from __future__ import annotations

import re

import attrs

#: Release selectors that mean "the fleet's target release".
ALIASES = frozenset({"latest", "current", "default", "pinned"})

#: The tag a client means when it gives none.
DEFAULT_TAG = "latest"

_COMPONENT = re.compile(r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*\Z")
_TAG = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}\Z")
_ALGORITHM = re.compile(r"[a-z0-9]+(?:[.+_-][a-z0-9]+)*\Z")
_ENCODED = re.compile(r"[a-zA-Z0-9=_-]{32,}\Z")
_HEX_LENGTHS = {"sha256": 64, "sha384": 96, "sha512": 128}
_SLUG = re.compile(r"[a-z0-9_-]+\Z")
_RELEASE = re.compile(r"[a-z0-9_.-]+\Z")
_MAX_NAME = 255


class InvalidReference(ValueError):
    """
    A name, tag, digest or path that does not follow its grammar.

    @ivar code: The registry error code to answer with (C{NAME_INVALID},
        C{TAG_INVALID}, C{DIGEST_INVALID}).
    """

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def isRepositoryName(text: str) -> bool:
    """
    Whether C{text} is a repository name under the distribution grammar
    (no host part: that is never in a request path).
    """
    if not text or len(text) > _MAX_NAME:
        return False
    return all(_COMPONENT.match(part) for part in text.split("/"))


def isTag(text: str) -> bool:
    return _TAG.match(text) is not None


def _checkRepositoryName(
    instance: object, attribute: attrs.Attribute, value: str
) -> None:
    if not isinstance(value, str) or not isRepositoryName(value):
        raise InvalidReference("NAME_INVALID", f"invalid repository name {value!r}")


@attrs.frozen
class Digest:
    """
    A content digest, C{algorithm:encoded}.  The well-known algorithms must
    have lower-case hex of their length (C{sha256} is 64 characters).
    """

    algorithm: str
    encoded: str

    def __attrs_post_init__(self) -> None:
        if not (
            isinstance(self.algorithm, str)
            and isinstance(self.encoded, str)
            and _ALGORITHM.match(self.algorithm)
            and _ENCODED.match(self.encoded)
        ):
            raise InvalidReference("DIGEST_INVALID", "invalid digest")
        length = _HEX_LENGTHS.get(self.algorithm)
        if length is not None and not (
            len(self.encoded) == length
            and all(c in "0123456789abcdef" for c in self.encoded)
        ):
            raise InvalidReference(
                "DIGEST_INVALID",
                f"a {self.algorithm} digest is {length} lower-case hex digits",
            )

    @classmethod
    def parse(cls, text: str) -> Digest:
        algorithm, colon, encoded = text.partition(":")
        if not colon:
            raise InvalidReference("DIGEST_INVALID", "invalid digest")
        return cls(algorithm, encoded)

    def __str__(self) -> str:
        return f"{self.algorithm}:{self.encoded}"


def _optional(pattern: re.Pattern[str], what: str):
    def check(instance: object, attribute: attrs.Attribute, value: str | None) -> None:
        if value is not None and not (isinstance(value, str) and pattern.match(value)):
            raise InvalidReference("NAME_INVALID", f"invalid {what} {value!r}")

    return check


def _required(pattern: re.Pattern[str], what: str):
    def check(instance: object, attribute: attrs.Attribute, value: str) -> None:
        if not (isinstance(value, str) and pattern.match(value)):
            raise InvalidReference("NAME_INVALID", f"invalid {what} {value!r}")

    return check


@attrs.frozen
class FleetName:
    """
    C{org/fleet[/release][/service]}: a fleet, and optionally the release
    and the service whose image is wanted.  A service needs a release
    (C{latest} will do): a third segment is always the release.
    """

    org: str = attrs.field(validator=_required(_SLUG, "organization"))
    fleet: str = attrs.field(validator=_required(_SLUG, "fleet"))
    release: str | None = attrs.field(
        default=None, validator=_optional(_RELEASE, "release")
    )
    service: str | None = attrs.field(
        default=None, validator=_optional(_RELEASE, "service")
    )

    def __attrs_post_init__(self) -> None:
        if self.service is not None and self.release is None:
            raise InvalidReference("NAME_INVALID", "a service needs a release")

    @classmethod
    def parse(cls, name: str) -> FleetName:
        """
        @raise InvalidReference: When C{name} is not a fleet name.
        """
        parts = name.split("/")
        if not 2 <= len(parts) <= 4:
            raise InvalidReference(
                "NAME_INVALID", "a fleet name is org/fleet[/release][/service]"
            )
        return cls(*parts)

    @property
    def slug(self) -> str:
        """
        The fleet's slug as the balena API knows it, C{org/fleet}.
        """
        return f"{self.org}/{self.fleet}"

    def withRelease(self, release: str | None) -> FleetName:
        return attrs.evolve(self, release=release)

    def __str__(self) -> str:
        return "/".join(
            part
            for part in (self.org, self.fleet, self.release, self.service)
            if part is not None
        )


@attrs.frozen
class ImageReference:
    """
    A repository name as the client wrote it, with the manifest reference
    asked for: a tag, a digest, or neither (a blob or tag-list request).

    @ivar name: A valid repository name, e.g. C{acme/app/1.2.3}.
    """

    name: str = attrs.field(validator=_checkRepositoryName)
    tag: str | None = None
    digest: Digest | None = None

    def __attrs_post_init__(self) -> None:
        if self.tag is not None and not (isinstance(self.tag, str) and isTag(self.tag)):
            raise InvalidReference("TAG_INVALID", f"invalid tag {self.tag!r}")
        if self.tag is not None and self.digest is not None:
            raise InvalidReference("TAG_INVALID", "give a tag or a digest, not both")

    @classmethod
    def fromManifestPath(cls, name: str, reference: str) -> ImageReference:
        """
        The value for C{/v2/<name>/manifests/<reference>}.
        """
        if ":" in reference:
            return cls(name, digest=Digest.parse(reference))
        return cls(name, tag=reference)

    @classmethod
    def parse(cls, text: str) -> ImageReference:
        """
        Parse C{name[:tag]} or C{name@digest}, the inverse of L{str}.
        """
        name, at, digest = text.partition("@")
        if at:
            return cls(name, digest=Digest.parse(digest))
        name, colon, tag = name.rpartition(":") if ":" in name else (name, "", "")
        return cls(name, tag=tag if colon else None)

    @property
    def manifestReference(self) -> str | None:
        """
        The manifest reference as it appears in a path, or L{None}.
        """
        if self.digest is not None:
            return str(self.digest)
        return self.tag

    def fleetName(self) -> FleetName | None:
        """
        The fleet name meant, with the release the tag selects when the
        path has none; L{None} when the name is not a fleet name.
        """
        try:
            fleet = FleetName.parse(self.name)
        except InvalidReference:
            return None
        if fleet.release is None and self.tag is not None and self.tag != DEFAULT_TAG:
            try:
                return fleet.withRelease(self.tag)
            except InvalidReference:
                # Tags allow upper case; releases do not.  Keep the tag so
                # the resolver can say which release was not found.
                return attrs.evolve(fleet, release=self.tag.lower())
        return fleet

    def __str__(self) -> str:
        if self.digest is not None:
            return f"{self.name}@{self.digest}"
        if self.tag is not None:
            return f"{self.name}:{self.tag}"
        return self.name


#: Request kinds under C{/v2/}, with the path marker that introduces each.
BASE = "base"
MANIFESTS = "manifests"
BLOBS = "blobs"
UPLOADS = "uploads"
TAGS = "tags"
REFERRERS = "referrers"

_PATHS = (
    (MANIFESTS, re.compile(r"/v2/(?P<name>.+)/manifests/(?P<ref>[^/]+)\Z")),
    (UPLOADS, re.compile(r"/v2/(?P<name>.+)/blobs/uploads/?(?P<ref>[^/]*)\Z")),
    (BLOBS, re.compile(r"/v2/(?P<name>.+)/blobs/(?P<ref>[^/]+)\Z")),
    (TAGS, re.compile(r"/v2/(?P<name>.+)/tags/list\Z")),
    (REFERRERS, re.compile(r"/v2/(?P<name>.+)/referrers/(?P<ref>[^/]+)\Z")),
)


@attrs.frozen
class RegistryPath:
    """
    A parsed C{/v2/...} request path.

    @ivar kind: One of L{BASE}, L{MANIFESTS}, L{BLOBS}, L{UPLOADS}, L{TAGS},
        L{REFERRERS}.
    @ivar name: The repository name (L{None} for L{BASE}).
    @ivar reference: The last segment: a tag or digest (manifests), a digest
        (blobs, referrers), an upload id (uploads; C{""} to start one), or
        L{None}.
    """

    kind: str
    name: str | None = None
    reference: str | None = None

    def imageReference(self) -> ImageReference:
        """
        What the client asked for: for a manifest, the name with its
        reference; for anything else, the name alone.
        """
        if self.name is None:
            raise InvalidReference("NAME_INVALID", "no repository name")
        if self.kind == MANIFESTS and self.reference is not None:
            return ImageReference.fromManifestPath(self.name, self.reference)
        return ImageReference(self.name)

    def toPath(self) -> str:
        if self.kind == BASE:
            return "/v2/"
        if self.kind == TAGS:
            return f"/v2/{self.name}/tags/list"
        if self.kind == UPLOADS:
            return f"/v2/{self.name}/blobs/uploads/{self.reference or ''}"
        return f"/v2/{self.name}/{self.kind}/{self.reference}"


def parsePath(path: str | bytes) -> RegistryPath:
    """
    Parse a request path under C{/v2/} (without its query string).

    @raise InvalidReference: When the path is not a registry API path
        (C{NOT_FOUND}), or its name, tag or digest is malformed (C{code}
        says which).
    """
    if isinstance(path, bytes):
        try:
            path = path.decode("ascii")
        except UnicodeDecodeError:
            raise InvalidReference("NAME_INVALID", "path is not ASCII") from None
    path = path.split("?", 1)[0]
    if path in ("/v2", "/v2/"):
        return RegistryPath(BASE)
    for kind, pattern in _PATHS:
        match = pattern.match(path)
        if match is None:
            continue
        name = match.group("name")
        if not isRepositoryName(name):
            raise InvalidReference("NAME_INVALID", f"invalid repository name {name!r}")
        ref: str | None = match.groupdict().get("ref")
        if kind == MANIFESTS:
            ImageReference.fromManifestPath(name, ref or "")  # checks it
        elif kind in (BLOBS, REFERRERS):
            Digest.parse(ref or "")
        return RegistryPath(kind, name, ref)
    # distribution answers 404 for a path none of its routes match.
    raise InvalidReference("NOT_FOUND", "not a registry API path")
