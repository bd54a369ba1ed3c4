"""
Tests for L{regproxy.tls.hostnames} (the names a certificate is for),
L{regproxy.tls.certificates} (certificates loaded and checked),
L{regproxy.tls.describe} (what clients are told) and
L{regproxy.tls.caresource} (the CA served at C{/_ca.crt}).
"""

from __future__ import annotations

import datetime
import hashlib
import ipaddress
import os
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from hypothesis import given, settings
from hypothesis import strategies as st
from treq.testing import StubTreq
from twisted.trial.unittest import SynchronousTestCase

from regproxy.tls.caresource import CACertificateResource
from regproxy.tls.certificates import loadCertifiedKey
from regproxy.tls.describe import clientSetup
from regproxy.tls.hostnames import SubjectNames, hostsFor, parseName, selfSignedNames
from regproxy.tls.localca import ensureLocalCA
from regproxy.tls.pem import CertificateError
from regproxy.tls.selfsigned import generateSelfSigned

ip = ipaddress.ip_address
NOW = datetime.datetime(2026, 6, 1, tzinfo=datetime.timezone.utc)
NAMES = SubjectNames(["registry.example", "box.local"], [ip("127.0.0.1"), ip("::1")])

# Labels start with a letter: "0.0.0.0" is an address, not a host name.
labels = st.from_regex(r"\A[a-z][a-z0-9-]{0,18}[a-z0-9]\Z|\A[a-z]\Z")
hostNames = st.lists(labels, min_size=1, max_size=4).map(".".join)
addresses = st.ip_addresses()


def write(path: str, data: bytes) -> str:
    with open(path, "wb") as f:
        f.write(data)
    return path


class NamesTests(SynchronousTestCase):
    def test_selfSignedNames(self) -> None:
        """
        The generated certificate names the host, C{<host>.local}, the
        interface addresses, C{localhost} and both loopback addresses, and
        every extra name, sorting extras into DNS names and addresses.
        """
        names = selfSignedNames(
            "box.lan", [ip("192.0.2.7"), ip("2001:db8::7")], ["reg.example", "10.0.0.1"]
        )
        self.assertEqual(
            names.describe(),
            [
                "box.lan",
                "box.local",
                "localhost",
                "reg.example",
                "10.0.0.1",
                "127.0.0.1",
                "192.0.2.7",
                "::1",
                "2001:db8::7",
            ],
        )

    def test_badExtraName(self) -> None:
        """
        A C{--tls-name} that is neither a name nor an address is refused with
        a message that quotes it.
        """
        e = self.assertRaises(CertificateError, selfSignedNames, "h", [], ["no spaces"])
        self.assertIn("'no spaces'", str(e))

    @given(st.text(max_size=300))
    @settings(max_examples=200, deadline=None)
    def test_parseNameNeverCrashes(self, text: str) -> None:
        """
        Any text is a DNS name, an address, or a L{CertificateError}.
        """
        try:
            dns, address = parseName(text)
        except CertificateError:
            return
        self.assertTrue((dns is None) != (address is None))

    @given(hostNames, addresses)
    @settings(max_examples=200, deadline=None)
    def test_parseNameRoundTrip(self, name: str, address) -> None:
        """
        A host name comes back lower case; an address comes back as itself.
        """
        self.assertEqual(parseName(name.upper()), (name, None))
        self.assertEqual(parseName(str(address)), (None, address))

    @given(st.lists(hostNames), st.lists(addresses))
    @settings(max_examples=200, deadline=None)
    def test_orderDoesNotMatter(self, dns: list[str], ips: list) -> None:
        """
        Two sets of names compare equal whatever the order they were found in,
        so a restart does not regenerate the certificate for nothing.
        """
        self.assertEqual(
            SubjectNames(dns, ips), SubjectNames(list(reversed(dns)), ips[::-1] + ips)
        )

    def test_hostsFor(self) -> None:
        """
        The names to suggest to clients: .local names first, no loopback.
        """
        self.assertEqual(hostsFor(NAMES), ["box.local", "registry.example"])


class GenerateTests(SynchronousTestCase):
    def test_selfSigned(self) -> None:
        """
        The generated certificate is its own issuer, a CA (so clients can use
        it as C{ca.crt}), an EC P-256 key, valid for about a year, and names
        exactly what it was asked to.
        """
        made = generateSelfSigned(NAMES, NOW)
        cert = made.certificate
        self.assertEqual(cert.issuer, cert.subject)
        basic = cert.extensions.get_extension_for_class(x509.BasicConstraints)
        self.assertTrue(basic.value.ca)
        key = cert.public_key()
        assert isinstance(key, ec.EllipticCurvePublicKey)
        self.assertEqual(key.curve.name, "secp256r1")
        lifetime = cert.not_valid_after_utc - cert.not_valid_before_utc
        self.assertTrue(
            datetime.timedelta(days=360) < lifetime < datetime.timedelta(days=731)
        )
        self.assertEqual(made.names, NAMES)
        cert.verify_directly_issued_by(cert)

    def test_fingerprint(self) -> None:
        """
        The fingerprint is the SHA-256 of the DER certificate in the colon
        form C{openssl x509 -fingerprint -sha256} prints.
        """
        made = generateSelfSigned(NAMES, NOW)
        der = made.certificate.public_bytes(serialization.Encoding.DER)
        self.assertEqual(
            made.fingerprint.replace(":", "").lower(), hashlib.sha256(der).hexdigest()
        )


class LoadTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.dir = self.mktemp()
        os.makedirs(self.dir)
        self.made = generateSelfSigned(NAMES, NOW)
        self.cert = write(os.path.join(self.dir, "c.pem"), self.made.certificatePEM())
        self.key = write(os.path.join(self.dir, "k.pem"), self.made.keyPEM())

    def assertRefused(self, fragment: str, *args, **kwargs) -> None:
        e = self.assertRaises(
            CertificateError, loadCertifiedKey, *args, now=NOW, **kwargs
        )
        self.assertIn(fragment, str(e))
        self.assertNotIn("\n", str(e))

    def test_loads(self) -> None:
        loaded = loadCertifiedKey(self.cert, self.key, now=NOW)
        self.assertEqual(loaded.fingerprint, self.made.fingerprint)

    def test_bundle(self) -> None:
        """
        One file may hold the certificate, its chain and the key.
        """
        other = generateSelfSigned(NAMES, NOW)
        bundle = write(
            os.path.join(self.dir, "b.pem"),
            self.made.certificatePEM() + other.certificatePEM() + self.made.keyPEM(),
        )
        loaded = loadCertifiedKey(bundle, now=NOW)
        self.assertEqual(loaded.chain, (other.certificate,))

    def test_chainFile(self) -> None:
        other = generateSelfSigned(NAMES, NOW)
        chain = write(os.path.join(self.dir, "chain.pem"), other.certificatePEM())
        loaded = loadCertifiedKey(self.cert, self.key, chain, now=NOW)
        self.assertEqual(loaded.chain, (other.certificate,))

    def test_wrongKey(self) -> None:
        other = write(
            os.path.join(self.dir, "o.pem"), generateSelfSigned(NAMES, NOW).keyPEM()
        )
        self.assertRefused("the key does not match the certificate", self.cert, other)

    def test_expired(self) -> None:
        old = generateSelfSigned(NAMES, NOW - datetime.timedelta(days=400))
        write(self.cert, old.certificatePEM())
        write(self.key, old.keyPEM())
        self.assertRefused("the certificate expired on", self.cert, self.key)

    def test_notYetValid(self) -> None:
        e = self.assertRaises(
            CertificateError,
            loadCertifiedKey,
            self.cert,
            self.key,
            now=NOW - datetime.timedelta(days=2),
        )
        self.assertIn("not valid before", str(e))

    def test_missing(self) -> None:
        self.assertRefused(
            "cannot read certificate", os.path.join(self.dir, "nope"), self.key
        )

    def test_notPEM(self) -> None:
        write(self.cert, b"hello")
        self.assertRefused("holds no PEM certificate", self.cert, self.key)

    def test_noKey(self) -> None:
        self.assertRefused("holds no PEM private key", self.cert)

    def test_encryptedKey(self) -> None:
        write(
            self.key,
            self.made.key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.BestAvailableEncryption(b"pw"),
            ),
        )
        self.assertRefused("is encrypted", self.cert, self.key)

    @given(st.binary(max_size=2000))
    @settings(max_examples=100, deadline=None)
    def test_garbageNeverCrashes(self, data: bytes) -> None:
        """
        Any file content is either a certificate or a one-line refusal.
        """
        path = write(os.path.join(self.dir, "fuzz.pem"), data)
        try:
            loadCertifiedKey(path, self.key, now=NOW)
        except CertificateError as e:
            self.assertNotIn("\n", str(e))


class ClientSetupTests(SynchronousTestCase):
    def test_paths(self) -> None:
        """
        The instructions name the docker, podman and containerd trust paths
        for exactly C{host:port}, the fetch command and the fingerprint.
        """
        text = clientSetup("box.local", 5000, "AB:CD")
        for expected in [
            "curl --insecure --fail --globoff --output ca.crt https://box.local:5000/_ca.crt",
            "the fingerprint it prints must be AB:CD",
            "/etc/docker/certs.d/box.local:5000/ca.crt",
            "/etc/containers/certs.d/box.local:5000/ca.crt",
            "/etc/containerd/certs.d/box.local:5000/hosts.toml",
        ]:
            self.assertIn(expected, text)

    def test_ipv6(self) -> None:
        """
        An IPv6 address is bracketed, as clients write it.
        """
        self.assertIn(
            "'/etc/docker/certs.d/[fd00::2]:5000/ca.crt'",
            clientSetup("fd00::2", 5000, "AB"),
        )


class CACertificateResourceTests(SynchronousTestCase):
    def test_served(self) -> None:
        """
        C{GET /_ca.crt} answers the CA certificate (never a key), and the
        same one after the names changed and a new server certificate was
        issued: what clients installed stays what is served.
        """
        stateDir = self.mktemp()
        local = ensureLocalCA(stateDir, NAMES)
        treq: Any = StubTreq(CACertificateResource.inStateDir(stateDir))
        response = self.successResultOf(treq.get("http://x/_ca.crt"))
        self.assertEqual(response.code, 200)
        self.assertEqual(
            response.headers.getRawHeaders("content-type"), ["application/x-pem-file"]
        )
        body = self.successResultOf(response.content())
        self.assertEqual(body, local.ca.certificatePEM())
        self.assertNotIn(b"PRIVATE", body)
        renewed = ensureLocalCA(stateDir, SubjectNames(["other.example"], []))
        self.assertIsNotNone(renewed.newServer)
        body2 = self.successResultOf(
            self.successResultOf(treq.get("http://x/_ca.crt")).content()
        )
        self.assertEqual(body2, body)

    def test_none(self) -> None:
        treq: Any = StubTreq(CACertificateResource.inStateDir(self.mktemp()))
        response = self.successResultOf(treq.get("http://x/_ca.crt"))
        self.assertEqual(response.code, 404)
