# -*- test-case-name: tests.test_forward -*-
"""
The resource tree and the HTTP server around it.

C{/v2/...} is relayed to the upstream, C{/token} is the token endpoint,
C{/_health} answers without touching the upstream; anything else is a
registry-format 404.
"""

from __future__ import annotations

import json
import os

from treq.client import HTTPClient
from twisted.logger import Logger
from twisted.web import http
from twisted.web.iweb import IAgent
from twisted.web.resource import IResource, Resource
from twisted.web.server import Request, Site

from regproxy.access import AccessRules, AccessRulesError, loadAccessRules
from regproxy.broker import (
    Broker,
    BrokeredRegistryResource,
    TokenResource,
    UpstreamLogins,
)
from regproxy.cache import CachingResolver
from regproxy.caresource import CACertificateResource
from regproxy.config import DEFAULT_BALENA_API, DEFAULT_UPSTREAM, Config
from regproxy.cors import CORSPolicy
from regproxy.errors import (
    API_VERSION,
    API_VERSION_HEADER,
    errorBody,
    notFound,
)
from regproxy.forward import (
    Forwarder,
    StreamingRequest,
    forwardedRequestHeaders,
    relayHeaders,
)
from regproxy.passthrough import TokenPassthroughResource, UpstreamRealm, rewriteRealms
from regproxy.rendering import renderLater
from regproxy.resolve.balena import BalenaResolver
from regproxy.resolve.identity import IdentityResolver
from regproxy.resolve.interfaces import IResolver
from regproxy.resolve.static import StaticResolver
from regproxy.sealing import Sealer, loadOrCreateKey
from regproxy.tokens import (
    TokenIssuer,
    TokenVerifier,
    issuerFromOpenBalenaEnvironment,
    loadIssuer,
    loadOrCreateIssuer,
)
from regproxy.upstream import NoCookies, makeUpstreamAgent
from regproxy.upstreamauth import BasicCredentials, UpstreamAuthenticator
from regproxy.urls import Origin, publicBase, rewriteLocation
from regproxy.userauth import HtpasswdLogins
from regproxy.users import HtpasswdError, HtpasswdUsers, ThreadPoolRunner

_log = Logger()


class RegistryResource(Resource):
    """
    Everything under C{/v2}: relayed to the upstream byte for byte.
    """

    isLeaf = True

    def __init__(
        self,
        forwarder: Forwarder,
        upstream: Origin,
        publicURL: str | None,
        realm: UpstreamRealm,
    ) -> None:
        super().__init__()
        self._forwarder = forwarder
        self._upstream = upstream
        self._publicURL = publicURL
        self._realm = realm

    def render(self, request: StreamingRequest) -> object:
        request.responseHeaders.setRawHeaders(API_VERSION_HEADER, [API_VERSION])
        return renderLater(request, self._forward(request))

    async def _forward(self, request: StreamingRequest) -> None:
        public = publicBase(request, self._publicURL)
        response = await self._forwarder.send(
            request,
            request.method,
            self._upstream.base + request.uri,
            forwardedRequestHeaders(request.requestHeaders),
            getattr(request, "bodyStream", None),
        )
        request.upstreamStatus = response.code

        def rewrite(name: bytes, values: list[bytes]) -> list[bytes]:
            if name == b"location":
                return [rewriteLocation(v, self._upstream, public) for v in values]
            if name == b"www-authenticate":
                values, realm = rewriteRealms(values, public + b"/token")
                self._realm.learn(realm)
            return values

        relayHeaders(request, response, rewrite)
        request.responseHeaders.setRawHeaders(API_VERSION_HEADER, [API_VERSION])
        await self._forwarder.relayBody(request, response)


class JSONResource(Resource):
    """
    A fixed JSON answer.
    """

    isLeaf = True

    def __init__(self, code: int, body: bytes) -> None:
        super().__init__()
        self._code = code
        self._body = body

    def render(self, request: Request) -> bytes:
        request.setResponseCode(self._code)
        request.setHeader(b"Content-Type", b"application/json; charset=utf-8")
        return self._body


def healthResource() -> IResource:
    return JSONResource(200, json.dumps({"status": "ok"}).encode() + b"\n")


class RootResource(Resource):
    """
    The top of the tree: named children, and a registry-format 404 for
    everything else.
    """

    def getChild(self, path: bytes, request: Request) -> IResource:
        error = notFound(f"no such path: {request.path.decode('latin-1')[:200]}")
        return JSONResource(error.status, error.body())

    def render(self, request: Request) -> bytes:
        return self.getChild(b"", request).render(request)


