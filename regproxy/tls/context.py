# -*- test-case-name: tests.unit.test_tlscontext -*-
"""
The server side of each TLS connection: sound protocol settings, a
certificate chosen by SNI server name, and certificate files re-read when
they change, without a restart and without touching open connections.

Changes are noticed by C{stat}ing the files when a connection arrives (a
few system calls, cheap next to a handshake), so a renewed certificate is
used from the very next connection and there is no timer to start or stop.
"""

from __future__ import annotations

import datetime
import os
from typing import TYPE_CHECKING

import attrs
from OpenSSL import SSL, crypto
from twisted.internet.interfaces import IOpenSSLServerConnectionCreator, IReactorTime
from twisted.logger import Logger
from zope.interface import implementer

from regproxy.tls.certificates import CertifiedKey, loadCertifiedKey
from regproxy.tls.pem import CertificateError, nameMatches

if TYPE_CHECKING:
    from OpenSSL.SSL import _NoOverlappingProtocols

#: TLS 1.2 suites: ECDHE key exchange and AEAD ciphers only (TLS 1.3 suites
#: are all of that kind already and keep OpenSSL's defaults).
TLS12_CIPHERS = b":".join(
    [
        b"ECDHE-ECDSA-AES128-GCM-SHA256",
        b"ECDHE-RSA-AES128-GCM-SHA256",
        b"ECDHE-ECDSA-AES256-GCM-SHA384",
        b"ECDHE-RSA-AES256-GCM-SHA384",
        b"ECDHE-ECDSA-CHACHA20-POLY1305",
        b"ECDHE-RSA-CHACHA20-POLY1305",
    ]
)


def _selectHTTP11(
    connection: SSL.Connection, offered: list[bytes]
) -> bytes | _NoOverlappingProtocols:
    # We speak HTTP/1.1 only; a client offering only h2 gets no ALPN answer
    # and falls back or gives up, as RFC 7301 lets it.
    if b"http/1.1" in offered:
        return b"http/1.1"
    return SSL.NO_OVERLAPPING_PROTOCOLS


def makeContext(certifiedKey: CertifiedKey) -> SSL.Context:
    """
    An OpenSSL server context for one certificate: TLS 1.2 and later, the
    suites in L{TLS12_CIPHERS}, no compression, no renegotiation, ALPN
    C{http/1.1}.
    """
    context = SSL.Context(SSL.TLS_SERVER_METHOD)
    context.set_min_proto_version(SSL.TLS1_2_VERSION)
    context.set_options(
        SSL.OP_NO_COMPRESSION
        | SSL.OP_CIPHER_SERVER_PREFERENCE
        | SSL.OP_NO_RENEGOTIATION
        | SSL.OP_SINGLE_ECDH_USE
    )
    context.set_cipher_list(TLS12_CIPHERS)
    context.use_certificate(crypto.X509.from_cryptography(certifiedKey.certificate))
    for extra in certifiedKey.chain:
        context.add_extra_chain_cert(crypto.X509.from_cryptography(extra))
    context.use_privatekey(crypto.PKey.from_cryptography_key(certifiedKey.key))
    context.check_privatekey()
    context.set_alpn_select_callback(_selectHTTP11)
    return context


@attrs.frozen(eq=False)
class CertificateSet:
    """
    The certificates served at one moment: a default, used when the client
    sends no server name or one that no other certificate names, and others
    chosen by the DNS names in their subject alternative names.
    """

    default: CertifiedKey
    byName: tuple[CertifiedKey, ...] = ()

    def choose(self, serverName: str | None) -> CertifiedKey:
        if serverName:
            for candidate in self.byName:
                for pattern in candidate.names.dnsNames:
                    if nameMatches(pattern, serverName):
                        return candidate
        return self.default


@attrs.frozen
class FileState:
    """
    Enough of a file's C{stat} to tell that it was replaced or rewritten.
    """

    path: str
    stamp: tuple[int, ...] | str

    @classmethod
    def of(cls, path: str) -> FileState:
        try:
            st = os.stat(path)
        except OSError as e:
            return cls(path, e.strerror or "unreadable")
        return cls(path, (st.st_mtime_ns, st.st_size, st.st_ino, st.st_dev))


