"""
Tests for L{regproxy.auth.jwt}.
"""

import base64
import datetime
import json
import os

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import (
    decode_dss_signature,
    encode_dss_signature,
)
from cryptography.x509.oid import NameOID
from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from regproxy.auth.issuerkeys import (
    generateIssuerKeyAndCertificate,
    issuerFromOpenBalenaEnvironment,
    loadIssuer,
    loadOrCreateIssuer,
    parseSigningKey,
)
from regproxy.auth.jwt import (
    BadToken,
    ExpiredToken,
    ForeignToken,
    IssuedToken,
    TokenError,
    TokenIssuer,
    TokenVerifier,
    tokenResponseBody,
)
from regproxy.auth.libtrust import base64url, keyID
from regproxy.names.scope import Scope
from regproxy.tls.pem import certificatePEM, parseCertificates, privateKeyPEM

NOW = 1_800_000_000


def ecKey(certificate: x509.Certificate) -> ec.EllipticCurvePublicKey:
    """
    The certificate's key, which for our tokens is always a P-256 one.
    """
    key = certificate.public_key()
    assert isinstance(key, ec.EllipticCurvePublicKey)
    return key


_KEY, _CERT = generateIssuerKeyAndCertificate("issuer.test")


def _decode(segment: str) -> bytes:
    return base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4))


def _parts(token: str) -> tuple[dict, dict, bytes]:
    header, claims, signature = token.split(".")
    return json.loads(_decode(header)), json.loads(_decode(claims)), _decode(signature)


def _issuer(clock: Clock, key=_KEY, cert=_CERT, name="issuer.test") -> TokenIssuer:
    return TokenIssuer(name, key, [cert], clock)


def _clock(now: float = NOW) -> Clock:
    clock = Clock()
    clock.advance(now)
    return clock


def _resign(token: str, header: dict, claims: dict, key=_KEY) -> str:
    """
    Sign edited parts with C{key}, the way an attacker or another issuer
    would.
    """
    signingInput = (
        base64url(json.dumps(header).encode())
        + "."
        + base64url(json.dumps(claims).encode())
    )
    r, s = decode_dss_signature(
        key.sign(signingInput.encode(), ec.ECDSA(hashes.SHA256()))
    )
    return signingInput + "." + base64url(r.to_bytes(32, "big") + s.to_bytes(32, "big"))


