# -*- test-case-name: tests.integration.test_token_server -*-
"""
Start a distribution registry in token mode that trusts a token server
the test chose (regproxy's own C{/token}), not the harness's.

    registry = await startTokenModeRegistry(
        self, TokenAuth(realm, "registry.test", ISSUER, "/dir/ISSUER.crt")
    )

The registry's settings are the four an openBalena deployment sets
(C{REGISTRY_AUTH_TOKEN_REALM}, C{_SERVICE}, C{_ISSUER}, C{_ROOTCERTBUNDLE});
start-up and cleanup are the harness's (L{tests.integration.registry}).
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile

import attrs
from twisted.trial.unittest import SkipTest

from .registry import (
    REGISTRY_PROGRAM,
    STARTUP_TIMEOUT,
    Registry,
    RegistryFailed,
    RegistryProcess,
    freePort,
    registryConfig,
)


@attrs.frozen
class TokenAuth:
    """
    The registry's C{auth.token} settings (read by
    L{tests.integration.registry.registryConfig} under these names).
    """

    realm: str
    service: str
    issuer: str
    bundleFile: str


async def startTokenModeRegistry(testCase, auth: TokenAuth, reactor=None) -> Registry:
    """
    Start a plain-HTTP registry in token mode trusting C{auth}, until
    C{testCase} ends.

    @raise SkipTest: When C{docker-registry} is not installed.
    """
    program = shutil.which(REGISTRY_PROGRAM)
    if program is None:
        raise SkipTest(
            f"{REGISTRY_PROGRAM} is not installed (apt-get install docker-registry)"
        )
    if reactor is None:
        from twisted.internet import reactor as _reactor

        reactor = _reactor
    directory = tempfile.mkdtemp(prefix="registry-token-")
    testCase.addCleanup(shutil.rmtree, directory, True)
    for attempt in range(3):
        port = freePort()
        configFile = os.path.join(directory, "config.yml")
        with open(configFile, "w") as f:
            json.dump(
                registryConfig(directory, port, "token", tokenServer=auth),  # type: ignore[arg-type]
                f,
            )
        process = RegistryProcess()
        reactor.spawnProcess(
            process,
            program,
            [program, "serve", configFile],
            env={"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": directory},
        )
        timeout = reactor.callLater(STARTUP_TIMEOUT, process.giveUp, STARTUP_TIMEOUT)
        try:
            await process.listening
        except RegistryFailed:
            await process.stop()
            if "address already in use" in process.output() and attempt < 2:
                continue
            raise
        finally:
            if timeout.active():
                timeout.cancel()
        testCase.addCleanup(process.stop)
        return Registry(
            mode="token",
            url=f"http://127.0.0.1:{port}",
            host=f"127.0.0.1:{port}",
            port=port,
            caFile=None,
            certDir=None,
            users={},
            tokenServer=None,
            directory=directory,
            process=process,
        )
    raise AssertionError("unreachable")
