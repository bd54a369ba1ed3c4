"""
Tests for L{regproxy.tls.dualstack} that bind nothing: which sockets are
asked for, and the C{regproxy-tcp} description.  The real sockets, answering
on 127.0.0.1 and ::1, are in L{tests.integration.test_tls_listener}.
"""

from __future__ import annotations

import errno
import os
import socket

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet.error import CannotListenError
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.testing import MemoryReactor
from twisted.trial.unittest import SynchronousTestCase

from regproxy.tls.dualstack import DualStackServerEndpoint, PlainEndpointParser


class NoIPv6Reactor(MemoryReactor):
    """
    A machine whose kernel has no IPv6.
    """

    def listenTCP(self, port, factory, backlog=50, interface=""):
        if ":" in interface:
            raise CannotListenError(
                interface, port, socket.error(errno.EAFNOSUPPORT, "no IPv6")
            )
        return super().listenTCP(port, factory, backlog, interface)


class DualStackTests(SynchronousTestCase):
    factory = Factory.forProtocol(Protocol)

    def test_bothFamilies(self) -> None:
        """
        Where the IPv6 socket does not take IPv4 (here: a test reactor, as
        on BSD or with bindv6only), an IPv4 socket on the same port is added.
        """
        reactor = MemoryReactor()
        port = self.successResultOf(
            DualStackServerEndpoint(reactor, 80, 7).listen(self.factory)
        )
        self.assertEqual(
            [(p, b, i) for p, _, b, i in reactor.tcpServers],
            [(80, 7, "::"), (80, 7, "")],
        )
        self.assertEqual(len(port.ports), 2)
        self.successResultOf(port.stopListening())

    def test_noIPv6(self) -> None:
        """
        Without IPv6 the port still opens, on IPv4.
        """
        reactor = NoIPv6Reactor()
        self.successResultOf(DualStackServerEndpoint(reactor, 80).listen(self.factory))
        self.assertEqual([i for *_, i in reactor.tcpServers], [""])

    def test_inUse(self) -> None:
        """
        Any other failure (the port is taken) is the listener's failure.
        """

        class Taken(MemoryReactor):
            def listenTCP(self, port, factory, backlog=50, interface=""):
                raise CannotListenError(
                    interface, port, socket.error(errno.EADDRINUSE, "in use")
                )

        self.failureResultOf(
            DualStackServerEndpoint(Taken(), 80).listen(self.factory),
            CannotListenError,
        )


class PlainDescriptionTests(SynchronousTestCase):
    def test_pluginDeclared(self) -> None:
        """
        The plugin file in this tree declares C{regproxy-tcp} (read from the
        tree, not from whatever copy is installed), and C{serverEndpoint},
        what C{twistd regproxy} uses, knows it without the plugin system.
        """
        import importlib.util

        from twisted.internet.interfaces import IStreamServerEndpointStringParser

        from regproxy.tls.endpoint import TLSDefaults, serverEndpoint

        path = os.path.join(
            os.path.dirname(__file__),
            "..",
            "..",
            "twisted",
            "plugins",
            "regproxy_endpoints.py",
        )
        spec = importlib.util.spec_from_file_location("_endpoints", path)
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        self.assertTrue(
            IStreamServerEndpointStringParser.providedBy(module.regproxyTCP)
        )
        self.assertEqual(module.regproxyTCP.prefix, "regproxy-tcp")
        endpoint = serverEndpoint(
            MemoryReactor(), "regproxy-tcp:8080:backlog=9", TLSDefaults(self.mktemp())
        )
        assert isinstance(endpoint, DualStackServerEndpoint)
        self.assertEqual((endpoint._port, endpoint._backlog), (8080, 9))

    def test_errors(self) -> None:
        parser = PlainEndpointParser()
        for args, kwargs, expected in [
            ((), {}, "one port is needed"),
            (("http",), {}, "port must be a number"),
            (("70000",), {}, "port must be 0 to 65535"),
            (("80",), {"interface": "::"}, "unknown argument 'interface'"),
            (("80",), {"backlog": "0"}, "backlog must be 1 to 65535"),
        ]:
            error = self.assertRaises(
                ValueError, parser.parseStreamServer, MemoryReactor(), *args, **kwargs
            )
            self.assertIn(expected, str(error))

    @given(st.text(max_size=30))
    @settings(max_examples=200, deadline=None)
    def test_neverCrashes(self, text: str) -> None:
        """
        Any description gives an endpoint or a one-line L{ValueError}.
        """
        from regproxy.tls.endpoint import TLSDefaults, serverEndpoint

        try:
            serverEndpoint(MemoryReactor(), "regproxy-tcp:" + text, TLSDefaults("/x"))
        except ValueError as e:
            self.assertNotIn("\n", str(e))
