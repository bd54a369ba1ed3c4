# -*- test-case-name: tests.unit.test_upstreamauth -*-
"""
Credentials towards the upstream registry, on behalf of one client.

The upstream says how it wants to be authenticated in the challenge on its
C{/v2/}: nothing (open), C{Basic}, or C{Bearer} with a token service.  For
Bearer we call that token service the way a client would, with the
client's own credentials and the scope for the I{real} repository, and
keep the token until shortly before it expires.  Our own API token is never
used here: what a client pulls is what its own credentials allow.
"""

from __future__ import annotations

import base64
import json
from collections import OrderedDict
from urllib.parse import quote

import attrs
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.web.http_headers import Headers
from twisted.web.iweb import IAgent, IBodyProducer, IResponse
from zope.interface import implementer

from regproxy.auth.credentials import BasicCredentials
from regproxy.auth.interfaces import ILoginChecker
from regproxy.names.challenge import ChallengeParseError, parseChallenges
from regproxy.names.scope import Scope
from regproxy.proxy.deadline import UpstreamDeadline, readWholeBody
from regproxy.server.errors import RegistryError, unavailable
from regproxy.server.urls import Origin

# Refresh a cached upstream token this long before it expires.
_EARLY = 30
# Tokens without expires_in are good for 60 s (the token spec's default).
_DEFAULT_LIFETIME = 60
_MAX_CACHED = 4096
# A token service's answer is a small JSON document.
_MAX_TOKEN_BODY = 1024 * 1024


@attrs.frozen
class UpstreamScheme:
    """
    How the upstream wants clients to authenticate.

    @ivar scheme: C{"none"}, C{"basic"} or C{"bearer"}.
    """

    scheme: str
    realm: str | None = None
    service: str | None = None


