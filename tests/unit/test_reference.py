"""
Tests for L{regproxy.names.reference}.
"""

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from regproxy.names.reference import (
    BASE,
    BLOBS,
    MANIFESTS,
    TAGS,
    UPLOADS,
    Digest,
    FleetName,
    ImageReference,
    InvalidReference,
    RegistryPath,
    isRepositoryName,
    parsePath,
)

DIGEST = "sha256:" + "ab" * 32

_LOWER = "abcdefghijklmnopqrstuvwxyz0123456789"
_TAG_FIRST = _LOWER + "ABCDEFGHIJKLMNOPQRSTUVWXYZ_"
_alnum = st.text(_LOWER, min_size=1, max_size=8)
components = st.builds(
    lambda parts, seps: (
        parts[0] + "".join(s + p for s, p in zip(seps, parts[1:], strict=False))
    ),
    st.lists(_alnum, min_size=1, max_size=3),
    st.lists(st.sampled_from([".", "_", "__", "-", "--"]), min_size=2, max_size=2),
)
names = st.lists(components, min_size=1, max_size=5).map("/".join)
tags = st.builds(
    str.__add__,
    st.sampled_from(_TAG_FIRST),
    st.text(_TAG_FIRST + ".-", max_size=20),
)
digests = st.text("0123456789abcdef", min_size=64, max_size=64).map(
    lambda h: Digest("sha256", h)
)
slugs = st.text(_LOWER + "_-", min_size=1, max_size=10)
releases = st.text(_LOWER + "_.-", min_size=1, max_size=12)
fleetNames = st.builds(
    lambda org, fleet, release, service: FleetName(
        org, fleet, release, service if release is not None else None
    ),
    slugs,
    slugs,
    st.none() | releases,
    st.none() | releases,
)
imageReferences = st.builds(
    ImageReference, names, st.none() | tags, st.none()
) | st.builds(lambda n, d: ImageReference(n, digest=d), names, digests)


class RepositoryNameTests(SynchronousTestCase):
    def test_valid(self) -> None:
        """
        Lower-case components joined by slashes, with single separators.
        """
        for name in ("a", "acme/app", "a.b/c__d/e--f/g_h", "x" * 255):
            self.assertTrue(isRepositoryName(name), name)

    def test_invalid(self) -> None:
        for name in ("", "A/b", "a//b", "/a", "a/", "-a", "a-", "a..b", "x" * 256):
            self.assertFalse(isRepositoryName(name), name)


class DigestTests(SynchronousTestCase):
    def test_sha256(self) -> None:
        digest = Digest.parse(DIGEST)
        self.assertEqual((digest.algorithm, str(digest)), ("sha256", DIGEST))

    def test_wrongLength(self) -> None:
        """
        A sha256 digest must have exactly 64 lower-case hex digits.
        """
        for text in ("sha256:" + "a" * 63, "sha256:" + "A" * 64, "sha256", "sha256:"):
            with self.assertRaises(InvalidReference) as e:
                Digest.parse(text)
            self.assertEqual(e.exception.code, "DIGEST_INVALID")

    def test_otherAlgorithm(self) -> None:
        """
        Unknown algorithms follow the general grammar.
        """
        self.assertEqual(str(Digest.parse("b3:" + "z" * 32)), "b3:" + "z" * 32)


class FleetNameTests(SynchronousTestCase):
    def test_parse(self) -> None:
        self.assertEqual(
            FleetName.parse("acme/app/1.2.3/main"),
            FleetName("acme", "app", "1.2.3", "main"),
        )
        self.assertEqual(FleetName.parse("acme/app").slug, "acme/app")

    def test_notFleet(self) -> None:
        for name in ("acme", "a/b/c/d/e", "ac.me/app", "acme/APP", "acme/app/1+2"):
            self.assertRaises(InvalidReference, FleetName.parse, name)

    @given(fleetNames)
    def test_roundTrip(self, fleet: FleetName) -> None:
        self.assertEqual(FleetName.parse(str(fleet)), fleet)


