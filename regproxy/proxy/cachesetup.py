# -*- test-case-name: tests.unit.test_tap -*-
"""
How the configuration becomes the LAN cache: its directory and size, the
relay with the cache in front, and the C{--warm-fleet} follower.  Part of
the composition root (L{regproxy.app}), kept apart so that each stays small.
"""

from __future__ import annotations

import os
from typing import Any

from twisted.internet.interfaces import IReactorThreads
from twisted.web.iweb import IAgent

from regproxy.cache.index import CacheIndex
from regproxy.cache.store import BlobStore
from regproxy.config import Config
from regproxy.metrics import Metrics
from regproxy.names.sizes import formatSize
from regproxy.proxy.caching import CachingForwarder
from regproxy.proxy.offlinenames import IndexDigestLocations, IndexResolutions
from regproxy.proxy.relay import Forwarder
from regproxy.proxy.upstreamauth import UpstreamAuthenticator
from regproxy.proxy.warming import FleetWarmer
from regproxy.resolve.digests import IDigestLocations
from regproxy.resolve.interfaces import IResolver
from regproxy.resolve.remembered import IResolutionMemory
from regproxy.server.urls import Origin

DEFAULT_CACHE_LIMIT = 20 * 1024**3


def cacheLine(config: Config) -> str:
    if config.cache_size == 0:
        return "off (--cache-size 0)"
    size = (
        formatSize(config.cache_size)
        if config.cache_size is not None
        else "half the free space at start, at most 20GiB"
    )
    return f"{cacheDir(config)}, up to {size}"


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


def makeForwarder(
    config: Config, reactor: Any, agent: IAgent, metrics: Metrics
) -> Forwarder:
    """
    The relay to the upstream, with the LAN cache in front unless
    C{--cache-size 0} turned it off.  The cache reads and writes its files
    and its index on threads: a reactor without them (the in-memory ones
    of unit tests) gets the plain relay.
    """
    clock: Any = reactor  # what the cache times itself with
    if config.cache_size == 0 or not IReactorThreads.providedBy(reactor):
        return Forwarder(agent, reactor, config.response_timeout, metrics)

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
        metrics,
        opener=openCache,
        authTTL=config.cache_auth_ttl,
        offlineGrace=config.cache_offline_grace,
        staleFor=config.cache_stale,
    )


def offlineNames(
    config: Config, forwarder: Forwarder
) -> tuple[IResolutionMemory | None, IDigestLocations | None]:
    """
    Where resolver answers and digest locations are kept for pulling fleet
    names offline after a restart: the LAN cache's index, when the cache
    is on.
    """
    if not isinstance(forwarder, CachingForwarder):
        return None, None
    return (
        IndexResolutions(forwarder, config.cache_stale),
        IndexDigestLocations(forwarder),
    )


def makeWarmer(
    config: Config,
    resolver: IResolver,
    forwarder: Forwarder,
    authenticator: UpstreamAuthenticator,
    reactor: Any,
) -> FleetWarmer | None:
    """
    The C{--warm-fleet} follower, if any fleet is given and the cache is on.
    """
    if not config.warm_fleet or not isinstance(forwarder, CachingForwarder):
        return None
    return FleetWarmer(
        resolver,
        forwarder,
        authenticator,
        Origin.fromURL(config.upstream),
        config.warm_fleet,
        config.api_token,
        reactor,
    )
