# -*- test-case-name: tests.unit.test_sealing -*-
"""
Seal small secrets so they can travel inside our own tokens.

A token regproxy hands a client may carry what regproxy needs to act for
that client later (for example its upstream credentials).  The token itself
is only signed, so anything secret in it is sealed here first: AES-256-GCM
with a random 96-bit nonce, and the I{purpose} as associated data, so a
value sealed for one use cannot be replayed as another.  Any regproxy
instance holding the same key opens what another sealed: no server-side
session.

The sealed form is unpadded base64url of C{version || nonce || ciphertext
|| tag}.
"""

from __future__ import annotations

import base64
import binascii
import json
import os
import re
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from regproxy.tls.pem import writeExclusively

KEY_BYTES = 32
_NONCE_BYTES = 12
_VERSION = b"\x01"
_SEALED = re.compile(r"[A-Za-z0-9_-]+\Z")


class SealError(ValueError):
    """
    A sealed value cannot be opened: tampered with, sealed with another key
    or for another purpose, or not a sealed value at all.
    """


class Sealer:
    """
    Seals and opens values with one key.

    @param key: 32 random bytes.
    """

    def __init__(self, key: bytes) -> None:
        if not isinstance(key, bytes) or len(key) != KEY_BYTES:
            raise ValueError(f"a sealing key is {KEY_BYTES} bytes")
        self._aead = AESGCM(key)

    def seal(self, plaintext: bytes, purpose: str) -> str:
        """
        Encrypt and authenticate C{plaintext} for C{purpose}.
        """
        nonce = os.urandom(_NONCE_BYTES)
        sealed = self._aead.encrypt(nonce, plaintext, _associated(purpose))
        return (
            base64.urlsafe_b64encode(_VERSION + nonce + sealed)
            .rstrip(b"=")
            .decode("ascii")
        )

    def open(self, sealed: str, purpose: str) -> bytes:
        """
        The plaintext of a value L{seal}ed for C{purpose} with this key.

        @raise SealError: Otherwise.
        """
        if not isinstance(sealed, str) or not _SEALED.match(sealed):
            raise SealError("not a sealed value")
        try:
            raw = base64.urlsafe_b64decode(sealed + "=" * (-len(sealed) % 4))
        except (binascii.Error, ValueError):
            raise SealError("not a sealed value") from None
        if len(raw) < 1 + _NONCE_BYTES + 16 or raw[:1] != _VERSION:
            raise SealError("not a sealed value")
        nonce, body = raw[1 : 1 + _NONCE_BYTES], raw[1 + _NONCE_BYTES :]
        try:
            return self._aead.decrypt(nonce, body, _associated(purpose))
        except InvalidTag:
            raise SealError(
                "sealed value was altered, or sealed with another key or purpose"
            ) from None

    def sealJSON(self, value: Any, purpose: str) -> str:
        """
        L{seal} a JSON-serializable value.
        """
        return self.seal(
            json.dumps(value, separators=(",", ":")).encode("utf-8"), purpose
        )

    def openJSON(self, sealed: str, purpose: str) -> Any:
        """
        L{open} a value sealed by L{sealJSON}.
        """
        plaintext = self.open(sealed, purpose)
        try:
            return json.loads(plaintext)
        except ValueError:
            raise SealError("sealed value is not JSON") from None


def _associated(purpose: str) -> bytes:
    return b"regproxy-seal-v1\x00" + purpose.encode("utf-8")


def loadOrCreateKey(path: str) -> bytes:
    """
    The sealing key kept in C{path}, made (mode 0600, 32 random bytes) if
    the file does not exist yet.

    Creation is exclusive, so two processes starting together end up with
    the same key: the loser of the race reads the winner's file.

    @raise ValueError: The file exists but does not hold a key.
    """
    writeExclusively(path, os.urandom(KEY_BYTES), 0o600)
    with open(path, "rb") as f:
        key = f.read()
    if len(key) != KEY_BYTES:
        raise ValueError(
            f"{path} does not hold a sealing key ({len(key)} bytes, "
            f"expected {KEY_BYTES}); remove it to make a new one"
        )
    return key
