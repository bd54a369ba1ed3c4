# -*- test-case-name: tests.unit.test_users -*-
"""
Users from an htpasswd file of bcrypt entries.

Only bcrypt is accepted: the other htpasswd schemes (C{{SHA}}, C{$apr1$},
crypt, plain text) are fast to brute-force, and a registry front door is
exposed to the network.  A file holding one is refused at load with the line
number and the scheme, never the hash.

bcrypt is slow on purpose, so checks run off the reactor thread on a small
dedicated pool (L{ThreadPoolRunner}), with a cap on how many may wait; a
successful check is remembered for a short time, keyed by an HMAC of the
user, the password and the stored hash (never the password itself), because
clients such as the Docker CLI log in again for every repository they touch.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import re
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

import bcrypt
from cachetools import TTLCache
from twisted.internet.defer import Deferred, fail, maybeDeferred, succeed
from twisted.internet.interfaces import IReactorTime
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.python.threadpool import ThreadPool

T = TypeVar("T")

#: Runs C{f(*args)} somewhere and returns a L{Deferred} of its result.
Runner = Callable[..., "Deferred[Any]"]

_BCRYPT = re.compile(rb"\$2[aby]\$\d\d\$[./A-Za-z0-9]{53}\Z")
_DES_CRYPT = re.compile(rb"[./A-Za-z0-9]{13}\Z")
_BCRYPT_MAX_PASSWORD = 72


class HtpasswdError(ValueError):
    """
    The htpasswd file cannot be used; the message says where and why.
    """


class TooManyChecks(Exception):
    """
    Too many password checks are already waiting; try again shortly.
    """


def _scheme(hashed: bytes) -> str:
    """
    Name the scheme of a refused htpasswd entry, for the error message.
    """
    for prefix, name in [
        (b"{SHA}", "{SHA} (SHA-1)"),
        (b"$apr1$", "$apr1$ (Apache MD5)"),
        (b"$1$", "$1$ (MD5-crypt)"),
        (b"$5$", "$5$ (SHA-256-crypt)"),
        (b"$6$", "$6$ (SHA-512-crypt)"),
        (b"$2", "a malformed bcrypt hash"),
    ]:
        if hashed.startswith(prefix):
            return name
    if _DES_CRYPT.match(hashed):
        return "crypt (DES)"
    return "plain text or an unknown scheme"


def parseHtpasswd(data: bytes, source: str = "htpasswd") -> dict[str, bytes]:
    """
    Read C{user:hash} lines; blank lines and C{#} comments are skipped.

    @param source: The file name, for messages.
    @return: User name to bcrypt hash.
    @raise HtpasswdError: A line is not a bcrypt entry, or a user appears
        twice.
    """
    users: dict[str, bytes] = {}
    for number, line in enumerate(data.splitlines(), 1):
        line = line.strip()
        if not line or line.startswith(b"#"):
            continue
        rawUser, sep, hashed = line.partition(b":")
        if not sep or not rawUser:
            raise HtpasswdError(f"{source}, line {number}: not a 'user:hash' entry")
        try:
            user = rawUser.decode("utf-8")
        except UnicodeDecodeError:
            raise HtpasswdError(
                f"{source}, line {number}: user name is not UTF-8"
            ) from None
        if not _BCRYPT.match(hashed):
            raise HtpasswdError(
                f"{source}, line {number}: user {user!r} has a password hashed with "
                f"{_scheme(hashed)}; only bcrypt entries ($2y$, $2b$, $2a$) are "
                f"accepted (make them with 'htpasswd -B')"
            )
        if user in users:
            raise HtpasswdError(f"{source}, line {number}: user {user!r} appears twice")
        users[user] = hashed
    return users


def readHtpasswd(path: str) -> dict[str, bytes]:
    """
    L{parseHtpasswd} on a file.

    @raise HtpasswdError: The file cannot be read or used.
    """
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as e:
        raise HtpasswdError(f"cannot read {path}: {e.strerror}") from None
    return parseHtpasswd(data, path)


def _passwordBytes(password: str) -> bytes:
    # bcrypt only ever used the first 72 bytes; the bcrypt module now
    # refuses longer input instead of ignoring the rest, as htpasswd does.
    return password.encode("utf-8", "surrogatepass")[:_BCRYPT_MAX_PASSWORD]


def _checkBcrypt(password: bytes, hashed: bytes) -> bool:
    return bcrypt.checkpw(password, hashed)


def runNow(f: Callable[..., T], *args: Any) -> Deferred[T]:
    """
    A L{Runner} that runs on the calling thread: for tests, and for tools
    where blocking does not matter.
    """
    return maybeDeferred(f, *args)


class ThreadPoolRunner:
    """
    A L{Runner} on a dedicated, capped thread pool, so slow bcrypt checks
    neither block the reactor nor crowd out the reactor's shared pool
    (which name resolution uses).

    @param threads: At most this many checks run at once.
    @param maxWaiting: At most this many more wait for a thread; beyond
        that, calls fail at once with L{TooManyChecks}.
    @param pool: A L{ThreadPool} to use instead of making one (tests).
    """

    _log = Logger()

    def __init__(
        self,
        reactor: Any,
        threads: int = 2,
        maxWaiting: int = 32,
        pool: ThreadPool | None = None,
    ) -> None:
        self._reactor = reactor
        self._limit = threads + maxWaiting
        self._pool = pool or ThreadPool(
            minthreads=0, maxthreads=threads, name="regproxy-bcrypt"
        )
        self._started = False
        self.pending = 0

    def __call__(self, f: Callable[..., T], *args: Any) -> Deferred[T]:
        if self.pending >= self._limit:
            return fail(
                TooManyChecks(f"{self.pending} password checks already waiting")
            )
        if not self._started:
            self._started = True
            self._pool.start()
            self._reactor.addSystemEventTrigger("during", "shutdown", self.stop)
        self.pending += 1
        d = deferToThreadPool(self._reactor, self._pool, f, *args)

        def done(result: Any) -> Any:
            self.pending -= 1
            return result

        return d.addBoth(done)

    def stop(self) -> None:
        """
        Stop the pool's threads (at reactor shutdown).
        """
        if self._started:
            self._started = False
            self._pool.stop()


class HtpasswdUsers:
    """
    The users of an htpasswd file, re-read when it changes.

    The file is looked at (C{stat}) at most every C{recheckInterval} seconds,
    when a check comes; it is re-read when its inode, size or modification
    time changed.  A new version that cannot be used leaves the users loaded
    before in place, and says why in the log.

    @param runner: Where bcrypt runs (a L{ThreadPoolRunner}, or L{runNow} in
        tests).
    @param rememberFor: Seconds a successful check is remembered.
    @raise HtpasswdError: The file cannot be used at start-up.
    """

    _log = Logger()

    def __init__(
        self,
        path: str,
        clock: IReactorTime,
        runner: Runner,
        recheckInterval: float = 5.0,
        rememberFor: float = 60.0,
        rememberMax: int = 4096,
    ) -> None:
        self.path = path
        self._clock = clock
        self._runner = runner
        self._recheckInterval = recheckInterval
        self._secret = os.urandom(32)
        self._remembered: TTLCache[bytes, bool] = TTLCache(
            rememberMax, rememberFor, timer=clock.seconds
        )
        self._waiting: dict[bytes, list[Deferred[bool]]] = {}
        self._stamp = self._fileStamp()
        self._users: Mapping[str, bytes] = readHtpasswd(path)
        self._checkedAt = clock.seconds()

    def _fileStamp(self) -> tuple[int, int, int] | None:
        try:
            st = os.stat(self.path)
        except OSError:
            return None
        return (st.st_ino, st.st_size, st.st_mtime_ns)

    def _maybeReload(self) -> None:
        now = self._clock.seconds()
        if now - self._checkedAt < self._recheckInterval:
            return
        self._checkedAt = now
        stamp = self._fileStamp()
        if stamp == self._stamp:
            return
        try:
            count = self.reload(stamp)
        except HtpasswdError as e:
            self._log.warn(
                "Not reloading the htpasswd file: {reason}; keeping the {count} "
                "users loaded before",
                reason=str(e),
                count=len(self._users),
            )
            return
        self._log.info(
            "Reloaded the htpasswd file {path}: {count} users",
            path=self.path,
            count=count,
        )

    def reload(self, stamp: tuple[int, int, int] | None = None) -> int:
        """
        Re-read the file now, changed or not (on SIGHUP).

        @return: How many users it holds.
        @raise HtpasswdError: It cannot be used; the users loaded before
            stay in place (and the file is not tried again until it
            changes).
        """
        self._stamp = self._fileStamp() if stamp is None else stamp
        self._checkedAt = self._clock.seconds()
        users = readHtpasswd(self.path)
        self._users = users
        return len(users)

    def knows(self, user: str) -> bool:
        """
        Whether C{user} is in the file.
        """
        self._maybeReload()
        return user in self._users

    def _key(self, user: str, secret: bytes, stored: bytes | None) -> bytes:
        return hmac.new(
            self._secret,
            b"\0".join([user.encode("utf-8", "surrogatepass"), secret, stored or b""]),
            hashlib.sha256,
        ).digest()

    def remembers(self, user: str, password: str) -> bool:
        """
        Whether C{password} was found to be C{user}'s lately: a check that
        will cost no bcrypt.
        """
        stored = self._users.get(user)
        key = self._key(user, _passwordBytes(password), stored)
        return stored is not None and bool(self._remembered.get(key))

    def checkPassword(self, user: str, password: str) -> Deferred[bool]:
        """
        Whether C{password} is C{user}'s.

        An unknown user costs a bcrypt check too, so timing does not tell
        which user names exist.

        @return: A L{Deferred} firing with a L{bool}, or failing with
            L{TooManyChecks} when the pool is saturated.
        """
        self._maybeReload()
        stored = self._users.get(user)
        secret = _passwordBytes(password)
        key = self._key(user, secret, stored)
        if stored is not None and self._remembered.get(key):
            return succeed(True)
        waiters = self._waiting.get(key)
        if waiters is not None:
            d: Deferred[bool] = Deferred()
            waiters.append(d)
            return d
        against = (
            stored if stored is not None else next(iter(self._users.values()), None)
        )
        if against is None:
            return succeed(False)
        first: Deferred[bool] = Deferred()
        self._waiting[key] = [first]
        checked = self._runner(_checkBcrypt, secret, against)

        def finished(result: bool | Failure) -> None:
            waiters = self._waiting.pop(key)
            if isinstance(result, Failure):
                if not result.check(TooManyChecks):
                    self._log.failure(
                        "Password check for {user} failed", result, user=user
                    )
                    result = False
            else:
                result = bool(result) and stored is not None
                if result:
                    self._remembered[key] = True
            for waiter in waiters:
                if isinstance(result, Failure):
                    waiter.errback(result)
                else:
                    waiter.callback(result)

        checked.addBoth(finished)
        return first
