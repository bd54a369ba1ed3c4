"""
Tests for L{regproxy.mdns} on a real network: an advertisement found by the
zeroconf library's own browser over loopback multicast.
"""

from __future__ import annotations

import os
import secrets
import select
import socket
import struct

from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.trial.unittest import SkipTest, TestCase

from regproxy.mdns import MDNSService


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