class IssueTests(SynchronousTestCase):
    """
    What a registry sees in our tokens.
    """

    def test_header(self) -> None:
        """
        The header is ES256, names the key by its libtrust kid and carries
        the certificate as the x5c leaf.
        """
        issued = _issuer(_clock()).issue("alice", "registry.test")
        header, _, _ = _parts(issued.token)
        self.assertEqual(list(header), ["alg", "typ", "kid", "x5c"])
        self.assertEqual(header["alg"], "ES256")
        self.assertEqual(header["typ"], "JWT")
        self.assertEqual(header["kid"], keyID(_KEY.public_key()))
        leaf = x509.load_der_x509_certificate(base64.b64decode(header["x5c"][0]))
        self.assertEqual(leaf, _CERT)

    def test_claims(self) -> None:
        """
        The claims hold issuer, subject, a string audience, times from the
        given clock, a jti and the access list.
        """
        issuer = _issuer(_clock())
        issued = issuer.issue(
            "alice",
            "registry.test",
            [
                Scope("repository", None, "foo/bar", ("pull", "push")),
                Scope("repository", "plugin", "p", ("pull",)),
            ],
        )
        _, claims, _ = _parts(issued.token)
        jti = claims.pop("jti")
        self.assertIsInstance(jti, str)
        self.assertGreaterEqual(len(jti), 16)
        self.assertEqual(
            claims,
            {
                "iss": "issuer.test",
                "sub": "alice",
                "aud": "registry.test",
                "exp": NOW + 300,
                "nbf": NOW,
                "iat": NOW,
                "access": [
                    {
                        "type": "repository",
                        "name": "foo/bar",
                        "actions": ["pull", "push"],
                    },
                    {
                        "type": "repository",
                        "class": "plugin",
                        "name": "p",
                        "actions": ["pull"],
                    },
                ],
            },
        )
        self.assertEqual((issued.issuedAt, issued.expiresIn), (NOW, 300))

    def test_anonymous(self) -> None:
        """
        An anonymous client's token has an empty subject and, without
        scopes (a login), an empty access list.
        """
        _, claims, _ = _parts(_issuer(_clock()).issue(None, "registry.test").token)
        self.assertEqual((claims["sub"], claims["access"]), ("", []))

    def test_uniqueJTI(self) -> None:
        """
        Two tokens issued in the same second have different jti.
        """
        issuer = _issuer(_clock())
        a = _parts(issuer.issue("a", "r").token)[1]["jti"]
        b = _parts(issuer.issue("a", "r").token)[1]["jti"]
        self.assertNotEqual(a, b)

    def test_rawSignature(self) -> None:
        """
        The signature is the 64-byte r||s pair, which the certificate's key
        verifies once turned back into DER.
        """
        token = _issuer(_clock()).issue("alice", "registry.test").token
        signingInput, _, signature = token.rpartition(".")
        raw = _decode(signature)
        self.assertEqual(len(raw), 64)
        der = encode_dss_signature(
            int.from_bytes(raw[:32], "big"), int.from_bytes(raw[32:], "big")
        )
        ecKey(_CERT).verify(der, signingInput.encode(), ec.ECDSA(hashes.SHA256()))

    def test_extraClaimsAndLifetime(self) -> None:
        """
        Extra claims are added and a lifetime can be given per token.
        """
        issued = _issuer(_clock()).issue(
            "a", "r", extraClaims={"creds": "sealed"}, lifetime=60
        )
        claims = _parts(issued.token)[1]
        self.assertEqual((claims["creds"], claims["exp"]), ("sealed", NOW + 60))
        self.assertEqual(issued.expiresIn, 60)

    def test_extraClaimsCannotOverride(self) -> None:
        """
        Extra claims may not replace a registered claim.
        """
        issuer = _issuer(_clock())
        self.assertRaises(
            ValueError, issuer.issue, "a", "r", extraClaims={"access": []}
        )

    def test_certificateMustMatchKey(self) -> None:
        """
        A certificate for another key is refused at construction.
        """
        _, otherCert = generateIssuerKeyAndCertificate("other")
        error = self.assertRaises(
            ValueError, TokenIssuer, "i", _KEY, [otherCert], _clock()
        )
        self.assertIn("not for this private key", str(error))

    def test_needsP256(self) -> None:
        """
        ES256 needs a P-256 key.
        """
        key = ec.generate_private_key(ec.SECP384R1())
        self.assertRaises(ValueError, TokenIssuer, "i", key, [_CERT], _clock())


