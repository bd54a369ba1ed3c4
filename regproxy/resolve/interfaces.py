# -*- test-case-name: tests.unit.test_resolve_balena -*-
"""
The seam between what a client asks for and where it lives upstream.

A resolver turns an L{ImageReference} (C{acme/app/1.2.3}, C{acme/app:1.2.3},
C{acme/app@sha256:...}) into a L{Resolution}: the upstream repository
(C{v2/<hash>}) and the manifest reference to ask it for.  Who asks matters
(a private fleet exists only for its members), so every call carries
L{Credentials}, and answers are cached per name I{and} per asker.

Failures are typed (L{ResolveError} subclasses) so the site can answer
each with the right registry error; L{ResolveError.toRegistryError} does
the mapping.
"""

from __future__ import annotations

import hashlib
from typing import Any

import attrs
from twisted.internet.defer import Deferred
from zope.interface import Interface

from regproxy.names.reference import ImageReference
from regproxy.server.errors import RegistryError, TranslatableError

#: Where an API key came from.
CLIENT = "client"  # the password of the client's Basic login
SERVER = "server"  # regproxy's own API_TOKEN
ANONYMOUS = "anonymous"


@attrs.frozen
class Credentials:
    """
    Who asks the resolver: an API key and where it came from, or nobody.
    The key never appears in C{repr}, logs or cache keys.
    """

    apiKey: str | None = attrs.field(default=None, repr=False)
    source: str = ANONYMOUS

    def __attrs_post_init__(self) -> None:
        if (self.apiKey is None) != (self.source == ANONYMOUS):
            raise ValueError("an API key needs a source, and anonymous has no key")

    @classmethod
    def anonymous(cls) -> Credentials:
        return cls()

    @classmethod
    def fromClient(cls, apiKey: str) -> Credentials:
        return cls(apiKey, CLIENT)

    @classmethod
    def fromServer(cls, apiKey: str) -> Credentials:
        return cls(apiKey, SERVER)

    @classmethod
    def choose(cls, clientKey: str | None, serverKey: str | None) -> Credentials:
        """
        The client's own key when it logged in, else the server's
        C{API_TOKEN} when set, else anonymous.
        """
        if clientKey:
            return cls.fromClient(clientKey)
        if serverKey:
            return cls.fromServer(serverKey)
        return cls.anonymous()

    @property
    def cacheKey(self) -> str:
        """
        Identifies the asker for caching without holding the key itself.
        """
        if self.apiKey is None:
            return ANONYMOUS
        return hashlib.sha256(self.apiKey.encode("utf-8")).hexdigest()[:32]

    def authorization(self) -> bytes | None:
        """
        The C{Authorization} header value for the balena API, or L{None}.
        """
        if self.apiKey is None:
            return None
        return b"Bearer " + self.apiKey.encode("utf-8")


@attrs.frozen
class Resolution:
    """
    Where an image lives upstream.

    @ivar repository: The upstream repository name, e.g. C{v2/<32 hex>}.
    @ivar reference: The manifest reference to ask the upstream for: the
        client's digest unchanged, or the tag the upstream knows the image
        by (C{latest} for balena); L{None} when the client gave none (blob
        and upload requests).
    @ivar registry: The upstream host named by the API
        (C{registry2.balena-cloud.com}), when the resolver knows it.
    @ivar commit: The release's commit, when known.
    @ivar version: The release's raw version (C{1.2.3}, C{1.2.3+rev2},
        C{1.2.3-1648554962021}), when known.
    @ivar contentHash: The image's manifest digest, when known.
    @ivar service: The service the image is a build of, when known.
    @ivar staleBecause: Why this is a remembered answer rather than the
        API's word now (the API could not be asked), or L{None} for a fresh
        one.  A client that does not get the bytes must hear this error, as
        for a name nobody remembers.  Not part of the answer's equality.
    """

    repository: str
    reference: str | None
    registry: str | None = None
    commit: str | None = None
    version: str | None = None
    contentHash: str | None = None
    service: str | None = None
    staleBecause: Exception | None = attrs.field(
        default=None, eq=False, repr=False, kw_only=True
    )

    @property
    def stale(self) -> bool:
        return self.staleBecause is not None

    def asStale(self, because: Exception) -> Resolution:
        """
        This answer, remembered, served because the API failed with
        C{because}.
        """
        return attrs.evolve(self, staleBecause=because)


class ResolveError(TranslatableError):
    """
    A name could not be resolved; what the client should be told.

    @ivar status: The HTTP status.
    @ivar code: The registry error code.
    @ivar message: A sentence for the user (never a key or a token).
    @ivar detail: Optional structured detail for the error body.
    """

    status = 500
    code = "UNKNOWN"
    #: A definite answer, cached briefly as a miss (not a transport error).
    definite = True

    def __init__(self, message: str, detail: Any = None) -> None:
        super().__init__(message)
        self.message = message
        self.detail = detail

    def toRegistryError(self) -> RegistryError:
        """
        The L{RegistryError} to answer with.
        """
        return RegistryError(self.status, self.code, self.message, self.detail)

    def __eq__(self, other: object) -> bool:
        return (
            type(self) is type(other)
            and (self.status, self.message, self.detail)
            == (other.status, other.message, other.detail)  # type: ignore[attr-defined]
        )

    def __hash__(self) -> int:
        return hash((type(self), self.status, self.message))

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.status}, {self.message!r})"


class NameUnknown(ResolveError):
    """
    No such organization or fleet, or one the asker may not see: the two
    must look the same.
    """

    status = 404
    code = "NAME_UNKNOWN"


class ManifestUnknown(ResolveError):
    """
    The fleet exists but the release (or service) asked for does not, or
    did not build; the message carries a hint when there is one.
    """

    status = 404
    code = "MANIFEST_UNKNOWN"


class ServiceRequired(ResolveError):
    """
    A release with several services was asked for without naming one.

    @ivar services: The release's service names, sorted.
    """

    status = 400
    code = "NAME_INVALID"

    def __init__(self, message: str, services: tuple[str, ...]) -> None:
        super().__init__(message, {"services": list(services)})
        self.services = services


class NotAuthorized(ResolveError):
    """
    The API refused the asker's key outright (not the silent empty answer
    it gives for a fleet the key may not see).
    """

    status = 401
    code = "UNAUTHORIZED"


class ResolverUnavailable(ResolveError):
    """
    The API could not be asked: down, erroring, too slow or answering
    nonsense.  Never cached; a stale answer may be served instead.
    """

    code = "UNAVAILABLE"
    definite = False

    def __init__(self, message: str, status: int = 502) -> None:
        super().__init__(message)
        self.status = status


class IResolver(Interface):
    """
    Turns the names clients use into upstream repositories.
    """

    def resolve(
        reference: ImageReference, credentials: Credentials
    ) -> Deferred[Resolution]:
        """
        Where the image C{reference} lives, as C{credentials} may see it.

        @return: A Deferred firing with a L{Resolution}, or failing with a
            L{ResolveError}.
        """

    def listReleases(
        reference: ImageReference, credentials: Credentials
    ) -> Deferred[list[str] | None]:
        """
        The tags a client may pull for the repository C{reference} (its
        name alone matters), for C{GET /v2/<name>/tags/list}.

        @return: A Deferred firing with a list of tags, or with L{None}
            when this resolver does not own tag lists (the upstream's own
            list for the resolved repository should be relayed), or
            failing with a L{ResolveError}.
        """
