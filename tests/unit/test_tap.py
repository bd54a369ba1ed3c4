"""
Tests for L{regproxy.tap}: the C{twistd regproxy} options and the service
they build.
"""

import os
import sys
from typing import cast

from twisted.application.internet import StreamServerEndpointService
from twisted.application.service import IService, IServiceMaker, MultiService
from twisted.internet.endpoints import TCP4ServerEndpoint, TCP6ServerEndpoint
from twisted.logger import ILogObserver, formatEvent, globalLogPublisher
from twisted.plugin import getPlugins
from twisted.trial.unittest import SynchronousTestCase

from regproxy.daemon import HangupReloads
from regproxy.tap import CacheService, Options, RegproxyService, makeService


class TapTestCase(SynchronousTestCase):
    def setUp(self) -> None:
        # The options read the process environment; give each test one
        # without the REGPROXY_ variables of whoever runs the suite.
        self.environ = {
            key: value
            for key, value in os.environ.items()
            if not key.startswith("REGPROXY_")
        }
        self.patch(os, "environ", self.environ)
        # Making the service writes keys into the state directory: never
        # the real one.
        self.environ["REGPROXY_STATE_DIR"] = os.path.abspath(self.mktemp())

    def parse(self, *argv: str) -> Options:
        options = Options()
        options.parseOptions(list(argv))
        return options

    def assertExitsNaming(self, option: str, *argv: str) -> str:
        """
        Parsing C{argv} exits with one line that names C{option}.
        """
        exit = self.assertRaises(SystemExit, self.parse, *argv)
        message = str(exit.code)
        self.assertIsInstance(exit.code, str)
        self.assertIn(option, message)
        self.assertNotIn("\n", message)
        return message


