"""
Tests for L{regproxy.tls.renewal}: a client that trusts only the local CA
goes on verifying, in real handshakes run in memory, after the machine's
names change and after the server certificate is renewed, while running.
"""

from __future__ import annotations

import datetime
import ipaddress
import os

from cryptography import x509
from OpenSSL import SSL, crypto
from service_identity import VerificationError
from service_identity.pyopenssl import verify_hostname, verify_ip_address
from twisted.internet.interfaces import IOpenSSLServerConnectionCreator
from twisted.internet.task import Clock
from twisted.logger import capturedLogs
from twisted.trial.unittest import SynchronousTestCase
from zope.interface.verify import verifyObject

from regproxy.tls.hostnames import SubjectNames
from regproxy.tls.localca import SelfSignedPaths
from regproxy.tls.pem import fingerprint, loadCertificates
from regproxy.tls.renewal import CHECK_EVERY, RenewingServerContext
from regproxy.tls.selfsigned import RENEW_BEFORE, SERVER_LIFETIME, generateSelfSigned

from .test_tlscontext import handshake

ip = ipaddress.ip_address
START = datetime.datetime.now(datetime.timezone.utc)
NAMES = SubjectNames(["box.local"], [ip("127.0.0.1"), ip("::1")])


def trustingOnly(ca: x509.Certificate, clock: Clock) -> SSL.Context:
    """
    A client that verifies the server's chain against C{ca} alone, at the
    time C{clock} says.
    """
    context = SSL.Context(SSL.TLS_CLIENT_METHOD)
    context.set_verify(SSL.VERIFY_PEER, lambda conn, cert, errno, depth, ok: bool(ok))
    store = context.get_cert_store()
    assert store is not None
    store.add_cert(crypto.X509.from_cryptography(ca))
    store.set_time(
        datetime.datetime.fromtimestamp(clock.seconds(), datetime.timezone.utc)
    )
    return context


class Machine:
    """
    A state directory, a clock and this machine's names as a test sets
    them.
    """

    def __init__(self, stateDir: str, names: SubjectNames = NAMES) -> None:
        self.stateDir = stateDir
        self.names = names
        self.clock = Clock()
        self.clock.advance(START.timestamp())

    def context(self) -> RenewingServerContext:
        return RenewingServerContext(self.stateDir, lambda: self.names, self.clock)

    def ca(self) -> x509.Certificate:
        return loadCertificates(SelfSignedPaths.inStateDir(self.stateDir).ca)[0]

    def connect(
        self, creator: RenewingServerContext, ca: x509.Certificate, host: str
    ) -> SSL.Connection:
        """
        A verified connection to C{host}, or L{SSL.Error} /
        L{VerificationError} as a client would refuse it.
        """
        connection = handshake(
            creator, host.encode("ascii"), trustingOnly(ca, self.clock)
        )
        try:
            verify_ip_address(connection, str(ip(host)))
        except ValueError:
            verify_hostname(connection, host)
        return connection


def served(connection: SSL.Connection) -> x509.Certificate:
    certificate = connection.get_peer_certificate()
    assert certificate is not None
    return certificate.to_cryptography()


class TrustTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.machine = Machine(self.mktemp())
        self.creator = self.machine.context()
        self.ca = self.machine.ca()

    def test_interface(self) -> None:
        verifyObject(IOpenSSLServerConnectionCreator, self.creator)

    def test_namesChange(self) -> None:
        """
        A new address is served within L{CHECK_EVERY} seconds, in a server
        certificate the same CA signed: the client that trusted the CA
        before verifies the new address too, with no restart.
        """
        self.machine.connect(self.creator, self.ca, "box.local")
        self.assertRaises(
            VerificationError, self.machine.connect, self.creator, self.ca, "192.0.2.9"
        )
        self.machine.names = SubjectNames(
            NAMES.dnsNames, NAMES.ipAddresses + (ip("192.0.2.9"),)
        )
        self.machine.clock.advance(CHECK_EVERY)
        with capturedLogs() as events:
            connection = self.machine.connect(self.creator, self.ca, "192.0.2.9")
        self.assertIn(
            ip("192.0.2.9"),
            SubjectNames.fromCertificate(served(connection)).ipAddresses,
        )
        self.machine.connect(self.creator, self.ca, "box.local")
        self.assertEqual(self.machine.ca(), self.ca)
        [event] = [e for e in events if "why" in e]
        self.assertIn("names changed", event["why"])

    def test_checkedAtMostEveryMinute(self) -> None:
        """
        Between two looks at the names, connections get the certificate
        already made.
        """
        before = served(self.machine.connect(self.creator, self.ca, "box.local"))
        self.machine.names = SubjectNames(["other.local"], [])
        self.machine.clock.advance(CHECK_EVERY - 1)
        after = served(self.machine.connect(self.creator, self.ca, "box.local"))
        self.assertEqual(fingerprint(after), fingerprint(before))

    def test_renewedBeforeExpiry(self) -> None:
        """
        Close to its end the server certificate is renewed while running;
        the client, its clock past the old certificate's end, still
        verifies.
        """
        first = served(self.machine.connect(self.creator, self.ca, "box.local"))
        self.machine.clock.advance(
            (
                SERVER_LIFETIME - RENEW_BEFORE + datetime.timedelta(days=1)
            ).total_seconds()
        )
        second = served(self.machine.connect(self.creator, self.ca, "box.local"))
        self.assertNotEqual(fingerprint(second), fingerprint(first))
        self.machine.clock.advance(RENEW_BEFORE.total_seconds())
        self.assertLess(
            first.not_valid_after_utc.timestamp(), self.machine.clock.seconds()
        )
        self.machine.connect(self.creator, self.ca, "box.local")

    def test_reload(self) -> None:
        """
        L{RenewingServerContext.reload} looks at the names at once (what
        C{SIGHUP} does), without waiting for the next minute.
        """
        self.machine.names = SubjectNames(["new.local"], [])
        self.assertTrue(self.creator.reload())
        self.machine.connect(self.creator, self.ca, "new.local")

    def test_untrustedRefused(self) -> None:
        """
        A client trusting another CA refuses: verification really is on.
        """
        other = generateSelfSigned(NAMES).certificate
        self.assertRaises(
            SSL.Error, self.machine.connect, self.creator, other, "box.local"
        )


class LegacyStateDirTests(SynchronousTestCase):
    def test_clientsOfTheOldCertificateKeepWorking(self) -> None:
        """
        A client that installed the certificate an earlier regproxy made
        (CA and server certificate in one) verifies the server certificate
        now signed by it, before and after the names change.
        """
        stateDir = self.mktemp()
        legacy = generateSelfSigned(NAMES)
        directory = os.path.join(stateDir, "tls")
        os.makedirs(directory)
        for name, data in (
            ("ca.key", legacy.keyPEM()),
            ("ca.crt", legacy.certificatePEM()),
        ):
            with open(os.path.join(directory, name), "wb") as f:
                f.write(data)
        machine = Machine(stateDir)
        creator = machine.context()
        connection = machine.connect(creator, legacy.certificate, "box.local")
        self.assertNotEqual(fingerprint(served(connection)), legacy.fingerprint)
        machine.names = SubjectNames(["box.local", "renamed.local"], [])
        creator.reload()
        machine.connect(creator, legacy.certificate, "renamed.local")
        self.assertEqual(machine.ca(), legacy.certificate)
