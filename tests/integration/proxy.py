# -*- test-case-name: tests.integration.test_forward_open -*-
"""
Run regproxy in the test's own process, in front of a test registry.

The test (and the child processes it starts) talk to it over loopback
while the reactor runs.  Cleanup waits for every connection regproxy holds,
on both sides, to close, so trial finds a clean reactor.
"""

from __future__ import annotations

import shutil
import tempfile
from typing import Protocol

import attrs

from regproxy.server.site import RegproxySite

from .loopback import serveOnLoopback


class Upstream(Protocol):
    """
    What regproxy is put in front of: a registry, or anything serving one.
    """

    @property
    def url(self) -> str: ...

    @property
    def caFile(self) -> str | None: ...


@attrs.frozen
class Proxy:
    """
    A running regproxy.

    @ivar url: C{http://127.0.0.1:PORT}.
    @ivar host: C{127.0.0.1:PORT}, for image references.
    @ivar site: The L{twisted.web.server.Site} from
        L{regproxy.app.makeSite}.
    """

    url: str
    host: str
    port: int
    site: RegproxySite
    config: object

    def reference(self, repository: str, tag: str) -> str:
        return f"docker://{self.host}/{repository}:{tag}"


def startProxy(testCase, registry: Upstream, reactor=None, **settings) -> Proxy:
    """
    Serve regproxy on a free loopback port, forwarding to C{registry},
    until C{testCase} ends.

    @param settings: Further L{regproxy.config.Config} fields.
    """
    from regproxy.app import makeSite
    from regproxy.config import Config
    from regproxy.proxy.agent import makeUpstreamAgent

    if reactor is None:
        from twisted.internet import reactor as _reactor

        reactor = _reactor
    stateDir = tempfile.mkdtemp(prefix="regproxy-state-")
    testCase.addCleanup(shutil.rmtree, stateDir, True)
    config = Config(
        **{
            "upstream": registry.url,
            "upstream_ca": registry.caFile,
            "listen": (),
            "state_dir": stateDir,
            **settings,
        }
    )
    # The production agent, built here only so cleanup can close its pool.
    agent = makeUpstreamAgent(reactor, config)
    site = makeSite(config, reactor, agent=agent)
    site.noisy = False
    cache = getattr(site, "cache", None)
    if cache is not None:
        # What CacheService does in twistd.  Cleanups run last-added first:
        # the index closes after the connections (added below) have.
        cache.open()
        testCase.addCleanup(cache.close)
    # Clients are gone by the cleanup; once their connections are closed,
    # close ours to the registry.
    number = serveOnLoopback(
        testCase, site, reactor, afterIdle=agent._pool.closeCachedConnections
    )
    return Proxy(
        f"http://127.0.0.1:{number}", f"127.0.0.1:{number}", number, site, config
    )
