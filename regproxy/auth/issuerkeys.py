# -*- test-case-name: tests.unit.test_tokens -*-
"""
Where the key that signs our tokens comes from: given files, openBalena's
C{REGISTRY_TOKEN_AUTH_*} variables, or a key and certificate made once and
kept in the state directory.
"""

from __future__ import annotations

import base64
import binascii
import datetime
import os
from collections.abc import Mapping

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from twisted.internet.interfaces import IReactorTime

from regproxy.auth.jwt import ALGORITHM, TokenIssuer, checkSigningKey
from regproxy.auth.libtrust import keyID
from regproxy.tls.pem import (
    certificatePEM,
    loadCertificates,
    parseCertificates,
    parsePrivateKey,
    privateKeyPEM,
    readFile,
    writeExclusively,
)
from regproxy.tls.selfsigned import selfSignedBuilder


def parseSigningKey(data: bytes, where: str) -> ec.EllipticCurvePrivateKey:
    """
    An unencrypted PEM private key (SEC1 C{EC PRIVATE KEY} or PKCS#8) usable
    for ES256.

    @raise ValueError: It is not one.
    """
    key = parsePrivateKey(data, where)
    try:
        checkSigningKey(key)
    except ValueError as e:
        raise ValueError(f"{where}: {e}") from None
    return key  # type: ignore[no-any-return]


def loadSigningKey(path: str) -> ec.EllipticCurvePrivateKey:
    return parseSigningKey(readFile(path, "token key"), f"token key {path}")


def loadIssuer(
    issuer: str,
    keyPath: str,
    certificatePath: str,
    clock: IReactorTime,
    lifetime: int = 300,
) -> TokenIssuer:
    """
    A L{TokenIssuer} from the files C{gen-token-auth-cert} writes.

    @raise ValueError: A file is missing or unusable, or the two do not
        belong together; the message names the file.
    """
    return TokenIssuer(
        issuer,
        loadSigningKey(keyPath),
        loadCertificates(certificatePath, "token certificate"),
        clock,
        lifetime,
    )


def generateIssuerKeyAndCertificate(
    issuer: str,
    now: datetime.datetime | None = None,
    days: int = 3650,
) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    """
    A new P-256 key and a self-signed certificate for it with C{CN=issuer},
    valid for ten years: what a registry's C{rootcertbundle} holds.
    """
    key = ec.generate_private_key(ec.SECP256R1())
    return key, selfSignedCertificate(key, issuer, now, days)


def selfSignedCertificate(
    key: ec.EllipticCurvePrivateKey,
    issuer: str,
    now: datetime.datetime | None = None,
    days: int = 3650,
) -> x509.Certificate:
    """
    A self-signed certificate for C{key} with C{CN=issuer}, valid from a
    day ago (clock skew) for C{days} days.
    """
    if now is None:
        now = datetime.datetime.now(datetime.timezone.utc)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, issuer)])
    certificate = selfSignedBuilder(
        key,
        name,
        now - datetime.timedelta(days=1),
        now + datetime.timedelta(days=days),
    ).sign(key, hashes.SHA256())
    return certificate


def loadOrCreateIssuer(
    directory: str,
    issuer: str,
    clock: IReactorTime,
    lifetime: int = 300,
    basename: str = "token-signing",
) -> TokenIssuer:
    """
    The issuer of regproxy's own tokens when no key is given: a key and
    certificate kept in the state directory (C{token-signing.pem}, mode
    0600, and C{token-signing.crt}), made on first use.  Instances sharing
    the directory (or a copy of the two files) verify each other's tokens.

    @raise ValueError: A file exists but cannot be used.
    """
    os.makedirs(directory, mode=0o700, exist_ok=True)
    keyPath = os.path.join(directory, basename + ".pem")
    certificatePath = os.path.join(directory, basename + ".crt")
    if not os.path.exists(keyPath):
        writeExclusively(
            keyPath, privateKeyPEM(ec.generate_private_key(ec.SECP256R1())), 0o600
        )
    key = loadSigningKey(keyPath)
    if not os.path.exists(certificatePath):
        writeExclusively(
            certificatePath,
            certificatePEM(selfSignedCertificate(key, issuer)),
            0o644,
        )
    return TokenIssuer(
        issuer,
        key,
        loadCertificates(certificatePath, "token certificate"),
        clock,
        lifetime,
    )


