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
from twisted.web.server import Request

from regproxy.auth.credentials import BasicCredentials
from regproxy.auth.interfaces import Account, IAuthBackend, LoginFailed
from regproxy.auth.jwt import TokenError, TokenIssuer, TokenVerifier
from regproxy.auth.sealing import Sealer, SealError
from regproxy.auth.throttle import Attempt, LoginThrottle, Throttled
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


def _allowed(access: Any, needed: Scope) -> bool:
    granted: set[str] = set()
    if isinstance(access, list):
        for entry in access:
            if (
                isinstance(entry, dict)
                and entry.get("type") == needed.resourceType
                and entry.get("name") == needed.name
                and isinstance(entry.get("actions"), list)
            ):
                granted.update(a for a in entry["actions"] if isinstance(a, str))
    return "*" in granted or all(action in granted for action in needed.actions)


def _clientHost(request: Request) -> str:
    """
    The client's address: through trusted proxies, the client's own (a
    proxy in front must not make every client share one budget).
    """
    view = getattr(request, "clientView", None)
    if view is not None:
        return view.address
    return getattr(request.getClientAddress(), "host", None) or "local"


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
    throttle: LoginThrottle | None = None
    _verified: OrderedDict[str, tuple[dict[str, Any], float]] = attrs.field(
        factory=OrderedDict
    )
    #: How many tokens were signed, and logins refused for wrong
    #: credentials (read by the metrics).
    tokensIssued: int = 0
    loginsRefused: int = 0

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

    @property
    def loginsThrottled(self) -> int:
        """
        How many logins were answered 429 (for metrics).
        """
        return self.throttle.throttled if self.throttle is not None else 0

    async def login(
        self, request: Request, credentials: BasicCredentials | None
    ) -> Account:
        """
        Who C{credentials} (L{None}: anonymous) are, as the backend says,
        throttled by account and client address when we have a throttle
        (unless they were accepted lately: that costs no check, and keeps
        an account's owner in while others guess its password).

        @raise LoginFailed: The credentials are wrong.
        @raise RegistryError: 429 when this account or address has used up
            its budget of failed logins or its share of checks.
        """
        attempt: Attempt | None = None
        if (
            credentials is not None
            and self.throttle is not None
            and not self.backend.knownGood(credentials)
        ):
            try:
                attempt = self.throttle.admit(
                    credentials.username, _clientHost(request)
                )
            except Throttled as e:
                raise RegistryError(
                    429,
                    "TOOMANYREQUESTS",
                    f"too many login attempts; try again in {e.retryAfter}s",
                    None,
                    ((b"Retry-After", b"%d" % (e.retryAfter,)),),
                ) from None
        failed = False
        try:
            return await self.backend.login(credentials)
        except LoginFailed:
            failed = True
            self.loginsRefused += 1
            raise
        finally:
            if attempt is not None:
                attempt.finished(failed)

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
        return await self.authorizeScope(request, needed)

    async def authorizeScope(self, request: Request, needed: Scope | None) -> Account:
        """
        Who is asking, if our token (or Basic credentials) grants C{needed}
        (L{None}: any valid login, or none).

        @raise RegistryError: 401 with our challenge otherwise.
        """
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
                account = await self.login(request, credentials)
            except LoginFailed:
                raise self.unauthorized(
                    request, "wrong user name or password"
                ) from None
            access = [
                {"type": s.resourceType, "name": s.name, "actions": list(s.actions)}
                for s in self.backend.grant(account, (needed,) if needed else ())
            ]
        if needed is not None and not _allowed(access, needed):
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
