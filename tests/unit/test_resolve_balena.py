"""
Tests for L{regproxy.resolve.balena}, driven through the fake balena API.
"""

from __future__ import annotations

from typing import Any

from treq.testing import StubTreq
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase
from zope.interface.verify import verifyObject

from regproxy.names.reference import ImageReference
from regproxy.resolve.balena import BalenaResolver
from regproxy.resolve.interfaces import (
    Credentials,
    IResolver,
    ManifestUnknown,
    NameUnknown,
    Resolution,
    ResolveError,
    ResolverUnavailable,
    ServiceRequired,
)
from regproxy.testing.fakebalena import (
    ALICE_KEY,
    BOB_KEY,
    DRAFT_VERSION,
    FakeBalenaAPI,
    defaultFixture,
)

API = "https://api.example"
DIGEST = "sha256:" + "12" * 32
ANONYMOUS = Credentials.anonymous()
ALICE = Credentials.fromClient(ALICE_KEY)
BOB = Credentials.fromClient(BOB_KEY)


class Harness:
    """
    A resolver over a fresh fake API, with a clock for time-outs.
    """

    def __init__(self) -> None:
        self.fixture = defaultFixture()
        self.api = FakeBalenaAPI(self.fixture)
        self.stub = StubTreq(self.api)
        self.clock = Clock()
        self.resolver = BalenaResolver(API, self.stub, self.clock, timeout=30)

    def resolve(self, text: str, credentials: Credentials = ANONYMOUS) -> Any:
        d = self.resolver.resolve(ImageReference.parse(text), credentials)
        self.stub.flush()
        return d

    def listReleases(self, name: str, credentials: Credentials = ANONYMOUS) -> Any:
        d = self.resolver.listReleases(ImageReference(name), credentials)
        self.stub.flush()
        return d

    def expected(
        self,
        slug: str,
        version: str,
        service: str = "main",
        reference: str | None = "latest",
    ) -> Resolution:
        release = self.fixture.release(slug, version)
        image = self.fixture.images(slug, version)[service]
        return Resolution(
            repository=self.fixture.repository(slug, version, service),
            reference=reference,
            registry="registry2.balena-cloud.com",
            commit=release["commit"],
            version=version,
            contentHash=image["content_hash"],
            service=service,
        )