class RegproxyChannel(http.HTTPChannel):
    """
    Our HTTP/1.1 connection: malformed requests (huge headers, bad
    chunking) get a registry-format error instead of a bare status line.

    A TLS handshake sent to a plain listener is refused at once: clients
    told that a registry is insecure try HTTPS first and fall back to HTTP
    only when that fails, and without this they wait for their handshake
    timeout (ten seconds for docker and skopeo) on every command.
    """

    _firstBytesSeen = False

    def dataReceived(self, data: bytes) -> None:
        if not self._firstBytesSeen and data:
            self._firstBytesSeen = True
            if data[:1] == b"\x16":
                self._respondToBadRequestAndDisconnect(
                    "this port speaks plain HTTP, not TLS"
                )
                return
        super().dataReceived(data)

    def lineLengthExceeded(self, line: bytes) -> None:
        self._respondToBadRequestAndDisconnect(
            "request line or header too long", 431, b"Request Header Fields Too Large"
        )

    def _respondToBadRequestAndDisconnect(
        self,
        message: str = "malformed HTTP request",
        status: int = 400,
        phrase: bytes = b"Bad Request",
    ) -> None:
        body = errorBody("BAD_REQUEST", message)
        assert self.transport is not None
        self.transport.write(
            b"HTTP/1.1 %d %s\r\n"
            b"Content-Type: application/json; charset=utf-8\r\n"
            b"Content-Length: %d\r\nConnection: close\r\n\r\n"
            % (status, phrase, len(body))
            + body
        )
        self.loseConnection()


class LoggingRequest(StreamingRequest):
    """
    Notes when the request started, for the one log line per request.
    """

    def __init__(self, channel, *args, **kwargs) -> None:
        super().__init__(channel, *args, **kwargs)
        reactor = getattr(getattr(channel, "site", None), "reactor", None)
        self.startedAt = reactor.seconds() if reactor is not None else None

    def process(self) -> None:
        # Site.buildProtocol sets the channel's site; HTTPChannel does not
        # declare it.
        policy = getattr(self.channel.site, "cors", None)  # type: ignore[attr-defined]
        if policy is not None and policy.apply(self):
            return
        super().process()


class RegproxySite(Site):
    """
    A L{Site} that streams request bodies, never shows tracebacks and logs
    one line per request without query strings (which may carry secrets).
    """

    # Twisted types this as a factory of its HTTP/2-negotiating wrapper;
    # buildProtocol works as well with a plain HTTPChannel subclass.
    protocol = RegproxyChannel  # type: ignore[assignment]
    requestFactory = LoggingRequest
    cors: CORSPolicy | None = None
    displayTracebacks = False
    _log = Logger()

    def log(self, request: http.Request) -> None:
        started = getattr(request, "startedAt", None)
        duration = self.reactor.seconds() - started if started is not None else 0.0
        self._log.info(
            "{method} {path} -> {code} {bytes}B {duration:.3f}s upstream={upstream}",
            method=request.method.decode("latin-1"),
            path=request.path.decode("latin-1")[:300],
            code=request.code,
            bytes=request.sentLength,
            duration=duration,
            upstream=getattr(request, "upstreamStatus", None) or "-",
        )


def resolverKind(config: Config) -> str:
    """
    The resolver asked for, or the one that fits the upstream.
    """
    if config.resolver is not None:
        return config.resolver
    if config.upstream.rstrip("/") == DEFAULT_UPSTREAM or config.balena_api:
        return "balena"
    return "identity"


def makeResolver(config: Config, reactor, apiClient=None) -> IResolver:
    """
    The L{IResolver} for C{config}, cached where it asks an API.

    @param apiClient: A treq-like client for the balena API; by default
        one with its own connection pool and no cookie jar.
    """
    kind = resolverKind(config)
    if kind == "identity":
        return IdentityResolver()
    if kind.startswith("static:"):
        return StaticResolver.fromFile(kind[len("static:") :])
    if apiClient is None:
        apiClient = HTTPClient(
            # treq documents any CookieJar as accepted but types its own.
            makeUpstreamAgent(reactor, config),
            cookiejar=NoCookies(),  # type: ignore[arg-type]
        )
    balena = BalenaResolver(config.balena_api or DEFAULT_BALENA_API, apiClient, reactor)
    return CachingResolver(
        balena,
        reactor,
        ttl=config.resolve_cache_ttl,
        staleAge=config.resolve_stale_age,
    )


def _stateDir(config: Config) -> str:
    os.makedirs(config.state_dir, mode=0o700, exist_ok=True)
    return config.state_dir


