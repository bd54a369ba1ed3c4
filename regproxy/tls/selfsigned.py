# -*- test-case-name: tests.unit.test_tls -*-
"""
The part every self-signed certificate of ours shares (the TLS listener's
and the token issuer's): a key that vouches for itself as a CA.
"""

from __future__ import annotations

import datetime

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec


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
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(
            x509.SubjectKeyIdentifier.from_public_key(publicKey), critical=False
        )
    )
