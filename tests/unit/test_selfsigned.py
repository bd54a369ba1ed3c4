"""
Tests for L{regproxy.tls.selfsigned} and L{regproxy.tls.localca}: the local
CA made once and kept, and the server certificates it signs, issued again
when the names change or the old one nears its end.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
import stat

from cryptography import x509
from twisted.trial.unittest import SynchronousTestCase

from regproxy.tls.certificates import loadCertifiedKey
from regproxy.tls.hostnames import SubjectNames
from regproxy.tls.localca import SelfSignedPaths, ensureLocalCA
from regproxy.tls.pem import CertificateError, isCA
from regproxy.tls.selfsigned import (
    CA_RENEW_BEFORE,
    RENEW_BEFORE,
    SERVER_LIFETIME,
    generateCA,
    generateSelfSigned,
    issueServerCertificate,
)

ip = ipaddress.ip_address
NOW = datetime.datetime(2026, 6, 1, tzinfo=datetime.timezone.utc)
NAMES = SubjectNames(["registry.example", "box.local"], [ip("127.0.0.1"), ip("::1")])
MORE = SubjectNames(NAMES.dnsNames, NAMES.ipAddresses + (ip("192.0.2.9"),))


def write(path: str, data: bytes) -> str:
    with open(path, "wb") as f:
        f.write(data)
    return path


def legacyStateDir(stateDir: str, names: SubjectNames, now: datetime.datetime):
    """
    A state directory as regproxy made it before the local CA: one
    self-signed certificate, both CA and server certificate, in
    C{tls/ca.crt} and C{tls/ca.key}.
    """
    made = generateSelfSigned(names, now)
    directory = os.path.join(stateDir, "tls")
    os.makedirs(directory)
    write(os.path.join(directory, "ca.crt"), made.certificatePEM())
    write(os.path.join(directory, "ca.key"), made.keyPEM())
    return made


class CertificateTests(SynchronousTestCase):
    def test_ca(self) -> None:
        """
        The CA signs itself, may sign server certificates only (path length
        0), names no host, and lasts years.
        """
        ca = generateCA("regproxy CA box", NOW).certificate
        ca.verify_directly_issued_by(ca)
        basic = ca.extensions.get_extension_for_class(x509.BasicConstraints).value
        self.assertEqual((basic.ca, basic.path_length), (True, 0))
        usage = ca.extensions.get_extension_for_class(x509.KeyUsage).value
        self.assertTrue(usage.key_cert_sign)
        self.assertEqual(SubjectNames.fromCertificate(ca), SubjectNames((), ()))
        self.assertGreater(
            ca.not_valid_after_utc - NOW, datetime.timedelta(days=9 * 365)
        )

    def test_server(self) -> None:
        """
        The server certificate is signed by the CA, is no CA itself, is for
        server authentication, names exactly what it was asked to, and is
        short-lived.
        """
        ca = generateCA("c", NOW)
        server = issueServerCertificate(ca, NAMES, NOW)
        server.certificate.verify_directly_issued_by(ca.certificate)
        self.assertFalse(isCA(server.certificate))
        usage = server.certificate.extensions.get_extension_for_class(
            x509.ExtendedKeyUsage
        ).value
        self.assertEqual(list(usage), [x509.oid.ExtendedKeyUsageOID.SERVER_AUTH])
        self.assertEqual(server.names, NAMES)
        self.assertEqual(server.notAfter, NOW + SERVER_LIFETIME)

    def test_serverNeverOutlivesCA(self) -> None:
        ca = generateCA("c", NOW - datetime.timedelta(days=3650 - 5))
        server = issueServerCertificate(ca, NAMES, NOW)
        self.assertEqual(server.notAfter, ca.notAfter)


class EnsureLocalCATests(SynchronousTestCase):
    def setUp(self) -> None:
        self.stateDir = self.mktemp()

    def test_madeThenKept(self) -> None:
        """
        The first start makes a CA and a server certificate, keys readable
        by their owner only; the next start keeps both.
        """
        first = ensureLocalCA(self.stateDir, NAMES, NOW)
        self.assertEqual(
            (first.newCA, first.newServer), ("there is none yet", "there is a new CA")
        )
        paths = SelfSignedPaths.inStateDir(self.stateDir)
        self.assertEqual(first.paths, paths)
        for key in (paths.caKey, paths.serverKey):
            self.assertEqual(stat.S_IMODE(os.stat(key).st_mode), 0o600)
        again = ensureLocalCA(self.stateDir, NAMES, NOW + datetime.timedelta(days=1))
        self.assertEqual((again.newCA, again.newServer), (None, None))
        self.assertEqual(again.ca.fingerprint, first.ca.fingerprint)
        self.assertEqual(again.server.fingerprint, first.server.fingerprint)

    def test_namesChanged(self) -> None:
        """
        A new name gets a new server certificate from the same CA, and the
        reason says what changed.
        """
        first = ensureLocalCA(self.stateDir, NAMES, NOW)
        second = ensureLocalCA(self.stateDir, MORE, NOW)
        self.assertIsNone(second.newCA)
        self.assertIn("names changed", second.newServer)
        self.assertIn("192.0.2.9", second.newServer)
        self.assertEqual(second.ca.fingerprint, first.ca.fingerprint)
        served = loadCertifiedKey(second.paths.server, second.paths.serverKey, now=NOW)
        self.assertEqual(served.names, MORE)
        served.certificate.verify_directly_issued_by(first.ca.certificate)

    def test_expiresSoon(self) -> None:
        """
        Within L{RENEW_BEFORE} of its end the server certificate is issued
        again; a day earlier it is not.  The CA stays.
        """
        first = ensureLocalCA(self.stateDir, NAMES, NOW)
        early = first.server.notAfter - RENEW_BEFORE - datetime.timedelta(days=1)
        self.assertIsNone(ensureLocalCA(self.stateDir, NAMES, early).newServer)
        late = first.server.notAfter - RENEW_BEFORE + datetime.timedelta(days=1)
        renewed = ensureLocalCA(self.stateDir, NAMES, late)
        self.assertIn("expires on", renewed.newServer)
        self.assertIsNone(renewed.newCA)
        self.assertEqual(renewed.ca.fingerprint, first.ca.fingerprint)
        self.assertGreater(renewed.server.notAfter, first.server.notAfter)

    def test_caExpiresSoon(self) -> None:
        """
        Only within L{CA_RENEW_BEFORE} of the CA's own end is a new CA made.
        """
        first = ensureLocalCA(self.stateDir, NAMES, NOW)
        late = first.ca.notAfter - CA_RENEW_BEFORE + datetime.timedelta(days=1)
        renewed = ensureLocalCA(self.stateDir, NAMES, late)
        self.assertIn("expires on", renewed.newCA)
        self.assertNotEqual(renewed.ca.fingerprint, first.ca.fingerprint)
        renewed.server.certificate.verify_directly_issued_by(renewed.ca.certificate)

    def test_legacyKeptAsCA(self) -> None:
        """
        A state directory from before the local CA (one self-signed
        certificate that was CA and server certificate at once) keeps that
        certificate as the CA, so clients that installed it go on trusting
        the server certificates it now signs.
        """
        legacy = legacyStateDir(self.stateDir, NAMES, NOW)
        local = ensureLocalCA(self.stateDir, NAMES, NOW)
        self.assertIsNone(local.newCA)
        self.assertEqual(local.ca.fingerprint, legacy.fingerprint)
        self.assertEqual(local.newServer, "there is none yet")
        local.server.certificate.verify_directly_issued_by(legacy.certificate)
        self.assertNotEqual(local.server.fingerprint, legacy.fingerprint)

    def test_notACA(self) -> None:
        """
        A C{ca.crt} that cannot sign (a server certificate put there by
        hand) is replaced by a CA.
        """
        ca = generateCA("c", NOW)
        server = issueServerCertificate(ca, NAMES, NOW)
        directory = os.path.join(self.stateDir, "tls")
        os.makedirs(directory)
        write(os.path.join(directory, "ca.crt"), server.certificatePEM())
        write(os.path.join(directory, "ca.key"), server.keyPEM())
        local = ensureLocalCA(self.stateDir, NAMES, NOW)
        self.assertEqual(local.newCA, "the old one is not a CA")
        self.assertTrue(isCA(local.ca.certificate))

    def test_serverFromAnotherCA(self) -> None:
        """
        A server certificate some other CA signed is issued again.
        """
        local = ensureLocalCA(self.stateDir, NAMES, NOW)
        other = issueServerCertificate(generateCA("other", NOW), NAMES, NOW)
        write(local.paths.server, other.certificatePEM())
        write(local.paths.serverKey, other.keyPEM())
        again = ensureLocalCA(self.stateDir, NAMES, NOW)
        self.assertEqual(again.newServer, "the old one is not signed by the CA")

    def test_brokenFilesReplaced(self) -> None:
        """
        A damaged server key is replaced instead of stopping start-up, and
        the CA is kept.
        """
        first = ensureLocalCA(self.stateDir, NAMES, NOW)
        write(first.paths.serverKey, b"garbage")
        again = ensureLocalCA(self.stateDir, NAMES, NOW)
        self.assertIn("cannot be used", again.newServer)
        self.assertEqual(again.ca.fingerprint, first.ca.fingerprint)
        loadCertifiedKey(again.paths.server, again.paths.serverKey, now=NOW)

    def test_unwritable(self) -> None:
        """
        A state directory that cannot be made gives a one-line reason.
        """
        blocker = write(self.mktemp(), b"a file, not a directory")
        e = self.assertRaises(
            CertificateError,
            ensureLocalCA,
            os.path.join(blocker, "state"),
            NAMES,
            NOW,
        )
        self.assertIn("cannot write the TLS certificates", str(e))
        self.assertNotIn("\n", str(e))
