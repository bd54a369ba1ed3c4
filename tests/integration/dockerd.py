# -*- test-case-name: tests.integration.test_dockerd -*-
"""
Run a private Docker daemon (Debian's C{docker.io}) for a test, and the
Docker CLI against it.

The daemon gets its own data root, exec root, pid file, socket and
C{daemon.json} in a temporary directory, no iptables, no bridge and the
vfs storage driver, so it touches nothing of the host's and needs no
kernel features beyond what a container has.  The test waits for its
"API listen on" log line (no sleeps) and, in cleanup, for it to exit.
Where it cannot start (not installed, not root, refused by the kernel),
the test is skipped with the daemon's own words.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Sequence

import attrs
from twisted.internet.defer import Deferred
from twisted.trial.unittest import SkipTest

from .clients import DEFAULT_TIMEOUT, Result, runProcess
from .registry import ListeningProcess

STARTUP_TIMEOUT = 60.0
STOP_TIMEOUT = 30.0
_READY = b"API listen on "


class _DaemonProcess(ListeningProcess):
    """
    Watch the daemon's log for its listen line and its exit; a daemon that
    cannot start here skips the test.
    """

    ready = _READY

    def _lastLines(self) -> str:
        return self.output()[-800:].strip().replace("\n", " | ")

    def exitedEarly(self, reason) -> Exception:
        return SkipTest("dockerd cannot start here: " + self._lastLines())

    def tooSlow(self, seconds: float) -> Exception:
        return SkipTest(
            f"dockerd did not start within {seconds}s: " + self._lastLines()
        )


@attrs.frozen
class Docker:
    """
    A running daemon, and the CLI for it.

    @ivar socket: The daemon's unix socket path.
    @ivar env: The environment for the CLI: C{DOCKER_HOST} set, and a
        private C{DOCKER_CONFIG} (logins are stored there).
    """

    socket: str
    env: dict[str, str]
    program: str
    process: _DaemonProcess = attrs.field(repr=False)
    reactor: object = attrs.field(repr=False)

    async def run(
        self, *args: str, check: bool = True, timeout: float = DEFAULT_TIMEOUT
    ) -> Result:
        return await runProcess(
            [self.program, *args], self.env, timeout, self.reactor, check=check
        )

    @property
    def output(self) -> str:
        """
        What the daemon logged so far (for failure messages).
        """
        return self.process.output()


def _program(name: str, *directories: str) -> str | None:
    for directory in directories:
        path = os.path.join(directory, name)
        if os.access(path, os.X_OK):
            return path
    return shutil.which(name)


async def startDockerd(
    testCase, insecureRegistries: Sequence[str], reactor=None
) -> Docker:
    """
    Start a private dockerd that trusts C{insecureRegistries} over plain
    HTTP, until C{testCase} ends.

    @raise SkipTest: When dockerd is missing, we are not root, or it exits
        or stays silent at start-up.
    """
    dockerd = _program("dockerd", "/usr/sbin", "/usr/bin")
    if dockerd is None:
        raise SkipTest("dockerd is not installed (apt-get install docker.io)")
    # The CLI that comes with the daemon (another one earlier on PATH may
    # speak a newer API than this daemon).
    docker = _program("docker", os.path.dirname(dockerd), "/usr/bin")
    if docker is None:
        raise SkipTest("the docker CLI is not installed (apt-get install docker.io)")
    if os.geteuid() != 0:
        raise SkipTest("dockerd needs root")
    if reactor is None:
        from twisted.internet import reactor as _reactor

        reactor = _reactor
    # Short: the socket path must fit in a sockaddr_un (108 bytes).
    directory = tempfile.mkdtemp(prefix="dockerd-", dir="/tmp")
    testCase.addCleanup(shutil.rmtree, directory, True)
    config = os.path.join(directory, "daemon.json")
    with open(config, "w") as f:
        json.dump({"insecure-registries": list(insecureRegistries)}, f)
    socket = os.path.join(directory, "docker.sock")
    argv = [
        dockerd,
        "--config-file",
        config,
        "--iptables=false",
        "--ip6tables=false",
        "--bridge=none",
        "--storage-driver=vfs",
        "--data-root",
        os.path.join(directory, "data"),
        "--exec-root",
        os.path.join(directory, "exec"),
        "--pidfile",
        os.path.join(directory, "docker.pid"),
        "--host",
        "unix://" + socket,
    ]
    environment = {
        "PATH": os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin"),
        "HOME": directory,
    }
    process = _DaemonProcess()
    reactor.spawnProcess(process, dockerd, argv, env=environment)
    timeout = reactor.callLater(STARTUP_TIMEOUT, process.giveUp, STARTUP_TIMEOUT)

    async def stop() -> None:
        if not process.exited:
            process.signal("TERM")
            killer = reactor.callLater(STOP_TIMEOUT, process.signal, "KILL")
            try:
                await process.ended
            finally:
                if killer.active():
                    killer.cancel()

    testCase.addCleanup(lambda: Deferred.fromCoroutine(stop()))
    try:
        await process.listening
    finally:
        if timeout.active():
            timeout.cancel()
    home = os.path.join(directory, "cli")
    os.mkdir(home)
    return Docker(
        socket,
        {
            "PATH": environment["PATH"],
            "HOME": home,
            "DOCKER_HOST": "unix://" + socket,
            "DOCKER_CONFIG": os.path.join(home, ".docker"),
        },
        docker,
        process,
        reactor,
    )
