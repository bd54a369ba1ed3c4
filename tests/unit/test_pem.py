"""
Tests for L{regproxy.tls.pem}: PEM certificates and keys read, refused,
compared and written the same way everywhere.
"""

from __future__ import annotations

import os
import stat

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from regproxy.tls.hostnames import SubjectNames
from regproxy.tls.pem import (
    CertificateError,
    certificatePEM,
    isCA,
    isKeyOf,
    loadCertificates,
    loadPrivateKey,
    nameMatches,
    parseCertificates,
    parsePrivateKey,
    privateKeyPEM,
    writeAtomically,
    writeExclusively,
)
from regproxy.tls.selfsigned import (
    generateCA,
    generateSelfSigned,
    issueServerCertificate,
)

labels = st.from_regex(r"\A[a-z][a-z0-9-]{0,10}[a-z0-9]\Z|\A[a-z]\Z")
hostNames = st.lists(labels, min_size=1, max_size=4).map(".".join)
MADE = generateSelfSigned(SubjectNames(["a.example"], []))


class ReadTests(SynchronousTestCase):
    def test_roundTrip(self) -> None:
        """
        What L{certificatePEM} and L{privateKeyPEM} write reads back.
        """
        [certificate] = parseCertificates(certificatePEM(MADE.certificate), "c")
        self.assertEqual(certificate, MADE.certificate)
        key = parsePrivateKey(privateKeyPEM(MADE.key), "k")
        self.assertTrue(isKeyOf(key, MADE.certificate))

    def test_refusals(self) -> None:
        """
        Each refusal names the file and says why, on one line.
        """
        path = os.path.abspath(self.mktemp())
        cases = [
            (loadCertificates, path, f"cannot read certificate {path}: No such file"),
            (parseCertificates, b"junk", "X holds no PEM certificate"),
            (
                parsePrivateKey,
                certificatePEM(MADE.certificate),
                "X holds no PEM private key",
            ),
            (
                parsePrivateKey,
                MADE.key.private_bytes(
                    serialization.Encoding.PEM,
                    serialization.PrivateFormat.PKCS8,
                    serialization.BestAvailableEncryption(b"pw"),
                ),
                "X is encrypted; give an unencrypted key",
            ),
        ]
        for function, argument, expected in cases:
            args = (argument,) if function is loadCertificates else (argument, "X")
            error = self.assertRaises(CertificateError, function, *args)
            self.assertIn(expected, str(error))
        self.assertRaises(CertificateError, loadPrivateKey, path)

    @given(st.binary(max_size=1000))
    @settings(max_examples=200, deadline=None)
    def test_garbageNeverCrashes(self, data: bytes) -> None:
        """
        Any bytes are a certificate and a key, or a one-line refusal.
        """
        for parse in (parseCertificates, parsePrivateKey):
            try:
                parse(data, "X")
            except CertificateError as e:
                self.assertNotIn("\n", str(e))

    @given(st.binary(max_size=200))
    @settings(max_examples=100, deadline=None)
    def test_garbageInsidePEM(self, body: bytes) -> None:
        import base64

        data = (
            b"-----BEGIN PRIVATE KEY-----\n"
            + base64.encodebytes(body)
            + b"-----END PRIVATE KEY-----\n"
        )
        try:
            parsePrivateKey(data, "X")
        except CertificateError as e:
            self.assertNotIn("\n", str(e))


class CompareTests(SynchronousTestCase):
    def test_isKeyOf(self) -> None:
        self.assertTrue(isKeyOf(MADE.key, MADE.certificate))
        self.assertFalse(
            isKeyOf(ec.generate_private_key(ec.SECP256R1()), MADE.certificate)
        )
        self.assertFalse(isKeyOf(object(), MADE.certificate))

    def test_isCA(self) -> None:
        ca = generateCA("c")
        self.assertTrue(isCA(ca.certificate))
        names = SubjectNames(["a.example"], [])
        self.assertFalse(isCA(issueServerCertificate(ca, names).certificate))

    def test_nameMatches(self) -> None:
        """
        A wildcard covers one label exactly; case and a final dot do not
        matter.
        """
        self.assertTrue(nameMatches("*.b.example", "X.B.example."))
        self.assertFalse(nameMatches("*.b.example", "b.example"))
        self.assertFalse(nameMatches("*.b.example", "y.x.b.example"))
        self.assertTrue(nameMatches("a.example", "A.EXAMPLE"))

    @given(hostNames, labels)
    @settings(max_examples=200, deadline=None)
    def test_wildcardProperty(self, name: str, label: str) -> None:
        """
        C{*.NAME} covers C{LABEL.NAME} and never C{NAME} itself or a name
        two labels deeper; a name always covers itself.
        """
        self.assertTrue(nameMatches(name, name.upper()))
        self.assertTrue(nameMatches("*." + name, f"{label}.{name}"))
        self.assertFalse(nameMatches("*." + name, name))
        self.assertFalse(nameMatches("*." + name, f"{label}.{label}.{name}"))


class WriteTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.dir = self.mktemp()
        os.makedirs(self.dir)
        self.path = os.path.join(self.dir, "f")

    def test_atomically(self) -> None:
        """
        The file is replaced whole, with the mode asked for, and no
        temporary file is left behind.
        """
        writeAtomically(self.path, b"one", 0o644)
        writeAtomically(self.path, b"two", 0o600)
        with open(self.path, "rb") as f:
            self.assertEqual(f.read(), b"two")
        self.assertEqual(stat.S_IMODE(os.stat(self.path).st_mode), 0o600)
        self.assertEqual(os.listdir(self.dir), ["f"])

    def test_atomicallyFails(self) -> None:
        """
        A directory that cannot be written raises and leaves nothing.
        """
        self.assertRaises(
            OSError, writeAtomically, os.path.join(self.dir, "no", "f"), b"x", 0o644
        )
        self.assertEqual(os.listdir(self.dir), [])

    def test_exclusively(self) -> None:
        """
        The first writer wins; a second keeps the first's file.
        """
        self.assertTrue(writeExclusively(self.path, b"first", 0o600))
        self.assertFalse(writeExclusively(self.path, b"second", 0o600))
        with open(self.path, "rb") as f:
            self.assertEqual(f.read(), b"first")
        self.assertEqual(stat.S_IMODE(os.stat(self.path).st_mode), 0o600)
