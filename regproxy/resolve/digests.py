# -*- test-case-name: tests.unit.test_digests -*-
"""
Where a digest lives for a name: the real repository a client's blob or
child manifest must be fetched from when the tag it came by is gone from
the request.

A client that pulls C{org/fleet:1.2.3} asks for that release's blobs (and,
for a multi-platform index, its child manifests) as
C{org/fleet/blobs/<digest>}: the tag is gone from the request.  The manifest
we relayed named those digests, so we remember where they live.

Behind a load balancer without stickiness, or after a restart, the next
request reaches an instance that did not relay the manifest, so what is
remembered lives in SQLite in the shared state directory
(L{SQLiteDigestLocations}), with an in-memory front
(L{LayeredDigestLocations}) so that the instance that relayed the manifest
answers its own blob requests without asking the database.

SQLite is reached off the reactor thread, on one thread of its own
(L{ThreadRunner}): a lookup is tens of microseconds, but a write waits for
the lock when another instance writes, and a WAL checkpoint fsyncs, which on
a device's SD card can take tens of milliseconds; the reactor must not wait
for either.
"""

from __future__ import annotations

import json
import os
import sqlite3
import threading
from collections import OrderedDict
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import attrs
from cachetools import TTLCache
from twisted.internet.defer import Deferred, maybeDeferred, succeed
from twisted.internet.interfaces import IReactorThreads, IReactorTime
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger
from twisted.python.threadpool import ThreadPool
from zope.interface import Interface, implementer

from regproxy.resolve.cache import DEFAULT_MISS_TTL

T = TypeVar("T")

#: Runs a blocking function somewhere and fires with its result.
Runner = Callable[..., "Deferred[Any]"]

_MAX_REMEMBERED_DIGESTS = 65536
#: Rows older than this are dropped: a pull asks for its blobs right after
#: its manifest, and every manifest answer remembers its digests again.
_KEEP_SECONDS = 7 * 24 * 3600.0

_log = Logger()
_SCHEMA = """
CREATE TABLE IF NOT EXISTS digest_locations (
    name TEXT NOT NULL,
    digest TEXT NOT NULL,
    repository TEXT NOT NULL,
    seen REAL NOT NULL,
    PRIMARY KEY (name, digest)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS digest_locations_seen ON digest_locations (seen);
"""


class IDigestLocations(Interface):
    """
    Which real repository a digest lives in, per name a client uses.
    """

    def remember(name: str, digests: Sequence[str], repository: str) -> Deferred[None]:
        """
        C{digests} (named by a manifest fetched for C{name}) live in
        C{repository}.  Fires once any instance sharing this memory can
        find them.
        """

    def find(name: str, digest: str) -> Deferred[str | None]:
        """
        Fire with the repository C{digest} was last remembered in for
        C{name}, or L{None}.
        """


@implementer(IDigestLocations)
@attrs.define
class MemoryDigestLocations:
    """
    An LRU in this process.
    """

    maxSize: int = _MAX_REMEMBERED_DIGESTS
    _where: OrderedDict[tuple[str, str], str] = attrs.field(factory=OrderedDict)

    def rememberNow(self, name: str, digests: Sequence[str], repository: str) -> None:
        for digest in digests:
            key = (name, digest)
            self._where[key] = repository
            self._where.move_to_end(key)
        while len(self._where) > self.maxSize:
            self._where.popitem(last=False)

    def findNow(self, name: str, digest: str) -> str | None:
        return self._where.get((name, digest))

    def remember(
        self, name: str, digests: Sequence[str], repository: str
    ) -> Deferred[None]:
        self.rememberNow(name, digests, repository)
        return succeed(None)

    def find(self, name: str, digest: str) -> Deferred[str | None]:
        return succeed(self.findNow(name, digest))


def runNow(f: Callable[..., T], *args: Any) -> Deferred[T]:
    """
    A L{Runner} on the calling thread: for a reactor without threads (the
    tests' memory reactor) and for tools.
    """
    return maybeDeferred(f, *args)