@implementer(ILoginChecker)
@attrs.define
class UpstreamAuthenticator:
    """
    Finds the C{Authorization} header to send upstream for a client.

    @ivar agent: Reaches the upstream and its token service (its connect
        timeout is C{--connect-timeout}).
    @ivar timeout: Seconds to wait for an answer, then for its body
        (C{--response-timeout}).
    """

    agent: IAgent
    upstream: Origin
    clock: IReactorTime
    timeout: float = 30.0
    _scheme: UpstreamScheme | None = None
    _tokens: OrderedDict[tuple[str, str], tuple[bytes, float]] = attrs.field(
        factory=OrderedDict
    )

    async def scheme(self) -> UpstreamScheme:
        """
        Ask the upstream's C{/v2/} once how it authenticates.
        """
        if self._scheme is not None:
            return self._scheme
        response, _ = await self._get(self.upstream.base + b"/v2/", Headers())
        found = UpstreamScheme("none")
        if response.code == 401:
            found = UpstreamScheme("basic")
            for value in response.headers.getRawHeaders(b"www-authenticate", []):
                try:
                    challenges = parseChallenges(value.decode("latin-1"))
                except ChallengeParseError:
                    continue
                for challenge in challenges:
                    if challenge.scheme.lower() == "bearer" and challenge.get("realm"):
                        found = UpstreamScheme(
                            "bearer", challenge.get("realm"), challenge.get("service")
                        )
        self._scheme = found
        return found

    def learn(self, challengeValues: list[bytes]) -> None:
        """
        The upstream sent a challenge on a relayed request: if its realm
        changed, forget what we knew.
        """
        for value in challengeValues:
            try:
                challenges = parseChallenges(value.decode("latin-1"))
            except ChallengeParseError:
                continue
            for challenge in challenges:
                if challenge.scheme.lower() == "bearer":
                    realm = challenge.get("realm")
                    if self._scheme is not None and realm != self._scheme.realm:
                        self._scheme = None

    async def checkLogin(self, credentials: BasicCredentials) -> bool:
        """
        Whether the upstream accepts C{credentials} (a C{docker login}).
        An open upstream accepts anything.

        @raise RegistryError: When the upstream cannot be asked.
        """
        scheme = await self.scheme()
        if scheme.scheme == "none":
            return True
        if scheme.scheme == "basic":
            headers = Headers({b"authorization": [credentials.header()]})
            response, _ = await self._get(self.upstream.base + b"/v2/", headers)
            return response.code == 200
        response, _ = await self._askTokenService(scheme, credentials, None)
        return response.code == 200

    async def authorization(
        self,
        credentials: BasicCredentials | None,
        repository: str,
        actions: tuple[str, ...],
        also: tuple[Scope, ...] = (),
        resourceType: str = "repository",
    ) -> bytes | None:
        """
        The C{Authorization} value for a request on the upstream's
        C{repository}, or L{None} to send none.

        @param also: Further scopes the request needs (a mount's pull of
            its source repository).
        @param resourceType: C{registry} for a registry resource such as
            the C{catalog} instead of a repository.

        @raise RegistryError: 401 when the upstream's token service refused
            the credentials, 502/504 when it could not be asked.
        """
        scheme = await self.scheme()
        if scheme.scheme == "none":
            return None
        if scheme.scheme == "basic":
            return credentials.header() if credentials is not None else None
        scope = _scopeText(repository, actions, also, resourceType)
        key = (credentials.cacheKey if credentials else "anonymous", scope)
        cached = self._tokens.get(key)
        now = self.clock.seconds()
        if cached is not None and cached[1] > now:
            self._tokens.move_to_end(key)
            return cached[0]
        response, body = await self._askTokenService(scheme, credentials, scope)
        if response.code in (401, 403):
            raise RegistryError(
                401, "UNAUTHORIZED", "the upstream registry refused these credentials"
            )
        if response.code != 200:
            raise unavailable(
                f"the upstream token service answered {response.code}", status=502
            )
        token, lifetime = _parseTokenResponse(body[:_MAX_TOKEN_BODY], now)
        header = b"Bearer " + token.encode("ascii")
        self._tokens[key] = (header, now + max(lifetime - _EARLY, 1))
        while len(self._tokens) > _MAX_CACHED:
            self._tokens.popitem(last=False)
        return header

    def forget(
        self,
        credentials: BasicCredentials | None,
        repository: str,
        actions: tuple[str, ...],
        also: tuple[Scope, ...] = (),
    ) -> None:
        """
        Drop the cached upstream token for this client and repository.
        """
        scope = _scopeText(repository, actions, also)
        key = (credentials.cacheKey if credentials else "anonymous", scope)
        self._tokens.pop(key, None)

    async def _askTokenService(
        self,
        scheme: UpstreamScheme,
        credentials: BasicCredentials | None,
        scope: str | None,
    ) -> tuple[IResponse, bytes]:
        assert scheme.realm is not None
        query = []
        if scheme.service:
            query.append("service=" + quote(scheme.service, safe=""))
        # Several scopes go as repeated parameters, as docker sends them.
        for part in (scope or "").split(" "):
            if part:
                query.append("scope=" + quote(part, safe=""))
        url = scheme.realm + (
            ("&" if "?" in scheme.realm else "?") + "&".join(query) if query else ""
        )
        headers = Headers()
        if credentials is not None:
            headers.setRawHeaders(b"authorization", [credentials.header()])
        return await self._get(
            url.encode("utf-8"), headers, "the upstream token service"
        )

    async def _get(
        self, url: bytes, headers: Headers, what: str | None = None
    ) -> tuple[IResponse, bytes]:
        """
        GET C{url}, waiting at most L{timeout} for the answer and as long
        again for its body.

        @raise UpstreamError: When it could not be had, naming C{url}'s
            host and why.
        """
        response = await UpstreamDeadline(self.clock, self.timeout, url, what).wait(
            self.agent.request(b"GET", url, headers)
        )
        body = await UpstreamDeadline(self.clock, self.timeout, url, what).wait(
            readWholeBody(response)
        )
        return response, body


