# -*- test-case-name: tests.unit.test_forward -*-
"""
The composition root: how a L{Config} becomes a server.

C{/v2/...} is relayed to the upstream, C{/token} is the token endpoint,
C{/_health} answers without touching the upstream; anything else is a
registry-format 404.  This is the one module that knows every part.
"""

from __future__ import annotations

import os
from typing import Any

from treq.client import HTTPClient
from twisted.internet.interfaces import IReactorThreads
from twisted.web.iweb import IAgent
from twisted.web.server import Site

from regproxy.auth.access import AccessRules, AccessRulesError, loadAccessRules
from regproxy.auth.broker import Broker
from regproxy.auth.credentials import BasicCredentials
from regproxy.auth.htpasswd import HtpasswdError, HtpasswdUsers, ThreadPoolRunner
from regproxy.auth.jwt import (
    TokenIssuer,
    TokenVerifier,
    issuerFromOpenBalenaEnvironment,
    loadIssuer,
    loadOrCreateIssuer,
)
from regproxy.auth.sealing import Sealer, loadOrCreateKey
from regproxy.auth.tokenresource import TokenResource
from regproxy.auth.upstreamlogins import UpstreamLogins
from regproxy.auth.users import HtpasswdLogins
from regproxy.cache.index import CacheIndex
from regproxy.cache.store import BlobStore
from regproxy.config import DEFAULT_BALENA_API, DEFAULT_UPSTREAM, Config
from regproxy.proxy.agent import NoCookies, makeUpstreamAgent
from regproxy.proxy.brokered import BrokeredRegistryResource
from regproxy.proxy.caching import CachingForwarder
from regproxy.proxy.passthrough import (
    RegistryResource,
    TokenPassthroughResource,
    UpstreamRealm,
)
from regproxy.proxy.relay import Forwarder
from regproxy.proxy.upstreamauth import UpstreamAuthenticator
from regproxy.proxy.warming import FleetWarmer
from regproxy.resolve.balena import BalenaResolver
from regproxy.resolve.cache import CachingResolver
from regproxy.resolve.identity import IdentityResolver
from regproxy.resolve.interfaces import IResolver
from regproxy.resolve.static import StaticResolver
from regproxy.server.cors import CORSPolicy
from regproxy.server.site import RegproxySite, RootResource, healthResource
from regproxy.server.urls import Origin
from regproxy.tls.caresource import CACertificateResource


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


DEFAULT_CACHE_LIMIT = 20 * 1024**3


def cacheDir(config: Config) -> str:
    return config.cache_dir or os.path.join(config.state_dir, "cache")


def cacheSize(config: Config, directory: str) -> int:
    """
    C{--cache-size}, or half the free space of the cache's filesystem now,
    at most 20 GiB.
    """
    if config.cache_size is not None:
        return config.cache_size
    stat = os.statvfs(directory)
    return min(stat.f_bavail * stat.f_frsize // 2, DEFAULT_CACHE_LIMIT)


def makeForwarder(config: Config, reactor: Any, agent: IAgent) -> Forwarder:
    """
    The relay to the upstream, with the LAN cache in front unless
    C{--cache-size 0} turned it off.  The cache reads and writes its files
    and its index on threads: a reactor without them (the in-memory ones
    of unit tests) gets the plain relay.
    """
    clock: Any = reactor  # what the cache times itself with
    if config.cache_size == 0 or not IReactorThreads.providedBy(reactor):
        return Forwarder(agent, reactor, config.response_timeout)

    def openCache() -> tuple[BlobStore, CacheIndex]:
        directory = cacheDir(config)
        os.makedirs(directory, mode=0o700, exist_ok=True)
        index = CacheIndex.open(os.path.join(directory, "index.sqlite"), reactor)
        store = BlobStore(
            directory,
            index,
            reactor,
            cacheSize(config, directory),
            config.cache_min_free,
            protectFor=config.cache_protect,
        )
        return store, index

    return CachingForwarder(
        agent,
        clock,
        config.response_timeout,
        opener=openCache,
        authTTL=config.cache_auth_ttl,
        offlineGrace=config.cache_offline_grace,
        staleFor=config.cache_stale,
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
    forwarder = makeForwarder(config, reactor, agent)
    warmer = None
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
        if config.warm_fleet and isinstance(forwarder, CachingForwarder):
            warmer = FleetWarmer(
                resolver,
                forwarder,
                authenticator,
                upstream,
                config.warm_fleet,
                config.api_token,
                reactor,
            )
    root.putChild(b"_health", healthResource())
    root.putChild(b"_ca.crt", CACertificateResource.inStateDir(config.state_dir))
    site = RegproxySite(root, reactor=reactor)
    # What must be closed at shutdown (the cache's index), for tap and tests.
    site.cache = forwarder if isinstance(forwarder, CachingForwarder) else None
    site.warmer = warmer
    site.cors = CORSPolicy(config.cors_origin)
    return site
