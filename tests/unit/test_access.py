"""
Tests for L{regproxy.auth.access}.
"""

from __future__ import annotations

import tomllib

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.python.filepath import FilePath
from twisted.trial.unittest import SynchronousTestCase

from regproxy.auth.access import (
    ANONYMOUS,
    AccessRules,
    AccessRulesError,
    AccessRulesFile,
    globMatches,
    loadAccessRules,
    parseAccessRules,
)
from regproxy.names.scope import parseScopes

EXAMPLE = """
[[rule]]
users = ["alice", "bob"]
repositories = ["team/*", "shared/**"]
actions = ["pull", "push"]

[[rule]]
users = ["*"]
repositories = ["public/**"]
actions = ["pull"]

[[rule]]
users = ["<anonymous>"]
repositories = ["open/*"]
actions = ["pull"]

[[rule]]
users = ["admin"]
repositories = ["**"]
actions = ["*"]
catalog = true
"""


def _rules(text: str = EXAMPLE) -> AccessRules:
    return parseAccessRules(tomllib.loads(text))


def _grant(
    rules: AccessRules | AccessRulesFile, user: str | None, *scopes: str
) -> list[str]:
    return [str(s) for s in rules.grant(user, parseScopes(scopes))]


class GlobTests(SynchronousTestCase):
    """
    Repository globs.
    """

    def test_star(self) -> None:
        """
        C{*} matches within one segment.
        """
        self.assertTrue(globMatches("team/*", "team/app"))
        self.assertFalse(globMatches("team/*", "team/app/sub"))
        self.assertFalse(globMatches("team/*", "teams/app"))
        self.assertTrue(globMatches("team/app-*", "team/app-1"))

    def test_doubleStar(self) -> None:
        """
        C{**} crosses segments; C{a/**/b} also matches C{a/b}.
        """
        self.assertTrue(globMatches("shared/**", "shared/a/b/c"))
        self.assertFalse(globMatches("shared/**", "shared"))
        self.assertTrue(globMatches("**", "anything/at/all"))
        self.assertTrue(globMatches("a/**/b", "a/b"))
        self.assertTrue(globMatches("a/**/b", "a/x/y/b"))
        self.assertTrue(globMatches("**/cache", "cache"))
        self.assertTrue(globMatches("**/cache", "x/y/cache"))

    def test_question(self) -> None:
        """
        C{?} is one character other than C{/}.
        """
        self.assertTrue(globMatches("v?", "v1"))
        self.assertFalse(globMatches("v?", "v/"))

    def test_literal(self) -> None:
        """
        Brackets and dots are literal, not classes or regex.
        """
        self.assertTrue(globMatches("a.b[1]", "a.b[1]"))
        self.assertFalse(globMatches("a.b", "axb"))
        self.assertFalse(globMatches("a[12]", "a1"))

    @settings(max_examples=200, deadline=None)
    @given(st.text(st.characters(blacklist_characters="*?"), max_size=30))
    def test_literalMatchesOnlyItself(self, name: str) -> None:
        """
        A glob without wildcards matches exactly its own text.
        """
        self.assertTrue(globMatches(name, name))
        self.assertFalse(globMatches(name, name + "x"))

    @settings(max_examples=200, deadline=None)
    @given(
        st.text("abc-_.", min_size=1, max_size=8),
        st.lists(st.text("abc-_.", min_size=1, max_size=8), min_size=1, max_size=3),
    )
    def test_starNeverCrossesSlash(self, prefix: str, rest: list[str]) -> None:
        """
        C{prefix/*} matches one more segment and never two.
        """
        name = prefix + "/" + "/".join(rest)
        self.assertEqual(globMatches(prefix + "/*", name), len(rest) == 1)
        self.assertTrue(globMatches(prefix + "/**", name))


