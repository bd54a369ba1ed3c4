# -*- test-case-name: tests.unit.test_tap -*-
"""
The C{twistd regproxy} command: its L{Options} and L{makeService}.
"""

from __future__ import annotations

import os
import signal
import sys
from typing import TYPE_CHECKING, Any

import attrs
from twisted.application import service
from twisted.application.internet import StreamServerEndpointService, TimerService
from twisted.internet.defer import Deferred
from twisted.internet.error import CannotListenError
from twisted.logger import ILogObserver, Logger
from twisted.python import usage
from twisted.python.components import Componentized

from regproxy import __version__
from regproxy.config import (
    Config,
    ConfigError,
    loadConfig,
    optionName,
    settings,
    unknownEnvironment,
)
from regproxy.daemon import DrainingService

if TYPE_CHECKING:
    from regproxy.tls.endpoint import TLSDefaults

_log = Logger()


def _repeatableHandler(name: str):
    def handler(self: Options, value: str) -> None:
        self.given.setdefault(name, []).append(value)

    return handler


def _switchHandler(name: str):
    def handler(self: Options) -> None:
        self.given[name] = True

    return handler


class Options(usage.Options):
    """
    Command-line options; each one comes from a field of L{Config}, and its
    environment variable and file key are named after it too.
    """

    synopsis = "[options]"
    longdesc = (
        "Every option can also be set in the environment (REGPROXY_UPSTREAM, "
        "REGPROXY_LISTEN, ...) or in the TOML file given by --config; flags "
        "win over the environment, which wins over the file."
    )
    optParameters: list[list[Any]] = [
        ["config", None, None, "TOML configuration file (also REGPROXY_CONFIG)."],
    ]
    optFlags: list[list[Any]] = []

    def __init__(self) -> None:
        super().__init__()
        self.given: dict[str, Any] = {}

    def parseOptions(self, options: list[str] | None = None) -> None:
        try:
            super().parseOptions(options)
        except usage.UsageError as e:
            # One line that names the option, not twistd's whole usage text.
            raise SystemExit(
                f"twistd regproxy: {e}; see 'twistd regproxy --help'"
            ) from None

    def opt_version(self) -> None:
        """
        Show regproxy's version (and Twisted's) and exit.
        """
        from twisted import copyright

        print(f"regproxy {__version__} (Twisted {copyright.version})")
        sys.exit(0)

    def postOptions(self) -> None:
        for field, spec in settings():
            if spec.repeatable or spec.switch:
                continue
            value = self.opts.get(optionName(field))
            if value is not None:
                self.given[field.name] = value
        try:
            self.config = loadConfig(self.given, os.environ, self.opts["config"])
        except ConfigError as e:
            # One line that names the option, not the whole usage text.
            raise SystemExit(f"regproxy: {e}") from None


for _field, _spec in settings():
    _default: Any = _field.default
    if isinstance(_default, attrs.Factory):  # type: ignore[arg-type]
        _default = _default.factory()
    if isinstance(_default, tuple):
        _default = " ".join(_default)
    _doc = _spec.help
    if _default not in (None, "", ()) and not _spec.secret:
        _doc += f" [default: {_default}]"
    _name = optionName(_field)
    if _spec.repeatable:
        _handler = _repeatableHandler(_field.name)
        _handler.__doc__ = _doc
        setattr(Options, "opt_" + _field.name, _handler)
    elif _spec.switch:
        _handler = _switchHandler(_field.name)
        _handler.__doc__ = _doc
        setattr(Options, "opt_" + _field.name, _handler)
    else:
        Options.optParameters.append([_name, None, None, _doc])


class RegproxyService(DrainingService):
    """
    All of regproxy's services; a listener that cannot bind stops start-up
    with one line saying which, instead of a traceback.  Stopping lets
    requests in flight finish (see L{DrainingService}).

    @ivar startupLines: Logged once the listeners are bound (what listens,
        the upstream, resolver, auth, users, token issuer, cache).
    @ivar logObserver: Replaces twistd's text log (C{--log-format json}).
    """

    startupLines: list[str] = []
    logObserver: ILogObserver | None = None
    _log = Logger()

    def setServiceParent(self, parent) -> None:
        # twistd starts its log with the application's ILogObserver when it
        # has one (and no --logger was given): the way to choose the format.
        if self.logObserver is not None and isinstance(parent, Componentized):
            parent.setComponent(ILogObserver, self.logObserver)
        super().setServiceParent(parent)

    def privilegedStartService(self) -> None:
        try:
            super().privilegedStartService()
        except CannotListenError as e:
            raise SystemExit(f"regproxy: --listen: {_describeBindFailure(e)}") from None

    def startService(self) -> None:
        try:
            super().startService()
        except CannotListenError as e:
            raise SystemExit(f"regproxy: --listen: {_describeBindFailure(e)}") from None
        for line in self.startupLines:
            self._log.info("{line}", line=line)


