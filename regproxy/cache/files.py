# -*- test-case-name: tests.unit.cache.test_store -*-
"""
The cache's files: where a digest's bytes live, and the blocking steps of
keeping them (each run off the reactor thread by the store).

    ROOT/blobs/<algorithm>/<2 hex>/<hex>   complete entries, named by digest
    ROOT/tmp/<random>                      fills in progress; removed at start
    ROOT/fingerprint.key                   the key for credential fingerprints
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import hmac
import os
import re
import secrets
from collections.abc import Iterator

# Only what hashlib names and OCI allows; the hex length is checked too, so a
# digest can never name a path outside the store.
_DIGEST = re.compile(r"(sha256):([0-9a-f]{64})|(sha512):([0-9a-f]{128})")

READ_SIZE = 1024 * 1024


def parseDigest(digest: str) -> tuple[str, str]:
    """
    (algorithm, hex) of C{digest}.

    @raise ValueError: For anything but a well-formed sha256 or sha512 digest.
    """
    match = _DIGEST.fullmatch(digest)
    if match is None:
        raise ValueError(f"not a digest the cache keeps: {digest[:80]!r}")
    algorithm, hexdigest = match.group(1, 2) if match.group(1) else match.group(3, 4)
    return algorithm, hexdigest


def hasherFor(digest: str) -> hashlib._Hash:
    return hashlib.new(parseDigest(digest)[0])


def entryPath(root: str, digest: str) -> str:
    algorithm, hexdigest = parseDigest(digest)
    return os.path.join(root, "blobs", algorithm, hexdigest[:2], hexdigest)


def tempDirectory(root: str) -> str:
    return os.path.join(root, "tmp")


def prepare(root: str) -> None:
    """
    Make the store's directories and remove what a crash left of fills in
    progress: a temporary file is never an entry.  A running fill holds a
    lock on its file, so a second process on the same directory
    (C{regproxy cache verify} beside the daemon) leaves it alone.
    """
    temp = tempDirectory(root)
    os.makedirs(temp, exist_ok=True)
    os.makedirs(os.path.join(root, "blobs"), exist_ok=True)
    for name in os.listdir(temp):
        path = os.path.join(temp, name)
        try:
            fd = os.open(path, os.O_RDONLY)
        except FileNotFoundError:
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            continue
        else:
            removeFile(path)
        finally:
            os.close(fd)


def openTemporary(root: str) -> tuple[str, int]:
    """
    A new temporary file for a fill: (path, descriptor open for reading and
    writing, holding the lock that marks it as in progress).
    """
    path = os.path.join(tempDirectory(root), secrets.token_hex(16))
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o644)
    fcntl.flock(fd, fcntl.LOCK_EX)
    return path, fd


def writeAll(fd: int, data: bytes) -> None:
    """
    Write all of C{data}: C{os.write} may take less (a nearly full disk),
    and a file left short would fail its digest check, or worse, be served
    short.

    @raise OSError: The disk took no more (C{ENOSPC}, C{EIO}).
    """
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        if written <= 0:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        view = view[written:]


def keep(fd: int, temporary: str, final: str, durable: bool = True) -> None:
    """
    Make a fill's file an entry: flush it to the disk, then rename it into
    place and flush the directory, so a power cut leaves either no entry or
    a whole one.

    @param durable: Whether to flush (only tests that hammer the store
        with thousands of fills turn it off).
    """
    if durable:
        os.fsync(fd)
    directory = os.path.dirname(final)
    os.makedirs(directory, exist_ok=True)
    os.rename(temporary, final)
    if durable:
        syncDirectory(directory)


def syncDirectory(directory: str) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def sizeOnDisk(path: str) -> int | None:
    try:
        return os.stat(path).st_size
    except FileNotFoundError:
        return None


def removeFile(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


def openEntry(path: str, size: int) -> int | None:
    """
    A descriptor on the entry at C{path} if it is there with the size the
    index holds, else L{None} (truncated or grown files are never served).
    """
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return None
    if os.fstat(fd).st_size != size:
        os.close(fd)
        return None
    return fd


def readEntry(path: str, size: int) -> bytes | None:
    fd = openEntry(path, size)
    if fd is None:
        return None
    try:
        return os.pread(fd, size, 0) if size else b""
    finally:
        os.close(fd)


_NOWAIT = getattr(os, "RWF_NOWAIT", None)


def readCached(fd: int, length: int, offset: int) -> bytes | None:
    """
    C{length} bytes at C{offset} if the page cache holds them, else L{None}
    (read them on a thread then).  The first and last byte are probed
    without waiting for the disk; when both are cached the read is a memory
    copy, cheaper on the reactor thread than a thread-pool hop per read.
    """
    global _NOWAIT
    if _NOWAIT is None:
        return None
    probe = bytearray(1)
    for at in {offset, offset + length - 1}:
        try:
            os.preadv(fd, [probe], at, _NOWAIT)
        except BlockingIOError:
            return None
        except OSError:
            # Not supported by this filesystem or kernel: always use threads.
            _NOWAIT = None
            return None
    return os.pread(fd, length, offset)


def readIntoNoWait(fd: int, buffer: memoryview, offset: int) -> int:
    """
    Read into C{buffer} what the page cache holds of the bytes at
    C{offset}, without waiting for the disk: how many were read (0 when
    none are cached, or the kernel cannot tell).
    """
    global _NOWAIT
    if _NOWAIT is None:
        return 0
    try:
        return os.preadv(fd, [buffer], offset, _NOWAIT)
    except BlockingIOError:
        return 0
    except OSError:
        _NOWAIT = None
        return 0


def hashesTo(path: str, digest: str) -> bool:
    """
    Whether the file at C{path} holds exactly the bytes C{digest} names.
    """
    hasher = hasherFor(digest)
    try:
        with open(path, "rb", buffering=0) as f:
            while chunk := f.read(READ_SIZE):
                hasher.update(chunk)
    except FileNotFoundError:
        return False
    return hmac.compare_digest(hasher.hexdigest(), parseDigest(digest)[1])


def storedDigests(root: str) -> Iterator[str]:
    """
    The digest of every entry file under C{root}, whether the index knows it
    or not.
    """
    blobs = os.path.join(root, "blobs")
    for algorithm in sorted(os.listdir(blobs)):
        for prefix in sorted(os.listdir(os.path.join(blobs, algorithm))):
            for name in sorted(os.listdir(os.path.join(blobs, algorithm, prefix))):
                digest = f"{algorithm}:{name}"
                if _DIGEST.fullmatch(digest) and name.startswith(prefix):
                    yield digest


def fingerprintKey(root: str) -> bytes:
    """
    The key for credential fingerprints, made on first use and readable by
    the daemon's user only: without it a fingerprint says nothing about the
    credential.
    """
    path = os.path.join(root, "fingerprint.key")
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        with open(path, "rb") as f:
            return f.read()
    key = secrets.token_bytes(32)
    with os.fdopen(fd, "wb") as f:
        f.write(key)
        f.flush()
        os.fsync(f.fileno())
    return key


def credentialFingerprint(
    key: bytes, username: str | None, password: str | None
) -> str:
    """
    A keyed hash naming a credential without holding it; anonymous clients
    share one.
    """
    if username is None and password is None:
        message = b"anonymous"
    else:
        parts = [(username or "").encode("utf-8"), (password or "").encode("utf-8")]
        message = b"".join(b"%d:%s" % (len(part), part) for part in parts)
    return hmac.new(key, message, hashlib.sha256).hexdigest()
