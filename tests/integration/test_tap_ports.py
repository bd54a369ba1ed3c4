"""
Tests for L{regproxy.tap} with real sockets: a listener that cannot be
bound stops start-up.
"""

import socket

from regproxy.tap import makeService
from tests.unit.test_tap import TapTestCase


class PortTests(TapTestCase):
    def test_portInUse(self) -> None:
        """
        A port that cannot be bound stops start-up with one line naming
        C{--listen} and the address.
        """
        held = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.addCleanup(held.close)
        held.bind(("127.0.0.1", 0))
        held.listen(1)
        port = held.getsockname()[1]
        top = makeService(self.parse("--listen", f"tcp:{port}:interface=127.0.0.1"))
        exit = self.assertRaises(SystemExit, top.privilegedStartService)
        message = str(exit.code)
        self.assertIn("--listen", message)
        self.assertIn(str(port), message)
        self.assertNotIn("\n", message)