class SelectorTests(SynchronousTestCase):
    """
    Every selector finds the release DESIGN.md says it does.
    """

    def setUp(self) -> None:
        self.h = Harness()

    def assertResolves(
        self, text: str, slug: str, version: str, service: str = "main", **kw: Any
    ) -> Resolution:
        result = self.successResultOf(
            self.h.resolve(text, kw.pop("credentials", ANONYMOUS))
        )
        # A tag is asked upstream as latest; no reference stays none.
        kw.setdefault("reference", "latest" if ":" in text else None)
        self.assertEqual(result, self.h.expected(slug, version, service, **kw))
        return result

    def test_interface(self) -> None:
        self.assertTrue(verifyObject(IResolver, self.h.resolver))

    def test_aliases(self) -> None:
        """
        No release, C{latest}, C{current}, C{default} and C{pinned} all give
        the fleet's target release.
        """
        self.assertResolves("acme/public-app", "acme/public-app", "2.0.0")
        for text in (
            "acme/public-app:latest",
            "acme/public-app:current",
            "acme/public-app/default",
            "acme/public-app/pinned:latest",
        ):
            self.assertResolves(text, "acme/public-app", "2.0.0")

    def test_finalHighestRevision(self) -> None:
        """
        C{1.2.3} is the final release with the highest revision, from the
        path or from the tag.
        """
        for text in ("acme/public-app/1.2.3", "acme/public-app:1.2.3"):
            self.assertResolves(text, "acme/public-app", "1.2.3+rev2")

    def test_draftByFullVersion(self) -> None:
        self.assertResolves(
            f"acme/public-app:{DRAFT_VERSION}", "acme/public-app", DRAFT_VERSION
        )

    def test_commit(self) -> None:
        """
        A commit in full (32 or 40 hex digits) or a unique prefix of 7 or
        more finds its release.
        """
        draft = self.h.fixture.release("acme/public-app", DRAFT_VERSION)["commit"]
        target = self.h.fixture.release("acme/public-app", "2.0.0")["commit"]
        self.assertEqual(len(draft), 40)
        for selector in (draft, draft[:7], target, target[:12]):
            version = DRAFT_VERSION if selector in draft else "2.0.0"
            self.assertResolves(
                f"acme/public-app/{selector}", "acme/public-app", version
            )

    def test_ambiguousCommitPrefix(self) -> None:
        """
        A prefix two commits share is refused, naming both.
        """
        failure = self.failureResultOf(
            self.h.resolve("acme/public-app/abcdef1"), ManifestUnknown
        )
        self.assertIn("ambiguous", failure.value.message)
        self.assertIn("abcdef1" + "0" * 25, failure.value.message)

    def test_fullCommitAmongPrefixes(self) -> None:
        self.assertResolves(
            "acme/public-app/abcdef1" + "0" * 25, "acme/public-app", "1.2.3"
        )

    def test_service(self) -> None:
        """
        The fourth segment picks the service's image.
        """
        for service in ("frontend", "backend"):
            self.assertResolves(
                f"acme/multi/1.0.0/{service}", "acme/multi", "1.0.0", service=service
            )
            self.assertResolves(
                f"acme/multi/latest/{service}:latest",
                "acme/multi",
                "1.0.0",
                service=service,
            )

    def test_digestKept(self) -> None:
        """
        A digest goes upstream as it is; without a release in the path it
        finds the release holding an image with that digest.
        """
        image = self.h.fixture.images("acme/public-app", "1.2.3")["main"]
        digest = image["content_hash"]
        self.assertResolves(
            f"acme/public-app@{digest}", "acme/public-app", "1.2.3", reference=digest
        )
        self.assertResolves(
            f"acme/public-app/1.2.3@{DIGEST}",
            "acme/public-app",
            "1.2.3+rev2",
            reference=DIGEST,
        )

    def test_unknownDigestUsesTarget(self) -> None:
        self.assertResolves(
            f"acme/public-app@{DIGEST}", "acme/public-app", "2.0.0", reference=DIGEST
        )

    def test_digestPicksService(self) -> None:
        """
        In a multi-service fleet a digest names its image, no service needed.
        """
        digest = self.h.fixture.images("acme/multi", "1.0.0")["backend"]["content_hash"]
        self.assertResolves(
            f"acme/multi@{digest}",
            "acme/multi",
            "1.0.0",
            service="backend",
            reference=digest,
        )

    def test_oneAPICall(self) -> None:
        """
        A resolution is one API call, authenticated with the asker's key.
        """
        self.successResultOf(self.h.resolve("acme/private-app:1.0.0", ALICE))
        [call] = self.h.api.apiCalls
        self.assertEqual((call.path, call.user), ("/v6/application", "alice"))


