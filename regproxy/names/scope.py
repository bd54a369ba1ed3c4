# -*- test-case-name: tests.unit.test_scope -*-
"""
The scope grammar of the registry token specification, as values.

A scope is C{type[(class)]:name:action[,action...]}, for example
C{repository:library/alpine:pull}, C{registry:catalog:*} or
C{repository(plugin):a:pull}.  A repository name may itself hold a colon
(C{repository:host:5000/a/b:pull,push}), so the type ends at the I{first}
colon and the actions start after the I{last} one.

Clients send scopes in query strings we do not control; a malformed one is
ignored (L{parseScope} returns L{None}), never an error, as the
specification asks of token servers.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

import attrs

_TYPE = re.compile(r"[a-z0-9]+\Z")
# Names are checked loosely: anything a registry name or a host:port prefix
# may hold, without spaces, commas or control characters.  Whether the name
# exists or is allowed is decided elsewhere.
_NAME = re.compile(r"[A-Za-z0-9._\-/:]+\Z")
_ACTION = re.compile(r"(?:[a-z]+|\*)\Z")


def _uniqueActions(actions: Iterable[str]) -> tuple[str, ...]:
    """
    Keep the first occurrence of each action, in order, so equal scopes
    compare equal however often a client repeated itself.
    """
    return tuple(dict.fromkeys(actions))


@attrs.frozen
class Scope:
    """
    One requested (or granted) access.

    @ivar resourceType: C{repository}, C{registry}, ...
    @ivar resourceClass: The optional class in parentheses (C{plugin}), or
        L{None}.
    @ivar name: The resource name, e.g. C{library/alpine} or C{catalog}.
    @ivar actions: The actions, without repeats, in the order given.
    """

    resourceType: str
    resourceClass: str | None
    name: str
    actions: tuple[str, ...] = attrs.field(converter=_uniqueActions)

    def serialize(self) -> str:
        """
        The scope as it is written in a query string or a challenge.
        """
        kind = self.resourceType
        if self.resourceClass is not None:
            kind = f"{kind}({self.resourceClass})"
        return f"{kind}:{self.name}:{','.join(self.actions)}"

    __str__ = serialize


def parseScope(text: str) -> Scope | None:
    """
    Parse one scope; L{None} when it is malformed.
    """
    if not isinstance(text, str):
        return None
    kind, sep, rest = text.partition(":")
    if not sep:
        return None
    name, sep, actionText = rest.rpartition(":")
    if not sep or not _NAME.match(name):
        return None
    resourceClass: str | None = None
    if kind.endswith(")") and "(" in kind:
        kind, _, resourceClass = kind[:-1].partition("(")
        if not _TYPE.match(resourceClass):
            return None
    if not _TYPE.match(kind):
        return None
    actions = actionText.split(",") if actionText else []
    if not all(_ACTION.match(action) for action in actions):
        return None
    return Scope(kind, resourceClass, name, actions)


def parseScopes(values: Iterable[str]) -> tuple[Scope, ...]:
    """
    Parse the C{scope} values of a token request.

    Each value may hold several scopes separated by spaces (the OAuth2 form
    and some clients do this); malformed ones are dropped.  Scopes about the
    same resource are merged into one, keeping the first one's place, so a
    grant is decided once per resource.
    """
    merged: dict[tuple[str, str | None, str], Scope] = {}
    for value in values:
        for word in value.split():
            scope = parseScope(word)
            if scope is None:
                continue
            key = (scope.resourceType, scope.resourceClass, scope.name)
            known = merged.get(key)
            if known is not None:
                scope = attrs.evolve(known, actions=known.actions + scope.actions)
            merged[key] = scope
    return tuple(merged.values())
