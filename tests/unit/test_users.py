"""
Tests for L{regproxy.auth.htpasswd}.
"""

from __future__ import annotations

import os

import bcrypt
from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.logger import Logger
from twisted.trial.unittest import SynchronousTestCase, TestCase

from regproxy.auth.htpasswd import (
    HtpasswdError,
    HtpasswdUsers,
    ThreadPoolRunner,
    TooManyChecks,
    parseHtpasswd,
    runNow,
)


def _hash(password: str, prefix: bytes = b"$2b$") -> bytes:
    hashed = bcrypt.hashpw(password.encode(), bcrypt.gensalt(rounds=4))
    return prefix + hashed[4:]


class CountingRunner:
    """
    Runs at once, counting calls (each is a bcrypt check).
    """

    def __init__(self) -> None:
        self.calls = 0

    def __call__(self, f, *args):
        self.calls += 1
        return runNow(f, *args)


class HeldRunner:
    """
    Holds every call until the test releases it.
    """

    def __init__(self) -> None:
        self.held: list[tuple[Deferred, object, tuple]] = []

    def __call__(self, f, *args):
        d: Deferred = Deferred()
        self.held.append((d, f, args))
        return d

    def release(self) -> None:
        held, self.held = self.held, []
        for d, f, args in held:
            d.callback(f(*args))


class ParseTests(SynchronousTestCase):
    """
    Reading htpasswd text.
    """

    def test_bcryptVariants(self) -> None:
        """
        C{$2y$} (Apache's htpasswd -B), C{$2b$} and C{$2a$} entries are read;
        comments, blank lines and CRLF line ends are fine.
        """
        text = (
            b"# users\r\nalice:" + _hash("a", b"$2y$") + b"\r\n\r\n"
            b"bob:"
            + _hash("b", b"$2b$")
            + b"\ncarol@example.com:"
            + _hash("c", b"$2a$")
            + b"\n"
        )
        self.assertEqual(
            sorted(parseHtpasswd(text)), ["alice", "bob", "carol@example.com"]
        )

    def test_refusedSchemes(self) -> None:
        """
        Any other scheme is refused, naming the file, line, user and scheme,
        but not the hash.
        """
        cases = [
            (b"{SHA}W6ph5Mm5Pz8GgiULbPgzG37mj9g=", "{SHA} (SHA-1)"),
            (b"$apr1$r31.....$HqJZimcKQFAMYayBlzkrA/", "$apr1$ (Apache MD5)"),
            (b"$1$salt$qJH7.N4xYta3aEG/dfqo/0", "$1$ (MD5-crypt)"),
            (
                b"$6$salt$IxDD3jeSOb5eB1CX5LBsqZFVkJdido3OUILO5Ifz5iwMuTS4XMS130MTSuDDl3aCI6WouIL9AjRbLCelDCy.g.",
                "$6$ (SHA-512-crypt)",
            ),
            (b"rl.3StKT.4T8M", "crypt (DES)"),
            (b"hunter2", "plain text"),
            (b"$2y$05$short", "malformed bcrypt"),
        ]
        for hashed, scheme in cases:
            text = b"alice:" + _hash("a") + b"\n# c\nbob:" + hashed + b"\n"
            error = self.assertRaises(
                HtpasswdError, parseHtpasswd, text, "/etc/regproxy/htpasswd"
            )
            message = str(error)
            self.assertIn("/etc/regproxy/htpasswd, line 3", message)
            self.assertIn("'bob'", message)
            self.assertIn(scheme, message)
            self.assertNotIn(hashed.decode(), message)

    def test_notAnEntry(self) -> None:
        """
        A line without a colon is refused with its number.
        """
        error = self.assertRaises(HtpasswdError, parseHtpasswd, b"\njust text\n")
        self.assertIn("line 2", str(error))

    def test_duplicate(self) -> None:
        """
        A user appearing twice is refused.
        """
        error = self.assertRaises(
            HtpasswdError, parseHtpasswd, b"a:" + _hash("1") + b"\na:" + _hash("2")
        )
        self.assertIn("appears twice", str(error))

    @settings(max_examples=200, deadline=None)
    @given(st.binary(max_size=300))
    def test_anyBytes(self, data: bytes) -> None:
        """
        Any bytes are users or an L{HtpasswdError}, never a crash.
        """
        try:
            parseHtpasswd(data)
        except HtpasswdError:
            pass


