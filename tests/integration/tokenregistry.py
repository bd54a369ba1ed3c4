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

import shutil
import tempfile

import attrs

from .registry import Registry, registryConfig, registryProgram, serveRegistry


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


async def startTokenModeRegistry(
    testCase, auth: TokenAuth, reactor=None, storage: str | None = None
) -> Registry:
    """
    Start a plain-HTTP registry in token mode trusting C{auth}, until
    C{testCase} ends.

    @param storage: A storage root to serve (default: a new, empty one).
    @raise SkipTest: When C{docker-registry} is not installed.
    """
    registryProgram()
    if reactor is None:
        from twisted.internet import reactor as _reactor

        reactor = _reactor
    directory = tempfile.mkdtemp(prefix="registry-token-")
    testCase.addCleanup(shutil.rmtree, directory, True)
    port, process = await serveRegistry(
        testCase,
        directory,
        lambda port: registryConfig(
            directory,
            port,
            "token",
            tokenServer=auth,  # type: ignore[arg-type]
            storage=storage,
        ),
        reactor,
    )
    return registryAt(port, "token", directory, process)


def registryAt(port: int, mode: str, directory: str, process) -> Registry:
    """
    A plain-HTTP registry started with L{serveRegistry} on C{port}, with
    no users of the harness's own.
    """
    return Registry(
        mode=mode,
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
