"""
Property tests for eviction and the index: any sequence of fills, tags,
uses, links and time passing keeps the store within its size, evicts
protected entries only after every unprotected one, and leaves no link
without its entry.
"""

from __future__ import annotations

import os
import shutil
import tempfile

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    invariant,
    rule,
    run_state_machine_as_test,
)
from twisted.internet.defer import Deferred
from twisted.internet.testing import MemoryReactorClock
from twisted.trial.unittest import SynchronousTestCase

from regproxy.cache import files
from regproxy.cache.eviction import chooseEvictions
from regproxy.cache.index import CacheIndex, TagEntry
from regproxy.cache.store import BlobStore
from regproxy.cache.threads import runSynchronously
from tests.unit.cache.helpers import digestOf

MAX_SIZE = 2000
PROTECT_FOR = 100.0

# Thousands of fills: in memory where the machine has it.
_FAST = "/dev/shm" if os.access("/dev/shm", os.W_OK) else None


def result(d: Deferred):
    box = []
    d.addBoth(box.append)
    (value,) = box
    if hasattr(value, "raiseException"):
        value.raiseException()
    return value


class StoreMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.directory = tempfile.mkdtemp(dir=_FAST)
        self.reactor = MemoryReactorClock()
        self.index = CacheIndex.open(
            os.path.join(self.directory, "index.sqlite"),
            self.reactor,
            runner=runSynchronously,
        )
        self.store = BlobStore(
            self.directory,
            self.index,
            self.reactor,
            MAX_SIZE,
            0,
            protectFor=PROTECT_FOR,
            diskRunner=runSynchronously,
            freeSpace=lambda path: 10**12,
            durable=False,
        )
        self.contents: dict[str, bytes] = {}
        self.references: dict[str, list[str]] = {}
        self.tags: dict[str, tuple[str, float]] = {}
        self.held: set[str] = set()

    def teardown(self) -> None:
        result(self.index.close())
        shutil.rmtree(self.directory)

    def protected(self) -> set[str]:
        since = self.reactor.seconds() - PROTECT_FOR
        todo = [digest for digest, at in self.tags.values() if at >= since]
        seen: set[str] = set()
        while todo:
            digest = todo.pop()
            if digest not in seen:
                seen.add(digest)
                todo.extend(self.references.get(digest, []))
        return seen

    def keep(self, data: bytes) -> str:
        """
        Fill C{data}, checking that eviction took only what it had to.
        """
        digest = digestOf(data)
        self.contents[digest] = data
        before, protected = set(self.held), self.protected()
        fill = self.store.fill(digest, len(data))
        fill.write(data)
        kept = result(fill.finish())
        assert kept == (len(data) <= MAX_SIZE), (kept, len(data))
        self.held = {
            d for d in self.contents if result(self.store.lookup(d)) is not None
        }
        evicted = before - self.held
        if evicted & protected:
            assert not ((before - protected) - evicted - {digest}), (
                "protected went first"
            )
        return digest

    @rule(n=st.integers(0, 30), size=st.integers(1, 900))
    def fillBlob(self, n: int, size: int) -> None:
        self.keep(bytes([n]) * size)

    @rule(
        tag=st.sampled_from(["v1", "v2", "latest"]),
        n=st.integers(0, 1000),
        children=st.lists(st.integers(0, 30), max_size=3),
        sizes=st.lists(st.integers(1, 500), min_size=3, max_size=3),
    )
    def pullTag(self, tag: str, n: int, children: list[int], sizes: list[int]) -> None:
        childDigests = [
            self.keep(bytes([child]) * size)
            for child, size in zip(children, sizes, strict=False)
        ]
        manifest = self.keep(
            b"manifest %d " % (n,) + b" ".join(d.encode() for d in childDigests)
        )
        self.references[manifest] = childDigests
        result(self.index.setReferences(manifest, childDigests))
        entry = TagEntry(
            manifest, "application/json", len(self.contents[manifest]), 0.0
        )
        result(self.index.setTag("up", "lib/app", tag, entry))
        self.tags[tag] = (manifest, self.reactor.seconds())

    @rule(data=st.data())
    def link(self, data: st.DataObject) -> None:
        if self.contents:
            digest = data.draw(st.sampled_from(sorted(self.contents)))
            result(
                self.index.link("up", data.draw(st.sampled_from(["a", "b"])), digest)
            )

    @rule(data=st.data())
    def use(self, data: st.DataObject) -> None:
        if self.held:
            self.index.touch(data.draw(st.sampled_from(sorted(self.held))))

    @rule(seconds=st.floats(0.5, 80))
    def advance(self, seconds: float) -> None:
        self.reactor.advance(seconds)

    @invariant()
    def withinSize(self) -> None:
        assert self.store.counters.sizeBytes <= MAX_SIZE

    @invariant()
    def countersMatchDisk(self) -> None:
        onDisk = sum(
            os.path.getsize(files.entryPath(self.directory, d))
            for d in files.storedDigests(self.directory)
        )
        assert onDisk == self.store.counters.sizeBytes == self.index._db.totals()[0]
        assert self.index._db.totals()[1] == self.store.counters.entries

    @invariant()
    def noLinkWithoutEntry(self) -> None:
        entries = {digest for digest, _ in self.index._db.entries()}
        assert {digest for _, _, digest in self.index._db.links()} <= entries


class EvictionPropertyTests(SynchronousTestCase):
    def test_invariants(self) -> None:
        """
        Any sequence of operations keeps the invariants of L{StoreMachine}.
        """
        run_state_machine_as_test(
            StoreMachine,
            settings=settings(max_examples=40, stateful_step_count=25, deadline=None),
        )


class ChooseEvictionsTests(SynchronousTestCase):
    def test_takesFromTheFront(self) -> None:
        """
        Evictions come from the front of the order until the rest fits;
        busy digests are skipped.
        """
        order = [("a", 5, False), ("b", 5, False), ("c", 5, True)]
        self.assertEqual(chooseEvictions(order, 15), [])
        self.assertEqual(chooseEvictions(order, 10), ["a"])
        self.assertEqual(chooseEvictions(order, 6), ["a", "b"])
        self.assertEqual(chooseEvictions(order, 0, busy={"b"}), ["a", "c"])
