# -*- test-case-name: tests.unit.test_userauth -*-
"""
regproxy's own users as the auth backend: bcrypt htpasswd logins and access
rules, in front of any upstream.

The upstream then sees regproxy, not the client: requests go up with the
configured service credentials (C{--upstream-user}) or anonymously.
"""

from __future__ import annotations

import attrs
from twisted.internet.defer import Deferred
from zope.interface import implementer

from regproxy.auth.access import AccessRules, AccessRulesFile
from regproxy.auth.credentials import BasicCredentials
from regproxy.auth.htpasswd import HtpasswdUsers, TooManyChecks
from regproxy.auth.interfaces import Account, IAuthBackend, LoginFailed
from regproxy.names.scope import Scope
from regproxy.server.errors import unavailable


@implementer(IAuthBackend)
@attrs.frozen
class HtpasswdLogins:
    """
    Users from an htpasswd file, grants from access rules.

    @ivar serviceCredentials: What regproxy authenticates to the upstream
        with, for every client.
    """

    users: HtpasswdUsers
    rules: AccessRules | AccessRulesFile
    serviceCredentials: BasicCredentials | None = None

    # Our grants are enforced by us and by any registry that trusts our
    # tokens, so a token may name another service (a distribution registry
    # that uses regproxy as its token server).
    issuesForOtherServices = True

    def login(self, credentials: BasicCredentials | None) -> Deferred:
        return Deferred.fromCoroutine(self._login(credentials))

    async def _login(self, credentials: BasicCredentials | None) -> Account:
        if credentials is None:
            return Account()
        try:
            good = await self.users.checkPassword(
                credentials.username, credentials.password
            )
        except TooManyChecks:
            raise unavailable(
                "too many logins at once; try again", status=503
            ) from None
        if not good:
            raise LoginFailed()
        return Account(credentials.username, None)

    def knownGood(self, credentials: BasicCredentials) -> bool:
        return self.users.remembers(credentials.username, credentials.password)

    def grant(self, account: Account, scopes: tuple[Scope, ...]) -> tuple[Scope, ...]:
        return self.rules.grant(account.name, scopes)

    def upstreamCredentials(self, account: Account) -> BasicCredentials | None:
        return self.serviceCredentials