class VerifyTests(SynchronousTestCase):
    """
    Checking our own tokens on the way back in.
    """

    def setUp(self) -> None:
        self.clock = _clock()
        self.issuer = _issuer(self.clock)
        self.verifier = TokenVerifier.forKeys(
            "issuer.test", "registry.test", [_KEY.public_key()], self.clock
        )

    def test_valid(self) -> None:
        """
        A fresh token gives back its claims.
        """
        issued = self.issuer.issue(
            "alice", "registry.test", [Scope("repository", None, "a", ("pull",))]
        )
        claims = self.verifier.verify(issued.token)
        self.assertEqual(claims["sub"], "alice")
        self.assertEqual(
            claims["access"], [{"type": "repository", "name": "a", "actions": ["pull"]}]
        )

    def test_expired(self) -> None:
        """
        A token is accepted up to the leeway after exp, and refused after.
        """
        token = self.issuer.issue("a", "registry.test").token
        self.clock.advance(300 + 30)
        self.verifier.verify(token)
        self.clock.advance(1)
        error = self.assertRaises(ExpiredToken, self.verifier.verify, token)
        self.assertEqual(str(error), "token has expired")

    def test_notYetValid(self) -> None:
        """
        A token from beyond the leeway in the future is refused.
        """
        token = _issuer(_clock(NOW + 31)).issue("a", "registry.test").token
        self.assertRaises(ExpiredToken, self.verifier.verify, token)
        self.clock.advance(1)
        self.verifier.verify(token)

    def test_otherAudience(self) -> None:
        """
        A token for another service is foreign.
        """
        token = self.issuer.issue("a", "elsewhere").token
        self.assertRaises(ForeignToken, self.verifier.verify, token)

    def test_otherIssuer(self) -> None:
        """
        A token naming another issuer is foreign, even signed by our key.
        """
        token = _issuer(self.clock, name="mallory").issue("a", "registry.test").token
        self.assertRaises(ForeignToken, self.verifier.verify, token)

    def test_otherKey(self) -> None:
        """
        A token signed by a key we do not hold is foreign.
        """
        key, cert = generateIssuerKeyAndCertificate("issuer.test")
        token = _issuer(self.clock, key, cert).issue("a", "registry.test").token
        self.assertRaises(ForeignToken, self.verifier.verify, token)

    def test_otherKeyClaimingOurKid(self) -> None:
        """
        A token signed by another key that claims our kid is bad.
        """
        token = self.issuer.issue("a", "registry.test").token
        header, claims, _ = _parts(token)
        forged = _resign(token, header, claims, ec.generate_private_key(ec.SECP256R1()))
        self.assertRaises(BadToken, self.verifier.verify, forged)

    def test_tampered(self) -> None:
        """
        Changing the claims breaks the signature.
        """
        token = self.issuer.issue("a", "registry.test").token
        header, claims, signature = token.split(".")
        edited = json.loads(_decode(claims))
        edited["sub"] = "root"
        tampered = ".".join([header, base64url(json.dumps(edited).encode()), signature])
        error = self.assertRaises(BadToken, self.verifier.verify, tampered)
        self.assertEqual(str(error), "token signature does not match")

    def test_algorithmNone(self) -> None:
        """
        An unsigned token (alg none) is bad.
        """
        token = self.issuer.issue("a", "registry.test").token
        header, claims, _ = _parts(token)
        header["alg"] = "none"
        unsigned = (
            base64url(json.dumps(header).encode()) + "." + token.split(".")[1] + "."
        )
        self.assertRaises(BadToken, self.verifier.verify, unsigned)

    def test_noExpiry(self) -> None:
        """
        A token without exp is bad, even well signed.
        """
        token = self.issuer.issue("a", "registry.test").token
        header, claims, _ = _parts(token)
        del claims["exp"]
        self.assertRaises(
            BadToken, self.verifier.verify, _resign(token, header, claims)
        )

    def test_nonFiniteExpiry(self) -> None:
        """
        An exp of NaN or Infinity (which Python's JSON reader accepts) is
        bad, not valid forever.
        """
        token = self.issuer.issue("a", "registry.test").token
        header, claims, _ = _parts(token)
        for value in ["NaN", "Infinity"]:
            signingInput = (
                base64url(json.dumps(header).encode())
                + "."
                + base64url(
                    json.dumps(claims).replace(str(claims["exp"]), value).encode()
                )
            )
            r, s = decode_dss_signature(
                _KEY.sign(signingInput.encode(), ec.ECDSA(hashes.SHA256()))
            )
            forged = (
                signingInput
                + "."
                + base64url(r.to_bytes(32, "big") + s.to_bytes(32, "big"))
            )
            self.assertRaises(BadToken, self.verifier.verify, forged)

    def test_deeplyNested(self) -> None:
        """
        A deeply nested header is bad, not a crash.
        """
        header = base64url(b"[" * 100000)
        self.assertRaises(BadToken, self.verifier.verify, header + ".e30.")

    def test_audienceList(self) -> None:
        """
        An audience list holding our service is accepted.
        """
        token = self.issuer.issue("a", "registry.test").token
        header, claims, _ = _parts(token)
        claims["aud"] = ["x", "registry.test"]
        self.verifier.verify(_resign(token, header, claims))

    @settings(max_examples=300, deadline=None)
    @given(st.one_of(st.text(), st.text("abcXYZ0123_-.", max_size=80)))
    def test_garbage(self, text: str) -> None:
        """
        Any text is either refused with a L{TokenError} or is a token.
        """
        try:
            self.verifier.verify(text)
        except TokenError:
            pass

    @settings(max_examples=100, deadline=None)
    @given(st.binary(max_size=64), st.integers(0, 2))
    def test_garbageSegment(self, data: bytes, which: int) -> None:
        """
        Replacing any one segment of a good token with arbitrary bytes gives
        a L{TokenError}, never another exception.
        """
        parts = self.issuer.issue("a", "registry.test").token.split(".")
        parts[which] = base64url(data)
        self.assertRaises(TokenError, self.verifier.verify, ".".join(parts))


class ResponseTests(SynchronousTestCase):
    """
    The token endpoint's answer.
    """

    def test_body(self) -> None:
        """
        The body has the token under both names, an integer lifetime and
        an RFC 3339 UTC issue time.
        """
        body = json.loads(tokenResponseBody(IssuedToken("T", NOW, 300, {})))
        self.assertEqual(
            body,
            {
                "token": "T",
                "access_token": "T",
                "expires_in": 300,
                "issued_at": "2027-01-15T08:00:00Z",
            },
        )

    def test_refreshToken(self) -> None:
        """
        A refresh token is included only when given.
        """
        body = json.loads(tokenResponseBody(IssuedToken("T", NOW, 300, {}), "R"))
        self.assertEqual(body["refresh_token"], "R")