@attrs.frozen
class CertificateFiles:
    """
    Where the certificates come from.

    @ivar cert: The default certificate (PEM; may carry the chain, and the
        key when C{key} is L{None}).
    @ivar key: Its private key.
    @ivar chain: Intermediates to send after it.
    @ivar directory: A directory of PEM bundles (C{*.pem}, C{*.crt}), each
        holding a key, a certificate and its chain; each is served to clients
        asking for a name in its certificate.
    """

    cert: str
    key: str | None = None
    chain: str | None = None
    directory: str | None = None

    def _bundles(self) -> list[str]:
        if self.directory is None:
            return []
        try:
            entries = sorted(os.listdir(self.directory))
        except OSError as e:
            raise CertificateError(
                f"cannot list certificate directory {self.directory}: {e.strerror}"
            ) from None
        return [
            os.path.join(self.directory, name)
            for name in entries
            if name.endswith((".pem", ".crt")) and not name.startswith(".")
        ]

    def state(self) -> tuple[FileState, ...]:
        """
        What to compare between connections to notice a change.
        """
        paths = [self.cert, self.key, self.chain]
        if self.directory is not None:
            paths.append(self.directory)
            try:
                paths.extend(self._bundles())
            except CertificateError:
                pass
        return tuple(FileState.of(p) for p in paths if p is not None)

    def load(self, now: datetime.datetime | None = None) -> CertificateSet:
        """
        Read and check every file, as valid at C{now}.

        @raise CertificateError: When any of them cannot be used.
        """
        default = loadCertifiedKey(self.cert, self.key, self.chain, now)
        return CertificateSet(
            default,
            tuple(loadCertifiedKey(path, now=now) for path in self._bundles()),
        )


@implementer(IOpenSSLServerConnectionCreator)
class ReloadingServerContext:
    """
    Makes the OpenSSL connection for each accepted TCP connection, after
    re-reading the certificate files if they changed since the last one.

    A change that cannot be loaded (a half-written file, a key that does not
    match) is logged once and the previous certificates stay in use; the
    files are tried again as soon as they change again.
    """

    _log = Logger()

    def __init__(
        self,
        files: CertificateFiles,
        clock: IReactorTime | None = None,
    ) -> None:
        """
        @raise CertificateError: When the files cannot be used at start.
        """
        self._files = files
        self._clock = clock
        self._state = files.state()
        self._install(files.load(self._now()))

    @property
    def certificates(self) -> CertificateSet:
        return self._certificates

    def _now(self) -> datetime.datetime | None:
        if self._clock is None:
            return None
        return datetime.datetime.fromtimestamp(
            self._clock.seconds(), datetime.timezone.utc
        )

    def _install(self, certificates: CertificateSet) -> None:
        contexts: dict[int, SSL.Context] = {}
        for certifiedKey in (certificates.default, *certificates.byName):
            contexts[id(certifiedKey)] = makeContext(certifiedKey)
        # One object swapped at once, so a handshake in progress sees either
        # the old set or the new one, never a mix.
        self._certificates = certificates
        self._contexts = contexts
        self._defaultContext = contexts[id(certificates.default)]
        self._defaultContext.set_tlsext_servername_callback(self._chooseBySNI)

    def _chooseBySNI(self, connection: SSL.Connection) -> None:
        raw = connection.get_servername()
        serverName = raw.decode("ascii", "replace") if raw else None
        chosen = self._certificates.choose(serverName)
        context = self._contexts.get(id(chosen))
        if context is not None and context is not self._defaultContext:
            connection.set_context(context)

    def reloadIfChanged(self, force: bool = False) -> bool:
        """
        Re-read the files if any of them changed (or, with C{force}, even
        if they seem not to have).

        @return: C{True} when new certificates were installed.
        """
        state = self._files.state()
        if state == self._state and not force:
            return False
        self._state = state
        try:
            certificates = self._files.load(self._now())
            self._install(certificates)
        except (CertificateError, SSL.Error) as e:
            self._log.warn(
                "TLS: keeping the previous certificate; the changed files "
                "cannot be used: {reason}",
                reason=str(e),
            )
            return False
        self._log.info(
            "TLS: certificate reloaded from {path}, SHA-256 {fingerprint}, "
            "names {names}",
            path=self._files.cert,
            fingerprint=certificates.default.fingerprint,
            names=", ".join(certificates.default.names.describe()),
        )
        return True

    def reload(self) -> bool:
        """
        Re-read the files now, changed or not (for C{SIGHUP}).

        @return: C{True} when other certificates are served from now on.
        @raise CertificateError: The files cannot be used; the previous
            certificates stay in use.
        """
        before = self._fingerprints()
        self._state = self._files.state()
        certificates = self._files.load(self._now())
        try:
            self._install(certificates)
        except SSL.Error as e:
            raise CertificateError(f"{self._files.cert}: {e}") from None
        return self._fingerprints() != before

    def _fingerprints(self) -> tuple[str, ...]:
        served = self._certificates
        return tuple(c.fingerprint for c in (served.default, *served.byName))

    def serverConnectionForTLS(self, tlsProtocol: object) -> SSL.Connection:
        self.reloadIfChanged()
        return SSL.Connection(self._defaultContext, None)
