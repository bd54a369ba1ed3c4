# -*- test-case-name: tests.integration.test_forward_token -*-
"""
A small token server that a distribution 2.8 registry trusts, for tests.

It signs ES256 JWTs carrying an C{x5c} chain (one self-signed certificate)
and the libtrust C{kid}, which is what C{auth.token.rootcertbundle} checks.
It is test scaffolding: users and passwords are kept in plain text.
"""

from __future__ import annotations

import base64
import datetime
import hashlib
import json
import os
import uuid
from collections.abc import Mapping

import attrs
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
from twisted.logger import Logger
from twisted.web.resource import Resource
from twisted.web.server import Site

from regproxy.auth.issuerkeys import generateIssuerKeyAndCertificate

ALL_ACTIONS = frozenset({"pull", "push", "delete", "*"})


def libtrustKeyID(publicKey: ec.EllipticCurvePublicKey) -> str:
    """
    The libtrust fingerprint distribution 2.x uses as a key id: SHA-256 of
    the DER SubjectPublicKeyInfo, first 240 bits, base32, groups of four
    joined by colons.
    """
    der = publicKey.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    digest = hashlib.sha256(der).digest()[:30]
    text = base64.b32encode(digest).decode("ascii").rstrip("=")
    return ":".join(text[i : i + 4] for i in range(0, len(text), 4))


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


@attrs.frozen
class SigningKey:
    """
    An ES256 key with the self-signed certificate the registry trusts.
    """

    privateKey: ec.EllipticCurvePrivateKey
    certificate: x509.Certificate

    @classmethod
    def generate(cls, commonName: str = "regproxy test token issuer") -> SigningKey:
        key, certificate = generateIssuerKeyAndCertificate(commonName)
        return cls(key, certificate)

    @property
    def kid(self) -> str:
        return libtrustKeyID(self.privateKey.public_key())

    def certificatePEM(self) -> bytes:
        return self.certificate.public_bytes(serialization.Encoding.PEM)

    def sign(self, claims: Mapping[str, object]) -> str:
        """
        A compact JWS of C{claims}, with the raw r||s signature JOSE wants
        (cryptography gives DER).
        """
        header = {
            "typ": "JWT",
            "alg": "ES256",
            "kid": self.kid,
            "x5c": [
                base64.b64encode(
                    self.certificate.public_bytes(serialization.Encoding.DER)
                ).decode("ascii")
            ],
        }
        signingInput = (
            _b64url(json.dumps(header, separators=(",", ":")).encode())
            + "."
            + _b64url(json.dumps(claims, separators=(",", ":")).encode())
        )
        der = self.privateKey.sign(
            signingInput.encode("ascii"), ec.ECDSA(hashes.SHA256())
        )
        r, s = decode_dss_signature(der)
        return (
            signingInput + "." + _b64url(r.to_bytes(32, "big") + s.to_bytes(32, "big"))
        )


def parseScope(scope: str) -> tuple[str, str, tuple[str, ...]] | None:
    """
    Split C{type:name:actions}; the name may itself hold colons (a host
    with a port), so type is before the first colon and actions after the
    last.
    """
    kind, sep, rest = scope.partition(":")
    name, sep2, actions = rest.rpartition(":")
    if not sep or not sep2 or not kind or not name:
        return None
    return kind, name, tuple(a for a in actions.split(",") if a)


@attrs.define
class TokenRequest:
    """
    What one request to the token server asked for and got; tests read
    these to see that the token dance really happened.
    """

    method: str
    account: str | None
    scopes: tuple[str, ...]
    service: str | None
    code: int
    granted: tuple[dict, ...] = ()


