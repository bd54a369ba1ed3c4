# -*- test-case-name: tests.test_resolve_balena -*-
"""
Resolvers: from the names clients use to upstream repositories.

L{IResolver} (in L{regproxy.resolve.interfaces}) has three implementations:
C{balena} (fleet names through the balena API), C{identity} (names
unchanged) and C{static} (a TOML map).  L{makeResolver} picks one from the
configuration, as C{--resolver} says or, by default, C{balena} when the
upstream is balenaCloud's registry or C{--balena-api} is given, C{identity}
otherwise.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from hyperlink import URL

if TYPE_CHECKING:
    from twisted.internet.interfaces import IReactorTime

    from regproxy.config import Config
    from regproxy.resolve.interfaces import IResolver

BALENA = "balena"
IDENTITY = "identity"
STATIC = "static"
BALENA_REGISTRY_SUFFIX = "balena-cloud.com"


def resolverKind(config: Config) -> str:
    """
    The resolver C{config} asks for, with the default rule applied.
    """
    if config.resolver is not None:
        return config.resolver.partition(":")[0]
    host = URL.from_text(config.upstream).host
    balenaCloud = host == BALENA_REGISTRY_SUFFIX or host.endswith(
        "." + BALENA_REGISTRY_SUFFIX
    )
    if config.balena_api is not None or balenaCloud:
        return BALENA
    return IDENTITY


def makeResolver(config: Config, clock: IReactorTime, client: Any) -> IResolver:
    """
    The resolver the configuration asks for; the balena one behind a
    L{regproxy.cache.CachingResolver}.

    @param client: A treq-like HTTP client for the balena API (a
        C{treq.HTTPClient} with no cookie jar).
    @raise ValueError: When a static map cannot be used.
    """
    kind = resolverKind(config)
    if kind == STATIC:
        from regproxy.resolve.static import StaticResolver

        assert config.resolver is not None
        return StaticResolver.fromFile(config.resolver.partition(":")[2])
    if kind == IDENTITY:
        from regproxy.resolve.identity import IdentityResolver

        return IdentityResolver()
    from regproxy.cache import CachingResolver
    from regproxy.config import DEFAULT_BALENA_API
    from regproxy.resolve.balena import BalenaResolver

    return CachingResolver(
        BalenaResolver(config.balena_api or DEFAULT_BALENA_API, client, clock),
        clock,
        ttl=config.resolve_cache_ttl,
        staleAge=config.resolve_stale_age,
    )
