"""
Tests for L{regproxy.commands.cert}, the C{regproxy cert} command, run as a
user would through L{regproxy.cli}.
"""

from __future__ import annotations

import io
import ipaddress
import os

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from regproxy.commands.cert import main, splitAddress
from regproxy.tls.hostnames import SubjectNames
from regproxy.tls.localca import ensureLocalCA

NAMES = SubjectNames(["box.local", "reg.example"], [ipaddress.ip_address("192.0.2.7")])


class CertCommandTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.stateDir = os.path.abspath(self.mktemp())
        local = ensureLocalCA(self.stateDir, NAMES)
        self.paths = local.paths
        self.fingerprint = local.ca.fingerprint

    def run_(
        self, argv: list[str], environ: dict[str, str] | None = None
    ) -> tuple[int, str, str]:
        out, err = io.StringIO(), io.StringIO()
        code = main(argv, environ if environ is not None else {}, out, err)
        return code, out.getvalue(), err.getvalue()

    def test_show(self) -> None:
        """
        C{show} prints the CA clients install (path, fingerprint, expiry),
        then the server certificate it signed (path, names, expiry).
        """
        code, out, err = self.run_(["--state-dir", self.stateDir, "show"])
        self.assertEqual(code, 0, err)
        self.assertIn(f"CA certificate: {self.paths.ca}\n", out)
        self.assertIn(f"SHA-256 fingerprint: {self.fingerprint}\n", out)
        self.assertRegex(
            out, r"\nexpires: \d{4}-\d\d-\d\d \d\d:\d\d UTC \(36(49|50) days left\)"
        )
        self.assertIn(f"server certificate: {self.paths.server}\n", out)
        self.assertIn("names: box.local, reg.example, 192.0.2.7\n", out)
        self.assertRegex(
            out,
            r"server certificate expires: \d{4}-\d\d-\d\d \d\d:\d\d UTC "
            r"\((29|30) days left; renewed by regproxy while it runs\)",
        )

    def test_showSaysNamesChanged(self) -> None:
        """
        When this machine's names no longer match, C{show} says a new
        server certificate comes from the same CA, without a restart.
        """
        code, out, err = self.run_(["--state-dir", self.stateDir, "show"])
        self.assertIn(
            "the running regproxy issues a new server certificate for them at a "
            "client's connection (looking at most once a minute) or on SIGHUP, "
            "signed by the same CA",
            out,
        )

    def test_sameSourcesAsDaemon(self) -> None:
        """
        The state directory comes from the environment or the config file
        when no flag gives it, as for the daemon.
        """
        code, out, err = self.run_(["show"], {"REGPROXY_STATE_DIR": self.stateDir})
        self.assertEqual(code, 0, err)
        self.assertIn(self.fingerprint, out)
        config = os.path.abspath(self.mktemp())
        with open(config, "w") as f:
            f.write(f'state-dir = "{self.stateDir}"\n')
        code, out, err = self.run_(["--config", config, "show"])
        self.assertEqual(code, 0, err)
        self.assertIn(self.fingerprint, out)

    def test_noCertificateYet(self) -> None:
        code, out, err = self.run_(["--state-dir", self.mktemp(), "show"])
        self.assertEqual(code, 1)
        self.assertIn("no certificate in", err)

    def test_showGivenFile(self) -> None:
        code, out, err = self.run_(["show", "--cert", self.paths.ca])
        self.assertEqual(code, 0, err)
        self.assertIn(f"certificate: {self.paths.ca}\n", out)
        self.assertIn(self.fingerprint, out)
        self.assertNotIn("once a minute", out)

    def test_clientSetup(self) -> None:
        """
        C{client-setup HOST:PORT} prints the docker, podman and containerd
        steps for exactly that address, with the fingerprint to check.
        """
        code, out, err = self.run_(
            ["client-setup", "box.local:5000", "--state-dir", self.stateDir]
        )
        self.assertEqual((code, err), (0, ""))
        self.assertIn("/etc/docker/certs.d/box.local:5000/ca.crt", out)
        self.assertIn("/etc/containers/certs.d/box.local:5000/ca.crt", out)
        self.assertIn("/etc/containerd/certs.d/box.local:5000/hosts.toml", out)
        self.assertIn(f"the fingerprint it prints must be {self.fingerprint}", out)

    def test_clientSetupUnknownName(self) -> None:
        """
        A name the certificate does not cover gets a warning saying how to
        add it.
        """
        code, out, err = self.run_(
            ["--state-dir", self.stateDir, "client-setup", "10.9.9.9:5000"]
        )
        self.assertEqual(code, 0)
        self.assertIn("10.9.9.9 is not among the certificate's names", err)
        self.assertIn("--tls-name 10.9.9.9", err)

    def test_clientSetupBadAddress(self) -> None:
        code, out, err = self.run_(
            ["--state-dir", self.stateDir, "client-setup", "box:http"]
        )
        self.assertEqual(code, 2)
        self.assertIn("port must be a number", err)

    def test_badConfig(self) -> None:
        code, out, err = self.run_(["show"], {"REGPROXY_CONNECT_TIMEOUT": "soon"})
        self.assertEqual(code, 2)
        self.assertIn("--connect-timeout", err)

    def test_registered(self) -> None:
        """
        C{regproxy cert} is a command of the C{regproxy} dispatcher.
        """
        from regproxy.cli import COMMANDS

        self.assertEqual(COMMANDS["cert"][0], "regproxy.commands.cert")


class SplitAddressTests(SynchronousTestCase):
    def test_forms(self) -> None:
        self.assertEqual(splitAddress("box.local:5000"), ("box.local", 5000))
        self.assertEqual(splitAddress("[fd00::2]:5001"), ("fd00::2", 5001))
        self.assertEqual(splitAddress("fd00::2"), ("fd00::2", 5000))
        self.assertEqual(splitAddress("box"), ("box", 5000))

    @given(st.text(max_size=60))
    @settings(max_examples=200, deadline=None)
    def test_neverCrashes(self, text: str) -> None:
        try:
            host, port = splitAddress(text)
        except ValueError:
            return
        self.assertTrue(0 < port < 65536)

    @given(
        st.one_of(
            st.ip_addresses().map(str),
            st.from_regex(r"\A[a-z][a-z0-9]{0,10}(\.[a-z0-9]{1,10}){0,2}\Z"),
        ),
        st.integers(1, 65535),
    )
    @settings(max_examples=200, deadline=None)
    def test_roundTrip(self, host: str, port: int) -> None:
        written = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        self.assertEqual(splitAddress(written), (host, port))
