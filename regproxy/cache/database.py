# -*- test-case-name: tests.unit.cache.test_index -*-
"""
The cache index's SQL, as plain blocking calls on one connection.

L{regproxy.cache.index.CacheIndex} runs every call here on its own thread;
the property tests call them directly.  Nothing here is keyed by digest
alone except the bytes themselves (C{entries}): serving needs a link for the
repository and an authorization for the client.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterable, Mapping

_SCHEMA = """
CREATE TABLE IF NOT EXISTS entries (
    digest TEXT PRIMARY KEY, size INTEGER NOT NULL, usedAt REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS entriesByUse ON entries (usedAt);
CREATE TABLE IF NOT EXISTS links (
    upstream TEXT NOT NULL, repository TEXT NOT NULL, digest TEXT NOT NULL,
    PRIMARY KEY (upstream, repository, digest)
);
CREATE INDEX IF NOT EXISTS linksByDigest ON links (digest);
CREATE TABLE IF NOT EXISTS tags (
    upstream TEXT NOT NULL, repository TEXT NOT NULL, tag TEXT NOT NULL,
    digest TEXT NOT NULL, mediaType TEXT NOT NULL, size INTEGER NOT NULL,
    fetchedAt REAL NOT NULL, pulledAt REAL NOT NULL,
    PRIMARY KEY (upstream, repository, tag)
);
CREATE INDEX IF NOT EXISTS tagsByPull ON tags (pulledAt);
CREATE TABLE IF NOT EXISTS authorizations (
    fingerprint TEXT NOT NULL, upstream TEXT NOT NULL, repository TEXT NOT NULL,
    allowed INTEGER NOT NULL, checkedAt REAL NOT NULL,
    PRIMARY KEY (fingerprint, upstream, repository)
);
CREATE TABLE IF NOT EXISTS refs (
    parent TEXT NOT NULL, child TEXT NOT NULL, PRIMARY KEY (parent, child)
);
CREATE TABLE IF NOT EXISTS counters (
    repository TEXT NOT NULL, name TEXT NOT NULL, value INTEGER NOT NULL,
    PRIMARY KEY (repository, name)
);
CREATE TABLE IF NOT EXISTS resolutions (
    name TEXT NOT NULL, asker TEXT NOT NULL, answer TEXT NOT NULL,
    resolvedAt REAL NOT NULL,
    PRIMARY KEY (name, asker)
);
CREATE INDEX IF NOT EXISTS resolutionsByAge ON resolutions (resolvedAt);
CREATE TABLE IF NOT EXISTS locations (
    name TEXT NOT NULL, digest TEXT NOT NULL, repository TEXT NOT NULL,
    seenAt REAL NOT NULL,
    PRIMARY KEY (name, digest)
);
CREATE INDEX IF NOT EXISTS locationsByAge ON locations (seenAt);
"""

# The digests that evict last: the manifest each tag pulled since ? names,
# the digests pinned by the caller (a JSON list), and everything they
# reference, recursively (an index's platform manifests, their layers).
_PROTECTED = """
WITH RECURSIVE protected(digest) AS (
    SELECT digest FROM tags WHERE pulledAt >= ?
    UNION SELECT value FROM json_each(?)
    UNION SELECT refs.child FROM refs JOIN protected ON refs.parent = protected.digest
)
"""

# Counters kept for the whole cache rather than per repository.
WHOLE_CACHE = ""


def connect(path: str) -> sqlite3.Connection:
    """
    Open (creating if need be) the index at C{path}.  Write-ahead logging
    lets C{regproxy cache stats} read while the daemon writes; C{NORMAL}
    sync is safe with WAL (a power cut loses at most the last commits, never
    the file), and the index is only ever a guide to files checked on read.
    """
    connection = sqlite3.connect(path, check_same_thread=False)
    connection.execute("PRAGMA journal_mode=WAL")
    connection.execute("PRAGMA synchronous=NORMAL")
    connection.executescript(_SCHEMA)
    return connection


class IndexDatabase:
    """
    The index's queries on one connection; not thread-safe, so one thread
    at a time (L{CacheIndex} uses a single dedicated one).
    """

    def __init__(self, connection: sqlite3.Connection) -> None:
        self.connection = connection

    def close(self) -> None:
        self.connection.close()

    def _write(self, sql: str, rows: Iterable[tuple[object, ...]]) -> None:
        with self.connection:
            self.connection.executemany(sql, rows)

    # Entries: the bytes held, for LRU and size.

    def addEntry(self, digest: str, size: int, at: float) -> None:
        self._write(
            "INSERT OR REPLACE INTO entries VALUES (?, ?, ?)", [(digest, size, at)]
        )

    def entrySize(self, digest: str) -> int | None:
        row = self.connection.execute(
            "SELECT size FROM entries WHERE digest = ?", (digest,)
        ).fetchone()
        return None if row is None else int(row[0])

    def touch(self, used: Mapping[str, float]) -> None:
        self._write(
            "UPDATE entries SET usedAt = max(usedAt, ?) WHERE digest = ?",
            [(at, digest) for digest, at in used.items()],
        )

    def removeEntries(self, digests: Iterable[str]) -> list[tuple[str, int]]:
        """
        Forget C{digests} with their links (no link outlives the bytes it
        vouches for); returns the (digest, size) of those that were held.
        What a manifest references stays: a tag's layers stay protected
        while its manifest is fetched again.
        """
        removed = []
        with self.connection:
            for digest in digests:
                row = self.connection.execute(
                    "DELETE FROM entries WHERE digest = ? RETURNING size", (digest,)
                ).fetchone()
                if row is None:
                    continue
                removed.append((digest, int(row[0])))
                self.connection.execute("DELETE FROM links WHERE digest = ?", (digest,))
        return removed

    def entries(self) -> list[tuple[str, int]]:
        return [
            (digest, int(size))
            for digest, size in self.connection.execute(
                "SELECT digest, size FROM entries ORDER BY digest"
            )
        ]

    def totals(self) -> tuple[int, int]:
        """
        (bytes held, entries held).
        """
        size, count = self.connection.execute(
            "SELECT coalesce(sum(size), 0), count(*) FROM entries"
        ).fetchone()
        return int(size), int(count)

    def evictionOrder(
        self, protectSince: float, pinned: Iterable[str]
    ) -> list[tuple[str, int, bool]]:
        """
        Every entry as (digest, size, protected), in the order to evict
        them: unprotected ones least recently used first, then protected
        ones the same way.
        """
        rows = self.connection.execute(
            _PROTECTED
            + """SELECT digest, size, digest IN protected AS kept FROM entries
            ORDER BY kept, usedAt, digest""",
            (protectSince, json.dumps(sorted(pinned))),
        )
        return [(digest, int(size), bool(kept)) for digest, size, kept in rows]

    # Links, tags, authorizations, references.

    def link(self, upstream: str, repository: str, digest: str) -> None:
        self._write(
            """INSERT OR IGNORE INTO links
            SELECT ?, ?, digest FROM entries WHERE digest = ?""",
            [(upstream, repository, digest)],
        )

    def isLinked(self, upstream: str, repository: str, digest: str) -> bool:
        row = self.connection.execute(
            "SELECT 1 FROM links WHERE upstream = ? AND repository = ? AND digest = ?",
            (upstream, repository, digest),
        ).fetchone()
        return row is not None

    def links(self) -> list[tuple[str, str, str]]:
        return list(self.connection.execute("SELECT * FROM links"))

    def setTag(
        self,
        key: tuple[str, str, str],
        value: tuple[str, str, int, float],
        pulledAt: float,
    ) -> None:
        self._write(
            "INSERT OR REPLACE INTO tags VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            [key + value + (pulledAt,)],
        )

    def touchTag(self, key: tuple[str, str, str], pulledAt: float) -> None:
        self._write(
            """UPDATE tags SET pulledAt = max(pulledAt, ?)
            WHERE upstream = ? AND repository = ? AND tag = ?""",
            [(pulledAt,) + key],
        )

    def getTag(self, key: tuple[str, str, str]) -> tuple[str, str, int, float] | None:
        row = self.connection.execute(
            """SELECT digest, mediaType, size, fetchedAt FROM tags
            WHERE upstream = ? AND repository = ? AND tag = ?""",
            key,
        ).fetchone()
        return None if row is None else (row[0], row[1], int(row[2]), float(row[3]))

    def setAuthorization(
        self, key: tuple[str, str, str], allowed: bool, at: float
    ) -> None:
        self._write(
            "INSERT OR REPLACE INTO authorizations VALUES (?, ?, ?, ?, ?)",
            [key + (int(allowed), at)],
        )

    def getAuthorization(self, key: tuple[str, str, str]) -> tuple[bool, float] | None:
        row = self.connection.execute(
            """SELECT allowed, checkedAt FROM authorizations
            WHERE fingerprint = ? AND upstream = ? AND repository = ?""",
            key,
        ).fetchone()
        return None if row is None else (bool(row[0]), float(row[1]))

    def setReferences(self, parent: str, children: Iterable[str]) -> None:
        with self.connection:
            self.connection.execute("DELETE FROM refs WHERE parent = ?", (parent,))
            self.connection.executemany(
                "INSERT OR IGNORE INTO refs VALUES (?, ?)",
                [(parent, child) for child in children],
            )

    # What pulling a fleet name needs offline: the resolver's answers (by
    # the name with its reference and a fingerprint of who asked) and where
    # the digests its manifests name live.  Rows older than C{oldest} go as
    # new ones come: nothing older is ever served.

    def setResolution(
        self, key: tuple[str, str], answer: str, at: float, oldest: float
    ) -> None:
        with self.connection:
            self.connection.execute(
                "INSERT OR REPLACE INTO resolutions VALUES (?, ?, ?, ?)",
                key + (answer, at),
            )
            self.connection.execute(
                "DELETE FROM resolutions WHERE resolvedAt < ?", (oldest,)
            )

    def forgetResolution(self, key: tuple[str, str]) -> None:
        self._write("DELETE FROM resolutions WHERE name = ? AND asker = ?", [key])

    def getResolution(self, key: tuple[str, str]) -> tuple[str, float] | None:
        row = self.connection.execute(
            "SELECT answer, resolvedAt FROM resolutions WHERE name = ? AND asker = ?",
            key,
        ).fetchone()
        return None if row is None else (str(row[0]), float(row[1]))

    def setLocations(
        self,
        name: str,
        digests: Iterable[str],
        repository: str,
        at: float,
        oldest: float,
    ) -> None:
        with self.connection:
            self.connection.executemany(
                "INSERT OR REPLACE INTO locations VALUES (?, ?, ?, ?)",
                [(name, digest, repository, at) for digest in digests],
            )
            self.connection.execute("DELETE FROM locations WHERE seenAt < ?", (oldest,))

    def getLocation(self, name: str, digest: str) -> str | None:
        row = self.connection.execute(
            "SELECT repository FROM locations WHERE name = ? AND digest = ?",
            (name, digest),
        ).fetchone()
        return None if row is None else str(row[0])

    # Counters.

    def addCounts(self, deltas: Mapping[tuple[str, str], int]) -> None:
        self._write(
            """INSERT INTO counters VALUES (?, ?, ?)
            ON CONFLICT (repository, name) DO UPDATE SET value = value + excluded.value""",
            [(repository, name, value) for (repository, name), value in deltas.items()],
        )

    def counts(self) -> dict[str, dict[str, int]]:
        """
        Every counter, by repository (L{WHOLE_CACHE} for those of the whole
        cache).
        """
        result: dict[str, dict[str, int]] = {}
        for repository, name, value in self.connection.execute(
            "SELECT repository, name, value FROM counters"
        ):
            result.setdefault(repository, {})[name] = int(value)
        return result