class UsersTests(SynchronousTestCase):
    """
    Password checks and reloading.
    """

    def setUp(self) -> None:
        self.path = self.mktemp()
        self.write({"alice": "wonderland", "bob": "builder"})
        self.clock = Clock()
        self.runner = CountingRunner()
        self.events: list[dict] = []
        self.users = HtpasswdUsers(
            self.path, self.clock, self.runner, recheckInterval=5, rememberFor=60
        )
        self.users._log = Logger(observer=self.events.append)

    def write(self, users: dict[str, str], extra: bytes = b"") -> None:
        """
        Replace the file (a new inode, as editors and htpasswd do).
        """
        temporary = self.path + ".new"
        with open(temporary, "wb") as f:
            for user, password in users.items():
                f.write(user.encode() + b":" + _hash(password, b"$2y$") + b"\n")
            f.write(extra)
        os.replace(temporary, self.path)

    def check(self, user: str, password: str) -> bool:
        return self.successResultOf(self.users.checkPassword(user, password))

    def test_check(self) -> None:
        """
        The right password is accepted, a wrong one and an unknown user are
        not.
        """
        self.assertTrue(self.check("alice", "wonderland"))
        self.assertFalse(self.check("alice", "Wonderland"))
        self.assertFalse(self.check("bob", "wonderland"))
        self.assertFalse(self.check("mallory", "wonderland"))

    def test_unknownUserCostsACheck(self) -> None:
        """
        An unknown user still runs one bcrypt check, so response times do
        not reveal which users exist.
        """
        self.assertFalse(self.check("mallory", "x"))
        self.assertEqual(self.runner.calls, 1)

    def test_longPassword(self) -> None:
        """
        Passwords longer than bcrypt's 72 bytes are checked on their first
        72 bytes, as htpasswd hashed them.
        """
        self.write({"long": "x" * 72})
        self.clock.advance(5)
        self.assertTrue(self.check("long", "x" * 100))

    def test_remembered(self) -> None:
        """
        A successful check is remembered: the same credentials within the
        TTL cost no bcrypt; after it, they do again.
        """
        self.assertTrue(self.check("alice", "wonderland"))
        self.assertTrue(self.check("alice", "wonderland"))
        self.assertEqual(self.runner.calls, 1)
        self.clock.advance(61)
        self.assertTrue(self.check("alice", "wonderland"))
        self.assertEqual(self.runner.calls, 2)

    def test_failureNotRemembered(self) -> None:
        """
        A failed check is not remembered (each wrong guess costs bcrypt).
        """
        self.check("alice", "nope")
        self.check("alice", "nope")
        self.assertEqual(self.runner.calls, 2)

    def test_noPasswordInMemory(self) -> None:
        """
        What is remembered does not hold the password.
        """
        self.check("alice", "wonderland")
        keys = list(self.users._remembered.keys())
        self.assertEqual(len(keys), 1)
        self.assertNotIn(b"wonderland", keys[0])

    def test_reload(self) -> None:
        """
        A changed file is read again once the recheck interval has passed;
        a remembered password stops working when the file changes it.
        """
        self.assertTrue(self.check("alice", "wonderland"))
        self.write({"alice": "looking-glass", "carol": "c"})
        self.clock.advance(4)
        self.assertTrue(self.check("alice", "wonderland"))
        self.clock.advance(1)
        self.assertFalse(self.check("alice", "wonderland"))
        self.assertTrue(self.check("alice", "looking-glass"))
        self.assertTrue(self.check("carol", "c"))
        self.assertFalse(self.users.knows("bob"))
        self.assertIn(
            "2 users", self.events[-1]["log_format"].format(**self.events[-1])
        )

    def test_brokenReloadKeepsUsers(self) -> None:
        """
        A new file that cannot be used keeps the users loaded before and
        logs why (without the hash).
        """
        self.write({"alice": "x"}, extra=b"bob:{SHA}W6ph5Mm5Pz8GgiULbPgzG37mj9g=\n")
        self.clock.advance(5)
        self.assertTrue(self.check("alice", "wonderland"))
        self.assertEqual(len(self.events), 1)
        message = self.events[0]["log_format"].format(**self.events[0])
        self.assertIn("line 2", message)
        self.assertIn("{SHA}", message)
        self.assertIn("keeping the 2 users", message)
        self.assertNotIn("W6ph5", message)
        # Not logged again until the file changes again.
        self.clock.advance(5)
        self.check("alice", "wonderland")
        self.assertEqual(len(self.events), 1)

    def test_explicitReload(self) -> None:
        """
        L{HtpasswdUsers.reload} (SIGHUP) reads the file at once, without
        waiting for the recheck interval, and says how many users it holds.
        """
        self.write({"alice": "wonderland", "carol": "c", "dave": "d"})
        self.assertEqual(self.users.reload(), 3)
        self.assertTrue(self.check("carol", "c"))
        self.assertFalse(self.users.knows("bob"))

    def test_explicitReloadBadFileKeepsUsers(self) -> None:
        """
        An explicit reload of a file that cannot be used raises the reason
        and keeps the users loaded before.
        """
        self.write({"carol": "c"}, extra=b"bob:plain\n")
        error = self.assertRaises(HtpasswdError, self.users.reload)
        self.assertIn("line 2", str(error))
        self.assertTrue(self.check("alice", "wonderland"))
        self.assertFalse(self.users.knows("carol"))

    def test_missingFileKeepsUsers(self) -> None:
        """
        A file that disappears keeps the users loaded before.
        """
        os.remove(self.path)
        self.clock.advance(5)
        self.assertTrue(self.check("bob", "builder"))

    def test_startupRefusesBrokenFile(self) -> None:
        """
        At start-up an unusable file is an error.
        """
        with open(self.path, "wb") as f:
            f.write(b"alice:plain\n")
        self.assertRaises(HtpasswdError, HtpasswdUsers, self.path, self.clock, runNow)
        self.assertRaises(
            HtpasswdError, HtpasswdUsers, self.path + ".missing", self.clock, runNow
        )

    def test_concurrentChecksShareOne(self) -> None:
        """
        Checks of the same credentials while one is running share its
        result.
        """
        runner = HeldRunner()
        users = HtpasswdUsers(self.path, self.clock, runner)
        first = users.checkPassword("alice", "wonderland")
        second = users.checkPassword("alice", "wonderland")
        other = users.checkPassword("alice", "wrong")
        self.assertEqual(len(runner.held), 2)
        runner.release()
        self.assertTrue(self.successResultOf(first))
        self.assertTrue(self.successResultOf(second))
        self.assertFalse(self.successResultOf(other))

    def test_busy(self) -> None:
        """
        When the runner refuses (too many waiting), the check fails with
        L{TooManyChecks} and is not remembered as a result.
        """

        def refuse(f, *args):
            from twisted.internet.defer import fail

            return fail(TooManyChecks("busy"))

        users = HtpasswdUsers(self.path, self.clock, refuse)
        self.failureResultOf(users.checkPassword("alice", "wonderland"), TooManyChecks)
        self.assertEqual(users._waiting, {})


