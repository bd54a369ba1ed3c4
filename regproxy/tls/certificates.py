# -*- test-case-name: tests.unit.test_tls -*-
"""
A key with its certificate and chain, loaded from files and checked, as
the TLS listener serves it.

Making certificates is L{regproxy.tls.selfsigned}'s job; choosing one per
connection and reloading it live is L{regproxy.tls.context}'s.
"""

from __future__ import annotations

import datetime
from typing import Any

import attrs
from cryptography import x509

from regproxy.tls import pem
from regproxy.tls.hostnames import SubjectNames
from regproxy.tls.pem import CertificateError


def utcnow() -> datetime.datetime:
    return datetime.datetime.now(datetime.timezone.utc)


@attrs.frozen(eq=False)
class CertifiedKey:
    """
    A private key with its certificate and the chain to send after it.

    @ivar chain: Intermediate certificates, leaf's issuer first.
    """

    certificate: x509.Certificate
    key: Any
    chain: tuple[x509.Certificate, ...] = ()

    @property
    def fingerprint(self) -> str:
        return pem.fingerprint(self.certificate)

    @property
    def names(self) -> SubjectNames:
        return SubjectNames.fromCertificate(self.certificate)

    @property
    def notAfter(self) -> datetime.datetime:
        return self.certificate.not_valid_after_utc

    def certificatePEM(self) -> bytes:
        return pem.certificatePEM(self.certificate)

    def keyPEM(self) -> bytes:
        return pem.privateKeyPEM(self.key)


def checkCertifiedKey(
    certifiedKey: CertifiedKey, where: str, now: datetime.datetime | None = None
) -> CertifiedKey:
    """
    Refuse a key that does not belong to its certificate, and a certificate
    that is expired or not yet valid.
    """
    now = now or utcnow()
    leaf = certifiedKey.certificate
    if not hasattr(certifiedKey.key, "public_key"):
        raise CertificateError(f"{where}: not a private key")
    if not pem.isKeyOf(certifiedKey.key, leaf):
        raise CertificateError(f"{where}: the key does not match the certificate")
    if leaf.not_valid_after_utc <= now:
        raise CertificateError(
            f"{where}: the certificate expired on "
            f"{leaf.not_valid_after_utc:%Y-%m-%d %H:%M} UTC"
        )
    if leaf.not_valid_before_utc > now:
        raise CertificateError(
            f"{where}: the certificate is not valid before "
            f"{leaf.not_valid_before_utc:%Y-%m-%d %H:%M} UTC"
        )
    return certifiedKey


def loadCertifiedKey(
    certPath: str,
    keyPath: str | None = None,
    chainPath: str | None = None,
    now: datetime.datetime | None = None,
) -> CertifiedKey:
    """
    Load a certificate, its key and its chain, and check them.

    The certificate file may carry the chain after the leaf, and (when
    C{keyPath} is L{None}) the key too, as one PEM bundle.

    @raise CertificateError: With a one-line reason.
    """
    certData = pem.readFile(certPath, "certificate")
    certificates = pem.parseCertificates(certData, f"certificate {certPath}")
    key = pem.parsePrivateKey(
        pem.readFile(keyPath, "key") if keyPath else certData,
        f"key {keyPath or certPath}",
    )
    chain = certificates[1:]
    if chainPath:
        chain += pem.loadCertificates(chainPath, "chain")
    return checkCertifiedKey(
        CertifiedKey(certificates[0], key, tuple(chain)), certPath, now
    )