class KeyFileTests(SynchronousTestCase):
    """
    Generating and loading the key and certificate.
    """

    def test_generated(self) -> None:
        """
        The generated certificate is self-signed with CN=issuer, for the
        generated P-256 key, and valid for ten years.
        """
        now = datetime.datetime(2026, 1, 1, tzinfo=datetime.timezone.utc)
        key, cert = generateIssuerKeyAndCertificate("auth.example", now)
        self.assertIsInstance(key.curve, ec.SECP256R1)
        self.assertEqual(
            cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value,
            "auth.example",
        )
        self.assertEqual(cert.subject, cert.issuer)
        self.assertEqual(cert.public_key(), key.public_key())
        cert.verify_directly_issued_by(cert)
        self.assertEqual(cert.not_valid_after_utc - now, datetime.timedelta(days=3650))

    def test_roundTripFiles(self) -> None:
        """
        PEM files written from a generated pair load into an issuer whose
        tokens the certificate's key verifies.
        """
        directory = self.mktemp()
        os.mkdir(directory)
        keyPath, certPath = (
            os.path.join(directory, "k.pem"),
            os.path.join(directory, "c.crt"),
        )
        with open(keyPath, "wb") as f:
            f.write(privateKeyPEM(_KEY))
        with open(certPath, "wb") as f:
            f.write(certificatePEM(_CERT))
        clock = _clock()
        issuer = loadIssuer("issuer.test", keyPath, certPath, clock)
        token = issuer.issue("a", "r").token
        verifier = TokenVerifier.forKeys(
            "issuer.test",
            "r",
            [ecKey(c) for c in parseCertificates(certificatePEM(_CERT), "c")],
            clock,
        )
        self.assertEqual(verifier.verify(token)["sub"], "a")

    def test_sec1Key(self) -> None:
        """
        An C{EC PRIVATE KEY} (what C{openssl ecparam -genkey} writes) loads.
        """
        from cryptography.hazmat.primitives import serialization

        pem = _KEY.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.TraditionalOpenSSL,
            serialization.NoEncryption(),
        )
        self.assertIn(b"EC PRIVATE KEY", pem)
        self.assertEqual(
            parseSigningKey(pem, "k").private_numbers(), _KEY.private_numbers()
        )

    def test_missingFile(self) -> None:
        """
        A missing file is named in the error.
        """
        error = self.assertRaises(
            ValueError,
            loadIssuer,
            "i",
            "/nonexistent/k.pem",
            "/nonexistent/c.crt",
            _clock(),
        )
        self.assertIn("/nonexistent/k.pem", str(error))

    def test_notAKey(self) -> None:
        """
        A certificate given as the key is refused with a reason.
        """
        error = self.assertRaises(
            ValueError, parseSigningKey, certificatePEM(_CERT), "token key k.pem"
        )
        self.assertEqual(str(error), "token key k.pem holds no PEM private key")
        p384 = ec.generate_private_key(ec.SECP384R1())
        error = self.assertRaises(
            ValueError, parseSigningKey, privateKeyPEM(p384), "token key k.pem"
        )
        self.assertEqual(
            str(error),
            "token key k.pem: ES256 needs a P-256 (prime256v1) EC private key",
        )
        error = self.assertRaises(
            ValueError, parseCertificates, b"nothing here", "token certificate c"
        )
        self.assertEqual(str(error), "token certificate c holds no PEM certificate")