class FakePool:
    """
    Records work given to it; the test finishes it.
    """

    def __init__(self) -> None:
        self.started = False
        self.work: list = []

    def start(self) -> None:
        self.started = True

    def stop(self) -> None:
        self.started = False

    def callInThreadWithCallback(self, onResult, f, *args, **kwargs) -> None:
        self.work.append((onResult, f, args))


class FakeReactor:
    def __init__(self) -> None:
        self.triggers: list = []

    def callFromThread(self, f, *args, **kwargs) -> None:
        f(*args, **kwargs)

    def addSystemEventTrigger(self, phase, event, f, *args) -> None:
        self.triggers.append((phase, event, f))


class ThreadPoolRunnerTests(SynchronousTestCase):
    """
    The capped pool.
    """

    def test_cap(self) -> None:
        """
        Beyond threads + maxWaiting calls in flight, a call fails at once;
        when one finishes, there is room again.
        """
        pool, reactor = FakePool(), FakeReactor()
        runner = ThreadPoolRunner(reactor, threads=2, maxWaiting=1, pool=pool)
        calls = [runner(lambda: 1) for _ in range(3)]
        self.failureResultOf(runner(lambda: 1), TooManyChecks)
        self.assertTrue(pool.started)
        onResult, f, args = pool.work[0]
        onResult(True, f(*args))
        self.assertEqual(self.successResultOf(calls[0]), 1)
        self.assertNoResult(runner(lambda: 2))
        self.assertEqual(runner.pending, 3)

    def test_stopAtShutdown(self) -> None:
        """
        The pool is stopped when the reactor shuts down.
        """
        pool, reactor = FakePool(), FakeReactor()
        runner = ThreadPoolRunner(reactor, pool=pool)
        runner(lambda: 1)
        [(phase, event, stop)] = reactor.triggers
        self.assertEqual((phase, event), ("during", "shutdown"))
        stop()
        self.assertFalse(pool.started)


class RealThreadsTests(TestCase):
    """
    bcrypt on real threads with the real reactor.
    """

    async def test_check(self) -> None:
        """
        A check runs on the pool and answers on the reactor thread.
        """
        from twisted.internet import reactor

        path = self.mktemp()
        with open(path, "wb") as f:
            f.write(b"alice:" + _hash("wonderland") + b"\n")
        runner = ThreadPoolRunner(reactor, threads=2)
        self.addCleanup(runner.stop)
        users = HtpasswdUsers(path, reactor, runner)
        self.assertTrue(await users.checkPassword("alice", "wonderland"))
        self.assertFalse(await users.checkPassword("alice", "x"))