class OptionsTests(TapTestCase):
    """
    L{Options} gives the configuration the flags, the environment and the
    file say.
    """

    def test_defaults(self) -> None:
        """
        With no options, regproxy listens on tcp:80 and with TLS on 5000,
        and forwards to balenaCloud's registry.
        """
        config = self.parse().config
        self.assertEqual(config.listen, ("regproxy-tcp:80", "regproxy-tls:5000"))
        self.assertEqual(config.upstream, "https://registry2.balena-cloud.com")
        self.assertIsNone(config.public_url)

    def test_flags(self) -> None:
        """
        Each flag sets its setting.
        """
        config = self.parse(
            "--upstream",
            "http://127.0.0.1:5000/",
            "--public-url",
            "https://proxy.local:5000",
            "--state-dir",
            "/srv/regproxy",
            "--connect-timeout",
            "2.5",
            "--response-timeout",
            "30",
            "--listen",
            "tcp:8080:interface=127.0.0.1",
        ).config
        self.assertEqual(config.upstream, "http://127.0.0.1:5000")
        self.assertEqual(config.public_url, "https://proxy.local:5000")
        self.assertEqual(config.state_dir, "/srv/regproxy")
        self.assertEqual(config.connect_timeout, 2.5)
        self.assertEqual(config.response_timeout, 30.0)
        self.assertEqual(config.listen, ("tcp:8080:interface=127.0.0.1",))

    def test_listenTwice(self) -> None:
        """
        If C{--listen} is given twice, there are two listeners, in order.
        """
        config = self.parse(
            "--listen", "tcp:8080:interface=127.0.0.1", "--listen", "tcp:8081"
        ).config
        self.assertEqual(config.listen, ("tcp:8080:interface=127.0.0.1", "tcp:8081"))

    def test_environment(self) -> None:
        """
        A setting left off the command line comes from the environment.
        """
        self.environ["REGPROXY_UPSTREAM"] = "http://env.example:5000"
        self.environ["REGPROXY_LISTEN"] = "tcp:1,tcp:2"
        config = self.parse().config
        self.assertEqual(config.upstream, "http://env.example:5000")
        self.assertEqual(config.listen, ("tcp:1", "tcp:2"))

    def test_flagOverEnvironment(self) -> None:
        """
        A flag wins over the environment.
        """
        self.environ["REGPROXY_UPSTREAM"] = "http://env.example:5000"
        self.environ["REGPROXY_LISTEN"] = "tcp:1,tcp:2"
        config = self.parse(
            "--upstream", "http://flag.example", "--listen", "tcp:3"
        ).config
        self.assertEqual(config.upstream, "http://flag.example")
        self.assertEqual(config.listen, ("tcp:3",))

    def test_configFile(self) -> None:
        """
        C{--config} names a TOML file whose settings lose to the
        environment and the flags.
        """
        path = self.mktemp()
        with open(path, "w") as f:
            f.write(
                'upstream = "http://file.example"\n'
                'public-url = "http://file-public.example"\n'
                "connect-timeout = 4\n"
            )
        self.environ["REGPROXY_PUBLIC_URL"] = "http://env-public.example"
        config = self.parse("--config", path, "--connect-timeout", "1").config
        self.assertEqual(config.upstream, "http://file.example")
        self.assertEqual(config.public_url, "http://env-public.example")
        self.assertEqual(config.connect_timeout, 1.0)

    def test_configFromEnvironment(self) -> None:
        """
        C{REGPROXY_CONFIG} names the file when C{--config} is not given.
        """
        path = self.mktemp()
        with open(path, "w") as f:
            f.write('upstream = "http://file.example"\n')
        self.environ["REGPROXY_CONFIG"] = path
        self.assertEqual(self.parse().config.upstream, "http://file.example")

    def test_badFlag(self) -> None:
        """
        A bad value exits with one line naming the option.
        """
        message = self.assertExitsNaming(
            "--connect-timeout", "--connect-timeout", "soon"
        )
        self.assertIn("soon", message)
        self.assertExitsNaming("--upstream", "--upstream", "registry.example:5000")
        self.assertExitsNaming("--public-url", "--public-url", "ftp://proxy")
        self.assertExitsNaming("--listen", "--listen", "80")

    def test_badEnvironment(self) -> None:
        """
        A bad value in the environment exits the same way, naming the
        option and the variable.
        """
        self.environ["REGPROXY_RESPONSE_TIMEOUT"] = "-3"
        message = self.assertExitsNaming("--response-timeout")
        self.assertIn("REGPROXY_RESPONSE_TIMEOUT", message)

    def test_badFile(self) -> None:
        """
        A missing configuration file exits with one line naming it.
        """
        path = self.mktemp()
        message = self.assertExitsNaming("--config", "--config", path)
        self.assertIn(path, message)

    def test_unknownOption(self) -> None:
        """
        An unknown option exits with one line that names it and points to
        C{--help}, not twistd's whole usage text.
        """
        message = self.assertExitsNaming("--upstreams", "--upstreams", "http://a")
        self.assertIn("see 'twistd regproxy --help'", message)

    def test_version(self) -> None:
        """
        C{--version} prints regproxy's version and exits.
        """
        from io import StringIO

        from regproxy import __version__

        out = StringIO()
        self.patch(sys, "stdout", out)
        exit = self.assertRaises(SystemExit, self.parse, "--version")
        self.assertEqual(exit.code, 0)
        self.assertIn(f"regproxy {__version__}", out.getvalue())

    def test_help(self) -> None:
        """
        The help text lists the options the issue names as a contract, and
        the defaults that matter.
        """
        text = str(Options())
        for option in [
            "--listen=",
            "--upstream=",
            "--public-url=",
            "--state-dir=",
            "--config=",
            "--connect-timeout=",
            "--response-timeout=",
        ]:
            self.assertIn(option, text)
        self.assertIn("regproxy-tcp:80", text)
        self.assertIn("https://registry2.balena-cloud.com", text)


