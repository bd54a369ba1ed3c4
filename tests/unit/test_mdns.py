"""
Tests for L{regproxy.mdns}: what is advertised (in memory, with a fake
zeroconf), and a real advertisement found by the zeroconf library's own
browser over loopback multicast.
"""

from __future__ import annotations

import os
import secrets
import select
import socket
import struct

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet.defer import Deferred, inlineCallbacks, maybeDeferred
from twisted.internet.testing import MemoryReactor
from twisted.logger import capturedLogs
from twisted.trial.unittest import SkipTest, SynchronousTestCase, TestCase

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


def loopbackMulticastWorks() -> bool:
    """
    Whether a datagram sent to the mDNS group over 127.0.0.1 comes back
    (what zeroconf restricted to loopback relies on).
    """
    group, port = "224.0.0.251", 5353
    receiver = socket.socket(socket.AF_INET, socket.SOCK_DGRAM, socket.IPPROTO_UDP)
    sender = socket.socket(socket.AF_INET, socket.SOCK_DGRAM, socket.IPPROTO_UDP)
    try:
        receiver.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if hasattr(socket, "SO_REUSEPORT"):
            receiver.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        receiver.bind(("", port))
        receiver.setsockopt(
            socket.IPPROTO_IP,
            socket.IP_ADD_MEMBERSHIP,
            struct.pack("4s4s", socket.inet_aton(group), socket.inet_aton("127.0.0.1")),
        )
        sender.setsockopt(
            socket.IPPROTO_IP, socket.IP_MULTICAST_IF, socket.inet_aton("127.0.0.1")
        )
        sender.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_LOOP, 1)
        # Not a valid DNS message on purpose: a header with zero counts.
        probe = b"\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00"
        sender.sendto(probe, (group, port))
        while True:
            ready, _, _ = select.select([receiver], [], [], 2.0)
            if not ready:
                return False
            data, _ = receiver.recvfrom(9000)
            if data == probe:
                return True
    except OSError:
        return False
    finally:
        receiver.close()
        sender.close()


class LoopbackTests(TestCase):
    timeout = 60

    @inlineCallbacks
    def test_browserFindsUs(self):
        """
        The zeroconf library's own browser, listening on loopback, finds
        C{_https._tcp} service C{NAME} on our port, and C{NAME.local}
        resolves to our address.
        """
        if not loopbackMulticastWorks():
            raise SkipTest("multicast over the loopback interface does not work here")
        from twisted.internet import reactor
        from twisted.internet.threads import deferToThread
        from zeroconf import AddressResolverIPv4, IPVersion, ServiceBrowser, Zeroconf

        # Unique per run: two test runs at once on one machine (CI jobs,
        # several developers) must not claim the same name.
        name = f"regproxy-test-{os.getpid()}-{secrets.token_hex(3)}"

        def loopbackZeroconf(interfaces):
            return Zeroconf(interfaces=interfaces, ip_version=IPVersion.V4Only)

        service = MDNSService(
            reactor,
            name,
            [8080],
            [5443],
            addresses=["127.0.0.1"],
            interfaces=["127.0.0.1"],
            zeroconfFactory=loopbackZeroconf,
        )
        service.startService()
        self.addCleanup(service.stopService)
        yield service._zeroconf

        browserZeroconf = loopbackZeroconf(["127.0.0.1"])
        self.addCleanup(deferToThread, browserZeroconf.close)
        found: Deferred = Deferred()

        class Listener:
            def add_service(self, zc, serviceType, serviceName):
                if serviceName == f"{name}._https._tcp.local.":
                    reactor.callFromThread(
                        lambda: None if found.called else found.callback(serviceName)
                    )

            def update_service(self, *args):
                pass

            def remove_service(self, *args):
                pass

        browser = ServiceBrowser(browserZeroconf, "_https._tcp.local.", Listener())
        self.addCleanup(deferToThread, browser.cancel)
        serviceName = yield found
        info = yield deferToThread(
            browserZeroconf.get_service_info, "_https._tcp.local.", serviceName, 3000
        )
        self.assertEqual((info.port, info.server), (5443, f"{name}.local."))
        resolver = AddressResolverIPv4(f"{name}.local.")
        answered = yield deferToThread(resolver.request, browserZeroconf, 3000)
        self.assertTrue(answered)
        self.assertEqual(resolver.parsed_addresses(), ["127.0.0.1"])
