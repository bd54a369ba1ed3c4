# -*- test-case-name: tests.unit.test_cache -*-
"""
Remember resolutions, so that the balena API is asked once per name and
asker every few minutes rather than once per request.

  - Answers are kept for C{ttl} seconds (5 minutes), misses (unknown names,
    a definite L{ResolveError}) for C{missTTL} (at most 30 seconds: a fleet
    just created should not stay unknown for long), transport errors never.
  - Concurrent misses for one key share one call: the first caller starts
    it, the others wait for it.  Each waiter has its own Deferred, so one
    client hanging up cancels its own wait and nobody else's.
  - When the API cannot answer, the last answer is served if it is at most
    C{staleAge} seconds old, and a warning is logged: devices keep pulling
    through an API outage.

Entries live in an LRU map of at most C{maxSize} keys; expiry is checked
against the injected clock on each lookup.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Hashable
from typing import Any

import attrs
from cachetools import LRUCache
from twisted.internet.defer import Deferred, fail, maybeDeferred, succeed
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from regproxy.names.reference import ImageReference
from regproxy.resolve.interfaces import (
    Credentials,
    IResolver,
    Resolution,
    ResolveError,
)

DEFAULT_TTL = 300.0
DEFAULT_MISS_TTL = 10.0
MAX_MISS_TTL = 30.0
DEFAULT_STALE_AGE = 86400.0


def isDefiniteMiss(failure: Failure) -> bool:
    """
    Whether a failure is an answer (cache it briefly) rather than a
    failure to get one (never cache it).
    """
    return failure.check(ResolveError) is not None and failure.value.definite


@attrs.define
class _Entry:
    result: Any  # the answer, or a Failure for a miss
    storedAt: float
    ttl: float

    @property
    def isAnswer(self) -> bool:
        return not isinstance(self.result, Failure)


class CoalescingCache:
    """
    A TTL'd LRU map of Deferred results with in-flight coalescing and stale
    answers during outages.
    """

    _log = Logger()

    def __init__(
        self,
        clock: IReactorTime,
        ttl: float = DEFAULT_TTL,
        missTTL: float = DEFAULT_MISS_TTL,
        staleAge: float = DEFAULT_STALE_AGE,
        maxSize: int = 4096,
        isMiss: Callable[[Failure], bool] = isDefiniteMiss,
        markStale: Callable[[Any, Failure], Any] | None = None,
    ) -> None:
        if not 0 <= missTTL <= MAX_MISS_TTL:
            raise ValueError(
                f"misses may be cached for at most {MAX_MISS_TTL:g} seconds"
            )
        self._clock = clock
        self._ttl = ttl
        self._missTTL = missTTL
        self._staleAge = max(staleAge, ttl)
        self._isMiss = isMiss
        self._markStale = markStale
        self._entries: LRUCache = LRUCache(maxsize=maxSize)
        self._inFlight: dict[Hashable, list[Deferred]] = {}
        #: Lookups by outcome (hit, miss, stale, error), for the metrics.
        self.lookups: Counter[str] = Counter()

    def get(
        self,
        key: Hashable,
        compute: Callable[[], Deferred],
        label: str = "",
    ) -> Deferred:
        """
        The cached result for C{key}, or the result of C{compute()}, shared
        with every concurrent caller asking for the same key.

        @param label: Names the key in logs (never a secret).
        """
        entry = self._entries.get(key)
        now = self._clock.seconds()
        if entry is not None and now - entry.storedAt < entry.ttl:
            self.lookups["hit"] += 1
            return succeed(entry.result) if entry.isAnswer else fail(entry.result)
        waiter: Deferred = Deferred()
        waiters = self._inFlight.get(key)
        if waiters is not None:
            waiters.append(waiter)
            return waiter
        self._inFlight[key] = [waiter]
        maybeDeferred(compute).addBoth(self._settle, key, label)
        return waiter

    def _settle(self, result: Any, key: Hashable, label: str) -> None:
        waiters = self._inFlight.pop(key, [])
        now = self._clock.seconds()
        outcome = "miss"
        if not isinstance(result, Failure):
            self._entries[key] = _Entry(result, now, self._ttl)
        elif self._isMiss(result):
            self._entries[key] = _Entry(result, now, self._missTTL)
        else:
            outcome = "error"
            stale = self._entries.get(key)
            if (
                stale is not None
                and stale.isAnswer
                and now - stale.storedAt <= self._staleAge
            ):
                self._log.warn(
                    "serving a {age:.0f}s old answer for {label}: {why}",
                    age=now - stale.storedAt,
                    label=label,
                    why=getattr(result.value, "message", None) or result.type.__name__,
                )
                failure, result = result, stale.result
                if self._markStale is not None:
                    result = self._markStale(result, failure)
                outcome = "stale"
        self.lookups[outcome] += len(waiters)
        for waiter in waiters:
            if waiter.called:
                continue  # cancelled by its caller
            if isinstance(result, Failure):
                waiter.errback(result)
            else:
                waiter.callback(result)

    def invalidate(self, key: Hashable) -> None:
        self._entries.pop(key, None)

    def clear(self) -> None:
        self._entries.clear()

    def __len__(self) -> int:
        return len(self._entries)


def _markStale(result: Any, failure: Failure) -> Any:
    """
    A resolution served stale carries the error the API failed with.
    """
    if isinstance(result, Resolution) and isinstance(failure.value, Exception):
        return result.asStale(failure.value)
    return result


@implementer(IResolver)
class CachingResolver:
    """
    An L{IResolver} that asks another one at most once per name and asker
    while the answer is fresh (see the module docstring).
    """

    def __init__(
        self,
        resolver: IResolver,
        clock: IReactorTime,
        ttl: float = DEFAULT_TTL,
        missTTL: float = DEFAULT_MISS_TTL,
        staleAge: float = DEFAULT_STALE_AGE,
        maxSize: int = 4096,
    ) -> None:
        self.resolver = resolver
        self.cache = CoalescingCache(
            clock, ttl, missTTL, staleAge, maxSize, markStale=_markStale
        )

    def resolve(
        self, reference: ImageReference, credentials: Credentials
    ) -> Deferred[Resolution]:
        return self.cache.get(
            ("resolve", str(reference), credentials.cacheKey),
            lambda: self.resolver.resolve(reference, credentials),
            str(reference),
        )

    def listReleases(
        self, reference: ImageReference, credentials: Credentials
    ) -> Deferred[list[str] | None]:
        return self.cache.get(
            ("tags", reference.name, credentials.cacheKey),
            lambda: self.resolver.listReleases(reference, credentials),
            f"{reference.name} tags",
        )