OPENBALENA_VARIABLES = (
    "REGISTRY_TOKEN_AUTH_CERT",
    "REGISTRY_TOKEN_AUTH_CERT_KEY",
    "REGISTRY_TOKEN_AUTH_CERT_KID",
    "REGISTRY_TOKEN_AUTH_CERT_ISSUER",
    "REGISTRY_TOKEN_AUTH_JWT_ALGO",
)


def _base64Variable(environ: Mapping[str, str], name: str) -> bytes:
    try:
        return base64.b64decode("".join(environ[name].split()), validate=True)
    except (binascii.Error, ValueError):
        # Never echo the value: it may be the private key.
        raise ValueError(f"{name} is not base64 (use base64 -w0 FILE)") from None


def issuerFromOpenBalenaEnvironment(
    environ: Mapping[str, str],
    clock: IReactorTime,
    lifetime: int = 300,
) -> TokenIssuer | None:
    """
    A L{TokenIssuer} from openBalena's registry variables, or L{None} when
    none of them is set.

    C{REGISTRY_TOKEN_AUTH_CERT} and C{_CERT_KEY} hold the base64 of the
    C{.crt} and C{.pem} files, C{_CERT_KID} the base64 of the C{.kid} file
    (checked against the key when given), C{_CERT_ISSUER} the issuer name,
    C{_JWT_ALGO} the algorithm (only C{ES256}).

    @raise ValueError: A variable is missing or unusable; the message names
        it and never shows its value.
    """
    if not any(environ.get(name) for name in OPENBALENA_VARIABLES):
        return None
    for name in (
        "REGISTRY_TOKEN_AUTH_CERT",
        "REGISTRY_TOKEN_AUTH_CERT_KEY",
        "REGISTRY_TOKEN_AUTH_CERT_ISSUER",
    ):
        if not environ.get(name):
            raise ValueError(
                f"{name} is not set (the REGISTRY_TOKEN_AUTH_* variables go together)"
            )
    algorithm = environ.get("REGISTRY_TOKEN_AUTH_JWT_ALGO") or ALGORITHM
    if algorithm != ALGORITHM:
        raise ValueError(f"REGISTRY_TOKEN_AUTH_JWT_ALGO: only {ALGORITHM} is supported")
    key = parseSigningKey(
        _base64Variable(environ, "REGISTRY_TOKEN_AUTH_CERT_KEY"),
        "REGISTRY_TOKEN_AUTH_CERT_KEY",
    )
    certificates = parseCertificates(
        _base64Variable(environ, "REGISTRY_TOKEN_AUTH_CERT"),
        "REGISTRY_TOKEN_AUTH_CERT",
    )
    if environ.get("REGISTRY_TOKEN_AUTH_CERT_KID"):
        expected = (
            _base64Variable(environ, "REGISTRY_TOKEN_AUTH_CERT_KID")
            .decode("ascii", "replace")
            .strip()
        )
        actual = keyID(key.public_key())
        if expected != actual:
            raise ValueError(
                f"REGISTRY_TOKEN_AUTH_CERT_KID is {expected!r} but the key's kid is "
                f"{actual!r}"
            )
    try:
        return TokenIssuer(
            environ["REGISTRY_TOKEN_AUTH_CERT_ISSUER"],
            key,
            certificates,
            clock,
            lifetime,
        )
    except ValueError as e:
        raise ValueError(f"REGISTRY_TOKEN_AUTH_CERT and _CERT_KEY: {e}") from None
