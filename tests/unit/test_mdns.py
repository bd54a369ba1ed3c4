"""
Tests for L{regproxy.mdns}: what is advertised, in memory, with a fake
zeroconf.  The real advertisement over loopback multicast is in
L{tests.integration.test_mdns}.
"""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet.defer import maybeDeferred
from twisted.internet.testing import MemoryReactor
from twisted.logger import capturedLogs
from twisted.trial.unittest import SynchronousTestCase

from regproxy.config import loadConfig
from regproxy.mdns import (
    Advertisement,
    MDNSService,
    advertisements,
    fromConfig,
    hostLabel,
    portsFromListen,
)


def synchronously(f):
    return maybeDeferred(f)


class FakeZeroconf:
    def __init__(self, interfaces):
        self.interfaces = interfaces
        self.registered = []
        self.closed = False

    def register_service(self, info):
        self.registered.append(info)

    def unregister_all_services(self):
        self.registered = []

    def close(self):
        self.closed = True


class PureTests(SynchronousTestCase):
    def test_hostLabel(self) -> None:
        for given_ in ("box", "box.local", "box.local.", " Box "):
            self.assertEqual(hostLabel(given_).lower(), "box")

    def test_badLabel(self) -> None:
        e = self.assertRaises(ValueError, hostLabel, "my box")
        self.assertIn("--mdns", str(e))

    @given(st.text(max_size=80))
    @settings(max_examples=200, deadline=None)
    def test_labelNeverCrashes(self, text: str) -> None:
        try:
            label = hostLabel(text)
        except ValueError:
            return
        self.assertEqual(hostLabel(label + ".local"), label)

    def test_ports(self) -> None:
        """
        tcp listeners are HTTP, regproxy-tls and ssl are HTTPS; port 0 and
        unknown kinds are left out.
        """
        self.assertEqual(
            portsFromListen(
                [
                    "tcp:80",
                    "tcp:port=8080:interface=127.0.0.1",
                    "regproxy-tls:5000:interface=\\:\\:1",
                    "ssl:443:privateKey=k",
                    "tcp:0",
                    "unix:/sock",
                    "regproxy-tcp:81",
                ]
            ),
            ([80, 8080, 81], [5000, 443]),
        )

    @given(st.lists(st.text(max_size=40), max_size=5))
    @settings(max_examples=200, deadline=None)
    def test_portsNeverCrash(self, descriptions: list[str]) -> None:
        http, https = portsFromListen(descriptions)
        self.assertTrue(all(0 < p < 65536 for p in http + https))

    def test_advertisements(self) -> None:
        self.assertEqual(
            advertisements("box", [80], [5000, 5001]),
            [
                Advertisement("_http._tcp.local.", "box", 80),
                Advertisement("_https._tcp.local.", "box", 5000),
                Advertisement("_https._tcp.local.", "box (5001)", 5001),
            ],
        )

    def test_offByDefault(self) -> None:
        self.assertIsNone(fromConfig(MemoryReactor(), loadConfig({}, {})))

    def test_fromConfig(self) -> None:
        config = loadConfig(
            {"mdns": "box", "listen": ["tcp:80", "regproxy-tls:5000"]}, {}
        )
        service = fromConfig(MemoryReactor(), config)
        assert service is not None
        self.assertEqual(service.hostName, "box.local.")


class FakeZeroconfTests(SynchronousTestCase):
    def test_startStop(self) -> None:
        """
        Starting registers one service per port, all naming C{box.local.}
        with the given addresses; stopping unregisters and closes zeroconf.
        """
        made = []

        def factory(interfaces):
            made.append(FakeZeroconf(interfaces))
            return made[-1]

        service = MDNSService(
            MemoryReactor(),
            "box",
            [80],
            [5000],
            addresses=["192.0.2.7", "2001:db8::7"],
            interfaces=["192.0.2.7"],
            zeroconfFactory=factory,
            runInThread=synchronously,
        )
        with capturedLogs() as events:
            service.startService()
        [zeroconf] = made
        self.assertEqual(zeroconf.interfaces, ["192.0.2.7"])
        self.assertEqual(
            [
                (i.name, i.port, i.server, i.parsed_addresses())
                for i in zeroconf.registered
            ],
            [
                (
                    "box._http._tcp.local.",
                    80,
                    "box.local.",
                    ["192.0.2.7", "2001:db8::7"],
                ),
                (
                    "box._https._tcp.local.",
                    5000,
                    "box.local.",
                    ["192.0.2.7", "2001:db8::7"],
                ),
            ],
        )
        self.assertEqual(events[0]["host"], "box.local")
        self.successResultOf(service.stopService())
        self.assertEqual((zeroconf.registered, zeroconf.closed), ([], True))

    def test_failureLogged(self) -> None:
        """
        If zeroconf cannot start (no multicast, name taken), the daemon keeps
        running and says why; stopping is then a no-op.
        """

        def factory(interfaces):
            raise OSError("no multicast here")

        service = MDNSService(
            MemoryReactor(),
            "box",
            [80],
            [],
            addresses=[],
            zeroconfFactory=factory,
            runInThread=synchronously,
        )
        with capturedLogs() as events:
            service.startService()
        self.assertIn("cannot advertise", events[0]["log_format"])
        self.assertEqual(len(self.flushLoggedErrors(OSError)), 1)
        self.successResultOf(service.stopService())
