"""
Tests for L{regproxy.commands.health}: the container health check asks the
daemon's own first listener.
"""

from __future__ import annotations

import io
import urllib.error
from contextlib import contextmanager, redirect_stderr

from hypothesis import given
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from regproxy.commands.health import healthURL, main


class HealthURLTests(SynchronousTestCase):
    def test_plainFirst(self) -> None:
        """
        A plain listener is asked before a TLS one, whatever the order.
        """
        self.assertEqual(
            healthURL(("regproxy-tls:5000", "tcp:8080")),
            "http://127.0.0.1:8080/_health",
        )

    def test_tlsOnly(self) -> None:
        """
        With only TLS, the check speaks HTTPS to it.
        """
        self.assertEqual(
            healthURL(("regproxy-tls:5001:cert=/c.pem:key=/k.pem",)),
            "https://127.0.0.1:5001/_health",
        )

    def test_interface(self) -> None:
        """
        A listener bound to one address is asked there; IPv6 addresses are
        bracketed, and the IPv6 wildcard is asked on ::1.
        """
        self.assertEqual(
            healthURL(("tcp:81:interface=10.1.2.3",)), "http://10.1.2.3:81/_health"
        )
        self.assertEqual(
            healthURL((r"tcp6:82:interface=\:\:1",)), "http://[::1]:82/_health"
        )
        self.assertEqual(
            healthURL((r"tcp6:83:interface=\:\:",)), "http://[::1]:83/_health"
        )

    def test_noTCP(self) -> None:
        """
        With no TCP listener there is nothing to ask.
        """
        self.assertIsNone(healthURL(("unix:/run/regproxy.sock",)))

    @given(st.integers(1, 65535), st.sampled_from(["tcp", "tcp6", "regproxy-tls"]))
    def test_port(self, port: int, kind: str) -> None:
        """
        The port asked is the listener's, for any port.
        """
        url = healthURL((f"{kind}:{port}",))
        assert url is not None
        self.assertTrue(url.endswith(f":{port}/_health"), url)


class _Response:
    def __init__(self, status: int) -> None:
        self.status = status


class MainTests(SynchronousTestCase):
    def check(self, environ: dict[str, str], answer: object) -> tuple[int, list[str]]:
        asked = []

        @contextmanager
        def opener(url, timeout, context):  # type: ignore[no-untyped-def]
            asked.append(url)
            if isinstance(answer, Exception):
                raise answer
            yield answer

        with redirect_stderr(io.StringIO()):
            code = main([], environ, opener)
        return code, asked

    def test_healthy(self) -> None:
        """
        200 from the configured listener: exit 0.
        """
        code, asked = self.check({"REGPROXY_LISTEN": "tcp:8080"}, _Response(200))
        self.assertEqual((code, asked), (0, ["http://127.0.0.1:8080/_health"]))

    def test_unhealthy(self) -> None:
        """
        Another status, or no answer at all: exit 1.
        """
        self.assertEqual(self.check({}, _Response(503))[0], 1)
        refused = urllib.error.URLError(ConnectionRefusedError())
        self.assertEqual(self.check({}, refused)[0], 1)

    def test_badConfiguration(self) -> None:
        """
        A setting the daemon would refuse: exit 2 without asking anything.
        """
        code, asked = self.check({"REGPROXY_LISTEN": "nonsense:1"}, _Response(200))
        self.assertEqual((code, asked), (2, []))
