"""
Tests for L{regproxy.daemon} and L{regproxy.app.Reloads}: what SIGHUP
re-reads and how stopping waits for requests in flight.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Callable
from typing import cast

import bcrypt
from twisted.application.service import Service
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.logger import (
    ILogObserver,
    LogLevel,
    LogPublisher,
    formatEvent,
    globalLogPublisher,
    textFileLogObserver,
)
from twisted.python.logfile import LogFile
from twisted.trial.unittest import SynchronousTestCase

from regproxy.app import Reloads, makeSite
from regproxy.config import Config
from regproxy.daemon import DrainingService, HangupReloads, reopenLogFiles
from regproxy.server.drain import Connections


class LogCapture:
    def __init__(self, testCase: SynchronousTestCase) -> None:
        self.events: list[dict] = []
        observer = cast(ILogObserver, self.events.append)
        globalLogPublisher.addObserver(observer)
        testCase.addCleanup(globalLogPublisher.removeObserver, observer)

    def lines(self, containing: str = "") -> list[str]:
        return [formatEvent(e) for e in self.events if containing in formatEvent(e)]


class ReloadsTests(SynchronousTestCase):
    """
    L{Reloads} runs every registered part and logs one line for each.
    """

    def test_reloadAll(self) -> None:
        """
        Each part reloads in order, and its line says what it now holds.
        """
        log = LogCapture(self)
        ran: list[str] = []

        def part(name: str, holds: str) -> Callable[[], str]:
            def reload() -> str:
                ran.append(name)
                return holds

            return reload

        reloads = Reloads()
        reloads.register("first", part("first", "3 things"))
        reloads.register("second", part("second", "4 things"))
        self.assertTrue(reloads.reloadAll())
        self.assertEqual(ran, ["first", "second"])
        self.assertEqual(
            log.lines("SIGHUP"),
            [
                "SIGHUP: reloaded first: 3 things",
                "SIGHUP: reloaded second: 4 things",
            ],
        )

    def test_badPartKeepsOld(self) -> None:
        """
        A part whose new version cannot be used says why as a warning; the
        other parts still reload.
        """
        log = LogCapture(self)
        reloads = Reloads()

        def bad() -> str:
            raise ValueError("line 2: not a 'user:hash' entry")

        reloads.register("htpasswd /x", bad)
        reloads.register("second", lambda: "fine")
        self.assertFalse(reloads.reloadAll())
        warnings = [e for e in log.events if e.get("log_level") == LogLevel.warn]
        self.assertEqual(
            [formatEvent(e) for e in warnings],
            ["SIGHUP: kept the previous htpasswd /x: line 2: not a 'user:hash' entry"],
        )
        self.assertIn("SIGHUP: reloaded second: fine", log.lines())

    def test_unexpectedError(self) -> None:
        """
        A part that fails unexpectedly is logged with its traceback, and the
        others still reload.
        """
        reloads = Reloads()
        reloads.register("broken", lambda: str(1 / 0))
        ran = []

        def second() -> str:
            ran.append(1)
            return "fine"

        reloads.register("second", second)
        self.assertFalse(reloads.reloadAll())
        self.assertEqual(ran, [1])
        self.assertEqual(len(self.flushLoggedErrors(ZeroDivisionError)), 1)


def _htpasswd(path: str, users: dict[str, str]) -> None:
    with open(path + ".new", "wb") as f:
        for user, password in users.items():
            hashed = bcrypt.hashpw(password.encode(), bcrypt.gensalt(4))
            f.write(user.encode() + b":" + hashed + b"\n")
    os.replace(path + ".new", path)


class SiteReloadsTests(SynchronousTestCase):
    """
    L{makeSite} registers the files it read with the reloads.
    """

    def test_htpasswdAndStaticMap(self) -> None:
        """
        A reload reads the htpasswd file and the static map again at once;
        a broken access file keeps the rules read before.
        """
        users, rules, names = self.mktemp(), self.mktemp(), self.mktemp()
        _htpasswd(users, {"alice": "a"})
        with open(rules, "w") as f:
            f.write("")
        with open(names, "w") as f:
            f.write("[names]\n")
        config = Config(
            upstream="http://127.0.0.1:9",
            state_dir=self.mktemp(),
            htpasswd=users,
            access=rules,
            resolver="static:" + names,
        )
        reloads = Reloads()
        makeSite(config, Clock(), reloads=reloads)
        _htpasswd(users, {"alice": "a", "bob": "b"})
        with open(rules, "w") as f:
            f.write("[[rule]]\nusers = 1\n")
        with open(names, "w") as f:
            f.write('[names]\n"a/b" = "c/d"\n"e/f" = "g/h"\n')
        log = LogCapture(self)
        self.assertFalse(reloads.reloadAll())
        self.assertEqual(
            log.lines("SIGHUP")[:1] + log.lines("SIGHUP")[2:],
            [
                f"SIGHUP: reloaded htpasswd {users}: 2 users",
                f"SIGHUP: reloaded static name map {names}: 2 names",
            ],
        )
        self.assertIn(
            f"SIGHUP: kept the previous access rules {rules}: ", log.lines()[1]
        )


class FakeSignals:
    SIGHUP = signal.SIGHUP
    SIGTERM = signal.SIGTERM
    SIGINT = signal.SIGINT
    SIG_DFL = signal.SIG_DFL

    def __init__(self) -> None:
        self.handlers: dict[int, object] = {}

    def signal(self, number: int, handler: object) -> object:
        previous = self.handlers.get(number)
        self.handlers[number] = handler
        return previous


class ImmediateReactor:
    def callFromThread(self, f, *args) -> None:
        f(*args)


class HangupReloadsTests(SynchronousTestCase):
    """
    L{HangupReloads} runs the reloads on SIGHUP while it runs.
    """

    def test_signal(self) -> None:
        """
        SIGHUP runs the reloads (through the reactor); stopping puts the
        default action back.
        """
        ran = []

        def part() -> str:
            ran.append(1)
            return "ok"

        reloads = Reloads()
        reloads.register("part", part)
        signals = FakeSignals()
        hangup = HangupReloads(ImmediateReactor(), reloads, signals)
        hangup.startService()
        handler = signals.handlers[signal.SIGHUP]
        handler(signal.SIGHUP, None)  # type: ignore[operator]
        handler(signal.SIGHUP, None)  # type: ignore[operator]
        self.assertEqual(ran, [1, 1])
        hangup.stopService()
        self.assertEqual(signals.handlers[signal.SIGHUP], signal.SIG_DFL)

    def test_beforePortsOpen(self) -> None:
        """
        The handler is installed in C{privilegedStartService}, where twistd
        opens the ports, so a SIGHUP sent once a port is open is handled;
        C{startService} then installs nothing more.
        """
        signals = FakeSignals()
        hangup = HangupReloads(ImmediateReactor(), Reloads(), signals)
        hangup.privilegedStartService()
        handler = signals.handlers[signal.SIGHUP]
        self.assertNotEqual(handler, None)
        hangup.startService()
        self.assertIs(signals.handlers[signal.SIGHUP], handler)
        hangup.stopService()
        self.assertEqual(signals.handlers[signal.SIGHUP], signal.SIG_DFL)


class ReopenLogFilesTests(SynchronousTestCase):
    """
    L{reopenLogFiles} makes a log file moved away (logrotate) be written
    again at its path.
    """

    def test_reopen(self) -> None:
        path = os.path.abspath(self.mktemp())
        logFile = LogFile.fromFullPath(path)
        self.addCleanup(logFile.close)
        publisher = LogPublisher(textFileLogObserver(logFile))
        publisher({"log_format": "before", "log_time": 0})
        os.rename(path, path + ".1")
        self.assertEqual(reopenLogFiles(publisher), f"reopened {path}")
        publisher({"log_format": "after", "log_time": 0})
        with open(path) as f:
            self.assertIn("after", f.read())
        with open(path + ".1") as f:
            self.assertNotIn("after", f.read())

    def test_noFile(self) -> None:
        """
        Logging to standard output, there is nothing to reopen.
        """
        publisher = LogPublisher(cast(ILogObserver, lambda event: None))
        self.assertEqual(reopenLogFiles(publisher), "not logging to a file")


class ThreadlessClock(Clock):
    def callFromThread(self, f, *args) -> None:
        f(*args)


class SlowToStop(Service):
    def __init__(self) -> None:
        self.stopping: Deferred[None] = Deferred()

    def stopService(self) -> Deferred[None]:
        super().stopService()
        return self.stopping


class Busy:
    """
    A connection with a request in flight.
    """

    def __init__(self, connections: Connections) -> None:
        self.connections = connections
        self.told = False
        self.aborted = False

    def stopAfterRequest(self) -> None:
        self.told = True

    def abort(self) -> None:
        self.aborted = True
        self.connections.closed(self)


class DrainingServiceTests(SynchronousTestCase):
    """
    Stopping L{DrainingService} stops the listeners, then waits for the
    requests in flight, at most C{grace} seconds.
    """

    def setUp(self) -> None:
        self.clock = ThreadlessClock()
        self.signals = FakeSignals()
        self.top = DrainingService()
        self.connections = self.top.connections = Connections()
        self.top.reactor = self.clock
        self.top.signals = self.signals
        self.top.grace = 30.0
        self.listener = SlowToStop()
        self.listener.setServiceParent(self.top)
        self.top.startService()
        self.busy = Busy(self.connections)
        self.connections.opened(self.busy)

    def test_listenersFirst(self) -> None:
        """
        Connections are told to stop only once the listeners stopped.
        """
        stopped = self.top.stopService()
        self.assertFalse(self.busy.told)
        self.listener.stopping.callback(None)
        self.assertTrue(self.busy.told)
        self.assertNoResult(stopped)
        self.connections.closed(self.busy)
        self.successResultOf(stopped)
        self.assertFalse(self.busy.aborted)

    def test_grace(self) -> None:
        """
        A request still in flight after C{grace} seconds is cut, and then
        the service has stopped.
        """
        log = LogCapture(self)
        self.listener.stopping.callback(None)
        stopped = self.top.stopService()
        self.clock.advance(29.0)
        self.assertNoResult(stopped)
        self.clock.advance(1.0)
        self.assertTrue(self.busy.aborted)
        self.successResultOf(stopped)
        self.assertEqual(
            log.lines("Stopping"),
            [
                "Stopping: no more new connections; waiting up to 30s for the "
                "requests in flight on 1 open connections",
                "Stopping: cutting 1 connections still busy after 30s",
            ],
        )

    def test_secondSignal(self) -> None:
        """
        A second SIGTERM or SIGINT while waiting cuts the connections at
        once.
        """
        for number in (signal.SIGTERM, signal.SIGINT):
            self.connections.opened(Busy(self.connections))
            self.top.running = True
            self.listener.stopping = Deferred()
            self.listener.running = True
            stopped = self.top.stopService()
            self.listener.stopping.callback(None)
            self.assertNoResult(stopped)
            self.signals.handlers[number](number, None)  # type: ignore[operator]
            self.successResultOf(stopped)

    def test_drainLastStopsAfterTheDrain(self) -> None:
        """
        A service in C{drainLast} (the cache) is drained with the
        connections, within the same grace, and stopped only once the
        connections and its own work are done: a download in flight at
        SIGTERM is kept, not cut by the cache closing under it.
        """
        last = DrainsLast()
        last.setServiceParent(self.top)
        self.top.drainLast = (last,)
        last.startService()
        stopped = self.top.stopService()
        self.assertEqual(last.calls, [])
        self.listener.stopping.callback(None)
        self.assertEqual(last.calls, [("drain", 30.0)])
        self.connections.closed(self.busy)
        self.assertNoResult(stopped)
        self.assertTrue(last.running)
        last.drained.callback(None)
        self.assertEqual(last.calls, [("drain", 30.0), ("stop",)])
        self.successResultOf(stopped)

    def test_secondSignalCutsDrainLast(self) -> None:
        """
        A second signal cuts the work of C{drainLast} too.
        """
        last = DrainsLast()
        last.setServiceParent(self.top)
        self.top.drainLast = (last,)
        stopped = self.top.stopService()
        self.listener.stopping.callback(None)
        self.signals.handlers[signal.SIGTERM](signal.SIGTERM, None)  # type: ignore[operator]
        self.assertIn(("cut", "on a second signal"), last.calls)
        self.successResultOf(stopped)


class DrainsLast(Service):
    """
    A service with work of its own to drain, as the cache's is.
    """

    def __init__(self) -> None:
        self.calls: list[tuple[object, ...]] = []
        self.drained: Deferred[None] = Deferred()

    def drain(self, clock: Clock, grace: float) -> Deferred[None]:
        self.calls.append(("drain", grace))
        return self.drained

    def cut(self, why: str) -> None:
        self.calls.append(("cut", why))
        if not self.drained.called:
            self.drained.callback(None)

    def stopService(self) -> None:
        super().stopService()
        self.calls.append(("stop",))
