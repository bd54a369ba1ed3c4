# -*- test-case-name: tests.unit.cache.test_eviction -*-
"""
Which entries to evict, given the index's eviction order.
"""

from __future__ import annotations

from collections.abc import Iterable


def chooseEvictions(
    order: Iterable[tuple[str, int, bool]],
    limit: int,
    busy: set[str] = frozenset(),  # type: ignore[assignment]
) -> list[str]:
    """
    The digests to evict so that what stays fits in C{limit} bytes.

    @param order: Every entry as (digest, size, protected), least wanted
        first: all unprotected entries before any protected one.
    @param busy: Digests being filled again, which are never evicted.
    """
    order = list(order)
    entries = [(digest, size) for digest, size, _ in order if digest not in busy]
    total = sum(size for _, size, _ in order)
    chosen = []
    for digest, size in entries:
        if total <= limit:
            break
        chosen.append(digest)
        total -= size
    return chosen
