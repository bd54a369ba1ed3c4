# -*- test-case-name: tests.unit.test_forward -*-
"""
The composition root: how a L{Config} becomes a server.

C{/v2/...} is relayed to the upstream, C{/token} is the token endpoint,
C{/_health} answers without touching the upstream, C{/_ready} says whether
the upstream can be reached; anything else is a registry-format 404.  This is the one module that knows every part.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import ClassVar

import attrs
from treq.client import HTTPClient
from twisted.logger import Logger
from twisted.web.iweb import IAgent
from twisted.web.resource import Resource

from regproxy.auth.access import AccessRules, AccessRulesError, AccessRulesFile
from regproxy.auth.broker import Broker
from regproxy.auth.credentials import BasicCredentials
from regproxy.auth.htpasswd import HtpasswdError, HtpasswdUsers, ThreadPoolRunner
from regproxy.auth.issuerkeys import (
    issuerFromOpenBalenaEnvironment,
    loadIssuer,
    loadOrCreateIssuer,
)
from regproxy.auth.jwt import TokenIssuer, TokenVerifier
from regproxy.auth.sealing import Sealer, loadOrCreateKey
from regproxy.auth.throttle import LoginThrottle
from regproxy.auth.tokenresource import TokenResource
from regproxy.auth.upstreamlogins import UpstreamLogins
from regproxy.auth.users import HtpasswdLogins
from regproxy.config import DEFAULT_BALENA_API, DEFAULT_UPSTREAM, Config
from regproxy.metrics import CountedClient, Metrics
from regproxy.proxy.agent import NoCookies, makeUpstreamAgent
from regproxy.proxy.brokered import BrokeredRegistryResource
from regproxy.proxy.cachesetup import (
    cacheLine,
    makeForwarder,
    makeWarmer,
    offlineNames,
)
from regproxy.proxy.caching import CachingForwarder
from regproxy.proxy.catalog import CatalogResource, CatalogRoot, UpstreamCatalog
from regproxy.proxy.measured import MeasuredAgent
from regproxy.proxy.passthrough import (
    RegistryResource,
    TokenPassthroughResource,
    UpstreamRealm,
)
from regproxy.proxy.upstreamauth import UpstreamAuthenticator
from regproxy.resolve.balena import BalenaResolver
from regproxy.resolve.cache import CachingResolver
from regproxy.resolve.digests import (
    IDigestLocations,
    LayeredDigestLocations,
    MemoryDigestLocations,
    SeveralDigestLocations,
    SQLiteDigestLocations,
    runnerFor,
)
from regproxy.resolve.identity import IdentityResolver
from regproxy.resolve.interfaces import IResolver
from regproxy.resolve.remembered import IResolutionMemory, RecordingResolver
from regproxy.resolve.static import StaticMapFile
from regproxy.server.cors import CORSPolicy
from regproxy.server.drain import Connections
from regproxy.server.forwarded import TrustedProxies
from regproxy.server.health import ReadyResource, UpstreamProbe
from regproxy.server.site import RegproxySite, RootResource, healthResource
from regproxy.server.urls import Origin
from regproxy.tls.caresource import CACertificateResource


@attrs.define
class Reloads:
    """
    What SIGHUP re-reads: named parts, each registered by whoever builds it
    with L{register}, run in registration order by L{reloadAll}.

    A part's callable re-reads its files and returns a few words on what it
    now holds ("3 users"); when the new version cannot be used it keeps the
    old one and raises L{ValueError} saying why.
    """

    _parts: list[tuple[str, Callable[[], str]]] = attrs.Factory(list)
    _log: ClassVar[Logger] = Logger()

    def register(self, name: str, reload: Callable[[], str]) -> None:
        """
        Have C{reload} run on every SIGHUP; C{name} says what it is in the
        log ("htpasswd /etc/regproxy/users").
        """
        self._parts.append((name, reload))

    def names(self) -> list[str]:
        return [name for name, _ in self._parts]

    def reloadAll(self) -> bool:
        """
        Reload every part, one log line each, whatever the others do.

        @return: Whether every part reloaded.
        """
        ok = True
        for name, reload in self._parts:
            try:
                what = reload()
            except ValueError as e:
                ok = False
                self._log.warn(
                    "SIGHUP: kept the previous {name}: {reason}", name=name, reason=e
                )
            except Exception:
                ok = False
                self._log.failure("SIGHUP: reloading {name} failed", name=name)
            else:
                self._log.info("SIGHUP: reloaded {name}: {what}", name=name, what=what)
        return ok


def resolverKind(config: Config) -> str:
    """
    The resolver asked for, or the one that fits the upstream.
    """
    if config.resolver is not None:
        return config.resolver
    if config.upstream.rstrip("/") == DEFAULT_UPSTREAM or config.balena_api:
        return "balena"
    return "identity"


def makeResolver(
    config: Config,
    reactor,
    apiClient=None,
    reloads: Reloads | None = None,
    metrics: Metrics | None = None,
    remembered: IResolutionMemory | None = None,
) -> IResolver:
    """
    The L{IResolver} for C{config}, cached where it asks an API.

    @param apiClient: A treq-like client for the balena API; by default
        one with its own connection pool and no cookie jar.
    @param reloads: Where a static map registers its reload.
    @param metrics: Counts lookups and balena API requests.
    @param remembered: Where the API's answers are written down, for
        pulls while it cannot be asked.
    """
    metrics = metrics or Metrics()
    kind = resolverKind(config)
    if kind == "identity":
        return IdentityResolver()
    if kind.startswith("static:"):
        static = StaticMapFile(kind[len("static:") :])
        if reloads is not None:
            reloads.register(
                f"static name map {static.path}", lambda: f"{static.reload()} names"
            )
        return static
    if apiClient is None:
        apiClient = HTTPClient(
            # treq documents any CookieJar as accepted but types its own.
            makeUpstreamAgent(reactor, config),
            cookiejar=NoCookies(),  # type: ignore[arg-type]
        )
    balena: IResolver = BalenaResolver(
        config.balena_api or DEFAULT_BALENA_API,
        CountedClient(apiClient, metrics.balenaAPIRequests),
        reactor,
        timeout=config.response_timeout,
    )
    if remembered is not None:
        balena = RecordingResolver(balena, remembered, reactor)
    caching = CachingResolver(
        balena,
        reactor,
        ttl=config.resolve_cache_ttl,
        staleAge=config.resolve_stale_age,
    )
    metrics.read("regproxy_resolver_lookups", lambda: caching.cache.lookups)
    return caching


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


def makeBackend(
    config: Config,
    reactor,
    authenticator: UpstreamAuthenticator,
    reloads: Reloads | None = None,
):
    """
    Who judges logins: our own htpasswd users and rules when configured,
    else the upstream.

    @param reloads: Where the htpasswd file and the rules register their
        reloads.
    """
    if config.htpasswd is None:
        if config.access is not None:
            raise ValueError("--access needs --htpasswd")
        return UpstreamLogins(authenticator, reactor)
    rules: AccessRules | AccessRulesFile = AccessRules.default()
    try:
        users = HtpasswdUsers(config.htpasswd, reactor, ThreadPoolRunner(reactor))
        if config.access:
            rules = AccessRulesFile(config.access)
    except (HtpasswdError, AccessRulesError) as e:
        raise ValueError(str(e)) from None
    if reloads is not None:
        reloads.register(f"htpasswd {users.path}", lambda: f"{users.reload()} users")
        if isinstance(rules, AccessRulesFile):
            ruleFile = rules
            reloads.register(
                f"access rules {ruleFile.path}", lambda: f"{ruleFile.reload()} rules"
            )
    return HtpasswdLogins(users, rules, serviceCredentials(config))


def makeBroker(
    config: Config,
    reactor,
    authenticator: UpstreamAuthenticator,
    environ=os.environ,
    reloads: Reloads | None = None,
) -> Broker:
    """
    Our token issuer, verifier, sealer and auth backend.
    """
    issuer = makeIssuer(config, reactor, environ)
    verifier = TokenVerifier.forKeys(
        issuer.issuer, config.service_name, [issuer.key.public_key()], reactor
    )
    sealer = Sealer(loadOrCreateKey(os.path.join(_stateDir(config), "sealing.key")))
    backend = makeBackend(config, reactor, authenticator, reloads)
    # Our own bcrypt checks are what a flood of wrong passwords exhausts;
    # upstream logins are the upstream's to throttle.
    throttle = LoginThrottle(reactor) if config.htpasswd is not None else None
    return Broker(
        issuer,
        verifier,
        sealer,
        backend,
        config.service_name,
        config.public_url,
        throttle,
    )


def makeDigestLocations(
    config: Config, reactor, inCache: IDigestLocations | None = None
) -> IDigestLocations:
    """
    Where digests live for a name, shared through the state directory by
    every instance on it, and kept in the LAN cache (C{inCache}) too.
    """
    path = os.path.join(_stateDir(config), "digests.sqlite3")
    back: IDigestLocations = SQLiteDigestLocations(path, runnerFor(reactor), reactor)
    if inCache is not None:
        back = SeveralDigestLocations((back, inCache))
    return LayeredDigestLocations(MemoryDigestLocations(), back, clock=reactor)


def makeSite(
    config: Config,
    reactor,
    agent: IAgent | None = None,
    apiClient=None,
    environ=os.environ,
    reloads: Reloads | None = None,
) -> RegproxySite:
    """
    Build the server for C{config}.

    @param agent: Speaks HTTP to the upstream; by default a pooled
        L{Agent} made from the configuration.
    @param apiClient: A treq-like client for the balena API.
    @param environ: Where openBalena's C{REGISTRY_TOKEN_AUTH_*} variables
        are read from.
    @param reloads: Where the parts that SIGHUP re-reads register.
    """
    if agent is None:
        agent = makeUpstreamAgent(reactor, config)
    metrics = Metrics()
    agent = MeasuredAgent(agent, metrics, reactor)
    upstream = Origin.fromURL(config.upstream)
    forwarder = makeForwarder(config, reactor, agent, metrics)
    warmer = None
    root = RootResource()
    if config.auth == "passthrough":
        realm = UpstreamRealm(forwarder, upstream)
        root.putChild(
            b"v2", RegistryResource(forwarder, upstream, config.public_url, realm)
        )
        root.putChild(b"token", TokenPassthroughResource(forwarder, realm))
    else:
        authenticator = UpstreamAuthenticator(
            agent, upstream, reactor, timeout=config.response_timeout
        )
        broker = makeBroker(config, reactor, authenticator, environ, reloads)
        metrics.read("regproxy_tokens_issued", lambda: broker.tokensIssued)
        metrics.read("regproxy_logins_refused", lambda: broker.loginsRefused)
        metrics.read("regproxy_logins_throttled", lambda: broker.loginsThrottled)
        remembered, inCache = offlineNames(config, forwarder)
        cache = forwarder if isinstance(forwarder, CachingForwarder) else None

        def recordHit(repository: str, nbytes: int) -> None:
            if cache is not None and cache.isOpen:
                cache.index.record("hit", repository, nbytes, "cache")

        resolver = makeResolver(
            config, reactor, apiClient, reloads, metrics, remembered
        )
        registry: Resource = BrokeredRegistryResource(
            broker,
            resolver,
            authenticator,
            forwarder,
            upstream,
            config.public_url,
            config.api_token,
            fleetNames=resolverKind(config) != "identity",
            digests=makeDigestLocations(config, reactor, inCache),
            remembered=remembered,
            staleFor=config.cache_stale,
            cacheOpen=lambda: cache is not None and cache.isOpen,
            recordHit=recordHit,
        )
        if config.htpasswd is not None:
            # Our own rules say who may list what; elsewhere the catalog
            # would list names (fleet images) a client may not see.
            catalog = UpstreamCatalog(
                authenticator, agent, upstream, reactor, config.response_timeout
            )
            registry = CatalogRoot(registry, CatalogResource(broker, catalog))
        root.putChild(b"v2", registry)
        root.putChild(b"token", TokenResource(broker))
        warmer = makeWarmer(config, resolver, forwarder, authenticator, reactor)
    root.putChild(b"_health", healthResource())
    root.putChild(
        b"_ready", ReadyResource(UpstreamProbe(agent, upstream.base + b"/v2/", reactor))
    )
    root.putChild(b"_ca.crt", CACertificateResource.inStateDir(config.state_dir))
    site = RegproxySite(root, reactor=reactor)
    # What must be closed at shutdown (the cache's index), for tap and tests.
    site.cache = forwarder if isinstance(forwarder, CachingForwarder) else None
    site.warmer = warmer
    site.cors = CORSPolicy(config.cors_origin)
    site.headerTimeout = config.header_timeout
    site.connections = Connections()
    site.metrics = metrics
    site.trustedProxies = TrustedProxies.fromStrings(config.trusted_proxy)
    return site


def _tokenKeySource(config: Config, environ) -> str:
    if config.token_key:
        return config.token_key
    if environ.get("REGISTRY_TOKEN_AUTH_CERT_KEY"):
        return "openBalena's REGISTRY_TOKEN_AUTH_* variables"
    return f"kept in {config.state_dir}"


def startupLines(config: Config, environ=os.environ) -> list[str]:
    """
    What regproxy says once at start: one line each for the listeners,
    upstream, resolver, auth mode, users, token issuer and cache (never a
    secret: an API key or password shows only as given or not).
    """
    lines = [f"listening on {description}" for description in config.listen]
    lines.append(f"metrics on {config.metrics}" if config.metrics else "metrics: off")
    lines.append(f"upstream: {config.upstream}")
    if config.auth == "passthrough":
        lines.append("resolver: none (passthrough)")
    else:
        kind = resolverKind(config)
        where = ""
        if kind == "balena":
            where = f" at {config.balena_api or DEFAULT_BALENA_API}, "
            where += "own API key given" if config.api_token else "no API key"
        lines.append(f"resolver: {kind}{where}")
    lines.append(f"auth: {config.auth}")
    if config.htpasswd:
        lines.append(f"users: from {config.htpasswd}")
    else:
        lines.append("users: the upstream's (no --htpasswd)")
    if config.auth == "passthrough":
        lines.append("token issuer: the upstream's")
    else:
        lines.append(
            f"token issuer: {config.token_issuer}, key "
            f"{_tokenKeySource(config, environ)}, "
            f"tokens valid {config.token_lifetime:g}s"
        )
    lines.append(f"cache: {cacheLine(config)}")
    if config.trusted_proxy:
        lines.append(f"trusted proxies: {', '.join(config.trusted_proxy)}")
    return lines
