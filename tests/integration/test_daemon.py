"""
The daemon's life as an operator sees it: C{twistd -n regproxy} as a real
child process on a free loopback port, in front of a local upstream that
streams slowly.  SIGHUP after changing the htpasswd file lets the new user
in and logs it; SIGTERM stops new connections, lets a download in flight
complete (and, with the LAN cache on, keeps it), and exits.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import re
import signal
import sys

import bcrypt
from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import TCP4ClientEndpoint
from twisted.internet.error import ConnectionRefusedError, ProcessExitedAlready
from twisted.internet.protocol import Factory, ProcessProtocol, Protocol
from twisted.python.filepath import FilePath
from twisted.trial.unittest import TestCase
from twisted.web.client import Agent, HTTPConnectionPool, ResponseFailed, readBody
from twisted.web.http_headers import Headers
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Site

from regproxy.cache.files import entryPath

from .clients import runProcess
from .loopback import serveOnLoopback

_REPO = FilePath(__file__).parent().parent().parent()
CHUNKS = 10
CHUNK = b"y" * 32768
EVERY = 0.2  # seconds between the upstream's chunks: a 2 s download
DIGEST = "sha256:" + hashlib.sha256(CHUNK * CHUNKS).hexdigest()


class SlowBlob(Resource):
    """
    A registry's C{/v2/} and one blob, streamed a chunk every C{EVERY}
    seconds: a download that is in flight for a while.
    """

    isLeaf = True

    def __init__(self) -> None:
        super().__init__()
        self.started: Deferred[None] = Deferred()

    def render_GET(self, request):
        request.setHeader(b"docker-distribution-api-version", b"registry/2.0")
        if request.path != f"/v2/lib/app/blobs/{DIGEST}".encode():
            request.setHeader(b"content-type", b"application/json")
            return b"{}"
        request.setHeader(b"content-length", b"%d" % (CHUNKS * len(CHUNK)))
        request.setHeader(b"content-type", b"application/octet-stream")
        sent = [0]

        def more() -> None:
            request.write(CHUNK)
            sent[0] += 1
            if sent[0] == CHUNKS:
                request.finish()
            else:
                calls.append(reactor.callLater(EVERY, more))

        calls = [reactor.callLater(0, more)]
        request.notifyFinish().addErrback(
            lambda _: [c.cancel() for c in calls if c.active()]
        )
        if not self.started.called:
            self.started.callback(None)
        return NOT_DONE_YET


class Daemon(ProcessProtocol):
    """
    The child's output, and a way to wait for a line of it.
    """

    def __init__(self) -> None:
        self.output = ""
        self._waiting: list[tuple[re.Pattern[str], int, Deferred[re.Match[str]]]] = []
        #: Fires with the exit code and the signal that ended the process.
        self.ended: Deferred[tuple[int | None, int | None]] = Deferred()

    def outReceived(self, data: bytes) -> None:
        self.output += data.decode("utf-8", "replace")
        for waiter in list(self._waiting):
            self._check(waiter)

    errReceived = outReceived

    def _check(self, waiter) -> None:
        pattern, start, d = waiter
        match = pattern.search(self.output, start)
        if match is not None:
            self._waiting.remove(waiter)
            d.callback(match)

    def waitFor(self, pattern: str, after: int = 0) -> Deferred[re.Match[str]]:
        """
        Fire with the first match of C{pattern} in the output from
        C{after} on (now or when it is printed).
        """
        d: Deferred[re.Match[str]] = Deferred()
        waiter = (re.compile(pattern), after, d)
        self._waiting.append(waiter)
        self._check(waiter)
        return d

    def signal(self, name: str) -> None:
        assert self.transport is not None
        self.transport.signalProcess(name)

    def processEnded(self, reason) -> None:
        for _, _, d in self._waiting:
            d.errback(AssertionError(f"regproxy ended; it said:\n{self.output}"))
        self._waiting = []
        self.ended.callback((reason.value.exitCode, reason.value.signal))


def writeHtpasswd(path: str, users: dict[str, str]) -> None:
    with open(path + ".new", "wb") as f:
        for user, password in users.items():
            f.write(
                user.encode()
                + b":"
                + bcrypt.hashpw(password.encode(), bcrypt.gensalt(4))
                + b"\n"
            )
    os.replace(path + ".new", path)


def basic(user: str, password: str) -> Headers:
    pair = base64.b64encode(f"{user}:{password}".encode())
    return Headers({b"authorization": [b"Basic " + pair]})


class DaemonTests(TestCase):
    timeout = 60

    async def startDaemon(
        self, *options: str, cache: bool = False
    ) -> tuple[Daemon, str]:
        """
        Run C{twistd -n regproxy} with our working tree first on the path,
        listening on a free loopback port; its state directory is
        C{self.stateDir}.

        @param cache: Whether the LAN cache is on.
        @return: The process and its URL.
        """
        protocol = Daemon()
        home = FilePath(self.mktemp())
        home.makedirs()
        self.stateDir = home.child("state").path
        # These tests are of the relay's drain and reload unless they ask
        # for the LAN cache, whose drain they then test.
        cacheOptions = (
            ["--cache-size", "64MiB", "--cache-min-free", "0"]
            if cache
            else ["--cache-size", "0"]
        )
        environ = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "HOME": home.path,
            "PYTHONPATH": _REPO.path,
        }
        argv = [
            sys.executable,
            "-c",
            "from twisted.scripts.twistd import run; run()",
            "-n",
            "--pidfile=",
            "regproxy",
            "--listen",
            "tcp:0:interface=127.0.0.1",
            "--state-dir",
            self.stateDir,
            *cacheOptions,
            *options,
        ]
        process = reactor.spawnProcess(
            protocol, sys.executable, argv, env=environ, path=home.path
        )

        async def stop() -> None:
            if not protocol.ended.called:
                try:
                    process.signalProcess("KILL")
                except ProcessExitedAlready:
                    pass
                await protocol.ended

        self.addCleanup(lambda: Deferred.fromCoroutine(stop()))
        started = await protocol.waitFor(r"RegproxySite starting on (\d+)")
        return protocol, f"http://127.0.0.1:{started.group(1)}"

    def serveUpstream(self) -> tuple[SlowBlob, str]:
        blob = SlowBlob()
        site = Site(blob)
        site.noisy = False
        return blob, f"http://127.0.0.1:{serveOnLoopback(self, site, reactor)}"

    def agent(self) -> Agent:
        pool = HTTPConnectionPool(reactor, persistent=False)
        self.addCleanup(pool.closeCachedConnections)
        return Agent(reactor, pool=pool)

    async def token(self, base: str, user: str, password: str) -> tuple[int, bytes]:
        response = await self.agent().request(
            b"GET",
            f"{base}/token?service=regproxy&scope=repository:lib/app:pull".encode(),
            basic(user, password),
        )
        return response.code, await readBody(response)

    async def test_hangupReloadsUsers(self) -> None:
        """
        After the htpasswd file gains a user, SIGHUP lets that user in at
        once and the log says the file was reloaded.
        """
        _, upstream = self.serveUpstream()
        users = os.path.abspath(self.mktemp())
        writeHtpasswd(users, {"alice": "a"})
        daemon, base = await self.startDaemon(
            "--upstream", upstream, "--htpasswd", users
        )
        code, _ = await self.token(base, "bob", "b")
        self.assertEqual(code, 401)
        writeHtpasswd(users, {"alice": "a", "bob": "b"})
        mark = len(daemon.output)
        daemon.signal("HUP")
        line = await daemon.waitFor(r"SIGHUP: reloaded htpasswd \S+: 2 users", mark)
        self.assertIn(users, line.group(0))
        await daemon.waitFor(r"SIGHUP: reloaded log file", mark)
        code, body = await self.token(base, "bob", "b")
        self.assertEqual(code, 200, body)
        self.assertIn("token", json.loads(body))
        self.assertNotIn("Traceback", daemon.output)

    async def test_hangupKeepsUsersOfBadFile(self) -> None:
        """
        A broken new htpasswd file is refused on SIGHUP: the old users
        still work and the log says why.
        """
        _, upstream = self.serveUpstream()
        users = os.path.abspath(self.mktemp())
        writeHtpasswd(users, {"alice": "a"})
        daemon, base = await self.startDaemon(
            "--upstream", upstream, "--htpasswd", users
        )
        with open(users, "a") as f:
            f.write("bob:{SHA}W6ph5Mm5Pz8GgiULbPgzG37mj9g=\n")
        mark = len(daemon.output)
        daemon.signal("HUP")
        await daemon.waitFor(r"SIGHUP: kept the previous htpasswd .*line 2", mark)
        code, _ = await self.token(base, "alice", "a")
        self.assertEqual(code, 200)

    async def termMidDownload(self, *options: str, cache: bool = False):
        """
        Start the daemon in front of a slow upstream, start a download of
        its blob, and send SIGTERM once the upstream is sending.

        @return: The daemon, its URL, the response (headers in, body on
            the way) and where the daemon's output stood before the signal.
        """
        blob, upstream = self.serveUpstream()
        daemon, base = await self.startDaemon(
            "--upstream", upstream, "--auth", "passthrough", *options, cache=cache
        )
        response = await self.agent().request(
            b"GET", f"{base}/v2/lib/app/blobs/{DIGEST}".encode()
        )
        self.assertEqual(response.code, 200)
        await blob.started
        mark = len(daemon.output)
        daemon.signal("TERM")
        return daemon, base, response, mark

    async def assertEndedCleanly(self, daemon) -> None:
        """
        The daemon ended by SIGTERM, as twistd does (so that a supervisor
        sees why), after shutting down, with no traceback.
        """
        self.assertEqual(await daemon.ended, (None, signal.SIGTERM), daemon.output)
        self.assertIn("Server Shut Down.", daemon.output)
        self.assertNotIn("Traceback", daemon.output)

    async def test_termFinishesDownload(self) -> None:
        """
        SIGTERM during a slow download: new connections are refused at
        once, the download completes whole, and the process shuts down
        cleanly and ends (by the same signal, as twistd does so that a
        supervisor sees why).
        """
        daemon, base, response, mark = await self.termMidDownload()
        await daemon.waitFor(r"Stopping: no more new connections; .* on 1 open", mark)
        port = int(base.rsplit(":", 1)[1])
        endpoint = TCP4ClientEndpoint(reactor, "127.0.0.1", port)
        with self.assertRaises(ConnectionRefusedError):
            await endpoint.connect(Factory.forProtocol(Protocol))
        body = await readBody(response)
        self.assertEqual(len(body), CHUNKS * len(CHUNK))
        await self.assertEndedCleanly(daemon)
        self.assertIn("Stopping: every request finished", daemon.output)

    async def cacheStats(self) -> str:
        """
        What C{regproxy cache stats} says of the daemon's cache.
        """
        result = await runProcess(
            [
                sys.executable,
                "-c",
                "import sys; from regproxy.cli import main; sys.exit(main())",
                "cache",
                "stats",
                "--state-dir",
                self.stateDir,
            ],
            {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "PYTHONPATH": _REPO.path},
            60,
        )
        return result.stdout.decode()

    async def test_termFinishesCacheMiss(self) -> None:
        """
        With the LAN cache on, SIGTERM during a download that fills the
        cache: the download completes whole within the grace, the blob is
        kept (the cache then holds it), and the process ends cleanly.
        """
        daemon, _, response, mark = await self.termMidDownload(cache=True)
        await daemon.waitFor(r"Stopping: no more new connections; .* on 1 open", mark)
        body = await readBody(response)
        self.assertEqual(body, CHUNK * CHUNKS)
        await self.assertEndedCleanly(daemon)
        self.assertIn("Stopping: every request finished", daemon.output)
        self.assertNotIn("cutting", daemon.output)
        path = entryPath(os.path.join(self.stateDir, "cache"), DIGEST)
        with open(path, "rb") as f:
            self.assertEqual(f.read(), CHUNK * CHUNKS)
        stats = await self.cacheStats()
        self.assertIn("entries           1\n", stats)
        self.assertIn("miss 1", stats)

    async def test_termCutsCacheMissAfterGrace(self) -> None:
        """
        With the LAN cache on, a download still running when the grace
        ends is cut: the client sees a truncated body, nothing is kept, and
        the process ends cleanly.
        """
        daemon, _, response, mark = await self.termMidDownload(
            "--shutdown-grace", "0.5", cache=True
        )
        await daemon.waitFor(r"Stopping: cutting 1 cache fills .* after 0.5s", mark)
        with self.assertRaises(ResponseFailed):
            await readBody(response)
        await self.assertEndedCleanly(daemon)
        self.assertFalse(
            os.path.exists(entryPath(os.path.join(self.stateDir, "cache"), DIGEST))
        )
        self.assertIn("entries           0\n", await self.cacheStats())

    async def test_secondTermCuts(self) -> None:
        """
        A second SIGTERM while a download is finishing cuts it at once: the
        client sees a truncated response and the process ends cleanly.
        """
        daemon, _, response, mark = await self.termMidDownload()
        await daemon.waitFor(r"Stopping: no more new connections", mark)
        daemon.signal("TERM")
        await daemon.waitFor(r"Stopping: cutting 1 connections .* second signal", mark)
        with self.assertRaises(ResponseFailed):
            await readBody(response)
        await self.assertEndedCleanly(daemon)

    async def test_unknownOption(self) -> None:
        """
        An unknown option is one line naming it, and the process exits.
        """
        protocol = Daemon()
        reactor.spawnProcess(
            protocol,
            sys.executable,
            [
                sys.executable,
                "-c",
                "from twisted.scripts.twistd import run; run()",
                "regproxy",
                "--upstreem",
                "http://x",
            ],
            env={"PATH": os.environ.get("PATH", ""), "PYTHONPATH": _REPO.path},
        )
        code, _ = await protocol.ended
        self.assertEqual(code, 1)
        self.assertEqual(
            protocol.output.strip().splitlines(),
            [
                "twistd regproxy: option --upstreem not recognized; "
                "see 'twistd regproxy --help'"
            ],
        )
