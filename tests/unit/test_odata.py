"""
Tests for L{regproxy.resolve.odata}.
"""

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from regproxy.resolve.odata import (
    Query,
    allOf,
    anyMatch,
    anyOf,
    eq,
    literal,
    quoteString,
    startswith,
    unquoteString,
)

# Characters a generic URL encoder would escape and the API refuses escaped.
SYNTAX = ",/():'$"


class QuoteTests(SynchronousTestCase):
    def test_slug(self) -> None:
        """
        A slash inside a literal is encoded; the quotes are not.
        """
        self.assertEqual(quoteString("acme/app"), "'acme%2Fapp'")

    def test_quoteDoubled(self) -> None:
        self.assertEqual(quoteString("it's"), "'it''s'")

    def test_literals(self) -> None:
        self.assertEqual(
            [literal(v) for v in (None, True, False, 42)],
            ["null", "true", "false", "42"],
        )
        self.assertRaises(TypeError, literal, 1.5)

    @given(st.text())
    def test_roundTrip(self, value: str) -> None:
        self.assertEqual(unquoteString(quoteString(value)), value)

    @given(st.text())
    def test_onlySafeCharacters(self, value: str) -> None:
        """
        A literal holds nothing a query string or the OData syntax could
        misread: no C{&}, C{=}, C{#}, C{+}, spaces, parentheses, commas or
        slashes, and quotes only in pairs.
        """
        inner = quoteString(value)[1:-1]
        for c in "&=#+ ()/,:$?":
            self.assertNotIn(c, inner)
        self.assertEqual(inner.replace("''", "").count("'"), 0)

    @settings(max_examples=200, deadline=None)
    @given(st.text())
    def test_unquoteNeverCrashes(self, text: str) -> None:
        try:
            unquoteString(text)
        except ValueError:
            pass


class QueryTests(SynchronousTestCase):
    def test_filterSyntaxLiteral(self) -> None:
        """
        The OData syntax stays literal, spaces are C{%20}, and nested
        options are separated with C{&} inside the parentheses.
        """
        query = Query(
            select=("id", "slug"),
            filter=allOf(eq("slug", "acme/app"), startswith("commit", "abc")),
            expand=(
                (
                    "owns__release",
                    Query(select=("id",), filter=eq("status", "success")),
                ),
            ),
        )
        self.assertEqual(
            query.url("https://api.example/", "v6/application"),
            "https://api.example/v6/application?$select=id,slug"
            "&$filter=(slug%20eq%20'acme%2Fapp')%20and%20(startswith(commit,'abc'))"
            "&$expand=owns__release($select=id&$filter=status%20eq%20'success')",
        )

    def test_anyOf(self) -> None:
        self.assertEqual(anyOf(eq("a", 1)), "a%20eq%201")
        self.assertEqual(
            anyOf(eq("a", 1), eq("b", 2)), "(a%20eq%201)%20or%20(b%20eq%202)"
        )

    def test_lambda(self) -> None:
        self.assertEqual(
            anyMatch("contains__image", "ri", eq("ri/image/content_hash", "x")),
            "contains__image/any(ri:ri/image/content_hash%20eq%20'x')",
        )

    def test_orderbyAndTop(self) -> None:
        self.assertEqual(
            Query(orderby="revision desc", top=1).options(),
            "$orderby=revision%20desc&$top=1",
        )
