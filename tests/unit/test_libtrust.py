"""
Tests for L{regproxy.auth.libtrust}.
"""

import re

from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.serialization import load_pem_public_key
from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from regproxy.auth.libtrust import base64url, jwkThumbprint, keyID, publicJWK

FIXED_PUBLIC_KEY = b"""\
-----BEGIN PUBLIC KEY-----
MFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAEK8VqTf9z31lzjzGVjEHHclSlk10b
wM6cnSBHUs+s4wOVWOzpK5erUbMRR0O8ppc80RB0EnZGIx9w40a6AZiMWA==
-----END PUBLIC KEY-----
"""


class KeyIDTests(SynchronousTestCase):
    """
    The libtrust fingerprint that distribution 2.x matches C{kid} against.
    """

    def test_vector(self) -> None:
        """
        A fixed P-256 key gives a fixed kid.

        Computed independently, once, with openssl and coreutils::

            openssl ec -in key.pem -pubout -outform DER \\
              | openssl dgst -sha256 -binary | head -c 30 \\
              | base32 | fold -w4 | paste -sd:

        (the DER SubjectPublicKeyInfo hashes to
        C{d30b25c9d41187dc970ca9ffa3adfd86e7fe976391f1a4d809b0ab65f74610f4}).
        """
        key = load_pem_public_key(FIXED_PUBLIC_KEY)
        self.assertEqual(
            keyID(key), "2MFS:LSOU:CGD5:ZFYM:VH72:HLP5:Q3T7:5F3D:SHY2:JWAJ:WCVW:L52G"
        )

    def test_shape(self) -> None:
        """
        Any key's kid is twelve groups of four base32 characters.
        """
        for key in [
            ec.generate_private_key(ec.SECP256R1()).public_key(),
            ec.generate_private_key(ec.SECP384R1()).public_key(),
            rsa.generate_private_key(65537, 2048).public_key(),
        ]:
            self.assertRegex(keyID(key), r"\A[A-Z2-7]{4}(:[A-Z2-7]{4}){11}\Z")

    def test_differs(self) -> None:
        """
        Two keys have two kids.
        """
        a = ec.generate_private_key(ec.SECP256R1()).public_key()
        b = ec.generate_private_key(ec.SECP256R1()).public_key()
        self.assertNotEqual(keyID(a), keyID(b))


class ThumbprintTests(SynchronousTestCase):
    """
    The RFC 7638 thumbprint that distribution 3.x matches C{kid} against.
    """

    def test_vector(self) -> None:
        """
        The fixed key's thumbprint, computed independently once with a
        shell: x and y are the two halves of the uncompressed point at the
        end of the DER key, each base64url'd; then::

            printf '{"crv":"P-256","kty":"EC","x":"%s","y":"%s"}' $x $y \\
              | openssl dgst -sha256 -binary | base64 | tr '+/' '-_' | tr -d =
        """
        key = load_pem_public_key(FIXED_PUBLIC_KEY)
        self.assertEqual(
            publicJWK(key),
            {
                "crv": "P-256",
                "kty": "EC",
                "x": "K8VqTf9z31lzjzGVjEHHclSlk10bwM6cnSBHUs-s4wM",
                "y": "lVjs6SuXq1GzEUdDvKaXPNEQdBJ2RiMfcONGugGYjFg",
            },
        )
        self.assertEqual(
            jwkThumbprint(key), "Advdp8SY7anV6paF7nlhtvFo_Jthryu8jkNXNuueh7o"
        )

    def test_rsa(self) -> None:
        """
        RSA keys have the C{e}, C{kty}, C{n} members, and a 43-character
        thumbprint.
        """
        key = rsa.generate_private_key(65537, 2048).public_key()
        jwk = publicJWK(key)
        self.assertEqual(sorted(jwk), ["e", "kty", "n"])
        self.assertEqual(jwk["e"], "AQAB")
        self.assertTrue(re.fullmatch(r"[A-Za-z0-9_-]{43}", jwkThumbprint(key)))

    def test_unsupported(self) -> None:
        """
        Another kind of key is refused with a message naming it.
        """
        from cryptography.hazmat.primitives.asymmetric import ed25519

        key = ed25519.Ed25519PrivateKey.generate().public_key()
        error = self.assertRaises(ValueError, publicJWK, key)
        self.assertIn("Ed25519PublicKey", str(error))

    @settings(max_examples=200, deadline=None)
    @given(st.binary(max_size=80))
    def test_base64url(self, data: bytes) -> None:
        """
        base64url output has no padding and only URL-safe characters.
        """
        self.assertRegex(base64url(data), r"\A[A-Za-z0-9_-]*\Z")
