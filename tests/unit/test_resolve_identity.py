"""
Tests for L{regproxy.resolve.identity}.
"""

from hypothesis import given
from twisted.trial.unittest import SynchronousTestCase
from zope.interface.verify import verifyObject

from regproxy.names.reference import ImageReference
from regproxy.resolve.identity import IdentityResolver
from regproxy.resolve.interfaces import Credentials, IResolver, Resolution

from .test_reference import imageReferences


class IdentityResolverTests(SynchronousTestCase):
    def test_interface(self) -> None:
        self.assertTrue(verifyObject(IResolver, IdentityResolver()))

    def test_tagKept(self) -> None:
        """
        Unlike a fleet name, a tag does not become part of the path.
        """
        d = IdentityResolver().resolve(
            ImageReference("acme/app", tag="1.2.3"), Credentials.anonymous()
        )
        self.assertEqual(self.successResultOf(d), Resolution("acme/app", "1.2.3"))

    @given(imageReferences)
    def test_unchanged(self, reference: ImageReference) -> None:
        """
        Any name and reference goes upstream as it is.
        """
        d = IdentityResolver().resolve(reference, Credentials.anonymous())
        resolution = self.successResultOf(d)
        self.assertEqual(
            (resolution.repository, resolution.reference),
            (reference.name, reference.manifestReference),
        )

    def test_tagsAreUpstreams(self) -> None:
        d = IdentityResolver().listReleases(
            ImageReference("a"), Credentials.anonymous()
        )
        self.assertIsNone(self.successResultOf(d))
