# -*- test-case-name: tests.integration.test_forward_open -*-
"""
Run container clients (skopeo, podman) as child processes from tests.

The reactor keeps running while a client runs, so a regproxy served from
the same process keeps answering it.  Each client gets a private home,
policy, registries.conf and auth file in a temporary directory: no system
configuration is read or written.  A failing command raises
L{ClientFailed} with its stderr; every run is bounded in time.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Sequence
from typing import Any, cast

import attrs
from twisted.internet.defer import Deferred
from twisted.internet.error import ProcessExitedAlready
from twisted.internet.protocol import ProcessProtocol
from twisted.trial.unittest import SkipTest

DEFAULT_TIMEOUT = 240.0


class ClientFailed(Exception):
    """
    A client command exited non-zero or ran out of time.
    """

    def __init__(
        self, argv: Sequence[str], code: int | None, stdout: bytes, stderr: bytes
    ):
        self.argv = list(argv)
        self.code = code
        self.stdout = stdout
        self.stderr = stderr
        what = "timed out" if code is None else f"exited with {code}"
        super().__init__(
            f"{' '.join(argv)} {what}:\n{stderr.decode('utf-8', 'replace')}"
        )


@attrs.frozen
class Result:
    stdout: bytes
    stderr: bytes
    code: int


class _Collect(ProcessProtocol):
    """
    Collect a child's output and exit code.  (Like
    L{twisted.internet.utils.getProcessOutputAndValue}, but holding the
    process so a run that takes too long can be killed.)
    """

    def __init__(self) -> None:
        self.out = bytearray()
        self.err = bytearray()
        self.done: Deferred[int | None] = Deferred()
        self.timedOut = False

    def outReceived(self, data: bytes) -> None:
        self.out += data

    def errReceived(self, data: bytes) -> None:
        self.err += data

    def processEnded(self, reason) -> None:
        code = getattr(reason.value, "exitCode", None)
        self.done.callback(None if self.timedOut else code)

    def kill(self) -> None:
        self.timedOut = True
        try:
            assert self.transport is not None
            self.transport.signalProcess("KILL")
        except ProcessExitedAlready:
            pass


async def runProcess(
    argv: Sequence[str],
    env: dict[str, str],
    timeout: float = DEFAULT_TIMEOUT,
    reactor=None,
    check: bool = True,
) -> Result:
    """
    Run C{argv} without blocking the reactor.

    @raise ClientFailed: When C{check} is true and the command fails, or
        always when it runs longer than C{timeout} seconds.
    """
    if reactor is None:
        from twisted.internet import reactor as _reactor

        reactor = _reactor
    protocol = _Collect()
    reactor.spawnProcess(protocol, argv[0], list(argv), env=env)
    killer = reactor.callLater(timeout, protocol.kill)
    try:
        code = await protocol.done
    finally:
        if killer.active():
            killer.cancel()
    stdout, stderr = bytes(protocol.out), bytes(protocol.err)
    if code is None or (check and code != 0):
        raise ClientFailed(argv, code, stdout, stderr)
    return Result(stdout, stderr, code)


def _privateEnvironment(home: str) -> dict[str, str]:
    registriesConf = os.path.join(home, "registries.conf")
    with open(registriesConf, "w") as f:
        f.write("unqualified-search-registries = []\n")
    with open(os.path.join(home, "auth.json"), "w") as f:
        f.write('{"auths": {}}\n')
    return {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": home,
        "XDG_RUNTIME_DIR": home,
        "XDG_CONFIG_HOME": os.path.join(home, ".config"),
        "TMPDIR": home,
        "CONTAINERS_REGISTRIES_CONF": registriesConf,
        "REGISTRY_AUTH_FILE": os.path.join(home, "auth.json"),
    }


def _writePolicy(home: str) -> str:
    path = os.path.join(home, "policy.json")
    with open(path, "w") as f:
        json.dump({"default": [{"type": "insecureAcceptAnything"}]}, f)
    return path


def _tlsFlags(prefix: str, verify: bool | None, certDir: str | None) -> list[str]:
    flags = []
    if verify is not None:
        flags.append(f"--{prefix}tls-verify={'true' if verify else 'false'}")
    if certDir is not None:
        flags.append(f"--{prefix}cert-dir={certDir}")
    return flags


def _credsFlags(prefix: str, creds: tuple[str, str] | None) -> list[str]:
    if creds is None:
        return [f"--{prefix}no-creds"] if prefix else []
    return [f"--{prefix}creds={creds[0]}:{creds[1]}"]


class Skopeo:
    """
    Run skopeo with a private policy and configuration.

    @param testCase: Owns the temporary directory (removed at cleanup).
    """

    def __init__(
        self, testCase, reactor=None, timeout: float = DEFAULT_TIMEOUT
    ) -> None:
        self.program = shutil.which("skopeo")
        if self.program is None:
            raise SkipTest("skopeo is not installed (apt-get install skopeo)")
        self.home = tempfile.mkdtemp(prefix="skopeo-")
        testCase.addCleanup(shutil.rmtree, self.home, True)
        self.env = _privateEnvironment(self.home)
        self.policy = _writePolicy(self.home)
        self.reactor = reactor
        self.timeout = timeout

    async def run(
        self, *args: str, check: bool = True, timeout: float | None = None
    ) -> Result:
        assert self.program is not None
        argv = [self.program, "--policy", self.policy, *args]
        return await runProcess(
            argv, self.env, timeout or self.timeout, self.reactor, check=check
        )

    async def copy(
        self,
        source: str,
        destination: str,
        *,
        srcTLSVerify: bool | None = None,
        destTLSVerify: bool | None = None,
        srcCertDir: str | None = None,
        destCertDir: str | None = None,
        srcCreds: tuple[str, str] | None = None,
        destCreds: tuple[str, str] | None = None,
        all: bool = False,
        preserveDigests: bool = True,
        extra: Sequence[str] = (),
        timeout: float | None = None,
    ) -> Result:
        """
        C{skopeo copy SOURCE DESTINATION}.

        @param preserveDigests: Pass C{--preserve-digests}, so skopeo fails
            rather than recompress layers (which would change every digest
            the test checks); on by default.
        """
        args = ["copy"]
        if all:
            args.append("--all")
        if preserveDigests:
            args.append("--preserve-digests")
        args += _tlsFlags("src-", srcTLSVerify, srcCertDir)
        args += _tlsFlags("dest-", destTLSVerify, destCertDir)
        if srcCreds is not None:
            args += _credsFlags("src-", srcCreds)
        if destCreds is not None:
            args += _credsFlags("dest-", destCreds)
        args += [*extra, source, destination]
        return await self.run(*args, timeout=timeout)

    async def inspect(
        self,
        reference: str,
        *,
        config: bool = False,
        tlsVerify: bool | None = None,
        certDir: str | None = None,
        creds: tuple[str, str] | None = None,
        extra: Sequence[str] = (),
        timeout: float | None = None,
    ) -> dict[str, Any]:
        """
        C{skopeo inspect}: the parsed JSON.
        """
        result = await self._inspect(
            reference, False, config, tlsVerify, certDir, creds, extra, timeout
        )
        return cast(dict[str, Any], json.loads(result))

    async def inspectRaw(
        self,
        reference: str,
        *,
        config: bool = False,
        tlsVerify: bool | None = None,
        certDir: str | None = None,
        creds: tuple[str, str] | None = None,
        extra: Sequence[str] = (),
        timeout: float | None = None,
    ) -> bytes:
        """
        C{skopeo inspect --raw}: the exact bytes (the manifest as the
        registry served it, for digest checks).
        """
        return await self._inspect(
            reference, True, config, tlsVerify, certDir, creds, extra, timeout
        )

    async def _inspect(
        self,
        reference: str,
        raw: bool,
        config: bool,
        tlsVerify: bool | None,
        certDir: str | None,
        creds: tuple[str, str] | None,
        extra: Sequence[str],
        timeout: float | None,
    ) -> bytes:
        args = ["inspect"]
        if raw:
            args.append("--raw")
        if config:
            args.append("--config")
        args += _tlsFlags("", tlsVerify, certDir)
        if creds is not None:
            args += _credsFlags("", creds)
        args += [*extra, reference]
        result = await self.run(*args, timeout=timeout)
        return result.stdout


class Podman:
    """
    Run podman with private storage (vfs driver) in a temporary directory.
    L{Podman.check} skips the test when podman cannot run here (no user
    namespaces in a container, for instance).
    """

    def __init__(
        self, testCase, reactor=None, timeout: float = DEFAULT_TIMEOUT
    ) -> None:
        self.program = shutil.which("podman")
        if self.program is None:
            raise SkipTest("podman is not installed")
        self.home = tempfile.mkdtemp(prefix="podman-")
        testCase.addCleanup(lambda: Deferred.fromCoroutine(self._cleanup()))
        self.env = _privateEnvironment(self.home)
        self.policy = _writePolicy(self.home)
        self.env["CONTAINERS_POLICY_JSON"] = self.policy
        storage = os.path.join(self.home, "storage.conf")
        with open(storage, "w") as f:
            f.write(
                "[storage]\n"
                'driver = "vfs"\n'
                f'graphroot = "{self.home}/root"\n'
                f'runroot = "{self.home}/run"\n'
            )
        self.env["CONTAINERS_STORAGE_CONF"] = storage
        containersConf = os.path.join(self.home, "containers.conf")
        with open(containersConf, "w") as f:
            f.write('[engine]\ncgroup_manager = "cgroupfs"\nevents_logger = "none"\n')
        self.env["CONTAINERS_CONF"] = containersConf
        self.reactor = reactor
        self.timeout = timeout

    async def _cleanup(self) -> None:
        # Without root, vfs layers are owned by sub-uids that rmtree cannot
        # remove: remove them inside podman's user namespace first.  (Not
        # "podman system reset": that also touches host-wide networks.)
        if os.geteuid() != 0:
            await self.run("unshare", "rm", "-rf", f"{self.home}/root", check=False)
        shutil.rmtree(self.home, True)

    async def run(
        self, *args: str, check: bool = True, timeout: float | None = None
    ) -> Result:
        assert self.program is not None
        argv = [
            self.program,
            "--root",
            f"{self.home}/root",
            "--runroot",
            f"{self.home}/run",
            "--storage-driver",
            "vfs",
            *args,
        ]
        return await runProcess(
            argv, self.env, timeout or self.timeout, self.reactor, check=check
        )

    async def check(self) -> None:
        """
        Skip the calling test when podman does not work on this machine.
        """
        result = await self.run("info", check=False, timeout=60)
        if result.code != 0:
            raise SkipTest(
                "podman does not work here: "
                + result.stderr.decode("utf-8", "replace")[-500:]
            )

    async def pull(
        self,
        reference: str,
        *,
        tlsVerify: bool | None = None,
        certDir: str | None = None,
        creds: tuple[str, str] | None = None,
        timeout: float | None = None,
    ) -> Result:
        args = ["pull", "--quiet"]
        args += _tlsFlags("", tlsVerify, certDir)
        if creds is not None:
            args.append(f"--creds={creds[0]}:{creds[1]}")
        args.append(reference)
        return await self.run(*args, timeout=timeout)

    async def imageDigest(self, reference: str) -> str:
        result = await self.run(
            "image", "inspect", "--format", "{{.Digest}}", reference
        )
        return result.stdout.decode().strip()


def httpClient(testCase, caFile: str | None = None, reactor=None):
    """
    A treq client for a test: its own connection pool, closed at cleanup
    (so trial finds a clean reactor), trusting C{caFile} for https when
    given.  Bodies are not decoded and no cookies are kept beyond it.
    """
    from treq.client import HTTPClient
    from twisted.internet.ssl import Certificate, optionsForClientTLS
    from twisted.web.client import Agent, BrowserLikePolicyForHTTPS, HTTPConnectionPool
    from twisted.web.iweb import IPolicyForHTTPS
    from zope.interface import implementer

    if reactor is None:
        from twisted.internet import reactor as _reactor

        reactor = _reactor
    pool = HTTPConnectionPool(reactor, persistent=True)
    pool.retryAutomatically = False
    testCase.addCleanup(pool.closeCachedConnections)
    policy: IPolicyForHTTPS = BrowserLikePolicyForHTTPS()
    if caFile is not None:
        with open(caFile, "rb") as f:
            trustRoot = Certificate.loadPEM(f.read())

        @implementer(IPolicyForHTTPS)
        class _Trust:
            def creatorForNetloc(self, hostname: bytes, port: int):
                return optionsForClientTLS(
                    hostname.decode("ascii"), trustRoot=trustRoot
                )

        policy = _Trust()
    return HTTPClient(Agent(reactor, contextFactory=policy, pool=pool))
