# -*- test-case-name: tests.unit.test_broker -*-
"""
The credentials a client gives: a user name and a password, from a Basic
header or a token form.
"""

from __future__ import annotations

import base64
import hashlib

import attrs


@attrs.frozen
class BasicCredentials:
    """
    A user name and password a client gave us.
    """

    username: str
    password: str = attrs.field(repr=False)

    def header(self) -> bytes:
        raw = f"{self.username}:{self.password}".encode("utf-8")
        return b"Basic " + base64.b64encode(raw)

    @property
    def cacheKey(self) -> str:
        digest = hashlib.sha256(f"{self.username}\0{self.password}".encode("utf-8"))
        return digest.hexdigest()[:32]

    @classmethod
    def fromHeader(cls, value: bytes | None) -> BasicCredentials | None:
        """
        Parse C{Authorization: Basic ...}; L{None} for anything else.
        """
        if not value or not value[:6].lower() == b"basic ":
            return None
        try:
            decoded = base64.b64decode(value[6:].strip(), validate=True).decode("utf-8")
        except (ValueError, UnicodeDecodeError):
            return None
        username, colon, password = decoded.partition(":")
        if not colon:
            return None
        return cls(username, password)
