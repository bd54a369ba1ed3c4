"""
Tests for L{regproxy.resolve.remembered}: how a resolution is written down
and read back, and which answers the recording resolver hands on.
"""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st
from twisted.internet.defer import fail, succeed
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import implementer
from zope.interface.verify import verifyObject

from regproxy.names.reference import ImageReference
from regproxy.resolve.interfaces import (
    Credentials,
    IResolver,
    NameUnknown,
    Resolution,
    ResolverUnavailable,
)
from regproxy.resolve.remembered import (
    IResolutionMemory,
    MemoryResolutionMemory,
    RecordingResolver,
    Remembered,
    decodeResolution,
    encodeResolution,
)

REFERENCE = ImageReference("acme/app", tag="1.2.3")
ANSWER = Resolution("v2/" + "a" * 32, "latest", "registry.example", "c" * 40)

optionalText = st.none() | st.text(max_size=40)
resolutions = st.builds(
    Resolution,
    repository=st.text(min_size=1, max_size=60),
    reference=optionalText,
    registry=optionalText,
    commit=optionalText,
    version=optionalText,
    contentHash=optionalText,
    service=optionalText,
)


class EncodingTests(SynchronousTestCase):
    @given(resolutions)
    def test_roundTrip(self, resolution: Resolution) -> None:
        """
        Every resolution reads back as it was written.
        """
        self.assertEqual(decodeResolution(encodeResolution(resolution)), resolution)

    @given(st.text(max_size=200))
    def test_garbage(self, text: str) -> None:
        """
        Anything else reads as nothing, or as a resolution: never a crash.
        """
        result = decodeResolution(text)
        self.assertTrue(result is None or isinstance(result, Resolution))

    def test_shapes(self) -> None:
        """
        JSON that is not a resolution's (a list, no repository, a number
        where text belongs, deep nesting) reads as nothing.
        """
        for text in (
            "[]",
            "{}",
            '{"repository": ""}',
            '{"repository": 3}',
            '{"repository": "r", "reference": 1}',
            "[" * 100000,
        ):
            self.assertIsNone(decodeResolution(text), text[:40])

    def test_staleNotWritten(self) -> None:
        """
        Why an answer was stale is not part of what is written.
        """
        stale = ANSWER.asStale(ResolverUnavailable("down"))
        self.assertEqual(encodeResolution(stale), encodeResolution(ANSWER))
        decoded = decodeResolution(encodeResolution(stale))
        assert decoded is not None
        self.assertFalse(decoded.stale)


@implementer(IResolver)
class Answering:
    def __init__(self, result) -> None:
        self.result = result

    def resolve(self, reference, credentials):
        if isinstance(self.result, Exception):
            return fail(self.result)
        return succeed(self.result)

    def listReleases(self, reference, credentials):
        return succeed(["1.2.3"])


class RecordingResolverTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.clock.advance(1000)
        self.memory = MemoryResolutionMemory()
        self.inner = Answering(ANSWER)
        self.resolver = RecordingResolver(self.inner, self.memory, self.clock)

    def recall(self, credentials: Credentials) -> Remembered | None:
        return self.successResultOf(self.memory.recall(REFERENCE, credentials))

    def test_interfaces(self) -> None:
        verifyObject(IResolver, self.resolver)
        verifyObject(IResolutionMemory, self.memory)

    def test_answerRemembered(self) -> None:
        """
        An answer is remembered with when it was given, for its asker only.
        """
        alice = Credentials.fromClient("alice-key")
        self.assertEqual(
            self.successResultOf(self.resolver.resolve(REFERENCE, alice)), ANSWER
        )
        self.assertEqual(self.recall(alice), Remembered(ANSWER, 1000.0))
        self.assertIsNone(self.recall(Credentials.anonymous()))
        self.assertIsNone(self.recall(Credentials.fromClient("bob-key")))
        self.assertIsNone(
            self.successResultOf(
                self.memory.recall(ImageReference("acme/app", tag="2.0.0"), alice)
            )
        )

    def test_staleNotRemembered(self) -> None:
        """
        A stale answer is not written again: it would look fresh.
        """
        self.inner.result = ANSWER.asStale(ResolverUnavailable("down"))
        self.successResultOf(self.resolver.resolve(REFERENCE, Credentials()))
        self.assertIsNone(self.recall(Credentials()))

    def test_refusalForgets(self) -> None:
        """
        Once the API refuses a name to an asker it answered before (its key
        was revoked, or the fleet went), the remembered answer is gone: the
        next outage does not answer from it.  An API that cannot be asked
        forgets nothing.
        """
        alice = Credentials.fromClient("alice-key")
        self.successResultOf(self.resolver.resolve(REFERENCE, alice))
        self.inner.result = ResolverUnavailable("down")
        self.failureResultOf(self.resolver.resolve(REFERENCE, alice))
        self.assertEqual(self.recall(alice), Remembered(ANSWER, 1000.0))
        self.inner.result = NameUnknown("no fleet acme/app")
        self.failureResultOf(self.resolver.resolve(REFERENCE, alice), NameUnknown)
        self.assertIsNone(self.recall(alice))

    def test_errorsPassThrough(self) -> None:
        """
        A failure is the caller's, and nothing is remembered.
        """
        self.inner.result = NameUnknown("no fleet acme/app")
        self.failureResultOf(
            self.resolver.resolve(REFERENCE, Credentials()), NameUnknown
        )
        self.assertIsNone(self.recall(Credentials()))

    def test_memoryFailing(self) -> None:
        """
        A memory that cannot write costs nothing but a log line.
        """

        @implementer(IResolutionMemory)
        class Broken:
            def remember(self, reference, credentials, resolution, at):
                return fail(OSError("disk full"))

            def forget(self, reference, credentials):
                return fail(OSError("disk full"))

            def recall(self, reference, credentials):
                return succeed(None)

        resolver = RecordingResolver(self.inner, Broken(), self.clock)
        self.assertEqual(
            self.successResultOf(resolver.resolve(REFERENCE, Credentials())), ANSWER
        )
        self.assertEqual(len(self.flushLoggedErrors(OSError)), 1)

    def test_listReleases(self) -> None:
        self.assertEqual(
            self.successResultOf(self.resolver.listReleases(REFERENCE, Credentials())),
            ["1.2.3"],
        )