class TokenResource(Resource):
    """
    C{GET} (query: C{service}, repeated C{scope}, C{account}) and C{POST}
    (OAuth form with C{grant_type=password}) answer a signed token; bad
    Basic credentials get 401.
    """

    isLeaf = True
    _log = Logger()

    def __init__(
        self,
        key: SigningKey,
        issuer: str,
        service: str,
        users: Mapping[str, str],
        clock,
        anonymous: str = "none",
        lifetime: int = 300,
    ) -> None:
        super().__init__()
        self.key = key
        self.issuer = issuer
        self.service = service
        self.users = dict(users)
        self.clock = clock
        self.anonymous = anonymous
        self.lifetime = lifetime
        self.requests: list[TokenRequest] = []

    def _basic(self, request) -> tuple[str, str] | None | bool:
        header = request.getHeader(b"authorization")
        if header is None:
            return None
        scheme, _, value = header.partition(b" ")
        if scheme.lower() != b"basic":
            return False
        try:
            user, _, password = base64.b64decode(value.strip()).decode().partition(":")
        except Exception:
            return False
        return user, password

    def _args(self, request, name: bytes) -> list[str]:
        return [v.decode("utf-8", "replace") for v in request.args.get(name, [])]

    def render_GET(self, request) -> bytes:
        return self._answer(request, b"GET")

    def render_POST(self, request) -> bytes:
        return self._answer(request, b"POST")

    def _answer(self, request, method: bytes) -> bytes:
        scopes = tuple(self._args(request, b"scope"))
        if method == b"POST":
            # OAuth form: scope is space-separated, credentials in the form.
            scopes = tuple(s for line in scopes for s in line.split(" ") if s)
        service = next(iter(self._args(request, b"service")), None)
        user: str | None = None
        credentials = self._basic(request)
        if method == b"POST" and credentials is None:
            if self._args(request, b"grant_type") == ["password"]:
                credentials = (
                    (self._args(request, b"username") or [""])[0],
                    (self._args(request, b"password") or [""])[0],
                )
        if credentials is False or (
            credentials is not None and self.users.get(credentials[0]) != credentials[1]  # type: ignore[index]
        ):
            self.requests.append(
                TokenRequest(method.decode(), None, scopes, service, 401)
            )
            request.setResponseCode(401)
            request.setHeader(b"content-type", b"application/json")
            return json.dumps(
                {"errors": [{"code": "UNAUTHORIZED", "message": "bad credentials"}]}
            ).encode()
        if credentials is not None:
            user = credentials[0]  # type: ignore[index]
        access = []
        for scope in scopes:
            parsed = parseScope(scope)
            if parsed is None:
                continue
            kind, name, actions = parsed
            if user is not None:
                allowed = [a for a in actions if a in ALL_ACTIONS]
            elif self.anonymous == "pull":
                allowed = [a for a in actions if a == "pull"]
            else:
                allowed = []
            access.append({"type": kind, "name": name, "actions": allowed})
        now = int(self.clock.seconds())
        claims = {
            "iss": self.issuer,
            "sub": user or "",
            "aud": self.service,
            "exp": now + self.lifetime,
            "nbf": now - 10,
            "iat": now,
            "jti": uuid.uuid4().hex,
            "access": access,
        }
        token = self.key.sign(claims)
        self.requests.append(
            TokenRequest(method.decode(), user, scopes, service, 200, tuple(access))
        )
        issuedAt = datetime.datetime.fromtimestamp(now, datetime.timezone.utc)
        request.setHeader(b"content-type", b"application/json")
        return json.dumps(
            {
                "token": token,
                "access_token": token,
                "expires_in": self.lifetime,
                "issued_at": issuedAt.strftime("%Y-%m-%dT%H:%M:%SZ"),
            }
        ).encode()


@attrs.frozen
class TokenServer:
    """
    A running token server.

    @ivar realm: The URL to put in the registry's C{auth.token.realm}.
    @ivar bundleFile: The PEM file for C{auth.token.rootcertbundle}.
    @ivar resource: The resource, whose C{requests} list records every
        request answered.
    """

    url: str
    realm: str
    service: str
    issuer: str
    bundleFile: str
    kid: str
    resource: TokenResource

    @property
    def requests(self) -> list[TokenRequest]:
        return self.resource.requests


def serveTokenResource(testCase, resource: Resource, reactor) -> str:
    """
    Serve C{resource} as C{/token} on a free loopback port until
    C{testCase} ends.

    @return: The server's base URL (the realm is this plus C{/token}).
    """
    root = Resource()
    root.putChild(b"token", resource)
    site = Site(root)
    site.noisy = False
    port = reactor.listenTCP(0, site, interface="127.0.0.1")
    testCase.addCleanup(port.stopListening)
    return f"http://127.0.0.1:{port.getHost().port}"


def startTokenServer(
    testCase,
    directory: str,
    users: Mapping[str, str],
    service: str = "regproxy-test-registry",
    issuer: str = "regproxy-test-issuer",
    anonymous: str = "none",
    reactor=None,
) -> TokenServer:
    """
    Listen on a free loopback port until C{testCase} ends.

    @param directory: Where to write the certificate bundle.
    @param users: User name to password; these get every action they ask.
    @param anonymous: C{"none"} or C{"pull"}: what a request without
        credentials is granted.
    """
    if reactor is None:
        from twisted.internet import reactor as _reactor

        reactor = _reactor
    key = SigningKey.generate()
    bundleFile = os.path.join(directory, "token-issuer.crt")
    with open(bundleFile, "wb") as f:
        f.write(key.certificatePEM())
    resource = TokenResource(key, issuer, service, users, reactor, anonymous)
    url = serveTokenResource(testCase, resource, reactor)
    return TokenServer(
        url, url + "/token", service, issuer, bundleFile, key.kid, resource
    )