class StateDirectoryIssuerTests(SynchronousTestCase):
    """
    The key kept in the state directory when none is given.
    """

    def test_createdThenReused(self) -> None:
        """
        The first call makes a 0600 key and a certificate; the next (another
        instance sharing the directory) uses the same key, so each verifies
        the other's tokens.
        """
        directory = self.mktemp()
        clock = _clock()
        first = loadOrCreateIssuer(directory, "regproxy", clock)
        self.assertEqual(
            os.stat(os.path.join(directory, "token-signing.pem")).st_mode & 0o777, 0o600
        )
        second = loadOrCreateIssuer(directory, "regproxy", clock)
        self.assertEqual(first.keyID, second.keyID)
        verifier = TokenVerifier.forKeys(
            "regproxy", "proxy", [ecKey(second.chain[0])], clock
        )
        self.assertEqual(verifier.verify(first.issue("a", "proxy").token)["sub"], "a")

    def test_certificateRemade(self) -> None:
        """
        A missing certificate is made again for the existing key.
        """
        directory = self.mktemp()
        first = loadOrCreateIssuer(directory, "regproxy", _clock())
        os.remove(os.path.join(directory, "token-signing.crt"))
        second = loadOrCreateIssuer(directory, "regproxy", _clock())
        self.assertEqual(first.keyID, second.keyID)

    def test_brokenKey(self) -> None:
        """
        A key file that is not a key is an error naming it, not replaced.
        """
        directory = self.mktemp()
        os.mkdir(directory)
        path = os.path.join(directory, "token-signing.pem")
        with open(path, "w") as f:
            f.write("junk")
        error = self.assertRaises(
            ValueError, loadOrCreateIssuer, directory, "r", _clock()
        )
        self.assertIn(path, str(error))


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


class OpenBalenaEnvironmentTests(SynchronousTestCase):
    """
    openBalena's REGISTRY_TOKEN_AUTH_* variables.
    """

    def environ(self, **changes: str) -> dict[str, str]:
        environ = {
            "REGISTRY_TOKEN_AUTH_CERT": _b64(certificatePEM(_CERT)),
            "REGISTRY_TOKEN_AUTH_CERT_KEY": _b64(privateKeyPEM(_KEY)),
            "REGISTRY_TOKEN_AUTH_CERT_KID": _b64(keyID(_KEY.public_key()).encode()),
            "REGISTRY_TOKEN_AUTH_CERT_ISSUER": "api.example.com",
            "REGISTRY_TOKEN_AUTH_JWT_ALGO": "ES256",
        }
        environ.update(changes)
        return {k: v for k, v in environ.items() if v is not None}

    def test_none(self) -> None:
        """
        Without the variables there is no issuer.
        """
        self.assertIsNone(issuerFromOpenBalenaEnvironment({"PATH": "/bin"}, _clock()))

    def test_issuer(self) -> None:
        """
        The variables give an issuer with that name and key.
        """
        issuer = issuerFromOpenBalenaEnvironment(self.environ(), _clock())
        assert issuer is not None
        self.assertEqual(issuer.issuer, "api.example.com")
        self.assertEqual(issuer.keyID, keyID(_KEY.public_key()))

    def test_kidFileWithNewline(self) -> None:
        """
        A kid file that ends with a newline is fine.
        """
        kid = _b64(keyID(_KEY.public_key()).encode() + b"\n")
        self.assertIsNotNone(
            issuerFromOpenBalenaEnvironment(
                self.environ(REGISTRY_TOKEN_AUTH_CERT_KID=kid), _clock()
            )
        )

    def test_errors(self) -> None:
        """
        Mistakes name the variable and never show the key.
        """
        secret = self.environ()["REGISTRY_TOKEN_AUTH_CERT_KEY"]
        otherKey, _ = generateIssuerKeyAndCertificate("x")
        cases = [
            (
                {"REGISTRY_TOKEN_AUTH_CERT_KEY": ""},
                "REGISTRY_TOKEN_AUTH_CERT_KEY is not set",
            ),
            (
                {"REGISTRY_TOKEN_AUTH_CERT_KEY": "%%%"},
                "REGISTRY_TOKEN_AUTH_CERT_KEY is not base64",
            ),
            ({"REGISTRY_TOKEN_AUTH_JWT_ALGO": "RS256"}, "only ES256"),
            (
                {"REGISTRY_TOKEN_AUTH_CERT_KID": _b64(b"AAAA:BBBB")},
                "REGISTRY_TOKEN_AUTH_CERT_KID is 'AAAA:BBBB'",
            ),
            (
                {
                    "REGISTRY_TOKEN_AUTH_CERT_KEY": _b64(privateKeyPEM(otherKey)),
                    "REGISTRY_TOKEN_AUTH_CERT_KID": "",
                },
                "not for this private key",
            ),
            (
                {"REGISTRY_TOKEN_AUTH_CERT": _b64(b"junk")},
                "REGISTRY_TOKEN_AUTH_CERT holds no PEM certificate",
            ),
        ]
        for changes, expected in cases:
            error = self.assertRaises(
                ValueError,
                issuerFromOpenBalenaEnvironment,
                self.environ(**changes),
                _clock(),
            )
            self.assertIn(expected, str(error))
            self.assertNotIn(secret[20:60], str(error))
