"""
Tests for L{regproxy.auth.sealing}.
"""

import os
import stat

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from regproxy.auth.sealing import Sealer, SealError, loadOrCreateKey

KEY = bytes(range(32))


class SealTests(SynchronousTestCase):
    """
    Sealing and opening.
    """

    def test_roundTrip(self) -> None:
        """
        What is sealed opens to the same bytes, with the same key and
        purpose, also in another L{Sealer} instance (another process).
        """
        sealed = Sealer(KEY).seal(b"alice:secret", "upstream-credentials")
        self.assertNotIn("secret", sealed)
        self.assertEqual(
            Sealer(KEY).open(sealed, "upstream-credentials"), b"alice:secret"
        )

    def test_fresh(self) -> None:
        """
        Sealing the same value twice gives two different texts (random
        nonce).
        """
        sealer = Sealer(KEY)
        self.assertNotEqual(sealer.seal(b"x", "p"), sealer.seal(b"x", "p"))

    def test_urlSafe(self) -> None:
        """
        The sealed text is unpadded base64url.
        """
        self.assertRegex(Sealer(KEY).seal(b"\xff" * 50, "p"), r"\A[A-Za-z0-9_-]+\Z")

    def test_otherPurpose(self) -> None:
        """
        A value sealed for one purpose does not open for another.
        """
        sealer = Sealer(KEY)
        sealed = sealer.seal(b"x", "refresh")
        self.assertRaises(SealError, sealer.open, sealed, "upstream-credentials")

    def test_otherKey(self) -> None:
        """
        A value sealed with another key does not open.
        """
        sealed = Sealer(os.urandom(32)).seal(b"x", "p")
        error = self.assertRaises(SealError, Sealer(KEY).open, sealed, "p")
        self.assertIn("another key", str(error))

    def test_tampered(self) -> None:
        """
        Changing any character of a sealed value makes it fail to open.
        """
        sealer = Sealer(KEY)
        sealed = sealer.seal(b"credentials", "p")
        for i in range(len(sealed) - 1):  # the last character has unused bits
            flipped = "A" if sealed[i] != "A" else "B"
            tampered = sealed[:i] + flipped + sealed[i + 1 :]
            self.assertRaises(SealError, sealer.open, tampered, "p")

    def test_json(self) -> None:
        """
        JSON values round-trip.
        """
        sealer = Sealer(KEY)
        value = {"user": "alice", "password": "p\u00e4ss"}
        self.assertEqual(sealer.openJSON(sealer.sealJSON(value, "p"), "p"), value)

    def test_badKey(self) -> None:
        """
        A key that is not 32 bytes is refused.
        """
        self.assertRaises(ValueError, Sealer, b"short")

    @settings(max_examples=200, deadline=None)
    @given(st.binary(max_size=200), st.text(max_size=20))
    def test_roundTripAny(self, plaintext: bytes, purpose: str) -> None:
        """
        Any bytes for any purpose round-trip.
        """
        sealer = Sealer(KEY)
        self.assertEqual(
            sealer.open(sealer.seal(plaintext, purpose), purpose), plaintext
        )

    @settings(max_examples=300, deadline=None)
    @given(st.one_of(st.text(max_size=100), st.text("AB_-xyz09", max_size=100)))
    def test_garbage(self, text: str) -> None:
        """
        Arbitrary text fails to open with L{SealError}, never a crash.
        """
        self.assertRaises(SealError, Sealer(KEY).open, text, "p")


class KeyFileTests(SynchronousTestCase):
    """
    The key kept in the state directory.
    """

    def test_created(self) -> None:
        """
        A missing key file is created with mode 0600 and 32 bytes, and read
        back unchanged afterwards.
        """
        path = self.mktemp()
        key = loadOrCreateKey(path)
        self.assertEqual(len(key), 32)
        self.assertEqual(stat.S_IMODE(os.stat(path).st_mode), 0o600)
        self.assertEqual(loadOrCreateKey(path), key)

    def test_notAKey(self) -> None:
        """
        A file of the wrong size is refused with its name.
        """
        path = self.mktemp()
        with open(path, "wb") as f:
            f.write(b"hello")
        error = self.assertRaises(ValueError, loadOrCreateKey, path)
        self.assertIn(path, str(error))
