# -*- test-case-name: tests.unit.test_broker -*-
"""
regproxy as an authentication broker.

Clients never see an upstream token.  Every C{/v2/} request without one of
our tokens gets our Bearer challenge; our C{/token} checks the client
(anonymous, or credentials an L{IAuthBackend} accepts), decides the grant
and signs our own JWT.  What we need to act for the client later, its
upstream credentials, travels sealed inside that token, so any regproxy
holding the same keys can serve the next request: no server-side session.

On each repository request we check our token, resolve the client's name to
the real upstream repository, get an upstream credential for that
repository with the client's own credentials, and forward.
"""

from __future__ import annotations

import json
from collections import OrderedDict
from typing import Any
from urllib.parse import quote

import attrs
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.web.client import readBody
from twisted.web.resource import Resource
from twisted.web.server import Request
from zope.interface import Interface, implementer

from regproxy.auth.jwt import TokenError, TokenIssuer, TokenVerifier, tokenResponseBody
from regproxy.auth.sealing import Sealer, SealError
from regproxy.names.challenge import bearer
from regproxy.names.reference import (
    BASE,
    BLOBS,
    MANIFESTS,
    TAGS,
    UPLOADS,
    ImageReference,
    InvalidReference,
    RegistryPath,
    parsePath,
)
from regproxy.names.scope import Scope, parseScopes
from regproxy.proxy.manifests import CachedManifest, ManifestCache, acceptable
from regproxy.proxy.relay import Forwarder, forwardedRequestHeaders, relayHeaders
from regproxy.proxy.upstreamauth import BasicCredentials, UpstreamAuthenticator
from regproxy.resolve.interfaces import (
    SERVER,
    Credentials,
    IResolver,
    NameUnknown,
    Resolution,
    ResolveError,
    ResolverUnavailable,
)
from regproxy.server.errors import (
    API_VERSION,
    API_VERSION_HEADER,
    RegistryError,
)
from regproxy.server.rendering import TokenEndpoint, renderLater
from regproxy.server.request import StreamingRequest
from regproxy.server.urls import Origin, publicBase, rewriteLocation

_UPSTREAM_CREDENTIALS = "upstream-credentials"
_REFRESH = "refresh-token"
_SEALED_CLAIM = "rpx"
# How long a refresh token (POST grant_type=password, access_type=offline)
# stays good.
REFRESH_LIFETIME = 30 * 24 * 3600
# Manifests of fleet names are read whole to learn which real repository
# their blobs live in; a manifest is small (the spec caps them at 4 MiB).
MAX_MANIFEST = 4 * 1024 * 1024
_MAX_REMEMBERED_DIGESTS = 65536


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


class IAuthBackend(Interface):
    """
    Decides who a client is and what it may do.
    """

    def login(credentials: BasicCredentials | None) -> Deferred:
        """
        Fire with the L{Account} for C{credentials} (L{None}: anonymous), or
        fail with L{LoginFailed}.
        """

    def grant(account: Account, scopes: tuple[Scope, ...]) -> tuple[Scope, ...]:
        """
        What of C{scopes} C{account} gets; a denial is an empty grant.
        """

    def upstreamCredentials(account: Account) -> BasicCredentials | None:
        """
        The credentials to reach the upstream with for C{account}.
        """


@implementer(IAuthBackend)
@attrs.define
class UpstreamLogins:
    """
    The upstream judges: a login is good when the upstream accepts it, and
    every request goes upstream with the client's own credentials, so a
    client gets exactly what the upstream would give it.  We grant what is
    asked; the upstream enforces it.
    """

    authenticator: UpstreamAuthenticator
    clock: IReactorTime
    rememberFor: float = 60.0
    _good: OrderedDict[str, float] = attrs.field(factory=OrderedDict)

    def login(self, credentials: BasicCredentials | None) -> Deferred:
        return Deferred.fromCoroutine(self._login(credentials))

    async def _login(self, credentials: BasicCredentials | None) -> Account:
        if credentials is None:
            return Account()
        now = self.clock.seconds()
        if self._good.get(credentials.cacheKey, 0) > now:
            return Account(credentials.username, credentials)
        if not await self.authenticator.checkLogin(credentials):
            raise LoginFailed()
        self._good[credentials.cacheKey] = now + self.rememberFor
        while len(self._good) > 4096:
            self._good.popitem(last=False)
        return Account(credentials.username, credentials)

    def grant(self, account: Account, scopes: tuple[Scope, ...]) -> tuple[Scope, ...]:
        return scopes

    def upstreamCredentials(self, account: Account) -> BasicCredentials | None:
        return account.upstream


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


