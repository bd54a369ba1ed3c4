# -*- test-case-name: tests.integration.test_forward_open -*-
"""
Start a real distribution registry (C{docker-registry serve}) for a test,
in one of three modes, and stop it when the test ends.

    registry = await startRegistry(self, mode="htpasswd-tls", users={"alice": "pw"})

The registry listens on a free loopback port; the test waits for its
"listening on" log line (no sleeps) and, in cleanup, for the process to
exit.  Without a C{docker-registry} program the test is skipped.
"""

from __future__ import annotations

import ipaddress
import json
import os
import shutil
import socket
import tempfile
from collections.abc import Callable, Mapping
from typing import cast

import attrs
import bcrypt
from twisted.internet.defer import Deferred
from twisted.internet.error import ProcessExitedAlready
from twisted.internet.protocol import ProcessProtocol
from twisted.logger import Logger
from twisted.trial.unittest import SkipTest

from regproxy.tls.hostnames import SubjectNames
from regproxy.tls.selfsigned import generateSelfSigned

from .tokenserver import TokenServer, startTokenServer

MODES = ("open", "htpasswd-tls", "token")
REGISTRY_PROGRAM = "docker-registry"
STARTUP_TIMEOUT = 30.0


class RegistryFailed(Exception):
    """
    The registry exited, or did not start listening, in time; the message
    carries its output.
    """


@attrs.frozen
class Registry:
    """
    A running registry.

    @ivar url: Its base URL, e.g. C{http://127.0.0.1:41234}.
    @ivar host: C{127.0.0.1:PORT}, as used in image references.
    @ivar caFile: The PEM CA file to trust (TLS mode), else L{None}.
    @ivar certDir: A directory holding C{ca.crt}, for skopeo's
        C{--src-cert-dir}/C{--dest-cert-dir} (TLS mode), else L{None}.
    @ivar users: User name to password, for the modes with logins.
    @ivar tokenServer: The token server it trusts (token mode), else L{None}.
    @ivar directory: The temporary directory holding its config, storage
        and log.
    """

    mode: str
    url: str
    host: str
    port: int
    caFile: str | None
    certDir: str | None
    users: Mapping[str, str]
    tokenServer: TokenServer | None
    directory: str
    process: RegistryProcess = attrs.field(repr=False)

    @property
    def output(self) -> str:
        """
        Everything the registry logged so far (for failure messages).
        """
        return self.process.output()


class ListeningProcess(ProcessProtocol):
    """
    Watch a server's log for the line that says it listens, and its exit.

    @cvar ready: The bytes of that line.
    """

    ready: bytes

    def __init__(self) -> None:
        self._buffer = bytearray()
        self.listening: Deferred[None] = Deferred()
        self.ended: Deferred[None] = Deferred()
        self.exited = False
        self._watches: list[tuple[bytes, Deferred[None]]] = []

    def output(self) -> str:
        return self._buffer.decode("utf-8", "replace")

    def whenOutputHas(self, needle: bytes) -> Deferred[None]:
        """
        Fire once the process has written C{needle} (to stdout or stderr).
        """
        d: Deferred[None] = Deferred()
        self._watches.append((needle, d))
        self._checkWatches()
        return d

    def _checkWatches(self) -> None:
        waiting = []
        for needle, d in self._watches:
            if needle in self._buffer:
                d.callback(None)
            else:
                waiting.append((needle, d))
        self._watches = waiting

    def childDataReceived(self, childFD: int, data: bytes) -> None:
        self._buffer += data
        if not self.listening.called and self.ready in self._buffer:
            self.listening.callback(None)
        if self._watches:
            self._checkWatches()

    def exitedEarly(self, reason) -> Exception:
        """
        What L{listening} fails with when the process exits before its
        listen line.
        """
        raise NotImplementedError

    def tooSlow(self, seconds: float) -> Exception:
        """
        What L{listening} fails with when L{giveUp} is called.
        """
        raise NotImplementedError

    def processEnded(self, reason) -> None:
        self.exited = True
        if not self.listening.called:
            self.listening.errback(self.exitedEarly(reason))
        self.ended.callback(None)

    def giveUp(self, seconds: float) -> None:
        """
        Stop waiting for the listen line.
        """
        if not self.listening.called:
            self.listening.errback(self.tooSlow(seconds))

    def signal(self, name: str) -> None:
        try:
            assert self.transport is not None
            self.transport.signalProcess(name)
        except ProcessExitedAlready:
            pass

    def stop(self) -> Deferred[None]:
        if not self.exited:
            self.signal("TERM")
        return self.ended


