# -*- test-case-name: tests.unit.test_daemon -*-
"""
The daemon's life under twistd: SIGHUP re-reads what can change
(L{regproxy.app.Reloads}) and reopens the log file; stopping (SIGTERM)
stops accepting connections and lets requests in flight finish within a
grace period.
"""

from __future__ import annotations

import signal
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from twisted.application import service
from twisted.internet.defer import Deferred, DeferredList, maybeDeferred
from twisted.logger import FileLogObserver, ILogObserver, globalLogPublisher
from twisted.python.logfile import BaseLogFile

if TYPE_CHECKING:
    # Only for types: twistd imports this module (through regproxy.tap) to
    # list its options, which must not cost building the whole app.
    from regproxy.app import Reloads
    from regproxy.server.drain import Connections
    from regproxy.tls.endpoint import TLSServerEndpoint


def _observers(publisher: Any) -> Iterable[ILogObserver]:
    # LogPublisher keeps its observers private; twistd adds its file
    # observer to the global one and keeps no other reference to it.
    return list(getattr(publisher, "_observers", []))


def reopenLogFiles(publisher: Any = globalLogPublisher) -> str:
    """
    Reopen the files the log goes to (C{twistd --logfile}), so that a log
    rotated away by moving it (logrotate) is written again at its path.

    @return: What was reopened, for the log.
    """
    reopened = []
    for observer in _observers(publisher):
        if isinstance(observer, FileLogObserver):
            outFile = getattr(observer, "_outFile", None)
            if isinstance(outFile, BaseLogFile):
                outFile.reopen()
                reopened.append(outFile.path)
    if not reopened:
        return "not logging to a file"
    return "reopened " + ", ".join(reopened)


def registerTLSReload(reloads: Reloads, endpoint: TLSServerEndpoint) -> None:
    """
    Have SIGHUP re-read a TLS listener's certificate files, and renew the
    local CA's server certificate if this machine's names changed (both
    also happen by themselves: at the next handshake after a file changes,
    and within a minute of a names change).
    """

    def reload() -> str:
        changed = endpoint.reload()
        return "new certificate installed" if changed else "nothing new installed"

    reloads.register(f"TLS certificate of port {endpoint.spec.port}", reload)


class HangupReloads(service.Service):
    """
    Run the reloads on SIGHUP (whose default is to kill the process).

    @param signals: The C{signal} module, or a fake in tests.
    """

    def __init__(self, reactor: Any, reloads: Reloads, signals: Any = signal) -> None:
        self._reactor = reactor
        self._reloads = reloads
        self._signals = signals
        self._previous: Any = None
        self._installed = False

    def _onSignal(self, number: int, frame: object) -> None:
        self._reactor.callFromThread(self._reloads.reloadAll)

    def privilegedStartService(self) -> None:
        # twistd opens the ports here, before startService: a SIGHUP that
        # comes once a port is open must find the handler.
        super().privilegedStartService()
        self._install()

    def startService(self) -> None:
        super().startService()
        self._install()

    def _install(self) -> None:
        if not self._installed:
            self._installed = True
            self._previous = self._signals.signal(self._signals.SIGHUP, self._onSignal)

    def stopService(self) -> None:
        super().stopService()
        self._installed = False
        previous = self._previous
        self._signals.signal(
            self._signals.SIGHUP,
            self._signals.SIG_DFL if previous is None else previous,
        )


class DrainingService(service.MultiService):
    """
    Stopping stops the listeners first, then gives the site's connections
    (and the work in flight of the services in C{drainLast}, such as the
    cache's downloads) C{grace} seconds to finish, and only then stops the
    services in C{drainLast}.  Meanwhile a second SIGTERM or SIGINT (an
    impatient Ctrl-C) cuts them at once, instead of the reactor's traceback
    for stopping twice.

    @ivar reactor: For the grace period, and to act on a signal.
    @ivar signals: The C{signal} module (a fake in tests), or L{None} to
        leave the signals alone.
    @ivar drainLast: Children stopped after the drain; each has
        C{drain(clock, grace)} and C{cut(why)}, as L{Connections} does.
    """

    connections: Connections | None = None
    reactor: Any = None
    grace: float = 30.0
    signals: Any = None
    drainLast: tuple[Any, ...] = ()

    def _stopChildren(self, children: list[service.IService]) -> Deferred[Any]:
        return DeferredList(
            [maybeDeferred(child.stopService) for child in reversed(children)]
        )

    def stopService(self) -> Deferred[Any]:
        connections = self.connections
        if connections is None:
            return maybeDeferred(super().stopService)
        service.Service.stopService(self)
        last = [child for child in self if child in self.drainLast]
        stopped = self._stopChildren([c for c in self if c not in last])
        draining: list[Any] = [connections, *last]

        def drain(_: object) -> Deferred[Any]:
            if self.signals is not None:
                self._cutOnSignal(draining)
            return DeferredList(
                [each.drain(self.reactor, self.grace) for each in draining]
            )

        stopped.addCallback(drain)
        stopped.addCallback(lambda _: self._stopChildren(last))
        return stopped

    def _cutOnSignal(self, draining: list[Any]) -> None:
        def cut() -> None:
            for each in draining:
                each.cut("on a second signal")

        def onSignal(number: int, frame: object) -> None:
            self.reactor.callFromThread(cut)

        for name in ("SIGTERM", "SIGINT"):
            self.signals.signal(getattr(self.signals, name), onSignal)