def _first(request: Request, name: bytes) -> str | None:
    # Twisted's stubs type args as None (its class default); it is a dict
    # on a request being served.
    values = request.args.get(name)  # type: ignore[attr-defined]
    if not values:
        return None
    try:
        return values[0].decode("utf-8")
    except UnicodeDecodeError:
        return None


class TokenResource(TokenEndpoint):
    """
    C{/token}: GET (the Docker token flow: repeated C{scope}, C{service},
    C{account}, C{client_id}, C{offline_token}) and POST (the OAuth2 form:
    C{grant_type=password} or C{refresh_token}).  Without a scope it is a
    C{docker login}: it succeeds when the credentials are good.
    """

    isLeaf = True
    _log = Logger()

    def __init__(self, broker: Broker) -> None:
        super().__init__()
        self._broker = broker

    def render_GET(self, request: Request) -> object:
        return self._start(request, self._get(request))

    def render_POST(self, request: Request) -> object:
        return self._start(request, self._post(request))

    def _start(self, request: Request, coroutine: Any) -> object:
        return renderLater(request, coroutine)

    def _scopes(self, request: Request) -> tuple[Scope, ...]:
        values = []
        for raw in request.args.get(b"scope", []):  # type: ignore[attr-defined]
            try:
                values.append(raw.decode("utf-8"))
            except UnicodeDecodeError:
                continue
        return parseScopes(values)

    async def _login(
        self, request: Request, credentials: BasicCredentials | None
    ) -> Account:
        try:
            return await self._broker.backend.login(credentials)
        except LoginFailed:
            raise RegistryError(
                401,
                "UNAUTHORIZED",
                "wrong user name or password",
                None,
                ((b"WWW-Authenticate", b'Basic realm="regproxy"'),),
            ) from None

    async def _get(self, request: Request) -> None:
        credentials = BasicCredentials.fromHeader(request.getHeader(b"authorization"))
        account = await self._login(request, credentials)
        refresh = None
        if credentials is not None and _first(request, b"offline_token") == "true":
            refresh = self._broker.refreshToken(credentials)
        self._answer(request, account, refresh)

    async def _post(self, request: Request) -> None:
        grantType = _first(request, b"grant_type")
        credentials: BasicCredentials | None
        if grantType == "password":
            username = _first(request, b"username") or ""
            password = _first(request, b"password") or ""
            credentials = BasicCredentials(username, password)
        elif grantType == "refresh_token":
            credentials = self._broker.openRefreshToken(
                _first(request, b"refresh_token") or ""
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
        if grantType == "password" and _first(request, b"access_type") == "offline":
            refresh = self._broker.refreshToken(credentials)
        elif grantType == "refresh_token":
            refresh = _first(request, b"refresh_token")
        self._answer(request, account, refresh)

    def _answer(self, request: Request, account: Account, refresh: str | None) -> None:
        issued = self._broker.issue(
            account, self._scopes(request), _first(request, b"service")
        )
        body = tokenResponseBody(issued, refresh)
        request.setHeader(b"Content-Type", b"application/json")
        request.setHeader(b"Cache-Control", b"no-store")
        request.setHeader(b"Content-Length", b"%d" % (len(body),))
        request.write(body)
        request.finish()


@attrs.define
class DigestLocations:
    """
    Which real repository a digest was last seen in, per client name.

    A client that pulls C{org/fleet:1.2.3} asks for that release's blobs
    (and, for a multi-platform index, its child manifests) as
    C{org/fleet/blobs/<digest>}: the tag is gone from the request.  The
    manifest we relayed named those digests, so we remember where they live.
    """

    maxSize: int = _MAX_REMEMBERED_DIGESTS
    _where: OrderedDict[tuple[str, str], str] = attrs.field(factory=OrderedDict)

    def remember(self, name: str, digests: list[str], repository: str) -> None:
        for digest in digests:
            key = (name, digest)
            self._where[key] = repository
            self._where.move_to_end(key)
        while len(self._where) > self.maxSize:
            self._where.popitem(last=False)

    def find(self, name: str, digest: str) -> str | None:
        return self._where.get((name, digest))


def manifestDigests(body: bytes) -> list[str]:
    """
    The digests a manifest or index refers to.
    """
    try:
        document = json.loads(body)
    except ValueError:
        return []
    found = []
    if isinstance(document, dict):
        for key in ("config",):
            entry = document.get(key)
            if isinstance(entry, dict) and isinstance(entry.get("digest"), str):
                found.append(entry["digest"])
        for key in ("layers", "manifests", "blobs"):
            entries = document.get(key)
            for entry in entries if isinstance(entries, list) else []:
                if isinstance(entry, dict) and isinstance(entry.get("digest"), str):
                    found.append(entry["digest"])
    return found


class BrokeredRegistryResource(Resource):
    """
    C{/v2/...} behind the broker: authorize, resolve, forward.
    """

    isLeaf = True
    _log = Logger()

    def __init__(
        self,
        broker: Broker,
        resolver: IResolver,
        upstreamAuth: UpstreamAuthenticator,
        forwarder: Forwarder,
        upstream: Origin,
        publicURL: str | None,
        serverAPIKey: str | None,
        fleetNames: bool,
    ) -> None:
        super().__init__()
        self._broker = broker
        self._resolver = resolver
        self._upstreamAuth = upstreamAuth
        self._forwarder = forwarder
        self._upstream = upstream
        self._publicURL = publicURL
        self._serverAPIKey = serverAPIKey
        self._fleetNames = fleetNames
        self.digests = DigestLocations()
        self.manifests = ManifestCache(broker.issuer.clock)

    def render(self, request: StreamingRequest) -> object:
        request.responseHeaders.setRawHeaders(API_VERSION_HEADER, [API_VERSION])
        return renderLater(request, self._handle(request))

    async def _handle(self, request: StreamingRequest) -> None:
        try:
            path = parsePath(request.path)
        except InvalidReference as e:
            raise RegistryError(
                404 if e.code == "NOT_FOUND" else 400, e.code, str(e)
            ) from None
        account = await self._broker.authorize(request, path)
        if path.kind == BASE:
            body = b"{}"
            request.setHeader(b"Content-Type", b"application/json")
            request.setHeader(b"Content-Length", b"%d" % (len(body),))
            request.write(body)
            request.finish()
            return
        reference = path.imageReference()
        assert path.name is not None  # imageReference raised otherwise
        credentials = self._resolverCredentials(account)
        if path.kind == TAGS:
            tags = await self._listReleases(reference, credentials, account)
            if tags is not None:
                self._writeTags(request, path.name, tags)
                return
        resolution = await self._resolve(path, reference, credentials, account)
        await self._forward(request, path, resolution, account)

    def _resolverCredentials(self, account: Account) -> Credentials:
        clientKey = account.upstream.password if account.upstream is not None else None
        return Credentials.choose(clientKey, self._serverAPIKey)

    async def _listReleases(
        self, reference: ImageReference, credentials: Credentials, account: Account
    ) -> list[str] | None:
        # A fleet's list of releases is for those who may see the fleet:
        # asked with the client's own credentials only, never our API key.
        own = Credentials.choose(
            account.upstream.password if account.upstream else None, None
        )
        return await self._resolver.listReleases(reference, own)

    async def _resolve(
        self,
        path: RegistryPath,
        reference: ImageReference,
        credentials: Credentials,
        account: Account,
    ) -> Resolution:
        assert path.name is not None
        digest = path.reference if path.kind in (BLOBS, MANIFESTS) else None
        if digest is not None and ":" in digest:
            known = self.digests.find(path.name, digest)
            if known is not None:
                return Resolution(known, digest)
        try:
            resolution = await self._resolver.resolve(reference, credentials)
        except ResolveError as e:
            await self._hideFromOutsiders(e, reference, credentials, account)
            raise
        return resolution

    async def _hideFromOutsiders(
        self,
        error: ResolveError,
        reference: ImageReference,
        credentials: Credentials,
        account: Account,
    ) -> None:
        """
        An answer found with our own API key may tell a client more than its
        own credentials would (that a private fleet exists, which releases
        it has): check with the client's own and answer as for a missing
        name when it may not see the fleet.
        """
        if credentials.source != SERVER or isinstance(
            error, (NameUnknown, ResolverUnavailable)
        ):
            return
        own = Credentials.choose(
            account.upstream.password if account.upstream else None, None
        )
        try:
            await self._resolver.resolve(reference, own)
        except NameUnknown as e:
            raise e from None
        except ResolveError:
            return

    def _upstreamPath(self, path: RegistryPath, resolution: Resolution) -> bytes:
        repository = resolution.repository
        if path.kind == MANIFESTS:
            ref = resolution.reference or path.reference
            tail = f"/manifests/{ref}"
        elif path.kind == BLOBS:
            tail = f"/blobs/{path.reference}"
        elif path.kind == UPLOADS:
            tail = f"/blobs/uploads/{path.reference or ''}"
        elif path.kind == TAGS:
            tail = "/tags/list"
        else:
            tail = f"/{path.kind}/{path.reference}"
        return f"/v2/{repository}{tail}".encode("utf-8")

    async def _forward(
        self,
        request: StreamingRequest,
        path: RegistryPath,
        resolution: Resolution,
        account: Account,
    ) -> None:
        assert path.name is not None
        actions = requiredActions(request.method, path.kind)
        upstreamCredentials = self._broker.backend.upstreamCredentials(account)
        cacheKey = None
        if (
            path.kind == MANIFESTS
            and request.method in (b"GET", b"HEAD")
            and self._immutable(path, resolution)
        ):
            cacheKey = (
                upstreamCredentials.cacheKey if upstreamCredentials else "anonymous",
                resolution.repository,
                resolution.reference or path.reference or "",
            )
            cached = self.manifests.get(cacheKey)
            if cached is not None and acceptable(
                request.requestHeaders, cached.contentType
            ):
                # The same release may be asked for under another name
                # (org/fleet/1.2.3, then org/fleet:1.2.3): its blobs must be
                # found under this one too.
                if resolution.repository != path.name:
                    self.digests.remember(
                        path.name, list(cached.references), resolution.repository
                    )
                self._writeManifest(request, cached)
                return
        _, question, query = request.uri.partition(b"?")
        url = self._upstream.base + self._upstreamPath(path, resolution)
        if question:
            url += b"?" + query
        body = getattr(request, "bodyStream", None)
        # A request without a body can be sent again: once, when the
        # upstream refuses a cached token it no longer honours (its token
        # service got a new key), with a fresh one.
        for attempt in (1, 2):
            try:
                authorization = await self._upstreamAuth.authorization(
                    upstreamCredentials, resolution.repository, actions
                )
            except RegistryError as e:
                if e.status != 401:
                    raise
                raise self._refused(request, path, account) from None
            headers = forwardedRequestHeaders(request.requestHeaders)
            headers.removeHeader(b"authorization")
            if authorization is not None:
                headers.setRawHeaders(b"authorization", [authorization])
            response = await self._forwarder.send(
                request, request.method, url, headers, body
            )
            request.upstreamStatus = response.code
            if response.code not in (401, 403):
                break
            await readBody(response)
            self._upstreamAuth.learn(
                response.headers.getRawHeaders(b"www-authenticate", [])
            )
            self._upstreamAuth.forget(
                upstreamCredentials, resolution.repository, actions
            )
            if attempt == 2 or body is not None or authorization is None:
                raise self._denied(request, path, account)
        public = publicBase(request, self._publicURL)
        realPrefix = f"/v2/{resolution.repository}/".encode("utf-8")
        clientPrefix = f"/v2/{path.name}/".encode("utf-8")

        def rewrite(name: bytes, values: list[bytes]) -> list[bytes]:
            if name == b"www-authenticate":
                return []
            if name in (b"location", b"link"):
                values = [v.replace(realPrefix, clientPrefix) for v in values]
            if name == b"location":
                values = [rewriteLocation(v, self._upstream, public) for v in values]
            return values

        relayHeaders(request, response, rewrite)
        request.responseHeaders.setRawHeaders(API_VERSION_HEADER, [API_VERSION])
        if (
            path.kind == MANIFESTS
            and request.method == b"GET"
            and response.code == 200
            and (cacheKey is not None or resolution.repository != path.name)
            and isinstance(response.length, int)
            and response.length <= MAX_MANIFEST
        ):
            body = await readBody(response)
            references = tuple(manifestDigests(body))
            if resolution.repository != path.name:
                self.digests.remember(
                    path.name, list(references), resolution.repository
                )
            if cacheKey is not None:
                self.manifests.put(
                    cacheKey,
                    CachedManifest(
                        body,
                        response.headers.getRawHeaders(
                            b"content-type", [b"application/octet-stream"]
                        )[-1],
                        (
                            response.headers.getRawHeaders(b"docker-content-digest")
                            or [None]
                        )[-1],
                        references,
                    ),
                )
            request.write(body)
            request.finish()
            return
        await self._forwarder.relayBody(request, response)

    def _immutable(self, path: RegistryPath, resolution: Resolution) -> bool:
        """
        Whether the manifest asked for can never change: a digest, or an
        image of a fleet release (each in a repository of its own).
        """
        reference = resolution.reference or path.reference or ""
        if ":" in reference:
            return True
        return self._fleetNames and resolution.repository != path.name

    def _writeManifest(self, request: Request, manifest: CachedManifest) -> None:
        request.setResponseCode(200)
        request.setHeader(b"Content-Type", manifest.contentType)
        if manifest.digest is not None:
            request.setHeader(b"Docker-Content-Digest", manifest.digest)
            request.setHeader(b"ETag", b'"' + manifest.digest + b'"')
        request.setHeader(b"Content-Length", b"%d" % (len(manifest.body),))
        if request.method != b"HEAD":
            request.write(manifest.body)
        request.finish()

    def _refused(
        self, request: Request, path: RegistryPath, account: Account
    ) -> RegistryError:
        """
        The upstream's token service refused the client's credentials
        (changed since the client logged in): for a fleet name, the same as
        a missing fleet; otherwise a 401 with our challenge, so the client
        logs in again.
        """
        assert path.name is not None
        fleet = path.imageReference().fleetName() if self._fleetNames else None
        if fleet is not None:
            return NameUnknown(f"no fleet {fleet.slug}").toRegistryError()
        needed = Scope(
            "repository", None, path.name, requiredActions(request.method, path.kind)
        )
        return self._broker.unauthorized(
            request, "the upstream registry refused these credentials", needed
        )

    def _denied(
        self, request: Request, path: RegistryPath, account: Account
    ) -> RegistryError:
        """
        The upstream refused the client's own credentials.  For a fleet
        name, that must look exactly like a missing fleet.
        """
        assert path.name is not None
        reference = path.imageReference()
        fleet = reference.fleetName() if self._fleetNames else None
        if fleet is not None:
            return NameUnknown(f"no fleet {fleet.slug}").toRegistryError()
        if account.name is None:
            needed = Scope(
                "repository",
                None,
                path.name,
                requiredActions(request.method, path.kind),
            )
            return self._broker.unauthorized(
                request, "authentication required", needed, "insufficient_scope"
            )
        return RegistryError(
            403, "DENIED", "requested access to the resource is denied"
        )

    def _writeTags(self, request: Request, name: str, tags: list[str]) -> None:
        """
        Answer C{tags/list} ourselves, paginated with C{n} and C{last} as
        the distribution spec says.
        """
        tags = sorted(set(tags))
        last = _first(request, b"last")
        if last is not None:
            tags = [tag for tag in tags if tag > last]
        limit = _first(request, b"n")
        if limit is not None:
            try:
                count = int(limit)
            except ValueError:
                raise RegistryError(
                    400, "PAGINATION_NUMBER_INVALID", "n must be a number"
                ) from None
            if count < 0:
                raise RegistryError(
                    400, "PAGINATION_NUMBER_INVALID", "n must not be negative"
                )
            if len(tags) > count:
                tags = tags[:count]
                if tags:
                    nextURL = f"/v2/{name}/tags/list?n={count}&last={quote(tags[-1])}"
                    request.setHeader(
                        b"Link", f'<{nextURL}>; rel="next"'.encode("utf-8")
                    )
        body = json.dumps({"name": name, "tags": tags}).encode("utf-8")
        request.setHeader(b"Content-Type", b"application/json")
        request.setHeader(b"Content-Length", b"%d" % (len(body),))
        if request.method != b"HEAD":
            request.write(body)
        request.finish()