class ThreadRunner:
    """
    A L{Runner} on one thread of its own, started when first used and
    stopped at reactor shutdown.  One thread keeps one SQLite connection
    and runs the statements in order.
    """

    def __init__(self, reactor: Any, name: str = "regproxy-sqlite") -> None:
        self._reactor = reactor
        self._pool = ThreadPool(minthreads=0, maxthreads=1, name=name)
        self._started = False

    def __call__(self, f: Callable[..., T], *args: Any) -> Deferred[T]:
        if not self._started:
            self._started = True
            self._pool.start()
            self._reactor.addSystemEventTrigger("during", "shutdown", self.stop)
        return deferToThreadPool(self._reactor, self._pool, f, *args)

    def stop(self) -> None:
        if self._started:
            self._started = False
            self._pool.stop()


def runnerFor(reactor: Any) -> Runner:
    """
    L{ThreadRunner} for a reactor with threads, else L{runNow}.
    """
    return ThreadRunner(reactor) if IReactorThreads.providedBy(reactor) else runNow


@implementer(IDigestLocations)
class SQLiteDigestLocations:
    """
    Digest locations in an SQLite file that every instance on the same
    state directory opens (WAL mode, so readers never wait for a writer).

    @param path: The database file; created when missing.
    @param run: Where the blocking calls run (L{ThreadRunner}).
    """

    _log = Logger()

    def __init__(self, path: str, run: Runner, clock: IReactorTime) -> None:
        self._path = path
        self._run = run
        self._clock = clock
        self._connection: sqlite3.Connection | None = None
        self._lock = threading.Lock()

    def _connect(self) -> sqlite3.Connection:
        if self._connection is None:
            fd = os.open(self._path, os.O_RDWR | os.O_CREAT, 0o600)
            os.close(fd)
            connection = sqlite3.connect(
                self._path, timeout=5.0, isolation_level=None, check_same_thread=False
            )
            try:
                connection.execute("PRAGMA journal_mode=WAL")
                connection.execute("PRAGMA synchronous=NORMAL")
                connection.executescript(_SCHEMA)
            except sqlite3.Error:
                connection.close()
                raise
            self._connection = connection
        return self._connection

    def _write(self, rows: list[tuple[str, str, str, float]], oldest: float) -> None:
        with self._lock:
            connection = self._connect()
            with connection:
                connection.execute("BEGIN IMMEDIATE")
                connection.executemany(
                    "INSERT OR REPLACE INTO digest_locations"
                    " (name, digest, repository, seen) VALUES (?, ?, ?, ?)",
                    rows,
                )
                connection.execute(
                    "DELETE FROM digest_locations WHERE seen < ?", (oldest,)
                )

    def _read(self, name: str, digest: str) -> str | None:
        with self._lock:
            row = (
                self._connect()
                .execute(
                    "SELECT repository FROM digest_locations"
                    " WHERE name = ? AND digest = ?",
                    (name, digest),
                )
                .fetchone()
            )
        return row[0] if row is not None else None

    def remember(
        self, name: str, digests: Sequence[str], repository: str
    ) -> Deferred[None]:
        now = self._clock.seconds()
        rows = [(name, digest, repository, now) for digest in digests]
        d = self._run(self._write, rows, now - _KEEP_SECONDS)
        # Losing the shared memory costs another instance a 404, never this
        # request: log it and go on.
        return d.addErrback(self._failed, "remember")

    def find(self, name: str, digest: str) -> Deferred[str | None]:
        return self._run(self._read, name, digest).addErrback(self._failed, "find")

    def _failed(self, failure: Any, what: str) -> None:
        self._log.failure(
            "cannot {what} digest locations in {path}",
            failure,
            what=what,
            path=self._path,
        )
        return None

    def close(self) -> None:
        if self._connection is not None:
            self._connection.close()
            self._connection = None