class GrantTests(SynchronousTestCase):
    """
    What a token grants.
    """

    def test_intersection(self) -> None:
        """
        A user gets the asked actions that a rule allows, on the
        repositories it names.
        """
        rules = _rules()
        self.assertEqual(
            _grant(rules, "alice", "repository:team/app:pull,push,delete"),
            ["repository:team/app:pull,push"],
        )
        self.assertEqual(
            _grant(rules, "alice", "repository:shared/x/y:push"),
            ["repository:shared/x/y:push"],
        )

    def test_denialIsEmpty(self) -> None:
        """
        What is not allowed is left out; a denial is an empty grant.
        """
        rules = _rules()
        self.assertEqual(_grant(rules, "alice", "repository:team/a/b:pull"), [])
        self.assertEqual(_grant(rules, "carol", "repository:team/app:pull"), [])

    def test_anyUser(self) -> None:
        """
        C{"*"} is any authenticated user, not an anonymous client.
        """
        rules = _rules()
        self.assertEqual(
            _grant(rules, "carol", "repository:public/x:pull,push"),
            ["repository:public/x:pull"],
        )
        self.assertEqual(_grant(rules, None, "repository:public/x:pull"), [])

    def test_anonymous(self) -> None:
        """
        The anonymous rule is for clients without credentials, and for
        users too (logging in never loses access).
        """
        rules = _rules()
        self.assertEqual(
            _grant(rules, None, "repository:open/x:pull,push"),
            ["repository:open/x:pull"],
        )
        self.assertEqual(
            _grant(rules, "carol", "repository:open/x:pull"), ["repository:open/x:pull"]
        )

    def test_union(self) -> None:
        """
        Rules add up.
        """
        rules = _rules()
        self.assertEqual(
            _grant(rules, "alice", "repository:public/x:pull,push"),
            ["repository:public/x:pull"],
        )

    def test_allActions(self) -> None:
        """
        C{"*"} allows pull, push, delete and the C{*} action itself.
        """
        rules = _rules()
        self.assertEqual(
            _grant(rules, "admin", "repository:a/b:pull,push,delete,*"),
            ["repository:a/b:pull,push,delete,*"],
        )
        self.assertEqual(_grant(rules, "alice", "repository:team/a:*"), [])

    def test_catalog(self) -> None:
        """
        The catalog needs a catalog rule.
        """
        rules = _rules()
        self.assertEqual(
            _grant(rules, "admin", "registry:catalog:*"), ["registry:catalog:*"]
        )
        self.assertEqual(_grant(rules, "alice", "registry:catalog:*"), [])

    def test_resourceClass(self) -> None:
        """
        A repository scope with a class is matched by its name and keeps its
        class.
        """
        self.assertEqual(
            _grant(_rules(), "alice", "repository(plugin):team/p:pull"),
            ["repository(plugin):team/p:pull"],
        )

    def test_otherTypes(self) -> None:
        """
        Resource types we do not know are never granted.
        """
        self.assertEqual(_grant(_rules(), "admin", "plugin:a:pull"), [])

    def test_default(self) -> None:
        """
        Without a rules file users may pull and push anything and anonymous
        clients nothing.
        """
        rules = AccessRules.default()
        self.assertEqual(
            _grant(rules, "anyone", "repository:a/b:pull,push,delete"),
            ["repository:a/b:pull,push"],
        )
        self.assertEqual(_grant(rules, None, "repository:a/b:pull"), [])

    def test_noScopes(self) -> None:
        """
        A login (no scope) grants nothing, and is not an error.
        """
        self.assertEqual(_rules().grant("alice", ()), ())