# Seconds between looks at the --warm-fleet fleets' target releases.
WARM_INTERVAL = 60.0


class CacheService(service.Service):
    """
    Opens the LAN cache when regproxy starts (its index and disk threads
    and its timers) and closes it when regproxy stops, so its counters are
    written out.  It stops after the drain (see L{DrainingService}): the
    downloads in flight get the grace to finish and be kept, and are cut
    only after it.
    """

    def __init__(self, cache: Any) -> None:
        self.cache = cache

    def startService(self) -> None:
        super().startService()
        self.cache.open()

    def drain(self, clock: Any, grace: float) -> Any:
        return self.cache.fills.drain(clock, grace)

    def cut(self, why: str) -> None:
        self.cache.fills.cut(why)

    def stopService(self) -> Any:
        super().stopService()
        return self.cache.close()


def _describeBindFailure(e: CannotListenError) -> str:
    reason = getattr(e.socketError, "strerror", None) or str(e.socketError)
    where = f"{e.interface or '*'}:{e.port}"
    return f"cannot listen on {where}: {reason}"


def _listen(
    top: RegproxyService,
    option: str,
    description: str,
    factory: Any,
    reactor: Any,
    defaults: TLSDefaults,
) -> StreamServerEndpointService:
    """
    A listener for C{factory} on the endpoint C{description} names, under
    C{top}; a description that cannot be used stops start-up with one line
    naming C{option}.
    """
    from regproxy.tls.endpoint import serverEndpoint

    try:
        endpoint = serverEndpoint(reactor, description, defaults)
    except (ValueError, TypeError, KeyError) as e:  # includes EndpointError
        raise SystemExit(
            f"regproxy: {option}: cannot use {description!r}: {e}"
        ) from None
    listener = StreamServerEndpointService(endpoint, factory)
    # As strports.service does: a port that cannot be bound stops start-up.
    listener._raiseSynchronously = True
    listener.setServiceParent(top)
    return listener


def makeService(options: Options) -> RegproxyService:
    """
    Build the listeners and the resource tree from the options.
    """
    from twisted.internet import reactor

    from regproxy.app import Reloads, makeSite, startupLines
    from regproxy.daemon import HangupReloads, registerTLSReload, reopenLogFiles
    from regproxy.mdns import MDNSService, portsFromListen
    from regproxy.metrics import MetricsSite
    from regproxy.server.logformat import JSONLineObserver
    from regproxy.tls.endpoint import TLSDefaults, TLSServerEndpoint

    config: Config = options.config
    for problem in unknownEnvironment(os.environ):
        _log.warn("Ignoring {problem}", problem=problem)
    reloads = Reloads()
    # First, so that the lines of the other parts go to the reopened file.
    reloads.register("log file", reopenLogFiles)
    top = RegproxyService()
    if config.log_format == "json":
        top.logObserver = JSONLineObserver(sys.stdout)
    # First, so SIGHUP is handled before any port is open.
    HangupReloads(reactor, reloads).setServiceParent(top)
    try:
        site = makeSite(config, reactor, reloads=reloads)
    except (OSError, ValueError) as e:
        raise SystemExit(f"regproxy: {e}") from None
    cache = getattr(site, "cache", None)
    if cache is not None:
        cacheService = CacheService(cache)
        cacheService.setServiceParent(top)
        top.drainLast = (cacheService,)
    warmer = getattr(site, "warmer", None)
    if warmer is not None:
        # After the cache's service, so the cache is open when it first runs.
        TimerService(
            WARM_INTERVAL, lambda: Deferred.fromCoroutine(warmer.warmAll())
        ).setServiceParent(top)
    top.connections = site.connections
    top.reactor = reactor
    top.grace = config.shutdown_grace
    top.signals = signal
    top.startupLines = startupLines(config)
    defaults = TLSDefaults(config.state_dir, config.tls_name)
    for description in config.listen:
        listener = _listen(top, "--listen", description, site, reactor, defaults)
        if isinstance(listener.endpoint, TLSServerEndpoint):
            registerTLSReload(reloads, listener.endpoint)
    if config.metrics is not None and site.metrics is not None:
        metricsSite = MetricsSite(site.metrics, reactor)
        _listen(top, "--metrics", config.metrics, metricsSite, reactor, defaults)
    if config.mdns:
        httpPorts, httpsPorts = portsFromListen(config.listen)
        try:
            advertiser = MDNSService(reactor, config.mdns, httpPorts, httpsPorts)
        except ValueError as e:
            raise SystemExit(f"regproxy: --mdns: {e}") from None
        advertiser.setServiceParent(top)
    return top