def makeIssuer(config: Config, reactor, environ=os.environ) -> TokenIssuer:
    """
    The key that signs our tokens: the one given (C{--token-key} and
    C{--token-cert}, or openBalena's C{REGISTRY_TOKEN_AUTH_*} variables), or
    one made once and kept in the state dir, so tokens survive restarts and
    instances sharing the dir honour each other's tokens.
    """
    lifetime = int(config.token_lifetime)
    if config.token_key or config.token_cert:
        if not (config.token_key and config.token_cert):
            raise ValueError("--token-key and --token-cert go together")
        return loadIssuer(
            config.token_issuer, config.token_key, config.token_cert, reactor, lifetime
        )
    fromEnvironment = issuerFromOpenBalenaEnvironment(environ, reactor, lifetime)
    if fromEnvironment is not None:
        return fromEnvironment
    return loadOrCreateIssuer(_stateDir(config), config.token_issuer, reactor, lifetime)


def serviceCredentials(config: Config) -> BasicCredentials | None:
    """
    What regproxy authenticates to the upstream with when it enforces its
    own users.
    """
    if config.upstream_user is None:
        return None
    password = config.upstream_password
    if password is None and config.upstream_password_file:
        try:
            with open(config.upstream_password_file, encoding="utf-8") as f:
                password = f.read().rstrip("\r\n")
        except OSError as e:
            raise ValueError(
                f"--upstream-password-file: cannot read "
                f"{config.upstream_password_file}: {e.strerror}"
            ) from None
    return BasicCredentials(config.upstream_user, password or "")


def makeBackend(config: Config, reactor, authenticator: UpstreamAuthenticator):
    """
    Who judges logins: our own htpasswd users and rules when configured,
    else the upstream.
    """
    if config.htpasswd is None:
        if config.access is not None:
            raise ValueError("--access needs --htpasswd")
        return UpstreamLogins(authenticator, reactor)
    try:
        users = HtpasswdUsers(config.htpasswd, reactor, ThreadPoolRunner(reactor))
        rules = (
            loadAccessRules(config.access) if config.access else AccessRules.default()
        )
    except (HtpasswdError, AccessRulesError) as e:
        raise ValueError(str(e)) from None
    return HtpasswdLogins(users, rules, serviceCredentials(config))


def makeBroker(
    config: Config, reactor, authenticator: UpstreamAuthenticator, environ=os.environ
) -> Broker:
    """
    Our token issuer, verifier, sealer and auth backend.
    """
    issuer = makeIssuer(config, reactor, environ)
    verifier = TokenVerifier.forKeys(
        issuer.issuer, config.service_name, [issuer.key.public_key()], reactor
    )
    sealer = Sealer(loadOrCreateKey(os.path.join(_stateDir(config), "sealing.key")))
    backend = makeBackend(config, reactor, authenticator)
    return Broker(
        issuer, verifier, sealer, backend, config.service_name, config.public_url
    )


def makeSite(
    config: Config,
    reactor,
    agent: IAgent | None = None,
    apiClient=None,
    environ=os.environ,
) -> Site:
    """
    Build the server for C{config}.

    @param agent: Speaks HTTP to the upstream; by default a pooled
        L{Agent} made from the configuration.
    @param apiClient: A treq-like client for the balena API.
    @param environ: Where openBalena's C{REGISTRY_TOKEN_AUTH_*} variables
        are read from.
    """
    if agent is None:
        agent = makeUpstreamAgent(reactor, config)
    upstream = Origin.fromURL(config.upstream)
    forwarder = Forwarder(agent, reactor, config.response_timeout)
    root = RootResource()
    if config.auth == "passthrough":
        realm = UpstreamRealm(forwarder, upstream)
        root.putChild(
            b"v2", RegistryResource(forwarder, upstream, config.public_url, realm)
        )
        root.putChild(b"token", TokenPassthroughResource(forwarder, realm))
    else:
        authenticator = UpstreamAuthenticator(agent, upstream, reactor)
        broker = makeBroker(config, reactor, authenticator, environ)
        resolver = makeResolver(config, reactor, apiClient)
        root.putChild(
            b"v2",
            BrokeredRegistryResource(
                broker,
                resolver,
                authenticator,
                forwarder,
                upstream,
                config.public_url,
                config.api_token,
                fleetNames=resolverKind(config) != "identity",
            ),
        )
        root.putChild(b"token", TokenResource(broker))
    root.putChild(b"_health", healthResource())
    root.putChild(b"_ca.crt", CACertificateResource.inStateDir(config.state_dir))
    site = RegproxySite(root, reactor=reactor)
    site.cors = CORSPolicy(config.cors_origin)
    return site