class MakeServiceTests(TapTestCase):
    """
    L{makeService} makes one listener per C{--listen}, without starting any.
    """

    def startUp(self, *argv: str) -> IService:
        return makeService(self.parse(*argv))

    def listeners(self, *argv: str) -> list[StreamServerEndpointService]:
        top = makeService(self.parse(*argv))
        self.assertTrue(IService.providedBy(top))
        self.assertFalse(top.running)
        children = [
            c
            for c in cast(MultiService, top)
            if not isinstance(c, (HangupReloads, CacheService))
        ]
        for child in children:
            self.assertIsInstance(child, StreamServerEndpointService)
            self.assertFalse(child.running)
        return children

    def test_cacheOnByDefault(self) -> None:
        """
        The LAN cache is on by default, as a service that opens it only when
        regproxy starts: making the service touches no disk.
        """
        stateDir = self.mktemp()
        top = makeService(self.parse("--state-dir", stateDir))
        (cache,) = [c for c in cast(MultiService, top) if isinstance(c, CacheService)]
        self.assertFalse(cache.running)
        # Stopped after the drain, so downloads in flight finish and are kept.
        self.assertEqual(cast(RegproxyService, top).drainLast, (cache,))
        self.assertFalse(os.path.exists(os.path.join(stateDir, "cache")))

    def test_cacheOff(self) -> None:
        """
        C{--cache-size 0} turns it off.
        """
        top = makeService(self.parse("--cache-size", "0"))
        self.assertEqual(
            [c for c in cast(MultiService, top) if isinstance(c, CacheService)], []
        )

    def test_twoListeners(self) -> None:
        """
        If C{--listen} is given twice, there are two listeners, on the
        addresses given.
        """
        first, second = self.listeners(
            "--listen",
            "tcp:0:interface=127.0.0.1",
            "--listen",
            r"tcp6:0:interface=\:\:1",
        )
        self.assertIsInstance(first.endpoint, TCP4ServerEndpoint)
        self.assertEqual(first.endpoint._interface, "127.0.0.1")
        self.assertIsInstance(second.endpoint, TCP6ServerEndpoint)
        self.assertEqual(second.endpoint._interface, "::1")
        self.assertIs(first.factory, second.factory)

    def test_defaultListener(self) -> None:
        """
        By default there are two listeners: plain HTTP on TCP port 80 and
        TLS on port 5000.
        """
        from regproxy.tls.dualstack import DualStackServerEndpoint
        from regproxy.tls.endpoint import TLSServerEndpoint

        plain, tls = self.listeners()
        self.assertIsInstance(plain.endpoint, DualStackServerEndpoint)
        self.assertEqual(plain.endpoint._port, 80)
        self.assertIsInstance(tls.endpoint, TLSServerEndpoint)
        self.assertIsInstance(tls.endpoint.inner, DualStackServerEndpoint)
        self.assertIs(plain.factory, tls.factory)

    def reloadNames(self, top: IService) -> list[str]:
        (hangup,) = [c for c in cast(MultiService, top) if isinstance(c, HangupReloads)]
        return hangup._reloads.names()

    def test_reloadsRegistered(self) -> None:
        """
        SIGHUP re-reads the htpasswd file, the access rules, the static
        name map and the TLS certificate, and reopens the log file.
        """
        users = self.mktemp()
        with open(users, "w") as f:
            f.write("")
        rules = self.mktemp()
        with open(rules, "w") as f:
            f.write("")
        names = self.mktemp()
        with open(names, "w") as f:
            f.write("[names]\n")
        top = self.startUp(
            "--listen",
            "tcp:0:interface=127.0.0.1",
            "--listen",
            "regproxy-tls:0:interface=127.0.0.1",
            "--upstream",
            "http://127.0.0.1:9",
            "--htpasswd",
            users,
            "--access",
            rules,
            "--resolver",
            "static:" + names,
        )
        self.assertEqual(
            self.reloadNames(top),
            [
                "log file",
                f"htpasswd {users}",
                f"access rules {rules}",
                f"static name map {names}",
                "TLS certificate of port 0",
            ],
        )

    def test_unknownEnvironment(self) -> None:
        """
        A C{REGPROXY_*} variable that names no setting is reported at start,
        with the setting it probably meant.
        """
        events: list[dict] = []
        observer = cast(ILogObserver, events.append)
        globalLogPublisher.addObserver(observer)
        self.addCleanup(globalLogPublisher.removeObserver, observer)
        self.environ["REGPROXY_UPSTREM"] = "http://typo.example"
        self.startUp("--listen", "tcp:0:interface=127.0.0.1")
        lines = [formatEvent(e) for e in events if "REGPROXY_" in formatEvent(e)]
        self.assertEqual(
            lines,
            [
                "Ignoring REGPROXY_UPSTREM: it matches no setting "
                "(did you mean REGPROXY_UPSTREAM?)"
            ],
        )

    def test_badEndpoint(self) -> None:
        """
        A listener description Twisted cannot read stops start-up with one
        line naming C{--listen}, when the options are read or when the
        service is made.
        """
        for description in ["nosuchkind:80", "tcp:notaport", "tcp:80:bogus=1"]:
            exit = self.assertRaises(SystemExit, self.startUp, "--listen", description)
            self.assertIn("--listen", str(exit.code))
            self.assertNotIn("\n", str(exit.code))

    def test_unusableCA(self) -> None:
        """
        An upstream CA file that cannot be read stops start-up with one line
        naming the option.
        """
        path = self.mktemp()
        options = self.parse("--upstream-ca", path)
        exit = self.assertRaises(SystemExit, makeService, options)
        self.assertIn("--upstream-ca", str(exit.code))
        self.assertNotIn("\n", str(exit.code))