class ImageReferenceTests(SynchronousTestCase):
    def test_pathReleaseWins(self) -> None:
        """
        When the path has a release, the tag does not change it.
        """
        ref = ImageReference("acme/app/1.2.3", tag="2.0.0")
        self.assertEqual(ref.fleetName(), FleetName("acme", "app", "1.2.3"))

    def test_tagSelectsRelease(self) -> None:
        """
        C{org/fleet:1.2.3} means C{org/fleet/1.2.3}.
        """
        ref = ImageReference("acme/app", tag="1.2.3")
        self.assertEqual(ref.fleetName(), FleetName("acme", "app", "1.2.3"))

    def test_latestSelectsNothing(self) -> None:
        self.assertEqual(
            ImageReference("acme/app", tag="latest").fleetName(),
            FleetName("acme", "app"),
        )

    def test_digestKept(self) -> None:
        """
        A digest reference stays a digest: it selects no release and is
        what goes upstream.
        """
        ref = ImageReference.fromManifestPath("acme/app", DIGEST)
        self.assertEqual(ref.fleetName(), FleetName("acme", "app"))
        self.assertEqual(ref.manifestReference, DIGEST)
        self.assertIsNone(ref.tag)

    def test_upperCaseTag(self) -> None:
        """
        A tag in upper case still names a release (in lower case), so the
        user is told that release does not exist.
        """
        ref = ImageReference("acme/app", tag="V1.2.3")
        self.assertEqual(ref.fleetName(), FleetName("acme", "app", "v1.2.3"))

    def test_notFleetName(self) -> None:
        self.assertIsNone(ImageReference("library/a/b/c/d").fleetName())
        self.assertIsNone(ImageReference("ubuntu", tag="22.04").fleetName())

    def test_invalid(self) -> None:
        self.assertRaises(InvalidReference, ImageReference, "Acme/app")
        self.assertRaises(InvalidReference, ImageReference, "acme", tag="-x")
        self.assertRaises(
            InvalidReference,
            ImageReference,
            "acme",
            tag="x",
            digest=Digest.parse(DIGEST),
        )

    @given(imageReferences)
    def test_roundTrip(self, ref: ImageReference) -> None:
        self.assertEqual(ImageReference.parse(str(ref)), ref)

    @settings(max_examples=200, deadline=None)
    @given(st.text())
    def test_parseNeverCrashes(self, text: str) -> None:
        """
        Any text either parses or raises L{InvalidReference}.
        """
        try:
            ref = ImageReference.parse(text)
        except InvalidReference:
            return
        self.assertEqual(str(ref), text)


class ParsePathTests(SynchronousTestCase):
    def test_base(self) -> None:
        self.assertEqual(parsePath(b"/v2/"), RegistryPath(BASE))
        self.assertEqual(parsePath("/v2"), RegistryPath(BASE))

    def test_manifest(self) -> None:
        path = parsePath(b"/v2/acme/app/1.2.3/main/manifests/latest")
        self.assertEqual(path, RegistryPath(MANIFESTS, "acme/app/1.2.3/main", "latest"))
        self.assertEqual(
            path.imageReference(), ImageReference("acme/app/1.2.3/main", tag="latest")
        )

    def test_lastMarkerWins(self) -> None:
        """
        A name may hold a segment called C{manifests} or C{blobs}; the path
        is split at the last marker.
        """
        self.assertEqual(
            parsePath("/v2/a/manifests/b/manifests/" + DIGEST),
            RegistryPath(MANIFESTS, "a/manifests/b", DIGEST),
        )
        self.assertEqual(
            parsePath("/v2/a/blobs/b/blobs/" + DIGEST),
            RegistryPath(BLOBS, "a/blobs/b", DIGEST),
        )

    def test_uploads(self) -> None:
        self.assertEqual(
            parsePath("/v2/acme/app/blobs/uploads/"),
            RegistryPath(UPLOADS, "acme/app", ""),
        )
        self.assertEqual(
            parsePath("/v2/acme/app/blobs/uploads/abc-123"),
            RegistryPath(UPLOADS, "acme/app", "abc-123"),
        )

    def test_tags(self) -> None:
        self.assertEqual(
            parsePath("/v2/acme/app/tags/list?n=10"), RegistryPath(TAGS, "acme/app")
        )

    def test_invalid(self) -> None:
        """
        Each malformed part gets its own error code.
        """
        for path, code in [
            ("/v2/Acme/manifests/latest", "NAME_INVALID"),
            ("/v2/acme/manifests/-bad", "TAG_INVALID"),
            ("/v2/acme/blobs/sha256:abc", "DIGEST_INVALID"),
            ("/v3/acme/manifests/latest", "NOT_FOUND"),
            ("/v2/acme/manifests", "NOT_FOUND"),
            (b"/v2/\xff/tags/list", "NAME_INVALID"),
        ]:
            with self.assertRaises(InvalidReference) as e:
                parsePath(path)  # type: ignore[arg-type]
            self.assertEqual(e.exception.code, code, path)

    @given(
        st.sampled_from([MANIFESTS, BLOBS, UPLOADS, TAGS]),
        names,
        tags,
        digests,
    )
    def test_roundTrip(self, kind: str, name: str, tag: str, digest: Digest) -> None:
        reference = {MANIFESTS: tag, BLOBS: str(digest), UPLOADS: "", TAGS: None}[kind]
        path = RegistryPath(kind, name, reference)
        self.assertEqual(parsePath(path.toPath()), path)

    @settings(max_examples=200, deadline=None)
    @given(st.binary() | st.text().map(lambda t: "/v2/" + t))
    def test_neverCrashes(self, path: object) -> None:
        try:
            parsed = parsePath(path)  # type: ignore[arg-type]
        except InvalidReference:
            return
        self.assertIn(parsed.kind, (BASE, MANIFESTS, BLOBS, UPLOADS, TAGS, "referrers"))