@implementer(IDigestLocations)
@attrs.frozen
class LayeredDigestLocations:
    """
    An in-memory front over a shared back: what this instance learnt or
    looked up is answered from memory; the rest is asked of the back and
    then kept in front.

    With a C{clock}, what the back did not know is remembered too, for as
    long as a missing fleet name is (C{missTTL}): otherwise a digest this
    instance relayed for a private fleet would be answered from memory and
    one asked under a missing name from the database on its thread, and an
    outsider could tell the two apart by time.  What this instance learns
    replaces a remembered miss at once; one that another instance learnt
    is seen once the miss expires (until then the name is resolved as if
    the digest were unknown, as on an instance of its own).

    The back is written behind (nobody waits for its disk), and what was
    written is not written again for C{rewriteAfter} seconds: a fleet's
    manifest answered from memory tells us the same locations each time.
    """

    front: MemoryDigestLocations
    back: IDigestLocations
    clock: IReactorTime | None = None
    missTTL: float = DEFAULT_MISS_TTL
    rewriteAfter: float = 3600.0
    _misses: TTLCache[tuple[str, str], bool] | None = attrs.field(
        init=False,
        default=attrs.Factory(lambda self: self._timed(self.missTTL), takes_self=True),
    )
    _written: TTLCache[tuple, bool] | None = attrs.field(
        init=False,
        default=attrs.Factory(
            lambda self: self._timed(self.rewriteAfter), takes_self=True
        ),
    )

    def _timed(self, ttl: float) -> TTLCache | None:
        """
        A memory of C{ttl} seconds by the clock, when there is one.
        """
        if self.clock is None:
            return None
        return TTLCache(self.front.maxSize, ttl, timer=self.clock.seconds)

    async def _remember(
        self, name: str, digests: Sequence[str], repository: str
    ) -> None:
        self.front.rememberNow(name, digests, repository)
        if self._misses is not None:
            for digest in digests:
                self._misses.pop((name, digest), None)
        key = (name, repository, tuple(digests))
        if self._written is not None:
            if key in self._written:
                return
            self._written[key] = True
        self.back.remember(name, digests, repository).addErrback(
            lambda f: _log.failure("remembering digest locations", f)
        )

    async def _find(self, name: str, digest: str) -> str | None:
        known = self.front.findNow(name, digest)
        if known is not None:
            return known
        if self._misses is not None and (name, digest) in self._misses:
            return None
        found = await self.back.find(name, digest)
        if found is not None:
            self.front.rememberNow(name, [digest], found)
        elif self._misses is not None:
            self._misses[name, digest] = True
        return found

    def remember(
        self, name: str, digests: Sequence[str], repository: str
    ) -> Deferred[None]:
        return Deferred.fromCoroutine(self._remember(name, digests, repository))

    def find(self, name: str, digest: str) -> Deferred[str | None]:
        return Deferred.fromCoroutine(self._find(name, digest))


@implementer(IDigestLocations)
@attrs.frozen
class SeveralDigestLocations:
    """
    Several backs at once: remembered in each, found in the first that
    knows (the shared state directory's, then the LAN cache's, which
    outlives a state directory of its own).
    """

    backs: tuple[IDigestLocations, ...]

    async def _remember(
        self, name: str, digests: Sequence[str], repository: str
    ) -> None:
        for back in self.backs:
            await back.remember(name, digests, repository)

    async def _find(self, name: str, digest: str) -> str | None:
        for back in self.backs:
            found = await back.find(name, digest)
            if found is not None:
                return found
        return None

    def remember(
        self, name: str, digests: Sequence[str], repository: str
    ) -> Deferred[None]:
        return Deferred.fromCoroutine(self._remember(name, digests, repository))

    def find(self, name: str, digest: str) -> Deferred[str | None]:
        return Deferred.fromCoroutine(self._find(name, digest))


def manifestDigests(body: bytes) -> list[str]:
    """
    The digests a manifest or index refers to.
    """
    try:
        document = json.loads(body)
    except ValueError:
        return []
    found = []
    if isinstance(document, dict):
        for key in ("config",):
            entry = document.get(key)
            if isinstance(entry, dict) and isinstance(entry.get("digest"), str):
                found.append(entry["digest"])
        for key in ("layers", "manifests", "blobs"):
            entries = document.get(key)
            for entry in entries if isinstance(entries, list) else []:
                if isinstance(entry, dict) and isinstance(entry.get("digest"), str):
                    found.append(entry["digest"])
    return found
