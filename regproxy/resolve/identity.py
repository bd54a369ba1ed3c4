# -*- test-case-name: tests.unit.test_resolve_identity -*-
"""
The resolver for a plain registry: names mean what they say.
"""

from __future__ import annotations

from twisted.internet.defer import Deferred, succeed
from zope.interface import implementer

from regproxy.names.reference import ImageReference
from regproxy.resolve.interfaces import Credentials, IResolver, Resolution


@implementer(IResolver)
class IdentityResolver:
    """
    Every valid repository name is the upstream repository of the same
    name, asked for with the client's own tag or digest.  Tag lists are the
    upstream's.
    """

    def resolve(
        self, reference: ImageReference, credentials: Credentials
    ) -> Deferred[Resolution]:
        return succeed(Resolution(reference.name, reference.manifestReference))

    def listReleases(
        self, reference: ImageReference, credentials: Credentials
    ) -> Deferred[list[str] | None]:
        return succeed(None)