def _scopeText(
    repository: str,
    actions: tuple[str, ...],
    also: tuple[Scope, ...],
    resourceType: str = "repository",
) -> str:
    needed = Scope(resourceType, None, repository, actions)
    return " ".join(scope.serialize() for scope in (needed, *also))


def _lifetimeFromJWT(token: str, now: float) -> int | None:
    """
    How long a JWT says it is good for (its C{exp}), read without checking
    the signature: it only decides how long we keep the token, and the
    upstream checks it.  balenaCloud's token service sends no C{expires_in}.
    """
    parts = token.split(".")
    if len(parts) != 3:
        return None
    try:
        padded = parts[1] + "=" * (-len(parts[1]) % 4)
        expires = json.loads(base64.urlsafe_b64decode(padded))["exp"]
    except (ValueError, KeyError, TypeError):
        return None
    if not isinstance(expires, (int, float)) or isinstance(expires, bool):
        return None
    remaining = expires - now
    return int(remaining) if 0 < remaining < 2**31 else None


def _parseTokenResponse(body: bytes, now: float = 0.0) -> tuple[str, int]:
    try:
        document = json.loads(body)
        token = document.get("token") or document.get("access_token")
        lifetime = document.get("expires_in")
        if not isinstance(token, str) or not token.isascii():
            raise ValueError("no token")
        if not isinstance(lifetime, int) or isinstance(lifetime, bool) or lifetime <= 0:
            lifetime = _lifetimeFromJWT(token, now) or _DEFAULT_LIFETIME
    except (ValueError, AttributeError):
        raise unavailable("the upstream token service answered nonsense") from None
    return token, lifetime


@attrs.frozen
class UpstreamAccess:
    """
    Who the upstream sees for one request, and what for.

    @ivar credentials: The client's upstream credentials (L{None}:
        anonymous).
    @ivar repository: The real upstream repository.
    @ivar actions: What the request does there.
    @ivar also: Further scopes it needs (a mount's source, for pull).
    """

    credentials: BasicCredentials | None
    repository: str
    actions: tuple[str, ...]
    also: tuple[Scope, ...] = ()


@implementer(IAgent)
@attrs.frozen
class UpstreamAuthAgent:
    """
    An agent that authenticates each request upstream as C{access} says
    (the shape of treq's C{auth.py}: a wrapper, not steps in a resource).

    A request without a body can be sent again: once, when the upstream
    refuses a cached token it no longer honours (its token service got a
    new key), with a fresh one.  A refusal that stands is returned as it
    is, body unread.

    @raise RegistryError: (from C{request}) 401 when the upstream's token
        service refused the credentials, 502/504 when it could not be asked.
    """

    agent: IAgent
    authenticator: UpstreamAuthenticator
    access: UpstreamAccess

    def request(
        self,
        method: bytes,
        uri: bytes,
        headers: Headers | None = None,
        bodyProducer: IBodyProducer | None = None,
    ) -> Deferred[IResponse]:
        return Deferred.fromCoroutine(
            self._request(method, uri, headers or Headers(), bodyProducer)
        )

    async def _request(
        self,
        method: bytes,
        uri: bytes,
        headers: Headers,
        body: IBodyProducer | None,
    ) -> IResponse:
        access = self.access
        for attempt in (1, 2):
            authorization = await self.authenticator.authorization(
                access.credentials, access.repository, access.actions, access.also
            )
            sent = headers.copy()
            sent.removeHeader(b"authorization")
            if authorization is not None:
                sent.setRawHeaders(b"authorization", [authorization])
            response: IResponse = await self.agent.request(method, uri, sent, body)
            if response.code not in (401, 403):
                return response
            self.authenticator.learn(
                response.headers.getRawHeaders(b"www-authenticate", [])
            )
            self.authenticator.forget(
                access.credentials, access.repository, access.actions, access.also
            )
            if attempt == 2 or body is not None or authorization is None:
                return response
            await readWholeBody(response)
        raise AssertionError("not reached")