class RegistryProcess(ListeningProcess):
    """
    Watch a registry's log for its listen line and its exit.
    """

    _log = Logger()
    ready = b'msg="listening on '

    def exitedEarly(self, reason) -> Exception:
        return RegistryFailed(
            f"registry exited before listening ({reason.value}):\n" + self.output()
        )

    def tooSlow(self, seconds: float) -> Exception:
        return RegistryFailed(
            f"registry did not listen within {seconds}s:\n" + self.output()
        )


def freePort() -> int:
    """
    A loopback TCP port that was free a moment ago.  The registry may still
    lose a race for it; L{startRegistry} retries then.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def makeSelfSignedCertificate(directory: str) -> tuple[str, str]:
    """
    Write a self-signed certificate for C{127.0.0.1} (and C{localhost}) that
    is also its own CA, and its key: the kind earlier regproxy versions
    made (L{regproxy.tls.selfsigned.generateSelfSigned}).

    @return: The certificate and key file paths.
    """
    certified = generateSelfSigned(
        SubjectNames(["localhost"], [ipaddress.ip_address("127.0.0.1")])
    )
    certFile = os.path.join(directory, "registry.crt")
    keyFile = os.path.join(directory, "registry.key")
    with open(certFile, "wb") as f:
        f.write(certified.certificatePEM())
    with open(keyFile, "wb") as f:
        f.write(certified.keyPEM())
    return certFile, keyFile


def writeHtpasswd(path: str, users: Mapping[str, str]) -> None:
    """
    An htpasswd file of bcrypt entries (cost 4: tests want speed),
    replaced at once, so a regproxy that watches it never reads half of it.
    """
    with open(path + ".new", "wb") as f:
        for user, password in users.items():
            hashed = bcrypt.hashpw(password.encode(), bcrypt.gensalt(rounds=4))
            f.write(user.encode() + b":" + hashed + b"\n")
    os.replace(path + ".new", path)


def registryConfig(
    directory: str,
    port: int,
    mode: str,
    tls: tuple[str, str] | None = None,
    htpasswd: str | None = None,
    tokenServer: TokenServer | None = None,
    storage: str | None = None,
) -> dict:
    """
    The registry's configuration as a mapping (JSON is YAML, so it is
    written with L{json}).

    @param storage: The storage root directory (default: C{storage} in
        C{directory}); one shared by several registries keeps their
        images.
    """
    if storage is None:
        storage = os.path.join(directory, "storage")
    http: dict = {"addr": f"127.0.0.1:{port}", "secret": "regproxy-test-secret"}
    if tls is not None:
        http["tls"] = {"certificate": tls[0], "key": tls[1]}
    config: dict = {
        "version": 0.1,
        "log": {"level": "info", "formatter": "text", "accesslog": {"disabled": True}},
        "storage": {
            "filesystem": {"rootdirectory": storage},
            "delete": {"enabled": True},
            "maintenance": {"uploadpurging": {"enabled": False}},
        },
        "http": http,
    }
    if htpasswd is not None:
        config["auth"] = {"htpasswd": {"realm": "regproxy-test", "path": htpasswd}}
    if tokenServer is not None:
        config["auth"] = {
            "token": {
                "realm": tokenServer.realm,
                "service": tokenServer.service,
                "issuer": tokenServer.issuer,
                "rootcertbundle": tokenServer.bundleFile,
            }
        }
    return config


def registryProgram() -> str:
    """
    The path of C{docker-registry}.

    @raise SkipTest: When it is not installed.
    """
    program = shutil.which(REGISTRY_PROGRAM)
    if program is None:
        raise SkipTest(
            f"{REGISTRY_PROGRAM} is not installed (apt-get install docker-registry)"
        )
    return program


async def serveRegistry(
    testCase, directory: str, configFor: Callable[[int], dict], reactor
) -> tuple[int, RegistryProcess]:
    """
    Start C{docker-registry serve} with the configuration C{configFor(port)}
    on a free loopback port, wait for its listen line and stop it when
    C{testCase} ends.  Another process may take the port between
    L{freePort} and the registry's bind, so a port race is retried.

    @param directory: Where the config is written; the registry's C{HOME}.
    @return: The port and the process.
    @raise SkipTest: When C{docker-registry} is not installed.
    """
    program = registryProgram()

    def start(port: int) -> RegistryProcess:
        configFile = os.path.join(directory, "config.yml")
        with open(configFile, "w") as f:
            json.dump(configFor(port), f)
        process = RegistryProcess()
        environment = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "HOME": directory,
        }
        reactor.spawnProcess(
            process, program, [program, "serve", configFile], env=environment
        )
        return process

    port, process = await startOnFreePort(
        testCase, start, RegistryFailed, "address already in use", reactor
    )
    return port, cast(RegistryProcess, process)


async def startOnFreePort(
    testCase,
    start: Callable[[int], ListeningProcess],
    failure: type[Exception],
    busy: str,
    reactor,
    timeout: float = STARTUP_TIMEOUT,
) -> tuple[int, ListeningProcess]:
    """
    Start a server with C{start(port)} on a free loopback port, wait for
    its listen line and stop it when C{testCase} ends.  Another process may
    take the port between L{freePort} and the server's bind, so when the
    server fails with C{busy} in its output it is tried again on another.

    @param failure: What the process's L{ListeningProcess.listening}
        fails with.
    """
    lastError: Exception | None = None
    for _attempt in range(3):
        port = freePort()
        process = start(port)
        timer = reactor.callLater(timeout, process.giveUp, timeout)
        try:
            await process.listening
        except failure as e:
            lastError = e
            await process.stop()
            if busy in process.output():
                continue
            raise
        finally:
            if timer.active():
                timer.cancel()
        testCase.addCleanup(process.stop)
        return port, process
    assert lastError is not None
    raise lastError


async def startRegistry(
    testCase,
    mode: str = "open",
    users: Mapping[str, str] | None = None,
    anonymous: str = "none",
    reactor=None,
) -> Registry:
    """
    Start a registry that lives until C{testCase} ends.

    @param mode: C{"open"} (no auth, plain HTTP), C{"htpasswd-tls"} (bcrypt
        htpasswd logins over HTTPS with a self-signed certificate) or
        C{"token"} (plain HTTP, bearer tokens from a test token server).
    @param users: User name to password, for the modes with logins
        (default: C{{"alice": "wonderland"}}).
    @param anonymous: Token mode: what a client without credentials gets
        from the token server (C{"none"} or C{"pull"}).
    @raise SkipTest: When C{docker-registry} is not installed.
    """
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, not {mode!r}")
    registryProgram()
    if reactor is None:
        from twisted.internet import reactor as _reactor

        reactor = _reactor
    if users is None:
        users = {"alice": "wonderland"}
    directory = tempfile.mkdtemp(prefix=f"registry-{mode}-")
    testCase.addCleanup(shutil.rmtree, directory, True)

    tls = caFile = certDir = htpasswd = tokenServer = None
    if mode == "htpasswd-tls":
        tls = makeSelfSignedCertificate(directory)
        caFile = tls[0]
        certDir = os.path.join(directory, "certs.d")
        os.mkdir(certDir)
        shutil.copy(caFile, os.path.join(certDir, "ca.crt"))
        htpasswd = os.path.join(directory, "htpasswd")
        writeHtpasswd(htpasswd, users)
    elif mode == "token":
        tokenServer = startTokenServer(
            testCase, directory, users, anonymous=anonymous, reactor=reactor
        )

    port, process = await serveRegistry(
        testCase,
        directory,
        lambda port: registryConfig(directory, port, mode, tls, htpasswd, tokenServer),
        reactor,
    )
    scheme = "https" if tls else "http"
    return Registry(
        mode=mode,
        url=f"{scheme}://127.0.0.1:{port}",
        host=f"127.0.0.1:{port}",
        port=port,
        caFile=caFile,
        certDir=certDir,
        users=dict(users),
        tokenServer=tokenServer,
        directory=directory,
        process=process,
    )
