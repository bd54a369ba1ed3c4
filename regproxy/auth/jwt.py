# -*- test-case-name: tests.unit.test_tokens -*-
"""
Issue and verify the ES256 JSON Web Tokens of the registry token protocol.

A distribution registry in token mode accepts a token when its header names
the signing key the way the registry looks keys up (2.x: C{x5c} chained to
its C{rootcertbundle}, then the libtrust C{kid}; 3.x: C{x5c}, then the
RFC 7638 thumbprint), C{aud} is a string, C{exp} is present, and the ES256
signature is the raw C{r||s} pair rather than the DER that
C{cryptography} produces.  regproxy signs its own tokens the same way, so one
issuer serves a registry and regproxy's own front door.

C{cryptography} is used directly: the format is small, and doing it here
keeps the raw-signature conversion and the header in plain sight.
"""

from __future__ import annotations

import base64
import binascii
import datetime
import json
import math
import re
import secrets
from collections.abc import Iterable, Mapping
from typing import Any, TypeGuard

import attrs
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import (
    decode_dss_signature,
    encode_dss_signature,
)
from twisted.internet.interfaces import IReactorTime

from regproxy.auth.libtrust import base64url, keyID
from regproxy.names.scope import Scope
from regproxy.tls.pem import (
    isKeyOf,
)

ALGORITHM = "ES256"
_COORDINATE = 32  # bytes of r and of s for P-256
_REGISTERED = frozenset(["iss", "sub", "aud", "exp", "nbf", "iat", "jti", "access"])
_B64URL = re.compile(r"[A-Za-z0-9_-]*\Z")


class TokenError(Exception):
    """
    A token cannot be used.  The message says why, without the token.
    """


class BadToken(TokenError):
    """
    Malformed, not ES256, or its signature does not match.
    """


class ExpiredToken(TokenError):
    """
    Past its C{exp}, or before its C{nbf}.
    """


class ForeignToken(TokenError):
    """
    Signed by a key we do not know, or issued by someone else or for
    another audience.
    """


def _b64decode(text: str) -> bytes:
    if not _B64URL.match(text):
        raise BadToken("token is not base64url")
    try:
        return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (binascii.Error, ValueError):
        raise BadToken("token is not base64url") from None


def _jsonSegment(value: Mapping[str, Any]) -> str:
    return base64url(json.dumps(value, separators=(",", ":")).encode("utf-8"))


def accessClaim(scopes: Iterable[Scope]) -> list[dict[str, Any]]:
    """
    The C{access} claim for granted scopes, as distribution reads it
    (C{type}, C{class} when there is one, C{name}, C{actions}).
    """
    claim = []
    for scope in scopes:
        entry: dict[str, Any] = {"type": scope.resourceType}
        if scope.resourceClass is not None:
            entry["class"] = scope.resourceClass
        entry["name"] = scope.name
        entry["actions"] = list(scope.actions)
        claim.append(entry)
    return claim


def checkSigningKey(key: Any) -> None:
    if not isinstance(key, ec.EllipticCurvePrivateKey) or not isinstance(
        key.curve, ec.SECP256R1
    ):
        raise ValueError("ES256 needs a P-256 (prime256v1) EC private key")


@attrs.frozen
class IssuedToken:
    """
    A signed token and what a token response says about it.
    """

    token: str
    issuedAt: int
    expiresIn: int
    claims: Mapping[str, Any]


def _certificateTuple(
    certificates: Iterable[x509.Certificate],
) -> tuple[x509.Certificate, ...]:
    """
    C{tuple} with its element type spelled out, so the attrs plugin types
    L{TokenIssuer}'s C{chain} argument.
    """
    return tuple(certificates)


@attrs.frozen
class TokenIssuer:
    """
    Signs tokens with one key, naming it by its libtrust C{kid} and its
    certificate chain in C{x5c}.

    @ivar issuer: The C{iss} claim; the registry's C{auth.token.issuer}.
    @ivar key: A P-256 private key.
    @ivar chain: The certificate of C{key} first, then any intermediates.
    @ivar clock: Where the time comes from.
    @ivar lifetime: Seconds a token is valid for, unless told otherwise.
    """

    issuer: str
    key: ec.EllipticCurvePrivateKey = attrs.field(repr=False)
    chain: tuple[x509.Certificate, ...] = attrs.field(converter=_certificateTuple)
    clock: IReactorTime
    lifetime: int = 300

    def __attrs_post_init__(self) -> None:
        checkSigningKey(self.key)
        if not self.chain:
            raise ValueError("a token issuer needs the key's certificate")
        if not isKeyOf(self.key, self.chain[0]):
            raise ValueError("the certificate is not for this private key")

    @property
    def keyID(self) -> str:
        return keyID(self.key.public_key())

    def header(self) -> dict[str, Any]:
        return {
            "alg": ALGORITHM,
            "typ": "JWT",
            "kid": self.keyID,
            "x5c": [
                base64.b64encode(cert.public_bytes(serialization.Encoding.DER)).decode(
                    "ascii"
                )
                for cert in self.chain
            ],
        }

    def issue(
        self,
        subject: str | None,
        audience: str,
        access: Iterable[Scope] = (),
        extraClaims: Mapping[str, Any] | None = None,
        lifetime: int | None = None,
    ) -> IssuedToken:
        """
        Sign a token.

        @param subject: The account, or L{None} for an anonymous client (the
            C{sub} claim is then empty).
        @param audience: The service the token is for (a registry's
            C{auth.token.service}); always a string, as distribution 2.x
            requires.
        @param access: The granted scopes.
        @param extraClaims: More claims (for example sealed credentials);
            they may not replace the registered ones.
        @param lifetime: Seconds until C{exp}, if not L{TokenIssuer.lifetime}.
        """
        extra = dict(extraClaims or {})
        clash = _REGISTERED.intersection(extra)
        if clash:
            raise ValueError(f"extra claims may not replace {sorted(clash)}")
        now = int(self.clock.seconds())
        expiresIn = self.lifetime if lifetime is None else int(lifetime)
        claims: dict[str, Any] = {
            "iss": self.issuer,
            "sub": subject or "",
            "aud": audience,
            "exp": now + expiresIn,
            "nbf": now,
            "iat": now,
            "jti": secrets.token_urlsafe(18),
            "access": accessClaim(access),
        }
        claims.update(extra)
        signingInput = _jsonSegment(self.header()) + "." + _jsonSegment(claims)
        der = self.key.sign(signingInput.encode("ascii"), ec.ECDSA(hashes.SHA256()))
        r, s = decode_dss_signature(der)
        raw = r.to_bytes(_COORDINATE, "big") + s.to_bytes(_COORDINATE, "big")
        return IssuedToken(signingInput + "." + base64url(raw), now, expiresIn, claims)


