# -*- test-case-name: tests.unit.test_broker -*-
"""
What a brokered client hears when the upstream refuses it: for a fleet
name, exactly what a missing fleet gets (a private fleet must look missing
to outsiders); otherwise our challenge or a plain denial.
"""

from __future__ import annotations

import attrs
from twisted.web.server import Request

from regproxy.auth.broker import Broker, requiredActions
from regproxy.auth.interfaces import Account
from regproxy.names.reference import RegistryPath
from regproxy.names.scope import Scope
from regproxy.resolve.interfaces import NameUnknown
from regproxy.server.errors import RegistryError


@attrs.frozen
class Refusals:
    """
    @ivar fleetNames: Whether names are fleet names (their refusals look
        like missing fleets).
    """

    broker: Broker
    fleetNames: bool

    def refused(self, request: Request, path: RegistryPath) -> RegistryError:
        """
        The upstream's token service refused the client's credentials
        (changed since the client logged in): for a fleet name, the same as
        a missing fleet; otherwise a 401 with our challenge, so the client
        logs in again.
        """
        assert path.name is not None
        fleet = path.imageReference().fleetName() if self.fleetNames else None
        if fleet is not None:
            return NameUnknown(f"no fleet {fleet.slug}").toRegistryError()
        needed = Scope(
            "repository", None, path.name, requiredActions(request.method, path.kind)
        )
        return self.broker.unauthorized(
            request, "the upstream registry refused these credentials", needed
        )

    def denied(
        self, request: Request, path: RegistryPath, account: Account
    ) -> RegistryError:
        """
        The upstream refused the client's own credentials.  For a fleet
        name, that must look exactly like a missing fleet.
        """
        assert path.name is not None
        reference = path.imageReference()
        fleet = reference.fleetName() if self.fleetNames else None
        if fleet is not None:
            return NameUnknown(f"no fleet {fleet.slug}").toRegistryError()
        if account.name is None:
            needed = Scope(
                "repository",
                None,
                path.name,
                requiredActions(request.method, path.kind),
            )
            return self.broker.unauthorized(
                request, "authentication required", needed, "insufficient_scope"
            )
        return RegistryError(
            403, "DENIED", "requested access to the resource is denied"
        )