class OperationsTests(TapTestCase):
    """
    C{--metrics}, C{--log-format} and the start-up lines.
    """

    def listenersOf(self, top: IService) -> list[StreamServerEndpointService]:
        return [
            child
            for child in cast(MultiService, top)
            if isinstance(child, StreamServerEndpointService)
        ]

    def test_metricsListener(self) -> None:
        """
        C{--metrics} adds a listener of its own, serving the site's
        metrics, not the registry.
        """
        from regproxy.metrics import MetricsSite

        top = makeService(
            self.parse(
                "--listen",
                "tcp:0:interface=127.0.0.1",
                "--metrics",
                "tcp:9100:interface=127.0.0.1",
            )
        )
        registry, metrics = self.listenersOf(top)
        self.assertIsInstance(metrics.factory, MetricsSite)
        self.assertEqual(metrics.endpoint._port, 9100)
        self.assertEqual(metrics.endpoint._interface, "127.0.0.1")
        scraped = metrics.factory.resource._metrics
        self.assertIs(scraped, registry.factory.metrics)

    def test_metricsOffByDefault(self) -> None:
        top = makeService(self.parse("--listen", "tcp:0:interface=127.0.0.1"))
        self.assertEqual(len(self.listenersOf(top)), 1)

    def test_badMetricsEndpoint(self) -> None:
        exit = self.assertRaises(
            SystemExit, makeService, self.parse("--metrics", "tcp:notaport")
        )
        self.assertIn("--metrics", str(exit.code))

    def test_jsonLogFormat(self) -> None:
        """
        With C{--log-format json} the application twistd runs carries a
        JSON log observer, which twistd starts its log with.
        """
        from twisted.application.service import Application
        from twisted.logger import ILogObserver

        from regproxy.server.logformat import JSONLineObserver

        application = Application("regproxy")
        top = makeService(self.parse("--log-format", "json", "--listen", "tcp:0"))
        top.setServiceParent(application)
        self.assertIsInstance(application.getComponent(ILogObserver), JSONLineObserver)

    def test_textLogByDefault(self) -> None:
        from twisted.application.service import Application
        from twisted.logger import ILogObserver

        application = Application("regproxy")
        makeService(self.parse("--listen", "tcp:0")).setServiceParent(application)
        self.assertIsNone(application.getComponent(ILogObserver, None))

    def test_badLogFormat(self) -> None:
        self.assertExitsNaming("--log-format", "--log-format", "xml")

    def test_trustedProxy(self) -> None:
        options = self.parse(
            "--trusted-proxy", "10.0.0.1", "--trusted-proxy", "::1/128"
        )
        self.assertEqual(options.config.trusted_proxy, ("10.0.0.1/32", "::1/128"))
        self.assertExitsNaming("--trusted-proxy", "--trusted-proxy", "nginx")

    def test_startupLines(self) -> None:
        """
        Start-up says, a line each, what listens, the upstream, resolver,
        auth mode, users, token issuer and cache, and never the API key.
        """
        from regproxy.app import startupLines

        options = self.parse(
            "--listen",
            "tcp:8080",
            "--metrics",
            "tcp:9100",
            "--upstream",
            "https://registry.example",
            "--balena-api",
            "https://api.example",
            "--api-token",
            "sekrit-key",
        )
        lines = startupLines(options.config, {})
        self.assertEqual(lines[0], "listening on tcp:8080")
        self.assertEqual(lines[1], "metrics on tcp:9100")
        self.assertEqual(lines[2], "upstream: https://registry.example")
        self.assertEqual(
            lines[3], "resolver: balena at https://api.example, own API key given"
        )
        for start in ("auth: broker", "users: ", "token issuer: regproxy", "cache: "):
            self.assertEqual(len([line for line in lines if line.startswith(start)]), 1)
        self.assertNotIn("sekrit", "\n".join(lines))


class PluginTests(SynchronousTestCase):
    """
    twistd finds the C{regproxy} command.
    """

    def test_plugin(self) -> None:
        """
        The plugin named C{regproxy} uses L{regproxy.tap}.
        """
        makers = {maker.tapname: maker for maker in getPlugins(IServiceMaker)}
        self.assertIn("regproxy", makers)
        maker = makers["regproxy"]
        self.assertIs(maker.options, Options)
        self.assertIs(maker.makeService, makeService)
