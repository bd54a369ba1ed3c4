# -*- test-case-name: tests.unit.test_broker -*-
"""
Our C{/token}: the Docker token flow (GET) and the OAuth2 form (POST).
"""

from __future__ import annotations

from typing import Any

from twisted.web.server import Request

from regproxy.auth.broker import Broker
from regproxy.auth.credentials import BasicCredentials
from regproxy.auth.interfaces import Account, LoginFailed
from regproxy.auth.jwt import tokenResponseBody
from regproxy.names.scope import Scope, parseScopes
from regproxy.server.errors import RegistryError
from regproxy.server.rendering import TokenEndpoint, renderLater
from regproxy.server.request import firstArgument

#: The most scopes one token request may ask for: a pull asks for one, a
#: push with cross-repository mounts for a few.
MAX_SCOPES = 64


def _loginRefused(message: str) -> RegistryError:
    return RegistryError(
        401,
        "UNAUTHORIZED",
        message,
        None,
        ((b"WWW-Authenticate", b'Basic realm="regproxy"'),),
    )


class TokenResource(TokenEndpoint):
    """
    C{/token}: GET (the Docker token flow: repeated C{scope}, C{service},
    C{account}, C{client_id}, C{offline_token}) and POST (the OAuth2 form:
    C{grant_type=password} or C{refresh_token}).  Without a scope it is a
    C{docker login}: it succeeds when the credentials are good.
    """

    isLeaf = True

    def __init__(self, broker: Broker) -> None:
        super().__init__()
        self._broker = broker

    @property
    def broker(self) -> Broker:
        """
        The broker, whose C{loginsRefused} and C{loginsThrottled} count
        refused and throttled logins (for metrics).
        """
        return self._broker

    def render_GET(self, request: Request) -> object:
        return self._start(request, self._get(request))

    def render_POST(self, request: Request) -> object:
        return self._start(request, self._post(request))

    def _start(self, request: Request, coroutine: Any) -> object:
        return renderLater(request, coroutine)

    def _scopes(self, request: Request) -> tuple[Scope, ...]:
        """
        The scopes asked for, checked before any login so that asking for
        thousands costs us nothing.

        @raise RegistryError: 400 for more than L{MAX_SCOPES}.
        """
        raws = request.args.get(b"scope", [])  # type: ignore[attr-defined]
        if sum(len(raw.split()) for raw in raws) > MAX_SCOPES:
            raise RegistryError(
                400, "BAD_REQUEST", f"at most {MAX_SCOPES} scopes per token request"
            )
        values = []
        for raw in raws:
            try:
                values.append(raw.decode("utf-8"))
            except UnicodeDecodeError:
                continue
        return parseScopes(values)

    async def _login(
        self, request: Request, credentials: BasicCredentials | None
    ) -> Account:
        try:
            return await self._broker.login(request, credentials)
        except LoginFailed:
            raise _loginRefused("wrong user name or password") from None

    def _credentials(self, request: Request) -> BasicCredentials | None:
        """
        The client's Basic credentials; L{None} only when it sent no
        C{Authorization} at all (an anonymous login).

        @raise RegistryError: 401 for a header that is not one well-formed
            Basic value: taking it as anonymous would make C{docker login}
            report success for credentials nobody checked.
        """
        headers = request.requestHeaders.getRawHeaders(b"authorization")
        if headers is None:
            return None
        credentials = BasicCredentials.fromHeader(headers[0])
        if credentials is None or len(headers) != 1:
            raise _loginRefused(
                "malformed Authorization header: expected Basic credentials "
                "(base64 of user:password)"
            )
        return credentials

    async def _get(self, request: Request) -> None:
        scopes = self._scopes(request)
        credentials = self._credentials(request)
        account = await self._login(request, credentials)
        refresh = None
        if (
            credentials is not None
            and firstArgument(request, b"offline_token") == "true"
        ):
            refresh = self._broker.refreshToken(credentials)
        self._answer(request, account, scopes, refresh)

    async def _post(self, request: Request) -> None:
        scopes = self._scopes(request)
        grantType = firstArgument(request, b"grant_type")
        credentials: BasicCredentials | None
        if grantType == "password":
            username = firstArgument(request, b"username") or ""
            password = firstArgument(request, b"password") or ""
            credentials = BasicCredentials(username, password)
        elif grantType == "refresh_token":
            credentials = self._broker.openRefreshToken(
                firstArgument(request, b"refresh_token") or ""
            )
            if credentials is None:
                raise RegistryError(
                    401, "UNAUTHORIZED", "the refresh token is invalid or expired"
                )
        else:
            raise RegistryError(
                400,
                "UNSUPPORTED",
                "grant_type must be password or refresh_token",
            )
        account = await self._login(request, credentials)
        refresh = None
        if (
            grantType == "password"
            and firstArgument(request, b"access_type") == "offline"
        ):
            refresh = self._broker.refreshToken(credentials)
        elif grantType == "refresh_token":
            refresh = firstArgument(request, b"refresh_token")
        self._answer(request, account, scopes, refresh)

    def _answer(
        self,
        request: Request,
        account: Account,
        scopes: tuple[Scope, ...],
        refresh: str | None,
    ) -> None:
        request.accountName = account.name  # type: ignore[attr-defined]
        issued = self._broker.issue(account, scopes, firstArgument(request, b"service"))
        body = tokenResponseBody(issued, refresh)
        request.setHeader(b"Content-Type", b"application/json")
        request.setHeader(b"Cache-Control", b"no-store")
        request.setHeader(b"Content-Length", b"%d" % (len(body),))
        request.write(body)
        request.finish()
