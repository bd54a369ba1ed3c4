# -*- test-case-name: tests.unit.test_challenge -*-
"""
The C{WWW-Authenticate} grammar (RFC 9110 section 11): parse the upstream's
challenges so that we can rewrite them, and write our own.

We always write parameter values quoted: some clients accept only
C{realm="..."}, and quoting is always allowed.
"""

from __future__ import annotations

import attrs

_TCHARS = frozenset(
    "!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
)
_TOKEN68_CHARS = frozenset(
    "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-._~+/"
)
_SPACE = " \t"


class ChallengeParseError(ValueError):
    """
    The header is not a list of challenges.
    """


@attrs.frozen
class Challenge:
    """
    One authentication challenge: a scheme and either auth-params or a
    token68 (never both).

    @ivar params: (name, value) pairs in the order given; names keep their
        case but are matched without it.
    """

    scheme: str
    params: tuple[tuple[str, str], ...] = ()
    token68: str | None = None

    def get(self, name: str) -> str | None:
        lowered = name.lower()
        for key, value in self.params:
            if key.lower() == lowered:
                return value
        return None

    def replace(self, name: str, value: str) -> Challenge:
        """
        A copy with parameter C{name} set to C{value}, in place if present,
        else appended.
        """
        lowered = name.lower()
        params = list(self.params)
        for index, (key, _) in enumerate(params):
            if key.lower() == lowered:
                params[index] = (key, value)
                break
        else:
            params.append((name, value))
        return attrs.evolve(self, params=tuple(params))

    def serialize(self) -> str:
        if self.token68 is not None:
            return f"{self.scheme} {self.token68}"
        if not self.params:
            return self.scheme
        rendered = ",".join(f"{key}={quote(value)}" for key, value in self.params)
        return f"{self.scheme} {rendered}"


def quote(value: str) -> str:
    escaped = value.replace("\\", "\\\\").replace('"', '\\"')
    return f'"{escaped}"'


def bearer(realm: str, service: str | None = None, **params: str) -> Challenge:
    """
    Our own Bearer challenge: realm first, then service, then the rest
    (C{scope}, C{error}) in the order given.
    """
    pairs = [("realm", realm)]
    if service is not None:
        pairs.append(("service", service))
    pairs.extend(params.items())
    return Challenge("Bearer", tuple(pairs))


class _Reader:
    def __init__(self, text: str) -> None:
        self.text = text
        self.pos = 0

    def atEnd(self) -> bool:
        return self.pos >= len(self.text)

    def peek(self) -> str:
        return self.text[self.pos] if self.pos < len(self.text) else ""

    def skipSpace(self) -> None:
        while self.peek() and self.peek() in _SPACE:
            self.pos += 1

    def skipSeparators(self) -> None:
        while self.peek() and self.peek() in _SPACE + ",":
            self.pos += 1

    def token(self) -> str:
        start = self.pos
        while self.peek() and self.peek() in _TCHARS:
            self.pos += 1
        return self.text[start : self.pos]

    def quoted(self) -> str:
        assert self.peek() == '"'
        self.pos += 1
        out: list[str] = []
        while True:
            char = self.peek()
            if not char:
                raise ChallengeParseError("unterminated quoted string")
            self.pos += 1
            if char == '"':
                return "".join(out)
            if char == "\\":
                escaped = self.peek()
                if not escaped:
                    raise ChallengeParseError("unterminated quoted string")
                self.pos += 1
                out.append(escaped)
            else:
                out.append(char)


def _tryParam(reader: _Reader) -> tuple[str, str] | None:
    """
    Read C{name = value} at the reader's position, or leave the position
    alone and return L{None} when what follows is not an auth-param.
    """
    start = reader.pos
    name = reader.token()
    if not name:
        return None
    reader.skipSpace()
    if reader.peek() != "=":
        reader.pos = start
        return None
    reader.pos += 1
    reader.skipSpace()
    if reader.peek() == '"':
        value = reader.quoted()
    else:
        value = reader.token()
        if not value:
            # "name=" followed by '=': this was a token68 such as "abc==".
            reader.pos = start
            return None
    return name, value


def _tryToken68(reader: _Reader) -> str | None:
    start = reader.pos
    while reader.peek() and reader.peek() in _TOKEN68_CHARS:
        reader.pos += 1
    if reader.pos == start:
        return None
    while reader.peek() == "=":
        reader.pos += 1
    end = reader.pos
    reader.skipSpace()
    if reader.atEnd() or reader.peek() == ",":
        return reader.text[start:end]
    reader.pos = start
    return None


def parseChallenges(header: str) -> list[Challenge]:
    """
    Parse one C{WWW-Authenticate} header value, which may hold several
    challenges.

    @raise ChallengeParseError: When the value is not a challenge list.
    """
    reader = _Reader(header)
    challenges: list[Challenge] = []
    reader.skipSeparators()
    while not reader.atEnd():
        scheme = reader.token()
        if not scheme:
            raise ChallengeParseError(f"expected an auth scheme at {reader.pos}")
        params: list[tuple[str, str]] = []
        token68 = None
        hadSpace = reader.peek() in tuple(_SPACE)
        reader.skipSpace()
        if hadSpace and not reader.atEnd() and reader.peek() != ",":
            param = _tryParam(reader)
            if param is None:
                token68 = _tryToken68(reader)
                if token68 is None:
                    raise ChallengeParseError(
                        f"expected auth-params or a token68 at {reader.pos}"
                    )
            else:
                params.append(param)
                while True:
                    reader.skipSpace()
                    if reader.peek() != ",":
                        break
                    reader.skipSeparators()
                    param = _tryParam(reader)
                    if param is None:
                        break
                    params.append(param)
        elif not reader.atEnd() and reader.peek() not in _SPACE + ",":
            raise ChallengeParseError(f"unexpected character at {reader.pos}")
        challenges.append(Challenge(scheme, tuple(params), token68))
        reader.skipSeparators()
    return challenges


def serializeChallenges(challenges: list[Challenge]) -> str:
    return ", ".join(challenge.serialize() for challenge in challenges)
