# -*- test-case-name: tests.unit.test_libtrust -*-
"""
Key identifiers that registries use to find the key a token was signed with.

The distribution registry 2.x looks a token's C{kid} up among the keys of its
C{rootcertbundle} by the I{libtrust fingerprint}; distribution 3.x uses the
RFC 7638 JWK thumbprint instead.  We put the libtrust one in C{kid} and the
certificate in C{x5c}, which both versions accept.
"""

from __future__ import annotations

import base64
import hashlib
import json
from typing import Any

from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

_CURVES = {"secp256r1": "P-256", "secp384r1": "P-384", "secp521r1": "P-521"}


def base64url(data: bytes) -> str:
    """
    Unpadded base64url, as JOSE writes binary values.
    """
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def keyID(publicKey: Any) -> str:
    """
    The libtrust fingerprint of a public key: SHA-256 of its DER
    SubjectPublicKeyInfo, the first 240 bits in base32, in twelve groups of
    four joined by colons (C{ABCD:EFGH:...}).
    """
    der = publicKey.public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)
    encoded = base64.b32encode(hashlib.sha256(der).digest()[:30]).decode("ascii")
    return ":".join(encoded[i : i + 4] for i in range(0, len(encoded), 4))


def _intBytes(number: int, length: int | None = None) -> bytes:
    if length is None:
        length = max(1, (number.bit_length() + 7) // 8)
    return number.to_bytes(length, "big")


def publicJWK(publicKey: Any) -> dict[str, str]:
    """
    The required members of a public key's JWK (RFC 7517), the ones the
    RFC 7638 thumbprint is computed over.
    """
    if isinstance(publicKey, ec.EllipticCurvePublicKey):
        curve = _CURVES.get(publicKey.curve.name)
        if curve is None:
            raise ValueError(f"unsupported curve {publicKey.curve.name}")
        ecNumbers = publicKey.public_numbers()
        size = (publicKey.curve.key_size + 7) // 8
        return {
            "crv": curve,
            "kty": "EC",
            "x": base64url(_intBytes(ecNumbers.x, size)),
            "y": base64url(_intBytes(ecNumbers.y, size)),
        }
    if isinstance(publicKey, rsa.RSAPublicKey):
        rsaNumbers = publicKey.public_numbers()
        return {
            "e": base64url(_intBytes(rsaNumbers.e)),
            "kty": "RSA",
            "n": base64url(_intBytes(rsaNumbers.n)),
        }
    raise ValueError(f"unsupported key type {type(publicKey).__name__}")


def jwkThumbprint(publicKey: Any) -> str:
    """
    The RFC 7638 thumbprint: SHA-256 of the required JWK members serialized
    with sorted keys and no whitespace, in unpadded base64url.
    """
    canonical = json.dumps(publicJWK(publicKey), sort_keys=True, separators=(",", ":"))
    return base64url(hashlib.sha256(canonical.encode("ascii")).digest())
