# -*- test-case-name: tests.unit.test_broker -*-
"""
regproxy as an authentication broker: our own tokens, issued at C{/token}
and checked on C{/v2/}.

Clients never see an upstream token.  What we need to act for a client
later, its upstream credentials, travels sealed inside our token, so any
regproxy holding the same keys can serve the next request: no server-side
session.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any

import attrs
from twisted.logger import Logger
from twisted.web.server import Request

from regproxy.auth.credentials import BasicCredentials
from regproxy.auth.interfaces import Account, IAuthBackend, LoginFailed
from regproxy.auth.jwt import TokenError, TokenIssuer, TokenVerifier
from regproxy.auth.sealing import Sealer, SealError
from regproxy.names.challenge import bearer
from regproxy.names.reference import BASE, RegistryPath
from regproxy.names.scope import Scope
from regproxy.server.errors import RegistryError
from regproxy.server.urls import publicBase

_UPSTREAM_CREDENTIALS = "upstream-credentials"
_REFRESH = "refresh-token"
_SEALED_CLAIM = "rpx"
# How long a refresh token (POST grant_type=password, access_type=offline)
# stays good.
REFRESH_LIFETIME = 30 * 24 * 3600


def requiredActions(method: bytes, kind: str) -> tuple[str, ...]:
    """
    The scope actions a request needs, as distribution requires them.
    """
    if method in (b"GET", b"HEAD"):
        return ("pull",)
    if method == b"DELETE":
        return ("delete",)
    return ("pull", "push")


def _allowed(access: Any, name: str, actions: tuple[str, ...]) -> bool:
    granted: set[str] = set()
    if isinstance(access, list):
        for entry in access:
            if (
                isinstance(entry, dict)
                and entry.get("type") == "repository"
                and entry.get("name") == name
                and isinstance(entry.get("actions"), list)
            ):
                granted.update(a for a in entry["actions"] if isinstance(a, str))
    return "*" in granted or all(action in granted for action in actions)


@attrs.define
class Broker:
    """
    Our tokens: issuing them at C{/token} and checking them on C{/v2/}.
    """

    issuer: TokenIssuer
    verifier: TokenVerifier
    sealer: Sealer
    backend: IAuthBackend
    serviceName: str
    publicURL: str | None = None
    _verified: OrderedDict[str, tuple[dict[str, Any], float]] = attrs.field(
        factory=OrderedDict
    )
    #: How many tokens were signed, and logins refused for wrong
    #: credentials (read by the metrics).
    tokensIssued: int = 0
    loginsRefused: int = 0

    _log = Logger()

    def challengeFor(
        self,
        request: Request,
        scope: Scope | None = None,
        error: str | None = None,
    ) -> tuple[tuple[bytes, bytes], ...]:
        realm = publicBase(request, self.publicURL).decode("latin-1") + "/token"
        params: dict[str, str] = {}
        if scope is not None:
            params["scope"] = scope.serialize()
        if error is not None:
            params["error"] = error
        value = bearer(realm, self.serviceName, **params).serialize()
        return ((b"WWW-Authenticate", value.encode("latin-1")),)

    def unauthorized(
        self,
        request: Request,
        message: str,
        scope: Scope | None = None,
        error: str | None = None,
    ) -> RegistryError:
        return RegistryError(
            401,
            "UNAUTHORIZED",
            message,
            None,
            self.challengeFor(request, scope, error),
        )

    # Issuing

    def issue(
        self, account: Account, scopes: tuple[Scope, ...], service: str | None = None
    ) -> Any:
        """
        Sign a token for C{account} with what it may have of C{scopes}.

        @param service: The service the client asked for.  Only a backend
            whose grants hold anywhere (our own users and rules) signs for
            another service than ours, acting as a registry's token server.
        """
        audience = self.serviceName
        if service and getattr(self.backend, "issuesForOtherServices", False):
            audience = service
        extra = {}
        if account.upstream is not None:
            extra[_SEALED_CLAIM] = self.sealer.sealJSON(
                {"u": account.upstream.username, "p": account.upstream.password},
                _UPSTREAM_CREDENTIALS,
            )
        granted = self.backend.grant(account, scopes)
        self.tokensIssued += 1
        return self.issuer.issue(account.name, audience, granted, extra)

    def refreshToken(self, credentials: BasicCredentials) -> str:
        expires = int(self.issuer.clock.seconds()) + REFRESH_LIFETIME
        return self.sealer.sealJSON(
            {"u": credentials.username, "p": credentials.password, "exp": expires},
            _REFRESH,
        )

    def openRefreshToken(self, token: str) -> BasicCredentials | None:
        try:
            value = self.sealer.openJSON(token, _REFRESH)
        except SealError:
            return None
        if (
            not isinstance(value, dict)
            or not isinstance(value.get("u"), str)
            or not isinstance(value.get("p"), str)
            or not isinstance(value.get("exp"), int)
            or value["exp"] < self.issuer.clock.seconds()
        ):
            return None
        return BasicCredentials(value["u"], value["p"])

    # Checking

    async def authorize(self, request: Request, path: RegistryPath) -> Account:
        """
        Who is asking, if our token (or Basic credentials) allows this
        request.

        @raise RegistryError: 401 with our challenge otherwise.
        """
        needed = None
        if path.kind != BASE and path.name is not None:
            needed = Scope(
                "repository",
                None,
                path.name,
                requiredActions(request.method, path.kind),
            )
        header = request.getHeader(b"authorization") or b""
        if header[:7].lower() == b"bearer ":
            try:
                claims = self._verify(header[7:].strip().decode("latin-1"))
            except TokenError:
                raise self.unauthorized(
                    request, "the token is invalid or expired", needed, "invalid_token"
                ) from None
            account = self._accountFromClaims(claims)
            access = claims.get("access")
        else:
            credentials = BasicCredentials.fromHeader(header)
            if credentials is None:
                raise self.unauthorized(request, "authentication required", needed)
            try:
                account = await self.backend.login(credentials)
            except LoginFailed:
                raise self.unauthorized(
                    request, "wrong user name or password"
                ) from None
            access = [
                {"type": s.resourceType, "name": s.name, "actions": list(s.actions)}
                for s in self.backend.grant(account, (needed,) if needed else ())
            ]
        if needed is not None and not _allowed(access, needed.name, needed.actions):
            raise self.unauthorized(
                request,
                "the token does not grant this access",
                needed,
                "insufficient_scope",
            )
        return account

    def _verify(self, token: str) -> dict[str, Any]:
        """
        Check a token, remembering good ones until they expire: a client
        sends the same token on every request, and an ECDSA check per
        request would cost more than the rest of the request.
        """
        now = self.issuer.clock.seconds()
        known = self._verified.get(token)
        if known is not None and known[1] > now:
            return known[0]
        claims = self.verifier.verify(token)
        expires = claims.get("exp")
        if isinstance(expires, (int, float)):
            self._verified[token] = (claims, float(expires))
            while len(self._verified) > 4096:
                self._verified.popitem(last=False)
        return claims

    def _accountFromClaims(self, claims: dict[str, Any]) -> Account:
        name = claims.get("sub") or None
        sealed = claims.get(_SEALED_CLAIM)
        upstream = None
        if isinstance(sealed, str):
            try:
                value = self.sealer.openJSON(sealed, _UPSTREAM_CREDENTIALS)
                upstream = BasicCredentials(str(value["u"]), str(value["p"]))
            except (SealError, KeyError, TypeError):
                upstream = None
        return Account(name if isinstance(name, str) else None, upstream)
