# -*- test-case-name: tests.unit.test_pem -*-
"""
The one place regproxy reads and writes PEM certificates and keys, and
compares them: the TLS listener, the token issuer, the upstream's CA file
and the commands all go through here, so a file is read, refused and
written the same way everywhere.

Errors are L{CertificateError}s (a L{ValueError}) with one line that names
the file and says why; callers add where the file came from.
"""

from __future__ import annotations

import os
import tempfile
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization


class CertificateError(ValueError):
    """
    A certificate or key cannot be used; the message is one line that names
    the file and says why.
    """


def readFile(path: str, what: str) -> bytes:
    """
    The bytes of C{path}, a C{what} ("certificate", "key", ...).

    @raise CertificateError: It cannot be read.
    """
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError as e:
        raise CertificateError(f"cannot read {what} {path}: {e.strerror}") from None


def parseCertificates(data: bytes, where: str) -> tuple[x509.Certificate, ...]:
    """
    Every PEM certificate in C{data}, in order (a leaf, then its chain).

    @param where: What to call C{data} in the message, e.g. C{"certificate
        /etc/x.crt"}.
    @raise CertificateError: There is none.
    """
    try:
        certificates = tuple(x509.load_pem_x509_certificates(data))
    except ValueError:
        certificates = ()
    if not certificates:
        raise CertificateError(f"{where} holds no PEM certificate")
    return certificates


def parsePrivateKey(data: bytes, where: str) -> Any:
    """
    The unencrypted PEM private key in C{data} (PKCS#8, SEC1 or PKCS#1).

    @raise CertificateError: There is none, it is encrypted, or it cannot
        be read.
    """
    if b"PRIVATE KEY-----" not in data:
        raise CertificateError(f"{where} holds no PEM private key")
    try:
        return serialization.load_pem_private_key(data, password=None)
    except TypeError:
        raise CertificateError(
            f"{where} is encrypted; give an unencrypted key"
        ) from None
    except Exception as e:  # ValueError, UnsupportedAlgorithm, ...: all one story
        reason = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise CertificateError(f"{where} cannot be read: {reason}") from None


def loadCertificates(
    path: str, what: str = "certificate"
) -> tuple[x509.Certificate, ...]:
    """
    L{parseCertificates} of the file at C{path}.
    """
    return parseCertificates(readFile(path, what), f"{what} {path}")


def loadPrivateKey(path: str, what: str = "key") -> Any:
    """
    L{parsePrivateKey} of the file at C{path}.
    """
    return parsePrivateKey(readFile(path, what), f"{what} {path}")


def certificatePEM(certificate: x509.Certificate) -> bytes:
    return certificate.public_bytes(serialization.Encoding.PEM)


def privateKeyPEM(key: Any) -> bytes:
    """
    C{key} as unencrypted PKCS#8, the form every client and server reads.
    """
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _publicDER(publicKey: Any) -> bytes:
    return publicKey.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def isKeyOf(key: Any, certificate: x509.Certificate) -> bool:
    """
    Whether C{certificate} certifies the public half of the private C{key}.
    """
    try:
        publicKey = key.public_key()
    except AttributeError:
        return False
    return _publicDER(publicKey) == _publicDER(certificate.public_key())


def fingerprint(certificate: x509.Certificate) -> str:
    """
    The SHA-256 fingerprint as C{openssl x509 -fingerprint -sha256} prints it,
    so users can compare the two by eye.
    """
    digest = certificate.fingerprint(hashes.SHA256())
    return ":".join(f"{byte:02X}" for byte in digest)


def isCA(certificate: x509.Certificate) -> bool:
    """
    Whether C{certificate} may sign others (C{basicConstraints CA:TRUE}).
    """
    try:
        constraints = certificate.extensions.get_extension_for_class(
            x509.BasicConstraints
        ).value
    except x509.ExtensionNotFound:
        return False
    return constraints.ca


def nameMatches(pattern: str, hostname: str) -> bool:
    """
    Whether a certificate's DNS name C{pattern} covers C{hostname}, as
    clients check it (RFC 6125): equal ignoring case and a final dot, or
    C{*.rest} covering exactly one more label in front of C{rest}.
    """
    pattern = pattern.rstrip(".").lower()
    hostname = hostname.rstrip(".").lower()
    if pattern == hostname:
        return True
    if pattern.startswith("*."):
        head, _, rest = hostname.partition(".")
        return bool(head) and rest == pattern[2:]
    return False


def writeAtomically(path: str, data: bytes, mode: int) -> None:
    """
    Replace C{path} with C{data} (permissions C{mode}) in one rename, so a
    reader sees the old file or the new one, never half of one.

    @raise OSError: The directory cannot be written.
    """
    directory = os.path.dirname(path) or "."
    fd, temporary = tempfile.mkstemp(dir=directory, prefix=".tmp-")
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(temporary, path)
    except BaseException:
        try:
            os.unlink(temporary)
        except OSError:
            pass
        raise


def writeExclusively(path: str, data: bytes, mode: int) -> bool:
    """
    Create C{path} holding C{data}, unless it exists.

    @return: L{False} when it already existed (someone else made it first,
        and theirs is kept).
    @raise OSError: The directory cannot be written.
    """
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    except FileExistsError:
        return False
    try:
        os.fchmod(fd, mode)
        os.write(fd, data)
    finally:
        os.close(fd)
    return True
