# -*- test-case-name: tests.unit.test_remembered -*-
"""
Resolutions remembered beyond this process, so that a restarted regproxy
can still pull a fleet name while the balena API cannot be asked.

L{RecordingResolver} sits where the API's answers come out (inside the
L{regproxy.resolve.cache.CachingResolver}, so it writes once per API call,
not once per request) and hands each answer to an L{IResolutionMemory}.
Whoever asked is part of the key: an answer is recalled only for the same
asker, as the in-memory cache does.  The memory itself lives elsewhere (the
LAN cache's index); this package only says what it must do, and how an
answer is written down (L{encodeResolution}, L{decodeResolution}).
"""

from __future__ import annotations

import json
from typing import Any

import attrs
from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from zope.interface import Interface, implementer

from regproxy.names.reference import ImageReference
from regproxy.resolve.interfaces import (
    Credentials,
    IResolver,
    Resolution,
    ResolveError,
    ResolverUnavailable,
)

#: The fields of a L{Resolution} that are its answer, in the order written.
_FIELDS = ("repository", "reference", "registry", "commit", "version")
_MORE = ("contentHash", "service")


@attrs.frozen
class Remembered:
    """
    A resolution as it was answered, and when (seconds since the epoch).
    """

    resolution: Resolution
    resolvedAt: float


class IResolutionMemory(Interface):
    """
    Where resolver answers are kept, per name (with its reference) and
    asker, across restarts.
    """

    def remember(
        reference: ImageReference,
        credentials: Credentials,
        resolution: Resolution,
        at: float,
    ) -> Deferred[None]:
        """
        The API answered C{resolution} for C{reference} asked with
        C{credentials} at C{at}.  Never fails: losing it only costs an
        offline answer later.
        """

    def forget(reference: ImageReference, credentials: Credentials) -> Deferred[None]:
        """
        The API now refuses C{reference} to these C{credentials} (or it is
        gone): nothing remembered may answer for it any more.  Never fails.
        """

    def recall(
        reference: ImageReference, credentials: Credentials
    ) -> Deferred[Remembered | None]:
        """
        The last answer remembered for C{reference} asked with exactly
        these C{credentials}, or L{None}.
        """


def encodeResolution(resolution: Resolution) -> str:
    """
    A resolution's answer as JSON text (never why it was stale).
    """
    return json.dumps(
        {name: getattr(resolution, name) for name in _FIELDS + _MORE},
        sort_keys=True,
        separators=(",", ":"),
    )


def decodeResolution(text: str) -> Resolution | None:
    """
    The resolution L{encodeResolution} wrote, or L{None} for anything else
    (a row written by another version, a damaged file).
    """
    try:
        document = json.loads(text)
    except (ValueError, TypeError, RecursionError):
        return None
    if not isinstance(document, dict):
        return None
    repository = document.get("repository")
    if not isinstance(repository, str) or not repository:
        return None
    values: dict[str, Any] = {}
    for name in _FIELDS[1:] + _MORE:
        value = document.get(name)
        if value is not None and not isinstance(value, str):
            return None
        values[name] = value
    return Resolution(repository, **values)


@implementer(IResolutionMemory)
@attrs.define
class MemoryResolutionMemory:
    """
    An L{IResolutionMemory} in this process only (for tests, and tools).
    """

    _answers: dict[tuple[str, str], Remembered] = attrs.field(factory=dict)

    def remember(
        self,
        reference: ImageReference,
        credentials: Credentials,
        resolution: Resolution,
        at: float,
    ) -> Deferred[None]:
        key = (str(reference), credentials.cacheKey)
        self._answers[key] = Remembered(resolution, at)
        return succeed(None)

    def forget(
        self, reference: ImageReference, credentials: Credentials
    ) -> Deferred[None]:
        self._answers.pop((str(reference), credentials.cacheKey), None)
        return succeed(None)

    def recall(
        self, reference: ImageReference, credentials: Credentials
    ) -> Deferred[Remembered | None]:
        return succeed(self._answers.get((str(reference), credentials.cacheKey)))


@implementer(IResolver)
@attrs.frozen
class RecordingResolver:
    """
    An L{IResolver} that hands every answer of another one to a memory,
    and tells it to forget one the API now refuses (a revoked key must not
    be answered from memory in the next outage).  Answers already stale
    are not written again: their time would lie.
    """

    resolver: IResolver
    memory: IResolutionMemory
    clock: IReactorTime

    _log = Logger()

    async def _resolve(
        self, reference: ImageReference, credentials: Credentials
    ) -> Resolution:
        try:
            resolution = await self.resolver.resolve(reference, credentials)
        except ResolverUnavailable:
            raise
        except ResolveError:
            self.memory.forget(reference, credentials).addErrback(
                lambda f: self._log.failure("forgetting {name}", f, name=str(reference))
            )
            raise
        if not resolution.stale:
            # Written behind: the request does not wait for the disk.
            self.memory.remember(
                reference, credentials, resolution, self.clock.seconds()
            ).addErrback(
                lambda f: self._log.failure(
                    "remembering {name}", f, name=str(reference)
                )
            )
        return resolution

    def resolve(
        self, reference: ImageReference, credentials: Credentials
    ) -> Deferred[Resolution]:
        return Deferred.fromCoroutine(self._resolve(reference, credentials))

    def listReleases(
        self, reference: ImageReference, credentials: Credentials
    ) -> Deferred[list[str] | None]:
        return self.resolver.listReleases(reference, credentials)