class ParseTests(SynchronousTestCase):
    """
    Reading the rules file.
    """

    def assertRefused(self, text: str, *fragments: str) -> None:
        error = self.assertRaises(
            AccessRulesError, parseAccessRules, tomllib.loads(text), "rules.toml"
        )
        for fragment in fragments:
            self.assertIn(fragment, str(error))

    def test_errors(self) -> None:
        """
        Mistakes are named with the rule number.
        """
        ok = 'users = ["a"]\nrepositories = ["x"]\nactions = ["pull"]\n'
        self.assertRefused(
            '[[rule]]\nusers = ["a"]\nactions = ["pull"]',
            "rule 1",
            "'repositories' is missing",
        )
        self.assertRefused(
            f"[[rule]]\n{ok}[[rule]]\n{ok}actions2 = 1",
            "rule 2",
            "unknown key 'actions2'",
        )
        self.assertRefused(
            '[[rule]]\nusers = ["a"]\nrepositories = ["x"]\nactions = ["pul"]',
            "unknown action 'pul'",
        )
        self.assertRefused(
            '[[rule]]\nusers = []\nrepositories = ["x"]\nactions = ["pull"]',
            "'users' is empty",
        )
        self.assertRefused(
            '[[rule]]\nusers = ["<anon>"]\nrepositories = ["x"]\nactions = ["pull"]',
            "<anonymous>",
        )
        self.assertRefused(
            '[[rule]]\nusers = "a"\nrepositories = ["x"]\nactions = ["pull"]',
            "list of non-empty strings",
        )
        self.assertRefused(f"[[rules]]\n{ok}", "unknown key 'rules'")
        self.assertRefused("rule = 3", "[[rule]] tables")
        self.assertRefused(f'[[rule]]\n{ok}catalog = "yes"', "true or false")

    def test_catalogOnly(self) -> None:
        """
        A catalog rule needs no repositories or actions.
        """
        rules = _rules('[[rule]]\nusers = ["admin"]\ncatalog = true\n')
        self.assertEqual(
            _grant(rules, "admin", "registry:catalog:*"), ["registry:catalog:*"]
        )

    def test_emptyFile(self) -> None:
        """
        An empty file allows nothing to anyone.
        """
        self.assertEqual(
            _rules("").grant("alice", parseScopes(["repository:a:pull"])), ()
        )

    def test_file(self) -> None:
        """
        The file is read; a missing or broken one is an error naming it.
        """
        path = self.mktemp()
        with open(path, "w") as f:
            f.write(EXAMPLE)
        self.assertEqual(loadAccessRules(path), _rules())
        self.assertIn(
            path + ".missing",
            str(
                self.assertRaises(AccessRulesError, loadAccessRules, path + ".missing")
            ),
        )
        with open(path, "w") as f:
            f.write("[[rule]\n")
        self.assertIn(
            "not valid TOML",
            str(self.assertRaises(AccessRulesError, loadAccessRules, path)),
        )

    @settings(max_examples=200, deadline=None)
    @given(
        st.recursive(
            st.one_of(
                st.none(),
                st.booleans(),
                st.integers(),
                st.text(max_size=10),
                st.sampled_from(
                    ["pull", "push", "*", ANONYMOUS, "**", "users", "rule"]
                ),
            ),
            lambda children: st.one_of(
                st.lists(children, max_size=4),
                st.dictionaries(
                    st.sampled_from(
                        ["rule", "users", "repositories", "actions", "catalog", "x"]
                    ),
                    children,
                    max_size=5,
                ),
            ),
            max_leaves=20,
        )
    )
    def test_anyValues(self, document) -> None:
        """
        Any TOML-like values are rules or an L{AccessRulesError}, and rules
        that load grant without error.
        """
        try:
            rules = parseAccessRules(document)
        except AccessRulesError:
            return
        rules.grant(
            "alice", parseScopes(["repository:a/b:pull,push registry:catalog:*"])
        )
        rules.grant(None, parseScopes(["repository:a:pull"]))


class AccessRulesFileTests(SynchronousTestCase):
    """
    L{AccessRulesFile} reads its rules again on L{AccessRulesFile.reload}.
    """

    def setUp(self) -> None:
        self.file = FilePath(self.mktemp())
        self.file.setContent(EXAMPLE.encode())
        self.rules = AccessRulesFile(self.file.path)

    def write(self, text: str) -> None:
        self.file.setContent(text.encode())

    def test_reload(self) -> None:
        """
        After a reload the new rules grant, and the count is returned.
        """
        self.assertEqual(_grant(self.rules, "carol", "repository:team/x:pull"), [])
        self.write(
            '[[rule]]\nusers = ["carol"]\nrepositories = ["team/*"]\n'
            'actions = ["pull"]\n'
        )
        self.assertEqual(self.rules.reload(), 1)
        self.assertEqual(
            _grant(self.rules, "carol", "repository:team/x:pull"),
            ["repository:team/x:pull"],
        )
        self.assertEqual(_grant(self.rules, "alice", "repository:team/x:pull"), [])

    def test_badFileKeepsRules(self) -> None:
        """
        A new file that cannot be used raises why and keeps the old rules.
        """
        self.write('[[rule]]\nusers = ["carol"]\nactions = ["fly"]\n')
        self.assertRaises(AccessRulesError, self.rules.reload)
        self.assertEqual(
            _grant(self.rules, "alice", "repository:team/x:pull"),
            ["repository:team/x:pull"],
        )
