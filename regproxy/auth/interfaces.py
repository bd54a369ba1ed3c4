# -*- test-case-name: tests.unit.test_broker -*-
"""
The seam between the broker and whoever judges logins: an L{IAuthBackend}
says who a client is and what it may do.
"""

from __future__ import annotations

import attrs
from twisted.internet.defer import Deferred
from zope.interface import Interface

from regproxy.auth.credentials import BasicCredentials
from regproxy.names.scope import Scope


class LoginFailed(Exception):
    """
    The credentials a client gave are wrong.
    """


@attrs.frozen
class Account:
    """
    Who a client is to us.

    @ivar name: The user name, or L{None} for an anonymous client.
    @ivar upstream: The credentials to act with towards the upstream on
        this client's behalf, or L{None}.
    """

    name: str | None = None
    upstream: BasicCredentials | None = None


class ILoginChecker(Interface):
    """
    Something that can tell whether credentials are good, by asking the
    service they belong to.
    """

    async def checkLogin(credentials: BasicCredentials) -> bool:
        """
        Whether the credentials are accepted.
        """


class IAuthBackend(Interface):
    """
    Decides who a client is and what it may do.
    """

    def login(credentials: BasicCredentials | None) -> Deferred:
        """
        Fire with the L{Account} for C{credentials} (L{None}: anonymous), or
        fail with L{LoginFailed}.
        """

    def knownGood(credentials: BasicCredentials) -> bool:
        """
        Whether C{credentials} were accepted lately, so that a login with
        them costs no check (and so need not be throttled).
        """

    def grant(account: Account, scopes: tuple[Scope, ...]) -> tuple[Scope, ...]:
        """
        What of C{scopes} C{account} gets; a denial is an empty grant.
        """

    def upstreamCredentials(account: Account) -> BasicCredentials | None:
        """
        The credentials to reach the upstream with for C{account}.
        """
