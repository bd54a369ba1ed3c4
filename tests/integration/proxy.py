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

import attrs
from twisted.internet.defer import CancelledError, Deferred, TimeoutError, succeed
from twisted.protocols.policies import WrappingFactory

from .registry import Registry

IDLE_TIMEOUT = 10.0


class _TrackingFactory(WrappingFactory):
    """
    Count the server's open connections so cleanup can wait for the last
    one to close.
    """

    def __init__(self, wrappedFactory) -> None:
        super().__init__(wrappedFactory)
        self._idle: list[Deferred[None]] = []

    def unregisterProtocol(self, p) -> None:
        super().unregisterProtocol(p)
        if not self.protocols:
            waiting, self._idle = self._idle, []
            for d in waiting:
                if not d.called:  # a timed-out wait was cancelled
                    d.callback(None)


def _whenIdle(factory: _TrackingFactory) -> Deferred[None]:
    if not factory.protocols:
        return succeed(None)
    d: Deferred[None] = Deferred()
    factory._idle.append(d)
    return d


@attrs.frozen
class Proxy:
    """
    A running regproxy.

    @ivar url: C{http://127.0.0.1:PORT}.
    @ivar host: C{127.0.0.1:PORT}, for image references.
    @ivar site: The L{twisted.web.server.Site} from
        L{regproxy.site.makeSite}.
    """

    url: str
    host: str
    port: int
    site: object
    config: object

    def reference(self, repository: str, tag: str) -> str:
        return f"docker://{self.host}/{repository}:{tag}"


def startProxy(testCase, registry: Registry, reactor=None, **settings) -> Proxy:
    """
    Serve regproxy on a free loopback port, forwarding to C{registry},
    until C{testCase} ends.

    @param settings: Further L{regproxy.config.Config} fields.
    """
    from regproxy.config import Config
    from regproxy.site import makeSite
    from regproxy.upstream import makeUpstreamAgent

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
    factory = _TrackingFactory(site)
    factory.noisy = False
    port = reactor.listenTCP(0, factory, interface="127.0.0.1")

    def stop() -> Deferred:
        # Clients are gone by now; wait for their connections to close,
        # then close ours to the registry, then stop listening.
        def closeUpstream(_):
            return agent._pool.closeCachedConnections()

        def abortStragglers(failure):
            # A client that keeps its connection open (a test that forgot
            # to close its pool) must not hang cleanup.
            failure.trap(TimeoutError, CancelledError)
            for protocol in list(factory.protocols):
                protocol.transport.abortConnection()
            return _whenIdle(factory)

        d = _whenIdle(factory)
        d.addTimeout(IDLE_TIMEOUT, reactor)
        d.addErrback(abortStragglers)
        d.addCallback(closeUpstream)
        d.addCallback(lambda _: port.stopListening())
        return d

    testCase.addCleanup(stop)
    number = port.getHost().port
    return Proxy(
        f"http://127.0.0.1:{number}", f"127.0.0.1:{number}", number, site, config
    )
