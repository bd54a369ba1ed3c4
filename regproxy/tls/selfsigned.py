# -*- test-case-name: tests.unit.test_selfsigned -*-
"""
The certificates regproxy makes for itself when it is given none: a
long-lived local CA, which clients install once as their C{ca.crt}, and a
short-lived server certificate signed by it for this machine's names.

When the names change (a new interface, a DHCP lease, a C{--tls-name}) or
the server certificate nears its expiry, a new server certificate is issued
by the same CA, so clients that trust the CA never notice.

A state directory made by an earlier regproxy holds one self-signed
certificate that is both the CA and the server certificate
(C{CA:TRUE, pathlen:0}); it is kept as the CA, so the clients that trusted
it go on trusting the server certificates it now signs.

The token issuer's certificate shares L{selfSignedBuilder}.
"""

from __future__ import annotations

import datetime

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from regproxy.tls.certificates import CertifiedKey, utcnow
from regproxy.tls.hostnames import SubjectNames

#: How long a new local CA lasts: clients install it by hand, once.
CA_LIFETIME = datetime.timedelta(days=3650)
#: Make a new CA only when the old one has less than this left (clients
#: must then fetch C{/_ca.crt} again; the log says so).
CA_RENEW_BEFORE = datetime.timedelta(days=30)
#: How long a server certificate lasts.
SERVER_LIFETIME = datetime.timedelta(days=30)
#: Issue a new server certificate when the old one has less than this left.
RENEW_BEFORE = datetime.timedelta(days=10)
#: A one-file self-signed certificate (L{generateSelfSigned}) lasts this
#: long, within the 398 days some clients accept for server certificates.
SELF_SIGNED_LIFETIME = datetime.timedelta(days=365)
#: Certificates start this long before they are made, for clock skew.
_BACKDATE = datetime.timedelta(hours=1)


def _keyUsage(*, signCertificates: bool) -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=True,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=signCertificates,
        crl_sign=False,
        encipher_only=False,
        decipher_only=False,
    )


def selfSignedBuilder(
    key: ec.EllipticCurvePrivateKey,
    subject: x509.Name,
    notBefore: datetime.datetime,
    notAfter: datetime.datetime,
    pathLength: int | None = None,
) -> x509.CertificateBuilder:
    """
    A certificate builder for C{key}, issued by itself, marked as a CA (so
    clients can install it as their C{ca.crt}, and registries as their
    C{rootcertbundle}) that signs with its key; callers add what is theirs
    and sign.
    """
    publicKey = key.public_key()
    usage = _keyUsage(signCertificates=True)
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(publicKey)
        .serial_number(x509.random_serial_number())
        .not_valid_before(notBefore)
        .not_valid_after(notAfter)
        .add_extension(
            x509.BasicConstraints(ca=True, path_length=pathLength), critical=True
        )
        .add_extension(usage, critical=True)
        .add_extension(
            x509.SubjectKeyIdentifier.from_public_key(publicKey), critical=False
        )
    )


def _subject(commonName: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "regproxy"),
            x509.NameAttribute(NameOID.COMMON_NAME, commonName[:64]),
        ]
    )


def _forServer(
    builder: x509.CertificateBuilder,
    names: SubjectNames,
    issuerKey: ec.EllipticCurvePrivateKey,
) -> x509.CertificateBuilder:
    """
    What makes a certificate a server's: for server authentication, for
    C{names}, naming the key that signs it.
    """
    return (
        builder.add_extension(
            x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False
        )
        .add_extension(names.subjectAlternativeName(), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(issuerKey.public_key()),
            critical=False,
        )
    )


def generateCA(commonName: str, now: datetime.datetime | None = None) -> CertifiedKey:
    """
    A new EC P-256 key and a self-signed CA certificate for it that may
    sign server certificates only (C{pathlen:0}), valid for L{CA_LIFETIME}.
    """
    now = now or utcnow()
    key = ec.generate_private_key(ec.SECP256R1())
    certificate = selfSignedBuilder(
        key, _subject(commonName), now - _BACKDATE, now + CA_LIFETIME, pathLength=0
    ).sign(key, hashes.SHA256())
    return CertifiedKey(certificate, key)


def issueServerCertificate(
    ca: CertifiedKey, names: SubjectNames, now: datetime.datetime | None = None
) -> CertifiedKey:
    """
    A new key and a certificate for C{names} signed by C{ca}, valid for
    L{SERVER_LIFETIME} but never beyond the CA itself.
    """
    now = now or utcnow()
    key = ec.generate_private_key(ec.SECP256R1())
    notAfter = min(now + SERVER_LIFETIME, ca.notAfter)
    builder = (
        x509.CertificateBuilder()
        .subject_name(_subject((names.dnsNames or ("regproxy",))[0]))
        .issuer_name(ca.certificate.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(max(now - _BACKDATE, ca.certificate.not_valid_before_utc))
        .not_valid_after(notAfter)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), True)
        .add_extension(_keyUsage(signCertificates=False), critical=True)
        .add_extension(
            x509.SubjectKeyIdentifier.from_public_key(key.public_key()),
            critical=False,
        )
    )
    certificate = _forServer(builder, names, ca.key).sign(ca.key, hashes.SHA256())
    return CertifiedKey(certificate, key)


def generateSelfSigned(
    names: SubjectNames, now: datetime.datetime | None = None
) -> CertifiedKey:
    """
    One certificate that is its own CA and a server certificate for
    C{names}: what earlier regproxy versions kept in the state directory,
    and a one-file certificate for a test peer.
    """
    now = now or utcnow()
    key = ec.generate_private_key(ec.SECP256R1())
    builder = selfSignedBuilder(
        key,
        _subject((names.dnsNames or ("regproxy",))[0]),
        now - _BACKDATE,
        now + SELF_SIGNED_LIFETIME,
        pathLength=0,
    )
    certificate = _forServer(builder, names, key).sign(key, hashes.SHA256())
    return CertifiedKey(certificate, key)
