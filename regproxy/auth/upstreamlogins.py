# -*- test-case-name: tests.unit.test_broker -*-
"""
Logins the upstream judges: regproxy has no users of its own and acts with
each client's own credentials.
"""

from __future__ import annotations

from collections import OrderedDict

import attrs
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from zope.interface import implementer

from regproxy.auth.credentials import BasicCredentials
from regproxy.auth.interfaces import Account, IAuthBackend, ILoginChecker, LoginFailed
from regproxy.names.scope import Scope


@implementer(IAuthBackend)
@attrs.define
class UpstreamLogins:
    """
    The upstream judges: a login is good when the upstream accepts it, and
    every request goes upstream with the client's own credentials, so a
    client gets exactly what the upstream would give it.  We grant what is
    asked; the upstream enforces it.
    """

    authenticator: ILoginChecker
    clock: IReactorTime
    rememberFor: float = 60.0
    _good: OrderedDict[str, float] = attrs.field(factory=OrderedDict)

    def login(self, credentials: BasicCredentials | None) -> Deferred:
        return Deferred.fromCoroutine(self._login(credentials))

    async def _login(self, credentials: BasicCredentials | None) -> Account:
        if credentials is None:
            return Account()
        if self.knownGood(credentials):
            return Account(credentials.username, credentials)
        if not await self.authenticator.checkLogin(credentials):
            raise LoginFailed()
        self._good[credentials.cacheKey] = self.clock.seconds() + self.rememberFor
        while len(self._good) > 4096:
            self._good.popitem(last=False)
        return Account(credentials.username, credentials)

    def knownGood(self, credentials: BasicCredentials) -> bool:
        return self._good.get(credentials.cacheKey, 0) > self.clock.seconds()

    def grant(self, account: Account, scopes: tuple[Scope, ...]) -> tuple[Scope, ...]:
        return scopes

    def upstreamCredentials(self, account: Account) -> BasicCredentials | None:
        return account.upstream
