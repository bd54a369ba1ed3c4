# -*- test-case-name: tests.unit.test_odata -*-
"""
Build the OData (pine) query strings the balena API accepts.

The API parses its query string itself and answers C{400 Malformed url} when
the characters of the OData syntax (C{, / ( ) : ' $}) arrive
percent-encoded, as a generic URL encoder would send them.  So the syntax
stays literal, spaces are written C{%20}, and only the inside of string
literals is encoded (C{slug eq 'acme%2Fapp'}).  Options inside an
C{$expand} are separated with C{&}, as balena's own SDKs send them.
"""

from __future__ import annotations

from collections.abc import Iterable
from urllib.parse import quote, unquote

import attrs

_SPACE = "%20"


def quoteString(value: str) -> str:
    """
    An OData string literal: quotes doubled, then everything but unreserved
    characters and the quote itself percent-encoded (UTF-8).
    """
    return "'" + quote(value.replace("'", "''"), safe="'") + "'"


def unquoteString(text: str) -> str:
    """
    The value of a literal made by L{quoteString}.

    @raise ValueError: When C{text} is not a quoted literal.
    """
    if len(text) < 2 or text[0] != "'" or text[-1] != "'":
        raise ValueError("not a string literal")
    inner = text[1:-1]
    if inner.replace("''", "").count("'"):
        raise ValueError("unescaped quote in a string literal")
    return unquote(inner, errors="strict").replace("''", "'")


def literal(value: object) -> str:
    """
    Any Python value the API compares with, as an OData literal.
    """
    if value is None:
        return "null"
    if value is True:
        return "true"
    if value is False:
        return "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, str):
        return quoteString(value)
    raise TypeError(f"no OData literal for {type(value).__name__}")


def _binary(op: str, path: str, value: object) -> str:
    return f"{path}{_SPACE}{op}{_SPACE}{literal(value)}"


def eq(path: str, value: object) -> str:
    return _binary("eq", path, value)


def ne(path: str, value: object) -> str:
    return _binary("ne", path, value)


def startswith(path: str, value: str) -> str:
    return f"startswith({path},{literal(value)})"


def _join(op: str, clauses: Iterable[str]) -> str:
    parts = [c for c in clauses if c]
    if len(parts) == 1:
        return parts[0]
    return f"{_SPACE}{op}{_SPACE}".join(f"({p})" for p in parts)


def allOf(*clauses: str) -> str:
    return _join("and", clauses)


def anyOf(*clauses: str) -> str:
    return _join("or", clauses)


def anyMatch(path: str, variable: str, clause: str) -> str:
    """
    A lambda: some related entity at C{path} satisfies C{clause}, whose
    paths start with C{variable/}.
    """
    return f"{path}/any({variable}:{clause})"


@attrs.frozen
class Query:
    """
    The options of one OData request (or of one C{$expand}ed navigation).

    @ivar expand: Navigation name to the nested L{Query} for it.
    """

    select: tuple[str, ...] = ()
    filter: str | None = None
    expand: tuple[tuple[str, Query], ...] = ()
    orderby: str | None = None
    top: int | None = None

    def options(self, separator: str = "&") -> str:
        parts = []
        if self.select:
            parts.append("$select=" + ",".join(self.select))
        if self.filter:
            parts.append("$filter=" + self.filter)
        if self.expand:
            parts.append(
                "$expand="
                + ",".join(
                    f"{name}({nested.options()})" if nested.options() else name
                    for name, nested in self.expand
                )
            )
        if self.orderby:
            parts.append("$orderby=" + self.orderby.replace(" ", _SPACE))
        if self.top is not None:
            parts.append(f"$top={self.top}")
        return separator.join(parts)

    def url(self, base: str, resource: str) -> str:
        """
        The full request URL, e.g. C{https://api/v6/application?...}.
        """
        query = self.options()
        return f"{base.rstrip('/')}/{resource}" + (f"?{query}" if query else "")
