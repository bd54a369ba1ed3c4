# -*- test-case-name: tests.unit.test_access -*-
"""
Who may do what to which repository: the C{--access} rules file.

The file is TOML, a list of C{[[rule]]} tables; rules only ever allow, and
what a client may do is the union of every rule that applies to it::

    [[rule]]
    users = ["alice", "bob"]        # user names from the htpasswd file
    repositories = ["team/*", "shared/**"]
    actions = ["pull", "push"]      # pull, push, delete, or "*" for all

    [[rule]]
    users = ["*"]                   # any authenticated user
    repositories = ["public/**"]
    actions = ["pull"]

    [[rule]]
    users = ["<anonymous>"]         # clients without credentials (and so
    repositories = ["public/**"]    # everyone: a login never loses access)
    actions = ["pull"]

    [[rule]]
    users = ["admin"]
    catalog = true                  # may list /v2/_catalog (only the
                                    # repositories they may pull)

Repository globs: C{*} matches within one path segment (never a C{/}),
C{?} one character other than C{/}, C{**} anything including C{/}
(C{a/**/b} also matches C{a/b}); every other character is literal (no
C{[...]} classes, unlike L{fnmatch}, so a name is never misread as a class).

Without a rules file (L{AccessRules.default}), every user in the htpasswd file
may pull and push everything, and anonymous clients may do nothing.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterable, Mapping
from typing import Any

import attrs

from regproxy.config import readTOML
from regproxy.names.scope import Scope

ANY_USER = "*"
ANONYMOUS = "<anonymous>"
ACTIONS = frozenset({"pull", "push", "delete"})
ALL = "*"
_RULE_KEYS = frozenset({"users", "repositories", "actions", "catalog"})


class AccessRulesError(ValueError):
    """
    The rules file cannot be used; the message says where and why.
    """


@functools.lru_cache(maxsize=1024)
def compileGlob(glob: str) -> re.Pattern[str]:
    """
    The regular expression for a repository glob (see the module
    docstring).
    """
    parts = []
    i = 0
    while i < len(glob):
        if glob.startswith("/**/", i):
            parts.append("(?:/|/.*/)")
            i += 4
        elif glob.startswith("**/", i) and i == 0:
            parts.append("(?:.*/)?")
            i += 3
        elif glob.startswith("**", i):
            parts.append(".*")
            i += 2
        elif glob[i] == "*":
            parts.append("[^/]*")
            i += 1
        elif glob[i] == "?":
            parts.append("[^/]")
            i += 1
        else:
            parts.append(re.escape(glob[i]))
            i += 1
    return re.compile("".join(parts) + r"\Z", re.DOTALL)


def globMatches(glob: str, name: str) -> bool:
    return compileGlob(glob).match(name) is not None


@attrs.frozen
class Rule:
    """
    One rule: these users may do these actions on these repositories.

    @ivar users: User names; L{ANY_USER} for any authenticated user,
        L{ANONYMOUS} for everyone.
    @ivar catalog: Whether these users may list the catalog.
    """

    users: frozenset[str]
    repositories: tuple[str, ...]
    actions: frozenset[str]
    catalog: bool = False

    def appliesTo(self, user: str | None) -> bool:
        if ANONYMOUS in self.users:
            return True
        if user is None:
            return False
        return ANY_USER in self.users or user in self.users

    def allowedActions(self, user: str | None, name: str) -> frozenset[str]:
        if not self.appliesTo(user) or not any(
            globMatches(g, name) for g in self.repositories
        ):
            return frozenset()
        if ALL in self.actions:
            return ACTIONS | {ALL}
        return self.actions


@attrs.frozen
class AccessRules:
    """
    A set of rules, and the grant they give.
    """

    rules: tuple[Rule, ...]

    @classmethod
    def default(cls) -> AccessRules:
        """
        The rules when there is no file: users pull and push everything,
        anonymous clients get nothing.
        """
        return cls((Rule(frozenset({ANY_USER}), ("**",), frozenset({"pull", "push"})),))

    def allowedActions(self, user: str | None, name: str) -> frozenset[str]:
        """
        Everything C{user} (L{None}: anonymous) may do to repository C{name}.
        """
        allowed: frozenset[str] = frozenset()
        for rule in self.rules:
            allowed |= rule.allowedActions(user, name)
        return allowed

    def grant(self, user: str | None, requested: Iterable[Scope]) -> tuple[Scope, ...]:
        """
        The part of C{requested} that C{user} (L{None}: anonymous) may have.

        A scope none of whose actions is allowed is left out: a denial is an
        empty grant, as the token specification says, not an error.
        Repository scopes are matched by name whatever their class;
        C{registry:catalog:*} needs a rule with C{catalog = true}; other
        resource types are never granted.
        """
        granted = []
        for scope in requested:
            if scope.resourceType == "repository":
                allowed = self.allowedActions(user, scope.name)
            elif (scope.resourceType, scope.name) == ("registry", "catalog") and any(
                rule.catalog and rule.appliesTo(user) for rule in self.rules
            ):
                allowed = frozenset({ALL})
            else:
                continue
            actions = tuple(a for a in scope.actions if a in allowed)
            if actions:
                granted.append(attrs.evolve(scope, actions=actions))
        return tuple(granted)


def _strings(value: Any, where: str, key: str) -> list[str]:
    if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
        raise AccessRulesError(f"{where}: '{key}' must be a list of non-empty strings")
    return value


def parseAccessRules(
    document: Mapping[str, Any], source: str = "access rules"
) -> AccessRules:
    """
    Rules from a parsed TOML document.

    @raise AccessRulesError: The document is not a list of valid rules.
    """
    if not isinstance(document, Mapping):
        raise AccessRulesError(f"{source}: expected a table of [[rule]] entries")
    unknown = set(document) - {"rule"}
    if unknown:
        raise AccessRulesError(
            f"{source}: unknown key {sorted(map(str, unknown))[0]!r} "
            f"(rules are written as [[rule]] tables)"
        )
    entries = document.get("rule", [])
    if not isinstance(entries, list):
        raise AccessRulesError(f"{source}: 'rule' must be written as [[rule]] tables")
    rules = []
    for number, entry in enumerate(entries, 1):
        where = f"{source}: rule {number}"
        if not isinstance(entry, Mapping):
            raise AccessRulesError(f"{where}: must be a table")
        unknownKeys = set(entry) - _RULE_KEYS
        if unknownKeys:
            raise AccessRulesError(
                f"{where}: unknown key {sorted(map(str, unknownKeys))[0]!r} "
                f"(expected users, repositories, actions, catalog)"
            )
        catalog = entry.get("catalog", False)
        if not isinstance(catalog, bool):
            raise AccessRulesError(f"{where}: 'catalog' must be true or false")
        # A catalog rule need not name repositories; any other rule must.
        for key in ("users",) if catalog else ("users", "repositories", "actions"):
            if key not in entry:
                raise AccessRulesError(f"{where}: '{key}' is missing")
        users = _strings(entry["users"], where, "users")
        if not users:
            raise AccessRulesError(
                f"{where}: 'users' is empty, so the rule does nothing"
            )
        for user in users:
            if user.startswith("<") and user != ANONYMOUS:
                raise AccessRulesError(
                    f"{where}: {user!r} is not a user name; the anonymous marker "
                    f"is {ANONYMOUS!r}"
                )
        repositories = _strings(entry.get("repositories", []), where, "repositories")
        actions = _strings(entry.get("actions", []), where, "actions")
        for action in actions:
            if action not in ACTIONS and action != ALL:
                raise AccessRulesError(
                    f"{where}: unknown action {action!r} (expected pull, push, delete or *)"
                )
        rules.append(
            Rule(frozenset(users), tuple(repositories), frozenset(actions), catalog)
        )
    return AccessRules(tuple(rules))


def loadAccessRules(path: str) -> AccessRules:
    """
    Read the C{--access} file.

    @raise AccessRulesError: It cannot be read or used.
    """
    try:
        document = readTOML(path)
    except ValueError as e:
        raise AccessRulesError(str(e)) from None
    return parseAccessRules(document, path)


class AccessRulesFile:
    """
    The rules of the C{--access} file, read again on L{reload} (SIGHUP);
    grants always come from one whole version of the file.
    """

    def __init__(self, path: str) -> None:
        """
        @raise AccessRulesError: The file cannot be used at start-up.
        """
        self.path = path
        self.current = loadAccessRules(path)

    def reload(self) -> int:
        """
        @return: How many rules the file now holds.
        @raise AccessRulesError: It cannot be used; the rules read before
            stay in force.
        """
        self.current = loadAccessRules(self.path)
        return len(self.current.rules)

    def grant(self, user: str | None, requested: Iterable[Scope]) -> tuple[Scope, ...]:
        return self.current.grant(user, requested)
