"""
Tests for L{regproxy.tls.context}: handshakes run in memory between a
pyOpenSSL client and the connections L{ReloadingServerContext} makes.
"""

from __future__ import annotations

import ipaddress
import os
from typing import Any, Protocol

from cryptography import x509
from OpenSSL import SSL
from twisted.internet.interfaces import IOpenSSLServerConnectionCreator
from twisted.logger import capturedLogs
from twisted.trial.unittest import SynchronousTestCase
from zope.interface.verify import verifyObject

from regproxy.tls.context import CertificateFiles, ReloadingServerContext
from regproxy.tls.hostnames import SubjectNames
from regproxy.tls.pem import CertificateError, fingerprint
from regproxy.tls.selfsigned import generateSelfSigned

LOOPBACK = [ipaddress.ip_address("127.0.0.1")]


def clientContext(
    minimum: int = SSL.TLS1_VERSION,
    maximum: int | None = None,
    alpn: list[bytes] | None = None,
) -> SSL.Context:
    context = SSL.Context(SSL.TLS_METHOD)
    context.set_min_proto_version(minimum)
    if maximum is not None:
        context.set_max_proto_version(maximum)
    # Let the client offer everything, so a refusal is the server's doing.
    context.set_cipher_list(b"ALL:@SECLEVEL=0")
    if alpn:
        context.set_alpn_protos(alpn)
    return context


class Creator(Protocol):
    """
    What L{handshake} needs of a server: L{ReloadingServerContext}, or
    any other connection creator.
    """

    def serverConnectionForTLS(self, tlsProtocol: Any) -> SSL.Connection: ...


def handshake(
    creator: Creator,
    serverName: bytes | None = None,
    client: SSL.Context | None = None,
) -> SSL.Connection:
    """
    Run a TLS handshake in memory; return the client side.

    @raise SSL.Error: When either side gives up.
    """
    server = creator.serverConnectionForTLS(None)
    server.set_accept_state()
    clientConnection = SSL.Connection(client or clientContext(), None)
    if serverName is not None:
        clientConnection.set_tlsext_host_name(serverName)
    clientConnection.set_connect_state()
    for _ in range(20):
        for side in (clientConnection, server):
            try:
                side.do_handshake()
            except SSL.WantReadError:
                pass
        progressed = False
        for source, sink in ((clientConnection, server), (server, clientConnection)):
            try:
                data = source.bio_read(65536)
            except SSL.WantReadError:
                continue
            sink.bio_write(data)
            progressed = True
        if not progressed:
            break
    clientConnection.do_handshake()
    return clientConnection


def peerCertificate(connection: SSL.Connection) -> x509.Certificate:
    certificate = connection.get_peer_certificate()
    assert certificate is not None
    return certificate.to_cryptography()


def peerNames(connection: SSL.Connection) -> SubjectNames:
    return SubjectNames.fromCertificate(peerCertificate(connection))


class Files:
    """
    A certificate and key on disk that tests can rewrite.
    """

    def __init__(self, directory: str) -> None:
        os.makedirs(directory, exist_ok=True)
        self.directory = directory
        self.cert = os.path.join(directory, "server.crt")
        self.key = os.path.join(directory, "server.key")

    def write(
        self, names: SubjectNames, cert: str | None = None, key: str | None = None
    ):
        made = generateSelfSigned(names)
        for path, data in (
            (cert or self.cert, made.certificatePEM()),
            (key or self.key, made.keyPEM()),
        ):
            temporary = path + ".new"
            with open(temporary, "wb") as f:
                f.write(data)
            os.replace(temporary, path)
        return made


class SettingsTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.files = Files(self.mktemp())
        self.files.write(SubjectNames(["default.example"], LOOPBACK))
        self.creator = ReloadingServerContext(
            CertificateFiles(self.files.cert, self.files.key)
        )

    def test_interface(self) -> None:
        verifyObject(IOpenSSLServerConnectionCreator, self.creator)

    def test_tls12and13(self) -> None:
        """
        TLS 1.2 and 1.3 clients connect.
        """
        for version in (SSL.TLS1_2_VERSION, SSL.TLS1_3_VERSION):
            client = handshake(self.creator, client=clientContext(version, version))
            self.assertIn(client.get_protocol_version_name(), ("TLSv1.2", "TLSv1.3"))

    def test_oldProtocolsRefused(self) -> None:
        """
        A client that can only speak TLS 1.0 or 1.1 is refused.
        """
        for version in (SSL.TLS1_VERSION, SSL.TLS1_1_VERSION):
            e = self.assertRaises(
                SSL.Error,
                handshake,
                self.creator,
                client=clientContext(version, version),
            )
            self.assertIn("unsupported protocol", str(e))

    def test_clientCanTryOldProtocols(self) -> None:
        """
        The test client really can speak TLS 1.0 and 1.1 (to a server that
        allows them), so the refusal above is the server's.
        """
        from regproxy.tls.certificates import loadCertifiedKey
        from regproxy.tls.context import makeContext

        permissive = makeContext(loadCertifiedKey(self.files.cert, self.files.key))
        permissive.set_min_proto_version(SSL.TLS1_VERSION)
        permissive.set_cipher_list(b"ALL:@SECLEVEL=0")

        class Permissive:
            def serverConnectionForTLS(self, protocol):
                return SSL.Connection(permissive, None)

        for version, name in (
            (SSL.TLS1_VERSION, "TLSv1"),
            (SSL.TLS1_1_VERSION, "TLSv1.1"),
        ):
            client = handshake(Permissive(), client=clientContext(version, version))
            self.assertEqual(client.get_protocol_version_name(), name)

    def test_tls12Ciphers(self) -> None:
        """
        Over TLS 1.2 the suite is ECDHE with an AEAD cipher, even when the
        client offers weak ones too.
        """
        client = handshake(
            self.creator, client=clientContext(SSL.TLS1_2_VERSION, SSL.TLS1_2_VERSION)
        )
        cipher = client.get_cipher_name() or ""
        self.assertTrue(cipher.startswith("ECDHE-"), cipher)
        self.assertTrue("GCM" in cipher or "CHACHA20" in cipher, cipher)

    def test_onlyCBCOffered(self) -> None:
        """
        A TLS 1.2 client offering only CBC suites is refused.
        """
        client = clientContext(SSL.TLS1_2_VERSION, SSL.TLS1_2_VERSION)
        client.set_cipher_list(b"ECDHE-ECDSA-AES128-SHA:@SECLEVEL=0")
        self.assertRaises(SSL.Error, handshake, self.creator, client=client)

    def test_alpnHTTP11(self) -> None:
        """
        A client offering h2 and http/1.1 gets http/1.1: we speak HTTP/1.1
        only.
        """
        client = handshake(
            self.creator, client=clientContext(alpn=[b"h2", b"http/1.1"])
        )
        self.assertEqual(client.get_alpn_proto_negotiated(), b"http/1.1")


class SNITests(SynchronousTestCase):
    def setUp(self) -> None:
        self.files = Files(self.mktemp())
        self.files.write(SubjectNames(["default.example"], LOOPBACK))
        self.bundles = os.path.join(self.files.directory, "certs")
        os.makedirs(self.bundles)
        for fileName, names in [
            ("a.pem", ["a.example"]),
            ("wild.pem", ["*.b.example"]),
        ]:
            made = generateSelfSigned(SubjectNames(names, []))
            with open(os.path.join(self.bundles, fileName), "wb") as f:
                f.write(made.certificatePEM() + made.keyPEM())
        self.creator = ReloadingServerContext(
            CertificateFiles(self.files.cert, self.files.key, directory=self.bundles)
        )

    def test_chosenByName(self) -> None:
        """
        The certificate whose names cover the SNI server name is served,
        wildcards included, whatever the case.
        """
        self.assertEqual(
            peerNames(handshake(self.creator, b"a.example")).dnsNames, ("a.example",)
        )
        self.assertEqual(
            peerNames(handshake(self.creator, b"X.B.Example")).dnsNames,
            ("*.b.example",),
        )

    def test_default(self) -> None:
        """
        No server name, or one nothing covers (a wildcard covers one label
        only), gets the default certificate.
        """
        for name in (None, b"other.example", b"y.x.b.example"):
            self.assertEqual(
                peerNames(handshake(self.creator, name)).dnsNames, ("default.example",)
            )

    def test_newBundle(self) -> None:
        """
        A bundle added to the directory is served from the next connection.
        """
        made = generateSelfSigned(SubjectNames(["c.example"], []))
        with open(os.path.join(self.bundles, "c.pem"), "wb") as f:
            f.write(made.certificatePEM() + made.keyPEM())
        self.assertEqual(
            peerNames(handshake(self.creator, b"c.example")).dnsNames, ("c.example",)
        )

    def test_badBundleAtStart(self) -> None:
        """
        A bundle that cannot be used stops start-up, naming the file.
        """
        with open(os.path.join(self.bundles, "bad.pem"), "wb") as f:
            f.write(b"nope")
        e = self.assertRaises(
            CertificateError,
            ReloadingServerContext,
            CertificateFiles(self.files.cert, self.files.key, directory=self.bundles),
        )
        self.assertIn("bad.pem", str(e))


class ReloadTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.files = Files(self.mktemp())
        self.first = self.files.write(SubjectNames(["first.example"], LOOPBACK))
        self.creator = ReloadingServerContext(
            CertificateFiles(self.files.cert, self.files.key)
        )

    def fingerprintSeen(self) -> str:
        return fingerprint(peerCertificate(handshake(self.creator)))

    def test_unchanged(self) -> None:
        self.assertFalse(self.creator.reloadIfChanged())
        self.assertEqual(self.fingerprintSeen(), self.first.fingerprint)

    def test_replaced(self) -> None:
        """
        New files are served from the next connection, and the reload is
        logged with the new fingerprint.
        """
        second = self.files.write(SubjectNames(["second.example"], LOOPBACK))
        with capturedLogs() as events:
            self.assertEqual(self.fingerprintSeen(), second.fingerprint)
        self.assertEqual([e.get("fingerprint") for e in events], [second.fingerprint])

    def test_badNewFileKeepsOld(self) -> None:
        """
        A key that does not match the new certificate (say, half-way through
        a renewal) keeps the old certificate in use and logs why, once; when
        the files change again they are tried again.
        """
        made = generateSelfSigned(SubjectNames(["third.example"], LOOPBACK))
        with open(self.files.cert, "wb") as f:
            f.write(made.certificatePEM())
        with capturedLogs() as events:
            self.assertEqual(self.fingerprintSeen(), self.first.fingerprint)
            self.assertEqual(self.fingerprintSeen(), self.first.fingerprint)
        self.assertEqual(len(events), 1)
        self.assertIn("does not match", events[0]["reason"])
        self.assertIn("keeping the previous certificate", events[0]["log_format"])
        with open(self.files.key, "wb") as f:
            f.write(made.keyPEM())
        self.assertEqual(self.fingerprintSeen(), made.fingerprint)

    def test_deletedKeepsOld(self) -> None:
        os.unlink(self.files.cert)
        with capturedLogs():
            self.assertEqual(self.fingerprintSeen(), self.first.fingerprint)

    def test_openConnectionUntouched(self) -> None:
        """
        A connection made before the change keeps its certificate.
        """
        before = handshake(self.creator)
        self.files.write(SubjectNames(["second.example"], LOOPBACK))
        handshake(self.creator)
        self.assertEqual(peerNames(before).dnsNames, ("first.example",))

    def test_startRefusesBadFiles(self) -> None:
        os.unlink(self.files.key)
        self.assertRaises(
            CertificateError,
            ReloadingServerContext,
            CertificateFiles(self.files.cert, self.files.key),
        )

    def test_reloadNow(self) -> None:
        """
        C{reload} (for SIGHUP) says whether other certificates are served,
        and refuses files it cannot use, keeping the ones in use.
        """
        self.assertFalse(self.creator.reload())
        second = self.files.write(SubjectNames(["second.example"], LOOPBACK))
        self.assertTrue(self.creator.reload())
        made = generateSelfSigned(SubjectNames(["third.example"], LOOPBACK))
        with open(self.files.cert, "wb") as f:
            f.write(made.certificatePEM())
        error = self.assertRaises(CertificateError, self.creator.reload)
        self.assertIn("does not match", str(error))
        self.assertEqual(self.fingerprintSeen(), second.fingerprint)