class ErrorTests(SynchronousTestCase):
    """
    Misses say what happened, with hints.
    """

    def setUp(self) -> None:
        self.h = Harness()

    def assertFails(
        self, text: str, kind: type, credentials: Credentials = ANONYMOUS
    ) -> Any:
        return self.failureResultOf(self.h.resolve(text, credentials), kind).value

    def test_unknownFleet(self) -> None:
        error = self.assertFails("acme/nope", NameUnknown)
        self.assertEqual((error.status, error.code), (404, "NAME_UNKNOWN"))

    def test_notFleetName(self) -> None:
        self.assertFails("library/ubuntu/a/b/c", NameUnknown)
        self.assertEqual(self.h.api.apiCalls, [])

    def test_privateLooksMissing(self) -> None:
        """
        A private fleet asked for anonymously, or with the key of someone
        outside its organization, fails exactly as a missing one does.
        """
        missing = self.assertFails("acme/private-nope:1.0.0", NameUnknown)
        for credentials in (ANONYMOUS, BOB, Credentials.fromClient("wrong")):
            error = self.assertFails("acme/private-app:1.0.0", NameUnknown, credentials)
            self.assertEqual(
                error.toRegistryError().body(),
                missing.toRegistryError()
                .body()
                .replace(b"private-nope", b"private-app"),
            )

    def test_privateWithKey(self) -> None:
        self.successResultOf(self.h.resolve("acme/private-app/1.0.0", ALICE))

    def test_serverKeySeesPrivate(self) -> None:
        """
        By default the server's own key resolves what it may see.
        """
        server = Credentials.fromServer(ALICE_KEY)
        self.successResultOf(self.h.resolve("acme/private-app", server))

    def test_unknownRelease(self) -> None:
        error = self.assertFails("acme/public-app/9.9.9", ManifestUnknown)
        self.assertEqual((error.status, error.code), (404, "MANIFEST_UNKNOWN"))
        self.assertIn("9.9.9", error.message)

    def test_vPrefixHint(self) -> None:
        error = self.assertFails("acme/public-app:v1.2.3", ManifestUnknown)
        self.assertIn("did you mean 1.2.3?", error.message)

    def test_draftHint(self) -> None:
        """
        A version that exists only as a draft says drafts need their full
        version, with an example.
        """
        error = self.assertFails("acme/public-app/1.3.0", ManifestUnknown)
        self.assertIn(
            f"drafts need their full version, e.g. {DRAFT_VERSION}", error.message
        )

    def test_failedRelease(self) -> None:
        error = self.assertFails("acme/public-app/1.2.4", ManifestUnknown)
        self.assertIn("did not build successfully", error.message)

    def test_failedImage(self) -> None:
        error = self.assertFails("acme/public-app/1.9.0", ManifestUnknown)
        self.assertIn("did not build successfully", error.message)

    def test_failedTarget(self) -> None:
        self.h.fixture.addRelease("acme/empty", "0.1.0", status="failed", target=True)
        error = self.assertFails("acme/empty", ManifestUnknown)
        self.assertIn("did not build successfully", error.message)

    def test_noTarget(self) -> None:
        self.assertFails("acme/empty:latest", ManifestUnknown)

    def test_multiServiceNeedsService(self) -> None:
        """
        A two-service release without a service is a 400 naming both.
        """
        error = self.assertFails("acme/multi", ServiceRequired)
        self.assertEqual(error.status, 400)
        self.assertEqual(error.services, ("backend", "frontend"))
        self.assertIn("backend, frontend", error.message)
        self.assertIn("acme/multi/latest/backend", error.message)

    def test_unknownService(self) -> None:
        error = self.assertFails("acme/multi/1.0.0/db", ManifestUnknown)
        self.assertIn("backend, frontend", error.message)

    def test_apiDown(self) -> None:
        """
        An API answering 503 or dropping the connection is a
        L{ResolverUnavailable}, not a miss.
        """
        self.h.api.stop("503")
        error = self.assertFails("acme/public-app", ResolverUnavailable)
        self.assertEqual(error.status, 503)
        self.h.api.stop("drop")
        error = self.assertFails("acme/public-app", ResolverUnavailable)
        self.assertEqual(error.status, 502)
        self.assertFalse(error.definite)

    def test_apiHangs(self) -> None:
        """
        An API that never answers is a 504 after the time-out.
        """
        self.h.api.stop("hang")
        d = self.h.resolve("acme/public-app")
        self.assertNoResult(d)
        self.h.clock.advance(30)
        error = self.failureResultOf(d, ResolverUnavailable).value
        self.assertEqual(error.status, 504)

    def test_errorsNeverHoldKeys(self) -> None:
        """
        No error message holds the API key used.
        """
        for text in ("acme/nope", "acme/multi", "acme/public-app/9.9.9"):
            error = self.failureResultOf(
                self.h.resolve(text, ALICE), ResolveError
            ).value
            self.assertNotIn(ALICE_KEY, repr(error) + error.message)
        self.assertNotIn(ALICE_KEY, repr(ALICE))


class ListReleasesTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.h = Harness()

    def test_releases(self) -> None:
        """
        Successful releases whose images all built: finals by version,
        drafts by full version, each once.
        """
        self.assertEqual(
            self.successResultOf(self.h.listReleases("acme/public-app")),
            ["1.2.3", DRAFT_VERSION, "2.0.0"],
        )

    def test_private(self) -> None:
        self.failureResultOf(self.h.listReleases("acme/private-app"), NameUnknown)
        self.assertEqual(
            self.successResultOf(self.h.listReleases("acme/private-app", ALICE)),
            ["1.0.0"],
        )

    def test_releaseRepository(self) -> None:
        self.assertEqual(
            self.successResultOf(self.h.listReleases("acme/multi/1.0.0/frontend")),
            ["latest"],
        )

    def test_notFleet(self) -> None:
        self.failureResultOf(self.h.listReleases("library"), NameUnknown)
