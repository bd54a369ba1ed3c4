# -*- test-case-name: tests.unit.test_selfsigned -*-
"""
The local CA and its current server certificate, kept in the state
directory: C{tls/ca.crt} and C{tls/ca.key} (the CA clients install, served
at C{/_ca.crt}), C{tls/server.crt} and C{tls/server.key} (what the TLS
listener serves).

L{ensureLocalCA} is cheap when nothing needs doing (four small files read
and compared), so the listener calls it again while running to follow
changes of the machine's names.
"""

from __future__ import annotations

import datetime
import os

import attrs
from cryptography.exceptions import InvalidSignature

from regproxy.tls.certificates import CertifiedKey, loadCertifiedKey, utcnow
from regproxy.tls.hostnames import SubjectNames
from regproxy.tls.pem import CertificateError, isCA, writeAtomically
from regproxy.tls.selfsigned import (
    CA_RENEW_BEFORE,
    RENEW_BEFORE,
    generateCA,
    issueServerCertificate,
)


@attrs.frozen
class SelfSignedPaths:
    """
    Where the local CA and the server certificate live.
    """

    directory: str
    ca: str
    caKey: str
    server: str
    serverKey: str

    @classmethod
    def inStateDir(cls, stateDir: str) -> SelfSignedPaths:
        directory = os.path.join(stateDir, "tls")
        return cls(
            directory,
            *(
                os.path.join(directory, name)
                for name in ("ca.crt", "ca.key", "server.crt", "server.key")
            ),
        )


@attrs.frozen(eq=False)
class LocalCA:
    """
    What L{ensureLocalCA} found or made.

    @ivar newCA: Why a new CA was made (clients must fetch it again), or
        L{None} when the existing one was kept.
    @ivar newServer: Why a new server certificate was issued, or L{None}.
    """

    paths: SelfSignedPaths
    ca: CertifiedKey
    server: CertifiedKey
    newCA: str | None = None
    newServer: str | None = None


def _load(
    certificate: str, key: str, now: datetime.datetime
) -> tuple[CertifiedKey | None, str]:
    if not (os.path.exists(certificate) or os.path.exists(key)):
        return None, "there is none yet"
    try:
        return loadCertifiedKey(certificate, key, now=now), ""
    except CertificateError as e:
        return None, f"the old one cannot be used ({e})"


def _whyNewCA(
    existing: CertifiedKey | None, problem: str, now: datetime.datetime
) -> str | None:
    if existing is None:
        return problem
    if not isCA(existing.certificate):
        return "the old one is not a CA"
    if existing.notAfter - now < CA_RENEW_BEFORE:
        return f"the old one expires on {existing.notAfter:%Y-%m-%d}"
    return None


def _signedBy(server: CertifiedKey, ca: CertifiedKey) -> bool:
    try:
        server.certificate.verify_directly_issued_by(ca.certificate)
    except (ValueError, TypeError, InvalidSignature):
        return False
    return True


def _whyNewServer(
    existing: CertifiedKey | None,
    problem: str,
    ca: CertifiedKey,
    names: SubjectNames,
    now: datetime.datetime,
) -> str | None:
    if existing is None:
        return problem
    if not _signedBy(existing, ca):
        return "the old one is not signed by the CA"
    if existing.names != names:
        return (
            f"the names changed (was {', '.join(existing.names.describe())}; "
            f"now {', '.join(names.describe())})"
        )
    if existing.notAfter - now < RENEW_BEFORE:
        return f"the old one expires on {existing.notAfter:%Y-%m-%d %H:%M} UTC"
    return None


def _store(certifiedKey: CertifiedKey, certificate: str, key: str) -> None:
    # Key first: a certificate must never sit beside a key it does not match
    # for longer than the two renames take.
    writeAtomically(key, certifiedKey.keyPEM(), 0o600)
    writeAtomically(certificate, certifiedKey.certificatePEM(), 0o644)


def ensureLocalCA(
    stateDir: str, names: SubjectNames, now: datetime.datetime | None = None
) -> LocalCA:
    """
    Make sure the state directory holds a usable CA and a server
    certificate it signed for exactly C{names}: keep what is there, make a
    CA when there is none (or it cannot be used, or it is within
    L{CA_RENEW_BEFORE} of its end), and issue a server certificate when
    there is none, the CA or the names changed, or it is within
    L{RENEW_BEFORE} of its end.

    @raise CertificateError: When the directory cannot be written.
    """
    now = now or utcnow()
    paths = SelfSignedPaths.inStateDir(stateDir)
    ca, problem = _load(paths.ca, paths.caKey, now)
    newCA = _whyNewCA(ca, problem, now)
    server, problem = _load(paths.server, paths.serverKey, now)
    try:
        os.makedirs(paths.directory, mode=0o700, exist_ok=True)
        if newCA is not None or ca is None:
            first = (names.dnsNames or ("regproxy",))[0]
            ca = generateCA(f"regproxy CA {first}", now)
            _store(ca, paths.ca, paths.caKey)
        newServer = (
            "there is a new CA"
            if newCA is not None
            else _whyNewServer(server, problem, ca, names, now)
        )
        if newServer is not None or server is None:
            server = issueServerCertificate(ca, names, now)
            _store(server, paths.server, paths.serverKey)
    except OSError as e:
        raise CertificateError(
            f"cannot write the TLS certificates in {paths.directory}: {e.strerror}"
        ) from None
    return LocalCA(paths, ca, server, newCA, newServer)
