"""
Tests for L{regproxy.names.scope}.
"""

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from regproxy.names.scope import Scope, parseScope, parseScopes

_lower = "abcdefghijklmnopqrstuvwxyz0123456789"
resourceTypes = st.text(_lower, min_size=1, max_size=12)
names = st.text(
    "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._-/:",
    min_size=1,
    max_size=40,
)
actions = st.lists(
    st.one_of(
        st.just("*"), st.text("abcdefghijklmnopqrstuvwxyz", min_size=1, max_size=8)
    ),
    max_size=4,
    unique=True,
)
scopes = st.builds(
    Scope,
    resourceTypes,
    st.one_of(st.none(), resourceTypes),
    names,
    actions,
)


class ParseScopeTests(SynchronousTestCase):
    """
    Single scopes, from the examples of the token specification and the
    clients we serve.
    """

    def test_repository(self) -> None:
        """
        A plain repository scope gives its type, name and actions.
        """
        self.assertEqual(
            parseScope("repository:library/alpine:pull,push"),
            Scope("repository", None, "library/alpine", ("pull", "push")),
        )

    def test_nameWithPort(self) -> None:
        """
        A name holding a host and port keeps its colon: the actions are what
        follows the last colon, the type what precedes the first.
        """
        self.assertEqual(
            parseScope("repository:host:5000/a/b:pull,push"),
            Scope("repository", None, "host:5000/a/b", ("pull", "push")),
        )

    def test_catalog(self) -> None:
        """
        The catalog scope has the wildcard action.
        """
        self.assertEqual(
            parseScope("registry:catalog:*"),
            Scope("registry", None, "catalog", ("*",)),
        )

    def test_resourceClass(self) -> None:
        """
        A resource class in parentheses is kept apart from the type.
        """
        scope = parseScope("repository(plugin):a:pull")
        self.assertEqual(scope, Scope("repository", "plugin", "a", ("pull",)))
        assert scope is not None
        self.assertEqual(str(scope), "repository(plugin):a:pull")

    def test_repeatedActions(self) -> None:
        """
        A repeated action counts once.
        """
        self.assertEqual(
            parseScope("repository:a:pull,pull,push"),
            Scope("repository", None, "a", ("pull", "push")),
        )

    def test_noActions(self) -> None:
        """
        An empty action list is allowed by the grammar.
        """
        self.assertEqual(
            parseScope("repository:a:"), Scope("repository", None, "a", ())
        )

    def test_malformed(self) -> None:
        """
        Malformed scopes are ignored, not errors.
        """
        for text in [
            "",
            "repository",
            "repository:alpine",
            ":alpine:pull",
            "repository::pull",
            "Repository:a:pull",
            "repository:a:pull,",
            "repository:a:Pull",
            "repository:a b:pull",
            "repository(:a:pull",
            "repository(x)(y):a:pull",
            "repository():a:pull",
            "repository:a:pull push",
        ]:
            self.assertIsNone(parseScope(text), text)

    @settings(max_examples=100, deadline=None)
    @given(scopes)
    def test_roundTrip(self, scope: Scope) -> None:
        """
        Serializing and parsing a scope gives it back.
        """
        self.assertEqual(parseScope(scope.serialize()), scope)

    @settings(max_examples=300, deadline=None)
    @given(st.text())
    def test_anyText(self, text: str) -> None:
        """
        No text makes the parser fail; what it accepts serializes back to
        the same text, except for repeated actions.
        """
        scope = parseScope(text)
        if scope is not None:
            self.assertEqual(parseScope(scope.serialize()), scope)


class ParseScopesTests(SynchronousTestCase):
    """
    The C{scope} values of a token request.
    """

    def test_repeatedAndSpaced(self) -> None:
        """
        Several query values and several scopes in one value are all read;
        malformed ones are dropped.
        """
        self.assertEqual(
            parseScopes(
                ["repository:a:pull", "repository:b:push registry:catalog:* junk"]
            ),
            (
                Scope("repository", None, "a", ("pull",)),
                Scope("repository", None, "b", ("push",)),
                Scope("registry", None, "catalog", ("*",)),
            ),
        )

    def test_merged(self) -> None:
        """
        Two scopes for the same repository become one with both actions.
        """
        self.assertEqual(
            parseScopes(
                ["repository:a:pull", "repository:b:pull", "repository:a:push,pull"]
            ),
            (
                Scope("repository", None, "a", ("pull", "push")),
                Scope("repository", None, "b", ("pull",)),
            ),
        )

    def test_nothing(self) -> None:
        """
        No scope at all (a C{docker login}) gives an empty tuple.
        """
        self.assertEqual(parseScopes([]), ())
        self.assertEqual(parseScopes([""]), ())

    @settings(max_examples=200, deadline=None)
    @given(st.lists(st.text(), max_size=5))
    def test_anyValues(self, values: list[str]) -> None:
        """
        Any query values parse without error into valid scopes.
        """
        for scope in parseScopes(values):
            self.assertEqual(parseScope(str(scope)), scope)

    @settings(max_examples=100, deadline=None)
    @given(
        st.lists(
            scopes,
            max_size=5,
            unique_by=lambda s: (s.resourceType, s.resourceClass, s.name),
        )
    )
    def test_roundTripMany(self, many: list[Scope]) -> None:
        """
        Distinct scopes joined by spaces come back in order.
        """
        self.assertEqual(parseScopes([" ".join(map(str, many))]), tuple(many))