@attrs.frozen
class TokenVerifier:
    """
    Checks tokens signed by keys we hold, for one issuer and audience.

    Only the keys given here are trusted, looked up by C{kid}; a
    certificate inside the token (C{x5c}) is never trusted on its own.

    @ivar keys: libtrust C{kid} to public key (several, for rotation).
    @ivar leeway: Seconds of clock difference tolerated for C{exp} and
        C{nbf}.
    """

    issuer: str
    audience: str
    keys: Mapping[str, ec.EllipticCurvePublicKey]
    clock: IReactorTime
    leeway: float = 30.0

    @classmethod
    def forKeys(
        cls,
        issuer: str,
        audience: str,
        publicKeys: Iterable[ec.EllipticCurvePublicKey],
        clock: IReactorTime,
        leeway: float = 30.0,
    ) -> TokenVerifier:
        return cls(issuer, audience, {keyID(k): k for k in publicKeys}, clock, leeway)

    def verify(self, token: str) -> dict[str, Any]:
        """
        Return the claims of a valid token.

        @raise BadToken: Malformed, not ES256, or a wrong signature.
        @raise ForeignToken: Unknown key, issuer or audience.
        @raise ExpiredToken: Outside its validity, beyond the leeway.
        """
        if not isinstance(token, str) or token.count(".") != 2:
            raise BadToken("token is not a signed JWT")
        headerText, claimsText, signatureText = token.split(".")
        header = self._json(headerText, "header")
        if header.get("alg") != ALGORITHM:
            raise BadToken(f"token algorithm must be {ALGORITHM}")
        kid = header.get("kid")
        key = self.keys.get(kid) if isinstance(kid, str) else None
        if key is None:
            raise ForeignToken("token is signed by a key we do not know")
        raw = _b64decode(signatureText)
        if len(raw) != 2 * _COORDINATE:
            raise BadToken("token signature has the wrong length")
        der = encode_dss_signature(
            int.from_bytes(raw[:_COORDINATE], "big"),
            int.from_bytes(raw[_COORDINATE:], "big"),
        )
        try:
            key.verify(
                der,
                (headerText + "." + claimsText).encode("ascii"),
                ec.ECDSA(hashes.SHA256()),
            )
        except InvalidSignature:
            raise BadToken("token signature does not match") from None
        claims = self._json(claimsText, "claims")
        if claims.get("iss") != self.issuer:
            raise ForeignToken("token is from another issuer")
        audience = claims.get("aud")
        audiences = audience if isinstance(audience, list) else [audience]
        if self.audience not in audiences:
            raise ForeignToken("token is for another service")
        now = self.clock.seconds()
        expires = claims.get("exp")
        if not _isNumber(expires):
            raise BadToken("token has no expiry")
        if now > expires + self.leeway:
            raise ExpiredToken("token has expired")
        notBefore = claims.get("nbf")
        if notBefore is not None:
            if not _isNumber(notBefore):
                raise BadToken("token has a malformed nbf")
            if now < notBefore - self.leeway:
                raise ExpiredToken("token is not valid yet")
        return claims

    @staticmethod
    def _json(segment: str, what: str) -> dict[str, Any]:
        try:
            value = json.loads(_b64decode(segment))
        except (ValueError, RecursionError):
            raise BadToken(f"token {what} is not JSON") from None
        if not isinstance(value, dict):
            raise BadToken(f"token {what} is not a JSON object")
        return value


def _isNumber(value: Any) -> TypeGuard[int | float]:
    return (
        isinstance(value, (int, float))
        and not isinstance(value, bool)
        and math.isfinite(value)
    )


def tokenResponseBody(issued: IssuedToken, refreshToken: str | None = None) -> bytes:
    """
    The JSON body of a token endpoint's answer, with both the Docker
    (C{token}) and OAuth2 (C{access_token}) names for the token.
    """
    issuedAt = datetime.datetime.fromtimestamp(issued.issuedAt, datetime.timezone.utc)
    body: dict[str, Any] = {
        "token": issued.token,
        "access_token": issued.token,
        "expires_in": int(issued.expiresIn),
        "issued_at": issuedAt.strftime("%Y-%m-%dT%H:%M:%SZ"),
    }
    if refreshToken is not None:
        body["refresh_token"] = refreshToken
    return json.dumps(body).encode("utf-8")


# Keys and certificates.
