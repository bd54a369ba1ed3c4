"""
Tests for L{regproxy.resolve.static}.
"""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase
from zope.interface.verify import verifyObject

from regproxy.names.reference import ImageReference
from regproxy.resolve.interfaces import Credentials, IResolver, NameUnknown, Resolution
from regproxy.resolve.static import (
    Entry,
    StaticMapError,
    StaticMapFile,
    StaticResolver,
    parseMap,
)

from .test_reference import names, tags

DIGEST = "sha256:" + "cd" * 32
EXAMPLE = b"""
passthrough = false

[names]
"acme/app" = "v2/9eaad9d708658bcdfc5b32c4e80074ad"
"acme/app/1.2.3" = "v2/0dee94d73571454bd4c327be78f206d3"
"tools/debug" = { repository = "library/busybox", tag = "1.36" }
"""


class StaticResolverTests(SynchronousTestCase):
    def setUp(self) -> None:
        path = self.mktemp()
        with open(path, "wb") as f:
            f.write(EXAMPLE)
        self.resolver = StaticResolver.fromFile(path)

    def resolve(self, text: str) -> Resolution:
        return self.successResultOf(
            self.resolver.resolve(ImageReference.parse(text), Credentials.anonymous())
        )

    def test_interface(self) -> None:
        self.assertTrue(verifyObject(IResolver, self.resolver))

    def test_name(self) -> None:
        self.assertEqual(
            self.resolve("acme/app"),
            Resolution("v2/9eaad9d708658bcdfc5b32c4e80074ad", None),
        )
        self.assertEqual(
            self.resolve("acme/app:latest"),
            Resolution("v2/9eaad9d708658bcdfc5b32c4e80074ad", "latest"),
        )

    def test_releaseFromPathOrTag(self) -> None:
        """
        C{acme/app/1.2.3} and C{acme/app:1.2.3} are the same entry.
        """
        expected = Resolution("v2/0dee94d73571454bd4c327be78f206d3", "latest")
        self.assertEqual(self.resolve("acme/app/1.2.3:latest"), expected)
        self.assertEqual(self.resolve("acme/app:1.2.3"), expected)

    def test_otherTagPassesThrough(self) -> None:
        self.assertEqual(
            self.resolve("acme/app:9.9"),
            Resolution("v2/9eaad9d708658bcdfc5b32c4e80074ad", "9.9"),
        )

    def test_pinnedTag(self) -> None:
        self.assertEqual(
            self.resolve("tools/debug:latest"), Resolution("library/busybox", "1.36")
        )

    def test_digestUnchanged(self) -> None:
        self.assertEqual(
            self.resolve(f"tools/debug@{DIGEST}"), Resolution("library/busybox", DIGEST)
        )

    def test_unknown(self) -> None:
        d = self.resolver.resolve(ImageReference("acme/other"), Credentials.anonymous())
        self.assertEqual(self.failureResultOf(d, NameUnknown).value.status, 404)

    def test_passthrough(self) -> None:
        resolver = StaticResolver({}, passthrough=True)
        d = resolver.resolve(
            ImageReference("library/alpine", tag="3"), Credentials.anonymous()
        )
        self.assertEqual(self.successResultOf(d), Resolution("library/alpine", "3"))

    def test_badFiles(self) -> None:
        """
        Each mistake in the file is refused with a message naming it.
        """
        for document, fragment in [
            ({"names": {"Acme": "x"}}, "'Acme'"),
            ({"names": {"a": "B"}}, "'B'"),
            ({"names": {"a": {"repository": "b", "tag": "-x"}}}, "'-x'"),
            ({"names": {"a": {"repo": "b"}}}, "'a'"),
            ({"name": {}}, "unknown keys"),
            ({"passthrough": "yes"}, "passthrough"),
        ]:
            with self.assertRaises(StaticMapError) as e:
                parseMap(document)  # type: ignore[arg-type]
            self.assertIn(fragment, str(e.exception))

    def test_unreadable(self) -> None:
        self.assertRaises(StaticMapError, StaticResolver.fromFile, self.mktemp())
        path = self.mktemp()
        with open(path, "w") as f:
            f.write("[names\n")
        self.assertRaises(StaticMapError, StaticResolver.fromFile, path)

    @settings(max_examples=50, deadline=None)
    @given(
        st.dictionaries(
            names,
            names | st.builds(lambda r, t: {"repository": r, "tag": t}, names, tags),
            max_size=4,
        )
    )
    def test_mapRoundTrip(self, mapping: dict) -> None:
        """
        Every valid entry resolves to what it says.
        """
        entries, _ = parseMap({"names": mapping})
        for name, value in mapping.items():
            if isinstance(value, str):
                self.assertEqual(entries[name], Entry(value))
            else:
                self.assertEqual(
                    entries[name], Entry(value["repository"], value["tag"])
                )

    @settings(max_examples=100, deadline=None)
    @given(
        st.dictionaries(
            st.sampled_from(["names", "passthrough", "x"]),
            st.recursive(
                st.none() | st.booleans() | st.text(max_size=10),
                lambda c: (
                    st.dictionaries(st.text(max_size=10), c, max_size=3)
                    | st.lists(c, max_size=3)
                ),
                max_leaves=8,
            ),
        )
    )
    def test_neverCrashes(self, document: dict) -> None:
        try:
            parseMap(document)
        except StaticMapError:
            pass


class StaticMapFileTests(SynchronousTestCase):
    """
    L{StaticMapFile} reads its map again on L{StaticMapFile.reload}.
    """

    def setUp(self) -> None:
        self.path = self.mktemp()
        self.write(EXAMPLE)
        self.resolver = StaticMapFile(self.path)

    def write(self, data: bytes) -> None:
        with open(self.path, "wb") as f:
            f.write(data)

    def resolve(self, text: str):
        return self.resolver.resolve(
            ImageReference.parse(text), Credentials.anonymous()
        )

    def test_interface(self) -> None:
        self.assertTrue(verifyObject(IResolver, self.resolver))

    def test_reload(self) -> None:
        """
        A name added to the file resolves after a reload, which says how
        many names the map holds; a name taken out no longer resolves.
        """
        self.write(b'[names]\n"acme/new" = "v2/0123"\n')
        self.assertEqual(self.resolver.reload(), 1)
        self.assertEqual(
            self.successResultOf(self.resolve("acme/new:1")), Resolution("v2/0123", "1")
        )
        self.failureResultOf(self.resolve("acme/app"), NameUnknown)

    def test_badFileKeepsMap(self) -> None:
        """
        A new map that cannot be used raises why and keeps the old one.
        """
        self.write(b'[names]\n"acme/new" = 5\n')
        error = self.assertRaises(StaticMapError, self.resolver.reload)
        self.assertIn("acme/new", str(error))
        self.assertEqual(
            self.successResultOf(self.resolve("acme/app")),
            Resolution("v2/9eaad9d708658bcdfc5b32c4e80074ad", None),
        )
